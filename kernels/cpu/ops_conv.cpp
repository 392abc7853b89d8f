// kernels/cpu/ops_conv.cpp - channels-last convolutions.
//   conv2d_nhwc: 1x1/stride-1 convs are one GEMM on x itself; everything else is im2col (in bounded chunks of
//     output rows) + GEMM. In NHWC the kw taps of one kernel row are kw*Cin contiguous floats, so a patch row is a
//     single memcpy whenever it lies inside the image - which is always the case for patchify (kernel == stride,
//     no padding).
//   depthwise_conv2d_nhwc / conv1d_depthwise_tokens: weights transposed to (taps, C) so the inner loop runs over
//     contiguous channels (vectorised), OpenMP over output rows / tokens.
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/simd_math.h"
#include "kernels/flops.h"
#include "kernels/ops.h"
#include "mambacv/error.h"

namespace mambacv::ops {

namespace {
constexpr int64_t kMaxColFloats = int64_t(1) << 21;  // 8 MiB im2col chunk
}

// x (B, H, W, Cin), w (Cout, Cin, kh, kw), bias (Cout) or null -> y (B, Ho, Wo, Cout)
void conv2d_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t Cin, const float* w, const float* bias,
                 int64_t Cout, int kh, int kw, int sh, int sw, int ph, int pw, float* y) {
  MAMBACV_CHECK(B >= 0 && H > 0 && W > 0 && Cin > 0 && Cout > 0 && kh > 0 && kw > 0,
                "conv2d_nhwc: bad sizes B=" << B << " H=" << H << " W=" << W << " Cin=" << Cin << " Cout=" << Cout
                                            << " kernel=" << kh << "x" << kw);
  MAMBACV_CHECK(sh > 0 && sw > 0 && ph >= 0 && pw >= 0,
                "conv2d_nhwc: stride must be positive and padding non-negative, got stride=(" << sh << ", " << sw
                                                                                              << ") padding=(" << ph
                                                                                              << ", " << pw << ")");
  const int64_t Ho = conv_out_size(H, kh, sh, ph), Wo = conv_out_size(W, kw, sw, pw);
  MAMBACV_CHECK(H + 2 * ph >= kh && W + 2 * pw >= kw,
                "conv2d_nhwc: kernel " << kh << "x" << kw << " larger than the padded input " << H + 2 * ph << "x"
                                       << W + 2 * pw);
  if (B == 0) return;

  // 1x1, stride 1, no padding: y (B*H*W, Cout) = x (B*H*W, Cin) @ w (Cout, Cin)^T
  if (kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0) {
    gemm(B * H * W, Cout, Cin, x, Cin, w, Cin, true, y, Cout, bias, 0.0f);
    return;
  }

  // weights (Cout, Cin, kh, kw) -> wr (Cout, kh, kw, Cin): the im2col column order
  const int64_t K = int64_t(kh) * kw * Cin;
  std::vector<float> wr_buf;
  const float* wr = w;
  if (Cin > 1) {
    wr_buf.resize(static_cast<size_t>(Cout * K));
    for (int64_t co = 0; co < Cout; ++co)
      for (int64_t ci = 0; ci < Cin; ++ci)
        for (int i = 0; i < kh; ++i)
          for (int j = 0; j < kw; ++j)
            wr_buf[((co * kh + i) * kw + j) * Cin + ci] = w[((co * Cin + ci) * kh + i) * kw + j];
    wr = wr_buf.data();
  }

  // Output rows (b, oh) are processed in chunks whose im2col matrix stays below kMaxColFloats.
  const int64_t total_rows = B * Ho;
  const int64_t chunk_rows = std::max<int64_t>(1, std::min<int64_t>(total_rows, kMaxColFloats / (Wo * K)));
  std::vector<float> col(static_cast<size_t>(chunk_rows * Wo * K));
  const int64_t row_floats = int64_t(kw) * Cin;  // one kernel row of one patch
  const int nt = num_threads();

  for (int64_t r0 = 0; r0 < total_rows; r0 += chunk_rows) {
    const int64_t nr = std::min(chunk_rows, total_rows - r0);
    const int64_t npix = nr * Wo;
    // col (npix, K): row p = patch of output pixel (b, oh, ow)
#pragma omp parallel for num_threads(nt) schedule(static) if (npix * K > detail::kParallelMinWork)
    for (int64_t p = 0; p < npix; ++p) {
      const int64_t row = r0 + p / Wo, ow = p % Wo;
      const int64_t b = row / Ho, oh = row % Ho;
      float* dst = col.data() + p * K;
      const int64_t iw0 = ow * sw - pw;
      const bool w_inside = iw0 >= 0 && iw0 + kw <= W;
      for (int i = 0; i < kh; ++i, dst += row_floats) {
        const int64_t ih = oh * sh - ph + i;
        if (ih < 0 || ih >= H) {
          std::memset(dst, 0, sizeof(float) * row_floats);
          continue;
        }
        const float* src = x + ((b * H + ih) * W) * Cin;
        if (w_inside) {
          std::memcpy(dst, src + iw0 * Cin, sizeof(float) * row_floats);
        } else {
          for (int j = 0; j < kw; ++j) {
            const int64_t iw = iw0 + j;
            if (iw < 0 || iw >= W)
              std::memset(dst + j * Cin, 0, sizeof(float) * Cin);
            else
              std::memcpy(dst + j * Cin, src + iw * Cin, sizeof(float) * Cin);
          }
        }
      }
    }
    gemm(npix, Cout, K, col.data(), K, wr, K, true, y + r0 * Wo * Cout, Cout, bias, 0.0f);
  }
}

// x (B, H, W, C), w (C, 1, kh, kw), bias (C) or null, stride 1 -> y (B, Ho, Wo, C)
void depthwise_conv2d_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, const float* w,
                           const float* bias, int kh, int kw, int ph, int pw, float* y) {
  MAMBACV_CHECK(B >= 0 && H > 0 && W > 0 && C > 0 && kh > 0 && kw > 0 && ph >= 0 && pw >= 0,
                "depthwise_conv2d_nhwc: bad sizes B=" << B << " H=" << H << " W=" << W << " C=" << C << " kernel="
                                                      << kh << "x" << kw << " padding=(" << ph << ", " << pw << ")");
  const int64_t Ho = conv_out_size(H, kh, 1, ph), Wo = conv_out_size(W, kw, 1, pw);
  MAMBACV_CHECK(Ho > 0 && Wo > 0, "depthwise_conv2d_nhwc: kernel " << kh << "x" << kw
                                                                   << " larger than the padded input");
  add_flops(2.0 * static_cast<double>(B * Ho * Wo * C) * kh * kw);  // taps at the border counted too
  // wt (kh*kw, C)
  const int taps = kh * kw;
  std::vector<float> wt(static_cast<size_t>(taps * C));
  for (int64_t c = 0; c < C; ++c)
    for (int t = 0; t < taps; ++t) wt[t * C + c] = w[c * taps + t];
  const float* wtp = wt.data();
  const int nt = num_threads();

#pragma omp parallel for num_threads(nt) schedule(static) if (B * Ho * Wo * C * taps > detail::kParallelMinWork)
  for (int64_t row = 0; row < B * Ho; ++row) {
    const int64_t b = row / Ho, oh = row % Ho;
    // kernel rows inside the image
    const int i_lo = static_cast<int>(std::max<int64_t>(0, ph - oh));
    const int i_hi = static_cast<int>(std::min<int64_t>(kh, H + ph - oh));
    const int64_t xb = (b * H + (oh - ph)) * W * C;  // offset of row oh - ph of image b (may lie outside)
    float* yrow = y + row * Wo * C;
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const int j_lo = static_cast<int>(std::max<int64_t>(0, pw - ow));
      const int j_hi = static_cast<int>(std::min<int64_t>(kw, W + pw - ow));
      const int64_t xo = xb + (ow - pw) * C;  // pixel (oh - ph, ow - pw); tap (i, j) adds (i * W + j) * C
      float* yp = yrow + ow * C;
      // All taps for a block of channels accumulate in registers; the block's output is written once.
      int64_t c0 = 0;
#if defined(__AVX512F__)
      for (; c0 < C; c0 += 16) {
        const __mmask16 m = C - c0 >= 16 ? __mmask16(0xffff) : __mmask16((1u << (C - c0)) - 1u);
        __m512 acc = bias ? _mm512_maskz_loadu_ps(m, bias + c0) : _mm512_setzero_ps();
        for (int i = i_lo; i < i_hi; ++i)
          for (int j = j_lo; j < j_hi; ++j)
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, wtp + (i * kw + j) * C + c0),
                                  _mm512_maskz_loadu_ps(m, x + (xo + (i * W + j) * C + c0)), acc);
        _mm512_mask_storeu_ps(yp + c0, m, acc);
      }
#endif
      for (; c0 < C; ++c0) {
        float acc = bias ? bias[c0] : 0.0f;
        for (int i = i_lo; i < i_hi; ++i)
          for (int j = j_lo; j < j_hi; ++j) acc += wtp[(i * kw + j) * C + c0] * x[xo + (i * W + j) * C + c0];
        yp[c0] = acc;
      }
    }
  }
}

// x (B, L, C), w (C, 1, K), bias (C) or null -> y (B, L, C); causal or anti-causal, optional fused silu
void conv1d_depthwise_tokens(const float* x, int64_t B, int64_t L, int64_t C, const float* w, const float* bias,
                             int K, bool reverse, bool silu, float* y) {
  MAMBACV_CHECK(B >= 0 && L >= 0 && C > 0 && K > 0,
                "conv1d_depthwise_tokens: bad sizes B=" << B << " L=" << L << " C=" << C << " K=" << K);
  MAMBACV_CHECK(x != y, "conv1d_depthwise_tokens: y may not alias x");
  add_flops(static_cast<double>(B * L * C) * (2.0 * K + (silu ? 4.0 : 0.0)));  // silu: exp, add, div, mul
  // wt (K, C)
  std::vector<float> wt(static_cast<size_t>(K * C));
  for (int64_t c = 0; c < C; ++c)
    for (int k = 0; k < K; ++k) wt[k * C + c] = w[c * K + k];
  const float* wtp = wt.data();
  const int nt = num_threads();

#pragma omp parallel for num_threads(nt) schedule(static) if (B * L * C * K > detail::kParallelMinWork)
  for (int64_t bt = 0; bt < B * L; ++bt) {
    const int64_t b = bt / L, t = bt % L;
    float* __restrict yp = y + bt * C;
    if (bias)
      std::memcpy(yp, bias, sizeof(float) * C);
    else
      std::memset(yp, 0, sizeof(float) * C);
    for (int k = 0; k < K; ++k) {
      const int64_t s = reverse ? t + (K - 1) - k : t - (K - 1) + k;
      if (s < 0 || s >= L) continue;
      const float* __restrict xp = x + (b * L + s) * C;
      const float* __restrict wk = wtp + k * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] += wk[c] * xp[c];
    }
    if (silu) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] = detail::silu_f(yp[c]);
    }
  }
}

}  // namespace mambacv::ops
