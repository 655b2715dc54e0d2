// One peer of the mpi transport: the wire header, the request type, and the matching state
// that turns MPI's 31-bit tags into chorus's 64-bit (tag, signature) messages.
//
// Every chorus message starts with a WireHeader sent on MPI tag kHeaderTag. A message of at
// most kInlineBytes travels inside its header message; a larger one follows as payload
// chunks on a data tag derived from a per-peer sequence number that the header carries.
// The receiver keeps one header receive posted per peer; a header that arrives before its
// receive is posted waits, with any inline bytes, in `arrived`; a receive posted before its
// header waits in `waiting`. Both are FIFO per chorus tag, and MPI keeps header messages
// from one peer in order, so messages of one (peer, tag) match in the order they were sent.
//
// Thread-safety: none; mpi::Context calls everything here under the MPI lock.
#pragma once

#ifdef CHORUS_HAVE_MPI

// The C API only: OpenMPI's C++ bindings would need libmpi_cxx at link time.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "chorus/comm/transport/transport.h"

namespace chorus::comm::mpi {

// The header message every chorus message starts with.
struct WireHeader {
  uint64_t tag;
  uint64_t sig;
  uint64_t bytes;       // payload size
  uint64_t chunkBytes;  // payload chunk size (0 when inline)
  uint32_t seq;         // selects the payload's MPI tag
  uint32_t flags;       // kFlagInline, kFlagClose
};
static_assert(sizeof(WireHeader) == 40);

inline constexpr uint32_t kFlagInline = 1;  // the payload follows the header in the same message
inline constexpr uint32_t kFlagClose = 2;   // the sender closed its transport; no more messages
inline constexpr int kHeaderTag = 0;
inline constexpr size_t kInlineBytes = 16384;
// Payload chunk size: a reduce-on-receive combines chunk k while chunk k+1 is in flight.
// A multiple of every dtype size.
inline constexpr size_t kChunkBytes = size_t(1) << 20;

// A posted send or receive, with the MPI requests that carry it.
class MpiRequest final : public Request {
 public:
  using Request::Request;

  // Tests the outstanding MPI requests, reduces the receive chunks that arrived in order,
  // and sets done when everything arrived. True when the request is done and no MPI request
  // is outstanding, so it may leave the progress list. Throws on an MPI error.
  bool progress();
  // Marks the request done with `err` unless it is already done.
  void fail(std::exception_ptr err);

  int rank = 0;                       // our rank, for error messages
  void* data = nullptr;               // receive: destination
  std::optional<RecvReduce> reduce;   // receive: reduce-on-receive
  std::vector<uint8_t> buffer;        // send: header + inline bytes; receive: reduce scratch or discard space
  std::vector<MPI_Request> mpi;       // in chunk order (a send's header first)
  size_t chunkBytes = 0;              // receive with reduce: size of each payload chunk
  size_t nextChunk = 0;               // receive with reduce: first chunk not yet combined
  bool matched = false;               // receive: its header has arrived
};
using MpiRequestPtr = std::shared_ptr<MpiRequest>;

// A header (and inline payload) that arrived before its receive was posted.
struct Arrival {
  WireHeader header;
  std::vector<uint8_t> inlineBytes;
};

class Pair {
 public:
  Pair(int rank, int peer, MPI_Comm comm, int tagUpperBound);
  Pair(const Pair&) = delete;
  Pair& operator=(const Pair&) = delete;

  int peer() const { return peer_; }
  bool peerClosed() const { return peerClosed_; }

  // Posts the send's header (and payload chunks); the request is done when MPI has taken
  // every byte. Fails it with PeerError when the peer has closed.
  void postSend(const MpiRequestPtr& req, const void* data);
  // Matches the receive with a waiting arrival, or queues it until its header comes.
  void postRecv(const MpiRequestPtr& req);
  // Takes every header that arrived and matches it. True if anything happened.
  bool pollHeaders();
  // Our side closes: fail queued receives with `err`, cancel the header receive and tell the
  // peer (the notice's buffer goes to `orphans`, which must outlive MPI's use of it).
  void close(std::exception_ptr err, std::vector<std::unique_ptr<std::vector<uint8_t>>>* orphans);

 private:
  void postHeaderRecv();
  void match(const MpiRequestPtr& req, const WireHeader& h, const uint8_t* inlineBytes);
  void onPeerClosed();
  int dataTag(uint32_t seq) const;

  int rank_;
  int peer_;
  MPI_Comm comm_;
  int tagUpperBound_;
  uint32_t sendSeq_ = 0;
  bool peerClosed_ = false;
  bool closed_ = false;
  std::vector<uint8_t> headerBuf_;
  MPI_Request headerReq_ = MPI_REQUEST_NULL;
  std::unordered_map<uint64_t, std::deque<Arrival>> arrived_;
  std::unordered_map<uint64_t, std::deque<MpiRequestPtr>> waiting_;
};

// Throws PeerError naming the MPI error if rc is not MPI_SUCCESS.
void checkMpi(int rc, int rank, int peer, const char* what);

}  // namespace chorus::comm::mpi

#endif  // CHORUS_HAVE_MPI
