// Layer-wise model parallelism for the GPT (Strategy, strategy.h): parallel.pp > 1 stages per
// replica, each holding a contiguous range of the GPT's layers (gpt_stages.h: embedding, blocks,
// head), activations forward and their gradients back by send/recv, one batch at a time (no
// micro-batches: while one stage computes the others wait, and the trace shows it; or under a
// pipeline schedule, parallel/pipeline/executor.h). With parallel.tp = k > 1 every stage's layers
// are split over k ranks (3D parallelism; gpt_stages.h). The workers left over
// (dp = world / (tp x pp)) are data-parallel replicas of the pipeline.
//
// Mesh: ProcessMesh::make(world, tp, pp): rank = (pp_i * dp + dp_i) * tp + tp_i, so world rank 0
// (the lead) is tp rank 0 of stage 0 of replica 0. A stage's ranks with the same tp coordinate
// in all replicas form its dp group; the stages of one (replica, tp rank) form a pp group; the
// k ranks of one stage of one replica form its tp group.
//
// A step, on every rank of a pp group with the same batch (Roles::dataRank = dp coordinate):
// forward (the first stage feeds the ids), the last stage's loss (plain cross-entropy over the
// vocabulary, vocabulary-parallel over tp), backward; the stage's gradients averaged over its dp group by
// DistributedDataParallel (dp > 1: its buckets all-reduce during the stage's backward); the two
// copies of a tied embedding summed between the first and last stage (gpt_stages.h); then the
// divergence check: the loss is broadcast from the last stage over the pp group, and the
// [loss, gradient] flags are all-reduced over the world, so every rank stops at the same step;
// optim.clip_norm scales the gradients by the whole model's norm (reduced over tp, then pp;
// strategy_util.h); the optimizer steps over this stage's parameters. Every rank reports its
// replica's loss.
//
// Under a pipeline schedule (parallel.schedule) the executor runs the step's micro-batches;
// pipedream and 2bw update each stage inside the run and, with parallel.async_flush = "never",
// run as a stream (executor.h): micro-batches in flight at a step's end finish in the next
// step, and the stream drains inside the step before the loop pauses (StepInfo::pauseAfter;
// finish, evaluate and saveCheckpoint drain it too, should a pause come unannounced).
//
// Trace (chorus train --trace): per step the stage's "forward", "backward" (lane "compute"),
// "wait activation", "wait gradient", "wait send" (lane "pipeline"), "tied embedding
// all-reduce" and the DDP buckets (lane "comm"), and "optimizer".
//
// Evaluation: every stage runs TextTask::evaluate with its dp group; run.loss sends each chunk
// of validation windows through the stages (the same slice on every stage of a replica) and
// broadcasts the last stage's loss over the pp group, so every rank gets val_loss/val_bpb.
//
// Checkpoints: one plain checkpoint (checkpoint.h), the same file a one-process Gpt at tp 1
// writes: at tp > 1 each stage's shards (parameters and their optimizer state) are first joined
// on its tp rank 0 (an all-gather over tp); then each stage of replica 0 sends its parameters and
// optimizer state (renumbered to the whole model's parameter order, gptParameterNames) to world
// rank 0, which writes the file. A load cuts the whole tensors again for this tp rank. So
// rank 0 holds the whole model's parameters and optimizer state while saving. It loads at any
// layout: pp (each stage takes its names; the tied copy takes wte.weight), tp
// (loadShardedCheckpoint treats a plain checkpoint as tp 1) or one process. A tensor-parallel
// (sharded) checkpoint loads here too, joined through a whole tp-1 model on each loading rank.
//
// Records: the start record gives "tp" (1), "dp", "pp", "pp_partition" (the blocks of each
// stage), "param_bytes_sharded" / "param_bytes_replicated" (this stage's) and "optimizer_bytes"
// (computed from the optimizer's kind); step records "tokens_per_s", "grad_bytes" (the dp
// all-reduce: a ring's share of the buckets, an estimate, as it overlaps the stage's sends) and
// "pp_bytes" (StepStats::modelParallelBytes: what this rank sent for the pipeline in the window:
// activations, activation gradients, the tied embedding's gradient sum and the loss broadcast;
// at tp > 1 also the tensor-parallel all-reduces, which share the counter);
// the summary "pp_bytes_per_step" and "optimizer_bytes" measured from the optimizer's state.
//
// Supported: precision fp32, compression none, any tp without sequence parallelism, ps.servers 0
// (config.cc refuses the rest for pp > 1 where it can; the constructor refuses what it sees).
// ddp.* (bucket size, algorithm, comm_dtype) applies to the dp all-reduce as in the other
// strategies.
#pragma once

#include <memory>

#include "chorus/comm/group.h"
#include "chorus/train/config.h"
#include "chorus/train/strategy.h"

namespace chorus::train {

class GptStage;

class LayerwiseStrategy : public Strategy {
 public:
  // Collective over world (splits the mesh). ConfigError for parallel.pp < 2, a world size that
  // is not a multiple of tp x pp, sequence parallelism, a precision other than fp32 or gradient
  // compression.
  LayerwiseStrategy(const Config& cfg, std::shared_ptr<comm::ProcessGroup> world);
  ~LayerwiseStrategy() override;

  Roles roles() const override;
  void setup(Task& task) override;
  TrainState loadCheckpoint(const std::string& path) override;
  void saveCheckpoint(const std::string& path, const TrainState& state) override;
  std::string snapshot(const TrainState& state) override;
  TrainState restoreSnapshot(const std::string& payload) override;
  StepOutcome step(const Batch& batch, const StepInfo& info) override;
  JsonObject divergedRecord(const Divergence& d, const LoopStatus& s) override;
  [[noreturn]] void raiseDivergence(const Divergence& d, const LoopStatus& s) override;
  EvalMetrics evaluate(Task& task) override;
  void finish() override;
  JsonObject startRecord(const LoopStatus& s) override;
  JsonObject stepRecord(const LoopStatus& s) override;
  void evalFields(JsonObject& record, const LoopStatus& s) override;
  JsonObject summaryRecord(const LoopStatus& s, TrainResult& result) override;

  // This rank's stage (after setup), for tests.
  GptStage& stage();

 private:
  StepOutcome pipelineStep(const Batch& batch, const StepInfo& info);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::train
