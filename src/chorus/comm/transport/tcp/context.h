// The tcp transport: a full mesh of TCP connections, one per pair of ranks, driven by one
// poll() loop on the caller's thread (no background thread once connected).
//
// Setup (the constructor): each rank listens on an ephemeral port and publishes "addr:port"
// in the store under "<prefix>/tcp/<rank>". Rank i connects to every rank j < i and accepts
// from every j > i; each connection first runs the job-secret handshake (net/auth.h), then
// the connector says its rank and world size and the acceptor answers with its own. A
// connection that fails the handshake or says something impossible is refused, logged with
// its address and counted (refusedConnections()); accepting goes on until every real peer
// arrived or the timeout passed. Accepting runs on a helper thread while this thread
// connects, so setup takes one round of handshakes, not one per rank.
//
// Data path: see pair.h. Waits (waitAll for every request, waitAny for the first) spin for CHORUS_SPIN_US with non-blocking poll(), then block
// in poll() until the deadline; every wait progresses the sends and receives of all peers,
// so a send to the right and a receive from the left move together.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <poll.h>

#include "chorus/comm/net/socket.h"
#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/tcp/pair.h"
#include "chorus/comm/transport/transport.h"

namespace chorus::comm::tcp {

class TcpContext : public Transport {
 public:
  // Connects the full mesh; blocks until every peer is connected or opts.timeout passes
  // (TimeoutError naming the ranks that never connected). opts.store must outlive the call.
  explicit TcpContext(const TransportOptions& opts);
  ~TcpContext() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* name() const override { return "tcp"; }

  RequestPtr isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) override;
  RequestPtr irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes,
                   const RecvReduce* reduce = nullptr) override;
  void waitAll(std::span<const RequestPtr> reqs, const Deadline& deadline) override;
  size_t waitAny(std::span<const RequestPtr> reqs, const Deadline& deadline) override;
  bool test(const RequestPtr& req) override;
  void close() override;

  // Connections refused during setup for failing the secret handshake or sending a bad hello.
  int refusedConnections() const { return refused_.load(); }
  // "host:port" this rank listened on during setup.
  const std::string& listenAddress() const { return listenAddress_; }
  // Bytes of one send/recv call and of the reduce scratch (CHORUS_TCP_CHUNK_BYTES).
  size_t chunkBytes() const { return chunk_; }

 private:
  enum class WaitMode : uint8_t { kAll, kAny };

  // The loop behind waitAll (returns reqs.size()) and waitAny (returns the index it found).
  size_t wait(std::span<const RequestPtr> reqs, const Deadline& deadline, WaitMode mode);
  std::vector<net::Fd> connectMesh(const TransportOptions& opts);
  net::Fd connectTo(int peer, const TransportOptions& opts, const Deadline& deadline);
  Pair& pairFor(int peer, const char* op);
  // One round of poll() over every live connection; blocks up to timeoutMs (0: never),
  // releasing the mutex while it blocks so close() can run.
  void progress(std::unique_lock<std::mutex>& lock, int timeoutMs);
  std::string closedMessage() const;

  const int rank_;
  const int size_;
  size_t chunk_ = 0;
  int64_t spinNs_ = 0;
  std::string listenAddress_;
  std::atomic<int> refused_{0};

  std::mutex mu_;
  bool closed_ = false;
  net::Fd wakeFd_;  // eventfd: close() wakes a waiter blocked in poll()
  std::vector<std::unique_ptr<Pair>> pairs_;  // indexed by rank; null for this rank
  std::vector<pollfd> pollFds_;
  std::vector<Pair*> pollPairs_;
};

}  // namespace chorus::comm::tcp
