#include "vision/cross_scan.h"

#include <limits>

#include "mambacv/error.h"

namespace mambacv::detail {

std::array<std::vector<int32_t>, kCrossScanDirections> cross_scan_orders(int64_t H, int64_t W) {
  MAMBACV_CHECK(H >= 1 && W >= 1, "cross_scan_orders: the token grid must be at least 1x1, got " << H << "x" << W);
  MAMBACV_CHECK(H * W <= std::numeric_limits<int32_t>::max(),
                "cross_scan_orders: " << H << "x" << W << " tokens do not fit 32-bit indices");
  const int64_t L = H * W;
  std::array<std::vector<int32_t>, kCrossScanDirections> o;
  for (auto& v : o) v.resize(static_cast<size_t>(L));
  // k = 0: row-major; k = 1: column-major (step l = w*H + h visits token h*W + w)
  for (int64_t l = 0; l < L; ++l) o[0][l] = static_cast<int32_t>(l);
  for (int64_t w = 0, l = 0; w < W; ++w)
    for (int64_t h = 0; h < H; ++h, ++l) o[1][l] = static_cast<int32_t>(h * W + w);
  // k = 2, 3: the reversals of k = 0, 1
  for (int64_t l = 0; l < L; ++l) {
    o[2][l] = o[0][L - 1 - l];
    o[3][l] = o[1][L - 1 - l];
  }
  return o;
}

}  // namespace mambacv::detail
