// mambacv info: parameters, FLOPs and output shapes of a model; with weights, their dtypes and any mismatch.
#include <cstdio>
#include <map>

#include "kernels/cpu_info.h"
#include "kernels/ops.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace mambacv::cli {

namespace {
const char* kInfoHelp =
    "usage: mambacv info --model M [--weights W] [--size 224]\n"
    "Prints the model's parameter count, FLOPs at the size (2 per multiply-add), the shapes of its outputs and\n"
    "feature maps; with --weights, the dtypes in the file and any missing, unexpected or misshapen tensors.\n";
}

int cmd_info(const std::vector<std::string>& argv) {
  std::set<std::string> valued = kModelOptions;
  valued.insert({"model", "weights", "size"});
  Args args("info", argv, valued, {"help"});
  if (args.has("help")) {
    std::fputs(kInfoHelp, stdout);
    return 0;
  }
  MAMBACV_CHECK(args.has("model"), "--model is required (a name from configs/ or a config .json)");
  Options opt = args.model_options();
  ModelConfig cfg = load_model_config(args.get("model"));
  Model model = Model::random(cfg, opt, 1);
  const int size = args.get_int("size", model.input_size());
  MAMBACV_CHECK(size >= 16, "--size: expected at least 16 pixels, got " << size);

  std::printf("cpu         %s (%s)\n", cpu::cpu_name().c_str(), cpu::feature_string().c_str());
  std::printf("kernels     gemm %s, selective scan %s, depthwise conv %s; threads %d\n", ops::gemm_backend(),
              cpu::isa_name(cpu::cpu_isa()), cpu::isa_name(cpu::cpu_isa()), resolve_threads(opt.threads));
  std::printf("precision   %s, core %s\n", precision_path(opt.dtype).c_str(), core_name(opt.core));
  std::printf("model       %s (%s)\n", cfg.name.c_str(), cfg.path.c_str());
  std::printf("arch        %s\n", cfg.arch.c_str());
  std::printf("parameters  %lld (%.2fM)\n", static_cast<long long>(model.num_parameters()),
              model.num_parameters() / 1e6);
  std::printf("classes     %d\n", model.num_classes());
  std::printf("input       (1, 3, %d, %d)\n", size, size);
  const double flops = model.flops_per_image(size, size);
  std::printf("FLOPs       %.3f GFLOP per image at %dx%d (%.3f G multiply-adds)\n", flops / 1e9, size, size,
              flops / 2e9);
  Tensor x = Tensor::zeros({1, 3, size, size});
  auto outs = model.forward_all(x);
  std::printf("outputs:\n");
  for (const auto& [name, t] : outs) std::printf("  %-24s %s\n", name.c_str(), shape_str(t.shape()).c_str());

  int rc = 0;
  if (args.has("weights")) {
    WeightFile wf = load_weights(args.get("weights"));
    std::map<std::string, int> dtypes;
    int64_t elems = 0;
    for (const auto& [n, t] : wf.tensors) {
      ++dtypes[dtype_name(t.dtype())];
      elems += t.numel();
    }
    std::printf("weights     %s: %zu tensors, %lld values", wf.path.c_str(), wf.tensors.size(),
                static_cast<long long>(elems));
    for (const auto& [d, n] : dtypes) std::printf(", %d %s", n, d.c_str());
    std::printf("\n");
    for (const auto& [k, v] : wf.metadata) std::printf("  metadata %s = %s\n", k.c_str(), v.c_str());
    try {
      Model::load(cfg, wf.tensors, opt, wf.path);
      std::printf("match       all %zu expected tensors present with the expected shapes\n",
                  model.parameter_specs().size());
    } catch (const Error& e) {
      std::printf("match       MISMATCH\n%s\n", e.what());
      rc = 1;
    }
  }
  return rc;
}

}  // namespace mambacv::cli
