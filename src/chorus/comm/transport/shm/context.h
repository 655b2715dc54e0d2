// The shared-memory transport: every rank of the job runs on one host and talks to every peer
// through single-producer/single-consumer rings in POSIX shared memory (ring.h), with large
// messages copied once, straight from the sender's buffer, by cross-memory attach (cma.h).
//
// Setup (the constructor). With TransportOptions::peers only those ranks take part, and the
// rest of this comment reads "every peer" as "every rank in peers". Each rank creates its segment (/dev/shm/chorus-<job>-...-r<rank>-
// <pid>-<nonce>, exclusive, mode 0600), publishes its name and pid in the store under
// `<prefix>/shm/seg/<rank>`, maps every peer's segment, probes whether it can read each peer's
// memory by CMA, and marks `<prefix>/shm/mapped/<rank>`. Once every rank has mapped, each
// unlinks its own name, so nothing is left in /dev/shm even if the job is killed later. Give
// each transport sharing a store its own prefix.
//
// Waiting (waitAll, waitAny: one loop, which ends when every request, or any one, is done).
// Progress every pair; then spin on this rank's doorbell (futex.h) for
// spinUs; if data moved less than 0.5 ms ago (a transfer is under way), keep spinning until
// then, calling sched_yield every 10 us so that ranks outnumbering cores still run; then sleep
// on the doorbell with FUTEX_WAIT for at most 50 ms at a time, so peers' liveness is checked
// (kill(pid, 0), zombie state, start time) while anything is pending. A dead or closed peer
// fails its requests with PeerError; the deadline fails the wait with TimeoutError naming the
// pending peers and tags.
//
// Thread-safety: one thread at a time calls isend/irecv/waitAll/waitAny/test (calls are
// serialized by a mutex anyway); close() may be called from any thread and wakes a blocked wait.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/shm/pair.h"
#include "chorus/comm/transport/shm/ring.h"
#include "chorus/comm/transport/transport.h"

namespace chorus::comm {

// Tuning of the shm transport. fromEnv() reads the CHORUS_SPIN_US, CHORUS_SHM_RING_BYTES,
// CHORUS_SHM_CMA and CHORUS_SHM_CMA_MIN_BYTES defaults; tests set fields directly.
struct ShmOptions {
  int64_t spinUs = 20;               // busy-poll this long before sleeping on the futex
  uint64_t ringBytes = 1 << 20;      // per ordered pair; rounded up to a multiple of 64, >= 256
  bool cma = true;                   // single-copy process_vm_readv for large messages
  uint64_t cmaMinBytes = 64 << 10;   // messages at least this large use CMA (when it works)
  // Ring streaming publishes (and the receiver hands back space) every this many bytes;
  // 0 = min(ringBytes / 4, 256 KiB), which measured best among 16, 64 and 256 KiB.
  uint64_t streamChunkBytes = 0;

  // Throws ConfigError for a malformed or negative value.
  static ShmOptions fromEnv();
};

// Blocks until every rank of opts.size has created its transport (or opts.timeout passes:
// TimeoutError naming the missing ranks). opts.store is required when size > 1 and is used only
// during this call. Each rank reserves (size - 1) * ringBytes of /dev/shm up front; throws
// SystemError when /dev/shm is unusable or too small.
std::unique_ptr<Transport> createShmTransport(const TransportOptions& opts, const ShmOptions& shm);

namespace shm {

class Context : public Transport {
 public:
  Context(const TransportOptions& opts, const ShmOptions& shm);
  ~Context() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* name() const override { return "shm"; }

  RequestPtr isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) override;
  RequestPtr irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes,
                   const RecvReduce* reduce = nullptr) override;
  bool test(const RequestPtr& req) override;
  std::string progressOf(const Request& r) const override;
  void close() override;
  bool sharedMemoryTo(int peer) const override { return peer >= 0 && peer < size_ && pairs_[static_cast<size_t>(peer)]; }

  // Whether messages to `peer` of at least cmaMinBytes go by CMA (for tests and logs).
  bool cmaToPeer(int peer) const;

 private:
  void setup(const TransportOptions& opts);
  size_t wait(std::span<const RequestPtr> reqs, const Deadline& deadline, WaitMode mode) override;
  // Whether this rank connects to `peer` (TransportOptions::peers).
  bool connects(int peer) const { return peer != rank_ && (peers_.empty() || peers_[static_cast<size_t>(peer)]); }
  void checkPeer(int peer, const char* op) const;
  bool progressAll();
  void checkLivenessIfDue();
  void failAllPending();

  const int rank_;
  const int size_;
  ShmOptions shm_;
  std::string who_;  // "rank R", the start of every message
  std::vector<bool> peers_;  // TransportOptions::peers: empty = every rank

  uint64_t probeWord_ = 0;  // peers read it by CMA to prove they can
  std::unique_ptr<uint8_t, void (*)(void*)> scratch_;
  PairEnv env_;

  shm::SharedSegment own_;
  std::vector<shm::SharedSegment> peerSegments_;  // indexed by rank; own rank empty
  shm::SegmentHeader* self_ = nullptr;
  std::vector<std::unique_ptr<Pair>> pairs_;      // indexed by rank; own rank null
  std::vector<bool> cmaTo_;

  std::mutex mu_;
  std::atomic<bool> closing_{false};
  bool closed_ = false;  // under mu_: pending requests were failed
  int64_t lastLivenessNs_ = 0;
  int64_t lastChangeNs_ = 0;  // when progress last moved anything
  bool oversubscribed_ = false;  // more ranks than cores: spinning waits yield
};

}  // namespace shm
}  // namespace chorus::comm
