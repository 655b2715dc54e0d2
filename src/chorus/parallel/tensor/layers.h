// Megatron-style tensor-parallel layers: each holds a shard of a full weight and uses the
// conjugate functions (communication.h) so that the split model computes what the unsplit
// one does.
//
//   column-parallel: Y = X W^T + b, W [out, in] split along out (dim 0); rank r computes
//                    Y_r = X W_r^T + b_r, its out/k columns of Y. Backward all-reduces dX.
//   row-parallel:    Y = X W^T + b, W [out, in] split along in (dim 1); rank r holds X_r (its
//                    in/k columns of X, e.g. a column-parallel output) and computes X_r W_r^T;
//                    the partial products are all-reduced, then b (replicated) added once.
//
// A column-parallel layer followed by a row-parallel one (ParallelMLP, attention) needs one
// all-reduce in the forward and one in the backward pass.
//
// Sequence parallelism (option): outside the split regions activations are [B, T/k, E] (each
// rank holds T/k of the tokens). A column layer all-gathers its input along T (backward:
// reduce-scatter), and a row layer reduce-scatters its output along T (backward: all-gather)
// instead of the all-reduce. The replicated parameters applied to a [B, T/k, E] slice (the
// row bias, LayerNorm) get partial gradients: allReduceSequenceParallelGradients (sharding.h)
// completes them.
//
// Initialization: every full weight is drawn by initNormal(shape, initStd, seed, name +
// ".weight") and sharded, so a module at tp = k holds the pieces of the tp = 1 module with
// the same options. Biases start at 0. `name` is the module's full name in the model (e.g.
// "h.0.mlp.fc1"); it only seeds the init.
//
// Every module registers its parameters' ShardSpecs (ShardedModule), found by shardSpecs().
// The tp group may be nullptr or of size 1: the module is then a plain layer.
// Thread-safety: as torch::nn modules; forward/backward are collective over the tp group.
#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>

#include "chorus/parallel/tensor/communication.h"
#include "chorus/parallel/tensor/sharding.h"

namespace chorus::parallel {

struct ColumnParallelLinearOptions {
  int64_t in = 0, out = 0;
  bool bias = true;
  bool gatherOutput = false;      // all-gather the output: [.., out] on every rank
  bool sequenceParallel = false;  // input is [B, T/k, in]: all-gather along T before the matmul
  int blocks = 1;                 // the weight is `blocks` fused matrices along out (q,k,v: 3);
                                  // rank r holds its piece of each (out % (k*blocks) == 0)
  double initStd = 0.02;
  uint64_t seed = 0;
  std::string name;
};

// weight [out/k, in] (the shard of [out, in] along dim 0), bias [out/k] (same split).
// forward(x [.., in]) -> [.., out/k] (rank r's piece of each block, blocks concatenated), or
// [.., out] in the full layout with gatherOutput. With sequenceParallel x is [B, T/k, in] and
// the output [B, T, out/k]. InvalidArgument when out is not divisible by k * blocks.
class ColumnParallelLinearImpl : public torch::nn::Module, public ShardedModule {
 public:
  ColumnParallelLinearImpl(ColumnParallelLinearOptions opts, TpGroup tp);
  torch::Tensor forward(const torch::Tensor& x);
  const ColumnParallelLinearOptions& options() const { return opts_; }
  const TpGroup& tp() const { return tp_; }

  torch::Tensor weight, bias;  // bias undefined without opts.bias

 private:
  ColumnParallelLinearOptions opts_;
  TpGroup tp_;
};
TORCH_MODULE(ColumnParallelLinear);

struct RowParallelLinearOptions {
  int64_t in = 0, out = 0;
  bool bias = true;
  bool inputIsParallel = true;    // x is already split along its last dim (a column output);
                                  // false: x is full and each rank keeps its slice
  bool sequenceParallel = false;  // reduce-scatter along T instead of all-reduce: [B, T/k, out]
  double initStd = 0.02;
  uint64_t seed = 0;
  std::string name;
};

// weight [out, in/k] (the shard along dim 1), bias [out] replicated, added after the
// reduction. forward(x [.., in/k], or [.., in] without inputIsParallel) -> [.., out], or
// [B, T/k, out] with sequenceParallel. InvalidArgument when in is not divisible by k.
class RowParallelLinearImpl : public torch::nn::Module, public ShardedModule {
 public:
  RowParallelLinearImpl(RowParallelLinearOptions opts, TpGroup tp);
  torch::Tensor forward(const torch::Tensor& x);
  const RowParallelLinearOptions& options() const { return opts_; }
  const TpGroup& tp() const { return tp_; }

  torch::Tensor weight, bias;

 private:
  RowParallelLinearOptions opts_;
  TpGroup tp_;
};
TORCH_MODULE(RowParallelLinear);

struct VocabParallelEmbeddingOptions {
  int64_t vocab = 0, dim = 0;
  double initStd = 0.02;
  uint64_t seed = 0;
  std::string name;
  // Extension of the spec: the output is reduce-scattered along T ([B, T/k, dim]) instead of
  // all-reduced; ids must then be [B, T] with T % k == 0.
  bool sequenceParallel = false;
};

// The embedding table [vocab, dim] split along the vocabulary: the vocabulary is padded to
// paddedVocab() = a multiple of k (padded rows are zero), and rank r holds rows
// [vocabStart(), vocabEnd()) as weight [paddedVocab/k, dim]. forward(ids [..] int64) ->
// [.., dim]: ids outside this rank's range give 0, then an all-reduce. Ids must lie in
// [0, vocab) (not checked: an id >= vocab gives a zero row or a padded one).
// The weight can be tied to the output projection: logits shard = x @ weight^T is
// [.., paddedVocab/k], columns vocabStart..vocabEnd, for vocabParallelCrossEntropy.
class VocabParallelEmbeddingImpl : public torch::nn::Module, public ShardedModule {
 public:
  VocabParallelEmbeddingImpl(VocabParallelEmbeddingOptions opts, TpGroup tp);
  torch::Tensor forward(const torch::Tensor& ids);
  int64_t paddedVocab() const { return paddedVocab_; }
  int64_t vocabStart() const { return vocabStart_; }  // this rank's range [start, end)
  int64_t vocabEnd() const { return vocabEnd_; }
  const VocabParallelEmbeddingOptions& options() const { return opts_; }
  const TpGroup& tp() const { return tp_; }

  torch::Tensor weight;

 private:
  VocabParallelEmbeddingOptions opts_;
  TpGroup tp_;
  int64_t paddedVocab_, vocabStart_, vocabEnd_;
};
TORCH_MODULE(VocabParallelEmbedding);

struct ParallelMLPOptions {
  int64_t embed = 0, hidden = 0;  // E, F (usually 4E)
  bool bias = true;
  bool sequenceParallel = false;  // input and output [B, T/k, E]
  double initStd = 0.02;          // fc1's weight
  double outputInitStd = 0.02;    // fc2's weight (GPT-2: 0.02 / sqrt(2 * layers))
  uint64_t seed = 0;
  std::string name;               // children are name + ".fc1", name + ".fc2"
};

// ColumnParallelLinear(E, F) -> GELU (exact, erf) -> RowParallelLinear(F, E), children
// registered as "fc1" and "fc2". forward(x [.., E]) -> [.., E] (replicated), or
// [B, T/k, E] -> [B, T/k, E] with sequenceParallel. F must be divisible by k.
class ParallelMLPImpl : public torch::nn::Module {
 public:
  ParallelMLPImpl(ParallelMLPOptions opts, TpGroup tp);
  torch::Tensor forward(const torch::Tensor& x);

  ColumnParallelLinear fc1{nullptr};
  RowParallelLinear fc2{nullptr};

 private:
  ParallelMLPOptions opts_;
};
TORCH_MODULE(ParallelMLP);

}  // namespace chorus::parallel
