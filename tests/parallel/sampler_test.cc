// DistributedSampler: equal, disjoint shards that cover the data; a new order each epoch,
// the same on every rank.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "chorus/common/error.h"
#include "chorus/parallel/data/sampler.h"

namespace chorus::parallel {
namespace {

TEST(DistributedSampler, ShardsAreEqualDisjointAndCoverEverything) {
  for (int64_t n : {0, 1, 10, 11, 97, 100}) {
    for (int world : {1, 2, 3, 4, 7}) {
      std::multiset<int64_t> seen;
      size_t shard = 0;
      for (int r = 0; r < world; ++r) {
        DistributedSampler s(n, r, world, true, 42);
        auto idx = s.indices();
        if (r == 0) shard = idx.size();
        EXPECT_EQ(idx.size(), shard) << "n " << n << " world " << world;
        EXPECT_EQ(static_cast<int64_t>(idx.size()), s.shardSize());
        seen.insert(idx.begin(), idx.end());
      }
      for (int64_t i = 0; i < n; ++i) EXPECT_GE(seen.count(i), 1u) << "sample " << i << " never visited";
      // Padding repeats at most world-1 samples once.
      EXPECT_LT(seen.size(), static_cast<size_t>(n + world));
    }
  }
}

TEST(DistributedSampler, DropLastCutsToAMultipleWithoutRepeats) {
  std::set<int64_t> seen;
  for (int r = 0; r < 3; ++r) {
    DistributedSampler s(11, r, 3, true, 1, /*dropLast=*/true);
    auto idx = s.indices();
    EXPECT_EQ(idx.size(), 3u);
    for (auto i : idx) EXPECT_TRUE(seen.insert(i).second) << "sample " << i << " twice";
  }
}

TEST(DistributedSampler, EachEpochReshufflesTheSameWayOnEveryCall) {
  DistributedSampler a(1000, 1, 4, true, 5), b(1000, 1, 4, true, 5);
  EXPECT_EQ(a.indices(), b.indices());
  auto e0 = a.indices();
  a.setEpoch(1);
  EXPECT_NE(a.indices(), e0);
  b.setEpoch(1);
  EXPECT_EQ(a.indices(), b.indices());
  DistributedSampler c(1000, 1, 4, true, 6);
  EXPECT_NE(c.indices(), e0) << "the seed must matter";
  DistributedSampler plain(10, 1, 2, false);
  EXPECT_EQ(plain.indices(), (std::vector<int64_t>{1, 3, 5, 7, 9}));
}

TEST(DistributedSampler, BadRankIsRefused) {
  EXPECT_THROW(DistributedSampler(10, 2, 2), InvalidArgument);
  EXPECT_THROW(DistributedSampler(10, 0, 0), InvalidArgument);
}

}  // namespace
}  // namespace chorus::parallel
