// The compress tests build their gradients with LibTorch and call the torch-free codecs
// through parallel/compress_adapter.h; these shorthands keep them readable.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "chorus/compress/codec.h"
#include "chorus/compress/factory.h"
#include "chorus/compress/sparse.h"
#include "chorus/parallel/compress_adapter.h"

namespace chorus::compress {

using parallel::decodeAdd;
using parallel::encode;

// encode on a temporary codec.
inline Message encode(Codec&& codec, const torch::Tensor& grad, CodecState& state) {
  return parallel::encode(codec, grad, state);
}

// A copy of state's residual for a gradient like `grad` (created as zeros first).
inline torch::Tensor residualOf(CodecState& state, const torch::Tensor& grad) {
  state.residual(static_cast<size_t>(grad.numel()));
  return parallel::bufferTensor(state, "residual");
}

// A copy of state.buffers.at(name) as a flat float32 tensor.
inline torch::Tensor buf(const CodecState& state, const std::string& name) { return parallel::bufferTensor(state, name); }

// makeCodec for a sparse method: `value` is the ratio (tau for threshold).
inline std::unique_ptr<Codec> makeSparse(const std::string& method, double value, bool layerwise = true,
                                         RandomKOptions randomk = {}) {
  CodecConfig c;
  c.method = method;
  (method == "threshold" ? c.threshold : c.ratio) = value;
  c.layerwise = layerwise;
  c.errorFeedback = randomk.errorFeedback;
  c.residualDecay = randomk.residualDecay;
  return makeCodec(c);
}

// makeCodec for a quantizer (levels: qsgd's, 0 for its default).
inline std::unique_ptr<Codec> makeQuantizer(const std::string& method, int64_t levels = 0,
                                            std::optional<bool> errorFeedback = std::nullopt) {
  CodecConfig c;
  c.method = method;
  c.levels = levels;
  c.errorFeedback = errorFeedback;
  return makeCodec(c);
}

template <typename T>
torch::Tensor toTensor(const std::vector<T>& v) {
  return torch::tensor(v).reshape({static_cast<int64_t>(v.size())});
}

// packSparse from tensors (int64 indices, float32 values).
inline Message packSparse(SparseKind kind, int64_t numel, const torch::Tensor& indices, const torch::Tensor& values) {
  torch::Tensor i = indices.to(torch::kLong).contiguous(), v = values.to(torch::kFloat).contiguous();
  return packSparse(kind, numel, std::span<const int64_t>(i.data_ptr<int64_t>(), static_cast<size_t>(i.numel())),
                    std::span<const float>(v.data_ptr<float>(), static_cast<size_t>(v.numel())));
}

}  // namespace chorus::compress
