// kernels/cpu/det_nms.cpp - greedy NMS and per-class (batched) NMS, fast CPU path and plain reference
// (kernels/detection_ops.h). Semantics: torchvision csrc/ops/cpu/nms_kernel.cpp and mmcv ops/nms.py (offset 0).
#include <algorithm>
#include <numeric>
#include <vector>

#include "kernels/cpu/det_common.h"
#include "kernels/detection_ops.h"

namespace mambacv::det {

using detail::check_boxes;
using detail::check_host;
using detail::check_scores;
using detail::check_tensor;

namespace {

// Indices 0..n-1 sorted by descending score; ties keep the lower index first (stable, as torch's
// sort(stable=True, descending=True)).
std::vector<int64_t> order_by_score(const float* scores, int64_t n) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [scores](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  return order;
}

Tensor to_index_tensor(const std::vector<int64_t>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::I64);
  std::copy(v.begin(), v.end(), t.data<int64_t>());
  return t;
}

// Fast greedy NMS over boxes (n, 4) given as a raw pointer; returns kept indices in `order`'s index space.
// The boxes are gathered in score order into structure-of-arrays, so the suppression loop over the later boxes
// is a branch-free, vectorisable pass; suppressed boxes are skipped as candidates. The IoU arithmetic is the
// reference's, operation for operation, so both give the same decisions.
std::vector<int64_t> nms_sorted_fast(const float* boxes, const std::vector<int64_t>& order, float iou_thr,
                                     int64_t max_keep) {
  const int64_t n = static_cast<int64_t>(order.size());
  std::vector<float> x1(n), y1(n), x2(n), y2(n), area(n);
  for (int64_t i = 0; i < n; ++i) {
    const float* b = boxes + order[i] * 4;
    x1[i] = b[0];
    y1[i] = b[1];
    x2[i] = b[2];
    y2[i] = b[3];
    area[i] = (b[2] - b[0]) * (b[3] - b[1]);
  }
  std::vector<uint8_t> suppressed(static_cast<size_t>(n), 0);
  std::vector<int64_t> keep;
  const float* X1 = x1.data();
  const float* Y1 = y1.data();
  const float* X2 = x2.data();
  const float* Y2 = y2.data();
  const float* AR = area.data();
  uint8_t* S = suppressed.data();
  for (int64_t i = 0; i < n; ++i) {
    if (S[i]) continue;
    keep.push_back(order[i]);
    if (max_keep >= 0 && static_cast<int64_t>(keep.size()) >= max_keep) break;
    const float ix1 = X1[i], iy1 = Y1[i], ix2 = X2[i], iy2 = Y2[i], iarea = AR[i];
#pragma omp simd
    for (int64_t j = i + 1; j < n; ++j) {
      const float xx1 = std::max(ix1, X1[j]);
      const float yy1 = std::max(iy1, Y1[j]);
      const float xx2 = std::min(ix2, X2[j]);
      const float yy2 = std::min(iy2, Y2[j]);
      const float w = std::max(0.0f, xx2 - xx1);
      const float h = std::max(0.0f, yy2 - yy1);
      const float inter = w * h;
      const float ovr = inter / (iarea + AR[j] - inter);
      S[j] = static_cast<uint8_t>(S[j] | (ovr > iou_thr));
    }
  }
  return keep;
}

void check_nms_args(const char* op, const Tensor& boxes, const Tensor& scores) {
  check_boxes(op, "boxes", boxes);
  check_scores(op, "scores", scores, boxes.dim(0));
}

void check_idxs(const char* op, const Tensor& idxs, int64_t n) {
  check_tensor(op, "idxs", idxs, DType::I64, 1);
  MAMBACV_CHECK(idxs.dim(0) == n, op << ": idxs must be (" << n << ") to match the boxes, found " << idxs.str());
}

// mmcv batched_nms's coordinate-offset trick: boxes + idx * (max(boxes) + 1), in f32 -> (n, 4).
std::vector<float> offset_boxes(const float* boxes, const int64_t* idxs, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n * 4));
  if (n == 0) return out;
  float max_coord = boxes[0];
  for (int64_t i = 1; i < n * 4; ++i) max_coord = std::max(max_coord, boxes[i]);
  const float step = max_coord + 1.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float off = static_cast<float>(idxs[i]) * step;
    for (int c = 0; c < 4; ++c) out[i * 4 + c] = boxes[i * 4 + c] + off;
  }
  return out;
}

// Distinct ids, ascending, and for each the ascending list of its box indices.
std::vector<std::pair<int64_t, std::vector<int64_t>>> group_by_id(const int64_t* idxs, int64_t n) {
  std::vector<int64_t> by_id(static_cast<size_t>(n));
  std::iota(by_id.begin(), by_id.end(), int64_t{0});
  std::stable_sort(by_id.begin(), by_id.end(), [idxs](int64_t a, int64_t b) { return idxs[a] < idxs[b]; });
  std::vector<std::pair<int64_t, std::vector<int64_t>>> groups;
  for (int64_t i : by_id) {
    if (groups.empty() || groups.back().first != idxs[i]) groups.push_back({idxs[i], {}});
    groups.back().second.push_back(i);
  }
  return groups;
}

// Sorts the union of per-group kept indices by descending score; ties: lower index first (the union enters in
// ascending index order, as mmcv's total_mask.nonzero(), then a stable sort).
std::vector<int64_t> merge_by_score(std::vector<int64_t> kept, const float* scores, int64_t max_keep) {
  std::sort(kept.begin(), kept.end());
  std::stable_sort(kept.begin(), kept.end(), [scores](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  if (max_keep >= 0 && static_cast<int64_t>(kept.size()) > max_keep) kept.resize(static_cast<size_t>(max_keep));
  return kept;
}

}  // namespace

// ---- dispatch -------------------------------------------------------------------------------------------------------
Tensor nms(const Tensor& boxes, const Tensor& scores, float iou_thr, int64_t max_keep) {
  const char* op = "det::nms";
  check_nms_args(op, boxes, scores);
  check_host(op, "boxes", boxes);
  check_host(op, "scores", scores);
  return nms_cpu(boxes, scores, iou_thr, max_keep);
}

Tensor batched_nms(const Tensor& boxes, const Tensor& scores, const Tensor& idxs, float iou_thr, int64_t max_keep,
                   int64_t split_thr) {
  const char* op = "det::batched_nms";
  check_nms_args(op, boxes, scores);
  check_idxs(op, idxs, boxes.dim(0));
  check_host(op, "boxes", boxes);
  check_host(op, "scores", scores);
  check_host(op, "idxs", idxs);
  return batched_nms_cpu(boxes, scores, idxs, iou_thr, max_keep, split_thr);
}

// ---- fast CPU path --------------------------------------------------------------------------------------------------
Tensor nms_cpu(const Tensor& boxes, const Tensor& scores, float iou_thr, int64_t max_keep) {
  const int64_t n = boxes.dim(0);
  if (n == 0 || max_keep == 0) return Tensor::empty({0}, DType::I64);
  const std::vector<int64_t> order = order_by_score(scores.f32(), n);
  return to_index_tensor(nms_sorted_fast(boxes.f32(), order, iou_thr, max_keep));
}

Tensor batched_nms_cpu(const Tensor& boxes, const Tensor& scores, const Tensor& idxs, float iou_thr,
                       int64_t max_keep, int64_t split_thr) {
  const int64_t n = boxes.dim(0);
  if (n == 0 || max_keep == 0) return Tensor::empty({0}, DType::I64);
  const float* s = scores.f32();
  const int64_t* id = idxs.data<int64_t>();
  const std::vector<float> ob = offset_boxes(boxes.f32(), id, n);
  if (n < split_thr) {  // one NMS over all offset boxes: ids never overlap
    return to_index_tensor(nms_sorted_fast(ob.data(), order_by_score(s, n), iou_thr, max_keep));
  }
  std::vector<int64_t> kept;
  for (const auto& group : group_by_id(id, n)) {
    const std::vector<int64_t>& members = group.second;
    std::vector<int64_t> order(members);  // members ascending; stable sort by score within the group
    std::stable_sort(order.begin(), order.end(), [s](int64_t a, int64_t b) { return s[a] > s[b]; });
    // a group's first max_keep kept boxes are all it can contribute to the overall first max_keep
    const std::vector<int64_t> k = nms_sorted_fast(ob.data(), order, iou_thr, max_keep);
    kept.insert(kept.end(), k.begin(), k.end());
  }
  return to_index_tensor(merge_by_score(std::move(kept), s, max_keep));
}

// ---- plain reference --------------------------------------------------------------------------------------------
namespace ref {

namespace {
// Greedy NMS on the boxes named by `members` (indices into boxes (n, 4)), returning kept indices in score order.
std::vector<int64_t> nms_plain(const float* boxes, const float* scores, std::vector<int64_t> members,
                               float iou_thr) {
  std::stable_sort(members.begin(), members.end(), [scores](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  const size_t m = members.size();
  std::vector<bool> suppressed(m, false);
  std::vector<int64_t> keep;
  for (size_t a = 0; a < m; ++a) {
    if (suppressed[a]) continue;
    const float* bi = boxes + members[a] * 4;
    keep.push_back(members[a]);
    const float iarea = (bi[2] - bi[0]) * (bi[3] - bi[1]);
    for (size_t b = a + 1; b < m; ++b) {
      if (suppressed[b]) continue;
      const float* bj = boxes + members[b] * 4;
      const float jarea = (bj[2] - bj[0]) * (bj[3] - bj[1]);
      const float w = std::max(0.0f, std::min(bi[2], bj[2]) - std::max(bi[0], bj[0]));
      const float h = std::max(0.0f, std::min(bi[3], bj[3]) - std::max(bi[1], bj[1]));
      const float inter = w * h;
      const float iou = inter / (iarea + jarea - inter);
      if (iou > iou_thr) suppressed[b] = true;
    }
  }
  return keep;
}
}  // namespace

Tensor nms(const Tensor& boxes, const Tensor& scores, float iou_thr, int64_t max_keep) {
  const char* op = "det::ref::nms";
  check_nms_args(op, boxes, scores);
  const int64_t n = boxes.dim(0);
  std::vector<int64_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), int64_t{0});
  std::vector<int64_t> keep = nms_plain(boxes.f32(), scores.f32(), all, iou_thr);
  if (max_keep >= 0 && static_cast<int64_t>(keep.size()) > max_keep) keep.resize(static_cast<size_t>(max_keep));
  return to_index_tensor(keep);
}

Tensor batched_nms(const Tensor& boxes, const Tensor& scores, const Tensor& idxs, float iou_thr, int64_t max_keep) {
  const char* op = "det::ref::batched_nms";
  check_nms_args(op, boxes, scores);
  check_idxs(op, idxs, boxes.dim(0));
  const int64_t n = boxes.dim(0);
  const int64_t* id = idxs.data<int64_t>();
  const std::vector<float> ob = offset_boxes(boxes.f32(), id, n);
  std::vector<int64_t> kept;
  for (const auto& group : group_by_id(id, n)) {
    const std::vector<int64_t> k = nms_plain(ob.data(), scores.f32(), group.second, iou_thr);
    kept.insert(kept.end(), k.begin(), k.end());
  }
  return to_index_tensor(merge_by_score(std::move(kept), scores.f32(), max_keep));
}

}  // namespace ref

}  // namespace mambacv::det
