// kernels/cpu/ops_norm.cpp - LayerNorm and RMSNorm over the last dimension, fp32, two passes (mean, then the
// centred sum of squares) so large offsets do not cancel; biased variance like torch.nn.LayerNorm.
// Vectorised along C, OpenMP over rows. y may alias x: each row is read completely before it is written.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/simd_math.h"
#include "kernels/flops.h"
#include "kernels/ops.h"
#include "mambacv/error.h"

namespace mambacv::ops {

// x (rows, C) -> y (rows, C); gamma (C), beta (C) or null
void layer_norm(const float* x, int64_t rows, int64_t C, const float* gamma, const float* beta, float eps, float* y) {
  MAMBACV_CHECK(rows >= 0 && C > 0, "layer_norm: bad sizes rows=" << rows << " C=" << C);
  MAMBACV_CHECK(gamma != nullptr, "layer_norm: gamma is null");
  add_flops(static_cast<double>(rows * C) * (beta ? 8.0 : 7.0));  // sum, centre, square+sum, normalise, scale[, shift]
  const float inv_c = 1.0f / static_cast<float>(C);
  const int nt = num_threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (rows * C > detail::kParallelMinWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; ++c) sum += xr[c];
    const float mean = sum * inv_c;
    // second pass: centred sums. d = x - mean is exact for x near mean (Sterbenz), and sum(d) / C corrects the
    // rounding of the first-pass mean, so rows with a large offset keep full relative precision.
    float sd = 0.0f, sq = 0.0f;
#pragma omp simd reduction(+ : sd, sq)
    for (int64_t c = 0; c < C; ++c) {
      const float d = xr[c] - mean;
      sd += d;
      sq += d * d;
    }
    const float corr = sd * inv_c;
    const float var = std::max(sq * inv_c - corr * corr, 0.0f);
    const float rstd = 1.0f / std::sqrt(var + eps);
    if (beta) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = ((xr[c] - mean) - corr) * rstd * gamma[c] + beta[c];
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = ((xr[c] - mean) - corr) * rstd * gamma[c];
    }
  }
}

// y = x / sqrt(mean(x^2) + eps) * gamma; x, y (rows, C)
void rms_norm(const float* x, int64_t rows, int64_t C, const float* gamma, float eps, float* y) {
  MAMBACV_CHECK(rows >= 0 && C > 0, "rms_norm: bad sizes rows=" << rows << " C=" << C);
  MAMBACV_CHECK(gamma != nullptr, "rms_norm: gamma is null");
  add_flops(static_cast<double>(rows * C) * 4.0);  // square+sum, normalise, scale
  const float inv_c = 1.0f / static_cast<float>(C);
  const int nt = num_threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (rows * C > detail::kParallelMinWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < C; ++c) sq += xr[c] * xr[c];
    const float rstd = 1.0f / std::sqrt(sq * inv_c + eps);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * rstd * gamma[c];
  }
}

}  // namespace mambacv::ops
