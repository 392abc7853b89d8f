// mambacv/device.h - which devices this build and this machine offer.
#pragma once

#include <string>

#include "mambacv/tensor.h"

namespace mambacv {
bool cuda_built();          // compiled with the CUDA kernels
int cuda_device_count();    // usable CUDA devices now (0 without a driver)
// Throws Error (prefixed with `what`) when device d cannot be used by this build on this machine.
void require_device(Device d, const std::string& what);
}  // namespace mambacv
