// A GPT-2 style language model (pre-LayerNorm decoder), split over the tensor-parallel ranks
// Megatron's way: attention by heads, the MLP by its hidden units, the vocabulary by rows.
// With a tp group of size 1 (or nullptr) it is the plain unsplit model; with k ranks and the
// same seed it computes the same function (same parameters, same logits, same gradients).
//
//   ids [B, T] ─▶ x = drop(wte(ids) + wpe(0..T-1))                           [B, T, E]
//      layers × { x = x + drop(attn(ln1(x)));  x = x + drop(mlp(ln2(x))) }
//      ─▶ lnf ─▶ logits = lnf(x) · wteᵀ (tied) or lm_head                       [B, T, V]
//
// Shapes: B batch, T tokens (<= context), E embedding width, H heads, V vocabulary (padded to
// Vp, a multiple of k, on the tp ranks), k tp size. attn: ParallelSelfAttention (qkv fused,
// heads split); mlp: ParallelMLP (fc1 E -> 4E column-parallel, exact GELU, fc2 4E -> E
// row-parallel). LayerNorms have weight and bias, eps 1e-5, and are replicated.
//
// Parameter names (at any k): wte.weight, wpe.weight, h.<i>.ln1.weight/.bias,
// h.<i>.attn.qkv.weight/.bias, h.<i>.attn.proj.weight/.bias, h.<i>.ln2.weight/.bias,
// h.<i>.mlp.fc1.weight/.bias, h.<i>.mlp.fc2.weight/.bias, lnf.weight/.bias, and lm_head.weight
// when the embeddings are not tied. shardSpecs() says how each is split.
//
// Init: the full tensor of each weight is initNormal(shape, std, seed, name): std 0.02, and
// 0.02 / sqrt(2 * layers) for the residual projections (attn.proj, mlp.fc2); biases 0;
// LayerNorm weight 1, bias 0; padded vocabulary rows 0.
//
// Dropout (training only) draws from the model's TensorParallelRng: the attention
// probabilities from parallel() (each rank holds other heads); the residual-stream dropouts
// (embeddings, after attn and mlp) from replicated() so the stream stays identical on every tp
// rank — except under sequence parallelism, where each rank holds other tokens and they draw
// from parallel() (as Megatron does).
//
// Sequence parallelism (option): between blocks each rank holds the residual stream of its
// T/k tokens [B, T/k, E] (T % k == 0); LayerNorms and dropouts run on that slice, qkv and fc1
// all-gather T, proj and fc2 reduce-scatter T. The LayerNorm weights and the row-parallel
// biases then get partial gradients: call parallel::allReduceSequenceParallelGradients(model,
// tp) after backward (the trainer does). Logits and losses are the same as without it.
//
// Thread-safety: one thread drives one instance; forward, loss and backward are collective
// over the tp group: every tp rank calls them with the same ids and targets.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <torch/torch.h>

#include "chorus/parallel/tensor/attention.h"
#include "chorus/parallel/tensor/communication.h"
#include "chorus/parallel/tensor/cross_entropy.h"
#include "chorus/parallel/tensor/layers.h"
#include "chorus/parallel/tensor/rng.h"
#include "chorus/parallel/tensor/sharding.h"

namespace chorus::train {

using parallel::TpGroup;

struct GptOptions {
  int64_t vocab = 256;
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t embed = 128;
  int64_t context = 128;  // the longest sequence (wpe's rows)
  double dropout = 0.0;   // every dropout of the model, in [0, 1)
  bool tieEmbeddings = true;
  bool sequenceParallel = false;
  uint64_t seed = 0;  // parameters (initNormal) and the dropout generators
};

// The replicated position embedding [context, E], drawn by initNormal under `name`.weight.
// (Not torch::nn::Embedding: its constructor draws from torch's global generator.)
class PositionEmbeddingImpl : public torch::nn::Module {
 public:
  PositionEmbeddingImpl(int64_t context, int64_t dim, uint64_t seed, const std::string& name);
  // Rows [start, start + count): [count, dim].
  torch::Tensor forward(int64_t start, int64_t count);
  torch::Tensor weight;
};
TORCH_MODULE(PositionEmbedding);

// One transformer block: x + attn(ln1(x)), then + mlp(ln2(x)), each branch with dropout.
class GptBlockImpl : public torch::nn::Module, public parallel::ShardedModule {
 public:
  GptBlockImpl(const GptOptions& o, int64_t index, TpGroup tp, std::shared_ptr<parallel::TensorParallelRng> rng);
  // x [B, T, E] (sequence parallel: [B, T/k, E]) -> the same shape.
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::LayerNorm ln1{nullptr};
  parallel::ParallelSelfAttention attn{nullptr};
  torch::nn::LayerNorm ln2{nullptr};
  parallel::ParallelMLP mlp{nullptr};

 private:
  torch::Tensor residualDropout(const torch::Tensor& x);
  GptOptions opts_;
  std::shared_ptr<parallel::TensorParallelRng> rng_;
};
TORCH_MODULE(GptBlock);

class GptImpl : public torch::nn::Module, public parallel::ShardedModule {
 public:
  // tp: nullptr or size 1 for the unsplit model. InvalidArgument (naming the numbers and what
  // to change) when a size is below 1, embed % heads != 0, heads % k != 0, or dropout is not
  // in [0, 1). Collective-free: every rank builds its own shards from the seed.
  GptImpl(GptOptions opts, TpGroup tp = nullptr);

  // ids [B, T] int64 in [0, vocab), T <= context (sequence parallel: T % k == 0) -> this
  // rank's logits shard [B, T, paddedVocab / k]: columns vocabStart()..vocabEnd() of the
  // padded vocabulary (columns >= vocab hold 0 and must be ignored). Collective over tp.
  torch::Tensor forward(const torch::Tensor& ids);

  // The final LayerNorm's output [B, T, E] (all T also under sequence parallelism), the same
  // on every tp rank. Collective over tp.
  torch::Tensor hidden(const torch::Tensor& ids);

  // Mean cross-entropy of the logits shard of forward(ids) against targets [B, T] in
  // [0, vocab): the vocabulary-parallel cross-entropy (max, sum-exp and the target logit are
  // all-reduced; the full logits never exist). The same scalar on every tp rank.
  torch::Tensor lossFromLogits(const torch::Tensor& logitsShard, const torch::Tensor& targets);
  // lossFromLogits(forward(ids), targets).
  torch::Tensor loss(const torch::Tensor& ids, const torch::Tensor& targets);

  // The full logits [B, T, vocab] (padding dropped) on every tp rank: forward(ids)
  // all-gathered over the vocabulary. For generation and tests; training uses loss().
  torch::Tensor fullLogits(const torch::Tensor& ids);

  // Every parameter's ShardSpec under its name in named_parameters().
  std::map<std::string, parallel::ShardSpec> shardSpecs();

  const GptOptions& options() const { return opts_; }
  const TpGroup& tp() const { return tp_; }
  int64_t paddedVocab() const;  // Vp: vocab rounded up to a multiple of k
  int64_t vocabStart() const;   // this rank's columns of the padded vocabulary: [start, end)
  int64_t vocabEnd() const;
  // The dropout generators, shared by every submodule; seeded TensorParallelRng(seed, tp
  // rank). For other masks per data-parallel replica assign a new one:
  //   model->rng() = parallel::TensorParallelRng(seed, tpRank, dpRank);
  parallel::TensorParallelRng& rng() { return *rng_; }

  parallel::VocabParallelEmbedding wte{nullptr};
  PositionEmbedding wpe{nullptr};
  torch::nn::ModuleList h{nullptr};
  torch::nn::LayerNorm lnf{nullptr};
  parallel::VocabParallelEmbedding lmHead{nullptr};  // untied only: registered as "lm_head"

 private:
  void checkIds(const torch::Tensor& ids) const;
  torch::Tensor trunk(const torch::Tensor& ids);  // lnf's output, all T
  GptOptions opts_;
  TpGroup tp_;
  std::shared_ptr<parallel::TensorParallelRng> rng_;
};
TORCH_MODULE(Gpt);

// Byte-level sampling: the prompt's bytes are the first tokens (an empty prompt starts from
// '\n'); each new token is drawn from softmax(logits / temperature) of the last position,
// restricted to the topK most likely tokens (topK <= 0: all), with the context cropped to the
// last `context` tokens; temperature 0 takes the most likely token. Returns the `tokens`
// sampled bytes (not the prompt). Needs vocab >= 256 (tokens >= 256 are never drawn).
// Every tp rank must call it with the same arguments: the logits are gathered and the
// sampling generator seeded with `seed` on every rank, so all ranks draw the same bytes.
// Runs in eval mode without gradients and restores the model's training mode. `tp` must be
// the model's group (InvalidArgument otherwise). Collective over tp.
std::string generate(Gpt& model, const std::string& prompt, int64_t tokens, double temperature, int64_t topK,
                     uint64_t seed, const TpGroup& tp);

// Bytes of parameters held by this rank: split over tp (ShardSpec dim >= 0) and replicated.
struct ParamBytes {
  int64_t sharded = 0;
  int64_t replicated = 0;
  int64_t total() const { return sharded + replicated; }
};
ParamBytes parameterBytes(torch::nn::Module& model);

}  // namespace chorus::train
