#include "ssm/precision.h"

#include "kernels/context.h"
#include "kernels/ops.h"
#include "mambacv/error.h"

namespace mambacv {

const char* core_name(Core c) { return c == Core::V0 ? "v0" : "v1"; }

Core parse_core(const std::string& s) {
  if (s == "v0" || s == "0" || s == "corev0") return Core::V0;
  if (s == "v1" || s == "1" || s == "corev1") return Core::V1;
  MAMBACV_FAIL("--core: expected v0 or v1, got '" << s << "'");
}

namespace detail {

static_assert(sizeof(kPolicyTable) / sizeof(kPolicyTable[0]) == static_cast<size_t>(Boundary::Head) + 1,
              "one policy row per boundary");

const char* boundary_name(Boundary b) { return kPolicyTable[static_cast<size_t>(b)].name; }

DType Policy::at(Boundary b) const {
  const BoundaryRow& row = kPolicyTable[static_cast<size_t>(b)];
  return (core == Core::V0 ? row.v0_compute : row.v1_compute) ? compute : DType::F32;
}

ops::Rounding Policy::rounding(Boundary b) const { return ops::Rounding{at(b), /*saturate=*/core == Core::V0}; }

void Policy::apply(const ExecContext& ctx, Boundary b, Tensor& t) const {
  const ops::Rounding r = rounding(b);
  ops::round_to(ctx, r.dtype, r.saturate, t);
  check(ctx, b, t);
}

void Policy::check(const ExecContext& ctx, Boundary b, const Tensor& t) const {
  if (watch && !watch->found && !ops::all_finite(ctx, t)) {
    watch->found = true;
    watch->first = (watch->scope.empty() ? std::string() : watch->scope + " ") + boundary_name(b) + " (core " +
                   core_name(core) + ", " + dtype_name(compute) + ")";
  }
}

void Policy::linear(const ExecContext& ctx, Boundary b, const Tensor& x, const ops::PackedWeight& W, Tensor& y,
                    std::optional<ops::Act> act) const {
  ops::linear(ctx, x, W, y, /*accumulate=*/false, rounding(b), act);
  check(ctx, b, y);
}

}  // namespace detail
}  // namespace mambacv
