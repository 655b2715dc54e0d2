#include "chorus/common/env.h"

#include <cstdlib>
#include <cstring>

#include "chorus/common/error.h"

namespace chorus {

const std::vector<EnvParam>& envParams() {
  static const std::vector<EnvParam> table = {
      {"CHORUS_TIMEOUT_MS", "300000", "Timeout of every blocking call (connect, store get, collective wait), in milliseconds."},
      {"CHORUS_RANK", "", "This process's rank in the job (set by `chorus launch`)."},
      {"CHORUS_WORLD_SIZE", "", "Number of ranks in the job."},
      {"CHORUS_LOCAL_RANK", "", "Rank among the processes on this host."},
      {"CHORUS_LOCAL_WORLD_SIZE", "", "Number of ranks on this host."},
      {"CHORUS_STORE_ADDR", "", "Address of the rendezvous store (host or IP)."},
      {"CHORUS_STORE_PORT", "", "Port of the rendezvous store."},
      {"CHORUS_JOB_ID", "", "Identifier of the job; shared-memory segment names include it, so concurrent jobs never collide."},
      {"CHORUS_JOB_SECRET", "", "Random per-job token; every connection must prove it holds it."},
      {"CHORUS_TRANSPORT", "auto", "Transport between ranks: auto (shm when all ranks share a host, tcp when no two do, else mixed), shm, tcp, mpi or mixed (shm inside a host, tcp between hosts)."},
      {"CHORUS_HOST_ID", "", "Names this rank's host: ranks with the same value are on one host (shared memory between them, hierarchical collectives). Default: hostname, boot id and network namespace, plus CHORUS_NODE_RANK when set."},
      {"CHORUS_NODE_RANK", "", "This node's index in a multi-node `chorus launch --nnodes` job (set by the launcher); it is part of the host identity."},
      {"CHORUS_REJOIN", "", "Restarted ranks (tcp only): 'accept' lets a restarted process take any rank's place in the running job; 'join' says this process is such a restart. Set by `chorus launch --restarts`; with either, transport auto means tcp."},
      {"CHORUS_RESTART_COUNT", "0", "How many times this rank has been restarted in the running job (set by `chorus launch --restarts`)."},
      {"CHORUS_ELASTIC", "", "1: this worker belongs to an elastic job (set by `chorus launch --min`): it survives other workers' deaths by re-forming its group."},
      {"CHORUS_ELASTIC_ID", "", "This worker's id in an elastic job, stable across generations (set by the launcher)."},
      {"CHORUS_ELASTIC_GEN", "0", "The generation of an elastic job this process joins (set by the launcher; > 0 for a replacement worker)."},
      {"CHORUS_ELASTIC_SPARE", "", "1 for a standby worker of an elastic job (chorus train --spares): it loads what a worker loads and waits until the launcher calls it into a generation (set by the launcher)."},
      {"CHORUS_HEARTBEAT_TIMEOUT_MS", "10000", "Elastic jobs: the launcher excludes a worker whose heartbeat (twice a second, through the store) stops for this long: a stopped or frozen process."},
      {"CHORUS_STALL_WARN_S", "10", "Elastic jobs: after this many seconds in which a worker's collective calls lag behind the others' (they wait for it), the launcher prints a stall report naming it and the call; it excludes the worker once CHORUS_TIMEOUT_MS has passed."},
      {"CHORUS_FAULT", "", "Fault injection for tests and the chaos benchmark: 'kill:ID:STEP', 'stop:ID:STEP' or 'loop:ID:STEP' (comma-separated) makes the worker with that id (elastic id, else rank) kill itself (SIGKILL), stop itself (SIGSTOP) or spin forever as it starts that global step."},
      {"CHORUS_BIND_ADDR", "", "Address the tcp transport listens on; default: the local address used to reach the store."},
      {"CHORUS_LOG_LEVEL", "warn", "Log level: debug, info, warn or error."},
      {"CHORUS_SPIN_US", "20", "How long a wait busy-polls before it blocks (futex or poll), in microseconds."},
      {"CHORUS_SHM_RING_BYTES", "1048576", "Size of each shared-memory ring (one per ordered pair of ranks), in bytes."},
      {"CHORUS_SHM_CMA", "1", "Use single-copy cross-memory attach (process_vm_readv) for large shm messages: 1 or 0."},
      {"CHORUS_SHM_CMA_MIN_BYTES", "65536", "Messages at least this large go through cross-memory attach when it is enabled."},
      {"CHORUS_TCP_CHUNK_BYTES", "524288", "Large tcp messages are cut into chunks of this many bytes so sending and receiving overlap."},
      {"CHORUS_COMM_NICE", "-10", "Nice value of a group's background communication thread, so async collectives run while compute threads hold every core (lowering it needs root or CAP_SYS_NICE; without, it stays unchanged)."},
      {"CHORUS_ALGO", "auto", "Default all-reduce algorithm: auto, ring, hd, tree, direct, hier or mpi."},
  };
  return table;
}

std::optional<std::string> envGet(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

static const EnvParam& findParam(const char* name) {
  for (const auto& p : envParams()) {
    if (std::strcmp(p.name, name) == 0) return p;
  }
  throw ConfigError(str("environment variable ", name, " is not declared in chorus's table (common/env.cc)"));
}

std::string envString(const char* name) {
  const EnvParam& p = findParam(name);
  auto v = envGet(name);
  return v ? *v : std::string(p.defaultValue);
}

int64_t envInt(const char* name) {
  std::string v = envString(name);
  if (v.empty()) throw ConfigError(str(name, " is not set and has no default"));
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (errno != 0 || end == v.c_str() || *end != '\0') {
    throw ConfigError(str(name, "='", v, "' is not an integer"));
  }
  return x;
}

double envDouble(const char* name) {
  std::string v = envString(name);
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || end == v.c_str() || *end != '\0') {
    throw ConfigError(str(name, "='", v, "' is not a number"));
  }
  return x;
}

bool envBool(const char* name) {
  std::string v = envString(name);
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off" || v.empty()) return false;
  throw ConfigError(str(name, "='", v, "' is not a boolean (use 1 or 0)"));
}

std::chrono::milliseconds defaultTimeout() {
  int64_t ms = envInt("CHORUS_TIMEOUT_MS");
  if (ms <= 0) throw ConfigError(str("CHORUS_TIMEOUT_MS must be positive, got ", ms));
  return std::chrono::milliseconds(ms);
}

}  // namespace chorus
