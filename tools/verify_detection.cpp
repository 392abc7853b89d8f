// mambacv verify for arch "mask_rcnn" fixtures (called from cmd_verify): features.i and fpn.i by relative L2,
// proposals and detections by the set-matching rule of ../shared/fixtures/README.md, masks by IoU.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "mambacv/detection.h"
#include "tools/commands.h"

namespace mambacv::cli {

namespace {
constexpr double kMinIou = 0.9, kMaxScoreDiff = 0.01, kMinMatched = 0.95, kMinMaskIou = 0.9;

double box_iou(const float* a, const float* b) {
  const double iw = std::max(0.0, static_cast<double>(std::min(a[2], b[2])) - std::max(a[0], b[0]));
  const double ih = std::max(0.0, static_cast<double>(std::min(a[3], b[3])) - std::max(a[1], b[1]));
  const double inter = iw * ih;
  const double u = static_cast<double>(a[2] - a[0]) * (a[3] - a[1]) + static_cast<double>(b[2] - b[0]) * (b[3] - b[1]) -
                   inter;
  return u > 0 ? inter / u : (inter == 0 && a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] ? 1.0 : 0.0);
}
}  // namespace

std::vector<int64_t> match_detection_sets(const Tensor& golden, const Tensor& golden_labels, const Tensor& got,
                                          const Tensor& got_labels) {
  // golden (M, 5), got (N, 5): x1 y1 x2 y2 score; labels (M) / (N) i64 or undefined (proposals).
  // Greedy one-to-one: each golden row, in order, takes the unused row of the same label with IoU >= 0.9 and
  // |score difference| <= 0.01 that overlaps it most. Returns, per golden row, the matched row or -1.
  const int64_t M = golden.dim(0), N = got.dim(0);
  std::vector<int64_t> match(static_cast<size_t>(M), -1);
  std::vector<char> used(static_cast<size_t>(N), 0);
  for (int64_t i = 0; i < M; ++i) {
    const float* g = golden.f32() + i * golden.dim(1);
    double best = -1;
    for (int64_t j = 0; j < N; ++j) {
      if (used[static_cast<size_t>(j)]) continue;
      if (golden_labels.defined() && golden_labels.data<int64_t>()[i] != got_labels.data<int64_t>()[j]) continue;
      const float* d = got.f32() + j * got.dim(1);
      if (std::fabs(static_cast<double>(g[4]) - d[4]) > kMaxScoreDiff) continue;
      const double iou = box_iou(g, d);
      if (iou >= kMinIou && iou > best) {
        best = iou;
        match[static_cast<size_t>(i)] = j;
      }
    }
    if (match[static_cast<size_t>(i)] >= 0) used[static_cast<size_t>(match[static_cast<size_t>(i)])] = 1;
  }
  return match;
}

int verify_detection_fixture(const std::string& fixture, const std::string& weights_path, const TensorMap& golden,
                             const Options& opt) {
  nlohmann::json j;
  {
    std::FILE* f = std::fopen(fixture.c_str(), "rb");
    MAMBACV_CHECK(f, "fixture " << fixture << ": cannot open the file");
    std::string s;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    std::fclose(f);
    j = nlohmann::json::parse(s);
  }
  MAMBACV_CHECK(j.contains("img_shape") && j["img_shape"].is_array() && j["img_shape"].size() >= 2,
                "fixture " << fixture << ": a mask_rcnn fixture needs \"img_shape\": [height, width]");
  const int img_h = j["img_shape"][0].get<int>(), img_w = j["img_shape"][1].get<int>();
  auto need = [&](const char* n) -> const Tensor& {
    auto it = golden.find(n);
    MAMBACV_CHECK(it != golden.end(), "fixture " << fixture << ": the golden file has no tensor \"" << n << "\"");
    return it->second;
  };
  const Tensor x = need("input").to(DType::F32, true);

  Detector det = Detector::load(fixture, weights_path, opt);
  std::printf("fixture  %s\nweights  %s\nmodel    mask_rcnn  device %s  dtype %s  core %s  img_shape %dx%d\n",
              fixture.c_str(), weights_path.c_str(), device_name(opt.device), dtype_name(opt.dtype),
              core_name(opt.core), img_h, img_w);
  std::map<std::string, Tensor> outs = det.forward_all(x, img_h, img_w);

  const double tol = opt.dtype == DType::F32 ? 1e-4 : opt.dtype == DType::F16 ? 1e-2 : 4e-2;
  bool ok = true;
  int compared = 0;
  std::printf("%-14s %-22s %12s %12s  %s\n", "tensor", "shape", "rel_l2", "max_abs", "result");
  for (const auto& [name, ref] : golden) {
    if (name.rfind("features.", 0) != 0 && name.rfind("fpn.", 0) != 0) continue;
    auto it = outs.find(name);
    if (it == outs.end() || it->second.shape() != ref.shape()) {
      std::printf("%-14s %-22s %12s %12s  FAIL (%s)\n", name.c_str(), shape_str(ref.shape()).c_str(), "-", "-",
                  it == outs.end() ? "not produced" : ("shape " + shape_str(it->second.shape())).c_str());
      ok = false;
      continue;
    }
    Compare c = compare(it->second, ref.to(DType::F32));
    const bool pass = c.finite && c.rel_l2 <= tol;
    ok = ok && pass;
    ++compared;
    std::printf("%-14s %-22s %12.3e %12.3e  %s\n", name.c_str(), shape_str(ref.shape()).c_str(), c.rel_l2, c.max_abs,
                pass ? "pass" : "FAIL");
  }

  // proposals and detections as sets
  auto set_line = [&](const char* name, const Tensor& g, const Tensor& gl, const Tensor& o, const Tensor& ol,
                      std::vector<int64_t>* match_out) {
    std::vector<int64_t> match = match_detection_sets(g, gl, o, ol);
    const int64_t matched = std::count_if(match.begin(), match.end(), [](int64_t v) { return v >= 0; });
    const double frac = g.dim(0) ? static_cast<double>(matched) / g.dim(0) : 1.0;
    const bool pass = frac >= kMinMatched;
    ok = ok && pass;
    ++compared;
    std::printf("%-14s golden %5lld  ours %5lld  matched %5lld (%.1f%%, need %.0f%%: same %sIoU >= %.1f, |dscore| <= "
                "%.2f)  %s\n",
                name, static_cast<long long>(g.dim(0)), static_cast<long long>(o.dim(0)),
                static_cast<long long>(matched), 100.0 * frac, 100.0 * kMinMatched, gl.defined() ? "label, " : "",
                kMinIou, kMaxScoreDiff, pass ? "pass" : "FAIL");
    if (match_out) *match_out = match;
  };
  set_line("proposals", need("proposals"), Tensor(), outs.at("proposals"), Tensor(), nullptr);
  std::vector<int64_t> match;
  const Tensor& g_labels = need("det_labels");
  set_line("detections", need("det_bboxes"), g_labels.to(DType::I64), outs.at("det_bboxes"), outs.at("det_labels"),
           &match);

  // masks of the matched detections
  auto gm_it = golden.find("det_masks");
  if (gm_it != golden.end()) {
    const Tensor& gm = gm_it->second;
    const Tensor& om = outs.at("det_masks");
    const int64_t H = gm.dim(1), W = gm.dim(2);
    MAMBACV_CHECK(om.dim(1) == H && om.dim(2) == W,
                  "det_masks: ours are " << om.str() << ", the golden masks " << gm.str());
    int64_t pairs = 0, good = 0, g_px = 0, o_px = 0;
    double worst = 1.0;
    const auto* gp = static_cast<const uint8_t*>(gm.raw());
    const auto* op = static_cast<const uint8_t*>(om.raw());
    for (size_t i = 0; i < match.size(); ++i) {
      if (match[i] < 0) continue;
      int64_t inter = 0, uni = 0, a = 0, b = 0;
      const uint8_t* g = gp + static_cast<int64_t>(i) * H * W;
      const uint8_t* o = op + match[i] * H * W;
      for (int64_t p = 0; p < H * W; ++p) {
        const bool u = g[p] != 0, v = o[p] != 0;
        inter += u && v;
        uni += u || v;
        a += u;
        b += v;
      }
      const double iou = uni == 0 ? 1.0 : static_cast<double>(inter) / uni;
      worst = std::min(worst, iou);
      ++pairs;
      good += iou >= kMinMaskIou;
      g_px += a;
      o_px += b;
    }
    const bool pass = good == pairs;
    ok = ok && pass;
    ++compared;
    std::printf("%-14s matched pairs %lld, IoU >= %.1f: %lld, worst IoU %.4f, pixels golden %lld ours %lld  %s\n",
                "masks", static_cast<long long>(pairs), kMinMaskIou, static_cast<long long>(good), worst,
                static_cast<long long>(g_px), static_cast<long long>(o_px), pass ? "pass" : "FAIL");
  }
  std::printf("%s: %d check(s), tolerance %.0e (%s) on feature maps\n", ok ? "PASS" : "FAIL", compared, tol,
              dtype_name(opt.dtype));
  return ok ? 0 : 1;
}

}  // namespace mambacv::cli
