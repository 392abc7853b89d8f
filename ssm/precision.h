// ssm/precision.h - the precision policy of the scan cores, in one place (MODELS.md §3.4).
//
// core v0: scan inputs u, delta, B, C are fp32; scan output, direction merge, out_norm and the gate stay fp32;
//          only out_proj returns to the compute dtype.
// core v1: u, delta, B, C stay in the compute dtype; the kernel keeps fp32 state and writes each direction's
//          output in the compute dtype; the merge is summed in fp32; out_norm's result is cast to the compute
//          dtype before the gate.
// In fp32 both policies are the identity and differ only by summation order.
#pragma once

#include "mambacv/dtype.h"
#include "mambacv/scan_core.h"

namespace mambacv::detail {

struct Policy {
  DType compute = DType::F32;
  Core core = Core::V0;

  // dtype the scan reads u / delta / B / C in
  DType scan_input_dtype() const { return core == Core::V0 ? DType::F32 : compute; }
  // dtype each direction's scan output is rounded to before the fp32 merge
  DType scan_direction_round() const { return core == Core::V0 ? DType::F32 : compute; }
  // whether out_norm's output is rounded to the compute dtype before the gate
  bool round_norm_before_gate() const { return core == Core::V1 && compute != DType::F32; }
};

}  // namespace mambacv::detail
