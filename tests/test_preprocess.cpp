// Image decoding, the PIL-compatible resampler, the classification eval transform and the detection input.
#include <gtest/gtest.h>

#include <chrono>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <png.h>
#include <random>
#include <unistd.h>
#include <zlib.h>

#include "mambacv/image.h"
#include "mambacv/weights.h"
#include "test_util.h"
#include "vision/resample.h"

using namespace mambacv;
using detail::ResampleFilter;

namespace {

Image random_image(int w, int h, uint64_t seed) {
  Image im;
  im.width = w;
  im.height = h;
  im.rgb.resize(static_cast<size_t>(w) * h * 3);
  std::mt19937_64 rng(seed);
  for (auto& v : im.rgb) v = static_cast<uint8_t>(rng() & 0xff);
  return im;
}

// A smooth colour pattern (photographs are smooth; used where random noise would be unrepresentative).
Image smooth_image(int w, int h) {
  Image im;
  im.width = w;
  im.height = h;
  im.rgb.resize(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* p = im.pixel(x, y);
      p[0] = static_cast<uint8_t>(127.5 + 127.5 * std::sin(x * 0.05 + y * 0.02));
      p[1] = static_cast<uint8_t>(255.0 * x / (w - 1));
      p[2] = static_cast<uint8_t>(127.5 + 127.5 * std::cos(y * 0.07));
    }
  return im;
}

bool tensors_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  return std::memcmp(a.f32(), b.f32(), a.nbytes()) == 0;
}

// Independent double-precision reference of one antialiased resampling axis (no fixed point, no rounding).
std::vector<double> reference_resample_1d(const std::vector<double>& in, int out_size) {
  const int n = static_cast<int>(in.size());
  const double scale = static_cast<double>(n) / out_size, fs = std::max(scale, 1.0);
  std::vector<double> out(out_size);
  for (int i = 0; i < out_size; ++i) {
    const double center = (i + 0.5) * scale;
    double acc = 0, wsum = 0;
    for (int x = 0; x < n; ++x) {
      const double w = detail::resample_filter_weight(ResampleFilter::Bicubic, (x + 0.5 - center) / fs);
      acc += w * in[x];
      wsum += w;
    }
    out[i] = acc / wsum;
  }
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

// ---- resampler
// ---------------------------------------------------------------------------------------------------

TEST(Resample, ConstantImageStaysConstant) {
  Image im;
  im.width = 37;
  im.height = 23;
  im.rgb.resize(37 * 23 * 3);
  for (size_t i = 0; i < im.rgb.size(); i += 3) {
    im.rgb[i] = 0;
    im.rgb[i + 1] = 128;
    im.rgb[i + 2] = 255;
  }
  for (auto [w, h] :
       std::vector<std::pair<int, int>>{{5, 3}, {36, 23}, {37, 40}, {111, 69}, {1, 1}, {300, 7}}) {
    for (ResampleFilter f : {ResampleFilter::Bicubic, ResampleFilter::Bilinear}) {
      Image out = detail::resize_pil(im, w, h, f);
      ASSERT_EQ(out.width, w);
      ASSERT_EQ(out.height, h);
      ASSERT_EQ(out.rgb.size(), static_cast<size_t>(w) * h * 3);
      for (size_t i = 0; i < out.rgb.size(); i += 3) {
        ASSERT_EQ(out.rgb[i], 0) << w << "x" << h;
        ASSERT_EQ(out.rgb[i + 1], 128) << w << "x" << h;
        ASSERT_EQ(out.rgb[i + 2], 255) << w << "x" << h;
      }
    }
  }
}

TEST(Resample, IdentitySizeIsExact) {
  Image im = random_image(31, 17, 7);
  Image out = detail::resize_pil(im, 31, 17);
  EXPECT_EQ(out.rgb, im.rgb);
}

TEST(Resample, HandComputedDownscale) {
  // 4 -> 2, bicubic a = -0.5, support scaled to 4: weights at (x - center + 0.5) / 2 are
  // b(-0.25) = b(0.25) = 0.8671875, b(0.75) = 0.2265625, b(1.25) = -0.0703125; sum 1.890625.
  // out0 = 255 * (0.2265625 - 0.0703125) / 1.890625 = 21.07 -> 21, out1 = 255 - 21.07 -> 234.
  const uint8_t row[4] = {0, 0, 255, 255};
  uint8_t out[2];
  detail::resample_pil(row, 4, 1, 4, 1, out, 2, 1, 2);
  EXPECT_EQ(out[0], 21);
  EXPECT_EQ(out[1], 234);
  // the same along the vertical axis
  detail::resample_pil(row, 1, 4, 1, 1, out, 1, 2, 1);
  EXPECT_EQ(out[0], 21);
  EXPECT_EQ(out[1], 234);
}

TEST(Resample, CoefficientsSumToOne) {
  for (auto [in, out] :
       std::vector<std::pair<int, int>>{{451, 384}, {300, 256}, {150, 384}, {100, 256}, {7, 3}}) {
    detail::ResampleCoeffs co = detail::resample_coeffs(in, out, ResampleFilter::Bicubic);
    for (int i = 0; i < out; ++i) {
      int64_t s = 0;
      for (int t = 0; t < co.count[i]; ++t) s += co.k[static_cast<size_t>(i) * co.ksize + t];
      EXPECT_NEAR(static_cast<double>(s), 1 << detail::kResamplePrecisionBits, co.ksize) << in << "->" << out;
      EXPECT_GE(co.first[i], 0);
      EXPECT_LE(co.first[i] + co.count[i], in);
    }
  }
}

TEST(Resample, UpAndDownsamplingMatchDoubleReference) {
  // The 8-bit two-pass result stays within rounding of an exact separable double computation.
  Image im = smooth_image(97, 61);
  for (auto [w, h] : std::vector<std::pair<int, int>>{{40, 25}, {256, 161}, {97, 200}, {33, 61}}) {
    Image out = detail::resize_pil(im, w, h);
    ASSERT_EQ(out.width, w);
    ASSERT_EQ(out.height, h);
    int64_t within1 = 0, total = 0;
    int worst = 0;
    for (int c = 0; c < 3; ++c) {
      // horizontal then vertical in double
      std::vector<std::vector<double>> mid(im.height);
      for (int y = 0; y < im.height; ++y) {
        std::vector<double> row(im.width);
        for (int x = 0; x < im.width; ++x) row[x] = im.pixel(x, y)[c];
        mid[y] = reference_resample_1d(row, w);
      }
      for (int x = 0; x < w; ++x) {
        std::vector<double> col(im.height);
        for (int y = 0; y < im.height; ++y) col[y] = mid[y][x];
        std::vector<double> ref = reference_resample_1d(col, h);
        for (int y = 0; y < h; ++y) {
          const double r = std::min(255.0, std::max(0.0, ref[y]));
          const int d = static_cast<int>(std::ceil(std::fabs(out.pixel(x, y)[c] - r) - 1e-9));
          worst = std::max(worst, d);
          within1 += d <= 1;
          ++total;
        }
      }
    }
    EXPECT_LE(worst, 2) << w << "x" << h;
    EXPECT_GE(static_cast<double>(within1) / total, 0.99) << w << "x" << h;
  }
}

TEST(Resample, RejectsBadSizes) {
  Image im = random_image(4, 4, 1);
  EXPECT_THROW(detail::resize_pil(im, 0, 4), Error);
  EXPECT_THROW(detail::resize_pil(im, 4, -1), Error);
}

// ---- classification transform
// ------------------------------------------------------------------------------------

TEST(Preprocess, ResizeArithmeticAndShapes) {
  InputSpec spec;
  EXPECT_EQ(spec.resize_size(), 256);
  EXPECT_EQ((InputSpec{384, 1.0}).resize_size(), 384);
  // torchvision: shorter side 256, longer int(256 * long / short)
  Image r = resize_shorter_side(smooth_image(451, 300), 256);
  EXPECT_EQ(r.width, 384);
  EXPECT_EQ(r.height, 256);
  r = resize_shorter_side(smooth_image(100, 150), 256);
  EXPECT_EQ(r.width, 256);
  EXPECT_EQ(r.height, 384);
  r = resize_shorter_side(smooth_image(333, 301), 256);
  EXPECT_EQ(r.width, 283);  // int(256 * 333 / 301) = int(283.21)
  EXPECT_EQ(r.height, 256);
  for (auto [w, h] :
       std::vector<std::pair<int, int>>{{451, 300}, {150, 100}, {64, 200}, {224, 224}, {17, 9}}) {
    Tensor t = preprocess(smooth_image(w, h), spec);
    EXPECT_EQ(t.shape(), (Shape{1, 3, 224, 224})) << w << "x" << h;
  }
}

TEST(Preprocess, CenterCropOffsetsAndPadding) {
  Image im = random_image(9, 6, 3);
  // (9 - 4) / 2 = 2.5 -> round half to even = 2; (6 - 3) / 2 = 1.5 -> 2
  Image c = center_crop(im, 4, 3);
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 4; ++x)
      for (int k = 0; k < 3; ++k) ASSERT_EQ(c.pixel(x, y)[k], im.pixel(x + 2, y + 2)[k]);
  // larger than the image: zero padding, image placed at floor((crop - n) / 2)
  Image p = center_crop(im, 12, 6);
  for (int y = 0; y < 6; ++y)
    for (int x = 0; x < 12; ++x)
      for (int k = 0; k < 3; ++k) {
        const int sx = x - 1;
        ASSERT_EQ(p.pixel(x, y)[k], (sx >= 0 && sx < 9) ? im.pixel(sx, y)[k] : 0) << x << "," << y;
      }
}

// The windowed resize + crop is byte-identical to resizing whole and cropping, for up- and downscaling, skipped
// passes (one side already at the size), crops larger than the resized image (padding) and extreme aspect ratios.
TEST(Preprocess, WindowedResizeAndCropEqualsResizeThenCrop) {
  const std::vector<std::array<int, 4>> cases = {
      // w, h, resize, crop
      {640, 480, 256, 224}, {480, 640, 256, 224}, {300, 299, 256, 224}, {256, 400, 256, 224}, {500, 256, 256, 224},
      {37, 23, 256, 224},   {3, 500, 256, 224},   {500, 3, 256, 224},   {1, 900, 64, 48},     {900, 1, 64, 48},
      {64, 64, 64, 64},     {20, 30, 16, 24},     {31, 17, 40, 64},     {256, 256, 256, 224}, {1000, 999, 232, 224},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(testing::Message() << c[0] << "x" << c[1] << " resize " << c[2] << " crop " << c[3]);
    const Image img = random_image(c[0], c[1], static_cast<uint64_t>(c[0] * 7919 + c[1]));
    const Image want = center_crop(resize_shorter_side(img, c[2]), c[3], c[3]);
    const Image got = resize_and_center_crop(img, c[2], c[3]);
    ASSERT_EQ(got.width, want.width);
    ASSERT_EQ(got.height, want.height);
    EXPECT_TRUE(got.rgb == want.rgb);
  }
}

// A 1 x 65500 image (the shape of a 17 KB hostile JPEG) costs only its crop: the whole resize would be 256 x 16.8M
// pixels (12.6 GB).
TEST(Preprocess, ExtremeAspectRatioIsCroppedBeforeResizing) {
  const Image img = random_image(1, 65500, 3);
  const auto t0 = std::chrono::steady_clock::now();
  const Tensor x = preprocess(img, InputSpec());
  EXPECT_EQ(x.shape(), (Shape{1, 3, 224, 224}));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
}

TEST(Preprocess, NormalisationIsTorchFloat32) {
  Image im;
  im.width = 1;
  im.height = 1;
  im.rgb = {0, 128, 255};
  InputSpec spec;
  Tensor t = image_to_tensor(im, spec.mean, spec.std);
  EXPECT_EQ(t.f32()[0], (0.0f / 255.0f - 0.485f) / 0.229f);
  EXPECT_EQ(t.f32()[1], (128.0f / 255.0f - 0.456f) / 0.224f);
  EXPECT_EQ(t.f32()[2], (255.0f / 255.0f - 0.406f) / 0.225f);
}

TEST(Preprocess, RawPixelFormatsMatchRgb) {
  const int w = 53, h = 41;
  Image rgb = smooth_image(w, h);
  for (size_t i = 0; i < rgb.rgb.size(); i += 7) rgb.rgb[i] ^= 0x5a;  // some texture
  const Tensor want = preprocess(rgb);
  const size_t pad = 13;  // row padding filled with garbage
  for (PixelFormat fmt : {PixelFormat::Rgb8, PixelFormat::Bgr8, PixelFormat::Rgba8, PixelFormat::Bgra8}) {
    const int cn = pixel_format_channels(fmt);
    const size_t stride = static_cast<size_t>(w) * cn + pad;
    std::vector<uint8_t> buf(stride * h, 0xee);
    const bool bgr = fmt == PixelFormat::Bgr8 || fmt == PixelFormat::Bgra8;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const uint8_t* s = rgb.pixel(x, y);
        uint8_t* d = &buf[y * stride + x * cn];
        d[0] = bgr ? s[2] : s[0];
        d[1] = s[1];
        d[2] = bgr ? s[0] : s[2];
        if (cn == 4) d[3] = static_cast<uint8_t>(x * 5 + y);  // alpha is ignored
      }
    Tensor got = preprocess(buf.data(), w, h, stride, fmt);
    EXPECT_TRUE(tensors_equal(got, want)) << pixel_format_name(fmt);
    Image back = image_from_pixels(buf.data(), w, h, stride, fmt);
    EXPECT_EQ(back.rgb, rgb.rgb) << pixel_format_name(fmt);
  }
  // gray: same as the RGB image with R = G = B
  std::vector<uint8_t> gray(static_cast<size_t>(w + 3) * h, 0x77);
  Image gray_rgb = rgb;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const uint8_t g = rgb.pixel(x, y)[1];
      gray[y * (w + 3) + x] = g;
      uint8_t* p = gray_rgb.pixel(x, y);
      p[0] = p[1] = p[2] = g;
    }
  EXPECT_TRUE(tensors_equal(preprocess(gray.data(), w, h, w + 3, PixelFormat::Gray8), preprocess(gray_rgb)));
  // argument errors name the argument
  EXPECT_NE(error_of([&] { image_from_pixels(gray.data(), w, h, w - 1, PixelFormat::Gray8); }).find("stride"),
            std::string::npos);
  EXPECT_THROW(image_from_pixels(nullptr, w, h, w, PixelFormat::Gray8), Error);
  EXPECT_THROW(image_from_pixels(gray.data(), 0, h, w, PixelFormat::Gray8), Error);
}

TEST(Preprocess, BatchStacksImages) {
  Image a = smooth_image(300, 200), b = random_image(120, 160, 9);
  Tensor batch = preprocess_batch({a, b});
  ASSERT_EQ(batch.shape(), (Shape{2, 3, 224, 224}));
  Tensor ta = preprocess(a), tb = preprocess(b);
  EXPECT_EQ(std::memcmp(batch.f32(), ta.f32(), ta.nbytes()), 0);
  EXPECT_EQ(std::memcmp(batch.f32() + ta.numel(), tb.f32(), tb.nbytes()), 0);
  Tensor s = stack_batch({ta.reshape({3, 224, 224}), tb});
  EXPECT_TRUE(tensors_equal(s, batch));
  EXPECT_THROW(stack_batch({ta, preprocess(a, InputSpec{64})}), Error);
  EXPECT_THROW(stack_batch({}), Error);
}

// ---- decoding
// ------------------------------------------------------------------------------------------------------

TEST(ImageIo, MissingAndNonImageFilesNameThePath) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string dir = test::temp_dir("image_io_errors");
  const std::string missing = dir + "/no_such_image.png";
  std::string msg = error_of([&] { load_image(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;

  const std::string text = dir + "/notes.png";
  std::ofstream(text) << "this is not an image\n";
  msg = error_of([&] { load_image(text); });
  EXPECT_NE(msg.find(text), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a recognised image"), std::string::npos) << msg;

  const std::string empty = dir + "/empty.jpg";
  std::ofstream(empty).close();
  msg = error_of([&] { load_image(empty); });
  EXPECT_NE(msg.find(empty), std::string::npos) << msg;
  EXPECT_NE(msg.find("empty"), std::string::npos) << msg;

  msg = error_of([&] { load_image(dir); });
  EXPECT_NE(msg.find("directory"), std::string::npos) << msg;

  // a truncated PNG: recognised by its signature, fails to decode
  const std::string trunc = dir + "/truncated.png";
  {
    std::ifstream in(test::fixture("images/chelsea.png"), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(trunc, std::ios::binary).write(bytes.data(), 200);
  }
  msg = error_of([&] { load_image(trunc); });
  EXPECT_NE(msg.find(trunc), std::string::npos) << msg;
  EXPECT_NE(msg.find("could not be decoded"), std::string::npos) << msg;

  const std::string junk = "not an image at all";
  msg = error_of([&] { decode_image(junk.data(), junk.size(), "upload.bin"); });
  EXPECT_NE(msg.find("upload.bin"), std::string::npos) << msg;
}

TEST(ImageIo, SixteenBitAndAlphaPng) {
  const std::string dir = test::temp_dir("image_io_png");
  const int w = 19, h = 11;
  Image want = random_image(w, h, 42);
  // 16-bit BGR written by OpenCV: v * 257 reduces back to v
  cv::Mat m16(h, w, CV_16UC3), m4(h, w, CV_8UC4), g16(h, w, CV_16UC1);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const uint8_t* p = want.pixel(x, y);
      m16.at<cv::Vec3w>(y, x) = cv::Vec3w(p[2] * 257, p[1] * 257, p[0] * 257);
      m4.at<cv::Vec4b>(y, x) = cv::Vec4b(p[2], p[1], p[0], static_cast<uint8_t>((x * 37 + y * 11) & 0xff));
      // PIL opens 16-bit gray as mode "I" and convert("RGB") clips at 255 (checked with Pillow 9.4): values
      // below 256 stay, larger ones become 255
      g16.at<uint16_t>(y, x) = static_cast<uint16_t>((x + y) % 3 == 0 ? p[0] : 256 + p[0] * 200 + (x & 0xff));
    }
  ASSERT_TRUE(cv::imwrite(dir + "/rgb16.png", m16));
  ASSERT_TRUE(cv::imwrite(dir + "/rgba.png", m4));
  ASSERT_TRUE(cv::imwrite(dir + "/gray16.png", g16));

  Image a = load_image(dir + "/rgb16.png");
  ASSERT_EQ(a.width, w);
  ASSERT_EQ(a.height, h);
  EXPECT_EQ(a.rgb, want.rgb);

  Image b = load_image(dir + "/rgba.png");  // alpha dropped, not blended
  EXPECT_EQ(b.rgb, want.rgb);

  Image g = load_image(dir + "/gray16.png");
  ASSERT_EQ(g.width, w);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < 3; ++k)
        ASSERT_EQ(g.pixel(x, y)[k], (x + y) % 3 == 0 ? want.pixel(x, y)[0] : 255) << x << "," << y;
}

// ---- PNG files of every colour type, bit depth and interlace, written with libpng here
struct PngSpec {
  int color_type, depth;
  bool interlaced;
};

// Samples per pixel as stored in the file.
int png_channels(int color_type) {
  switch (color_type) {
    case PNG_COLOR_TYPE_GRAY: return 1;
    case PNG_COLOR_TYPE_GRAY_ALPHA: return 2;
    case PNG_COLOR_TYPE_RGB: return 3;
    case PNG_COLOR_TYPE_RGBA: return 4;
    default: return 1;  // palette index
  }
}

void png_append(png_structp png, png_bytep data, size_t n) {
  auto* out = static_cast<std::vector<uint8_t>*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + n);
}

// Encodes `samples` (h * w * channels values, each < 2^depth) as a PNG; palette files get a palette of
// 2^depth colours from `palette` (RGB triples) and a tRNS chunk.
std::vector<uint8_t> write_png(const PngSpec& spec, int w, int h, const std::vector<uint16_t>& samples,
                               const std::vector<uint8_t>& palette) {
  std::vector<uint8_t> out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return {};
  }
  png_set_write_fn(png, &out, png_append, nullptr);
  png_set_IHDR(png, info, static_cast<png_uint_32>(w), static_cast<png_uint_32>(h), spec.depth, spec.color_type,
               spec.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  std::vector<png_color> plte;
  std::vector<png_byte> trns;
  if (spec.color_type == PNG_COLOR_TYPE_PALETTE) {
    for (int i = 0; i < (1 << spec.depth); ++i) {
      plte.push_back({palette[3 * i], palette[3 * i + 1], palette[3 * i + 2]});
      trns.push_back(static_cast<png_byte>(i * 7));
    }
    png_set_PLTE(png, info, plte.data(), static_cast<int>(plte.size()));
    png_set_tRNS(png, info, trns.data(), static_cast<int>(trns.size()), nullptr);
  }
  png_write_info(png, info);
  const int c = png_channels(spec.color_type);
  const size_t row_bytes = (static_cast<size_t>(w) * c * spec.depth + 7) / 8;
  std::vector<uint8_t> rows(row_bytes * h, 0);
  std::vector<png_bytep> ptrs;
  for (int y = 0; y < h; ++y) {
    uint8_t* row = rows.data() + row_bytes * y;
    ptrs.push_back(row);
    for (int i = 0; i < w * c; ++i) {
      const uint16_t v = samples[static_cast<size_t>(y) * w * c + i];
      if (spec.depth == 16) {
        row[2 * i] = static_cast<uint8_t>(v >> 8), row[2 * i + 1] = static_cast<uint8_t>(v & 0xff);
      } else if (spec.depth == 8) {
        row[i] = static_cast<uint8_t>(v);
      } else {  // packed, most significant bits first
        const int bit = i * spec.depth;
        row[bit / 8] |= static_cast<uint8_t>(v << (8 - spec.depth - bit % 8));
      }
    }
  }
  png_write_image(png, ptrs.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

// A chunk with its length and CRC, spliced in after the IHDR chunk (signature 8 + IHDR 25 bytes).
std::vector<uint8_t> with_chunk_after_ihdr(std::vector<uint8_t> png, const char type[4], const std::string& data) {
  std::vector<uint8_t> chunk;
  const uint32_t n = static_cast<uint32_t>(data.size());
  for (int k = 3; k >= 0; --k) chunk.push_back(static_cast<uint8_t>(n >> (8 * k)));
  chunk.insert(chunk.end(), type, type + 4);
  chunk.insert(chunk.end(), data.begin(), data.end());
  const uLong crc = crc32(crc32(0, reinterpret_cast<const Bytef*>(type), 4),
                          reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size()));
  for (int k = 3; k >= 0; --k) chunk.push_back(static_cast<uint8_t>(crc >> (8 * k)));
  png.insert(png.begin() + 33, chunk.begin(), chunk.end());
  return png;
}

// What libpng writes to stderr while f runs (stderr redirected to a file for the call).
std::string stderr_of(const std::function<void()>& f) {
  const std::string path = test::temp_dir("stderr_of") + "/stderr.txt";
  std::fflush(stderr);
  const int saved = dup(2);
  FILE* file = std::fopen(path.c_str(), "w");
  dup2(fileno(file), 2);
  try {
    f();
  } catch (...) {
  }
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  std::fclose(file);
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// PIL's Image.open(path).convert("RGB") of every PNG variant: 16-bit samples keep their high byte (16-bit gray
// clips at 255, mode "I"), alpha and palette transparency are dropped, gray of 1, 2 and 4 bits is scaled to 0..255,
// Adam7 interlacing gives the same pixels.
TEST(ImageIo, PngEveryColourTypeDepthAndInterlace) {
  const int w = 13, h = 7;  // odd sizes: partial bytes at the end of packed rows and every Adam7 pass non-empty
  std::vector<PngSpec> specs;
  for (bool il : {false, true}) {
    for (int d : {1, 2, 4, 8, 16}) specs.push_back({PNG_COLOR_TYPE_GRAY, d, il});
    for (int d : {1, 2, 4, 8}) specs.push_back({PNG_COLOR_TYPE_PALETTE, d, il});
    for (int t : {PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGBA})
      for (int d : {8, 16}) specs.push_back({t, d, il});
  }
  std::mt19937 rng(5);
  std::vector<uint8_t> palette(3 * 256);
  for (auto& v : palette) v = static_cast<uint8_t>(rng() & 0xff);
  for (const PngSpec& spec : specs) {
    const int c = png_channels(spec.color_type);
    std::vector<uint16_t> samples(static_cast<size_t>(w) * h * c);
    for (auto& v : samples) v = static_cast<uint16_t>(rng() % (1u << spec.depth));
    if (spec.color_type == PNG_COLOR_TYPE_GRAY && spec.depth == 16)  // some below 256 (kept), the rest clipped
      for (size_t i = 0; i < samples.size(); i += 3) samples[i] &= 0xff;
    std::vector<uint8_t> file = write_png(spec, w, h, samples, palette);
    ASSERT_FALSE(file.empty());
    Image want;
    want.width = w, want.height = h;
    for (int i = 0; i < w * h; ++i) {
      const uint16_t* s = &samples[static_cast<size_t>(i) * c];
      auto byte = [&](uint16_t v) -> uint8_t {
        if (spec.depth == 16) return static_cast<uint8_t>(v >> 8);
        return static_cast<uint8_t>(v * 255 / ((1 << spec.depth) - 1));
      };
      if (spec.color_type == PNG_COLOR_TYPE_PALETTE) {
        for (int k = 0; k < 3; ++k) want.rgb.push_back(palette[3 * s[0] + k]);
      } else if (spec.color_type == PNG_COLOR_TYPE_GRAY && spec.depth == 16) {
        want.rgb.insert(want.rgb.end(), 3, static_cast<uint8_t>(std::min<int>(s[0], 255)));
      } else if (c <= 2) {
        want.rgb.insert(want.rgb.end(), 3, byte(s[0]));
      } else {
        for (int k = 0; k < 3; ++k) want.rgb.push_back(byte(s[k]));
      }
    }
    const std::string name = "type " + std::to_string(spec.color_type) + " depth " + std::to_string(spec.depth) +
                             (spec.interlaced ? " interlaced" : "");
    Image got = decode_image(file.data(), file.size(), name);
    ASSERT_EQ(got.width, w) << name;
    ASSERT_EQ(got.height, h) << name;
    EXPECT_EQ(got.rgb, want.rgb) << name;
  }
}

// libpng's warnings (metadata the decode does not use) are not printed, and its errors become the error naming
// the file, with libpng's reason.
TEST(ImageIo, PngDecoderMessagesNameTheFileOrAreNotPrinted) {
  const int w = 6, h = 5;
  std::vector<uint16_t> samples(static_cast<size_t>(w) * h * 3);
  for (size_t i = 0; i < samples.size(); ++i) samples[i] = static_cast<uint16_t>(i * 11 % 256);
  const std::vector<uint8_t> good = write_png({PNG_COLOR_TYPE_RGB, 8, false}, w, h, samples, {});
  const Image want = decode_image(good.data(), good.size(), "good");
  // an ICC profile libpng rejects ("iCCP: ..."), text with an empty keyword, gAMA contradicting sRGB
  std::vector<uint8_t> noisy = with_chunk_after_ihdr(good, "iCCP", std::string("bogus\0\0", 7) + "xxxx");
  noisy = with_chunk_after_ihdr(noisy, "tEXt", std::string("\0bad", 4));
  noisy = with_chunk_after_ihdr(noisy, "sRGB", std::string("\0", 1));
  noisy = with_chunk_after_ihdr(noisy, "gAMA", std::string("\0\1\x86\xa0", 4));
  Image got;
  std::string err = stderr_of([&] { got = decode_image(noisy.data(), noisy.size(), "noisy.png"); });
  EXPECT_EQ(err, "");
  EXPECT_EQ(got.rgb, want.rgb);

  // a corrupt IDAT CRC: an error naming the file and the reason, nothing else on stderr
  std::vector<uint8_t> bad = good;
  bad[bad.size() - 12 - 1] ^= 1;  // the last byte of the IDAT CRC (IEND is the last 12 bytes)
  std::string msg;
  err = stderr_of([&] { msg = error_of([&] { decode_image(bad.data(), bad.size(), "crc.png"); }); });
  EXPECT_EQ(err, "");
  EXPECT_NE(msg.find("'crc.png'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("CRC"), std::string::npos) << msg;

  // cut inside the image data
  std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(good.size() - 20));
  err = stderr_of([&] { msg = error_of([&] { decode_image(cut.data(), cut.size(), "cut.png"); }); });
  EXPECT_EQ(err, "");
  EXPECT_NE(msg.find("'cut.png'"), std::string::npos) << msg;
}

// An image whose header declares more than 2^27 pixels is refused before decoding (PNG IHDR, JPEG SOF).
TEST(ImageIo, HugeDeclaredSizeIsRefusedBeforeDecoding) {
  const std::string dir = test::temp_dir("image_io_huge");
  cv::Mat small(2, 3, CV_8UC3, cv::Scalar(1, 2, 3));
  std::vector<uchar> png, jpg;
  ASSERT_TRUE(cv::imencode(".png", small, png));
  ASSERT_TRUE(cv::imencode(".jpg", small, jpg));
  // PNG: width and height at bytes 16-23 (the IHDR CRC no longer matches: the size check comes first)
  std::vector<uchar> big_png = png;
  for (int i = 0; i < 4; ++i) big_png[16 + i] = i == 1 ? 0x01 : 0, big_png[20 + i] = i == 1 ? 0x01 : 0;  // 65536^2
  const std::string path = dir + "/huge.png";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(big_png.data()),
                                              static_cast<std::streamsize>(big_png.size()));
  std::string msg = error_of([&] { load_image(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("65536x65536"), std::string::npos) << msg;
  // JPEG: the SOF segment's height and width
  std::vector<uchar> big_jpg = jpg;
  size_t sof = 2;
  while (sof + 9 < big_jpg.size() && !(big_jpg[sof] == 0xFF && big_jpg[sof + 1] >= 0xC0 && big_jpg[sof + 1] <= 0xC2))
    sof += 2 + (big_jpg[sof + 2] << 8 | big_jpg[sof + 3]);
  ASSERT_LT(sof + 9, big_jpg.size());
  big_jpg[sof + 5] = big_jpg[sof + 6] = big_jpg[sof + 7] = big_jpg[sof + 8] = 0xFF;  // 65535 x 65535
  msg = error_of([&] { decode_image(big_jpg.data(), big_jpg.size(), "upload.jpg"); });
  EXPECT_NE(msg.find("65535x65535"), std::string::npos) << msg;
  // the originals decode
  EXPECT_EQ(decode_image(png.data(), png.size(), "small.png").width, 3);
  EXPECT_EQ(decode_image(jpg.data(), jpg.size(), "small.jpg").height, 2);
}

// A JPEG cut short is an error naming the file (PIL: "image file is truncated"), a complete one with trailing
// bytes after its end marker is not.
TEST(ImageIo, TruncatedJpegIsAnError) {
  MAMBACV_REQUIRE_FIXTURES();
  const std::string dir = test::temp_dir("image_io_jpeg");
  std::ifstream in(test::fixture("images/coffee_small.jpg"), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string half = dir + "/half.jpg", tail = dir + "/trailing.jpg";
  std::ofstream(half, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  std::ofstream(tail, std::ios::binary) << bytes << std::string(100, '\0');
  const std::string msg = error_of([&] { load_image(half); });
  EXPECT_NE(msg.find(half), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { decode_image(bytes.data(), bytes.size() / 2, "upload.jpg"); }).find("upload.jpg"),
            std::string::npos);
  EXPECT_EQ(load_image(tail).rgb, load_image(test::fixture("images/coffee_small.jpg")).rgb);
}

TEST(ImageIo, LosslessFormatsRoundTrip) {
  const std::string dir = test::temp_dir("image_io_formats");
  Image im = random_image(23, 14, 5);
  for (const char* ext : {".png", ".bmp", ".tiff", ".ppm"}) {
    const std::string path = dir + "/img" + ext;
    save_image(path, im);
    Image back = load_image(path);
    EXPECT_EQ(back.width, im.width) << ext;
    EXPECT_EQ(back.rgb, im.rgb) << ext;
  }
  if (cv::haveImageWriter(dir + "/x.webp")) {
    const std::string path = dir + "/img.webp";
    ASSERT_TRUE(cv::imwrite(path, cv::Mat(im.height, im.width, CV_8UC3, im.rgb.data()),
                            {cv::IMWRITE_WEBP_QUALITY, 101}));  // > 100: lossless (channels as written)
    Image back = load_image(path);
    ASSERT_EQ(back.rgb.size(), im.rgb.size());
    for (size_t i = 0; i < im.rgb.size(); i += 3) {  // written as "BGR" from RGB memory: reversed
      ASSERT_EQ(back.rgb[i], im.rgb[i + 2]);
      ASSERT_EQ(back.rgb[i + 2], im.rgb[i]);
    }
  }
  // JPEG is lossy: smooth content comes back close
  Image smooth = smooth_image(64, 48);
  save_image(dir + "/img.jpg", smooth);
  Image jpg = load_image(dir + "/img.jpg");
  ASSERT_EQ(jpg.rgb.size(), smooth.rgb.size());
  double err = 0;
  for (size_t i = 0; i < jpg.rgb.size(); ++i) err += std::abs(jpg.rgb[i] - smooth.rgb[i]);
  EXPECT_LT(err / jpg.rgb.size(), 4.0);
  // decode from memory gives the same pixels as from the file
  std::ifstream in(dir + "/img.png", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(decode_image(bytes.data(), bytes.size()).rgb, im.rgb);
}

TEST(ImageIo, FixtureImagesDecode) {
  MAMBACV_REQUIRE_FIXTURES();
  Image chelsea = load_image(test::fixture("images/chelsea.png"));
  EXPECT_EQ(chelsea.width, 451);
  EXPECT_EQ(chelsea.height, 300);
  Image gray = load_image(test::fixture("images/chelsea_gray.png"));
  EXPECT_EQ(gray.width, 451);
  for (size_t i = 0; i < gray.rgb.size(); i += 3) {
    ASSERT_EQ(gray.rgb[i], gray.rgb[i + 1]);
    ASSERT_EQ(gray.rgb[i], gray.rgb[i + 2]);
  }
  Image jpg = load_image(test::fixture("images/coffee_small.jpg"));
  EXPECT_EQ(jpg.width, 150);
  EXPECT_EQ(jpg.height, 100);
}

// ---- the golden: torchvision + PIL eval transform of the fixture images
// -----------------------------------------

TEST(Preprocess, MatchesTorchvisionGolden) {
  MAMBACV_REQUIRE_FIXTURES();
  WeightFile golden = load_safetensors(test::fixture("images/preprocess.golden.safetensors"));
  const InputSpec spec;
  int checked = 0;
  for (const char* name : {"chelsea.png", "coffee.png", "coffee_small.jpg", "chelsea_gray.png"}) {
    ASSERT_TRUE(golden.tensors.count(name)) << name;
    const Tensor ref = golden.tensors.at(name).to(DType::F32);
    ASSERT_EQ(ref.shape(), (Shape{3, 224, 224})) << name;
    const Tensor got = preprocess(load_image(test::fixture(std::string("images/") + name)), spec);
    ASSERT_EQ(got.shape(), (Shape{1, 3, 224, 224})) << name;
    const int64_t plane = 224 * 224;
    int64_t exact = 0, within1 = 0;
    double worst_levels = 0;
    for (int c = 0; c < 3; ++c) {
      const double level = 1.0 / 255.0 / spec.std[c];
      for (int64_t i = 0; i < plane; ++i) {
        const double d =
            std::fabs(static_cast<double>(got.f32()[c * plane + i]) - ref.f32()[c * plane + i]) / level;
        worst_levels = std::max(worst_levels, d);
        exact += d < 1e-3;
        within1 += d <= 1.0 + 1e-3;
      }
    }
    const double n = 3.0 * plane;
    std::printf("[ golden   ] %-18s exact %.4f%%  within 1 level %.4f%%  worst %.2f levels\n", name,
                100.0 * exact / n, 100.0 * within1 / n, worst_levels);
    EXPECT_GE(within1 / n, 0.99) << name;
    EXPECT_LE(worst_levels, 3.0 + 1e-3) << name;
    // PNG decoding is lossless, so only the resampler is compared: it reproduces PIL bit for bit
    if (std::string(name).find(".png") != std::string::npos) {
      EXPECT_GE(exact / n, 0.999) << name;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

// ---- detection input
// -----------------------------------------------------------------------------------------------

TEST(Detection, RescaleSizeArithmetic) {
  RescaledSize r = rescale_size(300, 250);
  EXPECT_DOUBLE_EQ(r.scale, 3.2);  // min(1333 / 300, 800 / 250)
  EXPECT_EQ(r.width, 960);
  EXPECT_EQ(r.height, 800);
  r = rescale_size(333, 251);  // min(4.003, 3.1873)
  EXPECT_DOUBLE_EQ(r.scale, 800.0 / 251.0);
  EXPECT_EQ(r.width, 1061);  // int(333 * 800 / 251 + 0.5) = int(1061.85)
  EXPECT_EQ(r.height, 800);
  r = rescale_size(2000, 500);  // long side bound: 1333 / 2000
  EXPECT_EQ(r.width, 1333);
  EXPECT_EQ(r.height, 333);               // int(500 * 0.6665 + 0.5) = int(333.75)
  r = rescale_size(250, 300, 800, 1333);  // the tuple order does not matter
  EXPECT_EQ(r.width, 800);
  EXPECT_EQ(r.height, 960);
}

TEST(Detection, PrepareInputShapesScalesAndPadding) {
  MAMBACV_REQUIRE_FIXTURES();
  Image im = smooth_image(333, 251);
  DetectionInput d = prepare_detection_input(im);
  EXPECT_EQ(d.orig_width, 333);
  EXPECT_EQ(d.orig_height, 251);
  EXPECT_EQ(d.width, 1061);
  EXPECT_EQ(d.height, 800);
  EXPECT_EQ(d.pad_width, 1088);
  EXPECT_EQ(d.pad_height, 800);
  EXPECT_EQ(d.input.shape(), (Shape{1, 3, 800, 1088}));
  EXPECT_FLOAT_EQ(d.scale_x, static_cast<float>(1061.0 / 333.0));
  EXPECT_FLOAT_EQ(d.scale_y, static_cast<float>(800.0 / 251.0));
  // padding is zero, the image part is normalised
  const float* x = d.input.f32();
  const int64_t plane = 800 * 1088;
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 800; y += 37)
      for (int xx = 1061; xx < 1088; ++xx) ASSERT_EQ(x[c * plane + y * 1088 + xx], 0.0f);

  // a constant image: every unpadded value is (v - mean) / std
  Image flat =
      image_from_pixels(std::vector<uint8_t>(3 * 300 * 250, 100).data(), 300, 250, 900, PixelFormat::Rgb8);
  d = prepare_detection_input(flat);
  ASSERT_EQ(d.input.shape(), (Shape{1, 3, 800, 960}));
  for (int c = 0; c < 3; ++c) {
    const float want =
        (100.0f - static_cast<float>(kDetectionMean[c])) * static_cast<float>(1.0 / kDetectionStd[c]);
    EXPECT_FLOAT_EQ(d.input.f32()[c * 800 * 960 + 400 * 960 + 480], want);
  }
  // no resize: the fixture pipeline (img_shape 250x300 -> pad_shape 256x320)
  d = prepare_detection_input(flat, 0, 0);
  EXPECT_EQ(d.width, 300);
  EXPECT_EQ(d.height, 250);
  EXPECT_EQ(d.input.shape(), (Shape{1, 3, 256, 320}));
  EXPECT_EQ(d.scale_x, 1.0f);
}
