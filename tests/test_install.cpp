// `cmake --install` of this build into a temporary prefix, then a downstream CMake project that finds the installed
// package (find_package(mambacv CONFIG REQUIRED), mambacv::mambacv) and builds demo/retrieval.cpp against it.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "test_util.h"

namespace fs = std::filesystem;
using mambacv::test::fixture;
using mambacv::test::json_lines;
using mambacv::test::q;
using mambacv::test::run_command;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

TEST(Install, PrefixLayoutAndDownstreamProject) {
  MAMBACV_REQUIRE_FIXTURES();
#ifndef MAMBACV_CMAKE_COMMAND
  GTEST_SKIP() << "built without the CMake command path";
#else
  const std::string cmake = MAMBACV_CMAKE_COMMAND;
  const fs::path dir = mambacv::test::temp_dir("install");
  const fs::path prefix = dir / "prefix";
  std::string out;
  ASSERT_EQ(run_command(q(cmake) + " --install " + q(mambacv::test::binary_dir()) + " --prefix " + q(prefix.string()),
                        &out),
            0)
      << out;

  // layout
  EXPECT_TRUE(fs::is_regular_file(prefix / "bin" / "mambacv"));
  for (const char* h : {"mambacv.h", "image.h", "weights.h", "tensor.h", "error.h", "dtype.h", "device.h",
                        "opencv.h"})
    EXPECT_TRUE(fs::is_regular_file(prefix / "include" / "mambacv" / h)) << h;
  EXPECT_TRUE(fs::is_regular_file(prefix / "share" / "mambacv" / "configs" / "vim_tiny.json"));
  EXPECT_TRUE(fs::is_regular_file(prefix / "share" / "mambacv" / "configs" / "imagenet1k_labels.txt"));
  fs::path config;
  bool library = false;
  for (const auto& e : fs::recursive_directory_iterator(prefix)) {
    const std::string name = e.path().filename().string();
    if (name == "mambacvConfig.cmake") config = e.path();
    if (name == "libmambacv.a" || name.rfind("libmambacv.so", 0) == 0) library = true;
  }
  EXPECT_FALSE(config.empty()) << "no mambacvConfig.cmake under " << prefix;
  EXPECT_TRUE(fs::is_regular_file(config.parent_path() / "mambacvTargets.cmake"));
  EXPECT_TRUE(fs::is_regular_file(config.parent_path() / "mambacvConfigVersion.cmake"));
  EXPECT_TRUE(library);

  // the public headers (all but the optional opencv.h) use no OpenCV, Eigen or CUDA types, and no header
  // includes a project-internal one
  const std::regex foreign_include(R"(#\s*include\s*[<"](opencv2|Eigen|cuda|cublas|cudnn))");
  const std::regex foreign_type(R"((^|[^A-Za-z0-9_])(cv::|Eigen::|cudaStream_t|cublasHandle_t|__half\b))");
  const std::regex internal_include(R"(#\s*include\s*"(kernels|ssm|vision|tools)/)");
  for (const auto& e : fs::directory_iterator(prefix / "include" / "mambacv")) {
    const std::string text = read_file(e.path()), name = e.path().filename().string();
    if (name != "opencv.h") {
      EXPECT_FALSE(std::regex_search(text, foreign_include)) << name;
      EXPECT_FALSE(std::regex_search(text, foreign_type)) << name;
    }
    EXPECT_FALSE(std::regex_search(text, internal_include)) << name;
  }

  // the installed command line runs, and the installed configs load (by name, from the installed folder)
  ASSERT_EQ(run_command("MAMBACV_CONFIG_DIR=" + q((prefix / "share" / "mambacv" / "configs").string()) + " " +
                            q((prefix / "bin" / "mambacv").string()) + " info --model vim_tiny --size 32",
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("parameters"), std::string::npos) << out;

  // a downstream project: find_package + one demo source
  const fs::path src = dir / "downstream", build = dir / "downstream-build";
  fs::create_directories(src);
  std::ofstream(src / "CMakeLists.txt")
      << "cmake_minimum_required(VERSION 3.22)\n"
         "project(mambacv_downstream LANGUAGES CXX)\n"
         "find_package(mambacv 0.1 CONFIG REQUIRED)\n"
         "add_executable(retrieval \""
      << (fs::path(mambacv::test::source_dir()) / "demo" / "retrieval.cpp").generic_string()
      << "\")\n"
         "target_link_libraries(retrieval PRIVATE mambacv::mambacv)\n";
  ASSERT_EQ(run_command(q(cmake) + " -S " + q(src.string()) + " -B " + q(build.string()) +
                            " -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=" + q(prefix.string()) +
                            " -DCMAKE_CXX_COMPILER=" + q(MAMBACV_CXX_COMPILER),
                        &out),
            0)
      << out;
  ASSERT_EQ(run_command(q(cmake) + " --build " + q(build.string()) + " -j2", &out), 0) << out;

  // run it on the fixture images: 4 images, every one a query against the other 3
  ASSERT_EQ(run_command(q((build / "retrieval").string()) + " --model " + q(fixture("vim_mini.json")) + " --weights " +
                            q(fixture("vim_mini.weights.safetensors")) + " --index " + q(fixture("images")) +
                            " --topk 2 --json",
                        &out),
            0)
      << out;
  std::istringstream is(out);
  std::string line;
  int queries = 0;
  while (std::getline(is, line)) {
    if (line.empty() || line[0] != '{') continue;
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["neighbors"].size(), 2u) << line;
    ++queries;
  }
  EXPECT_EQ(queries, 4) << out;
#endif
}
