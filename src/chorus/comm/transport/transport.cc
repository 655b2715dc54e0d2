// The parts of Transport that every backend shares: the argument checks of the waits, when a
// wait is over, what a timed-out wait says, and the host map.
#include "chorus/comm/transport/transport.h"

#include <algorithm>

namespace chorus::comm {

namespace {

void requireRequests(const Transport& t, std::span<const RequestPtr> reqs, const char* op) {
  if (reqs.empty()) {
    throw InvalidArgument(str("rank ", t.rank(), ": ", op, " on an empty list of requests; pass at least one"));
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (!reqs[i]) throw InvalidArgument(str("rank ", t.rank(), ": ", op, ": request ", i, " of ", reqs.size(), " is null"));
  }
}

}  // namespace

void Transport::waitAll(std::span<const RequestPtr> reqs, const Deadline& deadline) {
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (!reqs[i]) throw InvalidArgument(str("rank ", rank(), ": waitAll: request ", i, " of ", reqs.size(), " is null"));
  }
  wait(reqs, deadline, WaitMode::kAll);
}

size_t Transport::waitAny(std::span<const RequestPtr> reqs, const Deadline& deadline) {
  requireRequests(*this, reqs, "waitAny");
  return wait(reqs, deadline, WaitMode::kAny);
}

size_t Transport::waitAnyUntil(std::span<const RequestPtr> reqs, const Deadline& deadline) {
  requireRequests(*this, reqs, "waitAnyUntil");
  return wait(reqs, deadline, WaitMode::kAnyUntil);
}

size_t Transport::waitResult(std::span<const RequestPtr> reqs, WaitMode mode) {
  if (mode != WaitMode::kAll) {
    for (size_t i = 0; i < reqs.size(); ++i) {
      if (reqs[i]->done || reqs[i]->error) return i;
    }
    return kPending;
  }
  bool all = true;
  for (const auto& r : reqs) {
    if (r->error) std::rethrow_exception(r->error);
    if (!r->done) all = false;
  }
  return all ? reqs.size() : kPending;
}

std::string Transport::progressOf(const Request& r) const { return str("(", r.bytes, " bytes)"); }

size_t Transport::deadlinePassed(std::span<const RequestPtr> reqs, WaitMode mode, int64_t waitedNs) const {
  if (mode == WaitMode::kAnyUntil) return reqs.size();
  constexpr int kListed = 8;
  std::string pending, peers;
  std::vector<int> listed;
  int count = 0;
  for (const auto& r : reqs) {
    if (r->done || r->error) continue;
    if (++count <= kListed) {
      pending += str(count > 1 ? "; " : "", r->kind == Request::Kind::kSend ? "send to" : "recv from", " rank ", r->peer,
                     " tag ", r->tag, " ", progressOf(*r));
    }
    if (std::find(listed.begin(), listed.end(), r->peer) == listed.end()) {
      listed.push_back(r->peer);
      peers += str(peers.empty() ? "" : ", ", r->peer);
    }
  }
  if (count > kListed) pending += str("; and ", count - kListed, " more");
  throw TimeoutError(str("rank ", rank(), ": ", name(), " transport timed out after ", waitedNs / 1000000,
                         " ms waiting for ", mode == WaitMode::kAny ? "any of " : "", count,
                         " request(s) with rank(s) ", peers, ": ", pending,
                         ". The peer may be slow, stuck, or calling collectives in another order; raise "
                         "CHORUS_TIMEOUT_MS if it is only slow"));
}

bool Transport::noteCloseCause(std::exception_ptr cause) {
  std::lock_guard<std::mutex> lock(causeMu_);
  if (closeCause_) return false;
  closeCause_ = std::move(cause);
  return true;
}

std::exception_ptr Transport::closeCause() const {
  std::lock_guard<std::mutex> lock(causeMu_);
  return closeCause_;
}

int Transport::hostOf(int r) const {
  if (r < 0 || r >= size()) throw InvalidArgument(str("rank ", rank(), ": hostOf(", r, ") outside [0, ", size(), ")"));
  return hosts_.empty() ? r : hosts_[static_cast<size_t>(r)];
}

int Transport::hostCount() const {
  if (hosts_.empty()) return size();
  return *std::max_element(hosts_.begin(), hosts_.end()) + 1;
}

void Transport::setHosts(std::vector<int> hosts) {
  CHORUS_CHECK(static_cast<int>(hosts.size()) == size(), "setHosts: ", hosts.size(), " hosts for ", size(), " ranks");
  hosts_ = std::move(hosts);
}

}  // namespace chorus::comm
