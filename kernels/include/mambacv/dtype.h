// mambacv/dtype.h - element types and the fp16 / bf16 conversions (round to nearest even).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace mambacv {

// F32/F16/BF16 are compute dtypes; the integer types exist for weight files and goldens (labels, masks).
enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, Bool };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "f32", "f16", "bf16", "f64", "i64", ...
// Parses a compute dtype option: "f32"|"fp32"|"float32", "f16"|"fp16"|"float16", "bf16"|"bfloat16".
DType parse_compute_dtype(const std::string& s);
inline bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64; }

struct f16_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::F32; }
template <>
constexpr DType dtype_of<f16_t>() { return DType::F16; }
template <>
constexpr DType dtype_of<bf16_t>() { return DType::BF16; }
template <>
constexpr DType dtype_of<double>() { return DType::F64; }
template <>
constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <>
constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <>
constexpr DType dtype_of<int16_t>() { return DType::I16; }
template <>
constexpr DType dtype_of<int8_t>() { return DType::I8; }
template <>
constexpr DType dtype_of<uint8_t>() { return DType::U8; }
template <>
constexpr DType dtype_of<bool>() { return DType::Bool; }

inline float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    if (man == 0) return bits_to_f32(sign);
    // subnormal: value = man * 2^-24
    float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (man << 13));
  return bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
}
inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_to_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0));
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow to inf (>= 65520)
  if (a < 0x38800000u) {                                               // subnormal or zero in f16
    // round(a_value / 2^-24) with ties to even, done in float arithmetic
    float v = bits_to_f32(a) * 16777216.0f;  // * 2^24
    uint32_t m = static_cast<uint32_t>(v);
    float rem = v - static_cast<float>(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
  return static_cast<uint16_t>(sign | (r >> 13));
}

inline float to_f32(float v) { return v; }
inline float to_f32(f16_t v) { return f16_to_f32(v.bits); }
inline float to_f32(bf16_t v) { return bf16_to_f32(v.bits); }
template <class T>
inline T from_f32(float v);
template <>
inline float from_f32<float>(float v) { return v; }
template <>
inline f16_t from_f32<f16_t>(float v) { return f16_t{f32_to_f16(v)}; }
template <>
inline bf16_t from_f32<bf16_t>(float v) { return bf16_t{f32_to_bf16(v)}; }

// Converts n elements between any two dtypes (float types through f32/f64; integers exactly where representable).
void convert_elements(const void* src, DType src_t, void* dst, DType dst_t, size_t n);

}  // namespace mambacv
