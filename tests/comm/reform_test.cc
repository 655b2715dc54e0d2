// Re-forming a group after a failure (ProcessGroup::reform, join): the survivors of a group
// whose member died abort it and form a new one among themselves, in the same processes, and
// new processes can join the new group. Ranks as threads over a shared MemoryStore (tcp, shm
// and mixed), and as real processes where one is killed with SIGKILL.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/group.h"
#include "chorus/comm/rendezvous/memory_store.h"
#include "chorus/comm/transport/factory.h"
#include "util/reserved_port.h"
#include "util/torchrun_env.h"

namespace chorus::comm {
namespace {

JoinOptions joinOptions(const std::string& transport, int rank, int size, const std::string& prefix) {
  JoinOptions o;
  o.rank = rank;
  o.size = size;
  o.prefix = prefix;
  o.transport = transport;
  o.secret = "reform-test-secret";
  o.jobId = str("reform", getpid());
  o.group.timeout = Millis(20000);
  // mixed: two pretend hosts, so both links are exercised.
  if (transport == "mixed") o.host = rank % 2 == 0 ? "hostA" : "hostB";
  return o;
}

// Sum of `value` over the group.
double sumOver(ProcessGroup& g, double value) {
  AllreduceOptions o;
  o.data = &value;
  o.count = 1;
  o.dtype = DType::kFloat64;
  g.allreduce(o);
  return value;
}

void expectNoErrors(const std::vector<std::exception_ptr>& errors) {
  for (size_t r = 0; r < errors.size(); ++r) {
    if (!errors[r]) continue;
    try {
      std::rethrow_exception(errors[r]);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "rank " << r << ": " << e.what();
    }
  }
}

class ReformTest : public ::testing::TestWithParam<std::string> {};

// 4 ranks; rank 2 dies (closes its transport, as a dead process's sockets close). The others
// see the failure, re-form as 3 under a new prefix and all-reduce correctly; the old group
// and a group split from it refuse further calls.
TEST_P(ReformTest, SurvivorsReformWithoutTheDeadRank) {
  MemoryStore store;
  std::vector<std::exception_ptr> errors(4);
  std::vector<double> sums(4, -1);
  std::vector<std::string> failures(4);
  std::vector<std::thread> threads;
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&, r] {
      try {
        auto g0 = ProcessGroup::join(store, joinOptions(GetParam(), r, 4, "gen0"));
        auto half = g0->split(r % 2, r);
        EXPECT_EQ(sumOver(*g0, r + 1), 10.0);
        if (r == 2) {
          g0->abort("rank 2 dies in this test");
          return;
        }
        try {
          sumOver(*g0, r + 1);
          sumOver(*g0, r + 1);  // one call may complete among the survivors before they notice
          failures[static_cast<size_t>(r)] = "no error";
        } catch (const Error& e) {
          failures[static_cast<size_t>(r)] = e.what();
        }
        const int newRank = r < 2 ? r : r - 1;
        auto g1 = g0->reform(newRank, 3, "gen1", "rank 2 is gone");
        EXPECT_EQ(g1->rank(), newRank);
        EXPECT_EQ(g1->size(), 3);
        sums[static_cast<size_t>(r)] = sumOver(*g1, r + 1);
        EXPECT_THROW(sumOver(*g0, 1), Error) << "the old group must stay closed";
        EXPECT_THROW(sumOver(*half, 1), Error) << "a group split from the old one must stay closed";
        g1->barrier();
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  expectNoErrors(errors);
  for (int r = 0; r < 4; ++r) {
    if (r == 2) continue;
    EXPECT_NE(failures[static_cast<size_t>(r)], "no error") << "rank " << r << " never saw rank 2 fail";
    EXPECT_EQ(sums[static_cast<size_t>(r)], 1 + 2 + 4) << "rank " << r;
  }
}

// Three survivors and a process that was never in the old group form a group of 4.
TEST_P(ReformTest, ANewMemberJoinsTheReformedGroup) {
  MemoryStore store;
  std::vector<std::exception_ptr> errors(4);
  std::vector<double> sums(4, -1);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      try {
        auto g0 = ProcessGroup::join(store, joinOptions(GetParam(), r, 3, "gen0"));
        EXPECT_EQ(sumOver(*g0, 1), 3.0);
        auto g1 = g0->reform(r, 4, "gen1", "a new member arrives");
        sums[static_cast<size_t>(r)] = sumOver(*g1, r + 1);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  threads.emplace_back([&] {
    try {
      auto g1 = ProcessGroup::join(store, joinOptions(GetParam(), 3, 4, "gen1"));
      sums[3] = sumOver(*g1, 4);
    } catch (...) {
      errors[3] = std::current_exception();
    }
  });
  for (auto& t : threads) t.join();
  expectNoErrors(errors);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(sums[static_cast<size_t>(r)], 10.0) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, ReformTest, ::testing::Values("tcp", "shm", "mixed"));

TEST(ReformTest, AGroupMadeFromATransportCannotReform) {
  MemoryStore store;
  TransportOptions t;
  t.store = &store;
  t.prefix = "bare";
  t.secret = "reform-test-secret";
  auto g = ProcessGroup::create(std::shared_ptr<Transport>(createTransport("tcp", t)));
  try {
    g->reform(0, 1, "next", "a test");
    ADD_FAILURE() << "reform of a group made by create() did not throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("knows no store"), std::string::npos) << e.what();
  }
}

// Real processes, started the torchrun way (rank 0 hosts the store): rank 2 of 4 is killed
// with SIGKILL between two all-reduces. Ranks 0, 1 and 3 fail, re-form as 3 in the same
// processes (their pids do not change: they are the ones the test waits for) and all-reduce.
constexpr int kWorld = 4;
constexpr int kVictim = 2;
enum : int { kOk = 0, kNoFailure = 10, kWrongSum = 11, kReformFailed = 12, kSetupFailed = 13 };

[[noreturn]] void runRank(int rank, int port, const std::string& transport) {
  test::setTorchrunEnvironment(rank, kWorld, port, "reform-test-secret", 20000);
  std::shared_ptr<ProcessGroup> pg;
  try {
    InitOptions init;
    init.transport = transport;
    pg = ProcessGroup::fromEnvironment(init);
    pg->barrier();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d setup: %s\n", rank, e.what());
    _exit(kSetupFailed);
  }
  if (rank == kVictim) raise(SIGKILL);
  try {
    sumOver(*pg, 1);
    sumOver(*pg, 1);
    _exit(kNoFailure);
  } catch (const Error&) {
  }
  try {
    const int newRank = rank < kVictim ? rank : rank - 1;
    auto g1 = pg->reform(newRank, kWorld - 1, "chorus/gen1", "rank 2 died");
    const double s = sumOver(*g1, rank + 1);
    g1->barrier();
    _exit(s == 1 + 2 + 4 ? kOk : kWrongSum);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d reform: %s\n", rank, e.what());
    _exit(kReformFailed);
  }
}

void runKilledJob(const std::string& transport) {
  const test::ReservedPort reserved;
  const int port = reserved.port();
  std::vector<pid_t> pids;
  for (int r = 0; r < kWorld; ++r) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) runRank(r, port, transport);
    pids.push_back(pid);
  }
  for (int r = 0; r < kWorld; ++r) {
    int status = 0;
    ASSERT_EQ(waitpid(pids[static_cast<size_t>(r)], &status, 0), pids[static_cast<size_t>(r)]);
    if (r == kVictim) {
      EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    } else {
      ASSERT_TRUE(WIFEXITED(status)) << "rank " << r << " did not exit normally";
      EXPECT_EQ(WEXITSTATUS(status), kOk) << "rank " << r << " over " << transport
                                          << " (10: no failure, 11: wrong sum, 12: reform failed, 13: setup)";
    }
  }
}

TEST(ReformProcessTest, SurvivorsOfAKillReformOverTcp) { runKilledJob("tcp"); }
TEST(ReformProcessTest, SurvivorsOfAKillReformOverShm) { runKilledJob("shm"); }

}  // namespace
}  // namespace chorus::comm
