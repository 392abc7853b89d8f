#include "test_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <random>
#include <sstream>
#include <sys/wait.h>

#include "kernels/cpu_info.h"

namespace mambacv::test {

namespace {
// The MAMBACV_ISA reruns (tests/CMakeLists.txt) lower the kernels' dispatch; one whose level is the CPU's own
// (avx2 on a CPU without AVX-512) repeats the default run, so its tests are skipped.
class IsaRerun : public ::testing::Environment {
 public:
  void SetUp() override {
    const char* isa = std::getenv("MAMBACV_ISA");
    if (isa && *isa && cpu::cpu_isa() == cpu::detected_isa())
      GTEST_SKIP() << "MAMBACV_ISA=" << isa << " is this CPU's own level (" << cpu::isa_name(cpu::detected_isa())
                   << "): the run without it covers these tests";
  }
};
const ::testing::Environment* const kIsaRerun = ::testing::AddGlobalTestEnvironment(new IsaRerun);
}  // namespace

std::string fixtures_dir() {
  const char* env = std::getenv("MAMBACV_FIXTURES");
  return env && *env ? std::string(env) : std::string(MAMBACV_FIXTURES);
}
std::string fixture(const std::string& rel) { return fixtures_dir() + "/" + rel; }
bool have_fixtures() { return std::filesystem::exists(fixtures_dir() + "/README.md"); }
std::string source_dir() { return MAMBACV_SOURCE_DIR; }
std::string binary_dir() { return MAMBACV_BINARY_DIR; }
std::string cli_path() { return MAMBACV_CLI; }

std::string temp_dir(const std::string& tag) {
  namespace fs = std::filesystem;
  // per process: ctest runs the same program more than once at a time (the MAMBACV_ISA reruns beside the
  // discovered tests), and two runs must not share, or delete, each other's files
  fs::path p = fs::path(MAMBACV_BINARY_DIR) / "test_tmp" / (tag + "." + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* f = popen(full.c_str(), "r");
  if (!f) return -1;
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), f)) > 0) out.append(buf.data(), n);
  int st = pclose(f);
  if (output) *output = out;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

std::string q(const std::string& s) { return "'" + s + "'"; }

std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> v;
  std::istringstream is(out);
  std::string line;
  while (std::getline(is, line))
    if (!line.empty() && line[0] == '{') v.push_back(nlohmann::json::parse(line));
  return v;
}

Tensor random_tensor(const Shape& shape, uint64_t seed, float lo, float hi) {
  Tensor t = Tensor::empty(shape);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = d(rng);
  return t;
}

void expect_batch_groups_give_the_whole_batch(const ModelConfig& cfg, const Tensor& x,
                                              const std::vector<std::string>& expected) {
  std::map<std::string, Tensor> whole;
  for (int group : {static_cast<int>(x.dim(0)), 1, 2, 3, 0}) {
    Options o;
    o.batch_group = group;
    const Model m = Model::random(cfg, o, 11);
    const std::map<std::string, Tensor> out = m.forward_all(x);
    if (whole.empty()) {
      whole = out;
      for (const std::string& name : expected) ASSERT_TRUE(whole.count(name)) << cfg.name << ": no output " << name;
      continue;
    }
    ASSERT_EQ(out.size(), whole.size()) << cfg.name << ", groups of " << group;
    for (const auto& [name, t] : whole) {
      ASSERT_TRUE(out.count(name)) << cfg.name << ": " << name;
      const Tensor& got = out.at(name);
      ASSERT_EQ(got.shape(), t.shape()) << cfg.name << ": " << name;
      EXPECT_LE(compare(got, t).rel_l2, 1e-6) << cfg.name << ": " << name << " differs with groups of " << group;
    }
  }
  Options bad;
  bad.batch_group = -1;
  EXPECT_THROW(Model::random(cfg, bad), Error);
}

}  // namespace mambacv::test
