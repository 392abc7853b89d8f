// kernels/host_allocator.h - 64-byte aligned host memory for tensors, with a cache of large freed blocks.
//
// A forward pass allocates the same large temporaries on every call; handing them back to the OS and faulting
// fresh zeroed pages in again cost ~10-25% of a CPU forward. Blocks of at least kMinCachedBytes are therefore kept
// on free lists by size class (classes 1/8 of a power of two apart, so at most 12.5% is wasted) and reused, up to a
// cap on the bytes held idle (MAMBACV_HOST_CACHE_MB, default 1024; 0 disables the cache). Thread-safe.
#pragma once

#include <cstddef>
#include <memory>

namespace mambacv {

// An owning pointer to at least n bytes, 64-byte aligned; the block returns to the cache when the last owner drops.
std::shared_ptr<void> host_alloc(size_t n);
// Frees every idle cached block (e.g. after a large one-off job).
void host_cache_release();
// Bytes currently held idle by the cache.
size_t host_cache_idle_bytes();

}  // namespace mambacv
