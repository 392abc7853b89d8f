// ssm/ss2d_ref.cpp - the plain SS2D reference: upstream's data flow with materialised direction copies.
// Mirrors MzeroMiko/VMamba classification/models/vmamba.py SS2Dv0.forwardv0 (CrossScan -> einsum x_proj / dt_proj
// per direction -> selective_scan -> CrossMerge -> out_norm -> gate -> out_proj). Scalar reference ops only.
#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "kernels/selective_scan.h"
#include "ssm/ss2d.h"

namespace mambacv::ssm {

void ss2d_forward_ref(const float* x, int64_t B, int64_t H, int64_t W, const SS2DParams& w, float* out,
                      const detail::Policy& policy) {
  const int64_t K = kSS2DDirections, C = w.d_model, Dd = w.d_inner, N = w.d_state, R = w.dt_rank;
  const int64_t L = H * W, P = R + 2 * N;
  auto silu = [](float v) { return v / (1.0f + std::exp(-v)); };
  // the policy's rounding, element by element through the scalar conversions
  const bool saturate = policy.core == Core::V0;
  auto round = [&](detail::Boundary b, float* v, size_t n) {
    const DType dt = policy.at(b);
    for (size_t i = 0; i < n; ++i) v[i] = ops::ref::round_to(dt, saturate, v[i]);
  };
  using detail::Boundary;
  std::vector<float> A(static_cast<size_t>(K * Dd * N));
  for (size_t i = 0; i < A.size(); ++i) A[i] = -std::exp(w.A_logs[i]);

  // in_proj: xz (B, L, Dd or 2Dd)
  const int64_t Dp = w.with_z ? 2 * Dd : Dd;
  std::vector<float> xz(static_cast<size_t>(B * L * Dp));
  ops::ref::gemm(B * L, Dp, C, x, C, w.in_proj, C, true, xz.data(), Dp);
  round(Boundary::Activation, xz.data(), xz.size());
  std::vector<float> xi(static_cast<size_t>(B * L * Dd)), u(static_cast<size_t>(B * L * Dd));
  for (int64_t r = 0; r < B * L; ++r)
    for (int64_t c = 0; c < Dd; ++c) xi[r * Dd + c] = xz[r * Dp + c];
  if (w.d_conv > 1) {
    const int pad = (w.d_conv - 1) / 2;
    ops::ref::depthwise_conv2d_nhwc(xi.data(), B, H, W, Dd, w.conv_w, w.conv_b, w.d_conv, w.d_conv, pad, pad,
                                    u.data());
  } else {
    u = xi;
  }
  for (float& v : u) v = silu(v);
  round(Boundary::Activation, u.data(), u.size());

  // CrossScan: xs (B, K, Dd, L), channel-major as upstream
  std::vector<float> xs(static_cast<size_t>(B * K * Dd * L));
  auto XS = [&](int64_t b, int64_t k, int64_t c, int64_t l) -> float& { return xs[((b * K + k) * Dd + c) * L + l]; };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t wi = 0; wi < W; ++wi)
        for (int64_t c = 0; c < Dd; ++c) {
          float v = u[((b * H + h) * W + wi) * Dd + c];
          XS(b, 0, c, h * W + wi) = v;
          XS(b, 1, c, wi * H + h) = v;
          XS(b, 2, c, L - 1 - (h * W + wi)) = v;
          XS(b, 3, c, L - 1 - (wi * H + h)) = v;
        }

  // per direction: x_dbl (P, L) = x_proj[k] @ xs[k]; dts (Dd, L) = dt_proj[k] @ x_dbl[0:R]; scan -> ys (B, K, Dd, L)
  std::vector<float> ys(static_cast<size_t>(B * K * Dd * L));
  std::vector<float> xdbl(static_cast<size_t>(P * L)), dts(static_cast<size_t>(Dd * L));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k) {
      const float* xk = &XS(b, k, 0, 0);
      ops::ref::gemm(P, L, Dd, w.x_proj + k * P * Dd, Dd, xk, L, /*trans_b=*/false, xdbl.data(), L);
      round(Boundary::Activation, xdbl.data(), xdbl.size());
      ops::ref::gemm(Dd, L, R, w.dt_proj_w + k * Dd * R, R, xdbl.data(), L, /*trans_b=*/false, dts.data(), L);
      round(Boundary::Activation, dts.data(), dts.size());
      ScanParams p;
      p.batch = 1;
      p.dim = Dd;
      p.L = L;
      p.N = N;
      p.groups = 1;
      p.delta_softplus = true;
      p.dir_round = policy.at(Boundary::ScanOut);
      p.out = ys.data() + (b * K + k) * Dd * L;
      p.osb = Dd * L;
      p.osc = L;
      p.ost = 1;
      ScanDirection d;
      d.u = {xk, DType::F32, Dd * L, L, 1};
      d.delta = {dts.data(), DType::F32, Dd * L, L, 1};
      d.B = {xdbl.data() + R * L, DType::F32, P * L, 0, L, 1};
      d.C = {xdbl.data() + (R + N) * L, DType::F32, P * L, 0, L, 1};
      d.A = A.data() + k * Dd * N;
      d.D = w.Ds + k * Dd;
      d.delta_bias = w.dt_proj_b + k * Dd;
      p.dirs.push_back(d);
      selective_scan_ref(p);
    }

  // CrossMerge: y(h, w) = ys0[h*W+w] + ys1[w*H+h] + ys2[L-1-(h*W+w)] + ys3[L-1-(w*H+h)]; y (B, L, Dd)
  std::vector<float> y(static_cast<size_t>(B * L * Dd));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t wi = 0; wi < W; ++wi)
        for (int64_t c = 0; c < Dd; ++c) {
          auto YS = [&](int64_t k, int64_t l) { return ys[((b * K + k) * Dd + c) * L + l]; };
          y[((b * H + h) * W + wi) * Dd + c] =
              YS(0, h * W + wi) + YS(1, wi * H + h) + YS(2, L - 1 - (h * W + wi)) + YS(3, L - 1 - (wi * H + h));
        }

  // out_norm, gate with silu(z), out_proj
  round(Boundary::Merge, y.data(), y.size());
  ops::ref::layer_norm(y.data(), B * L, Dd, w.out_norm_w, w.out_norm_b, w.out_norm_eps, y.data());
  round(Boundary::OutNorm, y.data(), y.size());
  if (w.with_z) {
    for (int64_t r = 0; r < B * L; ++r)
      for (int64_t c = 0; c < Dd; ++c) {
        float g = silu(xz[r * Dp + Dd + c]);
        round(Boundary::Activation, &g, 1);  // silu(z) is an op output of its own
        y[r * Dd + c] *= g;
      }
    round(Boundary::Gate, y.data(), y.size());
  }
  round(Boundary::OutProjIn, y.data(), y.size());
  ops::ref::gemm(B * L, C, Dd, y.data(), Dd, w.out_proj, Dd, true, out, C);
  round(Boundary::OutProjOut, out, static_cast<size_t>(B * L * C));
}

}  // namespace mambacv::ssm
