// threadCpuWaitSeconds: a thread that shares the cores with more busy threads than there are
// cores waits for a CPU; a thread that sleeps does not.
#include "chorus/common/cpu_wait.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace chorus {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

void spinFor(milliseconds d) {
  const auto until = steady_clock::now() + d;
  volatile unsigned long x = 0;
  while (steady_clock::now() < until) x = x + 1;
}

TEST(CpuWait, KernelKeepsIt) {
  const double w = threadCpuWaitSeconds();
  ASSERT_GE(w, 0) << "/proc/thread-self/schedstat is not readable; chorus's cpu_wait fields will be missing";
}

TEST(CpuWait, BusyThreadOnOversubscribedCoresWaits) {
  if (threadCpuWaitSeconds() < 0) GTEST_SKIP() << "no /proc/thread-self/schedstat";
  // One more busy thread than cores, for 400 ms: the cores are shared by n + 1 runnable threads,
  // so with fair sharing each waits about a share 1 / (n + 1) of the time.
  const unsigned n = std::max(1u, std::thread::hardware_concurrency());
  std::atomic<bool> stop{false};
  std::vector<std::thread> hogs;
  for (unsigned i = 0; i < n; ++i)
    hogs.emplace_back([&] {
      volatile unsigned long x = 0;
      while (!stop.load(std::memory_order_relaxed)) x = x + 1;
    });
  const double w0 = threadCpuWaitSeconds();
  spinFor(milliseconds(400));
  const double waited = threadCpuWaitSeconds() - w0;
  stop = true;
  for (auto& t : hogs) t.join();
  EXPECT_GT(waited, 0.4 / (n + 1) / 4) << "a busy thread among " << n << " others on " << n << " cores";
  EXPECT_LT(waited, 0.4) << "it cannot wait longer than it ran";
}

TEST(CpuWait, SleepingIsNotWaitingForACpu) {
  if (threadCpuWaitSeconds() < 0) GTEST_SKIP() << "no /proc/thread-self/schedstat";
  const double w0 = threadCpuWaitSeconds();
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_LT(threadCpuWaitSeconds() - w0, 0.1) << "a sleeping thread is not on a run queue";
}

TEST(CpuWait, WarningAboveATenthSaysWhatToChange) {
  EXPECT_EQ(cpuWaitWarning(0.09, 4, 1, 2), "") << "below a tenth: no warning";
  EXPECT_EQ(cpuWaitWarning(0.0, 2, 1, 16), "");
  const std::string w = cpuWaitWarning(0.38, 4, 1, 2);
  EXPECT_NE(w.find("38%"), std::string::npos) << w;
  EXPECT_NE(w.find("4 worker(s) of 1 torch thread(s) each, on a machine with 2 hardware threads"), std::string::npos)
      << w;
  EXPECT_NE(w.find("what to change"), std::string::npos) << w;
  EXPECT_NE(cpuWaitWarning(0.10, 4, 1, 2), "") << "a tenth warns";
}

}  // namespace
}  // namespace chorus
