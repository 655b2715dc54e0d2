#include "chorus/common/cpu_wait.h"

#include <cstdio>

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

}  // namespace chorus
