// Element types and reduction operators of the torch-free communication core.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace chorus {

enum class DType : uint8_t { kFloat32 = 0, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8 };
enum class ReduceOp : uint8_t { kSum = 0, kAvg, kMin, kMax, kProd };

inline constexpr DType kAllDTypes[] = {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16,
                                       DType::kInt32,   DType::kInt64,   DType::kUInt8};
inline constexpr ReduceOp kAllReduceOps[] = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax,
                                             ReduceOp::kProd};

size_t dtypeSize(DType t);
const char* dtypeName(DType t);   // "float32", "bfloat16", ...
const char* reduceOpName(ReduceOp op);  // "sum", "avg", ...
// Parse "float32"/"fp32"/"f32", "sum"/"avg"... Throws InvalidArgument naming the allowed values.
DType parseDType(const std::string& s);
ReduceOp parseReduceOp(const std::string& s);

// IEEE half and bfloat16 conversions (round to nearest even; NaN stays NaN).
float halfToFloat(uint16_t h);
uint16_t floatToHalf(float f);
inline float bf16ToFloat(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
uint16_t floatToBf16(float f);

}  // namespace chorus
