// mambacv verify FIXTURE.json: run a golden fixture through the model and compare every tensor it produces.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tools/args.h"
#include "tools/commands.h"

namespace mambacv::cli {
namespace fs = std::filesystem;

namespace {
const char* kVerifyHelp =
    "usage: mambacv verify FIXTURE.json [--weights FILE] [--core v0|v1] [--dtype f32|f16|bf16]\n"
    "                      [--device cpu|cuda] [--threads N]\n"
    "Loads the fixture's config and weights (or --weights: .safetensors or .pth), runs its golden input and\n"
    "compares every golden tensor the model produces. Exits 0 only when all compared tensors are within the\n"
    "tolerance of the dtype (relative L2: f32 1e-4, f16 1e-2, bf16 4e-2) and none of logits / features /\n"
    "features.N was left uncompared.\n";

double tolerance(DType t) { return t == DType::F32 ? 1e-4 : t == DType::F16 ? 1e-2 : 4e-2; }

bool required_output(const std::string& n) {
  return n == "logits" || n == "features" || n.rfind("features.", 0) == 0;
}
}  // namespace

int cmd_verify(const std::vector<std::string>& argv) {
  std::set<std::string> valued = kModelOptions;
  valued.insert("weights");
  Args args("verify", argv, valued, {"help", "check-finite"});
  if (args.has("help")) {
    std::fputs(kVerifyHelp, stdout);
    std::fputs(model_options_help().c_str(), stdout);
    return 0;
  }
  MAMBACV_USAGE_CHECK(args.positionals().size() == 1, "verify: expected exactly one FIXTURE.json argument\n" << kVerifyHelp);
  const std::string fixture = args.positionals()[0];
  Options opt = args.model_options();

  std::ifstream f(fixture);
  MAMBACV_CHECK(f.good(), "fixture " << fixture << ": cannot open the file");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    MAMBACV_FAIL("fixture " << fixture << ": not valid JSON (" << e.what() << ")");
  }
  MAMBACV_CHECK(j.contains("golden") && j["golden"].is_string(),
                "fixture " << fixture << ": no \"golden\" file named (is this a fixture json?)");
  fs::path dir = fs::path(fixture).parent_path();
  std::string golden_path = (dir / j["golden"].get<std::string>()).string();
  ModelConfig cfg = load_model_config(fixture);
  const std::string weights_path = args.has("weights") ? args.get("weights") : cfg.weights;
  MAMBACV_CHECK(!weights_path.empty(), "fixture " << fixture << ": no \"weights\" file named; pass --weights");
  WeightFile golden = load_safetensors(golden_path);
  if (cfg.arch == "mask_rcnn") return verify_detection_fixture(fixture, weights_path, golden.tensors, opt);
  auto in = golden.tensors.find("input");
  MAMBACV_CHECK(in != golden.tensors.end(), "golden " << golden_path << ": no tensor named \"input\"");
  Model model = Model::load(cfg.path, weights_path, opt);
  Tensor x = in->second.to(DType::F32, /*copy=*/true);

  std::printf("fixture  %s\nweights  %s\nmodel    %s  device %s  dtype %s  core %s\n", fixture.c_str(),
              weights_path.c_str(), cfg.arch.c_str(), device_name(opt.device), dtype_name(opt.dtype),
              core_name(opt.core));
  std::map<std::string, Tensor> outs = model.forward_all(x);

  const double tol = tolerance(opt.dtype);
  bool ok = true;
  int compared = 0;
  std::printf("%-24s %-22s %12s %12s  %s\n", "tensor", "shape", "rel_l2", "max_abs", "result");
  for (const auto& [name, ref] : golden.tensors) {
    if (name == "input") continue;
    auto it = outs.find(name);
    if (it == outs.end()) {
      bool req = required_output(name);
      std::printf("%-24s %-22s %12s %12s  %s\n", name.c_str(), shape_str(ref.shape()).c_str(), "-", "-",
                  req ? "FAIL (not produced)" : "skipped (not produced)");
      if (req) ok = false;
      continue;
    }
    const Tensor& got = it->second;
    if (got.shape() != ref.shape()) {
      std::printf("%-24s %-22s %12s %12s  FAIL (shape %s)\n", name.c_str(), shape_str(ref.shape()).c_str(), "-", "-",
                  shape_str(got.shape()).c_str());
      ok = false;
      continue;
    }
    Compare c = compare(got, ref);
    bool pass = c.finite && c.rel_l2 <= tol;
    ok = ok && pass;
    ++compared;
    std::printf("%-24s %-22s %12.3e %12.3e  %s\n", name.c_str(), shape_str(ref.shape()).c_str(), c.rel_l2, c.max_abs,
                pass ? "pass" : (c.finite ? "FAIL" : "FAIL (NaN/Inf)"));
  }
  ok = ok && compared > 0;
  std::printf("%s: %d tensor(s) compared, tolerance %.0e (%s)\n", ok ? "PASS" : "FAIL", compared, tol,
              dtype_name(opt.dtype));
  return ok ? 0 : 1;
}

}  // namespace mambacv::cli
