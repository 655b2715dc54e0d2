// Optimizers and learning-rate schedules from the config (see optim.h).
#include "chorus/train/optim.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "chorus/common/error.h"

namespace chorus::train {

std::unique_ptr<torch::optim::Optimizer> makeOptimizer(const OptimConfig& cfg, std::vector<torch::Tensor> params) {
  if (cfg.name == "sgd") {
    // torch's SGD throws on nesterov without momentum; say which key to change instead.
    if (cfg.nesterov && cfg.momentum <= 0)
      throw InvalidArgument(str("optim.nesterov = true needs optim.momentum > 0 (it is ", cfg.momentum, ")"));
    auto o = torch::optim::SGDOptions(cfg.lr).momentum(cfg.momentum).nesterov(cfg.nesterov).weight_decay(
        cfg.weightDecay);
    return std::make_unique<torch::optim::SGD>(std::move(params), o);
  }
  if (cfg.name == "adam") {
    auto o = torch::optim::AdamOptions(cfg.lr)
                 .betas({cfg.beta1, cfg.beta2})
                 .eps(cfg.eps)
                 .weight_decay(cfg.weightDecay);
    return std::make_unique<torch::optim::Adam>(std::move(params), o);
  }
  if (cfg.name == "adamw") {
    auto o = torch::optim::AdamWOptions(cfg.lr)
                 .betas({cfg.beta1, cfg.beta2})
                 .eps(cfg.eps)
                 .weight_decay(cfg.weightDecay);
    return std::make_unique<torch::optim::AdamW>(std::move(params), o);
  }
  throw InvalidArgument(str("optim.name = \"", cfg.name, "\" is not an optimizer; the choices are: sgd, adam, adamw"));
}

void setLearningRate(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) group.options().set_lr(lr);
}

LrSchedule::LrSchedule(const ScheduleConfig& cfg, double baseLr, int64_t totalSteps, int64_t stepsPerEpoch)
    : cfg_(cfg), base_(baseLr), total_(totalSteps), perEpoch_(stepsPerEpoch) {
  if (cfg_.name != "constant" && cfg_.name != "cosine" && cfg_.name != "step")
    throw InvalidArgument(
        str("schedule.name = \"", cfg_.name, "\" is not a schedule; the choices are: constant, cosine, step"));
  if (cfg_.name == "step" && (cfg_.stepEpochs < 1 || perEpoch_ < 1))
    throw InvalidArgument(str("schedule.step_epochs = ", cfg_.stepEpochs, " with ", perEpoch_,
                              " steps per epoch: both must be at least 1"));
}

double LrSchedule::at(int64_t step) const {
  if (step < cfg_.warmupSteps) {
    double f = static_cast<double>(step) / static_cast<double>(cfg_.warmupSteps);
    return base_ * (cfg_.warmupStart + (1.0 - cfg_.warmupStart) * f);
  }
  if (cfg_.name == "cosine") {
    // t runs from 0 at the end of the warmup to 1 at totalSteps; past it the lr stays min_lr.
    int64_t span = total_ - cfg_.warmupSteps;
    double t = span > 0 ? static_cast<double>(step - cfg_.warmupSteps) / static_cast<double>(span) : 1.0;
    t = std::clamp(t, 0.0, 1.0);
    return cfg_.minLr + (base_ - cfg_.minLr) * 0.5 * (1.0 + std::cos(std::numbers::pi * t));
  }
  if (cfg_.name == "step") {
    int64_t drops = step / (cfg_.stepEpochs * perEpoch_);
    return base_ * std::pow(cfg_.gamma, static_cast<double>(drops));
  }
  return base_;
}

}  // namespace chorus::train
