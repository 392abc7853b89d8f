// kernels/cpu/round_simd.h - (internal) rounding of f32 vectors to f16 / bf16 values, kept as f32: the one
// vector form of ops::round_to, used by it, by the GEMM stores (gemm.cpp, gemm_amx.cpp) and by the ops that round
// their own outputs (ops::Rounding arguments: norms, activations, in-place arithmetic, depthwise convolutions).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cpu_info.h"
#include "kernels/ops.h"

namespace mambacv::ops::simd {

// modes: 0 none, kRoundBf16 (round to nearest even on the upper 16 bits; NaN stays a quiet NaN), kRoundF16
// (vcvtps2ph, overflow to inf), kRoundF16Saturate (clamped to +-65504 first; NaN passes through)
constexpr int kRoundBf16 = 1, kRoundF16 = 2, kRoundF16Saturate = 3;

__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"))) inline __m512 round16(__m512 v, int mode) {
  if (mode == kRoundBf16) {
    const __m512i u = _mm512_castps_si512(v);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                     _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    r = _mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i quiet = _mm512_and_si512(_mm512_or_si512(u, _mm512_set1_epi32(0x00400000)),
                                           _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
    return _mm512_castsi512_ps(_mm512_mask_mov_epi32(r, nan, quiet));
  }
  if (mode == kRoundF16Saturate)
    v = _mm512_max_ps(_mm512_set1_ps(-65504.0f), _mm512_min_ps(_mm512_set1_ps(65504.0f), v));
  return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

__attribute__((target("avx2,fma,f16c"))) inline __m256 round8(__m256 v, int mode) {
  if (mode == kRoundBf16) {
    const __m256i u = _mm256_castps_si256(v);
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                                     _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))));
    r = _mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i quiet = _mm256_and_si256(_mm256_or_si256(u, _mm256_set1_epi32(0x00400000)),
                                           _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
    return _mm256_castsi256_ps(_mm256_blendv_epi8(r, quiet, nan));
  }
  if (mode == kRoundF16Saturate)
    v = _mm256_max_ps(_mm256_set1_ps(-65504.0f), _mm256_min_ps(_mm256_set1_ps(65504.0f), v));
  return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// The mode of a Rounding (0 for F32: nothing to do).
inline int round_mode(Rounding r) {
  if (r.dtype == DType::BF16) return kRoundBf16;
  if (r.dtype == DType::F16) return r.saturate ? kRoundF16Saturate : kRoundF16;
  return 0;
}

// d[b, e) rounded in place as `mode` (not 0): 16 lanes at a time with a masked tail where cpu_isa() is AVX-512,
// else 8 at a time, the tail through a padded copy.
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"))) inline void round_span_avx512(
    float* d, int64_t b, int64_t e, int mode) {
  int64_t i = b;
  for (; i + 16 <= e; i += 16) _mm512_storeu_ps(d + i, round16(_mm512_loadu_ps(d + i), mode));
  if (i < e) {
    const __mmask16 m = static_cast<__mmask16>((1u << (e - i)) - 1u);
    _mm512_mask_storeu_ps(d + i, m, round16(_mm512_maskz_loadu_ps(m, d + i), mode));
  }
}
__attribute__((target("avx2,fma,f16c"))) inline void round_span_avx2(float* d, int64_t b, int64_t e, int mode) {
  int64_t i = b;
  for (; i + 8 <= e; i += 8) _mm256_storeu_ps(d + i, round8(_mm256_loadu_ps(d + i), mode));
  if (i < e) {
    alignas(32) float tail[8] = {};
    std::copy(d + i, d + e, tail);
    _mm256_store_ps(tail, round8(_mm256_load_ps(tail), mode));
    std::copy(tail, tail + (e - i), d + i);
  }
}
inline void round_span(float* d, int64_t b, int64_t e, int mode) {
  if (cpu::cpu_isa() == cpu::Isa::Avx512)
    round_span_avx512(d, b, e, mode);
  else
    round_span_avx2(d, b, e, mode);
}

// body(s, t) over the rows [b, e) of an op whose row r writes y[r * width, (r + 1) * width), in blocks of about
// 8 KB of output, each block rounded as `mode` right after body wrote it (while it is in L1): the same values as
// rounding the whole output afterwards, without a second pass over memory. mode 0: body(b, e) once.
template <class F>
void rows_then_round(int64_t b, int64_t e, int64_t width, int mode, float* y, F&& body) {
  if (mode == 0) {
    body(b, e);
    return;
  }
  const int64_t step = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, width));
  for (int64_t s = b; s < e; s += step) {
    const int64_t t = std::min(e, s + step);
    body(s, t);
    round_span(y, s * width, t * width, mode);
  }
}

}  // namespace mambacv::ops::simd
