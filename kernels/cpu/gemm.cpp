// kernels/cpu/gemm.cpp - the fp32 GEMM: y (M, N) = A (M, K) @ W^T + bias, with W (N, K) packed once (PackedWeight).
//
// Backends, chosen at run time by cpu::cpu_isa() when a weight is packed:
//   avx512: 14 x 32 register tile (28 zmm accumulators; each k step: 2 vector loads of W, 14 broadcasts of A,
//           28 FMAs), W in panels of 32 columns (K x 32, k-major), A packed per thread into 14-row micro-panels;
//   avx2:   6 x 16 tile (12 ymm accumulators), panels of 16 columns;
//   generic (MAMBACV_ISA=generic or a CPU without AVX2): Eigen's product kernel on the plain (N, K) copy.
// Blocking: k in blocks of kKC (A micro-panel in L1, one W panel block of kKC x NR reused across the micro-panels
// of an M chunk), M in chunks of 8 micro-panels; work items are (M chunk, group of W panels) so that small M still
// splits over the threads. Every C tile belongs to one work item, so k blocks accumulate without races; a tile is
// written as acc (+ C) (+ bias), bias and the caller's beta * C entering on the first k block only.
// Results equal the reference up to float summation order (k ascending within each block).
// Why our own kernel and not a BLAS: Debian's OpenBLAS 0.3.21 falls back to SSE3 kernels on CPUs it does not know,
// BLIS 0.9 misdetects them too, and neither can take weights packed once at load (README, GEMM measurements).
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the intrinsics' deliberate _mm512_undefined_*() pass-through operands as maybe-uninitialized once
// they are inlined (a known false positive); the warning is reported at the header's lines, hence placed here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <omp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "kernels/cpu/gemm_amx.h"
#include "kernels/cpu/round_simd.h"
#include "kernels/cpu/simd_math.h"
#include "kernels/cpu_info.h"
#include "kernels/ops.h"
#include "mambacv/error.h"

#define MAMBACV_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
#define MAMBACV_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace mambacv::ops {

namespace {
constexpr int64_t kKC = 512;
constexpr int kMR512 = 14, kNR512 = 32;
constexpr int kMR256 = 6, kNR256 = 16;
constexpr int kChunkPanels = 8;  // micro-panels per M chunk
// The FMA kernels prefetch their W panel this many bytes ahead (32 k steps of an f32 AVX-512 panel, 64 of an
// AVX2 one): weights at batch 1 come from DRAM or L3 once per forward, and the hardware prefetcher, which stops at
// 4 KB page boundaries, did not hide it (AVX-512, Emerald Rapids class Xeon: +7% geomean over the models' shapes
// on 2 threads, up to +20%, 1 KB ahead measured slower; its AVX2 path: +5%). A prefetch past the panel's end does
// not fault.
constexpr int64_t kPrefetchBytes = 4096;
template <class WT>
inline void prefetch_w(const WT* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
}
using simd::kRoundBf16;
using simd::kRoundF16;
using simd::kRoundF16Saturate;
using simd::round16;
using simd::round8;
using simd::round_mode;
// C rows [0, M) x [0, N) rounded in place (the paths without a fused rounding)
void round_block(const ExecContext& ctx, Rounding r, int64_t M, int64_t N, float* C, int64_t ldc) {
  if (r.dtype == DType::F32) return;
  for (int64_t i = 0; i < M; ++i) {
    Tensor row = Tensor::view_of(C + i * ldc, {N}, DType::F32);
    round_to(ctx, r.dtype, r.saturate, row);
  }
}

int panel_width(cpu::Isa isa) { return isa == cpu::Isa::Avx512 ? kNR512 : isa == cpu::Isa::Avx2 ? kNR256 : 0; }
int tile_rows(cpu::Isa isa) { return isa == cpu::Isa::Avx512 ? kMR512 : kMR256; }

// ---- weight element loads: 16 (AVX-512) / 8 (AVX2) consecutive panel values widened to f32 ------------------
// Panels hold f32, or f16 / bf16 (half the memory; widened here, the products still f32).
MAMBACV_TARGET_AVX512 inline __m512 load_w16(const float* p) { return _mm512_load_ps(p); }
MAMBACV_TARGET_AVX512 inline __m512 load_w16(const f16_t* p) {
  return _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
}
MAMBACV_TARGET_AVX512 inline __m512 load_w16(const bf16_t* p) {
  const __m256i h = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
MAMBACV_TARGET_AVX2 inline __m256 load_w8(const float* p) { return _mm256_load_ps(p); }
MAMBACV_TARGET_AVX2 inline __m256 load_w8(const f16_t* p) {
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
}
MAMBACV_TARGET_AVX2 inline __m256 load_w8(const bf16_t* p) {
  const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// ---- AVX-512 tile epilogue: C[0:MR, 0:16*NV] = acc (+ C) (+ bias), columns masked to ncols --------------------
template <int MR, int NV>
MAMBACV_TARGET_AVX512 inline void store_tile512(const __m512* c0, const __m512* c1, float* c, int64_t ldc,
                                                unsigned ncols, const float* bias, bool add_c, int round) {
  const __mmask16 m0 = ncols >= 16 ? __mmask16(0xffff) : __mmask16((1u << ncols) - 1u);
  const __mmask16 m1 = ncols >= 32 ? __mmask16(0xffff) : ncols <= 16 ? __mmask16(0) : __mmask16((1u << (ncols - 16)) - 1u);
  __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
  if (bias) {
    bias0 = _mm512_maskz_loadu_ps(m0, bias);
    if (NV == 2) bias1 = _mm512_maskz_loadu_ps(m1, bias + 16);
  }
#pragma GCC unroll 14
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    __m512 x0 = c0[i], x1 = c1[i];
    if (add_c) {
      x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, ci));
      if (NV == 2) x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, ci + 16));
    }
    if (bias) {
      x0 = _mm512_add_ps(x0, bias0);
      x1 = _mm512_add_ps(x1, bias1);
    }
    if (round) {
      x0 = round16(x0, round);
      if (NV == 2) x1 = round16(x1, round);
    }
    _mm512_mask_storeu_ps(ci, m0, x0);
    if (NV == 2) _mm512_mask_storeu_ps(ci + 16, m1, x1);
  }
}

// ---- AVX-512 micro-kernel: C[0:MR, 0:16*NV] (+)= A (MR x kc) * Bp (kc x 32) ------------------------------------
// A (f32) is a packed micro-panel (element (i, k) at a[k * MR + i]) or, with kRowA, the caller's rows
// (a[i * lda + k]). NV = 2 computes both 16-column halves of the panel, NV = 1 only the first (a panel with at most
// 16 columns). WT: the panel's element type.
template <int MR, int NV, bool kRowA, class WT>
MAMBACV_TARGET_AVX512 void ukr_avx512(int64_t kc, const void* a_, int64_t lda, const void* bp_, float* c, int64_t ldc,
                                      unsigned ncols, const float* bias, bool add_c, int round) {
  const float* __restrict a = static_cast<const float*>(a_);
  const WT* __restrict bp = static_cast<const WT*>(bp_);
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 14
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    prefetch_w(bp);
    if (NV == 2) prefetch_w(bp + 16);
    const __m512 b0 = load_w16(bp);
    const __m512 b1 = NV == 2 ? load_w16(bp + 16) : b0;
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(kRowA ? a[i * lda + k] : a[k * MR + i]);
      c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
      if (NV == 2) c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
    }
    bp += kNR512;
  }
  store_tile512<MR, NV>(c0, c1, c, ldc, ncols, bias, add_c, round);
}

// ---- AVX512_BF16 micro-kernel: bf16 products with f32 accumulation (vdpbf16ps, two k per instruction) ----------
// A: bf16 rows as k pairs (uint32 element (i, kh) at a[i * lda + kh] holds k = 2kh low, 2kh + 1 high); the panel
// holds per k pair its 32 columns' pairs (dword j of half h: column 16h + j). kc counts k pairs.
template <int MR, int NV>
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c"))) void ukr_avx512_dot(
    int64_t kc, const void* a_, int64_t lda, const void* bp_, float* c, int64_t ldc, unsigned ncols,
    const float* bias, bool add_c, int round) {
  const uint32_t* __restrict a = static_cast<const uint32_t*>(a_);
  const __m512i* __restrict bp = static_cast<const __m512i*>(bp_);
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 14
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_load_si512(bp));
    const __m512bh b1 = NV == 2 ? reinterpret_cast<__m512bh>(_mm512_load_si512(bp + 1)) : b0;
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) {
      const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(a[i * lda + k])));
      c0[i] = _mm512_dpbf16_ps(c0[i], av, b0);
      if (NV == 2) c1[i] = _mm512_dpbf16_ps(c1[i], av, b1);
    }
    bp += 2;
  }
  store_tile512<MR, NV>(c0, c1, c, ldc, ncols, bias, add_c, round);
}

// ---- AVX2 micro-kernel: C[0:MR, 0:16] --------------------------------------------------------------------------
MAMBACV_TARGET_AVX2 inline __m256i lane_mask8(unsigned n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), idx);
}

// A packed or row-major as in the AVX-512 kernel; NV = 2 both 8-column halves of the 16-column panel, 1 the first.
template <int MR, int NV, bool kRowA, class WT>
MAMBACV_TARGET_AVX2 void ukr_avx2(int64_t kc, const void* a_, int64_t lda, const void* bp_, float* c, int64_t ldc,
                                  unsigned ncols, const float* bias, bool add_c, int round) {
  const float* __restrict a = static_cast<const float*>(a_);
  const WT* __restrict bp = static_cast<const WT*>(bp_);
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    prefetch_w(bp);
    const __m256 b0 = load_w8(bp);
    const __m256 b1 = NV == 2 ? load_w8(bp + 8) : b0;
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(kRowA ? a + i * lda + k : a + k * MR + i);
      c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
      if (NV == 2) c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
    }
    bp += kNR256;
  }
  // A full panel is loaded and stored without masks: vmaskmovps stores are microcoded and slow on AMD Zen.
  const bool full = ncols == 8u * NV;
  const __m256i m0 = lane_mask8(std::min(ncols, 8u)), m1 = lane_mask8(ncols > 8 ? ncols - 8 : 0u);
  auto load = [&](const float* p, __m256i m) { return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m); };
  __m256 bias0 = _mm256_setzero_ps(), bias1 = _mm256_setzero_ps();
  if (bias) {
    bias0 = load(bias, m0);
    if (NV == 2) bias1 = load(bias + 8, m1);
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    __m256 x0 = c0[i], x1 = c1[i];
    if (add_c) {
      x0 = _mm256_add_ps(x0, load(ci, m0));
      if (NV == 2) x1 = _mm256_add_ps(x1, load(ci + 8, m1));
    }
    if (bias) {
      x0 = _mm256_add_ps(x0, bias0);
      x1 = _mm256_add_ps(x1, bias1);
    }
    if (round) {
      x0 = round8(x0, round);
      if (NV == 2) x1 = round8(x1, round);
    }
    if (full) {
      _mm256_storeu_ps(ci, x0);
      if (NV == 2) _mm256_storeu_ps(ci + 8, x1);
    } else {
      _mm256_maskstore_ps(ci, m0, x0);
      if (NV == 2) _mm256_maskstore_ps(ci + 8, m1, x1);
    }
  }
}

using Ukr = void (*)(int64_t, const void*, int64_t, const void*, float*, int64_t, unsigned, const float*, bool, int);

template <int NV, bool kRowA, class WT, int... R>
constexpr std::array<Ukr, sizeof...(R)> avx512_table(std::integer_sequence<int, R...>) {
  return {&ukr_avx512<R + 1, NV, kRowA, WT>...};
}
template <int NV, int... R>
constexpr std::array<Ukr, sizeof...(R)> avx512_dot_table(std::integer_sequence<int, R...>) {
  return {&ukr_avx512_dot<R + 1, NV>...};
}
template <int NV, bool kRowA, class WT, int... R>
constexpr std::array<Ukr, sizeof...(R)> avx2_table(std::integer_sequence<int, R...>) {
  return {&ukr_avx2<R + 1, NV, kRowA, WT>...};
}
template <class WT>
struct KernelTables {
  using S512 = std::make_integer_sequence<int, kMR512>;
  using S256 = std::make_integer_sequence<int, kMR256>;
  static constexpr std::array<Ukr, kMR512> t512[2][2] = {
      {avx512_table<1, false, WT>(S512{}), avx512_table<1, true, WT>(S512{})},
      {avx512_table<2, false, WT>(S512{}), avx512_table<2, true, WT>(S512{})}};
  static constexpr std::array<Ukr, kMR256> t256[2][2] = {
      {avx2_table<1, false, WT>(S256{}), avx2_table<1, true, WT>(S256{})},
      {avx2_table<2, false, WT>(S256{}), avx2_table<2, true, WT>(S256{})}};
};
// kernel for a micro-panel of h rows (1 <= h <= MR), a panel of ncols columns, packed or row-major A, the panel
// storage of W (the bf16 dot kernel always reads bf16 rows of A)
Ukr micro_kernel(const PackedWeight& W, int h, unsigned ncols, bool row_a) {
  const size_t i = static_cast<size_t>(h - 1);
  if (W.bf16 == Bf16Kernel::Dot) {
    static constexpr std::array<Ukr, kMR512> dot[2] = {avx512_dot_table<1>(std::make_integer_sequence<int, kMR512>{}),
                                                       avx512_dot_table<2>(std::make_integer_sequence<int, kMR512>{})};
    return dot[ncols > 16 ? 1 : 0][i];
  }
  auto pick = [&](const auto& t) {
    if (W.isa == cpu::Isa::Avx512) return t.t512[ncols > 16 ? 1 : 0][row_a ? 1 : 0][i];
    return t.t256[ncols > 8 ? 1 : 0][row_a ? 1 : 0][i];
  };
  switch (W.storage) {
    case DType::F16:
      return pick(KernelTables<f16_t>{});
    case DType::BF16:
      return pick(KernelTables<bf16_t>{});
    default:
      return pick(KernelTables<float>{});
  }
}

// Heights of the micro-panels covering m rows with at most mr each, as even as possible (197 rows: 13 x 14 and
// 2 x 13 rather than 14 x 14 and a slow 1-row tail). Returns the count; heights[j] for j < count.
int micro_heights(int64_t m, int mr, int* heights) {
  const int64_t n = (m + mr - 1) / mr;
  for (int64_t j = 0; j < n; ++j) heights[j] = static_cast<int>(m / n + (j < m % n ? 1 : 0));
  return static_cast<int>(n);
}

// rows [i0, i0 + sum(heights)) x cols [k0, k0 + kc) of A -> one k-major micro-panel per height (kc x h, element
// (i, k) at k * h + i), back to back from dst.
void pack_a(const float* A, int64_t lda, int64_t i0, const int* heights, int n, int64_t k0, int64_t kc, float* dst) {
  int64_t r = 0;
  for (int j = 0; j < n; ++j) {
    const int h = heights[j];
    for (int i = 0; i < h; ++i) {
      const float* s = A + (i0 + r + i) * lda + k0;
      for (int64_t k = 0; k < kc; ++k) dst[k * h + i] = s[k];
    }
    dst += kc * h;
    r += h;
  }
}

void check_gemm_sizes(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, float* C, int64_t ldc) {
  MAMBACV_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M=" << M << " N=" << N << " K=" << K);
  if (M == 0 || N == 0) return;
  MAMBACV_CHECK((M == 1 || lda >= K) && (M == 1 || ldc >= N),
                "gemm: row strides too small: lda=" << lda << " (K=" << K << "), ldc=" << ldc << " (N=" << N << ")");
  MAMBACV_CHECK(C != nullptr && (K == 0 || A != nullptr), "gemm: null operand");
}

// C = bias (+ beta C) where K == 0
void gemm_k0(int64_t M, int64_t N, float* C, int64_t ldc, const float* bias, float beta) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = (beta != 0.0f ? beta * C[i * ldc + j] : 0.0f) + (bias ? bias[j] : 0.0f);
}

// act: applied to each C tile (then rounded again) right after its last k block stored it
void gemm_packed_simd(const ExecContext& ctx, int64_t M, const float* A, int64_t lda, const PackedWeight& W,
                      float* C, int64_t ldc, const float* bias, float beta, int round, const Act* act) {
  const cpu::Isa isa = W.isa;
  const int mr = tile_rows(isa), nr = W.nr;
  const int64_t N = W.N;
  // the bf16 dot kernel counts k in pairs: its "K" is the panels' k pairs, A converted to bf16 pair rows
  const bool dot = W.bf16 == Bf16Kernel::Dot;  // only ever set for bf16 storage
  const int64_t K = dot ? W.kpairs : W.K;
  // M chunks of at most kChunkPanels micro-panels, as even as possible
  const int64_t mchunks = (M + int64_t(mr) * kChunkPanels - 1) / (int64_t(mr) * kChunkPanels);
  const int64_t MC = (M + mchunks - 1) / mchunks, npanels = (N + nr - 1) / nr;
  // k blocks of at most kKC (k pairs: kKC / 2), as even as possible
  const int64_t kc_lim = dot ? kKC / 2 : kKC;
  const int64_t nkb = (K + kc_lim - 1) / kc_lim, kc_max = (K + nkb - 1) / nkb;
  // enough work items for the threads: split the panels when M gives fewer than 2 chunks per thread
  int64_t ngroups = 1;
  if (mchunks < 2 * ctx.threads) ngroups = std::min<int64_t>(npanels, (2 * ctx.threads + mchunks - 1) / mchunks);
  const int64_t items = mchunks * ngroups;
  // Packing A costs about one pass over it per work item; with few panels to reuse it over, reading A's rows in
  // place is cheaper (measured on the models' shapes: up to 8 panels per item, unless K is tiny). The bf16 dot
  // kernel reads A as bf16 rows, converted once here.
  const bool row_a = dot || ((npanels + ngroups - 1) / ngroups <= 8 && K >= 32);
  const double work = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(W.K);
  const int workers = parallel_workers(ctx, items, work);
  Tensor apack, abf;
  const void* a_rows = A;
  int64_t a_ld = lda;
  if (dot) {
    abf = ctx.empty({M, K}, DType::I32);
    a_to_bf16_pairs(ctx, M, A, lda, W.K, K, static_cast<uint32_t*>(abf.raw()));
    a_rows = abf.raw();
    a_ld = K;
  } else if (!row_a) {
    apack = ctx.empty({static_cast<int64_t>(workers), MC * kc_max});
  }
  float* apack_base = row_a ? nullptr : apack.f32();
  constexpr int64_t a_es = 4;  // bytes per A element: an f32, or a uint32 bf16 pair
  const char* panels = static_cast<const char*>(W.panels.raw());
  // bytes per k step of a panel: nr values (f32 / f16 / bf16), or nr bf16 pairs for the dot kernel
  const int64_t step_bytes = static_cast<int64_t>(nr) * (dot ? 4 : static_cast<int64_t>(dtype_size(W.storage)));
  parallel_for_tid(ctx, items, work, [&](int64_t b, int64_t e, int tid) {
    float* ap = row_a ? nullptr : apack_base + static_cast<int64_t>(tid) * MC * kc_max;
    int heights[kChunkPanels];
    for (int64_t it = b; it < e; ++it) {
      const int64_t mc = it / ngroups, g = it % ngroups;
      const int64_t i0 = mc * MC, m = std::min(MC, M - i0);
      const int np = micro_heights(m, mr, heights);
      const int64_t p0 = npanels * g / ngroups, p1 = npanels * (g + 1) / ngroups;
      for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
        const int64_t kc = std::min(kc_max, K - k0);
        const bool first = k0 == 0, last = k0 + kc == K;
        const bool add_c = !first || beta != 0.0f;
        if (!row_a) pack_a(A, lda, i0, heights, np, k0, kc, ap);
        for (int64_t p = p0; p < p1; ++p) {
          const void* bp = panels + (p * K + k0) * step_bytes;
          const unsigned ncols = static_cast<unsigned>(std::min<int64_t>(nr, N - p * nr));
          const float* bias_p = first && bias ? bias + p * nr : nullptr;
          int64_t r = 0, off = 0;
          for (int j = 0; j < np; ++j) {
            const int h = heights[j];
            const void* a = row_a ? static_cast<const void*>(static_cast<const char*>(a_rows) +
                                                             ((i0 + r) * a_ld + k0) * a_es)
                                  : static_cast<const void*>(ap + off);
            float* c_tile = C + (i0 + r) * ldc + p * nr;
            micro_kernel(W, h, ncols, row_a)(kc, a, a_ld, bp, c_tile, ldc, ncols, bias_p, add_c, last ? round : 0);
            if (last && act) detail::activate_rows(*act, c_tile, ldc, h, ncols, round);
            r += h;
            off += kc * h;
          }
        }
      }
    }
  });
}

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;
using MutMap = Eigen::Map<RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;

// Runs f with OpenMP's thread count of the calling thread set to ctx.threads (Eigen asks omp_get_max_threads()),
// restoring it afterwards.
template <class F>
void with_omp_threads(const ExecContext& ctx, F&& f) {
  struct Restore {
    int prev = omp_get_max_threads();
    ~Restore() { omp_set_num_threads(prev); }
  } restore;
  omp_set_num_threads(std::max(1, ctx.threads));
  if (ctx.trace) ctx.trace->note_team(std::max(1, ctx.threads));
  f();
}
}  // namespace

const char* gemm_backend() {
  switch (cpu::cpu_isa()) {
    case cpu::Isa::Avx512:
      return "mambacv-avx512 (14x32)";
    case cpu::Isa::Avx2:
      return "mambacv-avx2 (6x16)";
    default:
      return "eigen";
  }
}

PackedWeight pack_weight(const float* B, int64_t ldb, bool trans_b, int64_t N, int64_t K, const float* bias,
                         DType storage) {
  return pack_weight_for(cpu::cpu_isa(), B, ldb, trans_b, N, K, bias, storage);
}

// The packing itself (sizes checked by the callers); kernel: for bf16 storage, Dot / Amx pack k-pair panels.
static PackedWeight pack_weight_raw(cpu::Isa isa, const float* B, int64_t ldb, bool trans_b, int64_t N,
                                    int64_t K, DType storage, Bf16Kernel kernel) {
  PackedWeight w;
  w.N = N;
  w.K = K;
  w.isa = isa;
  w.nr = panel_width(w.isa);
  // f16 saturates at +-65504 (finite weights stay finite); bf16 keeps the f32 range
  auto at = [&](int64_t n, int64_t k) {
    const float v = trans_b ? B[n * ldb + k] : B[k * ldb + n];
    return storage == DType::F16 && !std::isnan(v) ? std::min(65504.0f, std::max(-65504.0f, v)) : v;
  };
  if (w.nr == 0) {  // generic: a plain f32 (N, K) copy for Eigen, holding the storage dtype's values
    w.plain = Tensor::empty({N, K});
    float* d = w.plain.f32();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) d[n * K + k] = ref::round_to(storage, false, at(n, k));
    return w;
  }
  w.storage = storage;
  const bool pairs = storage == DType::BF16 && kernel != Bf16Kernel::Widen;
  w.bf16 = storage == DType::BF16 ? kernel : Bf16Kernel::Widen;
  const int64_t nr = w.nr, np = (N + nr - 1) / nr;
  if (storage == DType::F32) {
    w.panels = Tensor::zeros({np * std::max<int64_t>(K, 1) * nr});
    float* d = w.panels.f32();
    for (int64_t p = 0; p < np; ++p)
      for (int64_t j = 0; j < nr && p * nr + j < N; ++j)
        for (int64_t k = 0; k < K; ++k) d[(p * K + k) * nr + j] = at(p * nr + j, k);
    return w;
  }
  auto half = [storage](float v) { return storage == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v); };
  if (pairs) {  // per panel and k pair: nr columns' (k even, k odd) pairs; Amx: whole 16-pair tiles
    const int64_t Kh = kernel == Bf16Kernel::Amx ? (K + 31) / 32 * 16 : (K + 1) / 2;
    w.kpairs = Kh;
    w.panels = Tensor::zeros({np * std::max<int64_t>(Kh, 1) * nr * 2}, DType::BF16);
    uint16_t* d = static_cast<uint16_t*>(w.panels.raw());
    for (int64_t p = 0; p < np; ++p)
      for (int64_t j = 0; j < nr && p * nr + j < N; ++j)
        for (int64_t k = 0; k < K; ++k) d[((p * Kh + k / 2) * nr + j) * 2 + (k & 1)] = half(at(p * nr + j, k));
    return w;
  }
  w.panels = Tensor::zeros({np * std::max<int64_t>(K, 1) * nr}, storage);
  uint16_t* d = static_cast<uint16_t*>(w.panels.raw());
  for (int64_t p = 0; p < np; ++p)
    for (int64_t j = 0; j < nr && p * nr + j < N; ++j)
      for (int64_t k = 0; k < K; ++k) d[(p * K + k) * nr + j] = half(at(p * nr + j, k));
  return w;
}

const char* bf16_kernel_name(Bf16Kernel k) {
  switch (k) {
    case Bf16Kernel::Dot:
      return "dot";
    case Bf16Kernel::Amx:
      return "amx";
    case Bf16Kernel::Widen:
      return "widen";
    default:
      return "auto";
  }
}

bool bf16_kernel_runs(Bf16Kernel k) {
  switch (k) {
    case Bf16Kernel::Widen:
      return cpu::detected_isa() != cpu::Isa::Generic;
    case Bf16Kernel::Dot:
      return cpu::detected_isa() == cpu::Isa::Avx512 && cpu::features().avx512_bf16;
    case Bf16Kernel::Amx:
      return amx_available();
    default:
      return true;
  }
}

Bf16Kernel best_bf16_kernel() {
  static const Bf16Kernel best = [] {
    if (cpu::cpu_isa() != cpu::Isa::Avx512) return Bf16Kernel::Widen;  // MAMBACV_ISA lowered, or no AVX-512
    if (const char* e = std::getenv("MAMBACV_BF16_KERNEL")) {
      for (Bf16Kernel k : {Bf16Kernel::Widen, Bf16Kernel::Dot, Bf16Kernel::Amx})
        if (std::strcmp(e, bf16_kernel_name(k)) == 0 && bf16_kernel_runs(k)) return k;
    }
    // The dot-product instructions' throughput differs between CPUs (vdpbf16ps: twice the f32 FMA rate on some,
    // half on others): time each kernel this CPU has once on a model-sized product, one thread, best of 5.
    const int64_t M = 196, N = 384, K = 384;
    std::vector<float> a(static_cast<size_t>(M * K)), b(static_cast<size_t>(N * K)), c(static_cast<size_t>(M * N));
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 7) * 0.125f - 0.375f;
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i % 5) * 0.25f - 0.5f;
    const ExecContext ctx = ExecContext::cpu(1);
    Bf16Kernel pick = Bf16Kernel::Widen;
    double best_t = 1e30;
    for (Bf16Kernel k : {Bf16Kernel::Widen, Bf16Kernel::Dot, Bf16Kernel::Amx}) {
      if (!bf16_kernel_runs(k)) continue;
      const PackedWeight w = pack_weight_raw(cpu::Isa::Avx512, b.data(), K, true, N, K, DType::BF16, k);
      double t = 1e30;
      for (int r = 0; r < 5; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        gemm(ctx, M, a.data(), K, w, c.data(), N);
        t = std::min(t, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      if (t < 0.9 * best_t) best_t = t, pick = k;  // a new kernel must win by 10%
    }
    return pick;
  }();
  return best;
}

PackedWeight pack_weight_for(cpu::Isa isa, const float* B, int64_t ldb, bool trans_b, int64_t N, int64_t K,
                             const float* bias, DType storage, Bf16Kernel bf16) {
  MAMBACV_CHECK(static_cast<int>(isa) <= static_cast<int>(cpu::detected_isa()),
                "pack_weight: this CPU (or build) cannot run the " << cpu::isa_name(isa) << " GEMM kernels");
  MAMBACV_CHECK(N >= 0 && K >= 0, "pack_weight: negative size N=" << N << " K=" << K);
  MAMBACV_CHECK(N == 0 || K == 0 || B != nullptr, "pack_weight: null weight");
  MAMBACV_CHECK((trans_b ? N : K) <= 1 || ldb >= (trans_b ? K : N),
                "pack_weight: row stride " << ldb << " too small (needs " << (trans_b ? K : N) << ")");
  MAMBACV_CHECK(storage == DType::F32 || storage == DType::F16 || storage == DType::BF16,
                "pack_weight: storage must be f32, f16 or bf16, got " << dtype_name(storage));
  Bf16Kernel kernel = Bf16Kernel::Widen;
  if (storage == DType::BF16 && isa == cpu::Isa::Avx512) {
    kernel = bf16 == Bf16Kernel::Auto ? best_bf16_kernel() : bf16;
    // AMX works on whole 32-deep k tiles: a short K (dt_proj's 6 or 12) would be mostly padding
    if (bf16 == Bf16Kernel::Auto && kernel == Bf16Kernel::Amx && K < 32) kernel = Bf16Kernel::Widen;
    MAMBACV_CHECK(bf16_kernel_runs(kernel), "pack_weight: this CPU cannot run the bf16 " << bf16_kernel_name(kernel)
                                                                                        << " kernel");
  }
  PackedWeight w = pack_weight_raw(isa, B, ldb, trans_b, N, K, storage, kernel);
  if (bias) {
    w.bias = Tensor::empty({N});
    std::copy(bias, bias + N, w.bias.f32());
  }
  return w;
}

PackedWeight pack_linear(const Tensor& W, const Tensor& bias, DType storage) {
  MAMBACV_CHECK(W.defined() && W.ndim() == 2 && W.dtype() == DType::F32 && W.device() == Device::Cpu,
                "pack_linear: expected an f32 (N, K) weight on the CPU, got " << (W.defined() ? W.str() : "none"));
  MAMBACV_CHECK(!bias.defined() || (bias.numel() == W.dim(0) && bias.dtype() == DType::F32),
                "pack_linear: bias " << bias.str() << " does not match weight " << W.str());
  return pack_weight(W.f32(), W.dim(1), /*trans_b=*/true, W.dim(0), W.dim(1),
                     bias.defined() ? bias.f32() : nullptr, storage);
}

namespace {
// The op trace's name of a GEMM with a fused activation: "gemm+gelu", ...
const char* gemm_op_name(const Act* act) {
  if (!act) return "gemm";
  static const std::array<std::string, 4> names = [] {
    std::array<std::string, 4> n;
    for (Act a : {Act::Silu, Act::Gelu, Act::Relu, Act::Sigmoid})
      n[static_cast<size_t>(a)] = std::string("gemm+") + act_name(a);
    return n;
  }();
  return names[static_cast<size_t>(*act)].c_str();
}
}  // namespace

void gemm(const ExecContext& ctx, int64_t M, const float* A, int64_t lda, const PackedWeight& W, float* C,
          int64_t ldc, float beta, Rounding round, std::optional<Act> act_opt) {
  const int64_t N = W.N, K = W.K;
  check_gemm_sizes(M, N, K, A, lda, C, ldc);
  MAMBACV_CHECK(beta == 0.0f || beta == 1.0f, "gemm: beta must be 0 or 1, got " << beta);
  const Act* act = act_opt ? &*act_opt : nullptr;
  OpTrace trace(ctx, gemm_op_name(act),
                2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) +
                    (act ? detail::act_flops(*act) * static_cast<double>(M * N) : 0.0),
                4.0 * static_cast<double>(M * K + M * N) +
                    static_cast<double>(N * K) * (W.nr > 0 ? static_cast<double>(dtype_size(W.storage)) : 4.0));
  if (M == 0 || N == 0) return;
  const float* bias = W.bias.defined() ? W.bias.f32() : nullptr;
  // the paths that store whole blocks of C first: act over all of C, row blocks split over the threads
  auto act_after = [&] {
    if (!act) return;
    const int mode = round_mode(round);
    parallel_for(ctx, M, 8.0 * static_cast<double>(M * N), [&](int64_t b, int64_t e) {
      detail::activate_rows(*act, C + b * ldc, ldc, e - b, N, mode);
    });
  };
  if (K == 0) {
    gemm_k0(M, N, C, ldc, bias, beta);
    round_block(ctx, round, M, N, C, ldc);
    return act_after();
  }
  if (W.bf16 == Bf16Kernel::Amx)
    return gemm_amx(ctx, M, A, lda, W, C, ldc, bias, beta, round_mode(round), act);
  if (W.nr > 0) return gemm_packed_simd(ctx, M, A, lda, W, C, ldc, bias, beta, round_mode(round), act);
  // generic: Eigen on the plain copy; C is initialised with bias / beta * C first, the product added into it
  MutMap c(C, M, N, Eigen::OuterStride<>(std::max(ldc, N)));
  const ConstMap a(A, M, K, Eigen::OuterStride<>(std::max(lda, K)));
  const ConstMap w(W.plain.f32(), N, K, Eigen::OuterStride<>(K));
  with_omp_threads(ctx, [&] {
    if (beta == 0.0f && !bias) {
      c.noalias() = a * w.transpose();
      return;
    }
    if (beta == 0.0f) c.setZero();
    if (bias) c.rowwise() += Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>>(bias, N);
    c.noalias() += a * w.transpose();
  });
  round_block(ctx, round, M, N, C, ldc);
  act_after();
}

void linear(const ExecContext& ctx, const Tensor& x, const PackedWeight& W, Tensor& y, bool accumulate,
            Rounding round, std::optional<Act> act) {
  MAMBACV_CHECK(x.defined() && x.ndim() >= 1 && x.dim(-1) == W.K,
                "linear: x must end in " << W.K << " features, got " << (x.defined() ? x.str() : "an empty tensor"));
  int64_t rows = 1;  // the leading dims of x
  for (int i = 0; i + 1 < x.ndim(); ++i) rows *= x.dim(i);
  MAMBACV_CHECK(y.defined() && y.ndim() >= 1 && y.dim(-1) == W.N && y.numel() == rows * W.N,
                "linear: y must be (" << rows << ", " << W.N << "), got " << (y.defined() ? y.str() : "none"));
  require_f32("linear", {{"x", &x}, {"y", &y}});
  gemm(ctx, rows, x.f32(), W.K, W, y.f32(), W.N, accumulate ? 1.0f : 0.0f, round, act);
}

}  // namespace mambacv::ops
