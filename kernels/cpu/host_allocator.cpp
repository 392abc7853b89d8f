#include "kernels/host_allocator.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iterator>

#include "mambacv/error.h"

namespace mambacv {

namespace {
std::atomic<int64_t> g_allocations{0};
std::atomic<int64_t> g_fail_at{0};  // allocation number that fails; 0: none

// Rounds n up to its size class: a multiple of 2^(e-3) where 2^e <= n < 2^(e+1).
size_t size_class(size_t n) {
  if (n < HostAllocator::kMinCachedBytes) return ((n + 63) / 64) * 64;
  int e = 63 - __builtin_clzll(static_cast<unsigned long long>(n));
  size_t step = size_t{1} << (e - 3);
  return (n + step - 1) / step * step;
}
}  // namespace

HostAllocator::HostAllocator(size_t idle_limit_bytes) : limit_(idle_limit_bytes) {}
HostAllocator::~HostAllocator() { release(); }

// The smallest idle block of class in [cls, max_cls]; its class goes to *block_cls.
void* HostAllocator::take(size_t cls, size_t max_cls, size_t* block_cls) {
  std::lock_guard<std::mutex> lock(m_);
  auto it = free_.lower_bound(cls);
  if (it == free_.end() || it->first > max_cls) return nullptr;
  void* p = it->second;
  *block_cls = it->first;
  idle_ -= it->first;
  free_.erase(it);
  return p;
}

bool HostAllocator::give(void* p, size_t cls) {
  std::lock_guard<std::mutex> lock(m_);
  if (idle_ + cls > limit_) return false;
  free_.emplace(cls, p);
  idle_ += cls;
  return true;
}

// Frees the largest idle blocks first until at most `limit` bytes are idle.
void HostAllocator::trim_locked(size_t limit) {
  while (idle_ > limit && !free_.empty()) {
    auto last = std::prev(free_.end());
    std::free(last->second);
    idle_ -= last->first;
    free_.erase(last);
  }
}

void HostAllocator::set_idle_limit(size_t bytes) {
  std::lock_guard<std::mutex> lock(m_);
  limit_ = bytes;
  trim_locked(bytes);
}
size_t HostAllocator::idle_limit() const {
  std::lock_guard<std::mutex> lock(m_);
  return limit_;
}
size_t HostAllocator::idle_bytes() const {
  std::lock_guard<std::mutex> lock(m_);
  return idle_;
}
void HostAllocator::release() {
  std::lock_guard<std::mutex> lock(m_);
  trim_locked(0);
}

std::shared_ptr<void> HostAllocator::alloc(size_t n, bool short_lived) {
  // blocks hold their allocator: it must be owned by a shared_ptr (std::make_shared<HostAllocator>(...))
  std::shared_ptr<HostAllocator> self = weak_from_this().lock();
  MAMBACV_CHECK(self != nullptr, "HostAllocator::alloc: the allocator must be owned by a std::shared_ptr");
  MAMBACV_CHECK(n <= (size_t{1} << 60), "out of memory: " << n << " bytes requested");
  const int64_t number = ++g_allocations;
  const int64_t fail_at = g_fail_at.load();
  if (fail_at > 0 && number == fail_at) {
    g_fail_at = 0;
    MAMBACV_FAIL("out of memory allocating " << n << " bytes (injected allocation failure)");
  }
  size_t cls = size_class(n == 0 ? 64 : n);
  void* p = cls >= kMinCachedBytes ? take(cls, short_lived ? kMaxReuseFactor * cls : cls, &cls) : nullptr;
  if (!p) p = std::aligned_alloc(64, cls);
  MAMBACV_CHECK(p != nullptr, "out of memory allocating " << n << " bytes");
  if (cls < kMinCachedBytes) return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  return std::shared_ptr<void>(p, [self, cls](void* q) {
    if (!self->give(q, cls)) std::free(q);
  });
}

const std::shared_ptr<HostAllocator>& default_host_allocator() {
  static const std::shared_ptr<HostAllocator>* a = [] {
    long mb = 1024;
    if (const char* e = std::getenv("MAMBACV_HOST_CACHE_MB")) mb = std::strtol(e, nullptr, 10);
    mb = std::min(mb, 1L << 20);  // at most 1 TiB idle: larger values are typos and would overflow
    return new std::shared_ptr<HostAllocator>(
        std::make_shared<HostAllocator>(mb > 0 ? static_cast<size_t>(mb) << 20 : 0));
  }();
  return *a;
}

void arm_allocation_failure(int64_t k) { g_fail_at = k > 0 ? g_allocations.load() + k : 0; }
int64_t allocations_made() { return g_allocations.load(); }

std::shared_ptr<void> host_alloc(size_t n) { return default_host_allocator()->alloc(n); }
void host_cache_release() { default_host_allocator()->release(); }
size_t host_cache_idle_bytes() { return default_host_allocator()->idle_bytes(); }

}  // namespace mambacv
