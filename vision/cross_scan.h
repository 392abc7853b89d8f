// vision/cross_scan.h - the four scan orders of VMamba's 2D cross-scan, as index maps over row-major tokens.
//
// Mirrors MzeroMiko/VMamba classification/models/vmamba.py CrossScan / CrossMerge (MODELS.md §3.3): for an H x W
// map stored row-major (token t = h*W + w), direction k visits at step l the token order[k][l]:
//   k = 0  row-major          order[0][l] = l
//   k = 1  column-major       step l visits (h = l % H, w = l / H), i.e. token (l % H) * W + l / H
//   k = 2  k = 0 reversed     order[2][l] = order[0][L-1-l]
//   k = 3  k = 1 reversed     order[3][l] = order[1][L-1-l]
// Gathering x through order[k] gives upstream xs[:, k]; scattering-and-adding ys[k] through order[k] gives
// CrossMerge's sum. The fused selective scan (mambacv/selective_scan.h) reads and writes through these maps, so the
// four direction copies are never materialised.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace mambacv::detail {

constexpr int kCrossScanDirections = 4;

// The four orders for an H x W token grid (H, W >= 1). Each is a permutation of 0..H*W-1.
std::array<std::vector<int32_t>, kCrossScanDirections> cross_scan_orders(int64_t H, int64_t W);

}  // namespace mambacv::detail
