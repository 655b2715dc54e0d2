// AVX2/F16C build of the reduction loops (see reduce_kernels.h); CMake compiles this file with
// -mavx2 -mf16c -mfma, and reduce.cc calls it only on CPUs that have them.
#include "chorus/common/reduce_kernels.h"

namespace chorus::kernels {
void combineAvx2(void* out, const void* a, const void* b, size_t n, DType t, ReduceOp op) {
  combineAny(out, a, b, n, t, op);
}
}  // namespace chorus::kernels
