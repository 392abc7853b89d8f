// kernels/cpu/det_rle.cpp - COCO run-length encoding of binary masks and its compressed string form
// (kernels/detection_ops.h). Semantics: pycocotools common/maskApi.c rleEncode / rleDecode / rleArea /
// rleToString / rleFrString (written from the format description, with validation added on decode).
#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cpu/det_common.h"
#include "kernels/detection_ops.h"

namespace mambacv::det {

using detail::check_host;

Rle rle_encode(const uint8_t* mask, int64_t h, int64_t w) {
  MAMBACV_CHECK(h >= 0 && w >= 0, "det::rle_encode: mask size must be >= 0, found " << h << " x " << w);
  MAMBACV_CHECK(mask != nullptr || h * w == 0, "det::rle_encode: mask is null for a " << h << " x " << w << " mask");
  Rle r;
  r.h = h;
  r.w = w;
  // Walk the row-major mask in column-major order; runs alternate starting with background.
  uint8_t cur = 0;
  uint32_t run = 0;
  for (int64_t x = 0; x < w; ++x) {
    for (int64_t y = 0; y < h; ++y) {
      const uint8_t v = mask[y * w + x] != 0 ? 1 : 0;
      if (v != cur) {
        r.counts.push_back(run);
        run = 0;
        cur = v;
      }
      ++run;
    }
  }
  r.counts.push_back(run);
  return r;
}

Rle rle_encode(const Tensor& mask) {
  const char* op = "det::rle_encode";
  MAMBACV_CHECK(mask.defined() && mask.ndim() == 2 && (mask.dtype() == DType::U8 || mask.dtype() == DType::Bool),
                op << ": mask must be a u8 or bool (h, w) tensor, found "
                   << (mask.defined() ? mask.str() : std::string("undefined")));
  check_host(op, "mask", mask);
  return rle_encode(static_cast<const uint8_t*>(mask.raw()), mask.dim(0), mask.dim(1));
}

std::string rle_to_string(const Rle& rle) {
  std::string s;
  s.reserve(rle.counts.size() * 2);
  for (size_t i = 0; i < rle.counts.size(); ++i) {
    // counts from index 3 on are stored as the difference to the count two places before (same polarity)
    int64_t x = static_cast<int64_t>(rle.counts[i]);
    if (i > 2) x -= static_cast<int64_t>(rle.counts[i - 2]);
    bool more = true;
    while (more) {
      int c = static_cast<int>(x & 0x1f);
      x >>= 5;  // arithmetic shift: negative differences end at -1
      more = (c & 0x10) ? x != -1 : x != 0;
      if (more) c |= 0x20;
      s.push_back(static_cast<char>(c + 48));
    }
  }
  return s;
}

Rle rle_decode_string(const std::string& s, int64_t h, int64_t w) {
  const char* op = "det::rle_decode_string";
  MAMBACV_CHECK(h >= 0 && w >= 0, op << ": mask size must be >= 0, found " << h << " x " << w);
  Rle r;
  r.h = h;
  r.w = w;
  size_t p = 0;
  int64_t total = 0;
  while (p < s.size()) {
    int64_t x = 0;
    int k = 0;
    bool more = true;
    while (more) {
      MAMBACV_CHECK(p < s.size(), op << ": string ends inside a count (a continuation flag at the last character)");
      const int c = static_cast<unsigned char>(s[p]) - 48;
      MAMBACV_CHECK(c >= 0 && c < 64, op << ": character '" << s[p] << "' at position " << p
                                         << " is outside the RLE alphabet '0'..'o'");
      MAMBACV_CHECK(k < 12, op << ": count at position " << p << " is longer than 12 characters");
      x |= static_cast<int64_t>(c & 0x1f) << (5 * k);
      more = (c & 0x20) != 0;
      ++p;
      ++k;
      if (!more && (c & 0x10)) x |= -(int64_t{1} << (5 * k));  // sign-extend
    }
    const size_t m = r.counts.size();
    if (m > 2) x += static_cast<int64_t>(r.counts[m - 2]);
    MAMBACV_CHECK(x >= 0 && x <= 0xffffffffLL, op << ": count " << m << " decodes to " << x
                                                   << ", expected 0..2^32-1 (corrupt string?)");
    r.counts.push_back(static_cast<uint32_t>(x));
    total += x;
  }
  MAMBACV_CHECK(total == h * w, op << ": counts sum to " << total << ", expected h * w = " << h * w << " for a "
                                   << h << " x " << w << " mask");
  return r;
}

Tensor rle_decode(const Rle& rle) {
  const char* op = "det::rle_decode";
  MAMBACV_CHECK(rle.h >= 0 && rle.w >= 0, op << ": mask size must be >= 0, found " << rle.h << " x " << rle.w);
  int64_t total = 0;
  for (uint32_t c : rle.counts) total += c;
  MAMBACV_CHECK(total == rle.h * rle.w, op << ": counts sum to " << total << ", expected h * w = " << rle.h * rle.w
                                           << " for a " << rle.h << " x " << rle.w << " mask");
  const int64_t h = rle.h, w = rle.w;
  Tensor out = Tensor::empty({h, w}, DType::U8);
  uint8_t* o = out.data<uint8_t>();
  int64_t k = 0;  // column-major position
  uint8_t v = 0;
  for (uint32_t c : rle.counts) {
    for (uint32_t j = 0; j < c; ++j, ++k) {
      const int64_t x = k / h, y = k - x * h;
      o[y * w + x] = v;
    }
    v = static_cast<uint8_t>(1 - v);
  }
  return out;
}

int64_t rle_area(const Rle& rle) {
  int64_t a = 0;
  for (size_t i = 1; i < rle.counts.size(); i += 2) a += rle.counts[i];
  return a;
}

}  // namespace mambacv::det
