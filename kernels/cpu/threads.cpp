// kernels/cpu/threads.cpp - the library's thread count. Every parallel region in kernels/cpu asks num_threads(),
// and Eigen's GEMM is told the same number, so one call configures the whole CPU path.
#include <omp.h>

#include <Eigen/Core>
#include <atomic>

#include "kernels/ops.h"

namespace mambacv::ops {

namespace {
std::atomic<int> g_threads{0};  // 0: OpenMP default (all cores)
}

void set_num_threads(int n) {
  if (n <= 0) {
    g_threads.store(0);
    omp_set_num_threads(omp_get_num_procs());
    Eigen::setNbThreads(0);  // 0: Eigen asks OpenMP (omp_get_max_threads)
    return;
  }
  g_threads.store(n);
  // The OpenMP ICV is per calling thread; the stored value also reaches regions started from other threads.
  omp_set_num_threads(n);
  Eigen::setNbThreads(n);
}

int num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}

}  // namespace mambacv::ops
