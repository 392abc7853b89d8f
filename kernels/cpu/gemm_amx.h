// kernels/cpu/gemm_amx.h - (internal) the AMX bf16 GEMM and the bf16 conversion of A (gemm_amx.cpp), used by
// gemm.cpp for weights packed with Bf16Kernel::Amx / Dot.
#pragma once

#include <cstdint>

#include "kernels/context.h"
#include "kernels/ops.h"

namespace mambacv::ops {

// CPUID has AMX-TILE, AMX-BF16 and AVX512_BF16, and the OS granted this process the tile data state.
bool amx_available();
// A (M, K) f32, row stride lda -> dst (M, kp) uint32: bf16 pairs (k = 2j low half, 2j + 1 high), zero beyond K,
// round to nearest even (AVX512_BF16 vcvtne2ps2bf16). Needs AVX512_BF16.
void a_to_bf16_pairs(const ExecContext& ctx, int64_t M, const float* A, int64_t lda, int64_t K, int64_t kp,
                     uint32_t* dst);
// C (M, N) = A (M, K) @ W^T (+ bias) (+ beta C) for W packed with Bf16Kernel::Amx; round: 0, or 1 bf16,
// 2 f16, 3 f16 saturating (gemm.cpp's modes), applied to the stored values; act (or null): applied to each stored
// block of C, then rounded again.
void gemm_amx(const ExecContext& ctx, int64_t M, const float* A, int64_t lda, const PackedWeight& W, float* C,
              int64_t ldc, const float* bias, float beta, int round, const Act* act);

}  // namespace mambacv::ops
