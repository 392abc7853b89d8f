// Device availability as seen by the library: CPU always, CUDA when built with it and a device is present.
#include "mambacv/device.h"

namespace mambacv {
#ifdef MAMBACV_WITH_CUDA
namespace cuda {
int device_count();
}
bool cuda_built() { return true; }
int cuda_device_count() { return cuda::device_count(); }
#else
bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
#endif

void require_device(Device d, const std::string& what) {
  if (d == Device::Cpu) return;
  MAMBACV_CHECK(cuda_built(), what << ": --device cuda: this build of mambacv has no CUDA kernels "
                                   << "(configure with -DMAMBACV_CUDA=ON on a machine with nvcc)");
  MAMBACV_CHECK(cuda_device_count() > 0, what << ": --device cuda: no CUDA device is available on this machine");
}
}  // namespace mambacv
