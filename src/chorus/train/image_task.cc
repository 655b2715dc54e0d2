// Image classification (see image_task.h).
#include "chorus/train/image_task.h"

#include <algorithm>

#include "chorus/common/error.h"
#include "chorus/train/models.h"

namespace chorus::train {

ImageTask::ImageTask(const Config& cfg, int dataRank, int dataRanks, bool withTestSet)
    : model_(cfg.model),
      train_(loadDataset(cfg.data.dataset, cfg.data.path, true, cfg.data.limitTrain)),
      plan_(planSteps(cfg, train_.size(), dataRank, dataRanks)) {
  if (withTestSet) test_ = loadDataset(cfg.data.dataset, cfg.data.path, false, cfg.data.limitTest);
}

void ImageTask::setEpoch(int64_t epoch) {
  plan_.sampler.setEpoch(epoch);
  order_ = torch::tensor(plan_.sampler.indices(), torch::kLong);
}

Batch ImageTask::batch(int64_t stepInEpoch) {
  const int64_t begin = stepInEpoch * plan_.localBatch, len = std::min(plan_.localBatch, plan_.shard - begin);
  torch::Tensor idx = order_.narrow(0, begin, len);
  return {train_.images.index_select(0, idx), train_.labels.index_select(0, idx)};
}

torch::nn::Sequential ImageTask::makeModel() {
  return train::makeModel(model_, train_.images.size(1), train_.images.size(2), train_.images.size(3), train_.classes);
}

torch::Tensor ImageTask::loss(const torch::Tensor& output, const torch::Tensor& target) const {
  return torch::nn::functional::cross_entropy(output.to(torch::kFloat), target);
}

EvalMetrics ImageTask::evaluate(const EvalRunner& run) {
  if (test_.size() == 0) throw InvalidArgument("ImageTask::evaluate: this rank loaded no test split (withTestSet = false)");
  torch::NoGradGuard noGrad;
  const int64_t n = test_.size();
  const int rank = run.group ? run.group->rank() : 0, size = run.group ? run.group->size() : 1;
  const int64_t lo = n * rank / size, hi = n * (rank + 1) / size;
  double sums[3] = {0, 0, static_cast<double>(hi - lo)};  // correct, loss sum, count
  for (int64_t i = lo; i < hi; i += 1000) {
    const int64_t len = std::min<int64_t>(1000, hi - i);
    torch::Tensor y = test_.labels.narrow(0, i, len);
    torch::Tensor logits = run.forward(test_.images.narrow(0, i, len)).to(torch::kFloat);
    sums[0] += logits.argmax(1).eq(y).sum().item<double>();
    sums[1] += torch::nn::functional::cross_entropy(logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                   .item<double>();
  }
  if (run.group && size > 1) {
    comm::AllreduceOptions o;
    o.data = sums;
    o.count = 3;
    o.dtype = DType::kFloat64;
    o.op = ReduceOp::kSum;
    run.group->allreduce(o);
  }
  const double accuracy = sums[0] / std::max(1.0, sums[2]), loss = sums[1] / std::max(1.0, sums[2]);
  return {{{"test_acc", accuracy}, {"test_loss", loss}}, str("test accuracy ", accuracy, ", test loss ", loss)};
}

}  // namespace chorus::train
