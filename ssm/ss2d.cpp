// ssm/ss2d.cpp - the fused SS2D forward (see ss2d.h for the maths and the upstream functions it mirrors).
#include "ssm/ss2d.h"

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"
#include "kernels/selective_scan.h"

namespace mambacv::ssm {

using detail::Boundary;

const char* ss2d_supported_forward_types() { return "v0, v2, v3, v05, v0_noz, v2_noz, v3_noz, v05_noz"; }

SS2DForwardType parse_ss2d_forward_type(const std::string& s, const std::string& where) {
  SS2DForwardType t;
  t.name = s;
  std::string base = s;
  const std::string noz = "_noz";
  if (base.size() > noz.size() && base.compare(base.size() - noz.size(), noz.size(), noz) == 0) {
    t.with_z = false;
    base.resize(base.size() - noz.size());
  }
  // v2 / v3 / v05 differ upstream only in which CUDA kernel and einsum-vs-conv1d they use: the same function.
  // v0 is the vanilla SS2Dv0 (z gate after silu, 3x3 conv with bias). upstream v0 has no "_noz" variant; we
  // accept v0_noz as v0 without the gate for symmetry (same maths as v2_noz).
  MAMBACV_CHECK(base == "v0" || base == "v2" || base == "v3" || base == "v05",
                where << ": forward_type \"" << s << "\" is not supported (supported: " << ss2d_supported_forward_types()
                      << "; upstream's other variants v01-v04, v051d, v052d, xv*, m0, _oact, _nozact, _on* are not "
                         "implemented)");
  t.v0 = s == "v0";  // "v0_noz" goes through upstream's SS2Dv2 path: conv settings from the config
  return t;
}

SS2DWeights ss2d_prepare(const SS2DParams& p, DType gemm_storage) {
  const int64_t K = kSS2DDirections, C = p.d_model, Dd = p.d_inner, N = p.d_state, R = p.dt_rank;
  const int64_t P = R + 2 * N;
  MAMBACV_CHECK(C > 0 && Dd > 0 && N > 0 && R > 0 && p.in_proj && p.x_proj && p.A_logs && p.Ds && p.dt_proj_w &&
                    p.dt_proj_b && p.out_norm_w && p.out_norm_b && p.out_proj && (p.d_conv <= 1 || p.conv_w),
                "ss2d_prepare: sizes and every weight must be set");
  SS2DWeights w;
  w.d_model = C, w.d_inner = Dd, w.d_state = N, w.dt_rank = R, w.d_conv = p.d_conv, w.with_z = p.with_z;
  w.out_norm_eps = p.out_norm_eps;
  // a (n, k) PyTorch Linear weight packed for the GEMM
  auto linear = [gemm_storage](const float* wt, int64_t n, int64_t k) {
    return ops::pack_weight(wt, k, /*trans_b=*/true, n, k, nullptr, gemm_storage);
  };
  w.in_x = linear(p.in_proj, Dd, C);
  if (p.with_z) w.in_z = linear(p.in_proj + Dd * C, Dd, C);
  if (p.d_conv > 1) {
    Tensor cw = Tensor::view_of(const_cast<float*>(p.conv_w), {Dd, 1, p.d_conv, p.d_conv}, DType::F32);
    Tensor cb = p.conv_b ? Tensor::view_of(const_cast<float*>(p.conv_b), {Dd}, DType::F32) : Tensor();
    w.conv = ops::prepare_depthwise(cw, cb);
  }
  w.x_proj = linear(p.x_proj, K * P, Dd);
  w.A = Tensor::empty({K * Dd, N});
  for (int64_t i = 0; i < K * Dd * N; ++i) w.A.f32()[i] = -std::exp(p.A_logs[i]);
  w.Ds = Tensor::empty({K, Dd});
  std::copy(p.Ds, p.Ds + K * Dd, w.Ds.f32());
  w.D_sum = Tensor::zeros({Dd});
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < Dd; ++c) w.D_sum.f32()[c] += p.Ds[k * Dd + c];
  for (int64_t k = 0; k < K; ++k)
    w.dt_proj.push_back(linear(p.dt_proj_w + k * Dd * R, Dd, R));
  w.dt_proj_b = Tensor::empty({K * Dd});
  std::copy(p.dt_proj_b, p.dt_proj_b + K * Dd, w.dt_proj_b.f32());
  w.out_norm_w = Tensor::empty({Dd});
  w.out_norm_b = Tensor::empty({Dd});
  std::copy(p.out_norm_w, p.out_norm_w + Dd, w.out_norm_w.f32());
  std::copy(p.out_norm_b, p.out_norm_b + Dd, w.out_norm_b.f32());
  w.out_proj = linear(p.out_proj, C, Dd);
  return w;
}

Tensor ss2d_forward(const ExecContext& ctx, const Tensor& x, const SS2DWeights& w, const SS2DOrders& orders,
                    const detail::Policy& policy, Tensor* residual) {
  const int64_t K = kSS2DDirections, C = w.d_model, Dd = w.d_inner, N = w.d_state, R = w.dt_rank;
  MAMBACV_CHECK(x.defined() && x.ndim() == 4 && x.dim(3) == C && x.dim(0) >= 1 && x.dim(1) >= 1 && x.dim(2) >= 1,
                "ss2d: expected x (B, H, W, " << C << "), got " << (x.defined() ? x.str() : "an empty tensor"));
  const int64_t B = x.dim(0), H = x.dim(1), W = x.dim(2);
  const int64_t L = H * W, P = R + 2 * N;
  MAMBACV_CHECK(!residual || (residual->shape() == x.shape() && !residual->shares_storage_with(x)),
                "ss2d: the residual must be a separate " << x.str());

  // xin (B, H, W, Dd) = x @ in_proj[0:Dd]^T;  z (B, H, W, Dd) = silu(x @ in_proj[Dd:2Dd]^T)
  Tensor xin = ctx.empty({B, H, W, Dd});
  policy.linear(ctx, Boundary::Activation, x, w.in_x, xin);
  Tensor z;
  if (w.with_z) {
    z = ctx.empty({B, H, W, Dd});
    policy.linear(ctx, Boundary::Activation, x, w.in_z, z, ops::Act::Silu);  // checks z
  }

  // u (B, H, W, Dd) = silu(depthwise conv(xin))
  Tensor u;
  if (w.d_conv > 1) {
    u = ctx.empty({B, H, W, Dd});
    const int pad = (w.d_conv - 1) / 2;
    ops::depthwise_conv2d(ctx, xin, w.conv, pad, pad, /*silu=*/true, u, policy.rounding(Boundary::Activation));
  } else {
    u = xin;
    ops::activate(ctx, ops::Act::Silu, u, policy.rounding(Boundary::Activation));
  }
  policy.check(ctx, Boundary::Activation, u);  // the fused conv + silu rounds once, at its output

  // x_dbl (B, L, K*P): every direction's [dt | B | C] from one GEMM over the natural token order
  Tensor xdbl = ctx.empty({B, L, K * P});
  policy.linear(ctx, Boundary::Activation, u, w.x_proj, xdbl);
  // delta (K, B, L, Dd): delta[k] = dt_k (B*L, R) @ dt_proj[k]^T (R -> Dd)
  Tensor delta = ctx.empty({K, B, L, Dd});
  ops::dt_projection(ctx, xdbl, P, w.dt_proj, delta, policy.rounding(Boundary::Activation));
  policy.check(ctx, Boundary::Activation, delta);

  // The scan inputs already hold the compute dtype's values (their producers' activation rows rounded them), so
  // both cores read them from f32 storage: the scan_u / scan_delta / scan_B / scan_C rows change no value.
  // y (B, L, Dd) = the four directions merged (fp32). The D skip: in f32 the sum of the four Ds once; when each
  // direction's output is rounded (core v1 in f16 / bf16) every direction adds its own D before its rounding.
  const bool per_dir_D = policy.at(Boundary::ScanOut) != DType::F32;
  Tensor y = ctx.empty({B, L, Dd});
  ScanParams p = token_major_scan(B, Dd, L, N, y.f32(), policy.at(Boundary::ScanOut));
  for (int64_t k = 0; k < K; ++k) {
    ScanDirection d;
    d.u = token_major(u.f32(), DType::F32, L, Dd);
    d.delta = token_major(delta.f32() + k * B * L * Dd, DType::F32, L, Dd);
    d.B = token_major_bc(xdbl.f32() + k * P + R, DType::F32, L, K * P);
    d.C = token_major_bc(xdbl.f32() + k * P + R + N, DType::F32, L, K * P);
    d.A = w.A.f32() + k * Dd * N;
    d.D = per_dir_D ? w.Ds.f32() + k * Dd : k == 0 ? w.D_sum.f32() : nullptr;
    d.delta_bias = w.dt_proj_b.f32() + k * Dd;
    d.order = orders[static_cast<size_t>(k)];
    p.dirs.push_back(d);
  }
  selective_scan(ctx, p);

  // y = out_norm(y) [* z];  out (+)= y @ out_proj^T
  policy.apply(ctx, Boundary::Merge, y);
  ops::layer_norm(ctx, y, w.out_norm_w, w.out_norm_b, w.out_norm_eps, y, policy.rounding(Boundary::OutNorm));
  policy.check(ctx, Boundary::OutNorm, y);
  if (w.with_z) {
    ops::mul(ctx, y, z, policy.rounding(Boundary::Gate));
    policy.check(ctx, Boundary::Gate, y);
  }
  // out_proj's input: another pass only when its dtype differs from the last boundary's (v0: f32 -> compute)
  if (policy.at(Boundary::OutProjIn) != policy.at(w.with_z ? Boundary::Gate : Boundary::OutNorm))
    policy.apply(ctx, Boundary::OutProjIn, y);
  if (residual && !policy.reduced()) {  // f32: out_proj accumulates straight into the residual
    ops::linear(ctx, y, w.out_proj, *residual, /*accumulate=*/true);
    return *residual;
  }
  Tensor out = ctx.empty({B, H, W, C});
  policy.linear(ctx, Boundary::OutProjOut, y, w.out_proj, out);
  if (!residual) return out;
  ops::add(ctx, *residual, out, policy.rounding(Boundary::Residual));
  policy.check(ctx, Boundary::Residual, *residual);
  return *residual;
}

}  // namespace mambacv::ssm
