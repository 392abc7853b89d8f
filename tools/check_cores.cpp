// mambacv check-cores: both scan cores on the same weights and input, against each other and against f32.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "tools/args.h"
#include "tools/commands.h"

namespace mambacv::cli {
namespace fs = std::filesystem;

namespace {
const char* kCheckCoresHelp =
    "usage: mambacv check-cores --model M|FIXTURE.json [--weights W] [--dtype f32|f16|bf16] [--input IMAGE]\n"
    "                           [--size S] [--batch B] [--threads N] [--json]\n"
    "Runs core v0 and core v1 on the same weights and input (random weights and a random input when none are\n"
    "given; a fixture brings its weights and golden input) and prints, per tensor (stages and outputs), the\n"
    "relative L2 and max abs difference between the cores and of each core against an f32 run, and top-1\n"
    "agreement. Exits 0 when the cores agree within 1e-5 (f32), 1e-2 (f16), 4e-2 (bf16) and every value is\n"
    "finite, 1 otherwise.\n";

// A fixture json names its golden file; a model config does not.
bool read_fixture(const std::string& path, nlohmann::json* j) {
  if (path.size() < 5 || path.compare(path.size() - 5, 5, ".json") != 0 || !fs::exists(path)) return false;
  std::ifstream f(path);
  try {
    *j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    MAMBACV_FAIL("--model " << path << ": not valid JSON (" << e.what() << ")");
  }
  return j->contains("golden") && (*j)["golden"].is_string();
}

nlohmann::ordered_json compare_json(const Compare& c) {
  return {{"rel_l2", c.rel_l2}, {"max_abs", c.max_abs}, {"finite", c.finite}};
}
}  // namespace

int cmd_check_cores(const std::vector<std::string>& argv) {
  Args args("check-cores", argv, {"model", "weights", "dtype", "input", "size", "batch", "threads", "device"},
            {"json", "help"});
  if (args.has("help")) {
    std::fputs(kCheckCoresHelp, stdout);
    std::fputs(model_options_help().c_str(), stdout);
    return 0;
  }
  MAMBACV_USAGE_CHECK(args.positionals().empty(), "check-cores: unexpected argument '" << args.positionals()[0] << "'\n"
                                                                                 << kCheckCoresHelp);
  MAMBACV_USAGE_CHECK(args.has("model"), "check-cores: --model is required\n" << kCheckCoresHelp);
  const Options opt = args.model_options();
  MAMBACV_USAGE_CHECK(!args.has("core"), "check-cores: --core is not an option here: both cores are run");
  const std::string model = args.get("model");
  nlohmann::json fixture;
  const bool is_fixture = read_fixture(model, &fixture);
  const fs::path dir = fs::path(model).parent_path();
  ModelConfig cfg = load_model_config(model);

  // --weights, else the fixture's own, else random weights (the cores are compared either way)
  const std::string weights_path = args.has("weights") ? args.get("weights") : cfg.weights;
  TensorMap weights;
  if (!weights_path.empty()) weights = load_weights(weights_path).tensors;

  const int batch = args.get_int("batch", 1);
  MAMBACV_USAGE_CHECK(batch >= 1 && batch <= 256, "--batch: expected 1 to 256, got " << batch);
  auto input_size = [&] {  // --size, else the model's own input size
    const int size = args.has("size") ? args.get_int("size", 0) : summarize_model(cfg).input_width;
    MAMBACV_USAGE_CHECK(size >= 1 && size <= 4096, "--size: expected 1 to 4096, got " << size);
    return size;
  };
  Tensor x;
  if (args.has("input")) {
    InputSpec spec;
    spec.size = input_size();
    Tensor one = preprocess(load_image(args.get("input")), spec);
    x = Tensor::empty({batch, 3, spec.size, spec.size});
    for (int b = 0; b < batch; ++b) std::copy(one.f32(), one.f32() + one.numel(), x.f32() + b * one.numel());
  } else if (is_fixture && !args.has("size")) {
    const std::string golden = (dir / fixture["golden"].get<std::string>()).string();
    WeightFile g = load_safetensors(golden);
    auto in = g.tensors.find("input");
    MAMBACV_CHECK(in != g.tensors.end(), "golden " << golden << ": no tensor named \"input\"");
    x = in->second.to(DType::F32, /*copy=*/true);
  } else {
    const int size = input_size();
    x = Tensor::empty({batch, 3, size, size});
    std::mt19937 rng(1);
    std::normal_distribution<float> n(0.0f, 1.0f);
    for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = n(rng);
  }

  const CoreCheckReport r = check_cores(cfg, weights_path.empty() ? nullptr : &weights, x, opt.dtype, opt.threads);
  if (args.has("json")) {
    nlohmann::ordered_json j = {{"model", cfg.name},
                                {"weights", weights_path.empty() ? "random" : weights_path},
                                {"dtype", dtype_name(r.dtype)},
                                {"input", x.str()},
                                {"tolerance", r.tolerance}};
    nlohmann::ordered_json rows = nlohmann::ordered_json::array();
    for (const CoreCheckRow& row : r.rows)
      rows.push_back({{"tensor", row.tensor},
                      {"v1_vs_v0", compare_json(row.v1_vs_v0)},
                      {"v0_vs_f32", compare_json(row.v0_vs_f32)},
                      {"v1_vs_f32", compare_json(row.v1_vs_f32)}});
    j["tensors"] = rows;
    if (r.top1_total > 0) j["top1_agree"] = {{"agree", r.top1_agree}, {"total", r.top1_total}};
    j["passed"] = r.passed;
    std::printf("%s\n", json_text(j).c_str());
  } else {
    std::printf("model %s  weights %s  dtype %s  input %s\n", cfg.name.c_str(),
                weights_path.empty() ? "random" : weights_path.c_str(), dtype_name(r.dtype), x.str().c_str());
    std::printf("%-22s %12s %12s %12s %12s %12s %12s\n", "tensor", "v1-v0 rel", "v1-v0 max", "v0-f32 rel",
                "v0-f32 max", "v1-f32 rel", "v1-f32 max");
    for (const CoreCheckRow& row : r.rows) {
      auto cell = [](const Compare& c, bool rel) {
        char b[32];
        if (!c.finite) return std::string("NaN/Inf");
        std::snprintf(b, sizeof b, "%.3e", rel ? c.rel_l2 : c.max_abs);
        return std::string(b);
      };
      std::printf("%-22s %12s %12s %12s %12s %12s %12s\n", row.tensor.c_str(), cell(row.v1_vs_v0, true).c_str(),
                  cell(row.v1_vs_v0, false).c_str(), cell(row.v0_vs_f32, true).c_str(),
                  cell(row.v0_vs_f32, false).c_str(), cell(row.v1_vs_f32, true).c_str(),
                  cell(row.v1_vs_f32, false).c_str());
    }
    if (r.top1_total > 0)
      std::printf("top-1 agreement between the cores: %lld / %lld\n", static_cast<long long>(r.top1_agree),
                  static_cast<long long>(r.top1_total));
    std::printf("%s: cores %s within %.0e (%s)%s\n", r.passed ? "PASS" : "FAIL", r.passed ? "agree" : "differ",
                r.tolerance, dtype_name(r.dtype), r.passed ? "" : " or a value is not finite");
  }
  return r.passed ? 0 : 1;
}

}  // namespace mambacv::cli
