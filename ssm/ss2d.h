// ssm/ss2d.h - SS2D, the 2D selective-scan mixer of VMamba, on a channels-last map.
//
// Mirrors MzeroMiko/VMamba classification/models/vmamba.py SS2Dv0.forwardv0 and SS2Dv2.forwardv2 /
// forward_corev2 (cross2d scan mode) for forward_type v0, v2, v3, v05 and their "_noz" variants (MODELS.md §3.3):
//
//   x (B, H, W, C)
//   [x | z] = in_proj(x)                      in_proj (Dd, C) or (2Dd, C) with the z branch; no bias; z = silu(z)
//   u       = silu(dwconv_k(x) [+ b])         depthwise k x k, padding (k-1)/2; k <= 1: no conv
//   x_dbl   = u @ x_proj^T                    (B, L, K*(R+2N)): all four directions' [dt | B | C] in natural order
//   delta_k = x_dbl[k][:, 0:R] @ dt_proj[k]^T (B, L, K*Dd)
//   y       = sum_k scan_k(u, delta_k, A_k, B_k, C_k, delta_bias_k) + (sum_k D_k) * u
//             one fused selective_scan call: four directions share u, each walks its cross-scan order and
//             writes through it into one fp32 (B, L, Dd) output (the CrossMerge sum)
//   y       = LayerNorm_Dd(y) (eps 1e-5) [* z]
//   out     = y @ out_proj^T                  out_proj (C, Dd), no bias
//
// x_proj / dt_proj act per token, so they run once over the natural token order for all directions; only the scan
// sees the direction orders, which the caller supplies (vision/cross_scan.h), so this layer knows no image layout.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/context.h"
#include "kernels/ops.h"
#include "mambacv/tensor.h"
#include "ssm/precision.h"

namespace mambacv::ssm {

constexpr int kSS2DDirections = 4;

// A parsed upstream forward_type string.
struct SS2DForwardType {
  std::string name;  // as given, e.g. "v05_noz"
  bool with_z = true;
  bool v0 = false;   // upstream SS2Dv0 (forces a 3x3 conv with bias)
};
// The supported forward_type strings, for error messages.
const char* ss2d_supported_forward_types();
// Parses `s`; throws Error "<where>: forward_type "s" is not supported (supported: ...)" for anything else.
SS2DForwardType parse_ss2d_forward_type(const std::string& s, const std::string& where);

// The checkpoint's tensors of one SS2D (PyTorch layouts, raw f32 pointers), as the reference reads them.
struct SS2DParams {
  int64_t d_model = 0;  // C
  int64_t d_inner = 0;  // Dd = int(ssm_ratio * C)
  int64_t d_state = 0;  // N
  int64_t dt_rank = 0;  // R
  int d_conv = 3;       // depthwise kernel size; <= 1 means no conv
  bool with_z = true;
  float out_norm_eps = 1e-5f;

  const float* in_proj = nullptr;     // (2Dd, C) with z, else (Dd, C)
  const float* conv_w = nullptr;      // (Dd, 1, d_conv, d_conv)
  const float* conv_b = nullptr;      // (Dd) or null
  const float* x_proj = nullptr;      // (K, R+2N, Dd) == (K*(R+2N), Dd); rows [dt R | B N | C N]
  const float* dt_proj_w = nullptr;   // (K, Dd, R) == (K*Dd, R)
  const float* dt_proj_b = nullptr;   // (K, Dd)
  const float* A_logs = nullptr;      // (K*Dd, N)
  const float* Ds = nullptr;          // (K*Dd)
  const float* out_norm_w = nullptr;  // (Dd)
  const float* out_norm_b = nullptr;  // (Dd)
  const float* out_proj = nullptr;    // (C, Dd)
};

// The same weights prepared once for the backend (ss2d_prepare).
struct SS2DWeights {
  int64_t d_model = 0, d_inner = 0, d_state = 0, dt_rank = 0;
  int d_conv = 3;
  bool with_z = true;
  float out_norm_eps = 1e-5f;
  ops::PackedWeight in_x, in_z;   // in_proj rows [0, Dd) and [Dd, 2Dd)
  ops::DepthwiseWeight conv;      // when d_conv > 1
  ops::PackedWeight x_proj;       // (K*(R+2N), Dd)
  std::vector<ops::PackedWeight> dt_proj;  // K of (Dd, R)
  Tensor dt_proj_b;               // (K*Dd)
  Tensor A;                       // (K*Dd, N) = -exp(A_logs)
  Tensor Ds;                      // (K, Dd)
  Tensor D_sum;                   // (Dd) = sum_k Ds[k*Dd + c]
  Tensor out_norm_w, out_norm_b;  // (Dd)
  ops::PackedWeight out_proj;     // (C, Dd)
};
SS2DWeights ss2d_prepare(const SS2DParams& p, DType gemm_storage = DType::F32);

// The four direction orders over the row-major tokens of one H x W map (each a permutation of 0..H*W-1).
using SS2DOrders = std::array<const int32_t*, kSS2DDirections>;

// x (B, H, W, C) -> SS2D(x) (B, H, W, C); with `residual` (a (B, H, W, C) tensor not sharing x's storage),
// residual += SS2D(x) instead (the block's residual add) and residual is returned.
// Workspace from ctx; safe to call from several threads.
Tensor ss2d_forward(const ExecContext& ctx, const Tensor& x, const SS2DWeights& w, const SS2DOrders& orders,
                    const detail::Policy& policy, Tensor* residual = nullptr);

// Plain reference (ssm/ss2d_ref.cpp): materialises the four direction copies xs (B, K, Dd, L) exactly as upstream
// CrossScan, runs selective_scan_ref per direction with its own D, and merges with the closed-form CrossMerge
// index formula. Scalar reference ops throughout, with the policy's rounding placed by hand at the same boundaries
// as ss2d_forward (through the scalar conversions). For tests only (slow).
void ss2d_forward_ref(const float* x, int64_t B, int64_t H, int64_t W, const SS2DParams& w, float* out,
                      const detail::Policy& policy = detail::Policy{});

}  // namespace mambacv::ssm
