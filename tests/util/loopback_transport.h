// An in-process Transport for ranks that are threads of one process: every rank's endpoint
// shares one LoopbackFabric of mutex-protected queues. It keeps every rule of transport.h —
// FIFO per (peer, tag), exact size and signature checks (MismatchError), reduce-on-receive,
// deadlines (TimeoutError naming the pending peers and tags), close() failing the peer's
// requests with PeerError — so collectives can be tested without shm or tcp, and it is the
// reference the other transports are compared with.
//
// Sends of at most kEagerBytes are copied at once and complete immediately; larger ones
// complete only when the receiver has taken the data straight from the sender's buffer, so an
// algorithm that reuses a send buffer too early, or that needs a send to complete before its
// receive is posted, fails here as it would on a real transport.
#pragma once

#include <memory>
#include <vector>

#include "chorus/comm/transport/transport.h"

namespace chorus::testutil {

inline constexpr size_t kEagerBytes = 4096;

// Creates the endpoints of one job of `size` ranks; endpoint r is rank r. Each endpoint may
// be used from its own thread; they share the fabric, which lives as long as any of them.
std::vector<std::unique_ptr<comm::Transport>> createLoopbackTransports(int size);

}  // namespace chorus::testutil
