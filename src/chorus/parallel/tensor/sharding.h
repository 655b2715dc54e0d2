// How a parameter is split over the tensor-parallel ranks, and initialization that makes a
// model split k ways equal the unsplit model with the same seed.
//
// Every parallel module registers a ShardSpec per parameter (ShardedModule below);
// shardSpecs(model) collects them under their names in model.named_parameters(). Checkpoints
// use them to save the full tensors (unshard) and load at another tp (shardOf); tests use
// them to compare a split model with the unsplit one.
//
// Initialization: every parameter's FULL tensor is drawn from a generator of its own, seeded
// by parameterSeed(seed, fullName), then cut with shardOf. No global generator is touched, so
// ranks running as threads do not interfere, and the values do not depend on k.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "chorus/parallel/tensor/communication.h"

namespace chorus::parallel {

struct ShardSpec {
  int dim = -1;     // -1: replicated on every tp rank; else the dimension split over tp ranks
  int blocks = 1;   // the full tensor is `blocks` equal blocks along dim (fused q,k,v: 3); each
                    // block is split into k contiguous pieces and rank r holds piece r of every
                    // block, concatenated in block order
  int64_t fullSize = 0;    // size of dim in the full (unsharded, unpadded) tensor
  int64_t paddedSize = 0;  // size of dim after padding to a multiple of k*blocks (vocabulary);
                           // rows beyond fullSize are zero and take no part in the function.
                           // 0 or fullSize: not padded. It depends on k: re-shard with the
                           // spec of the module built at the target k.
  bool sequenceParallel = false;  // replicated, but its gradient is a partial sum under sequence
                                  // parallelism and must be all-reduced over tp (LayerNorm
                                  // weights, the row-parallel bias)
  bool padded() const { return paddedSize > fullSize; }
};

// The size of dim after padding `fullSize` to a multiple of k * blocks (vocabularies).
int64_t paddedSizeFor(int64_t fullSize, int k, int blocks = 1);

// Rank `rank`'s shard of the full (unpadded) tensor for k ranks: for dim >= 0, the tensor is
// zero-padded along dim to paddedSize when the spec is padded; the (padded) size must then be
// divisible by k * blocks; the shard is piece `rank` of every block, concatenated. For
// dim = -1, a copy of the tensor. Returns a new contiguous tensor; InvalidArgument naming the
// sizes when they do not fit.
torch::Tensor shardOf(const torch::Tensor& full, const ShardSpec& s, int rank, int k);
// The full tensor from every rank's shard (k = shards.size(), rank order), padding dropped.
// For dim = -1, shards[0].
torch::Tensor unshard(const std::vector<torch::Tensor>& shards, const ShardSpec& s);

// A module that owns sharded parameters derives from ShardedModule (besides
// torch::nn::Module) and registers each parameter's spec under its name relative to the
// module (a name may hold dots: a model can register the specs of its children's
// parameters, e.g. "h.0.ln1.weight" with sequenceParallel).
class ShardedModule {
 public:
  virtual ~ShardedModule() = default;
  void registerShardSpec(const std::string& localName, const ShardSpec& s) { specs_[localName] = s; }
  const std::map<std::string, ShardSpec>& localShardSpecs() const { return specs_; }

 private:
  std::map<std::string, ShardSpec> specs_;
};

// Every parameter of m under its name in m.named_parameters(): the spec its module (or an
// ancestor) registered, a default ShardSpec (replicated) for the others. Walks
// m.named_modules(); specs registered nearer the root win.
std::map<std::string, ShardSpec> shardSpecs(torch::nn::Module& m);

// All-reduces (sums) over g the gradient of every parameter of m whose spec says
// sequenceParallel; call after backward, before clipping and the optimizer step. A no-op for
// a group of size 1 and for parameters without a gradient. Blocks; collective over g.
void allReduceSequenceParallelGradients(torch::nn::Module& m, const TpGroup& g);

// A 64-bit hash of (seed, name): the seed of a parameter's own generator.
uint64_t parameterSeed(uint64_t seed, const std::string& name);
// The full tensor of shape fullShape, normal(0, std) from a generator seeded by
// parameterSeed(seed, name); float32. std == 0 gives zeros.
torch::Tensor initNormal(at::IntArrayRef fullShape, double std, uint64_t seed, const std::string& name);

}  // namespace chorus::parallel
