#include "chorus/compress/codec.h"

namespace chorus::compress {

uint64_t CodecState::nextRandom() {
  uint64_t z = (rngState += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

torch::Tensor& CodecState::residual(const torch::Tensor& grad) {
  torch::Tensor& r = tensors["residual"];
  if (!r.defined() || r.numel() != grad.numel()) r = torch::zeros({grad.numel()}, grad.options());
  return r;
}

}  // namespace chorus::compress
