// The adapter between LibTorch and the torch-free codecs of compress/: a contiguous float32
// CPU tensor viewed as the span a codec reads or adds into, and a codec state's named float32
// buffers as tensors (for PowerSGD's matrices, and for checkpoints, which store them as flat
// float32 tensors under their names).
#pragma once

#include <span>
#include <string>

#include <torch/torch.h>

#include "chorus/compress/codec.h"

namespace chorus::parallel {

// `t` as a span over its data, after checking that it is a defined, contiguous float32 CPU
// tensor; throws InvalidArgument naming `what` otherwise. No copy: the span aliases `t`.
std::span<const float> floatSpan(const torch::Tensor& t, const std::string& what);
std::span<float> mutableFloatSpan(const torch::Tensor& t, const std::string& what);

// codec.encode / codec.decodeAdd on tensors (checked as above).
compress::Message encode(compress::Codec& codec, const torch::Tensor& grad, compress::CodecState& state);
void decodeAdd(const compress::Codec& codec, const compress::Message& msg, const torch::Tensor& out);

// A flat float32 tensor that aliases state.buffers[name] (which must exist); valid while the
// buffer keeps its size.
torch::Tensor bufferView(compress::CodecState& state, const std::string& name);
// The buffer `name` as a tensor of `shape`, created as zeros (or replaced, when its size
// differs) first; aliases the buffer like bufferView.
torch::Tensor bufferOf(compress::CodecState& state, const std::string& name, at::IntArrayRef shape);
// A copy of state.buffers.at(name) as a flat float32 tensor.
torch::Tensor bufferTensor(const compress::CodecState& state, const std::string& name);
// Sets state.buffers[name] to the values of `t` (any shape; converted to float32, flattened).
void setBuffer(compress::CodecState& state, const std::string& name, const torch::Tensor& t);

}  // namespace chorus::parallel
