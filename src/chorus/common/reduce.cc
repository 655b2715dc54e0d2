#include "chorus/common/reduce.h"

#include <cpuid.h>

#include <cstdint>

#include "chorus/common/error.h"

namespace chorus {
namespace kernels {
void combineGeneric(void* out, const void* a, const void* b, size_t n, DType t, ReduceOp op);
void combineAvx2(void* out, const void* a, const void* b, size_t n, DType t, ReduceOp op);
}  // namespace kernels

namespace {
using CombineFn = void (*)(void*, const void*, const void*, size_t, DType, ReduceOp);

// AVX2, FMA and F16C from cpuid, and the OS saving the AVX registers (OSXSAVE + XCR0).
// cpuid directly, because clang's __builtin_cpu_supports does not know "f16c".
bool cpuHasAvx2F16c() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!(fma && osxsave && avx && f16c)) return false;
  unsigned xcr0lo, xcr0hi;
  __asm__("xgetbv" : "=a"(xcr0lo), "=d"(xcr0hi) : "c"(0));
  if ((xcr0lo & 6u) != 6u) return false;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return b & (1u << 5);
}

CombineFn pickCombine() { return cpuHasAvx2F16c() ? kernels::combineAvx2 : kernels::combineGeneric; }

const CombineFn kCombine = pickCombine();

template <typename T>
void divideAll(T* p, size_t n, int d) {
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<T>(p[i] / d);
}
}  // namespace

void reduceInto(void* dst, const void* src, size_t count, DType dtype, ReduceOp op) {
  kCombine(dst, dst, src, count, dtype, op);
}

void reduce2(void* out, const void* a, const void* b, size_t count, DType dtype, ReduceOp op) {
  kCombine(out, a, b, count, dtype, op);
}

void finishReduce(void* data, size_t count, DType dtype, ReduceOp op, int n) {
  if (op != ReduceOp::kAvg || n == 1) return;
  if (n <= 0) throw InvalidArgument(str("finishReduce: average over ", n, " contributions"));
  switch (dtype) {
    case DType::kFloat32: return divideAll(static_cast<float*>(data), count, n);
    case DType::kFloat64: return divideAll(static_cast<double*>(data), count, n);
    case DType::kInt32: return divideAll(static_cast<int32_t*>(data), count, n);
    case DType::kInt64: return divideAll(static_cast<int64_t*>(data), count, n);
    case DType::kUInt8: return divideAll(static_cast<uint8_t*>(data), count, n);
    case DType::kFloat16: {
      auto* p = static_cast<uint16_t*>(data);
      for (size_t i = 0; i < count; ++i) p[i] = floatToHalf(halfToFloat(p[i]) / static_cast<float>(n));
      return;
    }
    case DType::kBFloat16: {
      auto* p = static_cast<uint16_t*>(data);
      for (size_t i = 0; i < count; ++i) p[i] = floatToBf16(bf16ToFloat(p[i]) / static_cast<float>(n));
      return;
    }
  }
}

}  // namespace chorus
