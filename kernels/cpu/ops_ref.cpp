// kernels/cpu/ops_ref.cpp - plain scalar references of the op set (ops::ref), double accumulation.
// Obviously correct rather than fast: the fast ops (ops_gemm.cpp, ops_conv.cpp, ops_norm.cpp) are tested against
// these in tests/test_ops.cpp.
#include <algorithm>
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

float round_to(DType dt, bool saturate, float x) {
  constexpr float kF16Max = 65504.0f;
  switch (dt) {
    case DType::F16:
      if (saturate && !std::isnan(x)) x = std::min(kF16Max, std::max(-kF16Max, x));
      return f16_to_f32(f32_to_f16(x));
    case DType::BF16:
      return bf16_to_f32(f32_to_bf16(x));
    default:
      return x;
  }
}

float activate(Act a, float x) {
  const double v = x;
  switch (a) {
    case Act::Silu:
      return static_cast<float>(v / (1.0 + std::exp(-v)));
    case Act::Gelu:
      return static_cast<float>(0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))));
    case Act::Relu:
      return x < 0.0f ? 0.0f : x;  // NaN stays NaN, as torch.relu
    default:
      return static_cast<float>(1.0 / (1.0 + std::exp(-v)));
  }
}

// delta (rows, G*D)[:, g*D + c] = sum_r x[row, g*P + r] * w[g, c, r]
void dt_projection(const float* x, int64_t rows, int64_t G, int64_t P, int64_t R, const float* w, int64_t D,
                   float* delta) {
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c = 0; c < D; ++c) {
        double acc = 0;
        for (int64_t r = 0; r < R; ++r) acc += static_cast<double>(x[t * G * P + g * P + r]) * w[(g * D + c) * R + r];
        delta[(g * rows + t) * D + c] = static_cast<float>(acc);
      }
}

// y (B, M+1, D): tokens 0..at-1 = patches 0..at-1, token at = `token`, then the rest; + pos (M+1, D)
void insert_token_add(const float* patches, int64_t B, int64_t M, int64_t D, const float* token, int64_t at,
                      const float* pos, float* y) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t <= M; ++t)
      for (int64_t c = 0; c < D; ++c) {
        const float v = t < at ? patches[(b * M + t) * D + c] : t == at ? token[c] : patches[(b * M + t - 1) * D + c];
        y[(b * (M + 1) + t) * D + c] = v + pos[t * D + c];
      }
}

void mean_tokens(const float* x, int64_t B, int64_t L, int64_t C, float* y) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t l = 0; l < L; ++l) s += x[(b * L + l) * C + c];
      y[b * C + c] = static_cast<float>(s / static_cast<double>(L));
    }
}

// upstream PatchMerging2D: pad to even, x0 = x[0::2, 0::2], x1 = x[1::2, 0::2], x2 = x[0::2, 1::2], x3 = x[1::2, 1::2]
void patch_merge_2x2(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, float* y) {
  const int64_t H2 = (H + 1) / 2, W2 = (W + 1) / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < H2; ++i)
      for (int64_t j = 0; j < W2; ++j)
        for (int q = 0; q < 4; ++q)
          for (int64_t c = 0; c < C; ++c) {
            const int64_t h = 2 * i + (q & 1), w = 2 * j + (q >> 1);
            y[((b * H2 + i) * W2 + j) * 4 * C + q * C + c] = h < H && w < W ? x[((b * H + h) * W + w) * C + c] : 0.0f;
          }
}

// PyTorch upsample_bicubic2d, align_corners=False: src = (dst + 0.5) * in / out - 0.5, taps floor(src)-1..+2
// clamped, cubic convolution weights with A = -0.75; separable, computed per output pixel in double.
void resize_bicubic_hwc(const float* x, int64_t Hi, int64_t Wi, int64_t C, int64_t Ho, int64_t Wo, float* y) {
  auto weights = [](double t, double w[4]) {
    const double A = -0.75;
    auto c1 = [A](double v) { return ((A + 2) * v - (A + 3)) * v * v + 1; };
    auto c2 = [A](double v) { return ((A * v - 5 * A) * v + 8 * A) * v - 4 * A; };
    w[0] = c2(t + 1), w[1] = c1(t), w[2] = c1(1 - t), w[3] = c2(2 - t);
  };
  for (int64_t oy = 0; oy < Ho; ++oy)
    for (int64_t ox = 0; ox < Wo; ++ox) {
      const double sy = (oy + 0.5) * static_cast<double>(static_cast<float>(Hi) / static_cast<float>(Ho)) - 0.5;
      const double sx = (ox + 0.5) * static_cast<double>(static_cast<float>(Wi) / static_cast<float>(Wo)) - 0.5;
      const int64_t iy = static_cast<int64_t>(std::floor(sy)), ix = static_cast<int64_t>(std::floor(sx));
      double wy[4], wx[4];
      weights(sy - static_cast<double>(iy), wy);
      weights(sx - static_cast<double>(ix), wx);
      for (int64_t c = 0; c < C; ++c) {
        double acc = 0;
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) {
            const int64_t yy = std::min<int64_t>(std::max<int64_t>(iy - 1 + i, 0), Hi - 1);
            const int64_t xx = std::min<int64_t>(std::max<int64_t>(ix - 1 + j, 0), Wi - 1);
            acc += wy[i] * wx[j] * x[(yy * Wi + xx) * C + c];
          }
        y[(oy * Wo + ox) * C + c] = static_cast<float>(acc);
      }
    }
}

}  // namespace mambacv::ops::ref
