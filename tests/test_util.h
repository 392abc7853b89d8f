// Helpers shared by the test programs.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mambacv/mambacv.h"
#include "mambacv/tensor.h"

namespace mambacv::test {

// The golden fixtures folder: $MAMBACV_FIXTURES when set, else the build's MAMBACV_FIXTURES_DIR (default
// ../shared/fixtures beside the project). fixture(rel) is a file in it.
std::string fixtures_dir();
std::string fixture(const std::string& rel);
// Whether the fixtures folder is there (its README.md exists).
bool have_fixtures();
// First statement of every test that reads fixtures: skips it, with the reason, when they are absent.
#define MAMBACV_REQUIRE_FIXTURES()                                                                        \
  if (!::mambacv::test::have_fixtures())                                                                  \
  GTEST_SKIP() << "golden fixtures not found at " << ::mambacv::test::fixtures_dir()                      \
               << " (set MAMBACV_FIXTURES, or configure with -DMAMBACV_FIXTURES_DIR=...)"
// Path of the project source tree / the build tree.
std::string source_dir();
std::string binary_dir();
// A fresh empty temporary directory for one test.
std::string temp_dir(const std::string& tag);
// Path of the built mambacv command line.
std::string cli_path();
// Runs a shell command, returns its exit status; stdout+stderr captured into *output when given.
int run_command(const std::string& cmd, std::string* output = nullptr);
// A path or argument quoted for the shell ('...').
std::string q(const std::string& s);
// The JSON objects among a command's output lines (other lines, e.g. decoder warnings, are skipped).
std::vector<nlohmann::json> json_lines(const std::string& out);
// Deterministic pseudo-random f32 tensor in [lo, hi).
Tensor random_tensor(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f);

// The network runs its layers over groups of images (Options::batch_group): for random weights of `cfg`, every
// grouping of x (B, 3, H, W) with B = 5 (groups of 1, 2 and 3: uneven last groups; 0: chosen from the L2 cache)
// must give the whole batch's forward_all outputs up to summation order (the portable Eigen GEMM sums differently
// per row count), each of `expected` among them. A negative batch_group is refused.
void expect_batch_groups_give_the_whole_batch(const ModelConfig& cfg, const Tensor& x,
                                              const std::vector<std::string>& expected);

}  // namespace mambacv::test
