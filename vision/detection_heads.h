// vision/detection_heads.h - the heads of mmdetection 2.11's Mask R-CNN + FPN test path on top of kernels/ (dense ops)
// and kernels/detection_ops.h (anchors, decoding, NMS, RoIAlign, pasting): FPN, RPN head + proposals, the
// Shared2FC box head + multiclass NMS, the FCN mask head. Semantics: ../shared/docs/MODELS.md §6; the upstream
// file and function each piece mirrors is named at the piece.
//
// Layout: dense maps are channels-last (B, H, W, C) inside the heads (the op set's conv2d_nhwc); RoIAlign takes
// channels-first (C, H, W) maps of one image. Weights are PyTorch layouts (conv (Co, Ci, kh, kw), linear (out, in),
// ConvTranspose2d (Ci, Co, kh, kw)). Every fast piece has a plain reference in namespace `ref` (loops straight
// from the formulas, always compiled) that tests/test_detection_heads.cpp checks it against.
// Nothing here keeps state: the functions may run on several threads at once.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "kernels/context.h"
#include "kernels/ops.h"
#include "mambacv/tensor.h"

namespace mambacv::heads {

// A convolution's bound weights (PyTorch layout, read by the references; a network may null them once prepared),
// bias may be null, and the same weights prepared for ops::conv2d (prepare(), called once at bind time; the fast
// heads require it).
struct ConvW {
  const float* w = nullptr;  // (cout, cin, k, k)
  const float* b = nullptr;  // (cout) or null
  int64_t cout = 0, cin = 0;
  int k = 1;
  ops::Conv2dWeight prepared;  // stride 1, padding k/2
  void prepare();
};
// A linear layer: w (out, in), b (out) or null; prepared: the packed GEMM operand with its bias.
struct LinearW {
  const float* w = nullptr;
  const float* b = nullptr;
  int64_t out = 0, in = 0;
  ops::PackedWeight prepared;
  void prepare();
};

// conv k x k, stride 1, padding k/2 (+ ReLU): x (B, H, W, cin) -> (B, H, W, cout) (ops::conv2d).
Tensor conv_same_nhwc(const ExecContext& ctx, const Tensor& x, const ConvW& c, bool relu);

// ---- ConvTranspose2d(kernel 2, stride 2, padding 0) -------------------------------------------------------------
// Each input pixel becomes one 2x2 output block: y[2h+i, 2w+j, co] = b[co] + sum_ci x[h, w, ci] * W[ci, co, i, j].
// Written as one GEMM (B*H*W, cin) @ (cin, 4*cout) with the weight packed by pack_deconv2x2 as (cin, 2, 2, cout).
ops::PackedWeight pack_deconv2x2(const float* w /* (cin, cout, 2, 2) */, int64_t cin, int64_t cout);
// x (B, H, W, cin), packed weight, bias (cout) or null -> (B, 2H, 2W, cout); optional ReLU.
Tensor deconv2x2_nhwc(const ExecContext& ctx, const Tensor& x, const ops::PackedWeight& packed, const float* bias,
                      int64_t cout, bool relu);

// ---- FPN (mmdet/models/necks/fpn.py: FPN.forward, add_extra_convs False, start_level 0) -------------------------
// laterals[i] = lateral_convs[i](feats[i]) (1x1, bias); for i from coarse to fine: laterals[i-1] +=
// nearest-resize(laterals[i], size of laterals[i-1]); outs[i] = fpn_convs[i](laterals[i]) (3x3, pad 1, bias);
// while len(outs) < num_outs: outs.append(max_pool2d(outs[-1], kernel 1, stride 2)).
struct FpnW {
  std::vector<ConvW> lateral, output;  // one per input level
  int num_outs = 5;
};
// feats[i] (B, H_i, W_i, C_i) -> num_outs maps (B, h, w, out_channels).
std::vector<Tensor> fpn_forward(const ExecContext& ctx, const std::vector<Tensor>& feats, const FpnW& w);

// ---- RPN (mmdet/models/dense_heads/rpn_head.py: RPNHead.forward_single and _get_bboxes, mmdet 2.11) ------------
struct RpnW {
  ConvW conv;        // 3x3, feat_channels
  ConvW cls, reg;    // 1x1: A logits (sigmoid), 4A deltas
};
struct RpnConfig {
  std::vector<float> strides{4, 8, 16, 32, 64};
  std::vector<float> scales{8};
  std::vector<float> ratios{0.5f, 1.0f, 2.0f};
  std::array<float, 4> means{0, 0, 0, 0}, stds{1, 1, 1, 1};
  int64_t nms_pre = 1000, max_per_img = 1000;
  float iou_thr = 0.7f;
  float min_bbox_size = 0;
  int num_anchors() const { return static_cast<int>(scales.size() * ratios.size()); }
};
// Per level output of the head for one image: scores (H*W*A) (sigmoid, location-major, anchor-minor) and deltas
// (H*W*A, 4). level: (1, H, W, C).
struct RpnLevelOut {
  Tensor scores, deltas;
  int64_t h = 0, w = 0;
};
RpnLevelOut rpn_head_level(const ExecContext& ctx, const Tensor& level, const RpnW& w);
// RPNHead._get_bboxes for one image: per level the top nms_pre scores (stable descending sort), decoded against the
// level's anchors (means/stds, clipped to the unpadded img_h x img_w), boxes with w or h < min_bbox_size dropped
// when min_bbox_size > 0, batched NMS over all levels with the level as the id, the best max_per_img.
// -> proposals (k, 5): x1 y1 x2 y2 score, by descending score.
Tensor rpn_proposals(const std::vector<RpnLevelOut>& levels, const RpnConfig& cfg, int64_t img_h, int64_t img_w);

// ---- Shared2FC box head (mmdet/models/roi_heads/bbox_heads/convfc_bbox_head.py, bbox_head.py get_bboxes) -------
struct BoxHeadW {
  LinearW fc1, fc2;   // shared_fcs.0 (fc, C*r*r), shared_fcs.1 (fc, fc)
  LinearW cls, reg;   // fc_cls (K+1, fc), fc_reg (4K, fc)
};
// roi_feats (n, C, r, r) -> cls_score (n, K+1) logits, deltas (n, 4K).
void box_head_forward(const ExecContext& ctx, const Tensor& roi_feats, const BoxHeadW& w, Tensor* cls_score,
                      Tensor* deltas);

struct RcnnConfig {
  float score_thr = 0.05f;
  float iou_thr = 0.5f;
  int64_t max_per_img = 100;
  float mask_thr = 0.5f;
  std::array<float, 4> means{0, 0, 0, 0}, stds{0.1f, 0.1f, 0.2f, 0.2f};
};
struct Detections {
  Tensor boxes;   // (m, 4) f32
  Tensor scores;  // (m) f32
  Tensor labels;  // (m) i64, 0 .. K-1
  int64_t size() const { return boxes.defined() ? boxes.dim(0) : 0; }
};
// BBoxHead.get_bboxes (rescale False) + multiclass_nms for one image: softmax over K+1 (background last); rows
// whose proposal has y2 == 0 get all-zero logits and deltas (StandardRoIHead.simple_test_bboxes' padding rule);
// class-specific boxes decoded from the proposals (means/stds) and clipped to img_h x img_w; (box, class) pairs with
// score > score_thr in (roi, class) order; batched NMS per class; the best max_per_img.
Detections box_postprocess(const Tensor& proposals /* (n, >=4) */, const Tensor& cls_score, const Tensor& deltas,
                           const RcnnConfig& cfg, int64_t img_h, int64_t img_w);

// ---- FCN mask head (mmdet/models/roi_heads/mask_heads/fcn_mask_head.py: FCNMaskHead.forward) --------------------
struct MaskHeadW {
  std::vector<ConvW> convs;        // 3x3 + ReLU each
  ops::PackedWeight up_packed;     // pack_deconv2x2 of upsample.weight
  const float* up_b = nullptr;
  int64_t up_cout = 0;
  ConvW logits;                    // 1x1, K classes
};
// roi_feats (n, C, r, r) -> the sigmoid probabilities of each roi's class `labels[i]`: (n, 2r, 2r).
// Only the needed logit channel is computed (conv_logits is 1x1, so the other classes' channels do not matter).
Tensor mask_head_probs(const ExecContext& ctx, const Tensor& roi_feats, const MaskHeadW& w, const Tensor& labels);

// COCO RLE of a 0/1 u8 (h, w) mask whose foreground lies inside rows [y0, y1) x columns [x0, x1) (clamped); same
// result as det::rle_encode, without walking the zero columns pixel by pixel.
struct RleCounts {
  int64_t h = 0, w = 0;
  std::vector<uint32_t> counts;
};
RleCounts rle_encode_window(const uint8_t* mask, int64_t h, int64_t w, int64_t y0, int64_t y1, int64_t x0,
                            int64_t x1);

// ---- plain references (NCHW, one loop per formula) -----------------------------------------------------------------
namespace ref {
// x (B, Ci, H, W) -> (B, Co, H, W), pad k/2, optional ReLU.
Tensor conv_same_nchw(const Tensor& x, const ConvW& c, bool relu);
// x (B, Ci, H, W), w (Ci, Co, 2, 2) unpacked -> (B, Co, 2H, 2W), optional ReLU.
Tensor deconv2x2_nchw(const Tensor& x, const float* w, const float* bias, int64_t cout, bool relu);
// feats[i] (B, C_i, H_i, W_i) -> outputs (B, C, h, w).
std::vector<Tensor> fpn_forward_nchw(const std::vector<Tensor>& feats, const FpnW& w);
// roi_feats (n, C, r, r) -> cls (n, K+1), deltas (n, 4K).
void box_head_forward(const Tensor& roi_feats, const BoxHeadW& w, Tensor* cls_score, Tensor* deltas);
// All classes' logits: roi_feats (n, C, r, r) -> (n, K, 2r, 2r); the unpacked upsample weight (Ci, Co, 2, 2).
Tensor mask_head_logits(const Tensor& roi_feats, const MaskHeadW& w, const float* up_w);
// The box post-processing with O(n^2) greedy NMS per class over a naive (score desc, index asc) order.
Detections box_postprocess(const Tensor& proposals, const Tensor& cls_score, const Tensor& deltas,
                           const RcnnConfig& cfg, int64_t img_h, int64_t img_w);
}  // namespace ref

}  // namespace mambacv::heads
