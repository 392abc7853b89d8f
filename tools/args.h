// tools/args.h - a small command-line parser: --key value, --key=value, --flag, positionals.
#pragma once

#include <map>
#include <sstream>
#include <set>
#include <string>
#include <vector>

#include "mambacv/mambacv.h"

namespace mambacv::cli {

// A command line that does not say what it means (unknown option, missing argument, malformed value): the command
// prints it and exits 2. Runtime failures are mambacv::Error and exit 1.
class UsageError : public Error {
 public:
  using Error::Error;
};

#define MAMBACV_USAGE_CHECK(cond, msg)                 \
  do {                                                 \
    if (!(cond)) {                                     \
      std::ostringstream mambacv_usage_oss_;           \
      mambacv_usage_oss_ << msg;                       \
      throw ::mambacv::cli::UsageError(mambacv_usage_oss_.str()); \
    }                                                  \
  } while (0)

class Args {
 public:
  // `valued`: options that take a value; `flags`: options without one. Anything else starting with "--" is a
  // UsageError naming the option and listing the valid ones. "-h" is "--help" when "help" is a flag.
  Args(const std::string& command, const std::vector<std::string>& argv, const std::set<std::string>& valued,
       const std::set<std::string>& flags);
  bool has(const std::string& key) const { return values_.count(key) > 0 || flags_set_.count(key) > 0; }
  std::string get(const std::string& key, const std::string& def = "") const;
  int get_int(const std::string& key, int def) const;
  double get_double(const std::string& key, double def) const;
  std::vector<int> get_int_list(const std::string& key, const std::vector<int>& def) const;
  const std::vector<std::string>& positionals() const { return pos_; }
  // Throws UsageError `what` when `key` was not given.
  void require(const std::string& key, const std::string& what) const;
  // --device / --dtype / --core / --threads, common to every command (a thread count above the machine's cores
  // is allowed, with a warning on stderr)
  Options model_options() const;

 private:
  std::string cmd_;
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_set_;
  std::vector<std::string> pos_;
};

// The --help text of the options every model command accepts: what --device, --dtype, --core and --threads do,
// and which of them this build cannot honour.
std::string model_options_help();

// The options every model command accepts.
inline const std::set<std::string> kModelOptions = {"device", "dtype", "core", "threads", "batch-group"};

}  // namespace mambacv::cli
