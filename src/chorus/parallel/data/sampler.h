// DistributedSampler: which samples each rank takes in an epoch. Every rank gets an equal
// shard (padded by wrapping around to the start of the order, or, with dropLast, cut to a
// multiple of the world size), and the order is reshuffled each epoch from (seed, epoch) the
// same way on every rank, so shards never overlap. Torch-free.
//
// Rank r takes positions r, r+W, r+2W, ... of the epoch's order (positions past the dataset
// wrap around to its start). So when each step takes the next B/W samples of every rank's
// shard, step i takes positions [iB, (i+1)B) at any world size W that divides B: the first k
// steps of an epoch consume the same samples at W = 2, 3 or 4, and a run that checkpoints at
// one world size continues at another on exactly the samples the first would have taken next
// (only the wrapped-around padding of an epoch's last, partial step depends on W).
#pragma once

#include <cstdint>
#include <vector>

namespace chorus::parallel {

class DistributedSampler {
 public:
  DistributedSampler(int64_t datasetSize, int rank, int worldSize, bool shuffle = true, uint64_t seed = 0,
                     bool dropLast = false);
  void setEpoch(int64_t epoch) { epoch_ = epoch; }
  int64_t epoch() const { return epoch_; }
  // This rank's sample indices for the current epoch, in the order to visit them.
  std::vector<int64_t> indices() const;
  // Samples per rank per epoch (the same on every rank).
  int64_t shardSize() const { return shard_; }

 private:
  int64_t size_;
  int rank_, world_;
  bool shuffle_;
  uint64_t seed_;
  int64_t epoch_ = 0;
  int64_t shard_;
};

}  // namespace chorus::parallel
