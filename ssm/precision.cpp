#include "ssm/precision.h"

namespace mambacv::detail {

Policy make_policy(const Options& opt) {
  require_device(opt.device, "model");
  MAMBACV_CHECK(opt.device == Device::Cpu,
                "--device cuda: the CUDA model path is not implemented yet in this version; use --device cpu");
  MAMBACV_CHECK(opt.dtype == DType::F32 || opt.dtype == DType::F16 || opt.dtype == DType::BF16,
                "--dtype: expected f32, f16 or bf16, got " << dtype_name(opt.dtype));
  MAMBACV_CHECK(opt.dtype == DType::F32, "--dtype " << dtype_name(opt.dtype)
                                                    << ": reduced-precision compute is not implemented yet in this "
                                                       "version; use --dtype f32");
  Policy p;
  p.compute = opt.dtype;
  p.core = opt.core;
  return p;
}

}  // namespace mambacv::detail
