// Tensor parallelism over a mesh (Strategy, strategy.h): every GPT job with parallel.pp = 1, at
// any parallel.tp (1 included) and dp = workers / tp. The world is laid out as
// ProcessMesh::make(world, tp): each run of tp neighbouring ranks holds one replica of the GPT,
// split Megatron's way (gpt.h), and the dp replicas split the global batch; their gradients are
// averaged by DistributedDataParallel over the mesh's "dp" group (each rank all-reduces its own
// shards with the ranks holding the same shards). At dp = 1 there is nothing to average and
// the model runs without the DDP wrapper.
//
//   step: logits shard = ddp.forward(ids)                    tp: embedding + 2 all-reduces per block
//         loss = vocab-parallel cross-entropy (gpt.h)        tp: 3 small all-reduces of [B·T]
//         backward                                           tp: 2 all-reduces per block (+ tied head);
//                                                            dp: the buckets, under the backward pass
//         sequence parallel: LayerNorm gradients all-reduced over tp
//         one 3-value all-reduce over the world: the global mean loss and the divergence flags
//         optimizer step (or the fp16 GradScaler's)
//
// Roles: the loop's group is the world, world rank 0 leads, the data rank is the dp coordinate.
// Every rank evaluates (the evaluation windows split over dp; each tp group computes the
// vocab-parallel loss together) and checkpoints (saveShardedCheckpoint: dp rank 0's tp ranks
// write their shards; a resume at another tp or dp re-shards on load).
//
// Precision: fp32, bf16 (CPU autocast around forward and loss) and fp16 (float32 compute with the
// GradScaler, whose overflow decision is agreed over the world). Gradients on the wire:
// ddp.comm_dtype or compression.method fp16/bf16; other compression methods are refused.
//
// Records: the start record gives "tp", "dp", "pp", "param_bytes_sharded" and
// "param_bytes_replicated" (this rank's, parameterBytes) and "optimizer_bytes" (computed from the
// optimizer's kind, optimizerStateMultiple: sgd with momentum one buffer per parameter, adam and
// adamw two); step records "tokens_per_s" and "tp_bytes" (the window's
// StepStats::modelParallelBytes); the summary "tp_bytes_per_step" and "optimizer_bytes" as
// measured from the optimizer's state.
//
// tp traffic: the bytes this rank sent during forward, backward and the sequence-parallel
// gradient all-reduce, less DDP's. With dp = 1 (or tp = 1) that is exact. With dp > 1 and tp > 1
// the two share the transport's counter and overlap in time, so DDP's part (grad_bytes) is taken
// as a ring all-reduce's share of its buckets, 2 (dp - 1) / dp of their wire bytes: both are
// estimates then.
#pragma once

#include <memory>

#include "chorus/comm/group.h"
#include "chorus/train/config.h"
#include "chorus/train/gpt.h"
#include "chorus/train/strategy.h"
#include "chorus/train/strategy_util.h"  // optimizerStateMultiple

namespace chorus::train {

class TensorParallelStrategy : public Strategy {
 public:
  // Builds the mesh (collective over world: every rank constructs it at the same point).
  // ConfigError when the config is not a GPT job this strategy runs (model.name, parallel.pp,
  // ps.servers) or asks for a compression method other than none, fp16 or bf16.
  TensorParallelStrategy(const Config& cfg, std::shared_ptr<comm::ProcessGroup> world);
  ~TensorParallelStrategy() override;

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
  JsonObject startRecord(const LoopStatus& s) override;
  JsonObject stepRecord(const LoopStatus& s) override;
  void evalFields(JsonObject& record, const LoopStatus& s) override;
  JsonObject summaryRecord(const LoopStatus& s, TrainResult& result) override;

  // The model after setup() (this rank's shards), for tests and tools.
  Gpt& model();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The bytes of parameters a rank holds for a GPT with options o split over tp ranks, from the
// shapes alone (no model is built): what parameterBytes(model) gives for that model (float32).
ParamBytes gptParameterBytes(const GptOptions& o, int64_t tp);

}  // namespace chorus::train
