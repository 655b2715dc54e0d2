// Communication hooks that compress: one that runs any compress::Codec (sparsification,
// quantization, DGC) through compressedAllreduce, and PowerSGD (low-rank, with error feedback
// and warm start). Both need several collectives per bucket, with computation between them,
// so each hook runs its buckets one at a time, in order, on a thread of its own: start()
// queues the bucket and returns, and DDP's end-of-backward wait() collects it. Every rank
// queues the buckets in the same order, so the collectives match.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "chorus/compress/codec.h"
#include "chorus/parallel/data/comm_hook.h"

namespace chorus::parallel {

// Per-bucket codec state (residuals, momentum, PowerSGD's Q), for checkpoints, and the size
// of the last message, which every compressing hook keeps the same way.
class StatefulHook : public CommHook {
 public:
  // bucket index -> state. Not thread-safe against a running backward pass.
  std::map<size_t, compress::CodecState>& states() { return states_; }
  // Bytes this rank's messages took in the last call per bucket, and the dense float32 size.
  uint64_t lastMessageBytes() const;
  uint64_t lastDenseBytes() const;

 protected:
  // Bucket `index`'s state, created on first use (then `fresh` is true). Thread-safe.
  compress::CodecState& stateOf(size_t index, bool* fresh = nullptr);
  void recordBytes(uint64_t message, uint64_t dense);

 private:
  mutable std::mutex mu_;
  std::map<size_t, compress::CodecState> states_;
  uint64_t messageBytes_ = 0, denseBytes_ = 0;
};

// Any codec. `seed` seeds each bucket's RNG (mixed with the bucket index and this rank).
// The first `denseSteps` calls per bucket run a plain float32 all-reduce instead (a warm-up,
// like the start_powerSGD_iter of PyTorch's hook); the count is in each state's
// scalars["calls"], so it survives a checkpoint.
std::shared_ptr<StatefulHook> codecHook(std::shared_ptr<compress::Codec> codec, uint64_t seed = 0,
                                        int64_t denseSteps = 0);

// PowerSGD (Vogels et al., 2019): each matrix-shaped gradient M (n x m, from its first
// dimension and the rest) plus its residual is approximated by P Q^T of rank `rank`:
// P = M Q, all-reduce P, orthonormalize P, Q = M^T P, all-reduce Q. The residual keeps
// M - P Q^T (error feedback); Q is kept for the next step (warm start) and starts from the
// same seeded random values on every rank. Vectors and matrices too small to gain are
// all-reduced densely, in one message per bucket. `denseSteps` as for codecHook.
std::shared_ptr<StatefulHook> powerSgdHook(int64_t rank, uint64_t seed = 0, int64_t denseSteps = 0);

}  // namespace chorus::parallel
