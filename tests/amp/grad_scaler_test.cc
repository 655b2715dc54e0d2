// The fp16 loss scaler: skips the step on an injected inf (on every rank), shrinks and grows
// the scale; autocast runs bf16 matmuls on the CPU.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <limits>

#include "chorus/amp/autocast.h"
#include "chorus/amp/grad_scaler.h"
#include "chorus/parallel/data/ddp.h"
#include "util/rank_threads.h"

namespace chorus::amp {
namespace {

TEST(GradScaler, InjectedInfSkipsTheStepAndHalvesTheScale) {
  torch::manual_seed(0);
  torch::nn::Linear lin(3, 2);
  torch::optim::SGD opt(lin->parameters(), 0.1);
  GradScaler scaler({.initScale = 1024, .growthFactor = 2, .backoffFactor = 0.5, .growthInterval = 3});
  auto before = lin->weight.clone();
  scaler.scale(lin->forward(torch::ones({1, 3})).sum()).backward();
  {
    torch::NoGradGuard ng;
    lin->weight.mutable_grad()[0][0] = std::numeric_limits<float>::infinity();
  }
  EXPECT_FALSE(scaler.step(opt));
  scaler.update();
  EXPECT_TRUE(torch::equal(lin->weight, before)) << "a skipped step must leave the weights alone";
  EXPECT_EQ(scaler.scaleValue(), 512);
  EXPECT_EQ(scaler.skippedSteps(), 1);

  // Clean steps: the gradient is unscaled exactly, and the scale grows after 3 of them.
  for (int i = 0; i < 3; ++i) {
    opt.zero_grad();
    scaler.scale(lin->forward(torch::ones({1, 3})).sum()).backward();
    EXPECT_TRUE(scaler.unscale(opt));
    EXPECT_TRUE(torch::allclose(lin->bias.grad(), torch::ones({2})));  // d(sum)/d(bias) = 1
    EXPECT_TRUE(scaler.step(opt));
    scaler.update();
  }
  EXPECT_EQ(scaler.scaleValue(), 1024);
}

TEST(GradScaler, NanAlsoSkipsAndUpdateWithoutStepIsAnError) {
  torch::nn::Linear lin(2, 1);
  torch::optim::SGD opt(lin->parameters(), 0.1);
  GradScaler scaler;
  EXPECT_THROW(scaler.update(), InvalidArgument);
  scaler.scale(lin->forward(torch::ones({1, 2})).sum()).backward();
  {
    torch::NoGradGuard ng;
    lin->bias.mutable_grad().fill_(std::numeric_limits<float>::quiet_NaN());
  }
  EXPECT_FALSE(scaler.step(opt));
}

TEST(GradScaler, EveryRankSkipsWhenOneRankOverflows) {
  testutil::runRanks(2, "loopback", [](comm::ProcessGroup& g) {
    auto group = std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
    torch::manual_seed(0);
    torch::nn::Linear lin(3, 2);
    torch::optim::SGD opt(lin->parameters(), 0.1);
    GradScaler scaler({.initScale = 256}, group);
    auto before = lin->weight.clone();
    // Without DDP the gradients stay local: only rank 1 sees the inf, both must skip.
    scaler.scale(lin->forward(torch::ones({1, 3})).sum()).backward();
    if (g.rank() == 1) {
      torch::NoGradGuard ng;
      lin->weight.mutable_grad()[1][2] = std::numeric_limits<float>::infinity();
    }
    EXPECT_FALSE(scaler.step(opt)) << "rank " << g.rank();
    scaler.update();
    EXPECT_TRUE(torch::equal(lin->weight, before));
    EXPECT_EQ(scaler.scaleValue(), 128);
  });
}

TEST(GradScaler, Fp16GradientsOverflowOnTheWireAndTheScalerRecovers) {
  // A loss scale so large that the 16-bit all-reduce overflows: every rank skips, then the
  // backed-off scale fits and the step goes through.
  testutil::runRanks(2, "loopback", [](comm::ProcessGroup& g) {
    auto group = std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
    torch::manual_seed(0);
    torch::nn::Linear lin(3, 2);
    parallel::DDPOptions o;
    o.hook = parallel::castHook(at::kHalf);
    parallel::DistributedDataParallel ddp(lin, group, o);
    torch::optim::SGD opt(lin->parameters(), 0.1);
    GradScaler scaler({.initScale = 1e6, .backoffFactor = 0.001});
    bool stepped[2];
    for (int i = 0; i < 2; ++i) {
      opt.zero_grad();
      scaler.scale(ddp.forward(torch::full({1, 3}, 10.0)).sum()).backward();
      stepped[i] = scaler.step(opt);
      scaler.update();
    }
    EXPECT_FALSE(stepped[0]) << "gradients of 10 * 1e6 do not fit in float16";
    EXPECT_TRUE(stepped[1]) << "gradients of 10 * 1e3 do";
  });
}

TEST(Autocast, Bf16RunsLinearInBfloat16AndRestores) {
  torch::nn::Linear lin(4, 4);
  auto x = torch::randn({2, 4});
  {
    Autocast ac(Precision::kBf16, torch::kCPU);
    EXPECT_TRUE(ac.active());
    EXPECT_EQ(lin->forward(x).scalar_type(), at::kBFloat16);
    EXPECT_EQ(lin->weight.scalar_type(), at::kFloat) << "master weights stay float32";
  }
  EXPECT_EQ(lin->forward(x).scalar_type(), at::kFloat);
  {
    Autocast off(Precision::kFp32, torch::kCPU);
    EXPECT_FALSE(off.active());
  }
  EXPECT_EQ(parsePrecision("bf16"), Precision::kBf16);
  EXPECT_THROW(parsePrecision("fp8"), InvalidArgument);
}

}  // namespace
}  // namespace chorus::amp
