// A parameter-server worker (Strategy, strategy.h): the servers hold the model's shards and its
// optimizer; each step the worker computes its gradient on its shard of the data, pushes it
// (ps::Client) with the step's learning rate and pulls the fresh parameters, under ps.mode
// (bsp, asp, ssp). Workers share no collective: each checks its own loss and gradient before
// it pushes. The server role (ps_trainer.h) runs outside the loop.
#pragma once

#include <memory>

#include <torch/torch.h>

#include "chorus/comm/group.h"
#include "chorus/ps/sharding.h"
#include "chorus/train/config.h"
#include "chorus/train/strategy.h"

namespace chorus::train {

// The plan that shards a model's parameters (named_parameters order) over `servers` servers;
// workers and servers build it from the same model.
ps::ShardPlan shardPlanFor(torch::nn::Module& model, int servers);

class PsWorkerStrategy : public Strategy {
 public:
  // This process is worker group->rank() of `workers`; the servers are ranks
  // [workers, workers + ps.servers) of group. Worker 0 leads: it sends the initial model,
  // writes metrics.jsonl and evaluates on the whole test split; every worker logs to
  // ps/worker<w>.jsonl. Builds nothing until setup().
  PsWorkerStrategy(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group, int workers);
  ~PsWorkerStrategy() override;

  Roles roles() const override;
  // Builds the model, connects to the servers, and starts from their model (worker 0 sends its
  // own first).
  void setup(Task& task) override;
  // Workers keep no checkpoints (Roles::checkpoints is false; the servers keep their shards).
  TrainState loadCheckpoint(const std::string& path) override;
  // A restarted worker (CHORUS_REJOIN=join): the step the servers' counts of its pushes give.
  int64_t joinedAtStep() override;
  void saveCheckpoint(const std::string& path, const TrainState& state) override;
  StepOutcome step(const Batch& batch, const StepInfo& info) override;
  JsonObject divergedRecord(const Divergence& d, const LoopStatus& s) override;
  [[noreturn]] void raiseDivergence(const Divergence& d, const LoopStatus& s) override;
  // Worker 0 evaluates the servers' final model, after every worker's last push
  // (Client::finalPull); the others have nothing to do.
  void prepareFinalEvaluation() override;
  EvalMetrics evaluate(Task& task) override;
  void finish() override;  // a clean goodbye to the servers
  JsonObject startRecord(const LoopStatus& s) override;
  JsonObject stepRecord(const LoopStatus& s) override;
  void evalFields(JsonObject& record, const LoopStatus& s) override;
  JsonObject summaryRecord(const LoopStatus& s, TrainResult& result) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::train
