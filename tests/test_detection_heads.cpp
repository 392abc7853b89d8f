// The Mask R-CNN heads (vision/detection_heads.h) against plain references: the 2x2 deconvolution, convolutions,
// FPN, RPN head + proposals, Shared2FC box head + multiclass NMS, FCN mask head, windowed RLE.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "kernels/detection_ops.h"
#include "test_util.h"
#include "vision/detection_heads.h"

namespace mambacv {
namespace {

using test::random_tensor;

const ExecContext kCtx = ExecContext::cpu();

// Owns the weights of one conv / linear layer for the tests.
struct OwnedConv {
  Tensor w, b;
  heads::ConvW c;
  OwnedConv(int64_t co, int64_t ci, int k, uint64_t seed, bool bias = true) {
    w = random_tensor({co, ci, k, k}, seed, -0.5f, 0.5f);
    if (bias) b = random_tensor({co}, seed + 1, -0.5f, 0.5f);
    c = {w.f32(), bias ? b.f32() : nullptr, co, ci, k, {}};
    c.prepare();
  }
};
struct OwnedLinear {
  Tensor w, b;
  heads::LinearW l;
  OwnedLinear(int64_t out, int64_t in, uint64_t seed, float scale = 0.2f) {
    w = random_tensor({out, in}, seed, -scale, scale);
    b = random_tensor({out}, seed + 1, -scale, scale);
    l = {w.f32(), b.f32(), out, in, {}};
    l.prepare();
  }
};

Tensor to_nhwc(const Tensor& t) {
  const int64_t B = t.dim(0), C = t.dim(1), H = t.dim(2), W = t.dim(3);
  Tensor o = Tensor::empty({B, H, W, C});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < H * W; ++i) o.f32()[(b * H * W + i) * C + c] = t.f32()[(b * C + c) * H * W + i];
  return o;
}
Tensor to_nchw(const Tensor& t) {
  const int64_t B = t.dim(0), H = t.dim(1), W = t.dim(2), C = t.dim(3);
  Tensor o = Tensor::empty({B, C, H, W});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < H * W; ++i) o.f32()[(b * C + c) * H * W + i] = t.f32()[(b * H * W + i) * C + c];
  return o;
}

void expect_close(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  ASSERT_EQ(got.shape(), ref.shape()) << what;
  Compare c = compare(got, ref);
  EXPECT_TRUE(c.finite) << what;
  EXPECT_LE(c.rel_l2, tol) << what << " max_abs " << c.max_abs;
}

TEST(DetectionHeads, Deconv2x2MatchesNaiveLoop) {
  for (auto [B, H, W, Ci, Co] :
       std::vector<std::array<int64_t, 5>>{{1, 1, 1, 1, 1}, {2, 3, 5, 7, 5}, {1, 14, 14, 16, 17}}) {
    Tensor x = random_tensor({B, Ci, H, W}, 11 + Ci);
    Tensor w = random_tensor({Ci, Co, 2, 2}, 12 + Co);
    Tensor b = random_tensor({Co}, 13);
    const ops::PackedWeight packed = heads::pack_deconv2x2(w.f32(), Ci, Co);
    for (bool relu : {false, true}) {
      Tensor got = to_nchw(heads::deconv2x2_nhwc(kCtx, to_nhwc(x), packed, b.f32(), Co, relu));
      Tensor ref = heads::ref::deconv2x2_nchw(x, w.f32(), b.f32(), Co, relu);
      expect_close(got, ref, 1e-6, "deconv " + shape_str(x.shape()));
    }
    Tensor nob = to_nchw(heads::deconv2x2_nhwc(kCtx, to_nhwc(x), packed, nullptr, Co, false));
    expect_close(nob, heads::ref::deconv2x2_nchw(x, w.f32(), nullptr, Co, false), 1e-6, "deconv without bias");
  }
}

TEST(DetectionHeads, ConvSameMatchesNaiveLoop) {
  // shifted-GEMM path: batches (padding rows between images), 1-pixel maps, H != W, k = 1, 3, 5
  for (auto [B, H, W] : std::vector<std::array<int64_t, 3>>{{2, 7, 5}, {3, 1, 1}, {1, 4, 9}, {4, 14, 14}})
    for (int k : {1, 3, 5}) {
      OwnedConv c(9, 6, k, 20 + k);
      Tensor x = random_tensor({B, 6, H, W}, 21 + B);
      for (bool relu : {false, true}) {
        Tensor got = to_nchw(heads::conv_same_nhwc(kCtx, to_nhwc(x), c.c, relu));
        expect_close(got, heads::ref::conv_same_nchw(x, c.c, relu), 1e-5,
                     "conv k" + std::to_string(k) + " " + shape_str(x.shape()));
      }
    }
  OwnedConv nob(5, 6, 3, 30, /*bias=*/false);
  Tensor x = random_tensor({2, 6, 5, 4}, 31);
  expect_close(to_nchw(heads::conv_same_nhwc(kCtx, to_nhwc(x), nob.c, false)),
               heads::ref::conv_same_nchw(x, nob.c, false), 1e-5, "conv without bias");
}

TEST(DetectionHeads, NearestIndexIsPyTorchs) {
  // F.interpolate(size=7, mode="nearest") of 3 values reads 0,0,0,1,1,2,2; 2x reads i >> 1; same size: identity
  const int64_t want[7] = {0, 0, 0, 1, 1, 2, 2};
  for (int64_t i = 0; i < 7; ++i) EXPECT_EQ(ops::nearest_source_index(i, 3, 7), want[i]) << i;
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(ops::nearest_source_index(i, 5, 10), i / 2);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(ops::nearest_source_index(i, 5, 5), i);
  // downsampling (never in an FPN, but defined): 9 -> 4 reads floor(i * 2.25)
  const int64_t down[4] = {0, 2, 4, 6};
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(ops::nearest_source_index(i, 9, 4), down[i]);
}

TEST(DetectionHeads, FpnMatchesDirectLoops) {
  // exact 2x levels (the padded pipeline) and odd sizes (ceil halving of an unpadded input: 13 -> 7 -> 4 -> 2)
  for (auto sizes : std::vector<std::vector<std::array<int64_t, 2>>>{{{16, 20}, {8, 10}, {4, 5}, {2, 3}},
                                                                     {{13, 9}, {7, 5}, {4, 3}, {2, 2}}}) {
    const std::vector<int64_t> cin = {4, 6, 8, 10};
    const int64_t C = 5;
    std::vector<OwnedConv> lat, out;
    heads::FpnW w;
    for (size_t i = 0; i < 4; ++i) {
      lat.emplace_back(C, cin[i], 1, 100 + i);
      out.emplace_back(C, C, 3, 200 + i);
    }
    for (size_t i = 0; i < 4; ++i) {
      w.lateral.push_back(lat[i].c);
      w.output.push_back(out[i].c);
    }
    std::vector<Tensor> nchw, nhwc;
    for (size_t i = 0; i < 4; ++i) {
      nchw.push_back(random_tensor({2, cin[i], sizes[i][0], sizes[i][1]}, 300 + i));
      nhwc.push_back(to_nhwc(nchw[i]));
    }
    for (int num_outs : {4, 5, 6}) {
      w.num_outs = num_outs;
      std::vector<Tensor> got = heads::fpn_forward(kCtx, nhwc, w);
      std::vector<Tensor> ref = heads::ref::fpn_forward_nchw(nchw, w);
      ASSERT_EQ(got.size(), static_cast<size_t>(num_outs));
      ASSERT_EQ(ref.size(), got.size());
      for (size_t i = 0; i < got.size(); ++i) expect_close(to_nchw(got[i]), ref[i], 1e-5, "fpn." + std::to_string(i));
    }
  }
}

TEST(DetectionHeads, RpnHeadLevelMatchesNaive) {
  const int64_t C = 6, F = 5, A = 3, H = 4, W = 7;
  OwnedConv conv(F, C, 3, 400), cls(A, F, 1, 401), reg(4 * A, F, 1, 402);
  heads::RpnW w{conv.c, cls.c, reg.c};
  Tensor x = random_tensor({1, C, H, W}, 403);
  heads::RpnLevelOut o = heads::rpn_head_level(kCtx, to_nhwc(x), w);
  Tensor t = heads::ref::conv_same_nchw(x, conv.c, true);
  Tensor logits = heads::ref::conv_same_nchw(t, cls.c, false);  // (1, A, H, W)
  Tensor deltas = heads::ref::conv_same_nchw(t, reg.c, false);  // (1, 4A, H, W)
  ASSERT_EQ(o.scores.numel(), H * W * A);
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x2 = 0; x2 < W; ++x2)
      for (int64_t a = 0; a < A; ++a) {
        const int64_t i = (y * W + x2) * A + a;  // location-major, anchor-minor
        const float s = 1.0f / (1.0f + std::exp(-logits.f32()[(a * H + y) * W + x2]));
        EXPECT_NEAR(o.scores.f32()[i], s, 1e-6);
        for (int k = 0; k < 4; ++k)
          EXPECT_NEAR(o.deltas.f32()[i * 4 + k], deltas.f32()[((a * 4 + k) * H + y) * W + x2], 1e-5);
      }
}

// Naive RPNHead._get_bboxes: per level full sort, own decode, greedy NMS within each level.
Tensor naive_proposals(const std::vector<heads::RpnLevelOut>& levels, const heads::RpnConfig& cfg, int64_t img_h,
                       int64_t img_w) {
  struct Cand {
    float box[4];
    float score;
    int64_t level;
  };
  std::vector<Cand> all;
  for (size_t l = 0; l < levels.size(); ++l) {
    const auto& lv = levels[l];
    const int64_t n = lv.scores.numel();
    std::vector<int64_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    if (n > cfg.nms_pre) {
      std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
        const float sa = lv.scores.f32()[a], sb = lv.scores.f32()[b];
        return sa > sb || (sa == sb && a < b);
      });
      idx.resize(static_cast<size_t>(cfg.nms_pre));
    }
    const float s = cfg.strides[l];
    for (int64_t i : idx) {
      const int64_t loc = i / cfg.num_anchors(), a = i % cfg.num_anchors();
      const int64_t y = loc / lv.w, x = loc % lv.w;
      const float r = cfg.ratios[static_cast<size_t>(a)], hr = std::sqrt(r), wr = 1.0f / hr;
      const float aw = s * wr * cfg.scales[0], ah = s * hr * cfg.scales[0];
      const float ax1 = -0.5f * aw + x * s, ay1 = -0.5f * ah + y * s, ax2 = 0.5f * aw + x * s, ay2 = 0.5f * ah + y * s;
      const float* d = lv.deltas.f32() + i * 4;
      const float lim = std::fabs(std::log(16.0f / 1000.0f));
      const float pw = ax2 - ax1, ph = ay2 - ay1, px = (ax1 + ax2) * 0.5f, py = (ay1 + ay2) * 0.5f;
      const float gw = pw * std::exp(std::clamp(d[2], -lim, lim)), gh = ph * std::exp(std::clamp(d[3], -lim, lim));
      const float gx = px + pw * d[0], gy = py + ph * d[1];
      Cand c;
      c.box[0] = std::clamp(gx - gw * 0.5f, 0.0f, static_cast<float>(img_w));
      c.box[1] = std::clamp(gy - gh * 0.5f, 0.0f, static_cast<float>(img_h));
      c.box[2] = std::clamp(gx + gw * 0.5f, 0.0f, static_cast<float>(img_w));
      c.box[3] = std::clamp(gy + gh * 0.5f, 0.0f, static_cast<float>(img_h));
      c.score = lv.scores.f32()[i];
      c.level = static_cast<int64_t>(l);
      all.push_back(c);
    }
  }
  std::vector<size_t> order(all.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return all[a].score > all[b].score; });
  auto area = [](const float* b) { return (b[2] - b[0]) * (b[3] - b[1]); };
  std::vector<size_t> keep;
  for (size_t i : order) {
    bool ok = true;
    for (size_t k : keep) {
      if (all[k].level != all[i].level) continue;
      const float* p = all[k].box;
      const float* q = all[i].box;
      const float iw = std::max(0.0f, std::min(p[2], q[2]) - std::max(p[0], q[0]));
      const float ih = std::max(0.0f, std::min(p[3], q[3]) - std::max(p[1], q[1]));
      if (iw * ih / (area(p) + area(q) - iw * ih) > cfg.iou_thr) {
        ok = false;
        break;
      }
    }
    if (ok) keep.push_back(i);
    if (static_cast<int64_t>(keep.size()) == cfg.max_per_img) break;
  }
  Tensor out = Tensor::empty({static_cast<int64_t>(keep.size()), 5});
  for (size_t j = 0; j < keep.size(); ++j) {
    std::copy(all[keep[j]].box, all[keep[j]].box + 4, out.f32() + j * 5);
    out.f32()[j * 5 + 4] = all[keep[j]].score;
  }
  return out;
}

TEST(DetectionHeads, RpnProposalsMatchNaive) {
  heads::RpnConfig cfg;
  cfg.strides = {4, 8, 16};
  cfg.nms_pre = 50;
  cfg.max_per_img = 60;
  const int64_t img_h = 61, img_w = 75;  // unpadded inside a 64 x 80 input
  const int64_t sizes[3][2] = {{16, 20}, {8, 10}, {4, 5}};
  std::vector<heads::RpnLevelOut> levels;
  for (int l = 0; l < 3; ++l) {
    heads::RpnLevelOut o;
    o.h = sizes[l][0];
    o.w = sizes[l][1];
    const int64_t n = o.h * o.w * 3;
    o.scores = random_tensor({n}, 500 + l, 0.0f, 1.0f);
    o.deltas = random_tensor({n, 4}, 600 + l, -1.0f, 1.0f);
    levels.push_back(o);
  }
  for (float iou : {0.7f, 0.3f}) {
    cfg.iou_thr = iou;
    Tensor got = heads::rpn_proposals(levels, cfg, img_h, img_w);
    Tensor ref = naive_proposals(levels, cfg, img_h, img_w);
    ASSERT_EQ(got.shape(), ref.shape()) << "iou " << iou;
    for (int64_t i = 0; i < got.numel(); ++i) ASSERT_NEAR(got.f32()[i], ref.f32()[i], 1e-4) << i;
    for (int64_t i = 1; i < got.dim(0); ++i) EXPECT_GE(got.f32()[(i - 1) * 5 + 4], got.f32()[i * 5 + 4]);
    for (int64_t i = 0; i < got.dim(0); ++i) {
      EXPECT_LE(got.f32()[i * 5 + 2], img_w);
      EXPECT_LE(got.f32()[i * 5 + 3], img_h);
    }
  }
  // min_bbox_size drops thin boxes (w or h below it)
  cfg.iou_thr = 0.7f;
  cfg.min_bbox_size = 12;
  Tensor got = heads::rpn_proposals(levels, cfg, img_h, img_w);
  for (int64_t i = 0; i < got.dim(0); ++i) {
    EXPECT_GE(got.f32()[i * 5 + 2] - got.f32()[i * 5 + 0], 12.0f);
    EXPECT_GE(got.f32()[i * 5 + 3] - got.f32()[i * 5 + 1], 12.0f);
  }
}

struct BoxHeadFixture {
  int64_t n = 37, C = 4, r = 7, fc = 24, K = 6;
  OwnedLinear fc1{fc, C * r * r, 700, 0.05f}, fc2{fc, fc, 702}, cls{K + 1, fc, 704, 1.0f}, reg{4 * K, fc, 706, 0.5f};
  heads::BoxHeadW w{fc1.l, fc2.l, cls.l, reg.l};
};

TEST(DetectionHeads, BoxHeadMatchesNaive) {
  BoxHeadFixture f;
  Tensor feats = random_tensor({f.n, f.C, f.r, f.r}, 710);
  Tensor cls, deltas, rcls, rdeltas;
  heads::box_head_forward(kCtx, feats, f.w, &cls, &deltas);
  heads::ref::box_head_forward(feats, f.w, &rcls, &rdeltas);
  expect_close(cls, rcls, 1e-5, "cls_score");
  expect_close(deltas, rdeltas, 1e-5, "bbox_pred");
  Tensor empty_cls, empty_deltas;
  heads::box_head_forward(kCtx, Tensor::empty({0, f.C, f.r, f.r}), f.w, &empty_cls, &empty_deltas);
  EXPECT_EQ(empty_cls.dim(0), 0);
}

TEST(DetectionHeads, BoxPostprocessMatchesNaive) {
  // clustered proposals so that NMS has work; one padding row (y2 == 0) that must not produce detections
  const int64_t n = 60, K = 5;
  Tensor props = Tensor::empty({n, 5});
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0, 1);
  for (int64_t i = 0; i < n; ++i) {
    const float cx = 30 + 40 * (i % 3) + 4 * u(rng), cy = 40 + 30 * (i % 2) + 4 * u(rng);
    const float w = 20 + 10 * u(rng), h = 15 + 10 * u(rng);
    float* p = props.f32() + i * 5;
    p[0] = std::max(0.0f, cx - w / 2), p[1] = std::max(0.0f, cy - h / 2), p[2] = cx + w / 2, p[3] = cy + h / 2;
    p[4] = u(rng);
  }
  props.f32()[7 * 5 + 1] = 0, props.f32()[7 * 5 + 3] = 0;  // padding row
  Tensor cls = random_tensor({n, K + 1}, 720, -2.0f, 2.0f);
  cls.f32()[7 * (K + 1) + 0] = 12.0f;  // score ~1 for class 0 if the padding rule were not applied
  Tensor deltas = random_tensor({n, 4 * K}, 721, -0.5f, 0.5f);
  for (float thr : {0.05f, 0.2f})
    for (int64_t max_per_img : {100, 10}) {
      heads::RcnnConfig cfg;
      cfg.score_thr = thr;
      cfg.max_per_img = max_per_img;
      heads::Detections got = heads::box_postprocess(props, cls, deltas, cfg, 90, 150);
      heads::Detections ref = heads::ref::box_postprocess(props, cls, deltas, cfg, 90, 150);
      ASSERT_EQ(got.size(), ref.size()) << thr << " " << max_per_img;
      ASSERT_GT(got.size(), 0);
      EXPECT_LE(got.size(), max_per_img);
      for (int64_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got.labels.data<int64_t>()[i], ref.labels.data<int64_t>()[i]) << i;
        EXPECT_FLOAT_EQ(got.scores.f32()[i], ref.scores.f32()[i]) << i;
        for (int k = 0; k < 4; ++k) EXPECT_FLOAT_EQ(got.boxes.f32()[i * 4 + k], ref.boxes.f32()[i * 4 + k]);
        EXPECT_GT(got.scores.f32()[i], thr);
        EXPECT_LT(got.scores.f32()[i], 0.99f) << "the padding row leaked into the detections";
      }
    }
  // nothing above the threshold: an empty result with the right shapes
  heads::RcnnConfig high;
  high.score_thr = 0.999f;
  heads::Detections none = heads::box_postprocess(props, cls, deltas, high, 90, 150);
  EXPECT_EQ(none.size(), 0);
  EXPECT_EQ(none.boxes.shape(), (Shape{0, 4}));
}

TEST(DetectionHeads, MaskHeadMatchesNaive) {
  const int64_t n = 3, C = 6, Cm = 5, K = 4, r = 6;
  std::vector<OwnedConv> convs;
  for (int i = 0; i < 4; ++i) convs.emplace_back(Cm, i == 0 ? C : Cm, 3, 800 + 2 * i);
  OwnedConv logits(K, Cm, 1, 820);
  Tensor up_w = random_tensor({Cm, Cm, 2, 2}, 830, -0.5f, 0.5f), up_b = random_tensor({Cm}, 831, -0.5f, 0.5f);
  heads::MaskHeadW w;
  for (auto& c : convs) w.convs.push_back(c.c);
  w.up_packed = heads::pack_deconv2x2(up_w.f32(), Cm, Cm);
  w.up_b = up_b.f32();
  w.up_cout = Cm;
  w.logits = logits.c;
  Tensor feats = random_tensor({n, C, r, r}, 840);
  Tensor labels = Tensor::empty({n}, DType::I64);
  const int64_t lab[3] = {2, 0, 3};
  std::copy(lab, lab + 3, labels.data<int64_t>());
  Tensor probs = heads::mask_head_probs(kCtx, feats, w, labels);
  Tensor ref = heads::ref::mask_head_logits(feats, w, up_w.f32());  // (n, K, 2r, 2r)
  ASSERT_EQ(probs.shape(), (Shape{n, 2 * r, 2 * r}));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t p = 0; p < 4 * r * r; ++p) {
      const float want = 1.0f / (1.0f + std::exp(-ref.f32()[(i * K + lab[i]) * 4 * r * r + p]));
      ASSERT_NEAR(probs.f32()[i * 4 * r * r + p], want, 1e-5) << i << " " << p;
    }
  labels.data<int64_t>()[1] = K;
  EXPECT_THROW(heads::mask_head_probs(kCtx, feats, w, labels), Error);
}

TEST(DetectionHeads, WindowedRleMatchesRleEncode) {
  std::mt19937 rng(3);
  for (auto [h, w] : std::vector<std::array<int64_t, 2>>{{1, 1}, {7, 5}, {40, 33}, {1, 50}}) {
    for (int trial = 0; trial < 6; ++trial) {
      std::uniform_int_distribution<int64_t> uy(-2, h + 2), ux(-2, w + 2);
      int64_t y0 = uy(rng), y1 = uy(rng), x0 = ux(rng), x1 = ux(rng);
      if (y0 > y1) std::swap(y0, y1);
      if (x0 > x1) std::swap(x0, x1);
      std::vector<uint8_t> m(static_cast<size_t>(h * w), 0);
      for (int64_t y = std::max<int64_t>(y0, 0); y < std::min(y1, h); ++y)
        for (int64_t x = std::max<int64_t>(x0, 0); x < std::min(x1, w); ++x) m[y * w + x] = (rng() % 3) != 0;
      if (trial == 0) std::fill(m.begin(), m.end(), 0);
      det::Rle want = det::rle_encode(m.data(), h, w);
      heads::RleCounts got = heads::rle_encode_window(m.data(), h, w, y0, y1, x0, x1);
      EXPECT_EQ(got.counts, want.counts) << h << "x" << w << " window " << y0 << ".." << y1 << ", " << x0 << ".." << x1;
    }
  }
}

}  // namespace
}  // namespace mambacv
