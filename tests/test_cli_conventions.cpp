// What a new user meets first: `mambacv models`, `info --json`, --version, -h on every command, exit statuses
// (0 / 1 runtime / 2 usage), global options before the command, input lists on stdin, --random-weights with its
// warning, configs found by file name or through set_config_dirs, and the README's quickstart on the shipped sample
// image.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "mambacv/detection.h"
#include "mambacv/mambacv.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace mambacv;
using mambacv::test::cli_path;
using mambacv::test::fixture;
using mambacv::test::json_lines;
using mambacv::test::q;
using mambacv::test::run_command;
using mambacv::test::source_dir;
using mambacv::test::temp_dir;

namespace {
std::string cli(const std::string& args) { return q(cli_path()) + " " + args; }
int run(const std::string& args, std::string* out) { return run_command(cli(args), out); }
std::string stdout_only(const std::string& args, int* rc) {
  std::string out;
  *rc = run_command("{ " + cli(args) + " 2>/dev/null; }", &out);
  return out;
}
std::vector<std::string> shipped_configs() {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(source_dir() + "/configs"))
    if (e.path().extension() == ".json") names.push_back(e.path().stem().string());
  std::sort(names.begin(), names.end());
  return names;
}
}  // namespace

TEST(CliModels, ListsEveryShippedConfigWithItsCheckpoint) {
  int rc = -1;
  const std::string text = stdout_only("models", &rc);
  ASSERT_EQ(rc, 0) << text;
  for (const auto& n : shipped_configs()) {
    const ModelConfig c = load_model_config(n);
    EXPECT_NE(text.find("\n" + n + " "), std::string::npos) << n << "\n" << text;
    EXPECT_FALSE(c.checkpoint.empty()) << n << ": a shipped config names its released checkpoint";
    EXPECT_FALSE(c.checkpoint_url.empty()) << n << ": and where upstream publishes it";
    EXPECT_NE(text.find(c.checkpoint), std::string::npos) << n;
    EXPECT_NE(text.find(c.checkpoint_url), std::string::npos) << n;
  }
  const std::string js = stdout_only("models --json", &rc);
  ASSERT_EQ(rc, 0) << js;
  const auto lines = json_lines(js);
  ASSERT_EQ(lines.size(), shipped_configs().size()) << js;
  std::set<std::string> tasks;
  for (const auto& j : lines) {
    tasks.insert(j["task"].get<std::string>());
    if (j["name"] == "vim_tiny") {
      EXPECT_EQ(j["input"], nlohmann::json::array({224, 224}));
      EXPECT_EQ(j["classes"], 1000);
      EXPECT_EQ(j["parameters"].get<int64_t>(), Model::random(load_model_config("vim_tiny")).num_parameters());
    }
    if (j["name"] == "mask_rcnn_vmamba_tiny") {
      EXPECT_EQ(j["task"], "detection");
      EXPECT_EQ(j["input"], nlohmann::json::array({1333, 800}));
      EXPECT_EQ(j["classes"], 80);
      EXPECT_EQ(j["checkpoint"], "mask_rcnn_vssm_fpn_coco_tiny_s_epoch_12.pth");
    }
    if (j["name"] == "vmamba_tiny_s1l8_backbone") {
      EXPECT_EQ(j["task"], "features");
      EXPECT_EQ(j["classes"], 0);
    }
  }
  EXPECT_EQ(tasks, (std::set<std::string>{"classification", "detection", "features"}));
}

// The summary counts parameters from the config alone; it must equal the built model's count.
TEST(ModelSummary, ParameterCountsEqualTheBuiltModels) {
  for (const char* n : {"vim_tiny", "vmamba_tiny_s1l8", "vmamba_tiny_v0_backbone"}) {
    const ModelConfig c = load_model_config(n);
    EXPECT_EQ(summarize_model(c).parameters, Model::random(c).num_parameters()) << n;
  }
  EXPECT_NEAR(summarize_model(load_model_config("vim_base")).parameters / 1e6, 97.6, 1.0);
  EXPECT_NEAR(summarize_model(load_model_config("vmamba_tiny_s1l8")).parameters / 1e6, 30.2, 0.2);
}

TEST(CliInfo, JsonOnAClassifierAndADetector) {
  MAMBACV_REQUIRE_FIXTURES();
  int rc = -1;
  std::string out = stdout_only("info --json --model " + q(fixture("vim_mini.json")), &rc);
  ASSERT_EQ(rc, 0) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["task"], "classification");
  EXPECT_EQ(j["classes"], 10);
  EXPECT_EQ(j["parameters"], 214154);
  EXPECT_GT(j["flops"].get<double>(), 0);
  EXPECT_EQ(j["outputs"]["logits"], nlohmann::json::array({1, 10}));
  // a detector: its object classes and the 1333x800 rescale bound; --size takes W,H
  out = stdout_only("info --json --size 320,256 --model " + q(fixture("det/maskrcnn_vmamba_mini.json")), &rc);
  ASSERT_EQ(rc, 0) << out;
  j = nlohmann::json::parse(out);
  EXPECT_EQ(j["task"], "detection");
  EXPECT_EQ(j["classes"], Detector::random(fixture("det/maskrcnn_vmamba_mini.json")).num_classes());
  EXPECT_EQ(j["input"], nlohmann::json::array({1333, 800}));
  EXPECT_EQ(j["flops_at"], nlohmann::json::array({320, 256}));
  out = stdout_only("info --model mask_rcnn_vmamba_tiny --size 64,32", &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("classes     80"), std::string::npos) << out;
  EXPECT_NE(out.find("input       1333x800"), std::string::npos) << out;
  EXPECT_NE(out.find("mask_rcnn_vssm_fpn_coco_tiny_s_epoch_12.pth"), std::string::npos) << out;
}

TEST(CliConventions, VersionAndHelpOnEveryCommand) {
  std::string out;
  ASSERT_EQ(run("--version", &out), 0) << out;
  EXPECT_EQ(out, std::string("mambacv ") + MAMBACV_VERSION_STRING + " (CUDA kernels " +
                     (cuda_built() ? "built" : "not built") + ")\n");
  EXPECT_EQ(run("--help", &out), 0) << out;
  EXPECT_NE(out.find("exit status"), std::string::npos) << out;
  for (const char* cmd : {"models", "classify", "features", "detect", "bench", "info", "verify", "check-cores"}) {
    for (const char* h : {"-h", "--help"}) {
      ASSERT_EQ(run(std::string(cmd) + " " + h, &out), 0) << cmd << " " << h << "\n" << out;
      EXPECT_NE(out.find("usage: mambacv " + std::string(cmd)), std::string::npos) << cmd << "\n" << out;
    }
  }
  // the model options' help explains --core and says what this build cannot do
  ASSERT_EQ(run("classify --help", &out), 0);
  EXPECT_NE(out.find("forward_corev0"), std::string::npos) << out;
  EXPECT_NE(out.find("--device cpu|cuda"), std::string::npos) << out;
  EXPECT_NE(out.find(cuda_built() ? "does not run on them yet" : "no CUDA kernels"), std::string::npos) << out;
}

TEST(CliConventions, UsageErrorsExit2RuntimeFailuresExit1) {
  std::string out;
  EXPECT_EQ(run("", &out), 2) << out;
  EXPECT_EQ(run("no-such-command", &out), 2) << out;
  EXPECT_EQ(run("info --no-such-option", &out), 2) << out;
  EXPECT_NE(out.find("usage error: unknown option --no-such-option"), std::string::npos) << out;
  EXPECT_EQ(run("info", &out), 2) << out;  // --model missing
  EXPECT_EQ(run("bench --model vim_tiny --iters many", &out), 2) << out;
  EXPECT_NE(out.find("--iters: expected an integer, got 'many'"), std::string::npos) << out;
  EXPECT_EQ(run("classify --model vim_tiny --dtype f64 x.png", &out), 2) << out;
  EXPECT_EQ(run("--frobnicate info", &out), 2) << out;
  // runtime: a file that is not there, a model that does not exist
  EXPECT_EQ(run("classify --model vim_tiny --weights no/such.pth x.png", &out), 1) << out;
  EXPECT_NE(out.find("no/such.pth"), std::string::npos) << out;
  EXPECT_EQ(run("info --model no_such_model", &out), 1) << out;
  // no --weights: the message names the released checkpoint and where it is published
  EXPECT_EQ(run("classify --model vim_tiny x.png", &out), 2) << out;
  EXPECT_NE(out.find("vim_t_midclstok_76p1acc.pth"), std::string::npos) << out;
  EXPECT_NE(out.find("huggingface.co/hustvl/Vim-tiny-midclstok"), std::string::npos) << out;
}

TEST(CliConventions, GlobalOptionsBeforeTheCommand) {
  MAMBACV_REQUIRE_FIXTURES();
  int rc = -1;
  const std::string after =
      stdout_only("classify --json --threads 1 --model " + q(fixture("vim_mini.json")) + " " +
                      q(fixture("images/chelsea.png")),
                  &rc);
  ASSERT_EQ(rc, 0) << after;
  const std::string before = stdout_only(
      "--threads 1 --model=" + q(fixture("vim_mini.json")) + " --json classify " + q(fixture("images/chelsea.png")),
      &rc);
  ASSERT_EQ(rc, 0) << before;
  EXPECT_EQ(before, after);
}

// A fixture config names its weights: no --weights needed. `-` reads the input list from stdin.
TEST(CliConventions, ConfigWeightsAndStdinLists) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string a = fixture("images/chelsea.png"), b = fixture("images/coffee.png");
  int rc = -1;
  const std::string direct =
      stdout_only("classify --json --model " + q(fixture("vim_mini.json")) + " " + q(a) + " " + q(b), &rc);
  ASSERT_EQ(rc, 0) << direct;
  EXPECT_EQ(json_lines(direct).size(), 2u);
  std::string piped;
  rc = run_command("{ printf '%s\\n# a comment\\n\\n%s\\n' " + q(a) + " " + q(b) + " | " +
                       cli("classify --json --model " + q(fixture("vim_mini.json")) + " -") + " 2>/dev/null; }",
                   &piped);
  ASSERT_EQ(rc, 0) << piped;
  EXPECT_EQ(piped, direct);
  // relative lines of a stdin list are taken from the working directory
  rc = run_command("{ cd " + q(fixture("images")) + " && printf 'chelsea.png\\ncoffee.png\\n' | " +
                       cli("classify --json --model " + q(fixture("vim_mini.json")) + " @-") + " 2>/dev/null; }",
                   &piped);
  ASSERT_EQ(rc, 0) << piped;
  const auto l = json_lines(piped);
  ASSERT_EQ(l.size(), 2u) << piped;
  EXPECT_EQ(l[0]["top"], json_lines(direct)[0]["top"]);
}

TEST(CliConventions, TooManyThreadsWarns) {
  MAMBACV_REQUIRE_FIXTURES();
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  std::string out;
  ASSERT_EQ(run("info --threads " + std::to_string(cores + 1) + " --model " + q(fixture("vim_mini.json")), &out), 0)
      << out;
  EXPECT_NE(out.find("warning: --threads " + std::to_string(cores + 1) + " is more than the " +
                     std::to_string(cores) + " cores"),
            std::string::npos)
      << out;
  ASSERT_EQ(run("info --threads 1 --model " + q(fixture("vim_mini.json")), &out), 0) << out;
  EXPECT_EQ(out.find("warning"), std::string::npos) << out;
}

// The README's quickstart: the shipped sample image through a full-size model with random weights, loudly marked.
TEST(CliConventions, QuickstartClassifiesTheSampleImageWithRandomWeights) {
  const std::string image = source_dir() + "/demo/images/rocket.jpg";
  ASSERT_TRUE(fs::is_regular_file(image));
  std::string out;
  ASSERT_EQ(run("classify --model vim_tiny --random-weights --topk 3 " + q(image), &out), 0) << out;
  EXPECT_NE(out.find("WARNING: RANDOM WEIGHTS"), std::string::npos) << out;
  EXPECT_NE(out.find("vim_t_midclstok_76p1acc.pth"), std::string::npos) << out;
  EXPECT_NE(out.find("rocket.jpg"), std::string::npos) << out;
}

// Configs by file name (a bare "vim_tiny.json" that is not in the working directory is the shipped one), and an
// application's own config folder put first with set_config_dirs.
TEST(ModelConfigs, FoundByFileNameAndThroughSetConfigDirs) {
  EXPECT_EQ(load_model_config("vim_tiny.json").path, load_model_config("vim_tiny").path);
  EXPECT_THROW(load_model_config("no/such/vim_tiny.json"), Error);
  const std::string dir = temp_dir("config_dirs");
  {
    nlohmann::json j = nlohmann::json::parse(std::ifstream(source_dir() + "/configs/vim_tiny.json"));
    j["description"] = "my own tiny";
    j["config"]["num_classes"] = 7;
    std::ofstream(dir + "/my_vim.json") << j.dump();
    j["description"] = "shadows the shipped one";
    std::ofstream(dir + "/vim_tiny.json") << j.dump();
  }
  EXPECT_THROW(load_model_config("my_vim"), Error);
  set_config_dirs({dir});
  const ModelConfig mine = load_model_config("my_vim");
  EXPECT_EQ(mine.description, "my own tiny");
  EXPECT_EQ(summarize_model(mine).num_classes, 7);
  EXPECT_EQ(load_model_config("vim_tiny").description, "shadows the shipped one");
  const auto names = list_model_configs();
  EXPECT_NE(std::find(names.begin(), names.end(), "my_vim"), names.end());
  EXPECT_EQ(config_search_path().front(), dir);
  set_config_dirs({});
  EXPECT_THROW(load_model_config("my_vim"), Error);
  EXPECT_EQ(load_model_config("vim_tiny").description, "Vim-Ti, ImageNet-1k top-1 76.1");
}

// convert: a .pth becomes safetensors with the model's canonical names; loading either gives the same logits bit
// for bit (f32), or close ones (bf16, half the bytes); a mismatching model and a bad OUT are clear errors.
TEST(CliConvert, PthToSafetensorsLoadsTheSameModel) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string dir = temp_dir("convert");
  const std::string cfg = fixture("vim_mini.json"), pth = fixture("vim_mini.pth");
  const std::string out32 = dir + "/vim_mini.safetensors", out16 = dir + "/vim_mini_bf16.safetensors";
  std::string out;
  ASSERT_EQ(run("convert --model " + q(cfg) + " " + q(pth) + " " + q(out32), &out), 0) << out;
  ASSERT_EQ(run("convert --model " + q(cfg) + " " + q(pth) + " " + q(out16) + " --dtype bf16", &out), 0) << out;
  const WeightFile w32 = load_safetensors(out32), w16 = load_safetensors(out16);
  const Model ref = Model::load(cfg, pth);
  std::set<std::string> names;
  for (const auto& p : ref.parameter_specs()) names.insert(p.name);
  std::set<std::string> got;
  for (const auto& [n, t] : w32.tensors) got.insert(n);
  EXPECT_EQ(got, names) << "exactly the model's tensors, canonical names";
  EXPECT_EQ(w32.metadata.at("mambacv_model"), "vim_mini");
  EXPECT_EQ(w16.metadata.at("dtype"), "bf16");
  for (const auto& [n, t] : w16.tensors) EXPECT_EQ(t.dtype(), DType::BF16) << n;
  EXPECT_LT(fs::file_size(out16), fs::file_size(out32) * 6 / 10);
  const Tensor x = test::random_tensor({2, 3, 64, 64}, 5);
  const Tensor a = ref.classify(x), b = Model::load(cfg, out32).classify(x), c = Model::load(cfg, out16).classify(x);
  ASSERT_EQ(a.numel(), b.numel());
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << "the f32 conversion must not change a bit";
  EXPECT_LT(compare(c, a).rel_l2, 2e-2);
  EXPECT_GT(compare(c, a).rel_l2, 0.0) << "bf16 rounding must show";
  // errors: another model's weights (every problem listed), an OUT that cannot be written, a usage error
  EXPECT_EQ(run("convert --model " + q(fixture("vmamba_v2_mini.json")) + " " + q(pth) + " " + q(dir + "/x.safetensors"),
                &out), 1) << out;
  EXPECT_NE(out.find("weights do not match the model"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir + "/x.safetensors"));
  EXPECT_EQ(run("convert --model " + q(cfg) + " " + q(pth) + " " + q(dir + "/no/such/dir/x.safetensors"), &out), 1);
  EXPECT_NE(out.find("cannot write"), std::string::npos) << out;
  EXPECT_EQ(run("convert --model " + q(cfg) + " " + q(pth) + " " + q(dir + "/x.bin"), &out), 2) << out;
  EXPECT_EQ(run("convert --model " + q(cfg) + " " + q(pth), &out), 2) << out;
}

TEST(CliConventions, ClassifyAndFeaturesOnADetectorPointToDetect) {
  std::string out;
  EXPECT_EQ(run("classify --model mask_rcnn_vmamba_tiny --random-weights x.png", &out), 2) << out;
  EXPECT_NE(out.find("is a detector: use 'mambacv detect'"), std::string::npos) << out;
  EXPECT_EQ(run("features --model mask_rcnn_vmamba_tiny --random-weights x.png -o f.safetensors", &out), 2) << out;
  EXPECT_NE(out.find("is a detector: use 'mambacv detect'"), std::string::npos) << out;
}

TEST(Api, TopKWithLabels) {
  const float logits[5] = {1.0f, 3.0f, 3.0f, -2.0f, 0.5f};
  const std::vector<std::string> names = {"a", "b", "c", "d", "e"};
  const auto top = top_k(logits, 5, 3, names);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0].index, 1);  // ties go to the lower index
  EXPECT_EQ(top[1].index, 2);
  EXPECT_EQ(top[2].index, 0);
  EXPECT_EQ(top[0].label, "b");
  double sum = 0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - 3.0);
  EXPECT_NEAR(top[0].prob, 1.0 / sum, 1e-7);
  EXPECT_NEAR(top[2].prob, std::exp(-2.0) / sum, 1e-7);
  EXPECT_EQ(top_k(logits, 5, 9).size(), 5u);                  // k above the class count
  EXPECT_EQ(top_k(logits, 5, 1, {"only one"})[0].label, "");  // labels of another length are not used
  const float bad[2] = {0.0f, std::nanf("")};
  EXPECT_THROW(top_k(bad, 2, 1), Error);
  Tensor t = Tensor::empty({2, 5});
  for (int i = 0; i < 10; ++i) t.f32()[i] = logits[i % 5] * (i < 5 ? 1.0f : -1.0f);
  const auto rows = top_k(t, 1, names);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0][0].label, "b");
  EXPECT_EQ(rows[1][0].label, "d");
}

// VMamba's pre-logits embedding: the classifier head applied to it gives the logits.
TEST(Api, VMambaEmbeddingIsThePreLogitsVector) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string cfg = fixture("vmamba_v2_mini.json"), w = fixture("vmamba_v2_mini.weights.safetensors");
  const Model m = Model::load(cfg, w);
  ASSERT_GT(m.num_classes(), 0);
  const Tensor x = test::random_tensor({2, 3, 64, 64}, 3);
  const auto f = m.features(x);
  ASSERT_TRUE(f.count("embedding"));
  const Tensor& e = f.at("embedding");
  const TensorMap weights = canonical_weights(load_model_config(cfg), load_weights(w).tensors);
  const Tensor hw = weights.at("classifier.head.weight").to(DType::F32, true);
  const Tensor hb = weights.at("classifier.head.bias").to(DType::F32, true);
  const int64_t C = e.dim(1), K = m.num_classes();
  ASSERT_EQ(hw.dim(1), C);
  Tensor logits = Tensor::empty({2, K});
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t k = 0; k < K; ++k) {
      double s = hb.f32()[k];
      for (int64_t c = 0; c < C; ++c) s += static_cast<double>(e.f32()[b * C + c]) * hw.f32()[k * C + c];
      logits.f32()[b * K + k] = static_cast<float>(s);
    }
  EXPECT_LT(compare(logits, m.classify(x)).rel_l2, 1e-5);
}

namespace {
// (shape, data) of a float32 .npy file written by `features --format npy`
std::pair<Shape, std::vector<float>> read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_GE(bytes.size(), 10u);
  EXPECT_EQ(bytes.substr(0, 6), "\x93NUMPY");
  const size_t hlen = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
  EXPECT_EQ((10 + hlen) % 64, 0u) << "npy header must pad the data to 64 bytes";
  const std::string header = bytes.substr(10, hlen);
  EXPECT_NE(header.find("'descr': '<f4'"), std::string::npos) << header;
  Shape shape;
  const size_t a = header.find("'shape': (") + 10, b = header.find(')', a);
  std::stringstream ss(header.substr(a, b - a));
  for (std::string item; std::getline(ss, item, ',');)
    if (item.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(item));
  std::vector<float> data((bytes.size() - 10 - hlen) / 4);
  std::memcpy(data.data(), bytes.data() + 10 + hlen, data.size() * 4);
  return {shape, data};
}
std::vector<std::string> metadata_images(const WeightFile& w) {
  return nlohmann::json::parse(w.metadata.at("images")).get<std::vector<std::string>>();
}
}  // namespace

// features streams to disk: per-image tensors, stacked (N, ...) tensors and .npy hold the same rows; shards
// together equal the unsharded run; a failed image is reported and counted; OUT is checked before any work.
TEST(CliFeatures, StackedNpyAndShardsHoldTheSameRows) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string dir = temp_dir("features_stream");
  std::ofstream(dir + "/broken.png") << "not a png";
  const std::string list = dir + "/list.txt";
  {
    std::ofstream l(list);
    for (const char* n : {"chelsea.png", "coffee.png", "chelsea_gray.png", "coffee_small.jpg"})
      l << fixture(std::string("images/") + n) << "\n";
    l << dir << "/broken.png\n";
  }
  const std::string base = "features --model " + q(fixture("vmamba_v2_mini.json")) + " --batch 2 @" + q(list);
  std::string out;
  EXPECT_EQ(run(base + " -o " + q(dir + "/per_image.safetensors"), &out), 1) << out;  // the broken image
  EXPECT_NE(out.find("4 image(s) written"), std::string::npos) << out;
  EXPECT_NE(out.find("1 of 5 failed"), std::string::npos) << out;
  EXPECT_NE(out.find("broken.png"), std::string::npos) << out;
  EXPECT_EQ(run(base + " --stack -o " + q(dir + "/stacked.safetensors"), &out), 1) << out;
  EXPECT_EQ(run(base + " --format npy -o " + q(dir + "/npy"), &out), 1) << out;
  const WeightFile per = load_safetensors(dir + "/per_image.safetensors");
  const WeightFile st = load_safetensors(dir + "/stacked.safetensors");
  EXPECT_EQ(st.metadata.at("layout"), "stacked");
  const std::vector<std::string> imgs = metadata_images(st);
  ASSERT_EQ(imgs.size(), 4u);
  EXPECT_EQ(metadata_images(per), imgs);
  EXPECT_TRUE(nlohmann::json::parse(st.metadata.at("errors")).contains(dir + "/broken.png"));
  std::ifstream names(dir + "/npy/images.txt");
  for (const auto& p : imgs) {
    std::string line;
    std::getline(names, line);
    EXPECT_EQ(line, p);
  }
  ASSERT_FALSE(st.tensors.empty());
  for (const auto& [name, t] : st.tensors) {
    ASSERT_EQ(t.dim(0), 4) << name;
    const int64_t row = t.numel() / 4;
    const auto [nshape, ndata] = read_npy(dir + "/npy/" + name + ".npy");
    EXPECT_EQ(nshape, t.shape()) << name;
    ASSERT_EQ(static_cast<int64_t>(ndata.size()), t.numel()) << name;
    EXPECT_EQ(std::memcmp(ndata.data(), t.f32(), t.nbytes()), 0) << name;
    for (int64_t i = 0; i < 4; ++i) {
      const Tensor& one = per.tensors.at(std::to_string(i) + "/" + name);
      ASSERT_EQ(one.numel(), row) << name;
      EXPECT_EQ(std::memcmp(one.f32(), t.f32() + i * row, one.nbytes()), 0) << name << " row " << i;
    }
  }
  // three shards: their images, in order, are the unsharded run's, and each row is the same bytes
  std::vector<std::string> sharded;
  for (int s = 0; s < 3; ++s) {
    const std::string f = dir + "/shard" + std::to_string(s) + ".safetensors";
    run(base + " --stack --shard " + std::to_string(s) + "/3 -o " + q(f), &out);
    const WeightFile w = load_safetensors(f);
    EXPECT_EQ(w.metadata.at("shard"), std::to_string(s) + "/3");
    const auto part = metadata_images(w);
    for (size_t r = 0; r < part.size(); ++r) {
      const size_t i = std::find(imgs.begin(), imgs.end(), part[r]) - imgs.begin();
      ASSERT_LT(i, imgs.size()) << part[r];
      for (const auto& [name, t] : w.tensors) {
        const Tensor& all = st.tensors.at(name);
        const int64_t row = all.numel() / all.dim(0);
        EXPECT_EQ(std::memcmp(t.f32() + r * row, all.f32() + i * row, row * 4), 0) << name << " " << part[r];
      }
    }
    sharded.insert(sharded.end(), part.begin(), part.end());
  }
  EXPECT_EQ(sharded, imgs);
  // usage and output errors come before any work
  EXPECT_EQ(run(base + " --shard 3/3 -o " + q(dir + "/x.safetensors"), &out), 2) << out;
  EXPECT_EQ(run(base + " --shard a/b -o " + q(dir + "/x.safetensors"), &out), 2) << out;
  EXPECT_EQ(run(base + " --format csv -o " + q(dir + "/x"), &out), 2) << out;
  EXPECT_EQ(run(base + " -o " + q(dir + "/no/such/dir/x.safetensors"), &out), 1) << out;
  EXPECT_NE(out.find("cannot write"), std::string::npos) << out;
  EXPECT_EQ(out.find("broken.png"), std::string::npos) << "no image is read before OUT is checked\n" << out;
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().string().find(".part"), std::string::npos) << "spool left behind: " << e.path();
}

// A folder scan says what it skipped; --size changes the eval transform (the same as the API's with that size).
TEST(CliConventions, FolderSkipsAreReportedAndSizeIsHonoured) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string dir = temp_dir("folder_skips");
  fs::copy_file(fixture("images/chelsea.png"), dir + "/cat.png");
  std::ofstream(dir + "/notes.txt") << "x";
  std::ofstream(dir + "/more.txt") << "y";
  std::ofstream(dir + "/anim.gif") << "GIF89a";
  const std::string m = " --model " + q(fixture("vim_mini.json"));
  std::string out;
  ASSERT_EQ(run("classify --json" + m + " " + q(dir), &out), 0) << out;
  EXPECT_NE(out.find("skipped 3 file(s) that are not images by extension (.gif, .txt x2)"), std::string::npos)
      << out;
  int rc = -1;
  const std::string at96 = stdout_only("classify --json --size 96" + m + " " + q(dir + "/cat.png"), &rc);
  ASSERT_EQ(rc, 0) << at96;
  const std::string at64 = stdout_only("classify --json" + m + " " + q(dir + "/cat.png"), &rc);
  EXPECT_NE(at96, at64) << "--size must change the input";
  const Model model = Model::load(fixture("vim_mini.json"), fixture("vim_mini.weights.safetensors"));
  InputSpec spec = model.input_spec();
  spec.size = 96;
  const auto top = top_k(model.classify(preprocess(load_image(dir + "/cat.png"), spec)), 5, model.class_names());
  const auto j = json_lines(at96).at(0);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(j["top"][i]["index"], top[0][i].index);
    EXPECT_NEAR(j["top"][i]["prob"].get<double>(), top[0][i].prob, 1e-6);
  }
  EXPECT_EQ(run("classify --size 8" + m + " " + q(dir), &out), 2) << out;
}
