// ssm/mamba_mixer.h - the bidirectional ("v2") Mamba mixer of Vim.
// Mirrors hustvl/Vim mamba-1p1p1/mamba_ssm/modules/mamba_simple.py Mamba.forward with bimamba_type="v2"
// (MODELS.md §2): shared in_proj/out_proj, a forward branch (causal conv) and a backward branch (the same on the
// time-reversed x and z = an anti-causal conv and a reverse scan in original coordinates), both scans fused into
// one selective_scan call that reads the backward direction through a reversed order.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/context.h"
#include "kernels/ops.h"
#include "mambacv/tensor.h"
#include "ssm/precision.h"

namespace mambacv::ssm {

struct MambaDirectionWeights {
  ops::DepthwiseWeight conv;  // conv1d (E, 1, K) + bias (E)
  ops::PackedWeight x_proj;   // (R + 2N, E)
  std::vector<ops::PackedWeight> dt_proj;  // one (E, R): dt_proj.weight, for ops::dt_projection
  Tensor dt_proj_b;           // (E)
  Tensor A;                   // (E, N) = -exp(A_log), precomputed at bind time
  Tensor D;                   // (E)
};

struct BiMambaWeights {
  int64_t d_model = 0, d_inner = 0, d_state = 0, dt_rank = 0, d_conv = 4;
  bool divide_out = true;     // (y_f + y_b) / 2
  ops::PackedWeight in_proj;  // (2E, D), no bias
  ops::PackedWeight out_proj; // (D, E), no bias
  MambaDirectionWeights fwd, bwd;
};

// Fills a direction's prepared tensors from the checkpoint's: A_log (E, N), dt_proj.weight (E, R).
void prepare_direction(MambaDirectionWeights& d, const Tensor& A_log, const Tensor& dt_proj_w,
                       DType gemm_storage = DType::F32);

// h (B, T, D) -> (B, T, D). Workspace from ctx; safe to call from several threads.
Tensor bimamba_v2_forward(const ExecContext& ctx, const Tensor& h, const BiMambaWeights& w,
                          const detail::Policy& policy);

// The reverse order 0..L-1 -> L-1-l.
std::vector<int32_t> reversed_order(int64_t L);

}  // namespace mambacv::ssm
