// What ProcessGroup's implementation files share (group.cc: the group API and split;
// calls.cc: each call's context, signature and error wrapping; group_env.cc: joining through
// a store and from the environment). Internal to comm/; not part of the public API.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/executor.h"
#include "chorus/comm/group.h"
#include "chorus/comm/rendezvous/store.h"

namespace chorus::comm {

// Collectives number their calls in the lower half of the 32-bit sequence space;
// point-to-point messages put (0x80000000 | tag >> 16) there and tag & 0xffff in the step.
inline constexpr uint32_t kCollectiveSeqMask = 0x7fffffffu;
inline constexpr uint32_t kPointToPointSeqBit = 0x80000000u;
inline constexpr int kMaxGroupId = 0xffff;

inline Millis orDefault(Millis t, Millis fallback) { return t.count() > 0 ? t : fallback; }

// What a group and the groups split from it share. Members are destroyed bottom-up: the
// executor (joining its worker) before the transport, the transport before what it needs.
struct ProcessGroup::Shared {
  std::atomic<uint64_t> bytesSent{0};
  std::shared_ptr<void> keepAlive;
  // How this process joined, when it joined through a store (join(), fromEnvironment()): what
  // reform() joins again with. The store lives in keepAlive.
  Store* store = nullptr;
  std::optional<JoinOptions> joined;
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
    PointToPointWork(std::shared_ptr<Shared> shared, std::shared_ptr<detail::PointToPoint> p)
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
        auto task = std::make_shared<detail::Task>(p_->deadline);
        task->context = p_->context;
        shared_->executor->submit(task, /*async=*/false, [&] {
          task->run = [p = p_, shared = shared_.get()] { p->progress(*shared->transport, /*block=*/true); };
        });
      }
      p_->result();
    }
    Timing timing() const override { return {}; }  // not tracked for send/recv

    const Shared* shared() const { return shared_.get(); }
    const std::shared_ptr<detail::PointToPoint>& pointToPoint() const { return p_; }

   private:
    std::shared_ptr<Shared> shared_;
    std::shared_ptr<detail::PointToPoint> p_;
  };
};

// A collective call as submit() takes it.
struct Call {
  CollectiveKind kind;
  uint64_t sig;
  std::function<void(Comm&)> fn;
};

// The calls' signatures and bodies (calls.cc). kAuto resolves in allreduceCall, identically
// on every rank given the same arguments; the algorithm is part of the signature, so ranks
// that run different ones fail with MismatchError wherever their messages meet.
Call allreduceCall(AllreduceOptions o, AllreduceAlgo defaultAlgo, int size, const Links& links);
Call reduceScatterCall(const ReduceScatterOptions& o);
Call allgatherCall(const AllgatherOptions& o);
Call broadcastCall(const BroadcastOptions& o);
Call reduceCall(const ReduceOptions& o);
Call gatherCall(const GatherOptions& o);
Call scatterCall(const ScatterOptions& o);
Call alltoallCall(const AlltoallOptions& o);
Call barrierCall();

}  // namespace chorus::comm
