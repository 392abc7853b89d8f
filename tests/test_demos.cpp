// The demo programs (demo/retrieval.cpp, demo/video_classify.cpp) on the fixture images with the vim_mini fixture
// weights, and the OpenCV bridge header they use (mambacv/opencv.h).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>
#include <sstream>

#include "mambacv/mambacv.h"
#include "mambacv/opencv.h"
#include "test_util.h"

namespace fs = std::filesystem;
using mambacv::test::fixture;
using mambacv::test::json_lines;
using mambacv::test::q;
using mambacv::test::run_command;
using mambacv::test::temp_dir;

namespace {

#if defined(MAMBACV_DEMO_RETRIEVAL) && defined(MAMBACV_DEMO_VIDEO)
const std::string kRetrieval = MAMBACV_DEMO_RETRIEVAL;
const std::string kVideo = MAMBACV_DEMO_VIDEO;
#define SKIP_WITHOUT_DEMOS() (void)0
#else
const std::string kRetrieval, kVideo;
#define SKIP_WITHOUT_DEMOS() GTEST_SKIP() << "the demo programs are not part of this build (no demo/CMakeLists.txt)"
#endif

std::string model_args() {
  return " --model " + q(fixture("vim_mini.json")) + " --weights " + q(fixture("vim_mini.weights.safetensors"));
}


std::string name_of(const nlohmann::json& j, const char* key) { return fs::path(j[key].get<std::string>()).filename(); }

// Number of frames and frame size of a video, by reading every frame back.
int count_frames(const std::string& path, cv::Size* size) {
  cv::VideoCapture cap(path);
  if (!cap.isOpened()) return -1;
  int n = 0;
  cv::Mat f;
  while (cap.read(f) && !f.empty()) {
    if (size) *size = f.size();
    ++n;
  }
  return n;
}

}  // namespace

// ---- mambacv/opencv.h ----------------------------------------------------------------------------------------------

TEST(OpenCvBridge, MatMatchesLoadImageAndPreprocess) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string path = fixture("images/chelsea.png");
  const mambacv::Image ref = mambacv::load_image(path);
  const cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  ASSERT_FALSE(bgr.empty());
  const mambacv::Image img = mambacv::image_from_mat(bgr);
  ASSERT_EQ(img.width, ref.width);
  ASSERT_EQ(img.height, ref.height);
  EXPECT_EQ(img.rgb, ref.rgb);  // BGR swapped back to RGB

  mambacv::InputSpec spec;
  spec.size = 64;
  const mambacv::Tensor a = mambacv::preprocess_mat(bgr, spec), b = mambacv::preprocess(ref, spec);
  ASSERT_EQ(a.shape(), b.shape());
  EXPECT_EQ(mambacv::compare(a, b).max_abs, 0.0);

  // RGB order, BGRA, gray and a strided ROI
  cv::Mat rgb, bgra, gray;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  cv::cvtColor(bgr, bgra, cv::COLOR_BGR2BGRA);
  EXPECT_EQ(mambacv::image_from_mat(rgb, mambacv::MatColorOrder::Rgb).rgb, ref.rgb);
  EXPECT_EQ(mambacv::image_from_mat(bgra).rgb, ref.rgb);
  cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
  const mambacv::Image g = mambacv::image_from_mat(gray);
  EXPECT_EQ(g.pixel(7, 5)[0], gray.at<uint8_t>(5, 7));
  EXPECT_EQ(g.pixel(7, 5)[2], gray.at<uint8_t>(5, 7));
  const cv::Mat roi = bgr(cv::Rect(10, 20, 33, 17));  // step > cols * 3
  ASSERT_GT(roi.step[0], static_cast<size_t>(roi.cols) * 3);
  const mambacv::Image r = mambacv::image_from_mat(roi);
  ASSERT_EQ(r.width, 33);
  ASSERT_EQ(r.height, 17);
  for (int y : {0, 16})
    for (int x : {0, 32})
      for (int c = 0; c < 3; ++c) EXPECT_EQ(r.pixel(x, y)[c], ref.pixel(10 + x, 20 + y)[c]);

  // and back
  const cv::Mat back = mambacv::mat_from_image(ref);
  EXPECT_EQ(cv::norm(back, bgr, cv::NORM_INF), 0.0);
}

TEST(OpenCvBridge, UnsupportedMatsThrowClearErrors) {
  auto message = [](const cv::Mat& m) {
    try {
      mambacv::preprocess_mat(m);
    } catch (const mambacv::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(cv::Mat()).find("empty"), std::string::npos);
  EXPECT_NE(message(cv::Mat(8, 8, CV_32FC3, cv::Scalar(0.5))).find("8-bit"), std::string::npos);
  EXPECT_NE(message(cv::Mat(8, 8, CV_16UC1, cv::Scalar(1))).find("CV_16UC1"), std::string::npos);
  EXPECT_NE(message(cv::Mat(8, 8, CV_8UC2, cv::Scalar(1))).find("2"), std::string::npos);
  const int sz[3] = {2, 3, 4};
  EXPECT_NE(message(cv::Mat(3, sz, CV_8UC1, cv::Scalar(0))).find("2-D"), std::string::npos);
}

// ---- mambacv_demo_retrieval ---------------------------------------------------------------------------------------

TEST(DemoRetrieval, DuplicateImagesAreEachOthersNearestNeighbour) {
  MAMBACV_REQUIRE_FIXTURES();
  SKIP_WITHOUT_DEMOS();
  const std::string dir = temp_dir("demo_retrieval_dup");
  const fs::path idx = fs::path(dir) / "index";
  fs::create_directories(idx / "sub");
  fs::copy_file(fixture("images/chelsea.png"), idx / "cat_a.png");
  fs::copy_file(fixture("images/chelsea.png"), idx / "sub" / "cat_b.png");  // folders are searched recursively
  fs::copy_file(fixture("images/coffee.png"), idx / "coffee.png");
  fs::copy_file(fixture("images/coffee_small.jpg"), idx / "coffee_small.jpg");
  fs::copy_file(fixture("images/chelsea_gray.png"), idx / "gray.png");
  std::ofstream(idx / "notes.txt") << "not an image, not listed";

  std::string out;
  ASSERT_EQ(run_command(kRetrieval + model_args() + " --index " + q(idx.string()) + " --topk 3 --json", &out), 0)
      << out;
  const auto lines = json_lines(out);
  ASSERT_EQ(lines.size(), 5u) << out;
  int dup = 0;
  for (const auto& j : lines) {
    const std::string qn = name_of(j, "query");
    ASSERT_EQ(j["neighbors"].size(), 3u) << j.dump();
    float prev = 2.0f;
    for (const auto& n : j["neighbors"]) {
      EXPECT_NE(name_of(n, "image"), qn) << "a query is not its own neighbour without --query";
      const float s = n["similarity"].get<float>();
      EXPECT_LE(s, prev + 1e-6f);
      EXPECT_LE(s, 1.0f + 1e-5f);
      EXPECT_GE(s, -1.0f - 1e-5f);
      prev = s;
    }
    if (qn == "cat_a.png" || qn == "cat_b.png") {
      ++dup;
      EXPECT_EQ(name_of(j["neighbors"][0], "image"), qn == "cat_a.png" ? "cat_b.png" : "cat_a.png") << j.dump();
      EXPECT_NEAR(j["neighbors"][0]["similarity"].get<double>(), 1.0, 1e-5);
      EXPECT_LT(j["neighbors"][1]["similarity"].get<double>(), 1.0 - 1e-5);
    }
  }
  EXPECT_EQ(dup, 2);

  // plain-text output: the query line, then ranked neighbours
  ASSERT_EQ(run_command(kRetrieval + model_args() + " --index " + q(idx.string()) + " --topk 1", &out), 0) << out;
  EXPECT_NE(out.find("cat_a.png\n  1. 1.0000  "), std::string::npos) << out;
}

TEST(DemoRetrieval, QueriesAndBrokenImages) {
  MAMBACV_REQUIRE_FIXTURES();
  SKIP_WITHOUT_DEMOS();
  const std::string dir = temp_dir("demo_retrieval_query");
  const fs::path idx = fs::path(dir) / "index", qdir = fs::path(dir) / "queries";
  fs::create_directories(idx);
  fs::create_directories(qdir);
  fs::copy_file(fixture("images/chelsea.png"), idx / "chelsea.png");
  fs::copy_file(fixture("images/coffee.png"), idx / "coffee.png");
  fs::copy_file(fixture("images/chelsea_gray.png"), idx / "gray.png");
  std::ofstream(idx / "broken.png") << "this is not a PNG file";
  fs::copy_file(fixture("images/coffee.png"), qdir / "q_coffee.png");

  std::string out;
  const int rc = run_command(kRetrieval + model_args() + " --index " + q(idx.string()) + " --query " +
                                 q(fixture("images/chelsea.png")) + " --query " + q(qdir.string()) +
                                 " --topk 5 --json",
                             &out);
  EXPECT_EQ(rc, 1) << "a failed image makes the exit status 1\n" << out;
  EXPECT_NE(out.find("broken.png"), std::string::npos) << out;
  const auto lines = json_lines(out);
  ASSERT_EQ(lines.size(), 2u) << out;
  // a query that is itself indexed finds itself first; topk is capped by the index size (3 readable images)
  EXPECT_EQ(name_of(lines[0], "query"), "chelsea.png");
  ASSERT_EQ(lines[0]["neighbors"].size(), 3u);
  EXPECT_EQ(name_of(lines[0]["neighbors"][0], "image"), "chelsea.png");
  EXPECT_NEAR(lines[0]["neighbors"][0]["similarity"].get<double>(), 1.0, 1e-5);
  EXPECT_EQ(name_of(lines[1], "query"), "q_coffee.png");
  EXPECT_EQ(name_of(lines[1]["neighbors"][0], "image"), "coffee.png");
  EXPECT_NEAR(lines[1]["neighbors"][0]["similarity"].get<double>(), 1.0, 1e-5);
  for (const auto& j : lines)
    for (const auto& n : j["neighbors"]) EXPECT_NE(name_of(n, "image"), "broken.png");
}

TEST(DemoRetrieval, BadArgumentsGiveOneLineErrors) {
  SKIP_WITHOUT_DEMOS();
  std::string out;
  EXPECT_NE(run_command(kRetrieval + model_args(), &out), 0);
  EXPECT_NE(out.find("--index"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_NE(run_command(kRetrieval + model_args() + " --index . --bogus 1", &out), 0);
  EXPECT_NE(out.find("--bogus"), std::string::npos) << out;
  EXPECT_NE(run_command(kRetrieval + model_args() + " --index /nonexistent/folder", &out), 0);
  EXPECT_NE(out.find("/nonexistent/folder"), std::string::npos) << out;
  EXPECT_EQ(run_command(kRetrieval + " --help", &out), 0);
  EXPECT_NE(out.find("usage"), std::string::npos);
}

// ---- mambacv_demo_video -------------------------------------------------------------------------------------------

TEST(DemoVideo, VideoInVideoOut) {
  MAMBACV_REQUIRE_FIXTURES();
  SKIP_WITHOUT_DEMOS();
  const std::string dir = temp_dir("demo_video_avi");
  const std::string in = dir + "/in.avi", out_path = dir + "/out.avi";
  const cv::Mat cat = cv::imread(fixture("images/chelsea.png"));
  ASSERT_FALSE(cat.empty());
  {
    cv::VideoWriter w(in, cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 10.0, cv::Size(160, 120));
    ASSERT_TRUE(w.isOpened());
    for (int i = 0; i < 7; ++i) {  // a slow pan over the image
      cv::Mat f;
      cv::resize(cat(cv::Rect(i * 10, 0, 380, 285)), f, cv::Size(160, 120), 0, 0, cv::INTER_AREA);
      w.write(f);
    }
  }
  ASSERT_EQ(count_frames(in, nullptr), 7);

  std::string out;
  ASSERT_EQ(run_command(kVideo + model_args() + " --input " + q(in) + " --output " + q(out_path) + " --every 2", &out),
            0)
      << out;
  cv::Size size;
  EXPECT_EQ(count_frames(out_path, &size), 7) << out;
  EXPECT_EQ(size, cv::Size(160, 120));
  // frames 0, 2, 4, 6 classified: "frame_N: INDEX PROB LABEL"
  for (int i : {0, 2, 4, 6}) EXPECT_NE(out.find("frame_" + std::to_string(i) + ": "), std::string::npos) << out;
  for (int i : {1, 3, 5}) EXPECT_EQ(out.find("frame_" + std::to_string(i) + ": "), std::string::npos) << out;
  EXPECT_NE(out.find("7 frame(s), 4 classified"), std::string::npos) << out;

  // --max-frames stops early
  ASSERT_EQ(run_command(kVideo + model_args() + " --input " + q(in) + " --output " + q(out_path) + " --max-frames 3",
                        &out),
            0)
      << out;
  EXPECT_EQ(count_frames(out_path, nullptr), 3);
}

TEST(DemoVideo, FolderOfImagesToFolderAndVideo) {
  MAMBACV_REQUIRE_FIXTURES();
  SKIP_WITHOUT_DEMOS();
  const std::string dir = temp_dir("demo_video_folder");
  const fs::path frames = fs::path(dir) / "frames", annotated = fs::path(dir) / "annotated";
  fs::create_directories(frames);
  fs::copy_file(fixture("images/chelsea.png"), frames / "a_chelsea.png");
  fs::copy_file(fixture("images/coffee.png"), frames / "b_coffee.png");
  fs::copy_file(fixture("images/chelsea_gray.png"), frames / "c_gray.png");

  std::string out;
  ASSERT_EQ(run_command(kVideo + model_args() + " --input " + q(frames.string()) + " --output " +
                            q(annotated.string()),
                        &out),
            0)
      << out;
  for (const char* name : {"a_chelsea.png", "b_coffee.png", "c_gray.png"}) {
    const cv::Mat src = cv::imread((frames / name).string(), cv::IMREAD_COLOR);
    const cv::Mat dst = cv::imread((annotated / name).string(), cv::IMREAD_COLOR);
    ASSERT_FALSE(dst.empty()) << name << "\n" << out;
    ASSERT_EQ(dst.size(), src.size()) << name;
    EXPECT_GT(cv::norm(src, dst, cv::NORM_L1), 0.0) << name << ": nothing was drawn";
    // the annotation sits in the top-left corner; the bottom half is untouched (PNG is lossless)
    const cv::Rect bottom(0, src.rows / 2, src.cols, src.rows - src.rows / 2);
    EXPECT_EQ(cv::norm(src(bottom), dst(bottom), cv::NORM_INF), 0.0) << name;
  }

  // the same frames into one video: frames of other sizes are scaled to the first one's
  const std::string video = dir + "/frames.avi";
  ASSERT_EQ(run_command(kVideo + model_args() + " --input " + q(frames.string()) + " --output " + q(video), &out), 0)
      << out;
  cv::Size size;
  EXPECT_EQ(count_frames(video, &size), 3);
  const cv::Mat first = cv::imread((frames / "a_chelsea.png").string());
  EXPECT_EQ(size, cv::Size(first.cols & ~1, first.rows & ~1));  // Motion-JPEG: even sizes (451 -> 450)
}

TEST(DemoVideo, ImageSequencePatternAndSingleImageAgreeWithClassify) {
  MAMBACV_REQUIRE_FIXTURES();
  SKIP_WITHOUT_DEMOS();
  const std::string dir = temp_dir("demo_video_seq");
  const fs::path seq = fs::path(dir) / "seq";
  fs::create_directories(seq);
  for (int i = 0; i < 3; ++i) fs::copy_file(fixture("images/chelsea.png"), seq / ("f_00" + std::to_string(i) + ".png"));
  std::string out;
  ASSERT_EQ(run_command(kVideo + model_args() + " --input " + q((seq / "f_%03d.png").string()) + " --output " +
                            q(dir + "/seq.avi"),
                        &out),
            0)
      << out;
  cv::Size size;
  EXPECT_EQ(count_frames(dir + "/seq.avi", &size), 3) << out;
  EXPECT_EQ(size, cv::Size(450, 300));  // 451 x 300, the odd column cropped

  // one image, printed only: the same top-1 as `mambacv classify`
  ASSERT_EQ(run_command(kVideo + model_args() + " --input " + q(fixture("images/chelsea.png")), &out), 0) << out;
  const size_t colon = out.find("chelsea.png: ");
  ASSERT_NE(colon, std::string::npos) << out;
  int index = -1;
  double prob = 0;
  ASSERT_EQ(std::sscanf(out.c_str() + colon + 13, "%d %lf", &index, &prob), 2) << out;
  std::string cli;
  ASSERT_EQ(run_command(mambacv::test::cli_path() + " classify --json --topk 1" + model_args() + " " +
                            q(fixture("images/chelsea.png")),
                        &cli),
            0)
      << cli;
  const auto lines = json_lines(cli);
  ASSERT_EQ(lines.size(), 1u) << cli;
  EXPECT_EQ(lines[0]["top"][0]["index"].get<int>(), index);
  EXPECT_NEAR(lines[0]["top"][0]["prob"].get<double>(), prob, 1e-4);
}

TEST(DemoVideo, BadInputsGiveOneLineErrors) {
  SKIP_WITHOUT_DEMOS();
  std::string out;
  EXPECT_NE(run_command(kVideo + model_args() + " --input /nonexistent/clip.mp4", &out), 0);
  EXPECT_NE(out.find("/nonexistent/clip.mp4"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_NE(run_command(kVideo + model_args(), &out), 0);
  EXPECT_NE(out.find("--input"), std::string::npos) << out;
  EXPECT_NE(run_command(kVideo + model_args() + " --input x.avi --every 0", &out), 0);
  EXPECT_NE(out.find("--every"), std::string::npos) << out;
}

#ifdef MAMBACV_DEMO_DETECT
TEST(DemoDetect, DrawsDetectionsForAFolderAndReportsBrokenImages) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string dir = mambacv::test::temp_dir("demo_detect");
  const fs::path in = fs::path(dir) / "in", out_dir = fs::path(dir) / "out";
  fs::create_directories(in);
  fs::copy_file(fixture("images/coffee_small.jpg"), in / "coffee_small.jpg");
  fs::copy_file(fixture("images/chelsea.png"), in / "chelsea.png");
  {
    std::ofstream broken(in / "broken.png");
    broken << "not a png";
  }
  std::string out;
  const int rc = run_command(std::string(MAMBACV_DEMO_DETECT) + " " + q(fixture("det/maskrcnn_vmamba_mini.json")) +
                                 " " + q(fixture("det/maskrcnn_vmamba_mini.weights.safetensors")) + " " +
                                 q(in.string()) + " " + q(out_dir.string()) + " 0.3",
                             &out);
  EXPECT_EQ(rc, 1) << out;  // the broken image fails, the others are drawn
  EXPECT_NE(out.find("broken.png"), std::string::npos) << out;
  EXPECT_NE(out.find("3 image(s), 1 failed"), std::string::npos) << out;
  bool any_drawn = false;
  for (const char* name : {"coffee_small", "chelsea"}) {
    const fs::path src = in / (std::string(name) + (std::string(name) == "chelsea" ? ".png" : ".jpg"));
    const fs::path dst = out_dir / (std::string(name) + "_det.jpg");
    ASSERT_TRUE(fs::exists(dst)) << dst << "\n" << out;
    const cv::Mat a = cv::imread(src.string()), b = cv::imread(dst.string());
    ASSERT_FALSE(b.empty()) << dst;
    EXPECT_EQ(a.size(), b.size()) << name;
    any_drawn = any_drawn || cv::norm(a, b, cv::NORM_L1) / static_cast<double>(a.total()) > 1.0;
  }
  EXPECT_TRUE(any_drawn) << "no boxes were drawn on either image\n" << out;
}
#endif
