#include "chorus/comm/transport/shm/futex.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <climits>
#include <cstdint>

#include "chorus/common/clock.h"

namespace chorus::comm::shm {

namespace {

long futex(std::atomic<uint32_t>* word, int op, uint32_t val, const struct timespec* timeout) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, val, timeout, nullptr, 0);
}

inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace

void ringDoorbell(Doorbell& bell) {
  bell.seq.fetch_add(1, std::memory_order_seq_cst);
  if (bell.sleepers.load(std::memory_order_seq_cst) != 0) futex(&bell.seq, FUTEX_WAKE, INT_MAX, nullptr);
}

void ringDoorbellAndWake(Doorbell& bell) {
  bell.seq.fetch_add(1, std::memory_order_seq_cst);
  futex(&bell.seq, FUTEX_WAKE, INT_MAX, nullptr);
}

void sleepOnDoorbell(Doorbell& bell, uint32_t seen, int64_t timeoutNs) {
  if (timeoutNs <= 0) return;
  bell.sleepers.fetch_add(1, std::memory_order_seq_cst);
  if (bell.seq.load(std::memory_order_seq_cst) == seen) {
    struct timespec ts;
    ts.tv_sec = static_cast<time_t>(timeoutNs / 1000000000);
    ts.tv_nsec = static_cast<long>(timeoutNs % 1000000000);
    // EINTR, EAGAIN (the value already changed) and ETIMEDOUT all mean: go and look again.
    futex(&bell.seq, FUTEX_WAIT, seen, &ts);
  }
  bell.sleepers.fetch_sub(1, std::memory_order_seq_cst);
}

bool spinOnDoorbell(const Doorbell& bell, uint32_t seen, int64_t untilNs, int64_t yieldEveryNs) {
  int64_t nextYield = yieldEveryNs == INT64_MAX ? INT64_MAX : nowNs() + yieldEveryNs;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (bell.seq.load(std::memory_order_acquire) != seen) return true;
      cpuRelax();
    }
    const int64_t now = nowNs();
    if (now >= untilNs) return bell.seq.load(std::memory_order_acquire) != seen;
    if (now >= nextYield) {
      sched_yield();
      nextYield = nowNs() + yieldEveryNs;
    }
  }
}

}  // namespace chorus::comm::shm
