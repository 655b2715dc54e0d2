// Creating transports. Each backend's context.cc defines its create function; factory.cc
// picks one by name, builds the connections through the store, and tells the transport which
// host each rank is on (Transport::setHosts) from the identities the ranks publish.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "chorus/common/clock.h"
#include "chorus/comm/rendezvous/store.h"
#include "chorus/comm/transport/transport.h"

namespace chorus::comm {

std::unique_ptr<Transport> createShmTransport(const TransportOptions& opts);
std::unique_ptr<Transport> createTcpTransport(const TransportOptions& opts);
// Throws Error("built without MPI ...") when chorus was built without MPI.
std::unique_ptr<Transport> createMpiTransport(const TransportOptions& opts);



// shm to the ranks of this rank's host (hosts[r] == hosts[rank]) and tcp to the others.
// hosts[r] is rank r's host index; every rank must pass the same vector.
std::unique_ptr<Transport> createMixedTransport(const TransportOptions& opts, const std::vector<int>& hosts);

// "shm", "tcp", "mpi", "mixed", or "auto": shm when every rank is on one host, tcp when no two
// ranks share a host, else mixed. Throws InvalidArgument for another name. Every rank
// publishes its host identity (TransportOptions::host, else hostIdentity()) under
// `<prefix>/host/<rank>` and the transport gets the resulting host map.
std::unique_ptr<Transport> createTransport(const std::string& name, const TransportOptions& opts);

// This process's host identity: CHORUS_HOST_ID when set; else hostname, boot id and network
// namespace (two containers with one hostname on different machines differ; netlab's hosts
// and pods, in their own network namespaces, differ), plus "/node<K>" when the launcher set
// CHORUS_NODE_RANK (two `chorus launch --nnodes` nodes are two hosts even on one machine).
std::string hostIdentity();

}  // namespace chorus::comm
