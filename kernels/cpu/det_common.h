// kernels/cpu/det_common.h - argument checks and small helpers shared by the detection ops (kernels/cpu/det_*.cpp,
// kernels/cpu/detection_ops.cpp). Internal.
#pragma once

#include <cstdint>

#include "kernels/detection_ops.h"
#include "mambacv/error.h"
#include "mambacv/tensor.h"

namespace mambacv::det::detail {

// Throws unless `t` is defined, has dtype `dt` and `ndim` dimensions.
inline void check_tensor(const char* op, const char* name, const Tensor& t, DType dt, int ndim) {
  MAMBACV_CHECK(t.defined(), op << ": " << name << " is an undefined tensor");
  MAMBACV_CHECK(t.dtype() == dt, op << ": " << name << " must be " << dtype_name(dt) << ", found " << t.str());
  MAMBACV_CHECK(t.ndim() == ndim, op << ": " << name << " must have " << ndim << " dimensions, found " << t.str());
}

// Boxes / rois: f32 (n, 4).
inline void check_boxes(const char* op, const char* name, const Tensor& t) {
  check_tensor(op, name, t, DType::F32, 2);
  MAMBACV_CHECK(t.dim(1) == 4, op << ": " << name << " must be (n, 4) boxes x1, y1, x2, y2, found " << t.str());
}

// Scores: f32 (n) matching n boxes.
inline void check_scores(const char* op, const char* name, const Tensor& t, int64_t n) {
  check_tensor(op, name, t, DType::F32, 1);
  MAMBACV_CHECK(t.dim(0) == n, op << ": " << name << " must be (" << n << ") to match the boxes, found " << t.str());
}

// True when every tensor lives on the host; throws for CUDA tensors until the CUDA kernels exist.
inline void check_host(const char* op, const char* name, const Tensor& t) {
  MAMBACV_CHECK(t.device() == Device::Cpu, op << ": " << name << " lives on " << device_name(t.device())
                                              << "; this op has no CUDA implementation yet, pass a host tensor");
}

}  // namespace mambacv::det::detail
