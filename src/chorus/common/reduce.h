// Vectorized reduction kernels over raw buffers. float16 and bfloat16 are reduced through
// float32. These are the inner loops of every reducing collective, so they are compiled with
// runtime dispatch to AVX2/F16C where the CPU has them.
#pragma once

#include <cstddef>

#include "chorus/common/dtype.h"

namespace chorus {

// dst[i] = dst[i] (op) src[i] for i < count. kAvg accumulates like kSum; the caller divides
// once at the end with scaleAverage(). dst and src may not overlap partially.
void reduceInto(void* dst, const void* src, size_t count, DType dtype, ReduceOp op);

// out[i] = a[i] (op) b[i]. out may equal a or b.
void reduce2(void* out, const void* a, const void* b, size_t count, DType dtype, ReduceOp op);

// Finishes an average over `n` contributions: divides every element by n (integers round
// toward zero). A no-op for every op but kAvg.
void finishReduce(void* data, size_t count, DType dtype, ReduceOp op, int n);

}  // namespace chorus
