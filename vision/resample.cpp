// vision/resample.cpp - PIL-compatible antialiased resampling (semantics in resample.h).
#include "vision/resample.h"

#include <algorithm>
#include <cmath>

#include "mambacv/error.h"

namespace mambacv::detail {

namespace {

// Keys' cubic convolution kernel with a = -0.5 (support 2).
double cubic_keys(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

double triangle(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double filter_support(ResampleFilter f) {
  return f == ResampleFilter::Bicubic ? 2.0 : 1.0;
}

inline uint8_t fixed_to_u8(int32_t acc) {
  int32_t v = acc >> kResamplePrecisionBits;  // floor; the accumulator starts at one half, so this rounds
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// One horizontal pass: dst (h, out_w, C) from src (h, in_w, C).
template <int C>
void pass_horizontal(const uint8_t* src, size_t src_stride, int h, uint8_t* dst, size_t dst_stride, int out_w,
                     const ResampleCoeffs& co) {
#pragma omp parallel for schedule(static) if (static_cast <int64_t>(h) * out_w > 16384)
  for (int y = 0; y < h; ++y) {
    const uint8_t* row = src + static_cast<size_t>(y) * src_stride;
    uint8_t* out = dst + static_cast<size_t>(y) * dst_stride;
    for (int xo = 0; xo < out_w; ++xo) {
      const int32_t* k = &co.k[static_cast<size_t>(xo) * co.ksize];
      const uint8_t* p = row + static_cast<size_t>(co.first[xo]) * C;
      int32_t acc[C];
      for (int c = 0; c < C; ++c) acc[c] = 1 << (kResamplePrecisionBits - 1);
      for (int t = 0; t < co.count[xo]; ++t)
        for (int c = 0; c < C; ++c) acc[c] += static_cast<int32_t>(p[t * C + c]) * k[t];
      for (int c = 0; c < C; ++c) out[xo * C + c] = fixed_to_u8(acc[c]);
    }
  }
}

// One vertical pass: dst (out_h, w, C) from src (in_h, w, C); rows are independent of C.
void pass_vertical(const uint8_t* src, size_t src_stride, int row_bytes, uint8_t* dst, size_t dst_stride,
                   int out_h, const ResampleCoeffs& co) {
#pragma omp parallel for schedule(static) if (static_cast <int64_t>(out_h) * row_bytes > 49152)
  for (int yo = 0; yo < out_h; ++yo) {
    const int32_t* k = &co.k[static_cast<size_t>(yo) * co.ksize];
    const uint8_t* base = src + static_cast<size_t>(co.first[yo]) * src_stride;
    const int n = co.count[yo];
    uint8_t* out = dst + static_cast<size_t>(yo) * dst_stride;
    // accumulate whole rows (contiguous, vectorisable), same integer arithmetic per element
    std::vector<int32_t> acc(row_bytes, 1 << (kResamplePrecisionBits - 1));
    for (int t = 0; t < n; ++t) {
      const uint8_t* r = base + static_cast<size_t>(t) * src_stride;
      const int32_t kt = k[t];
      for (int i = 0; i < row_bytes; ++i) acc[i] += static_cast<int32_t>(r[i]) * kt;
    }
    for (int i = 0; i < row_bytes; ++i) out[i] = fixed_to_u8(acc[i]);
  }
}

void horizontal(int channels, const uint8_t* src, size_t src_stride, int h, uint8_t* dst, size_t dst_stride,
                int out_w, const ResampleCoeffs& co) {
  switch (channels) {
    case 1:
      return pass_horizontal<1>(src, src_stride, h, dst, dst_stride, out_w, co);
    case 2:
      return pass_horizontal<2>(src, src_stride, h, dst, dst_stride, out_w, co);
    case 3:
      return pass_horizontal<3>(src, src_stride, h, dst, dst_stride, out_w, co);
    case 4:
      return pass_horizontal<4>(src, src_stride, h, dst, dst_stride, out_w, co);
    default:
      MAMBACV_FAIL("resample_pil: channels must be 1..4, got " << channels);
  }
}

}  // namespace

double resample_filter_weight(ResampleFilter f, double x) {
  return f == ResampleFilter::Bicubic ? cubic_keys(x) : triangle(x);
}

ResampleCoeffs resample_coeffs(int in_size, int out_size, ResampleFilter f, int begin, int count) {
  MAMBACV_CHECK(in_size > 0 && out_size > 0,
                "resample: sizes must be positive, got input " << in_size << " -> output " << out_size);
  if (count < 0) count = out_size - begin;
  MAMBACV_CHECK(begin >= 0 && count >= 1 && begin + static_cast<int64_t>(count) <= out_size,
                "resample: window [" << begin << ", " << begin + static_cast<int64_t>(count) << ") outside the output "
                                     << out_size);
  // Pillow takes the input extent as a float box; exact for any realistic image size.
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = filter_support(f) * filterscale;
  const double inv_filterscale = 1.0 / filterscale;

  ResampleCoeffs co;
  co.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  co.first.resize(count);
  co.count.resize(count);
  co.k.assign(static_cast<size_t>(count) * co.ksize, 0);
  std::vector<double> w(co.ksize);
  for (int i = 0; i < count; ++i) {
    const double center = (begin + i + 0.5) * scale;
    // C-style truncation of the rounded bounds, then clipping to the image.
    int lo = static_cast<int>(center - support + 0.5);
    int hi = static_cast<int>(center + support + 0.5);
    lo = std::max(lo, 0);
    hi = std::min(hi, in_size);
    const int n = std::max(hi - lo, 0);
    double sum = 0.0;
    for (int t = 0; t < n; ++t) {
      w[t] = resample_filter_weight(f, (t + lo - center + 0.5) * inv_filterscale);
      sum += w[t];
    }
    int32_t* k = &co.k[static_cast<size_t>(i) * co.ksize];
    constexpr double one = static_cast<double>(1 << kResamplePrecisionBits);
    for (int t = 0; t < n; ++t) {
      const double v = sum != 0.0 ? w[t] / sum : w[t];
      k[t] = static_cast<int32_t>(v < 0 ? v * one - 0.5 : v * one + 0.5);  // half away from zero
    }
    co.first[i] = lo;
    co.count[i] = n;
  }
  return co;
}

void resample_pil_window(const uint8_t* src, int in_w, int in_h, size_t src_stride, int channels, uint8_t* dst,
                         int out_w, int out_h, int x0, int y0, int win_w, int win_h, size_t dst_stride,
                         ResampleFilter f) {
  MAMBACV_CHECK(src && dst, "resample_pil: null pixel pointer");
  MAMBACV_CHECK(channels >= 1 && channels <= 4, "resample_pil: channels must be 1..4, got " << channels);
  MAMBACV_CHECK(in_w > 0 && in_h > 0 && out_w > 0 && out_h > 0, "resample_pil: sizes must be positive, got "
                                                                    << in_w << "x" << in_h << " -> " << out_w
                                                                    << "x" << out_h);
  MAMBACV_CHECK(x0 >= 0 && y0 >= 0 && win_w >= 1 && win_h >= 1 && x0 + static_cast<int64_t>(win_w) <= out_w &&
                    y0 + static_cast<int64_t>(win_h) <= out_h,
                "resample_pil: window " << win_w << "x" << win_h << " at (" << x0 << ", " << y0 << ") outside the "
                                        << out_w << "x" << out_h << " output");
  const size_t in_row = static_cast<size_t>(in_w) * channels, win_row = static_cast<size_t>(win_w) * channels;
  MAMBACV_CHECK(src_stride >= in_row && dst_stride >= win_row,
                "resample_pil: strides " << src_stride << " / " << dst_stride << " are shorter than a row ("
                                         << in_row << " / " << win_row << " bytes)");
  const bool need_h = out_w != in_w, need_v = out_h != in_h;
  // a skipped pass copies: output index i is input index i along that axis
  const uint8_t* src_cols = need_h ? src : src + static_cast<size_t>(x0) * channels;
  if (!need_h && !need_v) {
    for (int y = 0; y < win_h; ++y) std::copy_n(src_cols + (y0 + y) * src_stride, win_row, dst + y * dst_stride);
    return;
  }
  if (need_h && !need_v) {
    horizontal(channels, src + static_cast<size_t>(y0) * src_stride, src_stride, win_h, dst, dst_stride, win_w,
               resample_coeffs(in_w, out_w, f, x0, win_w));
    return;
  }
  ResampleCoeffs cv = resample_coeffs(in_h, out_h, f, y0, win_h);
  if (!need_h) {
    pass_vertical(src_cols, src_stride, static_cast<int>(win_row), dst, dst_stride, win_h, cv);
    return;
  }
  // Both: horizontal into an 8-bit intermediate (only the rows the vertical pass reads), then vertical.
  const int r0 = cv.first.front();
  const int r1 = cv.first.back() + cv.count.back();
  for (int& v : cv.first) v -= r0;
  std::vector<uint8_t> mid(win_row * static_cast<size_t>(r1 - r0));
  horizontal(channels, src + static_cast<size_t>(r0) * src_stride, src_stride, r1 - r0, mid.data(), win_row, win_w,
             resample_coeffs(in_w, out_w, f, x0, win_w));
  pass_vertical(mid.data(), win_row, static_cast<int>(win_row), dst, dst_stride, win_h, cv);
}

void resample_pil(const uint8_t* src, int in_w, int in_h, size_t src_stride, int channels, uint8_t* dst,
                  int out_w, int out_h, size_t dst_stride, ResampleFilter f) {
  resample_pil_window(src, in_w, in_h, src_stride, channels, dst, out_w, out_h, 0, 0, out_w, out_h, dst_stride, f);
}

Image resize_pil(const Image& image, int out_w, int out_h, ResampleFilter f) {
  MAMBACV_CHECK(!image.empty() && image.rgb.size() == static_cast<size_t>(image.width) * image.height * 3,
                "resize_pil: image " << image.width << "x" << image.height << " holds " << image.rgb.size()
                                     << " bytes, expected width * height * 3");
  MAMBACV_CHECK(out_w > 0 && out_h > 0,
                "resize_pil: output size must be positive, got " << out_w << "x" << out_h);
  Image out;
  out.width = out_w;
  out.height = out_h;
  out.rgb.resize(static_cast<size_t>(out_w) * out_h * 3);
  resample_pil(image.rgb.data(), image.width, image.height, static_cast<size_t>(image.width) * 3, 3,
               out.rgb.data(), out_w, out_h, static_cast<size_t>(out_w) * 3, f);
  return out;
}

}  // namespace mambacv::detail
