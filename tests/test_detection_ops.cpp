// Tests of the detection ops (kernels/detection_ops.h): hand-computed cases and fast path vs plain reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/detection_ops.h"
#include "mambacv/error.h"
#include "test_util.h"

using namespace mambacv;
namespace det = mambacv::det;

namespace {

const ExecContext kCtx = ExecContext::cpu();

std::vector<int64_t> to_vec(const Tensor& idx) {
  const int64_t* p = idx.data<int64_t>();
  return std::vector<int64_t>(p, p + idx.numel());
}

Tensor boxes_tensor(const std::vector<std::array<float, 4>>& b) {
  std::vector<float> v;
  for (const auto& x : b) v.insert(v.end(), x.begin(), x.end());
  return Tensor::from_vector(v, {static_cast<int64_t>(b.size()), 4});
}

Tensor i64_tensor(const std::vector<int64_t>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::I64);
  std::copy(v.begin(), v.end(), t.data<int64_t>());
  return t;
}

// n random boxes with corners in [lo, hi), width/height in [min_wh, max_wh).
Tensor random_boxes(int64_t n, uint64_t seed, float lo, float hi, float min_wh, float max_wh) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> pos(lo, hi), size(min_wh, max_wh);
  Tensor t = Tensor::empty({n, 4});
  float* p = t.f32();
  for (int64_t i = 0; i < n; ++i) {
    const float x = pos(rng), y = pos(rng);
    p[i * 4 + 0] = x;
    p[i * 4 + 1] = y;
    p[i * 4 + 2] = x + size(rng);
    p[i * 4 + 3] = y + size(rng);
  }
  return t;
}

float iou(const float* a, const float* b) {
  const float w = std::max(0.0f, std::min(a[2], b[2]) - std::max(a[0], b[0]));
  const float h = std::max(0.0f, std::min(a[3], b[3]) - std::max(a[1], b[1]));
  const float inter = w * h;
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter);
}

}  // namespace

// ---- anchors ------------------------------------------------------------------------------------------------------
TEST(DetAnchors, BaseAnchorsRatioMajorScaleMinor) {
  // Expected values: mmdet's gen_single_level_base_anchors formula evaluated with torch f32 (base 16,
  // scales [4, 8], ratios [0.5, 1.0]); order (r0.5,s4), (r0.5,s8), (r1,s4), (r1,s8).
  const Tensor b = det::base_anchors(16.0f, {4.0f, 8.0f}, {0.5f, 1.0f});
  ASSERT_EQ(b.shape(), (Shape{4, 4}));
  const float expect[4][4] = {{-45.25483322143555f, -22.627416610717773f, 45.25483322143555f, 22.627416610717773f},
                              {-90.5096664428711f, -45.25483322143555f, 90.5096664428711f, 45.25483322143555f},
                              {-32.0f, -32.0f, 32.0f, 32.0f},
                              {-64.0f, -64.0f, 64.0f, 64.0f}};
  for (int a = 0; a < 4; ++a)
    for (int c = 0; c < 4; ++c) EXPECT_FLOAT_EQ(b.f32()[a * 4 + c], expect[a][c]) << a << "," << c;
}

TEST(DetAnchors, GridOf2x3IsLocationMajor) {
  // stride 16, base 16, scale 8, ratios (0.5, 1, 2) on a 2 x 3 map: 18 anchors.
  const Tensor a = det::anchors(16.0f, 16.0f, {8.0f}, {0.5f, 1.0f, 2.0f}, 2, 3);
  ASSERT_EQ(a.shape(), (Shape{18, 4}));
  // r = 0.5: w = 16 * 8 * sqrt(2) = 181.019336, h = 90.509668; r = 1: 128 x 128; r = 2: 90.509668 x 181.019336
  const float hw[3] = {90.50967f, 64.0f, 45.254834f}, hh[3] = {45.254834f, 64.0f, 90.50967f};
  for (int y = 0; y < 2; ++y)
    for (int x = 0; x < 3; ++x)
      for (int r = 0; r < 3; ++r) {
        const float* p = a.f32() + ((y * 3 + x) * 3 + r) * 4;
        const float cx = 16.0f * x, cy = 16.0f * y;
        EXPECT_NEAR(p[0], cx - hw[r], 1e-4) << y << x << r;
        EXPECT_NEAR(p[1], cy - hh[r], 1e-4) << y << x << r;
        EXPECT_NEAR(p[2], cx + hw[r], 1e-4) << y << x << r;
        EXPECT_NEAR(p[3], cy + hh[r], 1e-4) << y << x << r;
      }
  // row 16 = location (y=1, x=2), ratio 1: (32 - 64, 16 - 64, 32 + 64, 16 + 64), exact
  const float* p = a.f32() + 16 * 4;
  EXPECT_EQ(p[0], -32.0f);
  EXPECT_EQ(p[1], -48.0f);
  EXPECT_EQ(p[2], 96.0f);
  EXPECT_EQ(p[3], 80.0f);
  EXPECT_EQ(det::anchors(4.0f, 4.0f, {8.0f}, {1.0f}, 0, 5).shape(), (Shape{0, 4}));
  EXPECT_THROW(det::anchors(0.0f, 4.0f, {8.0f}, {1.0f}, 2, 2), Error);
  EXPECT_THROW(det::base_anchors(4.0f, {}, {1.0f}), Error);
}

// ---- delta decoding -----------------------------------------------------------------------------------------------
TEST(DetDecode, HandCasesAndClamping) {
  // Expected values: mmdet 2.x delta2bbox re-typed in torch f32 (see the formula in kernels/detection_ops.h).
  const Tensor rois = boxes_tensor({{10, 20, 50, 100}, {100, 40, 140, 60}});
  // second row: dw = 10 is clamped to |log(0.016)| (gw = 40 * 62.5 = 2500), dh = -10 to -|log(0.016)|
  const Tensor deltas = Tensor::from_vector({0.1f, -0.2f, 0.3f, -0.4f, 0.5f, 2.0f, 10.0f, -10.0f}, {2, 4});
  const std::array<float, 4> zero{0, 0, 0, 0}, one{1, 1, 1, 1}, stds{0.1f, 0.1f, 0.2f, 0.2f};
  struct Case {
    std::array<float, 4> stds;
    bool clip;
    float expect[8];
  };
  const Case cases[] = {
      {one, false, {7.002824783325195f, 17.187198638916016f, 60.99717712402344f, 70.81280517578125f,
                    -1110.0001220703125f, 89.83999633789062f, 1390.0001220703125f, 90.16000366210938f}},
      {one, true, {7.002824783325195f, 17.187198638916016f, 60.99717712402344f, 70.81280517578125f, 0.0f,
                   89.83999633789062f, 160.0f, 90.16000366210938f}},
      {stds, true, {9.163267135620117f, 21.47534942626953f, 51.63673400878906f, 95.32465362548828f, 0.0f,
                    52.64664840698242f, 160.0f, 55.35335159301758f}},
  };
  for (const Case& c : cases) {
    const Tensor out = det::decode_deltas(rois, deltas, zero, c.stds, 120, 160, c.clip);
    ASSERT_EQ(out.shape(), (Shape{2, 4}));
    for (int i = 0; i < 8; ++i) EXPECT_NEAR(out.f32()[i], c.expect[i], 2e-4f * std::max(1.0f, std::fabs(c.expect[i])));
  }
  // means shift the deltas; class-specific deltas (n, 4k) decode every group against the same roi
  const Tensor d2 = Tensor::from_vector({0, 0, 0, 0, 0.1f, -0.2f, 0.3f, -0.4f}, {1, 8});
  const Tensor out2 = det::decode_deltas(rois.slice0(0, 1), d2, {0.1f, -0.2f, 0.3f, -0.4f}, one, 120, 160, true);
  ASSERT_EQ(out2.shape(), (Shape{1, 8}));
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(out2.f32()[i], cases[0].expect[i], 1e-4f);
  EXPECT_NEAR(out2.f32()[4], 30 + 8 - 0.5f * 40 * std::exp(0.6f), 1e-3f);  // dx 0.2, dw 0.6: gx = 30 + 40 * 0.2
  EXPECT_THROW(det::decode_deltas(rois, Tensor::zeros({2, 5}), zero, one, 10, 10, true), Error);
  EXPECT_THROW(det::decode_deltas(rois, Tensor::zeros({3, 4}), zero, one, 10, 10, true), Error);
}

// ---- NMS ----------------------------------------------------------------------------------------------------------
TEST(DetNms, HandCases) {
  // A, B (IoU 81/119 = 0.681 with A), C disjoint, D == A with A's score (tie: lower index first), E (IoU 0.5 with A)
  const Tensor boxes =
      boxes_tensor({{0, 0, 10, 10}, {1, 1, 11, 11}, {20, 20, 30, 30}, {0, 0, 10, 10}, {0, 0, 10, 5}});
  const Tensor scores = Tensor::from_vector({0.9f, 0.8f, 0.7f, 0.9f, 0.6f}, {5});
  EXPECT_EQ(to_vec(det::nms(boxes, scores, 0.5f)), (std::vector<int64_t>{0, 2, 4}));  // IoU == thr is kept
  EXPECT_EQ(to_vec(det::nms(boxes, scores, 0.7f)), (std::vector<int64_t>{0, 1, 2, 4}));
  EXPECT_EQ(to_vec(det::nms(boxes, scores, 0.49f)), (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(to_vec(det::nms(boxes, scores, 1.0f)), (std::vector<int64_t>{0, 3, 1, 2, 4}));
  EXPECT_EQ(to_vec(det::nms(boxes, scores, 0.7f, 2)), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(to_vec(det::ref::nms(boxes, scores, 0.5f)), (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(det::nms(Tensor::zeros({0, 4}), Tensor::zeros({0}), 0.5f).numel(), 0);
  EXPECT_THROW(det::nms(boxes, Tensor::zeros({4}), 0.5f), Error);
  EXPECT_THROW(det::nms(Tensor::zeros({5, 3}), scores, 0.5f), Error);
}

TEST(DetNms, FastMatchesReferenceOnRandomBoxes) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    const int64_t n = 1000;
    Tensor boxes = random_boxes(n, seed, 0.0f, 200.0f, 1.0f, 60.0f);
    // scores on a coarse grid so that many ties occur
    Tensor scores = Tensor::empty({n});
    std::mt19937_64 rng(seed + 100);
    std::uniform_int_distribution<int> q(0, 50);
    for (int64_t i = 0; i < n; ++i) scores.f32()[i] = static_cast<float>(q(rng)) / 50.0f;
    // a few exact duplicates of boxes
    for (int64_t i = 0; i < 20; ++i) std::copy(boxes.f32() + i * 4, boxes.f32() + i * 4 + 4, boxes.f32() + (i + 500) * 4);
    for (float thr : {0.0f, 0.3f, 0.5f, 0.7f, 0.95f}) {
      const std::vector<int64_t> fast = to_vec(det::nms(boxes, scores, thr));
      const std::vector<int64_t> ref = to_vec(det::ref::nms(boxes, scores, thr));
      ASSERT_EQ(fast, ref) << "seed " << seed << " thr " << thr;
      // properties: descending scores, no kept pair above thr
      for (size_t i = 1; i < fast.size(); ++i) ASSERT_GE(scores.f32()[fast[i - 1]], scores.f32()[fast[i]]);
      for (size_t i = 0; i < fast.size(); ++i)
        for (size_t j = i + 1; j < fast.size(); ++j)
          ASSERT_LE(iou(boxes.f32() + fast[i] * 4, boxes.f32() + fast[j] * 4), thr);
      const std::vector<int64_t> top = to_vec(det::nms(boxes, scores, thr, 37));
      ASSERT_EQ(top, std::vector<int64_t>(ref.begin(), ref.begin() + std::min<size_t>(37, ref.size())));
    }
  }
}

TEST(DetNms, BatchedNmsPerClass) {
  // two identical boxes of different classes both survive; same class suppresses
  const Tensor boxes = boxes_tensor({{0, 0, 10, 10}, {0, 0, 10, 10}, {1, 0, 10, 10}, {50, 50, 60, 60}});
  const Tensor scores = Tensor::from_vector({0.5f, 0.9f, 0.7f, 0.8f}, {4});
  const Tensor idxs = i64_tensor({0, 1, 1, 0});
  EXPECT_EQ(to_vec(det::batched_nms(boxes, scores, idxs, 0.5f)), (std::vector<int64_t>{1, 3, 0}));
  EXPECT_EQ(to_vec(det::batched_nms(boxes, scores, idxs, 0.5f, -1, 0)), (std::vector<int64_t>{1, 3, 0}));
  EXPECT_EQ(to_vec(det::ref::batched_nms(boxes, scores, idxs, 0.5f)), (std::vector<int64_t>{1, 3, 0}));
  EXPECT_THROW(det::batched_nms(boxes, scores, Tensor::zeros({4}), 0.5f), Error);  // f32 ids

  for (uint64_t seed : {7u, 8u}) {
    const int64_t n = 1000;
    const Tensor b = random_boxes(n, seed, 0.0f, 150.0f, 2.0f, 50.0f);
    const Tensor s = test::random_tensor({n}, seed + 1, 0.0f, 1.0f);
    std::mt19937_64 rng(seed + 2);
    std::uniform_int_distribution<int64_t> cls(0, 6);
    std::vector<int64_t> ids(n);
    for (auto& v : ids) v = cls(rng);
    const Tensor id = i64_tensor(ids);
    for (float thr : {0.3f, 0.5f, 0.7f}) {
      const std::vector<int64_t> ref = to_vec(det::ref::batched_nms(b, s, id, thr));
      ASSERT_EQ(to_vec(det::batched_nms(b, s, id, thr)), ref) << "single pass, thr " << thr;
      ASSERT_EQ(to_vec(det::batched_nms(b, s, id, thr, -1, 0)), ref) << "per-class loop, thr " << thr;
      const std::vector<int64_t> top = to_vec(det::batched_nms(b, s, id, thr, 25, 0));
      ASSERT_EQ(top, std::vector<int64_t>(ref.begin(), ref.begin() + 25));
      // equals a plain per-class NMS of each class's boxes, merged by score
      std::vector<int64_t> merged;
      for (int64_t c = 0; c <= 6; ++c) {
        std::vector<int64_t> members;
        for (int64_t i = 0; i < n; ++i)
          if (ids[i] == c) members.push_back(i);
        Tensor cb = Tensor::empty({static_cast<int64_t>(members.size()), 4});
        Tensor cs = Tensor::empty({static_cast<int64_t>(members.size())});
        for (size_t k = 0; k < members.size(); ++k) {
          std::copy(b.f32() + members[k] * 4, b.f32() + members[k] * 4 + 4, cb.f32() + k * 4);
          cs.f32()[k] = s.f32()[members[k]];
        }
        for (int64_t k : to_vec(det::nms(cb, cs, thr))) merged.push_back(members[k]);
      }
      std::sort(merged.begin(), merged.end(), [&](int64_t x, int64_t y) { return s.f32()[x] > s.f32()[y]; });
      ASSERT_EQ(std::set<int64_t>(merged.begin(), merged.end()), std::set<int64_t>(ref.begin(), ref.end()));
    }
  }
}

// ---- RoIAlign -----------------------------------------------------------------------------------------------------
TEST(DetRoiAlign, ConstantAndLinearMaps) {
  const int64_t C = 2, H = 12, W = 16;
  Tensor feat = Tensor::empty({C, H, W});
  // channel 0: constant 3; channel 1: f(y, x) = 0.5 x - 0.25 y + 1 (bilinear interpolation is exact for it)
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) {
      feat.f32()[y * W + x] = 3.0f;
      feat.f32()[H * W + y * W + x] = 0.5f * x - 0.25f * y + 1.0f;
    }
  // roi inside the map's interior at stride 4 (spatial_scale 0.25): feature coords [2.5, 10.5] x [1.25, 9.25]
  const Tensor rois = boxes_tensor({{12.0f, 7.0f, 44.0f, 39.0f}});
  for (int sr : {0, 2}) {
    const Tensor out = det::roi_align(kCtx, feat, rois, 0.25f, 4, 4, sr);
    ASSERT_EQ(out.shape(), (Shape{1, C, 4, 4}));
    const float sx = 12.0f * 0.25f - 0.5f, sy = 7.0f * 0.25f - 0.5f, bin = 8.0f / 4;
    for (int ph = 0; ph < 4; ++ph)
      for (int pw = 0; pw < 4; ++pw) {
        EXPECT_NEAR(out.f32()[ph * 4 + pw], 3.0f, 1e-5f);
        // the samples are symmetric in the bin: the average is f at the bin centre
        const float cx = sx + (pw + 0.5f) * bin, cy = sy + (ph + 0.5f) * bin;
        EXPECT_NEAR(out.f32()[16 + ph * 4 + pw], 0.5f * cx - 0.25f * cy + 1.0f, 1e-4f) << sr << ph << pw;
      }
  }
  // a roi far outside the map pools zeros; a 1-channel (1, C, H, W) input is accepted
  const Tensor out =
      det::roi_align(kCtx, feat.reshape({1, C, H, W}), boxes_tensor({{-200, -200, -100, -100}}), 0.25f, 2, 2);
  for (int64_t i = 0; i < out.numel(); ++i) EXPECT_EQ(out.f32()[i], 0.0f);
  EXPECT_THROW(det::roi_align(kCtx, feat, rois, 0.25f, 0, 7), Error);
  EXPECT_THROW(det::roi_align(kCtx, feat, rois, 0.25f, 7, 7, -1), Error);
  EXPECT_THROW(det::roi_align(kCtx, feat.reshape({2, 1, H, W}), rois, 0.25f, 7, 7), Error);
}

TEST(DetRoiAlign, BorderRule) {
  // 1 x 2 x 2 map; a 1x1 output with one sample at a chosen point (sampling_ratio 1, aligned)
  const Tensor feat = Tensor::from_vector({1, 2, 3, 4}, {1, 2, 2});
  auto at = [&](float x, float y) {  // roi of size 1 centred at (x, y) in feature coords (+0.5 undoes aligned)
    const Tensor r = boxes_tensor({{x, y, x + 0.0f, y + 0.0f}});
    return det::roi_align(kCtx, feat, r, 1.0f, 1, 1, 1).f32()[0];
  };
  // roi of zero size: the single sample sits at (x - 0.5, y - 0.5)
  EXPECT_NEAR(at(1.0f, 1.0f), 2.5f, 1e-6f);   // (0.5, 0.5): mean of the four
  EXPECT_NEAR(at(0.0f, 0.0f), 1.0f, 1e-6f);   // (-0.5, -0.5): clamped to (0, 0)
  EXPECT_NEAR(at(-0.4f, 0.5f), 1.0f, 1e-6f);  // x = -0.9 >= -1: clamped
  EXPECT_EQ(at(-0.6f, 0.5f), 0.0f);           // x = -1.1 < -1: zero
  EXPECT_NEAR(at(2.4f, 2.4f), 4.0f, 1e-6f);   // (1.9, 1.9): beyond the last row/column, clamped to (1, 1)
  EXPECT_EQ(at(3.0f, 3.0f), 0.0f);            // (2.5, 2.5): y > H -> zero
}

TEST(DetRoiAlign, FastMatchesReference) {
  const int64_t H = 13, W = 19;
  for (int64_t C : {1, 3, 17}) {
    const Tensor feat = test::random_tensor({C, H, W}, 40 + C);
    // rois at stride 4 (image 52 x 76), partly outside, plus tiny, zero-size and inverted ones
    Tensor rois = random_boxes(40, 50 + C, -20.0f, 80.0f, 0.1f, 60.0f);
    const std::vector<std::array<float, 4>> special = {
        {10, 10, 10.3f, 10.2f}, {5, 5, 5, 5}, {30, 30, 20, 25}, {-50, -50, 100, 100}, {70, 45, 90, 60}};
    for (size_t k = 0; k < special.size(); ++k) std::copy(special[k].begin(), special[k].end(), rois.f32() + k * 4);
    for (int sr : {0, 1, 2}) {
      for (auto [oh, ow] : {std::pair<int64_t, int64_t>{7, 7}, {3, 5}, {1, 1}}) {
        for (bool aligned : {true, false}) {
          const Tensor fast = det::roi_align(kCtx, feat, rois, 0.25f, oh, ow, sr, aligned);
          const Tensor ref = det::ref::roi_align(feat, rois, 0.25f, oh, ow, sr, aligned);
          ASSERT_EQ(fast.shape(), (Shape{40, C, oh, ow}));
          // the fast path sums in another order (separable weights): equal to rounding
          const Compare cmp = compare(fast, ref);
          EXPECT_LE(cmp.max_abs, 2e-6) << "C " << C << " sr " << sr << " out " << oh << "x" << ow;
          EXPECT_LE(cmp.rel_l2, 1e-6) << "C " << C << " sr " << sr << " out " << oh << "x" << ow;
          EXPECT_TRUE(cmp.finite);
        }
      }
    }
  }
}

TEST(DetRoiAlign, LevelsAndMultiLevel) {
  // sqrt(area) 56 -> log2(1 + 1e-6) -> level 0; 112 -> 1; 111 -> 0; 224 -> 2; 448 -> 3; 1000 -> 3 (clamped); tiny -> 0
  const Tensor rois = boxes_tensor({{0, 0, 56, 56},
                                    {10, 10, 122, 122},
                                    {0, 0, 111, 111},
                                    {0, 0, 224, 224},
                                    {0, 0, 448, 448},
                                    {0, 0, 1000, 1000},
                                    {3, 3, 4, 4},
                                    {0, 0, 56, 224}});  // sqrt(56 * 224) = 112 -> 1
  EXPECT_EQ(to_vec(det::map_roi_levels(rois)), (std::vector<int64_t>{0, 1, 0, 2, 3, 3, 0, 1}));
  EXPECT_EQ(to_vec(det::map_roi_levels(rois, 56.0f, 2)), (std::vector<int64_t>{0, 1, 0, 1, 1, 1, 0, 1}));

  const std::vector<float> strides = {4, 8, 16, 32};
  std::vector<Tensor> feats;
  for (int l = 0; l < 4; ++l) feats.push_back(test::random_tensor({5, 64 >> l, 48 >> l}, 60 + l));
  const Tensor r2 = random_boxes(30, 70, -10.0f, 200.0f, 4.0f, 300.0f);
  const Tensor out = det::multilevel_roi_align(kCtx, feats, strides, r2, 7, 7);
  ASSERT_EQ(out.shape(), (Shape{30, 5, 7, 7}));
  const std::vector<int64_t> lv = to_vec(det::map_roi_levels(r2));
  for (int64_t i = 0; i < 30; ++i) {
    const Tensor one = det::ref::roi_align(feats[lv[i]], r2.slice0(i, i + 1), 1.0f / strides[lv[i]], 7, 7);
    const Tensor got = out.slice0(i, i + 1);
    EXPECT_LE(compare(got, one).max_abs, 2e-6) << "roi " << i << " level " << lv[i];
  }
  EXPECT_THROW(det::multilevel_roi_align(kCtx, feats, {4, 8}, r2, 7, 7), Error);
}

// ---- mask pasting -------------------------------------------------------------------------------------------------
TEST(DetPasteMask, HandCase) {
  // Expected: mmdet 2.x _do_paste_mask (skip_empty) re-typed with torch 1.13 F.grid_sample, mask (2, 3), box
  // (1.3, 2.1, 6.7, 5.9), image 8 x 9.
  const Tensor mask = Tensor::from_vector({0.1f, 0.9f, 0.3f, 0.6f, 0.2f, 0.8f}, {2, 3});
  const det::Box box{1.3f, 2.1f, 6.7f, 5.9f};
  const float row3[9] = {0.01213448f, 0.13347955f, 0.30438605f, 0.5909357f, 0.6464912f,
                         0.47105262f, 0.25570178f, 0.02324552f, 0.0f};
  const float row4[9] = {0.02675434f, 0.29429826f, 0.46228066f, 0.39795324f, 0.45350882f,
                         0.6289474f,  0.4165205f,  0.03786535f, 0.0f};
  const Tensor probs = det::ref::paste_mask_probs(mask, box, 8, 9);
  for (int j = 0; j < 8; ++j) {  // column 8 lies outside mmdetection's window: compare the window only
    EXPECT_NEAR(probs.f32()[3 * 9 + j], row3[j], 1e-6f) << j;
    EXPECT_NEAR(probs.f32()[4 * 9 + j], row4[j], 1e-6f) << j;
  }
  const Tensor m = det::paste_mask(mask, box, 8, 9, 0.5f);
  ASSERT_EQ(m.shape(), (Shape{8, 9}));
  ASSERT_EQ(m.dtype(), DType::U8);
  std::set<int> on;
  for (int i = 0; i < 72; ++i)
    if (m.data<uint8_t>()[i]) on.insert(i);
  EXPECT_EQ(on, (std::set<int>{2 * 9 + 4, 3 * 9 + 3, 3 * 9 + 4, 4 * 9 + 5}));
  // threshold 0: the whole window [0, 8) x [1, 7) and nothing else
  const Tensor all = det::paste_mask(mask, box, 8, 9, 0.0f);
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 9; ++j) EXPECT_EQ(all.data<uint8_t>()[i * 9 + j], (i >= 1 && i < 7 && j < 8) ? 1 : 0);
  EXPECT_THROW(det::paste_mask(Tensor::zeros({0, 3}), box, 8, 9), Error);
}

TEST(DetPasteMask, FastMatchesReference) {
  const Tensor mask = test::random_tensor({28, 28}, 80, 0.0f, 1.0f);
  const Tensor small = test::random_tensor({3, 5}, 81, 0.0f, 1.0f);
  const std::vector<det::Box> boxes = {
      {10.2f, 5.7f, 40.9f, 33.1f},    // inside
      {-12.5f, -3.2f, 20.4f, 15.0f},  // partly outside top-left
      {30.0f, 20.0f, 80.0f, 70.0f},   // partly outside bottom-right
      {17.1f, 9.6f, 17.4f, 9.8f},     // tiny
      {5.0f, 5.0f, 5.0f, 12.0f},      // zero width (inf grid -> 0)
      {-30.0f, -30.0f, -10.0f, -5.0f},  // wholly outside
      {0.0f, 0.0f, 47.0f, 37.0f},     // the whole image
  };
  for (const Tensor& mk : {mask, small})
    for (const det::Box& b : boxes)
      for (float thr : {0.0f, 0.2f, 0.5f, 0.7f}) {
        const Tensor fast = det::paste_mask(mk, b, 37, 47, thr);
        const Tensor ref = det::ref::paste_mask(mk, b, 37, 47, thr);
        ASSERT_EQ(0, std::memcmp(fast.raw(), ref.raw(), fast.nbytes()))
            << "box " << b[0] << "," << b[1] << "," << b[2] << "," << b[3] << " thr " << thr;
        // the skip_empty window changes nothing at thresholds >= 0.5, unless the box is degenerate (a zero width
        // makes every grid x 0 after the inf -> 0 rule, so the full-image paste smears the centre column)
        if (thr >= 0.5f && b[2] > b[0] && b[3] > b[1]) {
          const Tensor p = det::ref::paste_mask_probs(mk, b, 37, 47);
          for (int64_t i = 0; i < p.numel(); ++i)
            ASSERT_EQ(fast.data<uint8_t>()[i], p.f32()[i] >= thr ? 1 : 0) << i;
        }
      }
}

// ---- RLE ----------------------------------------------------------------------------------------------------------
TEST(DetRle, HandEncodedString) {
  // pycocotools is not installed here; these strings are derived by hand from maskApi.c's rleToString rules.
  // 3 x 4 mask (row-major):   0 1 1 0 / 0 1 0 0 / 1 1 0 1
  // column-major scan: 0 0 1 | 1 1 1 | 1 0 0 | 0 0 1 -> runs 0x2, 1x5, 0x4, 1x1 -> counts [2, 5, 4, 1]
  // string: 2 -> '2'; 5 -> '5'; 4 -> '4'; index 3 stores 1 - counts[1] = -4: low 5 bits 0x1c, then x >> 5 == -1
  // and bit 0x10 set -> last group: 0x1c + 48 = 'L'.  => "254L"
  const std::vector<uint8_t> m = {0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 1};
  const det::Rle r = det::rle_encode(m.data(), 3, 4);
  EXPECT_EQ(r.counts, (std::vector<uint32_t>{2, 5, 4, 1}));
  EXPECT_EQ(det::rle_to_string(r), "254L");
  EXPECT_EQ(det::rle_area(r), 6);
  // full 40 x 40 mask: counts [0, 1600]; 1600 = 50 * 32: groups 0 (more) -> 'P', 50 & 31 = 18 has bit 0x10 so
  // another group follows (0x20 | 18 -> 'b'), then 1 -> '1'.  => "0Pb1"
  const std::vector<uint8_t> full(1600, 1);
  const det::Rle rf = det::rle_encode(full.data(), 40, 40);
  EXPECT_EQ(rf.counts, (std::vector<uint32_t>{0, 1600}));
  EXPECT_EQ(det::rle_to_string(rf), "0Pb1");
  EXPECT_EQ(det::rle_decode_string("0Pb1", 40, 40).counts, rf.counts);
  // a run of 100: 100 & 31 = 4 with more (0x24 -> 'T'), then 3 -> '3'
  std::vector<uint8_t> col(10 * 11, 0);
  for (int i = 0; i < 100; ++i) col[(i % 10) * 11 + i / 10] = 1;  // first 100 column-major pixels
  EXPECT_EQ(det::rle_to_string(det::rle_encode(col.data(), 10, 11)), "0T3:");  // counts [0, 100, 10]: 10 -> ':'
  const Tensor dec = det::rle_decode(det::rle_decode_string("254L", 3, 4));
  EXPECT_EQ(0, std::memcmp(dec.raw(), m.data(), 12));
}

TEST(DetRle, RoundTrips) {
  std::mt19937_64 rng(90);
  const std::vector<std::pair<int64_t, int64_t>> sizes = {{1, 1}, {7, 5}, {13, 31}, {64, 48}, {101, 3}, {0, 4}, {5, 0}};
  for (auto [h, w] : sizes) {
    for (int kind = 0; kind < 4; ++kind) {  // empty, full, random, blobs (long runs)
      Tensor mask = Tensor::zeros({h, w}, DType::U8);
      uint8_t* p = mask.data<uint8_t>();
      for (int64_t i = 0; i < h * w; ++i) {
        if (kind == 1) p[i] = 1;
        if (kind == 2) p[i] = (rng() & 1) ? 1 : 0;
        if (kind == 3) p[i] = ((i / w) * (i / w) + (i % w) * 3 < h * w / 2) ? 1 : 0;
      }
      const det::Rle r = det::rle_encode(mask);
      int64_t sum = 0, area = 0;
      for (uint32_t c : r.counts) sum += c;
      for (int64_t i = 0; i < h * w; ++i) area += p[i];
      ASSERT_EQ(sum, h * w);
      ASSERT_EQ(det::rle_area(r), area);
      const std::string s = det::rle_to_string(r);
      const det::Rle back = det::rle_decode_string(s, h, w);
      ASSERT_EQ(back.counts, r.counts) << h << "x" << w << " kind " << kind << " " << s;
      const Tensor dec = det::rle_decode(back);
      ASSERT_EQ(dec.shape(), (Shape{h, w}));
      ASSERT_EQ(0, std::memcmp(dec.raw(), mask.raw(), mask.nbytes())) << h << "x" << w << " kind " << kind;
    }
  }
  // nonzero values other than 1 count as foreground; corrupt strings are rejected
  const std::vector<uint8_t> v = {0, 7, 255, 0};
  EXPECT_EQ(det::rle_encode(v.data(), 2, 2).counts, (std::vector<uint32_t>{1, 2, 1}));
  EXPECT_THROW(det::rle_decode_string("254", 3, 4), Error);   // sums to 11
  EXPECT_THROW(det::rle_decode_string("25\x7fL", 3, 4), Error);  // outside the alphabet
  EXPECT_THROW(det::rle_decode_string("2T", 3, 4), Error);    // continuation flag at the end
  det::Rle bad{2, 2, {1, 1}};
  EXPECT_THROW(det::rle_decode(bad), Error);
}

// ---- P6 -----------------------------------------------------------------------------------------------------------
TEST(DetSubsample2, TakesEveryOtherPixel) {
  const Tensor x = test::random_tensor({2, 3, 5, 7}, 95);
  const Tensor y = det::subsample2(x);
  ASSERT_EQ(y.shape(), (Shape{2, 3, 3, 4}));
  for (int64_t p = 0; p < 6; ++p)
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(y.f32()[(p * 3 + i) * 4 + j], x.f32()[(p * 5 + 2 * i) * 7 + 2 * j]);
  EXPECT_EQ(det::subsample2(Tensor::zeros({4, 6})).shape(), (Shape{2, 3}));
  EXPECT_THROW(det::subsample2(Tensor::zeros({4})), Error);
}
