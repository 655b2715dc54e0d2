// Scatter from every root on every transport and world size: every dtype at 0, 1 and 7
// elements per rank and float32 at 65537; the root's output inside its own input. Rank r
// must receive exactly block r of the root's input.
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
class ScatterTest : public ::testing::TestWithParam<Param> {};

// The root's input block q holds tokenValue(q, i), so rank q can check what it got.
void runCase(ProcessGroup& g, size_t count, DType dtype, int root) {
  const int P = g.size();
  const size_t bytes = count * dtypeSize(dtype);
  std::vector<uint8_t> in;
  if (g.rank() == root) {
    in.resize(bytes * static_cast<size_t>(P));
    for (int q = 0; q < P; ++q) fillTokens(in.data() + static_cast<size_t>(q) * bytes, count, dtype, q);
  }
  std::vector<uint8_t> out(bytes + 1, 0xEE);
  ScatterOptions o;
  o.input = in.data();
  o.output = out.data();
  o.count = count;
  o.dtype = dtype;
  o.root = root;
  g.scatter(o);
  EXPECT_EQ(checkTokens(out.data(), count, dtype, g.rank()), "") << "rank " << g.rank() << ", root " << root;
  EXPECT_EQ(out.back(), 0xEE);
}

TEST_P(ScatterTest, EveryRootEveryDtype) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    for (int root = 0; root < P; ++root) {
      for (size_t count : {size_t{0}, size_t{1}, size_t{7}}) {
        for (DType dtype : kAllDTypes) runCase(g, count, dtype, root);
      }
      runCase(g, 65537, DType::kFloat32, root);
    }
  });
}

TEST_P(ScatterTest, RootOutputInsideItsInput) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    const size_t count = 6;
    std::vector<int64_t> buf(count * static_cast<size_t>(P));
    for (int q = 0; q < P; ++q) fillTokens(buf.data() + q * count, count, DType::kInt64, q);
    ScatterOptions o;
    o.input = buf.data();
    o.output = buf.data() + static_cast<size_t>(g.rank()) * count;
    o.count = count;
    o.dtype = DType::kInt64;
    o.root = 0;
    g.scatter(o);
    EXPECT_EQ(checkTokens(o.output, count, DType::kInt64, g.rank()), "");
  });
}

INSTANTIATE_TEST_SUITE_P(All, ScatterTest,
                         ::testing::Combine(::testing::ValuesIn(testutil::testTransports()),
                                            ::testing::ValuesIn(testutil::kTestWorldSizes)),
                         [](const auto& info) {
                           return testutil::transportSizeName(std::get<0>(info.param), std::get<1>(info.param));
                         });

}  // namespace
}  // namespace chorus::comm
