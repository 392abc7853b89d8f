// kernels/cpu/ops_elementwise.cpp - activations, in-place arithmetic, NCHW <-> NHWC transposes and bicubic
// resampling. Activations use the vectorisable exp/erf of simd_math.h.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/simd_math.h"
#include "kernels/ops.h"
#include "mambacv/error.h"

namespace mambacv::ops {

namespace {
// Elementwise loops: parallel only when large (they are memory bound; a team wake-up costs a few microseconds).
constexpr int64_t kElemParallelMin = int64_t(1) << 16;
}  // namespace

void silu_inplace(float* x, int64_t n) {
  const int nt = num_threads();
#pragma omp parallel for simd num_threads(nt) schedule(static) if (n > kElemParallelMin)
  for (int64_t i = 0; i < n; ++i) x[i] = detail::silu_f(x[i]);
}

void gelu_inplace(float* x, int64_t n) {
  const int nt = num_threads();
#pragma omp parallel for simd num_threads(nt) schedule(static) if (n > kElemParallelMin / 4)
  for (int64_t i = 0; i < n; ++i) x[i] = detail::gelu_f(x[i]);
}

void relu_inplace(float* x, int64_t n) {
  const int nt = num_threads();
#pragma omp parallel for simd num_threads(nt) schedule(static) if (n > kElemParallelMin)
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void add_inplace(float* y, const float* x, int64_t n) {
  const int nt = num_threads();
#pragma omp parallel for simd num_threads(nt) schedule(static) if (n > kElemParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void mul_inplace(float* y, const float* x, int64_t n) {
  const int nt = num_threads();
#pragma omp parallel for simd num_threads(nt) schedule(static) if (n > kElemParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] *= x[i];
}

// ---- layout: blocked transposes of each batch item's (R, S) matrix into (S, R) ----------------------------------
namespace {
constexpr int64_t kTile = 32;
// x (B, R, S) -> y (B, S, R)
void batched_transpose(const float* x, int64_t B, int64_t R, int64_t S, float* y) {
  MAMBACV_CHECK(B >= 0 && R >= 0 && S >= 0, "transpose: negative size");
  MAMBACV_CHECK(x != y || R == 1 || S == 1, "nchw/nhwc transpose: y may not alias x");
  const int64_t tr = (R + kTile - 1) / kTile, ts = (S + kTile - 1) / kTile;
  const int nt = num_threads();
#pragma omp parallel for collapse(2) num_threads(nt) schedule(static) if (B * R * S > kElemParallelMin)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < tr * ts; ++t) {
      const int64_t r0 = (t / ts) * kTile, s0 = (t % ts) * kTile;
      const int64_t r1 = std::min(R, r0 + kTile), s1 = std::min(S, s0 + kTile);
      const float* xb = x + b * R * S;
      float* yb = y + b * R * S;
      for (int64_t s = s0; s < s1; ++s)
        for (int64_t r = r0; r < r1; ++r) yb[s * R + r] = xb[r * S + s];
    }
}
}  // namespace

// x (B, C, HW) -> y (B, HW, C)
void nchw_to_nhwc(const float* x, int64_t B, int64_t C, int64_t HW, float* y) {
  if (x == y && (C == 1 || HW == 1)) return;
  batched_transpose(x, B, C, HW, y);
}
// x (B, HW, C) -> y (B, C, HW)
void nhwc_to_nchw(const float* x, int64_t B, int64_t HW, int64_t C, float* y) {
  if (x == y && (C == 1 || HW == 1)) return;
  batched_transpose(x, B, HW, C, y);
}

// ---- bicubic resize ------------------------------------------------------------------------------------------------
// PyTorch upsample_bicubic2d (aten/src/ATen/native/UpSample.h), align_corners=False, no explicit scale_factor:
//   scale = in / out, src = (dst + 0.5) * scale - 0.5 (not clamped for cubic), i0 = floor(src), t = src - i0,
//   taps i0-1 .. i0+2 clamped to [0, in-1], weights from the cubic convolution kernel with A = -0.75.
namespace {
constexpr float kCubicA = -0.75f;
float cubic1(float x) { return ((kCubicA + 2) * x - (kCubicA + 3)) * x * x + 1; }             // |x| <= 1
float cubic2(float x) { return ((kCubicA * x - 5 * kCubicA) * x + 8 * kCubicA) * x - 4 * kCubicA; }  // 1 < |x| < 2

struct CubicTaps {
  int64_t idx[4];
  float w[4];
};
std::vector<CubicTaps> cubic_taps(int64_t in, int64_t out) {
  std::vector<CubicTaps> taps(static_cast<size_t>(out));
  // PyTorch does this arithmetic in float (the opmath type of a float input); so do we.
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t o = 0; o < out; ++o) {
    const float src = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
    const float fl = std::floor(src);
    const int64_t i0 = static_cast<int64_t>(fl);
    const float t = src - fl;
    const float w[4] = {cubic2(t + 1.0f), cubic1(t), cubic1(1.0f - t), cubic2(2.0f - t)};
    for (int k = 0; k < 4; ++k) {
      taps[o].idx[k] = std::min<int64_t>(std::max<int64_t>(i0 - 1 + k, 0), in - 1);
      taps[o].w[k] = w[k];
    }
  }
  return taps;
}
}  // namespace

// x (Hi, Wi, C) -> y (Ho, Wo, C)
void resize_bicubic_hwc(const float* x, int64_t Hi, int64_t Wi, int64_t C, int64_t Ho, int64_t Wo, float* y) {
  MAMBACV_CHECK(Hi > 0 && Wi > 0 && C > 0 && Ho > 0 && Wo > 0,
                "resize_bicubic_hwc: bad sizes in (" << Hi << ", " << Wi << ", " << C << ") out (" << Ho << ", "
                                                     << Wo << ")");
  if (Hi == Ho && Wi == Wo) {  // PyTorch copies in this case; the weights would be (0, 1, 0, 0) anyway
    std::copy(x, x + Hi * Wi * C, y);
    return;
  }
  const std::vector<CubicTaps> ty = cubic_taps(Hi, Ho), tx = cubic_taps(Wi, Wo);
  const int nt = num_threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (Ho * Wo * C * 16 > detail::kParallelMinWork)
  for (int64_t oy = 0; oy < Ho; ++oy) {
    const CubicTaps& a = ty[oy];
    for (int64_t ox = 0; ox < Wo; ++ox) {
      const CubicTaps& b = tx[ox];
      float* __restrict yp = y + (oy * Wo + ox) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] = 0.0f;
      for (int i = 0; i < 4; ++i) {
        // horizontal interpolation of source row a.idx[i], then weighted by the vertical tap
        const float* xr = x + a.idx[i] * Wi * C;
        const float* p0 = xr + b.idx[0] * C;
        const float* p1 = xr + b.idx[1] * C;
        const float* p2 = xr + b.idx[2] * C;
        const float* p3 = xr + b.idx[3] * C;
        const float wy = a.w[i];
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          yp[c] += wy * (b.w[0] * p0[c] + b.w[1] * p1[c] + b.w[2] * p2[c] + b.w[3] * p3[c]);
      }
    }
  }
}

}  // namespace mambacv::ops
