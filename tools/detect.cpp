// mambacv detect: Mask R-CNN instance detection + segmentation of images (mmdetection test pipeline), boxes and masks
// in original image pixels; text, JSON lines and drawings; per-image errors reported, the rest processed.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <optional>
#include <set>

#include "mambacv/detection.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/inputs.h"

namespace mambacv::cli {
namespace fs = std::filesystem;

namespace {
const char* kDetectHelp =
    "usage: mambacv detect --model M --weights W [--score-thr T] [--json] [--draw DIR] [--no-masks] [--profile]\n"
    "                      [--max-size LONG,SHORT] [--batch N] [--device cpu|cuda] [--dtype f32|f16|bf16]\n"
    "                      [--core v0|v1] [--threads N] INPUT...\n"
    "M is a config with arch mask_rcnn (e.g. mask_rcnn_vmamba_tiny), W its weights (.safetensors or an mmdetection\n"
    ".pth), or --random-weights for timing runs. INPUT: image files, folders (recursive) or @list.txt. Each image\n"
    "goes through mmdetection's test pipeline (keep-ratio bilinear rescale into 1333x800, normalise, pad to 32);\n"
    "boxes and masks are mapped back to the original image. --score-thr overrides test_cfg.rcnn.score_thr.\n"
    "--json prints one object per line: {\"image\": PATH, \"width\": W, \"height\": H, \"detections\": [{\"label\": I,\n"
    "\"name\": S, \"score\": P, \"box\": [x1, y1, x2, y2], \"mask\": {\"size\": [H, W], \"counts\": COCO_RLE}}]} or\n"
    "{\"image\": PATH, \"error\": REASON}. --draw DIR writes each image with boxes, labels and translucent masks\n"
    "(PNG input as PNG, the rest as JPEG; stderr names the file each input went to).\n"
    "--batch N (default 1) detects N inputs at a time; those whose padded inputs have the same size share one\n"
    "backbone and FPN pass (the results equal one image at a time; memory grows with N).\n"
    "--profile (or MAMBACV_PROFILE=1) prints the time of each part per image on stderr, then times one more pass\n"
    "of the first image with every op traced: time, FLOPs and bytes per op type per stage (backbone stages, fpn,\n"
    "rpn, box_head, mask_head), each row's roofline floor and the fraction of the FMA peak the pass would reach\n"
    "with every op at its floor (f32; the FMA peak and the GEMM rate are measured first, as bench does).\n"
    "Exit status 1 when any image failed.\n";

cv::Scalar color_of(int label) {  // a fixed, well spread palette (BGR)
  static const int k[][3] = {{56, 56, 255},  {151, 157, 255}, {31, 112, 255}, {29, 178, 255}, {49, 210, 207},
                             {10, 249, 72},  {23, 204, 146},  {134, 219, 61}, {52, 147, 26},  {187, 212, 0},
                             {168, 153, 44}, {255, 194, 0},   {147, 69, 52},  {255, 115, 100}, {236, 24, 0},
                             {255, 56, 132}, {133, 0, 82},    {255, 56, 203}, {200, 149, 255}, {199, 55, 255}};
  const auto& c = k[static_cast<size_t>(label) % 20];
  return cv::Scalar(c[0], c[1], c[2]);
}

void draw(const std::string& path, const Image& image, const DetectionResult& r,
          const std::vector<std::string>& names) {
  cv::Mat bgr(image.height, image.width, CV_8UC3);
  for (int y = 0; y < image.height; ++y)
    for (int x = 0; x < image.width; ++x) {
      const uint8_t* p = image.pixel(x, y);
      bgr.at<cv::Vec3b>(y, x) = cv::Vec3b(p[2], p[1], p[0]);
    }
  // masks first (translucent), then boxes and labels on top; lowest score first so the best end up on top
  for (auto it = r.detections.rbegin(); it != r.detections.rend(); ++it) {
    if (it->mask.counts.empty()) continue;
    const std::vector<uint8_t> m = it->mask.decode();
    const cv::Scalar c = color_of(it->label);
    for (int y = 0; y < image.height; ++y)
      for (int x = 0; x < image.width; ++x)
        if (m[static_cast<size_t>(y) * image.width + x]) {
          cv::Vec3b& px = bgr.at<cv::Vec3b>(y, x);
          for (int k = 0; k < 3; ++k) px[k] = static_cast<uint8_t>(0.5 * px[k] + 0.5 * c[k]);
        }
  }
  const double font = std::max(0.4, std::min(image.width, image.height) / 900.0);
  const int thick = std::max(1, static_cast<int>(std::lround(font * 2)));
  for (auto it = r.detections.rbegin(); it != r.detections.rend(); ++it) {
    const cv::Scalar c = color_of(it->label);
    cv::Point p1(static_cast<int>(it->box[0]), static_cast<int>(it->box[1]));
    cv::Point p2(static_cast<int>(it->box[2]), static_cast<int>(it->box[3]));
    cv::rectangle(bgr, p1, p2, c, thick);
    char text[128];
    const std::string name = it->label < static_cast<int>(names.size()) ? names[static_cast<size_t>(it->label)]
                                                                        : std::to_string(it->label);
    std::snprintf(text, sizeof text, "%s %.2f", name.c_str(), it->score);
    int base = 0;
    cv::Size ts = cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, font, 1, &base);
    // the label sits above the box's top-left corner, moved inside the image where it would leave it
    cv::Point org(std::clamp(p1.x, 0, std::max(0, image.width - ts.width)),
                  std::clamp(p1.y, ts.height + base, std::max(ts.height + base, image.height)));
    cv::rectangle(bgr, cv::Point(org.x, org.y - ts.height - base), cv::Point(org.x + ts.width, org.y), c, cv::FILLED);
    cv::putText(bgr, text, cv::Point(org.x, org.y - base), cv::FONT_HERSHEY_SIMPLEX, font, cv::Scalar(255, 255, 255), 1,
                cv::LINE_AA);
  }
  MAMBACV_CHECK(cv::imwrite(path, bgr), "--draw: cannot write " << path);
}
}  // namespace

nlohmann::ordered_json detections_json(const DetectionResult& r, const std::vector<std::string>& names, bool masks) {
  nlohmann::ordered_json arr = nlohmann::ordered_json::array();
  for (const Detection& d : r.detections) {
    nlohmann::ordered_json e;
    e["label"] = d.label;
    e["name"] = d.label < static_cast<int>(names.size()) ? nlohmann::ordered_json(names[d.label])
                                                         : nlohmann::ordered_json(nullptr);
    e["score"] = d.score;
    e["box"] = {d.box[0], d.box[1], d.box[2], d.box[3]};
    if (masks) e["mask"] = nlohmann::ordered_json{{"size", {d.mask.height, d.mask.width}}, {"counts", d.mask.coco_string()}};
    arr.push_back(e);
  }
  nlohmann::ordered_json o;
  o["width"] = r.width;
  o["height"] = r.height;
  o["detections"] = arr;
  return o;
}

int cmd_detect(const std::vector<std::string>& argv) {
  std::set<std::string> valued = kModelOptions;
  valued.insert({"model", "weights", "score-thr", "draw", "max-size", "batch"});
  Args args("detect", argv, valued, {"json", "help", "no-masks", "profile", "random-weights", "check-finite"});
  if (args.has("help")) {
    std::fputs(kDetectHelp, stdout);
    std::fputs(model_options_help().c_str(), stdout);
    return 0;
  }
  MAMBACV_USAGE_CHECK(args.has("model"), "--model is required (a mask_rcnn config name from configs/ or a .json)");
  MAMBACV_USAGE_CHECK(!args.positionals().empty(), "detect: no INPUT given (image files, folders or @list.txt)");
  const bool json = args.has("json");
  const char* env = std::getenv("MAMBACV_PROFILE");
  const bool profile = args.has("profile") || (env && *env && std::string(env) != "0");
  DetectOptions dopt;
  dopt.score_thr = static_cast<float>(args.get_double("score-thr", -1.0));
  MAMBACV_USAGE_CHECK(!args.has("score-thr") || (dopt.score_thr >= 0 && dopt.score_thr <= 1),
                "--score-thr: expected a number in [0, 1], got " << args.get("score-thr"));
  dopt.masks = !args.has("no-masks");
  if (args.has("max-size")) {
    std::vector<int> s = args.get_int_list("max-size", {});
    MAMBACV_CHECK(s.size() == 2 && s[0] > 0 && s[1] > 0,
                  "--max-size: expected LONG,SHORT (e.g. 1333,800), got " << args.get("max-size"));
    dopt.max_long = s[0];
    dopt.max_short = s[1];
  }
  const std::string draw_dir = args.get("draw");
  if (!draw_dir.empty()) {
    std::error_code ec;
    fs::create_directories(draw_dir, ec);
    MAMBACV_CHECK(fs::is_directory(draw_dir), "--draw: cannot create the folder " << draw_dir);
  }

  const Options opt = args.model_options();
  const ModelConfig cfg = load_model_config(args.get("model"));
  const std::string weights = weights_for(args, cfg);
  if (weights.empty()) warn_random_weights("detect", cfg);
  Detector det = weights.empty() ? Detector::random(cfg.path, opt) : Detector::load(cfg.path, weights, opt);
  const std::vector<std::string>& names = det.class_names();
  std::vector<std::string> inputs = expand_inputs(args.positionals(), "detect");
  MAMBACV_CHECK(!inputs.empty(), "detect: the INPUT arguments hold no image files");

  const int batch = args.get_int("batch", 1);
  MAMBACV_USAGE_CHECK(batch >= 1 && batch <= 64, "--batch: expected an image count in 1..64, got " << args.get("batch"));

  int failed = 0;
  std::set<std::string> drawn;
  DetectionTimings sum;
  int timed = 0;
  std::optional<Image> profiled;  // --profile: the first image detected, for the traced pass
  Progress progress("detect", inputs.size());
  auto report_failure = [&](const std::string& path, const std::string& why) {
    ++failed;
    if (json) {
      std::printf("%s\n", json_text(nlohmann::ordered_json({{"image", path}, {"error", why}})).c_str());
      std::fflush(stdout);
    } else {
      std::fprintf(stderr, "mambacv detect: %s: %s\n", path.c_str(), why.c_str());
    }
  };
  auto report = [&](const std::string& path, const Image& image, const DetectionResult& r) {
    if (json) {
      nlohmann::ordered_json o;
      o["image"] = path;
      o.update(detections_json(r, names, dopt.masks));
      std::printf("%s\n", json_text(o).c_str());
    } else {
      std::printf("%s  %dx%d  %zu detection(s)\n", path.c_str(), r.width, r.height, r.detections.size());
      for (const Detection& d : r.detections)
        std::printf("  %-16s %.3f  [%7.1f %7.1f %7.1f %7.1f]%s\n",
                    d.label < static_cast<int>(names.size()) ? names[d.label].c_str()
                                                             : std::to_string(d.label).c_str(),
                    d.score, d.box[0], d.box[1], d.box[2], d.box[3],
                    dopt.masks ? ("  mask " + std::to_string(d.mask.area()) + " px").c_str() : "");
    }
    std::fflush(stdout);
    if (profile) {
      const DetectionTimings& t = r.timings;
      std::fprintf(stderr,
                   "profile %s: preprocess %.1f ms, backbone %.1f, fpn %.1f, rpn %.1f, roi box %.1f, masks %.1f, "
                   "total %.1f ms (%zu detections)\n",
                   path.c_str(), t.preprocess_ms, t.backbone_ms, t.fpn_ms, t.rpn_ms, t.box_ms, t.mask_ms, t.total_ms,
                   r.detections.size());
      sum.preprocess_ms += t.preprocess_ms, sum.backbone_ms += t.backbone_ms, sum.fpn_ms += t.fpn_ms;
      sum.rpn_ms += t.rpn_ms, sum.box_ms += t.box_ms, sum.mask_ms += t.mask_ms, sum.total_ms += t.total_ms;
      ++timed;
      if (!profiled) profiled = image;
    }
    if (!draw_dir.empty()) {
      // PNG stays PNG (lossless), everything else is written as JPEG
      std::string ext = fs::path(path).extension().string();
      std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
      ext = ext == ".png" ? ".png" : ".jpg";
      std::string stem = fs::path(path).stem().string(), name = stem + ext;
      for (int k = 1; drawn.count(name); ++k) name = stem + "_" + std::to_string(k) + ext;
      drawn.insert(name);
      const std::string drawn_path = (fs::path(draw_dir) / name).string();
      draw(drawn_path, image, r, names);
      std::fprintf(stderr, "mambacv detect: %s -> %s\n", path.c_str(), drawn_path.c_str());
    }
  };

  // windows of --batch inputs: decoded, detected together (Detector::detect batches the images of one padded
  // size), then reported in input order; a failed forward is retried one image at a time
  for (size_t start = 0; start < inputs.size(); start += static_cast<size_t>(batch)) {
    const size_t end = std::min(inputs.size(), start + static_cast<size_t>(batch));
    std::vector<Image> images;
    std::vector<size_t> index;             // input of each decoded image
    std::vector<std::string> error(end - start);
    for (size_t i = start; i < end; ++i) {
      try {
        images.push_back(load_image(inputs[i]));
        index.push_back(i);
      } catch (const std::exception& e) {
        error[i - start] = e.what();
      }
    }
    std::vector<DetectionResult> results;
    try {
      results = det.detect(images, dopt);
    } catch (const std::exception&) {
      results.assign(images.size(), {});
      for (size_t k = 0; k < images.size(); ++k) {
        try {
          results[k] = det.detect(images[k], dopt);
        } catch (const std::exception& e) {
          error[index[k] - start] = e.what();
        }
      }
    }
    for (size_t i = start, k = 0; i < end; ++i) {
      const bool decoded = k < index.size() && index[k] == i;
      const std::string& why = error[i - start];
      try {
        if (!why.empty()) report_failure(inputs[i], why);
        else report(inputs[i], images[k], results[k]);
      } catch (const std::exception& e) {
        report_failure(inputs[i], e.what());
      }
      if (decoded) ++k;
      progress.step(i + 1);
    }
  }
  if (profile && timed > 0)
    std::fprintf(stderr,
                 "profile mean over %d image(s): preprocess %.1f ms, backbone %.1f, fpn %.1f, rpn %.1f, roi box %.1f, "
                 "masks %.1f, total %.1f ms\n",
                 timed, sum.preprocess_ms / timed, sum.backbone_ms / timed, sum.fpn_ms / timed, sum.rpn_ms / timed,
                 sum.box_ms / timed, sum.mask_ms / timed, sum.total_ms / timed);
  if (profiled) {
    const MachineReport machine = measure_machine(opt.threads);
    std::fprintf(stderr, "profile: FMA peak %.1f GFLOP/s, GEMM %.1f GFLOP/s on %d threads\n", machine.fma_peak_gflops,
                 machine.gemm_gflops, machine.threads);
    const std::vector<OpStat> ops = det.profile(*profiled, dopt);
    print_op_profile(stderr, ops, "per op (one traced pass of the first image)", machine.threads,
                     machine.fma_peak_gflops, machine.gemm_gflops, opt.dtype == DType::F32);
  }
  if (failed && !json) std::fprintf(stderr, "mambacv detect: %d of %zu image(s) failed\n", failed, inputs.size());
  return failed ? 1 : 0;
}

}  // namespace mambacv::cli
