// VMamba (VSSM, Backbone_VSSM) end to end against the upstream goldens, with both cores; odd and non-square
// inputs; strict weight loading; both projection spellings; the shipped configs.
#include <gtest/gtest.h>

#include <limits>

#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "mambacv/mambacv.h"
#include "test_util.h"
#include "vision/network.h"

using namespace mambacv;
using mambacv::test::fixture;

namespace {

const char* kFixtures[] = {"vmamba_v0_mini", "vmamba_v2_mini", "vmamba_v2_ratio1_mini", "vmamba_backbone_mini"};

TensorMap fixture_weights(const std::string& name) {
  return load_safetensors(fixture(name + ".weights.safetensors")).tensors;
}
TensorMap fixture_golden(const std::string& name) {
  return load_safetensors(fixture(name + ".golden.safetensors")).tensors;
}
Model load_fixture(const std::string& name, Core core = Core::V0, int batch_group = 0) {
  Options opt;
  opt.core = core;
  opt.batch_group = batch_group;
  return Model::load(load_model_config(fixture(name + ".json")), fixture_weights(name), opt, name);
}

void expect_close(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  ASSERT_EQ(got.shape(), ref.shape()) << what;
  Compare c = compare(got, ref);
  EXPECT_TRUE(c.finite) << what;
  EXPECT_LE(c.rel_l2, tol) << what << " max_abs " << c.max_abs;
}

// (B, H, W, C) <-> (B, C, H, W)
Tensor nhwc_to_nchw(const Tensor& t) {
  const int64_t B = t.dim(0), H = t.dim(1), W = t.dim(2), C = t.dim(3);
  Tensor o = Tensor::empty({B, C, H, W});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c) o.f32()[((b * C + c) * H + h) * W + w] = t.f32()[((b * H + h) * W + w) * C + c];
  return o;
}

ModelConfig config_with(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  ModelConfig cfg = load_model_config(fixture(name + ".json"));
  nlohmann::json j = nlohmann::json::parse(cfg.json);
  edit(j);
  cfg.json = j.dump();
  cfg.path.clear();
  cfg.name = name + "_edited";
  return cfg;
}

}  // namespace

TEST(VMamba, FixturesMatchGoldenWithBothCores) {
  MAMBACV_REQUIRE_FIXTURES();
  for (const char* name : kFixtures) {
    const TensorMap golden = fixture_golden(name);
    const Tensor x = golden.at("input").to(DType::F32);
    std::map<std::string, Tensor> outs[2];
    for (Core core : {Core::V0, Core::V1}) {
      Model m = load_fixture(name, core);
      auto& out = outs[core == Core::V0 ? 0 : 1];
      out = m.forward_all(x);
      int compared = 0;
      for (const auto& [n, ref] : golden) {
        if (n == "input") continue;
        ASSERT_TRUE(out.count(n)) << name << ": " << n << " not produced";
        expect_close(out.at(n), ref, 1e-4, std::string(name) + " core " + core_name(core) + " " + n);
        ++compared;
      }
      EXPECT_GE(compared, 7) << name;
      if (m.num_classes() > 0) expect_close(m.classify(x), golden.at("logits"), 1e-4, std::string(name) + " classify");
    }
    // the two cores compute the same function in fp32
    for (const auto& [n, t] : outs[0]) expect_close(outs[1].at(n), t, 1e-5, std::string(name) + " v0 vs v1 " + n);
  }
}

TEST(VMamba, FeaturesAreNchwStageMaps) {
  MAMBACV_REQUIRE_FIXTURES();
  for (const char* name : {"vmamba_v0_mini", "vmamba_v2_mini"}) {  // ln (NHWC goldens) and ln2d (NCHW goldens)
    const TensorMap golden = fixture_golden(name);
    Model m = load_fixture(name);
    auto f = m.features(golden.at("input").to(DType::F32));
    const bool nhwc = std::string(name) == "vmamba_v0_mini";
    for (int i = 0; i < 4; ++i) {
      const std::string s = "stage." + std::to_string(i);
      ASSERT_TRUE(f.count(s)) << name << " " << s;
      const Tensor& ref = golden.at(s);
      expect_close(f.at(s), nhwc ? nhwc_to_nchw(ref.to(DType::F32)) : ref, 1e-4, std::string(name) + " " + s);
    }
    EXPECT_EQ(f.count("logits"), 0u);
  }
  Model bb = load_fixture("vmamba_backbone_mini");
  const TensorMap golden = fixture_golden("vmamba_backbone_mini");
  auto f = bb.features(golden.at("input").to(DType::F32));
  for (int i = 0; i < 4; ++i) {
    const std::string s = "features." + std::to_string(i);
    ASSERT_TRUE(f.count(s)) << s;
    expect_close(f.at(s), golden.at(s), 1e-4, "backbone " + s);
  }
  EXPECT_THROW(bb.classify(golden.at("input").to(DType::F32)), Error);
}

TEST(VMamba, ConcurrentFeatureCallsOnOneModel) {
  MAMBACV_REQUIRE_FIXTURES();
  // one loaded backbone serving several threads: every thread gets the golden features
  Model bb = load_fixture("vmamba_backbone_mini");
  const TensorMap golden = fixture_golden("vmamba_backbone_mini");
  const Tensor x = golden.at("input").to(DType::F32);
  std::vector<std::map<std::string, Tensor>> results(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) threads.emplace_back([&, i] { results[i] = bb.features(x); });
  for (auto& t : threads) t.join();
  for (const auto& r : results)
    for (int i = 0; i < 4; ++i) {
      const std::string s = "features." + std::to_string(i);
      ASSERT_TRUE(r.count(s)) << s;
      expect_close(r.at(s), golden.at(s), 1e-4, "concurrent " + s);
    }
}

TEST(VMamba, BatchItemsAreIndependent) {
  MAMBACV_REQUIRE_FIXTURES();
  Model m = load_fixture("vmamba_v0_mini");
  const Tensor x = fixture_golden("vmamba_v0_mini").at("input").to(DType::F32);  // batch 2
  const Tensor both = m.classify(x);
  for (int64_t b = 0; b < 2; ++b) {
    Tensor one = x.slice0(b, b + 1).clone();
    expect_close(m.classify(one), both.slice0(b, b + 1).clone(), 1e-5, "item " + std::to_string(b));
  }
}

TEST(VMamba, BatchGroupsGiveTheWholeBatchsOutputs) {
  // each stage's blocks run over groups of images; the v2 and v0 cores, and the detection backbone's features
  const Tensor x = test::random_tensor({5, 3, 64, 64}, 5);
  test::expect_batch_groups_give_the_whole_batch(load_model_config("vmamba_tiny_s1l8"), x,
                                                 {"layers.0.blocks.0.op", "stage.0", "stage.3", "logits"});
  test::expect_batch_groups_give_the_whole_batch(load_model_config("vmamba_tiny_v0"), x,
                                                 {"layers.0.blocks.0.op", "stage.2", "logits"});
  test::expect_batch_groups_give_the_whole_batch(load_model_config("vmamba_tiny_s1l8_backbone"), x,
                                                 {"features.0", "features.3"});
}

// The MLP runs over row chunks of about 1 MiB of hidden activations; a batch of three 160x160 images at stage 0
// run as one group (3 x 1600 rows of 128 hidden f32 = 2.4 MiB) splits in the middle of an image, one image alone
// does not.
TEST(VMamba, MlpRowChunksMatchOneChunk) {
  MAMBACV_REQUIRE_FIXTURES();
  for (const char* name : {"vmamba_v2_mini", "vmamba_backbone_mini"}) {
    SCOPED_TRACE(name);
    Model m = load_fixture(name, Core::V0, /*batch_group=*/3);
    const Tensor x = test::random_tensor({3, 3, 160, 160}, 11);
    const auto all = m.features(x);
    for (int64_t b = 0; b < 3; ++b) {
      const auto one = m.features(x.slice0(b, b + 1).clone());
      for (const auto& [k, v] : one) expect_close(v, all.at(k).slice0(b, b + 1).clone(), 1e-5, k);
    }
  }
}

// Inputs scaled to 1e30 overflow f32 sums in the first norm; the outputs stay finite (as PyTorch's double-
// accumulating CPU norms keep them), and an Inf input is reported by check_finite, not passed on silently.
TEST(VMamba, HugeFiniteInputsGiveFiniteOutputs) {
  MAMBACV_REQUIRE_FIXTURES();
  for (const char* name : {"vmamba_v0_mini", "vmamba_v2_mini", "vmamba_v2_ratio1_mini", "vmamba_backbone_mini"}) {
    SCOPED_TRACE(name);
    Model m = load_fixture(name);
    Tensor x = fixture_golden(name).at("input").to(DType::F32, /*copy=*/true);
    for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] *= 1e30f;
    for (const auto& [k, v] : m.features(x)) EXPECT_TRUE(compare(v, v).finite) << k;
    x.f32()[0] = std::numeric_limits<float>::infinity();
    Options opt;
    opt.check_finite = true;
    Model checked = Model::load(fixture(std::string(name) + ".json"),
                                fixture(std::string(name) + ".weights.safetensors"), opt);
    EXPECT_THROW(checked.features(x), Error);
  }
}

TEST(VMamba, OddAndNonSquareInputs) {
  MAMBACV_REQUIRE_FIXTURES();
  auto ceil2 = [](int64_t v) { return (v + 1) / 2; };
  for (const char* name : {"vmamba_v0_mini", "vmamba_v2_mini", "vmamba_backbone_mini"}) {
    Model m = load_fixture(name);
    const bool v1_embed = std::string(name) == "vmamba_v0_mini";  // Conv 4x4/4 (floor) + PatchMerging (ceil)
    for (auto [H, W] : {std::pair<int64_t, int64_t>{33, 47}, {65, 97}, {32, 32}, {47, 33}}) {
      SCOPED_TRACE(testing::Message() << name << " " << H << "x" << W);
      Tensor x = test::random_tensor({2, 3, H, W}, static_cast<uint64_t>(H * 1000 + W));
      auto f = m.features(x);
      int64_t h = v1_embed ? H / 4 : ceil2(ceil2(H)), w = v1_embed ? W / 4 : ceil2(ceil2(W));
      int64_t C = 32;
      for (int i = 0; i < 4; ++i, h = ceil2(h), w = ceil2(w), C *= 2) {
        const std::string s = (m.num_classes() > 0 ? "stage." : "features.") + std::to_string(i);
        ASSERT_TRUE(f.count(s)) << s;
        EXPECT_EQ(f.at(s).shape(), (Shape{2, C, h, w})) << s;
        EXPECT_TRUE(compare(f.at(s), f.at(s)).finite) << s;
      }
      if (m.num_classes() > 0) {
        Tensor logits = m.classify(x);
        EXPECT_EQ(logits.shape(), (Shape{2, 10}));
        EXPECT_TRUE(compare(logits, logits).finite);
      }
    }
    EXPECT_THROW(m.features(test::random_tensor({1, 3, 31, 64}, 1)), Error);
  }
}

TEST(VMamba, MissingAndMisshapenTensorsAreOneError) {
  MAMBACV_REQUIRE_FIXTURES();
  TensorMap w = fixture_weights("vmamba_v2_mini");
  w.erase("layers.0.blocks.0.op.Ds");
  w.erase("layers.2.blocks.1.mlp.fc2.bias");
  w["classifier.head.weight"] = Tensor::zeros({7, 256});
  w["layers.1.downsample.1.weight"] = Tensor::zeros({128, 64, 2, 2});
  w["layers.0.blocks.0.op.bogus"] = Tensor::zeros({3});
  try {
    Model::load(load_model_config(fixture("vmamba_v2_mini.json")), w, {}, "edited.safetensors");
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* n : {"layers.0.blocks.0.op.Ds", "layers.2.blocks.1.mlp.fc2.bias", "classifier.head.weight",
                          "layers.1.downsample.1.weight", "layers.0.blocks.0.op.bogus", "edited.safetensors"})
      EXPECT_NE(msg.find(n), std::string::npos) << n << " not named in: " << msg;
  }
}

TEST(VMamba, UnsupportedOptionsAreRefused) {
  auto expect_error = [](const ModelConfig& cfg, const std::vector<std::string>& words) {
    try {
      Model::random(cfg);
      ADD_FAILURE() << "no error for " << cfg.json;
    } catch (const Error& e) {
      const std::string msg = e.what();
      for (const auto& wd : words) EXPECT_NE(msg.find(wd), std::string::npos) << wd << " not in: " << msg;
    }
  };
  expect_error(config_with("vmamba_v2_mini", [](nlohmann::json& j) { j["forward_type"] = "v051d"; }),
               {"v051d", "v0", "v2", "v3", "v05", "v05_noz", "vmamba_v2_mini"});
  expect_error(config_with("vmamba_v2_mini", [](nlohmann::json& j) { j["forward_type"] = "xv1a"; }), {"xv1a"});
  expect_error(config_with("vmamba_v2_mini", [](nlohmann::json& j) { j["norm_layer"] = "bn"; }), {"norm_layer"});
  expect_error(config_with("vmamba_v2_mini", [](nlohmann::json& j) { j["downsample_version"] = "v4"; }),
               {"downsample_version"});
  expect_error(config_with("vmamba_v2_mini", [](nlohmann::json& j) { j["patchembed_version"] = "v3"; }),
               {"patchembed_version"});
  expect_error(config_with("vmamba_v2_mini", [](nlohmann::json& j) { j["ssm_dim"] = 3; }), {"ssm_dim"});
  expect_error(config_with("vmamba_v2_mini", [](nlohmann::json& j) { j["dims"] = {32, 64}; }), {"dims"});
  expect_error(config_with("vmamba_v2_mini", [](nlohmann::json& j) { j["posembed"] = true; }), {"posembed"});
  expect_error(config_with("vmamba_v2_mini", [](nlohmann::json& j) { j["ssm_act_layer"] = "relu"; }),
               {"ssm_act_layer"});
  expect_error(config_with("vmamba_backbone_mini", [](nlohmann::json& j) { j["out_indices"] = {0, 4}; }),
               {"out_indices"});
  // training-only kwargs are accepted and ignored
  Model m = Model::random(config_with("vmamba_v2_mini", [](nlohmann::json& j) {
    j["drop_path_rate"] = 0.3;
    j["ssm_drop_rate"] = 0.1;
    j["mlp_drop_rate"] = 0.1;
    j["use_checkpoint"] = true;
    j["ssm_init"] = "v2";
  }));
  EXPECT_EQ(m.num_classes(), 10);
}

TEST(VMamba, BothProjectionSpellingsLoadAndAgree) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string name = "vmamba_v2_mini";
  const TensorMap w = fixture_weights(name);
  TensorMap root;  // root vmamba.py spelling: x_proj.weight (K*(R+2N), Dd), dt_projs.weight (K*Dd, R); 1x1 convs
  for (const auto& [n, t] : w) {
    const std::string xs = "x_proj_weight", ds = "dt_projs_weight";
    if (n.size() > xs.size() && n.compare(n.size() - xs.size(), xs.size(), xs) == 0) {
      root[n.substr(0, n.size() - xs.size()) + "x_proj.weight"] = t.reshape({t.dim(0) * t.dim(1), t.dim(2)});
    } else if (n.size() > ds.size() && n.compare(n.size() - ds.size(), ds.size(), ds) == 0) {
      root[n.substr(0, n.size() - ds.size()) + "dt_projs.weight"] = t.reshape({t.dim(0) * t.dim(1), t.dim(2)});
    } else if (n.find("mlp.fc") != std::string::npos && t.ndim() == 2) {
      root[n] = t.reshape({t.dim(0), t.dim(1), 1, 1});
    } else {
      root[n] = t;
    }
  }
  ASSERT_EQ(root.size(), w.size());
  const ModelConfig cfg = load_model_config(fixture(name + ".json"));
  const Tensor x = fixture_golden(name).at("input").to(DType::F32);
  const Tensor a = Model::load(cfg, w, {}, "a").classify(x);
  const Tensor b = Model::load(cfg, root, {}, "b").classify(x);
  const Compare c = compare(b, a);
  EXPECT_EQ(c.max_abs, 0.0);
  // both spellings at once are ambiguous
  TensorMap both = w;
  both["layers.0.blocks.0.op.x_proj.weight"] = root.at("layers.0.blocks.0.op.x_proj.weight");
  EXPECT_THROW(Model::load(cfg, both, {}, "both"), Error);
}

TEST(VMamba, BackboneLoadsDetectionAndClassificationCheckpoints) {
  MAMBACV_REQUIRE_FIXTURES();
  const TensorMap golden = fixture_golden("vmamba_backbone_mini");
  const Tensor x = golden.at("input").to(DType::F32);
  const ModelConfig cfg = load_model_config(fixture("vmamba_backbone_mini.json"));
  // an mmdetection-style state dict: backbone.* plus neck / heads
  TensorMap det;
  for (const auto& [n, t] : fixture_weights("vmamba_backbone_mini")) det["backbone." + n] = t;
  det["neck.lateral_convs.0.conv.weight"] = Tensor::zeros({8, 32, 1, 1});
  auto f = Model::load(cfg, det, {}, "det.pth").features(x);
  expect_close(f.at("features.2"), golden.at("features.2"), 1e-4, "mmdet backbone features.2");
  // a classification checkpoint of the same widths: classifier dropped, outnorms start as identity
  const ModelConfig bb = config_with("vmamba_v2_mini", [](nlohmann::json& j) {
    j.erase("num_classes");
    j["out_indices"] = {1, 3};
  });
  ModelConfig bbc = bb;
  bbc.arch = "vmamba_backbone";
  Model m = Model::load(bbc, fixture_weights("vmamba_v2_mini"), {}, "cls.pth");
  auto g = m.features(x);
  EXPECT_EQ(g.size(), 2u);
  EXPECT_EQ(g.at("features.3").shape(), (Shape{1, 256, 4, 3}));
}

TEST(VMamba, ShippedConfigsBuildWithTheReleasedParameterCounts) {
  const std::pair<const char*, double> models[] = {
      {"vmamba_tiny_v0", 22.9},     {"vmamba_small_v0", 44.4},    {"vmamba_base_v0", 76.3},
      {"vmamba_tiny_s2l5", 30.7},   {"vmamba_small_s2l15", 50.2}, {"vmamba_base_s2l15", 88.6},
      {"vmamba_tiny_s1l8", 30.2},   {"vmamba_small_s1l20", 49.0}, {"vmamba_base_s1l20", 86.6}};
  for (const auto& [name, params] : models) {
    for (const std::string suffix : {"", "_backbone"}) {
      const ModelConfig cfg = load_model_config(name + suffix);
      EXPECT_EQ(cfg.arch, suffix.empty() ? "vmamba" : "vmamba_backbone") << name;
      auto net = detail::make_network(cfg);
      EXPECT_EQ(net->input_size(), 224) << name;
      EXPECT_EQ(net->num_classes(), suffix.empty() ? 1000 : 0) << name;
      int64_t n = 0;
      for (const auto& p : net->param_specs()) n += shape_numel(p.shape);
      if (suffix.empty()) {
        EXPECT_NEAR(n / 1e6, params, 0.06) << name;
      }
    }
  }
  // a small released config runs end to end at an odd size
  Model t = Model::random(load_model_config("vmamba_tiny_s1l8"));
  EXPECT_EQ(t.classify(test::random_tensor({1, 3, 65, 97}, 5)).shape(), (Shape{1, 1000}));
}
