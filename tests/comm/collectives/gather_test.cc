// Gather to every root on every transport and world size: every dtype at 0, 1 and 7 elements
// per rank and float32 at 65537; the root's own input already in place in the output. Block q
// of the root's output must hold exactly rank q's input; other ranks' outputs are not touched.
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
class GatherTest : public ::testing::TestWithParam<Param> {};

void runCase(ProcessGroup& g, size_t count, DType dtype, int root) {
  const int P = g.size();
  const size_t bytes = count * dtypeSize(dtype);
  std::vector<uint8_t> in(bytes);
  fillTokens(in.data(), count, dtype, g.rank());
  std::vector<uint8_t> out(bytes * static_cast<size_t>(P) + 1, 0xEE);
  GatherOptions o;
  o.input = in.data();
  o.output = out.data();
  o.count = count;
  o.dtype = dtype;
  o.root = root;
  g.gather(o);
  if (g.rank() == root) {
    for (int q = 0; q < P; ++q) {
      EXPECT_EQ(checkTokens(out.data() + static_cast<size_t>(q) * bytes, count, dtype, q), "") << "block " << q;
    }
  } else {
    for (size_t i = 0; i + 1 < out.size(); ++i) ASSERT_EQ(out[i], 0xEE) << "a non-root's output was written";
  }
  EXPECT_EQ(out.back(), 0xEE);
}

TEST_P(GatherTest, EveryRootEveryDtype) {
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

TEST_P(GatherTest, RootInputInPlace) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    const size_t count = 5;
    const int root = P - 1;
    std::vector<double> buf(count * static_cast<size_t>(P), -1);
    double* mine = buf.data() + static_cast<size_t>(g.rank()) * count;
    fillTokens(mine, count, DType::kFloat64, g.rank());
    GatherOptions o;
    o.input = mine;
    o.output = buf.data();
    o.count = count;
    o.dtype = DType::kFloat64;
    o.root = root;
    g.gather(o);
    if (g.rank() == root) {
      for (int q = 0; q < P; ++q) EXPECT_EQ(checkTokens(buf.data() + q * count, count, DType::kFloat64, q), "");
    }
  });
}

INSTANTIATE_TEST_SUITE_P(All, GatherTest,
                         ::testing::Combine(::testing::ValuesIn(testutil::testTransports()),
                                            ::testing::ValuesIn(testutil::kTestWorldSizes)),
                         [](const auto& info) {
                           return testutil::transportSizeName(std::get<0>(info.param), std::get<1>(info.param));
                         });

}  // namespace
}  // namespace chorus::comm
