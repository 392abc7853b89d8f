// kernels/cpu/round_simd.h - (internal) rounding of f32 vectors to f16 / bf16 values, kept as f32: the one
// vector form of ops::round_to, used by it and by the GEMM stores (gemm.cpp, gemm_amx.cpp).
#pragma once

#include <immintrin.h>

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

}  // namespace mambacv::ops::simd
