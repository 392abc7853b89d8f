// Weight files: format detection and strict matching against a model's parameter list.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "mambacv/weights.h"
#include "vision/mapped_file.h"

namespace mambacv {

WeightFile load_weights(const std::string& path) {
  // Sniff the first bytes: a zip archive starts with a local file header "PK\3\4" (or, when empty, the end of
  // central directory "PK\5\6"); a safetensors file with an 8-byte header length followed by the JSON '{'.
  // A header length that fits the file (and the 100 MB cap) is taken as safetensors too, so that a damaged header
  // gets load_safetensors' precise message.
  uint8_t head[9] = {0};
  size_t got = 0;
  uint64_t size = 0;
  {
    auto file = detail::MappedFile::open(path);  // also gives the "missing / unreadable / directory" errors
    size = file->size();
    got = std::min<size_t>(size, sizeof(head));
    if (got) std::memcpy(head, file->data(), got);
  }
  if (got >= 4 && head[0] == 'P' && head[1] == 'K' && ((head[2] == 3 && head[3] == 4) || (head[2] == 5 && head[3] == 6)))
    return load_pth(path);
  if (got == 9 && (head[8] == '{' || (detail::read_le(head, 8) <= std::min<uint64_t>(size - 8, 100'000'000))))
    return load_safetensors(path);
  std::ostringstream first;
  for (size_t i = 0; i < got; ++i) {
    char buf[4];
    std::snprintf(buf, sizeof(buf), "%02x ", head[i]);
    first << buf;
  }
  const bool legacy_pickle = got >= 2 && head[0] == 0x80 && head[1] <= 5;
  MAMBACV_FAIL(path << ": not a weight file: expected safetensors or a PyTorch zip checkpoint (.pth), first bytes "
                    << (got ? first.str() : std::string("(empty file) "))
                    << (legacy_pickle ? "look like the legacy torch.save format (before PyTorch 1.6), which is not "
                                        "supported: re-save it with a recent torch.save"
                                      : "match neither"));
}

void check_weights_match(const TensorMap& weights, const std::vector<ParamSpec>& expected,
                         const std::string& source) {
  std::vector<std::string> missing, wrong, unexpected;
  std::map<std::string, const ParamSpec*> want;
  for (const ParamSpec& p : expected) want[p.name] = &p;
  for (const auto& [name, spec] : want) {
    auto it = weights.find(name);
    if (it == weights.end()) {
      missing.push_back(name + " " + shape_str(spec->shape));
      continue;
    }
    const Tensor& t = it->second;
    if (t.shape() != spec->shape || !is_float(t.dtype()))
      wrong.push_back(name + ": expected float" + shape_str(spec->shape) + ", found " + t.str());
  }
  for (const auto& [name, t] : weights)
    if (!want.count(name)) unexpected.push_back(name + " " + t.str());
  if (missing.empty() && wrong.empty() && unexpected.empty()) return;

  std::ostringstream msg;
  msg << source << ": weights do not match the model: " << missing.size() << " missing, " << unexpected.size()
      << " unexpected, " << wrong.size() << " wrongly shaped or typed";
  auto list = [&](const char* title, const std::vector<std::string>& v) {
    if (v.empty()) return;
    msg << "\n  " << title << ":";
    for (const auto& s : v) msg << "\n    " << s;
  };
  list("missing", missing);
  list("unexpected", unexpected);
  list("wrong shape/dtype", wrong);
  msg << "\n  (check that the config matches the checkpoint: model variant, depths, dims, d_state, ssm_ratio)";
  throw Error(msg.str());
}

}  // namespace mambacv
