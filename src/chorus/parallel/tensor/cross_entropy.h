// Cross-entropy over logits split along the vocabulary, without gathering them.
//
// Rank r holds the columns [vocabStart, vocabStart + Vk) of the logits of every position
// (N positions, Vk = paddedVocab / k). For position i with target t:
//   loss_i = log(sum_j exp(z_ij)) - z_it
//          = log(sum_j exp(z_ij - m_i)) - (z_it - m_i),   m_i = max_j z_ij
// m_i, sum_j exp(z_ij - m_i) and z_it - m_i are each a local reduction followed by an
// all-reduce (max of N values, then the two sums together as 2N values; only the rank holding
// column t contributes z_it), so communication is 3N values instead of N * V. The backward is local:
//   dloss/dz_ij = (softmax_ij - [j == t]) * g / N
// on this rank's columns. Columns >= realVocab (vocabulary padding) are masked to -inf: they
// take no part in the softmax and get zero gradient.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "chorus/parallel/tensor/communication.h"

namespace chorus::parallel {

// Mean cross-entropy over all positions of logits split along the vocabulary:
// logitsShard [.., Vk] (float32 or float64; 16-bit logits are computed in float32; any leading
// dims, flattened to N positions) holds this rank's columns vocabStart..vocabStart+Vk of the
// padded vocabulary; columns >= realVocab are masked out. targets [..] (the leading dims, N positions) int64 in [0, realVocab); an
// out-of-range target throws InvalidArgument (checked on every rank, so all throw together).
// Returns a 0-dim tensor, identical on every tp rank. Differentiable with respect to
// logitsShard (its own autograd function; the backward needs no communication). Blocks:
// two all-reduces (N and 2N values) over g; collective over g. With one rank (g nullptr or of
// size 1) holding the whole vocabulary unpadded, it is LibTorch's cross_entropy (fused
// log-softmax and NLL), the same mean in fewer passes.
torch::Tensor vocabParallelCrossEntropy(const torch::Tensor& logitsShard, const torch::Tensor& targets,
                                        int64_t vocabStart, int64_t realVocab, const TpGroup& g);

}  // namespace chorus::parallel
