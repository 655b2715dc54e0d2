// Optimizers from the config (type, options, one step checked against its formula),
// setLearningRate, and the learning-rate schedules at their key steps.
#include "chorus/train/optim.h"

#include <gtest/gtest.h>

#include <cmath>

#include "chorus/common/error.h"

namespace chorus::train {
namespace {

torch::Tensor param(std::vector<float> v) { return torch::tensor(v).requires_grad_(true); }

TEST(Optim, SgdWithItsOptions) {
  OptimConfig cfg;
  cfg.lr = 0.3;
  cfg.momentum = 0.8;
  cfg.nesterov = true;
  cfg.weightDecay = 0.01;
  auto opt = makeOptimizer(cfg, {param({1, 2})});
  ASSERT_NE(dynamic_cast<torch::optim::SGD*>(opt.get()), nullptr);
  auto& o = static_cast<torch::optim::SGDOptions&>(opt->param_groups()[0].options());
  EXPECT_EQ(o.lr(), 0.3);
  EXPECT_EQ(o.momentum(), 0.8);
  EXPECT_TRUE(o.nesterov());
  EXPECT_EQ(o.weight_decay(), 0.01);
  EXPECT_EQ(o.dampening(), 0.0);
}

TEST(Optim, SgdStepMatchesTheFormula) {
  OptimConfig cfg;  // sgd, lr 0.05, momentum 0.9
  cfg.weightDecay = 0.1;
  auto p = param({1.0f, -2.0f});
  auto opt = makeOptimizer(cfg, {p});
  // Two steps with gradient g: d1 = g + wd*p0, p1 = p0 - lr*d1; d2 = g + wd*p1, buf = 0.9*d1 + d2.
  torch::Tensor g = torch::tensor({0.5f, 0.25f});
  auto p0 = p.detach().clone();
  for (int i = 0; i < 2; ++i) {
    p.mutable_grad() = g.clone();
    opt->step();
  }
  auto d1 = g + 0.1 * p0;
  auto p1 = p0 - 0.05 * d1;
  auto buf = 0.9 * d1 + (g + 0.1 * p1);
  EXPECT_TRUE(torch::allclose(p.detach(), p1 - 0.05 * buf, 1e-6, 1e-7));
}

TEST(Optim, AdamWithItsOptions) {
  OptimConfig cfg;
  cfg.name = "adam";
  cfg.lr = 1e-3;
  cfg.beta1 = 0.8;
  cfg.beta2 = 0.95;
  cfg.eps = 1e-6;
  cfg.weightDecay = 0.02;
  auto opt = makeOptimizer(cfg, {param({1})});
  ASSERT_NE(dynamic_cast<torch::optim::Adam*>(opt.get()), nullptr);
  auto& o = static_cast<torch::optim::AdamOptions&>(opt->param_groups()[0].options());
  EXPECT_EQ(o.lr(), 1e-3);
  EXPECT_EQ(std::get<0>(o.betas()), 0.8);
  EXPECT_EQ(std::get<1>(o.betas()), 0.95);
  EXPECT_EQ(o.eps(), 1e-6);
  EXPECT_EQ(o.weight_decay(), 0.02);
  EXPECT_FALSE(o.amsgrad());
}

TEST(Optim, AdamWWithItsOptionsDecaysDecoupled) {
  OptimConfig cfg;
  cfg.name = "adamw";
  cfg.lr = 0.1;
  cfg.beta1 = 0.7;
  cfg.beta2 = 0.9;
  cfg.eps = 1e-7;
  cfg.weightDecay = 0.5;
  auto p = param({2.0f, -4.0f});
  auto opt = makeOptimizer(cfg, {p});
  ASSERT_NE(dynamic_cast<torch::optim::AdamW*>(opt.get()), nullptr);
  auto& o = static_cast<torch::optim::AdamWOptions&>(opt->param_groups()[0].options());
  EXPECT_EQ(o.lr(), 0.1);
  EXPECT_EQ(std::get<0>(o.betas()), 0.7);
  EXPECT_EQ(std::get<1>(o.betas()), 0.9);
  EXPECT_EQ(o.eps(), 1e-7);
  EXPECT_EQ(o.weight_decay(), 0.5);
  // Decoupled: with a zero gradient the Adam update is 0 and only p *= 1 - lr*wd remains
  // (Adam's L2 decay would instead move p by about lr through the normalized gradient).
  p.mutable_grad() = torch::zeros({2});
  opt->step();
  EXPECT_TRUE(torch::allclose(p.detach(), torch::tensor({2.0f * 0.95f, -4.0f * 0.95f})));

  cfg.name = "adam";
  auto q = param({2.0f, -4.0f});
  auto adam = makeOptimizer(cfg, {q});
  q.mutable_grad() = torch::zeros({2});
  adam->step();
  EXPECT_TRUE(torch::allclose(q.detach(), torch::tensor({2.0f - 0.1f, -4.0f + 0.1f}), 1e-4));
}

TEST(Optim, BadConfigsAreErrors) {
  OptimConfig cfg;
  cfg.name = "adamx";
  EXPECT_THROW(makeOptimizer(cfg, {param({1})}), InvalidArgument);
  cfg.name = "sgd";
  cfg.nesterov = true;
  cfg.momentum = 0;
  EXPECT_THROW(makeOptimizer(cfg, {param({1})}), InvalidArgument);
}

TEST(Optim, SetLearningRateChangesEveryGroup) {
  for (const char* name : {"sgd", "adam", "adamw"}) {
    OptimConfig cfg;
    cfg.name = name;
    auto opt = makeOptimizer(cfg, {param({1})});
    opt->add_param_group(torch::optim::OptimizerParamGroup({param({2})}, opt->param_groups()[0].options().clone()));
    setLearningRate(*opt, 0.125);
    ASSERT_EQ(opt->param_groups().size(), 2u);
    for (auto& g : opt->param_groups()) EXPECT_EQ(g.options().get_lr(), 0.125) << name;
  }
  // And the step uses it: SGD without momentum moves p by exactly lr * g.
  OptimConfig cfg;
  cfg.momentum = 0;
  auto p = param({1.0f});
  auto opt = makeOptimizer(cfg, {p});
  setLearningRate(*opt, 0.25);
  p.mutable_grad() = torch::tensor({1.0f});
  opt->step();
  EXPECT_EQ(p.item<float>(), 0.75f);
}

TEST(LrSchedule, WarmupThenConstant) {
  ScheduleConfig cfg;
  cfg.name = "constant";
  cfg.warmupSteps = 10;
  cfg.warmupStart = 0.1;
  LrSchedule s(cfg, 2.0, 100, 10);
  EXPECT_DOUBLE_EQ(s.at(0), 0.2);
  EXPECT_DOUBLE_EQ(s.at(5), 2.0 * (0.1 + 0.9 * 0.5));
  EXPECT_DOUBLE_EQ(s.at(9), 2.0 * (0.1 + 0.9 * 0.9));
  EXPECT_DOUBLE_EQ(s.at(10), 2.0);
  EXPECT_DOUBLE_EQ(s.at(1000), 2.0);
}

TEST(LrSchedule, CosineAfterWarmup) {
  ScheduleConfig cfg;  // cosine
  cfg.warmupSteps = 10;
  cfg.warmupStart = 0.0;
  cfg.minLr = 0.01;
  LrSchedule s(cfg, 1.0, 110, 10);
  EXPECT_DOUBLE_EQ(s.at(0), 0.0);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);                                  // end of warmup: t = 0
  EXPECT_DOUBLE_EQ(s.at(35), 0.01 + 0.99 * 0.5 * (1 + std::cos(M_PI / 4)));
  EXPECT_DOUBLE_EQ(s.at(60), 0.01 + 0.99 * 0.5);                    // midpoint
  EXPECT_DOUBLE_EQ(s.at(110), 0.01);                                // the end
  EXPECT_DOUBLE_EQ(s.at(500), 0.01);                                // clamped past it
  for (int64_t i = 11; i <= 110; ++i) EXPECT_LT(s.at(i), s.at(i - 1)) << i;
}

TEST(LrSchedule, CosineWithoutWarmup) {
  ScheduleConfig cfg;
  LrSchedule s(cfg, 0.5, 4, 2);
  EXPECT_DOUBLE_EQ(s.at(0), 0.5);
  EXPECT_DOUBLE_EQ(s.at(2), 0.25);
  EXPECT_NEAR(s.at(4), 0.0, 1e-17);
}

TEST(LrSchedule, StepDropsEveryStepEpochs) {
  ScheduleConfig cfg;
  cfg.name = "step";
  cfg.stepEpochs = 2;
  cfg.gamma = 0.5;
  LrSchedule s(cfg, 1.0, 1000, 5);  // a drop every 10 steps
  EXPECT_DOUBLE_EQ(s.at(0), 1.0);
  EXPECT_DOUBLE_EQ(s.at(9), 1.0);
  EXPECT_DOUBLE_EQ(s.at(10), 0.5);
  EXPECT_DOUBLE_EQ(s.at(19), 0.5);
  EXPECT_DOUBLE_EQ(s.at(20), 0.25);
  EXPECT_DOUBLE_EQ(s.at(35), 0.125);

  cfg.warmupSteps = 4;  // warmup first, then the step schedule on the global step
  cfg.warmupStart = 0.5;
  LrSchedule w(cfg, 1.0, 1000, 5);
  EXPECT_DOUBLE_EQ(w.at(0), 0.5);
  EXPECT_DOUBLE_EQ(w.at(2), 0.75);
  EXPECT_DOUBLE_EQ(w.at(4), 1.0);
  EXPECT_DOUBLE_EQ(w.at(10), 0.5);
}

TEST(LrSchedule, UnknownNameIsAnError) {
  ScheduleConfig cfg;
  cfg.name = "linear";
  EXPECT_THROW(LrSchedule(cfg, 1.0, 10, 1), InvalidArgument);
}

}  // namespace
}  // namespace chorus::train
