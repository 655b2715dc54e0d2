// All-gather and all-gatherv on every transport and world size: every dtype at 0, 1, 7 and
// 131071 elements per rank; uneven counts with empty blocks; the input already in place in
// the output; argument checks. Block q of every rank's output must hold exactly rank q's
// input, and nothing past the output may be written.
#include <gtest/gtest.h>

#include <numeric>
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
class AllgatherTest : public ::testing::TestWithParam<Param> {};

void runCase(ProcessGroup& g, const std::vector<size_t>& counts, bool variable, DType dtype) {
  const int P = g.size(), r = g.rank();
  const size_t esize = dtypeSize(dtype);
  std::vector<size_t> offsets(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  std::vector<uint8_t> in(counts[static_cast<size_t>(r)] * esize);
  fillTokens(in.data(), counts[static_cast<size_t>(r)], dtype, r);
  std::vector<uint8_t> out(offsets.back() * esize + 1, 0xEE);
  AllgatherOptions o;
  o.input = in.data();
  o.output = out.data();
  o.count = counts[static_cast<size_t>(r)];
  o.dtype = dtype;
  if (variable) o.counts = counts;
  g.allgather(o);
  for (int q = 0; q < P; ++q) {
    EXPECT_EQ(checkTokens(out.data() + offsets[static_cast<size_t>(q)] * esize, counts[static_cast<size_t>(q)], dtype, q),
              "")
        << "block " << q << " on rank " << r;
  }
  EXPECT_EQ(out.back(), 0xEE) << "wrote past the output on rank " << r;
}

TEST_P(AllgatherTest, EqualBlocksEveryDtype) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    for (size_t count : {size_t{0}, size_t{1}, size_t{7}}) {
      for (DType dtype : kAllDTypes) runCase(g, std::vector<size_t>(static_cast<size_t>(P), count), false, dtype);
    }
    runCase(g, std::vector<size_t>(static_cast<size_t>(P), 131071), false, DType::kFloat32);
  });
}

TEST_P(AllgatherTest, AllgathervUnevenAndEmptyBlocks) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    std::vector<size_t> uneven, large;
    for (int i = 0; i < P; ++i) {
      uneven.push_back(static_cast<size_t>((i * 5 + 2) % 6));  // some ranks contribute nothing
      large.push_back(static_cast<size_t>(i % 2 == 0 ? 65537 + i : 0));
    }
    for (DType dtype : kAllDTypes) runCase(g, uneven, true, dtype);
    runCase(g, large, true, DType::kInt64);
    runCase(g, std::vector<size_t>(static_cast<size_t>(P), 0), true, DType::kUInt8);
  });
}

TEST_P(AllgatherTest, InputAlreadyInPlace) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    const size_t count = 9;
    std::vector<int32_t> buf(count * static_cast<size_t>(P), -1);
    int32_t* mine = buf.data() + static_cast<size_t>(g.rank()) * count;
    fillTokens(mine, count, DType::kInt32, g.rank());
    AllgatherOptions o;
    o.input = mine;
    o.output = buf.data();
    o.count = count;
    o.dtype = DType::kInt32;
    g.allgather(o);
    for (int q = 0; q < P; ++q) EXPECT_EQ(checkTokens(buf.data() + q * count, count, DType::kInt32, q), "");
  });
}

TEST_P(AllgatherTest, CountMustMatchOwnEntryOfCounts) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    std::vector<float> in(4), out(4 * static_cast<size_t>(P));
    AllgatherOptions o;
    o.input = in.data();
    o.output = out.data();
    o.count = 3;
    o.counts = std::vector<size_t>(static_cast<size_t>(P), 4);
    EXPECT_THROW(g.allgather(o), InvalidArgument);
    if (P > 1) {
      o.count = 4;
      o.counts.pop_back();
      EXPECT_THROW(g.allgather(o), InvalidArgument);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(All, AllgatherTest,
                         ::testing::Combine(::testing::ValuesIn(testutil::testTransports()),
                                            ::testing::ValuesIn(testutil::kTestWorldSizes)),
                         [](const auto& info) {
                           return testutil::transportSizeName(std::get<0>(info.param), std::get<1>(info.param));
                         });

}  // namespace
}  // namespace chorus::comm
