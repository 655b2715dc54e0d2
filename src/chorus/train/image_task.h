// Image classification as a Task (task.h): Fashion-MNIST or CIFAR-10 from data.*, batches from
// a DistributedSampler over this rank's shard (train.batch_size split over the data-parallel
// ranks), the config's MLP or CNN, cross-entropy, and accuracy and loss on the test split.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "chorus/train/config.h"
#include "chorus/train/datasets.h"
#include "chorus/train/task.h"
#include "chorus/train/trainer.h"

namespace chorus::train {

class ImageTask : public Task {
 public:
  // Loads the training split (data.limit_train) and, with withTestSet, the test split
  // (data.limit_test). dataRank of dataRanks: this rank's place among the data-parallel ranks.
  // Throws the loaders' errors, and ConfigError when the shard leaves no batch (planSteps).
  ImageTask(const Config& cfg, int dataRank, int dataRanks, bool withTestSet);

  int64_t stepsPerEpoch() const override { return plan_.stepsPerEpoch; }
  void setEpoch(int64_t epoch) override;
  Batch batch(int64_t stepInEpoch) override;
  torch::nn::Sequential makeModel() override;
  torch::Tensor loss(const torch::Tensor& output, const torch::Tensor& target) const override;
  std::vector<std::string> evalKeys() const override { return {"test_acc", "test_loss"}; }
  // Each rank of run.group scores a contiguous slice of the test split in chunks of 1000; the
  // sums (correct, loss, count) meet in one all-reduce.
  EvalMetrics evaluate(const EvalRunner& run) override;

  int64_t localBatch() const { return plan_.localBatch; }
  const Dataset& trainSet() const { return train_; }

 private:
  ModelConfig model_;
  Dataset train_, test_;
  StepPlan plan_;
  torch::Tensor order_;  // this epoch's sample indices, this rank's shard
};

}  // namespace chorus::train
