// kernels/selective_scan.h - (internal) THE fused selective-scan kernel shared by Vim and VMamba.
//
// Semantics (../shared/docs/MODELS.md §1, upstream mamba_ssm selective_scan_ref with delta_softplus):
// for each batch item b, channel c and each direction k (its own operands), over steps l = 0..L-1 with
// token t = order_k[l] (identity when order is null):
//     dt      = softplus(delta(b,c,t) + delta_bias[c])          (plain delta + bias when delta_softplus is false)
//     h[n]    = exp(dt * A[c,n]) * h[n] + dt * B(b,g,n,t) * u(b,c,t)      g = c / (dim / groups), h fp32, h0 = 0
//     y       = sum_n C(b,g,n,t) * h[n] + D[c] * u(b,c,t)
//     y      *= silu(z(b,c,t))                                   (when the direction has z)
//     v       = round_to(dir_round, out_scale * y)               (no-op for F32; round to nearest even)
//     out(b,c,t) = (accumulate || k > 0) ? out(b,c,t) + v : v    (fp32)
// Several directions accumulate into one output; a direction reads and writes every token-indexed operand
// through its order, so cross-scan / flipped sequences are never materialised.
// Order of operations (the reference follows it exactly; the fast path differs only by exp/log rounding and by
// summing the C*h terms over n in four partial sums, ~1e-7 relative):
//   dt = delta + bias, then softplus(x) = x > 20 ? x : log1p(exp(x));  h[n] = exp(dt*A[n]) * h[n] + (dt*u) * B[n];
//   y = ((C[0]*h[0] + C[1]*h[1]) + ...) + D*u;  y *= z / (1 + exp(-z));  v = round(out_scale * y);
//   directions are merged in the order of `dirs` (k = 0 first), each added to out in fp32.
// Requirements: out must not overlap any input operand; every direction's order must be a permutation of 0..L-1
// (validate_scan_params checks this in O(L)); last_state of different directions must not overlap.
//
// Layouts are given by element strides, so (B, D, L) channel-major and (B, L, D) token-major both work. The fast
// CPU path vectorises across channels and is fastest when the channel stride of u, delta, z and out is 1.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/context.h"
#include "mambacv/dtype.h"

namespace mambacv {

// Element (b, c, t) of a (batch, channel, token) operand is at ptr[b*sb + c*sc + t*st] (in elements of dtype).
struct ScanOperand {
  const void* ptr = nullptr;
  DType dtype = DType::F32;  // F32, F16 or BF16
  int64_t sb = 0, sc = 0, st = 0;
};

// Element (b, g, n, t) of a B or C operand is at ptr[b*sb + g*sg + n*sn + t*st].
struct ScanBCOperand {
  const void* ptr = nullptr;
  DType dtype = DType::F32;
  int64_t sb = 0, sg = 0, sn = 0, st = 0;
};

struct ScanDirection {
  ScanOperand u;                       // (B, dim, L) input
  ScanOperand delta;                   // (B, dim, L) pre-softplus time step
  ScanBCOperand B;                     // (B, groups, N, L)
  ScanBCOperand C;                     // (B, groups, N, L)
  const float* A = nullptr;            // (dim, N), already negative (A = -exp(A_log))
  const float* D = nullptr;            // (dim) skip, or null for none
  const float* delta_bias = nullptr;   // (dim), or null for none
  ScanOperand z;                       // optional gate (ptr null = none)
  const int32_t* order = nullptr;      // (L) token visited at step l; null = identity; must be a permutation
  float out_scale = 1.0f;              // multiplier of this direction's contribution
  float* last_state = nullptr;         // optional output (B, dim, N) fp32, contiguous: h after the last step
};

struct ScanParams {
  int64_t batch = 0, dim = 0, L = 0, N = 0, groups = 1;
  bool delta_softplus = true;
  std::vector<ScanDirection> dirs;
  float* out = nullptr;                // (B, dim, L) fp32 merged output at out[b*osb + c*osc + t*ost]
  int64_t osb = 0, osc = 0, ost = 0;
  bool accumulate = false;             // false: out is overwritten; true: contributions are added to out
  // Precision policy hook (core v1): each direction's y is rounded to this dtype before the fp32 merge.
  DType dir_round = DType::F32;
};

// Token-major operands, the layout the models use: element (b, c, t) of a (B, L, row) buffer at
// p[b*L*row + t*row + c] (channel c of token t; `row` >= the channels used, e.g. a slice of a wider projection).
inline ScanOperand token_major(const void* p, DType dtype, int64_t L, int64_t row) {
  return {p, dtype, L * row, 1, row};
}
// B or C with one group read from a token-major buffer: element (b, 0, n, t) at p[b*L*row + t*row + n].
inline ScanBCOperand token_major_bc(const void* p, DType dtype, int64_t L, int64_t row) {
  return {p, dtype, L * row, 0, 1, row};
}
// Parameters for a merged, overwritten, token-major fp32 output out (B, L, dim); directions are added by the caller.
inline ScanParams token_major_scan(int64_t batch, int64_t dim, int64_t L, int64_t N, float* out, DType dir_round) {
  ScanParams p;
  p.batch = batch;
  p.dim = dim;
  p.L = L;
  p.N = N;
  p.groups = 1;
  p.delta_softplus = true;
  p.out = out;
  p.osb = L * dim;
  p.osc = 1;
  p.ost = dim;
  p.accumulate = false;
  p.dir_round = dir_round;
  return p;
}

// Throws Error if the parameters are inconsistent (null operands, dim % groups, ...). orders_readable: the
// directions' orders are host memory and are checked to be permutations (device-resident orders are checked by
// whoever builds them, on the host, before they are uploaded).
void validate_scan_params(const ScanParams& p, bool orders_readable = true);

// Plain reference implementation: one (b, c) sequence at a time, scalar code, any strides. Always compiled.
void selective_scan_ref(const ScanParams& p);

// Fast CPU implementation (ctx.threads over batch x channel tiles, vectorised across channels - AVX-512 when
// cpu_isa() has it, else the baseline's loops -, states in registers, blocked over L). Same results as the
// reference up to float summation order.
void selective_scan_cpu(const ExecContext& ctx, const ScanParams& p);

// CUDA implementation (kernels/cuda/selective_scan.cu; in builds with MAMBACV_CUDA): every pointer of p, orders
// included, is device memory; the scan is enqueued on ctx.stream (null: the default stream) and not waited for.
// Takes N <= 64 and at most 8 directions. Same results as the reference up to the device's exp / log rounding.
void selective_scan_cuda(const ExecContext& ctx, const ScanParams& p);

// Dispatch on ctx.device: the fast CPU path, or the CUDA kernel (an error in builds without CUDA).
// Reports the scan's FLOPs and bytes to ctx.trace.
void selective_scan(const ExecContext& ctx, const ScanParams& p);

}  // namespace mambacv
