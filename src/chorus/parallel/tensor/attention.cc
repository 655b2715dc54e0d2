// Causal self-attention split by heads (see attention.h).
//
// Why heads: attention mixes tokens but never heads, so a rank that owns whole heads computes
// them from its own q, k, v columns with no communication. The column-parallel qkv gives each
// rank exactly those columns (blocks = 3 keeps q, k and v apart when splitting), and the
// row-parallel proj sums the ranks' partial products, so the only collectives are qkv's
// backward all-reduce (or all-gather under sequence parallelism) and proj's forward
// all-reduce (or reduce-scatter).
//
// Dropout on the probabilities draws from the parallel generator: the ranks hold different
// heads, and equal masks would correlate them.
#include "chorus/parallel/tensor/attention.h"

#include <cmath>
#include <limits>
#include <utility>

#include "chorus/common/error.h"

namespace chorus::parallel {

ParallelSelfAttentionImpl::ParallelSelfAttentionImpl(ParallelSelfAttentionOptions opts, TpGroup tp,
                                                     std::shared_ptr<TensorParallelRng> rng)
    : opts_(std::move(opts)), tp_(std::move(tp)), rng_(std::move(rng)) {
  const int64_t E = opts_.embed, H = opts_.heads;
  const int k = tpSize(tp_);
  if (E < 1 || H < 1)
    throw InvalidArgument(chorus::str("ParallelSelfAttention '", opts_.name, "': embed ", E, " and heads ", H,
                              " must both be at least 1"));
  if (E % H != 0)
    throw InvalidArgument(chorus::str("ParallelSelfAttention '", opts_.name, "': embed ", E, " is not divisible by heads ",
                              H, "; choose an embed width that is a multiple of the head count"));
  if (H % k != 0)
    throw InvalidArgument(chorus::str("ParallelSelfAttention '", opts_.name, "': heads ", H,
                              " is not divisible by the tensor-parallel size ", k,
                              "; each rank needs whole heads: use a tp size that divides ", H,
                              " or a head count that is a multiple of ", k));
  if (opts_.dropout < 0 || opts_.dropout >= 1)
    throw InvalidArgument(chorus::str("ParallelSelfAttention '", opts_.name, "': dropout ", opts_.dropout,
                              " must be in [0, 1)"));
  if (opts_.dropout > 0 && !rng_)
    throw InvalidArgument(chorus::str("ParallelSelfAttention '", opts_.name, "': dropout ", opts_.dropout,
                              " needs a TensorParallelRng; pass one (or use dropout 0)"));
  localHeads_ = H / k;

  ColumnParallelLinearOptions q;
  q.in = E;
  q.out = 3 * E;
  q.bias = true;
  q.gatherOutput = false;
  q.sequenceParallel = opts_.sequenceParallel;
  q.blocks = 3;
  q.initStd = opts_.initStd;
  q.seed = opts_.seed;
  q.name = opts_.name.empty() ? "qkv" : opts_.name + ".qkv";
  qkv = register_module("qkv", ColumnParallelLinear(q, tp_));

  RowParallelLinearOptions p;
  p.in = E;
  p.out = E;
  p.bias = true;
  p.inputIsParallel = true;
  p.sequenceParallel = opts_.sequenceParallel;
  p.initStd = opts_.projInitStd;
  p.seed = opts_.seed;
  p.name = opts_.name.empty() ? "proj" : opts_.name + ".proj";
  proj = register_module("proj", RowParallelLinear(p, tp_));
}

torch::Tensor ParallelSelfAttentionImpl::heads(const torch::Tensor& x) {
  if (x.dim() != 3 || x.size(2) != opts_.embed)
    throw InvalidArgument(chorus::str("ParallelSelfAttention '", opts_.name, "': input ", x.sizes(), " must be [B, T, ",
                              opts_.embed, "]"));
  // [B, T, 3E/k]: this rank's q heads, then its k heads, then its v heads (blocks = 3).
  torch::Tensor qkvOut = qkv->forward(x);
  const int64_t B = qkvOut.size(0), T = qkvOut.size(1);
  const int64_t D = opts_.embed / opts_.heads, h = localHeads_;
  auto parts = qkvOut.chunk(3, -1);
  // [B, T, h*D] -> [B, h, T, D]
  auto split = [&](const torch::Tensor& t) { return t.reshape({B, T, h, D}).transpose(1, 2); };
  torch::Tensor q = split(parts[0]), kk = split(parts[1]), v = split(parts[2]);

  // att[b, h, i, j] = q_i . k_j / sqrt(D) + (0 if j <= i else -inf), in one batched GEMM that
  // scales the product and adds the causal mask as it writes (baddbmm): no separate pass over
  // the [B, h, T, T] scores for the scale or the mask, forward or backward. The masked
  // positions get probability 0, so their gradient is 0 whatever the mask's form.
  const int64_t BH = B * h;
  torch::Tensor q3 = q.reshape({BH, T, D}), kT3 = kk.transpose(-2, -1).reshape({BH, D, T});
  torch::Tensor att = torch::baddbmm(causalBias(T, q3.options()), q3, kT3, /*beta=*/1.0,
                                     /*alpha=*/1.0 / std::sqrt(static_cast<double>(D)))
                          .view({B, h, T, T});
  att = torch::softmax(att, -1);
  if (opts_.dropout > 0 && is_training()) att = dropout(att, opts_.dropout, rng_->parallel(), true);
  torch::Tensor y = torch::matmul(att, v);  // [B, h, T, D]
  return y.transpose(1, 2).reshape({B, T, h * D});
}

torch::Tensor ParallelSelfAttentionImpl::causalBias(int64_t T, const torch::TensorOptions& like) {
  if (!causalBias_.defined() || causalBias_.size(0) < T || causalBias_.device() != like.device() ||
      causalBias_.scalar_type() != like.dtype().toScalarType()) {
    causalBias_ = torch::full({T, T}, -std::numeric_limits<double>::infinity(), like.requires_grad(false)).triu_(1);
  }
  return causalBias_.narrow(0, 0, T).narrow(1, 0, T);
}

torch::Tensor ParallelSelfAttentionImpl::forward(const torch::Tensor& x) { return proj->forward(heads(x)); }

}  // namespace chorus::parallel
