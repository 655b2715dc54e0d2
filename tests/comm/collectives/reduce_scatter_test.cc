// Reduce-scatter against a serial reference on every transport and world size: the full
// dtype x op matrix at 0, 1 and 7 elements per rank; uneven counts (some zero) in the "v"
// form; the output aliasing its own block of the input; a large prime-sized block. Exact
// except floating averages (tolerances in collective_reference.h).
#include <gtest/gtest.h>

#include <numeric>
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
class ReduceScatterTest : public ::testing::TestWithParam<Param> {};

// Rank r's input covers global elements [0, total); its output block b starts at offsets[b].
void runCase(ProcessGroup& g, const std::vector<size_t>& counts, bool variable, DType dtype, ReduceOp op) {
  const int P = g.size(), r = g.rank();
  std::vector<size_t> offsets(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  std::vector<uint8_t> in = makeInput(r, offsets.back(), dtype, op);
  std::vector<uint8_t> out(counts[static_cast<size_t>(r)] * dtypeSize(dtype) + 1, 0xEE);
  ReduceScatterOptions o;
  o.input = in.data();
  o.output = out.data();
  o.dtype = dtype;
  o.op = op;
  if (variable) {
    o.counts = counts;
  } else {
    o.count = counts[0];
  }
  g.reduceScatter(o);
  EXPECT_EQ(checkReduced(out.data(), counts[static_cast<size_t>(r)], dtype, op, P, offsets[static_cast<size_t>(r)]), "")
      << "rank " << r << " of " << P;
  EXPECT_EQ(out.back(), 0xEE) << "wrote past the output on rank " << r;
}

TEST_P(ReduceScatterTest, EqualBlocksEveryDtypeAndOp) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    for (size_t count : {size_t{0}, size_t{1}, size_t{7}}) {
      for (DType dtype : kAllDTypes) {
        for (ReduceOp op : kAllReduceOps) runCase(g, std::vector<size_t>(static_cast<size_t>(P), count), false, dtype, op);
      }
    }
  });
}

TEST_P(ReduceScatterTest, UnevenBlocksAndLargeBlocks) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    std::vector<size_t> uneven, large;
    for (int i = 0; i < P; ++i) {
      uneven.push_back(static_cast<size_t>((i * 3 + 1) % 4));  // rank 1's block is empty
      large.push_back(static_cast<size_t>(100003 + 977 * i));
    }
    for (DType dtype : kAllDTypes) runCase(g, uneven, true, dtype, ReduceOp::kSum);
    runCase(g, uneven, true, DType::kFloat32, ReduceOp::kAvg);
    runCase(g, large, true, DType::kFloat32, ReduceOp::kSum);
    runCase(g, large, true, DType::kInt32, ReduceOp::kMax);
    runCase(g, std::vector<size_t>(static_cast<size_t>(P), 250007), false, DType::kFloat64, ReduceOp::kAvg);
  });
}

TEST_P(ReduceScatterTest, OutputMayBeItsOwnBlockOfTheInput) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    const size_t count = 13;
    std::vector<uint8_t> buf = makeInput(g.rank(), count * static_cast<size_t>(P), DType::kInt64, ReduceOp::kSum);
    ReduceScatterOptions o;
    o.input = buf.data();
    o.output = buf.data() + static_cast<size_t>(g.rank()) * count * 8;
    o.count = count;
    o.dtype = DType::kInt64;
    g.reduceScatter(o);
    EXPECT_EQ(checkReduced(o.output, count, DType::kInt64, ReduceOp::kSum, P, static_cast<size_t>(g.rank()) * count), "");
  });
}

TEST_P(ReduceScatterTest, RejectsBadArguments) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    std::vector<float> in(static_cast<size_t>(P) * 4), out(4);
    ReduceScatterOptions o;
    o.input = in.data();
    o.output = out.data();
    o.counts = std::vector<size_t>(static_cast<size_t>(P) + 1, 1);
    EXPECT_THROW(g.reduceScatter(o), InvalidArgument);
    if (P > 1) {
      o.counts.clear();
      o.count = 4;
      o.output = in.data() + ((g.rank() + 1) % P) * 4;  // overlaps another rank's block
      EXPECT_THROW(g.reduceScatter(o), InvalidArgument);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(All, ReduceScatterTest,
                         ::testing::Combine(::testing::ValuesIn(testutil::testTransports()),
                                            ::testing::ValuesIn(testutil::kTestWorldSizes)),
                         [](const auto& info) {
                           return testutil::transportSizeName(std::get<0>(info.param), std::get<1>(info.param));
                         });

}  // namespace
}  // namespace chorus::comm
