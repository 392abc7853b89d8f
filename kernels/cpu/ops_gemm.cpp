// kernels/cpu/ops_gemm.cpp - fp32 GEMM and Linear: OpenBLAS (OpenMP build) when the build found it, else Eigen's
// blocked, OpenMP-parallel product kernel.
// Row-major raw buffers are wrapped in Eigen::Map with an outer stride, so no copies are made; Eigen picks GEMV
// for M == 1 or N == 1 and a coefficient-wise product for tiny shapes.
// GCC 12 reports false -Wmaybe-uninitialized inside Eigen's AVX-512 packet code instantiated here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#include <algorithm>
#ifdef MAMBACV_WITH_OPENBLAS
#include <cblas.h>
#endif

#include "kernels/flops.h"
#include "kernels/ops.h"
#include "mambacv/error.h"

namespace mambacv::ops {

namespace {
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;
using MutMap = Eigen::Map<RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;
}  // namespace

namespace {
void check_gemm_args(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                     bool trans_b, float* C, int64_t ldc) {
  MAMBACV_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M=" << M << " N=" << N << " K=" << K);
  if (M == 0 || N == 0) return;
  // row strides matter only where there is more than one row
  MAMBACV_CHECK((M == 1 || lda >= K) && (M == 1 || ldc >= N) && ((trans_b ? N : K) <= 1 || ldb >= (trans_b ? K : N)),
                "gemm: row strides too small: lda=" << lda << " (K=" << K << "), ldb=" << ldb << " (needs "
                                                    << (trans_b ? K : N) << "), ldc=" << ldc << " (N=" << N << ")");
  MAMBACV_CHECK(C != nullptr && (K == 0 || (A != nullptr && B != nullptr)), "gemm: null operand");
}
}  // namespace

// Eigen's product kernel: the fallback backend, always compiled and tested.
void gemm_eigen(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                bool trans_b, float* C, int64_t ldc, const float* bias, float beta) {
  check_gemm_args(M, N, K, A, lda, B, ldb, trans_b, C, ldc);
  if (M == 0 || N == 0) return;
  MutMap c(C, M, N, Eigen::OuterStride<>(ldc));
  // Initialise C with bias / beta * C, then accumulate the product into it.
  if (beta == 0.0f) {
    if (bias) {
      c.rowwise() = Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>>(bias, N);
    } else if (K > 0) {
      const ConstMap a(A, M, K, Eigen::OuterStride<>(lda));
      if (trans_b) {
        c.noalias() = a * ConstMap(B, N, K, Eigen::OuterStride<>(ldb)).transpose();
      } else {
        c.noalias() = a * ConstMap(B, K, N, Eigen::OuterStride<>(ldb));
      }
      return;
    } else {
      c.setZero();
    }
  } else {
    if (beta != 1.0f) c *= beta;
    if (bias) c.rowwise() += Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>>(bias, N);
  }
  if (K == 0) return;
  const ConstMap a(A, M, K, Eigen::OuterStride<>(lda));
  if (trans_b) {
    c.noalias() += a * ConstMap(B, N, K, Eigen::OuterStride<>(ldb)).transpose();
  } else {
    c.noalias() += a * ConstMap(B, K, N, Eigen::OuterStride<>(ldb));
  }
}

#ifdef MAMBACV_WITH_OPENBLAS
// OpenBLAS (its OpenMP build): C = bias (+ beta C) first, then one sgemm accumulating into it.
void gemm_openblas(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                   bool trans_b, float* C, int64_t ldc, const float* bias, float beta) {
  check_gemm_args(M, N, K, A, lda, B, ldb, trans_b, C, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0) return gemm_eigen(M, N, K, A, lda, B, ldb, trans_b, C, ldc, bias, beta);
  float b = beta;
  if (bias) {  // C = bias (+ beta * C), then C += A op(B)
    for (int64_t i = 0; i < M; ++i) {
      float* row = C + i * ldc;
      if (beta == 0.0f) {
        std::copy(bias, bias + N, row);
      } else {
        for (int64_t j = 0; j < N; ++j) row[j] = beta * row[j] + bias[j];
      }
    }
    b = 1.0f;
  }
  // cblas checks every leading dimension even where a single row makes it irrelevant
  const int64_t lda_ = M == 1 ? std::max(lda, K) : lda;
  const int64_t ldb_ = (trans_b ? N : K) <= 1 ? std::max(ldb, trans_b ? K : N) : ldb;
  const int64_t ldc_ = M == 1 ? std::max(ldc, N) : ldc;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), 1.0f, A, static_cast<blasint>(lda_), B,
              static_cast<blasint>(std::max<int64_t>(ldb_, 1)), b, C, static_cast<blasint>(ldc_));
}
#endif

const char* gemm_backend() {
#ifdef MAMBACV_WITH_OPENBLAS
  return "openblas";
#else
  return "eigen";
#endif
}

// C (M, N) = A (M, K) @ op(B) [+ bias (N)] [+ beta * C]; op(B) = B^T with B (N, K) when trans_b, else B (K, N).
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, bool trans_b,
          float* C, int64_t ldc, const float* bias, float beta) {
  add_flops(2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K));
#ifdef MAMBACV_WITH_OPENBLAS
  gemm_openblas(M, N, K, A, lda, B, ldb, trans_b, C, ldc, bias, beta);
#else
  gemm_eigen(M, N, K, A, lda, B, ldb, trans_b, C, ldc, bias, beta);
#endif
}

// y (M, out) = x (M, in) @ W (out, in)^T + b (out)
void linear(const float* x, int64_t M, int64_t in, const float* W, const float* b, int64_t out, float* y) {
  gemm(M, out, in, x, in, W, in, /*trans_b=*/true, y, out, b, 0.0f);
}

}  // namespace mambacv::ops
