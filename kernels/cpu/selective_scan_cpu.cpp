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
//   - exp is a vectorised exp2 (range reduction t - floor(t), degree-5 minimax polynomial, scalef), ~1 ulp;
//   - three instantiations of the tile code: AVX-512, AVX2 (pairs of 8-lane vectors) and portable (libm).
// Measured (2-core Zen 4, noisy shared machine, best of 200): VMamba-T stage 1 (dim 96, L 3136, N 1, 4 cross-scan
// directions) 1.7 ms on 1 thread, 0.87 ms on 2; Vim-T layer (dim 384, L 197, N 16, 2 directions, z) 0.67 / 0.34 ms.
// N = 16 is bound by the FP pipes (~11 vector ops per state and step, 8 of them the exp); software prefetching of
// the order's tokens measured slower (hardware prefetch copes), a 4-way split of the y sum made no difference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the intrinsics' deliberate _mm512_undefined_*() pass-through operands as maybe-uninitialized once
// they are inlined (a known false positive); the warning is reported at the header's lines, hence placed here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include "kernels/context.h"
#include "kernels/cpu_info.h"
#include "kernels/selective_scan.h"
#include "mambacv/error.h"

namespace mambacv {
namespace {

constexpr int kW = 16;      // channels per tile (SIMD lanes)
constexpr int kBlock = 64;  // tokens per block
constexpr int kMaxTiles = 8;  // channel tiles per work item (a run of up to 128 channels)
constexpr float kLog2e = 1.44269504088896341f;

// 2^f on [0, 1): minimax polynomial, relative error 7.5e-8.
constexpr float kP0 = 9.999999250636e-01f, kP1 = 6.931530732026e-01f, kP2 = 2.401536170211e-01f,
                kP3 = 5.582631811623e-02f, kP4 = 8.989340023582e-03f, kP5 = 1.877576700020e-03f;
// 2^f on [-0.5, 0.5] with the constant term fixed at 1 (exact at f = 0): relative error 9.1e-8 (1.6e-7 in f32).
constexpr float kQ1 = 6.931470036507e-01f, kQ2 = 2.402224242687e-01f, kQ3 = 5.550733581185e-02f,
                kQ4 = 9.671512991190e-03f, kQ5 = 1.326472731307e-03f;

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

// Per-thread workspace (floats, every array 64-byte aligned).
struct Workspace {
  explicit Workspace(int64_t N) : N(N) {
    const size_t tile = static_cast<size_t>(kBlock) * kW;
    const size_t bc = static_cast<size_t>((kBlock * N + kW - 1) / kW * kW);
    const size_t nv = static_cast<size_t>(N) * kW * kMaxTiles;
    const size_t total = 5 * tile + 2 * bc + 2 * nv + 4 * kW;
    mem.reset(static_cast<float*>(std::aligned_alloc(64, total * sizeof(float))));
    MAMBACV_CHECK(mem != nullptr, "selective_scan: out of memory for a " << total * sizeof(float) << "-byte workspace");
    float* p = mem.get();
    dt = p, p += tile;
    dtu = p, p += tile;
    du = p, p += tile;
    gate = p, p += tile;
    y = p, p += tile;
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
  float *y;                     // (kBlock, 16): the AVX2 path's y per step
  float *Bs, *Cs;               // (kBlock, N) scalars of the tile's group
  float *A2;                    // (kMaxTiles, N, 16): A * log2(e) per tile of the run
  float *h;                     // (kMaxTiles, N, 16): states per tile of the run, kept between blocks
};

}  // namespace

// The two instantiations of the tile kernel. Everything above (and every std:: template) is compiled for the
// baseline; only the functions defined inside the target region use AVX-512.
namespace {
namespace scan_avx512 {
#if defined(__clang__)  // clang ignores GCC's target pragma; its attribute pragma marks every function instead
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")
#endif
#define MAMBACV_SCAN_AVX512 1
#include "kernels/cpu/selective_scan_tile.inc"
#undef MAMBACV_SCAN_AVX512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
}  // namespace scan_avx512
namespace scan_avx2 {
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#define MAMBACV_SCAN_AVX2 1
#include "kernels/cpu/selective_scan_tile.inc"
#undef MAMBACV_SCAN_AVX2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
}  // namespace scan_avx2
namespace scan_portable {
#include "kernels/cpu/selective_scan_tile.inc"
}  // namespace scan_portable

// Tiles per work item: runs of at most kMaxTiles tiles of one group, as even as possible, and enough runs that
// every worker has work (and, while there are few runs, a multiple of the workers so none idles at the end).
int64_t runs_per_group(int64_t tiles_per_group, int64_t batch_groups, int threads) {
  int64_t runs = (tiles_per_group + kMaxTiles - 1) / kMaxTiles;
  while (runs < tiles_per_group && batch_groups * runs < 4 * threads && (batch_groups * runs) % threads != 0) ++runs;
  return runs;
}

template <int NT>
void scan_all(const ExecContext& ctx, const ScanParams& p) {
  const int64_t cpg = p.dim / p.groups;          // channels per group
  const int64_t tpg = (cpg + kW - 1) / kW;       // tiles per group (a tile never straddles two groups)
  const double work = static_cast<double>(p.batch) * p.dim * p.L * p.N * static_cast<double>(p.dirs.size());
  const int64_t runs = runs_per_group(tpg, p.batch * p.groups, parallel_workers(ctx, p.batch * p.groups * tpg, work));
  const int64_t tpr = (tpg + runs - 1) / runs;   // tiles per run
  const int64_t rpg = (tpg + tpr - 1) / tpr;     // runs per group actually needed
  const int64_t items = p.batch * p.groups * rpg;
  const int nthreads = parallel_workers(ctx, items, work);
  const cpu::Isa isa = cpu::cpu_isa();
  // Allocated here, not in the parallel region, so an allocation failure is an Error and not std::terminate.
  std::vector<std::unique_ptr<Workspace>> ws(static_cast<size_t>(nthreads));
  for (auto& w : ws) w = std::make_unique<Workspace>(p.N);
  parallel_for_tid(ctx, items, work, [&](int64_t i0, int64_t i1, int tid) {
    Workspace& wsp = *ws[static_cast<size_t>(tid)];
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / (p.groups * rpg), r = it % (p.groups * rpg);
      const int64_t g = r / rpg;
      const int64_t c_begin = g * cpg + (r % rpg) * tpr * kW;
      const int64_t c_end = std::min((g + 1) * cpg, c_begin + tpr * kW);
      if (isa == cpu::Isa::Avx512)
        scan_avx512::scan_run<NT>(p, b, c_begin, c_end, wsp);
      else if (isa == cpu::Isa::Avx2)
        scan_avx2::scan_run<NT>(p, b, c_begin, c_end, wsp);
      else
        scan_portable::scan_run<NT>(p, b, c_begin, c_end, wsp);
    }
  });
}

}  // namespace

void selective_scan_cpu(const ExecContext& ctx, const ScanParams& p) {
  validate_scan_params(p);
  switch (p.N) {
    case 1:
      return scan_all<1>(ctx, p);
    case 16:
      return scan_all<16>(ctx, p);
    default:
      return scan_all<0>(ctx, p);
  }
}

double cpu::measure_scan_exp_rate(int threads, double seconds) {
  const cpu::Isa isa = cpu::cpu_isa();
  constexpr int64_t kIters = 1 << 12;
  const double exps_per_call = static_cast<double>(scan_avx512::kExpChains) * kW * kIters;
  return cpu::measure_parallel_rate(threads, seconds, exps_per_call, [isa](int thread) {
    const float seed = 0.5f + 0.001f * static_cast<float>(thread);
    if (isa == cpu::Isa::Avx512) return scan_avx512::exp2_chains(seed, kIters);
    if (isa == cpu::Isa::Avx2) return scan_avx2::exp2_chains(seed, kIters);
    return scan_portable::exp2_chains(seed, kIters);
  });
}

void selective_scan(const ExecContext& ctx, const ScanParams& p) {
  // FLOPs per (b, direction, channel, step): N x (dt*A, exp, dA*h, (dt*u)*B, add, C*h multiply-add) = 7N with
  // an exp counted as one, plus delta + bias, softplus (2), dt*u, D*u + y (2) = 6; the z gate adds about 4.
  const double per_step = 7.0 * static_cast<double>(p.N) + 6.0;
  double total = 0, bytes_per_step = 0, exps_per_step = 0;
  for (const auto& d : p.dirs) {
    total += per_step + (d.z.ptr ? 4.0 : 0.0);
    exps_per_step += static_cast<double>(p.N) + (p.delta_softplus ? 1.0 : 0.0) + (d.z.ptr ? 1.0 : 0.0);
    bytes_per_step += dtype_size(d.u.dtype) * (d.z.ptr ? 3.0 : 2.0) + 4.0;  // u, delta[, z] read, out written
  }
  const double steps = static_cast<double>(p.batch) * static_cast<double>(p.dim) * static_cast<double>(p.L);
  OpTrace trace(ctx, "selective_scan", total * steps, bytes_per_step * steps, exps_per_step * steps);
  if (ctx.device == Device::Cuda) {
#ifdef MAMBACV_WITH_CUDA
    selective_scan_cuda(ctx, p);
    return;
#else
    MAMBACV_FAIL("selective_scan: this build of mambacv has no CUDA kernels (configure with -DMAMBACV_CUDA=ON)");
#endif
  }
  selective_scan_cpu(ctx, p);
}

}  // namespace mambacv
