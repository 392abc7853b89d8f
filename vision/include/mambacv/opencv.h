// mambacv/opencv.h - optional, header-only bridge from OpenCV images (cv::Mat) to mambacv.
//
//   #include <mambacv/opencv.h>           // needs OpenCV's core module on the include path and link line
//   cv::Mat frame = cv::imread("cat.jpg");                          // CV_8UC3, BGR
//   mambacv::Tensor x = mambacv::preprocess_mat(frame, model.input_spec());   // (1, 3, S, S) normalised RGB
//   mambacv::Tensor logits = model.classify(x);
//
// Accepted: 2-D, 8-bit Mats with 1 (gray), 3 (BGR, OpenCV's order) or 4 (BGRA) channels, any row step (ROIs of a
// larger image work without a copy). Pass MatColorOrder::Rgb for Mats that already hold RGB / RGBA pixels.
// Everything else (16-bit or float depth, 2 channels, empty or n-dimensional Mats) throws mambacv::Error saying
// what was found and how to convert it. The library itself never depends on OpenCV; only code that includes
// this header does.
#pragma once

#include <opencv2/core.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

#include "mambacv/error.h"
#include "mambacv/image.h"
#include "mambacv/tensor.h"

namespace mambacv {

// Channel order of a 3- or 4-channel Mat: OpenCV's own functions (imread, VideoCapture) give BGR.
enum class MatColorOrder { Bgr, Rgb };

// The PixelFormat describing `mat`'s pixels; throws Error for Mats mambacv cannot read.
inline PixelFormat mat_pixel_format(const cv::Mat& mat, MatColorOrder order = MatColorOrder::Bgr) {
  MAMBACV_CHECK(!mat.empty() && mat.data != nullptr, "cv::Mat: the image is empty (nothing decoded or read?)");
  MAMBACV_CHECK(mat.dims == 2, "cv::Mat: expected a 2-D image, got a " << mat.dims << "-dimensional Mat");
  MAMBACV_CHECK(mat.depth() == CV_8U,
                "cv::Mat: expected 8-bit pixels (CV_8UC1/3/4), got type "
                    << cv::typeToString(mat.type())
                    << "; convert first, e.g. mat.convertTo(out, CV_8U, 255.0) for [0,1] floats or "
                       "mat.convertTo(out, CV_8U, 1.0 / 257) for 16-bit");
  switch (mat.channels()) {
    case 1:
      return PixelFormat::Gray8;
    case 3:
      return order == MatColorOrder::Bgr ? PixelFormat::Bgr8 : PixelFormat::Rgb8;
    case 4:
      return order == MatColorOrder::Bgr ? PixelFormat::Bgra8 : PixelFormat::Rgba8;
    default:
      MAMBACV_FAIL("cv::Mat: expected 1, 3 or 4 channels (gray, BGR, BGRA), got " << mat.channels()
                                                                                  << " (type "
                                                                                  << cv::typeToString(mat.type())
                                                                                  << ")");
  }
}

// Copies `mat` into an RGB Image (gray replicated, alpha dropped, BGR swapped).
inline Image image_from_mat(const cv::Mat& mat, MatColorOrder order = MatColorOrder::Bgr) {
  const PixelFormat fmt = mat_pixel_format(mat, order);
  return image_from_pixels(mat.ptr<uint8_t>(0), mat.cols, mat.rows, static_cast<size_t>(mat.step[0]), fmt);
}

// `mat` -> the model's network input (1, 3, spec.size, spec.size): the same eval transform as
// preprocess(load_image(path), spec), without an intermediate copy of the pixels.
inline Tensor preprocess_mat(const cv::Mat& mat, const InputSpec& spec = InputSpec(),
                             MatColorOrder order = MatColorOrder::Bgr) {
  const PixelFormat fmt = mat_pixel_format(mat, order);
  return preprocess(mat.ptr<uint8_t>(0), mat.cols, mat.rows, static_cast<size_t>(mat.step[0]), fmt, spec);
}

// An Image -> a new CV_8UC3 BGR Mat (for cv::imshow / cv::imwrite / drawing).
inline cv::Mat mat_from_image(const Image& image) {
  MAMBACV_CHECK(!image.empty() && image.rgb.size() == static_cast<size_t>(image.width) * image.height * 3,
                "mat_from_image: the image is empty or its pixel buffer does not match " << image.width << "x"
                                                                                          << image.height);
  cv::Mat out(image.height, image.width, CV_8UC3);
  for (int y = 0; y < image.height; ++y) {
    const uint8_t* src = image.pixel(0, y);
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int x = 0; x < image.width; ++x, src += 3, dst += 3) {
      dst[0] = src[2];
      dst[1] = src[1];
      dst[2] = src[0];
    }
  }
  return out;
}

}  // namespace mambacv
