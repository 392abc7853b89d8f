// kernels/cuda/selective_scan_cuda.cpp - selective_scan_cuda: checks the parameters and hands them to the CUDA
// kernel (kernels/cuda/selective_scan.cu) as the plain structs of scan_launch.h.
#include "kernels/cuda/scan_launch.h"
#include "kernels/selective_scan.h"
#include "mambacv/error.h"

namespace mambacv {

namespace {
int dtype_code(DType t) { return t == DType::F32 ? 0 : t == DType::F16 ? 1 : 2; }
cuda::ScanOperandDev dev(const ScanOperand& o) { return {o.ptr, dtype_code(o.dtype), o.sb, o.sc, o.st}; }
cuda::ScanBCOperandDev dev(const ScanBCOperand& o) { return {o.ptr, dtype_code(o.dtype), o.sb, o.sg, o.sn, o.st}; }
}  // namespace

void selective_scan_cuda(const ExecContext& ctx, const ScanParams& p) {
  validate_scan_params(p, /*orders_readable=*/false);
  MAMBACV_CHECK(p.N <= cuda::kMaxScanState, "selective_scan (cuda): d_state " << p.N << " is above the kernel's "
                                                                               << cuda::kMaxScanState);
  MAMBACV_CHECK(p.dirs.size() <= static_cast<size_t>(cuda::kMaxScanDirections),
                "selective_scan (cuda): " << p.dirs.size() << " directions; the kernel takes at most "
                                          << cuda::kMaxScanDirections);
  cuda::ScanLaunch l{};
  l.batch = p.batch;
  l.dim = p.dim;
  l.L = p.L;
  l.N = p.N;
  l.groups = p.groups;
  l.delta_softplus = p.delta_softplus ? 1 : 0;
  l.accumulate = p.accumulate ? 1 : 0;
  l.dir_round = dtype_code(p.dir_round);
  l.ndirs = static_cast<int>(p.dirs.size());
  l.out = p.out;
  l.osb = p.osb;
  l.osc = p.osc;
  l.ost = p.ost;
  for (size_t k = 0; k < p.dirs.size(); ++k) {
    const ScanDirection& d = p.dirs[k];
    cuda::ScanDirectionDev& o = l.dirs[k];
    o.u = dev(d.u);
    o.delta = dev(d.delta);
    o.z = dev(d.z);
    o.B = dev(d.B);
    o.C = dev(d.C);
    o.A = d.A;
    o.D = d.D;
    o.delta_bias = d.delta_bias;
    o.order = d.order;
    o.out_scale = d.out_scale;
    o.last_state = d.last_state;
  }
  const char* err = cuda::launch_selective_scan(l, ctx.stream);
  MAMBACV_CHECK(err == nullptr, "selective_scan (cuda): kernel launch failed: " << err);
}

}  // namespace mambacv
