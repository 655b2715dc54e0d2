// The transport interface: tagged, asynchronous point-to-point messages between the ranks of
// one job. Every backend (shm/, tcp/, mpi/) implements it in a folder with the same
// file names: context.{h,cc} (the Transport subclass and its factory), pair.{h,cc} (one
// connection to one peer) and, where needed, more. Collectives are written against this
// interface only, so every algorithm runs on every transport.
//
// Semantics, which every backend keeps (tests/comm/transport/*_test.cc check them):
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
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <span>
#include <string>

#include "chorus/common/clock.h"
#include "chorus/common/dtype.h"
#include "chorus/common/error.h"

namespace chorus::comm {

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
  virtual void waitAll(std::span<const RequestPtr> reqs, const Deadline& deadline) = 0;

  // Makes progress until at least one request in `reqs` is done or has failed, and returns the
  // index of the first such one. It does not rethrow that request's error (read it with
  // checkDone), so a server waiting on many peers learns which one failed. Waits spin, then
  // block, as waitAll does. Throws InvalidArgument for an empty span or a null request,
  // TimeoutError at the deadline (naming the pending peers), Error if the transport closed.
  virtual size_t waitAny(std::span<const RequestPtr> reqs, const Deadline& deadline) = 0;
  // Makes progress without blocking; true when `req` is done (rethrows its error).
  virtual bool test(const RequestPtr& req) = 0;

  // Fails every pending request and wakes any waiter; later calls throw. Idempotent.
  virtual void close() = 0;

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
};

// Rethrows req->error if set; returns req->done.
inline bool checkDone(const Request& req) {
  if (req.error) std::rethrow_exception(req.error);
  return req.done;
}

}  // namespace chorus::comm
