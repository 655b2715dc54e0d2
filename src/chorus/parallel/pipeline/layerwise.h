// Layer-wise model parallelism: a model's layer sequence cut into contiguous ranges, one per
// rank of a group (stage s = group rank s). Activations go forward from stage s to s + 1 and
// their gradients come back by send/recv. One batch at a time, no micro-batches: while one
// stage computes, every other stage waits, and the recorded spans show that idle time. This
// is the baseline that pipeline schedules improve on.
//
//   // on every rank of `group` (the pipeline group; its size is the number of stages):
//   LayerwiseStage stage(group, model);                // a Sequential; balanced by parameter count
//   torch::optim::SGD opt(stage.parameters(), 0.1);    // this stage's parameters only
//   opt.zero_grad();
//   torch::Tensor out = stage.forward(stage.isFirst() ? x : torch::Tensor());
//   stage.backward(stage.isLast() ? loss_fn(out, y) : torch::Tensor());
//   opt.step();
//
// Step protocol, for stages 0 .. S-1 (shapes: whatever the layers take and return):
//   forward:  stage 0 runs its layers on the input; stage s > 0 receives its input from s - 1
//             (a new leaf tensor that requires grad when it is floating point), runs its
//             layers; every stage but the last sends its output to s + 1. Every stage returns
//             its output; the last stage's is the model's output, for the loss.
//   backward: the last stage runs loss.backward(); stage s < S - 1 receives the gradient of its
//             output from s + 1 and back-propagates it; every stage but the first then sends
//             its input's gradient to s - 1. The first stage's backward ends the step: every
//             stage's parameters hold their gradients (accumulated, as with loss.backward()).
// A gradient travels back only for a floating-point activation (an integer one, such as token
// ids, has none); both ends decide this from the dtype they both know.
//
// Autograd wiring: the received activation is a leaf, and the stage calls backward on its own
// output with the received gradient, then sends the leaf's .grad(). Each stage's graph ends at
// its input, so a stage's backward is one explicit call that a schedule can place (or split
// into its input- and weight-gradient halves with torch::autograd::grad) where it wants;
// autograd functions that send in forward and receive in backward would hide that timing
// inside the engine.
//
// Thread-safety: a stage is driven by one thread. Layers hold their own parameters; after
// construction the stage holds only its own range of them (a caller that keeps the whole
// Sequential or layer list keeps the other layers alive too: drop them, or use the builder
// form, which builds only this stage's layers).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "chorus/comm/group.h"
#include "chorus/parallel/p2p.h"

namespace chorus::parallel {

// ---- Partitions: layer counts per stage, in order; each >= 1, summing to the layer count ----

// Throws InvalidArgument (naming the numbers and what to change) unless `counts` has one
// positive entry per stage and sums to `layers`, and there are no more stages than layers.
void checkPartition(const std::vector<int>& counts, size_t layers, int stages);
// The contiguous split of layers with these costs into `stages` ranges that minimizes the
// largest range's cost; among those, the one with the most even layer counts (least sum of
// squared counts, so layers without parameters spread out), then the one whose later stages
// have fewer layers. With `tolerance` > 0 the costs are measurements: every split whose largest
// range is within (1 + tolerance) x the least counts as optimal, so noise in the timings does
// not buy an uneven split for a gain smaller than the noise.
// Throws InvalidArgument for more stages than layers, a negative cost or tolerance.
std::vector<int> balancedPartition(const std::vector<int64_t>& costs, int stages, double tolerance = 0);
// The partition a split uses: `given` checked by checkPartition when it is not empty, else the
// balancedPartition of costs() (called only then; one cost per layer, InvalidArgument naming
// the counts otherwise) over `stages`, with `tolerance` as there. The stages may be virtual (an
// interleaved split's stages x chunks).
std::vector<int> choosePartition(const std::vector<int>& given, const std::function<std::vector<int64_t>()>& costs,
                                 size_t layers, int stages, double tolerance = 0);
// The number of parameter elements in each layer.
std::vector<int64_t> parameterCounts(const std::vector<torch::nn::AnyModule>& layers);

// ---- What a stage did and when: the caller writes these to its trace ----

struct StageSpan {
  enum class Kind {
    kForward,         // this stage's layers, forward
    kBackward,        // this stage's layers, backward
    kWaitActivation,  // blocked receiving the input from the previous stage
    kWaitGradient,    // blocked receiving the output's gradient from the next stage
    kWaitSend,        // blocked until an earlier send had gone (normally ~0)
  };
  Kind kind;
  int64_t step;  // counts forward calls from 0
  std::chrono::steady_clock::time_point start, end;

  // "forward", "backward", "wait activation", "wait gradient", "wait send".
  static const char* name(Kind k);
  const char* name() const { return name(kind); }
};

struct LayerwiseOptions {
  // Layer counts per stage; empty: balancedPartition of parameter counts (or of layerCosts).
  std::vector<int> partition;
  // Builder form only: a cost per layer for the default partition. Empty: each layer is built
  // once, counted and dropped (one layer in memory at a time), before this stage's are built.
  std::vector<int64_t> layerCosts;
  // balancedPartition's tolerance for layerCosts: measured times are noisy, so splits within
  // this fraction of the best count as equal and the most even of them is taken.
  double costTolerance = 0;
  // How the stages agree on activation shapes: kEveryMessage (the default) because a batch
  // size may change (the last batch of an epoch); kAgreeOnce when every batch has one shape.
  // Every stage must use the same mode.
  MetaMode meta = MetaMode::kEveryMessage;
  // Activations travel under tag, their gradients under tag + 1 (both < 2^31 - 1). Change it
  // when another TensorP2P user shares the group.
  uint32_t tag = 0x4C570000;  // "LW"
  // The name each layer's parameters get in module()'s named_parameters() ("<name>.weight"),
  // one per layer of the whole model; empty: the layer's index (a Sequential's own names).
  std::vector<std::string> names;
  // Record StageSpans (a few per step). A reader takes them each step (takeSpans); unread,
  // the oldest half is dropped once kMaxSpans are held.
  bool recordSpans = true;
};

class LayerwiseStage {
 public:
  using LayerBuilder = std::function<torch::nn::AnyModule(size_t index)>;

  // All ranks of `group` construct their stage with the same layer count, partition and
  // options. Nothing is communicated here. Throws InvalidArgument for a bad partition (see
  // checkPartition), a null group, or names of the wrong count.
  // From the whole model's layers (this stage keeps its range and drops the rest).
  LayerwiseStage(std::shared_ptr<comm::ProcessGroup> group, std::vector<torch::nn::AnyModule> layers,
                 LayerwiseOptions opts = {});
  // From a Sequential: its layers, named as in the Sequential (opts.names overrides).
  LayerwiseStage(std::shared_ptr<comm::ProcessGroup> group, const torch::nn::Sequential& model,
                 LayerwiseOptions opts = {});
  // Builds only this stage's layers: build(i) for i in [layerBegin(), layerEnd()).
  LayerwiseStage(std::shared_ptr<comm::ProcessGroup> group, size_t numLayers, const LayerBuilder& build,
                 LayerwiseOptions opts = {});
  // Waits for sends still in flight (bounded by the group's timeout); never throws.
  ~LayerwiseStage();
  LayerwiseStage(const LayerwiseStage&) = delete;
  LayerwiseStage& operator=(const LayerwiseStage&) = delete;

  int stage() const { return stage_; }
  int stages() const { return static_cast<int>(partition_.size()); }
  bool isFirst() const { return stage_ == 0; }
  bool isLast() const { return stage_ == stages() - 1; }
  const std::vector<int>& partition() const { return partition_; }
  // This stage's layers are [layerBegin(), layerEnd()) of the whole model.
  size_t layerBegin() const { return begin_; }
  size_t layerEnd() const { return begin_ + layers_.size(); }
  // A module holding this stage's layers as children named by LayerwiseOptions::names, for
  // named_parameters() (names as in the whole model), train()/eval(), to() and checkpoints.
  torch::nn::Module& module() { return *module_; }
  std::shared_ptr<torch::nn::Module> modulePtr() const { return module_; }
  std::vector<torch::Tensor> parameters() const { return module_->parameters(); }

  // Forward pass of this stage (see the step protocol above). `input` on the first stage (a
  // defined tensor), nothing on the others. Returns this stage's output. Blocks on a non-first
  // stage until the input has arrived; the output goes to the next stage asynchronously.
  // Throws InvalidArgument for a missing or unexpected input, and the p2p errors (PeerError for
  // a dead neighbour, TimeoutError, MismatchError), which name the peer and the tensor.
  torch::Tensor forward(const torch::Tensor& input = {});
  // Backward pass of this stage: `loss` (a scalar that depends on the last forward's output) on
  // the last stage, nothing on the others. Blocks until the gradient of the output has arrived
  // (not the last stage); the input's gradient goes back asynchronously. Throws
  // InvalidArgument without a forward before it, MismatchError naming the peer and both shapes
  // when the gradient's shape is not the output's, and the p2p errors.
  void backward(const torch::Tensor& loss = {});
  // Waits until every send this stage posted has gone; bounded by the group's timeout.
  void flush();

  // This stage's layers run on x, in order, with no communication and no bookkeeping (for a
  // schedule that keeps several micro-batches in flight, or recomputes activations).
  torch::Tensor runLayers(const torch::Tensor& x);
  const std::vector<torch::nn::AnyModule>& layers() const { return layers_; }

  static constexpr size_t kMaxSpans = size_t{1} << 16;
  // The spans recorded so far, oldest first; takeSpans() also clears them.
  const std::vector<StageSpan>& spans() const { return spans_; }
  std::vector<StageSpan> takeSpans();

  uint32_t activationTag() const { return opts_.tag; }
  uint32_t gradientTag() const { return opts_.tag + 1; }
  // The channel to the neighbouring stages (the pipeline executor reuses it).
  TensorP2P& p2p() { return p2p_; }

 private:
  // Sets the partition and this stage's range; costs (one per layer) are read only for the
  // default partition.
  void setup(const std::function<std::vector<int64_t>()>& costs);
  void adopt(std::vector<torch::nn::AnyModule> local);
  void record(StageSpan::Kind kind, std::chrono::steady_clock::time_point start);
  void waitSends();

  std::shared_ptr<comm::ProcessGroup> group_;
  LayerwiseOptions opts_;
  TensorP2P p2p_;
  int stage_ = 0;
  size_t numLayers_ = 0;
  std::vector<int> partition_;
  size_t begin_ = 0;
  std::vector<torch::nn::AnyModule> layers_;
  std::shared_ptr<torch::nn::Module> module_;

  int64_t step_ = -1;
  torch::Tensor input_;   // non-first stage: the received activation (leaf)
  torch::Tensor output_;  // the last forward's output, until its backward
  std::vector<TensorWorkPtr> pendingSends_;
  std::vector<StageSpan> spans_;
};

}  // namespace chorus::parallel
