// `mambacv bench --suite`: the project's CPU performance tables in one run (README "Performance"), as markdown on
// stdout and, with --save PREFIX, PREFIX.md and PREFIX.json. Every row is timed with random weights on random
// inputs and set beside the fp32 FMA peak (same thread count; the higher of the measurements just before and just
// after it), so the achieved fraction holds on any machine; rows with a target say whether it was met.
#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <tuple>

#include "kernels/cpu_info.h"
#include "kernels/host_allocator.h"
#include "kernels/ops.h"
#include "mambacv/detection.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace mambacv::cli {

namespace {

struct Case {
  std::string model;
  DType dtype = DType::F32;
  int batch = 1, size = 224;
  int threads = 0;       // 0: the suite's thread count
  double target = -1;    // fraction of the FMA peak to reach; < 0: report only
};

struct Row {
  Case c;
  int threads = 1;
  double median_ms = 0, min_ms = 0, max_ms = 0, images_per_s = 0, gflop_per_image = 0, achieved_gflops = 0;
  double fma_peak = 0, fraction = 0, peak_rss_mb = 0, upstream_ms = -1;
  ScanBound scan;  // batch-1 f32 224² rows: the scan's time in one traced pass against its bound
  ProfileFloor floor;  // the same rows: that pass against its ops' roofline floors
};

struct Check {
  std::string what, measured, target;
  bool met = false;
  bool judged = true;  // false: reported only (the condition for a target does not hold on this machine)
};

Tensor random_input(int b, int h, int w, unsigned seed) {
  Tensor x = Tensor::empty({b, 3, h, w});
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0, 1);
  for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = nd(rng);
  return x;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// {"model": ms per image, ...}: the upstream harness's timings; empty when no file is given.
std::map<std::string, double> read_upstream(const std::string& path) {
  std::map<std::string, double> out;
  if (path.empty()) return out;
  std::ifstream f(path);
  MAMBACV_CHECK(f, "--upstream: cannot open '" << path << "'");
  nlohmann::json j;
  try {
    f >> j;
  } catch (const std::exception& e) {
    MAMBACV_FAIL("--upstream: '" << path << "' is not JSON: " << e.what());
  }
  MAMBACV_CHECK(j.is_object(), "--upstream: '" << path << "' must hold an object {\"model\": ms per image, ...}");
  for (auto it = j.begin(); it != j.end(); ++it) {
    MAMBACV_CHECK(it.value().is_number() && it.value().get<double>() > 0,
                  "--upstream: '" << path << "' key '" << it.key() << "': expected a positive number of ms");
    out[it.key()] = it.value().get<double>();
  }
  return out;
}

}  // namespace

int bench_suite(const Args& args) {
  const bool quick = args.has("quick");
  const int iters = args.get_int("iters", quick ? 3 : 5);
  const int warmup = args.get_int("warmup", 1);
  MAMBACV_USAGE_CHECK(warmup >= 0 && iters >= 1, "--warmup must be >= 0 and --iters >= 1");
  const int threads = resolve_threads(args.model_options().threads);
  const std::map<std::string, double> upstream = read_upstream(args.get("upstream"));
  const std::string save = args.get("save");
  if (!save.empty()) {  // fail before an hour of timing, not after
    std::ofstream probe(save + ".md");
    MAMBACV_CHECK(probe, "--save: cannot write '" << save << ".md'");
  }

  // the rows of the tables, grouped by model so that one model is loaded at a time
  std::vector<Case> cases = {
      {"vmamba_tiny_s1l8", DType::F32, 1, 224, 0, 0.70}, {"vmamba_tiny_s1l8", DType::F32, 8, 224, 0, 0.75},
      {"vmamba_tiny_s1l8", DType::F32, 32, 224, 0, -1},  {"vmamba_tiny_s1l8", DType::F32, 8, 224, 1, -1},
      {"vmamba_tiny_s1l8", DType::F32, 1, 512, 0, -1},   {"vmamba_tiny_s1l8", DType::BF16, 1, 224, 0, -1},
      {"vmamba_tiny_s1l8", DType::BF16, 8, 224, 0, -1},  {"vim_tiny", DType::F32, 1, 224, 0, 0.55},
      {"vim_tiny", DType::F32, 8, 224, 0, 0.70},         {"vim_tiny", DType::F32, 32, 224, 0, -1},
      {"vim_tiny", DType::F32, 8, 224, 1, -1},           {"vim_tiny", DType::F32, 1, 512, 0, -1},
      {"vmamba_tiny_v0", DType::F32, 1, 224, 0, 0.60},   {"vmamba_tiny_v0", DType::F32, 8, 224, 0, 0.70},
  };
  if (!quick) {
    cases.push_back({"vmamba_tiny_s1l8", DType::F32, 1, 1024, 0, -1});
    cases.push_back({"vim_tiny", DType::F32, 1, 1024, 0, -1});
    for (const char* m : {"vim_small", "vmamba_base_s1l20"})
      for (int b : {1, 8}) cases.push_back({m, DType::F32, b, 224, 0, -1});
  }
  // one model loaded at a time: grouped by model, then dtype and thread count (1-thread rows last)
  std::stable_sort(cases.begin(), cases.end(), [](const Case& a, const Case& b) {
    return std::make_tuple(a.model, a.dtype, a.threads == 1) < std::make_tuple(b.model, b.dtype, b.threads == 1);
  });

  const MachineReport machine = measure_machine(threads);
  std::fprintf(stderr, "bench --suite: %zu rows, %d iterations each, %d threads\n", cases.size(), iters, threads);

  std::vector<Row> rows;
  std::map<std::string, double> rss_growth_mb, rss_over_weights_mb;
  struct Loaded {
    std::string model;
    DType dtype;
    int threads;
    std::unique_ptr<Model> m;
  } loaded{"", DType::F32, 0, nullptr};
  for (const Case& c : cases) {
    const int t = c.threads > 0 ? c.threads : threads;
    if (!loaded.m || loaded.model != c.model || loaded.dtype != c.dtype || loaded.threads != t) {
      loaded.m.reset();
      host_cache_release();  // the previous model's freed blocks are not counted as this one's memory
#ifdef __GLIBC__
      malloc_trim(0);  // nor what the C heap kept of them
#endif
      Options opt;
      opt.dtype = c.dtype;
      opt.threads = t;
      const double before = rss_mb();
      loaded = {c.model, c.dtype, t, std::make_unique<Model>(Model::random(load_model_config(c.model), opt, 1))};
      // memory: resident growth of the process over 1000 (quick: 100) batch-1 calls, and batch-1 peak above the
      // RSS before loading, against the weights' bytes (VMamba-T f32 is the target row)
      if (c.dtype == DType::F32 && t == threads && !rss_growth_mb.count(c.model) &&
          (c.model == "vmamba_tiny_s1l8" || c.model == "vim_tiny")) {
        Tensor x = random_input(1, 224, 224, 5);
        reset_peak_rss();
        for (int i = 0; i < 10; ++i) loaded.m->classify(x);
        const double settled = rss_mb();
        const double peak = peak_rss_mb();
        const int calls = quick ? 100 : 1000;
        std::fprintf(stderr, "  %s: %d repeated calls for the memory check\n", c.model.c_str(), calls);
        for (int i = 0; i < calls; ++i) loaded.m->classify(x);
        rss_growth_mb[c.model] = rss_mb() - settled;
        rss_over_weights_mb[c.model] = peak - before - static_cast<double>(loaded.m->num_parameters()) * 4 / 1048576.0;
      }
    }
    Model& m = *loaded.m;
    std::fprintf(stderr, "  %s %s batch %d %dx%d, %d threads\n", c.model.c_str(), dtype_name(c.dtype), c.batch,
                 c.size, c.size, t);
    Row r;
    r.c = c;
    r.threads = t;
    const Tensor x = random_input(c.batch, c.size, c.size, static_cast<unsigned>(c.batch * 131 + c.size));
    r.gflop_per_image = m.flops_per_image(c.size, c.size) / 1e9;
    reset_peak_rss();
    const double peak_before = cpu::measure_fma_peak_gflops(t);
    const std::vector<double> ms = time_runs([&] { m.classify(x); }, warmup, iters);
    // as in `bench`: the higher of the peaks measured just before and just after the runs
    r.fma_peak = std::max(peak_before, cpu::measure_fma_peak_gflops(t));
    r.peak_rss_mb = peak_rss_mb();
    r.median_ms = median_of(ms);
    r.min_ms = ms.front();
    r.max_ms = ms.back();
    r.images_per_s = c.batch / (r.median_ms / 1e3);
    r.achieved_gflops = r.gflop_per_image * r.images_per_s;
    r.fraction = r.achieved_gflops / r.fma_peak;
    if (c.batch == 1 && c.size == 224 && c.dtype == DType::F32 && t == threads) {
      const std::vector<OpStat> profile = m.profile(x);
      r.scan = scan_bound(profile, t);
      r.floor = profile_floor(profile, t, r.fma_peak, machine.gemm_gflops);
    }
    auto up = upstream.find(c.model);
    if (up != upstream.end()) r.upstream_ms = up->second;
    rows.push_back(r);
  }
  loaded.m.reset();

  // detection: one 1333x800 image (padded to 1344x800) through mask_rcnn_vmamba_tiny, against its FLOP floor
  struct DetRow {
    bool ran = false;
    double median_ms = 0, gflop = 0, fma_peak = 0, floor_ms = 0;
    DetectionTimings parts;
    // GFLOP of the parts in the order of DetectionTimings: backbone, fpn, rpn, roi box, masks
    double part_gflop[5] = {};
  } det;
  if (!quick) {
    std::fprintf(stderr, "  mask_rcnn_vmamba_tiny 1333x800\n");
    Options opt;
    opt.threads = threads;
    Detector d = Detector::random("mask_rcnn_vmamba_tiny", opt, 1);
    const Tensor x = random_input(1, 800, 1344, 3);
    DetectOptions dopt;
    std::vector<DetectionTimings> parts;
    const std::vector<double> ms = time_runs([&] { parts.push_back(d.detect(x, 800, 1333, dopt).timings); },
                                             warmup, std::max(1, iters / 2));
    det.ran = true;
    det.median_ms = median_of(ms);
    det.parts = parts.back();
    // the FLOPs of every part (the heads included) from one traced pass; stages not named by a head are the backbone's
    for (const OpStat& o : d.profile(x, 800, 1333, dopt)) {
      const int part = o.stage == "fpn" ? 1 : o.stage == "rpn" ? 2 : o.stage == "box_head" ? 3 : o.stage == "mask_head" ? 4 : 0;
      det.part_gflop[part] += o.flops / 1e9;
      det.gflop += o.flops / 1e9;
    }
    det.fma_peak = cpu::measure_fma_peak_gflops(threads);
    det.floor_ms = det.gflop / det.fma_peak * 1e3;
  }

  // the targets that compare rows
  auto find = [&](const std::string& model, DType dt, int b, int size, int t) -> const Row* {
    for (const Row& r : rows)
      if (r.c.model == model && r.c.dtype == dt && r.c.batch == b && r.c.size == size && r.threads == t) return &r;
    return nullptr;
  };
  std::vector<Check> checks;
  for (const Row& r : rows)
    if (r.c.target > 0)
      checks.push_back({r.c.model + " batch " + std::to_string(r.c.batch) + " of the FMA peak",
                        fmt("%.1f%%", 100 * r.fraction), fmt(">= %.0f%%", 100 * r.c.target), r.fraction >= r.c.target});
  // judged on CPUs with bf16 products (AVX512_BF16 or AMX), even where the library finds them slower than
  // widening to f32 and does not use them
  const bool native_bf16 = ops::bf16_kernel_runs(ops::Bf16Kernel::Dot) || ops::bf16_kernel_runs(ops::Bf16Kernel::Amx);
  const bool widened = ops::best_bf16_kernel() == ops::Bf16Kernel::Widen;
  for (int b : {1, 8}) {
    const Row *f = find("vmamba_tiny_s1l8", DType::F32, b, 224, threads),
              *h = find("vmamba_tiny_s1l8", DType::BF16, b, 224, threads);
    if (f && h) {
      const double ratio = h->images_per_s / f->images_per_s;
      checks.push_back({"vmamba_tiny_s1l8 bf16 / f32 images/s, batch " + std::to_string(b) +
                            (!native_bf16 ? " (no native bf16 products here: not judged)"
                             : widened    ? " (this CPU's bf16 products ran slower than widening to f32)"
                                          : ""),
                        fmt("%.2fx", ratio), ">= 1.6x", ratio >= 1.6, native_bf16});
    }
  }
  for (const char* model : {"vmamba_tiny_s1l8", "vim_tiny"}) {
    const Row *one = find(model, DType::F32, 8, 224, 1), *all = find(model, DType::F32, 8, 224, threads);
    if (one && all && threads > 1) {
      const double s = all->images_per_s / one->images_per_s;
      checks.push_back({std::string(model) + " batch 8: " + std::to_string(threads) + " threads / 1 thread",
                        fmt("%.2fx", s), ">= 1.8x", s >= 1.8});
    }
    const Row *b1 = find(model, DType::F32, 1, 224, threads), *b32 = find(model, DType::F32, 32, 224, threads);
    if (b1 && b32) {
      const double s = b32->images_per_s / b1->images_per_s;
      checks.push_back({std::string(model) + " batch 32 / batch 1 images/s", fmt("%.2fx", s), ">= 1.1x", s >= 1.1});
    }
    for (int size : {512, 1024}) {
      const Row* big = find(model, DType::F32, 1, size, threads);
      if (b1 && big) {  // time growth over FLOP growth: <= 1 means time grows no faster than the FLOPs
        const double g = (big->median_ms / b1->median_ms) / (big->gflop_per_image / b1->gflop_per_image);
        checks.push_back({std::string(model) + " " + std::to_string(size) + "² vs 224²: time growth / FLOP growth",
                          fmt("%.2f", g), "<= 1.00", g <= 1.0});
      }
    }
  }
  for (const Row& r : rows)
    if (r.scan.present())
      checks.push_back({r.c.model + " batch 1: selective scan time / its bound (" + r.scan.binds() + ")",
                        fmt("%.2fx", r.scan.ratio()) + fmt(" (%.1f ms", r.scan.seconds * 1e3) +
                            fmt(" vs %.1f ms)", std::max(r.scan.exp_seconds, r.scan.memory_seconds) * 1e3),
                        "<= 1.5x", r.scan.ratio() <= 1.5});
  // what the fraction of the peak could be: the traced pass with every op at its roofline floor, and with the
  // GEMMs at the measured 1024³ GEMM rate instead of the FMA peak (reported, not judged)
  for (const Row& r : rows)
    if (r.floor.floor_seconds > 0) {
      checks.push_back({r.c.model + " batch 1: fraction of the FMA peak with every op at its floor (GEMMs at the "
                                    "FMA peak / at the GEMM rate)",
                        fmt("%.0f%%", 100.0 * r.floor.peak_fraction(r.floor.floor_seconds, r.fma_peak)) +
                            fmt(" / %.0f%%", 100.0 * r.floor.peak_fraction(r.floor.gemm_rate_floor_seconds, r.fma_peak)) +
                            fmt(" (achieved %.0f%%)", 100.0 * r.fraction),
                        "report", true, false});
    }
  for (const auto& [model, g] : rss_growth_mb)
    checks.push_back({model + ": RSS growth over " + std::string(quick ? "100" : "1000") + " repeated calls",
                      fmt("%.1f MB", g), "~0 MB (<= 1 MB)", g <= 1.0});
  if (rss_over_weights_mb.count("vmamba_tiny_s1l8"))
    checks.push_back({"vmamba_tiny_s1l8 batch 1: peak RSS above the weights (and the process before loading)",
                      fmt("%.1f MB", rss_over_weights_mb["vmamba_tiny_s1l8"]), "<= 150 MB",
                      rss_over_weights_mb["vmamba_tiny_s1l8"] <= 150});
  if (det.ran)
    checks.push_back({"mask_rcnn_vmamba_tiny 1333x800: time / FLOP floor", fmt("%.2fx", det.median_ms / det.floor_ms),
                      "<= 2x", det.median_ms <= 2 * det.floor_ms});

  // markdown
  std::ostringstream md;
  md << "CPU: " << machine.cpu << " (" << machine.features << "), " << threads << " threads. FMA peak "
     << fmt("%.1f", machine.fma_peak_gflops) << " GFLOP/s, GEMM " << fmt("%.1f", machine.gemm_gflops)
     << " GFLOP/s (1024³, " << machine.gemm_backend << "). Random weights, medians of " << iters
     << " runs; `of peak` is against the higher of the FMA peaks measured just before and after each row.\n\n";
  md << "| model | dtype | batch | size | threads | median ms | images/s | GFLOP/image | GFLOP/s | FMA peak | of peak "
        "| target | peak MB |"
     << (upstream.empty() ? "" : " upstream ms/image | speed-up |") << "\n";
  md << "|---|---|---|---|---|---|---|---|---|---|---|---|---|" << (upstream.empty() ? "" : "---|---|") << "\n";
  for (const Row& r : rows) {
    md << "| " << r.c.model << " | " << dtype_name(r.c.dtype) << " | " << r.c.batch << " | " << r.c.size << " | "
       << r.threads << " | " << fmt("%.2f", r.median_ms) << " | " << fmt("%.2f", r.images_per_s) << " | "
       << fmt("%.3f", r.gflop_per_image) << " | " << fmt("%.1f", r.achieved_gflops) << " | "
       << fmt("%.1f", r.fma_peak) << " | " << fmt("%.1f%%", 100 * r.fraction) << " | "
       << (r.c.target > 0 ? fmt(">= %.0f%%", 100 * r.c.target) + (r.fraction >= r.c.target ? " met" : " missed")
                          : std::string("report"))
       << " | " << fmt("%.0f", r.peak_rss_mb) << " |";
    if (!upstream.empty())
      md << " " << (r.upstream_ms > 0 ? fmt("%.1f", r.upstream_ms) : "") << " | "
         << (r.upstream_ms > 0 ? fmt("%.1fx", r.upstream_ms / (r.median_ms / r.c.batch)) : "") << " |";
    md << "\n";
  }
  if (det.ran) {
    md << "\nmask_rcnn_vmamba_tiny, one 1333x800 image (1344x800 padded), random weights: "
       << fmt("%.0f", det.median_ms) << " ms, " << fmt("%.1f", det.gflop) << " GFLOP, FLOP floor "
       << fmt("%.0f", det.floor_ms) << " ms at " << fmt("%.1f", det.fma_peak) << " GFLOP/s\n\n";
    md << "| part (the last run) | ms | GFLOP | FLOP floor ms | time / floor |\n|---|---|---|---|---|\n";
    const DetectionTimings& p = det.parts;
    const std::vector<std::pair<const char*, double>> parts = {
        {"backbone", p.backbone_ms}, {"fpn", p.fpn_ms}, {"rpn", p.rpn_ms}, {"roi box", p.box_ms}, {"masks", p.mask_ms}};
    for (size_t i = 0; i < parts.size(); ++i) {
      const double floor_ms = det.part_gflop[i] / det.fma_peak * 1e3;
      md << "| " << parts[i].first << " | " << fmt("%.1f", parts[i].second) << " | " << fmt("%.1f", det.part_gflop[i])
         << " | " << fmt("%.1f", floor_ms) << " | " << (floor_ms > 0 ? fmt("%.2fx", parts[i].second / floor_ms) : "")
         << " |\n";
    }
    md << "| total (median) | " << fmt("%.1f", det.median_ms) << " | " << fmt("%.1f", det.gflop) << " | "
       << fmt("%.1f", det.floor_ms) << " | " << fmt("%.2fx", det.median_ms / det.floor_ms) << " |\n";
  }
  md << "\n| check | measured | target | |\n|---|---|---|---|\n";
  for (const Check& k : checks)
    md << "| " << k.what << " | " << k.measured << " | " << k.target << " | "
       << (!k.judged ? "not judged" : k.met ? "met" : "missed") << " |\n";
  std::fputs(md.str().c_str(), stdout);

  if (!save.empty()) {
    nlohmann::ordered_json j;
    j["machine"] = machine.json();
    j["iters"] = iters;
    j["rows"] = nlohmann::ordered_json::array();
    for (const Row& r : rows) {
      nlohmann::ordered_json o = {{"model", r.c.model},
                                  {"dtype", dtype_name(r.c.dtype)},
                                  {"batch", r.c.batch},
                                  {"size", r.c.size},
                                  {"threads", r.threads},
                                  {"median_ms", r.median_ms},
                                  {"min_ms", r.min_ms},
                                  {"max_ms", r.max_ms},
                                  {"images_per_s", r.images_per_s},
                                  {"gflop_per_image", r.gflop_per_image},
                                  {"achieved_gflops", r.achieved_gflops},
                                  {"fma_peak_gflops", r.fma_peak},
                                  {"peak_fraction", r.fraction},
                                  {"peak_rss_mb", r.peak_rss_mb}};
      if (r.floor.floor_seconds > 0)
        o["floor"] = {{"ops_ms", r.floor.seconds * 1e3},
                      {"floor_ms", r.floor.floor_seconds * 1e3},
                      {"gemm_rate_floor_ms", r.floor.gemm_rate_floor_seconds * 1e3}};
      if (r.scan.present())
        o["scan_bound"] = {{"scan_ms", r.scan.seconds * 1e3},
                           {"exp_bound_ms", r.scan.exp_seconds * 1e3},
                           {"memory_bound_ms", r.scan.memory_seconds * 1e3},
                           {"exp_rate_g_per_s", r.scan.exp_rate},
                           {"bandwidth_gbs", r.scan.bandwidth_gbs},
                           {"of_bound", r.scan.ratio()},
                           {"binds", r.scan.binds()}};
      if (r.c.target > 0) o["target_fraction"] = r.c.target;
      if (r.upstream_ms > 0) {
        o["upstream_ms_per_image"] = r.upstream_ms;
        o["speedup"] = r.upstream_ms / (r.median_ms / r.c.batch);
      }
      j["rows"].push_back(o);
    }
    if (det.ran) {
      const DetectionTimings& p = det.parts;
      j["detection"] = {{"model", "mask_rcnn_vmamba_tiny"}, {"width", 1333},          {"height", 800},
                        {"median_ms", det.median_ms},      {"gflop", det.gflop},       {"fma_peak_gflops", det.fma_peak},
                        {"floor_ms", det.floor_ms},        {"backbone_ms", p.backbone_ms}, {"fpn_ms", p.fpn_ms},
                        {"rpn_ms", p.rpn_ms},              {"box_ms", p.box_ms},       {"mask_ms", p.mask_ms},
                        {"part_gflop", {{"backbone", det.part_gflop[0]}, {"fpn", det.part_gflop[1]},
                                        {"rpn", det.part_gflop[2]}, {"box", det.part_gflop[3]},
                                        {"mask", det.part_gflop[4]}}}};
    }
    j["checks"] = nlohmann::ordered_json::array();
    for (const Check& k : checks)
      j["checks"].push_back({{"check", k.what}, {"measured", k.measured}, {"target", k.target}, {"met", k.met},
                             {"judged", k.judged}});
    std::ofstream(save + ".md") << md.str();
    std::ofstream js(save + ".json");
    js << json_text(j, 1) << "\n";
    MAMBACV_CHECK(js, "--save: cannot write '" << save << ".json'");
    std::fprintf(stderr, "wrote %s.md and %s.json\n", save.c_str(), save.c_str());
  }
  return 0;
}

}  // namespace mambacv::cli
