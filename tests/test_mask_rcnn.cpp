// Mask R-CNN end to end: the golden fixture (both weight files) by the set-matching rule of fixtures/README.md, the
// detection pipeline's rescale / pad arithmetic and the mapping back to the original image, threads sharing one
// Detector, and `mambacv detect --json` with a broken image among good ones.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "kernels/cpu_info.h"
#include "kernels/detection_ops.h"
#include "mambacv/detection.h"
#include "test_util.h"

namespace mambacv {
namespace {

namespace fs = std::filesystem;

const std::string kFixture = "det/maskrcnn_vmamba_mini.json";

double box_iou(const float* a, const float* b) {
  const double iw = std::max(0.0, static_cast<double>(std::min(a[2], b[2])) - std::max(a[0], b[0]));
  const double ih = std::max(0.0, static_cast<double>(std::min(a[3], b[3])) - std::max(a[1], b[1]));
  const double u = static_cast<double>(a[2] - a[0]) * (a[3] - a[1]) + static_cast<double>(b[2] - b[0]) * (b[3] - b[1]) -
                   iw * ih;
  return u > 0 ? iw * ih / u : 0.0;
}

// fixtures/README.md: a golden row is matched by an unused row of the same label (if labels are given) with IoU >= 0.9
// and |score difference| <= 0.01. Returns the matched row per golden row, or -1.
std::vector<int64_t> match_sets(const Tensor& golden, const Tensor& golden_labels, const Tensor& got,
                                const Tensor& got_labels) {
  std::vector<int64_t> match(static_cast<size_t>(golden.dim(0)), -1);
  std::vector<char> used(static_cast<size_t>(got.dim(0)), 0);
  for (int64_t i = 0; i < golden.dim(0); ++i) {
    const float* g = golden.f32() + i * 5;
    double best = -1;
    for (int64_t j = 0; j < got.dim(0); ++j) {
      const float* d = got.f32() + j * 5;
      if (used[static_cast<size_t>(j)] || std::fabs(g[4] - d[4]) > 0.01) continue;
      if (golden_labels.defined() && golden_labels.data<int64_t>()[i] != got_labels.data<int64_t>()[j]) continue;
      const double iou = box_iou(g, d);
      if (iou >= 0.9 && iou > best) best = iou, match[static_cast<size_t>(i)] = j;
    }
    if (match[static_cast<size_t>(i)] >= 0) used[static_cast<size_t>(match[static_cast<size_t>(i)])] = 1;
  }
  return match;
}

double matched_fraction(const std::vector<int64_t>& m) {
  if (m.empty()) return 1.0;
  return static_cast<double>(std::count_if(m.begin(), m.end(), [](int64_t v) { return v >= 0; })) / m.size();
}

void check_fixture(const std::string& weights) {
  const std::string json = test::fixture(kFixture);
  WeightFile golden = load_safetensors(test::fixture("det/maskrcnn_vmamba_mini.golden.safetensors"));
  const TensorMap& g = golden.tensors;
  Detector det = Detector::load(json, weights);
  EXPECT_EQ(det.num_classes(), 80);
  std::map<std::string, Tensor> out = det.forward_all(g.at("input"), 250, 300);

  for (const char* n : {"features.0", "features.1", "features.2", "features.3", "fpn.0", "fpn.1", "fpn.2", "fpn.3",
                        "fpn.4"}) {
    ASSERT_TRUE(out.count(n)) << n;
    ASSERT_EQ(out[n].shape(), g.at(n).shape()) << n;
    EXPECT_LE(compare(out[n], g.at(n)).rel_l2, 1e-4) << n;
  }
  std::vector<int64_t> pm = match_sets(g.at("proposals"), Tensor(), out.at("proposals"), Tensor());
  EXPECT_GE(matched_fraction(pm), 0.95) << "proposals";
  EXPECT_EQ(out.at("proposals").dim(0), g.at("proposals").dim(0));
  std::vector<int64_t> dm = match_sets(g.at("det_bboxes"), g.at("det_labels"), out.at("det_bboxes"),
                                       out.at("det_labels"));
  EXPECT_GE(matched_fraction(dm), 0.95) << "detections";

  // masks of the matched detections: IoU >= 0.9 (two empty masks are equal); pixel counts close
  const Tensor& gm = g.at("det_masks");
  const Tensor& om = out.at("det_masks");
  ASSERT_EQ(om.dim(1), 250);
  ASSERT_EQ(om.dim(2), 300);
  const int64_t HW = 250 * 300;
  int64_t g_px = 0, o_px = 0;
  for (size_t i = 0; i < dm.size(); ++i) {
    if (dm[i] < 0) continue;
    const auto* a = static_cast<const uint8_t*>(gm.raw()) + static_cast<int64_t>(i) * HW;
    const auto* b = static_cast<const uint8_t*>(om.raw()) + dm[i] * HW;
    int64_t inter = 0, uni = 0;
    for (int64_t p = 0; p < HW; ++p) {
      inter += a[p] && b[p];
      uni += a[p] || b[p];
      g_px += a[p] != 0;
      o_px += b[p] != 0;
    }
    EXPECT_GE(uni == 0 ? 1.0 : static_cast<double>(inter) / uni, 0.9) << "mask of golden detection " << i;
  }
  EXPECT_NEAR(static_cast<double>(o_px), static_cast<double>(g_px), 0.01 * g_px + 10);

  // the Detector API's result is the same as forward_all's, masks as RLE at img_shape
  DetectionResult r = det.detect(g.at("input"), 250, 300);
  ASSERT_EQ(static_cast<int64_t>(r.detections.size()), out.at("det_bboxes").dim(0));
  EXPECT_EQ(r.width, 300);
  EXPECT_EQ(r.height, 250);
  for (size_t i = 0; i < r.detections.size(); ++i) {
    const Detection& d = r.detections[i];
    for (int k = 0; k < 4; ++k) EXPECT_FLOAT_EQ(d.box[k], out.at("det_bboxes").f32()[i * 5 + k]);
    EXPECT_FLOAT_EQ(d.score, out.at("det_bboxes").f32()[i * 5 + 4]);
    EXPECT_EQ(d.label, out.at("det_labels").data<int64_t>()[i]);
    ASSERT_EQ(d.mask.height, 250);
    ASSERT_EQ(d.mask.width, 300);
    std::vector<uint8_t> bits = d.mask.decode();
    EXPECT_TRUE(std::equal(bits.begin(), bits.end(), static_cast<const uint8_t*>(om.raw()) + i * HW)) << i;
    det::Rle back = det::rle_decode_string(d.mask.coco_string(), 250, 300);
    EXPECT_EQ(back.counts, d.mask.counts);
  }
}

TEST(MaskRcnn, FixtureSafetensors) { check_fixture(test::fixture("det/maskrcnn_vmamba_mini.weights.safetensors")); }
TEST(MaskRcnn, FixturePth) { check_fixture(test::fixture("det/maskrcnn_vmamba_mini.pth")); }

TEST(MaskRcnn, VerifyCommandBothWeightFiles) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string json = test::fixture(kFixture);
  std::string out;
  EXPECT_EQ(test::run_command(test::cli_path() + " verify " + json, &out), 0) << out;
  EXPECT_NE(out.find("PASS"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(test::cli_path() + " verify " + json + " --weights " +
                                  test::fixture("det/maskrcnn_vmamba_mini.pth"),
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("masks"), std::string::npos) << out;
}

TEST(MaskRcnn, ConfigErrorsNameTheKey) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string dir = test::temp_dir("mask_rcnn_cfg");
  std::ifstream f(test::fixture(kFixture));
  nlohmann::json j = nlohmann::json::parse(f);
  j["config"]["neck"]["add_extra_convs"] = "on_input";
  std::ofstream(dir + "/bad.json") << j.dump();
  try {
    Detector::random(dir + "/bad.json");
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add_extra_convs"), std::string::npos) << e.what();
  }
  // strict weights: a missing head tensor is named
  TensorMap w = load_safetensors(test::fixture("det/maskrcnn_vmamba_mini.weights.safetensors")).tensors;
  w.erase("roi_head.mask_head.upsample.bias");
  try {
    Model::load(load_model_config(test::fixture(kFixture)), w);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("roi_head.mask_head.upsample.bias"), std::string::npos) << e.what();
  }
}

Image synthetic(int w, int h, int seed) {
  Image im;
  im.width = w;
  im.height = h;
  im.rgb.resize(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* p = im.pixel(x, y);
      p[0] = static_cast<uint8_t>((x * 7 + seed * 31) % 256);
      p[1] = static_cast<uint8_t>((y * 5 + (x / 9) * 40) % 256);
      p[2] = static_cast<uint8_t>(((x / 23 + y / 17) % 2) * 200 + seed);
    }
  return im;
}

// The mini fixture's detector with its trained weights.
Detector mini_detector() {
  return Detector::load(test::fixture(kFixture), test::fixture("det/maskrcnn_vmamba_mini.weights.safetensors"));
}

TEST(MaskRcnn, PipelineRescaleAndPadArithmetic) {
  struct Case {
    int w, h;
    int rw, rh, pw, ph;
  };
  // scale = min(1333 / long, 800 / short); side = int(side * scale + 0.5); pad up to a multiple of 32
  const Case cases[] = {{333, 251, 1061, 800, 1088, 800},  // 800/251 = 3.187 bounds: 333 * 3.187 = 1061.3
                        {251, 333, 800, 1061, 800, 1088},
                        {1, 1000, 1, 1333, 32, 1344},      // 1333/1000 bounds (800/1 is larger)
                        {1000, 1, 1333, 1, 1344, 32},
                        {1333, 800, 1333, 800, 1344, 800},
                        {640, 480, 1067, 800, 1088, 800}};
  for (const Case& c : cases) {
    DetectionInput d = prepare_detection_input(synthetic(c.w, c.h, 1));
    EXPECT_EQ(d.width, c.rw) << c.w << "x" << c.h;
    EXPECT_EQ(d.height, c.rh) << c.w << "x" << c.h;
    EXPECT_EQ(d.pad_width, c.pw) << c.w << "x" << c.h;
    EXPECT_EQ(d.pad_height, c.ph) << c.w << "x" << c.h;
    EXPECT_EQ(d.input.shape(), (Shape{1, 3, c.ph, c.pw}));
    EXPECT_FLOAT_EQ(d.scale_x, static_cast<float>(static_cast<double>(c.rw) / c.w));
    EXPECT_FLOAT_EQ(d.scale_y, static_cast<float>(static_cast<double>(c.rh) / c.h));
  }
}

TEST(MaskRcnn, BoxesAndMasksMappedBackToTheImage) {
  MAMBACV_REQUIRE_FIXTURES();
  Detector det = mini_detector();
  DetectOptions opt;
  opt.score_thr = 0.0f;
  opt.max_per_img = 30;
  opt.max_long = 640, opt.max_short = 480;  // the mapping does not depend on the scale (a smaller, faster run)
  const Image im = synthetic(333, 251, 2);
  DetectionResult r = det.detect(im, opt);
  DetectionInput d = prepare_detection_input(im, opt.max_long, opt.max_short);
  DetectionResult net = det.detect(d.input, d.height, d.width, opt);  // the same network run, rescale=False
  EXPECT_EQ(r.width, 333);
  EXPECT_EQ(r.height, 251);
  EXPECT_EQ(net.width, d.width);
  ASSERT_EQ(r.detections.size(), net.detections.size());
  ASSERT_GT(r.detections.size(), 0u);
  int64_t with_pixels = 0;
  for (size_t i = 0; i < r.detections.size(); ++i) {
    const Detection& a = r.detections[i];
    const Detection& b = net.detections[i];
    EXPECT_EQ(a.label, b.label);
    EXPECT_FLOAT_EQ(a.score, b.score);
    const float s[4] = {d.scale_x, d.scale_y, d.scale_x, d.scale_y}, lim[4] = {333, 251, 333, 251};
    for (int k = 0; k < 4; ++k) {
      EXPECT_FLOAT_EQ(a.box[k], std::min(std::max(b.box[k] / s[k], 0.0f), lim[k])) << i << " " << k;
      EXPECT_GE(a.box[k], 0.0f);
      EXPECT_LE(a.box[k], lim[k]);
    }
    EXPECT_EQ(a.mask.height, 251);
    EXPECT_EQ(a.mask.width, 333);
    with_pixels += a.mask.area() > 0;
    // the mask's pixels lie in (about) the box: the paste window is the box grown by one pixel
    std::vector<uint8_t> m = a.mask.decode();
    for (int y = 0; y < 251; ++y)
      for (int x = 0; x < 333; ++x)
        if (m[static_cast<size_t>(y) * 333 + x]) {
          EXPECT_GE(x, std::floor(a.box[0]) - 1);
          EXPECT_LT(x, std::ceil(a.box[2]) + 1);
          EXPECT_GE(y, std::floor(a.box[1]) - 1);
          EXPECT_LT(y, std::ceil(a.box[3]) + 1);
        }
  }
  EXPECT_GT(with_pixels, 0);

  // extreme aspect ratios still run and stay inside the image
  for (auto [w, h] : std::vector<std::array<int, 2>>{{1, 1000}, {1000, 1}}) {
    DetectionResult e = det.detect(synthetic(w, h, 3), opt);
    EXPECT_EQ(e.width, w);
    EXPECT_EQ(e.height, h);
    for (const Detection& x : e.detections) {
      EXPECT_LE(x.box[2], static_cast<float>(w));
      EXPECT_LE(x.box[3], static_cast<float>(h));
      EXPECT_EQ(x.mask.width, w);
      EXPECT_EQ(x.mask.height, h);
    }
  }
}

// Detector::profile traces every part of a detection: the backbone's stages and FPN (their FLOPs are what
// flops_per_image counts), then the RPN, the box head and, with boxes kept, the mask head.
TEST(MaskRcnn, ProfileTracesEveryPartOfADetection) {
  MAMBACV_REQUIRE_FIXTURES();
  Detector det = mini_detector();
  DetectOptions opt;
  opt.score_thr = 0.0f;
  opt.max_per_img = 30;
  opt.max_long = 320, opt.max_short = 240;
  const Image im = synthetic(333, 251, 2);
  ASSERT_FALSE(det.detect(im, opt).detections.empty());
  const DetectionInput d = prepare_detection_input(im, opt.max_long, opt.max_short);
  for (int pass = 0; pass < 2; ++pass) {
    const std::vector<OpStat> ops = pass == 0 ? det.profile(im, opt) : det.profile(d.input, d.height, d.width, opt);
    std::map<std::string, double> flops, seconds;
    double total = 0;
    for (const OpStat& o : ops) {
      const bool head = o.stage == "fpn" || o.stage == "rpn" || o.stage == "box_head" || o.stage == "mask_head";
      const std::string part = head ? o.stage : "backbone";
      flops[part] += o.flops, seconds[part] += o.seconds, total += o.flops;
      EXPECT_GE(o.calls, 1) << o.stage << " " << o.op;
    }
    for (const char* part : {"backbone", "fpn", "rpn", "box_head", "mask_head"}) {
      EXPECT_GT(flops[part], 0.0) << part << " (pass " << pass << ")";
      EXPECT_GT(seconds[part], 0.0) << part << " (pass " << pass << ")";
    }
    const double trunk = det.model().flops_per_image(static_cast<int>(d.input.dim(2)), static_cast<int>(d.input.dim(3)));
    EXPECT_NEAR(flops["backbone"] + flops["fpn"], trunk, 1e-9 * trunk) << pass;
    EXPECT_GT(total, trunk + flops["rpn"] * 0.999) << pass;
  }
  try {
    det.profile(Tensor::zeros({2, 3, 64, 64}), 64, 64, opt);
    ADD_FAILURE() << "a batch of 2 was profiled";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("profile: expected a (1, 3, H, W) input"), std::string::npos) << e.what();
  }
}

// `detect --profile` ends with the traced pass's per-op table: every part's rows and the floor line.
TEST(MaskRcnn, CliProfilePrintsThePerOpTable) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string dir = test::temp_dir("mask_rcnn_cli_profile");
  save_image(dir + "/a.png", synthetic(333, 251, 2));
  std::string out;
  const int rc = test::run_command(test::cli_path() + " detect --model " + test::fixture(kFixture) + " --weights " +
                                       test::fixture("det/maskrcnn_vmamba_mini.weights.safetensors") +
                                       " --score-thr 0 --max-size 320,240 --profile " + dir + "/a.png 2>&1",
                                   &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("per op (one traced pass of the first image)"), std::string::npos) << out;
  for (const char* row : {"\n  fpn ", "\n  rpn ", "\n  box_head ", "\n  mask_head ", "\n  stage.0 "})
    EXPECT_NE(out.find(row), std::string::npos) << row << "\n" << out;
  EXPECT_NE(out.find("floor (every op at its roofline"), std::string::npos) << out;
  EXPECT_NE(out.find("profile mean over 1 image(s)"), std::string::npos) << out;
}

// detect(images): the images of one padded size share a forward, and every result equals a one-image call.
TEST(MaskRcnn, BatchedDetectEqualsOneImageAtATime) {
  MAMBACV_REQUIRE_FIXTURES();
  Detector det = mini_detector();
  DetectOptions opt;
  opt.score_thr = 0.0f;
  opt.max_per_img = 20;
  opt.max_long = 192, opt.max_short = 160;
  // 333x251 and 666x502 both rescale to 192x145 (padded 192x160); 200x300 to 128x192 (padded 128x192)
  const std::vector<Image> images = {synthetic(333, 251, 2), synthetic(200, 300, 3), synthetic(333, 251, 5),
                                     synthetic(666, 502, 7)};
  const std::vector<DetectionResult> batched = det.detect(images, opt);
  ASSERT_EQ(batched.size(), images.size());
  // bit for bit with the AVX2 / AVX-512 GEMM; the generic fallback (Eigen) blocks its products by their row
  // count, so there a batch agrees to float rounding
  const bool exact = cpu::cpu_isa() != cpu::Isa::Generic;
  size_t compared = 0;
  for (size_t i = 0; i < images.size(); ++i) {
    const DetectionResult one = det.detect(images[i], opt);
    EXPECT_EQ(batched[i].width, images[i].width);
    EXPECT_EQ(batched[i].height, images[i].height);
    ASSERT_EQ(batched[i].detections.size(), one.detections.size()) << i;
    // rounding may swap detections of near-equal scores: without exactness they are compared by (label, score)
    auto canonical = [exact](std::vector<Detection> v) {
      if (!exact)
        std::stable_sort(v.begin(), v.end(), [](const Detection& x, const Detection& y) {
          return x.label != y.label ? x.label < y.label : x.score > y.score;
        });
      return v;
    };
    const std::vector<Detection> got = canonical(batched[i].detections), want = canonical(one.detections);
    for (size_t k = 0; k < want.size(); ++k, ++compared) {
      const Detection &a = got[k], &b = want[k];
      EXPECT_EQ(a.label, b.label) << i << " " << k;
      EXPECT_NEAR(a.score, b.score, exact ? 0.0 : 1e-5) << i << " " << k;
      for (int c = 0; c < 4; ++c) EXPECT_NEAR(a.box[c], b.box[c], exact ? 0.0 : 1e-2) << i << " " << k;
      if (exact) {
        EXPECT_EQ(a.mask.counts, b.mask.counts) << i << " " << k;
      } else {  // a few pixels on the mask's edge may flip
        const std::vector<uint8_t> ma = a.mask.decode(), mb = b.mask.decode();
        int64_t differ = 0;
        for (size_t p = 0; p < ma.size(); ++p) differ += ma[p] != mb[p];
        EXPECT_LE(differ, 2 + b.mask.area() / 100) << i << " " << k;
      }
    }
  }
  EXPECT_GT(compared, 10u);
  // images 0, 2 and 3 ran in one forward (one backbone time for the three), image 1 in another
  EXPECT_EQ(batched[0].timings.backbone_ms, batched[2].timings.backbone_ms);
  EXPECT_EQ(batched[0].timings.backbone_ms, batched[3].timings.backbone_ms);
  EXPECT_NE(batched[0].timings.backbone_ms, batched[1].timings.backbone_ms);
  EXPECT_TRUE(det.detect(std::vector<Image>{}, opt).empty());
}

TEST(MaskRcnn, ThreadsShareOneDetector) {
  MAMBACV_REQUIRE_FIXTURES();
  Detector det = mini_detector();
  Tensor x = load_safetensors(test::fixture("det/maskrcnn_vmamba_mini.golden.safetensors")).tensors.at("input");
  DetectionResult serial = det.detect(x, 250, 300);
  std::vector<DetectionResult> res(3);
  std::vector<std::thread> th;
  for (size_t t = 0; t < res.size(); ++t) th.emplace_back([&, t] { res[t] = det.detect(x, 250, 300); });
  for (auto& t : th) t.join();
  for (const auto& r : res) {
    ASSERT_EQ(r.detections.size(), serial.detections.size());
    for (size_t i = 0; i < r.detections.size(); ++i) {
      EXPECT_EQ(r.detections[i].label, serial.detections[i].label);
      EXPECT_NEAR(r.detections[i].score, serial.detections[i].score, 1e-6);
      EXPECT_EQ(r.detections[i].mask.counts, serial.detections[i].mask.counts);
    }
  }
}

// `detect --batch N` prints what --batch 1 prints, in input order, a broken image among the batched ones.
TEST(MaskRcnn, CliBatchPrintsWhatOneAtATimePrints) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string dir = test::temp_dir("mask_rcnn_cli_batch");
  const std::vector<std::array<int, 2>> sizes = {{333, 251}, {200, 300}, {333, 251}, {666, 502}, {120, 90}};
  std::ofstream list(dir + "/list.txt");
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::string path = dir + "/img" + std::to_string(i) + ".png";
    save_image(path, synthetic(sizes[i][0], sizes[i][1], static_cast<int>(i)));
    list << path << "\n";
    if (i == 2) {
      std::ofstream(dir + "/broken.jpg") << "not a JPEG";
      list << dir + "/broken.jpg\n";
    }
  }
  list.close();
  auto run = [&](int batch) {
    std::string out;
    const int rc = test::run_command(test::cli_path() + " detect --model " + test::fixture(kFixture) + " --weights " +
                                         test::fixture("det/maskrcnn_vmamba_mini.weights.safetensors") +
                                         " --json --score-thr 0.05 --max-size 192,160 --batch " +
                                         std::to_string(batch) + " @" + dir + "/list.txt 2>/dev/null",
                                     &out);
    EXPECT_EQ(rc, 1) << out;  // the broken image
    return test::json_lines(out);
  };
  const std::vector<nlohmann::json> one = run(1), four = run(4);
  ASSERT_EQ(one.size(), sizes.size() + 1);
  ASSERT_EQ(four.size(), one.size());
  size_t detections = 0;
  for (size_t i = 0; i < one.size(); ++i) {
    EXPECT_EQ(four[i]["image"], one[i]["image"]) << i;
    EXPECT_EQ(four[i].contains("error"), one[i].contains("error")) << i;
    if (one[i].contains("error")) continue;
    ASSERT_EQ(four[i]["detections"].size(), one[i]["detections"].size()) << i;
    // exact but for the generic GEMM's rounding, which may swap near-equal scores (see
    // BatchedDetectEqualsOneImageAtATime): then compared by (label, score)
    const bool exact = cpu::cpu_isa() != cpu::Isa::Generic;
    auto canonical = [exact](const nlohmann::json& arr) {
      std::vector<nlohmann::json> v(arr.begin(), arr.end());
      if (!exact)
        std::stable_sort(v.begin(), v.end(), [](const nlohmann::json& x, const nlohmann::json& y) {
          return x["label"] != y["label"] ? x["label"] < y["label"] : x["score"] > y["score"];
        });
      return v;
    };
    const std::vector<nlohmann::json> got = canonical(four[i]["detections"]), want = canonical(one[i]["detections"]);
    for (size_t k = 0; k < want.size(); ++k, ++detections) {
      const auto &a = got[k], &b = want[k];
      EXPECT_EQ(a["label"], b["label"]);
      EXPECT_NEAR(a["score"].get<double>(), b["score"].get<double>(), exact ? 0.0 : 1e-5);
      if (exact) {
        EXPECT_EQ(a["mask"]["counts"], b["mask"]["counts"]);
      }
    }
  }
  EXPECT_GT(detections, 5u);
  EXPECT_TRUE(one[3].contains("error")) << one[3].dump();
  std::string out;
  EXPECT_EQ(test::run_command(test::cli_path() + " detect --model " + test::fixture(kFixture) +
                                  " --random-weights --batch 0 x.png",
                              &out),
            2)
      << out;
  EXPECT_NE(out.find("--batch"), std::string::npos) << out;
}

TEST(MaskRcnn, CliJsonReportsBrokenImagesAndDetectsTheRest) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string dir = test::temp_dir("mask_rcnn_cli");
  fs::copy_file(test::fixture("images/chelsea.png"), dir + "/a_chelsea.png");
  fs::copy_file(test::fixture("images/coffee_small.jpg"), dir + "/c_coffee.jpg");
  std::ofstream(dir + "/b_broken.jpg") << "this is not a JPEG";
  const std::string draw = test::temp_dir("mask_rcnn_cli_draw");
  std::string out;
  const int rc = test::run_command(test::cli_path() + " detect --model " + test::fixture(kFixture) + " --weights " +
                                       test::fixture("det/maskrcnn_vmamba_mini.weights.safetensors") +
                                       " --json --score-thr 0.3 --draw " + draw + " " + dir,
                                   &out);
  EXPECT_NE(rc, 0) << out;
  std::istringstream lines(out);
  std::string line;
  std::vector<nlohmann::ordered_json> objs;
  while (std::getline(lines, line))
    if (!line.empty() && line[0] == '{') objs.push_back(nlohmann::ordered_json::parse(line));
  ASSERT_EQ(objs.size(), 3u) << out;
  for (const auto& o : objs) {
    ASSERT_EQ(o.begin().key(), "image") << o.dump();
    const std::string img = o["image"];
    if (img.find("broken") != std::string::npos) {
      EXPECT_TRUE(o.contains("error")) << o.dump();
      EXPECT_FALSE(o.contains("detections"));
      continue;
    }
    ASSERT_TRUE(o.contains("detections")) << o.dump();
    const Image im = load_image(img);
    EXPECT_EQ(o["width"], im.width);
    EXPECT_EQ(o["height"], im.height);
    ASSERT_TRUE(o["detections"].is_array());
    EXPECT_GT(o["detections"].size(), 0u) << img;
    for (const auto& d : o["detections"]) {
      EXPECT_GE(d["score"].get<double>(), 0.3);
      EXPECT_TRUE(d["name"].is_null() || d["name"].is_string());
      EXPECT_LE(d["box"][2].get<double>(), im.width);
      EXPECT_LE(d["box"][3].get<double>(), im.height);
      ASSERT_EQ(d["mask"]["size"][0], im.height);
      ASSERT_EQ(d["mask"]["size"][1], im.width);
      det::Rle r = det::rle_decode_string(d["mask"]["counts"].get<std::string>(), im.height, im.width);
      EXPECT_EQ(r.h, im.height);
    }
  }
  EXPECT_TRUE(fs::exists(draw + "/a_chelsea.png")) << "PNG input is drawn as PNG";
  EXPECT_TRUE(fs::exists(draw + "/c_coffee.jpg"));
  EXPECT_FALSE(fs::exists(draw + "/b_broken.jpg"));
  EXPECT_NE(out.find("a_chelsea.png -> " + draw + "/a_chelsea.png"), std::string::npos) << out;
}

}  // namespace
}  // namespace mambacv
