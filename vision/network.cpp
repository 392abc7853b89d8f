#include "vision/network.h"

namespace mambacv::detail {

std::unique_ptr<Network> make_vim_network(const ModelConfig& mc);
std::unique_ptr<Network> make_vmamba_network(const ModelConfig& mc);
std::unique_ptr<Network> make_vmamba_backbone_network(const ModelConfig& mc);
std::unique_ptr<Network> make_mask_rcnn_network(const ModelConfig& mc);

std::unique_ptr<Network> make_network(const ModelConfig& mc) {
  if (mc.arch == "vim") return make_vim_network(mc);
  if (mc.arch == "vmamba") return make_vmamba_network(mc);
  if (mc.arch == "vmamba_backbone") return make_vmamba_backbone_network(mc);
  if (mc.arch == "mask_rcnn") return make_mask_rcnn_network(mc);
  MAMBACV_FAIL("config " << (mc.path.empty() ? mc.name : mc.path) << ": arch \"" << mc.arch
                         << "\" is not supported (supported: vim, vmamba, vmamba_backbone, mask_rcnn)");
}

}  // namespace mambacv::detail
