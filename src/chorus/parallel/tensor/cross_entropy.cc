// Shapes: z [N, Vk] this rank's logits, t [N] targets, k = tp size.
//
// Steps (forward):
//   1. mask padded columns (global index >= realVocab) to -inf;
//   2. m = all-reduce-max(rowmax(z))                                  [N]
//   3. e = exp(z - m); the target's shifted logit where this rank holds it, else 0;
//      one all-reduce-sum of [sum_j e, z_t - m] stacked as [2, N]
//   4. loss = mean(log(sum e) - (z_t - m))
// The softmax e / sum e of this rank's columns is kept for the backward, which is local.
// Cost: two all-reduces of N and 2N values, never the N * V logits.
#include "chorus/parallel/tensor/cross_entropy.h"

#include <limits>

#include <torch/csrc/autograd/custom_function.h>

#include "chorus/common/error.h"

namespace chorus::parallel {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct VocabParallelCrossEntropy : torch::autograd::Function<VocabParallelCrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logitsShard, const torch::Tensor& targets,
                               int64_t vocabStart, int64_t realVocab, TpGroup g) {
    const int64_t vk = logitsShard.size(-1);
    torch::Tensor z = logitsShard.detach().reshape({-1, vk});
    torch::Tensor t = targets.reshape({-1}).to(torch::kLong);
    const int64_t n = z.size(0);

    torch::Tensor column = torch::arange(vocabStart, vocabStart + vk, t.options());
    z = z.masked_fill(column >= realVocab, -std::numeric_limits<double>::infinity());

    torch::Tensor m = allReduceMax(std::get<0>(z.max(1)), g);
    torch::Tensor e = (z - m.unsqueeze(1)).exp_();
    torch::Tensor held = (t >= vocabStart) & (t < vocabStart + vk);
    torch::Tensor local = (t - vocabStart).masked_fill(~held, 0);
    torch::Tensor zt = (z.gather(1, local.unsqueeze(1)).squeeze(1) - m).masked_fill(~held, 0.0);
    torch::Tensor sums = allReduceSum(torch::stack({e.sum(1), zt}), g);  // [2, N]
    torch::Tensor sumExp = sums[0], targetShifted = sums[1];

    ctx->saved_data["softmax"] = e.div_(sumExp.unsqueeze(1));
    ctx->saved_data["local"] = local;
    ctx->saved_data["held"] = held;
    ctx->saved_data["shape"] = logitsShard.sizes().vec();
    return (sumExp.log() - targetShifted).sum() / static_cast<double>(n > 0 ? n : 1);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    torch::Tensor softmax = ctx->saved_data["softmax"].toTensor();
    torch::Tensor local = ctx->saved_data["local"].toTensor();
    torch::Tensor held = ctx->saved_data["held"].toTensor();
    std::vector<int64_t> shape = ctx->saved_data["shape"].toIntVector();
    const int64_t n = softmax.size(0);
    torch::Tensor grad = softmax.clone();
    grad.scatter_add_(1, local.unsqueeze(1), -held.to(grad.scalar_type()).unsqueeze(1));
    grad.mul_(grads[0].to(grad.scalar_type()) / static_cast<double>(n > 0 ? n : 1));
    return {grad.view(shape), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor vocabParallelCrossEntropy(const torch::Tensor& logitsShard, const torch::Tensor& targets,
                                        int64_t vocabStart, int64_t realVocab, const TpGroup& g) {
  if (logitsShard.dim() < 1 || !logitsShard.is_floating_point())
    throw InvalidArgument(chorus::str("vocabParallelCrossEntropy: logits must be floating point [.., V/k]; got ", logitsShard.sizes(),
                              " of type ", c10::toString(logitsShard.scalar_type())));
  const int64_t vk = logitsShard.size(-1);
  if (targets.numel() * vk != logitsShard.numel())
    throw InvalidArgument(chorus::str("vocabParallelCrossEntropy: ", targets.numel(), " targets (shape ", targets.sizes(),
                              ") for logits of shape ", logitsShard.sizes(), "; give one target per row of logits"));
  if (realVocab < 1 || vocabStart < 0 || vocabStart > realVocab + static_cast<int64_t>(vk) * tpSize(g))
    throw InvalidArgument(chorus::str("vocabParallelCrossEntropy: vocabStart ", vocabStart, " and realVocab ", realVocab, " do not fit"));
  if (targets.numel() > 0) {
    const int64_t lo = targets.min().item<int64_t>(), hi = targets.max().item<int64_t>();
    if (lo < 0 || hi >= realVocab)
      throw InvalidArgument(chorus::str("vocabParallelCrossEntropy: targets must lie in [0, ", realVocab, "); found ", lo < 0 ? lo : hi));
  }
  // 16-bit logits (autocast) would sum their exponentials in 16 bits: the loss is computed in
  // float32, and the cast's own backward returns the gradient in the logits' type.
  const bool narrow = logitsShard.scalar_type() == torch::kHalf || logitsShard.scalar_type() == torch::kBFloat16;
  const torch::Tensor logits = narrow ? logitsShard.to(torch::kFloat) : logitsShard;
  // One rank holding the whole, unpadded vocabulary: LibTorch's fused log-softmax and NLL compute
  // the same mean, in fewer passes over the logits than the split form needs.
  if (tpSize(g) == 1 && vocabStart == 0 && vk == realVocab)
    return torch::nn::functional::cross_entropy(logits.reshape({-1, vk}), targets.reshape({-1}).to(torch::kLong));
  return VocabParallelCrossEntropy::apply(logits, targets, vocabStart, realVocab, g);
}

}  // namespace chorus::parallel
