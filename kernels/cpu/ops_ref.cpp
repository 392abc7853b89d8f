// kernels/cpu/ops_ref.cpp - plain scalar references of the op set (ops::ref), double accumulation.
// Obviously correct rather than fast: the fast ops (ops_gemm.cpp, ops_conv.cpp, ops_norm.cpp) are tested against
// these in tests/test_ops.cpp.
#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "mambacv/error.h"

namespace mambacv::ops::ref {

// C (M, N) = A (M, K) @ op(B) [+ bias (N)] [+ beta * C]
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, bool trans_b,
          float* C, int64_t ldc, const float* bias, float beta) {
  MAMBACV_CHECK(M >= 0 && N >= 0 && K >= 0, "ref::gemm: negative size M=" << M << " N=" << N << " K=" << K);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double b = trans_b ? B[n * ldb + k] : B[k * ldb + n];
        acc += static_cast<double>(A[m * lda + k]) * b;
      }
      if (bias) acc += bias[n];
      if (beta != 0.0f) acc += static_cast<double>(beta) * C[m * ldc + n];
      C[m * ldc + n] = static_cast<float>(acc);
    }
  }
}

// x (B, H, W, Cin), w (Cout, Cin, kh, kw) -> y (B, Ho, Wo, Cout)
void conv2d_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t Cin, const float* w, const float* bias,
                 int64_t Cout, int kh, int kw, int sh, int sw, int ph, int pw, float* y) {
  const int64_t Ho = conv_out_size(H, kh, sh, ph), Wo = conv_out_size(W, kw, sw, pw);
  MAMBACV_CHECK(Ho > 0 && Wo > 0 && sh > 0 && sw > 0, "ref::conv2d_nhwc: empty output");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t oh = 0; oh < Ho; ++oh)
      for (int64_t ow = 0; ow < Wo; ++ow)
        for (int64_t co = 0; co < Cout; ++co) {
          double acc = bias ? bias[co] : 0.0;
          for (int64_t ci = 0; ci < Cin; ++ci)
            for (int i = 0; i < kh; ++i)
              for (int j = 0; j < kw; ++j) {
                const int64_t ih = oh * sh - ph + i, iw = ow * sw - pw + j;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += static_cast<double>(x[((b * H + ih) * W + iw) * Cin + ci]) *
                       w[((co * Cin + ci) * kh + i) * kw + j];
              }
          y[((b * Ho + oh) * Wo + ow) * Cout + co] = static_cast<float>(acc);
        }
}

// x (B, H, W, C), w (C, 1, kh, kw) -> y (B, Ho, Wo, C), stride 1
void depthwise_conv2d_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, const float* w,
                           const float* bias, int kh, int kw, int ph, int pw, float* y) {
  const int64_t Ho = conv_out_size(H, kh, 1, ph), Wo = conv_out_size(W, kw, 1, pw);
  MAMBACV_CHECK(Ho > 0 && Wo > 0, "ref::depthwise_conv2d_nhwc: empty output");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t oh = 0; oh < Ho; ++oh)
      for (int64_t ow = 0; ow < Wo; ++ow)
        for (int64_t c = 0; c < C; ++c) {
          double acc = bias ? bias[c] : 0.0;
          for (int i = 0; i < kh; ++i)
            for (int j = 0; j < kw; ++j) {
              const int64_t ih = oh - ph + i, iw = ow - pw + j;
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              acc += static_cast<double>(x[((b * H + ih) * W + iw) * C + c]) * w[(c * kh + i) * kw + j];
            }
          y[((b * Ho + oh) * Wo + ow) * C + c] = static_cast<float>(acc);
        }
}

// x (B, L, C), w (C, 1, K) -> y (B, L, C)
void conv1d_depthwise_tokens(const float* x, int64_t B, int64_t L, int64_t C, const float* w, const float* bias,
                             int K, bool reverse, bool silu, float* y) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double acc = bias ? bias[c] : 0.0;
        for (int k = 0; k < K; ++k) {
          const int64_t s = reverse ? t + (K - 1) - k : t - (K - 1) + k;
          if (s < 0 || s >= L) continue;
          acc += static_cast<double>(w[c * K + k]) * x[(b * L + s) * C + c];
        }
        if (silu) acc = acc / (1.0 + std::exp(-acc));
        y[(b * L + t) * C + c] = static_cast<float>(acc);
      }
}

// x (rows, C) -> y (rows, C); biased variance like torch.nn.LayerNorm
void layer_norm(const float* x, int64_t rows, int64_t C, const float* gamma, const float* beta, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    double mean = 0.0;
    for (int64_t c = 0; c < C; ++c) mean += xr[c];
    mean /= static_cast<double>(C);
    double var = 0.0;
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    var /= static_cast<double>(C);
    const double rstd = 1.0 / std::sqrt(var + eps);
    float* yr = y + r * C;
    for (int64_t c = 0; c < C; ++c)
      yr[c] = static_cast<float>((xr[c] - mean) * rstd * gamma[c] + (beta ? beta[c] : 0.0));
  }
}

// y = x / sqrt(mean(x^2) + eps) * gamma
void rms_norm(const float* x, int64_t rows, int64_t C, const float* gamma, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    double ms = 0.0;
    for (int64_t c = 0; c < C; ++c) ms += static_cast<double>(xr[c]) * xr[c];
    ms /= static_cast<double>(C);
    const double rstd = 1.0 / std::sqrt(ms + eps);
    float* yr = y + r * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = static_cast<float>(xr[c] * rstd * gamma[c]);
  }
}

}  // namespace mambacv::ops::ref
