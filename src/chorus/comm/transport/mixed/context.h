// The mixed transport: one Transport whose messages to ranks on this rank's host go through
// shared memory (an shm::Context connected to those ranks only) and whose messages to other
// hosts go through TCP (a tcp::Context). The factory picks it for "auto" when a job spans
// hosts and some host runs several ranks; the host map comes from the ranks' published host
// identities (factory.h).
//
// Waiting. The two backends block differently (shm on a futex in shared memory, tcp in
// poll()), and neither can wake the other's sleeper. A wait whose pending requests, and every
// other request in flight, are all on one backend is that backend's own wait, unchanged: this
// is the case in every phase of the hierarchical collectives (shm inside the host, then tcp
// between hosts, then shm). When both backends have work in flight, the wait takes turns:
// it blocks on the shm requests for at most 200 us, then on the tcp requests for at most 1 ms
// (or, when the wait needs nothing from one backend, makes that backend progress without
// blocking), until the wait is over. A message may so wait up to a slice longer than on its
// own backend; nothing stalls for good, since each turn progresses every connection of that
// backend.
//
// The tcp context is a full mesh, connections to this host's ranks included (unused); the shm
// context maps only this host's ranks' segments.
// Thread-safety: as Transport.
#pragma once

#include <atomic>
#include <memory>
#include <span>
#include <vector>

#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/transport.h"

namespace chorus::comm::mixed {

class Context : public Transport {
 public:
  // hosts[r]: rank r's host index, the same vector on every rank. Connects both backends
  // (blocking as their constructors do); opts.rejoin is refused (InvalidArgument).
  Context(const TransportOptions& opts, const std::vector<int>& hosts);
  ~Context() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* name() const override { return "mixed"; }

  RequestPtr isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) override;
  RequestPtr irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes,
                   const RecvReduce* reduce = nullptr) override;
  bool test(const RequestPtr& req) override;
  std::string progressOf(const Request& r) const override;
  void close() override;
  bool sharedMemoryTo(int peer) const override { return peer >= 0 && peer < size_ && peer != rank_ && local_[peer]; }

 protected:
  size_t wait(std::span<const RequestPtr> reqs, const Deadline& deadline, WaitMode mode) override;

 private:
  enum Side : int { kShm = 0, kTcp = 1 };
  Side sideOf(int peer) const;
  Transport& backend(Side s) const { return s == kShm ? *shm_ : *tcp_; }

  const int rank_;
  const int size_;
  std::vector<bool> local_;  // local_[r]: rank r is on this rank's host
  std::atomic<bool> closed_{false};
  std::unique_ptr<Transport> shm_;
  std::unique_ptr<Transport> tcp_;
  // Requests posted and not yet seen finished, per backend: a wait that needs nothing from a
  // backend still makes it progress while these are in flight.
  std::vector<RequestPtr> inFlight_[2];
};

}  // namespace chorus::comm::mixed
