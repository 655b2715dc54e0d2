// Joining a job: through a store (join(), and reform() after a failure), and from the
// environment that chorus launch, torchrun, mpirun or srun set (fromEnvironment()).
#include <functional>
#include <memory>
#include <string>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/comm/group_internal.h"
#include "chorus/comm/rendezvous/bootstrap.h"
#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/mpi/context.h"

namespace chorus::comm {
namespace {

// Everything fromEnvironment() keeps alive for the transport, destroyed in reverse order.
struct EnvironmentResources {
  std::unique_ptr<TcpStoreServer> mpiServer;
  std::unique_ptr<TcpStoreServer> server;
  std::unique_ptr<TcpStore> store;
  ~EnvironmentResources() {
    store.reset();
    server.reset();
    mpiServer.reset();
  }
};

// The transport's options for a join, less what fromEnvironment adds for restarted ranks.
TransportOptions transportOptions(Store& store, const JoinOptions& o) {
  TransportOptions t;
  t.rank = o.rank;
  t.size = o.size;
  t.store = &store;
  t.prefix = o.prefix;
  t.secret = o.secret;
  // Shared-memory segment names carry the job id: a re-formed group's must not meet those of
  // the group it replaces (a dead member's segments may still exist), so each join gets its
  // own, from its prefix.
  t.jobId = str(o.jobId.empty() ? "job" : o.jobId, "-", std::hex, std::hash<std::string>{}(o.prefix) & 0xffffffffu);
  t.timeout = o.group.timeout.count() > 0 ? o.group.timeout : defaultTimeout();
  t.bindAddr = o.bindAddr.empty() ? envString("CHORUS_BIND_ADDR") : o.bindAddr;
  t.host = o.host;
  return t;
}

}  // namespace

std::shared_ptr<ProcessGroup> ProcessGroup::join(Store& store, const JoinOptions& o, std::shared_ptr<void> keepAlive) {
  if (o.size < 1 || o.rank < 0 || o.rank >= o.size) {
    throw InvalidArgument(str("ProcessGroup::join: rank ", o.rank, " is not in a group of ", o.size));
  }
  if (o.prefix.empty()) {
    throw InvalidArgument("ProcessGroup::join: the prefix is empty; give every join of the job its own (e.g. with a "
                          "generation number)");
  }
  const TransportOptions t = transportOptions(store, o);
  std::shared_ptr<Transport> transport = createTransport(o.transport.empty() ? "auto" : o.transport, t);
  GroupOptions g = o.group;
  g.timeout = t.timeout;
  auto group = create(std::move(transport), g, std::move(keepAlive));
  group->shared_->store = &store;
  group->shared_->joined = o;
  CHORUS_DEBUG("rank ", o.rank, " of ", o.size, " joined under ", o.prefix, " (transport ", group->transportName(), ")");
  return group;
}

std::shared_ptr<ProcessGroup> ProcessGroup::reform(int rank, int size, const std::string& prefix, const std::string& why) {
  if (!shared_->store || !shared_->joined) {
    throw InvalidArgument("ProcessGroup::reform: this group was made by create() from a transport and knows no store; "
                          "make it with join() or fromEnvironment() to re-form it");
  }
  JoinOptions o = *shared_->joined;
  o.rank = rank;
  o.size = size;
  o.prefix = prefix;
  o.group.timeout = timeout_;
  o.group.defaultAlgo = defaultAlgo_;
  abort(why);
  // The new group keeps the store alive as this one did (it may outlive this group).
  return join(*shared_->store, o, shared_->keepAlive);
}

Store* ProcessGroup::store() const { return shared_->store; }

std::shared_ptr<ProcessGroup> ProcessGroup::fromEnvironment(const InitOptions& opts) {
  BootstrapInfo info = detectBootstrap();
  const Millis timeout = opts.group.timeout.count() > 0 ? opts.group.timeout : defaultTimeout();
  auto res = std::make_shared<EnvironmentResources>();
  if (info.needsStoreFromMpi) mpiExchangeStoreAddress(info, &res->mpiServer);
  res->store = connectStore(info, timeout, &res->server);
  if (opts.rank >= 0) info.rank = opts.rank;
  if (opts.size > 0) info.worldSize = opts.size;

  GroupOptions g = opts.group;
  g.timeout = timeout;
  if (g.defaultAlgo == AllreduceAlgo::kAuto) g.defaultAlgo = parseAlgo(envString("CHORUS_ALGO"));
  std::string name = opts.transport.empty() ? envString("CHORUS_TRANSPORT") : opts.transport;
  // This process's join as JoinOptions: what reform() joins again with.
  auto joinOptions = [&](const std::string& prefix) {
    JoinOptions o;
    o.rank = info.rank;
    o.size = info.worldSize;
    o.prefix = prefix;
    o.transport = name;
    o.secret = info.secret;
    o.jobId = info.jobId;
    o.group = g;
    return o;
  };
  if (!opts.prefix.empty()) {
    // A join under a prefix of its own (an elastic job's later generation): the same join as
    // the members that re-form into it (reform()) make.
    Store& store = *res->store;
    return join(store, joinOptions(opts.prefix), std::move(res));
  }

  TransportOptions topts;
  topts.rank = info.rank;
  topts.size = info.worldSize;
  topts.store = res->store.get();
  // A process may join the same job more than once (one group per purpose): the n-th join of
  // every rank publishes its addresses under its own prefix, so joins never read each
  // other's keys. Every rank counts its own joins, so the n-th ones meet.
  // A restarted process (CHORUS_REJOIN=join) counts its joins afresh under its own key, so
  // its n-th join reads the addresses the n-th join of every other rank published.
  const std::string rejoin = envString("CHORUS_REJOIN");
  if (!rejoin.empty() && rejoin != "accept" && rejoin != "join") {
    throw ConfigError(str("CHORUS_REJOIN='", rejoin, "' is not one of: accept, join (or unset)"));
  }
  topts.acceptRejoin = !rejoin.empty();
  topts.rejoin = rejoin == "join";
  const std::string joins = topts.rejoin
                                ? str("chorus/joins/", info.rank, "/restart", envInt("CHORUS_RESTART_COUNT"))
                                : str("chorus/joins/", info.rank);
  topts.prefix = str("chorus/", res->store->add(joins, 1));
  topts.secret = info.secret;
  topts.jobId = info.jobId;
  topts.timeout = timeout;
  topts.bindAddr = envString("CHORUS_BIND_ADDR");
  if (!rejoin.empty() && name == "auto") name = "tcp";  // only tcp takes restarted ranks
  std::shared_ptr<Transport> transport = createTransport(name, topts);
  CHORUS_DEBUG("rank ", info.rank, " of ", info.worldSize, " joined (", info.source, ", transport ",
               transport->name(), ")");
  Store* store = res->store.get();
  auto group = create(std::move(transport), g, std::move(res));
  JoinOptions joined = joinOptions(topts.prefix);
  joined.bindAddr = topts.bindAddr;
  group->shared_->store = store;
  group->shared_->joined = joined;
  return group;
}

}  // namespace chorus::comm
