// The collectives compressed gradients need: an all-reduce (average) through a codec, in which
// every rank's message reaches every rank (allgather of the sizes, then allgatherv of the
// bytes) and each rank decodes and sums them. Sparse messages switch to a dense all-reduce of
// the decoded values when the gathered messages would cost more than a dense ring.
#pragma once

#include <cstdint>
#include <span>

#include "chorus/comm/group.h"
#include "chorus/compress/codec.h"

namespace chorus::compress {

struct CompressedResult {
  uint64_t messageBytes = 0;  // this rank's encoded message
  uint64_t denseBytes = 0;    // the gradient's size in float32
  bool wentDense = false;     // sparse messages were too dense: a dense all-reduce ran instead
};

// grad: this rank's flat float32 gradient in, the average over the group out (in place).
// Every rank must call it with the same codec kind and numel, in the same order.
CompressedResult compressedAllreduce(comm::ProcessGroup& group, Codec& codec, std::span<float> grad, CodecState& state);

// Dense all-reduce cost in bytes sent per rank (ring: 2 (W-1)/W of the float32 data) against
// the ring allgather of every rank's message ((W-1)/W of their total): true when dense is cheaper.
bool denseIsCheaper(int64_t numel, uint64_t totalMessageBytes, int world);

}  // namespace chorus::compress
