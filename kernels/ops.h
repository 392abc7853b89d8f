// kernels/ops.h - the CPU op set used by the models (fp32). Raw pointers with shapes in the comments; all
// tensors dense row-major. Every op has a plain reference (namespace ref) that is always compiled and that the
// fast version is tested against (tests/test_ops.cpp). Ops parallelise internally with OpenMP and keep no state,
// so they may be called from several threads at once.
#pragma once

#include <cstdint>

namespace mambacv::ops {

// ---- matrix products ------------------------------------------------------------------------------------------
// C (M, N) = A (M, K) @ op(B) [+ bias (N)] [+ beta * C]
//   trans_b == true : B is (N, K) with row stride ldb  (PyTorch Linear / conv weight layout)
//   trans_b == false: B is (K, N) with row stride ldb
// lda / ldc are row strides of A and C. beta is 0 or 1 (accumulate).
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, bool trans_b,
          float* C, int64_t ldc, const float* bias = nullptr, float beta = 0.0f);

// The backends behind gemm (same contract): Eigen's product kernel (always compiled) and, when the build found it,
// OpenBLAS's OpenMP build. gemm_backend() names the one gemm uses: "openblas" or "eigen".
void gemm_eigen(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                bool trans_b, float* C, int64_t ldc, const float* bias = nullptr, float beta = 0.0f);
const char* gemm_backend();

// y (M, out) = x (M, in) @ W (out, in)^T + b (out) (b may be null)
void linear(const float* x, int64_t M, int64_t in, const float* W, const float* b, int64_t out, float* y);

// ---- convolutions ---------------------------------------------------------------------------------------------
// Dense 2D convolution, channels-last: x (B, H, W, Cin), w (Cout, Cin, kh, kw) in PyTorch layout, bias (Cout) or
// null, stride (sh, sw), zero padding (ph, pw) -> y (B, Ho, Wo, Cout), Ho = (H + 2ph - kh) / sh + 1.
void conv2d_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t Cin, const float* w, const float* bias,
                 int64_t Cout, int kh, int kw, int sh, int sw, int ph, int pw, float* y);
inline int64_t conv_out_size(int64_t in, int k, int s, int p) { return (in + 2 * p - k) / s + 1; }

// Depthwise 2D convolution, channels-last: x (B, H, W, C), w (C, 1, kh, kw), bias (C) or null, stride 1,
// zero padding (ph, pw) -> y (B, Ho, Wo, C).
void depthwise_conv2d_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, const float* w,
                           const float* bias, int kh, int kw, int ph, int pw, float* y);

// Depthwise 1D convolution over tokens, channels-last: x (B, L, C), w (C, 1, K), bias (C) or null.
//   causal (reverse=false): y[t] = b + sum_{k<K} w[k] * x[t - (K-1) + k]        (left zero padding K-1)
//   anti-causal (reverse=true): y[t] = b + sum_{k<K} w[k] * x[t + (K-1) - k]   (the causal conv of the reversed
//   sequence, read back in original order: Vim's backward branch)
// If silu is true, y = silu(y). Output y (B, L, C), may not alias x.
void conv1d_depthwise_tokens(const float* x, int64_t B, int64_t L, int64_t C, const float* w, const float* bias,
                             int K, bool reverse, bool silu, float* y);

// ---- normalisation ---------------------------------------------------------------------------------------------
// LayerNorm over the last dim: x (rows, C) -> y (rows, C); gamma/beta (C) (beta may be null). y may alias x.
void layer_norm(const float* x, int64_t rows, int64_t C, const float* gamma, const float* beta, float eps, float* y);
// RMSNorm over the last dim: y = x / sqrt(mean(x^2) + eps) * gamma. y may alias x.
void rms_norm(const float* x, int64_t rows, int64_t C, const float* gamma, float eps, float* y);

// ---- elementwise -------------------------------------------------------------------------------------------------
void silu_inplace(float* x, int64_t n);                      // x / (1 + exp(-x))
void gelu_inplace(float* x, int64_t n);                      // exact: 0.5 x (1 + erf(x / sqrt 2))
void relu_inplace(float* x, int64_t n);
void add_inplace(float* y, const float* x, int64_t n);       // y += x
void mul_inplace(float* y, const float* x, int64_t n);       // y *= x

// ---- layout ------------------------------------------------------------------------------------------------------
// x (B, C, HW) -> y (B, HW, C) and back.
void nchw_to_nhwc(const float* x, int64_t B, int64_t C, int64_t HW, float* y);
void nhwc_to_nchw(const float* x, int64_t B, int64_t HW, int64_t C, float* y);

// ---- resampling --------------------------------------------------------------------------------------------------
// Bicubic interpolation of a channels-last grid, PyTorch F.interpolate(mode="bicubic", align_corners=False)
// semantics (A = -0.75, border clamped): x (Hi, Wi, C) -> y (Ho, Wo, C).
void resize_bicubic_hwc(const float* x, int64_t Hi, int64_t Wi, int64_t C, int64_t Ho, int64_t Wo, float* y);

// Plain references of the ops above (same signatures), scalar loops; always compiled.
namespace ref {
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, bool trans_b,
          float* C, int64_t ldc, const float* bias = nullptr, float beta = 0.0f);
void conv2d_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t Cin, const float* w, const float* bias,
                 int64_t Cout, int kh, int kw, int sh, int sw, int ph, int pw, float* y);
void depthwise_conv2d_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, const float* w,
                           const float* bias, int kh, int kw, int ph, int pw, float* y);
void conv1d_depthwise_tokens(const float* x, int64_t B, int64_t L, int64_t C, const float* w, const float* bias,
                             int K, bool reverse, bool silu, float* y);
void layer_norm(const float* x, int64_t rows, int64_t C, const float* gamma, const float* beta, float eps, float* y);
void rms_norm(const float* x, int64_t rows, int64_t C, const float* gamma, float eps, float* y);
}  // namespace ref

// Threads used by the library's parallel regions (OpenMP); n <= 0 restores the default (all cores).
void set_num_threads(int n);
int num_threads();

}  // namespace mambacv::ops
