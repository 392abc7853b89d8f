// check_cores: both scan cores on one input, against each other and against f32; precision_path: how a compute
// dtype runs on this CPU (mambacv/mambacv.h).
#include <algorithm>

#include "kernels/cpu_info.h"
#include "kernels/ops.h"
#include "mambacv/mambacv.h"

namespace mambacv {

namespace {
double core_tolerance(DType t) { return t == DType::F32 ? 1e-5 : t == DType::F16 ? 1e-2 : 4e-2; }

int64_t argmax_row(const Tensor& logits, int64_t b) {
  const int64_t C = logits.dim(1);
  const float* r = logits.f32() + b * C;
  return std::max_element(r, r + C) - r;
}
}  // namespace

std::string precision_path(DType dtype) {
  if (dtype == DType::F32) return "f32";
  const std::string d = dtype_name(dtype);
  std::string gemm = "GEMM weights stored " + d + ", widened to f32 in the FMA kernels";
  if (cpu::cpu_isa() == cpu::Isa::Generic) {
    gemm = "GEMM weights kept f32 (portable backend)";
  } else if (dtype == DType::BF16 && ops::best_bf16_kernel() == ops::Bf16Kernel::Amx) {
    gemm = "GEMM on AMX tiles (bf16 products, f32 sums; K < 32 widened), weights stored bf16";
  } else if (dtype == DType::BF16 && ops::best_bf16_kernel() == ops::Bf16Kernel::Dot) {
    gemm = "GEMM on AVX512_BF16 dot products (f32 sums), weights stored bf16";
  }
  return d + ": " + gemm + "; other ops f32 arithmetic on values rounded to " + d + " at the policy's boundaries";
}

CoreCheckReport check_cores(const ModelConfig& config, const TensorMap* weights, const Tensor& x, DType dtype,
                            int threads) {
  auto make = [&](DType dt, Core core) {
    Options opt;
    opt.dtype = dt;
    opt.core = core;
    opt.threads = threads;
    return weights ? Model::load(config, *weights, opt, config.name) : Model::random(config, opt);
  };
  const std::map<std::string, Tensor> ref = make(DType::F32, Core::V0).forward_all(x);
  const std::map<std::string, Tensor> v0 = make(dtype, Core::V0).forward_all(x);
  const std::map<std::string, Tensor> v1 = make(dtype, Core::V1).forward_all(x);

  CoreCheckReport r;
  r.dtype = dtype;
  r.tolerance = core_tolerance(dtype);
  r.passed = true;
  for (const auto& [name, t0] : v0) {
    auto i1 = v1.find(name);
    auto iref = ref.find(name);
    if (i1 == v1.end() || iref == ref.end() || t0.dtype() != DType::F32 || t0.shape() != i1->second.shape()) continue;
    CoreCheckRow row;
    row.tensor = name;
    row.v1_vs_v0 = compare(i1->second, t0);
    row.v0_vs_f32 = compare(t0, iref->second);
    row.v1_vs_f32 = compare(i1->second, iref->second);
    r.passed = r.passed && row.v1_vs_v0.finite && row.v0_vs_f32.finite && row.v1_vs_v0.rel_l2 <= r.tolerance;
    r.rows.push_back(row);
  }
  auto l0 = v0.find("logits"), l1 = v1.find("logits");
  if (l0 != v0.end() && l1 != v1.end() && l0->second.ndim() == 2) {
    r.top1_total = l0->second.dim(0);
    for (int64_t b = 0; b < r.top1_total; ++b) r.top1_agree += argmax_row(l0->second, b) == argmax_row(l1->second, b);
  }
  r.passed = r.passed && !r.rows.empty();
  return r;
}

}  // namespace mambacv
