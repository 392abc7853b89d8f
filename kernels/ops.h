// kernels/ops.h - the dense op set the models are written in.
//
// Every op takes the call's ExecContext (thread budget, allocator, trace sink, device; kernels/context.h) and typed
// tensors (dtype, shape, device). It checks its operands first: shapes against each other, and dtype / device
// against what it implements, with one message naming the op, the operand and what is supported (supports_f32
// below); then it dispatches on device and dtype to a backend kernel (today: CPU, f32; the kernel ISA - AVX-512,
// AVX2 or portable - is chosen at run time, kernels/cpu_info.h). Tensors are dense row-major; maps are
// channels-last (B, H, W, C). Every op has a plain reference in namespace `ref` (scalar loops, double accumulation
// where it sums, always compiled) that tests/test_ops.cpp checks the fast path against on shapes that hit every
// remainder. Ops keep no state and may run on several threads at once, each with its own context.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>

#include "kernels/context.h"
#include "kernels/cpu_info.h"
#include "mambacv/tensor.h"

namespace mambacv::ops {

// ---- operand checks ---------------------------------------------------------------------------------------------
// "" when every named operand is a defined f32 tensor on the CPU, else the reason, e.g.
// "layer_norm: operand x is bf16 on cpu; this build implements layer_norm for f32 on cpu only".
using Operand = std::pair<const char*, const Tensor*>;
std::string supports_f32(const char* op, std::initializer_list<Operand> operands);
// Throws Error with supports_f32's reason when it is not empty.
void require_f32(const char* op, std::initializer_list<Operand> operands);

// Activations (ops::activate, and the GEMM's fused epilogue).
// silu x/(1+e^-x); exact gelu 0.5x(1+erf(x/sqrt2)); relu max(x, 0); sigmoid. NaN stays NaN through each.
enum class Act { Silu, Gelu, Relu, Sigmoid };
const char* act_name(Act a);

// ---- matrix products --------------------------------------------------------------------------------------------
// Rounding of an op's stored values to a reduced dtype: the precision policy's rounding fused into the op (the
// GEMM's store; the norms, activations, add / mul, depthwise convolutions and dt_projection take it as their last
// argument), giving exactly the values of the op followed by round_to. F32: none. saturate: f16 values beyond
// +-65504 become +-65504 (see round_to).
struct Rounding {
  DType dtype = DType::F32;
  bool saturate = false;
};

// The kernel bf16 weights run on (f32 and f16 weights always take the f32 FMA kernels, f16 widened as loaded):
//   Widen: bf16 panels widened to f32 in the FMA kernels (any AVX2 / AVX-512 CPU);
//   Dot:   AVX512_BF16 vdpbf16ps, two k per instruction, A converted to bf16 per call;
//   Amx:   AMX tiles (tdpbf16ps, 16 x 16 x 32 per instruction), A converted to bf16 per call.
// Auto takes the fastest this CPU has, timed once per process on a model-sized product (MAMBACV_BF16_KERNEL=
// widen|dot|amx decides instead, where the CPU has it); a weight with K < 32 keeps Widen rather than Amx.
enum class Bf16Kernel { Auto, Widen, Dot, Amx };
const char* bf16_kernel_name(Bf16Kernel k);  // "widen", "dot", "amx"
Bf16Kernel best_bf16_kernel();               // what Auto resolves to on this CPU

// A weight matrix prepared once, at load, for the GEMM backend that cpu_isa() selects: W (N, K) for y = x @ W^T
// (PyTorch Linear layout), packed into panels of `nr` columns (K x nr, k-major, zero-padded) for the AVX-512 /
// AVX2 kernels, or kept as a plain (N, K) f32 copy for the portable one. Optional bias (N, f32).
// storage: the panels' element type; f16 / bf16 halve the weight memory (products and sums stay f32). For the Dot
// and Amx kernels the bf16 panels hold k pairs: per panel and pair, the nr columns' (k even, k odd) values.
struct PackedWeight {
  int64_t N = 0, K = 0;
  cpu::Isa isa = cpu::Isa::Generic;
  int nr = 0;                            // panel width (32 avx512, 16 avx2, 0 generic)
  DType storage = DType::F32;            // panels' element type (F32 for the generic backend)
  Bf16Kernel bf16 = Bf16Kernel::Widen;   // bf16 storage: the kernel it was packed for
  int64_t kpairs = 0;                    // Dot / Amx: k pairs per panel (ceil(K / 2); Amx: a multiple of 16)
  Tensor panels;                         // ceil(N / nr) * K * nr values; Dot / Amx: ceil(N / nr) * kpairs * nr * 2
  Tensor plain;                          // (N, K) (nr == 0)
  Tensor bias;                           // (N) or undefined
  bool defined() const { return N > 0; }
};
// B (N, K) with row stride ldb when trans_b, else B (K, N) (op(B) = B^T (K x N) either way); bias (N) or null.
PackedWeight pack_weight(const float* B, int64_t ldb, bool trans_b, int64_t N, int64_t K,
                         const float* bias = nullptr, DType storage = DType::F32);
// The same for a given kernel family instead of cpu_isa()'s (tests run every family on one machine; an ISA above
// detected_isa() is refused) and, for bf16 storage, a given kernel (one the CPU lacks is refused).
PackedWeight pack_weight_for(cpu::Isa isa, const float* B, int64_t ldb, bool trans_b, int64_t N, int64_t K,
                             const float* bias = nullptr, DType storage = DType::F32,
                             Bf16Kernel bf16 = Bf16Kernel::Auto);
// Whether this CPU can run a bf16 kernel (Widen: AVX2; Dot: AVX-512 + AVX512_BF16; Amx: amx_available()),
// whatever MAMBACV_ISA selects (Auto takes Widen when it lowers the dispatch below AVX-512).
bool bf16_kernel_runs(Bf16Kernel k);
// W (N, K) f32 [+ bias (N)].
PackedWeight pack_linear(const Tensor& W, const Tensor& bias = Tensor(), DType storage = DType::F32);

// y (rows, N) (=|+=) x (rows, K) @ W^T + W.bias, over the last dimension of x and y (all leading dims are rows).
// accumulate: y += the product (the bias is added too). round: the stored values (after the sum) rounded.
// act: an activation applied to the stored values and rounded again as `round`: exactly the values of linear
// followed by activate(act, y, round). The packed kernels apply it to each C tile as they store it (in L1); the
// portable (Eigen) and K = 0 paths in a second pass over C.
void linear(const ExecContext& ctx, const Tensor& x, const PackedWeight& W, Tensor& y, bool accumulate = false,
            Rounding round = {}, std::optional<Act> act = std::nullopt);
// The same product on row-strided raw operands (backends and ops that work on sub-matrices): C (M, N) with row
// stride ldc = A (M, K) with row stride lda @ W^T [+ bias] [+ beta * C], beta 0 or 1, then rounded as `round`,
// then act (if any) and rounded again.
void gemm(const ExecContext& ctx, int64_t M, const float* A, int64_t lda, const PackedWeight& W, float* C,
          int64_t ldc, float beta = 0.0f, Rounding round = {}, std::optional<Act> act = std::nullopt);
// Names the backend cpu_isa() selects: "mambacv-avx512 (14x32)", "mambacv-avx2 (6x16)" or "eigen".
const char* gemm_backend();

// The dt_proj of the Mamba mixers: delta (G, rows, D)[g] = x[:, g*P : g*P + R] @ W[g]^T for each of the G groups
// (directions), W[g] (D, R) packed; x (rows, G*P) with P >= R (the [dt | B | C] rows of x_proj). One GEMM per
// group on the strided column block; each group's delta is contiguous (rows, D), the rows the scan streams.
void dt_projection(const ExecContext& ctx, const Tensor& x, int64_t P, const std::vector<PackedWeight>& W,
                   Tensor& delta, Rounding round = {});

// ---- convolutions -------------------------------------------------------------------------------------------------
// A dense 2D convolution's weights, prepared once: PyTorch w (Cout, Cin, kh, kw) + bias (Cout) or undefined.
// prepare_conv2d packs the layouts the algorithms read: 1x1 stride 1 -> one GEMM; stride 1 with "same" padding
// (k odd, pad k/2) -> one GEMM per tap over a zero-padded wide grid (no im2col); anything else -> im2col in bounded
// chunks (a patch row is one memcpy when it lies inside the image, always true for patchify).
struct Conv2dWeight {
  int64_t cout = 0, cin = 0;
  int kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
  PackedWeight im2col;            // (Cout, kh*kw*Cin) for the im2col / 1x1 algorithm
  std::vector<PackedWeight> taps; // kh*kw of (Cout, Cin) for the shifted-GEMM algorithm
  bool shifted() const { return !taps.empty(); }
};
Conv2dWeight prepare_conv2d(const Tensor& w, const Tensor& bias, int sh, int sw, int ph, int pw,
                            DType storage = DType::F32);  // storage: as PackedWeight
inline int64_t conv_out_size(int64_t in, int k, int s, int p) { return (in + 2 * p - k) / s + 1; }
// x (B, H, W, Cin) -> y (B, Ho, Wo, Cout), Ho = (H + 2ph - kh) / sh + 1; relu applies max(0, .) after the bias.
Tensor conv2d(const ExecContext& ctx, const Tensor& x, const Conv2dWeight& w, bool relu = false);

// Depthwise weights prepared once: w (C, 1, kh, kw) -> taps (kh*kw, C), bias (C) or undefined.
struct DepthwiseWeight {
  int64_t C = 0;
  int kh = 1, kw = 1;
  Tensor taps, bias;
};
DepthwiseWeight prepare_depthwise(const Tensor& w, const Tensor& bias);
// Depthwise 2D convolution, stride 1, zero padding (ph, pw): x (B, H, W, C) -> y (B, Ho, Wo, C); silu optional.
void depthwise_conv2d(const ExecContext& ctx, const Tensor& x, const DepthwiseWeight& w, int ph, int pw, bool silu,
                      Tensor& y, Rounding round = {});
// Depthwise 1D convolution over tokens: x (B, L, Cx) with Cx >= C (channels [0, C) are read, so the x half of a
// wider projection needs no copy), w prepared from (C, 1, K) (kh = 1, kw = K):
//   causal (reverse=false): y[t] = b + sum_{k<K} w[k] * x[t - (K-1) + k]       (left zero padding K-1)
//   anti-causal (reverse=true): y[t] = b + sum_{k<K} w[k] * x[t + (K-1) - k]  (the causal conv of the reversed
//   sequence, read back in original order: Vim's backward branch).  Optional silu. y (B, L, C), not aliasing x.
// x (B, L, C) when Cx == C.
void conv1d_tokens(const ExecContext& ctx, const Tensor& x, const DepthwiseWeight& w, bool reverse, bool silu,
                   Tensor& y, Rounding round = {});

// ---- normalisation ---------------------------------------------------------------------------------------------
// Over the last dim of x (rows, C): LayerNorm (beta may be undefined) and RMSNorm. y may be x.
void layer_norm(const ExecContext& ctx, const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                Tensor& y, Rounding round = {});
void rms_norm(const ExecContext& ctx, const Tensor& x, const Tensor& gamma, float eps, Tensor& y, Rounding round = {});

// ---- elementwise -------------------------------------------------------------------------------------------------
void activate(const ExecContext& ctx, Act a, Tensor& x, Rounding round = {});  // in place
void add(const ExecContext& ctx, Tensor& y, const Tensor& x, Rounding round = {});  // y += x (same numel)
void mul(const ExecContext& ctx, Tensor& y, const Tensor& x, Rounding round = {});  // y *= x (same numel)
// Rounds every value of x (f32) in place to the nearest value of dt (ties to even) and keeps it as f32: the
// reduced-precision rounding points of the precision policy. F32 is a no-op. saturate: f16 values beyond its
// range (|v| > 65504, including inf) become +-65504 instead of +-inf; NaN stays NaN. bf16 never saturates.
void round_to(const ExecContext& ctx, DType dt, bool saturate, Tensor& x);
// true when every value of x (f32) is finite
bool all_finite(const ExecContext& ctx, const Tensor& x);

// ---- layout and token ops ---------------------------------------------------------------------------------------
// x (B, C, H, W) -> (B, H, W, C) and back (any 3- or 4-D tensor: the middle dims are flattened).
Tensor nchw_to_nhwc(const ExecContext& ctx, const Tensor& x);
Tensor nhwc_to_nchw(const ExecContext& ctx, const Tensor& x);
// Vim's token sequence: patches (B, M, D) with `token` (D) inserted at position `at`, plus pos (M + 1, D)
// -> (B, M + 1, D).
Tensor insert_token_add(const ExecContext& ctx, const Tensor& patches, const Tensor& token, int64_t at,
                        const Tensor& pos);
// x (B, T, D): row t of every item -> (B, D);  every row but t -> (B, T - 1, D).
Tensor take_token(const ExecContext& ctx, const Tensor& x, int64_t t);
Tensor drop_token(const ExecContext& ctx, const Tensor& x, int64_t t);
// x (B, L, C) -> mean over L (B, C).
Tensor mean_tokens(const ExecContext& ctx, const Tensor& x);
// PatchMerging2D's gather: x (B, H, W, C) zero-padded to even H, W -> (B, H2, W2, 4C) with the channel blocks
// [x(2i, 2j), x(2i+1, 2j), x(2i, 2j+1), x(2i+1, 2j+1)].
Tensor patch_merge_2x2(const ExecContext& ctx, const Tensor& x);
// Nearest-neighbour resize of a channels-last map, F.interpolate(mode="nearest", size=(Ho, Wo)) indices
// (nearest_source_index), added into y: y (B, Ho, Wo, C) += nearest(x (B, H, W, C)).
void add_nearest_resized(const ExecContext& ctx, const Tensor& x, Tensor& y);
int64_t nearest_source_index(int64_t dst, int64_t in, int64_t out);
// Every second pixel, x (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C) (max_pool2d kernel 1 stride 2).
Tensor subsample2(const ExecContext& ctx, const Tensor& x);

// ---- resampling --------------------------------------------------------------------------------------------------
// Bicubic interpolation of a channels-last grid, PyTorch F.interpolate(mode="bicubic", align_corners=False)
// semantics (A = -0.75, border clamped): x (Hi, Wi, C) -> (Ho, Wo, C).
Tensor resize_bicubic(const ExecContext& ctx, const Tensor& x, int64_t Ho, int64_t Wo);

// Plain references (raw f32 pointers, scalar loops, double sums); always compiled.
namespace ref {
// C (M, N) = A (M, K) @ op(B) [+ bias (N)] [+ beta * C]; op(B) = B^T with B (N, K) when trans_b, else B (K, N).
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, bool trans_b,
          float* C, int64_t ldc, const float* bias = nullptr, float beta = 0.0f);
// x (B, H, W, Cin), w (Cout, Cin, kh, kw), bias or null -> y (B, Ho, Wo, Cout)
void conv2d_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t Cin, const float* w, const float* bias,
                 int64_t Cout, int kh, int kw, int sh, int sw, int ph, int pw, float* y);
// x (B, H, W, C), w (C, 1, kh, kw) -> y (B, Ho, Wo, C), stride 1
void depthwise_conv2d_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, const float* w,
                           const float* bias, int kh, int kw, int ph, int pw, float* y);
void conv1d_depthwise_tokens(const float* x, int64_t B, int64_t L, int64_t C, const float* w, const float* bias,
                             int K, bool reverse, bool silu, float* y);
void layer_norm(const float* x, int64_t rows, int64_t C, const float* gamma, const float* beta, float eps, float* y);
void rms_norm(const float* x, int64_t rows, int64_t C, const float* gamma, float eps, float* y);
float activate(Act a, float x);
float round_to(DType dt, bool saturate, float x);  // through the scalar f32_to_f16 / f32_to_bf16 conversions
void dt_projection(const float* x, int64_t rows, int64_t groups, int64_t P, int64_t R, const float* w /* (G, D, R) */,
                   int64_t D, float* delta /* (G, rows, D) */);
void insert_token_add(const float* patches, int64_t B, int64_t M, int64_t D, const float* token, int64_t at,
                      const float* pos, float* y);
void mean_tokens(const float* x, int64_t B, int64_t L, int64_t C, float* y);
void patch_merge_2x2(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, float* y);
void resize_bicubic_hwc(const float* x, int64_t Hi, int64_t Wi, int64_t C, int64_t Ho, int64_t Wo, float* y);
}  // namespace ref

}  // namespace mambacv::ops
