// kernels/cpu/ops_elementwise.cpp - operand checks, activations, in-place arithmetic, layout and token ops, the
// dt projection and bicubic resampling (semantics in kernels/ops.h). Activations use the vectorisable exp/erf of
// simd_math.h. Loops split their rows over the context's threads when the work pays for it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the intrinsics' deliberate _mm512_undefined_*() pass-through operands as maybe-uninitialized once
// they are inlined (a known false positive); the warning is reported at the header's lines, hence placed here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "kernels/cpu/round_simd.h"
#include "kernels/cpu/simd_math.h"
#include "kernels/ops.h"
#include "mambacv/error.h"

namespace mambacv::ops {

std::string supports_f32(const char* op, std::initializer_list<Operand> operands) {
  for (const Operand& o : operands) {
    const Tensor& t = *o.second;
    std::ostringstream m;
    if (!t.defined()) {
      m << op << ": operand " << o.first << " is missing";
      return m.str();
    }
    if (t.dtype() != DType::F32 || t.device() != Device::Cpu) {
      m << op << ": operand " << o.first << " is " << dtype_name(t.dtype()) << " on " << device_name(t.device())
        << "; this build implements " << op << " for f32 on cpu only";
      return m.str();
    }
  }
  return "";
}

void require_f32(const char* op, std::initializer_list<Operand> operands) {
  const std::string why = supports_f32(op, operands);
  if (!why.empty()) throw Error(why);
}

const char* act_name(Act a) {
  switch (a) {
    case Act::Silu:
      return "silu";
    case Act::Gelu:
      return "gelu";
    case Act::Relu:
      return "relu";
    default:
      return "sigmoid";
  }
}

namespace {
// Elementwise loops are memory bound: parallel only when large (a team wake-up costs a few microseconds).
constexpr double kElemWork = 4.0;  // weight of one element against kParallelMinWork

// x[0, n) = f(x) in place, the loop compiled for AVX-512 or the baseline (detail::run_simd)
template <class F>
void map_span(bool avx512, float* x, int64_t n, F f) {
  auto body = [x, f](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) x[i] = f(x[i]);
  };
  detail::run_simd(avx512, body, 0, n);
}

// x[0, n) = a(x) in place: the one element loop of every activation, for activate() and the GEMM's epilogue.
// Sigmoid takes libm's expf, as the detection heads always used (scores feed sorts and thresholds).
void act_span(Act a, bool avx512, float* x, int64_t n) {
  switch (a) {
    case Act::Silu:
      return map_span(avx512, x, n, [](float v) { return detail::silu_f(v); });
    case Act::Gelu:
      return map_span(avx512, x, n, [](float v) { return detail::gelu_f(v); });
    case Act::Relu:
      return map_span(avx512, x, n, [](float v) { return v < 0.0f ? 0.0f : v; });  // NaN stays NaN
    case Act::Sigmoid:
      for (int64_t i = 0; i < n; ++i) x[i] = 1.0f / (1.0f + std::exp(-x[i]));
      return;
  }
}

// weight of one element of activation a against kParallelMinWork
double act_work(Act a) {
  switch (a) {
    case Act::Silu:
      return 4 * kElemWork;
    case Act::Gelu:
      return 8 * kElemWork;
    default:
      return kElemWork / 4;
  }
}
}  // namespace

double detail::act_flops(Act a) { return a == Act::Relu ? 1.0 : 4.0; }

void detail::activate_rows(Act a, float* x, int64_t ld, int64_t rows, int64_t cols, int round) {
  const bool avx512 = cpu::cpu_isa() == cpu::Isa::Avx512;
  for (int64_t r = 0; r < rows; ++r) {
    act_span(a, avx512, x + r * ld, cols);
    if (round) simd::round_span(x + r * ld, 0, cols, round);
  }
}

void activate(const ExecContext& ctx, Act a, Tensor& x, Rounding round) {
  require_f32("activate", {{"x", &x}});
  const int mode = simd::round_mode(round);
  const int64_t n = x.numel();
  OpTrace trace(ctx, act_name(a), static_cast<double>(n) * detail::act_flops(a), 8.0 * static_cast<double>(n));
  float* d = x.f32();
  const bool avx512 = cpu::cpu_isa() == cpu::Isa::Avx512;
  if (a == Act::Sigmoid) {  // serial: libm's expf does not vectorise
    act_span(a, avx512, d, n);
    if (mode) simd::round_span(d, 0, n, mode);
    return;
  }
  parallel_for(ctx, n, static_cast<double>(n) * act_work(a), [&](int64_t b, int64_t e) {
    simd::rows_then_round(b, e, 1, mode, d, [&](int64_t s, int64_t t) { act_span(a, avx512, d + s, t - s); });
  });
}

namespace {
template <class F>
void binary_inplace(const ExecContext& ctx, const char* op, Tensor& y, const Tensor& x, Rounding round, F f) {
  require_f32(op, {{"y", &y}, {"x", &x}});
  MAMBACV_CHECK(y.numel() == x.numel(), op << ": sizes differ, y " << y.str() << " and x " << x.str());
  const int64_t n = y.numel();
  OpTrace trace(ctx, op, static_cast<double>(n), 12.0 * static_cast<double>(n));
  float* yd = y.f32();
  const float* xd = x.f32();
  const bool avx512 = cpu::cpu_isa() == cpu::Isa::Avx512;
  auto body = [yd, xd, f](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) yd[i] = f(yd[i], xd[i]);
  };
  const int mode = simd::round_mode(round);
  parallel_for(ctx, n, static_cast<double>(n) * kElemWork / 4, [&](int64_t b, int64_t e) {
    simd::rows_then_round(b, e, 1, mode, yd, [&](int64_t s, int64_t t) { detail::run_simd(avx512, body, s, t); });
  });
}
}  // namespace

void add(const ExecContext& ctx, Tensor& y, const Tensor& x, Rounding round) {
  binary_inplace(ctx, "add", y, x, round, [](float a, float b) { return a + b; });
}
void mul(const ExecContext& ctx, Tensor& y, const Tensor& x, Rounding round) {
  binary_inplace(ctx, "mul", y, x, round, [](float a, float b) { return a * b; });
}

// ---- reduced-precision rounding ------------------------------------------------------------------------------
// f16 through F16C (vcvtps2ph, round to nearest even; part of the x86-64-v3 baseline), bf16 by integer rounding
// of the upper half (as f32_to_bf16). Both are exact round trips of the scalar conversions.
void round_to(const ExecContext& ctx, DType dt, bool saturate, Tensor& x) {
  if (dt == DType::F32) return;
  MAMBACV_CHECK(dt == DType::F16 || dt == DType::BF16, "round_to: expected f16 or bf16, got " << dtype_name(dt));
  require_f32("round_to", {{"x", &x}});
  const int64_t n = x.numel();
  OpTrace trace(ctx, "round", 0.0, 8.0 * static_cast<double>(n));
  float* d = x.f32();
  const int mode = simd::round_mode({dt, saturate});
  parallel_for(ctx, n, static_cast<double>(n) * kElemWork / 4,
               [&](int64_t b, int64_t e) { simd::round_span(d, b, e, mode); });
}

bool all_finite(const ExecContext& ctx, const Tensor& x) {
  require_f32("all_finite", {{"x", &x}});
  const int64_t n = x.numel();
  const float* d = x.f32();
  std::vector<char> bad(static_cast<size_t>(std::max(1, ctx.threads)), 0);
  parallel_for_tid(ctx, n, static_cast<double>(n) * kElemWork / 8, [&](int64_t b, int64_t e, int tid) {
    // x - x is 0 for finite x and NaN for inf / NaN; the sum of those is NaN exactly when one is not finite
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = b; i < e; ++i) acc += d[i] - d[i];
    bad[static_cast<size_t>(tid)] = acc != 0.0f || std::isnan(acc);
  });
  return std::none_of(bad.begin(), bad.end(), [](char c) { return c != 0; });
}

// ---- layout: blocked transposes of each batch item's (R, S) matrix into (S, R) ----------------------------------
namespace {
constexpr int64_t kTile = 32;
// x (B, R, S) -> y (B, S, R)
void batched_transpose(const ExecContext& ctx, const float* x, int64_t B, int64_t R, int64_t S, float* y) {
  const int64_t tr = (R + kTile - 1) / kTile, ts = (S + kTile - 1) / kTile;
  parallel_for(ctx, B * tr * ts, static_cast<double>(B * R * S) / 4, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (tr * ts), t = i % (tr * ts);
      const int64_t r0 = (t / ts) * kTile, s0 = (t % ts) * kTile;
      const int64_t r1 = std::min(R, r0 + kTile), s1 = std::min(S, s0 + kTile);
      const float* xb = x + b * R * S;
      float* yb = y + b * R * S;
      for (int64_t s = s0; s < s1; ++s)
        for (int64_t r = r0; r < r1; ++r) yb[s * R + r] = xb[r * S + s];
    }
  });
}
Tensor transpose_last(const ExecContext& ctx, const char* op, const Tensor& x, bool to_nhwc) {
  MAMBACV_CHECK(x.defined() && (x.ndim() == 3 || x.ndim() == 4), op << ": expected a 3- or 4-D tensor, got "
                                                                    << (x.defined() ? x.str() : "an empty tensor"));
  require_f32(op, {{"x", &x}});
  const int64_t B = x.dim(0);
  Shape out;
  int64_t R, S;  // each item is (R, S) -> (S, R)
  if (to_nhwc) {  // (B, C, ...) -> (B, ..., C)
    R = x.dim(1);
    S = x.numel() / std::max<int64_t>(B * R, 1);
    out = {B};
    for (int i = 2; i < x.ndim(); ++i) out.push_back(x.dim(i));
    out.push_back(R);
  } else {  // (B, ..., C) -> (B, C, ...)
    S = x.dim(-1);
    R = x.numel() / std::max<int64_t>(B * S, 1);
    out = {B, S};
    for (int i = 1; i + 1 < x.ndim(); ++i) out.push_back(x.dim(i));
  }
  OpTrace trace(ctx, op, 0.0, 8.0 * static_cast<double>(x.numel()));
  Tensor y = ctx.empty(out);
  batched_transpose(ctx, x.f32(), B, R, S, y.f32());
  return y;
}
}  // namespace

Tensor nchw_to_nhwc(const ExecContext& ctx, const Tensor& x) { return transpose_last(ctx, "nchw_to_nhwc", x, true); }
Tensor nhwc_to_nchw(const ExecContext& ctx, const Tensor& x) { return transpose_last(ctx, "nhwc_to_nchw", x, false); }

Tensor insert_token_add(const ExecContext& ctx, const Tensor& patches, const Tensor& token, int64_t at,
                        const Tensor& pos) {
  MAMBACV_CHECK(patches.defined() && patches.ndim() == 3, "insert_token_add: patches must be (B, M, D), got "
                                                              << (patches.defined() ? patches.str() : "none"));
  const int64_t B = patches.dim(0), M = patches.dim(1), D = patches.dim(2), T = M + 1;
  MAMBACV_CHECK(token.defined() && token.numel() == D && pos.defined() && pos.numel() == T * D && at >= 0 && at <= M,
                "insert_token_add: token (" << D << ") at " << at << " and pos (" << T << ", " << D
                                            << ") do not fit patches " << patches.str());
  require_f32("insert_token_add", {{"patches", &patches}, {"token", &token}, {"pos", &pos}});
  OpTrace trace(ctx, "insert_token_add", static_cast<double>(B * T * D), 12.0 * static_cast<double>(B * T * D));
  Tensor y = ctx.empty({B, T, D});
  const float* pe = patches.f32();
  const float* tk = token.f32();
  const float* pp = pos.f32();
  float* r = y.f32();
  parallel_for(ctx, B * T, static_cast<double>(B * T * D) / 4, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / T, t = i % T;
      const float* src = t < at ? pe + (b * M + t) * D : t == at ? tk : pe + (b * M + t - 1) * D;
      float* dst = r + i * D;
      for (int64_t c = 0; c < D; ++c) dst[c] = src[c] + pp[t * D + c];
    }
  });
  return y;
}

namespace {
void check_tokens(const char* op, const Tensor& x, int64_t t) {
  MAMBACV_CHECK(x.defined() && x.ndim() == 3 && t >= 0 && t < x.dim(1),
                op << ": token " << t << " outside (B, T, D) " << (x.defined() ? x.str() : "none"));
  require_f32(op, {{"x", &x}});
}
}  // namespace

Tensor take_token(const ExecContext& ctx, const Tensor& x, int64_t t) {
  check_tokens("take_token", x, t);
  const int64_t B = x.dim(0), T = x.dim(1), D = x.dim(2);
  Tensor y = ctx.empty({B, D});
  for (int64_t b = 0; b < B; ++b) std::memcpy(y.f32() + b * D, x.f32() + (b * T + t) * D, sizeof(float) * D);
  return y;
}

Tensor drop_token(const ExecContext& ctx, const Tensor& x, int64_t t) {
  check_tokens("drop_token", x, t);
  const int64_t B = x.dim(0), T = x.dim(1), D = x.dim(2);
  Tensor y = ctx.empty({B, T - 1, D});
  for (int64_t b = 0; b < B; ++b) {
    const float* s = x.f32() + b * T * D;
    float* d = y.f32() + b * (T - 1) * D;
    std::memcpy(d, s, sizeof(float) * t * D);
    std::memcpy(d + t * D, s + (t + 1) * D, sizeof(float) * (T - 1 - t) * D);
  }
  return y;
}

Tensor mean_tokens(const ExecContext& ctx, const Tensor& x) {
  MAMBACV_CHECK(x.defined() && x.ndim() == 3 && x.dim(1) > 0, "mean_tokens: expected (B, L, C) with L > 0, got "
                                                                  << (x.defined() ? x.str() : "none"));
  require_f32("mean_tokens", {{"x", &x}});
  const int64_t B = x.dim(0), L = x.dim(1), C = x.dim(2);
  OpTrace trace(ctx, "mean_tokens", static_cast<double>(B * L * C), 4.0 * static_cast<double>(B * L * C));
  Tensor y = ctx.zeros({B, C});
  for (int64_t b = 0; b < B; ++b) {
    float* pr = y.f32() + b * C;
    for (int64_t l = 0; l < L; ++l) {
      const float* row = x.f32() + (b * L + l) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) pr[c] += row[c];
    }
    for (int64_t c = 0; c < C; ++c) pr[c] /= static_cast<float>(L);
  }
  return y;
}

Tensor patch_merge_2x2(const ExecContext& ctx, const Tensor& x) {
  MAMBACV_CHECK(x.defined() && x.ndim() == 4, "patch_merge_2x2: expected (B, H, W, C), got "
                                                  << (x.defined() ? x.str() : "none"));
  require_f32("patch_merge_2x2", {{"x", &x}});
  const int64_t B = x.dim(0), H = x.dim(1), W = x.dim(2), C = x.dim(3), H2 = (H + 1) / 2, W2 = (W + 1) / 2;
  Tensor m = ctx.empty({B, H2, W2, 4 * C});
  OpTrace trace(ctx, "patch_merge_2x2", 0.0, 8.0 * static_cast<double>(m.numel()));
  const float* src = x.f32();
  float* dst = m.f32();
  static constexpr int kDh[4] = {0, 1, 0, 1}, kDw[4] = {0, 0, 1, 1};
  parallel_for(ctx, B * H2, static_cast<double>(m.numel()) / 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H2, h2 = r % H2;
      for (int64_t w2 = 0; w2 < W2; ++w2) {
        float* o = dst + ((b * H2 + h2) * W2 + w2) * 4 * C;
        for (int q = 0; q < 4; ++q) {
          const int64_t h = 2 * h2 + kDh[q], w = 2 * w2 + kDw[q];
          if (h < H && w < W)
            std::memcpy(o + q * C, src + ((b * H + h) * W + w) * C, sizeof(float) * C);
          else
            std::memset(o + q * C, 0, sizeof(float) * C);
        }
      }
    }
  });
  return m;
}

int64_t nearest_source_index(int64_t dst, int64_t in, int64_t out) {
  // ATen upsample_nearest2d (mode "nearest", size given): identity / halving fast paths, else float scale
  if (in == out) return dst;
  if (out == 2 * in) return dst >> 1;
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  return std::min(static_cast<int64_t>(std::floor(static_cast<float>(dst) * scale)), in - 1);
}

void add_nearest_resized(const ExecContext& ctx, const Tensor& x, Tensor& y) {
  MAMBACV_CHECK(x.defined() && y.defined() && x.ndim() == 4 && y.ndim() == 4 && x.dim(0) == y.dim(0) &&
                    x.dim(3) == y.dim(3) && x.dim(1) > 0 && x.dim(2) > 0,
                "add_nearest_resized: x " << x.str() << " and y " << y.str() << " must be (B, h, w, C) and (B, H, W, C)");
  require_f32("add_nearest_resized", {{"x", &x}, {"y", &y}});
  const int64_t B = y.dim(0), H = y.dim(1), W = y.dim(2), C = y.dim(3), Hc = x.dim(1), Wc = x.dim(2);
  OpTrace trace(ctx, "add_nearest_resized", static_cast<double>(y.numel()), 12.0 * static_cast<double>(y.numel()));
  const float* src = x.f32();
  float* dst = y.f32();
  parallel_for(ctx, B * H, static_cast<double>(y.numel()) / 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H, yy = r % H, sy = nearest_source_index(yy, Hc, H);
      for (int64_t xx = 0; xx < W; ++xx) {
        const int64_t sx = nearest_source_index(xx, Wc, W);
        float* d = dst + ((b * H + yy) * W + xx) * C;
        const float* s = src + ((b * Hc + sy) * Wc + sx) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) d[c] += s[c];
      }
    }
  });
}

Tensor subsample2(const ExecContext& ctx, const Tensor& x) {
  MAMBACV_CHECK(x.defined() && x.ndim() == 4, "subsample2: expected (B, H, W, C), got " << (x.defined() ? x.str() : "none"));
  require_f32("subsample2", {{"x", &x}});
  const int64_t B = x.dim(0), H = x.dim(1), W = x.dim(2), C = x.dim(3), Ho = (H + 1) / 2, Wo = (W + 1) / 2;
  Tensor q = ctx.empty({B, Ho, Wo, C});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t yy = 0; yy < Ho; ++yy)
      for (int64_t xx = 0; xx < Wo; ++xx)
        std::memcpy(q.f32() + ((b * Ho + yy) * Wo + xx) * C, x.f32() + ((b * H + 2 * yy) * W + 2 * xx) * C,
                    static_cast<size_t>(C) * sizeof(float));
  return q;
}

void dt_projection(const ExecContext& ctx, const Tensor& x, int64_t P, const std::vector<PackedWeight>& W,
                   Tensor& delta, Rounding round) {
  const int64_t G = static_cast<int64_t>(W.size());
  MAMBACV_CHECK(G >= 1 && x.defined() && x.ndim() >= 1 && x.dim(-1) == G * P,
                "dt_projection: x must end in " << G << " x " << P << " columns, got " << (x.defined() ? x.str() : "none"));
  const int64_t R = W[0].K, D = W[0].N, rows = x.numel() / (G * P);
  for (const PackedWeight& w : W)
    MAMBACV_CHECK(w.K == R && w.N == D && R <= P, "dt_projection: every group's weight must be (" << D << ", " << R
                                                                                                   << ") with R <= " << P);
  MAMBACV_CHECK(delta.defined() && delta.numel() == rows * G * D,
                "dt_projection: delta must be (" << G << ", " << rows << ", " << D << "), got " << delta.str());
  require_f32("dt_projection", {{"x", &x}, {"delta", &delta}});
  for (int64_t g = 0; g < G; ++g)
    gemm(ctx, rows, x.f32() + g * P, G * P, W[static_cast<size_t>(g)], delta.f32() + g * rows * D, D, 0.0f, round);
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

Tensor resize_bicubic(const ExecContext& ctx, const Tensor& x, int64_t Ho, int64_t Wo) {
  MAMBACV_CHECK(x.defined() && x.ndim() == 3 && x.numel() > 0 && Ho > 0 && Wo > 0,
                "resize_bicubic: expected a non-empty (H, W, C) grid and a positive size, got "
                    << (x.defined() ? x.str() : "none") << " -> " << Ho << "x" << Wo);
  require_f32("resize_bicubic", {{"x", &x}});
  const int64_t Hi = x.dim(0), Wi = x.dim(1), C = x.dim(2);
  Tensor out = ctx.empty({Ho, Wo, C});
  const float* xs = x.f32();
  float* y = out.f32();
  if (Hi == Ho && Wi == Wo) {  // PyTorch copies in this case; the weights would be (0, 1, 0, 0) anyway
    std::memcpy(y, xs, sizeof(float) * Hi * Wi * C);
    return out;
  }
  OpTrace trace(ctx, "resize_bicubic", 32.0 * static_cast<double>(Ho * Wo * C), 4.0 * static_cast<double>(out.numel()));
  const std::vector<CubicTaps> ty = cubic_taps(Hi, Ho), tx = cubic_taps(Wi, Wo);
  parallel_for(ctx, Ho, static_cast<double>(Ho * Wo * C * 16), [&](int64_t o0, int64_t o1) {
    for (int64_t oy = o0; oy < o1; ++oy) {
      const CubicTaps& a = ty[oy];
      for (int64_t ox = 0; ox < Wo; ++ox) {
        const CubicTaps& b = tx[ox];
        float* __restrict yp = y + (oy * Wo + ox) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yp[c] = 0.0f;
        for (int i = 0; i < 4; ++i) {
          // horizontal interpolation of source row a.idx[i], then weighted by the vertical tap
          const float* xr = xs + a.idx[i] * Wi * C;
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
  });
  return out;
}

}  // namespace mambacv::ops
