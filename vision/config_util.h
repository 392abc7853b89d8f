// vision/config_util.h - typed access to a model config's upstream kwargs with errors that name the config and key.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mambacv/mambacv.h"

namespace mambacv::detail {

// Bounds on config sizes, far beyond the released models (widths up to 1024, 24-27 blocks, 1000 classes, 224 to
// 1248 pixels) yet small enough that no derived size or parameter count comes near int64 overflow.
constexpr int64_t kMaxWidth = 16384;     // channels of any layer
constexpr int64_t kMaxDepth = 256;       // blocks per stage (Vim: layers)
constexpr int64_t kMaxClasses = 1 << 20;
constexpr int64_t kMaxImage = 16384;     // configured image size in pixels

class ConfigReader {
 public:
  explicit ConfigReader(const ModelConfig& mc);
  // "config <path or name>"
  std::string where() const;
  bool has(const std::string& key) const;
  const nlohmann::json& raw() const { return j_; }
  int64_t get_int(const std::string& key, int64_t def) const;
  double get_double(const std::string& key, double def) const;
  // The same, refused unless within [lo, hi] (an error naming the key, the bounds and the value).
  int64_t get_int(const std::string& key, int64_t def, int64_t lo, int64_t hi) const;
  double get_double(const std::string& key, double def, double lo, double hi) const;
  bool get_bool(const std::string& key, bool def) const;
  std::string get_string(const std::string& key, const std::string& def) const;
  // A list of ints; a single number n becomes {n}. Missing key -> def.
  std::vector<int64_t> get_int_list(const std::string& key, const std::vector<int64_t>& def) const;
  // The same, each element within [lo, hi].
  std::vector<int64_t> get_int_list(const std::string& key, const std::vector<int64_t>& def, int64_t lo,
                                    int64_t hi) const;
  // Throws naming the key when v is outside [lo, hi].
  void check_range(const std::string& key, double v, double lo, double hi) const;
  // An int, or the string "auto" (returns `auto_value`).
  int64_t get_int_or_auto(const std::string& key, int64_t def, int64_t auto_value) const;
  // Throws when the key is present with a value other than the supported one.
  void require_bool(const std::string& key, bool supported) const;
  void require_equal(const std::string& key, const std::string& supported, const std::string& supported_desc) const;
  // A nested object (e.g. mmdetection's "neck"); missing -> empty object.
  nlohmann::json get_object(const std::string& key) const;

 private:
  const nlohmann::json& at(const std::string& key) const;
  std::string name_;
  nlohmann::json j_;
};

}  // namespace mambacv::detail
