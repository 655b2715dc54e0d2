// Barrier on every transport and world size: ranks arrive at staggered times, and no rank may
// leave before the last one has arrived; repeated barriers stay in step.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <tuple>

#include "chorus/common/error.h"
#include "chorus/comm/group.h"
#include "util/rank_threads.h"

namespace chorus::comm {
namespace {

using Param = std::tuple<std::string, int>;
class BarrierTest : public ::testing::TestWithParam<Param> {};

TEST_P(BarrierTest, NoRankLeavesBeforeTheLastArrives) {
  const auto& [transport, P] = GetParam();
  constexpr int kRounds = 5;
  // arrived[k]: ranks that entered barrier k. A rank leaving barrier k must see all P.
  std::vector<std::atomic<int>> arrived(kRounds);
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    for (int k = 0; k < kRounds; ++k) {
      // A different straggler each round.
      if (g.rank() == k % P) std::this_thread::sleep_for(std::chrono::milliseconds(30));
      arrived[k].fetch_add(1);
      g.barrier();
      EXPECT_EQ(arrived[k].load(), P) << "rank " << g.rank() << " left barrier " << k << " early";
    }
  });
}

TEST_P(BarrierTest, AsyncBarrierCompletes) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&](ProcessGroup& g) {
    WorkPtr w = g.barrierAsync();
    w->wait();
    EXPECT_TRUE(w->test());
  });
}

INSTANTIATE_TEST_SUITE_P(All, BarrierTest,
                         ::testing::Combine(::testing::ValuesIn(testutil::testTransports()),
                                            ::testing::ValuesIn(testutil::kTestWorldSizes)),
                         [](const auto& info) {
                           return testutil::transportSizeName(std::get<0>(info.param), std::get<1>(info.param));
                         });

}  // namespace
}  // namespace chorus::comm
