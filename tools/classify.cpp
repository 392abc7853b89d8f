// mambacv classify: top-k ImageNet classes of images, batched; per-image errors reported, the rest classified.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <numeric>

#include "tools/args.h"
#include "tools/commands.h"
#include "tools/inputs.h"

namespace mambacv::cli {

namespace {
const char* kClassifyHelp =
    "usage: mambacv classify --model M --weights W [--topk 5] [--batch N] [--json] [--labels FILE] INPUT...\n"
    "                        [--random-weights] [--size S]\n"
    "INPUT: image files (PNG, JPEG, BMP, TIFF, WebP, ...), folders (searched recursively), @list.txt (one path\n"
    "per line, relative paths taken from the list's folder) or - (a list on standard input, relative to the\n"
    "working directory). --weights defaults to the config's own weights file where it names one (fixtures);\n"
    "--random-weights runs without a checkpoint (outputs mean nothing; a warning says so).\n"
    "Images get the upstream eval transform (shorter side to S/0.875 with antialiased bicubic, center crop S,\n"
    "ImageNet mean/std; S = --size, default the model's input size). Prints the top-k classes with probabilities\n"
    "per image; --json prints one object per line: {\"image\": PATH, \"top\": [{\"index\": I, \"label\": NAME,\n"
    "\"prob\": P}, ...]} or {\"image\": PATH, \"error\": REASON}. Exit status 1 when any image failed.\n";

struct Item {
  std::string path;
  Tensor input;       // (1, 3, S, S) when decoded
  std::string error;  // set when it failed
};
}  // namespace

int cmd_classify(const std::vector<std::string>& argv) {
  std::set<std::string> valued = kModelOptions;
  valued.insert({"model", "weights", "topk", "batch", "labels", "size"});
  Args args("classify", argv, valued, {"json", "help", "check-finite", "random-weights"});
  if (args.has("help")) {
    std::fputs(kClassifyHelp, stdout);
    std::fputs(model_options_help().c_str(), stdout);
    return 0;
  }
  MAMBACV_USAGE_CHECK(args.has("model"), "--model is required (a name from configs/ or a config .json)");
  MAMBACV_USAGE_CHECK(!args.positionals().empty(), "classify: no INPUT given (image files, folders or @list.txt)");
  const int topk = args.get_int("topk", 5);
  const int batch = args.get_int("batch", 8);
  MAMBACV_USAGE_CHECK(topk >= 1, "--topk: expected a positive integer, got " << topk);
  MAMBACV_USAGE_CHECK(batch >= 1, "--batch: expected a positive integer, got " << batch);
  const bool json = args.has("json");

  Options opt = args.model_options();
  ModelConfig cfg = load_model_config(args.get("model"));
  MAMBACV_USAGE_CHECK(cfg.arch != "mask_rcnn", "--model " << cfg.name << " is a detector: use 'mambacv detect'");
  const std::string weights = weights_for(args, cfg);
  if (weights.empty()) warn_random_weights("classify", cfg);
  Model model = weights.empty() ? Model::random(cfg, opt, 1) : Model::load(cfg.path, weights, opt);
  MAMBACV_CHECK(model.num_classes() > 0, "--model " << cfg.name << " is a backbone without a classifier; use "
                                                    << "'mambacv features'");
  std::vector<std::string> labels =
      args.has("labels") ? read_label_file(args.get("labels")) : model.class_names();
  if (!labels.empty() && static_cast<int>(labels.size()) != model.num_classes()) {
    std::fprintf(stderr, "mambacv classify: warning: %s has %zu labels but the model has %d classes; printing "
                         "indices\n", args.get("labels").c_str(), labels.size(), model.num_classes());
    labels.clear();
  }
  const InputSpec spec = input_spec_for(args, model);
  std::vector<std::string> inputs = expand_inputs(args.positionals(), "classify");
  MAMBACV_CHECK(!inputs.empty(), "classify: the INPUT arguments hold no image files");

  int failed = 0;
  Progress progress("classify", (inputs.size() + batch - 1) / batch);
  for (size_t start = 0, bi = 0; start < inputs.size(); start += batch, ++bi) {
    size_t end = std::min(inputs.size(), start + static_cast<size_t>(batch));
    std::vector<Item> items(end - start);
    // decode + preprocess in parallel; failures stay with their image
#pragma omp parallel for schedule(dynamic)
    for (size_t i = 0; i < items.size(); ++i) {
      items[i].path = inputs[start + i];
      try {
        items[i].input = preprocess(load_image(items[i].path), spec);
      } catch (const std::exception& e) {
        items[i].error = e.what();
      }
    }
    std::vector<Tensor> ok;
    for (const auto& it : items)
      if (it.error.empty()) ok.push_back(it.input);
    Tensor logits;
    std::string batch_error;
    if (!ok.empty()) {
      try {
        logits = model.classify(stack_batch(ok));
      } catch (const std::exception& e) {
        batch_error = e.what();
      }
    }
    for (size_t i = 0, k = 0; i < items.size(); ++i) {
      Item& it = items[i];
      if (it.error.empty() && !batch_error.empty()) it.error = batch_error;
      const float* row = nullptr;
      if (it.error.empty()) {
        row = logits.f32() + (k++) * model.num_classes();
        // a NaN / Inf logit has no probability: the image fails, named, instead of printing "nan%"
        if (!std::all_of(row, row + model.num_classes(), [](float v) { return std::isfinite(v); }))
          it.error = "the logits are not finite (NaN or Inf: non-finite weights or input, or an overflow); "
                     "--check-finite names the first op where it appears";
      }
      if (!it.error.empty()) {
        ++failed;
        if (json) {
          std::printf("%s\n", json_text(nlohmann::ordered_json({{"image", it.path}, {"error", it.error}})).c_str());
        } else {
          std::fprintf(stderr, "mambacv classify: %s: %s\n", it.path.c_str(), it.error.c_str());
        }
        continue;
      }
      const std::vector<ClassScore> top = top_k(row, model.num_classes(), topk, labels);
      if (json) {
        nlohmann::ordered_json arr = nlohmann::ordered_json::array();
        for (const ClassScore& c : top) {
          nlohmann::ordered_json e;
          e["index"] = c.index;
          e["label"] = labels.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(c.label);
          e["prob"] = c.prob;
          arr.push_back(e);
        }
        std::printf("%s\n", json_text(nlohmann::ordered_json({{"image", it.path}, {"top", arr}})).c_str());
      } else {
        std::printf("%s\n", it.path.c_str());
        for (size_t r = 0; r < top.size(); ++r)
          std::printf("  %zu. %6.2f%%  %4d  %s\n", r + 1, 100.0 * top[r].prob, top[r].index, top[r].label.c_str());
      }
    }
    std::fflush(stdout);
    progress.step(bi + 1);
  }
  if (failed && !json)
    std::fprintf(stderr, "mambacv classify: %d of %zu image(s) failed\n", failed, inputs.size());
  return failed ? 1 : 0;
}

}  // namespace mambacv::cli
