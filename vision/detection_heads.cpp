// vision/detection_heads.cpp - FPN, RPN, Shared2FC box head, FCN mask head (vision/detection_heads.h), on the CPU
// op set (kernels/ops.h) and the detection ops (kernels/detection_ops.h). mmdetection 2.11 semantics throughout.
#include "vision/detection_heads.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "kernels/detection_ops.h"
#include "kernels/ops.h"

namespace mambacv::heads {

namespace {
void check_nhwc(const char* op, const Tensor& x, int64_t channels) {
  MAMBACV_CHECK(x.defined() && x.ndim() == 4 && x.dtype() == DType::F32,
                op << ": expected an f32 (B, H, W, C) map, found " << (x.defined() ? x.str() : "an empty tensor"));
  MAMBACV_CHECK(channels < 0 || x.dim(3) == channels,
                op << ": expected " << channels << " channels, found " << x.str());
}

inline float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }
}  // namespace

void ConvW::prepare() {
  MAMBACV_CHECK(k % 2 == 1, "conv: kernel size must be odd, got " << k);
  Tensor wt = Tensor::view_of(const_cast<float*>(w), {cout, cin, k, k}, DType::F32);
  Tensor bt = b ? Tensor::view_of(const_cast<float*>(b), {cout}, DType::F32) : Tensor();
  prepared = ops::prepare_conv2d(wt, bt, 1, 1, k / 2, k / 2);
}

void LinearW::prepare() {
  prepared = ops::pack_weight(w, in, /*trans_b=*/true, out, in, b);
}

Tensor conv_same_nhwc(const ExecContext& ctx, const Tensor& x, const ConvW& c, bool relu) {
  check_nhwc("conv_same_nhwc", x, c.cin);
  MAMBACV_CHECK(c.prepared.cout == c.cout && c.prepared.cin == c.cin, "conv_same_nhwc: weights not prepared");
  return ops::conv2d(ctx, x, c.prepared, relu);
}

// ---- ConvTranspose2d k2 s2 ----------------------------------------------------------------------------------------
ops::PackedWeight pack_deconv2x2(const float* w, int64_t cin, int64_t cout) {
  // (cin, cout, 2, 2) -> B (cin, 2, 2, cout): row ci of the GEMM's B holds the four output taps of every channel
  std::vector<float> p(static_cast<size_t>(cin * 4 * cout));
  for (int64_t ci = 0; ci < cin; ++ci)
    for (int64_t co = 0; co < cout; ++co)
      for (int t = 0; t < 4; ++t) p[static_cast<size_t>((ci * 4 + t) * cout + co)] = w[(ci * cout + co) * 4 + t];
  return ops::pack_weight(p.data(), 4 * cout, /*trans_b=*/false, 4 * cout, cin);
}

Tensor deconv2x2_nhwc(const ExecContext& ctx, const Tensor& x, const ops::PackedWeight& packed, const float* bias,
                      int64_t cout, bool relu) {
  check_nhwc("deconv2x2_nhwc", x, packed.K);
  MAMBACV_CHECK(packed.N == 4 * cout, "deconv2x2_nhwc: packed weight has " << packed.N << " columns, expected 4 x "
                                                                           << cout);
  const int64_t B = x.dim(0), H = x.dim(1), W = x.dim(2);
  // (B*H*W, Ci) @ (Ci, 4*Co) -> per input pixel its (i, j, co) block
  Tensor blocks = ctx.empty({B * H * W, 4 * cout});
  ops::linear(ctx, x.reshape({B * H * W, x.dim(3)}), packed, blocks);
  Tensor y = ctx.empty({B, 2 * H, 2 * W, cout});
  const float* s = blocks.f32();
  float* d = y.f32();
  parallel_for(ctx, B * H, static_cast<double>(y.numel()), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H, h = r % H;
      for (int64_t w = 0; w < W; ++w) {
        const float* blk = s + ((b * H + h) * W + w) * 4 * cout;
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j) {
            float* o = d + ((b * 2 * H + 2 * h + i) * 2 * W + 2 * w + j) * cout;
            const float* t = blk + (i * 2 + j) * cout;
            for (int64_t co = 0; co < cout; ++co) {
              float v = t[co] + (bias ? bias[co] : 0.0f);
              o[co] = relu ? std::max(v, 0.0f) : v;
            }
          }
      }
    }
  });
  return y;
}

// ---- FPN ----------------------------------------------------------------------------------------------------------
std::vector<Tensor> fpn_forward(const ExecContext& ctx, const std::vector<Tensor>& feats, const FpnW& w) {
  const size_t L = feats.size();
  MAMBACV_CHECK(L == w.lateral.size() && L == w.output.size() && L >= 1,
                "FPN: " << w.lateral.size() << " lateral convs for " << L << " input maps");
  MAMBACV_CHECK(w.num_outs >= static_cast<int>(L), "FPN: num_outs " << w.num_outs << " < " << L << " inputs");
  std::vector<Tensor> lat(L);
  for (size_t i = 0; i < L; ++i) lat[i] = conv_same_nhwc(ctx, feats[i], w.lateral[i], false);  // (B, H_i, W_i, C)
  // top-down: lat[i-1] += nearest(lat[i]) at lat[i-1]'s size
  for (size_t i = L - 1; i >= 1; --i) {
    MAMBACV_CHECK(lat[i].dim(3) == lat[i - 1].dim(3) && lat[i].dim(0) == lat[i - 1].dim(0),
                  "FPN: level " << i << " is " << lat[i].str() << ", level " << i - 1 << " is " << lat[i - 1].str());
    ops::add_nearest_resized(ctx, lat[i], lat[i - 1]);
  }
  std::vector<Tensor> outs(L);
  for (size_t i = 0; i < L; ++i) outs[i] = conv_same_nhwc(ctx, lat[i], w.output[i], false);
  // extra levels: max_pool2d(kernel 1, stride 2) of the last output
  while (static_cast<int>(outs.size()) < w.num_outs) outs.push_back(ops::subsample2(ctx, outs.back()));
  return outs;
}

// ---- RPN ----------------------------------------------------------------------------------------------------------
RpnLevelOut rpn_head_level(const ExecContext& ctx, const Tensor& level, const RpnW& w) {
  check_nhwc("rpn_head", level, w.conv.cin);
  MAMBACV_CHECK(level.dim(0) == 1, "rpn_head: one image at a time, found " << level.str());
  const int64_t H = level.dim(1), W = level.dim(2), A = w.cls.cout;
  Tensor t = conv_same_nhwc(ctx, level, w.conv, /*relu=*/true);  // (1, H, W, F)
  RpnLevelOut o;
  o.h = H;
  o.w = W;
  // rpn_cls: (HW, A) = location-major, anchor-minor, as permute(0, 2, 3, 1).reshape(-1)
  o.scores = conv_same_nhwc(ctx, t, w.cls, false).reshape({H * W * A});
  ops::activate(ctx, ops::Act::Sigmoid, o.scores);
  // rpn_reg: (HW, 4A), channel a*4 + k -> (HW*A, 4)
  o.deltas = conv_same_nhwc(ctx, t, w.reg, false).reshape({H * W * A, 4});
  return o;
}

Tensor rpn_proposals(const std::vector<RpnLevelOut>& levels, const RpnConfig& cfg, int64_t img_h, int64_t img_w) {
  MAMBACV_CHECK(levels.size() == cfg.strides.size(),
                "rpn: " << levels.size() << " levels but " << cfg.strides.size() << " anchor strides");
  const int64_t A = cfg.num_anchors();
  std::vector<float> scores, anchors, deltas;
  std::vector<int64_t> ids;
  for (size_t l = 0; l < levels.size(); ++l) {
    const RpnLevelOut& lv = levels[l];
    const int64_t n = lv.h * lv.w * A;
    MAMBACV_CHECK(lv.scores.numel() == n, "rpn: level " << l << " has " << lv.scores.numel() << " scores, expected "
                                                        << n << " (" << A << " anchors per location)");
    Tensor anc = det::anchors(cfg.strides[l], cfg.strides[l], cfg.scales, cfg.ratios, lv.h, lv.w);  // (n, 4)
    const float* sc = lv.scores.f32();
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    if (cfg.nms_pre > 0 && n > cfg.nms_pre) {  // scores.sort(descending=True)[:nms_pre]
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sc[a] > sc[b]; });
      order.resize(static_cast<size_t>(cfg.nms_pre));
    }
    for (int64_t i : order) {
      scores.push_back(sc[i]);
      ids.push_back(static_cast<int64_t>(l));
      for (int k = 0; k < 4; ++k) {
        anchors.push_back(anc.f32()[i * 4 + k]);
        deltas.push_back(lv.deltas.f32()[i * 4 + k]);
      }
    }
  }
  const int64_t n = static_cast<int64_t>(scores.size());
  Tensor boxes = det::decode_deltas(Tensor::from_vector(anchors, {n, 4}), Tensor::from_vector(deltas, {n, 4}),
                                    cfg.means, cfg.stds, img_h, img_w, /*clip=*/true);
  Tensor sc = Tensor::from_vector(scores, {n});
  Tensor id = Tensor::empty({n}, DType::I64);
  std::copy(ids.begin(), ids.end(), id.data<int64_t>());
  if (cfg.min_bbox_size > 0) {  // mmdet 2.11 keeps w >= min_bbox_size & h >= min_bbox_size
    std::vector<int64_t> keep;
    const float* b = boxes.f32();
    for (int64_t i = 0; i < n; ++i)
      if (b[i * 4 + 2] - b[i * 4 + 0] >= cfg.min_bbox_size && b[i * 4 + 3] - b[i * 4 + 1] >= cfg.min_bbox_size)
        keep.push_back(i);
    const int64_t m = static_cast<int64_t>(keep.size());
    Tensor b2 = Tensor::empty({m, 4}), s2 = Tensor::empty({m}), i2 = Tensor::empty({m}, DType::I64);
    for (int64_t j = 0; j < m; ++j) {
      std::memcpy(b2.f32() + j * 4, b + keep[j] * 4, 4 * sizeof(float));
      s2.f32()[j] = sc.f32()[keep[j]];
      i2.data<int64_t>()[j] = id.data<int64_t>()[keep[j]];
    }
    boxes = b2, sc = s2, id = i2;
  }
  Tensor keep = det::batched_nms(boxes, sc, id, cfg.iou_thr);
  const int64_t k = std::min<int64_t>(keep.numel(), cfg.max_per_img > 0 ? cfg.max_per_img : keep.numel());
  Tensor out = Tensor::empty({k, 5});
  for (int64_t j = 0; j < k; ++j) {
    const int64_t i = keep.data<int64_t>()[j];
    std::memcpy(out.f32() + j * 5, boxes.f32() + i * 4, 4 * sizeof(float));
    out.f32()[j * 5 + 4] = sc.f32()[i];
  }
  return out;
}

// ---- box head -----------------------------------------------------------------------------------------------------
void box_head_forward(const ExecContext& ctx, const Tensor& roi_feats, const BoxHeadW& w, Tensor* cls_score,
                      Tensor* deltas) {
  MAMBACV_CHECK(roi_feats.defined() && roi_feats.ndim() == 4 && roi_feats.dtype() == DType::F32,
                "box_head: expected f32 (n, C, r, r) RoI features, found " << roi_feats.str());
  const int64_t n = roi_feats.dim(0), in = roi_feats.numel() / std::max<int64_t>(n, 1);
  MAMBACV_CHECK(n == 0 || in == w.fc1.in, "box_head: RoI features " << roi_feats.str() << " flatten to " << in
                                                                  << ", shared_fcs.0 expects " << w.fc1.in);
  Tensor h1 = ctx.empty({n, w.fc1.out}), h2 = ctx.empty({n, w.fc2.out});
  *cls_score = ctx.empty({n, w.cls.out});
  *deltas = ctx.empty({n, w.reg.out});
  if (n == 0) return;
  ops::linear(ctx, roi_feats.reshape({n, w.fc1.in}), w.fc1.prepared, h1, false, {}, ops::Act::Relu);
  ops::linear(ctx, h1, w.fc2.prepared, h2, false, {}, ops::Act::Relu);
  ops::linear(ctx, h2, w.cls.prepared, *cls_score);
  ops::linear(ctx, h2, w.reg.prepared, *deltas);
}

namespace {
// Shared by the fast and the reference post-processing: softmax (with the y2 == 0 padding rule), class boxes and
// the score threshold. Returns the candidates in (roi, class) order.
struct Candidates {
  std::vector<float> boxes, scores;
  std::vector<int64_t> labels;
};
Candidates box_candidates(const Tensor& proposals, const Tensor& cls_score, const Tensor& deltas,
                          const RcnnConfig& cfg, int64_t img_h, int64_t img_w) {
  MAMBACV_CHECK(proposals.defined() && proposals.ndim() == 2 && proposals.dim(1) >= 4,
                "box_postprocess: proposals must be (n, 4) or (n, 5), found " << proposals.str());
  const int64_t n = proposals.dim(0), P = proposals.dim(1), K1 = cls_score.dim(1), K = K1 - 1;
  MAMBACV_CHECK(cls_score.dim(0) == n && deltas.dim(0) == n && deltas.dim(1) == 4 * K,
                "box_postprocess: cls_score " << cls_score.str() << " and deltas " << deltas.str()
                                              << " do not match " << n << " proposals with (K+1, 4K) columns");
  Tensor rois = Tensor::empty({n, 4});
  Tensor d = deltas.clone();
  std::vector<float> prob(static_cast<size_t>(n * K1));
  for (int64_t i = 0; i < n; ++i) {
    const float* p = proposals.f32() + i * P;
    std::memcpy(rois.f32() + i * 4, p, 4 * sizeof(float));
    const bool padding = p[3] == 0.0f;  // simple_test_bboxes: cls_score / bbox_pred zeroed where rois[..., -1] == 0
    const float* z = cls_score.f32() + i * K1;
    float mx = padding ? 0.0f : *std::max_element(z, z + K1), sum = 0;
    float* pr = prob.data() + i * K1;
    for (int64_t c = 0; c < K1; ++c) sum += pr[c] = std::exp((padding ? 0.0f : z[c]) - mx);
    for (int64_t c = 0; c < K1; ++c) pr[c] /= sum;
    if (padding) std::fill(d.f32() + i * 4 * K, d.f32() + (i + 1) * 4 * K, 0.0f);
  }
  Tensor boxes = det::decode_deltas(rois, d, cfg.means, cfg.stds, img_h, img_w, /*clip=*/true);  // (n, 4K)
  Candidates c;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < K; ++k) {
      const float s = prob[static_cast<size_t>(i * K1 + k)];
      if (!(s > cfg.score_thr)) continue;
      const float* b = boxes.f32() + (i * K + k) * 4;
      c.boxes.insert(c.boxes.end(), b, b + 4);
      c.scores.push_back(s);
      c.labels.push_back(k);
    }
  return c;
}

Detections gather(const Candidates& c, const std::vector<int64_t>& keep) {
  const int64_t m = static_cast<int64_t>(keep.size());
  Detections d;
  d.boxes = Tensor::empty({m, 4});
  d.scores = Tensor::empty({m});
  d.labels = Tensor::empty({m}, DType::I64);
  for (int64_t j = 0; j < m; ++j) {
    const size_t i = static_cast<size_t>(keep[static_cast<size_t>(j)]);
    std::memcpy(d.boxes.f32() + j * 4, c.boxes.data() + i * 4, 4 * sizeof(float));
    d.scores.f32()[j] = c.scores[i];
    d.labels.data<int64_t>()[j] = c.labels[i];
  }
  return d;
}
}  // namespace

Detections box_postprocess(const Tensor& proposals, const Tensor& cls_score, const Tensor& deltas,
                           const RcnnConfig& cfg, int64_t img_h, int64_t img_w) {
  Candidates c = box_candidates(proposals, cls_score, deltas, cfg, img_h, img_w);
  const int64_t m = static_cast<int64_t>(c.scores.size());
  std::vector<int64_t> keep;
  if (m > 0) {
    Tensor id = Tensor::empty({m}, DType::I64);
    std::copy(c.labels.begin(), c.labels.end(), id.data<int64_t>());
    Tensor k = det::batched_nms(Tensor::from_vector(c.boxes, {m, 4}), Tensor::from_vector(c.scores, {m}), id,
                                cfg.iou_thr);
    const int64_t n = cfg.max_per_img > 0 ? std::min(k.numel(), cfg.max_per_img) : k.numel();
    keep.assign(k.data<int64_t>(), k.data<int64_t>() + n);
  }
  return gather(c, keep);
}

// ---- mask head ----------------------------------------------------------------------------------------------------
Tensor mask_head_probs(const ExecContext& ctx, const Tensor& roi_feats, const MaskHeadW& w, const Tensor& labels) {
  MAMBACV_CHECK(roi_feats.defined() && roi_feats.ndim() == 4 && roi_feats.dtype() == DType::F32,
                "mask_head: expected f32 (n, C, r, r) RoI features, found " << roi_feats.str());
  const int64_t n = roi_feats.dim(0), r = roi_feats.dim(2), r2 = roi_feats.dim(3);
  MAMBACV_CHECK(labels.numel() == n && labels.dtype() == DType::I64,
                "mask_head: expected " << n << " i64 labels, found " << labels.str());
  Tensor out = ctx.empty({n, 2 * r, 2 * r2});
  if (n == 0) return out;
  Tensor x = ops::nchw_to_nhwc(ctx, roi_feats);
  for (const ConvW& c : w.convs) x = conv_same_nhwc(ctx, x, c, /*relu=*/true);
  x = deconv2x2_nhwc(ctx, x, w.up_packed, w.up_b, w.up_cout, /*relu=*/true);  // (n, 2r, 2r, Cm)
  const int64_t P = 4 * r * r2, Cm = x.dim(3), K = w.logits.cout;
  MAMBACV_CHECK(Cm == w.logits.cin, "mask_head: conv_logits expects " << w.logits.cin << " channels, found " << Cm);
  const int64_t* lab = labels.data<int64_t>();
  parallel_for(ctx, n, static_cast<double>(n * P * Cm), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t l = lab[i];
      if (l < 0 || l >= K) continue;  // checked below (exceptions may not leave the parallel region)
      const float* wl = w.logits.w + l * Cm;
      const float bl = w.logits.b ? w.logits.b[l] : 0.0f;
      for (int64_t p = 0; p < P; ++p) {
        const float* xp = x.f32() + (i * P + p) * Cm;
        float acc = 0;
        for (int64_t c = 0; c < Cm; ++c) acc += xp[c] * wl[c];
        out.f32()[i * P + p] = sigmoid(acc + bl);
      }
    }
  });
  for (int64_t i = 0; i < n; ++i)
    MAMBACV_CHECK(lab[i] >= 0 && lab[i] < K, "mask_head: label " << lab[i] << " of roi " << i << " is outside [0, "
                                                                 << K << ")");
  return out;
}

RleCounts rle_encode_window(const uint8_t* m, int64_t h, int64_t w, int64_t y0, int64_t y1, int64_t x0, int64_t x1) {
  y0 = std::clamp<int64_t>(y0, 0, h), y1 = std::clamp<int64_t>(y1, y0, h);
  x0 = std::clamp<int64_t>(x0, 0, w), x1 = std::clamp<int64_t>(x1, x0, w);
  RleCounts r;
  r.h = h;
  r.w = w;
  uint8_t cur = 0;
  uint64_t run = 0;
  auto push = [&](uint8_t v, uint64_t len) {
    if (len == 0) return;
    if (v != cur) {
      r.counts.push_back(static_cast<uint32_t>(run));
      run = 0;
      cur = v;
    }
    run += len;
  };
  push(0, static_cast<uint64_t>(x0 * h));
  for (int64_t x = x0; x < x1; ++x) {
    push(0, static_cast<uint64_t>(y0));
    for (int64_t y = y0; y < y1; ++y) push(m[y * w + x] ? 1 : 0, 1);
    push(0, static_cast<uint64_t>(h - y1));
  }
  push(0, static_cast<uint64_t>((w - x1) * h));
  r.counts.push_back(static_cast<uint32_t>(run));
  return r;
}

// ---- references ---------------------------------------------------------------------------------------------------
namespace ref {

Tensor conv_same_nchw(const Tensor& x, const ConvW& c, bool relu) {
  const int64_t B = x.dim(0), Ci = x.dim(1), H = x.dim(2), W = x.dim(3), p = c.k / 2;
  Tensor y = Tensor::empty({B, c.cout, H, W});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t co = 0; co < c.cout; ++co)
      for (int64_t yy = 0; yy < H; ++yy)
        for (int64_t xx = 0; xx < W; ++xx) {
          double acc = c.b ? c.b[co] : 0.0;
          for (int64_t ci = 0; ci < Ci; ++ci)
            for (int i = 0; i < c.k; ++i)
              for (int j = 0; j < c.k; ++j) {
                const int64_t sy = yy + i - p, sx = xx + j - p;
                if (sy < 0 || sy >= H || sx < 0 || sx >= W) continue;
                acc += static_cast<double>(x.f32()[((b * Ci + ci) * H + sy) * W + sx]) *
                       c.w[((co * Ci + ci) * c.k + i) * c.k + j];
              }
          float v = static_cast<float>(acc);
          y.f32()[((b * c.cout + co) * H + yy) * W + xx] = relu ? std::max(v, 0.0f) : v;
        }
  return y;
}

Tensor deconv2x2_nchw(const Tensor& x, const float* w, const float* bias, int64_t cout, bool relu) {
  const int64_t B = x.dim(0), Ci = x.dim(1), H = x.dim(2), W = x.dim(3);
  Tensor y = Tensor::empty({B, cout, 2 * H, 2 * W});
  // PyTorch ConvTranspose2d: out[oy, ox] += x[iy, ix] * w[ci, co, oy - 2 iy, ox - 2 ix] for taps in [0, 2)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t co = 0; co < cout; ++co)
      for (int64_t oy = 0; oy < 2 * H; ++oy)
        for (int64_t ox = 0; ox < 2 * W; ++ox) {
          double acc = bias ? bias[co] : 0.0;
          for (int64_t ci = 0; ci < Ci; ++ci)
            for (int64_t iy = 0; iy < H; ++iy)
              for (int64_t ix = 0; ix < W; ++ix) {
                const int64_t ky = oy - 2 * iy, kx = ox - 2 * ix;
                if (ky < 0 || ky > 1 || kx < 0 || kx > 1) continue;
                acc += static_cast<double>(x.f32()[((b * Ci + ci) * H + iy) * W + ix]) *
                       w[((ci * cout + co) * 2 + ky) * 2 + kx];
              }
          float v = static_cast<float>(acc);
          y.f32()[((b * cout + co) * 2 * H + oy) * 2 * W + ox] = relu ? std::max(v, 0.0f) : v;
        }
  return y;
}

std::vector<Tensor> fpn_forward_nchw(const std::vector<Tensor>& feats, const FpnW& w) {
  const size_t L = feats.size();
  std::vector<Tensor> lat(L);
  for (size_t i = 0; i < L; ++i) lat[i] = conv_same_nchw(feats[i], w.lateral[i], false);
  for (size_t i = L - 1; i >= 1; --i) {
    const Tensor& c = lat[i];
    Tensor& f = lat[i - 1];
    const int64_t B = f.dim(0), C = f.dim(1), H = f.dim(2), W = f.dim(3), Hc = c.dim(2), Wc = c.dim(3);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t ch = 0; ch < C; ++ch)
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x) {
            const int64_t sy = std::min<int64_t>(static_cast<int64_t>(std::floor(y * static_cast<double>(Hc) / H)),
                                                 Hc - 1);
            const int64_t sx = std::min<int64_t>(static_cast<int64_t>(std::floor(x * static_cast<double>(Wc) / W)),
                                                 Wc - 1);
            f.f32()[((b * C + ch) * H + y) * W + x] += c.f32()[((b * C + ch) * Hc + sy) * Wc + sx];
          }
  }
  std::vector<Tensor> outs;
  for (size_t i = 0; i < L; ++i) outs.push_back(conv_same_nchw(lat[i], w.output[i], false));
  while (static_cast<int>(outs.size()) < w.num_outs) {
    const Tensor& p = outs.back();
    const int64_t B = p.dim(0), C = p.dim(1), H = p.dim(2), W = p.dim(3), Ho = (H + 1) / 2, Wo = (W + 1) / 2;
    Tensor q = Tensor::empty({B, C, Ho, Wo});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t ch = 0; ch < C; ++ch)
        for (int64_t y = 0; y < Ho; ++y)
          for (int64_t x = 0; x < Wo; ++x)
            q.f32()[((b * C + ch) * Ho + y) * Wo + x] = p.f32()[((b * C + ch) * H + 2 * y) * W + 2 * x];
    outs.push_back(q);
  }
  return outs;
}

namespace {
void naive_linear(const float* x, int64_t n, const LinearW& l, bool relu, float* y) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < l.out; ++o) {
      double acc = l.b ? l.b[o] : 0.0;
      for (int64_t k = 0; k < l.in; ++k) acc += static_cast<double>(x[i * l.in + k]) * l.w[o * l.in + k];
      const float v = static_cast<float>(acc);
      y[i * l.out + o] = relu ? std::max(v, 0.0f) : v;
    }
}
}  // namespace

void box_head_forward(const Tensor& roi_feats, const BoxHeadW& w, Tensor* cls_score, Tensor* deltas) {
  const int64_t n = roi_feats.dim(0);
  std::vector<float> h1(static_cast<size_t>(n * w.fc1.out)), h2(static_cast<size_t>(n * w.fc2.out));
  naive_linear(roi_feats.f32(), n, w.fc1, true, h1.data());  // flatten (C, r, r) == the NCHW row
  naive_linear(h1.data(), n, w.fc2, true, h2.data());
  *cls_score = Tensor::empty({n, w.cls.out});
  *deltas = Tensor::empty({n, w.reg.out});
  naive_linear(h2.data(), n, w.cls, false, cls_score->f32());
  naive_linear(h2.data(), n, w.reg, false, deltas->f32());
}

Tensor mask_head_logits(const Tensor& roi_feats, const MaskHeadW& w, const float* up_w) {
  Tensor x = roi_feats;
  for (const ConvW& c : w.convs) x = conv_same_nchw(x, c, true);
  x = deconv2x2_nchw(x, up_w, w.up_b, w.up_cout, true);
  return conv_same_nchw(x, w.logits, false);
}

Detections box_postprocess(const Tensor& proposals, const Tensor& cls_score, const Tensor& deltas,
                           const RcnnConfig& cfg, int64_t img_h, int64_t img_w) {
  Candidates c = box_candidates(proposals, cls_score, deltas, cfg, img_h, img_w);
  const size_t m = c.scores.size();
  auto iou = [&](size_t a, size_t b) {
    const float* p = c.boxes.data() + a * 4;
    const float* q = c.boxes.data() + b * 4;
    const float iw = std::max(0.0f, std::min(p[2], q[2]) - std::max(p[0], q[0]));
    const float ih = std::max(0.0f, std::min(p[3], q[3]) - std::max(p[1], q[1]));
    const float inter = iw * ih;
    return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter);
  };
  std::vector<size_t> order(m);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return c.scores[a] > c.scores[b]; });
  std::vector<int64_t> keep;
  for (size_t a : order) {  // greedy per class: suppressed by a kept box of the same class with IoU > thr
    bool ok = true;
    for (int64_t k : keep)
      if (c.labels[static_cast<size_t>(k)] == c.labels[a] && iou(static_cast<size_t>(k), a) > cfg.iou_thr) {
        ok = false;
        break;
      }
    if (ok) keep.push_back(static_cast<int64_t>(a));
  }
  if (cfg.max_per_img > 0 && static_cast<int64_t>(keep.size()) > cfg.max_per_img)
    keep.resize(static_cast<size_t>(cfg.max_per_img));
  return gather(c, keep);
}

}  // namespace ref
}  // namespace mambacv::heads
