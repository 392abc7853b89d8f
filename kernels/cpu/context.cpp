#include "kernels/context.h"

#include <cstring>

#include "kernels/cpu_info.h"

namespace mambacv {

ExecContext ExecContext::cpu(int threads) {
#if defined(__AVX2__) && defined(__FMA__)
  // the library is compiled for x86-64-v3; on an older CPU say so instead of dying on an illegal instruction
  static const bool baseline_ok = cpu::features().avx2 && cpu::features().fma;
  MAMBACV_CHECK(baseline_ok, "this build of mambacv needs a CPU with AVX2 and FMA (" << cpu::cpu_name()
                                 << " has neither or one); rebuild with -DMAMBACV_NATIVE=ON on this machine");
#endif
  ExecContext c;
  // omp_get_max_threads() of the calling thread: OMP_NUM_THREADS or every core, unless this thread changed it
  c.threads = threads > 0 ? threads : std::max(1, omp_get_max_threads());
  return c;
}

Tensor ExecContext::empty(const Shape& shape, DType dtype) const {
  for (int64_t d : shape) MAMBACV_CHECK(d >= 0, "tensor shape " << shape_str(shape) << " has a negative size");
  MAMBACV_CHECK(shape_numel(shape) <= (int64_t{1} << 60) / static_cast<int64_t>(dtype_size(dtype)),
                "tensor shape " << shape_str(shape) << " of " << dtype_name(dtype) << " is more than 2^60 bytes");
  const size_t n = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  std::shared_ptr<void> block = allocator().alloc(n, /*short_lived=*/true);
  void* p = block.get();
  return Tensor::view_of(p, shape, dtype, std::move(block));
}

Tensor ExecContext::zeros(const Shape& shape, DType dtype) const {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

}  // namespace mambacv
