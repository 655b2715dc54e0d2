// A rank that dies must never hang the job: real processes, started the torchrun way (rank 0
// hosts the store on MASTER_ADDR:MASTER_PORT), one of which is killed before an all-reduce.
// The survivors must fail with PeerError naming the dead rank, the op and the tag, well
// within the timeout.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/group.h"
#include "util/reserved_port.h"
#include "util/torchrun_env.h"

namespace chorus::comm {
namespace {

constexpr int kWorld = 3;
constexpr int kVictim = 2;
constexpr int kTimeoutMs = 20000;

// Exit codes of a surviving rank.
// kOkOther: failed in time naming op and tag, but blamed the other survivor (which had already
// failed and exited) rather than the dead rank.
enum : int { kOk = 0, kOkOther = 1, kWrongError = 10, kNoError = 11, kTooSlow = 12, kSetupFailed = 13 };

[[noreturn]] void runRank(int rank, int port, const std::string& transport) {
  test::setTorchrunEnvironment(rank, kWorld, port, "peer-death-test-secret", kTimeoutMs);
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
  std::vector<float> data(1 << 16, 1.0f);
  AllreduceOptions o;
  o.data = data.data();
  o.count = data.size();
  o.tag = 77;
  const auto start = std::chrono::steady_clock::now();
  try {
    pg->allreduce(o);
    // Rank 0 may finish a step with rank 1 before noticing; a second call cannot complete.
    pg->allreduce(o);
  } catch (const PeerError& e) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const std::string msg = e.what();
    std::fprintf(stderr, "rank %d (%s) after %.2f s: %s\n", rank, transport.c_str(), s, msg.c_str());
    if (msg.find("allreduce") == std::string::npos || msg.find("tag=77") == std::string::npos) _exit(kWrongError);
    if (s >= kTimeoutMs / 2000.0) _exit(kTooSlow);
    // The call's prefix names only this rank ("on rank 0 of 3"), so "rank 2" is the blame.
    _exit(msg.find("rank 2") != std::string::npos ? kOk : kOkOther);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d (%s): expected PeerError, got: %s\n", rank, transport.c_str(), e.what());
    _exit(kWrongError);
  }
  _exit(kNoError);
}

void runJob(const std::string& transport) {
  // Held until every rank is done: no other test can take the port before rank 0 listens.
  const test::ReservedPort reserved;
  const int port = reserved.port();
  std::vector<pid_t> pids;
  for (int r = 0; r < kWorld; ++r) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) runRank(r, port, transport);
    pids.push_back(pid);
  }
  int namedVictim = 0;
  for (int r = 0; r < kWorld; ++r) {
    int status = 0;
    ASSERT_EQ(waitpid(pids[r], &status, 0), pids[r]);
    if (r == kVictim) {
      EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the victim should die by SIGKILL";
    } else {
      ASSERT_TRUE(WIFEXITED(status)) << "rank " << r << " did not exit normally";
      EXPECT_LE(WEXITSTATUS(status), kOkOther) << "rank " << r << " over " << transport
                                               << " (10: wrong error, 11: no error, 12: too slow, 13: setup)";
      namedVictim += WEXITSTATUS(status) == kOk;
    }
  }
  EXPECT_GE(namedVictim, 1) << "no survivor named the dead rank 2";
}

TEST(PeerDeathTest, SurvivorsFailFastOverShm) { runJob("shm"); }
TEST(PeerDeathTest, SurvivorsFailFastOverTcp) { runJob("tcp"); }

}  // namespace
}  // namespace chorus::comm
