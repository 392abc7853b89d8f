// vision/detector.cpp - the public Detector (mambacv/detection.h) over the "mask_rcnn" Network (vision/mask_rcnn.cpp).
#include <chrono>
#include <cstring>

#include "kernels/detection_ops.h"
#include "mambacv/detection.h"
#include "vision/mask_rcnn.h"

namespace mambacv {

namespace {
double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

det::Rle to_rle(const InstanceMask& m) {
  det::Rle r;
  r.h = m.height;
  r.w = m.width;
  r.counts = m.counts;
  return r;
}

void check_options(const DetectOptions& o) {
  MAMBACV_CHECK(o.score_thr < 0 || o.score_thr <= 1,
                "detect: score_thr must be in [0, 1] (or < 0 for the config's), got " << o.score_thr);
}

detail::DetectionCall make_request(const DetectOptions& o) {
  detail::DetectionCall r;
  r.score_thr = o.score_thr;
  r.max_per_img = o.max_per_img;
  r.masks = o.masks;
  return r;
}

// The request entry of one prepared image: boxes and masks mapped back to the decoded image (rescale=True).
detail::MaskRcnnImage image_entry(const DetectionInput& in) {
  return {in.height, in.width, true, in.orig_height, in.orig_width, in.scale_x, in.scale_y};
}

// The request entry of a prepared input whose unpadded content is h x w: results refer to it (rescale=False).
detail::MaskRcnnImage unscaled_entry(int h, int w) { return {h, w, false, h, w, 1.0f, 1.0f}; }

void check_single_input(const char* what, const Tensor& input) {
  MAMBACV_CHECK(input.defined() && input.ndim() == 4 && input.dim(0) == 1,
                what << ": expected a (1, 3, H, W) input, got " << (input.defined() ? input.str() : "an empty tensor"));
}

DetectionResult to_result(const detail::MaskRcnnImageOut& o, const detail::DetectionCall& r) {
  DetectionResult res;
  res.width = static_cast<int>(o.out_w);
  res.height = static_cast<int>(o.out_h);
  const int64_t m = o.dets.size();
  for (int64_t i = 0; i < m; ++i) {
    Detection d;
    for (int j = 0; j < 4; ++j) d.box[static_cast<size_t>(j)] = o.dets.boxes.f32()[i * 4 + j];
    d.score = o.dets.scores.f32()[i];
    d.label = static_cast<int>(o.dets.labels.data<int64_t>()[i]);
    if (i < static_cast<int64_t>(o.masks.size())) {
      d.mask.height = static_cast<int>(o.masks[static_cast<size_t>(i)].h);
      d.mask.width = static_cast<int>(o.masks[static_cast<size_t>(i)].w);
      d.mask.counts = o.masks[static_cast<size_t>(i)].counts;
    }
    res.detections.push_back(std::move(d));
  }
  res.timings.backbone_ms = r.backbone_ms;
  res.timings.fpn_ms = r.fpn_ms;
  res.timings.rpn_ms = o.rpn_ms;
  res.timings.box_ms = o.box_ms;
  res.timings.mask_ms = o.mask_ms;
  return res;
}
}  // namespace

int64_t InstanceMask::area() const {
  int64_t a = 0;
  for (size_t i = 1; i < counts.size(); i += 2) a += counts[i];
  return a;
}

std::vector<uint8_t> InstanceMask::decode() const {
  if (counts.empty()) return std::vector<uint8_t>(static_cast<size_t>(height) * width, 0);
  Tensor t = det::rle_decode(to_rle(*this));
  const auto* p = static_cast<const uint8_t*>(t.raw());
  return std::vector<uint8_t>(p, p + t.numel());
}

std::string InstanceMask::coco_string() const {
  if (counts.empty()) {  // no mask computed: the encoding of an all-zero mask
    det::Rle r;
    r.h = height;
    r.w = width;
    r.counts = {static_cast<uint32_t>(static_cast<int64_t>(height) * width)};
    return det::rle_to_string(r);
  }
  return det::rle_to_string(to_rle(*this));
}

Detector::Detector(Model model, std::vector<std::string> class_names)
    : model_(std::move(model)), class_names_(std::move(class_names)) {
  MAMBACV_CHECK(model_.arch() == "mask_rcnn",
                "Detector: the model's arch is \"" << model_.arch() << "\", expected \"mask_rcnn\"");
}

Detector Detector::load(const std::string& config, const std::string& weights, const Options& opt) {
  ModelConfig cfg = load_model_config(config);
  MAMBACV_CHECK(cfg.arch == "mask_rcnn", "Detector: config " << cfg.path << " has arch \"" << cfg.arch
                                                             << "\", expected \"mask_rcnn\"");
  Model m = Model::load(cfg.path, weights, opt);
  Detector d(std::move(m));
  d.class_names_ = load_labels(cfg, d.num_classes());
  return d;
}

Detector Detector::random(const std::string& config, const Options& opt, uint64_t seed) {
  ModelConfig cfg = load_model_config(config);
  MAMBACV_CHECK(cfg.arch == "mask_rcnn", "Detector: config " << cfg.path << " has arch \"" << cfg.arch
                                                             << "\", expected \"mask_rcnn\"");
  Detector d(Model::random(cfg, opt, seed));
  d.class_names_ = load_labels(cfg, d.num_classes());
  return d;
}

int Detector::num_classes() const { return detail::detection_classes(model_.parameter_specs()); }

std::vector<DetectionResult> Detector::detect_batch(const Tensor& input, const std::vector<std::array<int, 2>>& shapes,
                                                    const DetectOptions& opt) const {
  check_options(opt);
  MAMBACV_CHECK(input.defined() && input.ndim() == 4,
                "detect: expected a (B, 3, H, W) input, got " << (input.defined() ? input.str() : "an empty tensor"));
  MAMBACV_CHECK(static_cast<int64_t>(shapes.size()) == input.dim(0),
                "detect: " << shapes.size() << " image shapes for a batch of " << input.dim(0));
  const double t0 = now_ms();
  detail::DetectionCall req = make_request(opt);
  for (const auto& s : shapes) req.images.push_back(unscaled_entry(s[0], s[1]));
  model_.run(input, {"*"}, &req);
  std::vector<DetectionResult> out;
  for (const auto& o : req.out) out.push_back(to_result(o, req));
  for (auto& r : out) r.timings.total_ms = now_ms() - t0;
  return out;
}

DetectionResult Detector::detect(const Tensor& input, int img_height, int img_width, const DetectOptions& opt) const {
  check_single_input("detect", input);
  return detect_batch(input, {{img_height, img_width}}, opt)[0];
}

DetectionResult Detector::detect(const Image& image, const DetectOptions& opt) const {
  std::vector<DetectionResult> r = detect_images({&image}, opt);
  return std::move(r[0]);
}

std::vector<DetectionResult> Detector::detect(const std::vector<Image>& images, const DetectOptions& opt) const {
  std::vector<const Image*> ptrs;
  for (const Image& image : images) ptrs.push_back(&image);
  return detect_images(ptrs, opt);
}

std::vector<DetectionResult> Detector::detect_images(const std::vector<const Image*>& images,
                                                     const DetectOptions& opt) const {
  check_options(opt);
  std::vector<DetectionResult> results(images.size());
  std::vector<DetectionInput> inputs;
  std::vector<double> prep_ms;
  for (const Image* image : images) {
    const double t0 = now_ms();
    inputs.push_back(prepare_detection_input(*image, opt.max_long, opt.max_short, 32));  // (1, 3, pad_h, pad_w)
    prep_ms.push_back(now_ms() - t0);
  }
  // one forward per padded size, in the order of first appearance; the images of a group share the backbone and
  // FPN pass, and no image is padded beyond its own size, so each result equals a one-image call
  std::vector<bool> done(images.size(), false);
  for (size_t first = 0; first < images.size(); ++first) {
    if (done[first]) continue;
    const int64_t ph = inputs[first].pad_height, pw = inputs[first].pad_width;
    std::vector<size_t> group;
    for (size_t i = first; i < images.size(); ++i)
      if (!done[i] && inputs[i].pad_height == ph && inputs[i].pad_width == pw) group.push_back(i), done[i] = true;
    const double t0 = now_ms();
    const int64_t n = static_cast<int64_t>(group.size()), per_image = 3 * ph * pw;
    Tensor batch = n == 1 ? inputs[first].input : Tensor::empty({n, 3, ph, pw});  // (n, 3, pad_h, pad_w)
    detail::DetectionCall req = make_request(opt);
    for (int64_t k = 0; k < n; ++k) {
      const DetectionInput& in = inputs[group[static_cast<size_t>(k)]];
      if (n > 1) std::memcpy(batch.f32() + k * per_image, in.input.f32(), static_cast<size_t>(per_image) * sizeof(float));
      req.images.push_back(image_entry(in));
    }
    model_.run(batch, {"*"}, &req);
    MAMBACV_CHECK(static_cast<int64_t>(req.out.size()) == n,
                  "detect: the network returned " << req.out.size() << " results for " << n << " image(s)");
    // each image's share of the forward: the shared backbone and FPN pass split evenly, its own heads
    const double forward_ms = (now_ms() - t0) / static_cast<double>(n);
    for (int64_t k = 0; k < n; ++k) {
      const size_t i = group[static_cast<size_t>(k)];
      results[i] = to_result(req.out[static_cast<size_t>(k)], req);
      results[i].timings.backbone_ms /= static_cast<double>(n);
      results[i].timings.fpn_ms /= static_cast<double>(n);
      results[i].timings.preprocess_ms = prep_ms[i];
      results[i].timings.total_ms = prep_ms[i] + forward_ms;
    }
  }
  return results;
}

std::vector<OpStat> Detector::profile(const Image& image, const DetectOptions& opt) const {
  check_options(opt);
  const DetectionInput in = prepare_detection_input(image, opt.max_long, opt.max_short, 32);  // (1, 3, pad_h, pad_w)
  detail::DetectionCall req = make_request(opt);
  req.images.push_back(image_entry(in));
  return model_.traced(in.input, {"*"}, &req);
}

std::vector<OpStat> Detector::profile(const Tensor& input, int img_height, int img_width,
                                      const DetectOptions& opt) const {
  check_options(opt);
  check_single_input("profile", input);
  detail::DetectionCall req = make_request(opt);
  req.images.push_back(unscaled_entry(img_height, img_width));
  return model_.traced(input, {"*"}, &req);
}

std::map<std::string, Tensor> Detector::forward_all(const Tensor& input, int img_height, int img_width,
                                                     const DetectOptions& opt) const {
  check_options(opt);
  check_single_input("forward_all", input);
  detail::DetectionCall req = make_request(opt);
  req.want_tensors = true;
  req.want_bitmaps = opt.masks;
  req.images.push_back(unscaled_entry(img_height, img_width));
  return model_.run(input, {"*"}, &req);
}

}  // namespace mambacv
