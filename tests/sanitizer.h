// tests/sanitizer.h - whether this program is built under ASan or TSan (tools/sanitize.sh). Their allocators hold
// freed memory in quarantine and their shadow memory grows with use, and they run code several times slower: the
// resident-memory checks are reported but not enforced there, and the slowest exhaustive loops take fewer points.
#pragma once

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MAMBACV_UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MAMBACV_UNDER_SANITIZER 1
#endif
#endif

namespace mambacv::test {
#ifdef MAMBACV_UNDER_SANITIZER
constexpr bool kUnderSanitizer = true;
#else
constexpr bool kUnderSanitizer = false;
#endif
}  // namespace mambacv::test
