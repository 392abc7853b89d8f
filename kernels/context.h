// kernels/context.h - the execution context every op and network call receives.
//
// It carries what a call may use and nothing is process-wide: the thread budget of this call (every parallel
// region goes through parallel_for below and uses at most ctx.threads workers, so calls with different budgets
// can run side by side), the host allocator its temporaries come from (its own cache and idle bound), an optional
// trace sink that ops report to (op name, seconds, FLOPs, bytes; used by `bench --per-op` and the FLOP count), and
// the device slot a CUDA backend fills in (device, index, stream; CPU today).
#pragma once

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/host_allocator.h"
#include "mambacv/tensor.h"

namespace mambacv {

// Receives one record per op call. Implementations must be safe to call from the thread that runs the network
// (ops record from the calling thread, never from their workers).
class TraceSink {
 public:
  virtual ~TraceSink() = default;
  // wants_time(): whether ops should measure their wall time (costs a clock read per op).
  virtual bool wants_time() const { return false; }
  // exps: the op's exp evaluations (the selective scan's bound on CPUs; 0 for most ops)
  virtual void record(const char* op, double seconds, double flops, double bytes, double exps) = 0;
  // The network names the part it is in ("patch_embed", "stage.0", "head", ...); records are attributed to it.
  void set_stage(const std::string& s) { stage_ = s; }
  const std::string& stage() const { return stage_; }
  // parallel_for reports the team size it ran with; record() implementations may take the largest since the
  // previous record (the team size of the op being recorded) with take_team().
  void note_team(int n) { team_ = std::max(team_, n); }
  int take_team() {
    const int t = team_;
    team_ = 1;
    return t;
  }

 private:
  std::string stage_;
  int team_ = 1;
};

struct ExecContext {
  int threads = 1;                          // this call's thread budget (>= 1)
  std::shared_ptr<HostAllocator> alloc;     // null: the process default allocator
  TraceSink* trace = nullptr;               // null: no tracing
  Device device = Device::Cpu;              // where the call's tensors live
  int device_index = 0;
  void* stream = nullptr;                   // backend stream (cudaStream_t) when device is Cuda

  // A context for the calling thread: `threads` <= 0 means every core OpenMP offers.
  static ExecContext cpu(int threads = 0);

  HostAllocator& allocator() const { return alloc ? *alloc : *default_host_allocator(); }
  // Uninitialised / zeroed temporaries from this call's allocator.
  Tensor empty(const Shape& shape, DType dtype = DType::F32) const;
  Tensor zeros(const Shape& shape, DType dtype = DType::F32) const;
  void stage(const std::string& s) const {
    if (trace) trace->set_stage(s);
  }
};

// Records one op call on ctx.trace (if any): FLOPs, bytes and exp evaluations always, the wall time between
// construction and destruction when the sink wants it.
class OpTrace {
 public:
  OpTrace(const ExecContext& ctx, const char* op, double flops, double bytes, double exps = 0)
      : sink_(ctx.trace), op_(op), flops_(flops), bytes_(bytes), exps_(exps) {
    if (sink_ && sink_->wants_time()) t0_ = std::chrono::steady_clock::now();
  }
  ~OpTrace() {
    if (!sink_) return;
    double s = 0;
    if (sink_->wants_time()) s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    sink_->record(op_, s, flops_, bytes_, exps_);
  }
  OpTrace(const OpTrace&) = delete;
  OpTrace& operator=(const OpTrace&) = delete;

 private:
  TraceSink* sink_;
  const char* op_;
  double flops_, bytes_, exps_;
  std::chrono::steady_clock::time_point t0_{};
};

// Below this many scalar operations a parallel region costs more (team wake-up) than it saves.
constexpr double kParallelMinWork = 1 << 15;

// Runs fn(begin, end) over [0, n) split into contiguous ranges, one per worker, on at most ctx.threads threads
// (one thread when `work`, the region's rough operation count, is below kParallelMinWork). fn must not throw.
// With `tid`: fn(begin, end, thread index) for per-thread scratch (index < parallel_workers(ctx, n, work)).
inline int parallel_workers(const ExecContext& ctx, int64_t n, double work) {
  if (n < 2 || work < kParallelMinWork) return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ctx.threads, n)));
}

template <class F>
void parallel_for_tid(const ExecContext& ctx, int64_t n, double work, F&& fn) {
  const int nt = parallel_workers(ctx, n, work);
  if (ctx.trace) ctx.trace->note_team(nt);
  if (nt <= 1) {
    if (n > 0) fn(int64_t{0}, n, 0);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), m = omp_get_num_threads();
    const int64_t b = n * t / m, e = n * (t + 1) / m;
    if (b < e) fn(b, e, t);
  }
}

template <class F>
void parallel_for(const ExecContext& ctx, int64_t n, double work, F&& fn) {
  parallel_for_tid(ctx, n, work, [&fn](int64_t b, int64_t e, int) { fn(b, e); });
}

}  // namespace mambacv
