// PyTorch .pth checkpoints (placeholder until the zip + pickle reader lands).
#include "mambacv/weights.h"

namespace mambacv {
WeightFile load_pth(const std::string& path) { MAMBACV_FAIL(path << ": .pth loading is not implemented yet"); }
}  // namespace mambacv
