// Threads-as-ranks: runs one function on N ranks, each a thread of this process with its own
// transport ("loopback", "shm", "tcp" or "mixed", connected through a shared MemoryStore) and
// its own ProcessGroup, then joins them. Ranks can pretend to be on different hosts
// (RankOptions::hosts), which the mixed transport and the hierarchical collectives go by.
//
// A rank whose function throws closes its transport (unless told not to), so its peers fail
// at once with PeerError instead of waiting for their timeout.
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "chorus/common/clock.h"
#include "chorus/comm/group.h"

namespace chorus::testutil {

struct RankOptions {
  std::string transport = "loopback";  // "loopback", "shm", "tcp" or "mixed"
  Millis timeout{5000};                // the groups' timeout for every call
  comm::AllreduceAlgo algo = comm::AllreduceAlgo::kAuto;  // the groups' default algorithm
  bool closeOnError = true;            // close a failed rank's transport
  Millis connectTimeout{30000};        // for setting up shm/tcp connections
  // hosts[r]: the host rank r pretends to be on (TransportOptions::host; loopback:
  // Transport::setHosts). Empty: every rank on this host, except for "mixed", which puts the
  // first ceil(n/2) ranks on host 0 and the rest on host 1 (defaultHosts).
  std::vector<int> hosts;
};

// The host layout "mixed" gets when RankOptions::hosts is empty.
std::vector<int> defaultHosts(int n);

using RankFn = std::function<void(comm::ProcessGroup&)>;

// Runs fn on n ranks and returns each rank's outcome (nullptr where it returned normally).
// Setting up a transport counts as part of the rank: its failure is that rank's outcome.
std::vector<std::exception_ptr> runRanksCollect(int n, const RankOptions& opts, const RankFn& fn);

// Runs fn on n ranks; rethrows, unchanged, the failure that happened first (later ones are
// usually its consequences: PeerError from the ranks it left behind).
void runRanks(int n, const RankOptions& opts, const RankFn& fn);
void runRanks(int n, const std::string& transport, const RankFn& fn);

// The transports and world sizes every collective test runs on.
const std::vector<std::string>& testTransports();
inline const std::vector<int> kTestWorldSizes = {1, 2, 3, 4, 5, 8};
// A gtest parameter name such as "tcp_4ranks".
std::string transportSizeName(const std::string& transport, int n);

// The message of an exception_ptr ("" for nullptr).
std::string messageOf(const std::exception_ptr& e);

}  // namespace chorus::testutil
