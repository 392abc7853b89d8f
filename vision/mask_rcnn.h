// vision/mask_rcnn.h - internal: how the public Detector (vision/detector.cpp) talks to the "mask_rcnn" Network.
//
// Detection needs each image's unpadded size, the rescale parameters and per-call options, and returns structured
// results. The Detector passes them in a DetectionCall through ForwardCall::detection (vision/network.h); the
// network reads the request part and writes the result part. Without one (a plain Model::forward_all or
// `mambacv info`), the network treats every image as unpadded and uses the config's test_cfg.
#pragma once

#include <vector>

#include "mambacv/tensor.h"
#include "mambacv/weights.h"
#include "vision/detection_heads.h"

namespace mambacv::detail {

struct MaskRcnnImage {
  int64_t img_h = 0, img_w = 0;  // unpadded network input (mmdet img_shape)
  bool rescale = false;          // map boxes / masks back to ori_h x ori_w (mmdet rescale=True)
  int64_t ori_h = 0, ori_w = 0;
  float scale_x = 1, scale_y = 1;  // mmdet scale_factor (w_scale, h_scale)
};

struct MaskRcnnImageOut {
  Tensor proposals;                        // (k, 5) in network input pixels
  heads::Detections dets;                  // boxes in output pixels (original image when rescale)
  std::vector<heads::RleCounts> masks;     // one per detection when masks were requested
  Tensor mask_bitmaps;                     // (m, H, W) u8 when want_bitmaps
  int64_t out_h = 0, out_w = 0;            // the size boxes and masks refer to
  double rpn_ms = 0, box_ms = 0, mask_ms = 0;
};

struct DetectionCall {
  // inputs
  std::vector<MaskRcnnImage> images;  // one per batch item
  float score_thr = -1;               // < 0: config
  int64_t max_per_img = -1;           // < 0: config
  bool masks = true;
  bool want_bitmaps = false;  // also keep the pasted masks as u8 tensors
  bool want_tensors = false;  // also return features / fpn / proposals / dets in forward()'s map
  // outputs
  std::vector<MaskRcnnImageOut> out;
  double backbone_ms = 0, fpn_ms = 0;
};

// Object classes of a mask_rcnn network from its parameters: the box classifier's outputs less the background.
int detection_classes(const std::vector<ParamSpec>& specs);

}  // namespace mambacv::detail
