// Causal multi-head self-attention split over the tensor-parallel ranks by heads (Megatron's
// ParallelAttention): each of the k ranks computes H/k whole heads, so attention itself needs
// no communication; only the two linear layers around it talk.
//
//   x [B, T, E] ──copy──▶ qkv = ColumnParallelLinear(E, 3E, blocks 3) ──▶ [B, T, 3E/k]
//       = this rank's heads of q, k, v ──▶ softmax(q kᵀ / √D + causal mask) ──dropout (parallel
//       generator)──▶ · v ──▶ heads merged [B, T, E/k] ──▶ proj = RowParallelLinear(E, E)
//       ──all-reduce──▶ [B, T, E]
//
// Shapes: B batch, T tokens, E embedding width, H heads, D = E/H head width, k = tp size.
// The full qkv weight [3E, E] is GPT-2's c_attn (rows q, then k, then v); rank r holds heads
// [r H/k, (r+1) H/k) of each of q, k and v (ShardSpec blocks = 3).
//
// Sequence parallelism (option): the input and output are this rank's T/k tokens
// [B, T/k, E]; qkv all-gathers T before its matmul and proj reduce-scatters T after its own.
//
// Parameters (named_parameters): qkv.weight [3E/k, E], qkv.bias [3E/k], proj.weight [E, E/k],
// proj.bias [E]; their full tensors are drawn by initNormal under `name` + ".qkv.weight" and
// `name` + ".proj.weight" (biases zero).
//
// Thread-safety: like any torch module, one thread drives one instance; forward and backward
// are collective over the tp group (see communication.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <torch/torch.h>

#include "chorus/parallel/tensor/communication.h"
#include "chorus/parallel/tensor/layers.h"
#include "chorus/parallel/tensor/rng.h"

namespace chorus::parallel {

struct ParallelSelfAttentionOptions {
  int64_t embed = 0;       // E
  int64_t heads = 0;       // H; H % k == 0 and E % H == 0
  double dropout = 0.0;    // on the attention probabilities (training only)
  bool sequenceParallel = false;
  double initStd = 0.02;      // qkv weight
  double projInitStd = 0.02;  // proj weight (GPT-2 scales it by 1/sqrt(2 * layers))
  uint64_t seed = 0;
  std::string name;  // the prefix of the parameters' full names, e.g. "h.3.attn"
};

class ParallelSelfAttentionImpl : public torch::nn::Module {
 public:
  // InvalidArgument when E % H != 0 or H % k != 0 (naming the sizes and what to change).
  // `rng` supplies the dropout generator (parallel()); it may be nullptr when dropout == 0.
  // The module keeps the group and the rng.
  ParallelSelfAttentionImpl(ParallelSelfAttentionOptions opts, TpGroup tp,
                            std::shared_ptr<TensorParallelRng> rng = nullptr);

  // x [B, T, E] (sequence parallel: [B, T/k, E]) -> the same shape. Collective over tp.
  torch::Tensor forward(const torch::Tensor& x);

  // This rank's merged head outputs before proj: [B, T, E/k] (T the full length also under
  // sequence parallelism). For tests and inspection; forward() is proj(heads(x)).
  torch::Tensor heads(const torch::Tensor& x);

  const ParallelSelfAttentionOptions& options() const { return opts_; }
  int64_t localHeads() const { return localHeads_; }  // H / k

  ColumnParallelLinear qkv{nullptr};
  RowParallelLinear proj{nullptr};

 private:
  ParallelSelfAttentionOptions opts_;
  TpGroup tp_;
  std::shared_ptr<TensorParallelRng> rng_;
  int64_t localHeads_ = 0;
  // The additive causal mask (0 on and below the diagonal, -inf above), built at the first
  // forward and again when a longer sequence, another device or another dtype comes; not
  // a buffer, so not in the state dict.
  torch::Tensor causalBias_;
  torch::Tensor causalBias(int64_t T, const torch::TensorOptions& like);
};
TORCH_MODULE(ParallelSelfAttention);

}  // namespace chorus::parallel
