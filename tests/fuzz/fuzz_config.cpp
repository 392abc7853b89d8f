// libFuzzer target: a model config file (JSON with "arch" and "config") through parsing and network construction
// (parameter shapes), stopping short of allocating the weights.
#include "mambacv/mambacv.h"
#include "tests/fuzz/fuzz_common.h"
#include "vision/network.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = mambacv::fuzz::input_file(data, size, ".json");
  try {
    const mambacv::ModelConfig cfg = mambacv::load_model_config(path);
    auto net = mambacv::detail::make_network(cfg);
    int64_t n = 0;
    for (const auto& p : net->param_specs()) n += mambacv::shape_numel(p.shape);
    (void)n;
  } catch (const mambacv::Error&) {
  }
  return 0;
}
