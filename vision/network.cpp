#include "vision/network.h"

namespace mambacv::detail {

std::unique_ptr<Network> make_vim_network(const ModelConfig& mc);

std::unique_ptr<Network> make_network(const ModelConfig& mc) {
  if (mc.arch == "vim") return make_vim_network(mc);
  MAMBACV_FAIL("config " << (mc.path.empty() ? mc.name : mc.path) << ": arch \"" << mc.arch
                         << "\" is not supported (supported: vim)");
}

}  // namespace mambacv::detail
