// kernels/cpu/det_roi_align.cpp - RoIAlign (average pooling of bilinear samples) for one image, the fast CPU path,
// the multi-level (FPN) extractor and the plain reference (kernels/detection_ops.h).
// Semantics: mmcv ops/csrc/.../roi_align (pool_mode avg) and torchvision roi_align, aligned=True offset 0.5.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/det_common.h"
#include "kernels/detection_ops.h"
#include "kernels/ops.h"

namespace mambacv::det {

using detail::check_boxes;
using detail::check_host;
using detail::check_tensor;

namespace {

// Geometry of one roi on one feature map, computed as upstream does (f32, same operation order).
struct RoiGeometry {
  float start_y, start_x, bin_h, bin_w;
  int grid_h, grid_w;  // samples per bin along y / x (may be <= 0 for an inverted roi: then no samples)
  float count;         // max(grid_h * grid_w, 1)
};

RoiGeometry roi_geometry(const float* roi, float spatial_scale, int64_t out_h, int64_t out_w, int sampling_ratio,
                         bool aligned) {
  const float offset = aligned ? 0.5f : 0.0f;
  RoiGeometry g;
  g.start_x = roi[0] * spatial_scale - offset;
  g.start_y = roi[1] * spatial_scale - offset;
  const float end_x = roi[2] * spatial_scale - offset;
  const float end_y = roi[3] * spatial_scale - offset;
  float roi_w = end_x - g.start_x;
  float roi_h = end_y - g.start_y;
  if (!aligned) {  // legacy behaviour: rois at least 1x1
    roi_w = std::max(roi_w, 1.0f);
    roi_h = std::max(roi_h, 1.0f);
  }
  g.bin_h = roi_h / static_cast<float>(out_h);
  g.bin_w = roi_w / static_cast<float>(out_w);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(std::ceil(roi_h / static_cast<float>(out_h)));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(std::ceil(roi_w / static_cast<float>(out_w)));
  g.count = static_cast<float>(std::max(g.grid_h * g.grid_w, 1));
  return g;
}

// Sample coordinate ph * bin + (i + 0.5) * bin / grid from start, as upstream.
inline float sample_coord(float start, int64_t p, float bin, int i, int grid) {
  return start + static_cast<float>(p) * bin + static_cast<float>(i + 0.5f) * bin / static_cast<float>(grid);
}

// One axis of a bilinear tap: the two neighbours (lo, hi) and their weights (w_lo = 1 - frac, w_hi = frac);
// valid false when the coordinate lies beyond -1 or size (the whole sample is then 0).
struct AxisTap {
  int64_t lo, hi;
  float w_lo, w_hi;
  bool valid;
};

inline AxisTap axis_tap(float v, int64_t size) {
  AxisTap t{0, 0, 0.0f, 0.0f, false};
  if (v < -1.0f || v > static_cast<float>(size)) return t;
  if (v <= 0) v = 0;
  int64_t lo = static_cast<int64_t>(v);
  int64_t hi;
  if (lo >= size - 1) {
    hi = lo = size - 1;
    v = static_cast<float>(lo);
  } else {
    hi = lo + 1;
  }
  const float l = v - static_cast<float>(lo);
  t.lo = lo;
  t.hi = hi;
  t.w_hi = l;
  t.w_lo = 1.0f - l;
  t.valid = true;
  return t;
}

// Combined bilinear weights of every output row (or column) of one roi along one axis: output index p reads the
// input indices [start[p], start[p] + len[p]) with weights w[off[p] + k] (the sum, over p's valid samples, of the
// tap weights landing on each index). Samples beyond -1 or size contribute nothing.
struct AxisWeights {
  std::vector<int64_t> start, len, off;
  std::vector<float> w;
  std::vector<AxisTap> taps;  // scratch: the taps of one output index
  int64_t lo = 0, hi = 0;     // union of the ranges: [lo, hi)
};

void axis_weights(float start, float bin, int grid, int64_t out, int64_t size, AxisWeights& aw) {
  aw.start.assign(static_cast<size_t>(out), 0);
  aw.len.assign(static_cast<size_t>(out), 0);
  aw.off.assign(static_cast<size_t>(out), 0);
  aw.w.clear();
  aw.lo = size;
  aw.hi = 0;
  for (int64_t p = 0; p < out; ++p) {
    aw.taps.clear();
    int64_t lo = size, hi = -1;
    for (int i = 0; i < grid; ++i) {
      const AxisTap t = axis_tap(sample_coord(start, p, bin, i, grid), size);
      if (!t.valid) continue;
      aw.taps.push_back(t);
      lo = std::min(lo, t.lo);
      hi = std::max(hi, t.hi);
    }
    if (hi < lo) continue;  // no valid sample: this output row / column is 0
    const int64_t off = static_cast<int64_t>(aw.w.size());
    aw.w.resize(static_cast<size_t>(off + hi - lo + 1), 0.0f);
    for (const AxisTap& t : aw.taps) {
      aw.w[off + t.lo - lo] += t.w_lo;
      aw.w[off + t.hi - lo] += t.w_hi;
    }
    aw.start[p] = lo;
    aw.len[p] = hi - lo + 1;
    aw.off[p] = off;
    aw.lo = std::min(aw.lo, lo);
    aw.hi = std::max(aw.hi, hi + 1);
  }
}

// Per-thread scratch of the fast path.
struct Workspace {
  AxisWeights wy, wx;
  std::vector<float> rows;  // (rows of the roi's window, out_w): each input row reduced to the output columns
  std::vector<float> acc;   // (out_w)
};

// Fast RoIAlign of one roi: feat (C, H, W) -> out (C, out_h, out_w).
// The bilinear taps are separable and every sample of a bin has the same 1 / count weight, so a bin's average is
// sum_r Wy[ph][r] * sum_c Wx[pw][c] * v[r][c] / count with per-bin row weights Wy and column weights Wx (the taps
// of the bin's samples added up per input index). Per roi these weights are built once; per channel the roi's
// window is reduced first along x (each input row to out_w values), then along y. That costs about one
// multiply-add per window pixel instead of four taps per sample (the adaptive grid has up to ceil(roi/out)^2
// samples per bin); the sums associate differently from the reference, which agrees to rounding (~1e-7 relative).
void roi_align_one_fast(const float* feat, int64_t C, int64_t H, int64_t W, const float* roi, float spatial_scale,
                        int64_t out_h, int64_t out_w, int sampling_ratio, bool aligned, float* out,
                        Workspace& ws) {
  const RoiGeometry g = roi_geometry(roi, spatial_scale, out_h, out_w, sampling_ratio, aligned);
  const int64_t HW = H * W, bins = out_h * out_w;
  std::fill(out, out + C * bins, 0.0f);
  if (g.grid_h <= 0 || g.grid_w <= 0 || HW == 0) return;
  axis_weights(g.start_y, g.bin_h, g.grid_h, out_h, H, ws.wy);
  axis_weights(g.start_x, g.bin_w, g.grid_w, out_w, W, ws.wx);
  if (ws.wy.hi <= ws.wy.lo || ws.wx.hi <= ws.wx.lo) return;  // every sample outside the map
  const int64_t r0 = ws.wy.lo, nrows = ws.wy.hi - ws.wy.lo;
  ws.rows.resize(static_cast<size_t>(nrows * out_w));
  ws.acc.resize(static_cast<size_t>(out_w));
  const AxisWeights& wy = ws.wy;
  const AxisWeights& wx = ws.wx;
  float* rows = ws.rows.data();
  float* acc = ws.acc.data();
  const int64_t c0 = wx.lo, c1 = wx.hi - 1;  // window columns
  for (int64_t c = 0; c < C; ++c) {
    const float* plane = feat + c * HW;
    if (c + 1 < C) {  // the window rows of the next channel: independent cache misses, issued early
      const float* next = plane + HW + r0 * W;
      for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t col = c0; col <= c1; col += 16) __builtin_prefetch(next + r * W + col);
        __builtin_prefetch(next + r * W + c1);
      }
    }
    // x pass: rows[r][pw] = sum_k Wx[pw][k] * v[r0 + r][start_x[pw] + k]
    for (int64_t r = 0; r < nrows; ++r) {
      const float* vrow = plane + (r0 + r) * W;
      float* dst = rows + r * out_w;
      for (int64_t pw = 0; pw < out_w; ++pw) {
        const float* w = wx.w.data() + wx.off[pw];
        const float* v = vrow + wx.start[pw];
        float s = 0.0f;
        for (int64_t k = 0; k < wx.len[pw]; ++k) s += w[k] * v[k];
        dst[pw] = s;
      }
    }
    // y pass: out[ph][pw] = sum_k Wy[ph][k] * rows[start_y[ph] + k - r0][pw] / count
    float* oc = out + c * bins;
    for (int64_t ph = 0; ph < out_h; ++ph) {
      std::fill(acc, acc + out_w, 0.0f);
      const float* w = wy.w.data() + wy.off[ph];
      for (int64_t k = 0; k < wy.len[ph]; ++k) {
        const float wk = w[k];
        const float* src = rows + (wy.start[ph] + k - r0) * out_w;
#pragma omp simd
        for (int64_t pw = 0; pw < out_w; ++pw) acc[pw] += wk * src[pw];
      }
      for (int64_t pw = 0; pw < out_w; ++pw) oc[ph * out_w + pw] = acc[pw] / g.count;
    }
  }
}

// feat (C, H, W) or (1, C, H, W) -> {C, H, W}.
std::array<int64_t, 3> feature_dims(const char* op, const char* name, const Tensor& feat) {
  MAMBACV_CHECK(feat.defined(), op << ": " << name << " is an undefined tensor");
  MAMBACV_CHECK(feat.dtype() == DType::F32, op << ": " << name << " must be f32, found " << feat.str());
  if (feat.ndim() == 4) {
    MAMBACV_CHECK(feat.dim(0) == 1, op << ": " << name << " must hold one image, (C, H, W) or (1, C, H, W), found "
                                       << feat.str());
    return {feat.dim(1), feat.dim(2), feat.dim(3)};
  }
  MAMBACV_CHECK(feat.ndim() == 3, op << ": " << name << " must be (C, H, W) or (1, C, H, W), found " << feat.str());
  return {feat.dim(0), feat.dim(1), feat.dim(2)};
}

void check_roi_args(const char* op, const Tensor& rois, int64_t out_h, int64_t out_w, int sampling_ratio) {
  check_boxes(op, "rois", rois);
  MAMBACV_CHECK(out_h >= 1 && out_w >= 1, op << ": output size must be >= 1, found " << out_h << " x " << out_w);
  MAMBACV_CHECK(sampling_ratio >= 0, op << ": sampling_ratio must be >= 0 (0: adaptive), found " << sampling_ratio);
}

}  // namespace

// ---- dispatch -------------------------------------------------------------------------------------------------------
Tensor roi_align(const ExecContext& ctx, const Tensor& feat, const Tensor& rois, float spatial_scale, int64_t out_h,
                 int64_t out_w, int sampling_ratio, bool aligned) {
  const char* op = "det::roi_align";
  feature_dims(op, "feat", feat);
  check_roi_args(op, rois, out_h, out_w, sampling_ratio);
  MAMBACV_CHECK(spatial_scale > 0, op << ": spatial_scale must be > 0, found " << spatial_scale);
  check_host(op, "feat", feat);
  check_host(op, "rois", rois);
  return roi_align_cpu(ctx, feat, rois, spatial_scale, out_h, out_w, sampling_ratio, aligned);
}

// ---- fast CPU path --------------------------------------------------------------------------------------------------
Tensor roi_align_cpu(const ExecContext& ctx, const Tensor& feat, const Tensor& rois, float spatial_scale, int64_t out_h, int64_t out_w,
                     int sampling_ratio, bool aligned) {
  // plain variables, not a structured binding: the parallel lambda captures them (C++17 does not allow capturing
  // structured bindings; clang rejects it)
  const std::array<int64_t, 3> dims = feature_dims("det::roi_align_cpu", "feat", feat);
  const int64_t C = dims[0], H = dims[1], W = dims[2];
  const int64_t n = rois.dim(0);
  Tensor out = ctx.empty({n, C, out_h, out_w});
  const float* f = feat.f32();
  const float* r = rois.f32();
  float* o = out.f32();
  const int64_t per_roi = C * out_h * out_w;
  parallel_for(ctx, n, static_cast<double>(n * per_roi) * 16, [&](int64_t i0, int64_t i1) {
    Workspace ws;
    for (int64_t i = i0; i < i1; ++i)
      roi_align_one_fast(f, C, H, W, r + i * 4, spatial_scale, out_h, out_w, sampling_ratio, aligned,
                         o + i * per_roi, ws);
  });
  return out;
}

Tensor multilevel_roi_align(const ExecContext& ctx, const std::vector<Tensor>& feats, const std::vector<float>& strides, const Tensor& rois,
                            int64_t out_h, int64_t out_w, int sampling_ratio, float finest_scale, bool aligned) {
  const char* op = "det::multilevel_roi_align";
  MAMBACV_CHECK(!feats.empty(), op << ": feats must hold at least one level, found none");
  MAMBACV_CHECK(strides.size() == feats.size(),
                op << ": " << feats.size() << " feature levels but " << strides.size() << " strides");
  check_roi_args(op, rois, out_h, out_w, sampling_ratio);
  check_host(op, "rois", rois);
  std::vector<std::array<int64_t, 3>> dims;
  for (size_t l = 0; l < feats.size(); ++l) {
    const std::string name = "feats[" + std::to_string(l) + "]";
    dims.push_back(feature_dims(op, name.c_str(), feats[l]));
    check_host(op, name.c_str(), feats[l]);
    MAMBACV_CHECK(dims[l][0] == dims[0][0], op << ": every level must have " << dims[0][0] << " channels, "
                                               << name << " is " << feats[l].str());
    MAMBACV_CHECK(strides[l] > 0, op << ": strides[" << l << "] must be > 0, found " << strides[l]);
  }
  const Tensor levels = map_roi_levels(rois, finest_scale, static_cast<int>(feats.size()));
  const int64_t n = rois.dim(0), C = dims[0][0];
  // traced by its output bytes only (its bilinear taps per bin depend on each RoI's size)
  const OpTrace trace(ctx, "roi_align", 0.0, static_cast<double>(n * C * out_h * out_w) * sizeof(float));
  Tensor out = ctx.empty({n, C, out_h, out_w});
  const int64_t* lv = levels.data<int64_t>();
  const float* r = rois.f32();
  float* o = out.f32();
  const int64_t per_roi = C * out_h * out_w;
  std::vector<const float*> fp;
  for (const Tensor& f : feats) fp.push_back(f.f32());
  parallel_for(ctx, n, static_cast<double>(n * per_roi) * 16, [&](int64_t i0, int64_t i1) {
    Workspace ws;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t l = lv[i];
      roi_align_one_fast(fp[l], C, dims[l][1], dims[l][2], r + i * 4, 1.0f / strides[l], out_h, out_w,
                         sampling_ratio, aligned, o + i * per_roi, ws);
    }
  });
  return out;
}

// ---- plain reference --------------------------------------------------------------------------------------------
namespace ref {

namespace {
// Bilinear value at (y, x) of one plane (H, W), with the roi_align border rules.
float bilinear(const float* plane, int64_t H, int64_t W, float y, float x) {
  if (y < -1.0f || y > static_cast<float>(H) || x < -1.0f || x > static_cast<float>(W)) return 0.0f;
  if (y <= 0) y = 0;
  if (x <= 0) x = 0;
  int64_t y_low = static_cast<int64_t>(y), x_low = static_cast<int64_t>(x), y_high, x_high;
  if (y_low >= H - 1) {
    y_high = y_low = H - 1;
    y = static_cast<float>(y_low);
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= W - 1) {
    x_high = x_low = W - 1;
    x = static_cast<float>(x_low);
  } else {
    x_high = x_low + 1;
  }
  const float ly = y - static_cast<float>(y_low), lx = x - static_cast<float>(x_low);
  const float hy = 1.0f - ly, hx = 1.0f - lx;
  const float w1 = hy * hx, w2 = hy * lx, w3 = ly * hx, w4 = ly * lx;
  return w1 * plane[y_low * W + x_low] + w2 * plane[y_low * W + x_high] + w3 * plane[y_high * W + x_low] +
         w4 * plane[y_high * W + x_high];
}
}  // namespace

Tensor roi_align(const Tensor& feat, const Tensor& rois, float spatial_scale, int64_t out_h, int64_t out_w,
                 int sampling_ratio, bool aligned) {
  const char* op = "det::ref::roi_align";
  const auto [C, H, W] = feature_dims(op, "feat", feat);
  check_roi_args(op, rois, out_h, out_w, sampling_ratio);
  const int64_t n = rois.dim(0);
  Tensor out = Tensor::empty({n, C, out_h, out_w});
  const float* f = feat.f32();
  float* o = out.f32();
  for (int64_t i = 0; i < n; ++i) {
    const RoiGeometry g = roi_geometry(rois.f32() + i * 4, spatial_scale, out_h, out_w, sampling_ratio, aligned);
    for (int64_t c = 0; c < C; ++c) {
      const float* plane = f + c * H * W;
      for (int64_t ph = 0; ph < out_h; ++ph) {
        for (int64_t pw = 0; pw < out_w; ++pw) {
          float acc = 0.0f;
          for (int iy = 0; iy < g.grid_h; ++iy) {
            const float y = sample_coord(g.start_y, ph, g.bin_h, iy, g.grid_h);
            for (int ix = 0; ix < g.grid_w; ++ix) {
              const float x = sample_coord(g.start_x, pw, g.bin_w, ix, g.grid_w);
              if (H * W > 0) acc += bilinear(plane, H, W, y, x);
            }
          }
          o[((i * C + c) * out_h + ph) * out_w + pw] = acc / g.count;
        }
      }
    }
  }
  return out;
}

}  // namespace ref

}  // namespace mambacv::det
