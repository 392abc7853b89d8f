// kernels/cpu/ops_norm.cpp - LayerNorm and RMSNorm over the last dimension, fp32, two passes (mean, then the
// centred sum of squares) so large offsets do not cancel; biased variance like torch.nn.LayerNorm.
// Vectorised along C, rows split over the context's threads. y may be x: each row is read before it is written.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/round_simd.h"
#include "kernels/cpu/simd_math.h"
#include "kernels/ops.h"
#include "mambacv/error.h"

namespace mambacv::ops {

namespace {
// x (rows, C) -> y (rows, C); gamma (C), beta (C) or null; y rounded as `mode` (simd::rows_then_round)
void layer_norm_f32(const ExecContext& ctx, const float* x, int64_t rows, int64_t C, const float* gamma,
                    const float* beta, float eps, float* y, int mode) {
  const float inv_c = 1.0f / static_cast<float>(C);
  auto body = [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
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
      // f32 sums overflow for finite values beyond ~1e19: such a row goes to the reference, which accumulates in
      // double as PyTorch's CPU kernels do, so huge finite inputs give finite outputs (non-finite ones stay so)
      if (!std::isfinite(sq)) {
        ref::layer_norm(xr, 1, C, gamma, beta, eps, yr);
        continue;
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
  };
  const bool avx512 = cpu::cpu_isa() == cpu::Isa::Avx512;
  parallel_for(ctx, rows, static_cast<double>(rows * C), [&](int64_t r0, int64_t r1) {
    simd::rows_then_round(r0, r1, C, mode, y, [&](int64_t s, int64_t t) { detail::run_simd(avx512, body, s, t); });
  });
}

void rms_norm_f32(const ExecContext& ctx, const float* x, int64_t rows, int64_t C, const float* gamma, float eps,
                  float* y, int mode) {
  const float inv_c = 1.0f / static_cast<float>(C);
  auto body = [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      float* yr = y + r * C;
      float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
      for (int64_t c = 0; c < C; ++c) sq += xr[c] * xr[c];
      if (!std::isfinite(sq)) {  // overflowed: the double-accumulating reference (see layer_norm_f32)
        ref::rms_norm(xr, 1, C, gamma, eps, yr);
        continue;
      }
      const float rstd = 1.0f / std::sqrt(sq * inv_c + eps);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * rstd * gamma[c];
    }
  };
  const bool avx512 = cpu::cpu_isa() == cpu::Isa::Avx512;
  parallel_for(ctx, rows, static_cast<double>(rows * C), [&](int64_t r0, int64_t r1) {
    simd::rows_then_round(r0, r1, C, mode, y, [&](int64_t s, int64_t t) { detail::run_simd(avx512, body, s, t); });
  });
}

// rows of x over its last dim, with gamma (and beta) of that width, y of x's shape
int64_t check_norm(const char* op, const Tensor& x, const Tensor& gamma, const Tensor* beta, const Tensor& y) {
  MAMBACV_CHECK(x.defined() && x.ndim() >= 1 && x.dim(-1) > 0, op << ": x must have a non-empty last dimension, got "
                                                                << (x.defined() ? x.str() : "an empty tensor"));
  const int64_t C = x.dim(-1);
  MAMBACV_CHECK(gamma.defined() && gamma.numel() == C, op << ": gamma must have " << C << " values for x " << x.str()
                                                          << ", got " << (gamma.defined() ? gamma.str() : "none"));
  MAMBACV_CHECK(!beta || !beta->defined() || beta->numel() == C,
                op << ": beta must have " << C << " values, got " << beta->str());
  MAMBACV_CHECK(y.defined() && y.numel() == x.numel(), op << ": y must match x " << x.str() << ", got "
                                                          << (y.defined() ? y.str() : "an empty tensor"));
  return x.numel() / C;
}
}  // namespace

void layer_norm(const ExecContext& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                Tensor& y, Rounding round) {
  const int64_t rows = check_norm("layer_norm", x, gamma, &beta, y);
  if (beta.defined()) {
    require_f32("layer_norm", {{"x", &x}, {"gamma", &gamma}, {"beta", &beta}, {"y", &y}});
  } else {
    require_f32("layer_norm", {{"x", &x}, {"gamma", &gamma}, {"y", &y}});
  }
  const int64_t C = x.dim(-1);
  // sum, centre, square+sum, normalise, scale[, shift]
  OpTrace trace(ctx, "layer_norm", static_cast<double>(rows * C) * (beta.defined() ? 8.0 : 7.0),
                8.0 * static_cast<double>(rows * C));
  layer_norm_f32(ctx, x.f32(), rows, C, gamma.f32(), beta.defined() ? beta.f32() : nullptr, eps, y.f32(),
                 simd::round_mode(round));
}

void rms_norm(const ExecContext& ctx, const Tensor& x, const Tensor& gamma, float eps, Tensor& y, Rounding round) {
  const int64_t rows = check_norm("rms_norm", x, gamma, nullptr, y);
  require_f32("rms_norm", {{"x", &x}, {"gamma", &gamma}, {"y", &y}});
  const int64_t C = x.dim(-1);
  OpTrace trace(ctx, "rms_norm", static_cast<double>(rows * C) * 4.0, 8.0 * static_cast<double>(rows * C));
  rms_norm_f32(ctx, x.f32(), rows, C, gamma.f32(), eps, y.f32(), simd::round_mode(round));
}

}  // namespace mambacv::ops
