// The dp offset is a large odd multiple so that (seed, dp) pairs do not collide with the
// parallel seeds seed + 2718 + tp for any realistic tp size.
#include "chorus/parallel/tensor/rng.h"

#include <ATen/CPUGeneratorImpl.h>

#include "chorus/common/error.h"

namespace chorus::parallel {

namespace {
constexpr uint64_t kParallelOffset = 2718;
constexpr uint64_t kDataParallelStride = 1000003;
}  // namespace

TensorParallelRng::TensorParallelRng(uint64_t seed, int tpRank, int dpRank)
    : replicatedSeed_(seed + kDataParallelStride * static_cast<uint64_t>(dpRank < 0 ? 0 : dpRank)),
      parallelSeed_(replicatedSeed_ + kParallelOffset + static_cast<uint64_t>(tpRank)),
      replicated_(at::detail::createCPUGenerator(replicatedSeed_)),
      parallel_(at::detail::createCPUGenerator(parallelSeed_)) {
  if (tpRank < 0) throw InvalidArgument(chorus::str("TensorParallelRng: tpRank must be >= 0, got ", tpRank));
}

void TensorParallelRng::reset() {
  replicated_.set_current_seed(replicatedSeed_);
  parallel_.set_current_seed(parallelSeed_);
}

torch::Tensor dropout(const torch::Tensor& x, double p, at::Generator& gen, bool training) {
  if (p < 0 || p >= 1) throw InvalidArgument(chorus::str("dropout: p must be in [0, 1), got ", p));
  if (!training || p == 0) return x;
  torch::Tensor keep = torch::empty_like(x, torch::MemoryFormat::Contiguous).bernoulli_(1.0 - p, gen);
  return x * keep * (1.0 / (1.0 - p));
}

}  // namespace chorus::parallel
