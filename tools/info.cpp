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
    "usage: mambacv info --model M [--weights W] [--size S | --size W,H] [--json]\n"
    "Prints what the model is (task, description, the released checkpoint and where upstream publishes it), its\n"
    "parameter count, FLOPs at the size (2 per multiply-add; default: the model's input, 1333x800 for detectors)\n"
    "and the shapes of its outputs; with --weights, the dtypes in the file and any missing, unexpected or misshapen\n"
    "tensors. --json prints one object with the same facts.\n";
}  // namespace

int cmd_info(const std::vector<std::string>& argv) {
  std::set<std::string> valued = kModelOptions;
  valued.insert({"model", "weights", "size"});
  Args args("info", argv, valued, {"help", "json"});
  if (args.has("help")) {
    std::fputs(kInfoHelp, stdout);
    std::fputs(model_options_help().c_str(), stdout);
    return 0;
  }
  MAMBACV_USAGE_CHECK(args.has("model"), "--model is required (a name from configs/ or a config .json)");
  Options opt = args.model_options();
  ModelConfig cfg = load_model_config(args.get("model"));
  const ModelSummary summary = summarize_model(cfg);
  int width = summary.input_width, height = summary.input_height;
  if (args.has("size")) {
    const std::vector<int> s = args.get_int_list("size", {});
    MAMBACV_USAGE_CHECK(s.size() == 1 || s.size() == 2, "--size: expected S or W,H, got " << args.get("size"));
    width = s[0];
    height = s.size() == 2 ? s[1] : s[0];
  }
  MAMBACV_USAGE_CHECK(width >= 16 && height >= 16 && width <= 8192 && height <= 8192,
                      "--size: expected 16 to 8192 pixels a side, got " << width << "x" << height);
  Model model = Model::random(cfg, opt, 1);
  // detectors run on the padded input (sides rounded up to 32, as mmdetection's Pad)
  const bool detector = summary.task == "detection";
  const int net_w = detector ? (width + 31) / 32 * 32 : width, net_h = detector ? (height + 31) / 32 * 32 : height;
  const double flops = model.flops_per_image(net_h, net_w);
  std::map<std::string, Tensor> outs = model.forward_all(Tensor::zeros({1, 3, net_h, net_w}));
  const bool json = args.has("json");
  nlohmann::ordered_json j = summary_json(summary);
  if (json) {
    j["path"] = cfg.path;
    j["flops_at"] = {width, height};
    j["flops"] = flops;
    nlohmann::ordered_json o = nlohmann::ordered_json::object();
    for (const auto& [name, t] : outs) o[name] = t.shape();
    j["outputs"] = o;
  } else {
    std::printf("cpu         %s (%s)\n", cpu::cpu_name().c_str(), cpu::feature_string().c_str());
    std::printf("kernels     gemm %s, selective scan %s, depthwise conv %s; threads %d\n", ops::gemm_backend(),
                cpu::isa_name(cpu::cpu_isa()), cpu::isa_name(cpu::cpu_isa()), resolve_threads(opt.threads));
    std::printf("precision   %s, core %s\n", precision_path(opt.dtype).c_str(), core_name(opt.core));
    std::printf("model       %s (%s)\n", cfg.name.c_str(), cfg.path.c_str());
    if (!summary.description.empty()) std::printf("about       %s\n", summary.description.c_str());
    std::printf("arch        %s\n", cfg.arch.c_str());
    std::printf("task        %s\n", summary.task.c_str());
    if (!summary.checkpoint.empty())
      std::printf("checkpoint  %s%s%s\n", summary.checkpoint.c_str(), summary.checkpoint_url.empty() ? "" : " from ",
                  summary.checkpoint_url.c_str());
    std::printf("parameters  %lld (%.2fM)\n", static_cast<long long>(summary.parameters), summary.parameters / 1e6);
    std::printf("classes     %d\n", summary.num_classes);
    if (detector)
      std::printf("input       %dx%d (the keep-ratio rescale bound; sides padded to multiples of 32)\n",
                  summary.input_width, summary.input_height);
    else
      std::printf("input       (1, 3, %d, %d)\n", summary.input_height, summary.input_width);
    std::printf("FLOPs       %.3f GFLOP per image at %dx%d%s (%.3f G multiply-adds)\n", flops / 1e9, width, height,
                detector ? (" (padded " + std::to_string(net_w) + "x" + std::to_string(net_h) +
                            "; backbone and FPN only: the heads' work depends on the proposals, see detect --profile)")
                               .c_str()
                         : "",
                flops / 2e9);
    std::printf("outputs:\n");
    for (const auto& [name, t] : outs) std::printf("  %-24s %s\n", name.c_str(), shape_str(t.shape()).c_str());
  }

  int rc = 0;
  if (args.has("weights")) {
    WeightFile wf = load_weights(args.get("weights"));
    std::map<std::string, int> dtypes;
    int64_t elems = 0;
    for (const auto& [n, t] : wf.tensors) {
      ++dtypes[dtype_name(t.dtype())];
      elems += t.numel();
    }
    std::string match;
    try {
      Model::load(cfg, wf.tensors, opt, wf.path);
    } catch (const Error& e) {
      match = e.what();
      rc = 1;
    }
    if (json) {
      j["weights"] = {{"path", wf.path}, {"tensors", wf.tensors.size()}, {"values", elems}, {"dtypes", dtypes},
                      {"metadata", wf.metadata}, {"match", match.empty()}};
      if (!match.empty()) j["weights"]["mismatch"] = match;
    } else {
      std::printf("weights     %s: %zu tensors, %lld values", wf.path.c_str(), wf.tensors.size(),
                  static_cast<long long>(elems));
      for (const auto& [d, n] : dtypes) std::printf(", %d %s", n, d.c_str());
      std::printf("\n");
      for (const auto& [k, v] : wf.metadata) std::printf("  metadata %s = %s\n", k.c_str(), v.c_str());
      if (match.empty())
        std::printf("match       all %zu expected tensors present with the expected shapes\n",
                    model.parameter_specs().size());
      else
        std::printf("match       MISMATCH\n%s\n", match.c_str());
    }
  }
  if (json) std::printf("%s\n", json_text(j).c_str());
  return rc;
}

}  // namespace mambacv::cli
