#include "chorus/comm/transport/factory.h"

#include <unistd.h>

#include <fstream>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"

namespace chorus::comm {

namespace {

// Hostname, the kernel's boot id and the network namespace: two containers with the same
// hostname on different machines still differ; processes in different network namespaces of
// one kernel (netlab's hosts, pods) are treated as different hosts, since they are meant to
// talk over their own links; processes that can share memory agree.
std::string hostIdentity() {
  char name[256] = {0};
  gethostname(name, sizeof name - 1);
  std::string id = name;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string bootId;
  if (boot >> bootId) id += "/" + bootId;
  char ns[128] = {0};
  if (readlink("/proc/self/ns/net", ns, sizeof ns - 1) > 0) id += "/" + std::string(ns);
  return id;
}

bool allOnOneHost(const TransportOptions& opts) {
  if (opts.size == 1) return true;
  CHORUS_CHECK(opts.store != nullptr, "transport 'auto' needs a store to compare hosts");
  const std::string mine = hostIdentity();
  opts.store->set(str(opts.prefix, "/host/", opts.rank), toBytes(mine));
  for (int r = 0; r < opts.size; ++r) {
    if (r == opts.rank) continue;
    if (toString(opts.store->get(str(opts.prefix, "/host/", r), opts.timeout)) != mine) return false;
  }
  return true;
}

}  // namespace

std::unique_ptr<Transport> createTransport(const std::string& name, const TransportOptions& options) {
  TransportOptions opts = options;
  if (opts.rejoin && name != "tcp") {
    throw InvalidArgument(str("rank ", opts.rank, " rejoins a running job, which only the tcp transport can do; ",
                              "the transport is '", name, "' (set CHORUS_TRANSPORT=tcp for the whole job)"));
  }
  if (opts.bindAddr.empty()) opts.bindAddr = envString("CHORUS_BIND_ADDR");
  if (opts.rank < 0 || opts.rank >= opts.size) {
    throw InvalidArgument(str("transport: rank ", opts.rank, " is outside a job of ", opts.size, " ranks"));
  }
  if (name == "shm") return createShmTransport(opts);
  if (name == "tcp") return createTcpTransport(opts);
  if (name == "mpi") return createMpiTransport(opts);
  if (name == "auto") {
    if (allOnOneHost(opts)) {
      CHORUS_DEBUG("rank ", opts.rank, ": every rank is on this host; using shm");
      return createShmTransport(opts);
    }
    CHORUS_DEBUG("rank ", opts.rank, ": ranks span several hosts; using tcp");
    return createTcpTransport(opts);
  }
  throw InvalidArgument(str("unknown transport '", name, "'; use auto, shm, tcp or mpi"));
}

}  // namespace chorus::comm
