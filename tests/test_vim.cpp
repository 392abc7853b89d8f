// Vim end to end against the upstream goldens, plus bad input and the verify command.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include <thread>

#include "kernels/cpu_info.h"
#include "mambacv/mambacv.h"
#include "test_util.h"
#include "vision/network.h"

using namespace mambacv;
using mambacv::test::fixture;

namespace {

struct Golden {
  Model model;
  TensorMap golden;
};

Golden load_fixture(const std::string& name, const Options& opt = {}) {
  ModelConfig cfg = load_model_config(fixture(name + ".json"));
  WeightFile w = load_weights(fixture(name + ".weights.safetensors"));
  WeightFile g = load_safetensors(fixture(name + ".golden.safetensors"));
  return {Model::load(cfg, w.tensors, opt, w.path), g.tensors};
}

void expect_close(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  ASSERT_EQ(got.shape(), ref.shape()) << what;
  Compare c = compare(got, ref);
  EXPECT_TRUE(c.finite) << what;
  EXPECT_LE(c.rel_l2, tol) << what << " max_abs " << c.max_abs;
}

void check_fixture(const std::string& name) {
  Golden f = load_fixture(name);
  Tensor x = f.golden.at("input").to(DType::F32);
  auto out = f.model.forward_all(x);
  for (const char* n : {"logits", "features", "patch_embed", "layers.0.mixer"}) {
    ASSERT_TRUE(out.count(n)) << name << ": " << n << " not produced";
    expect_close(out.at(n), f.golden.at(n), 1e-4, name + " " + n);
  }
  // the public entry points agree with forward_all
  expect_close(f.model.classify(x), f.golden.at("logits"), 1e-4, name + " classify");
  auto feats = f.model.features(x);
  expect_close(feats.at("cls"), f.golden.at("features"), 1e-4, name + " features cls");
  const Tensor& tok = feats.at("tokens");
  ASSERT_EQ(tok.ndim(), 4);
  EXPECT_EQ(tok.dim(0), x.dim(0));
}

}  // namespace

TEST(Vim, MiniMatchesGolden) { check_fixture("vim_mini"); }
TEST(Vim, Stride8MiniMatchesGolden) { check_fixture("vim_stride8_mini"); }

TEST(Vim, PthCheckpointGivesSameLogits) {
  MAMBACV_REQUIRE_FIXTURES();
  ModelConfig cfg = load_model_config(fixture("vim_mini.json"));
  Model m = Model::load(cfg.path, fixture("vim_mini.pth"));
  TensorMap g = load_safetensors(fixture("vim_mini.golden.safetensors")).tensors;
  expect_close(m.classify(g.at("input").to(DType::F32)), g.at("logits"), 1e-4, "vim_mini.pth logits");
}

TEST(Vim, BatchItemsAreIndependent) {
  MAMBACV_REQUIRE_FIXTURES();
  // each image of a batch gives the same result alone
  Golden f = load_fixture("vim_mini");
  Tensor x = f.golden.at("input").to(DType::F32, true);
  Tensor full = f.model.classify(x);
  for (int64_t b = 0; b < x.dim(0); ++b) {
    Tensor one = f.model.classify(x.slice0(b, b + 1).clone());
    expect_close(one, full.slice0(b, b + 1).clone(), 1e-5, "batch item " + std::to_string(b));
  }
}

TEST(Vim, BatchGroupsGiveTheWholeBatchsOutputs) {
  test::expect_batch_groups_give_the_whole_batch(load_model_config("vim_tiny"), test::random_tensor({5, 3, 64, 48}, 3),
                                                 {"layers.0.mixer", "tokens", "logits"});
}

TEST(Vim, GroupSizeFollowsTheL2Cache) {
  const int64_t budget = cpu::l2_cache_bytes() * 3 / 4;
  EXPECT_EQ(detail::images_per_group(0, 64, budget / 3), 3);
  EXPECT_EQ(detail::images_per_group(0, 2, budget / 3), 2);       // never more than the batch
  EXPECT_EQ(detail::images_per_group(0, 64, 4 * budget), 1);      // at least one
  EXPECT_EQ(detail::images_per_group(7, 64, 4 * budget), 7);      // a requested count is taken as given
  EXPECT_EQ(detail::images_per_group(7, 5, 1), 5);
}

TEST(Vim, OtherResolutionsInterpolatePositionEmbedding) {
  MAMBACV_REQUIRE_FIXTURES();
  Golden f = load_fixture("vim_mini");  // configured for 64x64
  for (auto [h, w] : {std::pair<int64_t, int64_t>{96, 80}, {48, 48}, {16, 16}, {64, 112}}) {
    Tensor x = test::random_tensor({1, 3, h, w}, 7);
    auto feats = f.model.features(x);
    EXPECT_EQ(feats.at("tokens").shape(), (Shape{1, 64, h / 16, w / 16}));
    Tensor logits = f.model.classify(x);
    EXPECT_EQ(logits.shape(), (Shape{1, 10}));
    EXPECT_TRUE(compare(logits, logits).finite);
  }
}

TEST(Vim, ConcurrentCallsOnOneModel) {
  MAMBACV_REQUIRE_FIXTURES();
  Golden f = load_fixture("vim_mini");
  Tensor x = f.golden.at("input").to(DType::F32);
  Tensor ref = f.model.classify(x);
  std::vector<Tensor> results(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back([&, i] { results[i] = f.model.classify(x); });
  for (auto& t : threads) t.join();
  for (const auto& r : results) expect_close(r, ref, 1e-6, "concurrent classify");
}

TEST(Vim, ConfigThatDoesNotMatchWeightsNamesTensors) {
  MAMBACV_REQUIRE_FIXTURES();
  ModelConfig cfg = load_model_config(fixture("vim_stride8_mini.json"));
  WeightFile w = load_weights(fixture("vim_mini.weights.safetensors"));
  try {
    Model::load(cfg, w.tensors, {}, w.path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("vim_mini.weights.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("pos_embed"), std::string::npos) << msg;        // misshapen
    EXPECT_NE(msg.find("layers.2.norm.weight"), std::string::npos) << msg;  // unexpected (depth 4 vs 2)
  }
}

TEST(Vim, WrongInputIsAClearError) {
  MAMBACV_REQUIRE_FIXTURES();
  Golden f = load_fixture("vim_mini");
  EXPECT_THROW(f.model.classify(Tensor::zeros({1, 4, 64, 64})), Error);   // channels
  EXPECT_THROW(f.model.classify(Tensor::zeros({1, 3, 8, 64})), Error);    // smaller than a patch
  EXPECT_THROW(f.model.classify(Tensor::zeros({3, 64, 64})), Error);      // rank
  EXPECT_THROW(f.model.classify(Tensor::zeros({1, 3, 64, 64}, DType::F16)), Error);
  try {
    f.model.classify(Tensor::zeros({1, 3, 8, 64}));
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("8x64"), std::string::npos) << e.what();
  }
}

TEST(Vim, UnsupportedConfigOptionsAreRefused) {
  MAMBACV_REQUIRE_FIXTURES();
  ModelConfig cfg = load_model_config(fixture("vim_mini.json"));
  cfg.json = R"({"embed_dim": 64, "depth": 2, "bimamba_type": "v1"})";
  EXPECT_THROW(Model::random(cfg), Error);
  cfg.json = R"({"embed_dim": 64, "depth": 2, "if_rope": true})";
  EXPECT_THROW(Model::random(cfg), Error);
  cfg.json = R"({"embed_dim": "wide"})";
  EXPECT_THROW(Model::random(cfg), Error);
}

// VisionMamba's if_divide_out defaults to true; upstream's vim_base factory spells it "if_devide_out".
TEST(Vim, DivideOutDefaultsToUpstreamsAndTakesBothSpellings) {
  MAMBACV_REQUIRE_FIXTURES();
  ModelConfig cfg = load_model_config(fixture("vim_mini.json"));  // holds "if_divide_out": true
  WeightFile w = load_weights(fixture("vim_mini.weights.safetensors"));
  const Tensor x = load_safetensors(fixture("vim_mini.golden.safetensors")).tensors.at("input").to(DType::F32);
  const Tensor want = Model::load(cfg, w.tensors, {}, w.path).classify(x);
  nlohmann::json j = nlohmann::json::parse(cfg.json);
  auto logits_with = [&](const nlohmann::json& c) {
    ModelConfig m = cfg;
    m.json = c.dump();
    return Model::load(m, w.tensors, {}, w.path).classify(x);
  };
  j.erase("if_divide_out");
  expect_close(logits_with(j), want, 0, "no key");
  nlohmann::json misspelt = j;
  misspelt["if_devide_out"] = true;
  expect_close(logits_with(misspelt), want, 0, "if_devide_out");
  j["if_divide_out"] = false;
  EXPECT_GT(compare(logits_with(j), want).rel_l2, 1e-3) << "if_divide_out false must change the output";
}

// Every shipped Vim config builds its network (summarize_model constructs it without weights); the parameter
// counts are the released models' (MODELS.md §2: 7.1M, 7.2M(+), 25.8M, 26.0M, 97.6M). One full model is built
// with weights (summarize_model's count equals a built model's: test_cli_conventions).
TEST(Vim, ShippedConfigsBuild) {
  const std::map<std::string, double> millions = {{"vim_tiny", 7.1},  {"vim_tiny_stride8", 7.2}, {"vim_small", 25.8},
                                                  {"vim_small_stride8", 26.0}, {"vim_base", 97.6}};
  for (const auto& [name, m] : millions) {
    ModelConfig cfg = load_model_config(name);
    EXPECT_EQ(cfg.arch, "vim");
    const ModelSummary s = summarize_model(cfg);
    EXPECT_EQ(s.num_classes, 1000) << name;
    EXPECT_EQ(s.input_width, 224) << name;
    EXPECT_NEAR(s.parameters / 1e6, m, 0.015 * m) << name;
  }
  const Model tiny = Model::random(load_model_config("vim_tiny"));
  EXPECT_EQ(tiny.num_classes(), 1000);
  EXPECT_EQ(tiny.input_size(), 224);
}

TEST(VerifyCommand, PassesAndRefusesUnimplementedOptions) {
  MAMBACV_REQUIRE_FIXTURES();
  std::string out;
  int rc = test::run_command(test::cli_path() + " verify " + fixture("vim_mini.json"), &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("logits"), std::string::npos) << out;
  EXPECT_NE(out.find("PASS"), std::string::npos) << out;
  rc = test::run_command(test::cli_path() + " verify " + fixture("vim_mini.json") + " --weights " +
                             fixture("vim_mini.pth"),
                         &out);
  EXPECT_EQ(rc, 0) << out;
  // a mismatching weights file fails with a message, not a crash
  rc = test::run_command(test::cli_path() + " verify " + fixture("vim_mini.json") + " --weights " +
                             fixture("vim_stride8_mini.weights.safetensors"),
                         &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("pos_embed"), std::string::npos) << out;
  rc = test::run_command(test::cli_path() + " verify " + fixture("vim_mini.json") + " --dtype int8", &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("--dtype"), std::string::npos) << out;
  rc = test::run_command(test::cli_path() + " verify " + fixture("vim_mini.json") + " --bogus 1", &out);
  EXPECT_NE(rc, 0) << out;
  rc = test::run_command(test::cli_path() + " verify /nonexistent/fixture.json", &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("/nonexistent/fixture.json"), std::string::npos) << out;
}
