// kernels/cpu/cpu_info.cpp - CPUID / XGETBV feature detection and the MAMBACV_ISA override.
#include "kernels/cpu_info.h"

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define MAMBACV_X86 1
#endif

namespace mambacv::cpu {

const char* isa_name(Isa i) {
  switch (i) {
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx2:
      return "avx2";
    default:
      return "generic";
  }
}

namespace {
#ifdef MAMBACV_X86
bool cpuid(unsigned leaf, unsigned sub, unsigned r[4]) { return __get_cpuid_count(leaf, sub, &r[0], &r[1], &r[2], &r[3]); }
uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

Features detect() {
  Features f;
#ifdef MAMBACV_X86
  unsigned r[4] = {};
  if (!cpuid(1, 0, r)) return f;
  const bool osxsave = (r[2] >> 27) & 1;
  f.fma = (r[2] >> 12) & 1;
  f.f16c = (r[2] >> 29) & 1;
  if (osxsave) {
    const uint64_t xcr0 = xgetbv0();
    f.os_avx = (xcr0 & 0x6) == 0x6;             // xmm + ymm
    f.os_avx512 = f.os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask + zmm0-15 upper + zmm16-31
  }
  if (cpuid(7, 0, r)) {
    f.avx2 = (r[1] >> 5) & 1;
    f.avx512f = (r[1] >> 16) & 1;
    f.avx512dq = (r[1] >> 17) & 1;
    f.avx512bw = (r[1] >> 30) & 1;
    f.avx512vl = (r[1] >> 31) & 1;
    f.avx512_fp16 = (r[3] >> 23) & 1;
    f.amx_bf16 = (r[3] >> 22) & 1;
    f.amx_tile = (r[3] >> 24) & 1;
    unsigned s[4] = {};
    if (cpuid(7, 1, s)) f.avx512_bf16 = (s[0] >> 5) & 1;
  }
  if (!f.os_avx) f.avx2 = f.fma = f.f16c = false;
  if (!f.os_avx512) f.avx512f = f.avx512bw = f.avx512dq = f.avx512vl = f.avx512_bf16 = f.avx512_fp16 = false;
#endif
  return f;
}

std::string brand() {
#ifdef MAMBACV_X86
  unsigned r[4] = {};
  if (cpuid(0x80000000u, 0, r) && r[0] >= 0x80000004u) {
    char s[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      cpuid(0x80000002u + i, 0, r);
      std::memcpy(s + 16 * i, r, 16);
    }
    std::string b(s);
    const size_t a = b.find_first_not_of(' '), e = b.find_last_not_of(' ');
    return a == std::string::npos ? "unknown x86-64 CPU" : b.substr(a, e - a + 1);
  }
  return "unknown x86-64 CPU";
#else
  return "unknown CPU";
#endif
}

Isa detect_isa() {
  const Features& f = features();
#if defined(MAMBACV_X86) && defined(__GNUC__)
  if (f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx2 && f.fma && f.f16c) return Isa::Avx512;
  if (f.avx2 && f.fma && f.f16c) return Isa::Avx2;
#else
  (void)f;
#endif
  return Isa::Generic;
}

Isa choose_isa() {
  Isa i = detect_isa();
  if (const char* e = std::getenv("MAMBACV_ISA")) {
    std::string v(e);
    for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    Isa want = i;
    if (v == "generic") {
      want = Isa::Generic;
    } else if (v == "avx2") {
      want = Isa::Avx2;
    } else if (v == "avx512") {
      want = Isa::Avx512;
    } else if (!v.empty()) {
      // an environment setting has no caller to throw to: say once that it is ignored
      std::fprintf(stderr, "mambacv: MAMBACV_ISA=%s is not one of avx512, avx2, generic; ignored (using %s)\n", e,
                   isa_name(i));
    }
    if (static_cast<int>(want) < static_cast<int>(i)) i = want;
  }
  return i;
}
}  // namespace

const Features& features() {
  static const Features f = detect();
  return f;
}

const std::string& cpu_name() {
  static const std::string n = brand();
  return n;
}

Isa detected_isa() {
  static const Isa i = detect_isa();
  return i;
}

Isa cpu_isa() {
  static const Isa i = choose_isa();
  return i;
}

int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
    const long n = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return n > 0 ? static_cast<int64_t>(n) : int64_t{1} << 20;
  }();
  return bytes;
}

std::string feature_string() {
  const Features& f = features();
  std::string s;
  auto add = [&](bool on, const char* n) {
    if (on) s += (s.empty() ? "" : " ") + std::string(n);
  };
  add(f.avx2, "avx2");
  add(f.fma, "fma");
  add(f.f16c, "f16c");
  add(f.avx512f, "avx512f");
  add(f.avx512bw, "avx512bw");
  add(f.avx512dq, "avx512dq");
  add(f.avx512vl, "avx512vl");
  add(f.avx512_bf16, "avx512_bf16");
  add(f.avx512_fp16, "avx512_fp16");
  add(f.amx_tile, "amx_tile");
  add(f.amx_bf16, "amx_bf16");
  return s.empty() ? "none" : s;
}

}  // namespace mambacv::cpu
