// kernels/cpu/simd_math.h - private to kernels/cpu: branch-free float math that the compiler vectorises inside
// `#pragma omp simd` loops (glibc's expf / erff are scalar calls unless -ffast-math). Accuracy: exp ~2 ulp,
// erf ~2e-7 absolute, both far inside the 1e-5 relative-L2 budget the tests enforce against double references.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/ops.h"

// Force inlining: a call left in a loop body stops it from vectorising.
#if defined(__GNUC__) || defined(__clang__)
#define MAMBACV_SIMD_INLINE inline __attribute__((always_inline))
#else
#define MAMBACV_SIMD_INLINE inline
#endif

namespace mambacv::ops::detail {

MAMBACV_SIMD_INLINE uint32_t float_as_bits(float f) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_bit_cast(uint32_t, f);
#else
  uint32_t i;
  std::memcpy(&i, &f, 4);
  return i;
#endif
}

MAMBACV_SIMD_INLINE float bits_as_float(int32_t i) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_bit_cast(float, i);  // memcpy here stops GCC from vectorising the calling loop
#else
  float f;
  std::memcpy(&f, &i, 4);
  return f;
#endif
}

// e^x for finite x; clamps to [e^-87.3, e^88.3] instead of producing 0 / inf.
MAMBACV_SIMD_INLINE float exp_f(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  // round(x / ln 2) with the 1.5 * 2^23 trick (std::floor / nearbyint do not vectorise without -fno-trapping-math);
  // the shifted value's low mantissa bits are that integer, read as bits (a NaN x then stays NaN without the
  // undefined float-to-int conversion of NaN)
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  float r = x - n * 0.693359375f;                               // Cody-Waite: ln 2 = hi + lo
  r = r - n * -2.12194440e-4f;
  // Taylor series of e^r on |r| <= ln2/2, degree 7 (truncation < 1e-8 relative)
  float p = 1.9841270e-4f;
  p = p * r + 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * bits_as_float(static_cast<int32_t>((float_as_bits(shifted) - 0x4B400000u + 127u) << 23));
}

MAMBACV_SIMD_INLINE float silu_f(float x) { return x / (1.0f + exp_f(-x)); }

// erf(x): odd polynomial on |x| < 1, 1 - exp(Q(|x|)) on 1 <= |x| < 4 (Q fits log erfc), 1 beyond. Coefficients
// are least-squares fits on Chebyshev nodes made for this file.
MAMBACV_SIMD_INLINE float erf_f(float x) {
  const float a = std::fabs(x);
  const float s = a * a;
  float p = 7.898162920254304e-05f;
  p = p * s - 0.0008024338781999346f;
  p = p * s + 0.0051900516652042955f;
  p = p * s - 0.02685480739647994f;
  p = p * s + 0.11283612395376516f;
  p = p * s - 0.37612628839326717f;
  p = p * s + 1.1283791665087302f;
  const float small = p * a;
  const float b = a > 4.0f ? 4.0f : a;
  float q = -6.58285663757141e-08f;
  q = q * b + 3.095204360481496e-06f;
  q = q * b - 6.006879308054214e-05f;
  q = q * b + 0.0006733375345003949f;
  q = q * b - 0.005021044705466118f;
  q = q * b + 0.026999496997830923f;
  q = q * b - 0.11090741686747713f;
  q = q * b - 0.6310888681258353f;
  q = q * b - 1.1306044693920003f;
  q = q * b + 0.0004005005178577305f;
  float large = 1.0f - exp_f(q);
  large = a >= 4.0f ? 1.0f : large;
  const float e = a < 1.0f ? small : large;
  return x < 0.0f ? -e : e;
}

MAMBACV_SIMD_INLINE float gelu_f(float x) { return 0.5f * x * (1.0f + erf_f(x * 0.70710678118654752f)); }

// Runs body(begin, end) compiled for AVX-512 (16-lane `omp simd` loops; the body is inlined into this function)
// when `avx512` (cpu_isa() == Avx512), else as compiled for the build's baseline. For the loop-shaped ops whose
// AVX-512 variant is only a wider vectorisation of the same code.
// GCC needs prefer-vector-width=512 to use zmm registers; clang takes 512-bit vectors from the target alone under
// generic tuning and rejects that attribute key.
#if defined(__clang__)
#define MAMBACV_AVX512_LOOP_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"
#else
#define MAMBACV_AVX512_LOOP_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,prefer-vector-width=512"
#endif
template <class F>
__attribute__((target(MAMBACV_AVX512_LOOP_TARGET), flatten)) void
run_avx512(F& body, int64_t begin, int64_t end) {
  body(begin, end);
}
template <class F>
void run_simd(bool avx512, F& body, int64_t begin, int64_t end) {
  if (avx512)
    run_avx512(body, begin, end);
  else
    body(begin, end);
}

// (ops_elementwise.cpp) x (rows, cols), row stride ld, = a(x) in place, then rounded as simd::round_mode `round`
// (0: none): ops::activate's element loop, for the GEMM's fused epilogue (the same values as activate).
void activate_rows(Act a, float* x, int64_t ld, int64_t rows, int64_t cols, int round);
// FLOPs per element the op trace counts for activation a
double act_flops(Act a);

}  // namespace mambacv::ops::detail
