// vision/network.h - the internal interface every model architecture implements.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "mambacv/mambacv.h"
#include "ssm/precision.h"

namespace mambacv::detail {

// Which outputs a forward pass should produce. Intermediate tensors cost copies, so callers ask for what they use.
struct Wanted {
  std::set<std::string> names;  // e.g. {"logits"}, {"features"}; "*" = everything the model can produce
  bool has(const std::string& n) const { return names.count("*") || names.count(n); }
};

class Network {
 public:
  virtual ~Network() = default;
  virtual const std::string& arch() const = 0;
  // Expected weights (names and shapes) derived from the config.
  virtual std::vector<ParamSpec> param_specs() const = 0;
  // Renames alternative upstream spellings to the canonical names (default: none). Called before matching.
  virtual TensorMap canonicalize(const TensorMap& w) const { return w; }
  // Takes the (already matched) weights, converted to f32 on the host. Called once, before any forward.
  virtual void bind(const TensorMap& weights) = 0;
  virtual int input_size() const = 0;
  virtual int num_classes() const = 0;
  // x (B, 3, H, W) f32 -> named outputs (see Model::forward_all for the names).
  virtual std::map<std::string, Tensor> forward(const Tensor& x, const Policy& policy, const Wanted& wanted) const = 0;
};

// Creates the network of a config (throws for an unknown arch or unsupported option).
std::unique_ptr<Network> make_network(const ModelConfig& cfg);

}  // namespace mambacv::detail
