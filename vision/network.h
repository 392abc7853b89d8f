// vision/network.h - the internal interface every model architecture implements.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kernels/context.h"
#include "kernels/ops.h"
#include "mambacv/mambacv.h"
#include "ssm/precision.h"

namespace mambacv::detail {

// Which outputs a forward pass should produce. Intermediate tensors cost copies, so callers ask for what they use.
struct Wanted {
  std::set<std::string> names;  // e.g. {"logits"}, {"features"}; "*" = everything the model can produce
  bool has(const std::string& n) const { return names.count("*") || names.count(n); }
};

struct DetectionCall;  // vision/mask_rcnn.h: per-image sizes and options in, detections out

// One forward call: the input, the precision policy, the wanted outputs and, for detectors, the detection request
// and result (null for a plain forward: every image is treated as unpadded, the config's test_cfg applies).
struct ForwardCall {
  Tensor x;               // (B, 3, H, W) f32
  Policy policy;
  Wanted wanted;
  DetectionCall* detection = nullptr;
  int batch_group = 0;    // Options::batch_group: 0 chooses with images_per_group
};

// How many of `batch` images a network runs through its layers together: `requested` when > 0, else as many as
// keep a group's `bytes_per_image` (the largest activation of one image in a layer) within 3/4 of one core's L2
// cache; at least 1, at most `batch`.
int64_t images_per_group(int64_t requested, int64_t batch, int64_t bytes_per_image);

class Network {
 public:
  virtual ~Network() = default;
  virtual const std::string& arch() const = 0;
  // Expected weights (names and shapes) derived from the config.
  virtual std::vector<ParamSpec> param_specs() const = 0;
  // Renames alternative upstream spellings to the canonical names (default: none). Called before matching.
  virtual TensorMap canonicalize(const TensorMap& w) const { return w; }
  // Takes the (already matched) weights, converted to f32 on the host, and prepares them once for the backend
  // (packed GEMM operands, transposed depthwise taps, -exp(A_log), ...). Called once, before any forward.
  // Takes ownership of the map: weights are dropped from it as they are prepared, so a model is not held twice.
  // gemm_storage: the element type the GEMM weight panels are kept in (f32, or f16 / bf16 for reduced compute).
  virtual void bind(TensorMap weights, DType gemm_storage) = 0;
  virtual int input_size() const = 0;
  virtual int num_classes() const = 0;
  // Named outputs (see Model::forward_all for the names). Safe to call from several threads at once.
  virtual std::map<std::string, Tensor> forward(const ExecContext& ctx, const ForwardCall& call) const = 0;
};

// Creates the network of a config (throws for an unknown arch or unsupported option).
std::unique_ptr<Network> make_network(const ModelConfig& cfg);

// Constant per-shape work (position-embedding resizes, cross-scan orders) computed once per key and shared by
// later calls; thread-safe, keeps the kMax most recently added keys.
template <class Key, class Value>
class ShapeCache {
 public:
  static constexpr size_t kMax = 16;
  template <class Make>
  std::shared_ptr<const Value> get(const Key& k, Make make) const {
    {
      std::lock_guard<std::mutex> lock(m_);
      for (const auto& e : entries_)
        if (e.first == k) return e.second;
    }
    auto v = std::make_shared<const Value>(make());  // outside the lock: may be slow
    std::lock_guard<std::mutex> lock(m_);
    for (const auto& e : entries_)
      if (e.first == k) return e.second;
    if (entries_.size() >= kMax) entries_.erase(entries_.begin());
    entries_.emplace_back(k, v);
    return v;
  }

 private:
  mutable std::mutex m_;
  mutable std::vector<std::pair<Key, std::shared_ptr<const Value>>> entries_;
};

// Looks up bound weights by name with an error naming the network and the tensor.
class WeightTable {
 public:
  WeightTable() = default;
  WeightTable(std::string owner, TensorMap&& w, DType storage = DType::F32)
      : owner_(std::move(owner)), w_(std::move(w)), storage_(storage) {}
  // the element type GEMM weights are packed in
  DType storage() const { return storage_; }
  const Tensor& at(const std::string& n) const {
    auto it = w_.find(n);
    MAMBACV_CHECK(it != w_.end(), owner_ << ": weight " << n << " was not bound");
    return it->second;
  }
  Tensor get_or_none(const std::string& n) const {
    auto it = w_.find(n);
    return it == w_.end() ? Tensor() : it->second;
  }
  bool has(const std::string& n) const { return w_.count(n) > 0; }
  // Weight n (N, K) [+ bias b] packed for the GEMM; the plain copies are dropped from the table (only the packed
  // form is kept in memory).
  ops::PackedWeight linear(const std::string& n, const std::string& b = "") {
    ops::PackedWeight p = ops::pack_linear(at(n), b.empty() ? Tensor() : at(b), storage_);
    w_.erase(n);
    return p;
  }
  ops::Conv2dWeight conv(const std::string& n, const std::string& b, int sh, int sw, int ph, int pw) {
    ops::Conv2dWeight c = ops::prepare_conv2d(at(n), b.empty() ? Tensor() : at(b), sh, sw, ph, pw, storage_);
    w_.erase(n);
    return c;
  }
  ops::DepthwiseWeight depthwise(const std::string& n, const std::string& b) {
    ops::DepthwiseWeight d = ops::prepare_depthwise(at(n), b.empty() ? Tensor() : at(b));
    w_.erase(n);
    return d;
  }
  void erase(const std::string& n) { w_.erase(n); }

 private:
  std::string owner_;
  TensorMap w_;
  DType storage_ = DType::F32;
};

}  // namespace mambacv::detail
