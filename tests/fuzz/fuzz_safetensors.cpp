// libFuzzer target: load_safetensors on arbitrary bytes. Every input must load or throw mambacv::Error.
#include "mambacv/weights.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = mambacv::fuzz::input_file(data, size, ".safetensors");
  try {
    mambacv::WeightFile w = mambacv::load_safetensors(path);
    for (const auto& [name, t] : w.tensors) (void)t.nbytes();
  } catch (const mambacv::Error&) {
  }
  return 0;
}
