// mambacv/detection.h - instance detection and segmentation: Mask R-CNN + FPN on a VMamba backbone (mmdetection 2.11
// test path).
//
//   auto det = mambacv::Detector::load("mask_rcnn_vmamba_tiny", "mask_rcnn_vssm_fpn_coco_tiny.pth");
//   mambacv::DetectionResult r = det.detect(mambacv::load_image("street.jpg"));
//   for (const auto& d : r.detections)   // boxes in original image pixels, masks at the original image size
//     printf("%s %.2f [%g %g %g %g] %lld px\n", det.class_names()[d.label].c_str(), d.score, d.box[0], d.box[1],
//            d.box[2], d.box[3], (long long)d.mask.area());
//
// A Detector is immutable after loading: one instance may serve several threads at once (each call allocates its
// own workspace). Copies share the weights. No OpenCV, Eigen or CUDA types appear here.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mambacv/image.h"
#include "mambacv/mambacv.h"
#include "mambacv/tensor.h"

namespace mambacv {

// A binary instance mask as COCO run-length encoding (pycocotools semantics): `counts` alternate runs of 0 and 1
// over the mask in column-major order, starting with a (possibly empty) run of zeros; they sum to height * width.
struct InstanceMask {
  int height = 0, width = 0;
  std::vector<uint32_t> counts;

  int64_t area() const;                 // foreground pixels
  std::vector<uint8_t> decode() const;  // (height, width) row-major, 0 / 1
  std::string coco_string() const;      // the compressed "counts" string of pycocotools' mask.encode
};

struct Detection {
  std::array<float, 4> box{};  // x1, y1, x2, y2 in pixels of the image the result refers to
  float score = 0;
  int label = 0;       // 0 .. num_classes - 1 (COCO: mmdetection's label order, 0 = person)
  InstanceMask mask;   // empty counts when masks were not requested
};

// Wall time of the parts of one image's detection, in milliseconds. In a batch (detect_batch, or detect(images) for
// the images of one padded size) the backbone and FPN pass is shared: detect(images) gives each image an even share
// of it, so the images' totals add up to the call's time; detect_batch gives every image the whole pass.
struct DetectionTimings {
  double preprocess_ms = 0, backbone_ms = 0, fpn_ms = 0, rpn_ms = 0, box_ms = 0, mask_ms = 0, total_ms = 0;
};

struct DetectionResult {
  int width = 0, height = 0;         // the image the boxes and masks refer to
  std::vector<Detection> detections;  // by descending score
  DetectionTimings timings;
};

struct DetectOptions {
  float score_thr = -1;    // < 0: the config's test_cfg.rcnn.score_thr
  int max_per_img = -1;    // < 0: the config's test_cfg.rcnn.max_per_img
  bool masks = true;       // run the mask head and paste the masks
  int max_long = 1333, max_short = 800;  // detect(const Image&): the keep-ratio rescale bounds
};

class Detector {
 public:
  // Config (a name in configs/ or a .json with arch "mask_rcnn") + weights (.safetensors, or an mmdetection .pth:
  // the tensors under "state_dict"). Loading is strict (every missing, unexpected or misshapen tensor is named).
  static Detector load(const std::string& config, const std::string& weights, const Options& opt = {});
  // Random weights (benchmarks, shape checks).
  static Detector random(const std::string& config, const Options& opt = {}, uint64_t seed = 0);
  // Wraps a loaded Model of arch "mask_rcnn" (throws Error otherwise). class_names may be empty.
  explicit Detector(Model model, std::vector<std::string> class_names = {});

  // mmdetection's test pipeline on a decoded RGB image: keep-ratio bilinear rescale into max_long x max_short,
  // normalise, pad to 32, run, and map back (rescale=True): boxes divided by the scale factors and clipped to the
  // image, masks pasted at the original size.
  DetectionResult detect(const Image& image, const DetectOptions& opt = {}) const;
  // Several images, one result each in their order. Images whose padded network inputs have the same size run as
  // one batch (sharing the backbone and FPN pass); each result equals that of detect(image) alone (to float
  // rounding where the GEMM's blocking depends on the row count: the generic fallback), because no image is padded
  // beyond its own size (mmdetection's batched test pads to the largest image instead).
  std::vector<DetectionResult> detect(const std::vector<Image>& images, const DetectOptions& opt = {}) const;
  // A prepared network input (1, 3, H, W) (normalised, zero padded) whose unpadded content is img_height x
  // img_width: boxes and masks refer to that unpadded input (rescale=False).
  DetectionResult detect(const Tensor& input, int img_height, int img_width, const DetectOptions& opt = {}) const;
  // A batch (B, 3, H, W) with each image's unpadded size (height, width).
  std::vector<DetectionResult> detect_batch(const Tensor& input, const std::vector<std::array<int, 2>>& img_shapes,
                                            const DetectOptions& opt = {}) const;

  // Every intermediate tensor of one input, named as in the golden fixtures: features.i, fpn.i (NCHW),
  // proposals (k, 5), det_bboxes (m, 5), det_labels (m) i64, det_masks (m, img_height, img_width) u8.
  // One detection of `image` (as detect(image)) with every op timed: one entry per (stage, op type) in the order
  // first seen. The stages are the backbone's (patch_embed, stage.i, downsample.i), then fpn, rpn, box_head and,
  // when a box survives, mask_head; the pipeline's resize and the result's mapping back are not ops.
  std::vector<OpStat> profile(const Image& image, const DetectOptions& opt = {}) const;
  // The same for a prepared input (1, 3, H, W), as detect(input, img_height, img_width).
  std::vector<OpStat> profile(const Tensor& input, int img_height, int img_width, const DetectOptions& opt = {}) const;
  std::map<std::string, Tensor> forward_all(const Tensor& input, int img_height, int img_width,
                                            const DetectOptions& opt = {}) const;

  const Model& model() const { return model_; }
  int num_classes() const;
  const std::vector<std::string>& class_names() const { return class_names_; }  // may be empty

 private:
  // both detect(image) and detect(images): the images by pointer, so neither copies its pixels
  std::vector<DetectionResult> detect_images(const std::vector<const Image*>& images, const DetectOptions& opt) const;

  Model model_;
  std::vector<std::string> class_names_;
};

}  // namespace mambacv
