// Random numbers for dropout under tensor parallelism.
//
// Inside a split region (attention probabilities of this rank's heads, a column-parallel
// output) each tp rank holds different elements, so their dropout masks must be independent:
// they draw from parallel(), seeded differently per tp rank. In a replicated region (after a
// row-parallel layer's reduction, the embeddings, the residual stream) every tp rank holds the
// same tensor and must drop the same elements, so they draw from replicated(), seeded the
// same on every tp rank. (Megatron's RNG tracker; the seeds follow its seed + 2718 + tp rank.)
//
// Under sequence parallelism the residual stream is split along T; its dropout then belongs
// to a split region and draws from parallel().
//
// Generators are explicit: nothing here touches torch's global generator, so ranks running as
// threads in one process do not interfere. Thread-safety: drawing from a generator takes its
// mutex (as torch's ops do); one TensorParallelRng per rank.
#pragma once

#include <cstdint>

#include <ATen/core/Generator.h>
#include <torch/torch.h>

namespace chorus::parallel {

class TensorParallelRng {
 public:
  // replicated(): seeded by seed (+ an offset per dp rank when dpRank > 0, so data-parallel
  // replicas drop differently; pass 0 for the same masks on every dp rank).
  // parallel(): seeded by that seed + 2718 + tpRank.
  TensorParallelRng(uint64_t seed, int tpRank, int dpRank = 0);

  at::Generator& replicated() { return replicated_; }
  at::Generator& parallel() { return parallel_; }
  uint64_t replicatedSeed() const { return replicatedSeed_; }
  uint64_t parallelSeed() const { return parallelSeed_; }
  // Both generators back to their seeds (e.g. to replay a step).
  void reset();

 private:
  uint64_t replicatedSeed_, parallelSeed_;
  at::Generator replicated_, parallel_;
};

// Inverted dropout: zeroes each element with probability p (mask drawn from gen) and scales
// the rest by 1 / (1 - p); x itself when !training or p == 0. Differentiable in x. p in
// [0, 1) (InvalidArgument otherwise).
torch::Tensor dropout(const torch::Tensor& x, double p, at::Generator& gen, bool training = true);

}  // namespace chorus::parallel
