// What `bench` and `info` print about the machine: the CPU, the ISA each kernel family dispatched to, the
// measured FMA peak and the measured rate of the library's own GEMM.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <tuple>

#include "kernels/cpu_info.h"
#include "kernels/host_allocator.h"
#include "kernels/ops.h"
#include "tools/commands.h"

namespace mambacv::cli {

std::string json_text(const nlohmann::ordered_json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int resolve_threads(int threads) { return ExecContext::cpu(threads).threads; }

std::vector<double> time_runs(const std::function<void()>& run, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) run();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    const double t0 = now_s();
    run();
    ms.push_back((now_s() - t0) * 1e3);
  }
  std::sort(ms.begin(), ms.end());
  return ms;
}

double median_of(const std::vector<double>& sorted) {
  const size_t n = sorted.size();
  if (n == 0) return 0;
  return n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
}

double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // "VmHWM:   123456 kB"
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

double rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

double measure_gemm_gflops(int threads) {
  ExecContext ctx = ExecContext::cpu(threads);
  ctx.alloc = std::make_shared<HostAllocator>(size_t{64} << 20);  // its workspace is freed on return, not kept idle
  const int64_t n = 1024;
  std::vector<float> a(n * n), b(n * n), c(n * n);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1, 1);
  for (auto& v : a) v = d(rng);
  for (auto& v : b) v = d(rng);
  const ops::PackedWeight w = ops::pack_weight(b.data(), n, /*trans_b=*/true, n, n);
  ops::gemm(ctx, n, a.data(), n, w, c.data(), n);  // warm up
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    double t0 = now_s();
    ops::gemm(ctx, n, a.data(), n, w, c.data(), n);
    best = std::min(best, now_s() - t0);
  }
  return 2.0 * n * n * n / best / 1e9;
}

namespace {
// (the scan's exp rate in G exps/s, the copy bandwidth in GB/s) on `threads` threads, measured once per count
std::pair<double, double> scan_rates(int threads) {
  static std::map<int, std::pair<double, double>> rates;
  auto it = rates.find(threads);
  if (it == rates.end())
    it = rates.emplace(threads, std::make_pair(cpu::measure_scan_exp_rate(threads),
                                               cpu::measure_copy_bandwidth_gbs(threads))).first;
  return it->second;
}
bool is_gemm(const OpStat& o) { return o.op == "gemm" || o.op.rfind("gemm+", 0) == 0; }
}  // namespace

ScanBound scan_bound(const std::vector<OpStat>& ops, int threads) {
  ScanBound b;
  for (const OpStat& o : ops)
    if (o.op == "selective_scan") b.seconds += o.seconds, b.exps += o.exps, b.bytes += o.bytes;
  if (!b.present()) return b;
  std::tie(b.exp_rate, b.bandwidth_gbs) = scan_rates(threads);
  b.exp_seconds = b.exps / (b.exp_rate * 1e9);
  b.memory_seconds = b.bytes / (b.bandwidth_gbs * 1e9);
  return b;
}

double op_floor_seconds(const OpStat& o, int threads, double fma_peak_gflops) {
  const auto [exp_rate, bandwidth] = scan_rates(threads);
  const double memory = o.bytes / (bandwidth * 1e9);
  if (o.op == "selective_scan") return std::max(o.exps / (exp_rate * 1e9), memory);
  return std::max(o.flops / (fma_peak_gflops * 1e9), memory);
}

ProfileFloor profile_floor(const std::vector<OpStat>& ops, int threads, double fma_peak_gflops, double gemm_gflops) {
  ProfileFloor f;
  for (const OpStat& o : ops) {
    const double floor = op_floor_seconds(o, threads, fma_peak_gflops);
    f.seconds += o.seconds;
    f.flops += o.flops;
    f.floor_seconds += floor;
    f.gemm_rate_floor_seconds += is_gemm(o) ? std::max(floor, o.flops / (gemm_gflops * 1e9)) : floor;
  }
  return f;
}

void print_op_profile(std::FILE* out, const std::vector<OpStat>& ops, const char* title, int threads,
                      double fma_peak_gflops, double gemm_gflops, bool f32) {
  const ProfileFloor pf = profile_floor(ops, threads, fma_peak_gflops, gemm_gflops);
  const double total = pf.seconds;
  std::fprintf(out, "  %s, %.2f ms in ops, %.3f GFLOP:\n", title, total * 1e3, pf.flops / 1e9);
  std::fprintf(out, "  %-16s %-20s %6s %9s %6s %9s %10s %9s %9s %7s\n", "stage", "op", "calls", "ms", "share", "GFLOP",
               "MB", "GFLOP/s", "floor_ms", "x_floor");
  for (const OpStat& o : ops) {
    const double floor = f32 ? op_floor_seconds(o, threads, fma_peak_gflops) : 0.0;
    std::fprintf(out, "  %-16s %-20s %6lld %9.3f %5.1f%% %9.3f %10.2f %9.1f %9.3f %7.1f\n", o.stage.c_str(),
                 o.op.c_str(), static_cast<long long>(o.calls), o.seconds * 1e3,
                 total > 0 ? 100.0 * o.seconds / total : 0.0, o.flops / 1e9, o.bytes / 1e6,
                 o.seconds > 0 ? o.flops / o.seconds / 1e9 : 0.0, floor * 1e3, floor > 0 ? o.seconds / floor : 0.0);
  }
  if (f32) {
    std::fprintf(out,
                 "  floor (every op at its roofline: FLOPs at the FMA peak or bytes at the copy bandwidth, the scan at "
                 "its bound): %.2f ms, %.0f%% of the FMA peak; with the GEMMs at the 1024^3 GEMM rate: %.2f ms, "
                 "%.0f%%\n",
                 pf.floor_seconds * 1e3, 100.0 * pf.peak_fraction(pf.floor_seconds, fma_peak_gflops),
                 pf.gemm_rate_floor_seconds * 1e3, 100.0 * pf.peak_fraction(pf.gemm_rate_floor_seconds, fma_peak_gflops));
  }
  const ScanBound sb = scan_bound(ops, threads);
  if (sb.present())
    std::fprintf(out,
                 "  selective_scan: %.2f ms; bound %.2f ms by %s (%.3f G exps at %.1f G/s = %.2f ms; %.1f MB at %.1f "
                 "GB/s = %.2f ms): %.2fx its bound\n",
                 sb.seconds * 1e3, std::max(sb.exp_seconds, sb.memory_seconds) * 1e3, sb.binds(), sb.exps / 1e9,
                 sb.exp_rate, sb.exp_seconds * 1e3, sb.bytes / 1e6, sb.bandwidth_gbs, sb.memory_seconds * 1e3,
                 sb.ratio());
}

MachineReport measure_machine(int threads) {
  MachineReport m;
  m.threads = resolve_threads(threads);
  m.cpu = cpu::cpu_name();
  m.features = cpu::feature_string();
  m.l2_cache_bytes = cpu::l2_cache_bytes();
  m.isa = cpu::isa_name(cpu::cpu_isa());
  m.gemm_backend = ops::gemm_backend();
  m.fma_peak_gflops = cpu::measure_fma_peak_gflops(m.threads);
  m.gemm_gflops = measure_gemm_gflops(m.threads);
  return m;
}

nlohmann::ordered_json MachineReport::json() const {
  return {{"cpu", cpu},
          {"cpu_features", features},
          {"l2_cache_bytes", l2_cache_bytes},
          {"threads", threads},
          {"isa", {{"gemm", gemm_backend}, {"selective_scan", isa}, {"depthwise_conv", isa}, {"elementwise", isa}}},
          {"fma_peak_gflops", fma_peak_gflops},
          {"gemm_gflops", gemm_gflops}};
}

void MachineReport::print() const {
  std::printf("cpu %s (%s), L2 %lld KB per core\n", cpu.c_str(), features.c_str(),
              static_cast<long long>(l2_cache_bytes >> 10));
  std::printf("kernels: gemm %s, selective scan %s, depthwise conv %s  (MAMBACV_ISA=avx512|avx2|generic lowers)\n",
              gemm_backend.c_str(), isa.c_str(), isa.c_str());
  std::printf("machine fp32 on %d threads: FMA peak %.1f GFLOP/s, GEMM %.1f GFLOP/s (1024^3, packed, %.0f%% of peak)\n",
              threads, fma_peak_gflops, gemm_gflops, 100.0 * gemm_gflops / fma_peak_gflops);
}

}  // namespace mambacv::cli

namespace mambacv::cli {

// `bench --gemm`: the library GEMM (weights packed) on the models' own shapes, 1 thread and `threads` threads,
// median of repeated calls, beside the FMA peak of the same thread count.
int bench_gemm(int threads, bool json, DType storage) {
  struct Shape3 {
    int64_t M, N, K;
    const char* what;
  };
  const std::vector<Shape3> shapes = {
      {197, 768, 192, "Vim-T in_proj"},       {197, 192, 384, "Vim-T out_proj"},
      {197, 40, 384, "Vim-T x_proj"},         {3136, 384, 96, "VMamba-T stage 1 fc1"},
      {3136, 96, 192, "VMamba-T stage 1 out_proj"}, {784, 768, 192, "VMamba-T stage 2 fc1"},
      {196, 1536, 384, "VMamba-T stage 3 fc1"}, {196, 384, 1536, "VMamba-T stage 3 fc2"},
      {49, 3072, 768, "VMamba-T stage 4 fc1"}, {1568, 768, 192, "Vim-T in_proj, batch 8"},
      {197, 384, 12, "Vim-T dt_proj"}, {3136, 192, 6, "VMamba-T stage 1 dt_proj"},
      {3136, 96, 96, "VMamba-T s1l8 stage 1 in_proj"}, {3136, 32, 96, "VMamba-T s1l8 stage 1 x_proj"},
      {196, 384, 384, "VMamba-T s1l8 stage 3 in_proj"}, {3136, 96, 384, "VMamba-T s1l8 stage 1 fc2"},
  };
  const int nt = resolve_threads(threads);
  std::vector<int> counts = {1};
  if (nt > 1) counts.push_back(nt);
  // the portable backend keeps f32 weights; bf16 takes the kernel pack_weight picks (K < 32 stays widened)
  const DType held = cpu::cpu_isa() == cpu::Isa::Generic ? DType::F32 : storage;
  const ops::Bf16Kernel kernel = held == DType::BF16 ? ops::best_bf16_kernel() : ops::Bf16Kernel::Widen;
  const std::string path = std::string(ops::gemm_backend()) + ", weights " + dtype_name(held) +
                           (kernel == ops::Bf16Kernel::Amx   ? " (AMX tiles; K < 32 widened)"
                            : kernel == ops::Bf16Kernel::Dot ? " (AVX512_BF16 dot products)"
                            : held != DType::F32             ? " (widened to f32)"
                                                             : "");
  if (!json) std::printf("gemm backend %s, packed once, C = A (M, K) @ W^T (N, K)\n", path.c_str());
  for (int t : counts) {
    const double peak = cpu::measure_fma_peak_gflops(t);
    const ExecContext ctx = ExecContext::cpu(t);
    if (!json) {
      std::printf("threads %d: FMA peak %.1f GFLOP/s\n", t, peak);
      std::printf("  %-28s %6s %6s %6s %10s %8s\n", "shape", "M", "N", "K", "GFLOP/s", "of_peak");
    }
    for (const Shape3& s : shapes) {
      std::mt19937 rng(7);
      std::uniform_real_distribution<float> d(-1, 1);
      std::vector<float> a(static_cast<size_t>(s.M * s.K)), b(static_cast<size_t>(s.N * s.K)),
          c(static_cast<size_t>(s.M * s.N));
      for (auto& v : a) v = d(rng);
      for (auto& v : b) v = d(rng);
      const ops::PackedWeight w = ops::pack_weight(b.data(), s.K, true, s.N, s.K, nullptr, storage);
      const double flop = 2.0 * s.M * s.N * s.K;
      const int reps = std::max(5, static_cast<int>(2e9 / flop));
      std::vector<double> ts;
      for (int i = 0; i < reps + 2; ++i) {
        const double t0 = now_s();
        ops::gemm(ctx, s.M, a.data(), s.K, w, c.data(), s.N);
        if (i >= 2) ts.push_back(now_s() - t0);
      }
      std::sort(ts.begin(), ts.end());
      const double rate = flop / ts[ts.size() / 2] / 1e9;
      if (json) {
        nlohmann::ordered_json j = {{"shape", s.what}, {"M", s.M}, {"N", s.N}, {"K", s.K}, {"threads", t},
                                    {"gflops", rate}, {"fma_peak_gflops", peak}, {"peak_fraction", rate / peak},
                                    {"backend", path}};
        std::printf("%s\n", json_text(j).c_str());
      } else {
        std::printf("  %-28s %6lld %6lld %6lld %10.1f %7.1f%%\n", s.what, static_cast<long long>(s.M),
                    static_cast<long long>(s.N), static_cast<long long>(s.K), rate, 100.0 * rate / peak);
      }
    }
  }
  return 0;
}

}  // namespace mambacv::cli
