// Data parallelism by all-reduce (Strategy, strategy.h): every rank holds the whole model,
// wrapped in DistributedDataParallel (buckets all-reduced during the backward pass) over its
// group, with ddp.* (bucket size, algorithm), a compression hook (compression.method: sparse,
// quantized, DGC, PowerSGD; per-rank codec state kept in checkpoints) or a 16-bit wire dtype
// (compression.method fp16/bf16 or ddp.comm_dtype), mixed precision with the fp16 GradScaler,
// and a divergence check all ranks agree on by one all-reduce.
//
// Checkpoints record the worker count that wrote them (the scalar "world") and resume at any
// worker count that divides train.batch_size: model, optimizer and loss scale are the same on
// every rank, the data position is a global step (the sampler's order does not depend on the
// world), and the per-rank codec states are merged or spread by codec_state.h's rule. An elastic
// job's in-memory snapshots (strategy.h) keep each rank's codec state the same way, and a
// re-formed job carries the states of the ranks that survived by that rule.
#pragma once

#include <memory>

#include "chorus/comm/group.h"
#include "chorus/train/config.h"
#include "chorus/train/strategy.h"

namespace chorus::train {

class DdpStrategy : public Strategy {
 public:
  // Every rank of group is a data-parallel rank; rank 0 leads. Builds nothing until setup().
  DdpStrategy(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group);
  ~DdpStrategy() override;

  Roles roles() const override;
  void setup(Task& task) override;
  TrainState loadCheckpoint(const std::string& path) override;
  void saveCheckpoint(const std::string& path, const TrainState& state) override;
  std::string snapshot(const TrainState& state) override;
  TrainState restoreSnapshot(const std::string& payload) override;
  void beginEpoch(int64_t epoch) override;
  StepOutcome step(const Batch& batch, const StepInfo& info) override;
  JsonObject divergedRecord(const Divergence& d, const LoopStatus& s) override;
  [[noreturn]] void raiseDivergence(const Divergence& d, const LoopStatus& s) override;
  EvalMetrics evaluate(Task& task) override;
  JsonObject startRecord(const LoopStatus& s) override;
  JsonObject stepRecord(const LoopStatus& s) override;
  void evalFields(JsonObject& record, const LoopStatus& s) override;
  JsonObject summaryRecord(const LoopStatus& s, TrainResult& result) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::train
