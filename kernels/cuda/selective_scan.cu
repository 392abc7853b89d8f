// kernels/cuda/selective_scan.cu - the fused selective scan on the GPU (semantics: kernels/selective_scan.h).
//
// One thread per (batch item, channel): it runs every direction of that channel in order (k = 0 first), with the
// d_state states and A's row in registers (the kernel is instantiated for state sizes up to 1, 2, 4, 8, 16, 32 and
// 64 and guards the unused tail), reads every token-indexed operand through the direction's order (cross-scan and
// flipped sequences are never materialised) and merges the directions into the fp32 output itself, so no two
// threads write one element and the merge order is the reference's. Neighbouring threads are neighbouring
// channels of one (batch item, group): their B and C reads are the same address (one broadcast load per warp) and
// their u / delta / z / out accesses are contiguous in the token-major layout the models use.
// Arithmetic follows selective_scan_ref step by step (expf / log1pf, n summed in order), so results differ from
// the CPU reference only by the device's exp / log rounding.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/scan_launch.h"

namespace mambacv::cuda {
namespace {

__device__ __forceinline__ float load(const void* p, int dtype, int64_t i) {
  if (dtype == 0) return static_cast<const float*>(p)[i];
  const unsigned short bits = static_cast<const unsigned short*>(p)[i];
  if (dtype == 1) return __half2float(__ushort_as_half(bits));
  return __uint_as_float(static_cast<unsigned int>(bits) << 16);
}

__device__ __forceinline__ float round_to(float v, int dtype) {
  if (dtype == 1) return __half2float(__float2half_rn(v));
  if (dtype == 2) return __bfloat162float(__float2bfloat16_rn(v));
  return v;
}

template <int NMAX>
__global__ void scan_per_channel(const ScanLaunch p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.batch * p.dim) return;
  const int64_t b = i / p.dim, c = i % p.dim;
  const int64_t g = c / (p.dim / p.groups);
  const int N = static_cast<int>(p.N);
  float* out = p.out + b * p.osb + c * p.osc;
  for (int k = 0; k < p.ndirs; ++k) {
    const ScanDirectionDev& d = p.dirs[k];
    const bool add = p.accumulate || k > 0;
    float A[NMAX], h[NMAX];
#pragma unroll
    for (int n = 0; n < NMAX; ++n) {
      A[n] = n < N ? d.A[c * N + n] : 0.0f;
      h[n] = 0.0f;
    }
    const float bias = d.delta_bias ? d.delta_bias[c] : 0.0f;
    const float Dc = d.D ? d.D[c] : 0.0f;
    const int64_t u0 = b * d.u.sb + c * d.u.sc, dl0 = b * d.delta.sb + c * d.delta.sc;
    const int64_t z0 = b * d.z.sb + c * d.z.sc;
    const int64_t B0 = b * d.B.sb + g * d.B.sg, C0 = b * d.C.sb + g * d.C.sg;
    for (int64_t l = 0; l < p.L; ++l) {
      const int64_t t = d.order ? d.order[l] : l;
      const float u = load(d.u.ptr, d.u.dtype, u0 + t * d.u.st);
      float dt = load(d.delta.ptr, d.delta.dtype, dl0 + t * d.delta.st) + bias;
      if (p.delta_softplus) dt = dt > 20.0f ? dt : log1pf(expf(dt));
      const float du = dt * u;
      float y = 0.0f;
#pragma unroll
      for (int n = 0; n < NMAX; ++n) {
        if (n < N) {
          const float Bn = load(d.B.ptr, d.B.dtype, B0 + n * d.B.sn + t * d.B.st);
          const float Cn = load(d.C.ptr, d.C.dtype, C0 + n * d.C.sn + t * d.C.st);
          h[n] = expf(dt * A[n]) * h[n] + du * Bn;
          y += Cn * h[n];
        }
      }
      y += Dc * u;
      if (d.z.ptr) {
        const float z = load(d.z.ptr, d.z.dtype, z0 + t * d.z.st);
        y *= z / (1.0f + expf(-z));
      }
      const float v = round_to(d.out_scale * y, p.dir_round);
      float& o = out[t * p.ost];
      o = add ? o + v : v;
    }
    if (d.last_state) {
      float* ls = d.last_state + (b * p.dim + c) * N;
#pragma unroll
      for (int n = 0; n < NMAX; ++n)
        if (n < N) ls[n] = h[n];
    }
  }
}

}  // namespace

const char* launch_selective_scan(const ScanLaunch& p, void* stream) {
  constexpr int kThreads = 128;
  const int64_t work = p.batch * p.dim;
  const unsigned blocks = static_cast<unsigned>((work + kThreads - 1) / kThreads);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.N <= 1)
    scan_per_channel<1><<<blocks, kThreads, 0, s>>>(p);
  else if (p.N <= 2)
    scan_per_channel<2><<<blocks, kThreads, 0, s>>>(p);
  else if (p.N <= 4)
    scan_per_channel<4><<<blocks, kThreads, 0, s>>>(p);
  else if (p.N <= 8)
    scan_per_channel<8><<<blocks, kThreads, 0, s>>>(p);
  else if (p.N <= 16)
    scan_per_channel<16><<<blocks, kThreads, 0, s>>>(p);
  else if (p.N <= 32)
    scan_per_channel<32><<<blocks, kThreads, 0, s>>>(p);
  else
    scan_per_channel<64><<<blocks, kThreads, 0, s>>>(p);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace mambacv::cuda
