// kernels/cuda/scan_launch.h - (internal) the selective scan's parameters as the CUDA kernel takes them: plain
// structs of device pointers and element strides, passed by value to the kernel (no CUDA types here, so host code
// compiled by the C++ compiler fills them in). Semantics: kernels/selective_scan.h.
#pragma once

#include <cstdint>

namespace mambacv::cuda {

// dtype codes: 0 = f32, 1 = f16, 2 = bf16 (the operand's bits as stored)
struct ScanOperandDev {
  const void* ptr;
  int dtype;
  int64_t sb, sc, st;  // element (b, c, t) at ptr[b*sb + c*sc + t*st]
};
struct ScanBCOperandDev {
  const void* ptr;
  int dtype;
  int64_t sb, sg, sn, st;  // element (b, g, n, t) at ptr[b*sb + g*sg + n*sn + t*st]
};
struct ScanDirectionDev {
  ScanOperandDev u, delta, z;  // z.ptr null: no gate
  ScanBCOperandDev B, C;
  const float* A;              // (dim, N)
  const float* D;              // (dim) or null
  const float* delta_bias;     // (dim) or null
  const int32_t* order;        // (L) or null (identity)
  float out_scale;
  float* last_state;           // (B, dim, N) or null
};

constexpr int kMaxScanDirections = 8;  // Vim uses 2, VMamba 4
constexpr int kMaxScanState = 64;      // largest d_state the kernel family takes

struct ScanLaunch {
  int64_t batch, dim, L, N, groups;
  int delta_softplus, accumulate, dir_round, ndirs;  // dir_round: dtype code
  float* out;                                        // (B, dim, L) at out[b*osb + c*osc + t*ost]
  int64_t osb, osc, ost;
  ScanDirectionDev dirs[kMaxScanDirections];
};

// Enqueues the scan on `stream` (a cudaStream_t; null = the default stream). Returns null on success, else the
// CUDA error text of the launch.
const char* launch_selective_scan(const ScanLaunch& p, void* stream);

}  // namespace mambacv::cuda
