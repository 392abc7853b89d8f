#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include <cmath>

#include "mambacv/tensor.h"

using namespace mambacv;

TEST(DType, HalfRoundTripExactValues) {
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.9604644775390625e-08f, -0.333251953125f}) {
    EXPECT_EQ(f16_to_f32(f32_to_f16(v)), v) << v;
  }
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(70000.0f))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  // ties to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 0.00048828125f)), 1.0f);
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 3 * 0.00048828125f)), 1.0f + 4 * 0.00048828125f);
}

TEST(DType, HalfMatchesExhaustiveDecode) {
  // every finite f16 value converts to f32 and back to the same bits
  for (uint32_t b = 0; b < 0x10000; ++b) {
    uint16_t h = static_cast<uint16_t>(b);
    if (((h >> 10) & 0x1f) == 0x1f) continue;
    EXPECT_EQ(f32_to_f16(f16_to_f32(h)), h) << std::hex << b;
  }
}

TEST(DType, BF16Rounding) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);          // tie -> even
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::zeros({4, 3});
  Tensor r = t.reshape({2, -1});
  EXPECT_EQ(r.shape(), (Shape{2, 6}));
  Tensor s = t.slice0(1, 3);
  s.f32()[0] = 5.0f;
  EXPECT_EQ(t.f32()[3], 5.0f);
  Tensor c = t.clone();
  c.f32()[3] = 1.0f;
  EXPECT_EQ(t.f32()[3], 5.0f);
  EXPECT_THROW(t.reshape({5, -1}), Error);
  EXPECT_THROW(t.slice0(2, 5), Error);
  EXPECT_THROW(t.data<int64_t>(), Error);
}

TEST(Tensor, ConvertAndCompare) {
  Tensor t = Tensor::from_vector({1.0f, -2.0f, 3.5f, 0.25f}, {2, 2});
  Tensor h = t.to(DType::F16);
  EXPECT_EQ(h.dtype(), DType::F16);
  Tensor back = h.to(DType::F32);
  Compare c = compare(back, t);
  EXPECT_EQ(c.rel_l2, 0.0);
  back.f32()[0] = 1.5f;
  c = compare(back, t);
  EXPECT_NEAR(c.max_abs, 0.5, 1e-12);
  EXPECT_GT(c.rel_l2, 0.0);
  back.f32()[1] = NAN;
  EXPECT_FALSE(compare(back, t).finite);
  EXPECT_THROW(compare(back, Tensor::zeros({4})), Error);
}

#include "kernels/host_allocator.h"

// The vectorised f32 <-> f16 / bf16 conversions give the scalar conversions' bits (NaN: any NaN), on lengths that
// hit the 8-wide loop and its tail, with ties, overflow, subnormals and infinities.
TEST(Tensor, VectorConversionsMatchScalar) {
  const float specials[] = {0.0f, -0.0f, 1.0f, 65504.0f, 65520.0f, -1e6f, 6e-8f, 1e-40f, 3e38f, 1.00390625f,
                            1.01171875f, -2.0009765625f, std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  uint32_t state = 12345;
  for (size_t n : {1, 7, 8, 9, 16, 31, 100}) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) {
      state = state * 1664525u + 1013904223u;
      x[i] = i % 2 ? specials[(i / 2) % (sizeof specials / sizeof specials[0])]
                   : (static_cast<float>(state >> 8) / 16777216.0f - 0.5f) * 300.0f;
    }
    for (DType t : {DType::F16, DType::BF16}) {
      std::vector<uint16_t> h(n);
      convert_elements(x.data(), DType::F32, h.data(), t, n);
      std::vector<float> back(n);
      convert_elements(h.data(), t, back.data(), DType::F32, n);
      for (size_t i = 0; i < n; ++i) {
        const uint16_t want = t == DType::F16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
        const float want_back = t == DType::F16 ? f16_to_f32(want) : bf16_to_f32(want);
        if (std::isnan(x[i])) {
          EXPECT_TRUE(std::isnan(back[i])) << dtype_name(t) << " i=" << i;
          continue;
        }
        EXPECT_EQ(h[i], want) << dtype_name(t) << " x=" << x[i] << " i=" << i << " n=" << n;
        EXPECT_EQ(f32_to_bits(back[i]), f32_to_bits(want_back)) << dtype_name(t) << " i=" << i;
      }
    }
  }
}

TEST(HostAllocator, ReusesLargeBlocksAndKeepsSmallOnesOut) {
  host_cache_release();
  void* first = nullptr;
  {
    Tensor a = Tensor::empty({1 << 18});  // 1 MiB: cached size class
    first = a.raw();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 64, 0u);
  }
  EXPECT_GE(host_cache_idle_bytes(), size_t{1} << 20);
  {
    Tensor b = Tensor::empty({(1 << 18) - 5});  // same size class -> the cached block
    EXPECT_EQ(b.raw(), first);
    Tensor c = Tensor::empty({1 << 18});         // the class's block is taken: a fresh one
    EXPECT_NE(c.raw(), first);
    b.fill(1.0f);
    c.fill(2.0f);
    EXPECT_EQ(b.f32()[0], 1.0f);
  }
  { Tensor small = Tensor::empty({16}); }
  size_t idle = host_cache_idle_bytes();
  host_cache_release();
  EXPECT_GT(idle, 0u);
  EXPECT_EQ(host_cache_idle_bytes(), 0u);
}
