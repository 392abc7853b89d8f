// libFuzzer target: decode_image on arbitrary bytes, then the classification transform and the detection input.
#include "mambacv/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const mambacv::Image img = mambacv::decode_image(data, size, "fuzz input");
    mambacv::Tensor x = mambacv::preprocess(img, mambacv::InputSpec());
    (void)x.numel();
  } catch (const mambacv::Error&) {
  }
  return 0;
}
