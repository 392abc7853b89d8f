#include "tools/commands.h"

namespace mambacv::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> all = {
      {"verify", cmd_verify},
      {"check-cores", cmd_check_cores},
      {"bench", cmd_bench},
      {"info", cmd_info},
      {"classify", cmd_classify},
      {"features", cmd_features},
      {"detect", cmd_detect},
      {"models", cmd_models},
      {"convert", cmd_convert},
      {"serve", cmd_serve},
  };
  return all;
}

}  // namespace mambacv::cli
