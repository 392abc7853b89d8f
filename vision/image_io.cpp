// vision/image_io.cpp - image decoding / encoding through OpenCV imgcodecs, and cv::resize for the detection
// pipeline. The only file of the library's vision layer that includes OpenCV.
//
// Decoding follows PIL's Image.open(path).convert("RGB"), which is what the upstream eval loaders do:
// cv::imdecode with IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION gives 8-bit BGR with EXIF orientation ignored,
// 16-bit colour samples reduced to their high byte, gray replicated and alpha dropped without blending; 16-bit
// grayscale PNG is clipped to 255 as PIL's mode "I" conversion does; a truncated JPEG is an error, as in PIL.
// PNG is decoded with libpng directly, with the same conversions: OpenCV's PNG decoder leaves libpng's default
// handlers in place, which print messages that name no file on stderr ("libpng warning: iCCP: known incorrect
// sRGB profile", "libpng error: IDAT: CRC error"). Here libpng's errors become the error naming the file, and its
// warnings (about metadata this decode does not use: colour profiles, text chunks) are not printed.
#include <png.h>
#include <sys/stat.h>

#include <csetjmp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "mambacv/image.h"
#include "vision/resample.h"

namespace mambacv {

namespace {

constexpr int kDecodeFlags = cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION;
constexpr uint64_t kMaxImagePixels = uint64_t{1} << 27;  // 134 Mpixel, 400 MB decoded
constexpr const char* kFormats = "PNG, JPEG, BMP, TIFF, WebP, PPM/PGM, ...";

// Decoded OpenCV matrix (normally CV_8UC3 BGR) -> packed RGB Image; `name` ("image file 'x'") starts errors.
Image mat_to_image(cv::Mat m, const std::string& name) {
  // keep the high byte (floor(v / 256)) like PIL; imread already does this for IMREAD_COLOR
  if (m.depth() == CV_16U) m.convertTo(m, CV_8U, 1.0 / 256.0, -127.5 / 256.0);
  MAMBACV_CHECK(m.depth() == CV_8U, name << ": decoded to an unsupported sample type (OpenCV type " << m.type()
                                          << "), expected 8 or 16 bit");
  if (m.channels() == 1) cv::cvtColor(m, m, cv::COLOR_GRAY2BGR);
  if (m.channels() == 4) cv::cvtColor(m, m, cv::COLOR_BGRA2BGR);
  MAMBACV_CHECK(m.channels() == 3, name << ": decoded to " << m.channels() << " channels, expected 3");
  Image img;
  img.width = m.cols;
  img.height = m.rows;
  img.rgb.resize(static_cast<size_t>(m.cols) * m.rows * 3);
  for (int y = 0; y < m.rows; ++y) {
    const uint8_t* s = m.ptr<uint8_t>(y);
    uint8_t* d = img.pixel(0, y);
    for (int x = 0; x < m.cols; ++x) {
      d[3 * x + 0] = s[3 * x + 2];
      d[3 * x + 1] = s[3 * x + 1];
      d[3 * x + 2] = s[3 * x + 0];
    }
  }
  return img;
}

std::string first_line(const char* s) {
  std::string t(s ? s : "");
  size_t nl = t.find('\n');
  return nl == std::string::npos ? t : t.substr(0, nl);
}

// A JPEG whose entropy-coded data was cut short: no end-of-image marker (FF D9) after its last start-of-scan
// (FF DA). libjpeg pads such data with grey and only warns; PIL raises "image file is truncated", and so does this.
// (Inside entropy-coded data an FF byte is always followed by 00 or a restart marker, so neither pair occurs there;
// an EXIF thumbnail's markers come before the main image's scans.)
bool jpeg_truncated(const uint8_t* p, size_t n) {
  if (n < 4 || p[0] != 0xFF || p[1] != 0xD8 || p[2] != 0xFF) return false;  // not a JPEG
  size_t last_sos = 0;
  bool eoi_after = false;
  for (size_t i = 2; i + 1 < n; ++i) {
    if (p[i] != 0xFF) continue;
    if (p[i + 1] == 0xDA) last_sos = i, eoi_after = false;
    else if (p[i + 1] == 0xD9 && last_sos) eoi_after = true;
  }
  return last_sos == 0 || !eoi_after;
}

// ---- PNG through libpng
struct PngSource {
  const uint8_t* data;
  size_t size, pos;
  char error[200];
};

void png_on_error(png_structp png, png_const_charp msg) {
  auto* src = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(src->error, sizeof src->error, "%s", msg ? msg : "unknown libpng error");
  png_longjmp(png, 1);
}

void png_on_warning(png_structp, png_const_charp) {}  // metadata this decode ignores (see the file comment)

void png_on_read(png_structp png, png_bytep out, size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->size - src->pos) png_error(png, "the file ends early (truncated)");
  std::memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

// Decodes into *rgb (packed RGB rows, resized here) with the conversions of the file comment; returns false with
// src->error set when libpng fails. Only plain data lives in this frame (libpng leaves it by longjmp).
bool png_decode_rgb(PngSource* src, std::vector<uint8_t>* rgb, std::vector<png_bytep>* rows, int* width,
                    int* height) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, src, png_on_error, png_on_warning);
  if (!png) {
    std::snprintf(src->error, sizeof src->error, "out of memory");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    if (!src->error[0]) std::snprintf(src->error, sizeof src->error, "out of memory");
    return false;
  }
  png_set_read_fn(png, src, png_on_read);
  png_read_info(png, info);
  const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  const int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
  const bool gray16 = depth == 16 && type == PNG_COLOR_TYPE_GRAY;  // clipped to 255 below, as PIL's mode "I"
  if (depth == 16 && !gray16) png_set_strip_16(png);                // the high byte
  // alpha (and a palette's transparency, which palette_to_rgb expands into alpha) dropped, not blended
  if ((type & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS)) png_set_strip_alpha(png);
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (!gray16 && !(type & PNG_COLOR_MASK_COLOR)) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info), want = static_cast<size_t>(w) * (gray16 ? 2 : 3);
  if (row_bytes != want) png_error(png, "unexpected row layout after conversion to RGB");
  rgb->resize(static_cast<size_t>(w) * h * 3);  // gray16 rows (2 bytes a pixel) fit too
  rows->resize(h);
  for (png_uint_32 y = 0; y < h; ++y) (*rows)[y] = rgb->data() + static_cast<size_t>(y) * want;
  png_read_image(png, rows->data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  if (gray16)  // big-endian samples, clipped to 255 and replicated, last pixel first (in place)
    for (png_uint_32 y = h; y-- > 0;) {
      uint8_t* row = rgb->data() + static_cast<size_t>(y) * want;
      uint8_t* out = rgb->data() + static_cast<size_t>(y) * w * 3;
      for (png_uint_32 x = w; x-- > 0;) {
        const unsigned v = static_cast<unsigned>(row[2 * x]) << 8 | row[2 * x + 1];
        const uint8_t g = static_cast<uint8_t>(v > 255 ? 255 : v);
        out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = g;
      }
    }
  *width = static_cast<int>(w);
  *height = static_cast<int>(h);
  return true;
}

bool is_png(const uint8_t* p, size_t n) { return n >= 8 && png_sig_cmp(p, 0, 8) == 0; }

Image decode_png(const uint8_t* data, size_t size, const std::string& what) {
  PngSource src{data, size, 0, {0}};
  Image img;
  std::vector<png_bytep> rows;
  MAMBACV_CHECK(png_decode_rgb(&src, &img.rgb, &rows, &img.width, &img.height),
                what << " could not be decoded as PNG: " << src.error);
  return img;
}

// Width x height declared in a PNG (IHDR) or JPEG (first SOFn) header, or {0, 0} for other formats / none found.
std::pair<uint64_t, uint64_t> declared_size(const uint8_t* p, size_t n) {
  static const uint8_t kSig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  auto be = [p](size_t at, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = v << 8 | p[at + i];
    return v;
  };
  if (n >= 24 && std::memcmp(p, kSig, 8) == 0 && std::memcmp(p + 12, "IHDR", 4) == 0) return {be(16, 4), be(20, 4)};
  if (n >= 4 && p[0] == 0xFF && p[1] == 0xD8) {
    for (size_t i = 2; i + 9 < n;) {  // marker segments up to the first start of frame
      if (p[i] != 0xFF) return {0, 0};
      const uint8_t m = p[i + 1];
      if (m == 0xFF) {  // fill byte
        ++i;
        continue;
      }
      if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) return {be(i + 7, 2), be(i + 5, 2)};
      if (m == 0xD8 || (m >= 0xD0 && m <= 0xD7) || m == 0x01) {
        i += 2;
        continue;
      }
      i += 2 + be(i + 2, 2);
    }
  }
  return {0, 0};
}

// Encoded bytes -> Image, with the checks above; `what` names the file or buffer in errors.
Image decode_bytes(const uint8_t* data, size_t size, const std::string& what) {
  MAMBACV_CHECK(!jpeg_truncated(data, size),
                what << " is truncated (a JPEG without its end-of-image marker after the last scan)");
  // decoded images cost 3 bytes per pixel (and a batch decodes in parallel): beyond kMaxImagePixels they are
  // refused from the header, before decoding
  const auto [dw, dh] = declared_size(data, size);
  MAMBACV_CHECK(dw * dh <= kMaxImagePixels, what << " declares " << dw << "x" << dh << " pixels, more than the "
                                                 << kMaxImagePixels << " (" << (kMaxImagePixels >> 20)
                                                 << " Mpixel) an input image may have");
  if (is_png(data, size)) return decode_png(data, size, what);
  cv::Mat m;
  try {
    cv::Mat buf(1, static_cast<int>(size), CV_8U, const_cast<uint8_t*>(data));
    m = cv::imdecode(buf, kDecodeFlags);
  } catch (const cv::Exception& e) {
    MAMBACV_FAIL(what << " could not be decoded: " << first_line(e.err.c_str()));
  }
  MAMBACV_CHECK(!m.empty(), what << " could not be decoded (corrupt or truncated, not a recognised image format ("
                                 << kFormats << "), or an unsupported variant of its format)");
  return mat_to_image(m, what);
}

}  // namespace

Image load_image(const std::string& path) {
  MAMBACV_CHECK(!path.empty(), "load_image: empty path");
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    MAMBACV_CHECK(err != ENOENT && err != ENOTDIR, "image file '" << path << "' does not exist");
    MAMBACV_FAIL("image file '" << path << "' cannot be accessed: " << std::strerror(err));
  }
  MAMBACV_CHECK(!S_ISDIR(st.st_mode), "image file '" << path << "' is a directory, not an image");
  MAMBACV_CHECK(S_ISREG(st.st_mode), "image file '" << path << "' is not a regular file");
  {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) {
      const int err = errno;
      MAMBACV_FAIL("image file '" << path << "' cannot be read: " << std::strerror(err));
    }
    std::fclose(f);
  }
  MAMBACV_CHECK(st.st_size > 0, "image file '" << path << "' is empty (0 bytes)");
  MAMBACV_CHECK(cv::haveImageReader(path),
                "image file '" << path << "' is not a recognised image format (supported: " << kFormats << ")");
  MAMBACV_CHECK(st.st_size < (int64_t{1} << 31), "image file '" << path << "' is " << st.st_size
                                                                << " bytes, more than the 2 GiB an image may have");
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  {
    FILE* f = std::fopen(path.c_str(), "rb");
    MAMBACV_CHECK(f != nullptr, "image file '" << path << "' cannot be read: " << std::strerror(errno));
    const size_t got = std::fread(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
    MAMBACV_CHECK(got == bytes.size(), "image file '" << path << "' could not be read in full (" << got << " of "
                                                      << bytes.size() << " bytes)");
  }
  return decode_bytes(bytes.data(), bytes.size(), "image file '" + path + "'");
}

Image decode_image(const void* data, size_t size, const std::string& name) {
  MAMBACV_CHECK(data != nullptr && size > 0, "image '" << name << "': no encoded bytes given");
  MAMBACV_CHECK(size < (size_t{1} << 31), "image '" << name << "': " << size << " bytes, more than 2 GiB");
  return decode_bytes(static_cast<const uint8_t*>(data), size, "image '" + name + "'");
}

void save_image(const std::string& path, const Image& image) {
  MAMBACV_CHECK(image.width > 0 && image.height > 0 &&
                    image.rgb.size() == static_cast<size_t>(image.width) * image.height * 3,
                "save_image '" << path << "': invalid image " << image.width << "x" << image.height
                               << " with " << image.rgb.size() << " bytes");
  cv::Mat rgb(image.height, image.width, CV_8UC3, const_cast<uint8_t*>(image.rgb.data()));
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  bool ok = false;
  try {
    MAMBACV_CHECK(
        cv::haveImageWriter(path),
        "save_image '" << path
                       << "': no encoder for this file extension (use .png, .jpg, .bmp, .tiff, .webp)");
    ok = cv::imwrite(path, bgr);
  } catch (const cv::Exception& e) {
    MAMBACV_FAIL("save_image '" << path << "' failed: " << first_line(e.err.c_str()));
  }
  MAMBACV_CHECK(ok, "save_image '" << path
                                   << "' failed: could not write the file (check the directory exists and "
                                      "is writable)");
}

namespace detail {

Image resize_bilinear_opencv(const Image& image, int out_w, int out_h) {
  MAMBACV_CHECK(image.width > 0 && image.height > 0 &&
                    image.rgb.size() == static_cast<size_t>(image.width) * image.height * 3,
                "resize_bilinear_opencv: invalid image " << image.width << "x" << image.height);
  MAMBACV_CHECK(out_w > 0 && out_h > 0,
                "resize_bilinear_opencv: output size must be positive, got " << out_w << "x" << out_h);
  Image out;
  out.width = out_w;
  out.height = out_h;
  out.rgb.resize(static_cast<size_t>(out_w) * out_h * 3);
  cv::Mat src(image.height, image.width, CV_8UC3, const_cast<uint8_t*>(image.rgb.data()));
  cv::Mat dst(out_h, out_w, CV_8UC3, out.rgb.data());
  cv::resize(src, dst, cv::Size(out_w, out_h), 0, 0, cv::INTER_LINEAR);
  MAMBACV_CHECK(dst.data == out.rgb.data(), "resize_bilinear_opencv: OpenCV reallocated the output");
  return out;
}

}  // namespace detail

}  // namespace mambacv
