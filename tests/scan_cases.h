// tests/scan_cases.h - selective-scan test problems shared by the CPU suite (test_scan.cpp) and the CUDA suite
// (tests/cuda): random operands of every dtype, layout and order a case names, the ScanParams pointing at them, and
// the comparison against the reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/selective_scan.h"

namespace mambacv::scan_cases {

// A host buffer of a compute dtype, filled from floats (values are rounded to the dtype).
struct Buf {
  DType t = DType::F32;
  std::vector<float> f;
  std::vector<uint16_t> h;
  void set(const std::vector<float>& v, DType dt) {
    t = dt;
    if (t == DType::F32) {
      f = v;
      return;
    }
    h.resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = t == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
  }
  const void* ptr() const { return t == DType::F32 ? static_cast<const void*>(f.data()) : h.data(); }
};

enum class Order { Identity, Reversed, ColMajor, ColMajorReversed, Random };
enum class Layout { TokenMajor, ChannelMajor };

struct Case {
  int64_t batch = 1, dim = 16, L = 64, N = 16, groups = 1;
  std::vector<Order> orders{Order::Identity};
  bool z = false, D = true, bias = true, softplus = true, accumulate = false, last_state = false;
  float out_scale = 1.0f;
  DType dir_round = DType::F32;
  Layout layout = Layout::TokenMajor;
  DType dtype = DType::F32;
  uint64_t seed = 1;

  std::string str() const {
    std::ostringstream s;
    s << "batch " << batch << " dim " << dim << " L " << L << " N " << N << " groups " << groups << " dirs "
      << orders.size() << " orders";
    for (Order o : orders) s << " " << static_cast<int>(o);
    s << " z " << z << " D " << D << " bias " << bias << " softplus " << softplus << " acc " << accumulate
      << " last_state " << last_state << " scale " << out_scale << " round " << dtype_name(dir_round) << " layout "
      << (layout == Layout::TokenMajor ? "token-major" : "channel-major") << " dtype " << dtype_name(dtype)
      << " seed " << seed;
    return s.str();
  }
};

// Factors L = H * W with H as close to sqrt(L) as possible (H <= W).
inline void grid_of(int64_t L, int64_t* H, int64_t* W) {
  int64_t h = static_cast<int64_t>(std::sqrt(static_cast<double>(L)));
  while (h > 1 && L % h) --h;
  *H = std::max<int64_t>(h, 1);
  *W = L / *H;
}

inline std::vector<int32_t> make_order(Order o, int64_t L, std::mt19937_64& rng) {
  std::vector<int32_t> v(static_cast<size_t>(L));
  std::iota(v.begin(), v.end(), 0);
  int64_t H, W;
  grid_of(L, &H, &W);
  switch (o) {
    case Order::Identity:
      break;
    case Order::Reversed:
      std::reverse(v.begin(), v.end());
      break;
    case Order::ColMajor:
    case Order::ColMajorReversed:
      // step l = w*H + h visits token h*W + w (VMamba cross-scan direction 1)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t h = 0; h < H; ++h) v[w * H + h] = static_cast<int32_t>(h * W + w);
      if (o == Order::ColMajorReversed) std::reverse(v.begin(), v.end());
      break;
    case Order::Random:
      std::shuffle(v.begin(), v.end(), rng);
      break;
  }
  return v;
}

inline std::vector<float> uniform(size_t n, std::mt19937_64& rng, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// All operands of one case, owning the memory the ScanParams point to.
struct Problem {
  struct Dir {
    Buf u, delta, z, B, C;
    std::vector<float> A, D, bias;
    std::vector<int32_t> order;
    bool identity = true;
  };
  Case c;
  std::vector<Dir> dirs;
  std::vector<float> out_init;

  explicit Problem(const Case& cs) : c(cs) {
    std::mt19937_64 rng(c.seed);
    const size_t tok = static_cast<size_t>(c.batch * c.dim * c.L);
    const size_t bc = static_cast<size_t>(c.batch * c.groups * c.N * c.L);
    dirs.resize(c.orders.size());
    for (size_t k = 0; k < dirs.size(); ++k) {
      Dir& d = dirs[k];
      d.u.set(uniform(tok, rng, -1.0f, 1.0f), c.dtype);
      std::vector<float> delta = c.softplus ? uniform(tok, rng, -3.0f, 1.0f) : uniform(tok, rng, 0.01f, 1.0f);
      if (c.softplus && tok > 3) delta[tok / 3] = 25.0f;  // the softplus threshold branch
      d.delta.set(delta, c.dtype);
      if (c.z) d.z.set(uniform(tok, rng, -4.0f, 4.0f), c.dtype);
      d.B.set(uniform(bc, rng, -1.0f, 1.0f), c.dtype);
      d.C.set(uniform(bc, rng, -1.0f, 1.0f), c.dtype);
      d.A = uniform(static_cast<size_t>(c.dim * c.N), rng, -2.0f, -0.05f);
      d.D = uniform(static_cast<size_t>(c.dim), rng, -1.0f, 1.0f);
      // without softplus dt = delta + bias must stay positive, or exp(dt * A) grows and the states overflow
      d.bias = uniform(static_cast<size_t>(c.dim), rng, c.softplus ? -1.0f : 0.0f, 0.5f);
      d.identity = c.orders[k] == Order::Identity;
      d.order = make_order(c.orders[k], c.L, rng);
    }
    out_init = uniform(tok, rng, -1.0f, 1.0f);
  }

  ScanOperand tok_operand(const Buf& b) const {
    ScanOperand o;
    o.ptr = b.ptr();
    o.dtype = b.t;
    if (c.layout == Layout::TokenMajor) {  // (B, L, dim)
      o.sb = c.L * c.dim, o.sc = 1, o.st = c.dim;
    } else {  // (B, dim, L)
      o.sb = c.dim * c.L, o.sc = c.L, o.st = 1;
    }
    return o;
  }
  ScanBCOperand bc_operand(const Buf& b) const {
    ScanBCOperand o;
    o.ptr = b.ptr();
    o.dtype = b.t;
    if (c.layout == Layout::TokenMajor) {  // (B, L, G, N)
      o.sb = c.L * c.groups * c.N, o.sg = c.N, o.sn = 1, o.st = c.groups * c.N;
    } else {  // (B, G, N, L)
      o.sb = c.groups * c.N * c.L, o.sg = c.N * c.L, o.sn = c.L, o.st = 1;
    }
    return o;
  }

  // Fills params; out and last_state buffers are the caller's. map(host pointer, bytes) gives the pointer the
  // scan is to read or write for each buffer: the buffer itself by default, a device copy for a GPU test.
  using Map = std::function<void*(const void*, size_t)>;
  ScanParams params(std::vector<float>& out, std::vector<std::vector<float>>& last, const Map& map = {}) const {
    const auto at = [&map](const void* ptr, size_t bytes) -> void* {
      return map ? map(ptr, bytes) : const_cast<void*>(ptr);
    };
    const size_t tok = static_cast<size_t>(c.batch * c.dim * c.L);
    const size_t bc = static_cast<size_t>(c.batch * c.groups * c.N * c.L);
    ScanParams p;
    p.batch = c.batch, p.dim = c.dim, p.L = c.L, p.N = c.N, p.groups = c.groups;
    p.delta_softplus = c.softplus;
    p.accumulate = c.accumulate;
    p.dir_round = c.dir_round;
    out = out_init;
    p.out = static_cast<float*>(at(out.data(), out.size() * sizeof(float)));
    if (c.layout == Layout::TokenMajor)
      p.osb = c.L * c.dim, p.osc = 1, p.ost = c.dim;
    else
      p.osb = c.dim * c.L, p.osc = c.L, p.ost = 1;
    last.assign(dirs.size(), std::vector<float>(static_cast<size_t>(c.batch * c.dim * c.N), -7.0f));
    for (size_t k = 0; k < dirs.size(); ++k) {
      const Dir& d = dirs[k];
      ScanDirection sd;
      sd.u = tok_operand(d.u);
      sd.u.ptr = at(sd.u.ptr, tok * dtype_size(c.dtype));
      sd.delta = tok_operand(d.delta);
      sd.delta.ptr = at(sd.delta.ptr, tok * dtype_size(c.dtype));
      if (c.z) {
        sd.z = tok_operand(d.z);
        sd.z.ptr = at(sd.z.ptr, tok * dtype_size(c.dtype));
      }
      sd.B = bc_operand(d.B);
      sd.B.ptr = at(sd.B.ptr, bc * dtype_size(c.dtype));
      sd.C = bc_operand(d.C);
      sd.C.ptr = at(sd.C.ptr, bc * dtype_size(c.dtype));
      sd.A = static_cast<const float*>(at(d.A.data(), d.A.size() * sizeof(float)));
      sd.D = c.D ? static_cast<const float*>(at(d.D.data(), d.D.size() * sizeof(float))) : nullptr;
      sd.delta_bias = c.bias ? static_cast<const float*>(at(d.bias.data(), d.bias.size() * sizeof(float))) : nullptr;
      sd.order = d.identity ? nullptr
                            : static_cast<const int32_t*>(at(d.order.data(), d.order.size() * sizeof(int32_t)));
      sd.out_scale = c.out_scale;
      sd.last_state = c.last_state ? static_cast<float*>(at(last[k].data(), last[k].size() * sizeof(float))) : nullptr;
      p.dirs.push_back(sd);
    }
    return p;
  }
};

struct Err {
  double rel_l2 = 0, max_abs = 0, ref_max = 0;
  size_t far = 0;  // elements off by more than 1e-5 relative to the reference's scale
};
inline Err compare_vec(const std::vector<float>& a, const std::vector<float>& ref) {
  Err e;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(a[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
    e.max_abs = std::max(e.max_abs, std::abs(d));
    e.ref_max = std::max(e.ref_max, std::abs(static_cast<double>(ref[i])));
    if (!(std::abs(d) <= 1e-5 * (1.0 + std::abs(ref[i])))) ++e.far;
  }
  e.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (!std::isfinite(e.rel_l2)) e.rel_l2 = 1e30;
  return e;
}

// Checks an implementation's output and last states against the reference's for case c; returns the output's
// relative L2 error. f32 cases: relative L2 <= 1e-5; rounded (core v1) cases: a few elements may sit one ulp of the
// rounding dtype apart. last_state buffers not requested must be untouched.
inline double expect_matches_reference(const Case& c, const std::vector<float>& out_fast,
                                       const std::vector<float>& out_ref,
                                       const std::vector<std::vector<float>>& ls_fast,
                                       const std::vector<std::vector<float>>& ls_ref) {
  const Err e = compare_vec(out_fast, out_ref);
  if (c.dir_round == DType::F32) {
    EXPECT_LE(e.rel_l2, 1e-5);
    EXPECT_LE(e.max_abs, 1e-4 * std::max(1.0, e.ref_max));
  } else {
    // A 1-ulp difference before rounding can flip a rounding decision: allow a few elements one ulp of the
    // rounding dtype apart, the rest must agree to fp32 accuracy.
    const double ulp = c.dir_round == DType::BF16 ? 1.0 / 128 : 1.0 / 1024;
    EXPECT_LE(e.max_abs, ulp * static_cast<double>(c.orders.size()) * std::max(1.0, e.ref_max));
    EXPECT_LE(static_cast<double>(e.far), 0.01 * static_cast<double>(out_ref.size()) + 1);
    EXPECT_LE(e.rel_l2, 1e-3);
  }
  for (size_t k = 0; k < ls_ref.size(); ++k) {
    const Err s = compare_vec(ls_fast[k], ls_ref[k]);
    EXPECT_LE(s.rel_l2, 1e-5) << "last_state of direction " << k;
    if (!c.last_state) {
      EXPECT_EQ(s.max_abs, 0.0) << "last_state written though not requested";
    }
  }
  return e.rel_l2;
}

// `count` cases drawn at random (from `seed`) over shapes, batch, groups, direction sets, gate, skip, bias,
// softplus, accumulate, last state, scale, rounding, layout and operand dtype.
inline std::vector<Case> random_cases(int count, uint64_t seed, const std::vector<int64_t>& dims,
                                      const std::vector<int64_t>& Ns, const std::vector<int64_t>& Ls) {
  std::mt19937_64 rng(seed);
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint64_t>(n)); };
  const std::vector<std::vector<Order>> order_sets = {
      {Order::Identity},
      {Order::Reversed},
      {Order::ColMajor},
      {Order::Random},
      {Order::Identity, Order::Reversed},
      {Order::Random, Order::ColMajorReversed},
      {Order::Identity, Order::ColMajor, Order::Reversed, Order::ColMajorReversed},
      {Order::Random, Order::Random, Order::Identity, Order::ColMajor}};
  const DType dtypes[] = {DType::F32, DType::F16, DType::BF16};
  std::vector<Case> cases;
  for (int i = 0; i < count; ++i) {
    Case c;
    c.dim = dims[static_cast<size_t>(pick(static_cast<int>(dims.size())))];
    c.N = Ns[static_cast<size_t>(pick(static_cast<int>(Ns.size())))];
    c.L = Ls[static_cast<size_t>(pick(static_cast<int>(Ls.size())))];
    c.batch = pick(2) ? 3 : 1;
    std::vector<int64_t> gs;
    for (int64_t g : {1, 2, 4})
      if (c.dim % g == 0) gs.push_back(g);
    c.groups = gs[static_cast<size_t>(pick(static_cast<int>(gs.size())))];
    c.orders = order_sets[static_cast<size_t>(pick(static_cast<int>(order_sets.size())))];
    c.z = pick(2), c.D = pick(2), c.bias = pick(2), c.softplus = pick(4) != 0;
    c.accumulate = pick(2), c.last_state = pick(2);
    c.out_scale = pick(2) ? 0.5f : 1.0f;
    c.dir_round = pick(3) ? DType::F32 : (pick(2) ? DType::BF16 : DType::F16);
    c.layout = pick(2) ? Layout::TokenMajor : Layout::ChannelMajor;
    c.dtype = dtypes[pick(3)];
    c.seed = 1000 + static_cast<uint64_t>(i);
    cases.push_back(c);
  }
  return cases;
}

}  // namespace mambacv::scan_cases
