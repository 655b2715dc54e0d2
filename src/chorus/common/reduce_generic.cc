// Baseline x86-64 build of the reduction loops (see reduce_kernels.h).
#include "chorus/common/reduce_kernels.h"

namespace chorus::kernels {
void combineGeneric(void* out, const void* a, const void* b, size_t n, DType t, ReduceOp op) {
  combineAny(out, a, b, n, t, op);
}
}  // namespace chorus::kernels
