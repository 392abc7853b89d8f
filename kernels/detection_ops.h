// kernels/detection_ops.h - the detection ops of mmdetection's Mask R-CNN + FPN test path, at kernel level (no
// model knowledge): anchors, box-delta decoding, NMS, RoIAlign, mask pasting, COCO RLE. Semantics follow
// ../shared/docs/MODELS.md §6; the upstream file and function each op mirrors is named at the op.
//
// Conventions
// - Boxes are f32 (x1, y1, x2, y2) in pixels, no "+1" anywhere (mmdetection 2.x / torchvision).
// - Tensors are dense row-major (mambacv::Tensor); index results are i64, masks u8 (0 / 1).
// - Every op that has a fast CPU path also has a plain reference in namespace `ref` (always compiled, scalar, one
//   loop per formula) that tests/test_detection_ops.cpp checks the fast path against.
// - Device dispatch: the unqualified function (e.g. `nms`) checks its arguments and dispatches on the tensors'
//   device to `<op>_cpu` (here) or, later, `<op>_cuda` (kernels/cuda/det_*.cu, same signature). Today a CUDA
//   tensor is rejected with an Error that says to copy the tensor to the host. `<op>_cpu` assume checked arguments.
// - Errors are mambacv::Error naming the op and argument with the expected and the found value.
// - Ops keep no state and may be called from several threads at once; roi_align parallelises over RoIs (ctx.threads).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/context.h"
#include "mambacv/tensor.h"

namespace mambacv::det {

using Box = std::array<float, 4>;  // (x1, y1, x2, y2)

// ---- anchors (mmdet/core/anchor/anchor_generator.py: AnchorGenerator, center_offset 0, scale_major True) -------
// Base anchors centred at (0, 0): for each ratio r (outer) and each scale s (inner), in the given orders,
//   h_ratio = sqrt(r), w_ratio = 1 / h_ratio, w = base_size * w_ratio * s, h = base_size * h_ratio * s,
//   anchor = (-w/2, -h/2, w/2, h/2), computed in f32 without rounding.          -> (A, 4), A = |ratios| * |scales|
Tensor base_anchors(float base_size, const std::vector<float>& scales, const std::vector<float>& ratios);
// All anchors of one feature level: base anchors shifted by (x * stride, y * stride) for every location,
// location-major (row y, then column x), anchor-minor:                    -> (feat_h * feat_w * A, 4),
//   row ((y * feat_w + x) * A + a) = base[a] + (x*stride, y*stride, x*stride, y*stride).
Tensor anchors(float stride, float base_size, const std::vector<float>& scales, const std::vector<float>& ratios,
               int64_t feat_h, int64_t feat_w);

// ---- box-delta decoding (mmdet/core/bbox/coder/delta_xywh_bbox_coder.py: delta2bbox, mmdetection 2.x) ---------
// rois (n, 4), deltas (n, 4k) (k boxes per roi, e.g. one per class) -> boxes (n, 4k). Per (roi, j):
//   (dx, dy, dw, dh) = deltas[j] * stds + means; dw, dh clamped to +-|log(wh_ratio_clip)|;
//   px = (x1 + x2) * 0.5, pw = x2 - x1 (same for y); gx = px + pw * dx, gw = pw * exp(dw);
//   box = (gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5);
//   if clip: x clamped to [0, max_w], y to [0, max_h] (max_h, max_w: the unpadded image size).
Tensor decode_deltas(const Tensor& rois, const Tensor& deltas, const std::array<float, 4>& means,
                     const std::array<float, 4>& stds, int64_t max_h, int64_t max_w, bool clip,
                     double wh_ratio_clip = 16.0 / 1000.0);
Tensor decode_deltas_cpu(const Tensor& rois, const Tensor& deltas, const std::array<float, 4>& means,
                         const std::array<float, 4>& stds, int64_t max_h, int64_t max_w, bool clip,
                         double wh_ratio_clip);

// ---- non-maximum suppression (torchvision ops/nms, mmcv ops/nms.py with offset 0) ---------------------------------
// boxes (n, 4), scores (n) -> kept indices (k) i64 into the input, by descending score.
// Greedy: visit boxes by descending score (ties: lower index first, i.e. a stable sort, as torchvision's CPU
// kernel); keep a box unless an already kept box has IoU > iou_thr with it. IoU = inter / (area_i + area_j -
// inter), area = (x2 - x1) * (y2 - y1), computed in f32 in that order. max_keep >= 0 stops after that many kept
// boxes (the result then equals the first max_keep of the full result); -1 keeps all.
Tensor nms(const Tensor& boxes, const Tensor& scores, float iou_thr, int64_t max_keep = -1);
Tensor nms_cpu(const Tensor& boxes, const Tensor& scores, float iou_thr, int64_t max_keep);

// Per-class NMS (mmcv ops/nms.py: batched_nms, class_agnostic False): boxes (n, 4), scores (n), idxs (n) i64 class
// (or level) ids -> kept indices (k) i64, by descending score. Boxes of different ids never suppress each other.
// Mirrors mmcv: boxes are offset by idx * (max(boxes) + 1) (f32) and then, when n < split_thr, one NMS runs over
// all of them; otherwise NMS runs per id (ascending) on the offset boxes and the union is sorted by descending
// score (stable). The two paths agree whenever coordinates are >= 0. max_keep as in nms.
Tensor batched_nms(const Tensor& boxes, const Tensor& scores, const Tensor& idxs, float iou_thr,
                   int64_t max_keep = -1, int64_t split_thr = 10000);
Tensor batched_nms_cpu(const Tensor& boxes, const Tensor& scores, const Tensor& idxs, float iou_thr,
                       int64_t max_keep, int64_t split_thr);

// ---- RoIAlign (mmcv ops/roi_align.py, pool_mode "avg"; torchvision roi_align) -------------------------------------
// feat (C, H, W) or (1, C, H, W) f32, one image; rois (n, 4) in image coordinates -> (n, C, out_h, out_w).
// Per roi: start = roi * spatial_scale - (aligned ? 0.5 : 0), size = end - start (not aligned: at least 1);
// bin = size / out; samples per bin gh x gw = sampling_ratio > 0 ? sampling_ratio : ceil(size / out) (adaptive);
// sample y = start_y + ph * bin_h + (iy + 0.5) * bin_h / gh (x alike); bilinear value: 0 if y < -1 || y > H ||
// x < -1 || x > W, else coordinates clamped to [0, H-1] x [0, W-1] (a sample in (-1, 0] reads row 0);
// output = sum of samples / max(gh * gw, 1). RoIs may lie partly or wholly outside the map.
Tensor roi_align(const ExecContext& ctx, const Tensor& feat, const Tensor& rois, float spatial_scale, int64_t out_h,
                 int64_t out_w, int sampling_ratio = 0, bool aligned = true);
Tensor roi_align_cpu(const ExecContext& ctx, const Tensor& feat, const Tensor& rois, float spatial_scale, int64_t out_h, int64_t out_w,
                     int sampling_ratio, bool aligned);

// FPN level of each roi (mmdet single_level_roi_extractor.py: SingleRoIExtractor.map_roi_levels):
// rois (n, 4) -> (n) i64, level = clamp(floor(log2(sqrt(w * h) / finest_scale + 1e-6)), 0, num_levels - 1), f32.
Tensor map_roi_levels(const Tensor& rois, float finest_scale = 56.0f, int num_levels = 4);

// SingleRoIExtractor.forward for one image: feats[l] (C, H_l, W_l) with strides[l] (spatial_scale 1/stride);
// each roi is pooled from the level map_roi_levels gives it -> (n, C, out_h, out_w).
Tensor multilevel_roi_align(const ExecContext& ctx, const std::vector<Tensor>& feats, const std::vector<float>& strides,
                            const Tensor& rois, int64_t out_h, int64_t out_w, int sampling_ratio = 0, float finest_scale = 56.0f,
                            bool aligned = true);

// ---- mask pasting (mmdet/models/roi_heads/mask_heads/fcn_mask_head.py: _do_paste_mask, CPU path) ---------------
// mask (mh, mw) f32 probabilities of one instance, box in image pixels -> u8 (img_h, img_w), 1 where the pasted
// probability >= threshold. Pixel (i, j) has centre (j + 0.5, i + 0.5); its grid coordinate
// gx = (j + 0.5 - x1) / (x2 - x1) * 2 - 1 (an infinite value -> 0) is sampled with F.grid_sample(bilinear,
// padding zeros, align_corners False): source x = (gx + 1) * mw / 2 - 0.5. As mmdetection's CPU path (one mask per
// chunk, skip_empty), only pixels in [max(floor(x1) - 1, 0), min(ceil(x2) + 1, img_w)) x (same for y) are
// evaluated; the rest is 0. For threshold >= 0.5 and a box with x2 > x1, y2 > y1 this window changes nothing
// (outside it every value is < 0.5); for a degenerate box it does (all grid coordinates of that axis become 0).
Tensor paste_mask(const Tensor& mask, const Box& box, int64_t img_h, int64_t img_w, float threshold = 0.5f);
Tensor paste_mask_cpu(const Tensor& mask, const Box& box, int64_t img_h, int64_t img_w, float threshold);

// ---- COCO run-length encoding (pycocotools/common/maskApi.c semantics) --------------------------------------------
// counts: alternating run lengths over the mask in column-major (Fortran) order, starting with a run of zeros
// (possibly 0); they sum to h * w. An empty (0-pixel) mask has counts {0}.
struct Rle {
  int64_t h = 0, w = 0;
  std::vector<uint32_t> counts;
};
// mask u8 or bool (h, w) row-major, any nonzero value is foreground.
Rle rle_encode(const Tensor& mask);
Rle rle_encode(const uint8_t* mask, int64_t h, int64_t w);
// The compressed string of pycocotools' rleToString (what `mask.encode(...)["counts"]` holds): each count, minus
// the count two places before it for index > 2, as 5-bit groups low first, 0x20 flags a following group, the last
// group's bit 0x10 is the sign, each char = group + 48.
std::string rle_to_string(const Rle& rle);
// Inverse of rle_to_string; throws on characters outside '0'..'o', a truncated group, negative counts, or counts
// that do not sum to h * w.
Rle rle_decode_string(const std::string& s, int64_t h, int64_t w);
// -> u8 (h, w) row-major, 0 / 1. Throws if the counts do not sum to h * w.
Tensor rle_decode(const Rle& rle);
// Foreground pixel count (sum of the odd-indexed counts).
int64_t rle_area(const Rle& rle);

// ---- FPN extra level ---------------------------------------------------------------------------------------------
// max_pool2d(kernel 1, stride 2) == x[..., ::2, ::2]: x (..., H, W) any dtype -> (..., ceil(H/2), ceil(W/2)).
Tensor subsample2(const Tensor& x);

// ---- plain references (scalar, straight from the formulas above; always compiled) -----------------------------
namespace ref {
// O(n^2) greedy NMS over the stably sorted order; same result as det::nms.
Tensor nms(const Tensor& boxes, const Tensor& scores, float iou_thr, int64_t max_keep = -1);
// The same offset boxes as det::batched_nms, ref::nms per id (ascending), union sorted by score (stable).
Tensor batched_nms(const Tensor& boxes, const Tensor& scores, const Tensor& idxs, float iou_thr,
                   int64_t max_keep = -1);
// One sample at a time, each bilinear interpolation computed where it is used.
Tensor roi_align(const Tensor& feat, const Tensor& rois, float spatial_scale, int64_t out_h, int64_t out_w,
                 int sampling_ratio = 0, bool aligned = true);
// grid_sample over every pixel of the image (mmdetection's GPU path, skip_empty False) -> f32 (img_h, img_w).
Tensor paste_mask_probs(const Tensor& mask, const Box& box, int64_t img_h, int64_t img_w);
// paste_mask_probs, zeroed outside the skip_empty window, thresholded; same result as det::paste_mask.
Tensor paste_mask(const Tensor& mask, const Box& box, int64_t img_h, int64_t img_w, float threshold = 0.5f);
}  // namespace ref

}  // namespace mambacv::det
