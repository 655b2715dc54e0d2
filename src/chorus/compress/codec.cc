#include "chorus/compress/codec.h"

namespace chorus::compress {

uint64_t CodecState::nextRandom() {
  uint64_t z = (rngState += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<float>& CodecState::buffer(const std::string& name, size_t numel) {
  std::vector<float>& b = buffers[name];
  if (b.size() != numel) b.assign(numel, 0.0f);
  return b;
}

}  // namespace chorus::compress
