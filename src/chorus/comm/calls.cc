// Each call of a ProcessGroup as the executor runs it: its signature (what every rank must
// agree on), its context for errors ("allreduce(ring, ...) tag=3 on rank 1 of 4: "), its
// sequence number, and the error wrapping that closes the transport when a call fails with
// requests still posted (executor.h, failCall).
#include <string>
#include <vector>

#include "chorus/comm/collectives/detail.h"
#include "chorus/comm/group_internal.h"

namespace chorus::comm {
namespace {

uint8_t variableForm(bool v) { return detail::signatureExtra(ReduceOp::kSum, v ? 1 : 0); }
uint8_t rooted(ReduceOp op, int root) { return detail::signatureExtra(op, root < 0 ? 0u : static_cast<unsigned>(root)); }
size_t total(const std::vector<size_t>& counts) {
  size_t t = 0;
  for (size_t c : counts) t += c;
  return t;
}

}  // namespace

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

WorkPtr ProcessGroup::submit(CollectiveKind kind, uint64_t sig, const CollectiveCommon& common,
                             std::function<void(Comm&)> fn, bool async) {
  CHORUS_CHECK(static_cast<uint8_t>(kind) == static_cast<uint8_t>(sig >> 56), "signature of another collective");
  const Deadline deadline(orDefault(common.timeout, timeout_));
  auto task = std::make_shared<detail::Task>(deadline);
  shared_->executor->submit(task, async, [&] {
    const uint32_t seq = seq_++ & kCollectiveSeqMask;
    issued_.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(lastCallMu_);
      lastCall_ = describeSignature(sig);
    }
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
        detail::failCall(*shared_->transport, context);
      }
    };
  });
  return task;
}

std::string ProcessGroup::lastCall() const {
  std::lock_guard<std::mutex> lock(lastCallMu_);
  return lastCall_;
}

}  // namespace chorus::comm
