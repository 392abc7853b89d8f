#include <cstdio>

#include "tools/commands.h"

namespace mambacv::cli {
int cmd_verify(const std::vector<std::string>& args) {
  std::fprintf(stderr, "mambacv verify: not built yet\n");
  return 1;
}
}  // namespace mambacv::cli
