// Tensor storage, views and dtype conversion.
#include "mambacv/tensor.h"

#include "kernels/cpu/round_simd.h"
#include "kernels/host_allocator.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <sstream>

namespace mambacv {

const char* device_name(Device d) { return d == Device::Cpu ? "cpu" : "cuda"; }

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::Cpu;
  if (s == "cuda" || s == "gpu") return Device::Cuda;
  MAMBACV_FAIL("--device: expected cpu or cuda, got '" << s << "'");
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::F64: return 8;
    case DType::I64: return 8;
    case DType::I32: return 4;
    case DType::I16: return 2;
    case DType::I8: return 1;
    case DType::U8: return 1;
    case DType::Bool: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::F64: return "f64";
    case DType::I64: return "i64";
    case DType::I32: return "i32";
    case DType::I16: return "i16";
    case DType::I8: return "i8";
    case DType::U8: return "u8";
    case DType::Bool: return "bool";
  }
  return "?";
}

DType parse_compute_dtype(const std::string& s) {
  if (s == "f32" || s == "fp32" || s == "float32") return DType::F32;
  if (s == "f16" || s == "fp16" || s == "float16" || s == "half") return DType::F16;
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  MAMBACV_FAIL("--dtype: expected f32, f16 or bf16, got '" << s << "'");
}

namespace {
template <class S>
double load_as_double(const S* p, size_t i) {
  return static_cast<double>(p[i]);
}
double load_any(const void* src, DType t, size_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(src)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(src)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
    case DType::F64: return static_cast<const double*>(src)[i];
    case DType::I64: return static_cast<double>(static_cast<const int64_t*>(src)[i]);
    case DType::I32: return static_cast<const int32_t*>(src)[i];
    case DType::I16: return static_cast<const int16_t*>(src)[i];
    case DType::I8: return static_cast<const int8_t*>(src)[i];
    case DType::U8: return static_cast<const uint8_t*>(src)[i];
    case DType::Bool: return static_cast<const uint8_t*>(src)[i] ? 1.0 : 0.0;
  }
  return 0;
}
void store_any(void* dst, DType t, size_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(dst)[i] = static_cast<float>(v); break;
    case DType::F16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(static_cast<float>(v)); break;
    case DType::BF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(static_cast<float>(v)); break;
    case DType::F64: static_cast<double*>(dst)[i] = v; break;
    case DType::I64: static_cast<int64_t*>(dst)[i] = static_cast<int64_t>(v); break;
    case DType::I32: static_cast<int32_t*>(dst)[i] = static_cast<int32_t>(v); break;
    case DType::I16: static_cast<int16_t*>(dst)[i] = static_cast<int16_t>(v); break;
    case DType::I8: static_cast<int8_t*>(dst)[i] = static_cast<int8_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(dst)[i] = static_cast<uint8_t>(v); break;
    case DType::Bool: static_cast<uint8_t*>(dst)[i] = v != 0 ? 1 : 0; break;
  }
}
}  // namespace

void convert_elements(const void* src, DType st, void* dst, DType dt, size_t n) {
  if (st == dt) {
    std::memcpy(dst, src, n * dtype_size(st));
    return;
  }
  // f32 <-> f16 / bf16: 8 at a time (F16C and AVX2, part of the build's x86-64-v3 baseline), the same values as the
  // scalar conversions (round to nearest even), which finish the tail
  if (dt == DType::F32) {
    float* d = static_cast<float*>(dst);
    const uint16_t* s = static_cast<const uint16_t*>(src);
    size_t i = 0;
    if (st == DType::F16) {
      for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
      for (; i < n; ++i) d[i] = f16_to_f32(s[i]);
      return;
    }
    if (st == DType::BF16) {
      for (; i + 8 <= n; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
        _mm256_storeu_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
      }
      for (; i < n; ++i) d[i] = bf16_to_f32(s[i]);
      return;
    }
  }
  if (st == DType::F32) {
    const float* s = static_cast<const float*>(src);
    uint16_t* d = static_cast<uint16_t*>(dst);
    size_t i = 0;
    if (dt == DType::F16) {
      for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      for (; i < n; ++i) d[i] = f32_to_f16(s[i]);
      return;
    }
    if (dt == DType::BF16) {
      for (; i + 8 <= n; i += 8) {
        // the rounded value's upper halves, narrowed (values <= 0xffff: packus is exact)
        const __m256i r = _mm256_srli_epi32(
            _mm256_castps_si256(ops::simd::round8(_mm256_loadu_ps(s + i), ops::simd::kRoundBf16)), 16);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                         _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
      }
      for (; i < n; ++i) d[i] = f32_to_bf16(s[i]);
      return;
    }
  }
  if (st == DType::I64 && dt == DType::I64) return;
  for (size_t i = 0; i < n; ++i) store_any(dst, dt, i, load_any(src, st, i));
}

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << ")";
  return o.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s)
    if (__builtin_mul_overflow(n, d, &n)) MAMBACV_FAIL("tensor shape " << shape_str(s) << " has more than 2^63 elements");
  return n;
}


Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  MAMBACV_CHECK(device == Device::Cpu, "Tensor::empty: device " << device_name(device)
                                                                << " tensors are created by the CUDA backend");
  for (int64_t d : shape) MAMBACV_CHECK(d >= 0, "Tensor::empty: negative dimension in shape " << shape_str(shape));
  MAMBACV_CHECK(shape_numel(shape) <= (int64_t{1} << 60) / static_cast<int64_t>(dtype_size(dtype)),
                "Tensor::empty: shape " << shape_str(shape) << " of " << dtype_name(dtype) << " is more than 2^60 bytes");
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.holder_ = host_alloc(t.nbytes());
  t.data_ = t.holder_.get();
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  std::memset(t.data_, 0, t.nbytes());
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& v, const Shape& shape) {
  MAMBACV_CHECK(static_cast<int64_t>(v.size()) == shape_numel(shape),
                "Tensor::from_vector: " << v.size() << " values for shape " << shape_str(shape));
  Tensor t = empty(shape);
  if (!v.empty()) std::memcpy(t.data_, v.data(), v.size() * 4);
  return t;
}

Tensor Tensor::view_of(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> keepalive, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.holder_ = std::move(keepalive);
  t.data_ = data;
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  int j = i < 0 ? i + n : i;
  MAMBACV_CHECK(j >= 0 && j < n, "dimension " << i << " out of range for tensor " << str());
  return shape_[j];
}

std::string Tensor::str() const { return std::string(dtype_name(dtype_)) + shape_str(shape_); }

Tensor Tensor::reshape(const Shape& shape) const {
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      MAMBACV_CHECK(infer < 0, "reshape: more than one -1 in " << shape_str(shape));
      infer = static_cast<int>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    MAMBACV_CHECK(known > 0 && numel() % known == 0, "reshape: cannot view " << str() << " as " << shape_str(shape));
    s[infer] = numel() / known;
  }
  MAMBACV_CHECK(shape_numel(s) == numel(), "reshape: cannot view " << str() << " as " << shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  return t;
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  MAMBACV_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0],
                "slice0: rows [" << begin << ", " << end << ") out of range for " << str());
  Tensor t = *this;
  t.shape_[0] = end - begin;
  int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  t.data_ = static_cast<char*>(data_) + static_cast<size_t>(begin * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device_);
  if (nbytes()) std::memcpy(t.data_, data_, nbytes());
  return t;
}

Tensor Tensor::to(DType dtype, bool copy) const {
  if (dtype == dtype_) return copy ? clone() : *this;
  MAMBACV_CHECK(device_ == Device::Cpu, "Tensor::to: conversion of " << str() << " on " << device_name(device_));
  Tensor t = empty(shape_, dtype, device_);
  convert_elements(data_, dtype_, t.data_, dtype, static_cast<size_t>(numel()));
  return t;
}

void Tensor::fill(float v) {
  MAMBACV_CHECK(device_ == Device::Cpu, "Tensor::fill on " << device_name(device_));
  size_t n = static_cast<size_t>(numel());
  switch (dtype_) {
    case DType::F32:
      for (size_t i = 0; i < n; ++i) static_cast<float*>(data_)[i] = v;
      break;
    case DType::F16: {
      uint16_t b = f32_to_f16(v);
      for (size_t i = 0; i < n; ++i) static_cast<uint16_t*>(data_)[i] = b;
      break;
    }
    case DType::BF16: {
      uint16_t b = f32_to_bf16(v);
      for (size_t i = 0; i < n; ++i) static_cast<uint16_t*>(data_)[i] = b;
      break;
    }
    default: MAMBACV_FAIL("Tensor::fill: " << str() << " is not a float tensor");
  }
}

Compare compare(const Tensor& a, const Tensor& ref) {
  MAMBACV_CHECK(a.shape() == ref.shape(), "compare: shape " << shape_str(a.shape()) << " vs reference "
                                                            << shape_str(ref.shape()));
  Compare c;
  size_t n = static_cast<size_t>(a.numel());
  double num = 0, den = 0, anorm = 0;
  for (size_t i = 0; i < n; ++i) {
    double x = load_any(a.raw(), a.dtype(), i);
    double r = load_any(ref.raw(), ref.dtype(), i);
    if (!std::isfinite(x)) c.finite = false;
    double d = x - r;
    num += d * d;
    den += r * r;
    anorm += x * x;
    if (std::fabs(d) > c.max_abs || std::isnan(d)) c.max_abs = std::isnan(d) ? INFINITY : std::max(c.max_abs, std::fabs(d));
  }
  if (den > 0) {
    c.rel_l2 = std::sqrt(num / den);
  } else {
    c.rel_l2 = std::sqrt(anorm);
  }
  if (!c.finite) c.rel_l2 = INFINITY;
  return c;
}

}  // namespace mambacv
