// mambacv_soak: classify and features on one model from several threads for a given time, with inputs of varying
// batch and size; every result must be bit-identical to the serial run of the same input, and resident memory must
// stay flat once warm. Prints the memory curve (one RSS sample per second) and a summary; exit 0 when both hold.
//
//   mambacv_soak --model CONFIG --weights W [--seconds 60] [--workers 4] [--max-growth-mb 16]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "mambacv/mambacv.h"
#include "sanitizer.h"

using namespace mambacv;

namespace {

double rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

struct Case {
  Tensor x;                               // (B, 3, S, S)
  Tensor logits;                          // serial classify(x), when the model classifies
  std::map<std::string, Tensor> features; // serial features(x)
};

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int i = 1; i + 1 < argc; i += 2) a[argv[i]] = argv[i + 1];
  if (!a.count("--model") || !a.count("--weights")) {
    std::fprintf(stderr, "usage: mambacv_soak --model CONFIG --weights W [--seconds 60] [--workers 4] "
                         "[--max-growth-mb 16]\n");
    return 2;
  }
  const double seconds = a.count("--seconds") ? std::stod(a["--seconds"]) : 60;
  const int workers = a.count("--workers") ? std::stoi(a["--workers"]) : 4;
  const double max_growth = a.count("--max-growth-mb") ? std::stod(a["--max-growth-mb"]) : 16;
  try {
    Options opt;
    opt.threads = 1;  // one core per call; the workers give the concurrency
    Model model = Model::load(a["--model"], a["--weights"], opt);
    const int base = std::min(model.input_size(), 64);  // small inputs: many calls, every combination seen early
    std::vector<Case> cases;
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0, 1);
    for (int b : {1, 2, 3})
      for (int s : {base, base + 16, base * 3 / 2 + 1}) {
        Case c;
        c.x = Tensor::empty({b, 3, s, s});
        for (int64_t i = 0; i < c.x.numel(); ++i) c.x.f32()[i] = nd(rng);
        if (model.num_classes() > 0) c.logits = model.classify(c.x);
        c.features = model.features(c.x);
        cases.push_back(std::move(c));
      }
    std::atomic<int64_t> calls{0}, mismatches{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w)
      pool.emplace_back([&, w] {
        std::mt19937 r(static_cast<unsigned>(w) + 1);
        while (!stop) {
          const Case& c = cases[r() % cases.size()];
          bool ok = true;
          if (c.logits.defined() && r() % 2) {
            ok = same_bits(model.classify(c.x), c.logits);
          } else {
            const auto f = model.features(c.x);
            for (const auto& [k, v] : c.features) ok = ok && f.count(k) && same_bits(f.at(k), v);
          }
          if (!ok) ++mismatches;
          ++calls;
        }
      });
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<double> curve;
    for (;;) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      curve.push_back(rss_mb());
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() >= seconds) break;
    }
    stop = true;
    for (auto& t : pool) t.join();
    // flat once warm: the growth between the end of the first fifth and the end
    const size_t warm = std::min(curve.size() - 1, curve.size() / 5);
    double warm_max = 0;
    for (size_t i = 0; i <= warm; ++i) warm_max = std::max(warm_max, curve[i]);
    double later_max = 0;
    for (size_t i = warm; i < curve.size(); ++i) later_max = std::max(later_max, curve[i]);
    const double growth = later_max - warm_max;
    std::printf("rss_mb per second:");
    for (double v : curve) std::printf(" %.1f", v);
    std::printf("\n%lld calls from %d workers in %.0f s, %lld mismatches against the serial results, resident "
                "memory %.1f MB after warm-up, growth %.1f MB (limit %.1f)\n",
                static_cast<long long>(calls.load()), workers, seconds, static_cast<long long>(mismatches.load()),
                warm_max, growth, max_growth);
    if (test::kUnderSanitizer)
      std::printf("sanitizer build: the memory growth is reported, not checked (quarantine and shadow memory)\n");
    const bool memory_ok = test::kUnderSanitizer || growth <= max_growth;
    return mismatches == 0 && calls > 0 && memory_ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mambacv_soak: %s\n", e.what());
    return 1;
  }
}
