// The mambacv command line (tools/) on the fixture images with the vim_mini fixture weights: classify, features,
// bench, info, and its argument errors. Outputs are parsed (JSON lines, safetensors) and checked against the API.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "mambacv/mambacv.h"
#include "test_util.h"

namespace fs = std::filesystem;
using mambacv::test::cli_path;
using mambacv::test::fixture;
using mambacv::test::json_lines;
using mambacv::test::q;
using mambacv::test::run_command;
using mambacv::test::temp_dir;

namespace {

std::string model_args() {
  return " --model " + q(fixture("vim_mini.json")) + " --weights " + q(fixture("vim_mini.weights.safetensors"));
}
std::string cli(const std::string& args) { return q(cli_path()) + " " + args; }


// stdout only (stderr discarded), for byte-exact comparisons
std::string stdout_of(const std::string& cmd, int* rc) {
  std::string out;
  // stderr (decoder warnings, progress) is dropped inside the group, so run_command's 2>&1 cannot bring it back
  *rc = run_command("{ " + cmd + " 2>/dev/null; }", &out);
  return out;
}

const std::vector<std::string> kImages = {"chelsea.png", "chelsea_gray.png", "coffee.png", "coffee_small.jpg"};

void expect_valid_top(const nlohmann::json& j, size_t topk) {
  ASSERT_TRUE(j.contains("image")) << j.dump();
  ASSERT_TRUE(j.contains("top")) << j.dump();
  ASSERT_FALSE(j.contains("error")) << j.dump();
  const auto& top = j["top"];
  ASSERT_EQ(top.size(), topk) << j.dump();
  double prev = 2.0;
  std::set<int> seen;
  for (const auto& t : top) {
    const double p = t["prob"].get<double>();
    EXPECT_GT(p, 0.0) << j.dump();
    EXPECT_LE(p, 1.0) << j.dump();
    EXPECT_LE(p, prev) << "probabilities must be descending: " << j.dump();
    prev = p;
    const int idx = t["index"].get<int>();
    EXPECT_GE(idx, 0);
    EXPECT_LT(idx, 10);
    EXPECT_TRUE(seen.insert(idx).second) << "repeated class: " << j.dump();
  }
}

// A one-line error on stderr and a non-zero status.
void expect_one_line_error(const std::string& args, const std::string& needle) {
  std::string out;
  EXPECT_NE(run_command(cli(args), &out), 0) << args;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << args << "\n" << out;
  EXPECT_NE(out.find("error"), std::string::npos) << args << "\n" << out;
  EXPECT_NE(out.find(needle), std::string::npos) << args << "\n" << out;
}

}  // namespace

// ---- classify ------------------------------------------------------------------------------------------------------

TEST(CliClassify, DeterministicJsonLines) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string cmd = cli("classify --json --topk 3" + model_args() + " " + q(fixture("images")));
  int rc1 = -1, rc2 = -1;
  const std::string a = stdout_of(cmd, &rc1), b = stdout_of(cmd, &rc2);
  ASSERT_EQ(rc1, 0) << a;
  ASSERT_EQ(rc2, 0) << b;
  EXPECT_EQ(a, b) << "two runs of the same command must print the same bytes";
  const auto lines = json_lines(a);
  ASSERT_EQ(lines.size(), kImages.size()) << a;
  for (size_t i = 0; i < lines.size(); ++i) {
    expect_valid_top(lines[i], 3);
    // a folder expands to its image files sorted by path; preprocess.golden.safetensors is not an image
    EXPECT_EQ(fs::path(lines[i]["image"].get<std::string>()).filename().string(), kImages[i]);
  }
  // the batch size does not change the results beyond float rounding
  int rc = -1;
  const auto single = json_lines(stdout_of(cli("classify --json --topk 3 --batch 1" + model_args() + " " +
                                               q(fixture("images"))),
                                           &rc));
  ASSERT_EQ(rc, 0);
  ASSERT_EQ(single.size(), lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(single[i]["top"][0]["index"], lines[i]["top"][0]["index"]);
    EXPECT_NEAR(single[i]["top"][0]["prob"].get<double>(), lines[i]["top"][0]["prob"].get<double>(), 1e-5);
  }
  // the probabilities are the softmax of Model::classify on the same preprocessed image
  const mambacv::Model model =
      mambacv::Model::load(fixture("vim_mini.json"), fixture("vim_mini.weights.safetensors"));
  const mambacv::Tensor logits =
      model.classify(mambacv::preprocess(mambacv::load_image(fixture("images/coffee.png")), model.input_spec()));
  const float* l = logits.f32();
  const int n = model.num_classes();
  double mx = *std::max_element(l, l + n), sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(l[i] - mx);
  const int top = static_cast<int>(std::max_element(l, l + n) - l);
  EXPECT_EQ(lines[2]["top"][0]["index"].get<int>(), top);
  EXPECT_NEAR(lines[2]["top"][0]["prob"].get<double>(), 1.0 / sum, 1e-5);

  // the text output lists the same classes
  std::string text;
  ASSERT_EQ(run_command(cli("classify --topk 2" + model_args() + " " + q(fixture("images/coffee.png"))), &text), 0);
  EXPECT_NE(text.find("coffee.png"), std::string::npos) << text;
  EXPECT_NE(text.find("  1. "), std::string::npos) << text;
  EXPECT_NE(text.find("  2. "), std::string::npos) << text;
}

TEST(CliClassify, BrokenImageInABatch) {
  MAMBACV_REQUIRE_FIXTURES();
  const fs::path dir = temp_dir("cli_classify_broken");
  fs::copy_file(fixture("images/chelsea.png"), dir / "a_good.png");
  std::ofstream(dir / "b_broken.png") << "garbage, not a PNG at all";
  fs::copy_file(fixture("images/coffee_small.jpg"), dir / "c_good.jpg");
  int rc = -1;
  const std::string out = stdout_of(cli("classify --json --topk 2" + model_args() + " " + q(dir.string())), &rc);
  EXPECT_NE(rc, 0) << "a failed image makes the exit status non-zero\n" << out;
  const auto lines = json_lines(out);
  ASSERT_EQ(lines.size(), 3u) << out;
  EXPECT_EQ(lines[0]["image"].get<std::string>(), (dir / "a_good.png").string());
  expect_valid_top(lines[0], 2);
  EXPECT_EQ(lines[1]["image"].get<std::string>(), (dir / "b_broken.png").string());
  ASSERT_TRUE(lines[1].contains("error")) << lines[1].dump();
  EXPECT_FALSE(lines[1].contains("top"));
  EXPECT_NE(lines[1]["error"].get<std::string>().find((dir / "b_broken.png").string()), std::string::npos)
      << "the error names the path: " << lines[1].dump();
  expect_valid_top(lines[2], 2);

  // a missing file is an error of that image, not of the run
  const auto lines2 = json_lines(stdout_of(cli("classify --json" + model_args() + " " +
                                               q((dir / "a_good.png").string()) + " " +
                                               q((dir / "missing.png").string())),
                                           &rc));
  EXPECT_NE(rc, 0);
  ASSERT_EQ(lines2.size(), 2u);
  expect_valid_top(lines2[0], 5);
  EXPECT_NE(lines2[1]["error"].get<std::string>().find("missing.png"), std::string::npos) << lines2[1].dump();

  // text mode: the failure is reported on stderr naming the file
  std::string text;
  EXPECT_NE(run_command(cli("classify" + model_args() + " " + q(dir.string())), &text), 0);
  EXPECT_NE(text.find("b_broken.png"), std::string::npos) << text;
}

// A file name that is not UTF-8 is written with U+FFFD in the JSON output; the other images are unaffected.
TEST(CliClassify, NonUtf8FileNameInJson) {
  MAMBACV_REQUIRE_FIXTURES();
  const fs::path dir = temp_dir("cli_classify_non_utf8");
  const fs::path odd = dir / "caf\xe9_\xff.png";  // Latin-1 bytes
  fs::copy_file(fixture("images/chelsea.png"), odd);
  fs::copy_file(fixture("images/coffee_small.jpg"), dir / "z_good.jpg");
  int rc = -1;
  const std::string out = stdout_of(cli("classify --json --topk 2" + model_args() + " " + q(dir.string())), &rc);
  EXPECT_EQ(rc, 0) << out;
  const auto lines = json_lines(out);
  ASSERT_EQ(lines.size(), 2u) << out;
  EXPECT_EQ(lines[0]["image"].get<std::string>(), (dir / "caf\xef\xbf\xbd_\xef\xbf\xbd.png").string());
  expect_valid_top(lines[0], 2);
  expect_valid_top(lines[1], 2);
  const std::string feats = (dir / "f.safetensors").string();
  std::string text;
  EXPECT_EQ(run_command(cli("features" + model_args() + " " + q(odd.string()) + " -o " + q(feats)), &text), 0) << text;
  const mambacv::WeightFile f = mambacv::load_safetensors(feats);
  EXPECT_NE(f.metadata.at("images").find("caf\xef\xbf\xbd"), std::string::npos) << f.metadata.at("images");
}

// NaN in the weights: every image is reported as failed (exit 1), never printed as "nan%".
TEST(CliClassify, NonFiniteLogitsAreAnError) {
  MAMBACV_REQUIRE_FIXTURES();
  const fs::path dir = temp_dir("cli_classify_nan");
  mambacv::TensorMap w = mambacv::load_safetensors(fixture("vim_mini.weights.safetensors")).tensors;
  mambacv::Tensor bias = w.at("head.bias").to(mambacv::DType::F32, /*copy=*/true);
  bias.f32()[3] = std::numeric_limits<float>::quiet_NaN();
  w["head.bias"] = bias;
  const std::string weights = (dir / "nan.safetensors").string();
  mambacv::save_safetensors(weights, w);
  int rc = -1;
  const std::string out =
      stdout_of(cli("classify --json --model " + q(fixture("vim_mini.json")) + " --weights " + q(weights) + " " +
                    q(fixture("images/chelsea.png"))),
                &rc);
  EXPECT_EQ(rc, 1) << out;
  const auto lines = json_lines(out);
  ASSERT_EQ(lines.size(), 1u) << out;
  ASSERT_TRUE(lines[0].contains("error")) << out;
  EXPECT_NE(lines[0]["error"].get<std::string>().find("not finite"), std::string::npos) << out;
  EXPECT_EQ(out.find("nan"), std::string::npos) << out;
  // features: a NaN early in the network is reported per image, and nothing is written for it
  mambacv::Tensor pb = w.at("patch_embed.proj.bias").to(mambacv::DType::F32, /*copy=*/true);
  pb.f32()[0] = std::numeric_limits<float>::quiet_NaN();
  w["patch_embed.proj.bias"] = pb;
  mambacv::save_safetensors(weights, w);
  std::string text;
  EXPECT_EQ(run_command(cli("features --model " + q(fixture("vim_mini.json")) + " --weights " + q(weights) + " " +
                            q(fixture("images/chelsea.png")) + " -o " + q((dir / "f.safetensors").string())),
                        &text),
            1)
      << text;
  EXPECT_NE(text.find("not finite"), std::string::npos) << text;
  EXPECT_NE(text.find("chelsea.png"), std::string::npos) << text;
}

TEST(CliClassify, RecursiveFoldersAndListFiles) {
  MAMBACV_REQUIRE_FIXTURES();
  const fs::path dir = temp_dir("cli_classify_inputs");
  fs::create_directories(dir / "tree" / "x" / "y");
  fs::copy_file(fixture("images/chelsea.png"), dir / "tree" / "top.png");
  fs::copy_file(fixture("images/coffee.png"), dir / "tree" / "x" / "y" / "deep.png");
  std::ofstream(dir / "tree" / "x" / "readme.txt") << "not an image";
  int rc = -1;
  auto lines = json_lines(stdout_of(cli("classify --json --topk 1" + model_args() + " " + q((dir / "tree").string())),
                                    &rc));
  EXPECT_EQ(rc, 0);
  ASSERT_EQ(lines.size(), 2u);
  std::set<std::string> names;
  for (const auto& j : lines) {
    expect_valid_top(j, 1);
    names.insert(fs::path(j["image"].get<std::string>()).filename().string());
  }
  EXPECT_EQ(names, (std::set<std::string>{"top.png", "deep.png"}));

  // @list.txt: one path per line, relative paths taken from the list's folder, blank lines skipped
  fs::create_directories(dir / "lists");
  fs::copy_file(fixture("images/coffee_small.jpg"), dir / "lists" / "rel.jpg");
  std::ofstream(dir / "lists" / "inputs.txt") << "rel.jpg\n\n" << fixture("images/chelsea_gray.png") << "\n";
  lines = json_lines(stdout_of(cli("classify --json --topk 1" + model_args() + " " +
                                   q("@" + (dir / "lists" / "inputs.txt").string()) + " " +
                                   q(fixture("images/coffee.png"))),
                               &rc));
  EXPECT_EQ(rc, 0);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(fs::path(lines[0]["image"].get<std::string>()).filename().string(), "rel.jpg");
  EXPECT_EQ(fs::path(lines[1]["image"].get<std::string>()).filename().string(), "chelsea_gray.png");
  EXPECT_EQ(fs::path(lines[2]["image"].get<std::string>()).filename().string(), "coffee.png");
  for (const auto& j : lines) expect_valid_top(j, 1);

  // an unreadable @list is an error of the run
  std::string out;
  EXPECT_NE(run_command(cli("classify --json" + model_args() + " " + q("@" + (dir / "nope.txt").string())), &out), 0);
  EXPECT_NE(out.find("nope.txt"), std::string::npos) << out;
}

// ---- features ------------------------------------------------------------------------------------------------------

TEST(CliFeatures, MapsAndPooledVectorsMatchTheApi) {
  MAMBACV_REQUIRE_FIXTURES();
  const fs::path dir = temp_dir("cli_features");
  const std::string maps = (dir / "maps.safetensors").string(), pooled = (dir / "pooled.safetensors").string();
  const std::vector<std::string> images = {fixture("images/chelsea.png"), fixture("images/coffee_small.jpg")};
  std::string inputs;
  for (const auto& p : images) inputs += " " + q(p);
  std::string out;
  ASSERT_EQ(run_command(cli("features" + model_args() + inputs + " -o " + q(maps)), &out), 0) << out;
  ASSERT_EQ(run_command(cli("features --pool" + model_args() + inputs + " --output " + q(pooled)), &out), 0) << out;

  const mambacv::Model model =
      mambacv::Model::load(fixture("vim_mini.json"), fixture("vim_mini.weights.safetensors"));
  const mambacv::WeightFile fm = mambacv::load_safetensors(maps), fp = mambacv::load_safetensors(pooled);
  EXPECT_EQ(fm.metadata.at("pooled"), "false");
  EXPECT_EQ(fp.metadata.at("pooled"), "true");
  const auto listed = nlohmann::json::parse(fm.metadata.at("images"));
  ASSERT_EQ(listed.size(), images.size());
  size_t expected_tensors = 0;
  for (size_t i = 0; i < images.size(); ++i) {
    EXPECT_EQ(listed[i].get<std::string>(), images[i]);
    const auto ref = model.features(mambacv::preprocess(mambacv::load_image(images[i]), model.input_spec()));
    ASSERT_TRUE(ref.count("cls"));
    expected_tensors += ref.size();
    for (const auto& [name, t] : ref) {
      const std::string key = std::to_string(i) + "/" + name;
      SCOPED_TRACE(key);
      ASSERT_TRUE(fm.tensors.count(key)) << "missing " << key;
      ASSERT_TRUE(fp.tensors.count(key)) << "missing " << key;
      // per-image maps: the batch dimension dropped
      const mambacv::Shape one(t.shape().begin() + 1, t.shape().end());
      const mambacv::Tensor got = fm.tensors.at(key).to(mambacv::DType::F32);
      ASSERT_EQ(got.shape(), one);
      const mambacv::Tensor want = t.reshape(one);
      EXPECT_LE(mambacv::compare(got, want).rel_l2, 1e-5);
      // pooled: the global average of a map, the vector itself otherwise
      const int64_t C = one[0], hw = mambacv::shape_numel(one) / C;
      mambacv::Tensor avg = mambacv::Tensor::empty({C});
      for (int64_t c = 0; c < C; ++c) {
        double s = 0;
        for (int64_t k = 0; k < hw; ++k) s += want.f32()[c * hw + k];
        avg.f32()[c] = static_cast<float>(s / static_cast<double>(hw));
      }
      const mambacv::Tensor gp = fp.tensors.at(key).to(mambacv::DType::F32);
      ASSERT_EQ(gp.shape(), mambacv::Shape{C});
      EXPECT_LE(mambacv::compare(gp, avg).rel_l2, 1e-5);
    }
  }
  EXPECT_EQ(fm.tensors.size(), expected_tensors);
  EXPECT_EQ(fp.tensors.size(), expected_tensors);

  // a broken image: reported in the metadata, the others written, non-zero exit
  std::ofstream(dir / "broken.png") << "garbage";
  const std::string partial = (dir / "partial.safetensors").string();
  EXPECT_NE(run_command(cli("features --pool" + model_args() + " " + q((dir / "broken.png").string()) + " " +
                            q(images[0]) + " -o " + q(partial)),
                        &out),
            0);
  const mambacv::WeightFile fb = mambacv::load_safetensors(partial);
  EXPECT_NE(fb.metadata.at("errors").find("broken.png"), std::string::npos);
  EXPECT_EQ(nlohmann::json::parse(fb.metadata.at("images")).size(), 1u);
  EXPECT_TRUE(fb.tensors.count("0/cls"));
}

// ---- bench ---------------------------------------------------------------------------------------------------------

TEST(CliBench, JsonLinesWithEveryField) {
  MAMBACV_REQUIRE_FIXTURES();
  int rc = -1;
  const std::string out =
      stdout_of(cli("bench --json --iters 1 --warmup 0 --batch 1,2 --model " + q(fixture("vim_mini.json"))), &rc);
  ASSERT_EQ(rc, 0) << out;
  auto lines = json_lines(out);
  ASSERT_EQ(lines.size(), 3u) << out;
  // first the machine: CPU, the ISA of each kernel family, the measured FMA peak and GEMM rate
  const auto machine = lines[0].at("machine");
  for (const char* key : {"cpu", "cpu_features", "threads", "isa", "fma_peak_gflops", "gemm_gflops"})
    EXPECT_TRUE(machine.contains(key)) << key << " missing in " << machine.dump();
  EXPECT_GT(machine["fma_peak_gflops"].get<double>(), 0.0);
  EXPECT_TRUE(machine["isa"].contains("gemm") && machine["isa"].contains("selective_scan"));
  lines.erase(lines.begin());
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto& j = lines[i];
    for (const char* key : {"model", "device", "dtype", "batch", "size", "threads", "median_ms", "min_ms", "max_ms",
                            "images_per_s", "peak_rss_mb", "fma_peak_gflops", "gemm_gflops", "model_gflop",
                            "peak_fraction"})
      EXPECT_TRUE(j.contains(key)) << key << " missing in " << j.dump();
    EXPECT_EQ(j["batch"].get<int>(), static_cast<int>(i) + 1);
    EXPECT_EQ(j["size"].get<int>(), 64);
    EXPECT_EQ(j["device"].get<std::string>(), "cpu");
    EXPECT_EQ(j["dtype"].get<std::string>(), "f32");
    EXPECT_GE(j["threads"].get<int>(), 1);
    EXPECT_GT(j["model_gflop"].get<double>(), 0.0) << "the ops report no FLOPs";
    EXPECT_GT(j["gemm_gflops"].get<double>(), 0.0);
    EXPECT_GT(j["images_per_s"].get<double>(), 0.0);
    EXPECT_LE(j["min_ms"].get<double>(), j["median_ms"].get<double>());
    EXPECT_LE(j["median_ms"].get<double>(), j["max_ms"].get<double>());
  }
  EXPECT_EQ(lines[0]["model_gflop"], lines[1]["model_gflop"]) << "FLOPs are per image";
  // the fraction is of the FMA peak of the same run: the higher of the measurements bracketing the batch's runs,
  // the first batch's "before" being the machine line's
  for (const auto& j : lines) {
    EXPECT_NEAR(j["peak_fraction"].get<double>(),
                j["achieved_gflops"].get<double>() / j["fma_peak_gflops"].get<double>(), 1e-9);
    EXPECT_GT(j["fma_peak_after_gflops"].get<double>(), 0.0);
    EXPECT_EQ(j["fma_peak_gflops"].get<double>(),
              std::max(j["fma_peak_before_gflops"].get<double>(), j["fma_peak_after_gflops"].get<double>()));
  }
  EXPECT_EQ(lines[0]["fma_peak_before_gflops"].get<double>(), machine["fma_peak_gflops"].get<double>());
}

TEST(CliBench, PerOpTableAndGemmShapes) {
  MAMBACV_REQUIRE_FIXTURES();
  int rc = -1;
  std::string out = stdout_of(
      cli("bench --json --per-op --iters 1 --warmup 0 --batch 1 --threads 2 --model " + q(fixture("vmamba_v2_mini.json"))),
      &rc);
  ASSERT_EQ(rc, 0) << out;
  auto lines = json_lines(out);
  ASSERT_EQ(lines.size(), 2u) << out;
  const auto& rows = lines[1].at("per_op");
  ASSERT_GT(rows.size(), 5u);
  double gflop = 0;
  std::set<std::string> ops;
  double ms = 0, floor_ms = 0;
  for (const auto& r : rows) {
    for (const char* key : {"stage", "op", "calls", "ms", "gflop", "mbytes", "gflops", "floor_ms"})
      EXPECT_TRUE(r.contains(key));
    gflop += r["gflop"].get<double>();
    ms += r["ms"].get<double>();
    floor_ms += r["floor_ms"].get<double>();
    // a row's floor is at least its FLOPs at the FMA peak
    EXPECT_GE(r["floor_ms"].get<double>() * (1 + 1e-9),
              r["gflop"].get<double>() / lines[1]["fma_peak_gflops"].get<double>() * 1e3) << r.dump();
    ops.insert(r["op"].get<std::string>());
  }
  EXPECT_NEAR(gflop, lines[1]["model_gflop"].get<double>(), 1e-6 * gflop) << "the trace sees every op's FLOPs";
  // the profile against its rows' floors; the GEMM rate (below the FMA peak) only raises the floor
  const auto& fl = lines[1].at("floor");
  EXPECT_NEAR(fl["ops_ms"].get<double>(), ms, 1e-6 * ms);
  EXPECT_NEAR(fl["floor_ms"].get<double>(), floor_ms, 1e-6 * floor_ms);
  EXPECT_GT(fl["floor_ms"].get<double>(), 0.0);
  EXPECT_GE(fl["gemm_rate_floor_ms"].get<double>(), fl["floor_ms"].get<double>());
  EXPECT_NEAR(fl["floor_peak_fraction"].get<double>(),
              lines[1]["model_gflop"].get<double>() / (fl["floor_ms"].get<double>() / 1e3) /
                  lines[1]["fma_peak_gflops"].get<double>(), 1e-6);
  // the scan against its bound (exp throughput or memory bandwidth)
  const auto& sb = lines[1].at("scan_bound");
  EXPECT_GT(sb["exps"].get<double>(), 0.0);
  EXPECT_GT(sb["exp_rate_g_per_s"].get<double>(), 0.0);
  EXPECT_GT(sb["bandwidth_gbs"].get<double>(), 0.0);
  EXPECT_NEAR(sb["of_bound"].get<double>(),
              sb["scan_ms"].get<double>() /
                  std::max(sb["exp_bound_ms"].get<double>(), sb["memory_bound_ms"].get<double>()), 1e-9);
  EXPECT_TRUE(ops.count("gemm") && ops.count("selective_scan") && ops.count("depthwise_conv2d")) << out;
  // the text table names the stages
  out = stdout_of(cli("bench --per-op --iters 1 --warmup 0 --batch 1 --model " + q(fixture("vim_mini.json"))), &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("per op"), std::string::npos) << out;
  EXPECT_NE(out.find("selective_scan"), std::string::npos) << out;
  EXPECT_NE(out.find("FMA peak"), std::string::npos) << out;
  EXPECT_NE(out.find("floor (every op at its roofline"), std::string::npos) << out;
  // bench --gemm: the GEMM alone on the models' shapes
  out = stdout_of(cli("bench --gemm --json --threads 1"), &rc);
  ASSERT_EQ(rc, 0) << out;
  lines = json_lines(out);
  ASSERT_GE(lines.size(), 5u) << out;
  for (const auto& j : lines) EXPECT_GT(j["gflops"].get<double>(), 0.0) << j.dump();
}

// bench --suite checks its files before any timing
TEST(CliBench, SuiteRefusesBadFilesBeforeTiming) {
  expect_one_line_error("bench --suite --upstream " + q("no/such/times.json"), "no/such/times.json");
  const std::string bad = temp_dir("suite") + "/upstream_bad.json";
  std::ofstream(bad) << R"({"vim_tiny": "fast"})";
  expect_one_line_error("bench --suite --upstream " + q(bad), "'vim_tiny': expected a positive number of ms");
  expect_one_line_error("bench --suite --save " + q("no/such/dir/report"), "no/such/dir/report.md");
}

// ---- info ----------------------------------------------------------------------------------------------------------

TEST(CliInfo, ParametersFlopsShapesAndWeightMismatch) {
  MAMBACV_REQUIRE_FIXTURES();
  std::string out;
  ASSERT_EQ(run_command(cli("info" + model_args()), &out), 0) << out;
  EXPECT_NE(out.find("parameters  214154"), std::string::npos) << out;  // vim_mini
  EXPECT_NE(out.find("FLOPs"), std::string::npos) << out;
  EXPECT_EQ(out.find("FLOPs       0.000 GFLOP"), std::string::npos) << "the ops report no FLOPs\n" << out;
  EXPECT_NE(out.find("logits"), std::string::npos) << out;
  EXPECT_NE(out.find("(1, 10)"), std::string::npos) << out;
  EXPECT_NE(out.find("(1, 64)"), std::string::npos) << out;  // cls
  EXPECT_NE(out.find("match       all"), std::string::npos) << out;

  // the weights of another model: non-zero, every missing tensor named
  EXPECT_NE(run_command(cli("info --model " + q(fixture("vim_mini.json")) + " --weights " +
                            q(fixture("vmamba_v0_mini.weights.safetensors"))),
                        &out),
            0);
  EXPECT_NE(out.find("missing"), std::string::npos) << out;
  for (const char* name : {"cls_token", "patch_embed.proj.weight", "layers.3.mixer.in_proj.weight", "head.weight"})
    EXPECT_NE(out.find(name), std::string::npos) << name << "\n" << out;
}

// ---- argument errors -----------------------------------------------------------------------------------------------

TEST(CliArgs, UnknownOptionsAndMissingModel) {
  MAMBACV_REQUIRE_FIXTURES();
  for (const char* cmd : {"classify", "features", "bench", "info"}) {
    SCOPED_TRACE(cmd);
    expect_one_line_error(std::string(cmd) + " --model " + q(fixture("vim_mini.json")) + " --no-such-option 3",
                          "--no-such-option");
  }
  expect_one_line_error("classify --weights " + q(fixture("vim_mini.weights.safetensors")) + " " +
                            q(fixture("images/chelsea.png")),
                        "--model");
  expect_one_line_error("features --weights x -o y.safetensors img.png", "--model");
  expect_one_line_error("bench --json", "--model");
  expect_one_line_error("info", "--model");
  expect_one_line_error("classify" + model_args(), "INPUT");
  expect_one_line_error("classify --topk 0" + model_args() + " x.png", "--topk");

  std::string out;
  EXPECT_NE(run_command(cli("no-such-command"), &out), 0);
  EXPECT_NE(out.find("no-such-command"), std::string::npos) << out;
  EXPECT_EQ(run_command(cli("--help"), &out), 0);
  EXPECT_NE(out.find("classify"), std::string::npos);
  for (const char* cmd : {"classify", "features", "bench", "info", "verify"}) {
    EXPECT_EQ(run_command(cli(std::string(cmd) + " --help"), &out), 0) << cmd;
    EXPECT_NE(out.find("usage"), std::string::npos) << cmd << "\n" << out;
  }
}
