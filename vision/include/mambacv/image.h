// mambacv/image.h - images in, network input tensors out.
//
// Decoding (PNG, JPEG, BMP, TIFF, WebP, ... through OpenCV, kept out of this header), raw-pixel import, and
// the two input pipelines of the upstream projects:
//   * classification (Vim / VMamba eval transform, torchvision on a PIL image): RGB ->
//   Resize(floor(size/crop_pct))
//     of the shorter side with PIL's antialiased bicubic -> CenterCrop(size) -> /255 -> Normalize(mean, std);
//   * detection (mmdetection test pipeline): keep-ratio rescale into 1333x800 with bilinear (cv2.resize),
//   RGB,
//     Normalize(mean, std in 0..255 units) -> zero pad bottom/right to a multiple of 32.
// Everything here works on packed 8-bit RGB images; nothing depends on OpenCV types.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mambacv/tensor.h"

namespace mambacv {

// Layout of caller-owned 8-bit pixels: interleaved channels, rows `stride_bytes` apart.
enum class PixelFormat { Gray8, Rgb8, Bgr8, Rgba8, Bgra8 };
int pixel_format_channels(PixelFormat fmt);      // 1, 3 or 4
const char* pixel_format_name(PixelFormat fmt);  // "gray8", "rgb8", ...

// An owning 8-bit RGB image: rgb is (height, width, 3), row-major, packed (stride = 3 * width).
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;

  bool empty() const { return width <= 0 || height <= 0; }
  const uint8_t* pixel(int x, int y) const { return rgb.data() + (static_cast<size_t>(y) * width + x) * 3; }
  uint8_t* pixel(int x, int y) { return rgb.data() + (static_cast<size_t>(y) * width + x) * 3; }
};

// Decodes an image file the way PIL's Image.open(path).convert("RGB") sees it: EXIF orientation is ignored,
// 16-bit samples are reduced to 8 bit (high byte), grayscale is replicated to RGB, alpha is dropped (not
// blended). Throws Error naming the path and the reason: missing, not a regular file, unreadable, empty, not
// a recognised image format, or a decoder failure.
Image load_image(const std::string& path);
// Same, from an encoded file held in memory; `name` is used in error messages.
Image decode_image(const void* data, size_t size, const std::string& name = "<memory>");
// Encodes by file extension (.png, .jpg, .bmp, .tiff, .webp, ...). Throws Error naming the path on failure.
void save_image(const std::string& path, const Image& image);

// Copies caller-owned pixels into an RGB Image (gray replicated, alpha dropped, BGR swapped).
// `stride_bytes` is the distance between rows (>= width * channels); pixels must not be null.
Image image_from_pixels(const uint8_t* pixels, int width, int height, size_t stride_bytes, PixelFormat fmt);

// ---- classification input (Vim / VMamba eval transform)
// ------------------------------------------------------
struct InputSpec {
  int size = 224;           // square network input
  double crop_pct = 0.875;  // the shorter side is resized to floor(size / crop_pct) before the center crop
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};  // RGB, on the [0, 1] scale
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};

  int resize_size() const;  // floor(size / crop_pct): 256 for 224 at 0.875
};

// One image -> f32 (1, 3, size, size) RGB NCHW.
Tensor preprocess(const Image& image, const InputSpec& spec = InputSpec());
Tensor preprocess(const uint8_t* pixels, int width, int height, size_t stride_bytes, PixelFormat fmt,
                  const InputSpec& spec = InputSpec());
// Several images -> f32 (B, 3, size, size).
Tensor preprocess_batch(const std::vector<Image>& images, const InputSpec& spec = InputSpec());
// Stacks f32 CPU tensors of one shape, each (1, C, H, W) or (C, H, W), into (B, C, H, W).
Tensor stack_batch(const std::vector<Tensor>& items);

// The steps of the transform, for callers composing their own pipeline.
// torchvision Resize(size) on a PIL image: the shorter side becomes `size`, the longer int(size * long /
// short); resampled with PIL's antialiased bicubic (8-bit, rounded after each pass).
Image resize_shorter_side(const Image& image, int size);
// torchvision CenterCrop: offsets round((H - h) / 2) (half to even); zero padding where the crop is larger.
Image center_crop(const Image& image, int width, int height);
// center_crop(resize_shorter_side(image, size), crop, crop), byte for byte, resampling only the crop window (what
// preprocess does: work and memory follow the crop, not the resized image).
Image resize_and_center_crop(const Image& image, int size, int crop);
// ToTensor + Normalize: (v / 255 - mean) / std in float32 -> (1, 3, H, W).
Tensor image_to_tensor(const Image& image, const std::array<float, 3>& mean, const std::array<float, 3>& std);

// ---- detection input (mmdetection's test pipeline)
// ----------------------------------------
struct RescaledSize {
  int width = 0;
  int height = 0;
  double scale = 1.0;  // min(max_long / long side, max_short / short side)
};
// mmcv rescale_size: new side = int(side * scale + 0.5).
RescaledSize rescale_size(int width, int height, int max_long = 1333, int max_short = 800);

struct DetectionInput {
  Tensor input;  // f32 (1, 3, pad_height, pad_width) RGB, normalised, zero padded bottom/right
  int orig_width = 0, orig_height = 0;  // the decoded image (mmdet ori_shape)
  int width = 0, height = 0;            // after rescale, before padding (mmdet img_shape)
  int pad_width = 0, pad_height = 0;    // mmdet pad_shape
  double scale = 1.0;                   // the rescale factor of rescale_size
  float scale_x = 1.0f,
        scale_y = 1.0f;  // mmdet scale_factor (float32): width / orig_width, height / orig_height
};
// mmdetection's img_norm_cfg (RGB, 0..255 scale); applied as float32 (v - mean) * float32(1 / std) like mmcv.
inline constexpr std::array<double, 3> kDetectionMean{123.675, 116.28, 103.53};
inline constexpr std::array<double, 3> kDetectionStd{58.395, 57.12, 57.375};

// Rescale (bilinear, as cv2.resize INTER_LINEAR), normalise (v - mean) * (1 / std), pad to pad_divisor.
// max_long <= 0 or max_short <= 0 keeps the image size (no resize).
DetectionInput prepare_detection_input(const Image& image, int max_long = 1333, int max_short = 800,
                                       int pad_divisor = 32);

}  // namespace mambacv
