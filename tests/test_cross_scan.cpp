// Cross-scan orders (vision/cross_scan.h) against upstream CrossScan / CrossMerge, and their permutation property.
#include <gtest/gtest.h>

#include <algorithm>

#include "mambacv/weights.h"
#include "test_util.h"
#include "vision/cross_scan.h"

using namespace mambacv;
using mambacv::detail::cross_scan_orders;

TEST(CrossScan, OrdersMatchUpstreamCrossScanAndMerge) {
  MAMBACV_REQUIRE_FIXTURES();
  // x (b, c, h, w), xs (b, 4, c, h*w), ys (b, 4, c, h*w), merged (b, c, h*w); h = 5, w = 7
  TensorMap t = load_safetensors(test::fixture("ops/cross_scan_5x7.safetensors")).tensors;
  const Tensor x = t.at("x").to(DType::F32), xs = t.at("xs").to(DType::F32), ys = t.at("ys").to(DType::F32),
               merged = t.at("merged").to(DType::F32);
  const int64_t B = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), L = H * W;
  ASSERT_EQ(H, 5);
  ASSERT_EQ(W, 7);
  const auto o = cross_scan_orders(H, W);
  // gathering x through order k gives xs[:, k] exactly
  for (int64_t b = 0; b < B; ++b)
    for (int k = 0; k < 4; ++k)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t l = 0; l < L; ++l)
          ASSERT_EQ(xs.f32()[((b * 4 + k) * C + c) * L + l], x.f32()[(b * C + c) * L + o[k][l]])
              << "b " << b << " k " << k << " c " << c << " l " << l;
  // scattering ys[:, k] back through order k and summing gives merged
  Tensor m = Tensor::zeros({B, C, L});
  for (int64_t b = 0; b < B; ++b)
    for (int k = 0; k < 4; ++k)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t l = 0; l < L; ++l)
          m.f32()[(b * C + c) * L + o[k][l]] += ys.f32()[((b * 4 + k) * C + c) * L + l];
  Compare cmp = compare(m, merged);
  EXPECT_LE(cmp.max_abs, 1e-5);
  EXPECT_LE(cmp.rel_l2, 1e-6);
}

TEST(CrossScan, OrdersArePermutationsForAnySize) {
  const int64_t sizes[][2] = {{1, 1}, {1, 9}, {9, 1}, {2, 3}, {3, 2}, {5, 7}, {7, 5}, {33, 47}, {56, 56}, {13, 6}};
  for (const auto& s : sizes) {
    const int64_t H = s[0], W = s[1], L = H * W;
    const auto o = cross_scan_orders(H, W);
    for (int k = 0; k < 4; ++k) {
      ASSERT_EQ(static_cast<int64_t>(o[k].size()), L);
      std::vector<int32_t> sorted = o[k];
      std::sort(sorted.begin(), sorted.end());
      for (int64_t i = 0; i < L; ++i) ASSERT_EQ(sorted[i], i) << H << "x" << W << " k " << k;
    }
    for (int64_t l = 0; l < L; ++l) {
      EXPECT_EQ(o[0][l], l);
      EXPECT_EQ(o[1][l], (l % H) * W + l / H) << H << "x" << W << " l " << l;
      EXPECT_EQ(o[2][l], o[0][L - 1 - l]);
      EXPECT_EQ(o[3][l], o[1][L - 1 - l]);
    }
  }
}

TEST(CrossScan, EmptyGridIsAnError) {
  EXPECT_THROW(cross_scan_orders(0, 4), Error);
  EXPECT_THROW(cross_scan_orders(4, -1), Error);
}
