// The reduction loops, written once and compiled twice: reduce_generic.cc (baseline x86-64)
// and reduce_avx2.cc (-mavx2 -mf16c -mfma). reduce.cc picks one at run time. Internal.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "chorus/common/dtype.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace chorus::kernels {

struct Sum {
  template <typename T>
  static T apply(T a, T b) { return a + b; }
};
struct Prod {
  template <typename T>
  static T apply(T a, T b) { return a * b; }
};
struct Min {
  template <typename T>
  static T apply(T a, T b) { return b < a ? b : a; }
};
struct Max {
  template <typename T>
  static T apply(T a, T b) { return a < b ? b : a; }
};

template <typename Op, typename T>
inline void loop(T* __restrict out, const T* a, const T* __restrict b, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = Op::apply(a[i], b[i]);
}

// uint8 arithmetic wraps modulo 256, like torch's uint8.
template <typename Op>
inline void loopU8(uint8_t* __restrict out, const uint8_t* a, const uint8_t* __restrict b, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(Op::template apply<unsigned>(a[i], b[i]));
}

inline float bf16Load(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t bf16Store(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  uint32_t nan = (x >> 16) | 0x40u;
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// 16-bit floats are widened to float32, combined, and rounded back, a block at a time so the
// float32 temporaries stay in registers/L1.
template <typename Op>
inline void loopBf16(uint16_t* out, const uint16_t* a, const uint16_t* b, size_t n) {
  constexpr size_t kBlock = 256;
  float fa[kBlock], fb[kBlock];
  for (size_t base = 0; base < n; base += kBlock) {
    size_t m = std::min(kBlock, n - base);
    for (size_t i = 0; i < m; ++i) fa[i] = bf16Load(a[base + i]);
    for (size_t i = 0; i < m; ++i) fb[i] = bf16Load(b[base + i]);
    for (size_t i = 0; i < m; ++i) fa[i] = Op::apply(fa[i], fb[i]);
    for (size_t i = 0; i < m; ++i) out[base + i] = bf16Store(fa[i]);
  }
}

template <typename Op>
inline void loopF16(uint16_t* out, const uint16_t* a, const uint16_t* b, size_t n) {
  size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; i + 8 <= n; i += 8) {
    __m256 va = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    __m256 vb = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    alignas(32) float fa[8], fb[8];
    _mm256_store_ps(fa, va);
    _mm256_store_ps(fb, vb);
    for (int k = 0; k < 8; ++k) fa[k] = Op::apply(fa[k], fb[k]);
    __m128i h = _mm256_cvtps_ph(_mm256_load_ps(fa), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
#endif
  for (; i < n; ++i) out[i] = floatToHalf(Op::apply(halfToFloat(a[i]), halfToFloat(b[i])));
}

template <typename Op>
inline void combine(void* out, const void* a, const void* b, size_t n, DType t) {
  switch (t) {
    case DType::kFloat32:
      return loop<Op>(static_cast<float*>(out), static_cast<const float*>(a), static_cast<const float*>(b), n);
    case DType::kFloat64:
      return loop<Op>(static_cast<double*>(out), static_cast<const double*>(a), static_cast<const double*>(b), n);
    case DType::kInt32:
      return loop<Op>(static_cast<int32_t*>(out), static_cast<const int32_t*>(a), static_cast<const int32_t*>(b), n);
    case DType::kInt64:
      return loop<Op>(static_cast<int64_t*>(out), static_cast<const int64_t*>(a), static_cast<const int64_t*>(b), n);
    case DType::kUInt8:
      return loopU8<Op>(static_cast<uint8_t*>(out), static_cast<const uint8_t*>(a), static_cast<const uint8_t*>(b), n);
    case DType::kFloat16:
      return loopF16<Op>(static_cast<uint16_t*>(out), static_cast<const uint16_t*>(a),
                         static_cast<const uint16_t*>(b), n);
    case DType::kBFloat16:
      return loopBf16<Op>(static_cast<uint16_t*>(out), static_cast<const uint16_t*>(a),
                          static_cast<const uint16_t*>(b), n);
  }
}

// out = a op b for every op; kAvg combines like kSum.
inline void combineAny(void* out, const void* a, const void* b, size_t n, DType t, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return combine<Sum>(out, a, b, n, t);
    case ReduceOp::kProd: return combine<Prod>(out, a, b, n, t);
    case ReduceOp::kMin: return combine<Min>(out, a, b, n, t);
    case ReduceOp::kMax: return combine<Max>(out, a, b, n, t);
  }
}

}  // namespace chorus::kernels
