#include "ssm/mamba_mixer.h"

#include <cmath>

#include "kernels/selective_scan.h"

namespace mambacv::ssm {

std::vector<int32_t> reversed_order(int64_t L) {
  std::vector<int32_t> o(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) o[static_cast<size_t>(l)] = static_cast<int32_t>(L - 1 - l);
  return o;
}

void prepare_direction(MambaDirectionWeights& d, const Tensor& A_log, const Tensor& dt_proj_w) {
  d.A = Tensor::empty(A_log.shape());
  for (int64_t j = 0; j < A_log.numel(); ++j) d.A.f32()[j] = -std::exp(A_log.f32()[j]);
  d.dt_proj = {ops::pack_linear(dt_proj_w)};
}

Tensor bimamba_v2_forward(const ExecContext& ctx, const Tensor& h, const BiMambaWeights& w,
                          const detail::Policy& policy) {
  const int64_t B = h.dim(0), T = h.dim(1), D = w.d_model, E = w.d_inner, N = w.d_state, R = w.dt_rank;
  const int64_t P = R + 2 * N;
  MAMBACV_CHECK(h.ndim() == 3 && h.dim(2) == D, "mamba mixer: expected (B, T, " << D << "), got " << h.str());

  // xz (B, T, 2E) = in_proj(h): x = channels [0, E), z = channels [E, 2E)
  Tensor xz = ctx.empty({B, T, 2 * E});
  ops::linear(ctx, h, w.in_proj, xz);

  // per direction: u (B, T, E) = silu(conv(x)), x_dbl (B, T, R+2N) = x_proj(u), delta (B, T, E) = dt_proj.W @ dt
  Tensor u[2], xdbl[2], delta[2];
  const MambaDirectionWeights* dw[2] = {&w.fwd, &w.bwd};
  for (int k = 0; k < 2; ++k) {
    u[k] = ctx.empty({B, T, E});
    ops::conv1d_tokens(ctx, xz, dw[k]->conv, /*reverse=*/k == 1, /*silu=*/true, u[k]);  // reads the x half
    xdbl[k] = ctx.empty({B, T, P});
    ops::linear(ctx, u[k], dw[k]->x_proj, xdbl[k]);
    delta[k] = ctx.empty({B, T, E});
    ops::dt_projection(ctx, xdbl[k], P, dw[k]->dt_proj, delta[k]);
  }

  // y (B, T, E) = silu(z) * (scan_f + flip(scan_b)) [/ 2]; scan inputs and the gate in the policy's dtype
  // (core v0: fp32; core v1: the compute dtype)
  const DType in_t = policy.scan_input_dtype();
  auto as_in = [in_t](const Tensor& t) { return in_t == DType::F32 ? t : t.to(in_t); };
  const size_t es = dtype_size(in_t);
  auto at = [es](const Tensor& t, int64_t off) { return static_cast<const char*>(t.raw()) + off * es; };
  const Tensor xz_s = as_in(xz);
  const std::vector<int32_t> rev = reversed_order(T);
  Tensor y = ctx.empty({B, T, E});
  ScanParams p = token_major_scan(B, E, T, N, y.f32(), policy.scan_direction_round());
  Tensor u_s[2], delta_s[2], xdbl_s[2];
  for (int k = 0; k < 2; ++k) {
    u_s[k] = as_in(u[k]);
    delta_s[k] = as_in(delta[k]);
    xdbl_s[k] = as_in(xdbl[k]);
    ScanDirection d;
    d.u = token_major(u_s[k].raw(), in_t, T, E);
    d.delta = token_major(delta_s[k].raw(), in_t, T, E);
    d.B = token_major_bc(at(xdbl_s[k], R), in_t, T, P);
    d.C = token_major_bc(at(xdbl_s[k], R + N), in_t, T, P);
    d.A = dw[k]->A.f32();
    d.D = dw[k]->D.f32();
    d.delta_bias = dw[k]->dt_proj_b.f32();
    d.z = token_major(at(xz_s, E), in_t, T, 2 * E);
    d.order = k == 1 ? rev.data() : nullptr;
    d.out_scale = w.divide_out ? 0.5f : 1.0f;
    p.dirs.push_back(d);
  }
  selective_scan(ctx, p);

  // out (B, T, D) = out_proj(y)
  Tensor out = ctx.empty({B, T, D});
  ops::linear(ctx, y, w.out_proj, out);
  return out;
}

}  // namespace mambacv::ssm
