#include "chorus/common/cpu_wait.h"

#include <cmath>
#include <cstdio>

#include "chorus/common/error.h"

namespace chorus {

double threadCpuWaitSeconds() {
  // "<ns on cpu> <ns waiting on a run queue> <timeslices>"
  std::FILE* f = std::fopen("/proc/thread-self/schedstat", "r");
  if (f == nullptr) return -1;
  unsigned long long running = 0, waiting = 0;
  const int got = std::fscanf(f, "%llu %llu", &running, &waiting);
  std::fclose(f);
  if (got != 2) return -1;
  return static_cast<double>(waiting) * 1e-9;
}

std::string cpuWaitWarning(double share, int workers, int threads, unsigned cores) {
  if (!(share >= kCpuWaitWarnShare)) return "";
  return str("the pipeline stages waited for a free core ", std::lround(100 * share),
             "% of their pipeline time (cpu_wait_stage<s> in the step records): ", workers, " worker(s) of ", threads,
             " torch thread(s) each, on a machine with ", cores,
             " hardware threads. Their bubble and op times include that wait.\n  what to change: no more workers on a machine than it has cores (a smaller parallel.pp, "
             "or more machines), and train.threads = 1 when workers share the cores");
}

}  // namespace chorus
