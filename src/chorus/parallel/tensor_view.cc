#include "chorus/parallel/tensor_view.h"

namespace chorus::parallel {

DType toDType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kInt: return DType::kInt32;
    case at::kLong: return DType::kInt64;
    case at::kByte: return DType::kUInt8;
    default:
      throw InvalidArgument(str("tensors of type ", c10::toString(t),
                                " cannot be communicated; use float32, float64, float16, bfloat16, int32, int64 or uint8"));
  }
}

BufferView viewOf(const torch::Tensor& t) {
  if (!t.is_contiguous()) throw InvalidArgument("a communicated tensor must be contiguous; call .contiguous() first");
  if (!t.device().is_cpu()) throw InvalidArgument("the comm core reads host memory; move the tensor to the CPU first");
  return {t.data_ptr(), static_cast<size_t>(t.numel()), toDType(t.scalar_type())};
}

}  // namespace chorus::parallel
