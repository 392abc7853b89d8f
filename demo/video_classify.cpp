// mambacv_demo_video - classify the frames of a video, an image sequence or a folder of images and write them
// back annotated with the top-1 class, its probability and the frames per second. OpenCV reads, draws and writes;
// mambacv (public API + mambacv/opencv.h) preprocesses the frames' pixels and classifies them.
//
//   mambacv_demo_video --model vim_tiny --weights vim_t_midclstok_76p1acc.pth --input clip.mp4 --output out.avi
//
// --input: a video file or an image-sequence pattern such as frames/%04d.png (cv::VideoCapture), a folder of
// images (sorted by name, recursive) or one image. --output: a .avi file (Motion-JPEG, at the size of the first
// frame with an odd width or height cropped by one), or a folder that receives one annotated image per frame;
// without --output the results are only printed. --every N classifies every Nth frame and keeps the last result
// on the frames in between.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include <mambacv/mambacv.h>
#include <mambacv/opencv.h>

namespace fs = std::filesystem;

namespace {

const char* kUsage =
    "usage: mambacv_demo_video --model M --weights W --input VIDEO|PATTERN|FRAME_DIR|IMAGE\n"
    "                          [--output out.avi|OUT_DIR] [--every N] [--fps F] [--max-frames N] [--threads N]\n"
    "  --input       a video file, an image-sequence pattern (frames/%04d.png), a folder of images or one image\n"
    "  --output      an .avi file (Motion-JPEG) or a folder for annotated images; default: print only\n"
    "  --every       classify every Nth frame, reuse the last result in between (default 1)\n"
    "  --fps         frame rate of the written video when the input has none (default 25)\n"
    "  --max-frames  stop after N frames (default: all)\n";

struct Args {
  std::string model, weights, input, output;
  int every = 1, threads = 0, max_frames = 0;
  double fps = 25.0;
};

int parse_int(const std::string& opt, const std::string& v, int min) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < min || x > 100000000)
    throw mambacv::Error(opt + ": expected an integer >= " + std::to_string(min) + ", got '" + v + "'");
  return static_cast<int>(x);
}

bool parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    std::string opt = argv[i], val;
    if (opt == "--help" || opt == "-h") return false;
    const size_t eq = opt.find('=');
    if (opt.rfind("--", 0) == 0 && eq != std::string::npos) {
      val = opt.substr(eq + 1);
      opt = opt.substr(0, eq);
    } else {
      if (opt.rfind("--", 0) != 0) throw mambacv::Error("unexpected argument '" + opt + "' (see --help)");
      if (i + 1 >= argc) throw mambacv::Error(opt + ": missing value");
      val = argv[++i];
    }
    if (opt == "--model") {
      a.model = val;
    } else if (opt == "--weights") {
      a.weights = val;
    } else if (opt == "--input") {
      a.input = val;
    } else if (opt == "--output") {
      a.output = val;
    } else if (opt == "--every") {
      a.every = parse_int(opt, val, 1);
    } else if (opt == "--threads") {
      a.threads = parse_int(opt, val, 0);
    } else if (opt == "--max-frames") {
      a.max_frames = parse_int(opt, val, 0);
    } else if (opt == "--fps") {
      char* end = nullptr;
      a.fps = std::strtod(val.c_str(), &end);
      if (val.empty() || *end != '\0' || !(a.fps > 0 && a.fps < 1000))
        throw mambacv::Error("--fps: expected a frame rate in (0, 1000), got '" + val + "'");
    } else {
      throw mambacv::Error("unknown option '" + opt + "' (see --help)");
    }
  }
  if (a.model.empty()) throw mambacv::Error("--model is required (a config name or .json)");
  if (a.weights.empty()) throw mambacv::Error("--weights is required (.pth or .safetensors)");
  if (a.input.empty()) throw mambacv::Error("--input is required (video, image-sequence pattern, folder or image)");
  return true;
}

std::string lower_ext(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return e;
}

bool is_image_file(const fs::path& p) {
  static const std::set<std::string> kExt = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp",
                                             ".ppm", ".pgm", ".pbm",  ".pnm", ".jp2", ".sr",   ".ras"};
  return kExt.count(lower_ext(p)) > 0;
}

// Frames from a video / image-sequence pattern (cv::VideoCapture) or from a list of image files.
class FrameSource {
 public:
  explicit FrameSource(const std::string& input) {
    std::error_code ec;
    if (fs::is_directory(input, ec)) {
      for (fs::recursive_directory_iterator it(input, ec), end; !ec && it != end; it.increment(ec))
        if (it->is_regular_file(ec) && is_image_file(it->path())) files_.push_back(it->path().string());
      if (ec) throw mambacv::Error(input + ": cannot list the folder (" + ec.message() + ")");
      std::sort(files_.begin(), files_.end());
      if (files_.empty()) throw mambacv::Error(input + ": the folder holds no image files");
      use_files_ = true;
    } else if (fs::is_regular_file(input, ec) && is_image_file(input)) {
      files_.push_back(input);
      use_files_ = true;
    } else {
      if (input.find('%') == std::string::npos && !fs::exists(input, ec))
        throw mambacv::Error(input + ": no such file or folder");
      if (!cap_.open(input)) throw mambacv::Error(input + ": OpenCV cannot open it as a video or image sequence");
    }
  }
  // The frame rate of a video, or 0 when unknown (image files).
  double fps() const { return use_files_ ? 0.0 : cap_.get(cv::CAP_PROP_FPS); }
  // Next frame (BGR) and its name; false at the end. Unreadable image files are reported and skipped.
  bool next(cv::Mat& frame, std::string& name) {
    if (!use_files_) {
      if (!cap_.read(frame) || frame.empty()) return false;
      name = "frame_" + std::to_string(index_++);
      return true;
    }
    while (index_ < files_.size()) {
      name = files_[index_++];
      frame = cv::imread(name, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
      if (!frame.empty()) return true;
      std::fprintf(stderr, "skipped %s: OpenCV cannot decode it\n", name.c_str());
      ++skipped_;
    }
    return false;
  }
  bool from_files() const { return use_files_; }
  int skipped() const { return skipped_; }

 private:
  cv::VideoCapture cap_;
  std::vector<std::string> files_;
  size_t index_ = 0;
  bool use_files_ = false;
  int skipped_ = 0;
};

// Text in a filled box at the top-left corner, sized to the frame.
void annotate(cv::Mat& frame, const std::vector<std::string>& lines) {
  const double scale = std::clamp(std::min(frame.cols, frame.rows) / 500.0, 0.35, 2.0);
  const int thick = std::max(1, static_cast<int>(std::lround(scale * 1.5)));
  const int font = cv::FONT_HERSHEY_SIMPLEX, pad = std::max(2, static_cast<int>(6 * scale));
  int y = pad;
  for (const auto& text : lines) {
    int base = 0;
    const cv::Size sz = cv::getTextSize(text, font, scale, thick, &base);
    cv::rectangle(frame, cv::Rect(0, y - pad / 2, sz.width + 2 * pad, sz.height + base + pad), cv::Scalar(0, 0, 0),
                  cv::FILLED);
    cv::putText(frame, text, cv::Point(pad, y + sz.height), font, scale, cv::Scalar(80, 255, 80), thick, cv::LINE_AA);
    y += sz.height + base + pad;
  }
}

bool is_video_path(const std::string& p) {
  static const std::set<std::string> kExt = {".avi", ".mp4", ".mkv", ".mov", ".m4v", ".webm"};
  return kExt.count(lower_ext(p)) > 0;
}

int run(const Args& args) {
  mambacv::Options opt;
  opt.threads = args.threads;
  const mambacv::ModelConfig cfg = mambacv::load_model_config(args.model);
  const mambacv::Model model = mambacv::Model::load(cfg.path, args.weights, opt);
  const int classes = model.num_classes();
  if (classes <= 0) throw mambacv::Error(args.model + " is a backbone without a classifier");
  const std::vector<std::string>& labels = model.class_names();
  const mambacv::InputSpec spec = model.input_spec();

  FrameSource source(args.input);
  const bool to_video = !args.output.empty() && is_video_path(args.output);
  const bool to_folder = !args.output.empty() && !to_video;
  if (to_folder) {
    std::error_code ec;
    fs::create_directories(args.output, ec);
    if (!fs::is_directory(args.output)) throw mambacv::Error(args.output + ": cannot create the output folder");
  }
  cv::VideoWriter writer;
  cv::Size video_size;
  const double out_fps = source.fps() > 0 ? source.fps() : args.fps;

  using clock = std::chrono::steady_clock;
  double fps_ema = 0;  // smoothed frames per second of the whole loop
  mambacv::ClassScore last;
  int frames = 0, classified = 0;
  auto t_prev = clock::now();
  const auto t_start = t_prev;
  cv::Mat frame;
  std::string name;
  while ((args.max_frames == 0 || frames < args.max_frames) && source.next(frame, name)) {
    if (frames % args.every == 0) {
      const mambacv::Tensor logits = model.classify(mambacv::preprocess_mat(frame, spec));
      last = mambacv::top_k(logits.f32(), classes, 1, labels)[0];
      ++classified;
      std::printf("%s: %d %.4f %s\n", name.c_str(), last.index, last.prob, last.label.c_str());
    }
    // frames per second: the interval between this frame's annotation and the previous one's (read, classify,
    // draw, write), smoothed; the first frame counts from the start of the loop
    const auto t_now = clock::now();
    const double dt = std::chrono::duration<double>(t_now - t_prev).count();
    t_prev = t_now;
    if (dt > 0) fps_ema = fps_ema == 0 ? 1.0 / dt : 0.8 * fps_ema + 0.2 / dt;
    const std::string label = last.label.empty() ? "class " + std::to_string(last.index) : last.label;
    char line1[512], line2[64];
    std::snprintf(line1, sizeof line1, "%s  %.1f%%", label.c_str(), 100.0 * last.prob);
    std::snprintf(line2, sizeof line2, "%.1f fps", fps_ema);
    annotate(frame, {line1, line2});

    if (to_video) {
      if (!writer.isOpened()) {
        // Motion-JPEG stores even sizes: an odd last column / row of the first frame is cropped
        video_size = cv::Size(std::max(2, frame.cols & ~1), std::max(2, frame.rows & ~1));
        const int fourcc = lower_ext(args.output) == ".avi" ? cv::VideoWriter::fourcc('M', 'J', 'P', 'G')
                                                            : cv::VideoWriter::fourcc('m', 'p', '4', 'v');
        if (!writer.open(args.output, fourcc, out_fps, video_size, true))
          throw mambacv::Error(args.output + ": OpenCV cannot write this video (use an .avi name for Motion-JPEG)");
      }
      if (frame.cols >= video_size.width && frame.rows >= video_size.height &&
          frame.cols - video_size.width <= 1 && frame.rows - video_size.height <= 1)
        frame = frame(cv::Rect(cv::Point(0, 0), video_size));
      else  // frames of another size (a folder of images) are scaled to the first one's
        cv::resize(frame, frame, video_size, 0, 0, cv::INTER_AREA);
      writer.write(frame);
    } else if (to_folder) {
      fs::path out = fs::path(args.output) /
                     (source.from_files() ? fs::path(name).filename() : fs::path(name + ".png"));
      if (!cv::imwrite(out.string(), frame)) throw mambacv::Error(out.string() + ": OpenCV cannot write the image");
    }
    ++frames;
  }
  writer.release();
  const double total = std::chrono::duration<double>(clock::now() - t_start).count();
  if (frames == 0) throw mambacv::Error(args.input + ": no frames could be read");
  std::fprintf(stderr, "%d frame(s), %d classified, %.1f frames/s%s%s\n", frames, classified,
               total > 0 ? frames / total : 0.0, args.output.empty() ? "" : ", written to ",
               args.output.c_str());
  if (source.skipped()) std::fprintf(stderr, "%d image(s) could not be read and were skipped\n", source.skipped());
  return source.skipped() ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args args;
    if (!parse_args(argc, argv, args)) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    return run(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mambacv_demo_video: error: %s\n", e.what());
    return 2;
  }
}
