// Broadcast from every root on every transport and world size: every dtype at 0, 1 and 7
// elements (binomial tree), and 1000003 float32 elements (the pipelined chain). Every rank
// must end with exactly the root's data and nothing past the buffer may change.
#include <gtest/gtest.h>

#include <tuple>

#include "chorus/common/error.h"
#include "chorus/comm/group.h"
#include "util/collective_reference.h"
#include "util/rank_threads.h"

namespace chorus::comm {
namespace {

using testutil::checkTokens;
using testutil::fillTokens;

using Param = std::tuple<std::string, int>;
class BroadcastTest : public ::testing::TestWithParam<Param> {};

void runCase(ProcessGroup& g, size_t count, DType dtype, int root) {
  std::vector<uint8_t> buf(count * dtypeSize(dtype) + 1, 0xEE);
  if (g.rank() == root) fillTokens(buf.data(), count, dtype, root);
  BroadcastOptions o;
  o.data = buf.data();
  o.count = count;
  o.dtype = dtype;
  o.root = root;
  g.broadcast(o);
  EXPECT_EQ(checkTokens(buf.data(), count, dtype, root), "") << "rank " << g.rank() << ", root " << root;
  EXPECT_EQ(buf.back(), 0xEE) << "wrote past the buffer on rank " << g.rank();
}

TEST_P(BroadcastTest, EveryRootSmallMessagesEveryDtype) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    for (int root = 0; root < P; ++root) {
      for (size_t count : {size_t{0}, size_t{1}, size_t{7}}) {
        for (DType dtype : kAllDTypes) runCase(g, count, dtype, root);
      }
    }
  });
}

TEST_P(BroadcastTest, LargeMessagesFromFirstAndLastRoot) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    runCase(g, 1000003, DType::kFloat32, 0);
    runCase(g, 1000003, DType::kFloat32, P - 1);
    runCase(g, 65537, DType::kBFloat16, P / 2);
  });
}

TEST_P(BroadcastTest, RejectsRootOutsideGroup) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    float x = 0;
    BroadcastOptions o;
    o.data = &x;
    o.count = 1;
    o.root = P;
    EXPECT_THROW(g.broadcast(o), InvalidArgument);
    o.root = -1;
    EXPECT_THROW(g.broadcast(o), InvalidArgument);
  });
}

INSTANTIATE_TEST_SUITE_P(All, BroadcastTest,
                         ::testing::Combine(::testing::ValuesIn(testutil::testTransports()),
                                            ::testing::ValuesIn(testutil::kTestWorldSizes)),
                         [](const auto& info) {
                           return testutil::transportSizeName(std::get<0>(info.param), std::get<1>(info.param));
                         });

}  // namespace
}  // namespace chorus::comm
