// All-reduce against a serial reference, on every transport, world size and algorithm.
//
// One run per (transport, world size, algorithm) performs, in one process group:
//   - the full dtype x op matrix at counts 0, 1, 7 and 4P+3 (fewer elements than ranks,
//     counts that do not divide by P);
//   - float16 sum and int64 max at 300007 elements (several pipeline chunks, 2- and 8-byte
//     elements);
//   - float32 sum at 1000003 elements (a large prime).
// Results must be exact except for averages of floating dtypes (relative tolerance from
// collective_reference.h: 1e-6 float32, 1e-14 float64, 2e-3 float16, 1.6e-2 bfloat16), and
// every rank must end with bitwise the same bytes.
#include <gtest/gtest.h>

#include <mutex>
#include <tuple>

#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/group.h"
#include "util/collective_reference.h"
#include "util/rank_threads.h"

namespace chorus::comm {
namespace {

using testutil::checkReduced;
using testutil::makeInput;

struct Case {
  size_t count;
  DType dtype;
  ReduceOp op;
};

std::vector<Case> casesFor(int P) {
  std::vector<Case> cases;
  for (size_t count : {size_t{0}, size_t{1}, size_t{7}, static_cast<size_t>(4 * P + 3)}) {
    for (DType dtype : kAllDTypes) {
      for (ReduceOp op : kAllReduceOps) cases.push_back({count, dtype, op});
    }
  }
  cases.push_back({300007, DType::kFloat16, ReduceOp::kSum});
  cases.push_back({300007, DType::kInt64, ReduceOp::kMax});
  cases.push_back({1000003, DType::kFloat32, ReduceOp::kSum});
  return cases;
}

using Param = std::tuple<std::string, int, AllreduceAlgo>;

class AllreduceTest : public ::testing::TestWithParam<Param> {};

TEST_P(AllreduceTest, MatchesSerialReference) {
  const auto& [transport, P, algo] = GetParam();
  const std::vector<Case> cases = casesFor(P);
  std::mutex mu;
  std::vector<std::vector<uint64_t>> digests(cases.size(), std::vector<uint64_t>(static_cast<size_t>(P)));
  std::vector<std::string> failures;

  testutil::RankOptions opts;
  opts.transport = transport;
  opts.algo = algo;
  testutil::runRanks(P, opts, [&](ProcessGroup& g) {
    for (size_t k = 0; k < cases.size(); ++k) {
      const Case& c = cases[k];
      std::vector<uint8_t> buf = makeInput(g.rank(), c.count, c.dtype, c.op);
      AllreduceOptions o;
      o.data = buf.data();
      o.count = c.count;
      o.dtype = c.dtype;
      o.op = c.op;
      g.allreduce(o);
      const std::string err = checkReduced(buf.data(), c.count, c.dtype, c.op, P);
      std::lock_guard<std::mutex> lock(mu);
      if (!err.empty()) failures.push_back(str("rank ", g.rank(), ", count ", c.count, ": ", err));
      digests[k][static_cast<size_t>(g.rank())] = testutil::digest(buf.data(), buf.size());
    }
  });
  for (const auto& f : failures) ADD_FAILURE() << f;
  for (size_t k = 0; k < cases.size(); ++k) {
    for (int r = 1; r < P; ++r) {
      EXPECT_EQ(digests[k][static_cast<size_t>(r)], digests[k][0])
          << "rank " << r << " differs from rank 0 for count " << cases[k].count << " "
          << dtypeName(cases[k].dtype) << " " << reduceOpName(cases[k].op);
    }
  }
}

// Two async all-reduces in flight at once, the algorithm named in the options rather than
// by the group, waited for in the opposite order.
TEST_P(AllreduceTest, AsyncFormMatchesReference) {
  const auto& [transport, P, algo] = GetParam();
  testutil::RankOptions opts;
  opts.transport = transport;
  testutil::runRanks(P, opts, [&, algo = algo, P = P](ProcessGroup& g) {
    std::vector<uint8_t> a = makeInput(g.rank(), 1001, DType::kFloat64, ReduceOp::kAvg);
    std::vector<uint8_t> b = makeInput(g.rank(), 77, DType::kInt32, ReduceOp::kProd);
    AllreduceOptions oa;
    oa.data = a.data();
    oa.count = 1001;
    oa.dtype = DType::kFloat64;
    oa.op = ReduceOp::kAvg;
    oa.algo = algo;
    AllreduceOptions ob = oa;
    ob.data = b.data();
    ob.count = 77;
    ob.dtype = DType::kInt32;
    ob.op = ReduceOp::kProd;
    WorkPtr wa = g.allreduceAsync(oa);
    WorkPtr wb = g.allreduceAsync(ob);
    wb->wait();
    wa->wait();
    EXPECT_EQ(checkReduced(a.data(), 1001, DType::kFloat64, ReduceOp::kAvg, P), "");
    EXPECT_EQ(checkReduced(b.data(), 77, DType::kInt32, ReduceOp::kProd, P), "");
  });
}

std::string paramName(const ::testing::TestParamInfo<Param>& info) {
  return str(std::get<0>(info.param), "_", std::get<1>(info.param), "ranks_", algoName(std::get<2>(info.param)));
}

INSTANTIATE_TEST_SUITE_P(All, AllreduceTest,
                         ::testing::Combine(::testing::ValuesIn(testutil::testTransports()),
                                            ::testing::Values(1, 2, 3, 4, 5, 8),
                                            ::testing::Values(AllreduceAlgo::kRing, AllreduceAlgo::kHalvingDoubling,
                                                              AllreduceAlgo::kTree, AllreduceAlgo::kDirect,
                                                              AllreduceAlgo::kAuto)),
                         paramName);

// kAuto's table: hd for small messages; direct past that on shm, and for medium messages
// when the world is not a power of two; tree for medium messages on many ranks; ring otherwise.
const Links kShm{.sharedMemory = true, .hosts = 1, .largestHost = 8};
const Links kTcp{.sharedMemory = false, .hosts = 1, .largestHost = 8};

TEST(AllreduceChoice, AutoPicksByBytesAndRanks) {
  EXPECT_EQ(chooseAllreduceAlgo(1 << 20, 1, kShm), AllreduceAlgo::kRing);
  EXPECT_EQ(chooseAllreduceAlgo(64, 8, kShm), AllreduceAlgo::kHalvingDoubling);
  EXPECT_EQ(chooseAllreduceAlgo(64, 8, kTcp), AllreduceAlgo::kHalvingDoubling);
  EXPECT_EQ(chooseAllreduceAlgo(size_t{64} << 20, 8, kTcp), AllreduceAlgo::kRing);
  EXPECT_EQ(chooseAllreduceAlgo(size_t{64} << 20, 64, kTcp), AllreduceAlgo::kRing);
  EXPECT_EQ(chooseAllreduceAlgo(size_t{1} << 20, 64, kTcp), AllreduceAlgo::kTree);
  // Halving-doubling reaches further with a power-of-two world; others fold ranks and stop early.
  EXPECT_EQ(chooseAllreduceAlgo(size_t{64} << 10, 4, kShm), AllreduceAlgo::kHalvingDoubling);
  EXPECT_EQ(chooseAllreduceAlgo(size_t{512} << 10, 4, kTcp), AllreduceAlgo::kHalvingDoubling);
  EXPECT_EQ(chooseAllreduceAlgo(size_t{16} << 10, 3, kTcp), AllreduceAlgo::kHalvingDoubling);
  // Past hd, ranks sharing memory go direct at every size.
  EXPECT_EQ(chooseAllreduceAlgo(size_t{64} << 10, 3, kShm), AllreduceAlgo::kDirect);
  EXPECT_EQ(chooseAllreduceAlgo(size_t{64} << 20, 4, kShm), AllreduceAlgo::kDirect);
  EXPECT_EQ(chooseAllreduceAlgo(size_t{64} << 20, 2, kShm), AllreduceAlgo::kDirect);
  // On tcp, direct takes medium messages of non-power-of-two worlds; large ones go ring.
  EXPECT_EQ(chooseAllreduceAlgo(size_t{512} << 10, 3, kTcp), AllreduceAlgo::kDirect);
  EXPECT_EQ(chooseAllreduceAlgo(size_t{4} << 20, 3, kTcp), AllreduceAlgo::kRing);
  EXPECT_EQ(chooseAllreduceAlgo(size_t{64} << 20, 4, kTcp), AllreduceAlgo::kRing);
  // Across hosts with a shared host: hierarchical at every size; one rank per host: flat.
  const Links twoByTwo{.sharedMemory = false, .hosts = 2, .largestHost = 2};
  const Links onePerHost{.sharedMemory = false, .hosts = 4, .largestHost = 1};
  EXPECT_EQ(chooseAllreduceAlgo(64, 4, twoByTwo), AllreduceAlgo::kHierarchical);
  EXPECT_EQ(chooseAllreduceAlgo(size_t{64} << 20, 4, twoByTwo), AllreduceAlgo::kHierarchical);
  EXPECT_EQ(chooseAllreduceAlgo(size_t{64} << 20, 4, onePerHost), AllreduceAlgo::kRing);
}

TEST(AllreduceMpi, NeedsTheMpiTransport) {
  auto outcome = testutil::runRanksCollect(2, {}, [](ProcessGroup& g) {
    float x = 1;
    AllreduceOptions o;
    o.data = &x;
    o.count = 1;
    o.algo = AllreduceAlgo::kMpi;
    g.allreduce(o);
  });
  for (const auto& e : outcome) {
    ASSERT_TRUE(e);
    EXPECT_THROW(std::rethrow_exception(e), InvalidArgument);
    EXPECT_NE(testutil::messageOf(e).find("--algo mpi needs the mpi transport under mpirun"), std::string::npos)
        << testutil::messageOf(e);
  }
}

}  // namespace
}  // namespace chorus::comm
