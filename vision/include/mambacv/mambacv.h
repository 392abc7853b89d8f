// mambacv/mambacv.h - the public API: load a Vim / VMamba model, classify, extract features.
//
//   mambacv::Options opt;                      // device, dtype, core, threads
//   auto model = mambacv::Model::load("vmamba_tiny_s1l8", "vssm1_tiny_0230s_ckpt_epoch_264.pth", opt);
//   mambacv::Tensor logits = model.classify(x);            // x: (B, 3, H, W) normalised f32 -> (B, classes)
//   auto f = model.features(x);                            // named NCHW maps / vectors
//
// A loaded Model is immutable: one instance may serve several threads at once (weights are read-only, every call
// allocates its own workspace). Copies of a Model share the weights.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mambacv/device.h"
#include "mambacv/error.h"
#include "mambacv/image.h"
#include "mambacv/scan_core.h"
#include "mambacv/tensor.h"
#include "mambacv/version.h"
#include "mambacv/weights.h"

namespace mambacv {

struct Options {
  Device device = Device::Cpu;
  DType dtype = DType::F32;  // compute dtype: F32, F16 or BF16
  Core core = Core::V0;      // mambacv/scan_core.h
  // Threads each call of this model may use (0: every core OpenMP offers the calling thread, i.e. OMP_NUM_THREADS
  // or all). The budget belongs to the model: nothing process-wide is changed, so models with different budgets
  // can run side by side.
  int threads = 0;
  // Idle memory (MiB) this model keeps for reuse between calls: < 0 shares the process default cache
  // (MAMBACV_HOST_CACHE_MB, default 1024); >= 0 gives the model its own cache bounded by that (0: none).
  int host_cache_mb = -1;
  // Check every precision-policy boundary of each forward pass for NaN / Inf: a call that produces one throws
  // Error naming the first boundary ("non-finite values first at stage.2.block.1 scan_out (core v1, f16)").
  bool check_finite = false;
  // Images a call runs through the network's layers at a time (Vim's layers; each VMamba stage's blocks): 0 takes
  // as many as keep one group's largest layer activation within 3/4 of a core's L2 cache (at least 1), so a large
  // batch works in cache like a small one and its temporaries are a group's size; > 0 fixes the count.
  int batch_group = 0;
};

// Time, FLOPs and bytes of one op type within one part of the network ("patch_embed", "stage.0", "layers",
// "head", ...), summed over a forward pass (Model::profile).
struct OpStat {
  std::string stage, op;
  int64_t calls = 0;
  double seconds = 0, flops = 0, bytes = 0;
  int threads = 1;  // the largest thread team the op ran with (at most Options::threads)
  double exps = 0;  // exp evaluations (the selective scan; 0 for most ops)
};

// A model config file: {"arch": "vim" | "vmamba" | "vmamba_backbone" | ..., "config": {upstream kwargs}}.
struct ModelConfig {
  std::string name;   // config name (file stem) or path
  std::string path;   // file it was read from ("" when built in memory)
  std::string arch;
  std::string json;   // the "config" object, serialised
  std::string labels; // label file (one class name per line) from the top-level "labels" key, resolved; or ""
  // Optional top-level keys: what the model is, the released checkpoint's file name and where upstream publishes
  // it (the shipped configs carry all three), and a weights file that belongs to this config (the golden
  // fixtures name theirs), resolved against the config's folder.
  std::string description, checkpoint, checkpoint_url, weights;
};
// `name_or_path`: a path to a .json file, or the name of a config shipped in configs/ (e.g. "vim_tiny"; a bare
// "vim_tiny.json" that is not a file in the working directory also names the shipped one).
ModelConfig load_model_config(const std::string& name_or_path);
// Folders named configs are looked up in, in order: set_config_dirs' list, $MAMBACV_CONFIG_DIR, the installed
// share/mambacv/configs beside the running program, then the library's own configs: share/mambacv/configs of the
// prefix an installed library was installed to (the source tree's configs/ for a library in its build tree).
std::vector<std::string> config_search_path();
// Puts `dirs` first in the config search path of this process (e.g. an application's own config folder).
void set_config_dirs(const std::vector<std::string>& dirs);

// What a config describes, found without building any weights (`mambacv models`, `mambacv info`).
struct ModelSummary {
  std::string name, arch;
  std::string task;  // "classification", "features" (backbones) or "detection"
  std::string description, checkpoint, checkpoint_url;
  int input_width = 0, input_height = 0;  // the eval input (detectors: the keep-ratio rescale bound, 1333x800)
  int num_classes = 0;                    // classifier outputs, or the detector's object classes; 0 for backbones
  int64_t parameters = 0;
};
ModelSummary summarize_model(const ModelConfig& config);

// A weights file's tensors as the model names them (`mambacv convert`): alternative upstream spellings and layouts
// renamed / reshaped to the canonical ones (the names parameter_specs() lists), in the file's dtypes, strictly
// matched: throws Error (prefixed with `source`) listing every missing, unexpected or misshapen tensor.
TensorMap canonical_weights(const ModelConfig& config, const TensorMap& weights,
                            const std::string& source = "weights");
// Names of the shipped configs.
std::vector<std::string> list_model_configs();
// Class names for a model with `num_classes` outputs: the config's label file when it has exactly that many
// lines, else the shipped ImageNet-1k list when num_classes is 1000 or the COCO list when it is 80, else empty
// (callers print indices).
std::vector<std::string> load_labels(const ModelConfig& config, int num_classes);
// Reads a label file (one name per line). Throws Error naming the file.
std::vector<std::string> read_label_file(const std::string& path);

namespace detail {
class Network;
struct DetectionCall;
}
class Detector;
class HostAllocator;

class Model {
 public:
  // Loads config + weights (.safetensors or .pth), strictly matched against the model (one error lists every
  // missing, unexpected or misshapen tensor).
  static Model load(const std::string& config, const std::string& weights, const Options& opt = {});
  static Model load(const ModelConfig& config, const TensorMap& weights, const Options& opt = {},
                    const std::string& weights_source = "weights");
  // Random weights with the upstream initialisation's scale (for benchmarks and shape checks).
  static Model random(const ModelConfig& config, const Options& opt = {}, uint64_t seed = 0);

  const std::string& arch() const;
  const Options& options() const;
  int input_size() const;  // square input side of the config (img_size / 224)
  InputSpec input_spec() const;  // the eval transform for this model (size = input_size())
  int num_classes() const;  // 0 for backbones
  // Class names from the config's label list (load_labels); empty when none has num_classes() entries.
  const std::vector<std::string>& class_names() const;

  // x: (B, 3, H, W) normalised f32. Returns (B, num_classes) logits. Throws for backbones.
  Tensor classify(const Tensor& x) const;
  // Named features, NCHW for maps: VMamba "stage.i" (after each stage, before downsampling) and, for classifiers,
  // "embedding" (B, C) (the pre-logits vector: classifier.norm, then the average over tokens); backbones
  // "features.i"; Vim "cls" (B, D) (the normed class token) and "tokens" (B, D, gh, gw) (normed token map).
  std::map<std::string, Tensor> features(const Tensor& x) const;
  // Every tensor the model can produce for `x`, named as in the golden fixtures (logits, features, features.i,
  // stage.i, patch_embed, first mixer output), in the upstream module's own layout. Used by `mambacv verify`.
  std::map<std::string, Tensor> forward_all(const Tensor& x) const;

  // Real arithmetic of one image at height x width (2 FLOPs per multiply-add), measured by running the model once:
  // the classification logits, or a backbone's features (for a mask_rcnn model the backbone and FPN, without the
  // heads, whose work depends on the proposals: Detector::profile counts a whole detection).
  double flops_per_image(int height, int width) const;
  // One forward pass of x (classification logits, or the features of a backbone) with every op timed: one entry
  // per (stage, op type), in the order first seen.
  std::vector<OpStat> profile(const Tensor& x) const;
  // Idle bytes held by this model's allocator (the process default one when host_cache_mb < 0).
  size_t cached_bytes() const;

  // Parameters (count) and the expected weight names/shapes.
  int64_t num_parameters() const;
  std::vector<ParamSpec> parameter_specs() const;

  Model(std::shared_ptr<const detail::Network> net, Options opt);

 private:
  friend class Detector;
  // The forward call behind every entry point: outputs `wanted`, with the detection request / result for detectors.
  std::map<std::string, Tensor> run(const Tensor& x, const std::vector<std::string>& wanted,
                                    detail::DetectionCall* detection = nullptr, void* trace = nullptr) const;
  // run() with every op timed into one entry per (stage, op type), in the order first seen.
  std::vector<OpStat> traced(const Tensor& x, const std::vector<std::string>& wanted,
                             detail::DetectionCall* detection = nullptr) const;
  std::shared_ptr<const detail::Network> net_;
  Options opt_;
  std::shared_ptr<HostAllocator> alloc_;  // null: the process default
  std::vector<std::string> class_names_;
};

// One class of a classification: its index, softmax probability and name ("" without labels).
struct ClassScore {
  int index = 0;
  float prob = 0;
  std::string label;
};
// Softmax (in double) over one row of n logits and its k most probable classes, best first, ties to the lower
// index; names from `labels` when it has n entries. Throws Error for a non-finite logit (no probability exists).
std::vector<ClassScore> top_k(const float* logits, int n, int k, const std::vector<std::string>& labels = {});
// The same for every row of logits (B, classes) f32.
std::vector<std::vector<ClassScore>> top_k(const Tensor& logits, int k, const std::vector<std::string>& labels = {});

// Both scan cores on the same weights and input (mambacv/scan_core.h), `mambacv check-cores`: for every tensor
// forward_all produces, the difference between the cores in `dtype` and of each against an f32 run (core v0).
struct CoreCheckRow {
  std::string tensor;   // "stage.0", "logits", "features", ...
  Compare v1_vs_v0;     // compare(core v1, core v0), both in dtype
  Compare v0_vs_f32;    // compare(core v0 in dtype, f32)
  Compare v1_vs_f32;    // compare(core v1 in dtype, f32)
};
struct CoreCheckReport {
  DType dtype = DType::F32;
  double tolerance = 0;  // allowed relative L2 between the cores: 1e-5 (f32), 1e-2 (f16), 4e-2 (bf16)
  std::vector<CoreCheckRow> rows;
  int64_t top1_agree = 0, top1_total = 0;  // classifiers: batch items whose top-1 class the two cores share
  bool passed = false;  // every row within tolerance and every value of both cores finite
};
// How this build computes in `dtype` on this CPU, for bench / info: "f32", or for f16 / bf16 the GEMM kernel and
// weight storage it takes and how the other ops round (f32 arithmetic on values rounded at the policy's boundaries).
std::string precision_path(DType dtype);

// weights: the model's tensors, or null for random weights (Model::random, seed 0). x (B, 3, H, W) f32.
CoreCheckReport check_cores(const ModelConfig& config, const TensorMap* weights, const Tensor& x, DType dtype,
                            int threads = 0);

}  // namespace mambacv
