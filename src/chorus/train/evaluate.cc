// Test-set evaluation (see evaluate.h).
#include "chorus/train/evaluate.h"

#include <algorithm>

namespace chorus::train {

EvalResult evaluate(torch::nn::Sequential& model, const Dataset& test, comm::ProcessGroup* group, amp::Precision prec) {
  torch::NoGradGuard noGrad;
  model->eval();
  const int64_t n = test.size();
  const int rank = group ? group->rank() : 0, size = group ? group->size() : 1;
  const int64_t lo = n * rank / size, hi = n * (rank + 1) / size;
  double sums[3] = {0, 0, static_cast<double>(hi - lo)};  // correct, loss sum, count
  for (int64_t i = lo; i < hi; i += 1000) {
    int64_t len = std::min<int64_t>(1000, hi - i);
    auto x = test.images.narrow(0, i, len);
    auto y = test.labels.narrow(0, i, len);
    torch::Tensor logits;
    {
      amp::Autocast ac(prec, torch::kCPU);
      logits = model->forward(x);
    }
    logits = logits.to(torch::kFloat);
    sums[0] += logits.argmax(1).eq(y).sum().item<double>();
    sums[1] += torch::nn::functional::cross_entropy(logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                   .item<double>();
  }
  if (group && size > 1) {
    comm::AllreduceOptions o;
    o.data = sums;
    o.count = 3;
    o.dtype = DType::kFloat64;
    o.op = ReduceOp::kSum;
    group->allreduce(o);
  }
  model->train();
  return {sums[0] / std::max(1.0, sums[2]), sums[1] / std::max(1.0, sums[2])};
}

}  // namespace chorus::train
