#include "chorus/comm/transport/factory.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"

namespace chorus::comm {

std::string hostIdentity() {
  if (const std::string forced = envString("CHORUS_HOST_ID"); !forced.empty()) return forced;
  char name[256] = {0};
  gethostname(name, sizeof name - 1);
  std::string id = name;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string bootId;
  if (boot >> bootId) id += "/" + bootId;
  char ns[128] = {0};
  if (readlink("/proc/self/ns/net", ns, sizeof ns - 1) > 0) id += "/" + std::string(ns);
  if (const std::string node = envString("CHORUS_NODE_RANK"); !node.empty()) id += "/node" + node;
  return id;
}

namespace {

// Every rank's host index, numbered in order of each host's lowest rank, from the identities
// the ranks publish under <prefix>/host/<rank>.
std::vector<int> exchangeHosts(const TransportOptions& opts) {
  std::vector<int> hosts(static_cast<size_t>(opts.size), 0);
  if (opts.size == 1) return hosts;
  CHORUS_CHECK(opts.store != nullptr, "rank ", opts.rank, ": the transport needs a store to compare hosts");
  const std::string mine = opts.host.empty() ? hostIdentity() : opts.host;
  opts.store->set(str(opts.prefix, "/host/", opts.rank), toBytes(mine));
  std::vector<std::string> ids;
  for (int r = 0; r < opts.size; ++r) {
    const std::string id = r == opts.rank ? mine : toString(opts.store->get(str(opts.prefix, "/host/", r), opts.timeout));
    const auto it = std::find(ids.begin(), ids.end(), id);
    hosts[static_cast<size_t>(r)] = static_cast<int>(it - ids.begin());
    if (it == ids.end()) ids.push_back(id);
  }
  return hosts;
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
  if (name != "auto" && name != "shm" && name != "tcp" && name != "mpi" && name != "mixed") {
    throw InvalidArgument(str("unknown transport '", name, "'; use auto, shm, tcp, mpi or mixed"));
  }
  // mpi ranks may have no store; the others need one anyway.
  const bool storeless = opts.store == nullptr && opts.size > 1;
  const std::vector<int> hosts = storeless ? std::vector<int>() : exchangeHosts(opts);
  int hostCount = 0;
  bool shared = false;  // some host runs two or more ranks
  for (size_t r = 0; r < hosts.size(); ++r) {
    hostCount = std::max(hostCount, hosts[r] + 1);
    if (std::count(hosts.begin(), hosts.end(), hosts[r]) > 1) shared = true;
  }
  std::string kind = name;
  if (kind == "auto") {
    kind = storeless ? "tcp" : hostCount <= 1 ? "shm" : shared ? "mixed" : "tcp";
    CHORUS_DEBUG("rank ", opts.rank, ": ", opts.size, " rank(s) on ", hostCount, " host(s); using ", kind);
  }
  std::unique_ptr<Transport> t;
  if (kind == "shm") t = createShmTransport(opts);
  if (kind == "tcp") t = createTcpTransport(opts);
  if (kind == "mpi") t = createMpiTransport(opts);
  if (kind == "mixed") {
    if (storeless) throw InvalidArgument(str("rank ", opts.rank, ": the mixed transport needs a store"));
    t = createMixedTransport(opts, hosts);
  }
  if (!hosts.empty()) t->setHosts(hosts);
  return t;
}

}  // namespace chorus::comm
