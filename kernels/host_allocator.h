// kernels/host_allocator.h - 64-byte aligned host memory for tensors, with a cache of large freed blocks.
//
// A forward pass allocates the same large temporaries on every call; handing them back to the OS and faulting
// fresh zeroed pages in again cost ~10-25% of a CPU forward. Blocks of at least kMinCachedBytes are therefore kept
// idle by size class (classes 1/8 of a power of two apart, so at most 12.5% is wasted) and reused, up to a bound on
// the bytes held idle. A short-lived request (a call's temporaries, ExecContext::empty) takes the smallest idle block
// of its class or larger, up to kMaxReuseFactor times its class: a later stage's smaller temporaries reuse an earlier
// stage's blocks instead of adding resident memory (a cache keyed by exact size holds one block per distinct size
// ever seen). Other requests (weights, results) take only their own class, so they never pin a larger block. Each HostAllocator has its own cache and bound (set_idle_limit); the process default
// one (default_host_allocator(), used by Tensor::empty) starts at MAMBACV_HOST_CACHE_MB (default 1024; 0 disables).
// Thread-safe. A block keeps its allocator alive, so tensors may outlive the model that made them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <map>

namespace mambacv {

class HostAllocator : public std::enable_shared_from_this<HostAllocator> {
 public:
  static constexpr size_t kMinCachedBytes = 256 * 1024;
  static constexpr size_t kMaxReuseFactor = 4;
  explicit HostAllocator(size_t idle_limit_bytes);
  ~HostAllocator();
  HostAllocator(const HostAllocator&) = delete;
  HostAllocator& operator=(const HostAllocator&) = delete;

  // An owning pointer to at least n bytes, 64-byte aligned; the block returns to this cache when the last owner
  // drops it (or is freed when the cache is full). short_lived: may reuse a larger idle block (see above).
  std::shared_ptr<void> alloc(size_t n, bool short_lived = false);
  // Bound on idle cached bytes; lowering it frees idle blocks down to the new bound at once.
  void set_idle_limit(size_t bytes);
  size_t idle_limit() const;
  size_t idle_bytes() const;
  void release();  // frees every idle block

 private:
  void* take(size_t cls, size_t max_cls, size_t* block_cls);
  bool give(void* p, size_t cls);
  void trim_locked(size_t limit);
  mutable std::mutex m_;
  std::multimap<size_t, void*> free_;  // size class -> idle block
  size_t idle_ = 0;
  size_t limit_ = 0;
};

// The process-wide default allocator (never destroyed).
const std::shared_ptr<HostAllocator>& default_host_allocator();

// Failure injection for tests: after arm_allocation_failure(k), the k-th following allocation of any HostAllocator
// (k >= 1) throws Error("injected allocation failure") as a real out-of-memory would; k <= 0 disarms.
// allocations_made() counts every allocation since the process started.
void arm_allocation_failure(int64_t k);
int64_t allocations_made();

// Shorthands on the default allocator.
std::shared_ptr<void> host_alloc(size_t n);
void host_cache_release();
size_t host_cache_idle_bytes();

}  // namespace mambacv
