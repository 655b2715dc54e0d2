// One tcp connection to one peer: the queue of posted sends, the receives posted for each
// tag, the messages that arrived before their receive (held), and the state machine that
// reads frames off the socket. The context (context.h) owns one Pair per peer and drives
// them from its poll() loop; a Pair never blocks.
//
// Receive path: bytes are read into a small staging buffer while a header is expected (so a
// small message costs one recv), and straight into the destination while a large payload
// streams: the posted buffer, a chunk scratch that is reduced into the posted buffer
// (RecvReduce), a held buffer that grows as bytes arrive, or a scratch that discards the
// payload of a message whose receive failed with MismatchError. A receive posted while its
// message is still arriving into a held buffer takes over the stream: the held prefix is
// copied (or reduced) once and the rest goes straight to the receive.
//
// Thread-safety: none; the context serializes every call under its mutex.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <string>
#include <unordered_map>

#include "chorus/comm/net/socket.h"
#include "chorus/comm/transport/tcp/frame.h"
#include "chorus/comm/transport/transport.h"

namespace chorus::comm::tcp {

// A posted send or receive on the tcp transport. The buffer is owned by the caller and must
// stay valid until the request is done.
class TcpRequest : public Request {
 public:
  TcpRequest(Kind kind, int peer, uint64_t tag, uint64_t sig, size_t bytes, uint8_t* data,
             const RecvReduce* reduce);

  uint8_t* const data;
  const bool reduces;
  const RecvReduce reduce;  // meaningful when `reduces`
  size_t transferred = 0;   // payload bytes sent or received so far
  // Sends only: the encoded header and how much of it went out.
  uint8_t header[kFrameHeaderBytes];
  size_t headerSent = 0;
};
using TcpRequestPtr = std::shared_ptr<TcpRequest>;

class Pair {
 public:
  // Takes a connected, authenticated socket; makes it non-blocking. `chunkBytes` bounds one
  // recv/send call and sizes the reduce scratch (at least 64). An invalid fd makes a pair that
  // must be aborted at once (a peer that could not be reached): it is never polled.
  Pair(int rank, int peer, net::Fd fd, size_t chunkBytes);
  ~Pair();
  Pair(const Pair&) = delete;
  Pair& operator=(const Pair&) = delete;

  int peer() const { return peer_; }
  int fd() const { return fd_.get(); }
  bool failed() const { return !failure_.empty(); }

  // Events to poll for: POLLIN always, POLLOUT while sends are queued; 0 once failed.
  short pollEvents() const;

  // Queues a send and tries to write it at once. A send to a failed peer fails at once.
  void postSend(const TcpRequestPtr& req);
  // Matches the oldest held message of the tag, else queues the receive. A receive from a
  // failed peer with no held message fails at once.
  void postRecv(const TcpRequestPtr& req);

  // Acts on poll() results: reads what is available, writes what fits.
  void onEvents(short revents);

  // Fails every pending request with Error(`why`) (close()), or with PeerError(`why`) when
  // `peerError` (the peer is gone: replaced by a restarted process, or never reached), drops
  // the held messages and shuts the connection down; later requests fail the same way.
  void abort(const std::string& why, bool peerError = false);

  // Messages held for receives not posted yet (for tests and diagnostics).
  size_t heldMessages() const;

 private:
  struct Held {
    FrameHeader hdr;
    std::unique_ptr<uint8_t[]> buf;
    size_t cap = 0;
    size_t got = 0;
  };
  using HeldPtr = std::shared_ptr<Held>;
  enum class Sink { kHeader, kRequest, kHeld, kDiscard };

  void flushSends();
  void readAvailable();
  void consumeStaged();
  // Where the next payload bytes of the current message go, and how many fit there.
  uint8_t* payloadTarget(size_t* len);
  void advance(size_t n);
  void onHeader();
  void finishMessage();
  void reduceScratch();
  void adoptHeld(const HeldPtr& h, const TcpRequestPtr& req);
  bool mismatch(const FrameHeader& h, const TcpRequest& req) const;
  void failMismatch(const FrameHeader& h, const TcpRequestPtr& req) const;
  void failPeer(const std::string& reason);
  void failRequest(const TcpRequestPtr& req, const std::string& reason, bool peerError) const;
  uint8_t* scratch();

  const int rank_;
  const int peer_;
  net::Fd fd_;
  const size_t chunk_;
  std::string failure_;  // why the connection failed; empty while it works

  std::deque<TcpRequestPtr> sendQueue_;
  std::unordered_map<uint64_t, std::deque<TcpRequestPtr>> posted_;
  std::unordered_map<uint64_t, std::deque<HeldPtr>> held_;

  // The message being received.
  Sink sink_ = Sink::kHeader;
  FrameHeader cur_;
  uint64_t curGot_ = 0;  // payload bytes of cur_ consumed
  TcpRequestPtr curReq_;
  HeldPtr curHeld_;
  uint8_t hdrBuf_[kFrameHeaderBytes];
  size_t hdrGot_ = 0;

  std::unique_ptr<uint8_t[]> stage_;
  size_t stageBegin_ = 0;
  size_t stageEnd_ = 0;
  std::unique_ptr<uint8_t[]> scratch_;  // chunk_ bytes: reduce input, discarded payloads
  size_t scratchFill_ = 0;              // bytes in scratch_ not reduced yet (< one element)
};

}  // namespace chorus::comm::tcp
