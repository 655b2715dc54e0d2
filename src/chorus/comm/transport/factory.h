// Creating transports. Each backend's context.cc defines its create function; factory.cc
// picks one by name and builds the shared-memory/TCP/MPI connections through the store.
#pragma once

#include <memory>
#include <string>

#include "chorus/common/clock.h"
#include "chorus/comm/rendezvous/store.h"
#include "chorus/comm/transport/transport.h"

namespace chorus::comm {

struct TransportOptions {
  int rank = 0;
  int size = 1;
  // Used to exchange addresses/segment names. Keys are written under `prefix`.
  Store* store = nullptr;
  std::string prefix = "chorus";
  // Job secret: tcp connections prove they hold it (HMAC challenge) or are refused.
  std::string secret;
  // Job id: shm segment names include it so concurrent jobs never collide.
  std::string jobId = "job";
  // Timeout for establishing connections.
  Millis timeout = Millis(300000);
  // tcp: address to listen on ("" = the local address of the store connection, else 127.0.0.1).
  std::string bindAddr;
  // tcp: keep listening after setup (every rank, the highest included, publishes its address)
  // and take a restarted process in place of any peer whenever one connects (peerEpoch,
  // awaitPeer). Other backends ignore it.
  bool acceptRejoin = false;
  // tcp: this process restarts rank `rank` of a job that is already running. Instead of the
  // setup mesh it connects to every other rank at the address that rank published under
  // `prefix` and says it rejoins; a rank that does not answer (dead, or not accepting
  // rejoins) within `timeout` gets a failed connection: requests to it fail with PeerError.
  // Implies acceptRejoin. Other backends refuse it (InvalidArgument naming tcp).
  bool rejoin = false;
};

std::unique_ptr<Transport> createShmTransport(const TransportOptions& opts);
std::unique_ptr<Transport> createTcpTransport(const TransportOptions& opts);
// Throws Error("built without MPI ...") when chorus was built without MPI.
std::unique_ptr<Transport> createMpiTransport(const TransportOptions& opts);



// "shm", "tcp", "mpi", or "auto": shm when every rank published the same host identity to
// the store, else tcp. Throws InvalidArgument for another name.
std::unique_ptr<Transport> createTransport(const std::string& name, const TransportOptions& opts);

}  // namespace chorus::comm
