// ssm/ss2d.cpp - the fused SS2D forward (see ss2d.h for the maths and the upstream functions it mirrors).
#include "ssm/ss2d.h"

#include <cmath>

#include "kernels/ops.h"
#include "mambacv/selective_scan.h"

namespace mambacv::ssm {

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

void ss2d_prepare(SS2DWeights& w, const float* A_logs) {
  const int64_t K = kSS2DDirections, Dd = w.d_inner, N = w.d_state;
  const int64_t R = w.dt_rank;
  MAMBACV_CHECK(Dd > 0 && N > 0 && R > 0 && A_logs && w.Ds && w.dt_proj_w,
                "ss2d_prepare: sizes, A_logs, Ds and dt_proj_w must be set first");
  w.A = Tensor::empty({K * Dd, N});
  for (int64_t i = 0; i < K * Dd * N; ++i) w.A.f32()[i] = -std::exp(A_logs[i]);
  w.D_sum = Tensor::zeros({Dd});
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < Dd; ++c) w.D_sum.f32()[c] += w.Ds[k * Dd + c];
  w.dt_proj_t = Tensor::empty({K, R, Dd});
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < Dd; ++c)
      for (int64_t r = 0; r < R; ++r) w.dt_proj_t.f32()[(k * R + r) * Dd + c] = w.dt_proj_w[(k * Dd + c) * R + r];
}

namespace {
// Rounds every value of t (f32) to `dt` and back, in place (the precision policy's rounding points).
void round_through(Tensor& t, DType dt) {
  if (dt == DType::F32) return;
  t = t.to(dt).to(DType::F32);
}
}  // namespace

void ss2d_forward(const float* x, int64_t B, int64_t H, int64_t W, const SS2DWeights& w, const SS2DOrders& orders,
                  const detail::Policy& policy, float* out, bool accumulate) {
  const int64_t K = kSS2DDirections, C = w.d_model, Dd = w.d_inner, N = w.d_state, R = w.dt_rank;
  const int64_t L = H * W, BL = B * L, P = R + 2 * N;
  MAMBACV_CHECK(B >= 1 && H >= 1 && W >= 1, "ss2d: empty input " << B << "x" << H << "x" << W);
  MAMBACV_CHECK(w.A.defined() && w.D_sum.defined(), "ss2d: weights not prepared (call ss2d_prepare)");

  // xin (B, L, Dd) = x @ in_proj[0:Dd]^T;  z (B, L, Dd) = silu(x @ in_proj[Dd:2Dd]^T)
  Tensor xin = Tensor::empty({B, L, Dd});
  ops::gemm(BL, Dd, C, x, C, w.in_proj, C, /*trans_b=*/true, xin.f32(), Dd);
  Tensor z;
  if (w.with_z) {
    z = Tensor::empty({B, L, Dd});
    ops::gemm(BL, Dd, C, x, C, w.in_proj + Dd * C, C, /*trans_b=*/true, z.f32(), Dd);
    ops::silu_inplace(z.f32(), BL * Dd);
  }

  // u (B, H, W, Dd) = silu(depthwise conv(xin))
  Tensor u;
  if (w.d_conv > 1) {
    u = Tensor::empty({B, L, Dd});
    const int pad = (w.d_conv - 1) / 2;
    ops::depthwise_conv2d_nhwc(xin.f32(), B, H, W, Dd, w.conv_w, w.conv_b, w.d_conv, w.d_conv, pad, pad, u.f32());
  } else {
    u = xin;
  }
  ops::silu_inplace(u.f32(), BL * Dd);

  // x_dbl (B, L, K*P): every direction's [dt | B | C] from one GEMM over the natural token order
  Tensor xdbl = Tensor::empty({B, L, K * P});
  ops::gemm(BL, K * P, Dd, u.f32(), Dd, w.x_proj, Dd, /*trans_b=*/true, xdbl.f32(), K * P);
  // delta (B, L, K*Dd): delta[:, k*Dd:(k+1)*Dd] = dt_k (B*L, R) @ dt_proj[k]^T (R -> Dd). R is tiny (ceil(C/16)),
  // so a GEMM call per direction is mostly overhead: one pass over the tokens, vectorised across channels.
  Tensor delta = Tensor::empty({B, L, K * Dd});
  {
    const float* xd = xdbl.f32();
    const float* wt = w.dt_proj_t.f32();  // (K, R, Dd)
    float* dl = delta.f32();
#pragma omp parallel for schedule(static) num_threads(ops::num_threads())
    for (int64_t t = 0; t < BL; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const float* a = xd + t * K * P + k * P;  // dt_k of token t (R)
        const float* wk = wt + k * R * Dd;
        float* d = dl + t * K * Dd + k * Dd;
        const float a0 = a[0];
        for (int64_t c = 0; c < Dd; ++c) d[c] = a0 * wk[c];
        for (int64_t r = 1; r < R; ++r) {
          const float ar = a[r];
          const float* wr = wk + r * Dd;
          for (int64_t c = 0; c < Dd; ++c) d[c] += ar * wr[c];
        }
      }
  }

  // scan inputs in the policy's dtype (core v0: fp32; core v1: the compute dtype)
  const DType in_t = policy.scan_input_dtype();
  Tensor u_s = in_t == DType::F32 ? u : u.to(in_t);
  Tensor delta_s = in_t == DType::F32 ? delta : delta.to(in_t);
  Tensor xdbl_s = in_t == DType::F32 ? xdbl : xdbl.to(in_t);
  const size_t es = dtype_size(in_t);
  auto at = [es](const Tensor& t, int64_t off) { return static_cast<const char*>(t.raw()) + off * es; };

  // y (B, L, Dd) = the four directions merged (fp32), with the D skip (sum of the four Ds) once
  Tensor y = Tensor::empty({B, L, Dd});
  ScanParams p = token_major_scan(B, Dd, L, N, y.f32(), policy.scan_direction_round());
  for (int64_t k = 0; k < K; ++k) {
    ScanDirection d;
    d.u = token_major(u_s.raw(), in_t, L, Dd);
    d.delta = token_major(at(delta_s, k * Dd), in_t, L, K * Dd);
    d.B = token_major_bc(at(xdbl_s, k * P + R), in_t, L, K * P);
    d.C = token_major_bc(at(xdbl_s, k * P + R + N), in_t, L, K * P);
    d.A = w.A.f32() + k * Dd * N;
    d.D = k == 0 ? w.D_sum.f32() : nullptr;
    d.delta_bias = w.dt_proj_b + k * Dd;
    d.order = orders[static_cast<size_t>(k)];
    p.dirs.push_back(d);
  }
  selective_scan(p);

  // y = out_norm(y) [* z];  out (+)= y @ out_proj^T
  ops::layer_norm(y.f32(), BL, Dd, w.out_norm_w, w.out_norm_b, w.out_norm_eps, y.f32());
  if (policy.round_norm_before_gate()) round_through(y, policy.compute);
  if (w.with_z) ops::mul_inplace(y.f32(), z.f32(), BL * Dd);
  ops::gemm(BL, C, Dd, y.f32(), Dd, w.out_proj, Dd, /*trans_b=*/true, out, C, nullptr, accumulate ? 1.0f : 0.0f);
}

}  // namespace mambacv::ssm
