#include "tools/commands.h"

namespace mambacv::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> all = {
      {"verify", cmd_verify},
  };
  return all;
}

}  // namespace mambacv::cli
