// kernels/cpu/fma_peak.cpp - the machine measurements that `bench` and `info` report beside every timing: the
// FMA-loop peak and the streaming-copy bandwidth.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the undefined pass-through operand of _mm512_reduce_add_ps's extracts once inlined (a known false
// positive, reported at the header's lines, hence placed here).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>

#include "kernels/cpu_info.h"

namespace mambacv::cpu {

namespace {
constexpr int64_t kIters = 1 << 16;

// kIters x 24 independent zmm FMAs: 24 * 16 * 2 * kIters FLOPs
__attribute__((target("avx512f"))) float fma_loop_avx512(float seed) {
  __m512 acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(seed + static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < kIters; ++it) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

// kIters x 12 independent ymm FMAs
__attribute__((target("avx2,fma"))) float fma_loop_avx2(float seed) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(seed + static_cast<float>(i));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < kIters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float v[8];
  _mm256_store_ps(v, s);
  return v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
}

float fma_loop_scalar(float seed) {
  float acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = seed + static_cast<float>(i);
  for (int64_t it = 0; it < kIters; ++it)
    for (int i = 0; i < 8; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
  float s = 0;
  for (float v : acc) s += v;
  return s;
}
}  // namespace

double measure_parallel_rate(int threads, double seconds, double units_per_call,
                             const std::function<float(int thread)>& call) {
  threads = std::max(1, threads);
  double best = 0;
  volatile float sink = 0;
  for (int rep = 0; rep < 3; ++rep) {
    int64_t calls = 0;
    const auto t0 = std::chrono::steady_clock::now();
    double el = 0;
    // every thread runs the same number of calls; repeat until the time budget is used
    int team = 1;  // the team OpenMP actually gave (OMP_THREAD_LIMIT may cap it)
    while (el < seconds / 3) {
      float part = 0;
#pragma omp parallel num_threads(threads) reduction(+ : part)
      {
        part += call(omp_get_thread_num());
#pragma omp master
        team = omp_get_num_threads();
      }
      sink = sink + part;
      ++calls;
      el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    best = std::max(best, units_per_call * static_cast<double>(calls) * team / el / 1e9);
  }
  (void)sink;
  return best;
}

double measure_fma_peak_gflops(int threads, double seconds) {
  const Isa isa = cpu_isa();
  const double flops_per_call = isa == Isa::Avx512 ? 24.0 * 16 * 2 * kIters
                                : isa == Isa::Avx2 ? 12.0 * 8 * 2 * kIters
                                                   : 8.0 * 2 * kIters;
  return measure_parallel_rate(threads, seconds, flops_per_call, [isa](int thread) {
    const float seed = static_cast<float>(thread);
    return isa == Isa::Avx512 ? fma_loop_avx512(seed) : isa == Isa::Avx2 ? fma_loop_avx2(seed) : fma_loop_scalar(seed);
  });
}

double measure_copy_bandwidth_gbs(int threads) {
  const size_t n = size_t{16} << 20;  // floats: 64 MiB per buffer, far larger than the caches
  std::unique_ptr<float[]> a(new float[n]), b(new float[n]);
  threads = std::max(1, threads);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) a[i] = static_cast<float>(i & 1023), b[i] = 0;
  double best = 1e30;
  for (int rep = 0; rep < 4; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) b[i] = a[i];
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  volatile float sink = b[n / 3];
  (void)sink;
  return 2.0 * static_cast<double>(n) * sizeof(float) / best / 1e9;
}

}  // namespace mambacv::cpu
