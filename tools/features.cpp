// mambacv features: per-image feature maps (or pooled vectors) into one safetensors file.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "tools/args.h"
#include "tools/commands.h"
#include "tools/inputs.h"

namespace mambacv::cli {

namespace {
const char* kFeaturesHelp =
    "usage: mambacv features --model M --weights W [--pool] [--batch N] INPUT... -o out.safetensors\n"
    "                        [--device cpu|cuda] [--dtype f32|f16|bf16] [--core v0|v1] [--threads N]\n"
    "                        [--check-finite] [--random-weights]\n"
    "INPUT and --weights as for classify (files, folders, @list.txt, - for a list on stdin).\n"
    "Writes each image's features as tensors named \"<i>/<feature>\" (i = the image's position among the inputs\n"
    "that were read): VMamba \"stage.0\"..\"stage.3\" (C, H, W), backbones \"features.0\"..\"features.3\", Vim \"cls\" (D)\n"
    "and \"tokens\" (D, gh, gw). --pool replaces every map by its global average (C). The file's metadata holds\n"
    "\"images\" (a JSON list of the paths, in index order), \"errors\" (path -> reason for images that failed),\n"
    "\"model\" and \"pooled\". Exit status 1 when any image failed.\n";

// (1, C, H, W) -> (C) mean over H, W; (1, D) -> (D).
Tensor pool_one(const Tensor& t) {
  if (t.ndim() == 4) {
    const int64_t C = t.dim(1), HW = t.dim(2) * t.dim(3);
    Tensor out = Tensor::empty({C});
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t i = 0; i < HW; ++i) s += t.f32()[c * HW + i];
      out.f32()[c] = static_cast<float>(s / static_cast<double>(HW));
    }
    return out;
  }
  return t.reshape({t.numel()}).clone();
}
}  // namespace

int cmd_features(const std::vector<std::string>& argv) {
  std::set<std::string> valued = kModelOptions;
  valued.insert({"model", "weights", "batch", "output"});
  Args args("features", argv, valued, {"pool", "help", "check-finite", "random-weights"});
  if (args.has("help")) {
    std::fputs(kFeaturesHelp, stdout);
    std::fputs(model_options_help().c_str(), stdout);
    return 0;
  }
  MAMBACV_USAGE_CHECK(args.has("model"), "--model is required (a name from configs/ or a config .json)");
  MAMBACV_USAGE_CHECK(args.has("output"), "-o out.safetensors is required");
  MAMBACV_USAGE_CHECK(!args.positionals().empty(), "features: no INPUT given (image files, folders or @list.txt)");
  const bool pool = args.has("pool");
  const int batch = args.get_int("batch", 8);
  MAMBACV_USAGE_CHECK(batch >= 1, "--batch: expected a positive integer, got " << batch);

  Options opt = args.model_options();
  ModelConfig cfg = load_model_config(args.get("model"));
  const std::string weights = weights_for(args, cfg);
  if (weights.empty()) warn_random_weights("features", cfg);
  Model model = weights.empty() ? Model::random(cfg, opt, 1) : Model::load(cfg.path, weights, opt);
  const InputSpec spec = model.input_spec();
  std::vector<std::string> inputs = expand_inputs(args.positionals());
  MAMBACV_CHECK(!inputs.empty(), "features: the INPUT arguments hold no image files");

  TensorMap out;
  nlohmann::ordered_json images = nlohmann::ordered_json::array(), errors = nlohmann::ordered_json::object();
  Progress progress("features", (inputs.size() + batch - 1) / batch);
  for (size_t start = 0, bi = 0; start < inputs.size(); start += batch, ++bi) {
    size_t end = std::min(inputs.size(), start + static_cast<size_t>(batch));
    std::vector<Tensor> x(end - start);
    std::vector<std::string> err(end - start);
#pragma omp parallel for schedule(dynamic)
    for (size_t i = 0; i < x.size(); ++i) {
      try {
        x[i] = preprocess(load_image(inputs[start + i]), spec);
      } catch (const std::exception& e) {
        err[i] = e.what();
      }
    }
    std::vector<Tensor> ok;
    std::vector<size_t> ok_idx;
    for (size_t i = 0; i < x.size(); ++i)
      if (err[i].empty()) {
        ok.push_back(x[i]);
        ok_idx.push_back(i);
      }
    std::map<std::string, Tensor> feats;
    if (!ok.empty()) {
      try {
        feats = model.features(stack_batch(ok));
      } catch (const std::exception& e) {
        for (size_t i : ok_idx) err[i] = e.what();
        ok_idx.clear();
      }
    }
    for (size_t k = 0; k < ok_idx.size(); ++k) {
      bool finite = true;
      for (const auto& [name, t] : feats) {  // f32 maps of this image
        const Tensor one = t.slice0(static_cast<int64_t>(k), static_cast<int64_t>(k) + 1);
        finite = finite && std::all_of(one.f32(), one.f32() + one.numel(), [](float v) { return std::isfinite(v); });
      }
      if (!finite) {  // reported like a failed image, not written
        err[ok_idx[k]] = "the features are not finite (NaN or Inf: non-finite weights or input, or an overflow); "
                         "--check-finite names the first op where it appears";
        continue;
      }
      const size_t index = images.size();
      images.push_back(inputs[start + ok_idx[k]]);
      for (const auto& [name, t] : feats) {
        Tensor one = t.slice0(static_cast<int64_t>(k), static_cast<int64_t>(k) + 1);
        Shape s(one.shape().begin() + 1, one.shape().end());
        out[std::to_string(index) + "/" + name] = pool ? pool_one(one) : one.clone().reshape(s);
      }
    }
    for (size_t i = 0; i < err.size(); ++i)
      if (!err[i].empty()) {
        errors[inputs[start + i]] = err[i];
        std::fprintf(stderr, "mambacv features: %s: %s\n", inputs[start + i].c_str(), err[i].c_str());
      }
    progress.step(bi + 1);
  }
  std::map<std::string, std::string> meta = {{"images", json_text(images)},
                                             {"errors", json_text(errors)},
                                             {"model", cfg.name},
                                             {"pooled", pool ? "true" : "false"}};
  save_safetensors(args.get("output"), out, meta);
  std::fprintf(stderr, "mambacv features: wrote %zu tensors for %zu image(s) to %s\n", out.size(), images.size(),
               args.get("output").c_str());
  return errors.empty() ? 0 : 1;
}

}  // namespace mambacv::cli
