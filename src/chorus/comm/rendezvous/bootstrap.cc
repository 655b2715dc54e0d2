// Bootstrap from the environment.
//
// Which convention launched us is decided by its rank variable, in this order:
//   chorus    CHORUS_RANK, CHORUS_WORLD_SIZE, CHORUS_LOCAL_RANK, CHORUS_LOCAL_WORLD_SIZE,
//             CHORUS_STORE_ADDR, CHORUS_STORE_PORT (`chorus launch`; the launcher hosts the
//             store, so no rank does)
//   torchrun  RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//   openmpi   OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE
//   slurm     SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE /
//             SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE, SLURM_STEP_NODELIST /
//             SLURM_JOB_NODELIST / SLURM_NODELIST, SLURM_JOB_ID, SLURM_STEP_ID
//   single    none of the above: one rank, a private store on 127.0.0.1
// Under torchrun, mpirun and srun no launcher of ours runs, so rank 0 hosts the store
// (hostStore) and the others connect to it.
//
// Where the store is: CHORUS_STORE_ADDR/CHORUS_STORE_PORT win under every convention; else
// MASTER_ADDR/MASTER_PORT; else per convention:
//   - torchrun needs MASTER_ADDR/MASTER_PORT (a one-rank job may omit them). When torchrun's
//     agent already serves its own store on MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True),
//     ours takes MASTER_PORT + 1.
//   - openmpi without either: needsStoreFromMpi (rank 0 hosts it and sends its address
//     over MPI).
//   - slurm: the first host of the step's node list, and a port derived from the job:
//     kSlurmPortBase + (SLURM_JOB_ID mod 1000) * 10 + (SLURM_STEP_ID mod 10), i.e. in
//     [20000, 29999], below Linux's ephemeral range (32768-60999), distinct for concurrent
//     steps 0-9 of one job.
// Local rank and local world size default to the global ones (all ranks on one host) when a
// convention leaves them out.
//
// The job id is CHORUS_JOB_ID, else one derived from the convention (TORCHELASTIC_RUN_ID,
// the PMIx namespace, the Slurm job and step). The secret is CHORUS_JOB_SECRET. Without it,
// a token is derived from the job id and store address: every rank derives the same one, so
// the job still starts, but anyone who can read the job's environment or guess its id can
// derive it too, so a warning is logged. `chorus launch` always sets a random secret; a
// single-rank job gets a fresh random one, since no one else needs it. Under mpirun with
// needsStoreFromMpi, the secret (and the job id, unless PMIx or OpenMPI names the job) is
// left empty: rank 0 makes a random one and sends it with the store address over MPI.
#include "chorus/comm/rendezvous/bootstrap.h"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/hmac.h"
#include "chorus/common/logging.h"

namespace chorus::comm {

namespace {

constexpr int kSlurmPortBase = 20000;

constexpr const char* kConventions =
    "chorus understands: CHORUS_RANK, CHORUS_WORLD_SIZE, CHORUS_STORE_ADDR, CHORUS_STORE_PORT (`chorus launch`); "
    "RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torchrun); OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE (mpirun); "
    "SLURM_PROCID, SLURM_NTASKS (srun)";

class Env {
 public:
  explicit Env(const EnvLookup& lookup) : lookup_(lookup) {}

  std::optional<std::string> get(const char* name) const {
    auto v = lookup_(name);
    if (v && v->empty()) return std::nullopt;  // an empty variable counts as unset
    return v;
  }
  bool has(const char* name) const { return get(name).has_value(); }

  std::string require(const char* name, const char* convention) const {
    auto v = get(name);
    if (!v) {
      throw ConfigError(str("bootstrap (", convention, "): ", name, " is not set; ", kConventions));
    }
    return *v;
  }

  int64_t parseInt(const char* name, const std::string& v) const {
    char* end = nullptr;
    errno = 0;
    long long x = std::strtoll(v.c_str(), &end, 10);
    if (errno != 0 || end == v.c_str() || *end != '\0') {
      throw ConfigError(str("bootstrap: ", name, "='", v, "' is not an integer"));
    }
    return x;
  }

  int requireInt(const char* name, const char* convention, int64_t lo, int64_t hi) const {
    return checkRange(name, parseInt(name, require(name, convention)), lo, hi);
  }

  std::optional<int> optionalInt(const char* name, int64_t lo, int64_t hi) const {
    auto v = get(name);
    if (!v) return std::nullopt;
    return checkRange(name, parseInt(name, *v), lo, hi);
  }

  static int checkRange(const char* name, int64_t x, int64_t lo, int64_t hi) {
    if (x < lo || x > hi) throw ConfigError(str("bootstrap: ", name, "=", x, " is outside [", lo, ", ", hi, "]"));
    return static_cast<int>(x);
  }

 private:
  const EnvLookup& lookup_;
};

constexpr int64_t kMaxRanks = 1 << 24;

void checkRanks(BootstrapInfo& info, const char* rankVar, const char* localVar) {
  if (info.rank >= info.worldSize) {
    throw ConfigError(str("bootstrap (", info.source, "): ", rankVar, "=", info.rank, " is not below the world size ",
                          info.worldSize));
  }
  if (info.localRank >= info.localWorldSize) {
    throw ConfigError(str("bootstrap (", info.source, "): ", localVar, "=", info.localRank,
                          " is not below the local world size ", info.localWorldSize));
  }
  if (info.localWorldSize > info.worldSize) {
    throw ConfigError(str("bootstrap (", info.source, "): local world size ", info.localWorldSize,
                          " exceeds the world size ", info.worldSize));
  }
}

// Reads rank, world size and the local pair of one convention.
void readRanks(const Env& env, BootstrapInfo& info, const char* rankVar, const char* sizeVar, const char* localVar,
               const char* localSizeVar) {
  info.worldSize = env.requireInt(sizeVar, info.source.c_str(), 1, kMaxRanks);
  info.rank = env.requireInt(rankVar, info.source.c_str(), 0, kMaxRanks - 1);
  info.localRank = env.optionalInt(localVar, 0, kMaxRanks - 1).value_or(info.rank);
  info.localWorldSize = env.optionalInt(localSizeVar, 1, kMaxRanks).value_or(info.worldSize);
}

// "4(x2),3" -> {4, 4, 3}: Slurm's compressed tasks-per-node list.
std::vector<int> expandTasksPerNode(const Env& env, const char* name, const std::string& v) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos <= v.size()) {
    size_t comma = v.find(',', pos);
    std::string item = v.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    int repeat = 1;
    size_t paren = item.find('(');
    if (paren != std::string::npos) {
      if (item.size() < paren + 4 || item[paren + 1] != 'x' || item.back() != ')') {
        throw ConfigError(str("bootstrap (slurm): ", name, "='", v, "' is not a tasks-per-node list like '4(x2),3'"));
      }
      repeat = Env::checkRange(name, env.parseInt(name, item.substr(paren + 2, item.size() - paren - 3)), 1, kMaxRanks);
      item = item.substr(0, paren);
    }
    int count = Env::checkRange(name, env.parseInt(name, item), 1, kMaxRanks);
    if (out.size() + static_cast<size_t>(repeat) > static_cast<size_t>(kMaxRanks)) {
      throw ConfigError(str("bootstrap (slurm): ", name, "='", v, "' lists too many nodes"));
    }
    out.insert(out.end(), static_cast<size_t>(repeat), count);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

int slurmLocalWorldSize(const Env& env, int worldSize) {
  for (const char* name : {"SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
    auto v = env.get(name);
    if (!v) continue;
    std::vector<int> counts = expandTasksPerNode(env, name, *v);
    if (counts.size() == 1) return counts[0];
    if (auto node = env.optionalInt("SLURM_NODEID", 0, kMaxRanks - 1)) {
      if (static_cast<size_t>(*node) < counts.size()) return counts[static_cast<size_t>(*node)];
    }
    bool uniform = true;
    for (int c : counts) uniform = uniform && c == counts[0];
    if (uniform) return counts[0];
    throw ConfigError(str("bootstrap (slurm): ", name, "='", *v,
                          "' differs between nodes and SLURM_NODEID does not say which node this is"));
  }
  return worldSize;
}

std::string derivedSecret(const BootstrapInfo& info) {
  std::string seed = str("chorus-derived-token|", info.jobId, "|", info.storeAddr, "|", info.storePort);
  Digest d = sha256(seed.data(), seed.size());
  return toHex(d.data(), 16);
}

}  // namespace

std::string firstSlurmHost(const std::string& nodelist) {
  size_t b = nodelist.find_first_not_of(" \t\n");
  if (b == std::string::npos) throw ConfigError("bootstrap (slurm): the node list is empty");
  // The first entry ends at the first comma outside brackets.
  std::string entry;
  int depth = 0;
  for (size_t i = b; i < nodelist.size(); ++i) {
    char ch = nodelist[i];
    if (ch == '[') ++depth;
    if (ch == ']' && --depth < 0) break;
    if (depth == 0 && (ch == ',' || ch == ' ' || ch == '\t' || ch == '\n')) break;
    entry.push_back(ch);
  }
  if (depth != 0) throw ConfigError(str("bootstrap (slurm): unbalanced brackets in node list '", nodelist, "'"));
  // Each bracket group ("[03-05,7]") becomes its first element ("03").
  std::string host;
  size_t i = 0;
  while (i < entry.size()) {
    if (entry[i] != '[') {
      host.push_back(entry[i++]);
      continue;
    }
    size_t close = entry.find(']', i);
    std::string group = entry.substr(i + 1, close - i - 1);
    size_t stop = group.find_first_of(",-");
    std::string first = group.substr(0, stop);
    if (first.empty() || first.find_first_not_of("0123456789") != std::string::npos) {
      throw ConfigError(str("bootstrap (slurm): cannot read range '[", group, "]' in node list '", nodelist, "'"));
    }
    host += first;
    i = close + 1;
  }
  if (host.empty()) throw ConfigError(str("bootstrap (slurm): no host in node list '", nodelist, "'"));
  return host;
}

std::string makeSecret() {
  uint8_t bytes[16];
  randomBytes(bytes, sizeof bytes);
  return toHex(bytes, sizeof bytes);
}

BootstrapInfo detectBootstrap(const EnvLookup& lookup) {
  Env env(lookup);
  BootstrapInfo info;
  std::string derivedJobId;
  bool storeFromChorus = false;

  // The store address every convention honours first.
  auto chorusAddr = env.get("CHORUS_STORE_ADDR");
  auto chorusPort = env.optionalInt("CHORUS_STORE_PORT", 1, 65535);
  if (chorusAddr.has_value() != chorusPort.has_value()) {
    throw ConfigError(str("bootstrap: ", chorusAddr ? "CHORUS_STORE_ADDR is set but CHORUS_STORE_PORT is not"
                                                    : "CHORUS_STORE_PORT is set but CHORUS_STORE_ADDR is not",
                          "; set both or neither"));
  }
  if (chorusAddr) {
    info.storeAddr = *chorusAddr;
    info.storePort = *chorusPort;
    storeFromChorus = true;
  }
  auto masterAddr = env.get("MASTER_ADDR");
  // Parsed only by the conventions that use it, so a stray MASTER_PORT cannot break a
  // `chorus launch` job.
  auto masterPortOf = [&] { return env.optionalInt("MASTER_PORT", 1, 65535); };
  auto useMaster = [&](const char* convention, bool required) {
    if (storeFromChorus) return;
    auto masterPort = masterPortOf();
    if (masterAddr && masterPort) {
      info.storeAddr = *masterAddr;
      info.storePort = *masterPort;
    } else if (masterAddr || masterPort || required) {
      throw ConfigError(str("bootstrap (", convention, "): ", masterAddr ? "MASTER_PORT" : "MASTER_ADDR",
                            " is not set", masterAddr || masterPort ? " (its partner is)" : "",
                            "; set MASTER_ADDR and MASTER_PORT, or CHORUS_STORE_ADDR and CHORUS_STORE_PORT"));
    }
  };

  auto pair = [&](const char* a, const char* b, const char* convention) {
    if (env.has(a) != env.has(b)) {
      throw ConfigError(str("bootstrap (", convention, "): ", env.has(a) ? a : b, " is set but ", env.has(a) ? b : a,
                            " is not; ", kConventions));
    }
    return env.has(a);
  };

  if (pair("CHORUS_RANK", "CHORUS_WORLD_SIZE", "chorus")) {
    info.source = "chorus";
    readRanks(env, info, "CHORUS_RANK", "CHORUS_WORLD_SIZE", "CHORUS_LOCAL_RANK", "CHORUS_LOCAL_WORLD_SIZE");
    checkRanks(info, "CHORUS_RANK", "CHORUS_LOCAL_RANK");
    if (!storeFromChorus) {
      throw ConfigError(str("bootstrap (chorus): CHORUS_STORE_ADDR and CHORUS_STORE_PORT are not set; `chorus "
                            "launch` sets them, or set them to where the store runs"));
    }
    derivedJobId = str("chorus-", info.storeAddr, "-", info.storePort);
  } else if (pair("RANK", "WORLD_SIZE", "torchrun")) {
    info.source = "torchrun";
    readRanks(env, info, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE");
    checkRanks(info, "RANK", "LOCAL_RANK");
    useMaster("torchrun", info.worldSize > 1);
    if (info.storeAddr.empty()) info.storeAddr = "127.0.0.1";  // one rank, no MASTER_*: a private store
    if (!storeFromChorus && info.storePort != 0 && env.get("TORCHELASTIC_USE_AGENT_STORE") == "True") {
      // torchrun's agent serves torch's own store on MASTER_PORT; ours sits next to it.
      if (info.storePort == 65535) {
        throw ConfigError("bootstrap (torchrun): MASTER_PORT=65535 leaves no room for chorus's store at "
                          "MASTER_PORT + 1; pick a lower port or set CHORUS_STORE_PORT");
      }
      info.storePort += 1;
    }
    info.hostStore = info.rank == 0;
    derivedJobId = env.get("TORCHELASTIC_RUN_ID").value_or(str("torchrun-", info.storeAddr, "-", info.storePort));
  } else if (pair("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "openmpi")) {
    info.source = "openmpi";
    readRanks(env, info, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
              "OMPI_COMM_WORLD_LOCAL_SIZE");
    checkRanks(info, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK");
    useMaster("openmpi", false);
    info.needsStoreFromMpi = info.storePort == 0;
    info.hostStore = info.rank == 0;
    if (auto ns = env.get("PMIX_NAMESPACE")) {
      derivedJobId = "openmpi-" + *ns;
    } else if (auto id = env.get("OMPI_MCA_ess_base_jobid")) {
      derivedJobId = "openmpi-" + *id;
    } else if (!info.needsStoreFromMpi) {
      derivedJobId = str("openmpi-", info.storeAddr, "-", info.storePort);
    }
  } else if (env.has("SLURM_PROCID")) {
    info.source = "slurm";
    const char* sizeVar = env.has("SLURM_NTASKS") ? "SLURM_NTASKS" : "SLURM_NPROCS";
    info.worldSize = env.requireInt(sizeVar, "slurm", 1, kMaxRanks);
    info.rank = env.requireInt("SLURM_PROCID", "slurm", 0, kMaxRanks - 1);
    info.localWorldSize = slurmLocalWorldSize(env, info.worldSize);
    info.localRank = env.optionalInt("SLURM_LOCALID", 0, kMaxRanks - 1).value_or(info.rank);
    checkRanks(info, "SLURM_PROCID", "SLURM_LOCALID");
    auto jobId = env.get("SLURM_JOB_ID");
    if (!jobId) jobId = env.get("SLURM_JOBID");
    auto stepId = env.optionalInt("SLURM_STEP_ID", 0, INT32_MAX);
    if (!stepId) stepId = env.optionalInt("SLURM_STEPID", 0, INT32_MAX);
    // Under srun, MASTER_ADDR and MASTER_PORT may each be given alone; the other is derived.
    if (!storeFromChorus) {
      if (masterAddr) {
        info.storeAddr = *masterAddr;
      } else {
        std::optional<std::string> nodes;
        for (const char* name : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"}) {
          if ((nodes = env.get(name))) break;
        }
        if (!nodes) {
          throw ConfigError("bootstrap (slurm): none of SLURM_STEP_NODELIST, SLURM_JOB_NODELIST, SLURM_NODELIST "
                            "is set, so the store host is unknown; set MASTER_ADDR");
        }
        info.storeAddr = firstSlurmHost(*nodes);
      }
      if (auto masterPort = masterPortOf()) {
        info.storePort = *masterPort;
      } else {
        if (!jobId) {
          throw ConfigError("bootstrap (slurm): SLURM_JOB_ID is not set, so no store port can be derived; set "
                            "MASTER_PORT");
        }
        int64_t job = env.parseInt("SLURM_JOB_ID", *jobId);
        if (job < 0) throw ConfigError(str("bootstrap (slurm): SLURM_JOB_ID=", job, " is negative"));
        info.storePort = kSlurmPortBase + static_cast<int>(job % 1000) * 10 + stepId.value_or(0) % 10;
      }
    }
    info.hostStore = info.rank == 0;
    derivedJobId = jobId ? str("slurm-", *jobId, ".", stepId.value_or(0))
                         : str("slurm-", info.storeAddr, "-", info.storePort);
  } else {
    info.source = "single";
    if (!storeFromChorus) info.storeAddr = "127.0.0.1";
    info.hostStore = !storeFromChorus;
    derivedJobId = "single-" + makeSecret().substr(0, 12);
  }

  info.jobId = env.get("CHORUS_JOB_ID").value_or(derivedJobId);
  if (auto secret = env.get("CHORUS_JOB_SECRET")) {
    info.secret = *secret;
  } else if (info.source == "single" && info.hostStore) {
    info.secret = makeSecret();
  } else if (info.needsStoreFromMpi) {
    info.secret.clear();
  } else {
    info.secret = derivedSecret(info);
    CHORUS_WARN("bootstrap (", info.source, ", rank ", info.rank, "): CHORUS_JOB_SECRET is not set; using a token "
                "derived from the job id and store address, which anyone who knows them can derive too. Set "
                "CHORUS_JOB_SECRET to the same random value (e.g. `openssl rand -hex 16`) for every rank");
  }
  return info;
}

BootstrapInfo detectBootstrap() {
  return detectBootstrap([](const char* name) { return envGet(name); });
}

std::unique_ptr<TcpStore> connectStore(const BootstrapInfo& info, Millis timeout,
                                       std::unique_ptr<TcpStoreServer>* server) {
  if (info.needsStoreFromMpi) {
    throw InvalidArgument(str("connectStore (rank ", info.rank, ", ", info.source, "): the store address is not "
                              "known yet; under mpirun without MASTER_ADDR it must first be exchanged over MPI "
                              "(mpiExchangeStoreAddress), or set CHORUS_STORE_ADDR and CHORUS_STORE_PORT"));
  }
  if (info.secret.empty()) {
    throw InvalidArgument(str("connectStore (rank ", info.rank, ", ", info.source, "): the job secret is empty; "
                              "set CHORUS_JOB_SECRET"));
  }
  std::string addr = info.storeAddr;
  int port = info.storePort;
  if (info.hostStore) {
    if (server == nullptr) {
      throw InvalidArgument(str("connectStore (rank ", info.rank, "): this rank must host the store (",
                                info.source, " convention) but no place to keep the server was passed"));
    }
    if (addr.empty()) {
      if (info.localWorldSize != info.worldSize) {
        throw ConfigError(str("connectStore (rank ", info.rank, "): the store address is unknown and the job spans ",
                              "several hosts; set CHORUS_STORE_ADDR (or MASTER_ADDR) to this host's address"));
      }
      addr = "127.0.0.1";
    }
    StoreServerOptions opts;
    opts.bindAddr = addr;
    opts.port = port;
    opts.secret = info.secret;
    *server = std::make_unique<TcpStoreServer>(opts);
    port = (*server)->port();
  } else if (port == 0 || addr.empty()) {
    throw InvalidArgument(str("connectStore (rank ", info.rank, ", ", info.source, "): the store address is not ",
                              "known; set CHORUS_STORE_ADDR and CHORUS_STORE_PORT"));
  }
  return std::make_unique<TcpStore>(addr, port, info.secret, timeout);
}

}  // namespace chorus::comm
