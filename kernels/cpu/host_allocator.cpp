#include "kernels/host_allocator.h"

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "mambacv/error.h"

namespace mambacv {

namespace {
constexpr size_t kMinCachedBytes = 256 * 1024;

// Rounds n up to its size class: a multiple of 2^(e-3) where 2^e <= n < 2^(e+1).
size_t size_class(size_t n) {
  if (n < kMinCachedBytes) return ((n + 63) / 64) * 64;
  int e = 63 - __builtin_clzll(static_cast<unsigned long long>(n));
  size_t step = size_t{1} << (e - 3);
  return (n + step - 1) / step * step;
}

class BlockCache {
 public:
  BlockCache() {
    long mb = 1024;
    if (const char* e = std::getenv("MAMBACV_HOST_CACHE_MB")) mb = std::strtol(e, nullptr, 10);
    limit_ = mb > 0 ? static_cast<size_t>(mb) << 20 : 0;
  }
  void* take(size_t cls) {
    std::lock_guard<std::mutex> lock(m_);
    auto it = free_.find(cls);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    idle_ -= cls;
    return p;
  }
  // Keeps the block if the cap allows; returns false when the caller must free it.
  bool give(void* p, size_t cls) {
    std::lock_guard<std::mutex> lock(m_);
    if (idle_ + cls > limit_) return false;
    free_[cls].push_back(p);
    idle_ += cls;
    return true;
  }
  void release() {
    std::lock_guard<std::mutex> lock(m_);
    for (auto& [cls, v] : free_)
      for (void* p : v) std::free(p);
    free_.clear();
    idle_ = 0;
  }
  size_t idle() {
    std::lock_guard<std::mutex> lock(m_);
    return idle_;
  }

 private:
  std::mutex m_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t idle_ = 0;
  size_t limit_ = 0;
};

// Never destroyed: tensors may outlive static destruction order (e.g. globals in user code).
BlockCache& cache() {
  static BlockCache* c = new BlockCache();
  return *c;
}
}  // namespace

std::shared_ptr<void> host_alloc(size_t n) {
  const size_t cls = size_class(n == 0 ? 64 : n);
  if (cls >= kMinCachedBytes) {
    if (void* p = cache().take(cls)) return std::shared_ptr<void>(p, [cls](void* q) {
        if (!cache().give(q, cls)) std::free(q);
      });
  }
  void* p = std::aligned_alloc(64, cls);
  MAMBACV_CHECK(p != nullptr, "out of memory allocating " << n << " bytes");
  if (cls < kMinCachedBytes) return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  return std::shared_ptr<void>(p, [cls](void* q) {
    if (!cache().give(q, cls)) std::free(q);
  });
}

void host_cache_release() { cache().release(); }
size_t host_cache_idle_bytes() { return cache().idle(); }

}  // namespace mambacv
