// Shapes: x [.., in] (usually [B, T, in]); k = tp size; W [out, in] full.
//
// Column:  x --copyTo (bwd all-reduce dx)--> x @ W_r^T + b_r --[gatherFrom]--> y
//          (sequence parallel: x [B, T/k, in] --gatherFromSequence (bwd reduce-scatter)--> [B, T, in])
// Row:     x_r --[scatterTo]--> x_r @ W_r^T --reduceFrom (all-reduce)--> + b --> y
//          (sequence parallel: --reduceScatterToSequence--> [B, T/k, out] + b)
// The column layer's copyTo is what makes dx whole: each rank's dx_r = dy_r W_r is only the
// part of dx that flows through its output columns.
//
// A gathered output of a fused (blocks > 1) layer arrives rank-major, [q0 k0 v0 q1 k1 v1 ..];
// it is reordered block-major, [q0 q1 .. k0 k1 .. v0 v1 ..], the layout of the full weight.
#include "chorus/parallel/tensor/layers.h"

#include "chorus/common/error.h"
#include "chorus/parallel/pipeline/weight_grad.h"

namespace chorus::parallel {

namespace {

std::string join(const std::string& prefix, const std::string& leaf) { return prefix.empty() ? leaf : prefix + "." + leaf; }

void checkFeatures(const char* layer, const std::string& name, int64_t in, int64_t out) {
  if (in < 1 || out < 1)
    throw InvalidArgument(chorus::str(layer, " '", name, "': in (", in, ") and out (", out, ") features must be >= 1"));
}

}  // namespace

ColumnParallelLinearImpl::ColumnParallelLinearImpl(ColumnParallelLinearOptions opts, TpGroup tp)
    : opts_(std::move(opts)), tp_(std::move(tp)) {
  checkFeatures("ColumnParallelLinear", opts_.name, opts_.in, opts_.out);
  const int k = tpSize(tp_);
  if (opts_.blocks < 1) throw InvalidArgument(chorus::str("ColumnParallelLinear '", opts_.name, "': blocks must be >= 1, got ", opts_.blocks));
  if (opts_.out % (static_cast<int64_t>(k) * opts_.blocks) != 0)
    throw InvalidArgument(chorus::str("ColumnParallelLinear '", opts_.name, "': out features ", opts_.out, " in ", opts_.blocks,
                              " block(s) cannot be split over tensor-parallel size ", k, "; out must be a multiple of ",
                              static_cast<int64_t>(k) * opts_.blocks));
  ShardSpec spec;
  spec.dim = 0;
  spec.blocks = opts_.blocks;
  spec.fullSize = spec.paddedSize = opts_.out;
  torch::Tensor full = initNormal({opts_.out, opts_.in}, opts_.initStd, opts_.seed, join(opts_.name, "weight"));
  weight = register_parameter("weight", shardOf(full, spec, tpRank(tp_), k));
  registerShardSpec("weight", spec);
  if (opts_.bias) {
    bias = register_parameter("bias", torch::zeros({opts_.out / k}, torch::kFloat32));
    registerShardSpec("bias", spec);
  }
}

torch::Tensor ColumnParallelLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor input = opts_.sequenceParallel ? gatherFromSequenceParallelRegion(x, tp_) : copyToTensorParallelRegion(x, tp_);
  torch::Tensor y = deferrableLinear(input, weight, bias);  // [.., out/k]
  if (!opts_.gatherOutput || tpSize(tp_) == 1) return y;
  y = gatherFromTensorParallelRegion(y, tp_);  // [.., out], rank-major
  if (opts_.blocks == 1) return y;
  std::vector<int64_t> shape = y.sizes().vec();
  shape.pop_back();
  std::vector<int64_t> split = shape;
  split.insert(split.end(), {tpSize(tp_), opts_.blocks, opts_.out / (tpSize(tp_) * opts_.blocks)});
  shape.push_back(opts_.out);
  return y.reshape(split).transpose(-3, -2).reshape(shape);
}

RowParallelLinearImpl::RowParallelLinearImpl(RowParallelLinearOptions opts, TpGroup tp)
    : opts_(std::move(opts)), tp_(std::move(tp)) {
  checkFeatures("RowParallelLinear", opts_.name, opts_.in, opts_.out);
  const int k = tpSize(tp_);
  if (opts_.in % k != 0)
    throw InvalidArgument(chorus::str("RowParallelLinear '", opts_.name, "': in features ", opts_.in,
                              " cannot be split over tensor-parallel size ", k, "; in must be a multiple of ", k));
  if (opts_.sequenceParallel && !opts_.inputIsParallel)
    throw InvalidArgument(chorus::str("RowParallelLinear '", opts_.name,
                              "': sequenceParallel needs inputIsParallel (the input split along features, e.g. a column-parallel output)"));
  ShardSpec spec;
  spec.dim = 1;
  spec.fullSize = spec.paddedSize = opts_.in;
  torch::Tensor full = initNormal({opts_.out, opts_.in}, opts_.initStd, opts_.seed, join(opts_.name, "weight"));
  weight = register_parameter("weight", shardOf(full, spec, tpRank(tp_), k));
  registerShardSpec("weight", spec);
  if (opts_.bias) {
    bias = register_parameter("bias", torch::zeros({opts_.out}, torch::kFloat32));
    ShardSpec replicated;
    replicated.sequenceParallel = opts_.sequenceParallel;  // applied to [B, T/k, out]: partial gradient
    registerShardSpec("bias", replicated);
  }
}

torch::Tensor RowParallelLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor input = opts_.inputIsParallel ? x : scatterToTensorParallelRegion(x, tp_);
  torch::Tensor partial = deferrableLinear(input, weight);  // [.., out], this rank's share of the sum
  torch::Tensor y = opts_.sequenceParallel ? reduceScatterToSequenceParallelRegion(partial, tp_)
                                           : reduceFromTensorParallelRegion(partial, tp_);
  return bias.defined() ? y + bias : y;
}

VocabParallelEmbeddingImpl::VocabParallelEmbeddingImpl(VocabParallelEmbeddingOptions opts, TpGroup tp)
    : opts_(std::move(opts)), tp_(std::move(tp)) {
  if (opts_.vocab < 1 || opts_.dim < 1)
    throw InvalidArgument(chorus::str("VocabParallelEmbedding '", opts_.name, "': vocab (", opts_.vocab, ") and dim (", opts_.dim,
                              ") must be >= 1"));
  const int k = tpSize(tp_);
  paddedVocab_ = paddedSizeFor(opts_.vocab, k);
  vocabStart_ = tpRank(tp_) * (paddedVocab_ / k);
  vocabEnd_ = vocabStart_ + paddedVocab_ / k;
  ShardSpec spec;
  spec.dim = 0;
  spec.fullSize = opts_.vocab;
  spec.paddedSize = paddedVocab_;
  torch::Tensor full = initNormal({opts_.vocab, opts_.dim}, opts_.initStd, opts_.seed, join(opts_.name, "weight"));
  weight = register_parameter("weight", shardOf(full, spec, tpRank(tp_), k));
  registerShardSpec("weight", spec);
}

torch::Tensor VocabParallelEmbeddingImpl::forward(const torch::Tensor& ids) {
  if (tpSize(tp_) == 1) return torch::embedding(weight, ids);
  // Rows of other ranks: look up row 0 and zero it, so the gradient of row 0 gets nothing
  // from them either.
  torch::Tensor foreign = (ids < vocabStart_) | (ids >= vocabEnd_);
  torch::Tensor local = (ids - vocabStart_).masked_fill(foreign, 0);
  torch::Tensor partial = torch::embedding(weight, local).masked_fill(foreign.unsqueeze(-1), 0.0);
  return opts_.sequenceParallel ? reduceScatterToSequenceParallelRegion(partial, tp_)
                                : reduceFromTensorParallelRegion(partial, tp_);
}

ParallelMLPImpl::ParallelMLPImpl(ParallelMLPOptions opts, TpGroup tp) : opts_(std::move(opts)) {
  ColumnParallelLinearOptions c;
  c.in = opts_.embed;
  c.out = opts_.hidden;
  c.bias = opts_.bias;
  c.sequenceParallel = opts_.sequenceParallel;
  c.initStd = opts_.initStd;
  c.seed = opts_.seed;
  c.name = join(opts_.name, "fc1");
  RowParallelLinearOptions r;
  r.in = opts_.hidden;
  r.out = opts_.embed;
  r.bias = opts_.bias;
  r.sequenceParallel = opts_.sequenceParallel;
  r.initStd = opts_.outputInitStd;
  r.seed = opts_.seed;
  r.name = join(opts_.name, "fc2");
  fc1 = register_module("fc1", ColumnParallelLinear(c, tp));
  fc2 = register_module("fc2", RowParallelLinear(r, tp));
}

torch::Tensor ParallelMLPImpl::forward(const torch::Tensor& x) { return fc2(torch::gelu(fc1(x))); }

}  // namespace chorus::parallel
