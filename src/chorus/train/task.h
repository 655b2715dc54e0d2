// What a run trains on and how it is scored: a Task gives each data-parallel rank its batch of
// every step, the model the data calls for, the loss of the model's output and the evaluation
// with its metrics' names. How a step is computed and its gradients exchanged is a Strategy's
// (strategy.h); the loop (loop.h) drives both.
//
// Image classification (ImageTask, image_task.h): a DistributedSampler over dataset indices,
// cross-entropy, accuracy and loss on the test split.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "chorus/comm/group.h"
#include "chorus/train/metrics.h"

namespace chorus::train {

// One step's data for this rank: input (images [b, C, H, W], token ids [b, T], ...) and target
// (labels [b], next tokens [b, T], ...).
struct Batch {
  torch::Tensor input;
  torch::Tensor target;
};

// The strategy's model as an evaluation sees it (Strategy::evaluate builds it).
struct EvalRunner {
  // The ranks that split the evaluation set and sum their results (every one of them evaluates);
  // nullptr: this rank scores all of it.
  comm::ProcessGroup* group = nullptr;
  // The model's output for an input, in eval mode, without gradients, at the run's precision
  // (classification: logits [n, classes], any float dtype).
  std::function<torch::Tensor(const torch::Tensor& input)> forward;
  // For models that compute their own loss (a tensor-parallel GPT's vocab-parallel
  // cross-entropy, whose forward gives only this rank's logits shard): the mean loss of a
  // batch, same conditions. Empty: the task computes the loss from forward's output.
  std::function<torch::Tensor(const Batch& batch)> loss;
};

// An evaluation's results, named as metrics.jsonl names them ("test_acc", "test_loss").
struct EvalMetrics {
  std::vector<std::pair<std::string, double>> values;  // in the order they are written
  std::string text;  // for the progress line: "test accuracy 0.7126, test loss 0.764397"
  // The value of key, or `otherwise` when there is none (no evaluation ran).
  double value(const std::string& key, double otherwise = -1) const;
};

class Task {
 public:
  virtual ~Task() = default;
  // Steps in one epoch, the same on every data-parallel rank (> 0; ConfigError otherwise, from
  // the constructor).
  virtual int64_t stepsPerEpoch() const = 0;
  // Called on every rank before the epoch's first batch() (a new shuffle).
  virtual void setEpoch(int64_t epoch) = 0;
  // This rank's batch of step `stepInEpoch` (0-based) of the epoch set last. Deterministic:
  // the same epoch and step give the same batch (resuming relies on it).
  virtual Batch batch(int64_t stepInEpoch) = 0;
  // The model this task trains, its weights drawn from torch's global generator (the loop
  // seeds it and holds a lock around the call). Strategies whose model is their own (a
  // tensor-parallel GPT) do not call it.
  virtual torch::nn::Sequential makeModel() = 0;
  // The mean loss of a model output against batch.target, as a float32 scalar.
  virtual torch::Tensor loss(const torch::Tensor& output, const torch::Tensor& target) const = 0;
  // Fields the task adds at the end of every "step" record, from the window's mean loss (a
  // language model's bits per byte); none by default.
  virtual void stepFields(JsonObject& /*record*/, double /*meanLoss*/) const {}
  // The names evaluate() reports, in order (records written before any evaluation give them -1).
  virtual std::vector<std::string> evalKeys() const = 0;
  // Scores the model on the evaluation set. Every rank of run.group must call it (it
  // all-reduces their sums); throws InvalidArgument when the task holds no evaluation data.
  virtual EvalMetrics evaluate(const EvalRunner& run) = 0;
};

}  // namespace chorus::train
