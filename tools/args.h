// tools/args.h - a small command-line parser: --key value, --key=value, --flag, positionals.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "mambacv/mambacv.h"

namespace mambacv::cli {

class Args {
 public:
  // `valued`: options that take a value; `flags`: options without one. Anything else starting with "--" is an
  // error naming the option and listing the valid ones.
  Args(const std::string& command, const std::vector<std::string>& argv, const std::set<std::string>& valued,
       const std::set<std::string>& flags);
  bool has(const std::string& key) const { return values_.count(key) > 0 || flags_set_.count(key) > 0; }
  std::string get(const std::string& key, const std::string& def = "") const;
  int get_int(const std::string& key, int def) const;
  double get_double(const std::string& key, double def) const;
  std::vector<int> get_int_list(const std::string& key, const std::vector<int>& def) const;
  const std::vector<std::string>& positionals() const { return pos_; }
  // --device / --dtype / --core / --threads, common to every command
  Options model_options() const;

 private:
  std::string cmd_;
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_set_;
  std::vector<std::string> pos_;
};

// The options every model command accepts.
inline const std::set<std::string> kModelOptions = {"device", "dtype", "core", "threads"};

}  // namespace mambacv::cli
