// The execution context: each call's thread budget is its own (parallel_for, models side by side with different
// budgets, nothing process-wide changed), per-model allocators with a bound set in code, the op trace (FLOPs per
// stage equal the model's FLOP count), and detection whose forward runs on another thread than the caller's.
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "kernels/context.h"
#include "kernels/host_allocator.h"
#include "mambacv/detection.h"
#include "mambacv/mambacv.h"
#include "test_util.h"
#include "vision/mask_rcnn.h"
#include "vision/network.h"

namespace mambacv {
namespace {

// The distinct OpenMP thread numbers parallel_for used, and the team size it reported.
std::set<int> threads_used(const ExecContext& ctx, int64_t n) {
  std::mutex m;
  std::set<int> ids;
  parallel_for(ctx, n, 1e9, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(m);
    ids.insert(omp_get_thread_num());
    // keep the team busy long enough for the two callers below to overlap
    volatile double s = 0;
    for (int i = 0; i < 200000; ++i) s = s + i;
  });
  return ids;
}

TEST(Context, ParallelForUsesTheCallsBudget) {
  EXPECT_EQ(threads_used(ExecContext::cpu(1), 64).size(), 1u);
  EXPECT_EQ(threads_used(ExecContext::cpu(3), 64).size(), 3u);
  EXPECT_EQ(threads_used(ExecContext::cpu(3), 2).size(), 2u);  // never more workers than items
  // small work runs on the calling thread
  std::set<int> ids;
  parallel_for(ExecContext::cpu(4), 100, 10.0, [&](int64_t b, int64_t e) {
    EXPECT_EQ(b, 0);
    EXPECT_EQ(e, 100);
    ids.insert(omp_get_thread_num());
  });
  EXPECT_EQ(ids.size(), 1u);
}

TEST(Context, ConcurrentCallsKeepTheirOwnBudgets) {
  const int before = omp_get_max_threads();
  for (int round = 0; round < 3; ++round) {
    auto one = std::async(std::launch::async, [] { return threads_used(ExecContext::cpu(1), 64).size(); });
    auto four = std::async(std::launch::async, [] { return threads_used(ExecContext::cpu(4), 64).size(); });
    EXPECT_EQ(one.get(), 1u);
    EXPECT_EQ(four.get(), 4u);
  }
  EXPECT_EQ(omp_get_max_threads(), before);
}

// Largest team any op of a traced forward pass ran with.
int max_team(const std::vector<OpStat>& ops) {
  int t = 0;
  for (const OpStat& o : ops) t = std::max(t, o.threads);
  return t;
}

TEST(Context, ModelsWithDifferentThreadBudgetsRunSideBySide) {
  const std::string cfg = test::fixture("vim_mini.json"), w = test::fixture("vim_mini.weights.safetensors");
  Options o1, o3;
  o1.threads = 1;
  o3.threads = 3;
  Model m1 = Model::load(cfg, w, o1), m3 = Model::load(cfg, w, o3);
  Tensor x = test::random_tensor({4, 3, 32, 32}, 5);
  const Tensor ref = m3.classify(x);
  const int before = omp_get_max_threads();
  std::atomic<int> team1{0}, team3{0};
  std::vector<std::thread> th;
  for (int t = 0; t < 2; ++t) {
    th.emplace_back([&] {
      for (int i = 0; i < 3; ++i) team1 = std::max(team1.load(), max_team(m1.profile(x)));
    });
    th.emplace_back([&] {
      for (int i = 0; i < 3; ++i) {
        team3 = std::max(team3.load(), max_team(m3.profile(x)));
        EXPECT_LE(compare(m3.classify(x), ref).rel_l2, 1e-6);
      }
    });
  }
  for (auto& t : th) t.join();
  EXPECT_EQ(team1.load(), 1);
  EXPECT_EQ(team3.load(), 3);
  EXPECT_EQ(omp_get_max_threads(), before);  // nothing process-wide was changed
  // a one-thread model gives the same logits (up to summation order)
  EXPECT_LE(compare(m1.classify(x), ref).rel_l2, 1e-5);
}

TEST(Context, ProfileAddsUpToTheFlopCount) {
  Model m = Model::load(test::fixture("vmamba_v2_mini.json"), test::fixture("vmamba_v2_mini.weights.safetensors"));
  const std::vector<OpStat> ops = m.profile(Tensor::zeros({1, 3, 64, 64}));
  double flops = 0;
  std::set<std::string> stages, names;
  for (const OpStat& o : ops) {
    flops += o.flops;
    stages.insert(o.stage);
    names.insert(o.op);
    EXPECT_GE(o.calls, 1);
    EXPECT_GE(o.seconds, 0.0);
  }
  EXPECT_NEAR(flops, m.flops_per_image(64, 64), 1e-6 * flops);
  EXPECT_TRUE(stages.count("patch_embed") && stages.count("stage.0") && stages.count("head"));
  EXPECT_TRUE(names.count("gemm") && names.count("selective_scan") && names.count("layer_norm"));
}

TEST(Context, ModelAllocatorBoundSetInCode) {
  Options opt;
  opt.host_cache_mb = 1;  // this model keeps at most 1 MiB idle
  Model m = Model::load(test::fixture("vmamba_v2_mini.json"), test::fixture("vmamba_v2_mini.weights.safetensors"), opt);
  for (int i = 0; i < 3; ++i) m.classify(Tensor::zeros({2, 3, 96, 96}));
  EXPECT_LE(m.cached_bytes(), size_t{1} << 20);
  opt.host_cache_mb = 0;
  Model none = Model::load(test::fixture("vmamba_v2_mini.json"), test::fixture("vmamba_v2_mini.weights.safetensors"),
                           opt);
  none.classify(Tensor::zeros({2, 3, 96, 96}));
  EXPECT_EQ(none.cached_bytes(), 0u);

  auto a = std::make_shared<HostAllocator>(size_t{64} << 20);
  { auto b1 = a->alloc(size_t{4} << 20), b2 = a->alloc(size_t{4} << 20); }
  EXPECT_GE(a->idle_bytes(), size_t{8} << 20);
  a->set_idle_limit(size_t{5} << 20);  // lowering the bound frees down to it at once
  EXPECT_LE(a->idle_bytes(), size_t{5} << 20);
  a->set_idle_limit(0);
  EXPECT_EQ(a->idle_bytes(), 0u);
}

// The detection request and result travel in the call (no thread-local state): prepared on this thread, the
// forward run on another, the per-image sizes honoured there, the result read back here.
TEST(Context, DetectionForwardOnAnotherThread) {
  const std::string cfg = test::fixture("det/maskrcnn_vmamba_mini.json");
  const std::string w = test::fixture("det/maskrcnn_vmamba_mini.weights.safetensors");
  Tensor x = load_safetensors(test::fixture("det/maskrcnn_vmamba_mini.golden.safetensors")).tensors.at("input");
  Detector det = Detector::load(cfg, w);
  DetectOptions opt;
  opt.score_thr = 0.0f;
  const DetectionResult here = det.detect(x, 250, 300, opt);
  ASSERT_GT(here.detections.size(), 0u);
  EXPECT_EQ(here.height, 250);
  EXPECT_EQ(here.width, 300);
  for (const Detection& d : here.detections) {
    EXPECT_LE(d.box[2], 300.0f);
    EXPECT_LE(d.box[3], 250.0f);
  }
  const DetectionResult there = std::async(std::launch::async, [&] { return det.detect(x, 250, 300, opt); }).get();
  ASSERT_EQ(there.detections.size(), here.detections.size());
  for (size_t i = 0; i < here.detections.size(); ++i) {
    EXPECT_EQ(there.detections[i].label, here.detections[i].label);
    EXPECT_EQ(there.detections[i].score, here.detections[i].score);
    EXPECT_EQ(there.detections[i].mask.counts, here.detections[i].mask.counts);
  }

  // the network interface itself: the call object built here, forward() on a worker thread
  ModelConfig mc = load_model_config(cfg);
  std::unique_ptr<detail::Network> net = detail::make_network(mc);
  WeightFile wf = load_weights(w);
  TensorMap tm;
  for (const auto& [n, t] : net->canonicalize(wf.tensors)) tm[n] = t.dtype() == DType::F32 ? t : t.to(DType::F32);
  net->bind(tm);
  detail::DetectionCall req;
  req.score_thr = 0.0f;
  req.images.push_back({250, 300, false, 250, 300, 1.0f, 1.0f});
  detail::ForwardCall call;
  call.x = x;
  call.wanted.names = {"*"};
  call.detection = &req;
  std::thread([&] { net->forward(ExecContext::cpu(2), call); }).join();
  ASSERT_EQ(req.out.size(), 1u);
  EXPECT_EQ(req.out[0].out_h, 250);
  EXPECT_EQ(req.out[0].out_w, 300);
  ASSERT_EQ(req.out[0].dets.size(), static_cast<int64_t>(here.detections.size()));
  for (int64_t i = 0; i < req.out[0].dets.size(); ++i)
    EXPECT_EQ(req.out[0].dets.scores.f32()[i], here.detections[static_cast<size_t>(i)].score);
}

}  // namespace
}  // namespace mambacv
