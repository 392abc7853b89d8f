// kernels/cpu/gemm_amx.cpp - the bf16 GEMM on AMX tiles (tdpbf16ps) and the bf16 conversion of A it and the
// AVX512_BF16 dot kernel read. Compiled for the baseline; only the functions marked with the AMX target use it,
// and they run only where amx_available() (CPUID + the Linux permission for the tile data state).
//
// Tiles (one configuration, every tile 16 rows x 64 bytes): C 0..3 (2 x 2 tiles of 16 x 16 f32 = a 32 x 32 block
// of C), A 4..5 (16 rows x 32 bf16 each), B 6..7 (16 k pairs x 16 columns, the pair layout of the dot panels).
// A work item is one 32-row block of A and one 32-column panel of W over the whole K (ceil(K / 32) steps of 4
// tdpbf16ps), its C block stored through a 32 x 32 buffer so that partial rows / columns, the bias and beta are
// applied by one masked epilogue.
// The epilogue's stores to C miss the caches when C is large or K small (VMamba-T stage 1 fc1: 3136 x 384, K = 96),
// and with a few hundred cycles of tile work per block their read-for-ownership latency showed: the next block's
// C lines are fetched for writing (prefetchw) before this block's tiles run (1.3-1.7x on such shapes, measured).
#include "kernels/cpu/gemm_amx.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive in the intrinsics' headers
#endif
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/round_simd.h"
#include "kernels/cpu/simd_math.h"
#include "kernels/cpu_info.h"
#include "mambacv/error.h"

namespace mambacv::ops {

namespace {
#define MAMBACV_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c")))
#define MAMBACV_TARGET_AMX \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c")))

// The tile configuration of palette 1 (Intel SDM, LDTILECFG): 64 bytes; tiles 0..7 of 16 rows x 64 bytes. A
// constant in memory: GCC 12 does not see _tile_loadconfig read its operand and drops stores to a local one.
struct alignas(64) TileConfig {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
alignas(64) const TileConfig kTileConfig = {
    1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0}, {16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0}};

constexpr int kTileK = 16;  // k pairs per tile (32 bf16)

// rows [b, e) of A (f32, row stride lda, K columns) -> bf16 pairs, kp pairs per row (zero beyond K), RNE
MAMBACV_TARGET_BF16 void convert_rows(const float* A, int64_t lda, int64_t K, int64_t kp, int64_t b, int64_t e,
                                      uint32_t* dst) {
  for (int64_t i = b; i < e; ++i) {
    const float* r = A + i * lda;
    uint32_t* d = dst + i * kp;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(r + k + 16), _mm512_loadu_ps(r + k));
      _mm512_storeu_si512(d + k / 2, reinterpret_cast<__m512i>(v));
    }
    for (; k < 2 * kp; k += 32) {  // the tail and the zero padding
      const int64_t left = std::max<int64_t>(0, K - k);
      const __mmask16 m0 = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
      const __mmask16 m1 = left >= 32 ? __mmask16(0xffff) : left <= 16 ? __mmask16(0) : __mmask16((1u << (left - 16)) - 1u);
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, r + k + 16), _mm512_maskz_loadu_ps(m0, r + k));
      const int64_t pairs = std::min<int64_t>(16, kp - k / 2);
      _mm512_mask_storeu_epi32(d + k / 2, static_cast<__mmask16>((1u << pairs) - 1u), reinterpret_cast<__m512i>(v));
    }
  }
}

// C[0:rows, 0:ncols] = tmp (32 x 32) (+ C) (+ bias), rounded as `round`
MAMBACV_TARGET_BF16 void epilogue(const float* tmp, int rows, unsigned ncols, float* c, int64_t ldc,
                                  const float* bias, bool add_c, int round) {
  const __mmask16 m0 = ncols >= 16 ? __mmask16(0xffff) : __mmask16((1u << ncols) - 1u);
  const __mmask16 m1 = ncols >= 32 ? __mmask16(0xffff) : ncols <= 16 ? __mmask16(0) : __mmask16((1u << (ncols - 16)) - 1u);
  const __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
  const __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
  for (int i = 0; i < rows; ++i) {
    float* ci = c + i * ldc;
    __m512 x0 = _mm512_add_ps(_mm512_load_ps(tmp + i * 32), b0);
    __m512 x1 = _mm512_add_ps(_mm512_load_ps(tmp + i * 32 + 16), b1);
    if (add_c) {
      x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, ci));
      x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, ci + 16));
    }
    if (round) {
      x0 = simd::round16(x0, round);
      x1 = simd::round16(x1, round);
    }
    _mm512_mask_storeu_ps(ci, m0, x0);
    _mm512_mask_storeu_ps(ci + 16, m1, x1);
  }
}

// One 32 x 32 block: A rows from a (kp pairs per row, 32 rows available), the panel bp (kp pairs x 32 columns).
template <bool kTwoM, bool kTwoN>
MAMBACV_TARGET_AMX void amx_block(const uint32_t* a, int64_t kp, const uint16_t* bp, float* tmp) {
  _tile_zero(0);
  if (kTwoN) _tile_zero(1);
  if (kTwoM) _tile_zero(2);
  if (kTwoM && kTwoN) _tile_zero(3);
  const int64_t a_stride = kp * 4;
  for (int64_t kb = 0; kb < kp; kb += kTileK) {
    _tile_loadd(4, a + kb, a_stride);
    if (kTwoM) _tile_loadd(5, a + 16 * kp + kb, a_stride);
    const uint16_t* b = bp + kb * 64;  // 64 bf16 per k pair: 32 columns x 2
    _tile_loadd(6, b, 128);
    if (kTwoN) _tile_loadd(7, b + 32, 128);
    _tile_dpbf16ps(0, 4, 6);
    if (kTwoN) _tile_dpbf16ps(1, 4, 7);
    if (kTwoM) _tile_dpbf16ps(2, 5, 6);
    if (kTwoM && kTwoN) _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, tmp, 128);
  if (kTwoN) _tile_stored(1, tmp + 16, 128);
  if (kTwoM) _tile_stored(2, tmp + 16 * 32, 128);
  if (kTwoM && kTwoN) _tile_stored(3, tmp + 16 * 32 + 16, 128);
}

// the 128-byte rows [0, rows) of a C block (row stride ldc) fetched for writing. Every AMX CPU has PREFETCHW; the
// instruction is written out because the compilers' intrinsic / builtin need the prfchw target in different ways.
inline void prefetchw(const float* p) { asm volatile("prefetchw %0" : : "m"(*p)); }
void prefetch_for_write(const float* c, int64_t ldc, int rows) {
  for (int i = 0; i < rows; ++i) {
    prefetchw(c + i * ldc);
    prefetchw(c + i * ldc + 16);
  }
}

MAMBACV_TARGET_AMX void tiles_on() { _tile_loadconfig(&kTileConfig); }
MAMBACV_TARGET_AMX void tiles_off() { _tile_release(); }
}  // namespace

bool amx_available() {
  static const bool ok = [] {
    const cpu::Features& f = cpu::features();
    if (!f.amx_tile || !f.amx_bf16 || cpu::detected_isa() != cpu::Isa::Avx512 || !f.avx512_bf16) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // Linux: ask for the AMX tile data state
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

void a_to_bf16_pairs(const ExecContext& ctx, int64_t M, const float* A, int64_t lda, int64_t K, int64_t kp,
                     uint32_t* dst) {
  MAMBACV_CHECK(cpu::features().avx512_bf16, "a_to_bf16_pairs: needs AVX512_BF16");
  parallel_for(ctx, M, static_cast<double>(M * K), [&](int64_t b, int64_t e) { convert_rows(A, lda, K, kp, b, e, dst); });
}

void gemm_amx(const ExecContext& ctx, int64_t M, const float* A, int64_t lda, const PackedWeight& W, float* C,
              int64_t ldc, const float* bias, float beta, int round, const Act* act) {
  MAMBACV_CHECK(W.bf16 == Bf16Kernel::Amx && amx_available(), "gemm: AMX weights on a CPU without AMX");
  const int64_t N = W.N, kp = W.kpairs, npanels = (N + W.nr - 1) / W.nr;
  const int64_t mblocks = (M + 31) / 32;
  // work items: (32-row block of A, group of panels); a block is converted to bf16 once per item, into the
  // worker's own 32 x kp buffer, and reused over the group's panels. Groups split the panels when there are few
  // row blocks, so that every worker has work.
  int64_t ngroups = 1;
  if (mblocks < 2 * ctx.threads) ngroups = std::min<int64_t>(npanels, (2 * ctx.threads + mblocks - 1) / mblocks);
  const int64_t items = mblocks * ngroups;
  const double work = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(W.K);
  const int workers = parallel_workers(ctx, items, work);
  Tensor abuf = ctx.empty({static_cast<int64_t>(workers), 32 * kp}, DType::I32);
  const uint16_t* panels = static_cast<const uint16_t*>(W.panels.raw());
  parallel_for_tid(ctx, items, work, [&](int64_t b, int64_t e, int tid) {
    alignas(64) float tmp[32 * 32];
    uint32_t* a = static_cast<uint32_t*>(abuf.raw()) + static_cast<int64_t>(tid) * 32 * kp;
    tiles_on();
    for (int64_t it = b; it < e; ++it) {
      const int64_t mb = it / ngroups, g = it % ngroups;
      const int64_t r0 = mb * 32;
      const int rows = static_cast<int>(std::min<int64_t>(32, M - r0));
      convert_rows(A + r0 * lda, lda, W.K, kp, 0, rows, a);
      std::fill(a + rows * kp, a + 32 * kp, 0u);  // rows past M read as zero
      const int64_t p0 = npanels * g / ngroups, p1 = npanels * (g + 1) / ngroups;
      for (int64_t p = p0; p < p1; ++p) {
        const unsigned ncols = static_cast<unsigned>(std::min<int64_t>(W.nr, N - p * W.nr));
        const uint16_t* bp = panels + p * kp * 64;
        const bool two_m = rows > 16, two_n = ncols > 16;
        if (p + 1 < p1) prefetch_for_write(C + r0 * ldc + (p + 1) * W.nr, ldc, rows);  // the next block's (see top)
        if (two_m && two_n) amx_block<true, true>(a, kp, bp, tmp);
        else if (two_m) amx_block<true, false>(a, kp, bp, tmp);
        else if (two_n) amx_block<false, true>(a, kp, bp, tmp);
        else amx_block<false, false>(a, kp, bp, tmp);
        float* c_block = C + r0 * ldc + p * W.nr;
        epilogue(tmp, rows, ncols, c_block, ldc, bias ? bias + p * W.nr : nullptr, beta != 0.0f, round);
        if (act) detail::activate_rows(*act, c_block, ldc, rows, ncols, round);
      }
    }
    tiles_off();
  });
}

}  // namespace mambacv::ops
