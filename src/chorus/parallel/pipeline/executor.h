// One executor for every pipeline schedule: it runs this rank's action list of a PipeSchedule
// (schedule.h) for one training step.
//
//   PipeSchedule s = makeSchedule("1f1b", pp->size(), /*microBatches=*/8);
//   PipelineExecutor exec(pp, s);
//   PipelineExecutor::Step step;
//   step.forward = [&](int chunk, const torch::Tensor& x) { return stage.runLayers(x); };
//   step.input = [&](int mb) { return ids.chunk(8)[mb]; };                   // rank 0
//   step.loss = [&](const torch::Tensor& out, int mb) { return lossOf(out, mb) / 8; };  // last rank
//   step.optimizerStep = [&] { opt.step(); };
//   PipelineRun r = exec.run(step);
//
// What each action does on this rank (chunk c is virtual stage vs = c * p + rank):
//   recvA   takes micro-batch i's input from the previous virtual stage (posted ahead, see below)
//   F       runs forward(c, input) (virtual stage 0: input(i)); the received input becomes a
//           leaf that requires grad when it is floating point; the last virtual stage also
//           computes loss(output, i). The input and output (or loss) are kept for the backward.
//   sendA   posts the output (detached) to the next virtual stage
//   recvG   takes the gradient of the output from the next virtual stage
//   FB      back-propagates from the loss (last virtual stage) or from the output with the
//           received gradient; parameters accumulate their gradients across micro-batches
//   B       the same while the micro-batch's WeightGradStore defers: linear layers that use
//           deferrableLinear queue their weight gradients (weight_grad.h)
//   W       computes micro-batch i's queued weight gradients, then frees what it kept
//   sendG   posts the input's gradient to the previous virtual stage
//   step    calls optimizerStep (if set)
//   update  (asynchronous schedules: pipedream, 2bw) calls update(c), which applies the chunk's
//           accumulated gradients to its latest weights (an optimizer step and zero_grad), and
//           bumps the chunk's weight version
//
// Weight versions (asynchronous schedules). Micro-batches still in flight ran their forward on
// older weights than the latest. With PipelineOptions::weightStashing (the default) each
// forward runs on a copy of the version it uses, kept until its backward, which runs on the
// same copy (PipeDream's weight stashing): the executor swaps the data of the chunk's
// parameters (Step::parameters) between the copies, so autograd's saved tensors see the right
// version, while the update changes the latest weights in place out of sight of the graphs in
// flight. Without stashing every forward and backward uses the latest weights, as updated so far
// (the inconsistent gradient stashing exists to avoid). PipelineOptions::verticalSync makes
// every stage run micro-batch i on the version the first stage used for it (each stage keeps
// the older versions that later micro-batches will need). Versions count from 0 at the
// executor's construction and go on across runs; the run ends with the parameters holding the
// latest weights. PipelineRun::weightUses reports the version of each forward and backward.
// A forward whose micro-batch is later split into B and W runs inside a WeightGradScope of its
// own store. An integer activation (token ids) has no gradient: both ends of such a channel
// know its dtype and skip the gradient's transfer.
//
// Streams (PipelineOptions::stream, asynchronous schedules). PipeDream never flushes: run()
// then runs one segment of the stream (schedule.h, asyncSegment): the forwards of the step's m
// micro-batches and the backwards and updates the order puts between them. The micro-batches
// a rank forwarded last stay in flight, with their stored activations and stashed weights,
// and finish their backward in the next call, so the pipeline fills once per stream, not once
// per step. Step::input and Step::loss number the call's micro-batches 0 .. m-1 as before; the
// last stage's losses are all in the call that forwards them. A segment does not wait for its
// sends (its last gradients are received in the next segment); the parameters hold the latest
// weights between calls. flush() runs the drain. Whatever runs between two calls must not need
// a neighbour's next segment (a collective over the stages is fine: each segment completes
// with the ones before it).
//
// Communication. Each channel of the schedule is one TensorP2P stream under its own tag
// (PipelineOptions::tag + 2 vs for the activations leaving virtual stage vs, + 1 for the
// gradients leaving it), shapes agreed once (MetaMode::kAgreeOnce: every micro-batch of a
// run has one shape) unless PipelineOptions::meta says otherwise. Receives are posted ahead,
// as soon as the compute action before them starts, so a message arriving while this rank
// computes is taken at once; once a stream has agreed its shape, receives go into buffers
// recycled from earlier micro-batches. Sends are asynchronous and waited for at the end of the
// step. A channel between two chunks of the same rank (one stage holding consecutive virtual
// stages) is a local queue.
//
// Errors: a dead neighbour fails the pending transfer with PeerError naming it (and the job's
// other stages follow as their own transfers fail); a timeout with TimeoutError naming the
// action, the micro-batch and the peer. An exception from a callback propagates unchanged.
// Whatever the failure, if transfers are still posted into the step's buffers the executor
// first closes the transport (ProcessGroup::abort), so nothing writes into freed memory and
// the other stages fail at once naming this rank. After an error the executor, and the
// process's groups, are unusable.
//
// Thread-safety: one thread drives run().
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "chorus/comm/group.h"
#include "chorus/parallel/p2p.h"
#include "chorus/parallel/pipeline/schedule.h"

namespace chorus::parallel {

struct PipelineOptions {
  // Tags: activations leaving virtual stage vs travel under tag + 2 vs, their gradients under
  // tag + 2 vs + 1 (all below TensorP2P::kHeaderTagBit). Change it when another TensorP2P user
  // shares the group.
  uint32_t tag = 0x50500000;  // "PP"
  MetaMode meta = MetaMode::kAgreeOnce;
  bool recordSpans = true;
  // Asynchronous schedules only (see "Weight versions" above).
  bool weightStashing = true;
  bool verticalSync = false;  // needs weightStashing
  // Activation recomputation: a forward runs without autograd and keeps only the chunk's input
  // (and the output it sends); the backward first runs the forward again with autograd, under
  // the CPU generator's state of the first run (the same dropout masks), then back-propagates.
  // Memory per stored micro-batch falls to its input, for one more forward per micro-batch.
  bool recompute = false;
  // Asynchronous schedules only: run as a stream without a flush (PipeDream proper; see
  // "Streams" above). Each run() is one segment; flush() drains the stream.
  bool stream = false;
};

// What this rank did and when, for the trace's stage lanes.
struct PipeSpan {
  enum class Kind { kForward, kBackward, kBackwardInput, kBackwardWeight, kWaitActivation, kWaitGradient, kWaitSend, kStep };
  Kind kind;
  int chunk;       // -1 for kWaitSend and the optimizer step (an asynchronous update: its chunk
  int microBatch;  // and micro-batch)
  std::chrono::steady_clock::time_point start, end;
  // "forward", "backward", "backward input", "backward weight", "wait activation",
  // "wait gradient", "wait send", "optimizer step".
  static const char* name(Kind k);
};

struct PipelineRun {
  std::vector<double> losses;  // [m] the last virtual stage's loss per micro-batch (as loss() returned it); empty elsewhere
  int peakStored = 0;          // most micro-batches whose forward state this rank held at once
  double computeSeconds = 0;   // F, B, W and the optimizer step
  double waitSeconds = 0;      // blocked in receives and in the final wait for sends
  int reusedBuffers = 0;       // receives that went into a buffer recycled from an earlier micro-batch
  std::vector<PipeSpan> spans;
  // Asynchronous schedules: the weight version each (chunk, micro-batch) whose backward ran in
  // this call ran its forward and its backward on, in the order of the backwards (which is
  // the forwards' order: one chunk, 1F1B); and the most versions held at once (the latest and
  // the stashed ones).
  struct WeightUse {
    int chunk, microBatch;
    int64_t forwardVersion, backwardVersion;
  };
  std::vector<WeightUse> weightUses;
  int peakWeightVersions = 1;
  int recomputedForwards = 0;  // forwards run again by the backward (PipelineOptions::recompute)
};

class PipelineExecutor {
 public:
  struct Step {
    // Chunk c's layers on this rank (returns the chunk's output). Required.
    std::function<torch::Tensor(int chunk, const torch::Tensor& input)> forward;
    // Virtual stage 0 (rank 0, chunk 0): micro-batch i's input. Required there.
    std::function<torch::Tensor(int microBatch)> input;
    // The last virtual stage: the scalar to back-propagate for micro-batch i from the chunk's
    // output (divide by the micro-batch count for a mean over the step). Required there.
    std::function<torch::Tensor(const torch::Tensor& output, int microBatch)> loss;
    // At the schedule's optimizer step; may be empty (the caller steps after run()).
    std::function<void()> optimizerStep;
    // Asynchronous schedules, required there: chunk c's parameters (the tensors its forward
    // uses, whose data the executor swaps), and the update that applies chunk c's accumulated
    // gradients to them in place and clears the gradients (e.g. opt.step(); opt.zero_grad()).
    std::function<std::vector<torch::Tensor>(int chunk)> parameters;
    std::function<void(int chunk)> update;
  };

  // `pp`: the pipeline group, rank r running schedule.ranks[r]. Throws InvalidArgument when
  // the group's size is not the schedule's stage count, the schedule fails checkSchedule, the
  // tags do not fit, or verticalSync is asked without weightStashing or for a synchronous
  // schedule or one with chunks.
  PipelineExecutor(std::shared_ptr<comm::ProcessGroup> pp, PipeSchedule schedule, PipelineOptions opts = {});
  ~PipelineExecutor();
  PipelineExecutor(const PipelineExecutor&) = delete;
  PipelineExecutor& operator=(const PipelineExecutor&) = delete;

  // Runs this rank's actions for one step (in stream mode: the stream's next segment). Throws
  // InvalidArgument when a callback this rank needs is missing or returns an undefined tensor
  // (or a loss that is not a scalar).
  PipelineRun run(const Step& step);
  // Stream mode: runs the drain, the backwards and updates still in flight, so the parameters
  // hold weights every micro-batch so far has updated and nothing is in flight (before an
  // evaluation, a checkpoint, the run's end); every stage of the pipeline calls it at the same
  // point. Step needs forward, parameters and update. Does nothing (and returns an empty run)
  // outside stream mode or with nothing in flight.
  PipelineRun flush(const Step& step);
  // Stream mode: the segments run since the stream started (0: nothing in flight).
  int64_t segmentsInFlight() const;
  bool streaming() const { return opts_.stream && schedule_.asynchronous(); }

  const PipeSchedule& schedule() const { return schedule_; }
  int rank() const { return rank_; }

 private:
  enum class Mode { kWhole, kSegment, kDrain };
  PipelineRun execute(const std::vector<PipeAction>& actions, const Step& step, int offset, Mode mode);

  struct Unit;
  struct Impl;
  std::shared_ptr<comm::ProcessGroup> pp_;
  PipeSchedule schedule_;
  PipelineOptions opts_;
  int rank_ = 0;
  std::unique_ptr<Impl> impl_;
  std::vector<int64_t> versions_;  // per chunk, the weight version (asynchronous schedules)
};

}  // namespace chorus::parallel
