// vision/config_util.h - typed access to a model config's upstream kwargs with errors that name the config and key.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mambacv/mambacv.h"

namespace mambacv::detail {

class ConfigReader {
 public:
  explicit ConfigReader(const ModelConfig& mc);
  // "config <path or name>"
  std::string where() const;
  bool has(const std::string& key) const;
  const nlohmann::json& raw() const { return j_; }
  int64_t get_int(const std::string& key, int64_t def) const;
  double get_double(const std::string& key, double def) const;
  bool get_bool(const std::string& key, bool def) const;
  std::string get_string(const std::string& key, const std::string& def) const;
  // A list of ints; a single number n becomes {n}. Missing key -> def.
  std::vector<int64_t> get_int_list(const std::string& key, const std::vector<int64_t>& def) const;
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
