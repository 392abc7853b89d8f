// vision/preprocess.cpp - raw pixels -> Image, and the classification / detection input pipelines.
//
// Classification mirrors the eval transform of both upstream projects (Vim `datasets.py` build_transform /
// VMamba `data/build.py`, via timm): torchvision Resize(floor(size / crop_pct), BICUBIC) on a PIL image
// (torchvision/transforms/functional.py `_compute_resized_output_size`, PIL Image.resize), CenterCrop(size)
// (functional.py `center_crop`), ToTensor, Normalize.
// Detection mirrors mmdetection's test pipeline: mmcv `rescale_size` / `imrescale` (cv2.resize bilinear),
// `imnormalize` (to_rgb), `impad_to_multiple`.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "mambacv/image.h"
#include "vision/resample.h"

namespace mambacv {

namespace {

void check_image(const Image& image, const char* what) {
  MAMBACV_CHECK(image.width > 0 && image.height > 0,
                what << ": image is empty (" << image.width << "x" << image.height << ")");
  MAMBACV_CHECK(image.rgb.size() == static_cast<size_t>(image.width) * image.height * 3,
                what << ": image " << image.width << "x" << image.height << " holds " << image.rgb.size()
                     << " bytes, expected width * height * 3 = "
                     << static_cast<size_t>(image.width) * image.height * 3);
}

void check_spec(const InputSpec& spec) {
  MAMBACV_CHECK(spec.size > 0, "InputSpec.size must be positive, got " << spec.size);
  MAMBACV_CHECK(spec.crop_pct > 0 && std::isfinite(spec.crop_pct),
                "InputSpec.crop_pct must be a positive number, got " << spec.crop_pct);
  for (int c = 0; c < 3; ++c)
    MAMBACV_CHECK(spec.std[c] != 0.0f && std::isfinite(spec.std[c]),
                  "InputSpec.std[" << c << "] must be finite and non-zero, got " << spec.std[c]);
}

// Top-left of torchvision's center crop along one axis (negative: zero padding before the image).
int crop_offset(int n, int crop) {
  if (crop > n) return -((crop - n) / 2);
  return static_cast<int>(std::nearbyint((n - crop) / 2.0));  // Python round(): half to even
}

}  // namespace

int pixel_format_channels(PixelFormat fmt) {
  switch (fmt) {
    case PixelFormat::Gray8:
      return 1;
    case PixelFormat::Rgb8:
    case PixelFormat::Bgr8:
      return 3;
    case PixelFormat::Rgba8:
    case PixelFormat::Bgra8:
      return 4;
  }
  MAMBACV_FAIL("unknown PixelFormat " << static_cast<int>(fmt));
}

const char* pixel_format_name(PixelFormat fmt) {
  switch (fmt) {
    case PixelFormat::Gray8:
      return "gray8";
    case PixelFormat::Rgb8:
      return "rgb8";
    case PixelFormat::Bgr8:
      return "bgr8";
    case PixelFormat::Rgba8:
      return "rgba8";
    case PixelFormat::Bgra8:
      return "bgra8";
  }
  return "unknown";
}

Image image_from_pixels(const uint8_t* pixels, int width, int height, size_t stride_bytes, PixelFormat fmt) {
  const int cn = pixel_format_channels(fmt);
  MAMBACV_CHECK(pixels != nullptr, "image_from_pixels: pixels is null");
  MAMBACV_CHECK(width > 0 && height > 0,
                "image_from_pixels: width and height must be positive, got " << width << "x" << height);
  const size_t row = static_cast<size_t>(width) * cn;
  MAMBACV_CHECK(stride_bytes >= row, "image_from_pixels: stride_bytes "
                                         << stride_bytes << " is shorter than one row of " << width << " "
                                         << pixel_format_name(fmt) << " pixels (" << row << " bytes)");
  Image img;
  img.width = width;
  img.height = height;
  img.rgb.resize(static_cast<size_t>(width) * height * 3);
  const bool bgr = fmt == PixelFormat::Bgr8 || fmt == PixelFormat::Bgra8;
  for (int y = 0; y < height; ++y) {
    const uint8_t* s = pixels + static_cast<size_t>(y) * stride_bytes;
    uint8_t* d = img.rgb.data() + static_cast<size_t>(y) * width * 3;
    if (fmt == PixelFormat::Rgb8) {
      std::memcpy(d, s, row);
    } else if (cn == 1) {
      for (int x = 0; x < width; ++x) d[3 * x] = d[3 * x + 1] = d[3 * x + 2] = s[x];
    } else {
      for (int x = 0; x < width; ++x) {
        const uint8_t* p = s + static_cast<size_t>(x) * cn;
        d[3 * x + 0] = bgr ? p[2] : p[0];
        d[3 * x + 1] = p[1];
        d[3 * x + 2] = bgr ? p[0] : p[2];
      }
    }
  }
  return img;
}

int InputSpec::resize_size() const {
  return static_cast<int>(std::floor(size / crop_pct));
}

namespace {
// torchvision _compute_resized_output_size: the shorter side becomes `size`, the longer int(size * long / short)
// in Python float arithmetic. {width, height}.
std::pair<int, int> shorter_side_size(int w, int h, int size) {
  const int shorter = std::min(w, h), longer = std::max(w, h);
  const double new_long = static_cast<double>(static_cast<int64_t>(size) * longer) / shorter;
  MAMBACV_CHECK(new_long < 2147483647.0, "resize: a " << w << "x" << h << " image resized to " << size
                                                        << " on its shorter side is wider than 2^31 pixels");
  return w <= h ? std::make_pair(size, static_cast<int>(new_long)) : std::make_pair(static_cast<int>(new_long), size);
}
}  // namespace

Image resize_shorter_side(const Image& image, int size) {
  check_image(image, "resize_shorter_side");
  MAMBACV_CHECK(size > 0, "resize_shorter_side: size must be positive, got " << size);
  const auto [new_w, new_h] = shorter_side_size(image.width, image.height, size);
  return detail::resize_pil(image, new_w, new_h, detail::ResampleFilter::Bicubic);
}

Image resize_and_center_crop(const Image& image, int size, int crop) {
  check_image(image, "resize_and_center_crop");
  MAMBACV_CHECK(size > 0 && crop > 0,
                "resize_and_center_crop: sizes must be positive, got resize " << size << ", crop " << crop);
  const auto [new_w, new_h] = shorter_side_size(image.width, image.height, size);
  const int left = crop_offset(new_w, crop), top = crop_offset(new_h, crop);
  // the part of the crop that lies inside the resized image; the rest is zero padding
  const int x0 = std::max(0, left), x1 = std::min(new_w, left + crop);
  const int y0 = std::max(0, top), y1 = std::min(new_h, top + crop);
  Image out;
  out.width = crop;
  out.height = crop;
  out.rgb.assign(static_cast<size_t>(crop) * crop * 3, 0);
  detail::resample_pil_window(image.rgb.data(), image.width, image.height, static_cast<size_t>(image.width) * 3, 3,
                              out.pixel(x0 - left, y0 - top), new_w, new_h, x0, y0, x1 - x0, y1 - y0,
                              static_cast<size_t>(crop) * 3, detail::ResampleFilter::Bicubic);
  return out;
}

Image center_crop(const Image& image, int width, int height) {
  check_image(image, "center_crop");
  MAMBACV_CHECK(width > 0 && height > 0,
                "center_crop: crop size must be positive, got " << width << "x" << height);
  const int left = crop_offset(image.width, width), top = crop_offset(image.height, height);
  Image out;
  out.width = width;
  out.height = height;
  out.rgb.assign(static_cast<size_t>(width) * height * 3, 0);
  for (int y = 0; y < height; ++y) {
    const int sy = y + top;
    if (sy < 0 || sy >= image.height) continue;
    const int x0 = std::max(0, -left), x1 = std::min(width, image.width - left);
    if (x1 <= x0) continue;
    std::memcpy(out.pixel(x0, y), image.pixel(x0 + left, sy), static_cast<size_t>(x1 - x0) * 3);
  }
  return out;
}

Tensor image_to_tensor(const Image& image, const std::array<float, 3>& mean,
                       const std::array<float, 3>& std) {
  check_image(image, "image_to_tensor");
  const int64_t hw = static_cast<int64_t>(image.width) * image.height;
  Tensor t = Tensor::empty({1, 3, image.height, image.width});  // (1, 3, H, W) RGB
  float* out = t.f32();
  for (int c = 0; c < 3; ++c) {
    float* o = out + c * hw;
    const uint8_t* s = image.rgb.data() + c;
    // float32 like torch: ToTensor divides by 255, Normalize subtracts then divides
    for (int64_t i = 0; i < hw; ++i) o[i] = (static_cast<float>(s[3 * i]) / 255.0f - mean[c]) / std[c];
  }
  return t;
}

Tensor preprocess(const Image& image, const InputSpec& spec) {
  check_spec(spec);
  check_image(image, "preprocess");
  // only the crop window is resampled: a 1 x 65500 image costs a 224 x 224 crop, not a 256 x 16.8M resize
  return image_to_tensor(resize_and_center_crop(image, spec.resize_size(), spec.size), spec.mean,
                         spec.std);  // (1, 3, size, size)
}

Tensor preprocess(const uint8_t* pixels, int width, int height, size_t stride_bytes, PixelFormat fmt,
                  const InputSpec& spec) {
  return preprocess(image_from_pixels(pixels, width, height, stride_bytes, fmt), spec);
}

Tensor stack_batch(const std::vector<Tensor>& items) {
  MAMBACV_CHECK(!items.empty(), "stack_batch: no tensors given");
  Shape item = items[0].shape();
  if (item.size() == 4 && item[0] == 1) item.erase(item.begin());
  MAMBACV_CHECK(item.size() == 3,
                "stack_batch: tensor 0 is " << items[0].str() << ", expected (1, C, H, W) or (C, H, W)");
  const int64_t n = shape_numel(item);
  Shape out_shape{static_cast<int64_t>(items.size())};
  out_shape.insert(out_shape.end(), item.begin(), item.end());
  Tensor out = Tensor::empty(out_shape);
  for (size_t i = 0; i < items.size(); ++i) {
    const Tensor& t = items[i];
    MAMBACV_CHECK(t.dtype() == DType::F32 && t.device() == Device::Cpu,
                  "stack_batch: tensor " << i << " is " << t.str() << " on " << device_name(t.device())
                                         << ", expected f32 on cpu");
    Shape s = t.shape();
    if (s.size() == 4 && s[0] == 1) s.erase(s.begin());
    MAMBACV_CHECK(s == item, "stack_batch: tensor " << i << " has shape " << shape_str(t.shape())
                                                    << ", expected " << shape_str(item) << " like tensor 0");
    std::memcpy(out.f32() + static_cast<int64_t>(i) * n, t.f32(), static_cast<size_t>(n) * sizeof(float));
  }
  return out;
}

Tensor preprocess_batch(const std::vector<Image>& images, const InputSpec& spec) {
  MAMBACV_CHECK(!images.empty(), "preprocess_batch: no images given");
  std::vector<Tensor> items;
  items.reserve(images.size());
  for (const Image& im : images) items.push_back(preprocess(im, spec));
  return stack_batch(items);  // (B, 3, size, size)
}

RescaledSize rescale_size(int width, int height, int max_long, int max_short) {
  MAMBACV_CHECK(width > 0 && height > 0,
                "rescale_size: image size must be positive, got " << width << "x" << height);
  MAMBACV_CHECK(max_long > 0 && max_short > 0,
                "rescale_size: target edges must be positive, got " << max_long << " and " << max_short);
  // mmcv.rescale_size with a (long, short) tuple: the larger number bounds the long side.
  const double long_edge = std::max(max_long, max_short), short_edge = std::min(max_long, max_short);
  RescaledSize r;
  r.scale = std::min(long_edge / std::max(width, height), short_edge / std::min(width, height));
  r.width = static_cast<int>(width * r.scale + 0.5);
  r.height = static_cast<int>(height * r.scale + 0.5);
  return r;
}

DetectionInput prepare_detection_input(const Image& image, int max_long, int max_short, int pad_divisor) {
  check_image(image, "prepare_detection_input");
  MAMBACV_CHECK(pad_divisor > 0,
                "prepare_detection_input: pad_divisor must be positive, got " << pad_divisor);
  DetectionInput d;
  d.orig_width = image.width;
  d.orig_height = image.height;
  Image resized;
  const Image* src = &image;
  if (max_long > 0 && max_short > 0) {
    RescaledSize r = rescale_size(image.width, image.height, max_long, max_short);
    MAMBACV_CHECK(r.width > 0 && r.height > 0, "prepare_detection_input: image "
                                                   << image.width << "x" << image.height
                                                   << " rescales to an empty " << r.width << "x" << r.height);
    d.scale = r.scale;
    resized = detail::resize_bilinear_opencv(image, r.width, r.height);
    src = &resized;
  }
  d.width = src->width;
  d.height = src->height;
  d.scale_x = static_cast<float>(static_cast<double>(d.width) / d.orig_width);
  d.scale_y = static_cast<float>(static_cast<double>(d.height) / d.orig_height);
  d.pad_width = (d.width + pad_divisor - 1) / pad_divisor * pad_divisor;
  d.pad_height = (d.height + pad_divisor - 1) / pad_divisor * pad_divisor;

  d.input = Tensor::zeros({1, 3, d.pad_height, d.pad_width});  // (1, 3, pad_h, pad_w) RGB
  float* out = d.input.f32();
  const int64_t plane = static_cast<int64_t>(d.pad_width) * d.pad_height;
  for (int c = 0; c < 3; ++c) {
    // mmcv imnormalize: cv2.subtract / cv2.multiply on float32 with the scalars converted to float32
    const float mean = static_cast<float>(kDetectionMean[c]);
    const float inv_std = static_cast<float>(1.0 / kDetectionStd[c]);
    for (int y = 0; y < d.height; ++y) {
      float* o = out + c * plane + static_cast<int64_t>(y) * d.pad_width;
      const uint8_t* s = src->pixel(0, y) + c;
      for (int x = 0; x < d.width; ++x) o[x] = (static_cast<float>(s[3 * x]) - mean) * inv_std;
    }
  }
  return d;
}

}  // namespace mambacv
