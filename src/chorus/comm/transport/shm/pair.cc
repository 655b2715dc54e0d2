// One directed pair of the shm transport: streaming frames through the two rings, matching
// them to posted receives, holding unexpected ones, single-copy (CMA) reads, and failing what
// can no longer complete when the peer closes or dies. The frame format and the protocol are
// described in pair.h; the rings in ring.h.
//
// A closed or dead peer. Its closed flag is read before the ring is drained, so every frame it
// wrote before closing is still delivered (a message that arrived in full is never lost);
// only then are the remaining requests failed. A CMA read checks the flag again after copying:
// a sender that closed meanwhile may have reused its buffer, so the copy cannot be trusted.
#include "chorus/comm/transport/shm/pair.h"

#include <algorithm>
#include <cstring>

#include "chorus/common/dtype.h"
#include "chorus/common/error.h"
#include "chorus/common/reduce.h"

namespace chorus::comm::shm {

namespace {

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// "receiving tag 5 (4096 bytes, 1024 received)" / "sending tag 5 (4096 bytes)".
std::string activity(const ShmRequest& r) {
  const uint64_t moved = std::min<uint64_t>(r.moved, r.bytes);
  if (r.kind == Request::Kind::kSend) {
    return str("sending tag ", r.tag, " (", r.bytes, " bytes, ", moved, " sent)");
  }
  return str("receiving tag ", r.tag, " (", r.bytes, " bytes, ", moved, " received)");
}

constexpr size_t kCmaCopyChunk = size_t{8} << 20;

}  // namespace

Pair::Pair(const PairEnv* env, const Endpoints& ends)
    : env_(env), ends_(ends), writer_(ends.outControl, ends.outData, ends.ringBytes),
      reader_(ends.inControl, ends.inData, ends.ringBytes) {}

void Pair::complete(ShmRequest& req) { req.done = true; }

void Pair::fail(ShmRequest& req, std::exception_ptr e) {
  req.error = std::move(e);
  req.done = true;
}

std::exception_ptr Pair::mismatchError(const FrameHeader& h, const ShmRequest& req) const {
  return std::make_exception_ptr(MismatchError(
      str("rank ", env_->rank, ": message from rank ", ends_.peer, " with tag ", h.tag, " does not match the receive: ",
          "sent ", h.bytes, " bytes with signature ", hex(h.sig), ", receive expects ", req.bytes,
          " bytes with signature ", hex(req.sig),
          "; the two ranks called different collectives, counts or dtypes for the same call")));
}

std::exception_ptr Pair::goneError(const ShmRequest& req) const {
  const std::string what = activity(req);
  const int peer = ends_.peer;
  switch (state_) {
    case PeerState::kDead:
      return std::make_exception_ptr(PeerError(
          str("rank ", env_->rank, ": peer rank ", peer, " (pid ", ends_.peerProcess.pid, ") died while ", what,
              "; check that rank's output for the cause"),
          peer));
    case PeerState::kCorrupt:
      return std::make_exception_ptr(PeerError(
          str("rank ", env_->rank, ": peer rank ", peer, " sent a corrupt frame (kind ", corruptKind_, ") while ", what,
              "; its shared memory was overwritten or it runs another chorus version"),
          peer));
    default:
      return std::make_exception_ptr(PeerError(
          str("rank ", env_->rank, ": peer rank ", peer, " closed its transport while ", what,
              "; it finished or failed before this rank: check its output"),
          peer));
  }
}

void Pair::notePeerClosed() {
  if (state_ == PeerState::kAlive && ends_.peerHeader->closed.load(std::memory_order_acquire) != 0) {
    state_ = PeerState::kClosed;
  }
}

void Pair::checkLiveness() {
  if (state_ != PeerState::kAlive || !ends_.livenessChecks || !hasPending()) return;
  if (processGone(ends_.peerProcess)) state_ = PeerState::kDead;
}

bool Pair::hasPending() const {
  return !sendQueue_.empty() || !cmaWait_.empty() || !posted_.empty() || !cmaReady_.empty() ||
         (in_.active && in_.target == Target::kRequest);
}

// ---- sending ----

void Pair::postSend(const ShmRequestPtr& req) {
  notePeerClosed();
  if (state_ != PeerState::kAlive) {
    fail(*req, goneError(*req));
    return;
  }
  sendQueue_.push_back(req);
  progressSends();
}

bool Pair::collectAcks() {
  bool changed = false;
  for (auto it = cmaWait_.begin(); it != cmaWait_.end();) {
    ShmRequest& r = **it;
    const int slot = static_cast<int>(r.cmaSeq % kAckSlots);
    const uint64_t ack = ends_.outControl->acks[slot].load(std::memory_order_acquire);
    if ((ack >> 2) != r.cmaSeq + 1) {
      ++it;
      continue;
    }
    slotBusy_[slot] = false;
    switch (ack & 3) {
      case kAckOk:
        r.moved = r.bytes;
        complete(r);
        break;
      case kAckMismatch:
        fail(r, std::make_exception_ptr(MismatchError(
                    str("rank ", env_->rank, ": peer rank ", ends_.peer, " refused the message sent with tag ", r.tag,
                        " (", r.bytes, " bytes, signature ", hex(r.sig),
                        "): its receive expects another size or signature; see the MismatchError on that rank"))));
        break;
      default:
        fail(r, std::make_exception_ptr(PeerError(
                    str("rank ", env_->rank, ": peer rank ", ends_.peer, " could not read the message sent with tag ",
                        r.tag, " (", r.bytes, " bytes) from this rank's memory; see the PeerError on that rank"),
                    ends_.peer)));
        break;
    }
    it = cmaWait_.erase(it);
    changed = true;
  }
  return changed;
}

bool Pair::progressSends() {
  bool changed = collectAcks();
  if (state_ != PeerState::kAlive) return changed;

  const uint64_t chunk = env_->chunkBytes;
  while (!sendQueue_.empty()) {
    ShmRequest& r = *sendQueue_.front();
    if (!r.started) {
      if (writer_.writable(kFrameBytes) < kFrameBytes && writer_.askForSpace() < kFrameBytes) break;
      FrameHeader h{};
      h.tag = r.tag;
      h.sig = r.sig;
      h.bytes = r.bytes;
      const uint64_t seq = nextCmaSeq_;
      if (ends_.cmaToPeer && r.bytes >= env_->cmaMinBytes && !slotBusy_[seq % kAckSlots]) {
        h.kind = kFrameCma;
        h.cmaAddr = reinterpret_cast<uintptr_t>(r.src);
        h.cmaSeq = seq;
        writer_.write(&h, kFrameBytes);
        slotBusy_[seq % kAckSlots] = true;
        ++nextCmaSeq_;
        r.cmaSeq = seq;
        r.started = true;
        cmaWait_.push_back(std::move(sendQueue_.front()));
        sendQueue_.pop_front();
        changed = true;
        continue;
      }
      h.kind = kFrameData;
      writer_.write(&h, kFrameBytes);
      r.started = true;
      changed = true;
    }
    const uint64_t padded = pad8(r.bytes);
    while (r.moved < padded) {
      const uint64_t want = std::min(padded - r.moved, chunk);
      uint64_t room = writer_.writable(want);
      if (room == 0) room = writer_.askForSpace();
      if (room == 0) break;
      const uint64_t n = std::min(want, room);
      const uint64_t real = r.moved < r.bytes ? std::min(n, r.bytes - r.moved) : 0;
      writer_.write(r.src + r.moved, real);
      writer_.skip(n - real);
      r.moved += n;
      changed = true;
      if (writer_.unpublished() >= chunk && writer_.publish()) ringDoorbell(ends_.peerHeader->doorbell);
    }
    if (r.moved < padded) break;
    complete(r);
    sendQueue_.pop_front();
  }
  if (writer_.publish()) ringDoorbell(ends_.peerHeader->doorbell);
  return changed;
}

// ---- receiving ----

void Pair::postRecv(const ShmRequestPtr& req) {
  auto it = std::find_if(held_.begin(), held_.end(), [&](const auto& m) { return m->hdr.tag == req->tag; });
  if (it == held_.end()) {
    posted_.push_back(req);
    return;
  }
  std::unique_ptr<HeldMessage> h = std::move(*it);
  held_.erase(it);
  const bool streaming = in_.active && in_.target == Target::kHeld && in_.held == h.get();
  if (h->hdr.bytes != req->bytes || h->hdr.sig != req->sig) {
    fail(*req, mismatchError(h->hdr, *req));
    if (streaming) {
      in_.target = Target::kDiscard;
      in_.held = nullptr;
    }
    if (h->hdr.kind == kFrameCma) acknowledge(h->hdr.cmaSeq, kAckMismatch);
    return;
  }
  if (h->hdr.kind == kFrameCma) {
    cmaReady_.emplace_back(req, h->hdr);
    return;
  }
  const uint64_t have = streaming ? std::min<uint64_t>(in_.moved, req->bytes) : req->bytes;
  if (have > 0) deliver(*req, 0, h->data.get(), have);
  if (streaming) {
    req->moved = in_.moved;
    in_.target = Target::kRequest;
    in_.req = req;
    in_.held = nullptr;
  } else {
    req->moved = pad8(req->bytes);
    complete(*req);
  }
}

void Pair::deliver(ShmRequest& req, uint64_t offset, const uint8_t* p, size_t len) {
  if (req.reducing) {
    reduceInto(req.dst + offset, p, len / dtypeSize(req.reduce.dtype), req.reduce.dtype, req.reduce.op);
  } else {
    std::memcpy(req.dst + offset, p, len);
  }
}

void Pair::publishTail() {
  consumedSincePublish_ = 0;
  if (reader_.publish()) ringDoorbell(ends_.peerHeader->doorbell);
}

void Pair::acknowledge(uint64_t seq, AckStatus status) {
  ends_.inControl->acks[seq % kAckSlots].store(((seq + 1) << 2) | status, std::memory_order_release);
  ringDoorbell(ends_.peerHeader->doorbell);
}

void Pair::beginIncoming(const FrameHeader& h) {
  if (h.kind != kFrameData && h.kind != kFrameCma) {
    state_ = PeerState::kCorrupt;
    corruptKind_ = h.kind;
    return;
  }
  auto it = std::find_if(posted_.begin(), posted_.end(), [&](const ShmRequestPtr& r) { return r->tag == h.tag; });
  if (it != posted_.end()) {
    ShmRequestPtr req = std::move(*it);
    posted_.erase(it);
    if (h.bytes != req->bytes || h.sig != req->sig) {
      fail(*req, mismatchError(h, *req));
      if (h.kind == kFrameCma) {
        acknowledge(h.cmaSeq, kAckMismatch);
      } else {
        in_ = Incoming{true, h, 0, Target::kDiscard, nullptr, nullptr};
      }
      return;
    }
    if (h.kind == kFrameCma) {
      cmaReady_.emplace_back(std::move(req), h);
      return;
    }
    in_ = Incoming{true, h, 0, Target::kRequest, std::move(req), nullptr};
    return;
  }
  auto held = std::make_unique<HeldMessage>();
  held->hdr = h;
  if (h.kind == kFrameData) {
    held->data.reset(new uint8_t[h.bytes > 0 ? h.bytes : 1]);
    in_ = Incoming{true, h, 0, Target::kHeld, nullptr, held.get()};
  }
  held_.push_back(std::move(held));
}

void Pair::finishIncoming() {
  if (in_.target == Target::kRequest) complete(*in_.req);
  in_ = Incoming{};
}

bool Pair::progressRecvs() {
  notePeerClosed();
  bool changed = false;
  const uint64_t chunk = env_->chunkBytes;
  while (state_ != PeerState::kCorrupt) {
    if (!in_.active) {
      if (reader_.readable(kFrameBytes) < kFrameBytes) break;
      FrameHeader h;
      reader_.copyOut(&h, kFrameBytes);
      reader_.consume(kFrameBytes);
      consumedSincePublish_ += kFrameBytes;
      changed = true;
      beginIncoming(h);
      if (in_.active && in_.hdr.bytes == 0) finishIncoming();
      continue;
    }
    const uint64_t padded = pad8(in_.hdr.bytes);
    const uint64_t want = std::min(padded - in_.moved, chunk);
    const uint64_t avail = reader_.readable(want);
    if (avail == 0) break;
    const uint64_t n = std::min(want, avail);
    const uint64_t real = in_.moved < in_.hdr.bytes ? std::min(n, in_.hdr.bytes - in_.moved) : 0;
    uint64_t offset = in_.moved;
    reader_.forEachPiece(real, [&](const uint8_t* p, size_t len) {
      if (in_.target == Target::kRequest) {
        deliver(*in_.req, offset, p, len);
      } else if (in_.target == Target::kHeld) {
        std::memcpy(in_.held->data.get() + offset, p, len);
      }
      offset += len;
    });
    reader_.consume(n);
    consumedSincePublish_ += n;
    in_.moved += n;
    if (in_.target == Target::kRequest) in_.req->moved = in_.moved;
    changed = true;
    if (consumedSincePublish_ >= chunk) publishTail();
    if (in_.moved == padded) finishIncoming();
  }
  publishTail();
  // One single-copy read per call: a long copy here must not keep the caller from noticing
  // that the request it waits for is done (and posting the next step of a pipeline).
  if (!cmaReady_.empty()) {
    auto [req, h] = std::move(cmaReady_.front());
    cmaReady_.pop_front();
    runCmaRecv(req, h);
    changed = true;
  }
  if (failIfPeerGone()) changed = true;
  return changed;
}

void Pair::runCmaRecv(const ShmRequestPtr& req, const FrameHeader& h) {
  notePeerClosed();
  if (state_ != PeerState::kAlive) {
    fail(*req, goneError(*req));
    return;
  }
  const int pid = ends_.peerProcess.pid;
  int err = 0;
  if (req->reducing) {
    const size_t elem = dtypeSize(req->reduce.dtype);
    const size_t step = env_->scratchBytes / elem * elem;
    for (uint64_t off = 0; off < h.bytes && err == 0; off += step) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(step, h.bytes - off));
      err = cmaRead(pid, env_->scratch, h.cmaAddr + off, n);
      if (err == 0) reduceInto(req->dst + off, env_->scratch, n / elem, req->reduce.dtype, req->reduce.op);
      req->moved = off + n;
    }
  } else {
    for (uint64_t off = 0; off < h.bytes && err == 0; off += kCmaCopyChunk) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kCmaCopyChunk, h.bytes - off));
      err = cmaRead(pid, req->dst + off, h.cmaAddr + off, n);
      req->moved = off + n;
    }
  }
  if (err != 0) {
    if (err == ESRCH) state_ = PeerState::kDead;
    fail(*req, std::make_exception_ptr(PeerError(
                   str("rank ", env_->rank, ": reading ", h.bytes, " bytes of tag ", h.tag, " from peer rank ",
                       ends_.peer, " (pid ", pid, ") by cross-memory attach failed: ", std::strerror(err),
                       err == ESRCH ? "; the peer died" : "; set CHORUS_SHM_CMA=0 to send through the rings instead"),
                   ends_.peer)));
    if (err != ESRCH) acknowledge(h.cmaSeq, kAckFailed);
    return;
  }
  // The sender may have closed (and reused its buffer) while we copied; then the copy is void.
  notePeerClosed();
  if (state_ != PeerState::kAlive) {
    fail(*req, goneError(*req));
    return;
  }
  acknowledge(h.cmaSeq, kAckOk);
  complete(*req);
}

bool Pair::failIfPeerGone() {
  // Called after progressRecvs drained the ring: a closed or dead peer writes nothing more, so
  // what is still pending now can never complete.
  if (state_ == PeerState::kAlive || !hasPending()) return false;
  // Acknowledgements written before the peer closed count (the flag was read first).
  collectAcks();
  failAll([this](const ShmRequest& r) { return goneError(r); });
  return true;
}

}  // namespace chorus::comm::shm
