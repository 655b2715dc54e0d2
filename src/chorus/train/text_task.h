// Byte-level language modelling as a Task (task.h): the fortunes corpus (text.h) split by file
// into training and validation, random training windows of model.context bytes, and loss and
// bits per byte on fixed validation windows.
//
// Names: B global batch (train.batch_size), b = B / dataRanks this rank's rows, T context
// (model.context), N bytes in the training split, W validation windows (data.eval_windows).
//
// Steps and epochs: an epoch is N / (B * T) steps (at least 1), so that one epoch shows the model
// about as many bytes as the training split holds. Step s of the run (s = epoch * stepsPerEpoch
// + stepInEpoch) draws its global batch from windowSeed(train.seed, s) alone, and dp rank r
// takes rows [r*b, (r+1)*b) (text.h's trainWindows): the windows depend only on the seed, the
// global step and the dp layout, so a resumed run and a run at another dp or tp size see the
// same data, and tensor-parallel ranks of one dp group see the same windows.
//
// Evaluation: W fixed windows of the validation split (text.h's evalWindows), split over the
// ranks of EvalRunner::group in contiguous slices; each rank sums its windows' mean losses
// (weighted by their token counts) and the sums meet in one all-reduce. Reports "val_loss"
// (mean cross-entropy, nats per byte) and "val_bpb" (bits per byte).
//
// The model is the GPT (gpt.h), built by the strategy from gptOptions(cfg): makeModel() throws.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "chorus/train/config.h"
#include "chorus/train/gpt.h"
#include "chorus/train/task.h"
#include "chorus/train/text.h"

namespace chorus::train {

// The GPT a config describes: vocab 256, model.layers, heads, embed, context, dropout,
// tie_embeddings, parallel.sequence_parallel, seed = train.seed. Does not check model.name.
GptOptions gptOptions(const Config& cfg);

class TextTask : public Task {
 public:
  // Loads the training split of data.path (text.h's rule) and, with withEvalSet, the validation
  // split and its data.eval_windows windows. dataRank of dataRanks: this rank's place among the
  // data-parallel ranks (train.batch_size must be a multiple of dataRanks). Throws the corpus's
  // InvalidArgument (a missing corpus names the package to install), and ConfigError when the
  // batch does not split over the ranks or the validation split is too small for the windows.
  TextTask(const Config& cfg, int dataRank, int dataRanks, bool withEvalSet);

  int64_t stepsPerEpoch() const override { return stepsPerEpoch_; }
  void setEpoch(int64_t epoch) override { epoch_ = epoch; }
  // ids [b, T] and the next bytes [b, T], int64, of global step epoch * stepsPerEpoch +
  // stepInEpoch (the epoch set last).
  Batch batch(int64_t stepInEpoch) override;
  // Throws InvalidArgument: the GPT strategies build their own model (gptOptions).
  torch::nn::Sequential makeModel() override;
  // Mean cross-entropy of full logits output [.., V] against target [..] (V >= 256), float32.
  torch::Tensor loss(const torch::Tensor& output, const torch::Tensor& target) const override;
  // Adds "bpb": the window's mean loss in bits per byte.
  void stepFields(JsonObject& record, double meanLoss) const override;
  std::vector<std::string> evalKeys() const override { return {"val_loss", "val_bpb"}; }
  // Scores this rank's slice of the validation windows in chunks of at most B windows, through
  // run.loss when set (a tp GPT's vocab-parallel loss), else loss(run.forward(ids), targets).
  // Every rank of run.group must call it. Under tensor parallelism run.group is the dp group:
  // the tp ranks of one replica then hold the same slice and call run.loss together.
  EvalMetrics evaluate(const EvalRunner& run) override;

  int64_t localBatch() const { return localBatch_; }
  int64_t context() const { return context_; }
  const TextCorpus& trainCorpus() const { return train_; }
  // The validation windows (empty without withEvalSet): ids and targets [W, T].
  const TextBatch& evalSet() const { return eval_; }

 private:
  TextCorpus train_;
  TextBatch eval_;
  int64_t globalBatch_, localBatch_, context_;
  uint64_t seed_;
  int dataRank_, dataRanks_;
  int64_t stepsPerEpoch_ = 1;
  int64_t epoch_ = 0;
};

}  // namespace chorus::train
