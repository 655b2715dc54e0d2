#include "chorus/parallel/data/sampler.h"

#include <numeric>
#include <random>

#include "chorus/common/error.h"

namespace chorus::parallel {

DistributedSampler::DistributedSampler(int64_t datasetSize, int rank, int worldSize, bool shuffle, uint64_t seed,
                                       bool dropLast)
    : size_(datasetSize), rank_(rank), world_(worldSize), shuffle_(shuffle), seed_(seed) {
  if (worldSize < 1 || rank < 0 || rank >= worldSize) {
    throw InvalidArgument(str("DistributedSampler: rank ", rank, " is not in a world of ", worldSize));
  }
  if (datasetSize < 0) throw InvalidArgument("DistributedSampler: negative dataset size");
  shard_ = dropLast ? datasetSize / worldSize : (datasetSize + worldSize - 1) / worldSize;
  if (shard_ == 0 && datasetSize > 0 && dropLast) {
    throw InvalidArgument(str("DistributedSampler: ", datasetSize, " samples leave nothing for ", worldSize,
                              " ranks with dropLast; turn dropLast off or use fewer ranks"));
  }
}

std::vector<int64_t> DistributedSampler::indices() const {
  std::vector<int64_t> order(size_);
  std::iota(order.begin(), order.end(), int64_t{0});
  if (shuffle_) {
    // Fisher-Yates with a 64-bit Mersenne Twister: the same sequence on every rank and
    // platform (std::shuffle's use of the engine is implementation-defined).
    std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch_));
    for (int64_t i = size_ - 1; i > 0; --i) {
      int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
      std::swap(order[i], order[j]);
    }
  }
  const int64_t total = shard_ * world_;
  std::vector<int64_t> mine;
  mine.reserve(shard_);
  for (int64_t k = rank_; k < total; k += world_) mine.push_back(order[size_ == 0 ? 0 : k % size_]);
  return mine;
}

}  // namespace chorus::parallel
