// Communication hooks that compress: one that runs any compress::Codec (sparsification,
// quantization, DGC) through compressedAllreduce, and PowerSGD (low-rank, with error feedback
// and warm start). Both need several collectives per bucket, with computation between them,
// so each hook runs its buckets one at a time, in order, on a thread of its own: start()
// queues the bucket and returns, and DDP's end-of-backward wait() collects it. Every rank
// queues the buckets in the same order, so the collectives match.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "chorus/compress/codec.h"
#include "chorus/parallel/data/comm_hook.h"

namespace chorus::parallel {

// Where a compressing hook compresses. kAll: every rank's gradient goes through the codec to
// every other rank. kInterHost: on a group that spans hosts with several ranks on some
// (ProcessGroup::links().hierarchical()), the ranks of each host first sum their gradients,
// densely, to the host's first rank (over shared memory with the mixed transport); only those
// first ranks, one per host, run the codec among themselves; each then broadcasts the result
// inside its host. Only the slow links between hosts carry compressed data. On any other
// group kInterHost is kAll.
enum class CompressionScope : uint8_t { kAll, kInterHost };
// "all" or "inter-host"; InvalidArgument otherwise.
CompressionScope parseCompressionScope(const std::string& name);

// Per-bucket codec state (residuals, momentum, PowerSGD's Q), for checkpoints, and the size
// of the last message, which every compressing hook keeps the same way.
class StatefulHook : public CommHook {
 public:
  explicit StatefulHook(CompressionScope scope = CompressionScope::kAll) : scope_(scope) {}
  // bucket index -> state. Not thread-safe against a running backward pass.
  std::map<size_t, compress::CodecState>& states() { return states_; }
  // Bytes this rank's messages took in the last call per bucket, and the dense float32 size.
  uint64_t lastMessageBytes() const;
  uint64_t lastDenseBytes() const;

 protected:
  // Bucket `index`'s state, created on first use (then `fresh` is true). Thread-safe.
  compress::CodecState& stateOf(size_t index, bool* fresh = nullptr);
  void recordBytes(uint64_t message, uint64_t dense);
  // Averages `buffer` over `group` with `compressed`, a function that averages a buffer over
  // the group it is given through the codec. With kAll (or a flat group) that is
  // compressed(group, buffer). With kInterHost: a dense sum to each host's first rank,
  // compressed(first ranks' group, buffer) there, scaled from the hosts' average to the
  // ranks' average, and a broadcast inside each host. Returns whether this rank ran
  // `compressed`. Called on the hook's one thread; the first call on a group splits it
  // (collective over the group) into its hosts and their first ranks.
  bool averageAcrossHosts(comm::ProcessGroup& group, torch::Tensor& buffer,
                          const std::function<void(comm::ProcessGroup&, torch::Tensor&)>& compressed);

 private:
  struct Tiers {
    std::shared_ptr<comm::ProcessGroup> host;     // the ranks of this rank's host
    std::shared_ptr<comm::ProcessGroup> leaders;  // each host's first rank; null on the others
  };
  CompressionScope scope_;
  std::map<const comm::ProcessGroup*, Tiers> tiers_;  // by group, made on first use
  mutable std::mutex mu_;
  std::map<size_t, compress::CodecState> states_;
  uint64_t messageBytes_ = 0, denseBytes_ = 0;
};

// Any codec. `seed` seeds each bucket's RNG (mixed with the bucket index and this rank).
// The first `denseSteps` calls per bucket run a plain float32 all-reduce instead (a warm-up,
// like the start_powerSGD_iter of PyTorch's hook); the count is in each state's
// scalars["calls"], so it survives a checkpoint.
std::shared_ptr<StatefulHook> codecHook(std::shared_ptr<compress::Codec> codec, uint64_t seed = 0,
                                        int64_t denseSteps = 0, CompressionScope scope = CompressionScope::kAll);

// The RNG state codecHook gives bucket `bucket`'s state on rank `rank` when it creates it. A
// state restored from a checkpoint keeps the RNG it saved; a DDP run resumed at a larger world
// seeds the ranks the old world lacked with this (train/codec_state.h).
uint64_t codecRngSeed(uint64_t seed, size_t bucket, int rank);

// PowerSGD (Vogels et al., 2019): each matrix-shaped gradient M (n x m, from its first
// dimension and the rest) plus its residual is approximated by P Q^T of rank `rank`:
// P = M Q, all-reduce P, orthonormalize P, Q = M^T P, all-reduce Q. The residual keeps
// M - P Q^T (error feedback); Q is kept for the next step (warm start) and starts from the
// same seeded random values on every rank. Vectors and matrices too small to gain are
// all-reduced densely, in one message per bucket. `denseSteps` as for codecHook.
std::shared_ptr<StatefulHook> powerSgdHook(int64_t rank, uint64_t seed = 0, int64_t denseSteps = 0,
                                           CompressionScope scope = CompressionScope::kAll);

}  // namespace chorus::parallel
