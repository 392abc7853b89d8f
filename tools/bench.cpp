// mambacv bench: latency / throughput of a model on this machine, beside the machine's measured GEMM rate.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "kernels/cpu_info.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace mambacv::cli {

namespace {
const char* kBenchHelp =
    "usage: mambacv bench --model M [--weights W] [--batch 1,8,32] [--size 224] [--warmup N] [--iters N] [--json]\n"
    "                     [--per-op] [--device cpu|cuda] [--dtype f32|f16|bf16] [--core v0|v1] [--threads N]\n"
    "                     [--check-finite]\n"
    "Times the forward pass (classification logits, or the backbone's features) on random inputs; random weights\n"
    "when --weights is not given. Prints the CPU, the ISA each kernel family dispatched to, the machine's measured\n"
    "fp32 FMA peak (an FMA loop on all the threads) and the library GEMM's rate; then per batch size the median /\n"
    "min / max latency, images/s, peak memory and the model's real FLOPs (2 per multiply-add) as a fraction of the\n"
    "FMA peak. --per-op adds, per batch size, time / FLOPs / bytes per op type per stage of one traced pass, each\n"
    "row's roofline floor (FLOPs at the FMA peak or bytes at the copy bandwidth; the scan at its exp / memory bound)\n"
    "and the fraction of the peak the batch would reach with every op at its floor (f32 runs).\n"
    "--json prints one object per line: the machine first, then one per batch size.\n"
    "bench --gemm [--threads N] [--dtype D] [--json] times the GEMM alone (weights stored in D) on the models' shapes (1 and N threads).\n"
    "bench --suite [--quick] [--threads N] [--iters N] [--upstream TIMES.json] [--save PREFIX] runs the project's\n"
    "performance tables in one go (Vim-T, VMamba-T s1l8 and v0 at batch 1 / 8 / 32, bf16, 1 vs N threads, 512 and\n"
    "1024 pixels, vim_small, vmamba_base_s1l20, Mask R-CNN at 1333x800, memory over repeated calls) and prints\n"
    "markdown: per row the FLOPs, the achieved fraction of the FMA peak measured just before and after it and the\n"
    "target; then the checks between rows. --quick leaves out the 1024-pixel, base / small and detection rows.\n"
    "--upstream reads {\"model\": ms per image, ...} (the upstream harness's timings) and adds the speed-up per row.\n"
    "--save writes PREFIX.md and PREFIX.json.\n";

}  // namespace

Model load_or_random(const Args& args, const Options& opt) {
  MAMBACV_USAGE_CHECK(args.has("model"), "--model is required (a name from configs/ or a config .json)");
  if (args.has("weights")) return Model::load(args.get("model"), args.get("weights"), opt);
  return Model::random(load_model_config(args.get("model")), opt, 1);
}

int cmd_bench(const std::vector<std::string>& argv) {
  std::set<std::string> valued = kModelOptions;
  valued.insert({"model", "weights", "batch", "size", "warmup", "iters", "upstream", "save"});
  Args args("bench", argv, valued, {"json", "per-op", "gemm", "help", "check-finite", "suite", "quick"});
  if (args.has("help")) {
    std::fputs(kBenchHelp, stdout);
    std::fputs(model_options_help().c_str(), stdout);
    return 0;
  }
  if (args.has("suite")) return bench_suite(args);
  if (args.has("gemm")) return bench_gemm(args.model_options().threads, args.has("json"), args.model_options().dtype);
  MAMBACV_USAGE_CHECK(args.positionals().empty(), "bench: unexpected argument '" << args.positionals()[0] << "'");
  Options opt = args.model_options();
  Model model = load_or_random(args, opt);
  const int size = args.get_int("size", model.input_size());
  const int warmup = args.get_int("warmup", 2);
  const int iters = args.get_int("iters", 10);
  MAMBACV_USAGE_CHECK(size >= 16, "--size: expected at least 16 pixels, got " << size);
  MAMBACV_USAGE_CHECK(warmup >= 0 && iters >= 1, "--warmup must be >= 0 and --iters >= 1");
  const std::vector<int> batches = args.get_int_list("batch", {1, 8, 32});
  const bool json = args.has("json");
  const bool per_op = args.has("per-op");
  const MachineReport machine = measure_machine(opt.threads);
  const int threads = machine.threads;
  const double peak = machine.fma_peak_gflops;
  const double gflop = model.flops_per_image(size, size) / 1e9;
  const std::string name = load_model_config(args.get("model")).name;
  if (json) {
    nlohmann::ordered_json j = {{"machine", machine.json()}};
    std::printf("%s\n", json_text(j).c_str());
  } else {
    std::printf("model %s  device %s  dtype %s  core %s  threads %d  size %d  weights %s\n", name.c_str(),
                device_name(opt.device), dtype_name(opt.dtype), core_name(opt.core), threads, size,
                args.has("weights") ? args.get("weights").c_str() : "random");
    std::printf("precision: %s\n", precision_path(opt.dtype).c_str());
    machine.print();
    std::printf("model: %.3f GFLOP per image\n", gflop);
    std::printf("of_peak: of the higher of the FMA peaks measured just before and just after each batch size\n");
    std::printf("%6s %10s %10s %10s %10s %10s %8s %8s\n", "batch", "median_ms", "min_ms", "max_ms", "images/s",
                "peak_MB", "GFLOP/s", "of_peak");
  }
  const double load_peak = peak_rss_mb();
  if (!json) std::printf("peak memory while loading %.1f MB; peak_MB below: while running each batch size%s\n",
                         load_peak, reset_peak_rss() ? "" : " (cannot reset the high-water mark here: since start)");
  double peak_before = peak;  // the first batch size: the machine line's measurement, just taken
  for (size_t bi = 0; bi < batches.size(); ++bi) {
    const int b = batches[bi];
    if (bi > 0) peak_before = cpu::measure_fma_peak_gflops(threads);
    reset_peak_rss();
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
    const std::vector<double> sorted = time_runs(run, warmup, iters);
    // The fraction is taken of the higher of the peaks measured just before and just after the runs, so a dip of
    // the host's speed during one peak measurement cannot inflate it.
    const double peak_after = cpu::measure_fma_peak_gflops(threads);
    const double batch_peak = std::max(peak_before, peak_after);
    const double median = median_of(sorted);
    double ips = b / (median / 1e3);
    double achieved = gflop * b / (median / 1e3);
    double frac = achieved / batch_peak;
    std::vector<OpStat> ops_table;
    if (per_op) ops_table = model.profile(x);
    // the floors are f32's: the FMA peak and the GEMM rate are measured in f32 (bf16 products can beat both)
    const bool f32 = opt.dtype == DType::F32;
    if (json) {
      nlohmann::ordered_json j = {{"model", name},        {"device", device_name(opt.device)},
                          {"dtype", dtype_name(opt.dtype)}, {"precision_path", precision_path(opt.dtype)},
                          {"core", core_name(opt.core)},
                          {"batch", b},           {"size", size},
                          {"threads", threads},   {"median_ms", median},
                          {"min_ms", sorted.front()}, {"max_ms", sorted.back()},
                          {"images_per_s", ips},  {"peak_rss_mb", peak_rss_mb()}, {"load_peak_rss_mb", load_peak},
                          {"fma_peak_gflops", batch_peak}, {"fma_peak_before_gflops", peak_before},
                          {"fma_peak_after_gflops", peak_after}, {"gemm_gflops", machine.gemm_gflops},
                          {"gemm_backend", machine.gemm_backend}, {"model_gflop", gflop},
                          {"achieved_gflops", achieved}, {"peak_fraction", frac},
                          {"iters", iters},       {"warmup", warmup}};
      if (per_op) {
        nlohmann::ordered_json rows = nlohmann::ordered_json::array();
        for (const OpStat& o : ops_table)
          rows.push_back({{"stage", o.stage}, {"op", o.op}, {"calls", o.calls}, {"ms", o.seconds * 1e3},
                          {"gflop", o.flops / 1e9}, {"mbytes", o.bytes / 1e6},
                          {"gflops", o.seconds > 0 ? o.flops / o.seconds / 1e9 : 0.0},
                          {"floor_ms", f32 ? op_floor_seconds(o, threads, batch_peak) * 1e3 : 0.0}});
        j["per_op"] = rows;
        if (f32) {
          const ProfileFloor pf = profile_floor(ops_table, threads, batch_peak, machine.gemm_gflops);
          j["floor"] = {{"ops_ms", pf.seconds * 1e3},
                        {"floor_ms", pf.floor_seconds * 1e3},
                        {"floor_peak_fraction", pf.peak_fraction(pf.floor_seconds, batch_peak)},
                        {"gemm_rate_floor_ms", pf.gemm_rate_floor_seconds * 1e3},
                        {"gemm_rate_floor_peak_fraction", pf.peak_fraction(pf.gemm_rate_floor_seconds, batch_peak)}};
        }
        const ScanBound sb = scan_bound(ops_table, threads);
        if (sb.present())
          j["scan_bound"] = {{"scan_ms", sb.seconds * 1e3},       {"exps", sb.exps},
                             {"exp_rate_g_per_s", sb.exp_rate},   {"exp_bound_ms", sb.exp_seconds * 1e3},
                             {"mbytes", sb.bytes / 1e6},          {"bandwidth_gbs", sb.bandwidth_gbs},
                             {"memory_bound_ms", sb.memory_seconds * 1e3}, {"of_bound", sb.ratio()},
                             {"binds", sb.binds()}};
      }
      std::printf("%s\n", json_text(j).c_str());
    } else {
      std::printf("%6d %10.2f %10.2f %10.2f %10.2f %10.1f %8.1f %7.1f%%\n", b, median, sorted.front(), sorted.back(),
                  ips, peak_rss_mb(), achieved, 100.0 * frac);
      if (per_op) {
        const std::string title = "per op (one traced pass, batch " + std::to_string(b) + ")";
        print_op_profile(stdout, ops_table, title.c_str(), threads, batch_peak, machine.gemm_gflops, f32);
      }
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace mambacv::cli
