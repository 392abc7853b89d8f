// ssm/mamba_mixer.h - the bidirectional ("v2") Mamba mixer of Vim.
// Mirrors hustvl/Vim mamba-1p1p1/mamba_ssm/modules/mamba_simple.py Mamba.forward with bimamba_type="v2"
// (MODELS.md §2): shared in_proj/out_proj, a forward branch (causal conv) and a backward branch (the same on the
// time-reversed x and z = an anti-causal conv and a reverse scan in original coordinates), both scans fused into
// one selective_scan call that reads the backward direction through a reversed order.
#pragma once

#include <cstdint>
#include <vector>

#include "mambacv/tensor.h"
#include "ssm/precision.h"

namespace mambacv::ssm {

struct MambaDirectionWeights {
  const float* conv_w = nullptr;     // (E, 1, K)
  const float* conv_b = nullptr;     // (E)
  const float* x_proj = nullptr;     // (R + 2N, E)
  const float* dt_proj_w = nullptr;  // (E, R)
  const float* dt_proj_b = nullptr;  // (E)
  Tensor A;                          // (E, N) = -exp(A_log), precomputed at bind time
  const float* D = nullptr;          // (E)
};

struct BiMambaWeights {
  int64_t d_model = 0, d_inner = 0, d_state = 0, dt_rank = 0, d_conv = 4;
  bool divide_out = true;            // (y_f + y_b) / 2
  const float* in_proj = nullptr;    // (2E, D), no bias
  const float* out_proj = nullptr;   // (D, E), no bias
  MambaDirectionWeights fwd, bwd;
};

// h (B, T, D) -> out (B, T, D). Allocates its own workspace; safe to call from several threads.
void bimamba_v2_forward(const float* h, int64_t B, int64_t T, const BiMambaWeights& w, const detail::Policy& policy,
                        float* out);

// The reverse order 0..L-1 -> L-1-l.
std::vector<int32_t> reversed_order(int64_t L);

}  // namespace mambacv::ssm
