// mambacv/scan_core.h - the two VMamba scan cores (MODELS.md §3.4): the same function, different rounding points in
// reduced precision. Owned by ssm/ (ssm/precision.h maps a core and a compute dtype to the rounding policy).
#pragma once

#include <string>

namespace mambacv {

enum class Core { V0, V1 };
const char* core_name(Core c);          // "v0" | "v1"
Core parse_core(const std::string& s);  // "v0" | "v1" (also "0", "1", "corev0", "corev1")

}  // namespace mambacv
