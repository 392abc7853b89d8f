// CUDA runtime helpers: device discovery. Built only when MAMBACV_CUDA is on.
#include <cuda_runtime.h>

namespace mambacv::cuda {

// Number of usable CUDA devices (0 when the driver or a device is missing).
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error
    return 0;
  }
  return n;
}

}  // namespace mambacv::cuda
