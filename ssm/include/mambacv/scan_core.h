// mambacv/scan_core.h - the two VMamba scan cores, v0 and v1: the same function, different rounding
// points in reduced precision. The library maps a core and a compute dtype to its rounding policy.
#pragma once

#include <string>

namespace mambacv {

enum class Core { V0, V1 };
const char* core_name(Core c);          // "v0" | "v1"
Core parse_core(const std::string& s);  // "v0" | "v1" (also "0", "1", "corev0", "corev1")

}  // namespace mambacv
