// Reduce to every root on every transport and world size: the full dtype x op matrix at 0, 1,
// 7 and 4P+3 elements (binomial tree), and 1000003 elements (ring reduce-scatter + gather)
// for float32 sum and float64 average. Only the root's result is defined; it must be exact
// except floating averages (tolerances in collective_reference.h).
#include <gtest/gtest.h>

#include <tuple>

#include "chorus/common/error.h"
#include "chorus/comm/group.h"
#include "util/collective_reference.h"
#include "util/rank_threads.h"

namespace chorus::comm {
namespace {

using testutil::checkReduced;
using testutil::makeInput;

using Param = std::tuple<std::string, int>;
class ReduceTest : public ::testing::TestWithParam<Param> {};

void runCase(ProcessGroup& g, size_t count, DType dtype, ReduceOp op, int root) {
  std::vector<uint8_t> buf = makeInput(g.rank(), count, dtype, op);
  buf.push_back(0xEE);
  ReduceOptions o;
  o.data = buf.data();
  o.count = count;
  o.dtype = dtype;
  o.op = op;
  o.root = root;
  g.reduce(o);
  if (g.rank() == root) {
    EXPECT_EQ(checkReduced(buf.data(), count, dtype, op, g.size()), "") << "root " << root;
  }
  EXPECT_EQ(buf.back(), 0xEE) << "wrote past the buffer on rank " << g.rank();
}

TEST_P(ReduceTest, EveryRootEveryDtypeAndOp) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    for (int root = 0; root < P; ++root) {
      for (size_t count : {size_t{0}, size_t{1}, size_t{7}, static_cast<size_t>(4 * P + 3)}) {
        for (DType dtype : kAllDTypes) {
          for (ReduceOp op : kAllReduceOps) runCase(g, count, dtype, op, root);
        }
      }
    }
  });
}

TEST_P(ReduceTest, LargeMessages) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    runCase(g, 1000003, DType::kFloat32, ReduceOp::kSum, 0);
    runCase(g, 1000003, DType::kFloat64, ReduceOp::kAvg, P - 1);
    runCase(g, 300007, DType::kFloat16, ReduceOp::kMax, P / 2);
  });
}

INSTANTIATE_TEST_SUITE_P(All, ReduceTest,
                         ::testing::Combine(::testing::ValuesIn(testutil::testTransports()),
                                            ::testing::ValuesIn(testutil::kTestWorldSizes)),
                         [](const auto& info) {
                           return testutil::transportSizeName(std::get<0>(info.param), std::get<1>(info.param));
                         });

}  // namespace
}  // namespace chorus::comm
