// The subcommands of the mambacv command line. They use the public API (mambacv/*.h) and, for the machine
// report of bench / info only, the declared internal headers kernels/cpu_info.h, kernels/ops.h,
// kernels/context.h and kernels/host_allocator.h (CPU features, the GEMM backend, the FMA-peak, GEMM, exp-rate and
// bandwidth measurements, and the allocator cache bench --suite releases between models).
#pragma once

#include <algorithm>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mambacv/detection.h"
#include "mambacv/mambacv.h"

namespace mambacv::cli {

struct Command {
  const char* name;
  std::function<int(const std::vector<std::string>&)> run;
};
const std::vector<Command>& commands();

int cmd_verify(const std::vector<std::string>& args);
int cmd_bench(const std::vector<std::string>& args);
int cmd_info(const std::vector<std::string>& args);
int cmd_classify(const std::vector<std::string>& args);
int cmd_features(const std::vector<std::string>& args);
int cmd_detect(const std::vector<std::string>& args);
int cmd_check_cores(const std::vector<std::string>& args);
int cmd_models(const std::vector<std::string>& args);
int cmd_convert(const std::vector<std::string>& args);
int cmd_serve(const std::vector<std::string>& args);

// JSON text of j for output: bytes that are not valid UTF-8 (file names, labels) become U+FFFD instead of an
// exception, so one odd name never costs the other results (tools/machine.cpp).
std::string json_text(const nlohmann::ordered_json& j, int indent = -1);

// Shared helpers of the commands (tools/machine.cpp).
// Monotonic seconds, for timings.
double now_s();
// The thread count a model with Options::threads == threads uses.
int resolve_threads(int threads);
// Runs `run` warmup times, then times iters runs: milliseconds, sorted ascending.
std::vector<double> time_runs(const std::function<void()>& run, int warmup, int iters);
double median_of(const std::vector<double>& sorted);
// The process's RSS high-water mark (MiB): VmHWM, which reset_peak_rss() sets back to the current RSS (Linux
// /proc/self/clear_refs "5"; false where the kernel does not allow it), so a peak can be taken over one phase.
double peak_rss_mb();
bool reset_peak_rss();
double rss_mb();  // the current RSS (MiB)
// The library GEMM's rate on a 1024^3 product with a packed weight, GFLOP/s.
double measure_gemm_gflops(int threads);
struct MachineReport {
  std::string cpu, features, isa, gemm_backend;
  int threads = 1;
  int64_t l2_cache_bytes = 0;
  double fma_peak_gflops = 0, gemm_gflops = 0;
  nlohmann::ordered_json json() const;
  void print() const;
};
MachineReport measure_machine(int threads);
// `bench --gemm [--dtype D]`: the GEMM on the models' shapes (no model needed), weights stored in D.
int bench_gemm(int threads, bool json, DType storage = DType::F32);
// The selective scan's time in a profile against its bound: its exp evaluations at the scan's measured exp rate,
// or its bytes at the measured copy bandwidth, whichever takes longer (the rates are measured once per thread count).
struct ScanBound {
  double seconds = 0, exps = 0, bytes = 0;     // summed over the profile's selective_scan records
  double exp_rate = 0, bandwidth_gbs = 0;      // G exps/s, GB/s on the profile's thread count
  double exp_seconds = 0, memory_seconds = 0;  // the two bounds
  double ratio() const { return seconds / std::max(exp_seconds, memory_seconds); }
  const char* binds() const { return exp_seconds >= memory_seconds ? "exp throughput" : "memory bandwidth"; }
  bool present() const { return exps > 0; }
};
ScanBound scan_bound(const std::vector<OpStat>& ops, int threads);
// The least time one profile row's work allows on this machine (its roofline floor): the selective scan's bound
// as above (exps at the scan's exp rate, or bytes at the copy bandwidth); any other op's FLOPs at the FMA peak or
// its bytes at the copy bandwidth, whichever takes longer. The bandwidth is DRAM's: an op whose data stays in the
// caches can run below it. fma_peak_gflops: measured on the profile's thread count.
double op_floor_seconds(const OpStat& o, int threads, double fma_peak_gflops);
// A profile against the floors of its rows: what the ops' time could shrink to.
struct ProfileFloor {
  double seconds = 0;        // the profile's time in ops
  double floor_seconds = 0;  // every row at op_floor_seconds
  double gemm_rate_floor_seconds = 0;  // the same with the GEMMs' FLOPs at the measured 1024^3 GEMM rate
  double flops = 0;                    // the profile's FLOPs
  // the fraction of the FMA peak the pass would reach if its ops took `seconds`
  double peak_fraction(double seconds, double fma_peak_gflops) const {
    return seconds > 0 ? flops / seconds / (fma_peak_gflops * 1e9) : 0.0;
  }
};
ProfileFloor profile_floor(const std::vector<OpStat>& ops, int threads, double fma_peak_gflops, double gemm_gflops);
// The per-op table of `bench --per-op` and `detect --profile`, each line indented by two spaces: a title line
// (`title`, the time in ops and the FLOPs), one row per (stage, op) with its time, share, FLOPs, bytes, GFLOP/s and,
// for f32 runs, its floor and the time over it; for f32 the floor line (the fraction of the FMA peak with every op
// at its floor, and with the GEMMs at the GEMM rate); the selective scan against its bound where the profile has one.
void print_op_profile(std::FILE* out, const std::vector<OpStat>& ops, const char* title, int threads,
                      double fma_peak_gflops, double gemm_gflops, bool f32);

class Args;
// The weights file a model command runs (tools/models.cpp): --weights, else the config's own "weights" (the golden
// fixtures name theirs), else "" when --random-weights is given; neither is a UsageError naming the released
// checkpoint and where upstream publishes it.
std::string weights_for(const Args& args, const ModelConfig& cfg);
// The warning --random-weights prints on stderr: outputs mean nothing, and where the real checkpoint is.
void warn_random_weights(const char* command, const ModelConfig& cfg);
// The eval transform of a classify / features run: the model's own, with --size S (the network input side; the
// shorter image side is resized to S / crop_pct before the centre crop) when given.
InputSpec input_spec_for(const Args& args, const Model& model);
// One detection result as `detect --json` prints it (without the image path): {"width", "height", "detections":
// [{"label", "name", "score", "box", "mask": {"size": [h, w], "counts": COCO RLE}}]} (tools/detect.cpp).
nlohmann::ordered_json detections_json(const DetectionResult& r, const std::vector<std::string>& names, bool masks);
// One config's summary as JSON (`models --json`, `info --json`).
nlohmann::ordered_json summary_json(const ModelSummary& s);
// `bench --suite` (tools/bench_suite.cpp): the performance tables in one run.
int bench_suite(const Args& args);
// verify for arch "mask_rcnn" fixtures (tools/verify_detection.cpp).
int verify_detection_fixture(const std::string& fixture, const std::string& weights, const TensorMap& golden,
                             const Options& opt);

}  // namespace mambacv::cli
