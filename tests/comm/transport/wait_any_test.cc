// Waiting for the first of several requests, on the loopback, shm and tcp transports: first
// Transport::waitAny itself, then ProcessGroup::waitAny over recvAsync works, the way a
// parameter server waits on its workers. Arrival order is forced by causality, not by sleeps:
// rank 0 lets the next sender go only once waitAny has returned the previous one, so a
// waitAny that waited for more than one request would time out instead.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/group.h"
#include "chorus/comm/rendezvous/memory_store.h"
#include "chorus/comm/transport/factory.h"
#include "util/loopback_transport.h"
#include "util/rank_threads.h"

namespace chorus::comm {
namespace {

using testutil::messageOf;

constexpr Millis kTimeout(5000);

std::vector<uint8_t> pattern(size_t n, int seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>((i * 131 + static_cast<size_t>(seed) * 17) % 251);
  return v;
}

double secondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---- Transport::waitAny ----

using TransportFn = std::function<void(Transport&)>;
std::atomic<int> jobCounter{0};

// Runs fn on n ranks, threads of this process, each with its own transport of `kind`; a rank
// that throws closes its transport (so its peers see it gone). Returns each rank's outcome.
std::vector<std::exception_ptr> runTransports(const std::string& kind, int n, const TransportFn& fn) {
  std::vector<std::unique_ptr<Transport>> ts(static_cast<size_t>(n));
  if (kind == "loopback") ts = testutil::createLoopbackTransports(n);
  MemoryStore store;
  const std::string job = str("wa", getpid(), "-", jobCounter++);
  std::vector<std::exception_ptr> outcome(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      auto& t = ts[static_cast<size_t>(r)];
      try {
        if (!t) {
          TransportOptions o;
          o.rank = r;
          o.size = n;
          o.store = &store;
          o.prefix = job;
          o.jobId = job;
          o.secret = "wait-any-secret";
          o.timeout = Millis(30000);
          o.bindAddr = "127.0.0.1";
          if (kind == "mixed") o.host = str("host", testutil::defaultHosts(n)[static_cast<size_t>(r)]);
          t = createTransport(kind, o);
        }
        fn(*t);
      } catch (...) {
        outcome[static_cast<size_t>(r)] = std::current_exception();
        if (t) t->close();
      }
    });
  }
  for (auto& th : threads) th.join();
  return outcome;
}

void expectAllOk(const std::vector<std::exception_ptr>& outcome) {
  for (size_t r = 0; r < outcome.size(); ++r) EXPECT_FALSE(outcome[r]) << "rank " << r << ": " << messageOf(outcome[r]);
}

void waitOne(Transport& t, const RequestPtr& r) {
  RequestPtr one[] = {r};
  t.waitAll(one, Deadline(kTimeout));
}

class TransportWaitAny : public ::testing::TestWithParam<std::string> {};

// Rank 0 receives from ranks 1 and 2 (one small message, one large enough for the shm CMA path
// and several tcp chunks); rank 2 sends first, rank 1 only when rank 0 says so.
TEST_P(TransportWaitAny, ReturnsTheRequestThatArrivedFirst) {
  const size_t small = 100, large = size_t{1} << 20;
  expectAllOk(runTransports(GetParam(), 3, [&](Transport& t) {
    uint8_t go = 1;
    if (t.rank() == 0) {
      std::vector<uint8_t> from1(large), from2(small);
      std::vector<RequestPtr> reqs = {t.irecv(1, 1, 0, from1.data(), large), t.irecv(2, 2, 0, from2.data(), small)};
      EXPECT_EQ(t.waitAny(reqs, Deadline(kTimeout)), 1u);
      EXPECT_FALSE(checkDone(*reqs[0]));
      EXPECT_EQ(from2, pattern(small, 2));
      EXPECT_EQ(t.waitAny(reqs, Deadline(kTimeout)), 1u) << "a done request is returned again, first in order";
      waitOne(t, t.isend(1, 9, 0, &go, 1));
      const std::vector<RequestPtr> rest = {reqs[0]};
      EXPECT_EQ(t.waitAny(rest, Deadline(kTimeout)), 0u);
      EXPECT_TRUE(checkDone(*reqs[0]));
      EXPECT_EQ(from1, pattern(large, 1));
    } else if (t.rank() == 1) {
      waitOne(t, t.irecv(0, 9, 0, &go, 1));
      auto out = pattern(large, 1);
      waitOne(t, t.isend(0, 1, 0, out.data(), large));
    } else {
      auto out = pattern(small, 2);
      waitOne(t, t.isend(0, 2, 0, out.data(), small));
    }
  }));
}

TEST_P(TransportWaitAny, RejectsAnEmptyListOrANullRequest) {
  expectAllOk(runTransports(GetParam(), 2, [&](Transport& t) {
    uint8_t x = 0;
    EXPECT_THROW(t.waitAny({}, Deadline(kTimeout)), InvalidArgument);
    if (t.rank() == 0) {
      std::vector<RequestPtr> reqs = {t.irecv(1, 1, 0, &x, 1), nullptr};
      EXPECT_THROW(t.waitAny(reqs, Deadline(kTimeout)), InvalidArgument);
      reqs.pop_back();
      EXPECT_EQ(t.waitAny(reqs, Deadline(kTimeout)), 0u);
    } else {
      waitOne(t, t.isend(0, 1, 0, &x, 1));
    }
  }));
}

// The deadline ends the wait with TimeoutError naming the pending peer; the requests stay
// posted and still complete afterwards.
TEST_P(TransportWaitAny, TimesOutNamingThePendingPeers) {
  expectAllOk(runTransports(GetParam(), 2, [&](Transport& t) {
    uint8_t go = 1, x = 0;
    if (t.rank() == 0) {
      std::vector<RequestPtr> reqs = {t.irecv(1, 1, 0, &x, 1)};
      const auto start = Clock::now();
      try {
        t.waitAny(reqs, Deadline(Millis(200)));
        ADD_FAILURE() << "waitAny returned with nothing sent";
      } catch (const TimeoutError& e) {
        EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
      }
      EXPECT_LT(secondsSince(start), 3.0);
      waitOne(t, t.isend(1, 9, 0, &go, 1));
      EXPECT_EQ(t.waitAny(reqs, Deadline(kTimeout)), 0u);
      EXPECT_EQ(x, 7);
    } else {
      waitOne(t, t.irecv(0, 9, 0, &go, 1));
      x = 7;
      waitOne(t, t.isend(0, 1, 0, &x, 1));
    }
  }));
}

// A peer that closes: waitAny returns its request without throwing, checkDone throws
// PeerError, and the receive from the other peer still completes.
TEST_P(TransportWaitAny, ReturnsAFailedRequestWithoutThrowing) {
  auto outcome = runTransports(GetParam(), 3, [&](Transport& t) {
    uint8_t go = 1;
    if (t.rank() == 0) {
      uint8_t a = 0, b = 0;
      std::vector<RequestPtr> reqs = {t.irecv(1, 1, 0, &a, 1), t.irecv(2, 2, 0, &b, 1)};
      EXPECT_EQ(t.waitAny(reqs, Deadline(kTimeout)), 0u);
      EXPECT_THROW(checkDone(*reqs[0]), PeerError);
      waitOne(t, t.isend(2, 9, 0, &go, 1));
      const std::vector<RequestPtr> rest = {reqs[1]};
      EXPECT_EQ(t.waitAny(rest, Deadline(kTimeout)), 0u);
      EXPECT_TRUE(checkDone(*reqs[1]));
      EXPECT_EQ(b, 22);
    } else if (t.rank() == 1) {
      t.close();
    } else {
      waitOne(t, t.irecv(0, 9, 0, &go, 1));
      uint8_t b = 22;
      waitOne(t, t.isend(0, 2, 0, &b, 1));
    }
  });
  expectAllOk(outcome);
}

// On a transport closed while requests are pending, waitAny throws Error rather than pick one.
TEST_P(TransportWaitAny, ThrowsOnAClosedTransport) {
  expectAllOk(runTransports(GetParam(), 2, [&](Transport& t) {
    if (t.rank() != 0) return;
    uint8_t x = 0;
    std::vector<RequestPtr> reqs = {t.irecv(1, 1, 0, &x, 1)};
    t.close();
    EXPECT_THROW(t.waitAny(reqs, Deadline(kTimeout)), Error);
  }));
}

INSTANTIATE_TEST_SUITE_P(All, TransportWaitAny, ::testing::ValuesIn(testutil::testTransports()),
                         [](const auto& info) { return info.param; });

// ---- ProcessGroup::waitAny ----

class GroupWaitAny : public ::testing::TestWithParam<std::string> {
 protected:
  testutil::RankOptions options() const {
    testutil::RankOptions o;
    o.transport = GetParam();
    o.timeout = kTimeout;
    return o;
  }
};

constexpr uint32_t kGoTag = 99;

// Rank 0 posts a receive from each of ranks 1..3 (tags and sizes differ); they send in the
// order 2, 3, 1, each only after rank 0 has seen the one before. waitAny over the works still
// pending returns them in that order, with the right data.
TEST_P(GroupWaitAny, ReturnsWorksInArrivalOrder) {
  const std::vector<size_t> bytes = {0, 3000, 17, size_t{1} << 20};  // by sender rank
  const std::vector<int> order = {2, 3, 1};
  testutil::runRanks(4, options(), [&](ProcessGroup& g) {
    uint8_t go = 1;
    if (g.rank() == 0) {
      std::vector<std::vector<uint8_t>> in(4);
      std::vector<WorkPtr> works;
      std::vector<int> sender;  // sender[i]: the rank works[i] receives from
      for (int r = 1; r <= 3; ++r) {
        in[static_cast<size_t>(r)].resize(bytes[static_cast<size_t>(r)]);
        works.push_back(g.recvAsync(r, 100 + static_cast<uint32_t>(r), in[static_cast<size_t>(r)].data(),
                                    bytes[static_cast<size_t>(r)]));
        sender.push_back(r);
      }
      g.send(order[0], kGoTag, &go, 1);
      for (size_t k = 0; k < order.size(); ++k) {
        const size_t i = g.waitAny(works);
        ASSERT_LT(i, works.size());
        const int r = sender[i];
        EXPECT_EQ(r, order[k]) << "arrival " << k;
        EXPECT_TRUE(works[i]->test());
        works[i]->wait();
        EXPECT_EQ(in[static_cast<size_t>(r)], pattern(bytes[static_cast<size_t>(r)], r));
        works.erase(works.begin() + static_cast<std::ptrdiff_t>(i));
        sender.erase(sender.begin() + static_cast<std::ptrdiff_t>(i));
        if (k + 1 < order.size()) g.send(order[k + 1], kGoTag, &go, 1);
      }
    } else {
      g.recv(0, kGoTag, &go, 1);
      auto out = pattern(bytes[static_cast<size_t>(g.rank())], g.rank());
      g.send(0, 100 + static_cast<uint32_t>(g.rank()), out.data(), out.size());
    }
  });
}

// A work that is already done is returned at once, even while the others are pending.
TEST_P(GroupWaitAny, ReturnsAnAlreadyDoneWorkAtOnce) {
  testutil::runRanks(2, options(), [&](ProcessGroup& g) {
    uint8_t go = 1;
    if (g.rank() == 0) {
      uint32_t a = 0, b = 0;
      WorkPtr wa = g.recvAsync(1, 1, &a, sizeof a);
      WorkPtr wb = g.recvAsync(1, 2, &b, sizeof b);
      wb->wait();
      EXPECT_EQ(b, 222u);
      const auto start = Clock::now();
      EXPECT_EQ(g.waitAny({wa, wb}), 1u);
      EXPECT_LT(secondsSince(start), 1.0);
      EXPECT_FALSE(wa->test());
      g.send(1, kGoTag, &go, 1);
      EXPECT_EQ(g.waitAny({wa}), 0u);
      EXPECT_EQ(a, 111u);
    } else {
      uint32_t b = 222, a = 111;
      g.send(0, 2, &b, sizeof b);
      g.recv(0, kGoTag, &go, 1);
      g.send(0, 1, &a, sizeof a);
    }
  });
}

// A worker that dies: waitAny returns its work, whose wait() throws PeerError naming it; the
// group stays usable and the other receive completes.
TEST_P(GroupWaitAny, DeadPeerEndsItsWorkAndTheOthersGoOn) {
  auto outcome = testutil::runRanksCollect(3, options(), [&](ProcessGroup& g) {
    uint8_t go = 1;
    if (g.rank() == 0) {
      uint32_t a = 0, b = 0;
      std::vector<WorkPtr> works = {g.recvAsync(1, 1, &a, sizeof a), g.recvAsync(2, 2, &b, sizeof b)};
      const auto start = Clock::now();
      EXPECT_EQ(g.waitAny(works), 0u);
      EXPECT_LT(secondsSince(start), 3.0);
      try {
        works[0]->wait();
        ADD_FAILURE() << "the receive from the dead rank succeeded";
      } catch (const PeerError& e) {
        EXPECT_EQ(e.peer(), 1);
        EXPECT_NE(std::string(e.what()).find("recv from rank 1"), std::string::npos) << e.what();
      }
      EXPECT_THROW(works[0]->test(), PeerError);
      g.send(2, kGoTag, &go, 1);
      EXPECT_EQ(g.waitAny({works[1]}), 0u);
      works[1]->wait();
      EXPECT_EQ(b, 2222u);
    } else if (g.rank() == 1) {
      throw Error("rank 1 dies");  // the harness closes its transport
    } else {
      g.recv(0, kGoTag, &go, 1);
      uint32_t b = 2222;
      g.send(0, 2, &b, sizeof b);
    }
  });
  EXPECT_FALSE(outcome[0]) << messageOf(outcome[0]);
  EXPECT_FALSE(outcome[2]) << messageOf(outcome[2]);
}

// The same failure noticed by test() (the executor's own progress) leaves the group usable.
TEST_P(GroupWaitAny, FailedReceiveNoticedByTestLeavesTheGroupUsable) {
  auto outcome = testutil::runRanksCollect(3, options(), [&](ProcessGroup& g) {
    if (g.rank() == 0) {
      uint32_t a = 0;
      WorkPtr w = g.recvAsync(1, 1, &a, sizeof a);
      const Deadline deadline(kTimeout);
      bool failed = false;
      while (!failed && !deadline.expired()) {
        try {
          EXPECT_FALSE(w->test());
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
        } catch (const PeerError&) {
          failed = true;
        }
      }
      ASSERT_TRUE(failed);
      uint32_t b = 0;
      g.recv(2, 2, &b, sizeof b);
      EXPECT_EQ(b, 5u);
    } else if (g.rank() == 1) {
      throw Error("rank 1 dies");
    } else {
      uint32_t b = 5;
      g.send(0, 2, &b, sizeof b);
    }
  });
  EXPECT_FALSE(outcome[0]) << messageOf(outcome[0]);
  EXPECT_FALSE(outcome[2]) << messageOf(outcome[2]);
}

// The timeout ends the wait with TimeoutError and fails no work: the receive completes later.
TEST_P(GroupWaitAny, TimesOutAndLeavesTheWorksPending) {
  testutil::runRanks(2, options(), [&](ProcessGroup& g) {
    uint8_t go = 1;
    if (g.rank() == 0) {
      uint32_t a = 0;
      WorkPtr w = g.recvAsync(1, 1, &a, sizeof a);
      const auto start = Clock::now();
      try {
        g.waitAny({w}, Millis(200));
        ADD_FAILURE() << "waitAny returned with nothing sent";
      } catch (const TimeoutError& e) {
        EXPECT_NE(std::string(e.what()).find("waitAny"), std::string::npos) << e.what();
      }
      EXPECT_LT(secondsSince(start), 3.0);
      EXPECT_FALSE(w->test());
      g.send(1, kGoTag, &go, 1);
      EXPECT_EQ(g.waitAny({w}), 0u);
      EXPECT_EQ(a, 42u);
    } else {
      g.recv(0, kGoTag, &go, 1);
      uint32_t a = 42;
      g.send(0, 1, &a, sizeof a);
    }
  });
}

TEST_P(GroupWaitAny, RejectsAnEmptyListAndWorksThatAreNotSendRecv) {
  testutil::runRanks(2, options(), [&](ProcessGroup& g) {
    EXPECT_THROW(g.waitAny({}), InvalidArgument);
    EXPECT_THROW(g.waitAny({nullptr}), InvalidArgument);
    WorkPtr barrier = g.barrierAsync();
    EXPECT_THROW(g.waitAny({barrier}), InvalidArgument);
    barrier->wait();
    // The group is still usable.
    uint32_t x = 0;
    if (g.rank() == 0) {
      x = 9;
      g.send(1, 1, &x, sizeof x);
    } else {
      WorkPtr w = g.recvAsync(0, 1, &x, sizeof x);
      EXPECT_EQ(g.waitAny({w}), 0u);
      EXPECT_EQ(x, 9u);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(All, GroupWaitAny, ::testing::ValuesIn(testutil::testTransports()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace chorus::comm
