// kernels/cpu/detection_ops.cpp - anchors, box-delta decoding, FPN level mapping and the stride-2 subsample of the
// detection op set (kernels/detection_ops.h). NMS, RoIAlign, mask pasting and RLE live in kernels/cpu/det_*.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/det_common.h"
#include "kernels/detection_ops.h"

namespace mambacv::det {

using detail::check_boxes;
using detail::check_host;
using detail::check_tensor;

// ---- anchors ------------------------------------------------------------------------------------------------------
// Mirrors AnchorGenerator.gen_single_level_base_anchors (center_offset 0, scale_major True) and
// single_level_grid_anchors of mmdet/core/anchor/anchor_generator.py, in f32 like the upstream tensors.
Tensor base_anchors(float base_size, const std::vector<float>& scales, const std::vector<float>& ratios) {
  MAMBACV_CHECK(base_size > 0, "det::base_anchors: base_size must be > 0, found " << base_size);
  MAMBACV_CHECK(!scales.empty() && !ratios.empty(),
                "det::base_anchors: scales and ratios must be non-empty, found " << scales.size() << " scales and "
                                                                               << ratios.size() << " ratios");
  for (float r : ratios) MAMBACV_CHECK(r > 0, "det::base_anchors: ratios must be > 0, found " << r);
  for (float s : scales) MAMBACV_CHECK(s > 0, "det::base_anchors: scales must be > 0, found " << s);
  const int64_t A = static_cast<int64_t>(ratios.size() * scales.size());
  Tensor out = Tensor::empty({A, 4});
  float* o = out.f32();
  int64_t a = 0;
  for (float r : ratios) {  // ratio-major ...
    const float h_ratio = std::sqrt(r);
    const float w_ratio = 1.0f / h_ratio;
    for (float s : scales) {  // ... scale-minor: ws = (w * w_ratios[:, None] * scales[None, :]).view(-1)
      const float ws = base_size * w_ratio * s;
      const float hs = base_size * h_ratio * s;
      // x_center = y_center = 0 * base_size
      o[a * 4 + 0] = 0.0f - 0.5f * ws;
      o[a * 4 + 1] = 0.0f - 0.5f * hs;
      o[a * 4 + 2] = 0.0f + 0.5f * ws;
      o[a * 4 + 3] = 0.0f + 0.5f * hs;
      ++a;
    }
  }
  return out;
}

Tensor anchors(float stride, float base_size, const std::vector<float>& scales, const std::vector<float>& ratios,
               int64_t feat_h, int64_t feat_w) {
  MAMBACV_CHECK(stride > 0, "det::anchors: stride must be > 0, found " << stride);
  MAMBACV_CHECK(feat_h >= 0 && feat_w >= 0,
                "det::anchors: feature size must be >= 0, found " << feat_h << " x " << feat_w);
  const Tensor base = base_anchors(base_size, scales, ratios);  // (A, 4)
  const int64_t A = base.dim(0);
  Tensor out = Tensor::empty({feat_h * feat_w * A, 4});
  const float* b = base.f32();
  float* o = out.f32();
  for (int64_t y = 0; y < feat_h; ++y) {
    const float sy = static_cast<float>(y) * stride;
    for (int64_t x = 0; x < feat_w; ++x) {
      const float sx = static_cast<float>(x) * stride;
      float* row = o + ((y * feat_w + x) * A) * 4;
      for (int64_t a = 0; a < A; ++a) {
        row[a * 4 + 0] = b[a * 4 + 0] + sx;
        row[a * 4 + 1] = b[a * 4 + 1] + sy;
        row[a * 4 + 2] = b[a * 4 + 2] + sx;
        row[a * 4 + 3] = b[a * 4 + 3] + sy;
      }
    }
  }
  return out;
}

// ---- delta decoding -------------------------------------------------------------------------------------------------
Tensor decode_deltas(const Tensor& rois, const Tensor& deltas, const std::array<float, 4>& means,
                     const std::array<float, 4>& stds, int64_t max_h, int64_t max_w, bool clip,
                     double wh_ratio_clip) {
  const char* op = "det::decode_deltas";
  check_boxes(op, "rois", rois);
  check_tensor(op, "deltas", deltas, DType::F32, 2);
  MAMBACV_CHECK(deltas.dim(0) == rois.dim(0) && deltas.dim(1) % 4 == 0,
                op << ": deltas must be (" << rois.dim(0) << ", 4k) to match rois " << rois.str() << ", found "
                   << deltas.str());
  MAMBACV_CHECK(!clip || (max_h >= 0 && max_w >= 0),
                op << ": max shape must be >= 0 when clipping, found " << max_h << " x " << max_w);
  MAMBACV_CHECK(wh_ratio_clip > 0, op << ": wh_ratio_clip must be > 0, found " << wh_ratio_clip);
  MAMBACV_CHECK(rois.device() == deltas.device(), op << ": rois on " << device_name(rois.device())
                                                     << " but deltas on " << device_name(deltas.device()));
  check_host(op, "rois", rois);
  return decode_deltas_cpu(rois, deltas, means, stds, max_h, max_w, clip, wh_ratio_clip);
}

// delta2bbox of mmdet/core/bbox/coder/delta_xywh_bbox_coder.py (2.x: no +1), f32 in upstream's operation order.
Tensor decode_deltas_cpu(const Tensor& rois, const Tensor& deltas, const std::array<float, 4>& means,
                         const std::array<float, 4>& stds, int64_t max_h, int64_t max_w, bool clip,
                         double wh_ratio_clip) {
  const int64_t n = rois.dim(0), k = deltas.dim(1) / 4;
  Tensor out = Tensor::empty(deltas.shape());
  const float* r = rois.f32();
  const float* d = deltas.f32();
  float* o = out.f32();
  // max_ratio = np.abs(np.log(wh_ratio_clip)) in double, applied to an f32 tensor
  const float max_ratio = static_cast<float>(std::fabs(std::log(wh_ratio_clip)));
  const float W = static_cast<float>(max_w), H = static_cast<float>(max_h);
  for (int64_t i = 0; i < n; ++i) {
    const float* roi = r + i * 4;
    const float px = (roi[0] + roi[2]) * 0.5f;
    const float py = (roi[1] + roi[3]) * 0.5f;
    const float pw = roi[2] - roi[0];
    const float ph = roi[3] - roi[1];
    for (int64_t j = 0; j < k; ++j) {
      const float* dj = d + (i * k + j) * 4;
      const float dx = dj[0] * stds[0] + means[0];
      const float dy = dj[1] * stds[1] + means[1];
      const float dw = std::min(std::max(dj[2] * stds[2] + means[2], -max_ratio), max_ratio);
      const float dh = std::min(std::max(dj[3] * stds[3] + means[3], -max_ratio), max_ratio);
      const float gw = pw * std::exp(dw);
      const float gh = ph * std::exp(dh);
      const float gx = px + pw * dx;
      const float gy = py + ph * dy;
      float x1 = gx - gw * 0.5f, y1 = gy - gh * 0.5f, x2 = gx + gw * 0.5f, y2 = gy + gh * 0.5f;
      if (clip) {
        x1 = std::min(std::max(x1, 0.0f), W);
        y1 = std::min(std::max(y1, 0.0f), H);
        x2 = std::min(std::max(x2, 0.0f), W);
        y2 = std::min(std::max(y2, 0.0f), H);
      }
      float* oj = o + (i * k + j) * 4;
      oj[0] = x1;
      oj[1] = y1;
      oj[2] = x2;
      oj[3] = y2;
    }
  }
  return out;
}

// ---- FPN level of each roi ----------------------------------------------------------------------------------------
Tensor map_roi_levels(const Tensor& rois, float finest_scale, int num_levels) {
  const char* op = "det::map_roi_levels";
  check_boxes(op, "rois", rois);
  check_host(op, "rois", rois);
  MAMBACV_CHECK(finest_scale > 0, op << ": finest_scale must be > 0, found " << finest_scale);
  MAMBACV_CHECK(num_levels >= 1, op << ": num_levels must be >= 1, found " << num_levels);
  const int64_t n = rois.dim(0);
  Tensor out = Tensor::empty({n}, DType::I64);
  const float* r = rois.f32();
  int64_t* o = out.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const float* b = r + i * 4;
    // scale = sqrt((x2 - x1) * (y2 - y1)) as upstream multiplies (y2 - y1) * (x2 - x1) (commutative in f32)
    const float scale = std::sqrt((b[3] - b[1]) * (b[2] - b[0]));
    const float lvl = std::floor(std::log2(scale / finest_scale + 1e-6f));
    int64_t l = 0;
    if (lvl >= static_cast<float>(num_levels - 1)) {
      l = num_levels - 1;
    } else if (lvl > 0) {  // NaN (negative area) and everything below 0 map to level 0
      l = static_cast<int64_t>(lvl);
    }
    o[i] = l;
  }
  return out;
}

// ---- P6 = max_pool2d(P5, kernel 1, stride 2) ---------------------------------------------------------------------
Tensor subsample2(const Tensor& x) {
  const char* op = "det::subsample2";
  MAMBACV_CHECK(x.defined() && x.ndim() >= 2, op << ": x must have at least 2 dimensions (..., H, W), found "
                                                 << (x.defined() ? x.str() : std::string("undefined")));
  check_host(op, "x", x);
  const int64_t H = x.dim(-2), W = x.dim(-1);
  const int64_t Ho = (H + 1) / 2, Wo = (W + 1) / 2;
  Shape s = x.shape();
  s[s.size() - 2] = Ho;
  s[s.size() - 1] = Wo;
  Tensor out = Tensor::empty(s, x.dtype());
  const int64_t planes = H * W == 0 ? 0 : x.numel() / (H * W);
  const size_t es = dtype_size(x.dtype());
  const auto* src = static_cast<const uint8_t*>(x.raw());
  auto* dst = static_cast<uint8_t*>(out.raw());
  for (int64_t p = 0; p < planes; ++p) {
    for (int64_t i = 0; i < Ho; ++i) {
      const uint8_t* srow = src + ((p * H + 2 * i) * W) * es;
      uint8_t* drow = dst + ((p * Ho + i) * Wo) * es;
      for (int64_t j = 0; j < Wo; ++j) std::memcpy(drow + j * es, srow + 2 * j * es, es);
    }
  }
  return out;
}

}  // namespace mambacv::det
