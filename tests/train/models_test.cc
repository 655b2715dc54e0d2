// The models built from the config: output shapes, parameter counts, stable parameter names,
// identical initialization under one seed, and the errors for impossible configs.
#include "chorus/train/models.h"

#include <gtest/gtest.h>

#include "chorus/common/error.h"

namespace chorus::train {
namespace {

std::vector<std::string> names(torch::nn::Module& m, bool buffers) {
  std::vector<std::string> out;
  if (buffers)
    for (const auto& b : m.named_buffers()) out.push_back(b.key());
  else
    for (const auto& p : m.named_parameters()) out.push_back(p.key());
  return out;
}

TEST(Models, DefaultMlpShapeCountAndNames) {
  ModelConfig cfg;  // 784-512-256-10
  auto m = makeModel(cfg, 1, 28, 28, 10);
  EXPECT_EQ(m->forward(torch::randn({4, 1, 28, 28})).sizes(), (std::vector<int64_t>{4, 10}));
  EXPECT_EQ(parameterCount(*m), 535818);
  EXPECT_EQ(parameterCount(*m), (784 * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10));
  EXPECT_EQ(names(*m, false),
            (std::vector<std::string>{"1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"}));
  EXPECT_TRUE(names(*m, true).empty());
}

TEST(Models, MlpFollowsHiddenWidths) {
  ModelConfig cfg;
  cfg.hidden = {7};
  auto m = makeModel(cfg, 3, 4, 5, 2);
  EXPECT_EQ(m->forward(torch::randn({3, 3, 4, 5})).sizes(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(parameterCount(*m), (60 * 7 + 7) + (7 * 2 + 2));
  cfg.hidden = {};  // plain logistic regression
  EXPECT_EQ(parameterCount(*makeModel(cfg, 1, 2, 2, 3)), 4 * 3 + 3);
}

TEST(Models, DefaultCnnShapeCountAndNames) {
  ModelConfig cfg;
  cfg.name = "cnn";  // [conv 32, BN, ReLU, pool] [conv 64, BN, ReLU, pool] -> fc 128 -> 10
  auto m = makeModel(cfg, 1, 28, 28, 10);
  EXPECT_EQ(m->forward(torch::randn({2, 1, 28, 28})).sizes(), (std::vector<int64_t>{2, 10}));
  int64_t expected = 1 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64 + (64 * 7 * 7 * 128 + 128) + (128 * 10 + 10);
  EXPECT_EQ(parameterCount(*m), expected);
  EXPECT_EQ(names(*m, false), (std::vector<std::string>{"0.weight", "1.weight", "1.bias", "4.weight", "5.weight",
                                                        "5.bias", "9.weight", "9.bias", "11.weight", "11.bias"}));
  EXPECT_EQ(names(*m, true),
            (std::vector<std::string>{"1.running_mean", "1.running_var", "1.num_batches_tracked", "5.running_mean",
                                      "5.running_var", "5.num_batches_tracked"}));
  // No conv bias: BatchNorm's shift makes it redundant.
  EXPECT_FALSE(m->named_parameters().contains("0.bias"));
}

TEST(Models, CnnFlattenSizeFollowsImageAndPools) {
  ModelConfig cfg;
  cfg.name = "cnn";
  cfg.channels = {4, 6, 8};
  cfg.fc = 5;
  // 3x32x32 (CIFAR) -> 16 -> 8 -> 4: the first Linear takes 8*4*4 inputs.
  auto m = makeModel(cfg, 3, 32, 32, 10);
  EXPECT_EQ(m->forward(torch::randn({2, 3, 32, 32})).sizes(), (std::vector<int64_t>{2, 10}));
  EXPECT_EQ(m->named_parameters()["13.weight"].sizes(), (std::vector<int64_t>{5, 8 * 4 * 4}));
  // Odd sizes floor: 7x9 -> 3x4 -> 1x2.
  cfg.channels = {4, 6};
  auto odd = makeModel(cfg, 1, 7, 9, 3);
  EXPECT_EQ(odd->forward(torch::randn({1, 1, 7, 9})).sizes(), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(odd->named_parameters()["9.weight"].sizes(), (std::vector<int64_t>{5, 6 * 1 * 2}));
}

TEST(Models, SameSeedSameModel) {
  ModelConfig cfg;
  cfg.name = "cnn";
  torch::manual_seed(7);
  auto a = makeModel(cfg, 1, 28, 28, 10);
  torch::manual_seed(7);
  auto b = makeModel(cfg, 1, 28, 28, 10);
  auto pb = b->named_parameters();
  for (const auto& p : a->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
  torch::manual_seed(8);
  auto c = makeModel(cfg, 1, 28, 28, 10);
  EXPECT_FALSE(torch::equal(a->named_parameters()["0.weight"], c->named_parameters()["0.weight"]));
}

TEST(Models, ImageTooSmallForThePoolsIsAnError) {
  ModelConfig cfg;
  cfg.name = "cnn";
  cfg.channels = {8, 8, 8};
  EXPECT_NO_THROW(makeModel(cfg, 1, 8, 8, 10));  // 8 -> 4 -> 2 -> 1
  try {
    makeModel(cfg, 1, 4, 8, 10);  // 4 -> 2 -> 1 -> 0
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("model.channels"), std::string::npos) << msg;
    EXPECT_NE(msg.find("4x8"), std::string::npos) << msg;
    EXPECT_NE(msg.find("at most 2 blocks"), std::string::npos) << msg;
  }
}

TEST(Models, BadConfigsAreErrors) {
  ModelConfig cfg;
  cfg.name = "resnet";
  EXPECT_THROW(makeModel(cfg, 1, 28, 28, 10), InvalidArgument);
  cfg.name = "mlp";
  cfg.hidden = {16, 0};
  EXPECT_THROW(makeModel(cfg, 1, 28, 28, 10), InvalidArgument);
  cfg.hidden = {16};
  EXPECT_THROW(makeModel(cfg, 1, 28, 28, 0), InvalidArgument);
}

}  // namespace
}  // namespace chorus::train
