// All-to-all and all-to-allv on every transport and world size: every dtype at 0, 1 and 7
// elements per block and float32 at 10007; uneven blocks (some empty) in the "v" form;
// input and output in one buffer; a sender and receiver that disagree about a block size.
// Block i of rank j's output must hold exactly what rank i put in its block j.
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
class AlltoallTest : public ::testing::TestWithParam<Param> {};

// The block rank `from` sends to rank `to` holds tokens of "rank" from * 16 + to, starting at
// element 0, so each block is distinct.
int blockId(int from, int to) { return from * 16 + to; }

// size(from, to): elements in the block from -> to.
void runCase(ProcessGroup& g, DType dtype, const std::function<size_t(int, int)>& size, bool variable) {
  const int P = g.size(), r = g.rank();
  const size_t esize = dtypeSize(dtype);
  std::vector<size_t> sendCounts, recvCounts;
  for (int q = 0; q < P; ++q) {
    sendCounts.push_back(size(r, q));
    recvCounts.push_back(size(q, r));
  }
  std::vector<size_t> sendOff(static_cast<size_t>(P) + 1, 0), recvOff(static_cast<size_t>(P) + 1, 0);
  std::partial_sum(sendCounts.begin(), sendCounts.end(), sendOff.begin() + 1);
  std::partial_sum(recvCounts.begin(), recvCounts.end(), recvOff.begin() + 1);
  std::vector<uint8_t> in(sendOff.back() * esize), out(recvOff.back() * esize + 1, 0xEE);
  for (int q = 0; q < P; ++q) fillTokens(in.data() + sendOff[q] * esize, sendCounts[q], dtype, blockId(r, q));
  AlltoallOptions o;
  o.input = in.data();
  o.output = out.data();
  o.dtype = dtype;
  if (variable) {
    o.sendCounts = sendCounts;
    o.recvCounts = recvCounts;
  } else {
    o.count = sendCounts[0];
  }
  g.alltoall(o);
  for (int q = 0; q < P; ++q) {
    EXPECT_EQ(checkTokens(out.data() + recvOff[q] * esize, recvCounts[q], dtype, blockId(q, r)), "")
        << "block from rank " << q << " on rank " << r;
  }
  EXPECT_EQ(out.back(), 0xEE);
}

TEST_P(AlltoallTest, EqualBlocksEveryDtype) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&](ProcessGroup& g) {
    for (size_t count : {size_t{0}, size_t{1}, size_t{7}}) {
      for (DType dtype : kAllDTypes) runCase(g, dtype, [count](int, int) { return count; }, false);
    }
    runCase(g, DType::kFloat32, [](int, int) { return size_t{10007}; }, false);
  });
}

TEST_P(AlltoallTest, AlltoallvUnevenAndEmptyBlocks) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&](ProcessGroup& g) {
    auto uneven = [](int from, int to) { return static_cast<size_t>((from * 3 + to * 5) % 4); };
    for (DType dtype : kAllDTypes) runCase(g, dtype, uneven, true);
    runCase(g, DType::kInt32, [](int from, int to) { return static_cast<size_t>(from == to ? 0 : 4099 * (from + 1)); },
            true);
  });
}

TEST_P(AlltoallTest, InputAndOutputInOneBuffer) {
  const auto& [transport, P] = GetParam();
  testutil::runRanks(P, transport, [&, P = P](ProcessGroup& g) {
    const size_t count = 3;
    std::vector<float> buf(count * static_cast<size_t>(P));
    for (int q = 0; q < P; ++q) fillTokens(buf.data() + q * count, count, DType::kFloat32, blockId(g.rank(), q));
    AlltoallOptions o;
    o.input = buf.data();
    o.output = buf.data();
    o.count = count;
    o.dtype = DType::kFloat32;
    g.alltoall(o);
    for (int q = 0; q < P; ++q) {
      EXPECT_EQ(checkTokens(buf.data() + q * count, count, DType::kFloat32, blockId(q, g.rank())), "");
    }
  });
}

TEST_P(AlltoallTest, DisagreeingBlockSizesFailWithMismatch) {
  const auto& [transport, P] = GetParam();
  if (P < 2) GTEST_SKIP() << "needs two ranks";
  testutil::RankOptions opts;
  opts.transport = transport;
  opts.timeout = Millis(3000);
  // Rank 0 sends 3 elements to rank 1, which expects 2.
  auto outcome = testutil::runRanksCollect(P, opts, [&, P = P](ProcessGroup& g) {
    std::vector<size_t> send(static_cast<size_t>(P), 2), recv(static_cast<size_t>(P), 2);
    if (g.rank() == 0) send[1] = 3;
    std::vector<float> in(2 * static_cast<size_t>(P) + 1), out(2 * static_cast<size_t>(P));
    AlltoallOptions o;
    o.input = in.data();
    o.output = out.data();
    o.sendCounts = send;
    o.recvCounts = recv;
    g.alltoall(o);
  });
  ASSERT_TRUE(outcome[1]) << "rank 1 accepted a block of the wrong size";
  EXPECT_THROW(std::rethrow_exception(outcome[1]), MismatchError) << testutil::messageOf(outcome[1]);
}

INSTANTIATE_TEST_SUITE_P(All, AlltoallTest,
                         ::testing::Combine(::testing::ValuesIn(testutil::testTransports()),
                                            ::testing::ValuesIn(testutil::kTestWorldSizes)),
                         [](const auto& info) {
                           return testutil::transportSizeName(std::get<0>(info.param), std::get<1>(info.param));
                         });

}  // namespace
}  // namespace chorus::comm
