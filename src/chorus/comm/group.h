// ProcessGroup: a set of ranks that run collectives together — rank, size, split() into
// sub-groups (the data × tensor × pipeline mesh), and every collective in a blocking and an
// async form. The async form returns a Work handle (test, wait) so callers overlap
// communication with computation.
//
// Thread-safety: a ProcessGroup may be called from several threads. Calls on one group and
// on the groups split from it run one at a time, in the order they were issued, on the
// group's executor (the caller's thread when nothing is queued, else a background thread),
// so every rank sees the same order. Buffers passed to an async call must stay valid until
// its Work completes.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "chorus/common/clock.h"
#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/rendezvous/bootstrap.h"
#include "chorus/comm/rendezvous/store.h"
#include "chorus/comm/transport/transport.h"

namespace chorus::comm {

class Executor;

// The handle of an async collective.
class Work {
 public:
  virtual ~Work() = default;
  // True when the collective has finished; rethrows its error if it failed. Never blocks.
  virtual bool test() = 0;
  // Blocks until the collective has finished (bounded by its timeout); rethrows its error.
  virtual void wait() = 0;
  // When the call started and finished running (steady clock); zero until it has, and for
  // send/recv, which are not tracked. The
  // trainer's trace and DDP's overlap figure come from these.
  struct Timing {
    std::chrono::steady_clock::time_point started{}, finished{};
  };
  virtual Timing timing() const = 0;
};
using WorkPtr = std::shared_ptr<Work>;

struct GroupOptions {
  Millis timeout{0};  // 0: CHORUS_TIMEOUT_MS
  AllreduceAlgo defaultAlgo = AllreduceAlgo::kAuto;
};

struct InitOptions {
  std::string transport;  // "" : CHORUS_TRANSPORT
  GroupOptions group;
  // The store keys this join publishes under ("": "chorus/<n>" for this process's n-th join,
  // which the n-th joins of the other ranks meet). An elastic job's later generations join
  // under "chorus/elastic/g<generation>" (docs/fault-tolerance.md).
  std::string prefix;
  // This process's rank and the group's size, when they are not the environment's (a standby
  // worker of an elastic job learns them from the store); -1: CHORUS_RANK, CHORUS_WORLD_SIZE.
  int rank = -1;
  int size = -1;
};

// One process's part in forming a group through a store (ProcessGroup::join).
struct JoinOptions {
  int rank = 0;
  int size = 1;
  // The store keys of this join: every member passes the same, and no other join of the job
  // uses it (a generation number in it keeps re-formed groups apart).
  std::string prefix;
  std::string transport = "auto";  // createTransport's names: auto, shm, tcp, mixed, mpi
  std::string secret;              // the job's secret and id (TransportOptions)
  std::string jobId;
  std::string bindAddr;            // tcp: the address to listen on ("": CHORUS_BIND_ADDR's rule)
  std::string host;                // the host identity ("": hostIdentity())
  GroupOptions group;              // group.timeout also bounds connecting (0: CHORUS_TIMEOUT_MS)
};

class ProcessGroup {
 public:
  // Joins the job described by the environment (chorus launch, torchrun variables, mpirun,
  // srun): bootstrap, store, transport. Blocks until every rank has joined or the timeout.
  static std::shared_ptr<ProcessGroup> fromEnvironment(const InitOptions& opts = {});
  // Wraps a connected transport (threads-as-ranks tests, the launcher, benchmarks).
  // `keepAlive` holds anything the transport needs alive (the store, a store server).
  static std::shared_ptr<ProcessGroup> create(std::shared_ptr<Transport> transport, GroupOptions opts = {},
                                              std::shared_ptr<void> keepAlive = nullptr);
  // Forms a group of o.size processes, this one at o.rank, through `store`: each member
  // publishes its addresses under o.prefix and connects to the others over o.transport.
  // Blocks until every member has joined, or throws TimeoutError naming the missing ones'
  // step. `store` must outlive the group unless `keepAlive` holds it.
  static std::shared_ptr<ProcessGroup> join(Store& store, const JoinOptions& o, std::shared_ptr<void> keepAlive = nullptr);
  ~ProcessGroup();

  int rank() const { return rank_; }
  int size() const { return static_cast<int>(ranks_.size()); }
  const char* transportName() const;
  // This group's links: shared memory between every pair, how many hosts it spans and the
  // most ranks on one (what kAuto and the hierarchical collectives go by).
  const Links& links() const { return links_; }
  Millis timeout() const { return timeout_; }
  // Payload bytes this rank has posted to the transport for this group and the groups
  // that share its transport (collectives and send/recv), since the job started.
  uint64_t bytesSent() const;
  // The algorithm an allreduce with algo = kAuto runs: kAuto (choose by size) unless the
  // group was made with another default (GroupOptions, or CHORUS_ALGO for fromEnvironment).
  AllreduceAlgo defaultAlgo() const { return defaultAlgo_; }
  // Global rank (in the job) of group rank r.
  int globalRank(int r) const { return ranks_[r]; }
  // The host of group rank r (Transport::hostOf: hosts numbered in order of their lowest
  // global rank).
  int hostOf(int r) const;

  // Collective over this group: ranks with the same color form a sub-group, ordered by
  // (key, rank). A negative color joins no sub-group and gets nullptr.
  std::shared_ptr<ProcessGroup> split(int color, int key);

  void allreduce(const AllreduceOptions& o);
  void reduceScatter(const ReduceScatterOptions& o);
  void allgather(const AllgatherOptions& o);
  void broadcast(const BroadcastOptions& o);
  void reduce(const ReduceOptions& o);
  void gather(const GatherOptions& o);
  void scatter(const ScatterOptions& o);
  void alltoall(const AlltoallOptions& o);
  void barrier(Millis timeout = Millis(0));

  WorkPtr allreduceAsync(const AllreduceOptions& o);
  WorkPtr reduceScatterAsync(const ReduceScatterOptions& o);
  WorkPtr allgatherAsync(const AllgatherOptions& o);
  WorkPtr broadcastAsync(const BroadcastOptions& o);
  WorkPtr reduceAsync(const ReduceOptions& o);
  WorkPtr gatherAsync(const GatherOptions& o);
  WorkPtr scatterAsync(const ScatterOptions& o);
  WorkPtr alltoallAsync(const AlltoallOptions& o);
  WorkPtr barrierAsync(Millis timeout = Millis(0));

  // Tagged point-to-point between group ranks. A recv must name the sender's tag and size.
  void send(int peer, uint32_t tag, const void* data, size_t bytes, Millis timeout = Millis(0));
  void recv(int peer, uint32_t tag, void* data, size_t bytes, Millis timeout = Millis(0));
  WorkPtr sendAsync(int peer, uint32_t tag, const void* data, size_t bytes, Millis timeout = Millis(0));
  WorkPtr recvAsync(int peer, uint32_t tag, void* data, size_t bytes, Millis timeout = Millis(0));
  // Blocks until one of `works` (each from sendAsync/recvAsync of this group) has finished or
  // failed, and returns its index; a failed one's error is rethrown by its own test()/wait(),
  // not here. Runs in issue order like wait(), so the sends and receives are posted by then.
  // Throws InvalidArgument for an empty list or a Work that is not a send/recv of this group,
  // TimeoutError after `timeout` (0: the group's), Error if the transport closed.
  size_t waitAny(const std::vector<WorkPtr>& works, Millis timeout = Millis(0));

  // Restarted peers (tcp, with CHORUS_REJOIN; see Transport::peerEpoch). How many times a
  // restarted process has taken group rank `peer`'s place since this process joined; 0 on
  // transports that cannot take one.
  uint64_t peerEpoch(int peer);
  // Blocks until a restarted process has taken group rank `peer`'s place after `epoch`, and
  // returns the new epoch; sends and receives issued from then on go to the new process.
  // Throws TimeoutError after `timeout` (0: the group's), and Error on a transport that
  // cannot take a restarted peer (the message says to use tcp). Neither closes the transport.
  uint64_t awaitPeer(int peer, uint64_t epoch, Millis timeout = Millis(0));

  // Closes this process's transport, which every group of the job on this process shares:
  // every pending send and receive fails and nothing writes into or reads from their buffers
  // again, and every later call fails. For a caller that must abandon transfers it posted (a
  // pipeline stage whose own code failed mid-schedule) before freeing their buffers; the
  // peers then fail with PeerError naming this rank. Logs `why`. Idempotent; any thread.
  // This is the cancellation contract: once abort() returns, every buffer of a pending call
  // (a posted receive included) is the caller's again and may be freed.
  void abort(const std::string& why);

  // Re-forming after a failure (docs/fault-tolerance.md): aborts this group (as abort(why):
  // pending calls fail and release their buffers; this group and every group split from it
  // are done) and joins a new group of `size` processes, this one at `rank`, through the store
  // this group joined with, under `prefix` (unique per re-forming, the same on every member),
  // with the same transport choice, secret, job id and timeouts. The members may be some of
  // this group's (the survivors) and new processes that join() with the same prefix. The
  // new group shares no connection, sequence number or group id with this one. Throws
  // InvalidArgument on a group that was not made by join() or fromEnvironment() (it knows no
  // store), and what join() throws.
  std::shared_ptr<ProcessGroup> reform(int rank, int size, const std::string& prefix, const std::string& why);
  // How many collective calls this group has issued, and a description of the last one
  // ("allreduce(ring, count=..., float32, sum)"): ranks that run the same program issue the
  // same calls, so a rank whose count lags behind the others' is the one they wait for (an
  // elastic job's heartbeat reports it). Any thread.
  uint64_t callsIssued() const { return issued_.load(std::memory_order_relaxed); }
  std::string lastCall() const;

  // The store this group joined through (join(), fromEnvironment()); nullptr for a group made
  // by create(). Valid while this group or one re-formed from it lives.
  Store* store() const;

 private:
  struct Shared;
  ProcessGroup(std::shared_ptr<Shared> shared, std::vector<int> ranks, int rank, uint16_t groupId, GroupOptions opts);
  // Runs fn on a Comm for one call, in issue order; wraps errors with the op and tag.
  WorkPtr submit(CollectiveKind kind, uint64_t sig, const CollectiveCommon& common,
                 std::function<void(Comm&)> fn, bool async);

  std::shared_ptr<Shared> shared_;
  std::vector<int> ranks_;  // group rank -> global rank
  int rank_;
  uint16_t groupId_;
  Millis timeout_;
  AllreduceAlgo defaultAlgo_;
  Links links_;
  mutable std::mutex lastCallMu_;
  std::string lastCall_;
  uint32_t seq_ = 0;       // calls issued on this group
  std::atomic<uint64_t> issued_{0};  // the same, readable from any thread (callsIssued)
  uint32_t splits_ = 0;    // splits issued on this group
};

}  // namespace chorus::comm
