// How long a thread has waited for a CPU: runnable, on a run queue, while other threads held
// every core. On a machine with more busy threads than cores (4 pipeline stages on 2 cores) a
// stage's compute is stretched and a woken receiver waits for a core before it can go on; both
// look like idle time from inside the thread, and this says how much of it was the CPU's.
//
//   const double w0 = threadCpuWaitSeconds();
//   ... run the pipeline ...
//   const double waited = threadCpuWaitSeconds() - w0;   // seconds this thread had no core
//
// Linux keeps the number per thread as the second field of /proc/thread-self/schedstat
// (CONFIG_SCHED_INFO, which common kernels enable). Elsewhere, or where that file cannot be read,
// the function returns -1; callers then report nothing rather than 0.
#pragma once

#include <string>

namespace chorus {

// Seconds the calling thread has spent runnable but not running since it started, or -1.
double threadCpuWaitSeconds();

// The share of their time a job's threads waited for a core at which a run warns.
inline constexpr double kCpuWaitWarnShare = 0.10;

// The warning for a run whose pipeline stages waited for a core `share` of their pipeline time
// (0..1), with `workers` workers of `threads` torch threads each and `cores` hardware threads
// on this machine; "" when share < kCpuWaitWarnShare.
std::string cpuWaitWarning(double share, int workers, int threads, unsigned cores);

}  // namespace chorus
