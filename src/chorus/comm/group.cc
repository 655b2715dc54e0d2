// ProcessGroup: binds the collectives to a set of ranks and runs them one at a time in issue
// order on an executor shared with the groups split from it (executor.h); each call gets a
// Comm (a fresh sequence number, a signature, a deadline) and errors that say which call
// failed (calls.cc). This file: the group API, split, and point-to-point. Joining a job is in
// group_env.cc.
//
// Point-to-point. send/recv take no sequence number (only two ranks take part, so a shared
// counter would drift); their tag lives in a half of the sequence space that collectives
// never use.
//
// Sub-groups. split() all-gathers (color, key, highest group id in use on the rank) over the
// parent; every member then computes the same id for its new group: one more than the
// highest id any member uses, plus the color's index. No group that shares a rank with the
// new one can have that id, so their tags never collide on a shared connection.
#include "chorus/comm/group.h"

#include <algorithm>
#include <mutex>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"
#include "chorus/comm/group_internal.h"

namespace chorus::comm {

using detail::PointToPoint;
using detail::Task;

namespace {

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

const char* ProcessGroup::transportName() const { return shared_->transport->name(); }

int ProcessGroup::hostOf(int r) const {
  if (r < 0 || r >= size()) throw InvalidArgument(str("hostOf(", r, "): not a rank of this group of ", size()));
  return shared_->transport->hostOf(ranks_[static_cast<size_t>(r)]);
}

uint64_t ProcessGroup::bytesSent() const { return shared_->bytesSent.load(std::memory_order_relaxed); }

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
          if (req && detail::requestFailedOnItsOwn(*shared.transport, req))
            detail::rethrowAfterClose(*shared.transport, context);
          detail::failCall(*shared.transport, context);
        }
      };
    });
    return task;
  }
  auto p = std::make_shared<PointToPoint>(context, deadline);
  shared.executor->addPending(p);
  shared.executor->submit(task, true, [&] {
    task->run = [p, post, transport = shared.transport.get()] {
      try {
        RequestPtr req = post();
        std::lock_guard<std::mutex> lock(p->mu);
        p->req = std::move(req);
      } catch (...) {
        try {
          detail::rethrowAfterClose(*transport, p->context);
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
      state->found = detail::waitAnyPointToPoint(*shared->transport, state->ps, deadline, context);
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
