// mambacv models: the shipped configs with what they are, and where their released checkpoints come from; and the
// weights resolution every model command shares (--weights, a config's own weights, or --random-weights).
#include <cstdio>
#include <set>

#include "tools/args.h"
#include "tools/commands.h"

namespace mambacv::cli {

namespace {
const char* kModelsHelp =
    "usage: mambacv models [--json]\n"
    "Lists every shipped config (configs/, or the installed share/mambacv/configs): task, input size, parameter\n"
    "count, the released checkpoint's file name and where upstream publishes it. Nothing is downloaded: fetch the\n"
    "checkpoint yourself and pass it as --weights (.pth as released, or .safetensors; see 'mambacv convert').\n";

std::string input_text(const ModelSummary& s) {
  return std::to_string(s.input_width) + "x" + std::to_string(s.input_height);
}
}  // namespace

nlohmann::ordered_json summary_json(const ModelSummary& s) {
  return {{"name", s.name},
          {"arch", s.arch},
          {"task", s.task},
          {"description", s.description},
          {"input", {s.input_width, s.input_height}},
          {"classes", s.num_classes},
          {"parameters", s.parameters},
          {"checkpoint", s.checkpoint},
          {"checkpoint_url", s.checkpoint_url}};
}

std::string weights_for(const Args& args, const ModelConfig& cfg) {
  if (args.has("weights")) return args.get("weights");
  if (args.has("random-weights")) return "";
  if (!cfg.weights.empty()) return cfg.weights;
  std::ostringstream m;
  m << "--weights is required (.pth or .safetensors)";
  if (!cfg.checkpoint.empty()) {
    m << ": the released checkpoint of " << cfg.name << " is " << cfg.checkpoint;
    if (!cfg.checkpoint_url.empty()) m << " from " << cfg.checkpoint_url;
  }
  m << "; or --random-weights to try the pipeline without it";
  throw UsageError(m.str());
}

void warn_random_weights(const char* command, const ModelConfig& cfg) {
  std::fprintf(stderr,
               "mambacv %s: WARNING: RANDOM WEIGHTS - the outputs below mean nothing. For real results pass "
               "--weights %s%s%s\n",
               command, cfg.checkpoint.empty() ? "FILE" : cfg.checkpoint.c_str(),
               cfg.checkpoint_url.empty() ? "" : " (from ", cfg.checkpoint_url.empty() ? "" : (cfg.checkpoint_url + ")").c_str());
}

InputSpec input_spec_for(const Args& args, const Model& model) {
  InputSpec spec = model.input_spec();
  if (args.has("size")) {
    spec.size = args.get_int("size", spec.size);
    MAMBACV_USAGE_CHECK(spec.size >= 16 && spec.size <= 4096,
                        "--size: expected 16 to 4096 pixels, got " << args.get("size"));
  }
  return spec;
}

int cmd_models(const std::vector<std::string>& argv) {
  Args args("models", argv, {}, {"json", "help"});
  if (args.has("help")) {
    std::fputs(kModelsHelp, stdout);
    return 0;
  }
  MAMBACV_USAGE_CHECK(args.positionals().empty(), "models: unexpected argument '" << args.positionals()[0] << "'");
  const std::vector<std::string> names = list_model_configs();
  MAMBACV_CHECK(!names.empty(), "models: no configs found (searched:"
                                    << [] {
                                         std::string s;
                                         for (const auto& d : config_search_path()) s += " " + d;
                                         return s;
                                       }()
                                    << "); set MAMBACV_CONFIG_DIR");
  if (args.has("json")) {
    for (const auto& n : names) std::printf("%s\n", json_text(summary_json(summarize_model(load_model_config(n)))).c_str());
    return 0;
  }
  std::printf("%-28s %-14s %-9s %9s  %-46s %s\n", "model", "task", "input", "params", "checkpoint", "description");
  for (const auto& n : names) {
    const ModelSummary s = summarize_model(load_model_config(n));
    std::printf("%-28s %-14s %-9s %8.1fM  %-46s %s\n", s.name.c_str(), s.task.c_str(), input_text(s).c_str(),
                s.parameters / 1e6, s.checkpoint.empty() ? "-" : s.checkpoint.c_str(), s.description.c_str());
  }
  std::printf("\ncheckpoints are published at:\n");
  std::set<std::string> urls;
  for (const auto& n : names) urls.insert(load_model_config(n).checkpoint_url);
  for (const auto& u : urls)
    if (!u.empty()) std::printf("  %s\n", u.c_str());
  std::printf("nothing is downloaded: fetch the file and pass it as --weights\n");
  return 0;
}

}  // namespace mambacv::cli
