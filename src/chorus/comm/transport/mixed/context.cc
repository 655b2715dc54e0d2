#include "chorus/comm/transport/mixed/context.h"

#include <algorithm>
#include <chrono>

#include "chorus/common/error.h"

namespace chorus::comm {

std::unique_ptr<Transport> createMixedTransport(const TransportOptions& opts, const std::vector<int>& hosts) {
  return std::make_unique<mixed::Context>(opts, hosts);
}

namespace mixed {

namespace {

// How long one turn of a wait that needs both backends blocks on each (see context.h).
constexpr auto kShmSlice = std::chrono::microseconds(200);
constexpr auto kTcpSlice = std::chrono::microseconds(1000);

void dropFinished(std::vector<RequestPtr>& reqs) {
  std::erase_if(reqs, [](const RequestPtr& r) { return r->done || r->error; });
}

}  // namespace

Context::Context(const TransportOptions& opts, const std::vector<int>& hosts) : rank_(opts.rank), size_(opts.size) {
  if (size_ < 1 || rank_ < 0 || rank_ >= size_) {
    throw InvalidArgument(str("mixed transport: rank ", rank_, " is outside a job of ", size_, " rank(s)"));
  }
  if (hosts.size() != static_cast<size_t>(size_)) {
    throw InvalidArgument(str("rank ", rank_, ": mixed transport: ", hosts.size(), " host entries for ", size_, " ranks"));
  }
  if (opts.rejoin || opts.acceptRejoin) {
    throw InvalidArgument(str("rank ", rank_, ": the mixed transport cannot take restarted ranks; run the job over tcp ",
                              "(CHORUS_TRANSPORT=tcp)"));
  }
  local_.resize(static_cast<size_t>(size_));
  for (int r = 0; r < size_; ++r) local_[static_cast<size_t>(r)] = hosts[static_cast<size_t>(r)] == hosts[static_cast<size_t>(rank_)];
  TransportOptions shmOpts = opts;
  shmOpts.peers = local_;
  shm_ = createShmTransport(shmOpts);
  tcp_ = createTcpTransport(opts);
  setHosts(hosts);
}

Context::~Context() { close(); }

Context::Side Context::sideOf(int peer) const {
  if (peer < 0 || peer >= size_ || peer == rank_) {
    throw InvalidArgument(str("rank ", rank_, ": mixed transport: peer ", peer, " must be another rank in [0, ", size_, ")"));
  }
  return local_[static_cast<size_t>(peer)] ? kShm : kTcp;
}

RequestPtr Context::isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) {
  const Side s = sideOf(peer);
  RequestPtr req = backend(s).isend(peer, tag, sig, data, bytes);
  if (!req->done) inFlight_[s].push_back(req);
  return req;
}

RequestPtr Context::irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes, const RecvReduce* reduce) {
  const Side s = sideOf(peer);
  RequestPtr req = backend(s).irecv(peer, tag, sig, data, bytes, reduce);
  if (!req->done) inFlight_[s].push_back(req);
  return req;
}

bool Context::test(const RequestPtr& req) {
  CHORUS_CHECK(req != nullptr, "rank ", rank_, ": test on a null request");
  return backend(sideOf(req->peer)).test(req);
}

std::string Context::progressOf(const Request& r) const { return backend(sideOf(r.peer)).progressOf(r); }

void Context::close() {
  closed_.store(true);
  if (shm_) shm_->close();
  if (tcp_) tcp_->close();
}

size_t Context::wait(std::span<const RequestPtr> reqs, const Deadline& deadline, WaitMode mode) {
  const int64_t start = nowNs();
  std::vector<RequestPtr> need[2];
  for (;;) {
    // A closed transport has failed every request: that is no answer to "which one".
    if (mode != WaitMode::kAll && closed_.load()) {
      throw Error(str("rank ", rank_, ": waitAny on a closed mixed transport (close() was called or the transport was ",
                      "destroyed); create a new one"));
    }
    if (const size_t found = waitResult(reqs, mode); found != kPending) return found;
    if (deadline.expired()) return deadlinePassed(reqs, mode, nowNs() - start);
    need[kShm].clear();
    need[kTcp].clear();
    for (const auto& r : reqs) {
      if (!r->done && !r->error) need[sideOf(r->peer)].push_back(r);
    }
    dropFinished(inFlight_[kShm]);
    dropFinished(inFlight_[kTcp]);
    const bool busy[2] = {!need[kShm].empty() || !inFlight_[kShm].empty(),
                          !need[kTcp].empty() || !inFlight_[kTcp].empty()};
    if (busy[kShm] != busy[kTcp]) {
      // One backend has everything in flight: its own wait, exactly as without the other.
      const Side s = busy[kShm] ? kShm : kTcp;
      if (mode == WaitMode::kAll) {
        backend(s).waitAll(need[s], deadline);
      } else {
        backend(s).waitAnyUntil(need[s], deadline);
      }
      continue;
    }
    // Both: take turns, blocking briefly on what the wait needs from each backend, or only
    // progressing a backend whose requests in flight belong to other waits.
    for (const Side s : {kShm, kTcp}) {
      if (!need[s].empty()) {
        backend(s).waitAnyUntil(need[s], deadline.within(s == kShm ? Clock::duration(kShmSlice) : Clock::duration(kTcpSlice)));
        if (mode != WaitMode::kAll && waitResult(reqs, mode) != kPending) break;
      } else if (!inFlight_[s].empty()) {
        try {
          backend(s).test(inFlight_[s].front());
        } catch (const std::exception&) {
          // That request failed; its error stays in it for whoever waits on it.
        }
      }
    }
  }
}

}  // namespace mixed
}  // namespace chorus::comm
