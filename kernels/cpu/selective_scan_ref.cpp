// kernels/cpu/selective_scan_ref.cpp - parameter validation and the plain scalar reference of the selective scan.
//
// Semantics: mambacv/selective_scan.h (upstream mamba_ssm selective_scan_interface.py: selective_scan_ref with
// delta_softplus, read for semantics only). This file is deliberately simple: one (b, c) sequence at a time, scalar
// fp32 arithmetic, operands read through their strides and converted with to_f32.
#include <algorithm>
#include <cmath>
#include <vector>

#include "mambacv/error.h"
#include "kernels/selective_scan.h"

namespace mambacv {

namespace {

bool is_compute_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

// Element i (in elements) of a typed operand, as f32.
inline float load_f32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32:
      return static_cast<const float*>(p)[i];
    case DType::F16:
      return to_f32(static_cast<const f16_t*>(p)[i]);
    default:
      return to_f32(static_cast<const bf16_t*>(p)[i]);
  }
}

void check_operand(const void* ptr, DType t, const char* name, size_t k, bool optional) {
  if (optional && ptr == nullptr) return;
  MAMBACV_CHECK(ptr != nullptr, "selective_scan: direction " << k << ": operand " << name << " is null");
  MAMBACV_CHECK(is_compute_dtype(t), "selective_scan: direction " << k << ": operand " << name << " has dtype "
                                                                  << dtype_name(t) << "; supported: f32, f16, bf16");
}

}  // namespace

void validate_scan_params(const ScanParams& p, bool orders_readable) {
  MAMBACV_CHECK(p.batch >= 1 && p.dim >= 1 && p.L >= 1 && p.N >= 1,
                "selective_scan: batch, dim, L and N must be >= 1 (got batch " << p.batch << ", dim " << p.dim
                                                                               << ", L " << p.L << ", N " << p.N << ")");
  MAMBACV_CHECK(p.groups >= 1 && p.dim % p.groups == 0,
                "selective_scan: dim " << p.dim << " is not divisible by groups " << p.groups);
  MAMBACV_CHECK(!p.dirs.empty(), "selective_scan: no directions given (ScanParams::dirs is empty)");
  MAMBACV_CHECK(p.out != nullptr, "selective_scan: output pointer is null");
  MAMBACV_CHECK(is_compute_dtype(p.dir_round),
                "selective_scan: dir_round " << dtype_name(p.dir_round) << " is not one of f32, f16, bf16");
  std::vector<char> seen;
  for (size_t k = 0; k < p.dirs.size(); ++k) {
    const ScanDirection& d = p.dirs[k];
    check_operand(d.u.ptr, d.u.dtype, "u", k, false);
    check_operand(d.delta.ptr, d.delta.dtype, "delta", k, false);
    check_operand(d.B.ptr, d.B.dtype, "B", k, false);
    check_operand(d.C.ptr, d.C.dtype, "C", k, false);
    check_operand(d.z.ptr, d.z.dtype, "z", k, true);
    MAMBACV_CHECK(d.A != nullptr, "selective_scan: direction " << k << ": A is null");
    MAMBACV_CHECK(std::isfinite(d.out_scale),
                  "selective_scan: direction " << k << ": out_scale " << d.out_scale << " is not finite");
    if (d.order && orders_readable) {
      // Cheap (O(L)) compared with the scan itself: a bad order would read and write out of bounds.
      seen.assign(static_cast<size_t>(p.L), 0);
      for (int64_t l = 0; l < p.L; ++l) {
        const int32_t t = d.order[l];
        MAMBACV_CHECK(t >= 0 && t < p.L, "selective_scan: direction " << k << ": order[" << l << "] = " << t
                                                                       << " is outside [0, " << p.L << ")");
        MAMBACV_CHECK(!seen[t], "selective_scan: direction " << k << ": order visits token " << t
                                                             << " twice; it must be a permutation of 0.." << p.L - 1);
        seen[t] = 1;
      }
    }
  }
}

namespace {
float round_to(float v, DType t) {
  switch (t) {
    case DType::F16:
      return f16_to_f32(f32_to_f16(v));
    case DType::BF16:
      return bf16_to_f32(f32_to_bf16(v));
    default:
      return v;
  }
}
}  // namespace

void selective_scan_ref(const ScanParams& p) {
  validate_scan_params(p);
  const int64_t dim = p.dim, L = p.L, N = p.N;
  const int64_t ch_per_group = dim / p.groups;
  std::vector<float> h(static_cast<size_t>(N));
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t c = 0; c < dim; ++c) {
      const int64_t g = c / ch_per_group;
      float* out = p.out + b * p.osb + c * p.osc;
      for (size_t k = 0; k < p.dirs.size(); ++k) {
        const ScanDirection& d = p.dirs[k];
        const bool add = p.accumulate || k > 0;
        const float* A = d.A + c * N;
        const float bias = d.delta_bias ? d.delta_bias[c] : 0.0f;
        const float Dc = d.D ? d.D[c] : 0.0f;
        const int64_t u0 = b * d.u.sb + c * d.u.sc, dl0 = b * d.delta.sb + c * d.delta.sc;
        const int64_t z0 = b * d.z.sb + c * d.z.sc;
        const int64_t B0 = b * d.B.sb + g * d.B.sg, C0 = b * d.C.sb + g * d.C.sg;
        std::fill(h.begin(), h.end(), 0.0f);
        for (int64_t l = 0; l < L; ++l) {
          const int64_t t = d.order ? d.order[l] : l;
          const float u = load_f32(d.u.ptr, d.u.dtype, u0 + t * d.u.st);
          float dt = load_f32(d.delta.ptr, d.delta.dtype, dl0 + t * d.delta.st) + bias;
          if (p.delta_softplus) dt = dt > 20.0f ? dt : std::log1p(std::exp(dt));
          float y = 0.0f;
          for (int64_t n = 0; n < N; ++n) {
            const float Bn = load_f32(d.B.ptr, d.B.dtype, B0 + n * d.B.sn + t * d.B.st);
            const float Cn = load_f32(d.C.ptr, d.C.dtype, C0 + n * d.C.sn + t * d.C.st);
            h[n] = std::exp(dt * A[n]) * h[n] + (dt * u) * Bn;
            y += Cn * h[n];
          }
          y += Dc * u;
          if (d.z.ptr) {
            const float z = load_f32(d.z.ptr, d.z.dtype, z0 + t * d.z.st);
            y *= z / (1.0f + std::exp(-z));
          }
          const float v = round_to(d.out_scale * y, p.dir_round);
          float& o = out[t * p.ost];
          o = add ? o + v : v;
        }
        if (d.last_state) {
          float* ls = d.last_state + (b * dim + c) * N;
          for (int64_t n = 0; n < N; ++n) ls[n] = h[n];
        }
      }
    }
  }
}

}  // namespace mambacv
