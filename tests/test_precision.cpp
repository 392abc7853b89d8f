// Reduced precision end to end: the rounding op, the policy table, every fixture in f16 / bf16 under both cores,
// the cores telling apart, saturation under core v0, --check-finite and `mambacv check-cores`' exit codes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/context.h"
#include "kernels/ops.h"
#include "mambacv/mambacv.h"
#include "ssm/precision.h"
#include "test_util.h"

using namespace mambacv;
using mambacv::test::fixture;

namespace {

const ExecContext kCtx = ExecContext::cpu(2);

double tolerance(DType t) { return t == DType::F16 ? 1e-2 : 4e-2; }

Model load(const std::string& name, DType dt, Core core, bool check_finite = false) {
  Options opt;
  opt.dtype = dt;
  opt.core = core;
  opt.check_finite = check_finite;
  return Model::load(load_model_config(fixture(name + ".json")),
                     load_safetensors(fixture(name + ".weights.safetensors")).tensors, opt, name);
}

}  // namespace

TEST(Precision, RoundToMatchesTheScalarConversions) {
  const float specials[] = {0.0f, -0.0f, 1.0f, -1.5f, 65504.0f, 65519.0f, 65520.0f, -70000.0f, 1e-8f, -6e-5f,
                            3.0e38f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), 1.00390625f, 1.01171875f, 2049.0f, 2051.0f};
  for (int64_t n : {1, 7, 8, 9, 31, 1000}) {
    Tensor x = test::random_tensor({n}, static_cast<uint64_t>(n), -3e5f, 3e5f);
    for (int64_t i = 0; i < n; ++i)
      if (i % 3 == 0) x.f32()[i] = specials[static_cast<size_t>(i / 3) % (sizeof specials / sizeof specials[0])];
    for (DType dt : {DType::F16, DType::BF16})
      for (bool sat : {false, true}) {
        Tensor y = x.clone();
        ops::round_to(kCtx, dt, sat, y);
        for (int64_t i = 0; i < n; ++i) {
          const float want = ops::ref::round_to(dt, sat, x.f32()[i]);
          if (std::isnan(want)) {
            EXPECT_TRUE(std::isnan(y.f32()[i])) << i;
          } else {
            EXPECT_EQ(y.f32()[i], want) << dtype_name(dt) << " sat " << sat << " x " << x.f32()[i];
          }
        }
      }
  }
  // saturation: finite stays finite in f16 only when asked; bf16 keeps the f32 range
  EXPECT_EQ(ops::ref::round_to(DType::F16, true, 1e6f), 65504.0f);
  EXPECT_TRUE(std::isinf(ops::ref::round_to(DType::F16, false, 1e6f)));
  EXPECT_EQ(ops::ref::round_to(DType::BF16, true, 1e6f), 999424.0f);
  Tensor y = Tensor::zeros({5});
  y.f32()[3] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(ops::all_finite(kCtx, y));
  y.f32()[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(ops::all_finite(kCtx, y));
  y.f32()[3] = 1.0f;
  EXPECT_TRUE(ops::all_finite(kCtx, y));
}

TEST(Precision, PolicyTable) {
  using detail::Boundary;
  detail::Policy f32;
  for (const auto& row : detail::kPolicyTable) EXPECT_EQ(f32.at(row.boundary), DType::F32) << row.name;
  for (DType dt : {DType::F16, DType::BF16}) {
    detail::Policy v0{dt, Core::V0}, v1{dt, Core::V1};
    for (Boundary b : {Boundary::ScanU, Boundary::ScanDelta, Boundary::ScanB, Boundary::ScanC, Boundary::ScanOut,
                       Boundary::OutNorm, Boundary::Gate}) {
      EXPECT_EQ(v0.at(b), DType::F32) << detail::boundary_name(b);
      EXPECT_EQ(v1.at(b), dt) << detail::boundary_name(b);
    }
    for (Boundary b : {Boundary::Merge, Boundary::ResidualStream}) {
      EXPECT_EQ(v0.at(b), DType::F32);
      EXPECT_EQ(v1.at(b), DType::F32);
    }
    for (Boundary b : {Boundary::Activation, Boundary::OutProjIn, Boundary::OutProjOut, Boundary::Mlp,
                       Boundary::Residual, Boundary::Head}) {
      EXPECT_EQ(v0.at(b), dt);
      EXPECT_EQ(v1.at(b), dt);
    }
  }
}

// Every classification / backbone fixture in f16 and bf16 under both cores: within the tolerance of the f32
// golden, finite, and the two cores give different numbers.
TEST(Precision, FixturesInReducedPrecisionBothCores) {
  MAMBACV_REQUIRE_FIXTURES();
  for (const char* name : {"vim_mini", "vim_stride8_mini", "vmamba_v0_mini", "vmamba_v2_mini",
                           "vmamba_v2_ratio1_mini", "vmamba_backbone_mini"}) {
    const TensorMap golden = load_safetensors(fixture(std::string(name) + ".golden.safetensors")).tensors;
    const Tensor x = golden.at("input");
    for (DType dt : {DType::F16, DType::BF16}) {
      std::map<std::string, Tensor> by_core[2];
      for (Core core : {Core::V0, Core::V1}) {
        by_core[core == Core::V1] = load(name, dt, core).forward_all(x);
        int compared = 0;
        for (const auto& [key, ref] : golden) {
          auto it = by_core[core == Core::V1].find(key);
          if (key == "input" || it == by_core[core == Core::V1].end()) continue;
          Compare c = compare(it->second, ref);
          EXPECT_TRUE(c.finite) << name << " " << key << " " << dtype_name(dt) << " " << core_name(core);
          EXPECT_LE(c.rel_l2, tolerance(dt)) << name << " " << key << " " << dtype_name(dt) << " "
                                             << core_name(core);
          ++compared;
        }
        EXPECT_GE(compared, 2) << name;
      }
      const char* out = by_core[0].count("logits") ? "logits" : "features.3";
      ASSERT_TRUE(by_core[0].count(out)) << name;
      EXPECT_GT(compare(by_core[1].at(out), by_core[0].at(out)).rel_l2, 1e-4)
          << name << " " << dtype_name(dt) << ": core v1 gives the same " << out << " as core v0";
    }
  }
}

// Core v0 keeps the scan output in f32 and saturates f16 elsewhere: x_proj scaled up so that the scan output
// overflows f16 stays finite under v0; under v1 (IEEE rounding of each direction's output) --check-finite names
// the boundary.
TEST(Precision, SaturatingScanOutputStaysFiniteUnderCoreV0) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string name = "vmamba_v0_mini";
  TensorMap w = load_safetensors(fixture(name + ".weights.safetensors")).tensors;
  for (auto& [key, t] : w)
    if (key.find("x_proj_weight") != std::string::npos) {
      Tensor s = t.to(DType::F32, /*copy=*/true);
      for (int64_t i = 0; i < s.numel(); ++i) s.f32()[i] *= 3000.0f;
      t = s;
    }
  const Tensor x = load_safetensors(fixture(name + ".golden.safetensors")).tensors.at("input");
  const ModelConfig cfg = load_model_config(fixture(name + ".json"));
  Options opt;
  opt.dtype = DType::F16;
  opt.check_finite = true;
  opt.core = Core::V0;
  Tensor logits = Model::load(cfg, w, opt, name).classify(x);
  EXPECT_TRUE(compare(logits, logits).finite);
  opt.core = Core::V1;
  try {
    Model::load(cfg, w, opt, name).classify(x);
    ADD_FAILURE() << "core v1 in f16 should overflow here";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("non-finite"), std::string::npos) << msg;
    EXPECT_NE(msg.find("core v1, f16"), std::string::npos) << msg;
    EXPECT_NE(msg.find("stage."), std::string::npos) << msg;
  }
  // and without the check the overflow is visible in the output, not hidden
  opt.check_finite = false;
  EXPECT_FALSE(compare(Model::load(cfg, w, opt, name).classify(x), logits).finite);

  // mambacv check-cores: exit 0 on the fixture, 1 on these weights (v1 not finite)
  const std::string dir = test::temp_dir("precision");
  const std::string wpath = dir + "/scaled.safetensors";
  save_safetensors(wpath, w);
  std::string out;
  const std::string base = test::q(test::cli_path()) + " check-cores --model " + test::q(fixture(name + ".json"));
  EXPECT_EQ(test::run_command(base + " --dtype bf16", &out), 0) << out;
  EXPECT_NE(out.find("PASS"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(base + " --dtype f16 --weights " + test::q(wpath), &out), 1) << out;
  EXPECT_NE(out.find("NaN/Inf"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(base + " --dtype f32 --json", &out), 0) << out;
  auto lines = test::json_lines(out);
  ASSERT_EQ(lines.size(), 1u) << out;
  EXPECT_TRUE(lines[0]["passed"].get<bool>());
  EXPECT_EQ(lines[0]["tensors"][0]["v1_vs_v0"]["rel_l2"].get<double>() <= 1e-5, true);
}

// The policy helper: core v0 saturates f16 (finite stays finite), core v1 overflows as IEEE does, and a watch
// records the first boundary with a non-finite value, with its scope, core and dtype.
TEST(Precision, ApplySaturatesUnderCoreV0AndWatchNamesTheBoundary) {
  using detail::Boundary;
  auto values = [] {
    Tensor t = Tensor::empty({4});
    t.f32()[0] = 1e6f, t.f32()[1] = -1e6f, t.f32()[2] = 1.0f, t.f32()[3] = 70000.0f;
    return t;
  };
  detail::FiniteWatch watch;
  detail::Policy v0{DType::F16, Core::V0, &watch}, v1{DType::F16, Core::V1, &watch};
  Tensor a = values();
  v0.scope("stage.1.block.0");
  v0.apply(kCtx, Boundary::Activation, a);
  EXPECT_EQ(a.f32()[0], 65504.0f);
  EXPECT_EQ(a.f32()[1], -65504.0f);
  EXPECT_EQ(a.f32()[2], 1.0f);
  EXPECT_EQ(a.f32()[3], 65504.0f);
  EXPECT_FALSE(watch.found);
  Tensor kept = values();
  v0.apply(kCtx, Boundary::ScanOut, kept);  // v0 keeps the scan output in f32: untouched
  EXPECT_EQ(kept.f32()[0], 1e6f);
  Tensor b = values();
  v1.scope("stage.2.block.3");
  v1.apply(kCtx, Boundary::ScanOut, b);
  EXPECT_TRUE(std::isinf(b.f32()[0]) && b.f32()[0] > 0);
  EXPECT_TRUE(std::isinf(b.f32()[1]) && b.f32()[1] < 0);
  ASSERT_TRUE(watch.found);
  EXPECT_EQ(watch.first, "stage.2.block.3 scan_out (core v1, f16)");
}
