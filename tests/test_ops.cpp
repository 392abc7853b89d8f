// tests/test_ops.cpp - every fast op of kernels/ops.h against its plain reference (ops::ref or a definition
// written out here), on shapes that hit SIMD remainders (C = 1, 3, 15, 16, 17, 33), odd and non-square images,
// batch 1 and 3, every stride / padding / kernel combination the models use, M = 1 GEMMs and K % 16 != 0; the
// GEMM with every kernel family this machine can run (avx512, avx2, generic), the other ops with the family
// cpu_isa() selects (ctest runs this suite again under MAMBACV_ISA=avx2 and MAMBACV_ISA=generic).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "kernels/cpu_info.h"
#include "kernels/ops.h"
#include "mambacv/error.h"
#include "mambacv/tensor.h"
#include "test_util.h"

using namespace mambacv;
using mambacv::test::random_tensor;

namespace {

constexpr double kTol = 1e-5;  // relative L2

double rel_l2(const float* a, const float* ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}
double rel_l2(const Tensor& a, const Tensor& ref) {
  EXPECT_EQ(a.numel(), ref.numel());
  return rel_l2(a.f32(), ref.f32(), a.numel());
}
bool all_finite(const Tensor& t) {
  const float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

uint64_t g_seed = 1;
const ExecContext kCtx = ExecContext::cpu(0);
Tensor from_ptr(const float* p, const Shape& s) { return Tensor::view_of(const_cast<float*>(p), s, DType::F32); }
Tensor maybe(const Tensor& t, bool on) { return on ? t : Tensor(); }

// the kernel families this machine runs: detected_isa() and every one below it
std::vector<cpu::Isa> runnable_isas() {
  std::vector<cpu::Isa> v;
  for (int i = static_cast<int>(cpu::detected_isa()); i >= 0; --i) v.push_back(static_cast<cpu::Isa>(i));
  return v;
}
Tensor rnd(const Shape& s, float lo = -1.0f, float hi = 1.0f) { return random_tensor(s, g_seed++, lo, hi); }

}  // namespace

// ---- GEMM ------------------------------------------------------------------------------------------------------
struct GemmCase {
  int64_t M, N, K;
};

// Every kernel family (AVX-512 14x32, AVX2 6x16, Eigen) on shapes that hit every tile remainder: M below, at and
// above the micro-tile height and the chunk size, N around the panel widths (16, 32) and the narrow case that reads
// A in place, K across the k-block size (512), strided A / C, bias and beta.
namespace {
// C (M, ldc) against the reference Cr over the M x N window; the padding columns must still hold C0's values.
struct WindowCheck {
  double rel_l2 = 0;
  bool untouched = true;
};
WindowCheck check_window(const Tensor& C, const Tensor& Cr, const Tensor& C0, int64_t M, int64_t N, int64_t ldc) {
  std::vector<float> a, r;
  WindowCheck w;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < ldc; ++n) {
      if (n < N) {
        a.push_back(C.f32()[m * ldc + n]);
        r.push_back(Cr.f32()[m * ldc + n]);
      } else {
        w.untouched &= C.f32()[m * ldc + n] == C0.f32()[m * ldc + n];
      }
    }
  w.rel_l2 = rel_l2(a.data(), r.data(), static_cast<int64_t>(a.size()));
  return w;
}
}  // namespace

TEST(Ops, GemmMatchesReferenceEveryKernel) {
  const GemmCase cases[] = {{1, 1, 1},     {1, 17, 33},   {1, 1000, 192}, {3, 5, 7},      {16, 16, 16},
                            {17, 33, 15},  {64, 96, 48},  {197, 384, 192}, {130, 65, 100}, {2, 300, 1},
                            {300, 2, 45},  {33, 1, 17},   {256, 200, 257}, {13, 40, 384},  {15, 48, 31},
                            {229, 31, 70}, {7, 70, 1100}, {450, 129, 9},   {28, 64, 513}};
  for (cpu::Isa isa : runnable_isas())
    for (const GemmCase& gc : cases)
      for (bool trans_b : {true, false})
        for (bool with_bias : {false, true})
          for (float beta : {0.0f, 1.0f})
            for (int64_t pad : {0, 3}) {  // pad > 0: row strides larger than the row
              const int64_t M = gc.M, N = gc.N, K = gc.K;
              const int64_t lda = K + pad, ldb = (trans_b ? K : N) + pad, ldc = N + pad;
              Tensor A = rnd({M, lda});
              Tensor B = rnd({trans_b ? N : K, ldb});
              Tensor bias = rnd({N});
              Tensor C0 = rnd({M, ldc});
              Tensor C = C0.clone(), Cr = C0.clone();
              if (beta == 0.0f)  // beta == 0 must overwrite, never read, C
                for (int64_t m = 0; m < M; ++m)
                  for (int64_t n = 0; n < N; ++n) C.f32()[m * ldc + n] = NAN;
              const ops::PackedWeight W =
                  ops::pack_weight_for(isa, B.f32(), ldb, trans_b, N, K, with_bias ? bias.f32() : nullptr);
              ops::gemm(kCtx, M, A.f32(), lda, W, C.f32(), ldc, beta);
              ops::ref::gemm(M, N, K, A.f32(), lda, B.f32(), ldb, trans_b, Cr.f32(), ldc,
                             with_bias ? bias.f32() : nullptr, beta);
              const WindowCheck w = check_window(C, Cr, C0, M, N, ldc);
              EXPECT_TRUE(w.untouched) << cpu::isa_name(isa) << " wrote past N";
              EXPECT_LE(w.rel_l2, kTol)
                  << cpu::isa_name(isa) << " M=" << M << " N=" << N << " K=" << K << " trans_b=" << trans_b
                  << " bias=" << with_bias << " beta=" << beta << " pad=" << pad;
            }
}

// The work split (M chunks x panel groups, packed or in-place A) depends on the thread budget: every budget must
// give the reference's result, whatever the machine's core count.
// Half-precision weight storage: the widening kernels (f16, bf16) on every ISA and the bf16 dot-product kernels
// this CPU has (AVX512_BF16, AMX) against the reference on the rounded weights (and, for the dot kernels, A).
TEST(Ops, GemmHalfPrecisionWeights) {
  const GemmCase cases[] = {{1, 1, 1},     {1, 17, 33},   {3, 5, 7},     {17, 33, 15},  {197, 384, 192},
                            {2, 300, 1},   {300, 2, 45},  {13, 40, 384}, {229, 31, 70}, {7, 70, 1100},
                            {450, 129, 9}, {28, 64, 513}, {14, 32, 2},   {15, 16, 3},   {33, 48, 64}, {64, 32, 31}};
  int runs[3] = {0, 0, 0};
  for (cpu::Isa isa : runnable_isas()) {
    if (isa == cpu::Isa::Generic) continue;  // the portable backend keeps f32
    for (DType st : {DType::F16, DType::BF16})
      for (ops::Bf16Kernel kern : {ops::Bf16Kernel::Widen, ops::Bf16Kernel::Dot, ops::Bf16Kernel::Amx}) {
        const bool pairs = kern != ops::Bf16Kernel::Widen;
        if (pairs && (st != DType::BF16 || isa != cpu::Isa::Avx512 || !ops::bf16_kernel_runs(kern))) continue;
        for (const GemmCase& gc : cases)
          for (float beta : {0.0f, 1.0f}) {
            const int64_t M = gc.M, N = gc.N, K = gc.K, lda = K + 1, ldc = N + 2;
            Tensor A = rnd({M, lda}), B = rnd({N, K}), bias = rnd({N}), C0 = rnd({M, ldc});
            Tensor C = C0.clone(), Cr = C0.clone();
            const ops::PackedWeight W = ops::pack_weight_for(isa, B.f32(), K, true, N, K, bias.f32(), st, kern);
            ASSERT_EQ(W.storage, st);
            if (st == DType::BF16) {
              ASSERT_EQ(W.bf16, kern);
            }
            ops::gemm(kCtx, M, A.f32(), lda, W, C.f32(), ldc, beta);
            Tensor Br = B.clone(), Ar = A.clone();
            ops::round_to(kCtx, st, false, Br);
            if (pairs) ops::round_to(kCtx, DType::BF16, false, Ar);
            ops::ref::gemm(M, N, K, Ar.f32(), lda, Br.f32(), K, true, Cr.f32(), ldc, bias.f32(), beta);
            const WindowCheck w = check_window(C, Cr, C0, M, N, ldc);
            EXPECT_TRUE(w.untouched) << "wrote past N";
            EXPECT_LE(w.rel_l2, kTol)
                << cpu::isa_name(isa) << " " << dtype_name(st) << " " << ops::bf16_kernel_name(kern) << " M=" << M
                << " N=" << N << " K=" << K << " beta=" << beta;
            ++runs[static_cast<int>(kern) - 1];
          }
      }
  }
  EXPECT_GT(runs[0], 0);
  if (ops::bf16_kernel_runs(ops::Bf16Kernel::Dot)) {
    EXPECT_GT(runs[1], 0);
  }
  if (ops::bf16_kernel_runs(ops::Bf16Kernel::Amx)) {
    EXPECT_GT(runs[2], 0);
  }
  // half the memory of f32 panels (the SIMD families; the portable backend keeps an f32 copy)
  Tensor B = rnd({96, 384});
  for (cpu::Isa isa : runnable_isas()) {
    if (isa == cpu::Isa::Generic) continue;
    for (DType st : {DType::F16, DType::BF16})
      EXPECT_EQ(ops::pack_weight_for(isa, B.f32(), 384, true, 96, 384, nullptr, st).panels.nbytes() * 2,
                ops::pack_weight_for(isa, B.f32(), 384, true, 96, 384).panels.nbytes())
          << cpu::isa_name(isa) << " " << dtype_name(st);
  }
}

// f(isa, storage, kernel) for every GEMM kernel this CPU runs: each kernel family with f32 and bf16-widening
// weights, and on AVX-512 the bf16 dot and AMX kernels where the CPU has them
template <class F>
void for_each_gemm_kernel(F&& f) {
  for (cpu::Isa isa : runnable_isas())
    for (DType st : {DType::F32, DType::BF16})
      for (ops::Bf16Kernel kern : {ops::Bf16Kernel::Widen, ops::Bf16Kernel::Dot, ops::Bf16Kernel::Amx}) {
        if (kern != ops::Bf16Kernel::Widen &&
            (st != DType::BF16 || isa != cpu::Isa::Avx512 || !ops::bf16_kernel_runs(kern)))
          continue;
        f(isa, st, kern);
      }
}

// The rounding fused into the GEMM's store equals rounding the stored product afterwards, bit for bit, on every
// kernel (f32, f16 / bf16 weights, the bf16 dot kernels) and the K = 0 and portable paths.
TEST(Ops, GemmFusedRoundingEqualsRoundingAfterwards) {
  const GemmCase cases[] = {{1, 1, 1}, {17, 33, 15}, {197, 40, 384}, {30, 70, 64}, {5, 9, 0}};
  for_each_gemm_kernel([&](cpu::Isa isa, DType st, ops::Bf16Kernel kern) {
    for (const GemmCase& gc : cases)
      for (ops::Rounding r : {ops::Rounding{DType::BF16, false}, ops::Rounding{DType::F16, false},
                              ops::Rounding{DType::F16, true}}) {
        Tensor A = rnd({gc.M, std::max<int64_t>(gc.K, 1)}), B = rnd({gc.N, std::max<int64_t>(gc.K, 1)});
        for (int64_t i = 0; i < A.numel(); i += 7) A.f32()[i] *= 3e4f;  // some products beyond f16's range
        Tensor bias = rnd({gc.N});
        const ops::PackedWeight W = ops::pack_weight_for(isa, B.f32(), std::max<int64_t>(gc.K, 1), true, gc.N,
                                                         gc.K, bias.f32(), st, kern);
        Tensor fused = Tensor::empty({gc.M, gc.N}), after = Tensor::empty({gc.M, gc.N});
        ops::gemm(kCtx, gc.M, A.f32(), std::max<int64_t>(gc.K, 1), W, fused.f32(), gc.N, 0.0f, r);
        ops::gemm(kCtx, gc.M, A.f32(), std::max<int64_t>(gc.K, 1), W, after.f32(), gc.N);
        ops::round_to(kCtx, r.dtype, r.saturate, after);
        for (int64_t i = 0; i < fused.numel(); ++i)
          ASSERT_EQ(f32_to_bits(fused.f32()[i]), f32_to_bits(after.f32()[i]))
              << cpu::isa_name(isa) << " " << dtype_name(st) << " " << ops::bf16_kernel_name(kern) << " round "
              << dtype_name(r.dtype) << (r.saturate ? " sat" : "") << " M=" << gc.M << " N=" << gc.N
              << " K=" << gc.K << " i=" << i;
      }
  });
}

// The activation fused into the GEMM's store equals activate() on the stored product, bit for bit, on every
// kernel, with and without rounding and accumulation, and with K split into several k blocks (K = 1100).
TEST(Ops, GemmFusedActivationEqualsActivationAfterwards) {
  const GemmCase cases[] = {{1, 1, 1}, {17, 33, 15}, {197, 40, 384}, {30, 70, 64}, {5, 9, 0}, {20, 45, 1100}};
  const ops::Act acts[] = {ops::Act::Silu, ops::Act::Gelu, ops::Act::Relu, ops::Act::Sigmoid};
  for_each_gemm_kernel([&](cpu::Isa isa, DType st, ops::Bf16Kernel kern) {
    for (const GemmCase& gc : cases)
      for (ops::Rounding r : {ops::Rounding{}, ops::Rounding{DType::BF16, false}, ops::Rounding{DType::F16, true}})
        for (ops::Act act : acts)
          for (float beta : {0.0f, 1.0f}) {
            const int64_t lda = std::max<int64_t>(gc.K, 1);
            Tensor A = rnd({gc.M, lda}, -2.0f, 2.0f), B = rnd({gc.N, lda}, -0.5f, 0.5f), bias = rnd({gc.N});
            const ops::PackedWeight W =
                ops::pack_weight_for(isa, B.f32(), lda, true, gc.N, gc.K, bias.f32(), st, kern);
            // C rows of ldc = N + 3: the padding columns must stay as they were
            const int64_t ldc = gc.N + 3;
            Tensor fused = rnd({gc.M, ldc}), after = fused.clone();
            ops::gemm(kCtx, gc.M, A.f32(), lda, W, fused.f32(), ldc, beta, r, act);
            ops::gemm(kCtx, gc.M, A.f32(), lda, W, after.f32(), ldc, beta, r);
            for (int64_t i = 0; i < gc.M; ++i) {
              Tensor row = Tensor::view_of(after.f32() + i * ldc, {gc.N}, DType::F32);
              ops::activate(kCtx, act, row, r);
            }
            for (int64_t i = 0; i < fused.numel(); ++i)
              ASSERT_EQ(f32_to_bits(fused.f32()[i]), f32_to_bits(after.f32()[i]))
                  << cpu::isa_name(isa) << " " << dtype_name(st) << " " << ops::bf16_kernel_name(kern)
                  << " round " << dtype_name(r.dtype) << " " << ops::act_name(act) << " beta " << beta
                  << " M=" << gc.M << " N=" << gc.N << " K=" << gc.K << " i=" << i;
          }
  });
  // linear passes the activation through, and the op trace records one fused op with the activation's FLOPs
  struct Names : TraceSink {
    std::vector<std::pair<std::string, double>> ops;
    void record(const char* op, double, double flops, double, double) override { ops.emplace_back(op, flops); }
  } names;
  ExecContext traced = ExecContext::cpu(1);
  traced.trace = &names;
  Tensor x = rnd({6, 10}), w = rnd({7, 10}), y = Tensor::empty({6, 7}), yr = Tensor::empty({6, 7});
  const ops::PackedWeight W = ops::pack_linear(w);
  ops::linear(traced, x, W, y, false, {}, ops::Act::Gelu);
  ops::linear(kCtx, x, W, yr);
  ops::activate(kCtx, ops::Act::Gelu, yr);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(f32_to_bits(y.f32()[i]), f32_to_bits(yr.f32()[i])) << i;
  ASSERT_EQ(names.ops.size(), 1u);
  EXPECT_EQ(names.ops[0].first, "gemm+gelu");
  EXPECT_EQ(names.ops[0].second, 2.0 * 6 * 7 * 10 + 4.0 * 6 * 7);
}

TEST(Ops, GemmEveryThreadBudget) {
  const GemmCase cases[] = {{197, 40, 384}, {197, 192, 384}, {3, 700, 64}, {450, 129, 9}, {1, 96, 33}, {61, 256, 600}};
  for (int threads : {1, 2, 3, 7})
    for (cpu::Isa isa : runnable_isas())
      for (const GemmCase& gc : cases) {
        Tensor A = rnd({gc.M, gc.K}), B = rnd({gc.N, gc.K}), bias = rnd({gc.N});
        Tensor C = Tensor::empty({gc.M, gc.N}), Cr = Tensor::empty({gc.M, gc.N});
        ops::gemm(ExecContext::cpu(threads), gc.M, A.f32(), gc.K,
                  ops::pack_weight_for(isa, B.f32(), gc.K, true, gc.N, gc.K, bias.f32()), C.f32(), gc.N);
        ops::ref::gemm(gc.M, gc.N, gc.K, A.f32(), gc.K, B.f32(), gc.K, true, Cr.f32(), gc.N, bias.f32());
        EXPECT_LE(rel_l2(C, Cr), kTol) << cpu::isa_name(isa) << " threads " << threads << " M=" << gc.M
                                       << " N=" << gc.N << " K=" << gc.K;
      }
}

TEST(Ops, GemmThreadSplitsAgree) {
  // results may not depend on the thread budget beyond summation order (each C tile has one owner)
  Tensor A = rnd({301, 200}), B = rnd({100, 200});
  const ops::PackedWeight W = ops::pack_linear(B);
  Tensor C1 = Tensor::empty({301, 100}), C2 = Tensor::empty({301, 100});
  ops::gemm(ExecContext::cpu(1), 301, A.f32(), 200, W, C1.f32(), 100);
  ops::gemm(ExecContext::cpu(3), 301, A.f32(), 200, W, C2.f32(), 100);
  for (int64_t i = 0; i < C1.numel(); ++i) ASSERT_EQ(C1.f32()[i], C2.f32()[i]) << i;
}

TEST(Ops, GemmHandCase) {
  // [1 2; 3 4] @ [5 6; 7 8] + [1, -1] = [20 21; 44 49]
  const float A[] = {1, 2, 3, 4}, B[] = {5, 6, 7, 8}, bias[] = {1, -1};
  float C[4];
  for (cpu::Isa isa : runnable_isas()) {
    ops::gemm(kCtx, 2, A, 2, ops::pack_weight_for(isa, B, 2, false, 2, 2, bias), C, 2);
    EXPECT_FLOAT_EQ(C[0], 20);
    EXPECT_FLOAT_EQ(C[1], 21);
    EXPECT_FLOAT_EQ(C[2], 44);
    EXPECT_FLOAT_EQ(C[3], 49);
    // trans_b: B^T = [5 7; 6 8]
    ops::gemm(kCtx, 2, A, 2, ops::pack_weight_for(isa, B, 2, true, 2, 2), C, 2);
    EXPECT_FLOAT_EQ(C[0], 17);
    EXPECT_FLOAT_EQ(C[1], 23);
    EXPECT_FLOAT_EQ(C[2], 39);
    EXPECT_FLOAT_EQ(C[3], 53);
  }
}

TEST(Ops, GemmZeroK) {
  float C[6] = {1, 2, 3, 4, 5, 6};
  const float bias[3] = {7, 8, 9};
  ops::gemm(kCtx, 2, nullptr, 0, ops::pack_weight(nullptr, 0, true, 3, 0, bias), C, 3, 1.0f);
  EXPECT_FLOAT_EQ(C[0], 8);
  EXPECT_FLOAT_EQ(C[5], 15);
  ops::gemm(kCtx, 2, nullptr, 0, ops::pack_weight(nullptr, 0, true, 3, 0), C, 3, 0.0f);
  for (float v : C) EXPECT_EQ(v, 0.0f);
}

TEST(Ops, LinearMatchesReference) {
  for (int64_t M : {1, 3, 197})
    for (int64_t in : {1, 15, 192})
      for (int64_t out : {1, 17, 384})
        for (bool with_bias : {false, true})
          for (bool accumulate : {false, true}) {
            Tensor x = rnd({M, in}), W = rnd({out, in}), b = rnd({out});
            Tensor y0 = rnd({M, out});
            Tensor y = y0.clone(), yr = y0.clone();
            ops::linear(kCtx, x, ops::pack_linear(W, maybe(b, with_bias)), y, accumulate);
            ops::ref::gemm(M, out, in, x.f32(), in, W.f32(), in, true, yr.f32(), out, with_bias ? b.f32() : nullptr,
                           accumulate ? 1.0f : 0.0f);
            EXPECT_LE(rel_l2(y, yr), kTol) << M << "x" << in << "->" << out;
          }
}

TEST(Ops, GemmRejectsBadArguments) {
  float A[4] = {}, B[4] = {}, C[4] = {};
  const ops::PackedWeight W = ops::pack_weight(B, 2, true, 2, 2);
  EXPECT_THROW(ops::gemm(kCtx, 2, A, 1, W, C, 2), Error);   // lda < K
  EXPECT_THROW(ops::gemm(kCtx, -1, A, 2, W, C, 2), Error);  // negative M
  EXPECT_THROW(ops::gemm(kCtx, 2, A, 2, W, C, 2, 0.5f), Error);  // beta not 0 / 1
  EXPECT_THROW(ops::pack_weight(B, 1, true, 2, 2), Error);  // ldb < K
  // a single row has no row stride to check
  const float a[2] = {1, 2}, b[4] = {1, 2, 3, 4};
  float c[2];
  ops::gemm(kCtx, 1, a, 0, ops::pack_weight(b, 2, false, 2, 2), c, 0);
  EXPECT_FLOAT_EQ(c[0], 7);
  EXPECT_FLOAT_EQ(c[1], 10);
  // typed operands: dtype and shape are checked with the operand named
  Tensor x16 = Tensor::zeros({3, 2}, DType::F16), y = Tensor::empty({3, 2});
  try {
    ops::linear(kCtx, x16, W, y);
    ADD_FAILURE() << "f16 input accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("operand x is f16"), std::string::npos) << e.what();
  }
  Tensor x = Tensor::zeros({3, 5});
  EXPECT_THROW(ops::linear(kCtx, x, W, y), Error);
  // K = 0: y = bias
  const float b3[3] = {1, 2, 3};
  Tensor x0 = Tensor::empty({5, 0}), y0 = Tensor::empty({5, 3});
  ops::linear(kCtx, x0, ops::pack_weight(nullptr, 0, true, 3, 0, b3), y0);
  for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(y0.f32()[i], b3[i % 3]);
}

TEST(Ops, Conv2dEmptyBatch) {
  for (int s : {1, 2}) {
    Tensor x = Tensor::empty({0, 7, 5, 3}), w = rnd({4, 3, 3, 3});
    Tensor y = ops::conv2d(kCtx, x, ops::prepare_conv2d(w, Tensor(), s, s, 1, 1));
    EXPECT_EQ(y.shape(), Shape({0, ops::conv_out_size(7, 3, s, 1), ops::conv_out_size(5, 3, s, 1), 4}));
  }
}

// ---- conv2d ----------------------------------------------------------------------------------------------------
struct ConvCase {
  int64_t B, H, W, Cin, Cout;
  int k, s, p;
};

TEST(Ops, Conv2dMatchesReference) {
  std::vector<ConvCase> cases = {
      {1, 7, 9, 3, 16, 3, 1, 1},    {3, 7, 5, 16, 17, 3, 2, 1},  {1, 9, 9, 1, 15, 3, 2, 0},
      {1, 16, 32, 3, 33, 16, 16, 0}, {3, 32, 16, 3, 8, 16, 16, 0}, {1, 8, 12, 17, 16, 4, 4, 0},
      {3, 9, 7, 15, 33, 2, 2, 0},   {1, 11, 13, 33, 3, 1, 1, 0},  {3, 5, 6, 16, 16, 1, 1, 0},
      {1, 9, 11, 17, 15, 1, 2, 0},  {1, 13, 10, 3, 48, 3, 2, 1},  {1, 6, 6, 16, 1, 3, 1, 1},
      {3, 12, 8, 3, 17, 4, 4, 0},   {1, 10, 7, 3, 16, 2, 1, 1},  {1, 5, 5, 33, 17, 3, 1, 0},
  };
  for (const ConvCase& c : cases) {
    const int64_t Ho = ops::conv_out_size(c.H, c.k, c.s, c.p), Wo = ops::conv_out_size(c.W, c.k, c.s, c.p);
    Tensor x = rnd({c.B, c.H, c.W, c.Cin}), w = rnd({c.Cout, c.Cin, c.k, c.k}), b = rnd({c.Cout});
    for (bool with_bias : {false, true}) {
      Tensor yr = Tensor::empty({c.B, Ho, Wo, c.Cout});
      const float* bp = with_bias ? b.f32() : nullptr;
      const ops::Conv2dWeight cw = ops::prepare_conv2d(w, maybe(b, with_bias), c.s, c.s, c.p, c.p);
      Tensor y = ops::conv2d(kCtx, x, cw);
      ASSERT_EQ(y.shape(), yr.shape());
      ops::ref::conv2d_nhwc(x.f32(), c.B, c.H, c.W, c.Cin, w.f32(), bp, c.Cout, c.k, c.k, c.s, c.s, c.p, c.p,
                            yr.f32());
      EXPECT_TRUE(all_finite(y));
      EXPECT_LE(rel_l2(y, yr), kTol) << "B=" << c.B << " H=" << c.H << " W=" << c.W << " Cin=" << c.Cin
                                     << " Cout=" << c.Cout << " k=" << c.k << " s=" << c.s << " p=" << c.p;
    }
  }
}

TEST(Ops, Conv2dAsymmetricKernelStridePadding) {
  const int64_t B = 3, H = 9, W = 8, Cin = 5, Cout = 7;
  const int kh = 3, kw = 2, sh = 2, sw = 1, ph = 1, pw = 0;
  const int64_t Ho = ops::conv_out_size(H, kh, sh, ph), Wo = ops::conv_out_size(W, kw, sw, pw);
  Tensor x = rnd({B, H, W, Cin}), w = rnd({Cout, Cin, kh, kw}), b = rnd({Cout});
  Tensor yr = Tensor::empty({B, Ho, Wo, Cout});
  Tensor y = ops::conv2d(kCtx, x, ops::prepare_conv2d(w, b, sh, sw, ph, pw));
  ops::ref::conv2d_nhwc(x.f32(), B, H, W, Cin, w.f32(), b.f32(), Cout, kh, kw, sh, sw, ph, pw, yr.f32());
  EXPECT_LE(rel_l2(y, yr), kTol);
}

TEST(Ops, Conv2dLargeImage) {
  // a stride-1 3x3 conv (shifted GEMMs over the padded wide grid) on a map larger than one GEMM chunk
  const int64_t B = 1, H = 120, W = 100, Cin = 48, Cout = 16;
  const int64_t Ho = ops::conv_out_size(H, 3, 1, 1), Wo = ops::conv_out_size(W, 3, 1, 1);
  Tensor x = rnd({B, H, W, Cin}), w = rnd({Cout, Cin, 3, 3}), b = rnd({Cout});
  Tensor yr = Tensor::empty({B, Ho, Wo, Cout});
  Tensor y = ops::conv2d(kCtx, x, ops::prepare_conv2d(w, b, 1, 1, 1, 1));
  ops::ref::conv2d_nhwc(x.f32(), B, H, W, Cin, w.f32(), b.f32(), Cout, 3, 3, 1, 1, 1, 1, yr.f32());
  EXPECT_LE(rel_l2(y, yr), kTol);
}

TEST(Ops, Conv2dStridedIm2colChunked) {
  // a strided conv (im2col) big enough that the column buffer is processed in several chunks
  const int64_t B = 2, H = 400, W = 300, Cin = 16, Cout = 8;
  Tensor x = rnd({B, H, W, Cin}), w = rnd({Cout, Cin, 3, 3}), b = rnd({Cout});
  const int64_t Ho = ops::conv_out_size(H, 3, 2, 1), Wo = ops::conv_out_size(W, 3, 2, 1);
  Tensor yr = Tensor::empty({B, Ho, Wo, Cout});
  Tensor y = ops::conv2d(kCtx, x, ops::prepare_conv2d(w, b, 2, 2, 1, 1));
  ops::ref::conv2d_nhwc(x.f32(), B, H, W, Cin, w.f32(), b.f32(), Cout, 3, 3, 2, 2, 1, 1, yr.f32());
  EXPECT_LE(rel_l2(y, yr), kTol);
}

// every algorithm: shifted GEMMs (3x3 stride 1), im2col (stride 2) and the 1x1 GEMM, the last two with the ReLU
// fused into the GEMM's store
TEST(Ops, Conv2dFusedRelu) {
  for (const std::array<int, 3>& ksp : {std::array<int, 3>{3, 1, 1}, {3, 2, 1}, {1, 1, 0}}) {
    const int k = ksp[0], s = ksp[1], p = ksp[2];
    Tensor x = rnd({2, 9, 7, 5}), w = rnd({6, 5, k, k}), b = rnd({6});
    const ops::Conv2dWeight cw = ops::prepare_conv2d(w, b, s, s, p, p);
    Tensor plain = ops::conv2d(kCtx, x, cw), relu = ops::conv2d(kCtx, x, cw, /*relu=*/true);
    for (int64_t i = 0; i < plain.numel(); ++i) ASSERT_EQ(relu.f32()[i], std::max(plain.f32()[i], 0.0f)) << i;
  }
}

TEST(Ops, Conv2dRejectsBadArguments) {
  Tensor x = Tensor::zeros({1, 2, 2, 1}), w = Tensor::zeros({1, 1, 3, 3});
  EXPECT_THROW(ops::conv2d(kCtx, x, ops::prepare_conv2d(w, Tensor(), 1, 1, 0, 0)), Error);  // kernel > input
  EXPECT_THROW(ops::prepare_conv2d(w, Tensor(), 0, 1, 0, 0), Error);                        // stride 0
  Tensor x4 = Tensor::zeros({1, 4, 4, 2});
  EXPECT_THROW(ops::conv2d(kCtx, x4, ops::prepare_conv2d(w, Tensor(), 1, 1, 0, 0)), Error);  // channels
}

// ---- depthwise conv2d ------------------------------------------------------------------------------------------
TEST(Ops, DepthwiseConv2dMatchesReference) {
  struct Case {
    int64_t B, H, W, C;
    int k, p;
  };
  const Case cases[] = {{1, 7, 9, 1, 3, 1},   {3, 5, 7, 3, 3, 1},  {1, 8, 6, 15, 3, 1}, {3, 9, 11, 16, 3, 1},
                        {1, 6, 13, 17, 3, 0}, {1, 7, 7, 33, 7, 3}, {3, 10, 5, 16, 1, 0}, {1, 4, 9, 17, 4, 1},
                        {1, 12, 11, 33, 5, 2}, {1, 3, 3, 16, 3, 2}};
  for (const Case& c : cases)
    for (bool with_bias : {false, true}) {
      const int64_t Ho = ops::conv_out_size(c.H, c.k, 1, c.p), Wo = ops::conv_out_size(c.W, c.k, 1, c.p);
      Tensor x = rnd({c.B, c.H, c.W, c.C}), w = rnd({c.C, 1, c.k, c.k}), b = rnd({c.C});
      Tensor y = Tensor::empty({c.B, Ho, Wo, c.C}), yr = Tensor::empty({c.B, Ho, Wo, c.C});
      y.fill(NAN);
      const float* bp = with_bias ? b.f32() : nullptr;
      const ops::DepthwiseWeight dw = ops::prepare_depthwise(w, maybe(b, with_bias));
      ops::depthwise_conv2d(kCtx, x, dw, c.p, c.p, /*silu=*/false, y);
      ops::ref::depthwise_conv2d_nhwc(x.f32(), c.B, c.H, c.W, c.C, w.f32(), bp, c.k, c.k, c.p, c.p, yr.f32());
      EXPECT_TRUE(all_finite(y));
      EXPECT_LE(rel_l2(y, yr), kTol) << "B=" << c.B << " H=" << c.H << " W=" << c.W << " C=" << c.C
                                     << " k=" << c.k << " p=" << c.p;
      // fused silu
      ops::depthwise_conv2d(kCtx, x, dw, c.p, c.p, /*silu=*/true, y);
      for (int64_t i = 0; i < yr.numel(); ++i) yr.f32()[i] = ops::ref::activate(ops::Act::Silu, yr.f32()[i]);
      EXPECT_LE(rel_l2(y, yr), kTol) << "silu";
    }
}

TEST(Ops, DepthwiseConv2dAsymmetric) {
  const int64_t B = 1, H = 8, W = 11, C = 17;
  const int kh = 3, kw = 5, ph = 1, pw = 2;
  Tensor x = rnd({B, H, W, C}), w = rnd({C, 1, kh, kw}), b = rnd({C});
  const int64_t Ho = ops::conv_out_size(H, kh, 1, ph), Wo = ops::conv_out_size(W, kw, 1, pw);
  Tensor y = Tensor::empty({B, Ho, Wo, C}), yr = Tensor::empty({B, Ho, Wo, C});
  ops::depthwise_conv2d(kCtx, x, ops::prepare_depthwise(w, b), ph, pw, false, y);
  ops::ref::depthwise_conv2d_nhwc(x.f32(), B, H, W, C, w.f32(), b.f32(), kh, kw, ph, pw, yr.f32());
  EXPECT_LE(rel_l2(y, yr), kTol);
}

// ---- conv1d over tokens ----------------------------------------------------------------------------------------
TEST(Ops, Conv1dTokensMatchesReference) {
  for (int64_t B : {1, 3})
    for (int64_t L : {1, 2, 5, 197})
      for (int64_t C : {1, 3, 15, 16, 17, 32, 33, 64, 97})
        for (int K : {1, 2, 4})
          for (bool reverse : {false, true})
            for (bool silu : {false, true})
              for (bool with_bias : {false, true}) {
                Tensor x = rnd({B, L, C}, -3, 3), w = rnd({C, 1, K}), b = rnd({C});
                Tensor y = Tensor::empty({B, L, C}), yr = Tensor::empty({B, L, C});
                const float* bp = with_bias ? b.f32() : nullptr;
                ops::conv1d_tokens(kCtx, x, ops::prepare_depthwise(w, maybe(b, with_bias)), reverse, silu, y);
                ops::ref::conv1d_depthwise_tokens(x.f32(), B, L, C, w.f32(), bp, K, reverse, silu, yr.f32());
                EXPECT_LE(rel_l2(y, yr), kTol) << "B=" << B << " L=" << L << " C=" << C << " K=" << K
                                               << " reverse=" << reverse << " silu=" << silu;
              }
}

TEST(Ops, Conv1dTokensReadsTheFirstChannelsOfAWiderRow) {
  // x (B, L, Cx) with Cx > C: the conv reads channels [0, C) of each row (the x half of Vim's in_proj output)
  const int64_t B = 2, L = 9, C = 17, Cx = 40;
  Tensor wide = rnd({B, L, Cx}), w = rnd({C, 1, 4}), b = rnd({C});
  Tensor dense = Tensor::empty({B, L, C});
  for (int64_t r = 0; r < B * L; ++r)
    for (int64_t c = 0; c < C; ++c) dense.f32()[r * C + c] = wide.f32()[r * Cx + c];
  const ops::DepthwiseWeight dw = ops::prepare_depthwise(w, b);
  for (bool reverse : {false, true}) {
    Tensor y1 = Tensor::empty({B, L, C}), y2 = Tensor::empty({B, L, C});
    ops::conv1d_tokens(kCtx, wide, dw, reverse, true, y1);
    ops::conv1d_tokens(kCtx, dense, dw, reverse, true, y2);
    for (int64_t i = 0; i < y1.numel(); ++i) ASSERT_EQ(y1.f32()[i], y2.f32()[i]) << i;
  }
  Tensor narrow = rnd({B, L, C - 1}), y = Tensor::empty({B, L, C});
  EXPECT_THROW(ops::conv1d_tokens(kCtx, narrow, dw, false, false, y), Error);
}

TEST(Ops, Conv1dAntiCausalIsReversedCausal) {
  // anti-causal conv of x == reverse_L(causal conv of reverse_L(x))
  const int64_t B = 3, L = 37, C = 17;
  const int K = 4;
  Tensor x = rnd({B, L, C}), w = rnd({C, 1, K}), b = rnd({C});
  auto reverse_tokens = [&](const Tensor& t) {
    Tensor r = Tensor::empty({B, L, C});
    for (int64_t bi = 0; bi < B; ++bi)
      for (int64_t l = 0; l < L; ++l)
        std::copy(t.f32() + (bi * L + l) * C, t.f32() + (bi * L + l + 1) * C, r.f32() + (bi * L + (L - 1 - l)) * C);
    return r;
  };
  for (bool silu : {false, true}) {
    const ops::DepthwiseWeight dw = ops::prepare_depthwise(w, b);
    Tensor anti = Tensor::empty({B, L, C});
    ops::conv1d_tokens(kCtx, x, dw, /*reverse=*/true, silu, anti);
    Tensor xr = reverse_tokens(x);
    Tensor causal = Tensor::empty({B, L, C});
    ops::conv1d_tokens(kCtx, xr, dw, /*reverse=*/false, silu, causal);
    Tensor back = reverse_tokens(causal);
    for (int64_t i = 0; i < anti.numel(); ++i) EXPECT_EQ(anti.f32()[i], back.f32()[i]) << i;
  }
}

TEST(Ops, Conv1dCausalHandCase) {
  // C = 1, K = 3, w = [1, 2, 3], x = [1, 10, 100, 1000]:
  //   causal y[t] = 1 x[t-2] + 2 x[t-1] + 3 x[t]; anti-causal y[t] = 3 x[t] + 2 x[t+1] + 1 x[t+2]
  Tensor xt = Tensor::from_vector({1, 10, 100, 1000}, {1, 4, 1});
  const ops::DepthwiseWeight dw = ops::prepare_depthwise(Tensor::from_vector({1, 2, 3}, {1, 1, 3}), Tensor());
  Tensor yt = Tensor::empty({1, 4, 1});
  const float* y = yt.f32();
  ops::conv1d_tokens(kCtx, xt, dw, false, false, yt);
  EXPECT_FLOAT_EQ(y[0], 3);
  EXPECT_FLOAT_EQ(y[1], 32);
  EXPECT_FLOAT_EQ(y[2], 321);
  EXPECT_FLOAT_EQ(y[3], 3210);
  ops::conv1d_tokens(kCtx, xt, dw, true, false, yt);
  EXPECT_FLOAT_EQ(y[0], 123);
  EXPECT_FLOAT_EQ(y[1], 1230);
  EXPECT_FLOAT_EQ(y[2], 2300);
  EXPECT_FLOAT_EQ(y[3], 3000);
}

// ---- norms -----------------------------------------------------------------------------------------------------
TEST(Ops, LayerNormMatchesDefinition) {
  for (int64_t rows : {1, 3, 197})
    for (int64_t C : {1, 3, 15, 16, 17, 33, 192, 768})
      for (bool with_beta : {false, true})
        for (float offset : {0.0f, 100.0f}) {  // a large mean must not cancel the variance
          Tensor x = rnd({rows, C}, offset - 2, offset + 2), g = rnd({C}, 0.5f, 1.5f), b = rnd({C});
          Tensor y = Tensor::empty({rows, C}), yr = Tensor::empty({rows, C});
          const float* bp = with_beta ? b.f32() : nullptr;
          ops::layer_norm(kCtx, x, g, maybe(b, with_beta), 1e-6f, y);
          ops::ref::layer_norm(x.f32(), rows, C, g.f32(), bp, 1e-6f, yr.f32());
          // the definition written out again here, in double
          std::vector<float> def(static_cast<size_t>(rows * C));
          for (int64_t r = 0; r < rows; ++r) {
            double m = 0, v = 0;
            for (int64_t c = 0; c < C; ++c) m += x.f32()[r * C + c];
            m /= C;
            for (int64_t c = 0; c < C; ++c) v += std::pow(x.f32()[r * C + c] - m, 2);
            v /= C;  // biased, like torch
            for (int64_t c = 0; c < C; ++c)
              def[r * C + c] = static_cast<float>((x.f32()[r * C + c] - m) / std::sqrt(v + 1e-6) * g.f32()[c] +
                                                  (with_beta ? b.f32()[c] : 0.0));
          }
          // C == 1 normalises to exactly 0 (+ beta); rel_l2 then falls back to the absolute error
          EXPECT_LE(rel_l2(yr.f32(), def.data(), rows * C), 1e-6);
          EXPECT_LE(rel_l2(y, yr), C == 1 ? 1e-3 : kTol)
              << "rows=" << rows << " C=" << C << " beta=" << with_beta << " offset=" << offset;
        }
}

TEST(Ops, LayerNormInPlace) {
  const int64_t rows = 5, C = 33;
  Tensor x = rnd({rows, C}), g = rnd({C}), b = rnd({C});
  Tensor y = Tensor::empty({rows, C});
  ops::layer_norm(kCtx, x, g, b, 1e-5f, y);
  ops::layer_norm(kCtx, x, g, b, 1e-5f, x);
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(x.f32()[i], y.f32()[i]);
}

// Rows whose f32 sums overflow (finite values near 1e30) normalise like the double reference, in both norms;
// a row holding Inf or NaN stays non-finite.
TEST(Ops, NormsOfHugeFiniteRowsStayFinite) {
  for (int64_t C : {3, 17, 96, 768}) {
    Tensor x = rnd({4, C}, -2, 2), g = rnd({C}, 0.5f, 1.5f), b = rnd({C});
    for (int64_t i = 0; i < C; ++i) x.f32()[i] *= 1e30f, x.f32()[C + i] = 1e30f + x.f32()[C + i] * 1e29f;
    x.f32()[3 * C] = std::numeric_limits<float>::infinity();
    Tensor y = Tensor::empty({4, C}), yr = Tensor::empty({4, C});
    ops::layer_norm(kCtx, x, g, b, 1e-5f, y);
    ops::ref::layer_norm(x.f32(), 4, C, g.f32(), b.f32(), 1e-5f, yr.f32());
    for (int64_t i = 0; i < 3 * C; ++i) {
      ASSERT_TRUE(std::isfinite(y.f32()[i])) << "layer_norm C=" << C << " i=" << i;
      EXPECT_NEAR(y.f32()[i], yr.f32()[i], 1e-4f * (1 + std::fabs(yr.f32()[i]))) << "C=" << C << " i=" << i;
    }
    EXPECT_FALSE(std::isfinite(y.f32()[3 * C])) << "an Inf input is not hidden";
    ops::rms_norm(kCtx, x, g, 1e-5f, y);
    ops::ref::rms_norm(x.f32(), 4, C, g.f32(), 1e-5f, yr.f32());
    for (int64_t i = 0; i < 2 * C; ++i) {
      ASSERT_TRUE(std::isfinite(y.f32()[i])) << "rms_norm C=" << C << " i=" << i;
      EXPECT_NEAR(y.f32()[i], yr.f32()[i], 1e-4f * (1 + std::fabs(yr.f32()[i]))) << "C=" << C << " i=" << i;
    }
  }
}

TEST(Ops, RmsNormMatchesDefinition) {
  for (int64_t rows : {1, 3, 197})
    for (int64_t C : {1, 3, 15, 16, 17, 33, 192, 384}) {
      Tensor x = rnd({rows, C}, -3, 3), g = rnd({C}, 0.5f, 1.5f);
      Tensor y = Tensor::empty({rows, C}), yr = Tensor::empty({rows, C});
      ops::rms_norm(kCtx, x, g, 1e-5f, y);
      ops::ref::rms_norm(x.f32(), rows, C, g.f32(), 1e-5f, yr.f32());
      std::vector<float> def(static_cast<size_t>(rows * C));
      for (int64_t r = 0; r < rows; ++r) {
        double ms = 0;
        for (int64_t c = 0; c < C; ++c) ms += std::pow(static_cast<double>(x.f32()[r * C + c]), 2);
        ms /= C;
        for (int64_t c = 0; c < C; ++c)
          def[r * C + c] = static_cast<float>(x.f32()[r * C + c] / std::sqrt(ms + 1e-5) * g.f32()[c]);
      }
      EXPECT_LE(rel_l2(yr.f32(), def.data(), rows * C), 1e-6);
      EXPECT_LE(rel_l2(y, yr), kTol) << "rows=" << rows << " C=" << C;
      // in place
      ops::rms_norm(kCtx, x, g, 1e-5f, x);
      for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(x.f32()[i], y.f32()[i]);
    }
}

// ---- elementwise -----------------------------------------------------------------------------------------------
TEST(Ops, ActivationsMatchFormulas) {
  for (int64_t n : {1, 15, 16, 17, 33, 1000, 200003}) {
    Tensor x = rnd({n}, -12, 12);
    Tensor s = x.clone(), g = x.clone(), r = x.clone(), sg = x.clone();
    ops::activate(kCtx, ops::Act::Silu, s);
    ops::activate(kCtx, ops::Act::Gelu, g);
    ops::activate(kCtx, ops::Act::Relu, r);
    ops::activate(kCtx, ops::Act::Sigmoid, sg);
    std::vector<float> se(n), ge(n), re(n), sge(n);
    for (int64_t i = 0; i < n; ++i) {
      // the formulas in float, as PyTorch evaluates them (1 + erf cancels to 0 far in the negative tail)
      const float v = x.f32()[i];
      se[i] = v / (1.0f + std::exp(-v));
      ge[i] = 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
      re[i] = v < 0 ? 0.0f : v;
      sge[i] = 1.0f / (1.0f + std::exp(-v));
    }
    EXPECT_EQ(rel_l2(sg.f32(), sge.data(), n), 0.0) << n;
    EXPECT_LE(rel_l2(s.f32(), se.data(), n), kTol) << n;
    EXPECT_LE(rel_l2(g.f32(), ge.data(), n), kTol) << n;
    EXPECT_EQ(rel_l2(r.f32(), re.data(), n), 0.0) << n;
  }
}

// A NaN stays NaN through every activation, alone and fused into a GEMM (so the finiteness checks see it),
// on vector bodies and remainders (n = 37)
TEST(Ops, ActivationsKeepNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (ops::Act a : {ops::Act::Silu, ops::Act::Gelu, ops::Act::Relu, ops::Act::Sigmoid}) {
    Tensor x = rnd({37});
    x.f32()[3] = nan;
    x.f32()[36] = nan;
    ops::activate(kCtx, a, x);
    EXPECT_TRUE(std::isnan(x.f32()[3]) && std::isnan(x.f32()[36])) << ops::act_name(a);
    EXPECT_TRUE(std::isnan(ops::ref::activate(a, nan))) << ops::act_name(a);
    Tensor A = rnd({5, 8}), w = rnd({20, 8}), y = Tensor::empty({5, 20});
    A.f32()[2 * 8 + 1] = nan;  // row 2 of the product is NaN
    ops::linear(kCtx, A, ops::pack_linear(w), y, false, {}, a);
    for (int64_t j = 0; j < 20; ++j) EXPECT_TRUE(std::isnan(y.f32()[2 * 20 + j])) << ops::act_name(a) << " " << j;
  }
}

TEST(Ops, ActivationsPointwiseAccuracy) {
  // element by element over a fine grid, including the tails: relative error 1e-5 or absolute 1e-6
  std::vector<float> xs;
  for (float v = -30.0f; v <= 30.0f; v += 0.01f) xs.push_back(v);
  for (float v : {-100.0f, -88.0f, 88.0f, 100.0f, 0.0f, -0.0f, 1e-30f, -1e-30f}) xs.push_back(v);
  std::vector<float> s = xs, g = xs;
  Tensor st = from_ptr(s.data(), {static_cast<int64_t>(s.size())}), gt = from_ptr(g.data(), {static_cast<int64_t>(g.size())});
  ops::activate(kCtx, ops::Act::Silu, st);
  ops::activate(kCtx, ops::Act::Gelu, gt);
  for (size_t i = 0; i < xs.size(); ++i) {
    const double v = xs[i];
    const double se = v / (1 + std::exp(-v));
    const double ge = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    EXPECT_NEAR(s[i], se, std::max(1e-6, 1e-5 * std::fabs(se))) << "silu(" << v << ")";
    EXPECT_NEAR(g[i], ge, std::max(1e-6, 1e-5 * std::fabs(ge))) << "gelu(" << v << ")";
  }
  // exact values: gelu(0) = 0, gelu(1) = 0.841344746..., gelu(-1) = -0.158655253...
  float v[3] = {0.0f, 1.0f, -1.0f};
  Tensor vt = from_ptr(v, {3});
  ops::activate(kCtx, ops::Act::Gelu, vt);
  EXPECT_EQ(v[0], 0.0f);
  EXPECT_NEAR(v[1], 0.8413447460685429, 2e-7);
  EXPECT_NEAR(v[2], -0.15865525393145707, 2e-7);
}

TEST(Ops, AddMul) {
  for (int64_t n : {1, 17, 100003}) {
    Tensor a = rnd({n}), b = rnd({n});
    Tensor s = a.clone(), p = a.clone();
    ops::add(kCtx, s, b);
    ops::mul(kCtx, p, b);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(s.f32()[i], a.f32()[i] + b.f32()[i]);
      EXPECT_EQ(p.f32()[i], a.f32()[i] * b.f32()[i]);
    }
  }
}

// ---- layout ----------------------------------------------------------------------------------------------------
TEST(Ops, LayoutTransposes) {
  for (int64_t B : {1, 3})
    for (int64_t C : {1, 3, 17, 33, 96})
      for (int64_t HW : {1, 15, 49, 3136}) {
        Tensor x = rnd({B, C, HW});
        Tensor y = ops::nchw_to_nhwc(kCtx, x);
        ASSERT_EQ(y.shape(), Shape({B, HW, C}));
        bool ok = true;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t c = 0; c < C; ++c)
            for (int64_t s = 0; s < HW; ++s) ok &= y.f32()[(b * HW + s) * C + c] == x.f32()[(b * C + c) * HW + s];
        EXPECT_TRUE(ok) << B << " " << C << " " << HW;
        Tensor back = ops::nhwc_to_nchw(kCtx, y);
        ASSERT_EQ(back.shape(), x.shape());
        for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(back.f32()[i], x.f32()[i]);
      }
}

// ---- bicubic resize --------------------------------------------------------------------------------------------
TEST(Ops, BicubicIdentityWhenSizesEqual) {
  Tensor x = rnd({7, 5, 3});
  Tensor y = ops::resize_bicubic(kCtx, x, 7, 5);
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(y.f32()[i], x.f32()[i]);
}

TEST(Ops, BicubicConstantStaysConstant) {
  Tensor x = Tensor::empty({6, 9, 17});
  x.fill(2.5f);
  Tensor y = ops::resize_bicubic(kCtx, x, 13, 4);
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_NEAR(y.f32()[i], 2.5f, 1e-5f);
}

TEST(Ops, BicubicMatchesTorch) {
  // x(h, w) = h * 4 + w + (h * w) ^ 2 / 10 on a 3 x 4 grid, one channel, resized to 5 x 3. Expected values are
  // torch.nn.functional.interpolate(x[None, None], size=(5, 3), mode="bicubic", align_corners=False) outputs
  // (torch 1.13, float32).
  const int64_t Hi = 3, Wi = 4, Ho = 5, Wo = 3;
  std::vector<float> x(Hi * Wi);
  for (int64_t h = 0; h < Hi; ++h)
    for (int64_t w = 0; w < Wi; ++w) x[h * Wi + w] = static_cast<float>(h * 4 + w + (h * w) * (h * w) / 10.0);
  const float expected[5][3] = {
      {-0.258720309f, 1.09560049f, 2.40983224f},
      {1.3917321f, 2.80055213f, 4.28119898f},
      {4.13530207f, 5.71250057f, 7.70729446f},
      {6.88874817f, 8.8539505f, 12.0335159f},
      {8.5493679f, 10.7952013f, 14.8316774f},
  };
  std::vector<float> y(Ho * Wo), yr(Ho * Wo);
  Tensor yt = ops::resize_bicubic(kCtx, from_ptr(x.data(), {Hi, Wi, 1}), Ho, Wo);
  std::copy(yt.f32(), yt.f32() + Ho * Wo, y.begin());
  ops::ref::resize_bicubic_hwc(x.data(), Hi, Wi, 1, Ho, Wo, yr.data());
  for (int64_t i = 0; i < Ho * Wo; ++i) EXPECT_NEAR(yr[i], y[i], 1e-5f) << "reference " << i;
  for (int64_t h = 0; h < Ho; ++h)
    for (int64_t w = 0; w < Wo; ++w) EXPECT_NEAR(y[h * Wo + w], expected[h][w], 1e-5f) << h << "," << w;
}

TEST(Ops, BicubicMultiChannelMatchesTorch) {
  // channel c of a 2 x 3 grid holds (c + 1) * (h * 3 + w) with c in {0, 1}; upsampled to 4 x 7. Expected values:
  // torch.nn.functional.interpolate(bicubic, align_corners=False), channel 0, float32; channel 1 is twice it.
  const int64_t Hi = 2, Wi = 3, C = 2, Ho = 4, Wo = 7;
  std::vector<float> x(Hi * Wi * C);
  for (int64_t h = 0; h < Hi; ++h)
    for (int64_t w = 0; w < Wi; ++w)
      for (int64_t c = 0; c < C; ++c) x[(h * Wi + w) * C + c] = static_cast<float>((c + 1) * (h * 3 + w));
  const float expected[4][7] = {
      {-0.425735503f, -0.20853357f, 0.158812732f, 0.68359375f, 1.20837462f, 1.57572138f, 1.79292345f},
      {0.570358336f, 0.787560701f, 1.15490615f, 1.6796875f, 2.20446825f, 2.57181525f, 2.78901744f},
      {2.21098351f, 2.42818666f, 2.79553103f, 3.3203125f, 3.84509277f, 4.21244097f, 4.42964268f},
      {3.2070775f, 3.42428088f, 3.79162431f, 4.31640625f, 4.84118652f, 5.20853519f, 5.42573595f},
  };
  std::vector<float> y(Ho * Wo * C);
  Tensor yt = ops::resize_bicubic(kCtx, from_ptr(x.data(), {Hi, Wi, C}), Ho, Wo);
  std::copy(yt.f32(), yt.f32() + Ho * Wo * C, y.begin());
  for (int64_t h = 0; h < Ho; ++h)
    for (int64_t w = 0; w < Wo; ++w) {
      EXPECT_NEAR(y[(h * Wo + w) * C + 0], expected[h][w], 1e-5f) << h << "," << w;
      EXPECT_NEAR(y[(h * Wo + w) * C + 1], 2 * expected[h][w], 2e-5f) << h << "," << w;
    }
}

TEST(Ops, BicubicDownsampleMatchesTorch) {
  // x(h, w) = ((7h + 3w) mod 11) - 5 + h / 4 on a 5 x 6 grid, one channel, downsampled to 3 x 4. Expected values:
  // torch.nn.functional.interpolate(x[None, None], size=(3, 4), mode="bicubic", align_corners=False), float32.
  const int64_t Hi = 5, Wi = 6, Ho = 3, Wo = 4;
  std::vector<float> x(Hi * Wi);
  for (int64_t h = 0; h < Hi; ++h)
    for (int64_t w = 0; w < Wi; ++w) x[h * Wi + w] = static_cast<float>((h * 7 + w * 3) % 11) - 5.0f + 0.25f * h;
  const float expected[3][4] = {
      {-1.79181123f, -0.615378082f, 2.4184742f, -2.49949336f},
      {-0.92578125f, 4.76953125f, -3.76953125f, 1.92578125f},
      {3.49949384f, -1.41847622f, 1.61538029f, 2.79180956f},
  };
  std::vector<float> y(Ho * Wo), yr(Ho * Wo);
  Tensor yt = ops::resize_bicubic(kCtx, from_ptr(x.data(), {Hi, Wi, 1}), Ho, Wo);
  std::copy(yt.f32(), yt.f32() + Ho * Wo, y.begin());
  ops::ref::resize_bicubic_hwc(x.data(), Hi, Wi, 1, Ho, Wo, yr.data());
  for (int64_t i = 0; i < Ho * Wo; ++i) EXPECT_NEAR(yr[i], y[i], 1e-5f) << "reference " << i;
  for (int64_t h = 0; h < Ho; ++h)
    for (int64_t w = 0; w < Wo; ++w) EXPECT_NEAR(y[h * Wo + w], expected[h][w], 1e-5f) << h << "," << w;
}

TEST(Ops, BicubicMatchesReferenceOnOddGrids) {
  for (auto [Hi, Wi, Ho, Wo] : {std::array<int64_t, 4>{14, 14, 7, 21}, {3, 5, 11, 2}, {1, 4, 3, 3}, {9, 1, 4, 6}})
    for (int64_t C : {1, 17}) {
      Tensor x = rnd({Hi, Wi, C});
      Tensor y = ops::resize_bicubic(kCtx, x, Ho, Wo), yr = Tensor::empty({Ho, Wo, C});
      ops::ref::resize_bicubic_hwc(x.f32(), Hi, Wi, C, Ho, Wo, yr.f32());
      EXPECT_LE(rel_l2(y, yr), kTol) << Hi << "x" << Wi << " -> " << Ho << "x" << Wo << " C " << C;
    }
}

// ---- token and layout ops ------------------------------------------------------------------------------------
TEST(Ops, DtProjectionMatchesReference) {
  for (int64_t rows : {1, 5, 197})
    for (int64_t G : {1, 4})
      for (int64_t R : {1, 6, 12})
        for (int64_t D : {1, 17, 96}) {
          const int64_t P = R + 2 * 3;
          Tensor x = rnd({rows, G * P}), w = rnd({G, D, R});  // PyTorch dt_proj layout (G, D, R)
          std::vector<ops::PackedWeight> wp;
          for (int64_t g = 0; g < G; ++g) wp.push_back(ops::pack_weight(w.f32() + g * D * R, R, true, D, R));
          Tensor y = Tensor::empty({G, rows, D}), yr = Tensor::empty({G, rows, D});
          ops::dt_projection(kCtx, x, P, wp, y);
          ops::ref::dt_projection(x.f32(), rows, G, P, R, w.f32(), D, yr.f32());
          EXPECT_LE(rel_l2(y, yr), kTol) << rows << " " << G << " " << R << " " << D;
        }
}

// Every op that takes a Rounding stores exactly the values of the op followed by round_to, on sizes whose rows
// span several of the fused rounding's blocks and end in a partial one (C = 97, 5003 elements), with values
// beyond f16's range, on 1 and 2 threads.
TEST(Ops, FusedRoundingEqualsRoundingAfterwards) {
  const ops::Rounding roundings[] = {{DType::BF16, false}, {DType::F16, false}, {DType::F16, true}};
  // run(y, r): the op writing y with rounding r; y's shape fixed per case
  struct Case {
    const char* name;
    Shape shape;
    std::function<void(const ExecContext&, Tensor&, ops::Rounding)> run;
  };
  auto big = [](Tensor t) {  // a few values beyond +-65504
    for (int64_t i = 0; i < t.numel(); i += 13) t.f32()[i] *= 3e5f;
    return t;
  };
  const Tensor x = big(rnd({50, 97})), x2 = rnd({50, 97}), gamma = rnd({97}, 0.5f, 40000.0f), beta = rnd({97});
  const Tensor img = big(rnd({2, 9, 11, 33})), dw_w = rnd({33, 1, 3, 3}), dw_b = rnd({33});
  const ops::DepthwiseWeight dw = ops::prepare_depthwise(dw_w, dw_b);
  const Tensor tok = big(rnd({2, 61, 40})), c1_w = rnd({33, 1, 4}), c1_b = rnd({33});
  const ops::DepthwiseWeight c1 = ops::prepare_depthwise(c1_w, c1_b);
  const Tensor dtx = big(rnd({197, 4 * 18})), dtw = rnd({4, 96, 12});
  std::vector<ops::PackedWeight> dtp;
  for (int64_t g = 0; g < 4; ++g) dtp.push_back(ops::pack_weight(dtw.f32() + g * 96 * 12, 12, true, 96, 12));
  std::vector<Case> cases = {
      {"layer_norm", {50, 97}, [&](const ExecContext& c, Tensor& y, ops::Rounding r) {
         ops::layer_norm(c, x, gamma, beta, 1e-5f, y, r);
       }},
      {"layer_norm in place", {50, 97}, [&](const ExecContext& c, Tensor& y, ops::Rounding r) {
         std::copy(x.f32(), x.f32() + x.numel(), y.f32());
         ops::layer_norm(c, y, gamma, Tensor(), 1e-5f, y, r);
       }},
      {"rms_norm", {50, 97}, [&](const ExecContext& c, Tensor& y, ops::Rounding r) {
         ops::rms_norm(c, x, gamma, 1e-5f, y, r);
       }},
      {"add", {50, 97}, [&](const ExecContext& c, Tensor& y, ops::Rounding r) {
         std::copy(x.f32(), x.f32() + x.numel(), y.f32());
         ops::add(c, y, x2, r);
       }},
      {"mul", {50, 97}, [&](const ExecContext& c, Tensor& y, ops::Rounding r) {
         std::copy(x.f32(), x.f32() + x.numel(), y.f32());
         ops::mul(c, y, x2, r);
       }},
      {"depthwise_conv2d silu", {2, 9, 11, 33}, [&](const ExecContext& c, Tensor& y, ops::Rounding r) {
         ops::depthwise_conv2d(c, img, dw, 1, 1, /*silu=*/true, y, r);
       }},
      {"conv1d_tokens", {2, 61, 33}, [&](const ExecContext& c, Tensor& y, ops::Rounding r) {
         ops::conv1d_tokens(c, tok, c1, /*reverse=*/true, /*silu=*/false, y, r);
       }},
      {"dt_projection", {4, 197, 96}, [&](const ExecContext& c, Tensor& y, ops::Rounding r) {
         ops::dt_projection(c, dtx, 18, dtp, y, r);
       }},
  };
  const Tensor act_x = big(rnd({5003}));  // an odd length: the vector tails
  for (ops::Act a : {ops::Act::Silu, ops::Act::Gelu, ops::Act::Relu, ops::Act::Sigmoid})
    cases.push_back({ops::act_name(a), {5003}, [&, a](const ExecContext& c, Tensor& y, ops::Rounding r) {
                       std::copy(act_x.f32(), act_x.f32() + act_x.numel(), y.f32());
                       ops::activate(c, a, y, r);
                     }});
  for (int threads : {1, 2}) {
    const ExecContext ctx = ExecContext::cpu(threads);
    for (const Case& c : cases)
      for (ops::Rounding r : roundings) {
        Tensor fused = Tensor::empty(c.shape), after = Tensor::empty(c.shape);
        c.run(ctx, fused, r);
        c.run(ctx, after, ops::Rounding{});
        ops::round_to(ctx, r.dtype, r.saturate, after);
        int64_t changed = 0;  // the rounding did something (the case is not already representable)
        for (int64_t i = 0; i < fused.numel(); ++i) {
          ASSERT_EQ(f32_to_bits(fused.f32()[i]), f32_to_bits(after.f32()[i]))
              << c.name << " round " << dtype_name(r.dtype) << (r.saturate ? " sat" : "") << " threads " << threads
              << " i=" << i;
        }
        Tensor plain = Tensor::empty(c.shape);
        c.run(ctx, plain, ops::Rounding{});
        for (int64_t i = 0; i < plain.numel(); ++i) changed += f32_to_bits(plain.f32()[i]) != f32_to_bits(fused.f32()[i]);
        EXPECT_GT(changed, plain.numel() / 4) << c.name << ": the rounding changed too few values to be tested";
      }
  }
}

TEST(Ops, InsertTokenAddMatchesReference) {
  for (int64_t B : {1, 3})
    for (int64_t M : {1, 4, 9})
      for (int64_t at : {int64_t(0), M / 2, M}) {
        const int64_t D = 17;
        Tensor p = rnd({B, M, D}), tok = rnd({D}), pos = rnd({M + 1, D});
        Tensor y = ops::insert_token_add(kCtx, p, tok, at, pos), yr = Tensor::empty({B, M + 1, D});
        ops::ref::insert_token_add(p.f32(), B, M, D, tok.f32(), at, pos.f32(), yr.f32());
        EXPECT_EQ(rel_l2(y, yr), 0.0) << B << " " << M << " " << at;
        // take_token / drop_token invert it (with a zero position table)
        Tensor z = ops::insert_token_add(kCtx, p, tok, at, Tensor::zeros({M + 1, D}));
        Tensor t = ops::take_token(kCtx, z, at), rest = ops::drop_token(kCtx, z, at);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t c = 0; c < D; ++c) ASSERT_EQ(t.f32()[b * D + c], tok.f32()[c]);
        EXPECT_EQ(rel_l2(rest, p), 0.0);
      }
  EXPECT_THROW(ops::take_token(kCtx, rnd({1, 3, 2}), 3), Error);
}

TEST(Ops, MeanTokens) {
  for (int64_t L : {1, 7, 49})
    for (int64_t C : {1, 17, 768}) {
      Tensor x = rnd({3, L, C});
      Tensor y = ops::mean_tokens(kCtx, x), yr = Tensor::empty({3, C});
      ops::ref::mean_tokens(x.f32(), 3, L, C, yr.f32());
      EXPECT_LE(rel_l2(y, yr), kTol);
    }
}

TEST(Ops, PatchMergeMatchesReference) {
  for (auto [H, W] : {std::pair<int64_t, int64_t>{4, 6}, {5, 7}, {1, 1}, {3, 2}})
    for (int64_t C : {1, 17}) {
      Tensor x = rnd({2, H, W, C});
      Tensor y = ops::patch_merge_2x2(kCtx, x), yr = Tensor::empty({2, (H + 1) / 2, (W + 1) / 2, 4 * C});
      ops::ref::patch_merge_2x2(x.f32(), 2, H, W, C, yr.f32());
      ASSERT_EQ(y.shape(), yr.shape());
      EXPECT_EQ(rel_l2(y, yr), 0.0) << H << "x" << W;
    }
}

TEST(Ops, NearestResizeAddAndSubsample) {
  // F.interpolate(nearest) source indices: x (B, h, w, C) added into y at its size
  for (auto [h, w, H, W] : {std::array<int64_t, 4>{3, 4, 7, 9}, {5, 5, 10, 10}, {4, 2, 4, 2}, {9, 7, 4, 3}}) {
    Tensor x = rnd({2, h, w, 5}), y0 = rnd({2, H, W, 5});
    Tensor y = y0.clone();
    ops::add_nearest_resized(kCtx, x, y);
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j)
          for (int64_t c = 0; c < 5; ++c) {
            const int64_t si = ops::nearest_source_index(i, h, H), sj = ops::nearest_source_index(j, w, W);
            ASSERT_EQ(y.f32()[((b * H + i) * W + j) * 5 + c],
                      y0.f32()[((b * H + i) * W + j) * 5 + c] + x.f32()[((b * h + si) * w + sj) * 5 + c]);
          }
  }
  Tensor x = rnd({1, 5, 4, 3});
  Tensor s = ops::subsample2(kCtx, x);
  ASSERT_EQ(s.shape(), Shape({1, 3, 2, 3}));
  EXPECT_EQ(s.f32()[(2 * 2 + 1) * 3 + 2], x.f32()[(4 * 4 + 2) * 3 + 2]);
}

TEST(Ops, SupportsNamesOperandAndDtype) {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({2, 3}, DType::BF16);
  EXPECT_EQ(ops::supports_f32("add", {{"y", &a}, {"x", &a}}), "");
  const std::string why = ops::supports_f32("add", {{"y", &a}, {"x", &b}});
  EXPECT_NE(why.find("operand x is bf16"), std::string::npos) << why;
  EXPECT_THROW(ops::add(kCtx, a, b), Error);
  Tensor none;
  EXPECT_NE(ops::supports_f32("mul", {{"x", &none}}).find("operand x is missing"), std::string::npos);
}

