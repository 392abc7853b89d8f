// kernels/cpu_info.h - what the CPU running this process can do, read once at run time (CPUID + XGETBV), and the
// instruction-set level the kernels dispatch to.
//
// The library is compiled for a baseline (x86-64-v3: AVX2 + FMA by default, see CMakeLists.txt); kernels with a
// faster AVX-512 variant (GEMM, selective scan, depthwise convolution) choose it at run time from cpu_isa().
// MAMBACV_ISA=avx512|avx2|generic in the environment lowers the level (never raises it above what the CPU and the
// build support), so one machine can test every path: "generic" selects the portable code (Eigen GEMM, plain
// loops), "avx2" the AVX2 kernels.
#pragma once

#include <cstdint>
#include <functional>

#include <string>

namespace mambacv::cpu {

enum class Isa { Generic = 0, Avx2 = 1, Avx512 = 2 };
const char* isa_name(Isa i);  // "generic" | "avx2" | "avx512"

struct Features {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512_bf16 = false, avx512_fp16 = false, amx_bf16 = false, amx_tile = false;
  bool os_avx = false, os_avx512 = false;  // the OS saves the ymm / zmm state (XGETBV)
};

const Features& features();      // this CPU, detected once
const std::string& cpu_name();   // CPUID brand string, e.g. "Intel(R) Xeon(R) Platinum 8488C"
Isa cpu_isa();                   // the level the kernels use (CPU, build and MAMBACV_ISA override combined)
Isa detected_isa();              // the highest level the CPU and the build support, before any override
// One line naming the CPU's vector features of interest, e.g. "avx2 fma avx512f avx512bw avx512_bf16".
std::string feature_string();
// The L2 cache of one core in bytes, as the C library reports it (1 MiB where it reports none).
int64_t l2_cache_bytes();

}  // namespace mambacv::cpu

namespace mambacv::cpu {
// The machine's fp32 FMA throughput in GFLOP/s (2 per FMA) on `threads` threads: each runs independent FMA chains
// in registers (24 zmm accumulators with AVX-512, 12 ymm with AVX2, scalar otherwise - the widest cpu_isa()
// allows) for about `seconds`; the best of a few repeats.
double measure_fma_peak_gflops(int threads, double seconds = 0.2);
// The rate (G units/s) of call(thread) run on `threads` threads together for about `seconds`, each call doing
// units_per_call units per thread; best of three repeats. The loop behind the measurements below.
double measure_parallel_rate(int threads, double seconds, double units_per_call,
                             const std::function<float(int thread)>& call);
// The selective scan's exp throughput in G exp evaluations per second on `threads` threads: its own vectorised
// exp2 (and the multiply before it) on the ISA the scan dispatches to, independent chains in registers.
double measure_scan_exp_rate(int threads, double seconds = 0.2);
// Main-memory bandwidth in GB/s (bytes read + written) of a streaming copy of 64 MiB on `threads` threads.
double measure_copy_bandwidth_gbs(int threads);
}  // namespace mambacv::cpu
