// Optimizers and learning-rate schedules from the config.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "chorus/train/config.h"

namespace chorus::train {

// SGD (momentum, nesterov, weight decay), Adam (L2 weight decay) or AdamW (decoupled).
std::unique_ptr<torch::optim::Optimizer> makeOptimizer(const OptimConfig& cfg, std::vector<torch::Tensor> params);

// Sets the learning rate of every param group.
void setLearningRate(torch::optim::Optimizer& opt, double lr);

// The lr at each global step (0-based): a linear warmup from lr*warmup_start to lr over
// warmup_steps, then constant, cosine (to min_lr at totalSteps) or step (x gamma every
// step_epochs epochs, counted in steps with stepsPerEpoch).
class LrSchedule {
 public:
  LrSchedule(const ScheduleConfig& cfg, double baseLr, int64_t totalSteps, int64_t stepsPerEpoch);
  double at(int64_t step) const;

 private:
  ScheduleConfig cfg_;
  double base_;
  int64_t total_;
  int64_t perEpoch_;
};

}  // namespace chorus::train
