#include "tools/args.h"

#include <sstream>

namespace mambacv::cli {

Args::Args(const std::string& command, const std::vector<std::string>& argv, const std::set<std::string>& valued,
           const std::set<std::string>& flags)
    : cmd_(command) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.size() > 2 && a.compare(0, 2, "--") == 0) {
      std::string key = a.substr(2), val;
      bool has_val = false;
      size_t eq = key.find('=');
      if (eq != std::string::npos) {
        val = key.substr(eq + 1);
        key = key.substr(0, eq);
        has_val = true;
      }
      if (valued.count(key)) {
        if (!has_val) {
          MAMBACV_CHECK(i + 1 < argv.size(), "option --" << key << " needs a value");
          val = argv[++i];
        }
        values_[key] = val;
      } else if (flags.count(key)) {
        MAMBACV_CHECK(!has_val, "option --" << key << " takes no value");
        flags_set_.insert(key);
      } else {
        std::ostringstream known;
        for (const auto& k : valued) known << " --" << k;
        for (const auto& k : flags) known << " --" << k;
        MAMBACV_FAIL("unknown option --" << key << " (options of '" << command << "':" << known.str() << ")");
      }
    } else if (a == "-o" && valued.count("output")) {
      MAMBACV_CHECK(i + 1 < argv.size(), "option -o needs a value");
      values_["output"] = argv[++i];
    } else {
      pos_.push_back(a);
    }
  }
}

std::string Args::get(const std::string& key, const std::string& def) const {
  auto it = values_.find(key);
  return it == values_.end() ? def : it->second;
}

int Args::get_int(const std::string& key, int def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  try {
    size_t n = 0;
    int v = std::stoi(it->second, &n);
    if (n == it->second.size()) return v;
  } catch (...) {
  }
  MAMBACV_FAIL("--" << key << ": expected an integer, got '" << it->second << "'");
}

double Args::get_double(const std::string& key, double def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  try {
    size_t n = 0;
    double v = std::stod(it->second, &n);
    if (n == it->second.size()) return v;
  } catch (...) {
  }
  MAMBACV_FAIL("--" << key << ": expected a number, got '" << it->second << "'");
}

std::vector<int> Args::get_int_list(const std::string& key, const std::vector<int>& def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  std::vector<int> out;
  std::stringstream ss(it->second);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t n = 0;
      int v = std::stoi(item, &n);
      if (n == item.size() && v > 0) {
        out.push_back(v);
        continue;
      }
    } catch (...) {
    }
    MAMBACV_FAIL("--" << key << ": expected positive integers separated by commas, got '" << it->second << "'");
  }
  MAMBACV_CHECK(!out.empty(), "--" << key << ": empty list");
  return out;
}

Options Args::model_options() const {
  Options o;
  if (has("device")) o.device = parse_device(get("device"));
  if (has("dtype")) o.dtype = parse_compute_dtype(get("dtype"));
  if (has("core")) o.core = parse_core(get("core"));
  o.threads = get_int("threads", 0);
  o.check_finite = has("check-finite");
  MAMBACV_CHECK(o.threads >= 0 && o.threads <= 1024,
                "--threads: expected 0 (all cores) or a count up to 1024, got " << o.threads);
  return o;
}

}  // namespace mambacv::cli
