// Hostile configs and shapes: every one is a mambacv::Error naming the key (or the shape) before anything large is
// allocated, never a crash, a wrapped size or minutes of work.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <nlohmann/json.hpp>

#include "kernels/host_allocator.h"
#include "mambacv/detection.h"
#include "mambacv/mambacv.h"
#include "mambacv/weights.h"
#include "sanitizer.h"
#include "test_util.h"

using namespace mambacv;

namespace {

// The shipped config `name` with its "config" object edited.
ModelConfig edited(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  ModelConfig cfg = load_model_config(name);
  nlohmann::json j = nlohmann::json::parse(cfg.json);
  edit(j);
  cfg.json = j.dump();
  return cfg;
}

// Model::random on the edited config throws an Error whose message holds every word, within a second.
void expect_refused(const std::string& name, const std::function<void(nlohmann::json&)>& edit,
                    const std::vector<std::string>& words) {
  const ModelConfig cfg = edited(name, edit);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    Model::random(cfg);
    ADD_FAILURE() << name << " " << cfg.json << ": expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& w : words) EXPECT_NE(msg.find(w), std::string::npos) << msg;
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0) << cfg.json;
}

}  // namespace

TEST(HostileConfig, VimSizesOutOfBounds) {
  const double two62 = 4611686018427387904.0;
  expect_refused("vim_tiny", [&](nlohmann::json& j) { j["embed_dim"] = int64_t{1} << 62; }, {"embed_dim", "must be in"});
  expect_refused("vim_tiny", [&](nlohmann::json& j) { j["patch_size"] = int64_t{1} << 62; }, {"patch_size"});
  expect_refused("vim_tiny", [](nlohmann::json& j) { j["depth"] = 1e7; }, {"depth", "[1, 256]"});
  expect_refused("vim_tiny", [](nlohmann::json& j) { j["embed_dim"] = 1e30; }, {"embed_dim", "integer"});
  expect_refused("vim_tiny", [&](nlohmann::json& j) { j["img_size"] = two62; }, {"img_size"});
  expect_refused("vim_tiny", [](nlohmann::json& j) { j["norm_epsilon"] = -1e-5; }, {"norm_epsilon"});
  expect_refused("vim_tiny", [](nlohmann::json& j) { j["num_classes"] = -3; }, {"num_classes"});
  expect_refused("vim_tiny", [](nlohmann::json& j) { j["d_state"] = 0; }, {"d_state"});
  expect_refused("vim_tiny", [](nlohmann::json& j) { j["d_state"] = 18446744073709551615ull; }, {"d_state"});
}

TEST(HostileConfig, VMambaSizesOutOfBounds) {
  expect_refused("vmamba_tiny_s1l8", [](nlohmann::json& j) { j["ssm_ratio"] = 1e-9; }, {"ssm_ratio", "width of 0"});
  expect_refused("vmamba_tiny_s1l8", [](nlohmann::json& j) { j["ssm_ratio"] = 1e30; }, {"ssm_ratio"});
  expect_refused("vmamba_tiny_s1l8", [](nlohmann::json& j) { j["mlp_ratio"] = 1e30; }, {"mlp_ratio"});
  expect_refused("vmamba_tiny_s1l8", [](nlohmann::json& j) { j["mlp_ratio"] = 1e-9; }, {"mlp_ratio", "width of 0"});
  expect_refused("vmamba_tiny_s1l8", [](nlohmann::json& j) { j["depths"] = {1000000000, 2, 2, 2}; }, {"depths"});
  expect_refused("vmamba_tiny_s1l8", [](nlohmann::json& j) { j["dims"] = int64_t{1} << 62; }, {"dims"});
  expect_refused("vmamba_tiny_s1l8", [](nlohmann::json& j) { j["dims"] = 16384; }, {"dims"});  // 16384 << 3
  expect_refused("vmamba_tiny_s1l8", [](nlohmann::json& j) { j["ssm_d_state"] = 100000; }, {"ssm_d_state"});
  expect_refused("vmamba_tiny_s1l8", [](nlohmann::json& j) { j["ssm_dt_rank"] = int64_t{1} << 40; }, {"ssm_dt_rank"});
  expect_refused("vmamba_tiny_s1l8", [](nlohmann::json& j) { j["patch_size"] = 1 << 20; }, {"patch_size"});
}

TEST(HostileConfig, WithinBoundsButTooManyParameters) {
  // every size is within its own bound, the total is not: refused before the weights are allocated
  expect_refused("vim_tiny", [](nlohmann::json& j) { j["embed_dim"] = 8192, j["depth"] = 256; },
                 {"parameters", "limit"});
}

TEST(HostileConfig, UnknownKeysAreNamed) {
  expect_refused("vim_tiny", [](nlohmann::json& j) { j["embed_dims"] = 192; }, {"unknown Vim config key", "embed_dims"});
  expect_refused("vim_tiny", [](nlohmann::json& j) { j["init_layer_scale"] = 1e-5; }, {"init_layer_scale"});
  expect_refused("vmamba_tiny_s1l8", [](nlohmann::json& j) { j["ssm_ration"] = 2.0; }, {"unknown", "ssm_ration"});
}

TEST(HostileShape, OverflowingShapesAreErrors) {
  const int64_t big = int64_t{1} << 62;
  EXPECT_THROW(shape_numel({big, 16}), Error);
  EXPECT_THROW(Tensor::empty({big, 16}), Error);
  EXPECT_THROW(Tensor::empty({int64_t{1} << 59}), Error);  // 2^61 bytes of f32
  try {
    Tensor::empty({big, 3, 16, 16});
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2^63"), std::string::npos) << e.what();
  }
  EXPECT_EQ(shape_numel({int64_t{1} << 31, int64_t{1} << 31}), int64_t{1} << 62);  // large but representable
}

// A FIFO given as the weight file is refused at once: opening it must not wait for a writer.
TEST(HostileFile, FifoAsWeightsIsRefusedWithoutHanging) {
  const std::string dir = test::temp_dir("fifo");
  const std::string fifo = dir + "/weights.safetensors";
  std::remove(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto result = std::async(std::launch::async, [&]() -> std::string {
    try {
      load_weights(fifo);
      return "no error";
    } catch (const Error& e) {
      return e.what();
    }
  });
  if (result.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);  // release the blocked reader, then fail
    if (fd >= 0) ::close(fd);
    result.wait();
    FAIL() << "load_weights blocked on a FIFO";
  }
  const std::string msg = result.get();
  EXPECT_NE(msg.find("not a regular file"), std::string::npos) << msg;
  EXPECT_NE(msg.find(fifo), std::string::npos) << msg;
  std::remove(fifo.c_str());
}

// The allocator failing at the k-th allocation, for every k a load and a forward make: each time a clean Error
// (never a crash or std::terminate from inside a parallel region), and the model loaded before keeps working.
TEST(HostileMemory, AllocationFailureAtEveryPointIsACleanError) {
  MAMBACV_REQUIRE_FIXTURES();
  for (const char* name : {"vim_mini", "vmamba_v2_mini"}) {
    SCOPED_TRACE(name);
    const std::string cfg = test::fixture(std::string(name) + ".json");
    const std::string w = test::fixture(std::string(name) + ".weights.safetensors");
    const Tensor x = test::random_tensor({2, 3, 64, 64}, 9);
    Model kept = Model::load(cfg, w);
    const Tensor want = kept.classify(x);
    const int64_t before = allocations_made();
    Model::load(cfg, w).classify(x);
    const int64_t total = allocations_made() - before;  // allocations of one load + forward
    ASSERT_GT(total, 10);
    int failures = 0;
    for (int64_t k = 1; k <= total; ++k) {
      arm_allocation_failure(k);
      try {
        Model m = Model::load(cfg, w);
        m.classify(x);
      } catch (const Error& e) {
        ++failures;
        EXPECT_NE(std::string(e.what()).find("out of memory"), std::string::npos) << "k=" << k << ": " << e.what();
      }
      arm_allocation_failure(0);
      if (k % 16 == 0 || k == total) {
        const Tensor again = kept.classify(x);
        ASSERT_EQ(compare(again, want).max_abs, 0.0) << "k=" << k;
      }
    }
    EXPECT_EQ(failures, total) << "every injected failure surfaces as an Error";
  }
}

// The same for the detector: load, backbone, FPN, RPN, RoI heads and mask paste.
TEST(HostileMemory, AllocationFailureInDetectionIsACleanError) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string cfg = test::fixture("det/maskrcnn_vmamba_mini.json");
  const std::string w = test::fixture("det/maskrcnn_vmamba_mini.weights.safetensors");
  const Tensor x = load_safetensors(test::fixture("det/maskrcnn_vmamba_mini.golden.safetensors")).tensors.at("input");
  DetectOptions opt;
  opt.score_thr = 0.0f;  // detections (and masks) even with the fixture's weights
  Detector kept = Detector::load(cfg, w);
  const size_t want = kept.detect(x, 250, 300, opt).detections.size();
  ASSERT_GT(want, 0u);
  const int64_t before = allocations_made();
  Detector::load(cfg, w).detect(x, 250, 300, opt);
  const int64_t total = allocations_made() - before;
  int failures = 0;
  // about 40 points spread over load and forward (8 under a sanitizer, where one detection takes seconds)
  const int64_t points = test::kUnderSanitizer ? 8 : 40;
  for (int64_t k = 1; k <= total; k += std::max<int64_t>(1, total / points)) {
    arm_allocation_failure(k);
    try {
      Detector d = Detector::load(cfg, w);
      d.detect(x, 250, 300, opt);
    } catch (const Error&) {
      ++failures;
    }
    arm_allocation_failure(0);
  }
  EXPECT_GT(failures, 0);
  EXPECT_EQ(kept.detect(x, 250, 300, opt).detections.size(), want);
}
