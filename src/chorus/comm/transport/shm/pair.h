// One rank's view of one peer in the shm transport: the ring it writes into (in the peer's
// segment), the ring it reads from (in its own segment), and the matching state for messages
// in both directions.
//
// Wire format. A message is a 48-byte FrameHeader followed, for a data frame, by its payload
// padded to a multiple of 8. A single-copy (CMA) frame carries no payload: it names the address
// of the sender's buffer, which the receiver reads with process_vm_readv, and a sequence number
// that the receiver acknowledges in acks[seq % kAckSlots] of the ring's control block.
//
// Sending. Sends to one peer leave in the order posted (a queue); the front one writes its
// header and then as much payload as fits, publishing every `chunk` bytes so the receiver can
// drain while the sender fills. A data send completes once its last byte is in the ring (its
// buffer is free then); a CMA send completes when its acknowledgement arrives.
//
// Receiving. Frames are read in order. A frame whose (tag) matches the oldest posted receive
// under that tag goes straight into its buffer (or is reduced into it, piece by piece from the
// ring); one that matches nothing is copied into a held buffer (a CMA frame is held as its
// descriptor), so the ring never stalls on an unexpected message. Posting a receive first
// looks at the held messages of its tag, oldest first, which keeps every (peer, tag) FIFO.
// A matched CMA frame queues its read; each progressRecvs call performs at most one, so a
// caller waiting on one request of a pipeline regains control between large copies.
//
// Not thread-safe: the owning Context serializes every call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chorus/comm/transport/shm/cma.h"
#include "chorus/comm/transport/shm/ring.h"
#include "chorus/comm/transport/transport.h"

namespace chorus::comm::shm {

enum FrameKind : uint32_t { kFrameData = 1, kFrameCma = 2 };

struct FrameHeader {
  uint64_t tag;
  uint64_t sig;
  uint64_t bytes;    // the message's size (a CMA frame has no payload in the ring)
  uint32_t kind;     // FrameKind
  uint32_t reserved;
  uint64_t cmaAddr;  // kFrameCma: the sender's buffer, in the sender's address space
  uint64_t cmaSeq;   // kFrameCma: acknowledged in acks[cmaSeq % kAckSlots]
};
inline constexpr uint64_t kFrameBytes = sizeof(FrameHeader);
static_assert(kFrameBytes == 48 && kFrameBytes % 8 == 0);

inline constexpr uint64_t pad8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

class ShmRequest : public Request {
 public:
  ShmRequest(Kind kind, int peer, uint64_t tag, uint64_t sig, size_t bytes, const void* src, void* dst,
             const RecvReduce* reduce)
      : Request(kind, peer, tag, sig, bytes), src(static_cast<const uint8_t*>(src)),
        dst(static_cast<uint8_t*>(dst)), reducing(reduce != nullptr),
        reduce(reduce != nullptr ? *reduce : RecvReduce{}) {}

  const uint8_t* const src;  // send buffer
  uint8_t* const dst;        // receive buffer
  const bool reducing;
  const RecvReduce reduce;
  uint64_t moved = 0;        // bytes (padded) written to or taken from the ring, or read by CMA
  bool started = false;      // send: its header is in the ring
  uint64_t cmaSeq = 0;       // send: the sequence number its acknowledgement carries
};
using ShmRequestPtr = std::shared_ptr<ShmRequest>;

// What the pairs of one context share. Owned by the context, outlives its pairs.
struct PairEnv {
  int rank = 0;
  uint64_t cmaMinBytes = 0;
  uint64_t chunkBytes = 0;     // publish/consume granularity of ring streaming
  uint8_t* scratch = nullptr;  // CMA reductions land here first, scratchBytes at a time
  size_t scratchBytes = 0;
};

class Pair {
 public:
  struct Endpoints {
    int peer;
    SegmentHeader* peerHeader;  // the peer's segment: its doorbell, pid, closed flag
    RingControl* outControl;    // my ring in the peer's segment
    uint8_t* outData;
    RingControl* inControl;     // the peer's ring in my segment
    const uint8_t* inData;
    uint64_t ringBytes;
    ProcessIdentity peerProcess;
    bool cmaToPeer;             // the peer proved it can read my memory
    bool livenessChecks;        // pids are comparable (same pid namespace)
  };
  Pair(const PairEnv* env, const Endpoints& ends);
  Pair(const Pair&) = delete;
  Pair& operator=(const Pair&) = delete;

  int peer() const { return ends_.peer; }

  // Queue a request; a send writes what fits at once. Failures (peer gone) are recorded in the
  // request, never thrown.
  void postSend(const ShmRequestPtr& req);
  void postRecv(const ShmRequestPtr& req);

  // Move data without blocking; each returns true if anything changed. The context calls
  // progressSends on every pair before progressRecvs, so large single-copy reads start after
  // this rank's own descriptors are out.
  bool progressSends();
  bool progressRecvs();

  // True while a request to or from this peer is unfinished.
  bool hasPending() const;
  // If the peer's process has exited, marks it dead (the next progressRecvs fails what can no
  // longer complete). Reads /proc; call every few tens of milliseconds, not on the fast path.
  void checkLiveness();
  // Fails every pending request with an error built by `make(req)` (used by close()).
  template <typename MakeError>
  void failAll(MakeError&& make);

 private:
  enum class PeerState { kAlive, kClosed, kDead, kCorrupt };
  enum class Target { kNone, kRequest, kHeld, kDiscard };

  // An unexpected message. Its data is complete unless it is in_.held (still streaming in).
  struct HeldMessage {
    FrameHeader hdr{};
    std::unique_ptr<uint8_t[]> data;  // kFrameData only
  };

  // The frame being read from the ring.
  struct Incoming {
    bool active = false;
    FrameHeader hdr{};
    uint64_t moved = 0;  // padded payload bytes taken so far
    Target target = Target::kNone;
    ShmRequestPtr req;
    HeldMessage* held = nullptr;
  };

  bool collectAcks();
  void beginIncoming(const FrameHeader& h);
  void finishIncoming();
  void deliver(ShmRequest& req, uint64_t offset, const uint8_t* p, size_t len);
  void runCmaRecv(const ShmRequestPtr& req, const FrameHeader& h);
  void acknowledge(uint64_t seq, AckStatus status);
  void publishTail();
  void notePeerClosed();
  bool failIfPeerGone();

  void complete(ShmRequest& req);
  void fail(ShmRequest& req, std::exception_ptr e);
  std::exception_ptr mismatchError(const FrameHeader& h, const ShmRequest& req) const;
  std::exception_ptr goneError(const ShmRequest& req) const;

  const PairEnv* env_;
  Endpoints ends_;
  RingWriter writer_;
  RingReader reader_;
  PeerState state_ = PeerState::kAlive;
  uint32_t corruptKind_ = 0;

  std::deque<ShmRequestPtr> sendQueue_;
  std::list<ShmRequestPtr> cmaWait_;       // CMA sends awaiting their acknowledgement
  bool slotBusy_[kAckSlots] = {};
  uint64_t nextCmaSeq_ = 0;

  // Posted receives and held messages, each in arrival order; matching takes the first entry
  // with the tag. Plain vectors: they stay short, and keep their storage between messages, so
  // the small-message path allocates nothing here.
  std::vector<ShmRequestPtr> posted_;
  std::vector<std::unique_ptr<HeldMessage>> held_;
  std::deque<std::pair<ShmRequestPtr, FrameHeader>> cmaReady_;  // matched CMA frames to read
  Incoming in_;
  uint64_t consumedSincePublish_ = 0;
};

template <typename MakeError>
void Pair::failAll(MakeError&& make) {
  auto failOne = [&](const ShmRequestPtr& r) {
    if (!r->done) fail(*r, make(*r));
  };
  for (auto& r : sendQueue_) failOne(r);
  sendQueue_.clear();
  for (auto& r : cmaWait_) failOne(r);
  cmaWait_.clear();
  for (auto& r : posted_) failOne(r);
  posted_.clear();
  for (auto& [r, h] : cmaReady_) failOne(r);
  cmaReady_.clear();
  if (in_.active && in_.target == Target::kRequest) {
    failOne(in_.req);
    in_.req.reset();
    in_.target = Target::kDiscard;
  }
}

}  // namespace chorus::comm::shm
