// `cmake --install` of this build into a temporary prefix (not the configured CMAKE_INSTALL_PREFIX), then a
// downstream CMake project that finds the installed package (find_package(mambacv CONFIG REQUIRED COMPONENTS
// opencv)) with CUDA hidden from it, builds demo/retrieval.cpp and two small programs against mambacv::mambacv and
// mambacv::opencv, and runs them: named configs resolve inside the prefix, and the exported targets name no path of
// the build machine.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <vector>

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

// The value of `key` in a CMakeCache.txt ("" when absent).
std::string cache_value(const fs::path& cache, const std::string& key) {
  std::ifstream f(cache);
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key + ":", 0) == 0) return line.substr(line.find('=') + 1);
  return "";
}

// $PATH without the folders that hold nvcc (the downstream build sees no CUDA compiler).
std::string path_without_nvcc() {
  const char* path = std::getenv("PATH");
  std::string out, entry;
  std::istringstream is(path ? path : "/usr/bin:/bin");
  while (std::getline(is, entry, ':')) {
    std::error_code ec;
    if (entry.empty() || fs::exists(fs::path(entry) / "nvcc", ec)) continue;
    out += (out.empty() ? "" : ":") + entry;
  }
  return out;
}

// The whole text of every file under `dir` whose name matches `name`.
std::vector<std::pair<fs::path, std::string>> files_named(const fs::path& dir, const std::regex& name) {
  std::vector<std::pair<fs::path, std::string>> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && std::regex_match(e.path().filename().string(), name))
      out.emplace_back(e.path(), read_file(e.path()));
  return out;
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

  // the prefix differs from the configured one: the install recorded its own configs folder in the library
  const fs::path cache = fs::path(mambacv::test::binary_dir()) / "CMakeCache.txt";
  const std::string configured_prefix = cache_value(cache, "CMAKE_INSTALL_PREFIX");
  EXPECT_FALSE(configured_prefix.empty());
  EXPECT_NE(fs::weakly_canonical(configured_prefix), fs::weakly_canonical(prefix));
  const fs::path installed_configs = prefix / "share" / "mambacv" / "configs";

  // the installed command line runs, and the installed configs load by name (no MAMBACV_CONFIG_DIR)
  ASSERT_EQ(run_command("env -u MAMBACV_CONFIG_DIR " + q((prefix / "bin" / "mambacv").string()) +
                            " info --model vim_tiny --size 32",
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("parameters"), std::string::npos) << out;

  // the exported targets: no path of the source tree, the build tree or the CUDA toolkit; no CUDA targets. Every
  // absolute path they hold is inside the prefix (${_IMPORT_PREFIX}).
  const std::string source = fs::weakly_canonical(mambacv::test::source_dir()).string();
  const std::string binary = fs::weakly_canonical(mambacv::test::binary_dir()).string();
  const std::string cuda_root = cache_value(cache, "CUDAToolkit_LIBRARY_ROOT");
  const auto targets = files_named(config.parent_path(), std::regex(R"(mambacv.*Targets.*\.cmake)"));
  EXPECT_GE(targets.size(), 3u);  // mambacvTargets.cmake, -release.cmake, mambacvOpenCVTargets.cmake
  bool opencv_target = false;
  for (const auto& [path, text] : targets) {
    const std::string name = path.filename().string();
    EXPECT_EQ(text.find(source), std::string::npos) << name << " names the source tree " << source;
    EXPECT_EQ(text.find(binary), std::string::npos) << name << " names the build tree " << binary;
    EXPECT_EQ(text.find("/usr/local/cuda"), std::string::npos) << name;
    if (!cuda_root.empty()) {
      EXPECT_EQ(text.find(cuda_root), std::string::npos) << name << " names " << cuda_root;
    }
    EXPECT_EQ(text.find("CUDA::"), std::string::npos) << name;
    if (text.find("add_library(mambacv::opencv INTERFACE IMPORTED)") != std::string::npos) opencv_target = true;
    // property values: every quoted absolute path starts at the prefix
    const std::regex property(R"(^\s+(INTERFACE_\w+|IMPORTED_\w+)\s+"([^"]*)\")");
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
      std::smatch m;
      if (!std::regex_search(line, m, property)) continue;
      std::istringstream items(m[2].str());
      std::string item;
      while (std::getline(items, item, ';')) {
        if (item.rfind("/", 0) == 0 || (item.rfind("$<", 0) == 0 && item.find(":/") != std::string::npos))
          ADD_FAILURE() << name << ": absolute path in " << m[1] << ": " << item;
      }
    }
  }
  EXPECT_TRUE(opencv_target) << "no mambacv::opencv in the exported targets";
  const bool with_cuda = read_file(config).find("set(mambacv_WITH_CUDA ON)") != std::string::npos;
  if (with_cuda) {
    EXPECT_TRUE(fs::is_regular_file(prefix / "lib" / "mambacv" / "libcudart_static.a"));
  }

  // a downstream project: find_package + one demo source + a named-config probe (mambacv::mambacv) + an OpenCV
  // bridge probe (mambacv::opencv; the project itself does not look for OpenCV)
  const fs::path src = dir / "downstream", build = dir / "downstream-build";
  fs::create_directories(src);
  std::ofstream(src / "config_probe.cpp")
      << "#include <mambacv/device.h>\n"
         "#include <mambacv/mambacv.h>\n"
         "#include <iostream>\n"
         "int main() {\n"
         "  std::cout << \"config \" << mambacv::load_model_config(\"vim_tiny\").path << \"\\n\";\n"
         "  for (const auto& d : mambacv::config_search_path()) std::cout << \"dir \" << d << \"\\n\";\n"
         "  std::cout << \"cuda \" << mambacv::cuda_built() << \" \" << mambacv::cuda_device_count() << \"\\n\";\n"
         "}\n";
  std::ofstream(src / "opencv_probe.cpp")
      << "#include <mambacv/opencv.h>\n"
         "#include <iostream>\n"
         "int main() {\n"
         "  const cv::Mat m(5, 7, CV_8UC3, cv::Scalar(10, 20, 30));\n"
         "  const mambacv::Image image = mambacv::image_from_mat(m);\n"
         "  const cv::Mat back = mambacv::mat_from_image(image);\n"
         "  std::cout << \"image \" << image.width << \"x\" << image.height << \" \" << int(image.rgb[0]) << \" \"\n"
         "            << back.cols << \"x\" << back.rows << \" \" << int(back.at<cv::Vec3b>(0, 0)[0]) << \"\\n\";\n"
         "}\n";
  std::ofstream(src / "CMakeLists.txt")
      << "cmake_minimum_required(VERSION 3.22)\n"
         "project(mambacv_downstream LANGUAGES CXX)\n"
         "find_package(mambacv 0.1 CONFIG REQUIRED COMPONENTS opencv)\n"
         "if(TARGET CUDA::cudart_static OR CUDAToolkit_FOUND)\n"
         "  message(FATAL_ERROR \"the mambacv package looked for the CUDA toolkit\")\n"
         "endif()\n"
         "add_executable(retrieval \""
      << (fs::path(mambacv::test::source_dir()) / "demo" / "retrieval.cpp").generic_string()
      << "\")\n"
         "target_link_libraries(retrieval PRIVATE mambacv::mambacv)\n"
         "add_executable(config_probe config_probe.cpp)\n"
         "target_link_libraries(config_probe PRIVATE mambacv::mambacv)\n"
         "add_executable(opencv_probe opencv_probe.cpp)\n"
         "target_link_libraries(opencv_probe PRIVATE mambacv::opencv)\n";
  // CUDA hidden: no nvcc on PATH, and find_package(CUDAToolkit) disabled (it would fail the package's configure)
  const std::string no_cuda = "env -u CUDAToolkit_ROOT -u CUDA_PATH PATH=" + q(path_without_nvcc()) + " ";
  ASSERT_EQ(run_command(no_cuda + q(cmake) + " -S " + q(src.string()) + " -B " + q(build.string()) +
                            " -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=" + q(prefix.string()) +
                            " -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=TRUE -DCMAKE_CXX_COMPILER=" +
                            q(MAMBACV_CXX_COMPILER),
                        &out),
            0)
      << out;
  ASSERT_EQ(run_command(no_cuda + q(cmake) + " --build " + q(build.string()) + " -j2", &out), 0) << out;
  // the link lines name no CUDA toolkit file; with the kernels compiled in they name the installed cudart copy
  const auto links = files_named(build, std::regex(R"(link\.txt|build\.ninja)"));
  EXPECT_FALSE(links.empty());
  bool cudart_from_prefix = false;
  for (const auto& [path, text] : links) {
    EXPECT_EQ(text.find("/usr/local/cuda"), std::string::npos) << path << ": " << text;
    if (!cuda_root.empty()) {
      EXPECT_EQ(text.find(cuda_root), std::string::npos) << path << ": " << text;
    }
    if (text.find((prefix / "lib" / "mambacv" / "libcudart_static.a").string()) != std::string::npos)
      cudart_from_prefix = true;
  }
  EXPECT_EQ(cudart_from_prefix, with_cuda);

  // named configs resolve inside the prefix for a program outside it (the library's recorded folder), and the
  // search path names no folder of the build machine
  ASSERT_EQ(run_command("env -u MAMBACV_CONFIG_DIR " + q((build / "config_probe").string()), &out), 0) << out;
  const std::smatch found = [&] {
    std::smatch m;
    std::regex_search(out, m, std::regex("config ([^\\n]*)\\n"));
    return m;
  }();
  ASSERT_FALSE(found.empty()) << out;
  std::error_code ec;
  EXPECT_TRUE(fs::equivalent(found[1].str(), installed_configs / "vim_tiny.json", ec)) << out;
  EXPECT_EQ(out.find((fs::path(source) / "configs").string()), std::string::npos) << out;  // (the prefix may lie inside the source tree)
  EXPECT_NE(out.find("cuda " + std::string(with_cuda ? "1" : "0")), std::string::npos) << out;

  // the OpenCV bridge links and converts
  ASSERT_EQ(run_command(q((build / "opencv_probe").string()), &out), 0) << out;
  EXPECT_NE(out.find("image 7x5 30 7x5 10"), std::string::npos) << out;

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
