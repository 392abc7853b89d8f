#include "vision/network.h"

#include <algorithm>

#include "kernels/cpu_info.h"

namespace mambacv::detail {

std::unique_ptr<Network> make_vim_network(const ModelConfig& mc);
std::unique_ptr<Network> make_vmamba_network(const ModelConfig& mc);
std::unique_ptr<Network> make_vmamba_backbone_network(const ModelConfig& mc);
std::unique_ptr<Network> make_mask_rcnn_network(const ModelConfig& mc);

namespace {
// Parameters a config may declare: 2^32 (17 GB in f32) is 40x the largest released model (VMamba-B, 89M).
constexpr double kMaxParameters = 4294967296.0;

std::unique_ptr<Network> checked(std::unique_ptr<Network> net, const ModelConfig& mc) {
  double n = 0;
  for (const ParamSpec& p : net->param_specs()) {
    double e = 1;
    for (int64_t d : p.shape) e *= static_cast<double>(d);  // in double: no overflow before the check
    n += e;
  }
  MAMBACV_CHECK(n <= kMaxParameters, "config " << (mc.path.empty() ? mc.name : mc.path) << ": declares " << n
                                               << " parameters, more than the limit of " << kMaxParameters
                                               << " (the released models have at most 89M)");
  return net;
}
}  // namespace

int64_t images_per_group(int64_t requested, int64_t batch, int64_t bytes_per_image) {
  const int64_t budget = cpu::l2_cache_bytes() * 3 / 4;
  const int64_t g = requested > 0 ? requested : budget / std::max<int64_t>(1, bytes_per_image);
  return std::clamp<int64_t>(g, 1, std::max<int64_t>(1, batch));
}

std::unique_ptr<Network> make_network(const ModelConfig& mc) {
  if (mc.arch == "vim") return checked(make_vim_network(mc), mc);
  if (mc.arch == "vmamba") return checked(make_vmamba_network(mc), mc);
  if (mc.arch == "vmamba_backbone") return checked(make_vmamba_backbone_network(mc), mc);
  if (mc.arch == "mask_rcnn") return checked(make_mask_rcnn_network(mc), mc);
  MAMBACV_FAIL("config " << (mc.path.empty() ? mc.name : mc.path) << ": arch \"" << mc.arch
                         << "\" is not supported (supported: vim, vmamba, vmamba_backbone, mask_rcnn)");
}

}  // namespace mambacv::detail
