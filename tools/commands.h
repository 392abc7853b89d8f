// The subcommands of the mambacv command line.
#pragma once

#include <functional>
#include <string>
#include <vector>

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

// Shared helpers of the commands.
double measure_gemm_gflops(int threads);
// verify for arch "mask_rcnn" fixtures (tools/verify_detection.cpp).
int verify_detection_fixture(const std::string& fixture, const std::string& weights, const TensorMap& golden,
                             const Options& opt);

}  // namespace mambacv::cli
