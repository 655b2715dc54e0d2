// One connection's protocol. The stream each way is a sequence of messages, each one frame
// header (frame.h) and its payload; one message is written and read at a time, in order.
//
// Sending: isend encodes the header into the request and queues it; the head of the queue is
// written with sendmsg([header rest, payload rest up to one chunk]) until the socket is full
// (EAGAIN: poll() for POLLOUT) or a turn's budget of four chunks is spent.
//
// Receiving, a state machine over the current message (sink_):
//   kHeader   collect 40 bytes, decode (malformed: the peer fails), then match: the oldest
//             receive posted for the tag (kRequest; a size/signature mismatch fails it with
//             MismatchError and the payload is drained: kDiscard) or, with none posted, a new
//             held message (kHeld);
//   kRequest  payload into the receive buffer, or with RecvReduce into the chunk scratch and
//             reduced whole element by whole element into the buffer;
//   kHeld     payload into a buffer that grows as bytes arrive;
//   kDiscard  payload into the scratch, dropped.
// A receive posted for a tag with held messages takes the oldest: copied (or reduced) once if
// complete, or adopted mid-stream. EOF, a reset or a malformed frame fails the connection:
// every queued send, posted receive and partial message fails with PeerError; complete held
// messages stay receivable, so what a peer sent before it exited is not lost.
//
// Cost per message: one sendmsg for a small message (header and payload together), one recv
// for a small incoming one (staging), and for large payloads one syscall per chunk each way
// with the payload copied only by the kernel (plus the held copy if its receive came late).
#include "chorus/comm/transport/tcp/pair.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "chorus/common/reduce.h"

namespace chorus::comm::tcp {

namespace {

// Reads while a header is expected, and payloads shorter than this, go through the staging
// buffer; longer payloads are read straight into their destination.
constexpr size_t kStageBytes = 64 * 1024;
// A held buffer starts at most this large and doubles as bytes arrive, so a header that
// announces a huge message costs nothing until the bytes are really there.
constexpr size_t kHeldInitialBytes = 1 << 20;

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

}  // namespace

TcpRequest::TcpRequest(Kind kind, int peer, uint64_t tag, uint64_t sig, size_t bytes, uint8_t* data,
                       const RecvReduce* r)
    : Request(kind, peer, tag, sig, bytes),
      data(data),
      reduces(r != nullptr),
      reduce(r != nullptr ? *r : RecvReduce{DType::kUInt8, ReduceOp::kSum}) {}

Pair::Pair(int rank, int peer, net::Fd fd, size_t chunkBytes)
    : rank_(rank),
      peer_(peer),
      fd_(std::move(fd)),
      chunk_(std::max<size_t>(chunkBytes, 64)),
      stage_(new uint8_t[kStageBytes]) {
  if (fd_) net::setNonBlocking(fd_.get(), true);
}

Pair::~Pair() = default;

short Pair::pollEvents() const {
  if (failed()) return 0;
  return static_cast<short>(POLLIN | (sendQueue_.empty() ? 0 : POLLOUT));
}

size_t Pair::heldMessages() const {
  size_t n = 0;
  for (const auto& [tag, q] : held_) n += q.size();
  return n;
}

uint8_t* Pair::scratch() {
  if (!scratch_) scratch_.reset(new uint8_t[chunk_]);
  return scratch_.get();
}

void Pair::postSend(const TcpRequestPtr& req) {
  if (failed()) {
    failRequest(req, failure_, true);
    return;
  }
  FrameHeader h;
  h.tag = req->tag;
  h.sig = req->sig;
  h.bytes = req->bytes;
  encodeFrame(h, req->header);
  bool idle = sendQueue_.empty();
  sendQueue_.push_back(req);
  if (idle) flushSends();
}

void Pair::postRecv(const TcpRequestPtr& req) {
  auto it = held_.find(req->tag);
  if (it != held_.end()) {
    HeldPtr h = std::move(it->second.front());
    it->second.pop_front();
    if (it->second.empty()) held_.erase(it);
    if (mismatch(h->hdr, *req)) {
      failMismatch(h->hdr, req);
      if (h == curHeld_) {
        curHeld_.reset();
        sink_ = Sink::kDiscard;
      }
      return;
    }
    adoptHeld(h, req);
    return;
  }
  if (failed()) {
    failRequest(req, failure_, true);
    return;
  }
  posted_[req->tag].push_back(req);
}

void Pair::adoptHeld(const HeldPtr& h, const TcpRequestPtr& req) {
  const size_t got = h->got;
  const bool complete = got == h->hdr.bytes;
  size_t tail = 0;
  if (req->reduces) {
    const size_t es = dtypeSize(req->reduce.dtype);
    const size_t whole = got / es * es;
    if (whole > 0) reduceInto(req->data, h->buf.get(), whole / es, req->reduce.dtype, req->reduce.op);
    tail = got - whole;
  } else if (got > 0) {
    std::memcpy(req->data, h->buf.get(), got);
  }
  req->transferred = got;
  if (complete) {
    req->done = true;
    return;
  }
  // The message is still arriving (it is the current one): the rest streams to the request.
  CHORUS_CHECK(h == curHeld_, "rank ", rank_, ": a partial held message from rank ", peer_,
               " is not the one being received");
  if (tail > 0) std::memcpy(scratch(), h->buf.get() + (got - tail), tail);
  scratchFill_ = tail;
  curHeld_.reset();
  curReq_ = req;
  sink_ = Sink::kRequest;
}

bool Pair::mismatch(const FrameHeader& h, const TcpRequest& req) const {
  return h.bytes != req.bytes || h.sig != req.sig;
}

void Pair::failMismatch(const FrameHeader& h, const TcpRequestPtr& req) const {
  req->error = std::make_exception_ptr(MismatchError(
      str("rank ", rank_, ": the message from rank ", peer_, " under tag ", h.tag,
          " does not match the posted receive: it carries ", h.bytes, " bytes with signature ", hex(h.sig),
          ", the receive expects ", req->bytes, " bytes with signature ", hex(req->sig),
          "; hint: the ranks called different collectives, counts or dtypes for the same tag")));
  req->done = true;
}

void Pair::failRequest(const TcpRequestPtr& req, const std::string& reason, bool peerError) const {
  if (req->done) return;
  std::string msg = str("rank ", rank_, ": ", req->kind == Request::Kind::kSend ? "send to" : "recv from",
                        " rank ", peer_, " (tag ", req->tag, ", ", req->bytes, " bytes) failed: ", reason);
  if (peerError) {
    req->error = std::make_exception_ptr(PeerError(msg, peer_));
  } else {
    req->error = std::make_exception_ptr(Error(msg));
  }
  req->done = true;
}

void Pair::onEvents(short revents) {
  if (failed()) return;
  if ((revents & POLLNVAL) != 0) {
    failPeer(str("the socket to rank ", peer_, " is no longer valid"));
    return;
  }
  // Read first: data a peer sent before it closed is delivered before its EOF is seen.
  if ((revents & (POLLIN | POLLHUP | POLLERR)) != 0) readAvailable();
  if (!failed() && (revents & POLLOUT) != 0) flushSends();
}

void Pair::flushSends() {
  // Bound one turn so a large send does not starve the other peers of the same wait.
  size_t budget = 4 * chunk_;
  while (!sendQueue_.empty() && !failed() && budget > 0) {
    TcpRequest& req = *sendQueue_.front();
    iovec iov[2];
    int cnt = 0;
    if (req.headerSent < kFrameHeaderBytes) {
      iov[cnt++] = {req.header + req.headerSent, kFrameHeaderBytes - req.headerSent};
    }
    const size_t left = req.bytes - req.transferred;
    if (left > 0) iov[cnt++] = {req.data + req.transferred, std::min(left, chunk_)};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(cnt);
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      failPeer(str("sending to rank ", peer_, " failed: ", std::strerror(errno),
                   "; hint: rank ", peer_, " probably exited or crashed, check its log"));
      return;
    }
    size_t sent = static_cast<size_t>(n);
    budget -= std::min(budget, sent);
    if (req.headerSent < kFrameHeaderBytes) {
      size_t h = std::min(sent, kFrameHeaderBytes - req.headerSent);
      req.headerSent += h;
      sent -= h;
    }
    req.transferred += sent;
    if (req.headerSent == kFrameHeaderBytes && req.transferred == req.bytes) {
      req.done = true;
      sendQueue_.pop_front();
    }
  }
}

void Pair::readAvailable() {
  // Bound one turn so a peer that streams fast does not starve the others.
  size_t budget = 4 * chunk_;
  while (!failed() && budget > 0) {
    consumeStaged();
    if (failed()) return;
    uint8_t* dst;
    size_t len;
    const bool direct = sink_ != Sink::kHeader && cur_.bytes - curGot_ >= kStageBytes;
    if (direct) {
      dst = payloadTarget(&len);
    } else {
      stageBegin_ = stageEnd_ = 0;
      dst = stage_.get();
      len = kStageBytes;
    }
    ssize_t n = ::recv(fd_.get(), dst, len, MSG_DONTWAIT);
    if (n > 0) {
      const size_t got = static_cast<size_t>(n);
      budget -= std::min(budget, got);
      if (direct) {
        advance(got);
      } else {
        stageEnd_ = got;
      }
      if (got < len) break;  // the socket is drained; poll() says when more arrives
      continue;
    }
    if (n == 0) {
      failPeer(str("rank ", peer_, " closed the connection (it exited, crashed or closed its transport)",
                   "; hint: check rank ", peer_, "'s log for its first error"));
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    failPeer(str("receiving from rank ", peer_, " failed: ", std::strerror(errno),
                 "; hint: rank ", peer_, " probably exited or crashed, check its log"));
    return;
  }
  consumeStaged();
}

void Pair::consumeStaged() {
  while (stageBegin_ < stageEnd_ && !failed()) {
    const size_t avail = stageEnd_ - stageBegin_;
    const uint8_t* src = stage_.get() + stageBegin_;
    if (sink_ == Sink::kHeader) {
      const size_t take = std::min(avail, kFrameHeaderBytes - hdrGot_);
      std::memcpy(hdrBuf_ + hdrGot_, src, take);
      hdrGot_ += take;
      stageBegin_ += take;
      if (hdrGot_ == kFrameHeaderBytes) {
        hdrGot_ = 0;
        onHeader();
      }
      continue;
    }
    size_t len;
    uint8_t* dst = payloadTarget(&len);
    const size_t take = std::min(avail, len);
    if (sink_ != Sink::kDiscard) std::memcpy(dst, src, take);
    stageBegin_ += take;
    advance(take);
  }
}

uint8_t* Pair::payloadTarget(size_t* len) {
  const size_t remaining = static_cast<size_t>(cur_.bytes - curGot_);
  switch (sink_) {
    case Sink::kRequest:
      if (curReq_->reduces) {
        *len = std::min(remaining, chunk_ - scratchFill_);
        return scratch() + scratchFill_;
      }
      *len = std::min(remaining, chunk_);
      return curReq_->data + curGot_;
    case Sink::kHeld: {
      Held& h = *curHeld_;
      const size_t want = std::min(remaining, chunk_);
      const size_t need = curGot_ + want;
      if (need > h.cap) {
        size_t cap = std::max({need, h.cap * 2, std::min<size_t>(kHeldInitialBytes, cur_.bytes)});
        cap = std::min<size_t>(cap, cur_.bytes);
        std::unique_ptr<uint8_t[]> buf(new uint8_t[cap]);
        if (h.got > 0) std::memcpy(buf.get(), h.buf.get(), h.got);
        h.buf = std::move(buf);
        h.cap = cap;
      }
      *len = want;
      return h.buf.get() + curGot_;
    }
    case Sink::kDiscard:
      *len = std::min(remaining, chunk_);
      return scratch();
    case Sink::kHeader:
      break;
  }
  CHORUS_CHECK(false, "rank ", rank_, ": payload bytes from rank ", peer_, " with no message in progress");
  return nullptr;
}

void Pair::advance(size_t n) {
  curGot_ += n;
  if (sink_ == Sink::kRequest) {
    if (curReq_->reduces) {
      scratchFill_ += n;
      reduceScratch();
    }
    curReq_->transferred = curGot_;
  } else if (sink_ == Sink::kHeld) {
    curHeld_->got = curGot_;
  }
  if (curGot_ == cur_.bytes) finishMessage();
}

void Pair::reduceScratch() {
  const size_t es = dtypeSize(curReq_->reduce.dtype);
  const size_t whole = scratchFill_ / es * es;
  if (whole == 0) return;
  const size_t offset = curGot_ - scratchFill_;  // bytes already reduced into the destination
  reduceInto(curReq_->data + offset, scratch(), whole / es, curReq_->reduce.dtype, curReq_->reduce.op);
  scratchFill_ -= whole;
  if (scratchFill_ > 0) std::memmove(scratch(), scratch() + whole, scratchFill_);
}

void Pair::onHeader() {
  try {
    cur_ = decodeFrame(hdrBuf_, kFrameHeaderBytes);
  } catch (const FrameError& e) {
    failPeer(str("malformed frame from rank ", peer_, ": ", e.what(),
                 "; hint: something other than a chorus rank of the same build is writing to this connection"));
    return;
  }
  curGot_ = 0;
  scratchFill_ = 0;
  auto it = posted_.find(cur_.tag);
  if (it != posted_.end()) {
    TcpRequestPtr req = std::move(it->second.front());
    it->second.pop_front();
    if (it->second.empty()) posted_.erase(it);
    if (mismatch(cur_, *req)) {
      failMismatch(cur_, req);
      sink_ = Sink::kDiscard;
    } else {
      curReq_ = std::move(req);
      sink_ = Sink::kRequest;
    }
  } else {
    curHeld_ = std::make_shared<Held>();
    curHeld_->hdr = cur_;
    held_[cur_.tag].push_back(curHeld_);
    sink_ = Sink::kHeld;
  }
  if (cur_.bytes == 0) finishMessage();
}

void Pair::finishMessage() {
  if (sink_ == Sink::kRequest) {
    curReq_->transferred = curReq_->bytes;
    curReq_->done = true;
    curReq_.reset();
  }
  curHeld_.reset();
  sink_ = Sink::kHeader;
}

void Pair::failPeer(const std::string& reason) {
  if (failed()) return;
  failure_ = reason;
  if (curReq_) failRequest(curReq_, reason, true);
  curReq_.reset();
  if (curHeld_) {
    // A message cut off mid-way can never be delivered; complete ones stay receivable.
    auto it = held_.find(cur_.tag);
    if (it != held_.end() && !it->second.empty() && it->second.back() == curHeld_) it->second.pop_back();
    if (it != held_.end() && it->second.empty()) held_.erase(it);
    curHeld_.reset();
  }
  for (auto& [tag, q] : posted_) {
    for (auto& req : q) failRequest(req, reason, true);
  }
  posted_.clear();
  for (auto& req : sendQueue_) failRequest(req, reason, true);
  sendQueue_.clear();
  sink_ = Sink::kHeader;
  stageBegin_ = stageEnd_ = 0;
  ::shutdown(fd_.get(), SHUT_RDWR);
}

void Pair::abort(const std::string& why, bool peerError) {
  if (!failed()) failure_ = why;
  if (curReq_) failRequest(curReq_, why, peerError);
  curReq_.reset();
  curHeld_.reset();
  held_.clear();
  for (auto& [tag, q] : posted_) {
    for (auto& req : q) failRequest(req, why, peerError);
  }
  posted_.clear();
  for (auto& req : sendQueue_) failRequest(req, why, peerError);
  sendQueue_.clear();
  sink_ = Sink::kHeader;
  stageBegin_ = stageEnd_ = 0;
  if (fd_) ::shutdown(fd_.get(), SHUT_RDWR);
}

}  // namespace chorus::comm::tcp
