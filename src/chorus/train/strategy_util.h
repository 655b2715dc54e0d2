// The parts that the strategies without a parameter server (DdpStrategy, TensorParallelStrategy,
// LayerwiseStrategy; strategy.h) have in common, written once: the gradients' wire dtype and
// the DistributedDataParallel options it selects, the fp16 GradScaler's options, its checkpoint
// scalars and its optimizer step, the divergence check (finite gradients, the decision agreed by
// one all-reduce, the "diverged" record and the DivergenceError report of docs/train.md,
// "Divergence"), the optimizer's state in bytes, and the step trace of a DDP step.
//
// Every function is called from one rank's loop thread; the collective ones say so.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "chorus/amp/grad_scaler.h"
#include "chorus/comm/group.h"
#include "chorus/parallel/data/ddp.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/config.h"
#include "chorus/train/gpt.h"
#include "chorus/train/metrics.h"
#include "chorus/train/strategy.h"

namespace chorus::train {

// ---- the gradient exchange ----

// The dtype of dense gradients on the wire: compression.method fp16/bf16 (a 16-bit all-reduce)
// or ddp.comm_dtype (validation allows only one of them to differ from the default): "fp32",
// "fp16" or "bf16".
std::string wireDtype(const Config& cfg);

// DistributedDataParallel's options from ddp.* (bucket size, find_unused, broadcast_buffers)
// with the hook of the wire dtype: a 16-bit cast (castHook) or a plain all-reduce, both with
// ddp.algo. A compressing strategy replaces the hook with its codec's.
parallel::DDPOptions ddpOptions(const Config& cfg);

// What a ring all-reduce over `dp` ranks sends of buckets of `bytesReduced` float32 bytes in
// the wire dtype: 2 (dp - 1) / dp of their wire bytes (0 for dp = 1). An estimate where the
// transport's counter also holds other traffic of the same moment (tensor or pipeline parallel).
double ringAllreduceBytes(const Config& cfg, int dp, uint64_t bytesReduced);

// ---- mixed precision ----

// The loss scale below which an fp16 run whose gradients still overflow has diverged: even
// gradients scaled down 2^24 times exceed float16's range (or are NaN).
constexpr double kMinLossScale = 1.0 / (1 << 24);

// The GradScaler's options from amp.*; enabled for precision = "fp16" only.
amp::GradScalerOptions gradScalerOptions(const Config& cfg);

// The scaler's state as checkpoint scalars ("amp.scale", "amp.good_steps", "amp.skipped_steps")
// and back; a checkpoint without them restores amp.init_scale and zero counts.
void saveScalerState(const amp::GradScaler& scaler, TrainState& state);
void restoreScalerState(amp::GradScaler& scaler, const TrainState& state, const Config& cfg);

// ---- in-memory snapshots (Strategy::snapshot, elastic.h) ----

// One rank's model (or its shard of it) and optimizer with `state`, as a snapshot payload whose
// shared part is what a checkpoint of them holds (no per-rank part), taken in a world of
// `world` ranks; and back (throws Error when the payload does not match model and optimizer).
// The tensor- and pipeline-parallel strategies: a rank's shard is the same on every data-parallel
// replica of it, so a replacement restores the payload of a replica (elastic.cc).
std::string moduleSnapshot(torch::nn::Module& model, const torch::optim::Optimizer& opt, const TrainState& state,
                           int world);
TrainState restoreModuleSnapshot(const std::string& payload, torch::nn::Module& model, torch::optim::Optimizer& opt);

// The optimizer step through the scaler (a plain step when it is disabled). A step the scaler
// skips (fp16 overflow) counts in out.stats.skippedSteps; when the scale has then fallen below
// kMinLossScale, out.diverged.scale is set and it returns false (the loop stops the run).
// Collective where the scaler's group is (its overflow decision).
bool scaledOptimizerStep(amp::GradScaler& scaler, torch::optim::Optimizer& optimizer, StepOutcome& out);

// ---- gradient clipping (optim.clip_norm) ----

// Clips the whole model's gradient to the global L2 norm maxNorm, as
// torch.nn.utils.clip_grad_norm_ does on the unsplit model, when the model is split over tensor
// and pipeline ranks: the squares of this rank's gradients are summed (a parameter split over tp,
// by its ShardSpec, counted on every tp rank; a replicated one on tp rank 0 only; the names in
// `skip`, such as the last stage's copy of a tied embedding, not at all), then summed over tp and
// over pp; when the norm exceeds maxNorm every gradient is multiplied by maxNorm / (norm + 1e-6).
// Gradients must already be averaged over dp (equal on every replica). Parameters without a
// gradient count as zeros. Returns the norm before clipping, the same on every rank of the
// groups. Collective over tp, then pp (nullptr or a group of one: nothing to reduce). A
// non-finite norm leaves the gradients as they are (the divergence check or the GradScaler
// skips that step).
double clipGradientNorm(torch::nn::Module& model, double maxNorm, comm::ProcessGroup* tp, comm::ProcessGroup* pp,
                        const std::vector<std::string>& skip = {});

// ---- divergence (docs/train.md, "Divergence") ----

// Whether every gradient the optimizer holds is finite.
bool gradientsFinite(torch::optim::Optimizer& optimizer);

// The step's divergence decision, the same on every rank of g: one all-reduce (maximum) of two
// int32 flags, none when g has one rank. Collective over g.
Divergence agreeOnDivergence(comm::ProcessGroup& g, bool lossFinite, bool gradientFinite);
// The same decision in a float64 all-reduce (sum) that also sums `value` over g (the step's loss:
// one collective for both). Collective over g.
Divergence agreeOnDivergence(comm::ProcessGroup& g, bool lossFinite, bool gradientFinite, double& value);

// The "diverged" record: step, epoch, loss_finite, grad_finite, loss_scale (when a scaler is
// given), last_checkpoint.
JsonObject divergedRecord(const Divergence& d, const LoopStatus& s, const amp::GradScaler* scaler);

// What a strategy's divergence report says beyond the loop's facts (LoopStatus, Config).
struct DivergenceReport {
  Divergence what;              // the decision every rank agreed on
  double loss = 0;              // this rank's loss of the step (gathered from every rank)
  double lossScale = 0;         // the GradScaler's scale now (what.scale)
  std::string layout;           // after "training diverged at step N (...)": e.g. " (tp 2 x dp 1)"
  std::string gradientChecked;  // which gradient was checked: "after the all-reduce, the same on
                                // every rank"
};

// Ends a diverged run on every rank of g at the same step (the decision was agreed): gathers each
// rank's loss (collective over g) and throws DivergenceError. Rank 0's message names the step,
// the ranks whose loss is (not) finite, the last good checkpoint and what to change (optim.lr,
// schedule.warmup_steps, the compression.* and precision that apply); the other ranks wait
// for rank 0 to leave (up to 10 s) and say that rank 0 reports, so that `chorus train` prints the
// report once. The DivergenceError's rank is the first rank whose loss is not finite (-1: none).
[[noreturn]] void throwDivergence(comm::ProcessGroup& g, const Config& cfg, const LoopStatus& s,
                                  const DivergenceReport& r);

// ---- records and traces ----

// The optimizer state per parameter byte, from the optimizer's kind: sgd with momentum keeps a
// momentum buffer (1), adam and adamw exp_avg and exp_avg_sq (2), sgd without momentum none.
int64_t optimizerStateMultiple(const OptimConfig& o);
// What the optimizer's state tensors hold now, in bytes (0 before its first step).
int64_t optimizerStateBytes(torch::optim::Optimizer& optimizer);

// Global samples per second over a window of steps (0 for an empty one).
double samplesPerSecond(const StepStats& w, int64_t batchSize);
// The fields every "step" record opens with: event, step, epoch, loss (the window's mean), lr,
// samples_per_s; the strategy adds its own after them.
JsonObject stepRecordHead(const LoopStatus& s, int64_t batchSize);

// The summary's part of TrainResult that the strategy knows: samplesPerSec (the slowest rank's
// time), commSeconds and overlapFraction (this rank's).
void fillSummaryResult(const LoopStatus& s, int64_t batchSize, TrainResult& result);

// The mesh of a GPT run, for its records.
struct MeshSizes {
  int tp = 1, dp = 1, pp = 1;
};

// The "start" record of a GPT run (TensorParallelStrategy, LayerwiseStrategy): world, model,
// params (this rank's), precision, comm_dtype, transport, tp, dp, pp, sequence_parallel,
// param_bytes_sharded and param_bytes_replicated (this rank's), optimizer_bytes (computed:
// optimizerStateMultiple x this rank's parameter bytes), steps_per_epoch, total_steps,
// resumed_from, resumed_step. The strategy may add its own fields after them.
JsonObject gptStartRecord(const Config& cfg, const LoopStatus& s, const comm::ProcessGroup& world, MeshSizes mesh,
                          int64_t params, const ParamBytes& bytes);
// The "summary" record of a GPT run: the loop's figures with tp, dp, pp, tokens_per_s, the last
// val_loss and val_bpb, grad_bytes_per_step, the model-parallel bytes per step under
// `modelParallelKey` ("tp_bytes_per_step", "pp_bytes_per_step"; from StepStats::modelParallelBytes)
// and optimizer_bytes (as measured, optimizerStateBytes). Call fillSummaryResult first.
JsonObject gptSummaryRecord(const Config& cfg, const LoopStatus& s, const TrainResult& result,
                            const comm::ProcessGroup& world, MeshSizes mesh, const std::string& modelParallelKey,
                            int64_t optimizerBytes);

// The spans of a step computed through DistributedDataParallel: forward (start .. backwardStart),
// backward, the wait for the last buckets, the optimizer (optimizerStart .. end) in lane
// "compute", each bucket's all-reduce in lane "comm". Nothing when info.tracer is off.
void traceDdpStep(const StepInfo& info, std::chrono::steady_clock::time_point backwardStart,
                  std::chrono::steady_clock::time_point optimizerStart, std::chrono::steady_clock::time_point end,
                  const parallel::DDPStats& st);

}  // namespace chorus::train
