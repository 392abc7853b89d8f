#include "ssm/mamba_mixer.h"

#include <cmath>

#include "kernels/selective_scan.h"

namespace mambacv::ssm {

using detail::Boundary;

std::vector<int32_t> reversed_order(int64_t L) {
  std::vector<int32_t> o(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) o[static_cast<size_t>(l)] = static_cast<int32_t>(L - 1 - l);
  return o;
}

void prepare_direction(MambaDirectionWeights& d, const Tensor& A_log, const Tensor& dt_proj_w,
                       DType gemm_storage) {
  d.A = Tensor::empty(A_log.shape());
  for (int64_t j = 0; j < A_log.numel(); ++j) d.A.f32()[j] = -std::exp(A_log.f32()[j]);
  d.dt_proj = {ops::pack_linear(dt_proj_w, Tensor(), gemm_storage)};
}

Tensor bimamba_v2_forward(const ExecContext& ctx, const Tensor& h, const BiMambaWeights& w,
                          const detail::Policy& policy) {
  const int64_t B = h.dim(0), T = h.dim(1), D = w.d_model, E = w.d_inner, N = w.d_state, R = w.dt_rank;
  const int64_t P = R + 2 * N;
  MAMBACV_CHECK(h.ndim() == 3 && h.dim(2) == D, "mamba mixer: expected (B, T, " << D << "), got " << h.str());

  // xz (B, T, 2E) = in_proj(h): x = channels [0, E), z = channels [E, 2E)
  Tensor xz = ctx.empty({B, T, 2 * E});
  policy.linear(ctx, Boundary::Activation, h, w.in_proj, xz);

  // per direction: u (B, T, E) = silu(conv(x)), x_dbl (B, T, R+2N) = x_proj(u), delta (B, T, E) = dt_proj.W @ dt
  Tensor u[2], xdbl[2], delta[2];
  const MambaDirectionWeights* dw[2] = {&w.fwd, &w.bwd};
  for (int k = 0; k < 2; ++k) {
    u[k] = ctx.empty({B, T, E});
    // reads the x half; the fused conv + silu rounds once, at its output
    ops::conv1d_tokens(ctx, xz, dw[k]->conv, /*reverse=*/k == 1, /*silu=*/true, u[k], policy.rounding(Boundary::Activation));
    policy.check(ctx, Boundary::Activation, u[k]);
    xdbl[k] = ctx.empty({B, T, P});
    policy.linear(ctx, Boundary::Activation, u[k], dw[k]->x_proj, xdbl[k]);
    delta[k] = ctx.empty({B, T, E});
    ops::dt_projection(ctx, xdbl[k], P, dw[k]->dt_proj, delta[k], policy.rounding(Boundary::Activation));
    policy.check(ctx, Boundary::Activation, delta[k]);
  }

  // y (B, T, E) = silu(z) * (scan_f + flip(scan_b)) [/ 2], each direction's output rounded to scan_out's dtype.
  // The scan inputs and z already hold the compute dtype's values (their producers' activation rows rounded them),
  // so both cores read them from f32 storage: the scan_u / scan_delta / scan_B / scan_C rows change no value.
  const std::vector<int32_t> rev = reversed_order(T);
  Tensor y = ctx.empty({B, T, E});
  ScanParams p = token_major_scan(B, E, T, N, y.f32(), policy.at(Boundary::ScanOut));
  for (int k = 0; k < 2; ++k) {
    ScanDirection d;
    d.u = token_major(u[k].f32(), DType::F32, T, E);
    d.delta = token_major(delta[k].f32(), DType::F32, T, E);
    d.B = token_major_bc(xdbl[k].f32() + R, DType::F32, T, P);
    d.C = token_major_bc(xdbl[k].f32() + R + N, DType::F32, T, P);
    d.A = dw[k]->A.f32();
    d.D = dw[k]->D.f32();
    d.delta_bias = dw[k]->dt_proj_b.f32();
    d.z = token_major(xz.f32() + E, DType::F32, T, 2 * E);
    d.order = k == 1 ? rev.data() : nullptr;
    d.out_scale = w.divide_out ? 0.5f : 1.0f;
    p.dirs.push_back(d);
  }
  selective_scan(ctx, p);
  policy.apply(ctx, Boundary::Merge, y);

  // out (B, T, D) = out_proj(y)
  policy.apply(ctx, Boundary::OutProjIn, y);
  Tensor out = ctx.empty({B, T, D});
  policy.linear(ctx, Boundary::OutProjOut, y, w.out_proj, out);
  return out;
}

}  // namespace mambacv::ssm
