// The transport interface: tagged, asynchronous point-to-point messages between the ranks of
// one job. Every backend (shm/, tcp/, mpi/, mixed/) implements it in a folder with the same
// file names: context.{h,cc} (class <backend>::Context, a Transport, and its factory),
// pair.{h,cc} (one connection to one peer) where it has pairs, and more where needed.
// Collectives are written against this interface only, so every algorithm runs on every
// transport.
//
// Semantics, which every backend keeps (the conformance suite, tests/util/transport_conformance.h,
// checks them on each: tests/comm/transport/conformance_test.cc, and for mpi
// tests/programs/mpi_transport_check.cc under mpirun):
// - Messages from one peer to another under the same tag are matched in the order they were
//   posted (FIFO). Messages under different tags may be received in any order: a message that
//   arrives before its receive is posted is held until it is.
// - A receive must name the exact size the sender sent, and the same signature (a 64-bit word
//   describing the collective call: op, dtype, count). A difference throws MismatchError on
//   the receiving side naming the peer, the tag and both sizes/signatures, and never writes
//   past the receive buffer.
// - A receive with a RecvReduce combines the incoming elements into the buffer
//   (dst = dst op incoming) instead of overwriting it, chunk by chunk as they arrive.
// - The buffers of a posted request must stay valid and untouched until it completes.
// - Waits spin for CHORUS_SPIN_US and then block (futex, poll); they end at the deadline
//   with TimeoutError naming the rank, the pending peers and tags.
// - A peer that dies or closes makes every pending and future request to it fail with
//   PeerError naming that peer, within the deadline.
// Thread-safety: a Transport is used by one thread at a time (ProcessGroup serializes the
// calls); close() may be called from any thread.
//
// Hosts. Every transport knows which host each rank runs on (hostOf, set by the factory from
// the identities the ranks publish) and whether it reaches a peer through shared memory
// (sharedMemoryTo). Algorithm choice and the hierarchical collectives read these link
// properties, never the backend's name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "chorus/common/clock.h"
#include "chorus/common/dtype.h"
#include "chorus/common/error.h"

namespace chorus::comm {

class Store;

// How a transport is made (factory.h creates one by name).
struct TransportOptions {
  int rank = 0;
  int size = 1;
  // Used to exchange addresses/segment names. Keys are written under `prefix`.
  Store* store = nullptr;
  std::string prefix = "chorus";
  // Job secret: tcp connections prove they hold it (HMAC challenge) or are refused.
  std::string secret;
  // Job id: shm segment names include it so concurrent jobs never collide.
  std::string jobId = "job";
  // Timeout for establishing connections.
  Millis timeout = Millis(300000);
  // tcp: address to listen on ("" = the local address of the store connection, else 127.0.0.1).
  std::string bindAddr;
  // tcp: keep listening after setup (every rank, the highest included, publishes its address)
  // and take a restarted process in place of any peer whenever one connects (peerEpoch,
  // awaitPeer). Other backends ignore it.
  bool acceptRejoin = false;
  // tcp: this process restarts rank `rank` of a job that is already running. Instead of the
  // setup mesh it connects to every other rank at the address that rank published under
  // `prefix` and says it rejoins; a rank that does not answer (dead, or not accepting
  // rejoins) within `timeout` gets a failed connection: requests to it fail with PeerError.
  // Implies acceptRejoin. Other backends refuse it (InvalidArgument naming tcp).
  bool rejoin = false;
  // The host this rank runs on: a string that every rank of one host gives alike. "" detects
  // it (factory.cc: CHORUS_HOST_ID if set, else hostname, boot id and network namespace, plus
  // the launcher's node rank CHORUS_NODE_RANK when set). Tests give threads of one process
  // different hosts this way.
  std::string host;
  // shm: the ranks to connect to (peers[r]); empty means every rank. Requests to the others
  // throw InvalidArgument. The mixed transport connects shm to the ranks of its own host.
  std::vector<bool> peers;
};

// What a wait waits for: every request (waitAll), the first one done or failed (waitAny), or
// that, but only until the deadline (waitAnyUntil: no TimeoutError).
enum class WaitMode : uint8_t { kAll, kAny, kAnyUntil };

// Reduce-on-receive: incoming elements are combined into the destination.
struct RecvReduce {
  DType dtype;
  ReduceOp op;
};

// One posted send or receive. Backends derive from it to keep their own state.
class Request {
 public:
  enum class Kind : uint8_t { kSend, kRecv };
  Request(Kind kind, int peer, uint64_t tag, uint64_t sig, size_t bytes)
      : kind(kind), peer(peer), tag(tag), sig(sig), bytes(bytes) {}
  virtual ~Request() = default;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  const Kind kind;
  const int peer;       // global rank of the other side
  const uint64_t tag;
  const uint64_t sig;
  const size_t bytes;

  bool done = false;          // set by the backend when complete (successfully or not)
  std::exception_ptr error;   // set by the backend on failure; rethrown by wait/test
};
using RequestPtr = std::shared_ptr<Request>;

class Transport {
 public:
  virtual ~Transport() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* name() const = 0;  // "shm", "tcp", "mpi"

  // Posts a send. Returns at once (it may copy a small message eagerly). The buffer must stay
  // unchanged until the request completes. peer != rank().
  virtual RequestPtr isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) = 0;

  // Posts a receive of exactly `bytes` bytes. With `reduce`, bytes must be a multiple of the
  // dtype size and the incoming elements are reduced into `data`.
  virtual RequestPtr irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes,
                           const RecvReduce* reduce = nullptr) = 0;

  // Makes progress on everything pending until every request in `reqs` is done, or throws:
  // the first failed request's error, or TimeoutError at the deadline.
  void waitAll(std::span<const RequestPtr> reqs, const Deadline& deadline);

  // Makes progress until at least one request in `reqs` is done or has failed, and returns the
  // index of the first such one. It does not rethrow that request's error (read it with
  // checkDone), so a server waiting on many peers learns which one failed. Waits spin, then
  // block, as waitAll does. Throws InvalidArgument for an empty span or a null request,
  // TimeoutError at the deadline (naming the pending peers), Error if the transport closed.
  size_t waitAny(std::span<const RequestPtr> reqs, const Deadline& deadline);
  // waitAny that returns reqs.size() when the deadline passes first, instead of throwing: for
  // a caller that takes turns between transports (the mixed transport).
  size_t waitAnyUntil(std::span<const RequestPtr> reqs, const Deadline& deadline);
  // Makes progress without blocking; true when `req` is done (rethrows its error).
  virtual bool test(const RequestPtr& req) = 0;

  // Fails every pending request and wakes any waiter; later calls throw. Idempotent.
  virtual void close() = 0;

  // The failure of a call that made this process close the transport (executor.h, failCall),
  // so that the calls failing afterwards, on other groups or threads, only because it is
  // closed, report that cause (a peer's death stays a PeerError) instead of "closed".
  // noteCloseCause keeps the first cause only and returns whether it was the first.
  bool noteCloseCause(std::exception_ptr cause);
  std::exception_ptr closeCause() const;

  // Restarted peers (tcp with TransportOptions::acceptRejoin; see docs/transports.md,
  // "Restarted ranks"). A process that restarts in place of rank r of a running job connects
  // to every live rank again; each of them then drops its old connection to r (its pending
  // requests to r fail with PeerError) and sends and receives to r go to the new process.
  // peerEpoch(r) counts those replacements since this transport connected: 0 on backends
  // that cannot take a restarted peer.
  virtual uint64_t peerEpoch(int /*peer*/) { return 0; }
  // Makes progress until a new process has taken peer's place (peerEpoch(peer) > epoch), and
  // returns the new epoch. Throws TimeoutError at the deadline naming the peer, and Error on a
  // backend that cannot take a restarted peer (the message says to use tcp).
  virtual uint64_t awaitPeer(int peer, uint64_t /*epoch*/, const Deadline& /*deadline*/) {
    throw Error(str("rank ", rank(), ": the ", name(), " transport cannot take a restarted process in place of rank ",
                    peer, "; hint: run the job over tcp (CHORUS_TRANSPORT=tcp) to restart ranks while it runs"));
  }

  // The backend's own all-reduce over every rank of the job (mpi: MPI_Allreduce), used by
  // `--algo mpi`. Returns false when the backend has none.
  virtual bool nativeAllreduce(void* /*data*/, size_t /*count*/, DType /*dtype*/, ReduceOp /*op*/) {
    return false;
  }

  // The host of `rank`, numbered 0, 1, ... in order of each host's lowest rank. Until the
  // factory (or the shm backend, which has one host) sets them, each rank is its own host.
  int hostOf(int rank) const;
  int hostCount() const;
  // hosts[r] is rank r's host index (as hostOf numbers them). Called once, by the factory.
  void setHosts(std::vector<int> hosts);
  // Whether messages to `peer` go through shared memory (a link between ranks of one host).
  virtual bool sharedMemoryTo(int /*peer*/) const { return false; }
  // How far a pending request of this transport got, for timeout messages: "(12 of 4096
  // bytes)"; the base says "(4096 bytes)".
  virtual std::string progressOf(const Request& r) const;

 protected:
  // The loop behind waitAll, waitAny and waitAnyUntil (which check their arguments first):
  // make progress until waitResult says the wait is over, spinning then blocking; at the
  // deadline return deadlinePassed(...).
  virtual size_t wait(std::span<const RequestPtr> reqs, const Deadline& deadline, WaitMode mode) = 0;

  static constexpr size_t kPending = SIZE_MAX;
  // Whether a wait in `mode` is over: for kAll, reqs.size() once every request is done (the
  // first failure is rethrown); for kAny and kAnyUntil, the index of the first request done or
  // failed; kPending while it goes on.
  static size_t waitResult(std::span<const RequestPtr> reqs, WaitMode mode);
  // The end of a wait whose deadline passed after waitedNs: reqs.size() for kAnyUntil, else
  // TimeoutError naming this rank, the backend, the pending peers and, for the first 8 pending
  // requests, what each is and how far it got (progressOf).
  size_t deadlinePassed(std::span<const RequestPtr> reqs, WaitMode mode, int64_t waitedNs) const;
 private:
  std::vector<int> hosts_;  // empty until setHosts
  mutable std::mutex causeMu_;
  std::exception_ptr closeCause_;
};

// Rethrows req->error if set; returns req->done.
inline bool checkDone(const Request& req) {
  if (req.error) std::rethrow_exception(req.error);
  return req.done;
}

}  // namespace chorus::comm
