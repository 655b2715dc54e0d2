// The tcp transport: a full mesh of TCP connections, one per pair of ranks, driven by one
// poll() loop on the caller's thread (no background thread once connected, except the rejoin
// acceptor below).
//
// Setup (the constructor): each rank listens on an ephemeral port and publishes "addr:port"
// in the store under "<prefix>/tcp/<rank>". Rank i connects to every rank j < i and accepts
// from every j > i; each connection first runs the job-secret handshake (net/auth.h), then
// the connector says its rank and world size and the acceptor answers with its own. A
// connection that fails the handshake or says something impossible is refused, logged with
// its address and counted (refusedConnections()); accepting goes on until every real peer
// arrived or the timeout passed. Accepting runs on one helper thread while this thread
// connects, so setup takes one round of handshakes, not one per rank; that thread serves
// every accepted connection at once in a poll() loop, so connections that never finish the
// handshake cost no thread, only a descriptor each (at most the expected ranks + 64 at once;
// beyond that new ones wait in the listen backlog), until their 10 s handshake deadline.
//
// Restarted ranks (opts.acceptRejoin / opts.rejoin): every rank keeps its listening socket
// and a "rejoin acceptor" thread, which takes a restarted process's connection (handshake and
// a rejoin hello, the same poll loop as setup's: up to 64 connections at once, 5 s each) and
// queues it; the caller's thread adopts it at its next
// call (progress, isend, irecv, peerEpoch, awaitPeer): the old connection fails with
// PeerError and the new one replaces it. A rejoining process (opts.rejoin) publishes its new
// address, then connects to every other rank once; a rank that does not answer gets a failed
// connection. See context.cc for the protocol.
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
#include <thread>
#include <vector>

#include <poll.h>

#include "chorus/comm/net/socket.h"
#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/tcp/pair.h"
#include "chorus/comm/transport/transport.h"

namespace chorus::comm::tcp {

class Context : public Transport {
 public:
  // Connects the full mesh; blocks until every peer is connected or opts.timeout passes
  // (TimeoutError naming the ranks that never connected). opts.store must outlive the call.
  // With opts.rejoin it instead connects to the ranks of a running job in place of
  // opts.rank; it blocks at most about opts.timeout, and a rank that does not answer in that
  // time gets a failed connection (requests to it fail with PeerError) rather than an error.
  explicit Context(const TransportOptions& opts);
  ~Context() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* name() const override { return "tcp"; }

  RequestPtr isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) override;
  RequestPtr irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes,
                   const RecvReduce* reduce = nullptr) override;
  bool test(const RequestPtr& req) override;
  std::string progressOf(const Request& r) const override;
  // Fails every pending request, wakes any waiter and (with acceptRejoin) stops and joins
  // the rejoin acceptor thread. Idempotent.
  void close() override;

  // How many processes have taken `peer`'s place since this transport connected (0 for this
  // rank). Adopts a replacement that has connected. Throws InvalidArgument for a bad peer.
  uint64_t peerEpoch(int peer) override;
  // Progresses every connection (spinning, then blocking in poll) until peerEpoch(peer) >
  // epoch, and returns it. Throws TimeoutError at the deadline, Error when the transport was
  // made without acceptRejoin or is closed, InvalidArgument for a bad peer.
  uint64_t awaitPeer(int peer, uint64_t epoch, const Deadline& deadline) override;

  // Connections refused during setup, or by the rejoin acceptor, for failing the secret
  // handshake or sending a bad hello. Thread-safe.
  int refusedConnections() const { return refused_.load(); }
  // "host:port" this rank listens on (during setup; for good with acceptRejoin).
  const std::string& listenAddress() const { return listenAddress_; }
  // Bytes of one send/recv call and of the reduce scratch (CHORUS_TCP_CHUNK_BYTES).
  size_t chunkBytes() const { return chunk_; }

 private:
  size_t wait(std::span<const RequestPtr> reqs, const Deadline& deadline, WaitMode mode) override;
  std::vector<net::Fd> connectMesh(const TransportOptions& opts);
  net::Fd connectTo(int peer, const TransportOptions& opts, const Deadline& deadline);
  // Listens on opts.bindAddr (or the store's interface) and sets listenFd_/listenAddress_.
  void startListening(const TransportOptions& opts);
  // The constructor's path with opts.rejoin; fills pairs_.
  void rejoinMesh(const TransportOptions& opts);
  // A restarted process's connection to `peer`: connect once, handshake, rejoin hellos.
  net::Fd rejoinPeer(int peer, const TransportOptions& opts, const Deadline& deadline);
  void startRejoinAcceptor();
  void stopRejoinAcceptor();
  void acceptRejoins();  // the rejoin acceptor thread
  // Checks a rejoin hello and queues the connection (taking fd), then answers it; throws to
  // refuse it.
  void serveRejoin(net::Fd& fd, const std::string& addr, const uint8_t* helloBytes);
  // Replaces the pairs of the ranks whose restarted process the acceptor queued. Needs mu_.
  void adoptRejoins();
  void checkPeer(int peer, const char* op) const;
  Pair& pairFor(int peer, const char* op);
  // One round of poll() over every live connection; blocks up to timeoutMs (0: never),
  // releasing the mutex while it blocks so close() can run.
  void progress(std::unique_lock<std::mutex>& lock, int timeoutMs);
  std::string closedMessage() const;

  // A restarted process's connection, handed from the rejoin acceptor to the context.
  struct Rejoiner {
    int rank;
    net::Fd fd;
    std::string addr;
  };

  const int rank_;
  const int size_;
  size_t chunk_ = 0;
  int64_t spinNs_ = 0;
  std::string listenAddress_;
  std::atomic<int> refused_{0};
  bool acceptRejoin_ = false;
  std::string secret_;  // for the rejoin acceptor's handshakes
  net::Fd listenFd_;    // during setup; kept with acceptRejoin (the acceptor thread uses it)

  std::mutex mu_;
  bool closed_ = false;
  net::Fd wakeFd_;  // eventfd: close() and the rejoin acceptor wake a waiter blocked in poll()
  std::vector<std::unique_ptr<Pair>> pairs_;  // indexed by rank; null for this rank
  std::vector<uint64_t> epochs_;              // indexed by rank: replacements adopted
  // Replaced pairs, kept until no poll() that may list their fds is running (polling_ == 0).
  std::vector<std::unique_ptr<Pair>> retired_;
  int polling_ = 0;  // progress() calls blocked in poll() with mu_ released
  std::vector<pollfd> pollFds_;
  std::vector<Pair*> pollPairs_;

  // The rejoin acceptor. Lock order: mu_ before rjMu_; the acceptor takes only rjMu_.
  std::mutex rjMu_;
  std::vector<Rejoiner> rjQueue_;
  std::atomic<bool> rjQueued_{false};  // rjQueue_ is not empty (checked without the lock)
  bool rjStop_ = false;
  net::Fd rjStopFd_;  // eventfd: stops the acceptor
  std::thread rjThread_;
};

}  // namespace chorus::comm::tcp
