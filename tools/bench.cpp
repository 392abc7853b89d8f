// mambacv bench: latency / throughput of a model on this machine, beside the machine's measured GEMM rate.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "kernels/ops.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace mambacv::cli {

namespace {
const char* kBenchHelp =
    "usage: mambacv bench --model M [--weights W] [--batch 1,8,32] [--size 224] [--warmup N] [--iters N] [--json]\n"
    "                     [--device cpu|cuda] [--dtype f32|f16|bf16] [--core v0|v1] [--threads N]\n"
    "Times the forward pass (classification logits, or the backbone's features) on random inputs; random weights\n"
    "when --weights is not given. Per batch size: median/min/max latency, images/s, peak memory, and beside them\n"
    "the machine's measured fp32 GEMM rate and the model's real FLOPs (2 per multiply-add), so the achieved fraction\n"
    "of the machine's GEMM peak is printed too. --json prints one object per line per batch size.\n";

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}
}  // namespace

double measure_gemm_gflops(int threads) {
  if (threads > 0) ops::set_num_threads(threads);
  const int64_t n = 1024;
  std::vector<float> a(n * n), b(n * n), c(n * n);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1, 1);
  for (auto& v : a) v = d(rng);
  for (auto& v : b) v = d(rng);
  ops::gemm(n, n, n, a.data(), n, b.data(), n, true, c.data(), n);  // warm up
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    double t0 = now_s();
    ops::gemm(n, n, n, a.data(), n, b.data(), n, true, c.data(), n);
    best = std::min(best, now_s() - t0);
  }
  return 2.0 * n * n * n / best / 1e9;
}

Model load_or_random(const Args& args, const Options& opt) {
  MAMBACV_CHECK(args.has("model"), "--model is required (a name from configs/ or a config .json)");
  if (args.has("weights")) return Model::load(args.get("model"), args.get("weights"), opt);
  return Model::random(load_model_config(args.get("model")), opt, 1);
}

int cmd_bench(const std::vector<std::string>& argv) {
  std::set<std::string> valued = kModelOptions;
  valued.insert({"model", "weights", "batch", "size", "warmup", "iters"});
  Args args("bench", argv, valued, {"json", "help"});
  if (args.has("help")) {
    std::fputs(kBenchHelp, stdout);
    return 0;
  }
  MAMBACV_CHECK(args.positionals().empty(), "bench: unexpected argument '" << args.positionals()[0] << "'");
  Options opt = args.model_options();
  Model model = load_or_random(args, opt);
  const int size = args.get_int("size", model.input_size());
  const int warmup = args.get_int("warmup", 2);
  const int iters = args.get_int("iters", 10);
  MAMBACV_CHECK(size >= 16, "--size: expected at least 16 pixels, got " << size);
  MAMBACV_CHECK(warmup >= 0 && iters >= 1, "--warmup must be >= 0 and --iters >= 1");
  const std::vector<int> batches = args.get_int_list("batch", {1, 8, 32});
  const bool json = args.has("json");
  const int threads = opt.threads > 0 ? opt.threads : ops::num_threads();

  const double gemm = measure_gemm_gflops(opt.threads);
  const double gflop = model.flops_per_image(size, size) / 1e9;
  const std::string name = load_model_config(args.get("model")).name;
  if (!json) {
    std::printf("model %s  device %s  dtype %s  core %s  threads %d  size %d  weights %s\n", name.c_str(),
                device_name(opt.device), dtype_name(opt.dtype), core_name(opt.core), threads, size,
                args.has("weights") ? args.get("weights").c_str() : "random");
    std::printf("machine fp32 GEMM: %.1f GFLOP/s (%s, 1024^3)   model: %.3f GFLOP per image\n", gemm,
                ops::gemm_backend(), gflop);
    std::printf("%6s %10s %10s %10s %10s %10s %8s\n", "batch", "median_ms", "min_ms", "max_ms", "images/s",
                "peak_MB", "of_peak");
  }
  for (int b : batches) {
    Tensor x = Tensor::empty({b, 3, size, size});
    std::mt19937 rng(static_cast<unsigned>(b));
    std::normal_distribution<float> nd(0, 1);
    for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = nd(rng);
    auto run = [&] {
      if (model.num_classes() > 0)
        model.classify(x);
      else
        model.features(x);
    };
    for (int i = 0; i < warmup; ++i) run();
    std::vector<double> ms;
    for (int i = 0; i < iters; ++i) {
      double t0 = now_s();
      run();
      ms.push_back((now_s() - t0) * 1e3);
    }
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    size_t n = sorted.size();
    double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    double ips = b / (median / 1e3);
    double achieved = gflop * b / (median / 1e3);
    double frac = achieved / gemm;
    if (json) {
      nlohmann::ordered_json j = {{"model", name},        {"device", device_name(opt.device)},
                          {"dtype", dtype_name(opt.dtype)}, {"core", core_name(opt.core)},
                          {"batch", b},           {"size", size},
                          {"threads", threads},   {"median_ms", median},
                          {"min_ms", sorted.front()}, {"max_ms", sorted.back()},
                          {"images_per_s", ips},  {"peak_rss_mb", peak_rss_mb()},
                          {"gemm_gflops", gemm},  {"gemm_backend", ops::gemm_backend()},  {"model_gflop", gflop},
                          {"achieved_gflops", achieved}, {"peak_fraction", frac},
                          {"iters", iters},       {"warmup", warmup}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%6d %10.2f %10.2f %10.2f %10.2f %10.1f %7.1f%%\n", b, median, sorted.front(), sorted.back(), ips,
                  peak_rss_mb(), 100.0 * frac);
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace mambacv::cli
