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
  MAMBACV_REQUIRE_FIXTURES();
  const std::string cfg = test::fixture("vim_mini.json"), w = test::fixture("vim_mini.weights.safetensors");
  Options o1, o3;
  o1.threads = 1;
  o3.threads = 3;
  Model m1 = Model::load(cfg, w, o1), m3 = Model::load(cfg, w, o3);
  Tensor x = test::random_tensor({4, 3, 32, 32}, 5);
  const int main_before = omp_get_max_threads();
  const Tensor ref = m3.classify(x);
  EXPECT_EQ(omp_get_max_threads(), main_before);  // a call leaves the calling thread's OpenMP setting alone
  std::atomic<int> team1{0}, team3{0}, changed{0};
  std::vector<std::thread> th;
  for (int t = 0; t < 2; ++t) {
    th.emplace_back([&] {
      const int before = omp_get_max_threads();
      for (int i = 0; i < 3; ++i) team1 = std::max(team1.load(), max_team(m1.profile(x)));
      changed += omp_get_max_threads() != before;
    });
    th.emplace_back([&] {
      const int before = omp_get_max_threads();
      for (int i = 0; i < 3; ++i) {
        team3 = std::max(team3.load(), max_team(m3.profile(x)));
        EXPECT_LE(compare(m3.classify(x), ref).rel_l2, 1e-6);
      }
      changed += omp_get_max_threads() != before;
    });
  }
  for (auto& t : th) t.join();
  EXPECT_EQ(team1.load(), 1);
  EXPECT_EQ(team3.load(), 3);
  EXPECT_EQ(changed.load(), 0) << "a model call changed its thread's OpenMP thread count";
  // a one-thread model gives the same logits (up to summation order)
  EXPECT_LE(compare(m1.classify(x), ref).rel_l2, 1e-5);
}

TEST(Context, AbsurdBudgetsAreRefused) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string cfg = test::fixture("vim_mini.json"), w = test::fixture("vim_mini.weights.safetensors");
  for (int t : {-1, 5000}) {
    Options o;
    o.threads = t;
    try {
      Model::load(cfg, w, o);
      ADD_FAILURE() << "threads " << t << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--threads"), std::string::npos) << e.what();
    }
  }
}

TEST(Context, ProfileAddsUpToTheFlopCount) {
  MAMBACV_REQUIRE_FIXTURES();
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

// The traced GEMM FLOPs of Vim equal 2 x rows x N x K summed over every product, counted here from the config:
// per layer in_proj (2E, D), x_proj (R+2N, E) and dt_proj (E, R) for both directions, out_proj (D, E) over the T
// tokens; the patch embedding over the M patches; the head over the batch.
TEST(Context, TracedGemmFlopsMatchTheArchitecture) {
  MAMBACV_REQUIRE_FIXTURES();
  Model m = Model::load(test::fixture("vim_mini.json"), test::fixture("vim_mini.weights.safetensors"));
  const int64_t Bn = 2, D = 64, E = 128, N = 16, R = 4, depth = 4, classes = 10, M = 16, T = M + 1, P = 16 * 16 * 3;
  const double per_layer = 2.0 * T * (2 * E * D + 2 * (R + 2 * N) * E + 2 * E * R + D * E);
  const double expect = Bn * (depth * per_layer + 2.0 * M * D * P + 2.0 * classes * D);
  double gemm = 0;
  for (const OpStat& o : m.profile(test::random_tensor({Bn, 3, 64, 64}, 3)))
    if (o.op == std::string("gemm")) gemm += o.flops;
  EXPECT_NEAR(gemm, expect, 1e-9 * expect);
  // the scan's exp evaluations: per layer, both directions, every (token, channel): N states + softplus + the z gate
  double exps = 0;
  for (const OpStat& o : m.profile(test::random_tensor({Bn, 3, 64, 64}, 3))) {
    if (o.op == std::string("selective_scan")) exps += o.exps;
    else EXPECT_EQ(o.exps, 0.0) << o.op;
  }
  EXPECT_NEAR(exps, Bn * depth * 2.0 * T * E * (N + 2), 1e-9 * exps);
}

TEST(Context, ModelAllocatorBoundSetInCode) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string cfg = test::fixture("vmamba_v2_mini.json"), w = test::fixture("vmamba_v2_mini.weights.safetensors");
  const Tensor x = Tensor::zeros({2, 3, 96, 96});
  Options opt;
  opt.host_cache_mb = 64;  // this model's own cache
  Model own = Model::load(cfg, w, opt);
  own.classify(x);  // first call: per-shape constants
  host_cache_release();
  for (int i = 0; i < 3; ++i) own.classify(x);
  EXPECT_GT(own.cached_bytes(), 0u) << "the model's temporaries do not come from its allocator";
  EXPECT_LE(own.cached_bytes(), size_t{64} << 20);
  EXPECT_EQ(host_cache_idle_bytes(), 0u) << "temporaries went to the process default allocator";
  opt.host_cache_mb = 1;
  Model small = Model::load(cfg, w, opt);
  for (int i = 0; i < 3; ++i) small.classify(x);
  EXPECT_LE(small.cached_bytes(), size_t{1} << 20);
  opt.host_cache_mb = 0;
  Model none = Model::load(cfg, w, opt);
  none.classify(x);
  EXPECT_EQ(none.cached_bytes(), 0u);

  auto a = std::make_shared<HostAllocator>(size_t{64} << 20);
  { auto b1 = a->alloc(size_t{4} << 20), b2 = a->alloc(size_t{4} << 20); }
  EXPECT_GE(a->idle_bytes(), size_t{8} << 20);
  a->set_idle_limit(size_t{5} << 20);  // lowering the bound frees down to it at once
  EXPECT_LE(a->idle_bytes(), size_t{5} << 20);
  a->set_idle_limit(0);
  EXPECT_EQ(a->idle_bytes(), 0u);
  // a call's temporaries reuse a larger idle block (up to kMaxReuseFactor times their class); other requests
  // (weights, results) take only their own class, so they never pin a larger block
  a->set_idle_limit(size_t{64} << 20);
  void* big = nullptr;
  {
    auto b = a->alloc(size_t{4} << 20);
    big = b.get();
  }
  {
    auto w = a->alloc(size_t{2} << 20);
    EXPECT_NE(w.get(), big);
    auto t = a->alloc(size_t{2} << 20, /*short_lived=*/true);
    EXPECT_EQ(t.get(), big);
  }
  {
    auto too_small = a->alloc(HostAllocator::kMinCachedBytes, /*short_lived=*/true);  // 4 MiB is over 4x its class
    EXPECT_NE(too_small.get(), big);
  }
  {
    ExecContext ctx = ExecContext::cpu(1);
    ctx.alloc = a;
    Tensor t = ctx.empty({int64_t{3} << 18});  // 3 MiB of f32 temporaries: the idle 4 MiB block
    EXPECT_EQ(t.raw(), big);
  }
  HostAllocator on_stack(size_t{1} << 20);  // blocks keep their allocator alive: it must be shared-owned
  EXPECT_THROW(on_stack.alloc(1 << 20), Error);
}

// The detection request and result travel in the call (no thread-local state): prepared on this thread, the
// forward run on another, the per-image sizes honoured there, the result read back here.
TEST(Context, DetectionForwardOnAnotherThread) {
  MAMBACV_REQUIRE_FIXTURES();
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
  net->bind(tm, DType::F32);
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
