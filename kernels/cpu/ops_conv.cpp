// kernels/cpu/ops_conv.cpp - channels-last convolutions (semantics in kernels/ops.h).
//   conv2d: one convolution family for the backbones and the detection heads, three algorithms chosen from the
//     geometry at prepare time: 1x1 stride 1 -> one GEMM on x itself; stride 1 -> one GEMM per tap over a
//     zero-padded "wide" grid (no im2col); otherwise im2col in bounded chunks of output rows + GEMM. In NHWC the
//     kw taps of one kernel row are kw*Cin contiguous floats, so a patch row is a single memcpy whenever it lies
//     inside the image - which is always the case for patchify (kernel == stride, no padding).
//   depthwise_conv2d / conv1d_tokens: weights prepared as (taps, C) so the inner loop runs over contiguous channels
//     (16-lane AVX-512 blocks with all taps in registers when the CPU has it, compiler-vectorised loops otherwise),
//     output rows / tokens split over the context's threads.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/round_simd.h"
#include "kernels/cpu/simd_math.h"
#include "kernels/ops.h"
#include "mambacv/error.h"

namespace mambacv::ops {

namespace {
constexpr int64_t kMaxColFloats = int64_t(1) << 21;  // 8 MiB im2col chunk

void check_map(const char* op, const Tensor& x, int64_t channels) {
  MAMBACV_CHECK(x.defined() && x.ndim() == 4, op << ": expected a (B, H, W, C) map, got "
                                                 << (x.defined() ? x.str() : "an empty tensor"));
  MAMBACV_CHECK(x.dim(1) > 0 && x.dim(2) > 0, op << ": empty map " << x.str());
  MAMBACV_CHECK(channels < 0 || x.dim(3) == channels,
                op << ": expected " << channels << " channels, got " << x.str());
  require_f32(op, {{"x", &x}});
}
}  // namespace

Conv2dWeight prepare_conv2d(const Tensor& w, const Tensor& bias, int sh, int sw, int ph, int pw, DType storage) {
  MAMBACV_CHECK(w.defined() && w.ndim() == 4 && w.dtype() == DType::F32,
                "conv2d: weight must be f32 (Cout, Cin, kh, kw), got " << (w.defined() ? w.str() : "none"));
  MAMBACV_CHECK(!bias.defined() || (bias.numel() == w.dim(0) && bias.dtype() == DType::F32),
                "conv2d: bias " << bias.str() << " does not match weight " << w.str());
  MAMBACV_CHECK(sh > 0 && sw > 0 && ph >= 0 && pw >= 0,
                "conv2d: stride must be positive and padding non-negative, got stride=(" << sh << ", " << sw
                                                                                         << ") padding=(" << ph
                                                                                         << ", " << pw << ")");
  Conv2dWeight c;
  c.cout = w.dim(0);
  c.cin = w.dim(1);
  c.kh = static_cast<int>(w.dim(2));
  c.kw = static_cast<int>(w.dim(3));
  c.sh = sh, c.sw = sw, c.ph = ph, c.pw = pw;
  MAMBACV_CHECK(c.cout > 0 && c.cin > 0 && c.kh > 0 && c.kw > 0, "conv2d: empty weight " << w.str());
  const float* src = w.f32();
  const float* b = bias.defined() ? bias.f32() : nullptr;
  const int taps = c.kh * c.kw;
  const bool one_by_one = taps == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
  if (sh == 1 && sw == 1 && !one_by_one) {
    // per tap (i, j): (Cout, Cin); the bias goes with tap 0
    std::vector<float> t(static_cast<size_t>(c.cout * c.cin));
    for (int k = 0; k < taps; ++k) {
      for (int64_t co = 0; co < c.cout; ++co)
        for (int64_t ci = 0; ci < c.cin; ++ci) t[static_cast<size_t>(co * c.cin + ci)] = src[(co * c.cin + ci) * taps + k];
      c.taps.push_back(pack_weight(t.data(), c.cin, true, c.cout, c.cin, k == 0 ? b : nullptr, storage));
    }
    return c;
  }
  // (Cout, Cin, kh, kw) -> (Cout, kh, kw, Cin): the im2col column order
  const int64_t K = int64_t(taps) * c.cin;
  std::vector<float> wr(static_cast<size_t>(c.cout * K));
  for (int64_t co = 0; co < c.cout; ++co)
    for (int64_t ci = 0; ci < c.cin; ++ci)
      for (int k = 0; k < taps; ++k) wr[static_cast<size_t>((co * taps + k) * c.cin + ci)] = src[(co * c.cin + ci) * taps + k];
  c.im2col = pack_weight(wr.data(), K, true, c.cout, K, b, storage);
  return c;
}

Tensor conv2d(const ExecContext& ctx, const Tensor& x, const Conv2dWeight& w, bool relu) {
  check_map("conv2d", x, w.cin);
  const int64_t B = x.dim(0), H = x.dim(1), W = x.dim(2), Cin = w.cin, Cout = w.cout;
  const int kh = w.kh, kw = w.kw, sh = w.sh, sw = w.sw, ph = w.ph, pw = w.pw;
  MAMBACV_CHECK(H + 2 * ph >= kh && W + 2 * pw >= kw,
                "conv2d: kernel " << kh << "x" << kw << " larger than the padded input " << H + 2 * ph << "x"
                                  << W + 2 * pw << " of " << x.str());
  const int64_t Ho = conv_out_size(H, kh, sh, ph), Wo = conv_out_size(W, kw, sw, pw);
  Tensor y = ctx.empty({B, Ho, Wo, Cout});
  if (B == 0) return y;
  const float* xs = x.f32();
  float* yd = y.f32();

  if (w.shifted()) {
    // Wide grid: copy x into a zero-padded (B, Hp, Wp, Cin) buffer and compute the output at every padded column,
    // wide[q] for q = (b * Hp + oy) * Wp + ox. Tap (i, j) of wide[q] reads padded[q + i * Wp + j], so each tap is
    // ONE GEMM over all pixels with a constant row offset:
    //   wide (Q, Co) += padded[off_ij : off_ij + Q] (Q, Ci) @ w[:, :, i, j]^T (Ci, Co).
    // The wide grid's extra columns (and the rows between images) are computed and dropped.
    const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
    const int64_t Q = ((B - 1) * Hp + Ho) * Wp;                 // wide rows up to the last valid output row
    Tensor padded = ctx.zeros({B * Hp * Wp + kw, Cin});         // + kw rows: the last taps read past Q
    float* pd = padded.f32();
    parallel_for(ctx, B * H, static_cast<double>(B * H * W * Cin), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / H, yy = r % H;
        std::memcpy(pd + ((b * Hp + yy + ph) * Wp + pw) * Cin, xs + (b * H + yy) * W * Cin,
                    static_cast<size_t>(W * Cin) * sizeof(float));
      }
    });
    Tensor wide = ctx.empty({Q, Cout});
    for (int i = 0; i < kh; ++i)
      for (int j = 0; j < kw; ++j) {
        const int t = i * kw + j;
        gemm(ctx, Q, pd + (i * Wp + j) * Cin, Cin, w.taps[static_cast<size_t>(t)], wide.f32(), Cout,
             t == 0 ? 0.0f : 1.0f);
      }
    const float* wd = wide.f32();
    parallel_for(ctx, B * Ho, static_cast<double>(B * Ho * Wo * Cout), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / Ho, yy = r % Ho;
        const float* src = wd + (b * Hp + yy) * Wp * Cout;
        float* dst = yd + r * Wo * Cout;
        if (relu) {
          for (int64_t i = 0; i < Wo * Cout; ++i) dst[i] = std::max(src[i], 0.0f);
        } else {
          std::memcpy(dst, src, static_cast<size_t>(Wo * Cout) * sizeof(float));
        }
      }
    });
    return y;
  }

  const std::optional<Act> act = relu ? std::optional<Act>(Act::Relu) : std::nullopt;  // fused into the GEMM
  if (kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0) {  // a linear layer over pixels
    gemm(ctx, B * H * W, xs, Cin, w.im2col, yd, Cout, 0.0f, {}, act);
  } else {
    // Output rows (b, oh) are processed in chunks whose im2col matrix stays below kMaxColFloats.
    const int64_t K = int64_t(kh) * kw * Cin;
    const int64_t total_rows = B * Ho;
    const int64_t chunk_rows = std::max<int64_t>(1, std::min<int64_t>(total_rows, kMaxColFloats / (Wo * K)));
    Tensor col = ctx.empty({chunk_rows * Wo, K});
    float* cd = col.f32();
    const int64_t row_floats = int64_t(kw) * Cin;  // one kernel row of one patch
    for (int64_t r0 = 0; r0 < total_rows; r0 += chunk_rows) {
      const int64_t nr = std::min(chunk_rows, total_rows - r0);
      const int64_t npix = nr * Wo;
      // col (npix, K): row p = patch of output pixel (b, oh, ow)
      parallel_for(ctx, npix, static_cast<double>(npix * K), [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t row = r0 + p / Wo, ow = p % Wo;
          const int64_t b = row / Ho, oh = row % Ho;
          float* dst = cd + p * K;
          const int64_t iw0 = ow * sw - pw;
          const bool w_inside = iw0 >= 0 && iw0 + kw <= W;
          for (int i = 0; i < kh; ++i, dst += row_floats) {
            const int64_t ih = oh * sh - ph + i;
            if (ih < 0 || ih >= H) {
              std::memset(dst, 0, sizeof(float) * row_floats);
              continue;
            }
            const float* src = xs + ((b * H + ih) * W) * Cin;
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
      });
      gemm(ctx, npix, cd, K, w.im2col, yd + r0 * Wo * Cout, Cout, 0.0f, {}, act);
    }
  }
  return y;
}

// ---- depthwise ----------------------------------------------------------------------------------------------------
DepthwiseWeight prepare_depthwise(const Tensor& w, const Tensor& bias) {
  MAMBACV_CHECK(w.defined() && (w.ndim() == 4 || w.ndim() == 3) && w.dim(1) == 1 && w.dtype() == DType::F32,
                "depthwise conv: weight must be f32 (C, 1, kh, kw) or (C, 1, K), got " << (w.defined() ? w.str() : "none"));
  DepthwiseWeight d;
  d.C = w.dim(0);
  d.kh = w.ndim() == 4 ? static_cast<int>(w.dim(2)) : 1;
  d.kw = static_cast<int>(w.dim(-1));
  MAMBACV_CHECK(d.C > 0 && d.kh > 0 && d.kw > 0, "depthwise conv: empty weight " << w.str());
  MAMBACV_CHECK(!bias.defined() || (bias.numel() == d.C && bias.dtype() == DType::F32),
                "depthwise conv: bias " << bias.str() << " does not match weight " << w.str());
  const int taps = d.kh * d.kw;
  d.taps = Tensor::empty({taps, d.C});
  for (int64_t c = 0; c < d.C; ++c)
    for (int t = 0; t < taps; ++t) d.taps.f32()[t * d.C + c] = w.f32()[c * taps + t];
  if (bias.defined()) d.bias = bias.clone();
  return d;
}

namespace {
struct DwArgs {
  const float* x;
  const float* taps;  // (kh*kw, C)
  const float* bias;
  float* y;
  int64_t H, W, C, Ho, Wo;
  int kh, kw, ph, pw;
  bool silu;
};

// one output row (b, oh): every tap of a channel block accumulates in registers, the block is written once
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"))) void dw_row_avx512(const DwArgs& a,
                                                                                          int64_t row) {
  const int64_t b = row / a.Ho, oh = row % a.Ho;
  const int i_lo = static_cast<int>(std::max<int64_t>(0, a.ph - oh));
  const int i_hi = static_cast<int>(std::min<int64_t>(a.kh, a.H + a.ph - oh));
  const int64_t xb = (b * a.H + (oh - a.ph)) * a.W * a.C;  // row oh - ph of image b (may lie outside)
  float* yrow = a.y + row * a.Wo * a.C;
  for (int64_t ow = 0; ow < a.Wo; ++ow) {
    const int j_lo = static_cast<int>(std::max<int64_t>(0, a.pw - ow));
    const int j_hi = static_cast<int>(std::min<int64_t>(a.kw, a.W + a.pw - ow));
    const int64_t xo = xb + (ow - a.pw) * a.C;  // tap (i, j) adds (i * W + j) * C
    float* yp = yrow + ow * a.C;
    for (int64_t c0 = 0; c0 < a.C; c0 += 16) {
      const __mmask16 m = a.C - c0 >= 16 ? __mmask16(0xffff) : __mmask16((1u << (a.C - c0)) - 1u);
      __m512 acc = a.bias ? _mm512_maskz_loadu_ps(m, a.bias + c0) : _mm512_setzero_ps();
      for (int i = i_lo; i < i_hi; ++i)
        for (int j = j_lo; j < j_hi; ++j)
          acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a.taps + (i * a.kw + j) * a.C + c0),
                                _mm512_maskz_loadu_ps(m, a.x + (xo + (i * a.W + j) * a.C + c0)), acc);
      _mm512_mask_storeu_ps(yp + c0, m, acc);
    }
    if (a.silu) {
#pragma omp simd
      for (int64_t c = 0; c < a.C; ++c) yp[c] = detail::silu_f(yp[c]);
    }
  }
}

void dw_row_portable(const DwArgs& a, int64_t row) {
  const int64_t b = row / a.Ho, oh = row % a.Ho;
  const int i_lo = static_cast<int>(std::max<int64_t>(0, a.ph - oh));
  const int i_hi = static_cast<int>(std::min<int64_t>(a.kh, a.H + a.ph - oh));
  const int64_t xb = (b * a.H + (oh - a.ph)) * a.W * a.C;
  float* yrow = a.y + row * a.Wo * a.C;
  for (int64_t ow = 0; ow < a.Wo; ++ow) {
    const int j_lo = static_cast<int>(std::max<int64_t>(0, a.pw - ow));
    const int j_hi = static_cast<int>(std::min<int64_t>(a.kw, a.W + a.pw - ow));
    const int64_t xo = xb + (ow - a.pw) * a.C;
    float* __restrict yp = yrow + ow * a.C;
    for (int64_t c = 0; c < a.C; ++c) yp[c] = a.bias ? a.bias[c] : 0.0f;
    for (int i = i_lo; i < i_hi; ++i)
      for (int j = j_lo; j < j_hi; ++j) {
        const float* __restrict wt = a.taps + (i * a.kw + j) * a.C;
        const float* __restrict xp = a.x + xo + (i * a.W + j) * a.C;
#pragma omp simd
        for (int64_t c = 0; c < a.C; ++c) yp[c] += wt[c] * xp[c];
      }
    if (a.silu) {
#pragma omp simd
      for (int64_t c = 0; c < a.C; ++c) yp[c] = detail::silu_f(yp[c]);
    }
  }
}
}  // namespace

void depthwise_conv2d(const ExecContext& ctx, const Tensor& x, const DepthwiseWeight& w, int ph, int pw, bool silu,
                      Tensor& y, Rounding round) {
  check_map("depthwise_conv2d", x, w.C);
  MAMBACV_CHECK(ph >= 0 && pw >= 0, "depthwise_conv2d: padding must be >= 0, got (" << ph << ", " << pw << ")");
  const int64_t B = x.dim(0), H = x.dim(1), W = x.dim(2), C = w.C;
  const int64_t Ho = conv_out_size(H, w.kh, 1, ph), Wo = conv_out_size(W, w.kw, 1, pw);
  MAMBACV_CHECK(Ho > 0 && Wo > 0, "depthwise_conv2d: kernel " << w.kh << "x" << w.kw << " larger than the padded "
                                                              << x.str());
  MAMBACV_CHECK(y.defined() && y.shape() == Shape({B, Ho, Wo, C}),
                "depthwise_conv2d: y must be " << shape_str({B, Ho, Wo, C}) << ", got " << y.str());
  MAMBACV_CHECK(!y.shares_storage_with(x), "depthwise_conv2d: y may not alias x");
  require_f32("depthwise_conv2d", {{"y", &y}});
  const int taps = w.kh * w.kw;
  // taps at the border counted too; silu: exp, add, div, mul
  OpTrace trace(ctx, "depthwise_conv2d", static_cast<double>(B * Ho * Wo * C) * (2.0 * taps + (silu ? 4.0 : 0.0)),
                4.0 * static_cast<double>(B * (H * W + Ho * Wo) * C));
  const DwArgs a{x.f32(), w.taps.f32(), w.bias.defined() ? w.bias.f32() : nullptr, y.f32(), H, W, C, Ho, Wo,
                 w.kh, w.kw, ph, pw, silu};
  const bool avx512 = cpu::cpu_isa() == cpu::Isa::Avx512;
  const int mode = simd::round_mode(round);
  parallel_for(ctx, B * Ho, static_cast<double>(B * Ho * Wo * C * taps), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {  // output row r: y[r * Wo * C, (r + 1) * Wo * C)
      if (avx512)
        dw_row_avx512(a, r);
      else
        dw_row_portable(a, r);
      if (mode) simd::round_span(a.y, r * Wo * C, (r + 1) * Wo * C, mode);
    }
  });
}

void conv1d_tokens(const ExecContext& ctx, const Tensor& x, const DepthwiseWeight& w, bool reverse, bool silu,
                   Tensor& y, Rounding round) {
  MAMBACV_CHECK(x.defined() && x.ndim() == 3 && x.dim(2) >= w.C && w.kh == 1,
                "conv1d_tokens: expected x (B, L, >= " << w.C << ") and a (C, 1, K) weight, got "
                                                       << (x.defined() ? x.str() : "an empty tensor"));
  const int64_t B = x.dim(0), L = x.dim(1), C = w.C, Cx = x.dim(2);
  MAMBACV_CHECK(y.defined() && y.shape() == Shape({B, L, C}) && !y.shares_storage_with(x),
                "conv1d_tokens: y must be a separate " << shape_str({B, L, C}) << ", got " << y.str());
  require_f32("conv1d_tokens", {{"x", &x}, {"y", &y}});
  const int K = w.kw;
  OpTrace trace(ctx, "conv1d_tokens", static_cast<double>(B * L * C) * (2.0 * K + (silu ? 4.0 : 0.0)),
                8.0 * static_cast<double>(B * L * C));
  const float* xs = x.f32();
  const float* wtp = w.taps.f32();  // (K, C)
  const float* bias = w.bias.defined() ? w.bias.f32() : nullptr;
  float* yd = y.f32();
  auto body = [=](int64_t i0, int64_t i1) {
    for (int64_t bt = i0; bt < i1; ++bt) {
      const int64_t b = bt / L, t = bt % L;
      float* __restrict yp = yd + bt * C;
      if (bias)
        std::memcpy(yp, bias, sizeof(float) * C);
      else
        std::memset(yp, 0, sizeof(float) * C);
      for (int k = 0; k < K; ++k) {
        const int64_t s = reverse ? t + (K - 1) - k : t - (K - 1) + k;
        if (s < 0 || s >= L) continue;
        const float* __restrict xp = xs + (b * L + s) * Cx;
        const float* __restrict wk = wtp + k * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yp[c] += wk[c] * xp[c];
      }
      if (silu) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yp[c] = detail::silu_f(yp[c]);
      }
    }
  };
  const bool avx512 = cpu::cpu_isa() == cpu::Isa::Avx512;
  const int mode = simd::round_mode(round);
  parallel_for(ctx, B * L, static_cast<double>(B * L * C * K), [&](int64_t i0, int64_t i1) {
    simd::rows_then_round(i0, i1, C, mode, yd, [&](int64_t s, int64_t t) { detail::run_simd(avx512, body, s, t); });
  });
}

}  // namespace mambacv::ops
