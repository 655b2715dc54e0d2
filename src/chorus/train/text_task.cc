// Byte-level language modelling (see text_task.h).
#include "chorus/train/text_task.h"

#include <algorithm>

#include "chorus/common/error.h"

namespace chorus::train {

GptOptions gptOptions(const Config& cfg) {
  GptOptions o;
  o.vocab = 256;
  o.layers = cfg.model.layers;
  o.heads = cfg.model.heads;
  o.embed = cfg.model.embed;
  o.context = cfg.model.context;
  o.dropout = cfg.model.dropout;
  o.tieEmbeddings = cfg.model.tieEmbeddings;
  o.sequenceParallel = cfg.parallel.sequenceParallel;
  o.seed = cfg.train.seed;
  return o;
}

TextTask::TextTask(const Config& cfg, int dataRank, int dataRanks, bool withEvalSet)
    : train_(loadTextCorpus(cfg.data.path, true)),
      globalBatch_(cfg.train.batchSize),
      localBatch_(0),
      context_(cfg.model.context),
      seed_(cfg.train.seed),
      dataRank_(dataRank),
      dataRanks_(dataRanks) {
  if (dataRanks < 1 || dataRank < 0 || dataRank >= dataRanks)
    throw InvalidArgument(str("TextTask: data-parallel rank ", dataRank, " of ", dataRanks, " does not exist"));
  if (globalBatch_ < 1 || globalBatch_ % dataRanks != 0)
    throw ConfigError(str("train.batch_size = ", globalBatch_, ": ", globalBatch_, " windows cannot be split evenly over ",
                          dataRanks, " data-parallel replicas; use a multiple of ", dataRanks));
  localBatch_ = globalBatch_ / dataRanks;
  if (train_.size() < context_ + 1)
    throw ConfigError(str("model.context = ", context_, ": ", train_.name, " holds ", train_.size(),
                          " bytes, too few for one window (context + 1 bytes); lower model.context"));
  // An epoch shows the model about as many bytes as the training split holds. The divisor
  // stays below 2^62: batch_size <= 2^31 and context is bounded by the schema.
  stepsPerEpoch_ = std::max<int64_t>(1, train_.size() / (globalBatch_ * context_));
  if (withEvalSet) {
    const TextCorpus validation = loadTextCorpus(cfg.data.path, false);
    try {
      eval_ = evalWindows(validation, cfg.data.evalWindows, context_);
    } catch (const InvalidArgument& e) {
      throw ConfigError(str("data.eval_windows = ", cfg.data.evalWindows, " with model.context = ", context_, ": ",
                            e.what()));
    }
  }
}

Batch TextTask::batch(int64_t stepInEpoch) {
  const int64_t step = epoch_ * stepsPerEpoch_ + stepInEpoch;
  TextBatch b = trainWindows(train_, globalBatch_, context_, seed_, step, dataRank_, dataRanks_);
  return {std::move(b.ids), std::move(b.targets)};
}

torch::nn::Sequential TextTask::makeModel() {
  throw InvalidArgument(
      "TextTask::makeModel: the GPT is built by its strategy (TensorParallelStrategy or LayerwiseStrategy) from "
      "gptOptions(cfg), not as a torch::nn::Sequential");
}

torch::Tensor TextTask::loss(const torch::Tensor& output, const torch::Tensor& target) const {
  const int64_t v = output.size(-1);
  return torch::nn::functional::cross_entropy(output.to(torch::kFloat).reshape({-1, v}), target.reshape({-1}));
}

void TextTask::stepFields(JsonObject& record, double meanLoss) const { record.add("bpb", bitsPerByte(meanLoss)); }

EvalMetrics TextTask::evaluate(const EvalRunner& run) {
  if (!eval_.ids.defined())
    throw InvalidArgument("TextTask::evaluate: this rank loaded no validation windows (withEvalSet = false)");
  torch::NoGradGuard noGrad;
  const int64_t w = eval_.ids.size(0);
  const int rank = run.group ? run.group->rank() : 0, size = run.group ? run.group->size() : 1;
  const int64_t lo = w * rank / size, hi = w * (rank + 1) / size;
  // Sums of loss x tokens and of tokens, so that slices of any length weigh by what they hold.
  double sums[2] = {0, 0};
  for (int64_t i = lo; i < hi; i += globalBatch_) {
    const int64_t len = std::min(globalBatch_, hi - i);
    Batch b{eval_.ids.narrow(0, i, len), eval_.targets.narrow(0, i, len)};
    torch::Tensor mean = run.loss ? run.loss(b) : loss(run.forward(b.input), b.target);
    const double tokens = static_cast<double>(b.target.numel());
    sums[0] += mean.to(torch::kFloat).item<double>() * tokens;
    sums[1] += tokens;
  }
  if (run.group && size > 1) {
    comm::AllreduceOptions o;
    o.data = sums;
    o.count = 2;
    o.dtype = DType::kFloat64;
    o.op = ReduceOp::kSum;
    run.group->allreduce(o);
  }
  const double loss = sums[0] / std::max(1.0, sums[1]), bpb = bitsPerByte(loss);
  return {{{"val_loss", loss}, {"val_bpb", bpb}}, str("validation loss ", loss, ", ", bpb, " bits per byte")};
}

}  // namespace chorus::train
