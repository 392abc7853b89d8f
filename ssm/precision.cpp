#include "ssm/precision.h"

#include "mambacv/error.h"

namespace mambacv {

const char* core_name(Core c) { return c == Core::V0 ? "v0" : "v1"; }

Core parse_core(const std::string& s) {
  if (s == "v0" || s == "0" || s == "corev0") return Core::V0;
  if (s == "v1" || s == "1" || s == "corev1") return Core::V1;
  MAMBACV_FAIL("--core: expected v0 or v1, got '" << s << "'");
}

}  // namespace mambacv
