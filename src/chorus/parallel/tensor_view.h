// The adapter between LibTorch and the torch-free comm core: a contiguous tensor viewed as
// (void* data, count, DType) without copying.
#pragma once

#include <torch/torch.h>

#include "chorus/common/dtype.h"
#include "chorus/common/error.h"

namespace chorus::parallel {

// The comm DType of a torch scalar type; InvalidArgument for types the core does not carry.
DType toDType(at::ScalarType t);

// A contiguous CPU tensor as a comm buffer.
struct BufferView {
  void* data;
  size_t count;
  DType dtype;
};
BufferView viewOf(const torch::Tensor& t);

}  // namespace chorus::parallel
