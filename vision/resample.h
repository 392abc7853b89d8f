// vision/resample.h - PIL-compatible antialiased resampling of 8-bit images (internal, exposed for tests).
//
// Semantics of Pillow's ImagingResample (src/libImaging/Resample.c, Pillow 9.x), which is what torchvision's
// Resize does to a PIL image:
//   * separable: horizontal pass first (into an 8-bit intermediate), then vertical; a pass whose size does
//   not
//     change is skipped, so an identity resize is exact;
//   * per output index i: scale = in / out, filterscale = max(scale, 1) (antialiasing when downscaling),
//     support = filter support * filterscale, center = (i + 0.5) * scale, taps over
//     [int(center - support + 0.5), int(center + support + 0.5)) clipped to the image,
//     weight = filter((x - center + 0.5) / filterscale), normalised to sum 1 in double;
//   * weights as fixed point with 22 fractional bits (rounded half away from zero), accumulated in int32 from
//     1 << 21, then >> 22 and clamped to [0, 255] after each pass.
// Bicubic is Keys' cubic with a = -0.5 (support 2), bilinear the triangle (support 1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "mambacv/image.h"

namespace mambacv::detail {

enum class ResampleFilter { Bilinear, Bicubic };

double resample_filter_weight(ResampleFilter f, double x);

// Fixed-point coefficients of one axis: for output index i, taps first[i] .. first[i] + count[i] - 1 of the
// input with weights k[i * ksize + j].
struct ResampleCoeffs {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> k;
};
constexpr int kResamplePrecisionBits = 22;
// Output indices begin .. begin + n - 1 of an in_size -> out_size resize (n < 0: to the end); index 0 of the
// result is output index `begin`.
ResampleCoeffs resample_coeffs(int in_size, int out_size, ResampleFilter f, int begin = 0, int n = -1);

// Resizes interleaved 8-bit pixels (`channels` per pixel, rows `src_stride` / `dst_stride` bytes apart).
void resample_pil(const uint8_t* src, int in_w, int in_h, size_t src_stride, int channels, uint8_t* dst,
                  int out_w, int out_h, size_t dst_stride, ResampleFilter f = ResampleFilter::Bicubic);
// Only the window [x0, x0 + win_w) x [y0, y0 + win_h) of that out_w x out_h resize, into dst (win_h rows of
// win_w pixels): the same bytes as resizing whole and cropping, with work and memory for the window only.
void resample_pil_window(const uint8_t* src, int in_w, int in_h, size_t src_stride, int channels, uint8_t* dst,
                         int out_w, int out_h, int x0, int y0, int win_w, int win_h, size_t dst_stride,
                         ResampleFilter f = ResampleFilter::Bicubic);
Image resize_pil(const Image& image, int out_w, int out_h, ResampleFilter f = ResampleFilter::Bicubic);

// Bilinear resize exactly as cv2.resize(INTER_LINEAR) (what mmcv.imresize uses); implemented with OpenCV in
// vision/image_io.cpp, the one file that includes OpenCV.
Image resize_bilinear_opencv(const Image& image, int out_w, int out_h);

}  // namespace mambacv::detail
