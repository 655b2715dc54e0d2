// Tensor parallelism's communication: torch tensors through a ProcessGroup, and the
// conjugate autograd functions that Megatron-style layers are built from.
//
// Each conjugate function is one collective in the forward pass and its adjoint in the
// backward pass:
//
//   function                               forward                 backward
//   copyToTensorParallelRegion             identity                all-reduce
//   reduceFromTensorParallelRegion         all-reduce              identity
//   scatterToTensorParallelRegion          own slice of last dim   all-gather last dim
//   gatherFromTensorParallelRegion         all-gather last dim     own slice of last dim
//   scatterToSequenceParallelRegion        own slice of dim 1      all-gather dim 1
//   gatherFromSequenceParallelRegion       all-gather dim 1        reduce-scatter dim 1
//   reduceScatterToSequenceParallelRegion  reduce-scatter dim 1    all-gather dim 1
//
// Shapes: activations are [B, T, E] (B batch, T tokens, E features); k = the tp group's size.
// The last-dimension functions take any rank >= 1; the sequence functions take rank >= 2 and
// split dim 1. A split dimension must be divisible by k (InvalidArgument naming the sizes).
//
// The tp group: TpGroup may be nullptr or of size 1; then every function is the identity (no
// collective, no copy). All tensors are CPU; they are made contiguous before communication.
//
// Blocking and threads: every function blocks in its collective (forward, or backward inside
// autograd). Every rank of the group must run the same functions in the same order, forward
// and backward. On the CPU LibTorch runs backward() on the thread that calls it, so the
// backward collectives run on that thread, in the autograd engine's order, which is the same
// on every rank for the same graph. Do not run backward of two graphs that share a tp group
// concurrently on different threads of one rank.
#pragma once

#include <memory>

#include <torch/torch.h>

#include "chorus/comm/group.h"

namespace chorus::parallel {

using TpGroup = std::shared_ptr<comm::ProcessGroup>;

// The group's size and this rank's index in it; 1 and 0 for nullptr.
int tpSize(const TpGroup& g);
int tpRank(const TpGroup& g);

// Plain collectives on tensors (no autograd: the results do not require grad). Each returns a
// new tensor and leaves x unchanged; with a group of size 1 (or nullptr) they return x itself.
// Sum over the group's ranks.
torch::Tensor allReduceSum(const torch::Tensor& x, const TpGroup& g);
// Maximum over the group's ranks.
torch::Tensor allReduceMax(const torch::Tensor& x, const TpGroup& g);
// The ranks' tensors (same shape) concatenated along dim in rank order: size(dim) * k.
torch::Tensor allGatherAlong(const torch::Tensor& x, int64_t dim, const TpGroup& g);
// The sum over ranks, split along dim into k pieces; this rank's piece (size(dim) / k).
torch::Tensor reduceScatterAlong(const torch::Tensor& x, int64_t dim, const TpGroup& g);
// This rank's piece of x split along dim into k equal pieces (a contiguous copy); no
// communication.
torch::Tensor sliceAlong(const torch::Tensor& x, int64_t dim, const TpGroup& g);

// The conjugate functions (the table above). Differentiable.
torch::Tensor copyToTensorParallelRegion(const torch::Tensor& x, const TpGroup& g);
torch::Tensor reduceFromTensorParallelRegion(const torch::Tensor& x, const TpGroup& g);
torch::Tensor scatterToTensorParallelRegion(const torch::Tensor& x, const TpGroup& g);
torch::Tensor gatherFromTensorParallelRegion(const torch::Tensor& x, const TpGroup& g);
torch::Tensor scatterToSequenceParallelRegion(const torch::Tensor& x, const TpGroup& g);
torch::Tensor gatherFromSequenceParallelRegion(const torch::Tensor& x, const TpGroup& g);
torch::Tensor reduceScatterToSequenceParallelRegion(const torch::Tensor& x, const TpGroup& g);

}  // namespace chorus::parallel
