// Bootstrap from the environment: who am I, how many are we, where is the store, what is the
// secret. One program starts unchanged under `chorus launch`, torchrun-style variables,
// mpirun (OpenMPI) or srun (Slurm). Precedence: CHORUS_* > torchrun > OpenMPI > Slurm.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "chorus/common/clock.h"
#include "chorus/comm/rendezvous/store.h"

namespace chorus::comm {

struct BootstrapInfo {
  std::string source;  // "chorus", "torchrun", "openmpi", "slurm" or "single"
  int rank = 0;
  int worldSize = 1;
  int localRank = 0;
  int localWorldSize = 1;
  std::string storeAddr;  // where the store is (host name or IP)
  int storePort = 0;      // 0 when unknown (see needsStoreFromMpi)
  // True when this process must host the store (rank 0 under torchrun/slurm conventions,
  // where no launcher hosts one).
  bool hostStore = false;
  std::string jobId;
  std::string secret;
  // OpenMPI without MASTER_ADDR/CHORUS_STORE_*: the store address travels over MPI itself.
  bool needsStoreFromMpi = false;
};

using EnvLookup = std::function<std::optional<std::string>(const char*)>;

// Reads the process environment.
BootstrapInfo detectBootstrap();
// Reads through `lookup` (tests pass a map). Throws ConfigError naming the missing or bad
// variable and the conventions it understands. With no convention present at all, returns
// a single-rank job (source "single").
BootstrapInfo detectBootstrap(const EnvLookup& lookup);

// First host of a Slurm node list: "node[03-05,7],gpu1" -> "node03".
std::string firstSlurmHost(const std::string& nodelist);

// A fresh random secret (hex of 16 bytes from getrandom).
std::string makeSecret();

// Connects (and hosts, if info.hostStore) the store described by info. The server, when one
// is hosted, is returned through *server and must outlive the client.
std::unique_ptr<TcpStore> connectStore(const BootstrapInfo& info, Millis timeout,
                                       std::unique_ptr<TcpStoreServer>* server);

}  // namespace chorus::comm
