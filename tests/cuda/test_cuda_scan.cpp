// The CUDA selective scan against the CPU reference (tests/scan_cases.h) on shapes and options that hit every path
// of the kernel: every state-size instantiation (N = 1 .. 64 and the guarded tails between them), several
// directions with orders, groups, gate, skip, bias, softplus on / off, accumulate, last state, core v1 rounding,
// both layouts and all operand dtypes. Every device buffer sits between guard bytes that must be untouched
// afterwards. Needs no OpenCV, so it also runs on a GPU machine holding only the CUDA toolkit
// (tools/gpu_check.sh). Skips, with the reason, where no CUDA device is present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/selective_scan.h"
#include "mambacv/device.h"
#include "scan_cases.h"

using namespace mambacv;
using namespace mambacv::scan_cases;

namespace {

#define CUDA_OK(call)                                                                    \
  do {                                                                                   \
    const cudaError_t e_ = (call);                                                       \
    ASSERT_EQ(e_, cudaSuccess) << #call << ": " << cudaGetErrorString(e_);               \
  } while (0)

constexpr size_t kGuard = 256;               // bytes of guard before and after every device buffer
constexpr unsigned char kGuardByte = 0xA5;

// Device copies of a problem's buffers, each between guard bytes; download() brings the written ones back.
class DeviceBuffers {
 public:
  ~DeviceBuffers() {
    for (auto& b : bufs_) cudaFree(b.base);
  }
  // Copies `bytes` from host to a fresh device buffer and returns the device pointer.
  void* upload(const void* host, size_t bytes) {
    Buffer b;
    b.host = host;
    b.bytes = bytes;
    if (cudaMalloc(&b.base, bytes + 2 * kGuard) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
    cudaMemset(b.base, kGuardByte, bytes + 2 * kGuard);
    cudaMemcpy(static_cast<char*>(b.base) + kGuard, host, bytes, cudaMemcpyHostToDevice);
    bufs_.push_back(b);
    return static_cast<char*>(b.base) + kGuard;
  }
  // Copies the device buffer made from `host` back into it.
  void download(void* host) {
    for (auto& b : bufs_)
      if (b.host == host) {
        cudaMemcpy(host, static_cast<char*>(b.base) + kGuard, b.bytes, cudaMemcpyDeviceToHost);
        return;
      }
  }
  // Number of buffers whose guard bytes were written.
  int damaged_guards() {
    int damaged = 0;
    std::vector<unsigned char> g(kGuard);
    for (auto& b : bufs_) {
      for (size_t off : {size_t{0}, kGuard + b.bytes}) {
        cudaMemcpy(g.data(), static_cast<char*>(b.base) + off, kGuard, cudaMemcpyDeviceToHost);
        for (unsigned char x : g)
          if (x != kGuardByte) {
            ++damaged;
            break;
          }
      }
    }
    return damaged;
  }

 private:
  struct Buffer {
    const void* host = nullptr;
    void* base = nullptr;
    size_t bytes = 0;
  };
  std::vector<Buffer> bufs_;
};

bool have_device() { return cuda_device_count() > 0; }
#define MAMBACV_REQUIRE_CUDA_DEVICE() \
  if (!have_device()) GTEST_SKIP() << "no CUDA device on this machine (the CUDA kernels are compiled, not run)"

double g_worst = 0;

void check_cuda_case(const Case& c) {
  SCOPED_TRACE(c.str());
  Problem pr(c);
  std::vector<float> out_ref, out_dev;
  std::vector<std::vector<float>> ls_ref, ls_dev;
  ScanParams pref = pr.params(out_ref, ls_ref);
  selective_scan_ref(pref);
  DeviceBuffers dev;
  ScanParams pdev = pr.params(out_dev, ls_dev, [&dev](const void* h, size_t n) { return dev.upload(h, n); });
  ExecContext ctx = ExecContext::cpu(1);
  ctx.device = Device::Cuda;
  selective_scan(ctx, pdev);
  CUDA_OK(cudaDeviceSynchronize());
  dev.download(out_dev.data());
  for (auto& l : ls_dev) dev.download(l.data());
  EXPECT_EQ(dev.damaged_guards(), 0) << "a device buffer was written outside its bounds";
  const double rel = expect_matches_reference(c, out_dev, out_ref, ls_dev, ls_ref);
  if (c.dir_round == DType::F32) g_worst = std::max(g_worst, rel);
}

}  // namespace

// Every state-size instantiation and the tails between them, with every option on.
TEST(CudaScan, MatchesReferenceEveryStateSize) {
  MAMBACV_REQUIRE_CUDA_DEVICE();
  uint64_t seed = 1;
  for (int64_t N : {1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 63, 64})
    for (int64_t L : {1, 37, 200}) {
      Case c;
      c.batch = 2, c.dim = 40, c.N = N, c.L = L, c.groups = 2, c.z = true, c.last_state = true;
      c.orders = {Order::Identity, Order::Reversed};
      c.seed = ++seed;
      check_cuda_case(c);
    }
  std::printf("worst relative L2 cuda vs reference: %.3g\n", g_worst);
}

// The same random sweep over options as the CPU fast path's test.
TEST(CudaScan, MatchesReferenceRandomOptions) {
  MAMBACV_REQUIRE_CUDA_DEVICE();
  for (const Case& c : random_cases(300, 2024, {1, 15, 16, 17, 33, 48, 130}, {1, 4, 16, 64}, {1, 63, 64, 65, 200}))
    check_cuda_case(c);
  std::printf("worst relative L2 cuda vs reference: %.3g\n", g_worst);
}

// The models' shapes: Vim-T (2 directions, flipped), VMamba v2 (4 cross-scan directions, d_state 1), Vanilla
// VMamba (d_state 16), core v1 rounding.
TEST(CudaScan, MatchesReferenceModelShapes) {
  MAMBACV_REQUIRE_CUDA_DEVICE();
  Case vim;
  vim.dim = 384, vim.L = 197, vim.N = 16, vim.z = true, vim.orders = {Order::Identity, Order::Reversed};
  check_cuda_case(vim);
  Case v2;
  v2.batch = 2, v2.dim = 192, v2.L = 3136, v2.N = 1, v2.D = true;
  v2.orders = {Order::Identity, Order::ColMajor, Order::Reversed, Order::ColMajorReversed};
  check_cuda_case(v2);
  Case v0 = v2;
  v0.N = 16, v0.L = 196, v0.dim = 384;
  check_cuda_case(v0);
  for (DType r : {DType::F16, DType::BF16}) {
    Case v1 = v2;
    v1.dir_round = r, v1.dtype = r;
    check_cuda_case(v1);
  }
}

// Refusals happen on the host, before a launch.
TEST(CudaScan, RefusesWhatTheKernelDoesNotTake) {
  Case c;
  c.N = 65;
  Problem pr(c);
  std::vector<float> out;
  std::vector<std::vector<float>> ls;
  ScanParams p = pr.params(out, ls);
  ExecContext ctx = ExecContext::cpu(1);
  ctx.device = Device::Cuda;
  try {
    selective_scan_cuda(ctx, p);
    FAIL() << "d_state 65 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("d_state 65"), std::string::npos) << e.what();
  }
  c.N = 4;
  c.orders.assign(9, Order::Identity);
  Problem pr9(c);
  p = pr9.params(out, ls);
  try {
    selective_scan_cuda(ctx, p);
    FAIL() << "9 directions were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("9 directions"), std::string::npos) << e.what();
  }
}
