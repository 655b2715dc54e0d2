// The GPT (gpt.h) as a list of layers for a layer-wise split (parallel/pipeline/layerwise.h):
//
//   layer 0         embedding   ids [B, T] int64 ─▶ x = drop(wte(ids) + wpe(0..T-1))   [B, T, E]
//   layers 1 .. L   blocks      x ─▶ GptBlock h.<i-1>(x)                                [B, T, E]
//   layer L + 1     head        x ─▶ logits = lnf(x) · wteᵀ (tied) or lm_head          [B, T, V]
//
// Shapes: B batch, T tokens (<= context), E embedding width, V vocabulary, L blocks. The loss is
// not a layer: the last stage computes it (GptStage::loss).
//
// 3D parallelism: with a tp group of k ranks every layer is split Megatron's way, as Gpt splits
// it (gpt.h): the embedding and the head by vocabulary rows (the head's logits are this rank's
// [B, T, Vp/k] columns and the loss is the vocabulary-parallel cross-entropy), each block's
// attention by heads and its MLP by hidden units. The activations between stages, [B, T, E], are
// replicated over the tp ranks: tp rank r of stage s sends to tp rank r of stage s + 1 (each
// (dp, tp) coordinate has its own pp group). Sequence parallelism is not combined with stages.
//
// Parameter names are the whole Gpt's (wte.weight, wpe.weight, h.<i>.…, lnf.*, lm_head.weight),
// and every tensor is drawn as the whole model draws it (initNormal(seed, full name)), so a stage
// built alone holds exactly the whole model's weights for its layers, and checkpoints and tests
// compare by name.
//
// Tied embeddings across stages (Megatron's approach): the first stage's embedding and the last
// stage's head both need wte. The last stage holds its own copy, drawn identically (same seed
// and name). Each stage's backward leaves in its copy the gradient of its own use; after the
// backward, syncTiedGradients() sums the two between the first and last stage (an all-reduce over
// a two-rank group), so both copies get the gradient the whole model's shared wte would get and
// the same optimizer update keeps them equal. A stage that holds both layers shares one tensor.
//
// Dropout draws from a generator per stage (TensorParallelRng seeded by the seed, the stage and
// the dp rank): with dropout > 0 the masks differ from the unsplit model's, whose one generator
// runs through all layers in order. With dropout 0 a split computes what the whole model does.
//
// Thread-safety: one thread drives a GptStage; forward, backward and syncTiedGradients are
// collective over the pipeline group as LayerwiseStage's are.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "chorus/comm/group.h"
#include "chorus/parallel/pipeline/layerwise.h"
#include "chorus/train/gpt.h"

namespace chorus::train {

// Layer 0 of the split GPT: the token and position embeddings and their dropout.
class GptEmbeddingImpl : public torch::nn::Module {
 public:
  // wte (split over tp by rows) and wpe drawn as Gpt draws them. rng: the stage's dropout
  // generators. forward is collective over tp (the lookup's all-reduce).
  GptEmbeddingImpl(const GptOptions& o, std::shared_ptr<parallel::TensorParallelRng> rng, TpGroup tp = nullptr);
  // ids [B, T] int64 in [0, vocab), T <= context -> x [B, T, E]. InvalidArgument otherwise.
  torch::Tensor forward(const torch::Tensor& ids);

  parallel::VocabParallelEmbedding wte{nullptr};
  PositionEmbedding wpe{nullptr};

 private:
  GptOptions opts_;
  std::shared_ptr<parallel::TensorParallelRng> rng_;
};
TORCH_MODULE(GptEmbedding);

// Layer L + 1: the final LayerNorm and the output projection.
class GptHeadImpl : public torch::nn::Module {
 public:
  // Tied: `wte` is the embedding table to use (the same stage's, shared), or nullptr for a copy
  // of its own drawn as wte is. Untied: lm_head [V, E], drawn as Gpt draws it; `wte` is ignored.
  // Both split over tp by rows as Gpt splits them.
  GptHeadImpl(const GptOptions& o, parallel::VocabParallelEmbedding wte = nullptr, TpGroup tp = nullptr);
  // x [B, T, E] -> this tp rank's logits [B, T, Vp/k] (all V at tp 1). Its backward all-reduces
  // the gradient of x over tp (each rank's columns contribute a part).
  torch::Tensor forward(const torch::Tensor& x);
  // The output projection's weight [Vp/k, E] (wte's when tied).
  torch::Tensor& projection();
  // The projection's table (wte when tied, else lm_head).
  parallel::VocabParallelEmbedding& table();

  torch::nn::LayerNorm lnf{nullptr};
  parallel::VocabParallelEmbedding wte{nullptr};     // tied only
  parallel::VocabParallelEmbedding lmHead{nullptr};  // untied only

 private:
  GptOptions opts_;
  TpGroup tp_;
};
TORCH_MODULE(GptHead);

// The number of layers of the split GPT: o.layers + 2.
size_t gptLayerCount(const GptOptions& o);
// Parameter elements of each layer (the head's tied copy of wte counted), for the balanced
// partition without building the layers.
std::vector<int64_t> gptLayerCosts(const GptOptions& o);
// Layer i of the split GPT built alone (the head with its own copy of a tied wte), for
// profiling (parallel/pipeline/profile.h). rng: the dropout generators (nullptr: a fresh one).
torch::nn::AnyModule gptLayer(const GptOptions& o, size_t index, std::shared_ptr<parallel::TensorParallelRng> rng = nullptr);
// The whole Gpt's parameter names in its named_parameters() order (tp = 1), which is the order
// of its optimizer's parameters and of a plain checkpoint's optim/ entries.
std::vector<std::string> gptParameterNames(const GptOptions& o);

// Mean cross-entropy of logits [B, T, >= vocab] against targets [B, T] in [0, vocab), over the
// real vocabulary (columns >= vocab ignored). The same function as Gpt::lossFromLogits at tp 1.
torch::Tensor gptStageLoss(const torch::Tensor& logits, const torch::Tensor& targets, int64_t vocab);

// One stage of the GPT split by layers over the ranks of a pipeline group (stage = group rank).
class GptStage {
 public:
  // Collective over pp (every stage constructs its own with the same options): builds only this
  // stage's layers (LayerwiseStage's builder form; partition: base.partition, else balanced by
  // base.layerCosts, else by gptLayerCosts) and, when tied and the first and last stage differ, splits a two-rank group
  // of them from pp. dpRank only varies the dropout masks. base.names is set here. tp (nullptr or
  // size 1: unsplit) splits every layer over its ranks; every tp rank of the stage builds its own
  // with the same pp position, and forward, backward and loss are then collective over tp too.
  // Throws InvalidArgument for GptOptions Gpt refuses (heads % k != 0 among them),
  // sequenceParallel, and a partition LayerwiseStage refuses (more stages than o.layers + 2 layers).
  //
  // chunks = v > 1 (the interleaved schedule): the layers are cut into p * v virtual stages
  // (base.partition then has p * v counts; the balanced split is over p * v ranges) and this
  // rank holds virtual stages r, r + p, ..., r + (v - 1) p, as chunks 0 .. v - 1. Rank 0 still
  // holds the embedding and rank p - 1 the head. Such a stage runs under a PipelineExecutor
  // (runChunk) and evaluates with forward; it has no single layer range (layers() throws).
  GptStage(const GptOptions& o, std::shared_ptr<comm::ProcessGroup> pp, int dpRank = 0,
           parallel::LayerwiseOptions base = {}, TpGroup tp = nullptr, int chunks = 1);
  ~GptStage();

  const GptOptions& options() const { return opts_; }
  // The contiguous stage (chunks = 1). InvalidArgument for an interleaved stage.
  parallel::LayerwiseStage& layers();
  bool isFirst() const { return pp_->rank() == 0; }
  bool isLast() const { return pp_->rank() == pp_->size() - 1; }
  int chunks() const { return chunks_; }
  // Layer counts of the p stages (chunks = 1) or of the p * v virtual stages, in order.
  const std::vector<int>& partition() const { return partition_; }
  // Chunk c's layers on x, in order, without communication (a pipeline executor's forward).
  torch::Tensor runChunk(int chunk, const torch::Tensor& x);

  // This stage's parameters under the whole Gpt's names (the module holds the layers'
  // submodules: wte, wpe, h.<i>, lnf, lm_head). For optimizers, DDP, checkpoints, train/eval.
  torch::nn::Module& module() { return *module_; }
  std::shared_ptr<torch::nn::Module> modulePtr() const { return module_; }

  // LayerwiseStage::forward: ids [B, T] on the first stage, nothing on the others; returns this
  // stage's output (logits [B, T, V] on the last). Interleaved (chunks > 1): ids on every stage
  // (the others take the activations' shape [B, T, E] from it); the activations go round the
  // ranks once per chunk, and the last stage returns the logits of its last chunk. Blocking, for
  // evaluation (no backward follows).
  torch::Tensor forward(const torch::Tensor& ids = {});
  // LayerwiseStage::backward: the loss on the last stage, nothing on the others.
  void backward(const torch::Tensor& loss = {});
  // The last stage: the mean cross-entropy of its logits (forward's output) against targets
  // [B, T]: gptStageLoss at tp 1, the vocabulary-parallel cross-entropy over tp otherwise (the
  // same scalar on every tp rank; collective over tp).
  torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& targets);
  const TpGroup& tp() const { return tp_; }
  // Tied and split: sums the gradients of the first and last stage's wte copies (all-reduce over
  // their two-rank group; blocking). Call it on every stage after backward (and after any
  // data-parallel averaging); a no-op on the stages between and when untied or unsplit. A copy
  // without a gradient counts as zeros.
  void syncTiedGradients();
  // The wte this stage holds (first stage; last stage when tied), else an undefined tensor.
  torch::Tensor embeddingWeight() const;

 private:
  GptOptions opts_;
  std::shared_ptr<comm::ProcessGroup> pp_;
  TpGroup tp_;
  std::shared_ptr<comm::ProcessGroup> tied_;  // first and last stage, tied and split only
  std::shared_ptr<parallel::TensorParallelRng> rng_;
  GptEmbedding embedding_{nullptr};
  GptHead head_{nullptr};
  std::unique_ptr<parallel::LayerwiseStage> stage_;      // chunks = 1
  std::vector<std::vector<torch::nn::AnyModule>> chunkLayers_;  // chunks > 1
  int chunks_ = 1;
  std::vector<int> partition_;
  std::shared_ptr<torch::nn::Module> module_;
};

}  // namespace chorus::train
