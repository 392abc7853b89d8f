// What a new user meets first: `mambacv models`, `info --json`, --version, -h on every command, exit statuses
// (0 / 1 runtime / 2 usage), global options before the command, input lists on stdin, --random-weights with its
// warning, configs found by file name or through set_config_dirs, and the README's quickstart on the shipped sample
// image.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
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
