#include "vision/config_util.h"

#include <cmath>
#include <cstdint>

namespace mambacv::detail {

ConfigReader::ConfigReader(const ModelConfig& mc) : name_(mc.path.empty() ? mc.name : mc.path) {
  try {
    j_ = nlohmann::json::parse(mc.json);
  } catch (const std::exception& e) {
    MAMBACV_FAIL("config " << name_ << ": \"config\" is not valid JSON (" << e.what() << ")");
  }
  MAMBACV_CHECK(j_.is_object(), "config " << name_ << ": \"config\" must be a JSON object of constructor kwargs");
}

std::string ConfigReader::where() const { return "config " + name_; }
bool ConfigReader::has(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }
const nlohmann::json& ConfigReader::at(const std::string& key) const { return j_.at(key); }

int64_t ConfigReader::get_int(const std::string& key, int64_t def) const {
  if (!has(key)) return def;
  const auto& v = at(key);
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    MAMBACV_FAIL(where() << ": \"" << key << "\" is too large for an integer, got " << v.dump());
  if (v.is_number_integer()) return v.get<int64_t>();
  // a float holding an integer (1e3); beyond 2^53 it is no longer exact, and beyond 2^63 the cast is undefined
  if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() && std::fabs(v.get<double>()) <= 0x1p53)
    return static_cast<int64_t>(v.get<double>());
  MAMBACV_FAIL(where() << ": \"" << key << "\" must be an integer (at most 2^53 as a float), got " << v.dump());
}

void ConfigReader::check_range(const std::string& key, double v, double lo, double hi) const {
  MAMBACV_CHECK(std::isfinite(v) && v >= lo && v <= hi,
                where() << ": \"" << key << "\" must be in [" << lo << ", " << hi << "], got " << v);
}

int64_t ConfigReader::get_int(const std::string& key, int64_t def, int64_t lo, int64_t hi) const {
  const int64_t v = get_int(key, def);
  MAMBACV_CHECK(v >= lo && v <= hi, where() << ": \"" << key << "\" must be in [" << lo << ", " << hi << "], got " << v);
  return v;
}

double ConfigReader::get_double(const std::string& key, double def, double lo, double hi) const {
  const double v = get_double(key, def);
  check_range(key, v, lo, hi);
  return v;
}

std::vector<int64_t> ConfigReader::get_int_list(const std::string& key, const std::vector<int64_t>& def, int64_t lo,
                                                int64_t hi) const {
  std::vector<int64_t> out = get_int_list(key, def);
  for (int64_t v : out)
    MAMBACV_CHECK(v >= lo && v <= hi, where() << ": \"" << key << "\" elements must be in [" << lo << ", " << hi
                                              << "], got " << v);
  return out;
}

double ConfigReader::get_double(const std::string& key, double def) const {
  if (!has(key)) return def;
  const auto& v = at(key);
  MAMBACV_CHECK(v.is_number(), where() << ": \"" << key << "\" must be a number, got " << v.dump());
  return v.get<double>();
}

bool ConfigReader::get_bool(const std::string& key, bool def) const {
  if (!has(key)) return def;
  const auto& v = at(key);
  MAMBACV_CHECK(v.is_boolean(), where() << ": \"" << key << "\" must be true or false, got " << v.dump());
  return v.get<bool>();
}

std::string ConfigReader::get_string(const std::string& key, const std::string& def) const {
  if (!has(key)) return def;
  const auto& v = at(key);
  MAMBACV_CHECK(v.is_string(), where() << ": \"" << key << "\" must be a string, got " << v.dump());
  return v.get<std::string>();
}

std::vector<int64_t> ConfigReader::get_int_list(const std::string& key, const std::vector<int64_t>& def) const {
  if (!has(key)) return def;
  const auto& v = at(key);
  if (v.is_number_integer()) return {v.get<int64_t>()};
  MAMBACV_CHECK(v.is_array(), where() << ": \"" << key << "\" must be an integer or a list of integers, got " << v.dump());
  std::vector<int64_t> out;
  for (const auto& e : v) {
    MAMBACV_CHECK(e.is_number_integer(), where() << ": \"" << key << "\" must hold integers, got " << v.dump());
    out.push_back(e.get<int64_t>());
  }
  return out;
}

int64_t ConfigReader::get_int_or_auto(const std::string& key, int64_t def, int64_t auto_value) const {
  if (has(key) && at(key).is_string()) {
    MAMBACV_CHECK(at(key).get<std::string>() == "auto",
                  where() << ": \"" << key << "\" must be an integer or \"auto\", got " << at(key).dump());
    return auto_value;
  }
  return get_int(key, def);
}

void ConfigReader::require_bool(const std::string& key, bool supported) const {
  if (!has(key)) return;
  bool v = get_bool(key, supported);
  MAMBACV_CHECK(v == supported, where() << ": \"" << key << "\": " << (v ? "true" : "false")
                                        << " is not supported (only " << (supported ? "true" : "false") << ")");
}

void ConfigReader::require_equal(const std::string& key, const std::string& supported,
                                 const std::string& supported_desc) const {
  if (!has(key)) return;
  std::string v = get_string(key, supported);
  MAMBACV_CHECK(v == supported, where() << ": \"" << key << "\": \"" << v << "\" is not supported (supported: "
                                        << supported_desc << ")");
}

nlohmann::json ConfigReader::get_object(const std::string& key) const {
  if (!has(key)) return nlohmann::json::object();
  MAMBACV_CHECK(at(key).is_object(), where() << ": \"" << key << "\" must be an object, got " << at(key).dump());
  return at(key);
}

}  // namespace mambacv::detail
