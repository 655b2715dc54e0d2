// DistributedDataParallel: each rank holds the whole model and its own mini-batches; after
// each backward pass every gradient holds the average over all ranks, as if one process had
// run the whole global batch.
//
//   auto group = chorus::comm::ProcessGroup::fromEnvironment();
//   chorus::parallel::DistributedDataParallel ddp(model, group);   // broadcasts rank 0's weights
//   auto loss = torch::cross_entropy_loss(ddp.forward(x), y);     // like model->forward(x)
//   optimizer.zero_grad();
//   loss.backward();                                               // buckets all-reduce during it
//   optimizer.step();
//
// How (docs/ddp.md has the full design):
// - Parameters are grouped into buckets of at most DDPOptions::bucketCapBytes, in REVERSE
//   order of registration (the last layers' gradients are ready first). Each bucket is one
//   flat tensor, and every parameter's .grad() is a view into it, so there is no second copy
//   of the gradients and no packing step.
// - A post-hook on each parameter's gradient accumulator counts the bucket down; when a
//   bucket is complete, its communication hook starts an async all-reduce on the group's
//   background executor while autograd goes on with earlier layers. Buckets start in order
//   on every rank, so the collectives match.
// - A callback queued on the autograd engine runs when the backward pass ends: it starts any
//   bucket still waiting (parameters that got no gradient), then waits for all of them, so
//   backward() returns with averaged gradients and the optimizer can step.
//
// Thread-safety: one DistributedDataParallel is driven by one thread (forward, backward).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "chorus/comm/group.h"
#include "chorus/parallel/data/comm_hook.h"

namespace chorus::parallel {

struct DDPOptions {
  size_t bucketCapBytes = size_t{25} << 20;  // 25 MiB, as in PyTorch
  // The first bucket (the last layers) is capped lower, so the first all-reduce starts
  // early in the backward pass (PyTorch does the same). Capped at bucketCapBytes.
  size_t firstBucketCapBytes = size_t{1} << 20;
  // Find, after each forward, the parameters the graph does not reach and count them ready
  // at once, so their buckets still start during the backward pass (PyTorch's
  // find_unused_parameters). Without it such parameters are still handled, but their buckets
  // start only when the backward pass ends.
  bool findUnusedParameters = false;
  // Broadcast buffers (BatchNorm running statistics) from rank 0 before each training forward.
  bool broadcastBuffers = true;
  // After the second synchronized backward pass, rebuild the buckets from the order and the
  // times gradients became ready on rank 0 (reverse registration order only approximates it:
  // a layer's bias and weight come together at the end). Off with unevenInputs.
  bool rebuildBuckets = true;
  // Ranks may run different numbers of steps; the ones that run out call join() (one small
  // all-reduce per training forward counts the ranks still stepping).
  bool unevenInputs = false;
  // What reduces a bucket; nullptr: allreduceHook() with the group's default algorithm.
  std::shared_ptr<CommHook> hook;
};

// What the last synchronized backward pass did (for metrics, traces and the overlap figure).
struct DDPStats {
  using Clock = std::chrono::steady_clock;
  struct Span {
    size_t bucket;
    Clock::time_point start, end;  // the bucket's collectives, on the comm executor
  };
  int64_t syncs = 0;               // synchronized backward passes so far
  uint64_t bytesReduced = 0;       // bucket bytes handed to the hook in the last pass
  Clock::time_point backwardStart, backwardEnd;  // first gradient ready .. end of backward
  std::vector<Span> spans;         // one per bucket, last pass
  double commSeconds = 0;          // sum of the spans
  double overlapSeconds = 0;       // the part of the spans inside [backwardStart, backwardEnd]
  double waitSeconds = 0;          // time backward() spent waiting for buckets after its end
};

namespace detail {

// The non-template part of DistributedDataParallel (ddp.cc).
class DDPCore {
 public:
  DDPCore(torch::nn::Module& module, std::shared_ptr<comm::ProcessGroup> group, DDPOptions opts);
  ~DDPCore();
  DDPCore(const DDPCore&) = delete;
  DDPCore& operator=(const DDPCore&) = delete;

  void beforeForward(bool training);
  void afterForward(const std::vector<torch::Tensor>& outputs);
  bool setSync(bool on) {
    bool prev = sync_;
    sync_ = on;
    return prev;
  }
  void join();
  const DDPStats& stats() const { return stats_; }
  std::vector<std::vector<std::string>> bucketNames() const;
  comm::ProcessGroup& group() { return *group_; }

 private:
  struct Param;
  struct Bucket;
  using Clock = std::chrono::steady_clock;
  std::vector<std::vector<size_t>> packLayout(const std::vector<size_t>& order,
                                              const std::vector<Clock::time_point>& readyAt) const;
  void applyLayout(const std::vector<std::vector<size_t>>& layout);
  void rebuildBuckets();
  void checkSameModel();
  void broadcastState(int root, bool params, bool buffers);
  void installGradView(Param& p, const torch::Tensor& flat);
  bool gradIsView(const Param& p) const;
  void onGradReady(size_t index);
  void startBackward();
  void markReady(Param& p);
  void launchReadyBuckets();
  void launch(Bucket& b);
  void finishBackward();
  void abandonBackward();
  int presence(bool active);

  torch::nn::Module& module_;
  std::shared_ptr<comm::ProcessGroup> group_;
  DDPOptions opts_;
  std::vector<std::unique_ptr<Param>> params_;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::vector<torch::Tensor> buffers_;
  bool sync_ = true;
  bool inBackward_ = false;
  size_t nextBucket_ = 0;
  std::vector<size_t> unused_;     // from afterForward (findUnusedParameters)
  bool warnedLate_ = false;
  bool warnedOpaque_ = false;
  int64_t lastSyncing_ = 0;
  bool rebuild_ = false;
  std::vector<Clock::time_point> readyAt_;  // second synchronized pass, for rebuildBuckets
  std::mutex mu_;  // hooks may run on autograd's device threads
  DDPStats stats_;
};

// The tensors in a forward's result, for findUnusedParameters.
inline void collect(std::vector<torch::Tensor>& out, const torch::Tensor& t) { out.push_back(t); }
inline void collect(std::vector<torch::Tensor>& out, const std::vector<torch::Tensor>& v) {
  out.insert(out.end(), v.begin(), v.end());
}
template <class... T>
void collect(std::vector<torch::Tensor>& out, const std::tuple<T...>& t) {
  std::apply([&](const auto&... e) { (collect(out, e), ...); }, t);
}
template <class T>
void collect(std::vector<torch::Tensor>&, const T&) {}  // other results: nothing to trace

}  // namespace detail

// Holder: a torch::nn::ModuleHolder (Sequential, a TORCH_MODULE(Net)) or std::shared_ptr<M>.
template <class Holder>
class DistributedDataParallel {
 public:
  DistributedDataParallel(Holder module, std::shared_ptr<comm::ProcessGroup> group, DDPOptions opts = {})
      : module_(std::move(module)), core_(std::make_unique<detail::DDPCore>(*module_, std::move(group), std::move(opts))) {}

  // Runs module->forward(args...) and prepares the backward pass's buckets.
  template <class... Args>
  auto forward(Args&&... args) {
    core_->beforeForward(module_->is_training() && torch::GradMode::is_enabled());
    auto out = module_->forward(std::forward<Args>(args)...);
    if (torch::GradMode::is_enabled()) {
      std::vector<torch::Tensor> tensors;
      detail::collect(tensors, out);
      core_->afterForward(tensors);
    }
    return out;
  }
  template <class... Args>
  auto operator()(Args&&... args) {
    return forward(std::forward<Args>(args)...);
  }

  Holder& module() { return module_; }
  auto operator->() { return &*module_; }
  comm::ProcessGroup& group() { return core_->group(); }

  // While a NoSync lives, backward passes only accumulate gradients locally (gradient
  // accumulation); the first backward after it averages everything accumulated.
  class NoSync {
   public:
    explicit NoSync(detail::DDPCore* c) : core_(c), prev_(c->setSync(false)) {}
    ~NoSync() { core_->setSync(prev_); }
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    detail::DDPCore* core_;
    bool prev_;
  };
  [[nodiscard]] NoSync noSync() { return NoSync(core_.get()); }

  // With DDPOptions::unevenInputs: a rank that has run out of data calls join(); it takes
  // part (with zero gradients) in the steps the other ranks still run, and when every rank
  // has joined, the weights and buffers of the rank that ran the most steps go to all.
  void join() { core_->join(); }

  const DDPStats& stats() const { return core_->stats(); }
  // Parameter names per bucket, in the order the buckets are reduced.
  std::vector<std::vector<std::string>> bucketNames() const { return core_->bucketNames(); }

 private:
  Holder module_;
  std::unique_ptr<detail::DDPCore> core_;
};

}  // namespace chorus::parallel
