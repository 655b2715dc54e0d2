// ProcessGroup: binds the collectives to a set of ranks, runs them one at a time in issue
// order on an executor shared with the groups split from it, and gives every call a Comm
// (a fresh sequence number, a signature, a deadline) and errors that say which call failed.
//
// Executor. One per transport, shared by a group and every group split from it, because a
// Transport is used by one thread at a time and every rank must run the calls in one order.
// A call is queued in issue order; its sequence number is taken under the same lock, so the
// number and the position agree. A blocking call with nothing queued or running runs inline
// on the caller's thread (no thread hand-off on the latency path); otherwise calls run on a
// background worker, started on first need, and a blocking caller waits for its own.
//
// Point-to-point. send/recv take no sequence number (only two ranks take part, so a shared
// counter would drift); their tag lives in a half of the sequence space that collectives
// never use. An async send/recv is posted in issue order and then left in flight, so
// sendAsync + recv on both sides of an exchange cannot deadlock; the executor checks it
// between calls, and wait() queues a wait for it, in order; waitAny() queues one wait for
// the first of several (Transport::waitAny). A send/recv whose own request fails (a dead
// peer, a mismatch) is over and left nothing posted, so unlike a failed collective it does
// not close the transport: a server goes on with its other peers.
//
// Sub-groups. split() all-gathers (color, key, highest group id in use on the rank) over the
// parent; every member then computes the same id for its new group: one more than the
// highest id any member uses, plus the color's index. No group that shares a rank with the
// new one can have that id, so their tags never collide on a shared connection.
#include "chorus/comm/group.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"
#include "chorus/comm/rendezvous/bootstrap.h"
#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/mpi/context.h"

namespace chorus::comm {

namespace {

// wait() on an async call gives up this long after the call's own deadline; by then the call
// should have thrown TimeoutError itself, so this only catches a transport that ignores it.
constexpr Millis kWaitGrace{10000};
// Collectives number their calls in the lower half of the 32-bit sequence space;
// point-to-point messages put (0x80000000 | tag >> 16) there and tag & 0xffff in the step.
constexpr uint32_t kCollectiveSeqMask = 0x7fffffffu;
constexpr uint32_t kPointToPointSeqBit = 0x80000000u;
constexpr int kMaxGroupId = 0xffff;

// The background executor runs async collectives while the caller computes (DDP's backward
// pass). When compute threads hold every core, a thread of equal priority waits for the
// scheduler's next turn, and the overlap is lost; a higher priority (lower nice) lets it
// preempt them. It sleeps whenever it has nothing to do, so it takes no time from them then.
void raiseCommThreadPriority() {
  int nice = static_cast<int>(envInt("CHORUS_COMM_NICE"));
  if (nice == 0) return;
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice) != 0) {
    CHORUS_DEBUG("could not set the comm thread's nice value to ", nice, " (", strerror(errno), "); it stays unchanged");
  }
}

// A failed call may leave sends and receives posted that point into the caller's buffers,
// which the caller frees once the error reaches it. Nothing may touch them afterwards, so a
// failure closes the transport: every pending request fails and nothing progresses again,
// which leaves this group, and every group split from the same job, unusable (as NCCL and
// Gloo do after an error). Argument errors are thrown before anything is posted and leave
// the transport open. Call inside a catch block; rethrows with the call's context.
[[noreturn]] void failCall(Transport& transport, const std::string& context) {
  try {
    throw;
  } catch (const InvalidArgument&) {
    rethrowWithContext(context);
  } catch (...) {
    CHORUS_WARN(context, "failed; closing the ", transport.name(),
                " transport, so this process's groups cannot run further calls (create new ones)");
    transport.close();
    rethrowWithContext(context);
  }
}

// Whether `r` has failed, asked through the transport so that the read is ordered with the
// backend's writes (the loopback transport completes requests from other threads).
bool requestFailedOnItsOwn(Transport& transport, const RequestPtr& r) {
  try {
    transport.test(r);
    return false;
  } catch (...) {
    return true;
  }
}

// One queued call: what it runs and how it ended.
class Task : public Work {
 public:
  explicit Task(Deadline deadline) : deadline_(deadline) {}

  std::function<void()> run;
  std::string context;  // the call, for errors: "allreduce(ring, ...) tag=3 on rank 1 of 4: "

  void start() {
    std::lock_guard<std::mutex> lock(mu_);
    timing_.started = std::chrono::steady_clock::now();
  }
  void finish(std::exception_ptr error) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      timing_.finished = std::chrono::steady_clock::now();
      done_ = true;
      error_ = std::move(error);
    }
    cv_.notify_all();
  }
  bool test() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_ && error_) std::rethrow_exception(error_);
    return done_;
  }
  void wait() override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_until(lock, deadline_.at() + kWaitGrace, [&] { return done_; })) {
      throw TimeoutError(str(context, "still running ", kWaitGrace.count(),
                             " ms past its deadline; its buffers are still in use. The transport is not honouring "
                             "deadlines: report this with CHORUS_LOG_LEVEL=debug output"));
    }
    if (error_) std::rethrow_exception(error_);
  }
  Timing timing() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return timing_;
  }

 private:
  const Deadline deadline_;
  mutable std::mutex mu_;
  Timing timing_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

// An async send or receive in flight: the request once posted, and how it ended.
struct PointToPoint {
  PointToPoint(std::string context, Deadline deadline) : context(std::move(context)), deadline(deadline) {}
  const std::string context;
  const Deadline deadline;
  std::mutex mu;
  RequestPtr req;  // set by the posting task
  bool done = false;
  std::exception_ptr error;

  bool isDone() {
    std::lock_guard<std::mutex> lock(mu);
    return done;
  }
  void finish(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
    error = std::move(e);
  }
  // Call inside a catch block: ends this call with the exception being handled, its message
  // prefixed with the call's context.
  void finishWithCurrentError() {
    try {
      rethrowWithContext(context);
    } catch (...) {
      finish(std::current_exception());
    }
  }
  bool result() {
    std::lock_guard<std::mutex> lock(mu);
    if (error) std::rethrow_exception(error);
    return done;
  }
  // Progresses the transport; with `block`, until the request completes or the deadline.
  // Only on the executor (the transport's single user at that moment).
  void progress(Transport& transport, bool block) {
    RequestPtr r;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (done || !req) return;
      r = req;
    }
    try {
      if (block) {
        RequestPtr one[] = {r};
        transport.waitAll(one, deadline);
        finish(nullptr);
      } else if (transport.test(r)) {
        finish(nullptr);
      } else if (deadline.expired()) {
        throw TimeoutError("it did not complete before its deadline; the peer never posted the matching call");
      }
    } catch (...) {
      // The request failed on its own (a dead peer, a mismatch): it is over, and nothing else
      // of this call is posted, so the transport stays open for the other sends, receives and
      // calls (a parameter server goes on serving the workers that are alive). Otherwise (the
      // deadline, a transport error) the request may still be posted: failCall closes.
      if (requestFailedOnItsOwn(transport, r)) {
        finishWithCurrentError();
        return;
      }
      try {
        failCall(transport, context);
      } catch (...) {
        finish(std::current_exception());
      }
    }
  }

};

// ProcessGroup::waitAny's task, on the executor: waits until one of `ps` (all posted by now,
// as they were issued before it) has ended, records how, and returns its index.
size_t waitAnyPointToPoint(Transport& transport, const std::vector<std::shared_ptr<PointToPoint>>& ps,
                           const Deadline& deadline, const std::string& context) {
  std::vector<RequestPtr> reqs;
  std::vector<size_t> index;  // reqs[k] is the request of ps[index[k]]
  for (size_t i = 0; i < ps.size(); ++i) {
    std::lock_guard<std::mutex> lock(ps[i]->mu);
    if (ps[i]->done) return i;
    CHORUS_CHECK(ps[i]->req != nullptr, "a send/recv issued before waitAny was not posted when waitAny ran");
    reqs.push_back(ps[i]->req);
    index.push_back(i);
  }
  size_t k = 0;
  try {
    k = transport.waitAny(reqs, deadline);
  } catch (const TimeoutError&) {
    // No request failed: they stay posted, owned by their works, which can still be waited on.
    rethrowWithContext(context);
  } catch (...) {
    failCall(transport, context);
  }
  PointToPoint& p = *ps[index[k]];
  if (reqs[k]->error) {
    // As in PointToPoint::progress: the request's own failure leaves the transport open.
    try {
      std::rethrow_exception(reqs[k]->error);
    } catch (...) {
      p.finishWithCurrentError();
    }
  } else {
    p.finish(nullptr);
  }
  return index[k];
}

}  // namespace

// Runs calls one at a time in issue order; see the top of this file.
class Executor {
 public:
  explicit Executor(Transport* transport) : transport_(transport) {}
  ~Executor() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  // Queues `task` in issue order; `issue` runs under the queue lock right before (it takes
  // the call's sequence number and sets task->run). Blocking: runs the task inline when
  // nothing else is queued or running, else waits for it; rethrows its error. Async: returns
  // at once.
  void submit(const std::shared_ptr<Task>& task, bool async, const std::function<void()>& issue) {
    std::unique_lock<std::mutex> lock(mu_);
    issue();
    if (!async && !busy_ && queue_.empty()) {
      busy_ = true;
      lock.unlock();
      execute(*task);
      lock.lock();
      busy_ = false;
      if (!queue_.empty()) cv_.notify_all();
      lock.unlock();
      idle_.notify_all();
      task->test();
      return;
    }
    queue_.push_back(task);
    if (!worker_.joinable()) worker_ = std::thread([this] { workerLoop(); });
    cv_.notify_all();
    lock.unlock();
    if (!async) task->wait();
  }

  // Runs fn on this thread if no call is running or queued; false (fn not run) otherwise.
  bool tryRunInline(const std::function<void()>& fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (busy_ || !queue_.empty()) return false;
      busy_ = true;
    }
    try {
      fn();
    } catch (...) {
      release();
      throw;
    }
    release();
    return true;
  }

  // Tracks an async send/recv until it completes; checked after every call.
  void addPending(std::shared_ptr<PointToPoint> p) {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(std::move(p));
  }

  // Blocks until every queued call has run.
  void drain() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [&] { return !busy_ && queue_.empty(); });
  }

 private:
  void release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
      if (!queue_.empty()) cv_.notify_all();
    }
    idle_.notify_all();
  }

  // Runs one call and then lets the transport progress the async point-to-point requests.
  void execute(Task& task) {
    std::exception_ptr error;
    task.start();
    try {
      task.run();
    } catch (...) {
      error = std::current_exception();
    }
    std::vector<std::shared_ptr<PointToPoint>> pending;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::erase_if(pending_, [](const auto& p) { return p->isDone(); });
      pending = pending_;
    }
    for (auto& p : pending) p->progress(*transport_, /*block=*/false);
    task.finish(error);
  }

  void workerLoop() {
    raiseCommThreadPriority();
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return (!busy_ && !queue_.empty()) || (stop_ && queue_.empty()); });
      if (queue_.empty()) return;
      std::shared_ptr<Task> task = queue_.front();
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      execute(*task);
      lock.lock();
      busy_ = false;
      idle_.notify_all();
    }
  }

  Transport* transport_;
  std::mutex mu_;
  std::condition_variable cv_;    // the worker: a task is runnable, or stop
  std::condition_variable idle_;  // drain(): nothing queued or running
  std::deque<std::shared_ptr<Task>> queue_;
  std::vector<std::shared_ptr<PointToPoint>> pending_;
  bool busy_ = false;
  bool stop_ = false;
  std::thread worker_;
};

// What a group and the groups split from it share. Members are destroyed bottom-up: the
// executor (joining its worker) before the transport, the transport before what it needs.
struct ProcessGroup::Shared {
  std::atomic<uint64_t> bytesSent{0};
  std::shared_ptr<void> keepAlive;
  std::shared_ptr<Transport> transport;
  std::unique_ptr<Executor> executor;
  int maxGroupId = 0;  // highest id of a group on this process; touched only by calls on the executor

  // send/recv and their async forms (see the top of this file).
  static WorkPtr pointToPoint(ProcessGroup& g, bool isSend, int peer, uint32_t tag, void* data, size_t bytes,
                              Millis timeout, bool async);
  // peerEpoch (wait = false) and awaitPeer, run on the executor like every other call.
  static uint64_t peerEpoch(ProcessGroup& g, int peer, uint64_t epoch, Millis timeout, bool wait);

  // The handle of an async send/recv.
  class PointToPointWork : public Work {
   public:
    PointToPointWork(std::shared_ptr<Shared> shared, std::shared_ptr<PointToPoint> p)
        : shared_(std::move(shared)), p_(std::move(p)) {}
    bool test() override {
      if (!p_->isDone()) {
        shared_->executor->tryRunInline([&] { p_->progress(*shared_->transport, /*block=*/false); });
      }
      return p_->result();
    }
    void wait() override {
      if (!p_->isDone()) {
        // In issue order, so the send/recv has been posted by the time this runs.
        auto task = std::make_shared<Task>(p_->deadline);
        task->context = p_->context;
        shared_->executor->submit(task, /*async=*/false, [&] {
          task->run = [p = p_, shared = shared_.get()] { p->progress(*shared->transport, /*block=*/true); };
        });
      }
      p_->result();
    }
    Timing timing() const override { return {}; }  // not tracked for send/recv

    const Shared* shared() const { return shared_.get(); }
    const std::shared_ptr<PointToPoint>& pointToPoint() const { return p_; }

   private:
    std::shared_ptr<Shared> shared_;
    std::shared_ptr<PointToPoint> p_;
  };
};

namespace {

Millis orDefault(Millis t, Millis fallback) { return t.count() > 0 ? t : fallback; }

// A collective call as submit() takes it.
struct Call {
  CollectiveKind kind;
  uint64_t sig;
  std::function<void(Comm&)> fn;
};

uint8_t variableForm(bool v) { return detail::signatureExtra(ReduceOp::kSum, v ? 1 : 0); }
uint8_t rooted(ReduceOp op, int root) { return detail::signatureExtra(op, root < 0 ? 0u : static_cast<unsigned>(root)); }
size_t total(const std::vector<size_t>& counts) {
  size_t t = 0;
  for (size_t c : counts) t += c;
  return t;
}

// kAuto resolves here, identically on every rank given the same arguments; the algorithm is
// part of the signature, so ranks that run different ones fail with MismatchError wherever
// their messages meet (else with TimeoutError).
Call allreduceCall(AllreduceOptions o, AllreduceAlgo defaultAlgo, int size, const Links& links) {
  if (o.algo == AllreduceAlgo::kAuto) o.algo = defaultAlgo;
  if (o.algo == AllreduceAlgo::kAuto) o.algo = chooseAllreduceAlgo(o.count * dtypeSize(o.dtype), size, links);
  return {CollectiveKind::kAllreduce,
          makeSignature(CollectiveKind::kAllreduce, o.dtype, o.count,
                        detail::signatureExtra(o.op, static_cast<unsigned>(o.algo))),
          [o](Comm& c) { allreduce(c, o); }};
}
Call reduceScatterCall(const ReduceScatterOptions& o) {
  const bool v = !o.counts.empty();
  return {CollectiveKind::kReduceScatter,
          makeSignature(CollectiveKind::kReduceScatter, o.dtype, v ? total(o.counts) : o.count,
                        detail::signatureExtra(o.op, v ? 1 : 0)),
          [o](Comm& c) { reduceScatter(c, o); }};
}
Call allgatherCall(const AllgatherOptions& o) {
  const bool v = !o.counts.empty();
  return {CollectiveKind::kAllgather,
          makeSignature(CollectiveKind::kAllgather, o.dtype, v ? total(o.counts) : o.count, variableForm(v)),
          [o](Comm& c) { allgather(c, o); }};
}
Call broadcastCall(const BroadcastOptions& o) {
  return {CollectiveKind::kBroadcast,
          makeSignature(CollectiveKind::kBroadcast, o.dtype, o.count, rooted(ReduceOp::kSum, o.root)),
          [o](Comm& c) { broadcast(c, o); }};
}
Call reduceCall(const ReduceOptions& o) {
  return {CollectiveKind::kReduce, makeSignature(CollectiveKind::kReduce, o.dtype, o.count, rooted(o.op, o.root)),
          [o](Comm& c) { reduce(c, o); }};
}
Call gatherCall(const GatherOptions& o) {
  return {CollectiveKind::kGather,
          makeSignature(CollectiveKind::kGather, o.dtype, o.count, rooted(ReduceOp::kSum, o.root)),
          [o](Comm& c) { gather(c, o); }};
}
Call scatterCall(const ScatterOptions& o) {
  return {CollectiveKind::kScatter,
          makeSignature(CollectiveKind::kScatter, o.dtype, o.count, rooted(ReduceOp::kSum, o.root)),
          [o](Comm& c) { scatter(c, o); }};
}
Call alltoallCall(const AlltoallOptions& o) {
  // alltoallv: the ranks' totals differ legitimately, so only the form and dtype must agree;
  // each message's size is still checked by the transport.
  const bool v = !o.sendCounts.empty() || !o.recvCounts.empty();
  return {CollectiveKind::kAlltoall,
          makeSignature(CollectiveKind::kAlltoall, o.dtype, v ? 0 : o.count, variableForm(v)),
          [o](Comm& c) { alltoall(c, o); }};
}
Call barrierCall() {
  return {CollectiveKind::kBarrier, makeSignature(CollectiveKind::kBarrier, DType::kUInt8, 0),
          [](Comm& c) { barrier(c); }};
}

std::vector<size_t> sortedColors(const std::vector<int64_t>& table, int n) {
  std::vector<size_t> colors;
  for (int q = 0; q < n; ++q) {
    const int64_t c = table[3 * static_cast<size_t>(q)];
    if (c >= 0) colors.push_back(static_cast<size_t>(c));
  }
  std::sort(colors.begin(), colors.end());
  colors.erase(std::unique(colors.begin(), colors.end()), colors.end());
  return colors;
}

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

}  // namespace

ProcessGroup::ProcessGroup(std::shared_ptr<Shared> shared, std::vector<int> ranks, int rank, uint16_t groupId,
                           GroupOptions opts)
    : shared_(std::move(shared)),
      ranks_(std::move(ranks)),
      rank_(rank),
      groupId_(groupId),
      timeout_(opts.timeout.count() > 0 ? opts.timeout : defaultTimeout()),
      defaultAlgo_(opts.defaultAlgo) {
  const Comm view(shared_->transport.get(), &ranks_, rank_, groupId_, 0, 0, Deadline(Millis(0)));
  links_ = linksOf(view);
}

ProcessGroup::~ProcessGroup() {
  // Queued calls of this group refer to it; let them finish (each is bounded by its deadline).
  shared_->executor->drain();
}

std::shared_ptr<ProcessGroup> ProcessGroup::create(std::shared_ptr<Transport> transport, GroupOptions opts,
                                                   std::shared_ptr<void> keepAlive) {
  if (!transport) throw InvalidArgument("ProcessGroup::create: the transport is null");
  auto shared = std::make_shared<Shared>();
  shared->keepAlive = std::move(keepAlive);
  shared->executor = std::make_unique<Executor>(transport.get());
  shared->transport = std::move(transport);
  std::vector<int> ranks(static_cast<size_t>(shared->transport->size()));
  for (size_t i = 0; i < ranks.size(); ++i) ranks[i] = static_cast<int>(i);
  const int rank = shared->transport->rank();
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(std::move(shared), std::move(ranks), rank, 0, opts));
}

std::shared_ptr<ProcessGroup> ProcessGroup::fromEnvironment(const InitOptions& opts) {
  BootstrapInfo info = detectBootstrap();
  const Millis timeout = opts.group.timeout.count() > 0 ? opts.group.timeout : defaultTimeout();
  auto res = std::make_shared<EnvironmentResources>();
  if (info.needsStoreFromMpi) mpiExchangeStoreAddress(info, &res->mpiServer);
  res->store = connectStore(info, timeout, &res->server);

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
  std::string name = opts.transport.empty() ? envString("CHORUS_TRANSPORT") : opts.transport;
  if (!rejoin.empty() && name == "auto") name = "tcp";  // only tcp takes restarted ranks
  std::shared_ptr<Transport> transport = createTransport(name, topts);

  GroupOptions g = opts.group;
  g.timeout = timeout;
  if (g.defaultAlgo == AllreduceAlgo::kAuto) g.defaultAlgo = parseAlgo(envString("CHORUS_ALGO"));
  CHORUS_DEBUG("rank ", info.rank, " of ", info.worldSize, " joined (", info.source, ", transport ",
               transport->name(), ")");
  return create(std::move(transport), g, std::move(res));
}

const char* ProcessGroup::transportName() const { return shared_->transport->name(); }

int ProcessGroup::hostOf(int r) const {
  if (r < 0 || r >= size()) throw InvalidArgument(str("hostOf(", r, "): not a rank of this group of ", size()));
  return shared_->transport->hostOf(ranks_[static_cast<size_t>(r)]);
}

uint64_t ProcessGroup::bytesSent() const { return shared_->bytesSent.load(std::memory_order_relaxed); }

WorkPtr ProcessGroup::submit(CollectiveKind kind, uint64_t sig, const CollectiveCommon& common,
                             std::function<void(Comm&)> fn, bool async) {
  CHORUS_CHECK(static_cast<uint8_t>(kind) == static_cast<uint8_t>(sig >> 56), "signature of another collective");
  const Deadline deadline(orDefault(common.timeout, timeout_));
  auto task = std::make_shared<Task>(deadline);
  shared_->executor->submit(task, async, [&] {
    const uint32_t seq = seq_++ & kCollectiveSeqMask;
    std::string context = str(describeSignature(sig), " tag=", common.tag ? *common.tag : seq, " on rank ", rank_,
                              " of ", size());
    if (groupId_ != 0) context += str(" (global rank ", ranks_[static_cast<size_t>(rank_)], ", group ", groupId_, ")");
    context += ": ";
    task->context = context;
    task->run = [this, seq, sig, deadline, fn = std::move(fn), context = std::move(context)] {
      try {
        if (deadline.expired()) {
          throw TimeoutError("its deadline passed before it could start; the calls issued before it on this "
                             "group took longer than its timeout");
        }
        Comm comm(shared_->transport.get(), &ranks_, rank_, groupId_, seq, sig, deadline, &shared_->bytesSent);
        fn(comm);
      } catch (...) {
        failCall(*shared_->transport, context);
      }
    };
  });
  return task;
}


// ---- Collectives ----

void ProcessGroup::allreduce(const AllreduceOptions& o) {
  Call call = allreduceCall(o, defaultAlgo_, size(), links_);
  submit(call.kind, call.sig, o, std::move(call.fn), false);
}

WorkPtr ProcessGroup::allreduceAsync(const AllreduceOptions& o) {
  Call call = allreduceCall(o, defaultAlgo_, size(), links_);
  return submit(call.kind, call.sig, o, std::move(call.fn), true);
}

#define CHORUS_GROUP_CALL(Name, Options, make)                                    \
  void ProcessGroup::Name(const Options& o) {                                     \
    Call call = make(o);                                                          \
    submit(call.kind, call.sig, o, std::move(call.fn), false);                    \
  }                                                                               \
  WorkPtr ProcessGroup::Name##Async(const Options& o) {                           \
    Call call = make(o);                                                          \
    return submit(call.kind, call.sig, o, std::move(call.fn), true);              \
  }
CHORUS_GROUP_CALL(reduceScatter, ReduceScatterOptions, reduceScatterCall)
CHORUS_GROUP_CALL(allgather, AllgatherOptions, allgatherCall)
CHORUS_GROUP_CALL(broadcast, BroadcastOptions, broadcastCall)
CHORUS_GROUP_CALL(reduce, ReduceOptions, reduceCall)
CHORUS_GROUP_CALL(gather, GatherOptions, gatherCall)
CHORUS_GROUP_CALL(scatter, ScatterOptions, scatterCall)
CHORUS_GROUP_CALL(alltoall, AlltoallOptions, alltoallCall)
#undef CHORUS_GROUP_CALL

void ProcessGroup::barrier(Millis timeout) {
  CollectiveCommon common;
  common.timeout = timeout;
  Call call = barrierCall();
  submit(call.kind, call.sig, common, std::move(call.fn), false);
}

WorkPtr ProcessGroup::barrierAsync(Millis timeout) {
  CollectiveCommon common;
  common.timeout = timeout;
  Call call = barrierCall();
  return submit(call.kind, call.sig, common, std::move(call.fn), true);
}

// ---- Sub-groups ----

std::shared_ptr<ProcessGroup> ProcessGroup::split(int color, int key) {
  const int n = size();
  std::vector<int> members;
  int newRank = -1;
  uint16_t newId = 0;
  Shared* shared = shared_.get();
  auto fn = [&](Comm& comm) {
    const uint32_t splitIndex = splits_++;
    int64_t mine[3] = {color, key, shared->maxGroupId};
    std::vector<int64_t> table(3 * static_cast<size_t>(n));
    AllgatherOptions ag;
    ag.input = mine;
    ag.output = table.data();
    ag.count = 3;
    ag.dtype = DType::kInt64;
    comm::allgather(comm, ag);

    int64_t base = 0;
    for (int q = 0; q < n; ++q) base = std::max(base, table[3 * static_cast<size_t>(q) + 2]);
    base += 1;
    const std::vector<size_t> colors = sortedColors(table, n);
    if (colors.empty()) return;
    const int64_t last = base + static_cast<int64_t>(colors.size()) - 1;
    if (last > kMaxGroupId) {
      throw InvalidArgument(str("split #", splitIndex, " would need group id ", last, " but ids end at ", kMaxGroupId,
                                "; create fewer sub-groups (each split uses one id per color)"));
    }
    shared->maxGroupId = std::max<int>(shared->maxGroupId, static_cast<int>(last));
    if (color < 0) return;
    const auto index = std::lower_bound(colors.begin(), colors.end(), static_cast<size_t>(color)) - colors.begin();
    newId = static_cast<uint16_t>(base + index);
    std::vector<std::pair<int64_t, int>> order;
    for (int q = 0; q < n; ++q) {
      if (table[3 * static_cast<size_t>(q)] == color) order.emplace_back(table[3 * static_cast<size_t>(q) + 1], q);
    }
    std::sort(order.begin(), order.end());
    for (const auto& [k, q] : order) {
      if (q == rank_) newRank = static_cast<int>(members.size());
      members.push_back(ranks_[static_cast<size_t>(q)]);
    }
  };
  submit(CollectiveKind::kSplit, makeSignature(CollectiveKind::kSplit, DType::kInt64, static_cast<uint64_t>(n)),
         CollectiveCommon{}, fn, false);
  if (color < 0) return nullptr;
  GroupOptions g;
  g.timeout = timeout_;
  g.defaultAlgo = defaultAlgo_;
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(shared_, std::move(members), newRank, newId, g));
}

// ---- Point-to-point ----

WorkPtr ProcessGroup::Shared::pointToPoint(ProcessGroup& g, bool isSend, int peer, uint32_t tag, void* data,
                                           size_t bytes, Millis timeout, bool async) {
  if (peer < 0 || peer >= g.size() || peer == g.rank_) {
    throw InvalidArgument(str(isSend ? "send" : "recv", " on rank ", g.rank_, " of ", g.size(), ": peer ", peer,
                              " is not another rank of this group"));
  }
  detail::requireBuffer(data, bytes, isSend ? "send data" : "recv data");
  const Deadline deadline(orDefault(timeout, g.timeout_));
  const uint64_t sig = makeSignature(CollectiveKind::kSendRecv, DType::kUInt8, bytes);
  const uint32_t seq = kPointToPointSeqBit | (tag >> 16);
  const auto step = static_cast<uint16_t>(tag & 0xffff);
  std::string context = str(isSend ? "send to" : "recv from", " rank ", peer, " (", bytes, " bytes) tag=", tag,
                            " on rank ", g.rank_, " of ", g.size());
  if (g.groupId_ != 0) context += str(" (global rank ", g.ranks_[static_cast<size_t>(g.rank_)], ", group ", g.groupId_, ")");
  context += ": ";
  Shared& shared = *g.shared_;
  auto post = [&g, &shared, isSend, peer, step, data, bytes, seq, sig, deadline] {
    Comm comm(shared.transport.get(), &g.ranks_, g.rank_, g.groupId_, seq, sig, deadline, &shared.bytesSent);
    return isSend ? comm.isend(peer, step, data, bytes) : comm.irecv(peer, step, data, bytes);
  };

  auto task = std::make_shared<Task>(deadline);
  task->context = context;
  if (!async) {
    shared.executor->submit(task, false, [&] {
      task->run = [&shared, post, deadline, context] {
        RequestPtr req;
        try {
          req = post();
          RequestPtr one[] = {req};
          shared.transport->waitAll(one, deadline);
        } catch (...) {
          // As for an async send/recv: a request that failed on its own (a dead peer) leaves
          // nothing posted, so the transport stays open for the other peers.
          if (req && requestFailedOnItsOwn(*shared.transport, req)) rethrowWithContext(context);
          failCall(*shared.transport, context);
        }
      };
    });
    return task;
  }
  auto p = std::make_shared<PointToPoint>(context, deadline);
  shared.executor->addPending(p);
  shared.executor->submit(task, true, [&] {
    task->run = [p, post] {
      try {
        RequestPtr req = post();
        std::lock_guard<std::mutex> lock(p->mu);
        p->req = std::move(req);
      } catch (...) {
        try {
          rethrowWithContext(p->context);
        } catch (...) {
          p->finish(std::current_exception());
        }
      }
    };
  });
  return std::make_shared<PointToPointWork>(g.shared_, p);
}

size_t ProcessGroup::waitAny(const std::vector<WorkPtr>& works, Millis timeout) {
  std::string context = str("waitAny over ", works.size(), " send/recv(s) on rank ", rank_, " of ", size());
  if (groupId_ != 0) context += str(" (global rank ", ranks_[static_cast<size_t>(rank_)], ", group ", groupId_, ")");
  context += ": ";
  if (works.empty()) throw InvalidArgument(str(context, "the list of works is empty; pass at least one"));
  // Shared with the task, which could outlive this call if the transport ignored the deadline.
  struct State {
    std::vector<std::shared_ptr<PointToPoint>> ps;
    size_t found = 0;
  };
  auto state = std::make_shared<State>();
  for (size_t i = 0; i < works.size(); ++i) {
    const auto* w = dynamic_cast<const Shared::PointToPointWork*>(works[i].get());
    if (w == nullptr || w->shared() != shared_.get()) {
      throw InvalidArgument(str(context, "work ", i, works[i] ? " is not a send/recv of this group" : " is null",
                                "; pass only what sendAsync/recvAsync of this group returned"));
    }
    state->ps.push_back(w->pointToPoint());
  }
  for (size_t i = 0; i < state->ps.size(); ++i) {
    if (state->ps[i]->isDone()) return i;
  }
  const Deadline deadline(orDefault(timeout, timeout_));
  auto task = std::make_shared<Task>(deadline);
  task->context = context;
  Shared* shared = shared_.get();
  shared->executor->submit(task, /*async=*/false, [&] {
    task->run = [state, shared, deadline, context] {
      state->found = waitAnyPointToPoint(*shared->transport, state->ps, deadline, context);
    };
  });
  return state->found;
}

uint64_t ProcessGroup::Shared::peerEpoch(ProcessGroup& g, int peer, uint64_t epoch, Millis timeout, bool wait) {
  std::string context = str(wait ? "awaitPeer" : "peerEpoch", " of rank ", peer, " on rank ", g.rank_, " of ", g.size());
  if (g.groupId_ != 0) context += str(" (global rank ", g.ranks_[static_cast<size_t>(g.rank_)], ", group ", g.groupId_, ")");
  context += ": ";
  if (peer < 0 || peer >= g.size() || peer == g.rank_) {
    throw InvalidArgument(str(context, "the peer must be another rank of the group, in [0, ", g.size(), ")"));
  }
  const int global = g.ranks_[static_cast<size_t>(peer)];
  const Deadline deadline(orDefault(timeout, g.timeout_));
  auto task = std::make_shared<Task>(deadline);
  task->context = context;
  auto result = std::make_shared<uint64_t>(0);  // the task could outlive this call (see waitAny)
  std::shared_ptr<Shared> shared = g.shared_;
  shared->executor->submit(task, /*async=*/false, [&] {
    task->run = [shared, result, global, epoch, wait, deadline, context] {
      try {
        *result = wait ? shared->transport->awaitPeer(global, epoch, deadline) : shared->transport->peerEpoch(global);
      } catch (...) {
        rethrowWithContext(context);  // nothing was posted: the transport stays open
      }
    };
  });
  return *result;
}

uint64_t ProcessGroup::peerEpoch(int peer) { return Shared::peerEpoch(*this, peer, 0, Millis(0), false); }

uint64_t ProcessGroup::awaitPeer(int peer, uint64_t epoch, Millis timeout) {
  return Shared::peerEpoch(*this, peer, epoch, timeout, true);
}

void ProcessGroup::abort(const std::string& why) {
  CHORUS_WARN("rank ", ranks_[static_cast<size_t>(rank_)], ": ", why, "; closing the ", shared_->transport->name(),
              " transport, so this process's groups cannot run further calls");
  shared_->transport->close();
}

void ProcessGroup::send(int peer, uint32_t tag, const void* data, size_t bytes, Millis timeout) {
  Shared::pointToPoint(*this, true, peer, tag, const_cast<void*>(data), bytes, timeout, false);
}
void ProcessGroup::recv(int peer, uint32_t tag, void* data, size_t bytes, Millis timeout) {
  Shared::pointToPoint(*this, false, peer, tag, data, bytes, timeout, false);
}
WorkPtr ProcessGroup::sendAsync(int peer, uint32_t tag, const void* data, size_t bytes, Millis timeout) {
  return Shared::pointToPoint(*this, true, peer, tag, const_cast<void*>(data), bytes, timeout, true);
}
WorkPtr ProcessGroup::recvAsync(int peer, uint32_t tag, void* data, size_t bytes, Millis timeout) {
  return Shared::pointToPoint(*this, false, peer, tag, data, bytes, timeout, true);
}

}  // namespace chorus::comm
