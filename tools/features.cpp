// mambacv features: per-image feature maps (or pooled vectors) into one safetensors file.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "tools/args.h"
#include "tools/commands.h"
#include "tools/inputs.h"

namespace mambacv::cli {

namespace {
namespace fs = std::filesystem;
const char* kFeaturesHelp =
    "usage: mambacv features --model M --weights W [--pool] [--batch N] INPUT... -o OUT\n"
    "                        [--stack] [--format safetensors|npy] [--shard I/N] [--random-weights] [--size S]\n"
    "INPUT and --weights as for classify (files, folders, @list.txt, - for a list on stdin).\n"
    "Features: VMamba \"stage.0\"..\"stage.3\" (C, H, W) and \"embedding\" (C, the pre-logits vector), backbones\n"
    "\"features.0\"..\"features.3\", Vim \"cls\" (D) and \"tokens\" (D, gh, gw); --pool replaces every map by its global\n"
    "average (C). Output, written as the images are processed (memory stays bounded by one batch):\n"
    "  default      OUT.safetensors with tensors \"<i>/<feature>\" (i = the image's position among the images written)\n"
    "  --stack      OUT.safetensors with one tensor per feature, (N, ...): row i is image i\n"
    "  --format npy OUT is a folder: <feature>.npy (N, ...) per feature (float32), images.txt (row i's path)\n"
    "The safetensors metadata holds \"images\" (the paths, in index order), \"errors\" (path -> reason for images\n"
    "that failed), \"model\", \"pooled\" and \"shard\"; npy folders get errors.json. OUT is checked to be writable\n"
    "before anything is computed. --shard I/N (0 <= I < N) takes the I-th of N contiguous slices of the input\n"
    "list, so N machines (a Kubernetes Indexed Job, a Slurm array) split a dataset without a coordinator; the\n"
    "shards' outputs together hold exactly the unsharded run's. Prints \"N of M failed\" at the end; exit status 1\n"
    "when any image failed.\n";

// Where the features go, image by image (rows in the order written).
class FeatureSink {
 public:
  virtual ~FeatureSink() = default;
  // one image's features, batch dimension removed
  virtual void image(size_t row, const std::map<std::string, Tensor>& feats) = 0;
  virtual void finish(const nlohmann::ordered_json& images, const nlohmann::ordered_json& errors,
                      const std::map<std::string, std::string>& meta) = 0;
};

// OUT.safetensors: "<i>/<feature>" tensors, or (--stack) one (N, ...) tensor per feature.
class SafetensorsSink final : public FeatureSink {
 public:
  SafetensorsSink(const std::string& path, bool stack) : w_(path), stack_(stack) {}
  void image(size_t row, const std::map<std::string, Tensor>& feats) override {
    for (const auto& [name, t] : feats) {
      if (stack_)
        w_.append_row(name, t);
      else
        w_.add(std::to_string(row) + "/" + name, t);
    }
  }
  void finish(const nlohmann::ordered_json& images, const nlohmann::ordered_json& errors,
              const std::map<std::string, std::string>& meta) override {
    std::map<std::string, std::string> m = meta;
    m["images"] = json_text(images);
    m["errors"] = json_text(errors);
    m["layout"] = stack_ ? "stacked" : "per-image";
    w_.finish(m);
  }

 private:
  SafetensorsWriter w_;
  bool stack_;
};

// A folder of .npy files (format 1.0, little-endian float32, C order), one per feature. Each file's header keeps
// the row count in a fixed-width field that finish() fills in, so rows stream to disk with no second copy.
class NpySink final : public FeatureSink {
 public:
  explicit NpySink(const std::string& dir) : dir_(dir) {}
  ~NpySink() override {
    for (auto& [name, f] : files_)
      if (f.fp) {
        std::fclose(f.fp);
        std::remove(f.path.c_str());
      }
  }
  void image(size_t, const std::map<std::string, Tensor>& feats) override {
    for (const auto& [name, t] : feats) {
      auto it = files_.find(name);
      if (it == files_.end()) it = files_.emplace(name, open(name, t.shape())).first;
      File& f = it->second;
      MAMBACV_CHECK(t.shape() == f.row_shape, f.path << ": row " << f.rows << " is " << t.str()
                                                     << ", the earlier rows are " << shape_str(f.row_shape));
      MAMBACV_CHECK(std::fwrite(t.raw(), 1, t.nbytes(), f.fp) == t.nbytes(), f.path << ": write failed");
      ++f.rows;
    }
  }
  void finish(const nlohmann::ordered_json& images, const nlohmann::ordered_json& errors,
              const std::map<std::string, std::string>&) override {
    for (auto& [name, f] : files_) {
      char rows[kRowsWidth + 1];
      std::snprintf(rows, sizeof rows, "%*lld", kRowsWidth, static_cast<long long>(f.rows));
      const bool ok = std::fseek(f.fp, static_cast<long>(f.rows_at), SEEK_SET) == 0 &&
                      std::fwrite(rows, 1, kRowsWidth, f.fp) == static_cast<size_t>(kRowsWidth);
      const bool closed = std::fclose(f.fp) == 0;
      f.fp = nullptr;
      MAMBACV_CHECK(ok && closed, f.path << ": write failed");
    }
    std::ofstream list(dir_ + "/images.txt");
    for (const auto& p : images) list << p.get<std::string>() << "\n";
    MAMBACV_CHECK(list.good(), dir_ << "/images.txt: write failed");
    if (!errors.empty()) std::ofstream(dir_ + "/errors.json") << json_text(errors, 1) << "\n";
  }

 private:
  static constexpr int kRowsWidth = 20;
  struct File {
    std::string path;
    FILE* fp = nullptr;
    Shape row_shape;
    int64_t rows = 0;
    size_t rows_at = 0;  // byte offset of the row-count field
  };
  File open(const std::string& name, const Shape& row_shape) {
    File f;
    f.path = dir_ + "/" + name + ".npy";
    f.row_shape = row_shape;
    std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
    const size_t field = dict.size();
    dict += std::string(kRowsWidth, ' ');
    for (size_t i = 0; i < row_shape.size(); ++i) dict += ", " + std::to_string(row_shape[i]);
    dict += row_shape.empty() ? ",), }" : "), }";
    // magic (6) + version (2) + header length (2) + dict, padded with spaces and ending in \n, a multiple of 64
    const size_t total = (10 + dict.size() + 1 + 63) / 64 * 64;
    dict.append(total - 10 - dict.size() - 1, ' ');
    dict += '\n';
    f.fp = std::fopen(f.path.c_str(), "wb");
    MAMBACV_CHECK(f.fp, f.path << ": cannot create the file");
    const uint16_t len = static_cast<uint16_t>(dict.size());
    const unsigned char head[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<unsigned char>(len & 0xff),
                                    static_cast<unsigned char>(len >> 8)};
    MAMBACV_CHECK(std::fwrite(head, 1, 10, f.fp) == 10 && std::fwrite(dict.data(), 1, dict.size(), f.fp) == dict.size(),
                  f.path << ": write failed");
    f.rows_at = 10 + field;
    return f;
  }
  std::string dir_;
  std::map<std::string, File> files_;
};

// "I/N" -> {I, N}
std::pair<size_t, size_t> parse_shard(const std::string& s) {
  const size_t slash = s.find('/');
  size_t i = 0, n = 0;
  bool ok = slash != std::string::npos && slash > 0 && slash + 1 < s.size();
  try {
    size_t a = 0, b = 0;
    if (ok) {
      i = std::stoul(s.substr(0, slash), &a);
      n = std::stoul(s.substr(slash + 1), &b);
      ok = a == slash && b == s.size() - slash - 1 && s[0] != '-' && s[slash + 1] != '-';
    }
  } catch (...) {
    ok = false;
  }
  MAMBACV_USAGE_CHECK(ok && n >= 1 && i < n, "--shard: expected I/N with 0 <= I < N (e.g. 3/8), got '" << s << "'");
  return {i, n};
}

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
  valued.insert({"model", "weights", "batch", "output", "format", "shard", "size"});
  Args args("features", argv, valued, {"pool", "help", "check-finite", "random-weights", "stack"});
  if (args.has("help")) {
    std::fputs(kFeaturesHelp, stdout);
    std::fputs(model_options_help().c_str(), stdout);
    return 0;
  }
  MAMBACV_USAGE_CHECK(args.has("model"), "--model is required (a name from configs/ or a config .json)");
  MAMBACV_USAGE_CHECK(args.has("output"), "-o OUT is required (a .safetensors file, or a folder with --format npy)");
  MAMBACV_USAGE_CHECK(!args.positionals().empty(), "features: no INPUT given (image files, folders or @list.txt)");
  const bool pool = args.has("pool");
  const int batch = args.get_int("batch", 8);
  MAMBACV_USAGE_CHECK(batch >= 1, "--batch: expected a positive integer, got " << batch);
  const std::string format = args.get("format", "safetensors");
  MAMBACV_USAGE_CHECK(format == "safetensors" || format == "npy",
                      "--format: expected safetensors or npy, got '" << format << "'");
  const std::string output = args.get("output");
  const auto shard = args.has("shard") ? parse_shard(args.get("shard")) : std::pair<size_t, size_t>{0, 1};

  // OUT must be writable before anything is computed
  std::error_code ec;
  if (format == "npy") {
    fs::create_directories(output, ec);
    MAMBACV_CHECK(fs::is_directory(output, ec), "-o " << output << ": cannot create the folder");
    const std::string probe = output + "/.mambacv_write_probe";
    const bool ok = std::ofstream(probe).good();
    fs::remove(probe, ec);
    MAMBACV_CHECK(ok, "-o " << output << ": the folder is not writable");
  } else {
    const bool existed = fs::exists(output, ec);
    const bool ok = std::ofstream(output, std::ios::app).good();
    if (!existed) fs::remove(output, ec);
    MAMBACV_CHECK(ok, "-o " << output << ": cannot write the file");
  }

  Options opt = args.model_options();
  ModelConfig cfg = load_model_config(args.get("model"));
  MAMBACV_USAGE_CHECK(cfg.arch != "mask_rcnn",
                      "--model " << cfg.name << " is a detector: use 'mambacv detect' (its backbone's feature maps: "
                                 << "the matching *_backbone config with the same checkpoint)");
  const std::string weights = weights_for(args, cfg);
  if (weights.empty()) warn_random_weights("features", cfg);
  Model model = weights.empty() ? Model::random(cfg, opt, 1) : Model::load(cfg.path, weights, opt);
  const InputSpec spec = input_spec_for(args, model);
  std::vector<std::string> all = expand_inputs(args.positionals(), "features");
  MAMBACV_CHECK(!all.empty(), "features: the INPUT arguments hold no image files");
  // the I-th of N contiguous slices
  const size_t lo = all.size() * shard.first / shard.second, hi = all.size() * (shard.first + 1) / shard.second;
  const std::vector<std::string> inputs(all.begin() + static_cast<std::ptrdiff_t>(lo),
                                        all.begin() + static_cast<std::ptrdiff_t>(hi));

  std::unique_ptr<FeatureSink> sink;
  if (format == "npy")
    sink = std::make_unique<NpySink>(output);
  else
    sink = std::make_unique<SafetensorsSink>(output, args.has("stack"));
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
      std::map<std::string, Tensor> one;
      bool finite = true;
      for (const auto& [name, t] : feats) {  // f32 maps of this image
        Tensor row = t.slice0(static_cast<int64_t>(k), static_cast<int64_t>(k) + 1);
        finite = finite && std::all_of(row.f32(), row.f32() + row.numel(), [](float v) { return std::isfinite(v); });
        one[name] = pool ? pool_one(row) : row.reshape(Shape(row.shape().begin() + 1, row.shape().end()));
      }
      if (!finite) {  // reported like a failed image, not written
        err[ok_idx[k]] = "the features are not finite (NaN or Inf: non-finite weights or input, or an overflow); "
                         "--check-finite names the first op where it appears";
        continue;
      }
      sink->image(images.size(), one);
      images.push_back(inputs[start + ok_idx[k]]);
    }
    for (size_t i = 0; i < err.size(); ++i)
      if (!err[i].empty()) {
        errors[inputs[start + i]] = err[i];
        std::fprintf(stderr, "mambacv features: %s: %s\n", inputs[start + i].c_str(), err[i].c_str());
      }
    progress.step(bi + 1);
  }
  sink->finish(images, errors,
               {{"model", cfg.name},
                {"pooled", pool ? "true" : "false"},
                {"shard", std::to_string(shard.first) + "/" + std::to_string(shard.second)}});
  std::fprintf(stderr, "mambacv features: %zu image(s) written to %s; %zu of %zu failed\n", images.size(),
               output.c_str(), errors.size(), inputs.size());
  return errors.empty() ? 0 : 1;
}

}  // namespace mambacv::cli
