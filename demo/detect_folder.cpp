// Demo: instance segmentation of a folder of images with the public Detector API; writes each image with its boxes,
// class names, scores and translucent masks (OpenCV for drawing and writing only).
//
//   mambacv_demo_detect_folder CONFIG WEIGHTS INPUT_DIR OUTPUT_DIR [SCORE_THR]
//   e.g. mambacv_demo_detect_folder mask_rcnn_vmamba_tiny mask_rcnn_vssm_fpn_coco_tiny.pth photos/ out/ 0.5
#include <mambacv/detection.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

bool is_image(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* x : {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
    if (e == x) return true;
  return false;
}

cv::Scalar color(int label) {
  // golden-angle hues: neighbouring labels get distant colours
  cv::Mat hsv(1, 1, CV_8UC3, cv::Scalar((label * 47) % 180, 200, 255)), bgr;
  cv::cvtColor(hsv, bgr, cv::COLOR_HSV2BGR);
  const cv::Vec3b c = bgr.at<cv::Vec3b>(0, 0);
  return cv::Scalar(c[0], c[1], c[2]);
}

cv::Mat render(const mambacv::Image& image, const mambacv::DetectionResult& r, const std::vector<std::string>& names) {
  // the library's Image is packed RGB; OpenCV wants BGR
  cv::Mat rgb(image.height, image.width, CV_8UC3, const_cast<uint8_t*>(image.rgb.data())), out;
  cv::cvtColor(rgb, out, cv::COLOR_RGB2BGR);
  for (auto it = r.detections.rbegin(); it != r.detections.rend(); ++it) {  // best last, on top
    const cv::Scalar c = color(it->label);
    if (!it->mask.counts.empty()) {
      std::vector<uint8_t> bits = it->mask.decode();
      cv::Mat mask(image.height, image.width, CV_8UC1, bits.data());
      cv::Mat tint(out.size(), out.type(), c), blended;
      cv::addWeighted(out, 0.5, tint, 0.5, 0.0, blended);
      blended.copyTo(out, mask);
    }
  }
  for (auto it = r.detections.rbegin(); it != r.detections.rend(); ++it) {
    const cv::Scalar c = color(it->label);
    const cv::Point p1(static_cast<int>(it->box[0]), static_cast<int>(it->box[1]));
    const cv::Point p2(static_cast<int>(it->box[2]), static_cast<int>(it->box[3]));
    cv::rectangle(out, p1, p2, c, 2);
    const std::string name =
        it->label < static_cast<int>(names.size()) ? names[static_cast<size_t>(it->label)] : std::to_string(it->label);
    char text[160];
    std::snprintf(text, sizeof text, "%s %.0f%%", name.c_str(), 100.0 * it->score);
    cv::putText(out, text, cv::Point(p1.x + 2, std::max(p1.y - 4, 12)), cv::FONT_HERSHEY_SIMPLEX, 0.5, c, 1,
                cv::LINE_AA);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s CONFIG WEIGHTS INPUT_DIR OUTPUT_DIR [SCORE_THR]\n", argv[0]);
    return 2;
  }
  const std::string config = argv[1], weights = argv[2], in_dir = argv[3], out_dir = argv[4];
  mambacv::DetectOptions opt;
  opt.score_thr = argc > 5 ? std::strtof(argv[5], nullptr) : 0.5f;
  try {
    const mambacv::Detector det = mambacv::Detector::load(config, weights);
    std::vector<fs::path> files;
    for (const auto& e : fs::recursive_directory_iterator(in_dir))
      if (e.is_regular_file() && is_image(e.path())) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    fs::create_directories(out_dir);
    int failed = 0;
    for (const fs::path& f : files) {
      try {
        const mambacv::Image image = mambacv::load_image(f.string());
        const auto t0 = std::chrono::steady_clock::now();
        const mambacv::DetectionResult r = det.detect(image, opt);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        const fs::path dst = fs::path(out_dir) / (f.stem().string() + "_det.jpg");
        if (!cv::imwrite(dst.string(), render(image, r, det.class_names())))
          throw std::runtime_error("cannot write " + dst.string());
        std::printf("%s: %zu objects, %.0f ms -> %s\n", f.string().c_str(), r.detections.size(), ms,
                    dst.string().c_str());
      } catch (const std::exception& e) {
        ++failed;
        std::fprintf(stderr, "%s: %s\n", f.string().c_str(), e.what());
      }
    }
    std::printf("%zu image(s), %d failed\n", files.size(), failed);
    return failed ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
