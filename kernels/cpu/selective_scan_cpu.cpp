// kernels/cpu/selective_scan_cpu.cpp - the fast CPU selective scan and the scan dispatch.
//
// Semantics: mambacv/selective_scan.h; selective_scan_ref.cpp is the plain reference this is tested against.
// Structure (see ../shared/docs/DESIGN.md, performance notes):
//   - work items are (batch, channel tile); a tile is up to 16 channels of one B/C group, so B and C are scalars
//     broadcast per step; one thread owns a tile for ALL directions, so the merge into `out` has no races;
//   - per direction the scan is sequential over L, vectorised across the 16 channels of the tile, with the N states
//     in registers (specialised for N = 1 and N = 16, a generic N keeps them in a small L1 buffer);
//   - L is processed in blocks of kBlock tokens: phase 1 gathers the block's operands through the direction's order
//     (converting f16 / bf16, gathering channel-strided layouts) and precomputes dt = softplus(delta + bias),
//     dt*u, D*u, silu(z) and the B / C scalars into a per-thread buffer; phase 2 runs the recurrence and writes out;
//   - exp is a vectorised exp2 (range reduction t - floor(t), degree-5 minimax polynomial, scalef), ~1 ulp.
// Measured (2-core Zen 4, noisy shared machine, best of 200): VMamba-T stage 1 (dim 96, L 3136, N 1, 4 cross-scan
// directions) 1.7 ms on 1 thread, 0.87 ms on 2; Vim-T layer (dim 384, L 197, N 16, 2 directions, z) 0.67 / 0.34 ms.
// N = 16 is bound by the FP pipes (~11 vector ops per state and step, 8 of them the exp); software prefetching of
// the order's tokens measured slower (hardware prefetch copes), a 4-way split of the y sum made no difference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define MAMBACV_SCAN_AVX512 1
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the intrinsics' deliberate _mm512_undefined_*() pass-through operands as maybe-uninitialized once
// they are inlined (a known false positive); the warning is reported at the header's lines, hence placed here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/flops.h"
#include "mambacv/error.h"
#include "mambacv/selective_scan.h"

namespace mambacv {
namespace {

constexpr int kW = 16;      // channels per tile (SIMD lanes)
constexpr int kBlock = 64;  // tokens per block
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;

// 2^f on [0, 1): minimax polynomial, relative error 7.5e-8.
constexpr float kP0 = 9.999999250636e-01f, kP1 = 6.931530732026e-01f, kP2 = 2.401536170211e-01f,
                kP3 = 5.582631811623e-02f, kP4 = 8.989340023582e-03f, kP5 = 1.877576700020e-03f;

inline float load_scalar(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32:
      return static_cast<const float*>(p)[i];
    case DType::F16:
      return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default:
      return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
}

#ifdef MAMBACV_SCAN_AVX512
// ---------------------------------------------------------------------------------------------------------------
// AVX-512 implementation of the 16-lane helpers.
using vf = __m512;
struct Lanes {
  __mmask16 m;
  int w;
};
inline Lanes make_lanes(int w) { return Lanes{static_cast<__mmask16>((1u << w) - 1u), w}; }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vset(float a) { return _mm512_set1_ps(a); }
inline vf vld(const float* p) { return _mm512_load_ps(p); }  // 64-byte aligned workspace
inline void vst(float* p, vf a) { _mm512_store_ps(p, a); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }  // a*b + c

// 2^t for any finite t (underflows to 0, overflows to inf).
inline vf vexp2(vf t) {
  const vf f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);  // t - floor(t), in [0, 1)
  vf p = vfma(vset(kP5), f, vset(kP4));
  p = vfma(p, f, vset(kP3));
  p = vfma(p, f, vset(kP2));
  p = vfma(p, f, vset(kP1));
  p = vfma(p, f, vset(kP0));
  return _mm512_scalef_ps(p, t);  // p * 2^floor(t)
}
inline vf vexp(vf x) { return vexp2(vmul(x, vset(kLog2e))); }

// softplus(x) = x > 20 ? x : log1p(exp(x)).
inline vf vsoftplus(vf x) {
  const vf e = vexp(x);
  const vf one = vset(1.0f);
  const vf y = vadd(one, e);
  // log(y) = k ln2 + log(m), m in (sqrt(1/2), sqrt(2)]; log(m) = 2 atanh(s), s = (m-1)/(m+1), |s| <= 0.172
  vf m = _mm512_getmant_ps(y, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
  vf k = _mm512_getexp_ps(y);
  const __mmask16 big = _mm512_cmp_ps_mask(m, vset(1.41421356f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, vset(0.5f));
  k = _mm512_mask_add_ps(k, big, k, one);
  const vf s = _mm512_div_ps(_mm512_sub_ps(m, one), vadd(m, one));
  const vf s2 = vmul(s, s);
  vf q = vfma(vset(1.0f / 9), s2, vset(1.0f / 7));
  q = vfma(q, s2, vset(1.0f / 5));
  q = vfma(q, s2, vset(1.0f / 3));
  q = vfma(q, s2, one);
  const vf logm = vmul(vadd(s, s), q);
  // y = 1 + e was rounded: add back the lost part, log1p(e) = log(y) + (e - (y - 1)) / y.
  const vf corr = vmul(_mm512_sub_ps(e, _mm512_sub_ps(y, one)), _mm512_rcp14_ps(y));
  const vf r = vfma(k, vset(kLn2), vadd(logm, corr));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, vset(20.0f), _CMP_GT_OQ), r, x);
}

// silu(z) = z / (1 + exp(-z))
inline vf vsilu(vf z) { return _mm512_div_ps(z, vadd(vset(1.0f), vexp(_mm512_sub_ps(vzero(), z)))); }

inline vf vround(vf v, DType t) {
  if (t == DType::F16) return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  if (t == DType::BF16) {
    __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    r = _mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));  // quiet NaN, as f32_to_bf16
    r = _mm512_mask_and_epi32(r, nan, r, _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
    return _mm512_castsi512_ps(r);
  }
  return v;
}

// Lanes (channels c0 .. c0+w-1) of a token-indexed operand at element offset `off` (channel c0), channel stride sc.
inline vf load_lanes(const void* p, DType t, int64_t off, int64_t sc, Lanes l) {
  if (sc == 1) {
    switch (t) {
      case DType::F32:
        return _mm512_maskz_loadu_ps(l.m, static_cast<const float*>(p) + off);
      case DType::F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(l.m, static_cast<const uint16_t*>(p) + off));
      default:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(l.m, static_cast<const uint16_t*>(p) + off)), 16));
    }
  }
  alignas(64) float tmp[kW] = {};
  for (int i = 0; i < l.w; ++i) tmp[i] = load_scalar(p, t, off + i * sc);
  return vld(tmp);
}
inline vf load_out(const float* p, int64_t sc, Lanes l) {
  if (sc == 1) return _mm512_maskz_loadu_ps(l.m, p);
  alignas(64) float tmp[kW] = {};
  for (int i = 0; i < l.w; ++i) tmp[i] = p[i * sc];
  return vld(tmp);
}
inline void store_out(float* p, int64_t sc, Lanes l, vf v) {
  if (sc == 1) return _mm512_mask_storeu_ps(p, l.m, v);
  alignas(64) float tmp[kW];
  vst(tmp, v);
  for (int i = 0; i < l.w; ++i) p[i * sc] = tmp[i];
}

#else
// ---------------------------------------------------------------------------------------------------------------
// Portable implementation: plain loops over 16 lanes that the compiler may vectorise; libm for exp / log1p.
struct vf {
  alignas(64) float v[kW];
};
struct Lanes {
  int w;
};
inline Lanes make_lanes(int w) { return Lanes{w}; }
inline vf vzero() { return vf{}; }
inline vf vset(float a) {
  vf r;
  for (int i = 0; i < kW; ++i) r.v[i] = a;
  return r;
}
inline vf vld(const float* p) {
  vf r;
  for (int i = 0; i < kW; ++i) r.v[i] = p[i];
  return r;
}
inline void vst(float* p, const vf& a) {
  for (int i = 0; i < kW; ++i) p[i] = a.v[i];
}
#define MAMBACV_LANEWISE(expr) \
  vf r;                        \
  for (int i = 0; i < kW; ++i) r.v[i] = (expr); \
  return r
inline vf vadd(const vf& a, const vf& b) { MAMBACV_LANEWISE(a.v[i] + b.v[i]); }
inline vf vmul(const vf& a, const vf& b) { MAMBACV_LANEWISE(a.v[i] * b.v[i]); }
inline vf vfma(const vf& a, const vf& b, const vf& c) { MAMBACV_LANEWISE(std::fma(a.v[i], b.v[i], c.v[i])); }
inline vf vexp2(const vf& t) { MAMBACV_LANEWISE(std::exp2(t.v[i])); }
inline vf vsoftplus(const vf& x) { MAMBACV_LANEWISE(x.v[i] > 20.0f ? x.v[i] : std::log1p(std::exp(x.v[i]))); }
inline vf vsilu(const vf& z) { MAMBACV_LANEWISE(z.v[i] / (1.0f + std::exp(-z.v[i]))); }
inline vf vround(const vf& x, DType t) {
  if (t == DType::F16) { MAMBACV_LANEWISE(f16_to_f32(f32_to_f16(x.v[i]))); }
  if (t == DType::BF16) { MAMBACV_LANEWISE(bf16_to_f32(f32_to_bf16(x.v[i]))); }
  return x;
}
#undef MAMBACV_LANEWISE
inline vf load_lanes(const void* p, DType t, int64_t off, int64_t sc, Lanes l) {
  vf r{};
  for (int i = 0; i < l.w; ++i) r.v[i] = load_scalar(p, t, off + i * sc);
  return r;
}
inline vf load_out(const float* p, int64_t sc, Lanes l) {
  vf r{};
  for (int i = 0; i < l.w; ++i) r.v[i] = p[i * sc];
  return r;
}
inline void store_out(float* p, int64_t sc, Lanes l, const vf& v) {
  for (int i = 0; i < l.w; ++i) p[i * sc] = v.v[i];
}
#endif

// Per-thread workspace (floats, every array 64-byte aligned).
struct Workspace {
  explicit Workspace(int64_t N) : N(N) {
    const size_t tile = static_cast<size_t>(kBlock) * kW;
    const size_t bc = static_cast<size_t>((kBlock * N + kW - 1) / kW * kW);
    const size_t nv = static_cast<size_t>(N) * kW;
    const size_t total = 4 * tile + 2 * bc + 2 * nv + 4 * kW;
    mem.reset(static_cast<float*>(std::aligned_alloc(64, total * sizeof(float))));
    MAMBACV_CHECK(mem != nullptr, "selective_scan: out of memory for a " << total * sizeof(float) << "-byte workspace");
    float* p = mem.get();
    dt = p, p += tile;
    dtu = p, p += tile;
    du = p, p += tile;
    gate = p, p += tile;
    Bs = p, p += bc;
    Cs = p, p += bc;
    A2 = p, p += nv;
    h = p, p += nv;
  }
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  int64_t N;
  std::unique_ptr<float, Free> mem;
  float *dt, *dtu, *du, *gate;  // (kBlock, 16)
  float *Bs, *Cs;               // (kBlock, N) scalars of the tile's group
  float *A2;                    // (N, 16): A * log2(e)
  float *h;                     // (N, 16): states of the generic-N path
};

// One (batch item, channel tile) for all directions. NT = N when specialised, 0 for any N.
template <int NT>
void scan_tile(const ScanParams& p, int64_t b, int64_t c0, int w, Workspace& ws) {
  const int64_t N = NT > 0 ? NT : p.N;
  const int64_t g = c0 / (p.dim / p.groups);
  const Lanes lanes = make_lanes(w);
  float* const out_tile = p.out + b * p.osb + c0 * p.osc;

  for (size_t k = 0; k < p.dirs.size(); ++k) {
    const ScanDirection& d = p.dirs[k];
    const bool add = p.accumulate || k > 0;
    const bool has_z = d.z.ptr != nullptr, has_D = d.D != nullptr;
    const DType round_t = p.dir_round;
    const vf scale = vset(d.out_scale);

    // Per-channel constants of the tile (lanes >= w stay zero, so they never produce NaN or Inf).
    alignas(64) float tmp[kW] = {};
    for (int i = 0; i < w; ++i) tmp[i] = d.delta_bias ? d.delta_bias[c0 + i] : 0.0f;
    const vf bias = vld(tmp);
    for (int i = 0; i < w; ++i) tmp[i] = has_D ? d.D[c0 + i] : 0.0f;
    const vf Dv = vld(tmp);
    for (int64_t n = 0; n < N; ++n)
      for (int i = 0; i < kW; ++i) ws.A2[n * kW + i] = i < w ? d.A[(c0 + i) * N + n] * kLog2e : 0.0f;

    const int64_t u0 = b * d.u.sb + c0 * d.u.sc, dl0 = b * d.delta.sb + c0 * d.delta.sc;
    const int64_t z0 = b * d.z.sb + c0 * d.z.sc;
    const int64_t B0 = b * d.B.sb + g * d.B.sg, C0 = b * d.C.sb + g * d.C.sg;

    // States: registers when N is known, the workspace otherwise.
    vf h[NT > 0 ? NT : 1];
    vf A2[NT > 0 ? NT : 1];
    if constexpr (NT > 0) {
#pragma GCC unroll 16
      for (int n = 0; n < NT; ++n) {
        h[n] = vzero();
        A2[n] = vld(ws.A2 + n * kW);
      }
    } else {
      std::fill(ws.h, ws.h + N * kW, 0.0f);
    }

    for (int64_t l0 = 0; l0 < p.L; l0 += kBlock) {
      const int T = static_cast<int>(std::min<int64_t>(kBlock, p.L - l0));
      // Phase 1: gather the block's operands through the order and precompute everything not on the h chain.
      for (int j = 0; j < T; ++j) {
        const int64_t t = d.order ? d.order[l0 + j] : l0 + j;
        const vf u = load_lanes(d.u.ptr, d.u.dtype, u0 + t * d.u.st, d.u.sc, lanes);
        vf dt = vadd(load_lanes(d.delta.ptr, d.delta.dtype, dl0 + t * d.delta.st, d.delta.sc, lanes), bias);
        if (p.delta_softplus) dt = vsoftplus(dt);
        vst(ws.dt + j * kW, dt);
        vst(ws.dtu + j * kW, vmul(dt, u));
        if (has_D) vst(ws.du + j * kW, vmul(Dv, u));
        if (has_z) vst(ws.gate + j * kW, vsilu(load_lanes(d.z.ptr, d.z.dtype, z0 + t * d.z.st, d.z.sc, lanes)));
        float* Bs = ws.Bs + j * N;
        float* Cs = ws.Cs + j * N;
        const int64_t bo = B0 + t * d.B.st, co = C0 + t * d.C.st;
        if (d.B.dtype == DType::F32 && d.C.dtype == DType::F32) {
          const float* Bp = static_cast<const float*>(d.B.ptr) + bo;
          const float* Cp = static_cast<const float*>(d.C.ptr) + co;
          for (int64_t n = 0; n < N; ++n) {
            Bs[n] = Bp[n * d.B.sn];
            Cs[n] = Cp[n * d.C.sn];
          }
        } else {
          for (int64_t n = 0; n < N; ++n) {
            Bs[n] = load_scalar(d.B.ptr, d.B.dtype, bo + n * d.B.sn);
            Cs[n] = load_scalar(d.C.ptr, d.C.dtype, co + n * d.C.sn);
          }
        }
      }
      // Phase 2: the recurrence; y goes straight to out.
      for (int j = 0; j < T; ++j) {
        const int64_t t = d.order ? d.order[l0 + j] : l0 + j;
        const vf dt = vld(ws.dt + j * kW);
        const vf dtu = vld(ws.dtu + j * kW);
        const float* Bs = ws.Bs + j * N;
        const float* Cs = ws.Cs + j * N;
        vf y = vzero();
        if constexpr (NT > 0) {
          // Four partial sums keep the y chain off the critical path (a 16-deep FMA chain is 64 cycles per step).
          constexpr int kAcc = NT >= 4 ? 4 : 1;
          vf ya[kAcc];
#pragma GCC unroll 4
          for (int a = 0; a < kAcc; ++a) ya[a] = vzero();
#pragma GCC unroll 16
          for (int n = 0; n < NT; ++n) {
            const vf dA = vexp2(vmul(dt, A2[n]));
            h[n] = vfma(dA, h[n], vmul(dtu, vset(Bs[n])));
            ya[n % kAcc] = vfma(vset(Cs[n]), h[n], ya[n % kAcc]);
          }
          if constexpr (kAcc == 4) {
            y = vadd(vadd(ya[0], ya[1]), vadd(ya[2], ya[3]));
          } else {
            y = ya[0];
          }
        } else {
          for (int64_t n = 0; n < N; ++n) {
            const vf dA = vexp2(vmul(dt, vld(ws.A2 + n * kW)));
            const vf hn = vfma(dA, vld(ws.h + n * kW), vmul(dtu, vset(Bs[n])));
            vst(ws.h + n * kW, hn);
            y = vfma(vset(Cs[n]), hn, y);
          }
        }
        if (has_D) y = vadd(y, vld(ws.du + j * kW));
        if (has_z) y = vmul(y, vld(ws.gate + j * kW));
        y = vround(vmul(scale, y), round_t);
        float* o = out_tile + t * p.ost;
        if (add) y = vadd(load_out(o, p.osc, lanes), y);
        store_out(o, p.osc, lanes, y);
      }
    }

    if (d.last_state) {
      if constexpr (NT > 0) {
        for (int n = 0; n < NT; ++n) vst(ws.h + n * kW, h[n]);
      }
      for (int i = 0; i < w; ++i)
        for (int64_t n = 0; n < N; ++n) d.last_state[(b * p.dim + c0 + i) * N + n] = ws.h[n * kW + i];
    }
  }
}

template <int NT>
void scan_all(const ScanParams& p) {
  const int64_t cpg = p.dim / p.groups;          // channels per group
  const int64_t tpg = (cpg + kW - 1) / kW;       // tiles per group (a tile never straddles two groups)
  const int64_t tiles = p.groups * tpg;
  const int64_t items = p.batch * tiles;
  const double work = static_cast<double>(p.batch) * p.dim * p.L * p.N * static_cast<double>(p.dirs.size());
  const bool parallel = items > 1 && work >= 32768.0;
  int nthreads = 1;
#ifdef _OPENMP
  if (parallel) nthreads = std::max(1, static_cast<int>(std::min<int64_t>(omp_get_max_threads(), items)));
#endif
  // Allocated here, not in the parallel region, so an allocation failure is an Error and not std::terminate.
  std::vector<std::unique_ptr<Workspace>> ws(static_cast<size_t>(nthreads));
  for (auto& w : ws) w = std::make_unique<Workspace>(p.N);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    Workspace& wsp = *ws[static_cast<size_t>(tid)];
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t b = it / tiles, tile = it % tiles;
      const int64_t g = tile / tpg;
      const int64_t c0 = g * cpg + (tile % tpg) * kW;
      const int w = static_cast<int>(std::min<int64_t>(kW, (g + 1) * cpg - c0));
      scan_tile<NT>(p, b, c0, w, wsp);
    }
  }
}

}  // namespace

void selective_scan_cpu(const ScanParams& p) {
  validate_scan_params(p);
  switch (p.N) {
    case 1:
      return scan_all<1>(p);
    case 16:
      return scan_all<16>(p);
    default:
      return scan_all<0>(p);
  }
}

void selective_scan(const ScanParams& p) {
  // FLOPs per (b, direction, channel, step): N x (dt*A, exp, dA*h, (dt*u)*B, add, C*h multiply-add) = 7N with
  // an exp counted as one, plus delta + bias, softplus (2), dt*u, D*u + y (2) = 6; the z gate adds about 4.
  const double per_step = 7.0 * static_cast<double>(p.N) + 6.0;
  double total = 0;
  for (const auto& d : p.dirs) total += per_step + (d.z.ptr ? 4.0 : 0.0);
  ops::add_flops(total * static_cast<double>(p.batch) * static_cast<double>(p.dim) * static_cast<double>(p.L));
  // Operands carry no device: they are host pointers until CUDA scan kernels exist (see selective_scan.h).
  selective_scan_cpu(p);
}

}  // namespace mambacv
