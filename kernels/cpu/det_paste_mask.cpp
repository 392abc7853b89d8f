// kernels/cpu/det_paste_mask.cpp - pasting one instance's mask probabilities into the image, the fast CPU path and
// the plain reference (kernels/detection_ops.h). Semantics: mmdet/models/roi_heads/mask_heads/fcn_mask_head.py
// _do_paste_mask (as detectron2's paste) with torch F.grid_sample(bilinear, zeros, align_corners=False) as torch's
// CPU kernel computes it: source = (g + 1) * (size / 2) - 0.5, corners floor / floor + 1, weights from the
// fractional part, out-of-range corners read 0, value = nw*v_nw + ne*v_ne + sw*v_sw + se*v_se in that order.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/det_common.h"
#include "kernels/detection_ops.h"

namespace mambacv::det {

using detail::check_host;
using detail::check_tensor;

namespace {

// Grid coordinate of pixel index p along one axis of the box [b0, b1]: (p + 0.5 - b0) / (b1 - b0) * 2 - 1,
// an infinite result (degenerate box) replaced by 0 as upstream.
inline float grid_coord(int64_t p, float b0, float b1) {
  const float c = static_cast<float>(p) + 0.5f;
  float g = (c - b0) / (b1 - b0) * 2.0f - 1.0f;
  if (std::isinf(g)) g = 0.0f;
  return g;
}

// One axis of a grid_sample bilinear tap: corners i0 = floor(src), i1 = i0 + 1, weights (1 - f, f), and whether
// each corner lies inside [0, size). A NaN coordinate gives no valid corner (value 0).
struct Tap {
  int64_t i0, i1;
  float w0, w1;
  bool in0, in1;
};

inline Tap grid_tap(float g, int64_t size) {
  const float src = (g + 1.0f) * (static_cast<float>(size) / 2.0f) - 0.5f;
  Tap t{0, 0, 0.0f, 0.0f, false, false};
  if (std::isnan(src)) return t;
  const float fl = std::floor(src);
  const float f = src - fl;
  t.w1 = f;
  t.w0 = 1.0f - f;
  // far outside: both corners out of range (also keeps the int conversion in range)
  if (fl < -2.0f || fl > static_cast<float>(size)) return t;
  t.i0 = static_cast<int64_t>(fl);
  t.i1 = t.i0 + 1;
  t.in0 = t.i0 >= 0 && t.i0 < size;
  t.in1 = t.i1 >= 0 && t.i1 < size;
  return t;
}

// Bilinear value of mask (mh, mw) at the taps (y, x).
inline float sample(const float* m, int64_t mw, const Tap& y, const Tap& x) {
  const float v_nw = (y.in0 && x.in0) ? m[y.i0 * mw + x.i0] : 0.0f;
  const float v_ne = (y.in0 && x.in1) ? m[y.i0 * mw + x.i1] : 0.0f;
  const float v_sw = (y.in1 && x.in0) ? m[y.i1 * mw + x.i0] : 0.0f;
  const float v_se = (y.in1 && x.in1) ? m[y.i1 * mw + x.i1] : 0.0f;
  const float nw = y.w0 * x.w0, ne = y.w0 * x.w1, sw = y.w1 * x.w0, se = y.w1 * x.w1;
  return v_nw * nw + v_ne * ne + v_sw * sw + v_se * se;
}

// mmdetection's skip_empty window for one box: [max(floor(b0) - 1, 0), min(ceil(b1) + 1, size)), empty when
// lo >= hi.
inline void window(float b0, float b1, int64_t size, int64_t* lo, int64_t* hi) {
  const double l = std::max(std::floor(static_cast<double>(b0)) - 1.0, 0.0);
  const double h = std::min(std::ceil(static_cast<double>(b1)) + 1.0, static_cast<double>(size));
  if (!(l < h)) {  // also NaN
    *lo = *hi = 0;
    return;
  }
  *lo = static_cast<int64_t>(l);
  *hi = static_cast<int64_t>(h);
}

void check_paste_args(const char* op, const Tensor& mask, int64_t img_h, int64_t img_w) {
  check_tensor(op, "mask", mask, DType::F32, 2);
  MAMBACV_CHECK(mask.dim(0) >= 1 && mask.dim(1) >= 1, op << ": mask must be non-empty, found " << mask.str());
  MAMBACV_CHECK(img_h >= 0 && img_w >= 0, op << ": image size must be >= 0, found " << img_h << " x " << img_w);
}

}  // namespace

// ---- dispatch -------------------------------------------------------------------------------------------------------
Tensor paste_mask(const Tensor& mask, const Box& box, int64_t img_h, int64_t img_w, float threshold) {
  const char* op = "det::paste_mask";
  check_paste_args(op, mask, img_h, img_w);
  check_host(op, "mask", mask);
  return paste_mask_cpu(mask, box, img_h, img_w, threshold);
}

// ---- fast CPU path --------------------------------------------------------------------------------------------------
// Only the skip_empty window is evaluated; the x taps of its columns are computed once, the y taps once per row.
Tensor paste_mask_cpu(const Tensor& mask, const Box& box, int64_t img_h, int64_t img_w, float threshold) {
  const int64_t mh = mask.dim(0), mw = mask.dim(1);
  const float* m = mask.f32();
  Tensor out = Tensor::zeros({img_h, img_w}, DType::U8);
  uint8_t* o = out.data<uint8_t>();
  int64_t x_lo, x_hi, y_lo, y_hi;
  window(box[0], box[2], img_w, &x_lo, &x_hi);
  window(box[1], box[3], img_h, &y_lo, &y_hi);
  if (x_lo >= x_hi || y_lo >= y_hi) return out;
  std::vector<Tap> tx(static_cast<size_t>(x_hi - x_lo));
  for (int64_t j = x_lo; j < x_hi; ++j) tx[j - x_lo] = grid_tap(grid_coord(j, box[0], box[2]), mw);
  for (int64_t i = y_lo; i < y_hi; ++i) {
    const Tap ty = grid_tap(grid_coord(i, box[1], box[3]), mh);
    uint8_t* row = o + i * img_w;
    if (!ty.in0 && !ty.in1) {  // the whole row samples zeros
      if (0.0f >= threshold) std::fill(row + x_lo, row + x_hi, uint8_t{1});
      continue;
    }
    for (int64_t j = x_lo; j < x_hi; ++j) row[j] = sample(m, mw, ty, tx[j - x_lo]) >= threshold ? 1 : 0;
  }
  return out;
}

// ---- plain reference --------------------------------------------------------------------------------------------
namespace ref {

Tensor paste_mask_probs(const Tensor& mask, const Box& box, int64_t img_h, int64_t img_w) {
  const char* op = "det::ref::paste_mask_probs";
  check_paste_args(op, mask, img_h, img_w);
  const int64_t mh = mask.dim(0), mw = mask.dim(1);
  const float* m = mask.f32();
  Tensor out = Tensor::empty({img_h, img_w});
  float* o = out.f32();
  for (int64_t i = 0; i < img_h; ++i)
    for (int64_t j = 0; j < img_w; ++j) {
      const Tap ty = grid_tap(grid_coord(i, box[1], box[3]), mh);
      const Tap tx = grid_tap(grid_coord(j, box[0], box[2]), mw);
      o[i * img_w + j] = sample(m, mw, ty, tx);
    }
  return out;
}

Tensor paste_mask(const Tensor& mask, const Box& box, int64_t img_h, int64_t img_w, float threshold) {
  const Tensor probs = paste_mask_probs(mask, box, img_h, img_w);
  int64_t x_lo, x_hi, y_lo, y_hi;
  window(box[0], box[2], img_w, &x_lo, &x_hi);
  window(box[1], box[3], img_h, &y_lo, &y_hi);
  Tensor out = Tensor::empty({img_h, img_w}, DType::U8);
  const float* p = probs.f32();
  uint8_t* o = out.data<uint8_t>();
  for (int64_t i = 0; i < img_h; ++i)
    for (int64_t j = 0; j < img_w; ++j) {
      const bool inside = i >= y_lo && i < y_hi && j >= x_lo && j < x_hi;
      o[i * img_w + j] = (inside && p[i * img_w + j] >= threshold) ? 1 : 0;
    }
  return out;
}

}  // namespace ref

}  // namespace mambacv::det
