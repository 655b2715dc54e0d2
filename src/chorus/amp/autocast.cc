#include "chorus/amp/autocast.h"

#include <ATen/autocast_mode.h>

#include "chorus/common/error.h"

namespace chorus::amp {

Precision parsePrecision(const std::string& s) {
  if (s == "fp32") return Precision::kFp32;
  if (s == "bf16") return Precision::kBf16;
  if (s == "fp16") return Precision::kFp16;
  throw InvalidArgument(str("unknown precision '", s, "'; the choices are: fp32, bf16, fp16"));
}

const char* precisionName(Precision p) {
  switch (p) {
    case Precision::kFp32: return "fp32";
    case Precision::kBf16: return "bf16";
    case Precision::kFp16: return "fp16";
  }
  return "?";
}

Autocast::Autocast(Precision p, torch::Device device) {
  if (p == Precision::kFp32) return;
  if (device.is_cuda()) {
    cuda_ = true;
    prevCuda_ = at::autocast::is_enabled();
    prevCudaType_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_enabled(true);
    at::autocast::set_autocast_gpu_dtype(p == Precision::kBf16 ? at::kBFloat16 : at::kHalf);
  } else if (p == Precision::kBf16) {
    cpu_ = true;
    prevCpu_ = at::autocast::is_cpu_enabled();
    prevCpuType_ = at::autocast::get_autocast_cpu_dtype();
    at::autocast::set_cpu_enabled(true);
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
  }
  if (active()) at::autocast::increment_nesting();
}

Autocast::~Autocast() {
  if (!active()) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  if (cpu_) {
    at::autocast::set_cpu_enabled(prevCpu_);
    at::autocast::set_autocast_cpu_dtype(prevCpuType_);
  }
  if (cuda_) {
    at::autocast::set_enabled(prevCuda_);
    at::autocast::set_autocast_gpu_dtype(prevCudaType_);
  }
}

}  // namespace chorus::amp
