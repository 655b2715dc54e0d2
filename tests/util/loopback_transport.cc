// The loopback transport: one mutex guards every queue and request of the fabric; each rank
// waits on its own condition variable, which whoever completes one of its requests notifies.
//
// Matching: a posted receive looks for the oldest unmatched send from its peer under its tag
// (FIFO); a posted send looks for the oldest posted receive that names it. Whichever side
// arrives second copies (or reduces) the data and completes both.
#include "loopback_transport.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>

#include "chorus/common/error.h"
#include "chorus/common/reduce.h"

namespace chorus::testutil {

namespace {

using comm::Request;
using comm::RequestPtr;

struct LoopRequest : Request {
  LoopRequest(Kind kind, int owner, int peer, uint64_t tag, uint64_t sig, size_t bytes)
      : Request(kind, peer, tag, sig, bytes), owner(owner) {}
  const int owner;                 // the rank that posted it
  const void* src = nullptr;       // send: the caller's buffer (until eager-copied)
  bool isEager = false;            // send: copied at post time into `eager`
  std::vector<char> eager;
  void* dst = nullptr;             // recv
  bool reduce = false;
  comm::RecvReduce rr{};
};
using LoopPtr = std::shared_ptr<LoopRequest>;

struct Fabric {
  explicit Fabric(int n) : size(n), closed(static_cast<size_t>(n), false), sends(static_cast<size_t>(n)),
                           recvs(static_cast<size_t>(n)) {
    for (int i = 0; i < n; ++i) cv.push_back(std::make_unique<std::condition_variable>());
  }

  const int size;
  std::mutex mu;
  std::vector<std::unique_ptr<std::condition_variable>> cv;  // by rank
  std::vector<bool> closed;
  std::vector<std::deque<LoopPtr>> sends;  // by destination: sends not yet matched
  std::vector<std::deque<LoopPtr>> recvs;  // by receiver: receives not yet matched

  void complete(LoopRequest& req, std::exception_ptr error) {
    req.done = true;
    req.error = std::move(error);
    cv[static_cast<size_t>(req.owner)]->notify_all();
  }

  // Delivers send s into receive r (same peers and tag); under mu.
  void match(LoopRequest& s, LoopRequest& r) {
    if (s.bytes != r.bytes || s.sig != r.sig) {
      complete(r, std::make_exception_ptr(MismatchError(
                      str("loopback rank ", r.owner, ": message from rank ", s.owner, " tag 0x", std::hex, r.tag,
                          std::dec, " has ", s.bytes, " bytes and signature 0x", std::hex, s.sig, std::dec,
                          " but the receive expects ", r.bytes, " bytes and signature 0x", std::hex, r.sig,
                          "; the ranks called different collectives (or counts/dtypes)"))));
      complete(s, nullptr);
      return;
    }
    const void* data = s.isEager ? s.eager.data() : s.src;
    if (r.bytes > 0) {
      if (r.reduce) {
        reduceInto(r.dst, data, r.bytes / dtypeSize(r.rr.dtype), r.rr.dtype, r.rr.op);
      } else {
        std::memcpy(r.dst, data, r.bytes);
      }
    }
    complete(r, nullptr);
    if (!s.done) complete(s, nullptr);
  }

  // Fails every request that involves rank c, which just closed; under mu.
  void closeRank(int c) {
    closed[static_cast<size_t>(c)] = true;
    auto peerGone = [&](int owner) {
      return std::make_exception_ptr(PeerError(
          str("loopback rank ", owner, ": peer rank ", c, " closed its transport (it failed or exited)"), c));
    };
    // Our own receives, and sends to anyone that are still waiting to be taken from our buffer.
    for (auto& r : recvs[static_cast<size_t>(c)]) {
      complete(*r, std::make_exception_ptr(Error(str("loopback rank ", c, ": transport closed"))));
    }
    recvs[static_cast<size_t>(c)].clear();
    for (int d = 0; d < size; ++d) {
      auto& q = sends[static_cast<size_t>(d)];
      for (auto it = q.begin(); it != q.end();) {
        if ((*it)->owner == c && !(*it)->done) {
          complete(**it, std::make_exception_ptr(Error(str("loopback rank ", c, ": transport closed"))));
          it = q.erase(it);
        } else {
          ++it;
        }
      }
    }
    // Others' receives from us that no buffered message can satisfy, and their sends to us.
    for (int d = 0; d < size; ++d) {
      auto& q = recvs[static_cast<size_t>(d)];
      for (auto it = q.begin(); it != q.end();) {
        if ((*it)->peer == c) {
          complete(**it, peerGone(d));
          it = q.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& s : sends[static_cast<size_t>(c)]) {
      if (!s->done) complete(*s, peerGone(s->owner));
    }
    sends[static_cast<size_t>(c)].clear();
  }
};

class LoopbackTransport : public comm::Transport {
 public:
  LoopbackTransport(std::shared_ptr<Fabric> fabric, int rank) : fabric_(std::move(fabric)), rank_(rank) {}
  ~LoopbackTransport() override { close(); }

  int rank() const override { return rank_; }
  int size() const override { return fabric_->size; }
  const char* name() const override { return "loopback"; }

  RequestPtr isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) override {
    std::lock_guard<std::mutex> lock(fabric_->mu);
    checkUsable(peer, "isend");
    auto req = std::make_shared<LoopRequest>(Request::Kind::kSend, rank_, peer, tag, sig, bytes);
    req->src = data;
    if (fabric_->closed[static_cast<size_t>(peer)]) {
      fabric_->complete(*req, std::make_exception_ptr(PeerError(
                                  str("loopback rank ", rank_, ": send to rank ", peer, " tag 0x", std::hex, tag,
                                      std::dec, ": the peer closed its transport (it failed or exited)"),
                                  peer)));
      return req;
    }
    auto& waiting = fabric_->recvs[static_cast<size_t>(peer)];
    auto it = std::find_if(waiting.begin(), waiting.end(),
                           [&](const LoopPtr& r) { return r->peer == rank_ && r->tag == tag; });
    if (it != waiting.end()) {
      LoopPtr r = *it;
      waiting.erase(it);
      fabric_->match(*req, *r);
      return req;
    }
    if (bytes <= kEagerBytes) {
      req->isEager = true;
      req->eager.assign(static_cast<const char*>(data), static_cast<const char*>(data) + bytes);
      fabric_->complete(*req, nullptr);
    }
    fabric_->sends[static_cast<size_t>(peer)].push_back(req);
    return req;
  }

  RequestPtr irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes,
                   const comm::RecvReduce* reduce) override {
    std::lock_guard<std::mutex> lock(fabric_->mu);
    checkUsable(peer, "irecv");
    auto req = std::make_shared<LoopRequest>(Request::Kind::kRecv, rank_, peer, tag, sig, bytes);
    req->dst = data;
    if (reduce != nullptr) {
      if (bytes % dtypeSize(reduce->dtype) != 0) {
        throw InvalidArgument(str("loopback rank ", rank_, ": irecv from rank ", peer, " reducing ",
                                  dtypeName(reduce->dtype), ": ", bytes, " bytes is not a whole number of elements"));
      }
      req->reduce = true;
      req->rr = *reduce;
    }
    auto& queued = fabric_->sends[static_cast<size_t>(rank_)];
    auto it = std::find_if(queued.begin(), queued.end(),
                           [&](const LoopPtr& s) { return s->owner == peer && s->tag == tag; });
    if (it != queued.end()) {
      LoopPtr s = *it;
      queued.erase(it);
      fabric_->match(*s, *req);
      return req;
    }
    if (fabric_->closed[static_cast<size_t>(peer)]) {
      fabric_->complete(*req, std::make_exception_ptr(PeerError(
                                  str("loopback rank ", rank_, ": receive from rank ", peer, " tag 0x", std::hex, tag,
                                      std::dec, ": the peer closed its transport (it failed or exited)"),
                                  peer)));
      return req;
    }
    fabric_->recvs[static_cast<size_t>(rank_)].push_back(req);
    return req;
  }

  bool test(const RequestPtr& req) override {
    std::lock_guard<std::mutex> lock(fabric_->mu);
    return comm::checkDone(*req);
  }

  void close() override {
    std::lock_guard<std::mutex> lock(fabric_->mu);
    if (fabric_->closed[static_cast<size_t>(rank_)]) return;
    fabric_->closeRank(rank_);
  }

 private:
  size_t wait(std::span<const RequestPtr> reqs, const Deadline& deadline, comm::WaitMode mode) override {
    std::unique_lock<std::mutex> lock(fabric_->mu);
    const int64_t start = nowNs();
    for (;;) {
      if (mode != comm::WaitMode::kAll && fabric_->closed[static_cast<size_t>(rank_)]) {
        throw Error(str("loopback rank ", rank_, ": waitAny after close()"));
      }
      if (const size_t found = waitResult(reqs, mode); found != kPending) return found;
      if (deadline.expired()) return deadlinePassed(reqs, mode, nowNs() - start);
      const auto slice = std::min<int64_t>(deadline.remainingNs(), 100'000'000);
      fabric_->cv[static_cast<size_t>(rank_)]->wait_for(lock, std::chrono::nanoseconds(slice));
    }
  }

  // Under mu.
  void checkUsable(int peer, const char* op) const {
    if (fabric_->closed[static_cast<size_t>(rank_)]) {
      throw Error(str("loopback rank ", rank_, ": ", op, " after close()"));
    }
    if (peer < 0 || peer >= fabric_->size || peer == rank_) {
      throw InvalidArgument(str("loopback rank ", rank_, ": ", op, " to rank ", peer, " of ", fabric_->size));
    }
  }

  std::shared_ptr<Fabric> fabric_;
  const int rank_;
};

}  // namespace

std::vector<std::unique_ptr<comm::Transport>> createLoopbackTransports(int size) {
  auto fabric = std::make_shared<Fabric>(size);
  std::vector<std::unique_ptr<comm::Transport>> out;
  for (int r = 0; r < size; ++r) out.push_back(std::make_unique<LoopbackTransport>(fabric, r));
  return out;
}

}  // namespace chorus::testutil
