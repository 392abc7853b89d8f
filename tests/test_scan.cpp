// Tests of the fused selective scan: the fast CPU path against the scalar reference on shapes and options that hit
// every code path (SIMD remainders, block remainders, N = 1 / 16 / generic, groups, orders, gates, rounding,
// layouts, dtypes), parameter validation, and both implementations against upstream goldens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/selective_scan.h"
#include "mambacv/weights.h"
#include "scan_cases.h"
#include "test_util.h"

using namespace mambacv;
using namespace mambacv::scan_cases;

namespace {

// Every fast call runs on all cores OpenMP offers.
const ExecContext kCtx = ExecContext::cpu();

double g_worst_rel_l2 = 0;  // worst fast-vs-reference relative L2 over the f32-rounding cases, for the log

// Runs reference and fast path on one case and checks they agree.
void check_case(const Case& c) {
  SCOPED_TRACE(c.str());
  Problem pr(c);
  std::vector<float> out_ref, out_fast;
  std::vector<std::vector<float>> ls_ref, ls_fast;
  ScanParams pref = pr.params(out_ref, ls_ref);
  ScanParams pfast = pr.params(out_fast, ls_fast);
  selective_scan_ref(pref);
  selective_scan(kCtx, pfast);
  const double rel = expect_matches_reference(c, out_fast, out_ref, ls_fast, ls_ref);
  if (c.dir_round == DType::F32) g_worst_rel_l2 = std::max(g_worst_rel_l2, rel);
}

const int64_t kDims[] = {1, 15, 16, 17, 33, 48};
const int64_t kNs[] = {1, 4, 16};
const int64_t kLs[] = {1, 63, 64, 65, 200};

}  // namespace

// Every dim x N x L, default options (D, bias, softplus, token-major, one identity direction).
TEST(SelectiveScan, FastMatchesReferenceShapes) {
  uint64_t seed = 100;
  for (int64_t dim : kDims)
    for (int64_t N : kNs)
      for (int64_t L : kLs) {
        Case c;
        c.dim = dim, c.N = N, c.L = L, c.seed = ++seed;
        c.last_state = true;
        check_case(c);
      }
  std::printf("worst relative L2 fast vs reference so far: %.3g\n", g_worst_rel_l2);
}

// Randomised sweep over every option; each draw is a different combination.
TEST(SelectiveScan, FastMatchesReferenceRandomOptions) {
  for (const Case& c : random_cases(300, 2024, {std::begin(kDims), std::end(kDims)}, {std::begin(kNs), std::end(kNs)},
                                    {std::begin(kLs), std::end(kLs)}))
    check_case(c);
  std::printf("worst relative L2 fast vs reference so far: %.3g\n", g_worst_rel_l2);
}

// The model-shaped cases, explicitly.
TEST(SelectiveScan, FastMatchesReferenceModelShapes) {
  Case vmamba;  // VMamba v2 stage: N = 1, four cross-scan directions, one B/C group per direction
  vmamba.dim = 48, vmamba.N = 1, vmamba.L = 7 * 9, vmamba.batch = 2, vmamba.last_state = true;
  vmamba.orders = {Order::Identity, Order::ColMajor, Order::Reversed, Order::ColMajorReversed};
  check_case(vmamba);
  Case vim;  // Vim: N = 16, two directions with z and out_scale 0.5 (if_divide_out)
  vim.dim = 48, vim.N = 16, vim.L = 65, vim.z = true, vim.out_scale = 0.5f;
  vim.orders = {Order::Identity, Order::Reversed};
  check_case(vim);
  for (DType r : {DType::BF16, DType::F16}) {  // core v1: compute-dtype operands, per-direction rounding
    Case v1 = vmamba;
    v1.dtype = r, v1.dir_round = r;
    check_case(v1);
  }
}

TEST(SelectiveScan, DirRoundRoundsEachDirection) {
  // One direction, no accumulation: every output value must be exactly representable in the rounding dtype.
  for (DType r : {DType::BF16, DType::F16}) {
    Case c;
    c.dim = 17, c.N = 4, c.L = 65, c.dir_round = r, c.z = true;
    Problem pr(c);
    for (int impl = 0; impl < 2; ++impl) {
      std::vector<float> out;
      std::vector<std::vector<float>> ls;
      ScanParams p = pr.params(out, ls);
      impl ? selective_scan(kCtx, p) : selective_scan_ref(p);
      for (float v : out) {
        const float back = r == DType::BF16 ? bf16_to_f32(f32_to_bf16(v)) : f16_to_f32(f32_to_f16(v));
        ASSERT_EQ(back, v) << (impl ? "fast" : "reference") << " " << dtype_name(r);
      }
    }
  }
}

TEST(SelectiveScan, ReferenceSmallByHand) {
  // dim 1, N 1, L 2, no softplus: h1 = dt1*B1*u1; h2 = exp(dt2*A)*h1 + dt2*B2*u2; y = C*h + D*u.
  const float u[2] = {1.0f, 2.0f}, delta[2] = {0.5f, 0.25f}, B[2] = {2.0f, -1.0f}, C[2] = {1.0f, 3.0f};
  const float A = -1.0f, D = 0.5f;
  float out[2] = {0, 0}, last = 0;
  ScanParams p;
  p.batch = 1, p.dim = 1, p.L = 2, p.N = 1, p.delta_softplus = false;
  ScanDirection d;
  d.u = {u, DType::F32, 0, 0, 1};
  d.delta = {delta, DType::F32, 0, 0, 1};
  d.B = {B, DType::F32, 0, 0, 0, 1};
  d.C = {C, DType::F32, 0, 0, 0, 1};
  d.A = &A, d.D = &D, d.last_state = &last;
  p.dirs = {d};
  p.out = out, p.ost = 1;
  const float h1 = 0.5f * 2.0f * 1.0f;
  const float h2 = std::exp(-0.25f) * h1 + 0.25f * -1.0f * 2.0f;
  for (int impl = 0; impl < 2; ++impl) {
    out[0] = out[1] = 0, last = 0;
    impl ? selective_scan(kCtx, p) : selective_scan_ref(p);
    EXPECT_NEAR(out[0], 1.0f * h1 + 0.5f * 1.0f, 1e-6);
    EXPECT_NEAR(out[1], 3.0f * h2 + 0.5f * 2.0f, 1e-6);
    EXPECT_NEAR(last, h2, 1e-6);
  }
}

TEST(SelectiveScan, ValidationErrors) {
  Case c;
  c.dim = 16, c.N = 4, c.L = 8, c.groups = 2;
  Problem pr(c);
  std::vector<float> out;
  std::vector<std::vector<float>> ls;
  const ScanParams good = pr.params(out, ls);
  EXPECT_NO_THROW(validate_scan_params(good));
  auto expect_error = [&](auto mutate, const char* what) {
    ScanParams p = good;
    mutate(p);
    try {
      selective_scan(kCtx, p);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    EXPECT_THROW(selective_scan_ref(p), Error);
  };
  expect_error([](ScanParams& p) { p.dirs[0].u.ptr = nullptr; }, "u is null");
  expect_error([](ScanParams& p) { p.dirs[0].C.ptr = nullptr; }, "C is null");
  expect_error([](ScanParams& p) { p.dirs[0].A = nullptr; }, "A is null");
  expect_error([](ScanParams& p) { p.out = nullptr; }, "output");
  expect_error([](ScanParams& p) { p.groups = 3; }, "divisible");
  expect_error([](ScanParams& p) { p.L = 0; }, "L 0");
  expect_error([](ScanParams& p) { p.N = 0; }, "N 0");
  expect_error([](ScanParams& p) { p.dirs.clear(); }, "no directions");
  expect_error([](ScanParams& p) { p.dirs[0].delta.dtype = DType::I32; }, "i32");
  expect_error([](ScanParams& p) { p.dir_round = DType::F64; }, "dir_round");
  static const int32_t bad_range[8] = {0, 1, 2, 3, 4, 5, 6, 8};
  expect_error([](ScanParams& p) { p.dirs[0].order = bad_range; }, "outside");
  static const int32_t dup[8] = {0, 1, 2, 3, 4, 5, 6, 6};
  expect_error([](ScanParams& p) { p.dirs[0].order = dup; }, "twice");
}

// ---- golden fixtures: upstream selective_scan_ref (delta_softplus=True) -----------------------------------------
namespace {

// Runs one scan fixture with the (b,d,l) / (b,n,l) | (b,g,n,l) layouts of its metadata through `scan`, returns
// the relative L2 errors of out and last_state.
std::pair<double, double> run_fixture(const std::string& name, void (*scan)(const ScanParams&)) {
  const WeightFile f = load_safetensors(test::fixture("ops/" + name + ".safetensors"));
  auto get = [&](const std::string& k) -> const Tensor& {
    auto it = f.tensors.find(k);
    if (it == f.tensors.end()) throw Error("fixture " + name + " has no tensor " + k);
    return it->second;
  };
  const Tensor &u = get("u"), &delta = get("delta"), &A = get("A"), &B = get("B"), &C = get("C");
  const Tensor &out_golden = get("out"), &ls_golden = get("last_state");
  const int64_t batch = u.dim(0), dim = u.dim(1), L = u.dim(2), N = A.dim(1);
  const int64_t groups = B.ndim() == 4 ? B.dim(1) : 1;  // (b,n,l) is one group
  EXPECT_EQ(f.metadata.at("delta_softplus"), "true");

  ScanParams p;
  p.batch = batch, p.dim = dim, p.L = L, p.N = N, p.groups = groups;
  ScanDirection d;
  d.u = {u.raw(), u.dtype(), dim * L, L, 1};
  d.delta = {delta.raw(), delta.dtype(), dim * L, L, 1};
  d.B = {B.raw(), B.dtype(), groups * N * L, N * L, L, 1};
  d.C = {C.raw(), C.dtype(), groups * N * L, N * L, L, 1};
  d.A = A.f32();
  d.D = get("D").f32();
  d.delta_bias = get("delta_bias").f32();
  if (f.tensors.count("z")) {
    const Tensor& z = get("z");
    d.z = {z.raw(), z.dtype(), dim * L, L, 1};
  }
  Tensor out = Tensor::zeros({batch, dim, L});
  Tensor ls = Tensor::zeros({batch, dim, N});
  d.last_state = ls.f32();
  p.dirs = {d};
  p.out = out.f32(), p.osb = dim * L, p.osc = L, p.ost = 1;
  scan(p);
  return {compare(out, out_golden).rel_l2, compare(ls, ls_golden).rel_l2};
}

}  // namespace

TEST(SelectiveScan, GoldenFixtures) {
  MAMBACV_REQUIRE_FIXTURES();
  for (const char* name : {"scan_d16_long", "scan_d16_z", "scan_d1_grouped"}) {
    const auto ref = run_fixture(name, [](const ScanParams& p) { selective_scan_ref(p); });
    const auto fast = run_fixture(name, [](const ScanParams& p) { selective_scan(kCtx, p); });
    std::printf("%-16s reference: out %.3g last_state %.3g | fast: out %.3g last_state %.3g (relative L2)\n", name,
                ref.first, ref.second, fast.first, fast.second);
    EXPECT_LE(ref.first, 1e-5) << name;
    EXPECT_LE(ref.second, 1e-5) << name;
    EXPECT_LE(fast.first, 1e-5) << name;
    EXPECT_LE(fast.second, 1e-5) << name;
  }
}

namespace {
// One token-major f32 direction over (1, L, D) u / delta and a (1, L, 2N) row of B then C; run by the fast path
// or the reference into out (1, L, D).
ScanDirection token_major_direction(const std::vector<float>& u, const std::vector<float>& delta,
                                    const std::vector<float>& bc, const std::vector<float>& A, int64_t L, int64_t D,
                                    int64_t N) {
  ScanDirection d;
  d.u = token_major(u.data(), DType::F32, L, D);
  d.delta = token_major(delta.data(), DType::F32, L, D);
  d.B = token_major_bc(bc.data(), DType::F32, L, 2 * N);
  d.C = token_major_bc(bc.data() + N, DType::F32, L, 2 * N);
  d.A = A.data();
  return d;
}
void run_one_direction(const ScanDirection& d, int64_t L, int64_t D, int64_t N, float* out, bool use_ref) {
  ScanParams p = token_major_scan(1, D, L, N, out, DType::F32);
  p.dirs.push_back(d);
  if (use_ref)
    selective_scan_ref(p);
  else
    selective_scan_cpu(kCtx, p);
}
}  // namespace

// Extreme gate and time-step values: the fast path's exp / division shortcuts must agree with the reference
// (no NaN from inf - inf, z -> -inf gives 0, z -> +inf passes the scan output through).
TEST(SelectiveScan, FastMatchesReferenceOnExtremeValues) {
  const int64_t D = 20, L = 6, N = 16;
  const float big = std::numeric_limits<float>::max(), inf = std::numeric_limits<float>::infinity();
  const float zs[] = {-inf, -big, -1e30f, -100.0f, -80.5f, -79.5f, -20.0f, 0.0f, 3.0f, 1e30f, big, inf};
  std::vector<float> u(D * L), delta(D * L), z(D * L), bc(2 * N * L), A(D * N), Dv(D), bias(D);
  for (int64_t i = 0; i < D * L; ++i) {
    u[i] = 0.5f + 0.01f * static_cast<float>(i % 7);
    delta[i] = (i % 5 == 0) ? 1e30f : (i % 5 == 1) ? -1e30f : 0.1f * static_cast<float>(i % 9) - 0.4f;
    z[i] = zs[i % 12];
  }
  for (size_t i = 0; i < bc.size(); ++i) bc[i] = 0.1f * static_cast<float>(i % 11) - 0.5f;
  for (int64_t i = 0; i < D * N; ++i) A[i] = -static_cast<float>(1 + i % N);
  for (int64_t c = 0; c < D; ++c) Dv[c] = 0.5f, bias[c] = -1.0f;
  std::vector<float> fast(D * L), ref(D * L);
  ScanDirection d = token_major_direction(u, delta, bc, A, L, D, N);
  d.D = Dv.data();
  d.delta_bias = bias.data();
  d.z = token_major(z.data(), DType::F32, L, D);
  run_one_direction(d, L, D, N, fast.data(), false);
  run_one_direction(d, L, D, N, ref.data(), true);
  for (int64_t i = 0; i < D * L; ++i) {
    ASSERT_EQ(std::isnan(fast[i]), std::isnan(ref[i]))
        << "element " << i << " z " << z[i] << " delta " << delta[i] << ": " << fast[i] << " vs " << ref[i];
    if (std::isinf(ref[i])) {
      EXPECT_EQ(fast[i], ref[i]) << "element " << i;
    } else if (!std::isnan(ref[i])) {
      EXPECT_NEAR(fast[i], ref[i], 1e-5 * std::max(1.0f, std::fabs(ref[i]))) << "element " << i << " z " << z[i];
    }
  }
}

// A > 0 in some channels (never from a model, whose A = -exp(A_log), but the kernel takes any A): the tiles holding
// them keep exp's overflow clamp (growing states, and exp(dt * A) = inf from a step of dt = 1e4), the all-negative
// tile takes the cheaper exp; both must agree with the reference, for the register (N = 16) and general (N = 3)
// state paths.
TEST(SelectiveScan, FastMatchesReferenceWithPositiveA) {
  for (const int64_t N : {int64_t{16}, int64_t{3}}) {
    const int64_t D = 24, L = 40;
    std::vector<float> u(D * L), delta(D * L), bc(2 * N * L), A(D * N);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t c = 0; c < D; ++c) {
        u[t * D + c] = 0.3f + 0.02f * static_cast<float>((c + t) % 9);
        delta[t * D + c] = (c == 5 && t == 20) ? 1e4f : 0.1f * static_cast<float>((3 * c + t) % 11) - 1.0f;
      }
    for (size_t i = 0; i < bc.size(); ++i) bc[i] = 0.1f * static_cast<float>(i % 11) - 0.45f;
    for (int64_t c = 0; c < D; ++c)
      for (int64_t n = 0; n < N; ++n)
        A[c * N + n] = (c < 16 && c % 3 == 0) || c == 5 ? 0.05f * static_cast<float>(1 + n % 6)
                                                         : -static_cast<float>(1 + n);
    const ScanDirection d = token_major_direction(u, delta, bc, A, L, D, N);
    std::vector<float> fast(D * L), ref(D * L);
    run_one_direction(d, L, D, N, fast.data(), false);
    run_one_direction(d, L, D, N, ref.data(), true);
    int64_t non_finite = 0;
    for (int64_t i = 0; i < D * L; ++i) {
      ASSERT_EQ(std::isnan(fast[i]), std::isnan(ref[i]))
          << "N " << N << " element " << i << ": " << fast[i] << " vs " << ref[i];
      if (!std::isfinite(ref[i])) {
        ++non_finite;
        if (std::isinf(ref[i])) {
          EXPECT_EQ(fast[i], ref[i]) << "N " << N << " element " << i;
        }
      } else {
        EXPECT_NEAR(fast[i], ref[i], 1e-5 * std::max(1.0f, std::fabs(ref[i]))) << "N " << N << " element " << i;
      }
    }
    EXPECT_GT(non_finite, 0) << "the dt = 1e4 step of channel 5 should overflow exp";
    EXPECT_LT(non_finite, L) << "only channel 5 overflows";
  }
}
