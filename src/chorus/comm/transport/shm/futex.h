// Doorbells: how a rank of the shm transport sleeps until a peer does something for it.
//
// Every rank owns one Doorbell in its shared segment. A peer rings it after producing into the
// rank's ring, freeing space in a ring the rank produces into, acknowledging one of the rank's
// single-copy sends, or closing. The owner snapshots the counter, makes progress, spins a
// little and then sleeps on it with FUTEX_WAIT until it changes.
//
// The ring is cheap: one atomic add, plus a FUTEX_WAKE system call only when the owner has
// announced that it sleeps (Dekker-style: the ringer adds then reads `sleepers`, the sleeper
// raises `sleepers` then rereads the counter inside FUTEX_WAIT, both sequentially consistent,
// so one of them always sees the other).
//
// The futexes are shared, not FUTEX_PRIVATE: the kernel keys them on the physical page, so they
// work between processes and between two mappings of one segment inside one process (ranks
// that are threads of one test).
#pragma once

#include <atomic>
#include <cstdint>

namespace chorus::comm::shm {

// Lives in shared memory; zero bytes are a valid initial state.
struct Doorbell {
  std::atomic<uint32_t> seq{0};       // bumped by every ring
  std::atomic<uint32_t> sleepers{0};  // number of owner threads inside sleep()
};
static_assert(std::atomic<uint32_t>::is_always_lock_free);

// Bumps the counter and wakes the owner if it sleeps. Never blocks; thread-safe.
void ringDoorbell(Doorbell& bell);
// Bumps the counter and always issues FUTEX_WAKE (used by close(), which must wake for sure).
void ringDoorbellAndWake(Doorbell& bell);

// Sleeps until bell.seq differs from `seen`, a wake arrives, or timeoutNs passes (spurious
// returns are allowed; callers recheck). Called by the owner only.
void sleepOnDoorbell(Doorbell& bell, uint32_t seen, int64_t timeoutNs);

// Busy-waits (with a CPU pause) until bell.seq differs from `seen` or the clock (nowNs) reaches
// untilNs; returns true if it changed. It calls sched_yield every yieldEveryNs (INT64_MAX:
// never; 0: after every short burst of polls), so a spinning rank hands its core to a
// runnable peer when ranks outnumber cores.
bool spinOnDoorbell(const Doorbell& bell, uint32_t seen, int64_t untilNs, int64_t yieldEveryNs);

}  // namespace chorus::comm::shm
