#include "tools/args.h"

#include <cstdio>
#include <sstream>
#include <thread>

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
          MAMBACV_USAGE_CHECK(i + 1 < argv.size(), "option --" << key << " needs a value");
          val = argv[++i];
        }
        values_[key] = val;
      } else if (flags.count(key)) {
        MAMBACV_USAGE_CHECK(!has_val, "option --" << key << " takes no value");
        flags_set_.insert(key);
      } else {
        std::ostringstream known;
        for (const auto& k : valued) known << " --" << k;
        for (const auto& k : flags) known << " --" << k;
        MAMBACV_USAGE_CHECK(false, "unknown option --" << key << " (options of '" << command << "':" << known.str() << ")");
      }
    } else if (a == "-h" && flags.count("help")) {
      flags_set_.insert("help");
    } else if (a == "-o" && valued.count("output")) {
      MAMBACV_USAGE_CHECK(i + 1 < argv.size(), "option -o needs a value");
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
  MAMBACV_USAGE_CHECK(false, "--" << key << ": expected an integer, got '" << it->second << "'");
  return def;
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
  MAMBACV_USAGE_CHECK(false, "--" << key << ": expected a number, got '" << it->second << "'");
  return def;
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
    MAMBACV_USAGE_CHECK(false, "--" << key << ": expected positive integers separated by commas, got '" << it->second
                                     << "'");
  }
  MAMBACV_USAGE_CHECK(!out.empty(), "--" << key << ": empty list");
  return out;
}

std::string model_options_help() {
  std::ostringstream h;
  h << "model options:\n"
       "  --device cpu|cuda   where the model runs (default cpu); cuda: "
    << (cuda_built() ? "this build has CUDA kernels, but the model path does not run on them yet"
                     : "not available: this build has no CUDA kernels (configure with -DMAMBACV_CUDA=ON)")
    << "\n"
       "  --dtype f32|f16|bf16 compute dtype (default f32); weights are converted once at load\n"
       "  --core v0|v1        where reduced precision rounds inside the SSM mixers (upstream forward_corev0 /\n"
       "                      forward_corev1): v0 feeds the scan fp32 inputs and keeps its output, the direction\n"
       "                      merge and the gate in fp32; v1 keeps the scan's inputs and each direction's output in\n"
       "                      the compute dtype (the merge is still summed in fp32). Identical in f32 up to\n"
       "                      summation order; the released checkpoints were trained with v0 (default v0)\n"
       "  --threads N         threads of each call (default 0: all cores; more than the cores warns)\n"
       "  --check-finite      check every precision boundary for NaN / Inf and name the first\n"
       "  --batch-group N     images run through Vim's layers / each VMamba stage together (default 0: as many as\n"
       "                      stay in the L2 cache)\n";
  return h.str();
}

void Args::require(const std::string& key, const std::string& what) const {
  MAMBACV_USAGE_CHECK(has(key), cmd_ << ": " << what);
}

Options Args::model_options() const {
  Options o;
  // the library's parse errors name the option and the accepted values: a usage error here
  try {
    if (has("device")) o.device = parse_device(get("device"));
    if (has("dtype")) o.dtype = parse_compute_dtype(get("dtype"));
    if (has("core")) o.core = parse_core(get("core"));
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
  o.threads = get_int("threads", 0);
  o.check_finite = has("check-finite");
  o.batch_group = get_int("batch-group", 0);
  MAMBACV_USAGE_CHECK(o.batch_group >= 0 && o.batch_group <= 1 << 20,
                      "--batch-group: expected 0 (chosen from the L2 cache) or a count of images up to 1048576, got " << o.batch_group);
  MAMBACV_USAGE_CHECK(o.threads >= 0 && o.threads <= 1024,
                      "--threads: expected 0 (all cores) or a count up to 1024, got " << o.threads);
  const unsigned cores = std::thread::hardware_concurrency();
  if (cores > 0 && o.threads > static_cast<int>(cores))
    std::fprintf(stderr, "mambacv %s: warning: --threads %d is more than the %u cores of this machine; the extra "
                         "threads share cores and make each call slower\n", cmd_.c_str(), o.threads, cores);
  return o;
}

}  // namespace mambacv::cli
