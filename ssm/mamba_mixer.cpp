#include "ssm/mamba_mixer.h"

#include <algorithm>

#include "kernels/ops.h"
#include <algorithm>

#include "mambacv/selective_scan.h"

namespace mambacv::ssm {

std::vector<int32_t> reversed_order(int64_t L) {
  std::vector<int32_t> o(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) o[l] = static_cast<int32_t>(L - 1 - l);
  return o;
}

void bimamba_v2_forward(const float* h, int64_t B, int64_t T, const BiMambaWeights& w, const detail::Policy& policy,
                        float* out) {
  const int64_t D = w.d_model, E = w.d_inner, N = w.d_state, R = w.dt_rank;
  const int64_t BT = B * T, P = R + 2 * N;

  // xz (B, T, 2E) = in_proj(h): x = channels [0, E), z = channels [E, 2E)
  Tensor xz = Tensor::empty({B, T, 2 * E});
  ops::linear(h, BT, D, w.in_proj, nullptr, 2 * E, xz.f32());

  // per direction: u (B, T, E) = silu(conv(x)), x_dbl (B, T, R+2N) = x_proj(u), delta (B, T, E) = dt_proj.W @ dt
  Tensor u[2], xdbl[2], delta[2];
  const MambaDirectionWeights* dw[2] = {&w.fwd, &w.bwd};
  // x (B, T, E): the x half of xz, gathered once and shared by both directions' convs
  Tensor x = Tensor::empty({B, T, E});
  {
    const float* src = xz.f32();
    float* dst = x.f32();
#pragma omp parallel for
    for (int64_t r = 0; r < BT; ++r) std::copy(src + r * 2 * E, src + r * 2 * E + E, dst + r * E);
  }
  for (int k = 0; k < 2; ++k) {
    u[k] = Tensor::empty({B, T, E});
    ops::conv1d_depthwise_tokens(x.f32(), B, T, E, dw[k]->conv_w, dw[k]->conv_b, static_cast<int>(w.d_conv),
                                 /*reverse=*/k == 1, /*silu=*/true, u[k].f32());
    xdbl[k] = Tensor::empty({B, T, P});
    ops::linear(u[k].f32(), BT, E, dw[k]->x_proj, nullptr, P, xdbl[k].f32());
    delta[k] = Tensor::empty({B, T, E});
    ops::gemm(BT, E, R, xdbl[k].f32(), P, dw[k]->dt_proj_w, R, /*trans_b=*/true, delta[k].f32(), E);
  }

  // y (B, T, E) = silu(z) * (scan_f + flip(scan_b)) [/ 2]; scan inputs and the gate in the policy's dtype
  // (core v0: fp32; core v1: the compute dtype)
  const DType in_t = policy.scan_input_dtype();
  auto as_in = [in_t](const Tensor& t) { return in_t == DType::F32 ? t : t.to(in_t); };
  const size_t es = dtype_size(in_t);
  auto at = [es](const Tensor& t, int64_t off) { return static_cast<const char*>(t.raw()) + off * es; };
  const Tensor xz_s = as_in(xz);
  std::vector<int32_t> rev = reversed_order(T);
  Tensor y = Tensor::empty({B, T, E});
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
    d.D = dw[k]->D;
    d.delta_bias = dw[k]->dt_proj_b;
    d.z = token_major(at(xz_s, E), in_t, T, 2 * E);
    d.order = k == 1 ? rev.data() : nullptr;
    d.out_scale = w.divide_out ? 0.5f : 1.0f;
    p.dirs.push_back(d);
  }
  selective_scan(p);

  // out (B, T, D) = out_proj(y)
  ops::linear(y.f32(), BT, E, w.out_proj, nullptr, D, out);
}

}  // namespace mambacv::ssm
