// ShardPlan: every element of every tensor in exactly one slice, balanced loads, slices in
// key order and grouped by server, tensors split at the cuts, the header's worked example, the
// fingerprint, and the errors.
#include <gtest/gtest.h>

#include <random>

#include "chorus/common/error.h"
#include "chorus/ps/sharding.h"

namespace chorus::ps {
namespace {

std::vector<TensorSpec> specs(const std::vector<int64_t>& sizes) {
  std::vector<TensorSpec> t;
  for (size_t i = 0; i < sizes.size(); ++i) t.push_back({"t" + std::to_string(i), sizes[i]});
  return t;
}

// Walks all slices and checks every invariant of the plan.
void checkPlan(const std::vector<int64_t>& sizes, int servers) {
  SCOPED_TRACE(::testing::Message() << "servers " << servers << ", " << sizes.size() << " tensors");
  const ShardPlan plan = ShardPlan::make(specs(sizes), servers);
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  ASSERT_EQ(plan.totalNumel(), total);
  ASSERT_EQ(plan.servers(), servers);

  // Coverage: walking the slices in order visits each tensor's elements exactly once, in order.
  std::vector<int64_t> covered(sizes.size(), 0);
  std::vector<int64_t> perServer(servers, 0);
  int64_t key = 0;
  int lastServer = 0;
  for (const Slice& s : plan.slices()) {
    ASSERT_GT(s.numel, 0);
    ASSERT_GE(s.tensor, 0);
    ASSERT_LT(s.tensor, static_cast<int>(sizes.size()));
    EXPECT_NE(sizes[s.tensor], 0) << "empty tensor got a slice";
    EXPECT_EQ(s.offset, covered[s.tensor]) << "tensor " << s.tensor << " not covered contiguously";
    EXPECT_EQ(s.key, key) << "slices not in key order";
    EXPECT_GE(s.server, lastServer) << "servers must own consecutive runs of slices";
    covered[s.tensor] += s.numel;
    perServer[s.server] += s.numel;
    key += s.numel;
    lastServer = s.server;
  }
  EXPECT_EQ(key, total);
  for (size_t t = 0; t < sizes.size(); ++t) EXPECT_EQ(covered[t], sizes[t]) << "tensor " << t;

  // Loads: balanced within one element, and consistent with the slices and the slice runs.
  int64_t lo = INT64_MAX, hi = 0;
  int next = 0;
  for (int s = 0; s < servers; ++s) {
    EXPECT_EQ(plan.load(s), perServer[s]);
    lo = std::min(lo, plan.load(s));
    hi = std::max(hi, plan.load(s));
    EXPECT_EQ(plan.firstSlice(s), next);
    EXPECT_GE(plan.sliceCount(s), 1);
    for (int i = plan.firstSlice(s); i < plan.firstSlice(s) + plan.sliceCount(s); ++i) {
      EXPECT_EQ(plan.slices()[i].server, s);
    }
    next += plan.sliceCount(s);
  }
  EXPECT_EQ(next, static_cast<int>(plan.slices().size()));
  EXPECT_LE(hi - lo, 1);
}

TEST(ShardingTest, WorkedExampleFromHeader) {
  const ShardPlan plan = ShardPlan::make({{"w1", 10}, {"b1", 2}, {"w2", 6}}, 3);
  ASSERT_EQ(plan.slices().size(), 4u);
  auto expect = [&](int i, int tensor, int64_t offset, int64_t numel, int server, int64_t key) {
    const Slice& s = plan.slices()[i];
    EXPECT_EQ(s.tensor, tensor) << "slice " << i;
    EXPECT_EQ(s.offset, offset) << "slice " << i;
    EXPECT_EQ(s.numel, numel) << "slice " << i;
    EXPECT_EQ(s.server, server) << "slice " << i;
    EXPECT_EQ(s.key, key) << "slice " << i;
  };
  expect(0, 0, 0, 6, 0, 0);    // w1[0,6)@s0
  expect(1, 0, 6, 4, 1, 6);    // w1[6,10)@s1
  expect(2, 1, 0, 2, 1, 10);   // b1[0,2)@s1
  expect(3, 2, 0, 6, 2, 12);   // w2[0,6)@s2
  EXPECT_EQ(plan.firstSlice(1), 1);
  EXPECT_EQ(plan.sliceCount(1), 2);
  for (int s = 0; s < 3; ++s) EXPECT_EQ(plan.load(s), 6);
}

TEST(ShardingTest, UnevenSplitGivesFirstServersOneMore) {
  const ShardPlan plan = ShardPlan::make(specs({7, 4}), 3);  // 11 = 4 + 4 + 3
  EXPECT_EQ(plan.load(0), 4);
  EXPECT_EQ(plan.load(1), 4);
  EXPECT_EQ(plan.load(2), 3);
  checkPlan({7, 4}, 3);
}

TEST(ShardingTest, BigTensorSpansSeveralServers) {
  const ShardPlan plan = ShardPlan::make(specs({1, 100, 2}), 5);  // 103 -> 21 21 21 20 20
  int servers = 0;
  for (const Slice& s : plan.slices()) servers += s.tensor == 1;
  EXPECT_EQ(servers, 5);  // the big tensor touches every server
  checkPlan({1, 100, 2}, 5);
}

TEST(ShardingTest, EmptyTensorsGetNoSlice) {
  const ShardPlan plan = ShardPlan::make(specs({0, 5, 0, 0, 3, 0}), 2);
  for (const Slice& s : plan.slices()) EXPECT_TRUE(s.tensor == 1 || s.tensor == 4);
  checkPlan({0, 5, 0, 0, 3, 0}, 2);
}

TEST(ShardingTest, InvariantsOverManyShapes) {
  for (int servers : {1, 2, 3, 4, 5, 8}) {
    checkPlan({7919}, servers);
    checkPlan({1, 1, 1, 1, 1, 1, 1, 1}, servers);
    checkPlan({servers}, servers);  // one element each
  }
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int64_t> sizes(1 + rng() % 12);
    int64_t total = 0;
    for (int64_t& n : sizes) total += n = (rng() % 4 == 0) ? 0 : rng() % 50;
    if (total == 0) continue;
    checkPlan(sizes, 1 + static_cast<int>(rng() % std::min<int64_t>(total, 16)));
  }
}

TEST(ShardingTest, Fingerprint) {
  const auto base = ShardPlan::make({{"w", 10}, {"b", 2}}, 2).fingerprint();
  EXPECT_EQ(ShardPlan::make({{"w", 10}, {"b", 2}}, 2).fingerprint(), base);
  EXPECT_NE(ShardPlan::make({{"w", 10}, {"b", 3}}, 2).fingerprint(), base);  // a size
  EXPECT_NE(ShardPlan::make({{"w", 11}, {"b", 1}}, 2).fingerprint(), base);  // same total
  EXPECT_NE(ShardPlan::make({{"v", 10}, {"b", 2}}, 2).fingerprint(), base);  // a name
  EXPECT_NE(ShardPlan::make({{"wb", 10}, {"", 2}}, 2).fingerprint(), base);  // name boundary
  EXPECT_NE(ShardPlan::make({{"w", 10}, {"b", 2}}, 3).fingerprint(), base);  // server count
  EXPECT_NE(ShardPlan::make({{"b", 2}, {"w", 10}}, 2).fingerprint(), base);  // order
}

TEST(ShardingTest, Errors) {
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no InvalidArgument");
  };
  EXPECT_NE(message([] { ShardPlan::make(specs({4}), 0); }).find("servers = 0"), std::string::npos);
  EXPECT_NE(message([] { ShardPlan::make(specs({4}), -1); }).find("servers = -1"), std::string::npos);
  const std::string tooMany = message([] { ShardPlan::make(specs({2, 1}), 4); });
  EXPECT_NE(tooMany.find("3 elements over 4 servers"), std::string::npos) << tooMany;
  EXPECT_NE(message([] { ShardPlan::make(specs({0}), 1); }).find("0 elements"), std::string::npos);
  const std::string negative = message([] { ShardPlan::make({{"w", 3}, {"bad", -1}}, 1); });
  EXPECT_NE(negative.find("'bad' has numel -1"), std::string::npos) << negative;
  const ShardPlan plan = ShardPlan::make(specs({4}), 2);
  EXPECT_THROW(plan.load(2), InvalidArgument);
  EXPECT_THROW(plan.firstSlice(-1), InvalidArgument);
}

}  // namespace
}  // namespace chorus::ps
