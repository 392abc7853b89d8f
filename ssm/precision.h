// ssm/precision.h - the precision policy of the scan cores as one table (MODELS.md §3.4), used by Vim and VMamba.
//
// Activations are stored f32. In a reduced compute dtype (f16 / bf16) the GEMM and convolution weights are packed
// in it once at load (depthwise taps, norm parameters, biases, A_log / D / dt bias and the embeddings stay f32, as
// under autocast), every matrix product accumulates in f32, the scan state and norm statistics are f32, and each
// op's output is rounded to the dtype its boundary row names (Policy::apply, or fused into the op's stores with
// Policy::rounding: Policy::linear in the GEMM's, the norms, activations, adds and convolutions in theirs). The rows,
// with the upstream code each mirrors
// (VMamba classification/models/vmamba.py SS2D.forward_corev0 / forward_corev1, Vim models_mamba.py +
// mamba_simple.py Mamba.forward with bimamba v2, residual_in_fp32=True):
//
//   boundary        v0       v1       upstream
//   activation      compute  compute  any other op output in the model's dtype: patch embed, norms, in_proj,
//                                     depthwise conv + silu, x_proj, dt_proj, downsample, pooling
//   scan_u          f32      compute  corev0: xs.float()            corev1: xs kept in the compute dtype
//   scan_delta      f32      compute  corev0: dts.float()           corev1: dts kept
//   scan_B          f32      compute  corev0: Bs.float()            corev1: Bs kept
//   scan_C          f32      compute  corev0: Cs.float()            corev1: Cs kept
//   scan_out        f32      compute  each direction's selective_scan output (corev1 writes the input dtype;
//                                     Vim: out_z of each direction, its gate included)
//   merge           f32      f32      y = y0 + y1 + y2 + y3 (CrossMerge) / Vim (out + flip(out_b)) summed in f32
//   out_norm        f32      compute  out_norm(y): corev1 casts it to the compute dtype before the gate
//   gate            f32      compute  y * silu(z)
//   out_proj_in     compute  compute  out_proj(y.to(x.dtype))
//   out_proj_out    compute  compute  out_proj's output
//   mlp             compute  compute  fc1, GELU, fc2 outputs (VMamba Mlp)
//   residual        compute  compute  VMamba x = x + drop_path(...)
//   residual_stream f32      f32      Vim's residual stream (residual_in_fp32)
//   head            compute  compute  the classifier's logits
//
// Scan inputs are produced by ops whose outputs are already rounded (activation): their values are the compute
// dtype's under both cores, so the scan reads them from f32 storage and their rows change no value (they record
// upstream's casts). f16 overflow: core v0 saturates at +-65504 (finite inputs stay finite: nothing
// under v0 produces NaN or Inf for finite inputs); core v1 rounds as IEEE does (overflow gives +-inf), as
// upstream's compute-dtype kernels do. In f32 every row is f32 and the two cores differ only by summation order.
#pragma once

#include <optional>
#include <string>

#include "mambacv/dtype.h"
#include "mambacv/scan_core.h"

namespace mambacv {
struct ExecContext;
class Tensor;
namespace ops {
struct PackedWeight;
struct Rounding;
enum class Act;  // kernels/ops.h
}
}  // namespace mambacv

namespace mambacv::detail {

enum class Boundary {
  Activation,
  ScanU,
  ScanDelta,
  ScanB,
  ScanC,
  ScanOut,
  Merge,
  OutNorm,
  Gate,
  OutProjIn,
  OutProjOut,
  Mlp,
  Residual,
  ResidualStream,
  Head,
};

struct BoundaryRow {
  Boundary boundary;
  const char* name;
  bool v0_compute, v1_compute;  // rounded to the compute dtype (true) or kept f32 (false) under each core
};

// The table above, in Boundary order.
inline constexpr BoundaryRow kPolicyTable[] = {
    {Boundary::Activation, "activation", true, true},   {Boundary::ScanU, "scan_u", false, true},
    {Boundary::ScanDelta, "scan_delta", false, true},   {Boundary::ScanB, "scan_B", false, true},
    {Boundary::ScanC, "scan_C", false, true},           {Boundary::ScanOut, "scan_out", false, true},
    {Boundary::Merge, "merge", false, false},           {Boundary::OutNorm, "out_norm", false, true},
    {Boundary::Gate, "gate", false, true},              {Boundary::OutProjIn, "out_proj_in", true, true},
    {Boundary::OutProjOut, "out_proj_out", true, true}, {Boundary::Mlp, "mlp", true, true},
    {Boundary::Residual, "residual", true, true},       {Boundary::ResidualStream, "residual_stream", false, false},
    {Boundary::Head, "head", true, true},
};
const char* boundary_name(Boundary b);

// The first boundary at which a NaN or Inf appeared in one forward pass (Policy::watch; the network sets scope).
struct FiniteWatch {
  std::string scope;  // where the network is: "layers.3", "stage.2.block.1", "head"
  bool found = false;
  std::string first;  // "layers.3 scan_out (core v1, f16)"
};

struct Policy {
  DType compute = DType::F32;
  Core core = Core::V0;
  FiniteWatch* watch = nullptr;  // when set, apply() / check() check every boundary's values

  // The dtype a boundary's values are rounded to (its table row under this core).
  DType at(Boundary b) const;
  // The rounding of boundary b's values: to at(b), saturating f16 under core v0. The one place it is decided.
  ops::Rounding rounding(Boundary b) const;
  // Rounds t in place as rounding(b), then check(b).
  void apply(const ExecContext& ctx, Boundary b, Tensor& t) const;
  // After an op that rounded its output t with rounding(b) itself: when watching, records the first non-finite
  // boundary (no-op otherwise).
  void check(const ExecContext& ctx, Boundary b, const Tensor& t) const;
  // y = x @ W^T (+ bias) with y's values rounded as apply(b) would, the rounding fused into the GEMM's store;
  // act: y = act(that), rounded again (ops::linear's fused activation).
  void linear(const ExecContext& ctx, Boundary b, const Tensor& x, const ops::PackedWeight& W, Tensor& y,
              std::optional<ops::Act> act = std::nullopt) const;
  bool reduced() const { return compute != DType::F32; }
  // Names where the network is for the watch's report (no-op when not watching).
  void scope(const std::string& where) const {
    if (watch) watch->scope = where;
  }
};

}  // namespace mambacv::detail
