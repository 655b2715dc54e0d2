// ProcessGroup on every transport: async handles, the order of mixed blocking and async
// calls, sub-groups of 2x2 and 2x3 meshes, tagged send/recv, and failures — ranks that
// disagree about a call (MismatchError, not a hang or corruption), a rank that never calls
// (TimeoutError within the timeout, naming the op and tag), a rank that dies (PeerError).
// Timeouts here are a few seconds so a failure is quick.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/comm/group.h"
#include "chorus/comm/rendezvous/bootstrap.h"
#include "util/collective_reference.h"
#include "util/rank_threads.h"

namespace chorus::comm {
namespace {

using testutil::checkReduced;
using testutil::makeInput;
using testutil::messageOf;

AllreduceOptions allreduceOf(std::vector<uint8_t>& buf, size_t count, DType dtype, ReduceOp op,
                             AllreduceAlgo algo = AllreduceAlgo::kAuto) {
  AllreduceOptions o;
  o.data = buf.data();
  o.count = count;
  o.dtype = dtype;
  o.op = op;
  o.algo = algo;
  return o;
}

double secondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

class GroupTest : public ::testing::TestWithParam<std::string> {
 protected:
  testutil::RankOptions options(Millis timeout = Millis(5000)) const {
    testutil::RankOptions o;
    o.transport = GetParam();
    o.timeout = timeout;
    return o;
  }
};

// ---- Async handles and ordering ----

TEST_P(GroupTest, SeveralAsyncAllreducesInFlight) {
  const int P = 4;
  testutil::runRanks(P, options(), [&](ProcessGroup& g) {
    struct Pending {
      std::vector<uint8_t> buf;
      size_t count;
      DType dtype;
      ReduceOp op;
      WorkPtr work;
    };
    std::vector<Pending> calls;
    const size_t counts[] = {1, 1000, 300007, 7, 65537, 0};
    const DType dtypes[] = {DType::kFloat32, DType::kInt64, DType::kFloat16, DType::kUInt8, DType::kBFloat16,
                            DType::kFloat64};
    const ReduceOp ops[] = {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kSum, ReduceOp::kMin, ReduceOp::kProd,
                            ReduceOp::kAvg};
    for (int k = 0; k < 6; ++k) calls.push_back({makeInput(g.rank(), counts[k], dtypes[k], ops[k]), counts[k], dtypes[k], ops[k], nullptr});
    for (auto& c : calls) c.work = g.allreduceAsync(allreduceOf(c.buf, c.count, c.dtype, c.op));
    // test() never blocks and, before completion, reports false without throwing.
    for (auto& c : calls) (void)c.work->test();
    for (auto it = calls.rbegin(); it != calls.rend(); ++it) it->work->wait();
    for (auto& c : calls) {
      EXPECT_TRUE(c.work->test());
      EXPECT_EQ(checkReduced(c.buf.data(), c.count, c.dtype, c.op, P), "");
    }
  });
}

TEST_P(GroupTest, TestPollsUntilDone) {
  testutil::runRanks(3, options(), [&](ProcessGroup& g) {
    std::vector<uint8_t> buf = makeInput(g.rank(), 200003, DType::kFloat32, ReduceOp::kSum);
    WorkPtr w = g.allreduceAsync(allreduceOf(buf, 200003, DType::kFloat32, ReduceOp::kSum));
    const Deadline deadline(Millis(5000));
    while (!w->test()) {
      ASSERT_FALSE(deadline.expired()) << "test() never reported completion";
      std::this_thread::yield();
    }
    EXPECT_EQ(checkReduced(buf.data(), 200003, DType::kFloat32, ReduceOp::kSum, 3), "");
  });
}

TEST_P(GroupTest, MixedBlockingAndAsyncCallsRunInIssueOrder) {
  const int P = 3;
  testutil::runRanks(P, options(), [&](ProcessGroup& g) {
    std::vector<uint8_t> a = makeInput(g.rank(), 500009, DType::kFloat32, ReduceOp::kSum);
    std::vector<uint8_t> c = makeInput(g.rank(), 1001, DType::kInt32, ReduceOp::kMax);
    std::vector<uint8_t> d = makeInput(g.rank(), 77, DType::kFloat64, ReduceOp::kAvg);
    std::vector<int32_t> b(100, g.rank() == 1 ? 42 : 0);

    WorkPtr wa = g.allreduceAsync(allreduceOf(a, 500009, DType::kFloat32, ReduceOp::kSum));
    BroadcastOptions bo;
    bo.data = b.data();
    bo.count = b.size();
    bo.dtype = DType::kInt32;
    bo.root = 1;
    g.broadcast(bo);
    // A blocking call returns only after everything issued before it.
    EXPECT_TRUE(wa->test());
    WorkPtr wc = g.allreduceAsync(allreduceOf(c, 1001, DType::kInt32, ReduceOp::kMax));
    WorkPtr wb = g.barrierAsync();
    g.allreduce(allreduceOf(d, 77, DType::kFloat64, ReduceOp::kAvg));
    EXPECT_TRUE(wc->test());
    EXPECT_TRUE(wb->test());
    wa->wait();
    wc->wait();
    for (int32_t x : b) ASSERT_EQ(x, 42);
    EXPECT_EQ(checkReduced(a.data(), 500009, DType::kFloat32, ReduceOp::kSum, P), "");
    EXPECT_EQ(checkReduced(c.data(), 1001, DType::kInt32, ReduceOp::kMax, P), "");
    EXPECT_EQ(checkReduced(d.data(), 77, DType::kFloat64, ReduceOp::kAvg, P), "");
  });
}

TEST_P(GroupTest, AsyncFailureIsRethrownByWaitAndTest) {
  auto outcome = testutil::runRanksCollect(2, options(Millis(500)), [&](ProcessGroup& g) {
    if (g.rank() == 1) return;  // never joins
    std::vector<uint8_t> buf = makeInput(0, 10, DType::kFloat32, ReduceOp::kSum);
    WorkPtr w = g.allreduceAsync(allreduceOf(buf, 10, DType::kFloat32, ReduceOp::kSum));
    EXPECT_THROW(w->wait(), TimeoutError);
    EXPECT_THROW(w->test(), TimeoutError);
  });
  EXPECT_FALSE(outcome[0]) << messageOf(outcome[0]);
}

// ---- Sub-groups ----

// rows x cols ranks; row groups and column groups; an all-reduce over a row then over a
// column equals one over the world.
void checkMesh(const testutil::RankOptions& opts, int rows, int cols) {
  const int P = rows * cols;
  testutil::runRanks(P, opts, [&](ProcessGroup& g) {
    const int row = g.rank() / cols, col = g.rank() % cols;
    auto rowGroup = g.split(row, g.rank());
    auto colGroup = g.split(col, g.rank());
    ASSERT_TRUE(rowGroup && colGroup);
    EXPECT_EQ(rowGroup->size(), cols);
    EXPECT_EQ(rowGroup->rank(), col);
    EXPECT_EQ(colGroup->size(), rows);
    EXPECT_EQ(colGroup->rank(), row);
    for (int i = 0; i < cols; ++i) EXPECT_EQ(rowGroup->globalRank(i), row * cols + i);
    for (int i = 0; i < rows; ++i) EXPECT_EQ(colGroup->globalRank(i), i * cols + col);

    for (DType dtype : {DType::kFloat32, DType::kInt64, DType::kBFloat16}) {
      std::vector<uint8_t> buf = makeInput(g.rank(), 1003, dtype, ReduceOp::kSum);
      // The row all-reduce is async and the column one blocking: they share one executor, so
      // the column call waits for the row call.
      WorkPtr w = rowGroup->allreduceAsync(allreduceOf(buf, 1003, dtype, ReduceOp::kSum));
      colGroup->allreduce(allreduceOf(buf, 1003, dtype, ReduceOp::kSum));
      EXPECT_TRUE(w->test());
      EXPECT_EQ(checkReduced(buf.data(), 1003, dtype, ReduceOp::kSum, P), "");
    }
    // Collectives of several kinds on the sub-groups, interleaved with the world group.
    std::vector<int32_t> token(5, row == 0 ? col + 100 : -1);
    BroadcastOptions bo;
    bo.data = token.data();
    bo.count = token.size();
    bo.dtype = DType::kInt32;
    bo.root = 0;
    colGroup->broadcast(bo);
    for (int32_t x : token) EXPECT_EQ(x, col + 100);
    g.barrier();
    std::vector<int32_t> gathered(static_cast<size_t>(cols));
    int32_t mine = g.rank();
    AllgatherOptions ao;
    ao.input = &mine;
    ao.output = gathered.data();
    ao.count = 1;
    ao.dtype = DType::kInt32;
    rowGroup->allgather(ao);
    for (int i = 0; i < cols; ++i) EXPECT_EQ(gathered[static_cast<size_t>(i)], row * cols + i);
  });
}

TEST_P(GroupTest, SplitTwoByTwoMesh) { checkMesh(options(), 2, 2); }
TEST_P(GroupTest, SplitTwoByThreeMesh) { checkMesh(options(), 2, 3); }

TEST_P(GroupTest, SplitOrdersByKeyAndSkipsNegativeColors) {
  const int P = 5;
  testutil::runRanks(P, options(), [&](ProcessGroup& g) {
    // Ranks 0..3 join color 7 with descending keys; rank 4 joins nothing.
    const int color = g.rank() == 4 ? -1 : 7;
    auto sub = g.split(color, -g.rank());
    if (g.rank() == 4) {
      EXPECT_EQ(sub, nullptr);
    } else {
      ASSERT_TRUE(sub);
      EXPECT_EQ(sub->size(), 4);
      EXPECT_EQ(sub->rank(), 3 - g.rank());
      EXPECT_EQ(sub->globalRank(0), 3);
    }
    // A split of a split, then collectives on every level.
    std::shared_ptr<ProcessGroup> pair;
    if (sub) {
      pair = sub->split(sub->rank() / 2, 0);
      ASSERT_TRUE(pair);
      EXPECT_EQ(pair->size(), 2);
      std::vector<uint8_t> buf = makeInput(pair->rank(), 33, DType::kInt32, ReduceOp::kSum);
      pair->allreduce(allreduceOf(buf, 33, DType::kInt32, ReduceOp::kSum));
      EXPECT_EQ(checkReduced(buf.data(), 33, DType::kInt32, ReduceOp::kSum, 2), "");
    }
    std::vector<uint8_t> buf = makeInput(g.rank(), 17, DType::kFloat32, ReduceOp::kMax);
    g.allreduce(allreduceOf(buf, 17, DType::kFloat32, ReduceOp::kMax));
    EXPECT_EQ(checkReduced(buf.data(), 17, DType::kFloat32, ReduceOp::kMax, P), "");
  });
}

// ---- Point-to-point ----

std::vector<uint8_t> pattern(size_t bytes, int seed) {
  std::vector<uint8_t> v(bytes);
  for (size_t i = 0; i < bytes; ++i) v[i] = static_cast<uint8_t>((i * 131 + static_cast<size_t>(seed) * 17) % 251);
  return v;
}

TEST_P(GroupTest, SendRecvMatchesByTagInAnyOrder) {
  testutil::runRanks(2, options(), [&](ProcessGroup& g) {
    const size_t big = size_t{1} << 20, small = 100;
    if (g.rank() == 0) {
      auto a = pattern(big, 1), b = pattern(small, 2), c = pattern(big, 3);
      WorkPtr wa = g.sendAsync(1, 1, a.data(), a.size());
      WorkPtr wb = g.sendAsync(1, 2, b.data(), b.size());
      WorkPtr wc = g.sendAsync(1, 0x12345678u, c.data(), c.size());
      wa->wait();
      wb->wait();
      wc->wait();
    } else {
      std::vector<uint8_t> a(big), b(small), c(big);
      g.recv(0, 0x12345678u, c.data(), c.size());
      g.recv(0, 2, b.data(), b.size());
      WorkPtr wa = g.recvAsync(0, 1, a.data(), a.size());
      wa->wait();
      EXPECT_EQ(a, pattern(big, 1));
      EXPECT_EQ(b, pattern(small, 2));
      EXPECT_EQ(c, pattern(big, 3));
    }
  });
}

TEST_P(GroupTest, ExchangeWithAsyncSendsDoesNotDeadlock) {
  const int P = 4;
  testutil::runRanks(P, options(), [&](ProcessGroup& g) {
    const size_t bytes = size_t{4} << 20;
    const int right = (g.rank() + 1) % P, left = (g.rank() + P - 1) % P;
    auto out = pattern(bytes, g.rank());
    std::vector<uint8_t> in(bytes);
    WorkPtr s = g.sendAsync(right, 7, out.data(), bytes);
    g.recv(left, 7, in.data(), bytes);
    s->wait();
    EXPECT_EQ(in, pattern(bytes, left));
  });
}

TEST_P(GroupTest, SendRecvInterleavedWithCollectives) {
  const int P = 3;
  testutil::runRanks(P, options(), [&](ProcessGroup& g) {
    auto msg = pattern(5000, 9);
    std::vector<uint8_t> got(5000);
    WorkPtr w;
    if (g.rank() == 0) w = g.sendAsync(2, 3, msg.data(), msg.size());
    if (g.rank() == 2) w = g.recvAsync(0, 3, got.data(), got.size());
    std::vector<uint8_t> buf = makeInput(g.rank(), 999, DType::kInt32, ReduceOp::kSum);
    g.allreduce(allreduceOf(buf, 999, DType::kInt32, ReduceOp::kSum));
    EXPECT_EQ(checkReduced(buf.data(), 999, DType::kInt32, ReduceOp::kSum, P), "");
    if (w) {
      const Deadline deadline(Millis(5000));
      while (!w->test()) ASSERT_FALSE(deadline.expired());
    }
    if (g.rank() == 2) {
      EXPECT_EQ(got, msg);
    }
  });
}

TEST_P(GroupTest, RecvOfWrongSizeIsMismatch) {
  auto outcome = testutil::runRanksCollect(2, options(Millis(3000)), [&](ProcessGroup& g) {
    std::vector<uint8_t> buf(64);
    if (g.rank() == 0) {
      g.send(1, 5, buf.data(), 64);
    } else {
      g.recv(0, 5, buf.data(), 32);
    }
  });
  ASSERT_TRUE(outcome[1]);
  EXPECT_THROW(std::rethrow_exception(outcome[1]), MismatchError);
  EXPECT_NE(messageOf(outcome[1]).find("recv from rank 0 (32 bytes) tag=5 on rank 1 of 2"), std::string::npos)
      << messageOf(outcome[1]);
}

TEST_P(GroupTest, SendToSelfOrOutsideGroupIsInvalid) {
  testutil::runRanks(2, options(), [&](ProcessGroup& g) {
    char x = 0;
    EXPECT_THROW(g.send(g.rank(), 1, &x, 1), InvalidArgument);
    EXPECT_THROW(g.recv(2, 1, &x, 1), InvalidArgument);
    EXPECT_THROW(g.sendAsync(-1, 1, &x, 1), InvalidArgument);
  });
}

// ---- Failures ----

// Every rank fails, quickly, and at least one names the disagreement.
void expectMismatch(const std::vector<std::exception_ptr>& outcome, double seconds, double limit) {
  int mismatches = 0;
  for (size_t r = 0; r < outcome.size(); ++r) {
    ASSERT_TRUE(outcome[r]) << "rank " << r << " completed a call its peers disagreed with";
    try {
      std::rethrow_exception(outcome[r]);
    } catch (const MismatchError&) {
      ++mismatches;
    } catch (const PeerError&) {
    } catch (const TimeoutError&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "rank " << r << ": unexpected " << e.what();
    }
  }
  EXPECT_GE(mismatches, 1);
  EXPECT_LT(seconds, limit);
}

// The last rank passes a different count, dtype or op: the signatures differ, so the first
// message between it and a neighbour fails with MismatchError.
TEST_P(GroupTest, MismatchedCountsDtypesOrOpsFailWithMismatch) {
  struct Variant {
    const char* what;
    std::function<void(AllreduceOptions&)> change;  // applied on the last rank only
  };
  const Variant variants[] = {
      {"count", [](AllreduceOptions& o) { o.count -= 1; }},
      {"dtype", [](AllreduceOptions& o) { o.dtype = DType::kInt32; }},
      {"op", [](AllreduceOptions& o) { o.op = ReduceOp::kMax; }},
  };
  for (int P : {2, 3, 4, 5}) {
    for (AllreduceAlgo algo : {AllreduceAlgo::kRing, AllreduceAlgo::kHalvingDoubling, AllreduceAlgo::kTree,
                               AllreduceAlgo::kDirect}) {
      for (const Variant& v : variants) {
        SCOPED_TRACE(str(v.what, " differs, ", algoName(algo), " on ", P, " ranks"));
        const auto start = Clock::now();
        auto outcome = testutil::runRanksCollect(P, options(Millis(3000)), [&, P, algo](ProcessGroup& g) {
          std::vector<float> buf(1000, 1.0f);
          AllreduceOptions o;
          o.data = buf.data();
          o.count = 1000;
          o.algo = algo;
          if (g.rank() == P - 1) v.change(o);
          g.allreduce(o);
        });
        expectMismatch(outcome, secondsSince(start), 3.0 + 2.0);
      }
    }
  }
}

// Ranks told to run different algorithms exchange messages in different patterns, which may
// never meet: each rank then fails with MismatchError where they do, else TimeoutError —
// never a wrong result, never past the timeout.
TEST_P(GroupTest, DifferentAlgorithmsFailWithinTheTimeout) {
  for (int P : {3, 4}) {
    for (AllreduceAlgo other : {AllreduceAlgo::kHalvingDoubling, AllreduceAlgo::kTree}) {
      SCOPED_TRACE(str(algoName(other), " instead of ring on the last of ", P, " ranks"));
      const auto start = Clock::now();
      auto outcome = testutil::runRanksCollect(P, options(Millis(1000)), [&, P, other](ProcessGroup& g) {
        std::vector<float> buf(1000, 1.0f);
        AllreduceOptions o;
        o.data = buf.data();
        o.count = 1000;
        o.algo = g.rank() == P - 1 ? other : AllreduceAlgo::kRing;
        g.allreduce(o);
      });
      EXPECT_LT(secondsSince(start), 1.0 + 2.0);
      for (size_t r = 0; r < outcome.size(); ++r) {
        ASSERT_TRUE(outcome[r]) << "rank " << r << " completed";
        try {
          std::rethrow_exception(outcome[r]);
        } catch (const MismatchError&) {
        } catch (const PeerError&) {
        } catch (const TimeoutError&) {
        } catch (const std::exception& e) {
          ADD_FAILURE() << "rank " << r << ": unexpected " << e.what();
        }
      }
    }
  }
}

TEST_P(GroupTest, MismatchedCollectiveKindsFailWithMismatch) {
  const auto start = Clock::now();
  auto outcome = testutil::runRanksCollect(2, options(Millis(3000)), [&](ProcessGroup& g) {
    std::vector<float> buf(64, 1.0f), out(128);
    if (g.rank() == 0) {
      AllreduceOptions o;
      o.data = buf.data();
      o.count = 64;
      o.algo = AllreduceAlgo::kRing;
      g.allreduce(o);
    } else {
      AllgatherOptions o;
      o.input = buf.data();
      o.output = out.data();
      o.count = 64;
      g.allgather(o);
    }
  });
  expectMismatch(outcome, secondsSince(start), 5.0);
}

TEST_P(GroupTest, RankThatNeverCallsTimesOutNamingOpAndTag) {
  const int P = 3;
  const auto start = Clock::now();
  std::vector<double> elapsed(P, 0);
  // The waiting ranks fail at their timeout. The first to fail closes its transport (a failed
  // call leaves nothing posted behind), so the other may instead hear that this peer closed:
  // TimeoutError or PeerError, but never later than the timeout, and at least one timeout.
  testutil::RankOptions opts = options(Millis(1000));
  opts.closeOnError = false;
  auto outcome = testutil::runRanksCollect(P, opts, [&](ProcessGroup& g) {
    if (g.rank() == 2) return;  // never joins
    std::vector<float> buf(1000, 1.0f);
    AllreduceOptions o;
    o.data = buf.data();
    o.count = 1000;
    o.algo = AllreduceAlgo::kRing;
    try {
      g.allreduce(o);
    } catch (...) {
      elapsed[static_cast<size_t>(g.rank())] = secondsSince(start);
      throw;
    }
  });
  EXPECT_FALSE(outcome[2]);
  int timeouts = 0;
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(outcome[static_cast<size_t>(r)]) << "rank " << r << " finished without rank 2";
    const std::string msg = messageOf(outcome[static_cast<size_t>(r)]);
    try {
      std::rethrow_exception(outcome[static_cast<size_t>(r)]);
    } catch (const TimeoutError&) {
      ++timeouts;
    } catch (const PeerError&) {
    } catch (...) {
      ADD_FAILURE() << "rank " << r << ": expected TimeoutError or PeerError: " << msg;
    }
    EXPECT_EQ(msg.rfind(str("allreduce(ring, count=1000, float32, sum) tag=0 on rank ", r, " of 3: "), 0), 0u) << msg;
    EXPECT_GE(elapsed[static_cast<size_t>(r)], 0.9);
    EXPECT_LT(elapsed[static_cast<size_t>(r)], 1.0 + 1.5);
  }
  EXPECT_GE(timeouts, 1);
}

TEST_P(GroupTest, PerCallTimeoutOverridesTheGroups) {
  auto outcome = testutil::runRanksCollect(2, options(Millis(30000)), [&](ProcessGroup& g) {
    if (g.rank() == 1) return;
    const auto start = Clock::now();
    float x = 1;
    AllreduceOptions o;
    o.data = &x;
    o.count = 1;
    o.timeout = Millis(300);
    o.tag = 99;
    try {
      g.allreduce(o);
      ADD_FAILURE() << "all-reduce completed without rank 1";
    } catch (const TimeoutError& e) {
      EXPECT_LT(secondsSince(start), 2.0);
      EXPECT_NE(std::string(e.what()).find("tag=99"), std::string::npos) << e.what();
    }
  });
  EXPECT_FALSE(outcome[0]) << messageOf(outcome[0]);
}

TEST_P(GroupTest, DeadPeerFailsWithPeerErrorBeforeTheTimeout) {
  const auto start = Clock::now();
  auto outcome = testutil::runRanksCollect(3, options(Millis(10000)), [&](ProcessGroup& g) {
    if (g.rank() == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      throw Error("rank 1 dies");  // the harness closes its transport
    }
    std::vector<float> buf(100000, 1.0f);
    AllreduceOptions o;
    o.data = buf.data();
    o.count = buf.size();
    o.algo = AllreduceAlgo::kRing;
    g.allreduce(o);
  });
  EXPECT_LT(secondsSince(start), 8.0);
  for (int r : {0, 2}) {
    ASSERT_TRUE(outcome[static_cast<size_t>(r)]);
    try {
      std::rethrow_exception(outcome[static_cast<size_t>(r)]);
    } catch (const PeerError& e) {
      EXPECT_NE(std::string(e.what()).find("allreduce(ring"), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "rank " << r << ": expected PeerError, got " << e.what();
    }
  }
}

// A blocking send/recv that fails on its own (its peer died) leaves nothing posted: it throws
// PeerError naming the peer, and the group goes on with its other peers (a parameter server's
// worker waiting for a restarted server relies on this).
TEST_P(GroupTest, BlockingRecvFromADeadPeerLeavesTheGroupOpen) {
  auto outcome = testutil::runRanksCollect(3, options(Millis(5000)), [&](ProcessGroup& g) {
    if (g.rank() == 1) throw Error("rank 1 dies");  // the harness closes its transport
    int v = 0;
    if (g.rank() == 0) {
      try {
        g.recv(1, 7, &v, sizeof v);
        ADD_FAILURE() << "a recv from a dead peer returned";
      } catch (const PeerError& e) {
        EXPECT_EQ(e.peer(), 1) << e.what();
      }
      v = 42;
      g.send(2, 8, &v, sizeof v);
      g.recv(2, 9, &v, sizeof v);
      EXPECT_EQ(v, 43);
    } else {
      g.recv(0, 8, &v, sizeof v);
      v += 1;
      g.send(0, 9, &v, sizeof v);
    }
  });
  EXPECT_FALSE(outcome[0]) << messageOf(outcome[0]);
  EXPECT_FALSE(outcome[2]) << messageOf(outcome[2]);
}

// A failed call closes the transport, so nothing it left posted can write into buffers the
// caller has freed; later calls fail at once instead of running on a broken group. Bad
// arguments are caught before anything is posted and leave the group usable.
TEST_P(GroupTest, FailedCallClosesTheGroupButBadArgumentsDoNot) {
  auto outcome = testutil::runRanksCollect(2, options(Millis(3000)), [&](ProcessGroup& g) {
    AllreduceOptions bad;
    bad.data = nullptr;
    bad.count = 10;
    EXPECT_THROW(g.allreduce(bad), InvalidArgument);
    std::vector<float> buf(1000, 1.0f);
    AllreduceOptions o;
    o.data = buf.data();
    o.count = 1000;
    g.allreduce(o);  // still works
    EXPECT_EQ(buf[0], 2.0f);
    o.count = g.rank() == 0 ? 1000 : 999;
    EXPECT_THROW(g.allreduce(o), Error);
    o.count = 1000;
    const auto start = Clock::now();
    EXPECT_THROW(g.allreduce(o), Error);
    EXPECT_LT(secondsSince(start), 1.0) << "a call on a closed group must fail at once";
  });
  for (const auto& e : outcome) EXPECT_FALSE(e) << messageOf(e);
}

TEST_P(GroupTest, DefaultTimeoutComesFromTheEnvironment) {
  testutil::RankOptions o = options();
  o.timeout = Millis(0);
  testutil::runRanks(1, o, [&](ProcessGroup& g) { EXPECT_EQ(g.timeout(), defaultTimeout()); });
}

INSTANTIATE_TEST_SUITE_P(All, GroupTest, ::testing::ValuesIn(testutil::testTransports()),
                         [](const auto& info) { return info.param; });

// A process started outside any launcher is a job of one rank.
TEST(GroupFromEnvironment, SingleRankJob) {
  if (detectBootstrap().source != "single") GTEST_SKIP() << "running inside a launcher";
  auto g = ProcessGroup::fromEnvironment();
  ASSERT_TRUE(g);
  EXPECT_EQ(g->size(), 1);
  EXPECT_EQ(g->rank(), 0);
  std::vector<float> buf = {1, 2, 3};
  AllreduceOptions o;
  o.data = buf.data();
  o.count = 3;
  o.op = ReduceOp::kAvg;
  g->allreduce(o);
  EXPECT_EQ(buf, (std::vector<float>{1, 2, 3}));
}

}  // namespace
}  // namespace chorus::comm
