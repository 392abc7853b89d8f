// kernels/cpu/threads.cpp - the library's thread count. Every parallel region in kernels/cpu asks num_threads(),
// and Eigen's GEMM is told the same number, so one call configures the whole CPU path.
#include <omp.h>

#include <Eigen/Core>
#include <atomic>

#include "kernels/ops.h"

#ifdef MAMBACV_WITH_OPENBLAS
extern "C" void openblas_set_num_threads(int);
#endif

namespace mambacv::ops {

namespace {
std::atomic<int> g_threads{0};  // 0: OpenMP default
}

void set_num_threads(int n) {
  // the default as the process started (OMP_NUM_THREADS or all cores), captured before the first change
  static const int initial = omp_get_max_threads();
  if (n <= 0) {
    g_threads.store(0);
    omp_set_num_threads(initial);
    Eigen::setNbThreads(0);  // 0: Eigen asks OpenMP (omp_get_max_threads)
#ifdef MAMBACV_WITH_OPENBLAS
    openblas_set_num_threads(initial);
#endif
    return;
  }
  g_threads.store(n);
  // The OpenMP ICV is per calling thread; the stored value also reaches regions started from other threads.
  omp_set_num_threads(n);
  Eigen::setNbThreads(n);
#ifdef MAMBACV_WITH_OPENBLAS
  openblas_set_num_threads(n);
#endif
}

int num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}

}  // namespace mambacv::ops
