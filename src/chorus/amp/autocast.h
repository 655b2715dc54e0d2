// Mixed precision: an autocast scope and a dynamic loss scaler.
//
// Precision "bf16": inside Autocast, LibTorch runs matmuls and convolutions in bfloat16 on
// the CPU (fp16 on CUDA devices) while the parameters, the optimizer and its state stay
// float32 (the master weights). "fp16" on the CPU: LibTorch 1.13's CPU autocast has no
// float16 kernels, so compute stays float32 there; the loss scaler and the 16-bit gradient
// hook still apply. On CUDA, fp16 autocast is used.
#pragma once

#include <string>

#include <torch/torch.h>

namespace chorus::amp {

enum class Precision { kFp32, kBf16, kFp16 };
Precision parsePrecision(const std::string& s);  // "fp32" | "bf16" | "fp16"; InvalidArgument otherwise
const char* precisionName(Precision p);

// Enables autocast for `device` for its lifetime (nothing for fp32, or fp16 on the CPU).
class Autocast {
 public:
  Autocast(Precision p, torch::Device device);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;
  bool active() const { return cpu_ || cuda_; }

 private:
  bool cpu_ = false, cuda_ = false;
  bool prevCpu_ = false, prevCuda_ = false;
  at::ScalarType prevCpuType_ = at::kBFloat16, prevCudaType_ = at::kHalf;
};

}  // namespace chorus::amp
