// The comm core moves flat buffers: allgather concatenates the ranks' buffers and
// reduce-scatter hands rank r the r-th flat block. Both therefore work along the slowest
// dimension only; to gather or scatter along dim d the tensor is first laid out with d moved
// to the front (a contiguous copy), and the result moved back. Dim 0 needs no copy beyond
// contiguity.
//
// The autograd functions keep the group in the context as a capsule (saved_data holds
// IValues only). Each backward is the adjoint of its forward: identity <-> all-reduce,
// slice <-> all-gather, all-gather <-> reduce-scatter.
#include "chorus/parallel/tensor/communication.h"

#include <torch/csrc/autograd/custom_function.h>

#include "chorus/common/error.h"
#include "chorus/parallel/tensor_view.h"

namespace chorus::parallel {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

int tpSize(const TpGroup& g) { return g ? g->size() : 1; }
int tpRank(const TpGroup& g) { return g ? g->rank() : 0; }

namespace {

int64_t normDim(const torch::Tensor& x, int64_t dim, const char* op) {
  const int64_t n = x.dim();
  if (n == 0 || dim < -n || dim >= n)
    throw InvalidArgument(chorus::str(op, ": dimension ", dim, " does not exist in a tensor of shape ", x.sizes()));
  return dim < 0 ? dim + n : dim;
}

void checkDivisible(const torch::Tensor& x, int64_t dim, int k, const char* op) {
  if (x.size(dim) % k != 0)
    throw InvalidArgument(chorus::str(op, ": dimension ", dim, " of shape ", x.sizes(), " (size ", x.size(dim),
                              ") is not divisible by the tensor-parallel size ", k, "; choose sizes divisible by ", k));
}

torch::Tensor allReduce(const torch::Tensor& x, const TpGroup& g, ReduceOp op) {
  if (tpSize(g) == 1) return x;
  torch::Tensor out = x.detach().clone(at::MemoryFormat::Contiguous);
  BufferView v = viewOf(out);
  comm::AllreduceOptions o;
  o.data = v.data;
  o.count = v.count;
  o.dtype = v.dtype;
  o.op = op;
  g->allreduce(o);
  return out;
}

struct GroupCapsule : torch::CustomClassHolder {
  explicit GroupCapsule(TpGroup g) : group(std::move(g)) {}
  TpGroup group;
};

void saveGroup(AutogradContext* ctx, const TpGroup& g) {
  ctx->saved_data["group"] = c10::IValue::make_capsule(c10::make_intrusive<GroupCapsule>(g));
}

TpGroup loadGroup(AutogradContext* ctx) {
  auto holder = ctx->saved_data["group"].toCapsule();
  return static_cast<GroupCapsule*>(holder.get())->group;
}

// Forward f, backward b, each a plain collective on one tensor.
template <torch::Tensor (*F)(const torch::Tensor&, const TpGroup&), torch::Tensor (*B)(const torch::Tensor&, const TpGroup&)>
struct Conjugate : torch::autograd::Function<Conjugate<F, B>> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, TpGroup g) {
    saveGroup(ctx, g);
    return F(x, g);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {B(grads[0], loadGroup(ctx)), torch::Tensor()};
  }
};

torch::Tensor identity(const torch::Tensor& x, const TpGroup&) { return x; }
torch::Tensor gatherLast(const torch::Tensor& x, const TpGroup& g) { return allGatherAlong(x, -1, g); }
torch::Tensor sliceLast(const torch::Tensor& x, const TpGroup& g) { return sliceAlong(x, -1, g); }
torch::Tensor gatherSeq(const torch::Tensor& x, const TpGroup& g) { return allGatherAlong(x, 1, g); }
torch::Tensor sliceSeq(const torch::Tensor& x, const TpGroup& g) { return sliceAlong(x, 1, g); }
torch::Tensor reduceScatterSeq(const torch::Tensor& x, const TpGroup& g) { return reduceScatterAlong(x, 1, g); }

void checkSequence(const torch::Tensor& x, const char* op) {
  if (x.dim() < 2)
    throw InvalidArgument(chorus::str(op, ": the sequence dimension is dim 1 of [B, T, ..]; got shape ", x.sizes()));
}

}  // namespace

torch::Tensor allReduceSum(const torch::Tensor& x, const TpGroup& g) { return allReduce(x, g, ReduceOp::kSum); }
torch::Tensor allReduceMax(const torch::Tensor& x, const TpGroup& g) { return allReduce(x, g, ReduceOp::kMax); }

torch::Tensor allGatherAlong(const torch::Tensor& x, int64_t dim, const TpGroup& g) {
  const int k = tpSize(g);
  if (k == 1) return x;
  dim = normDim(x, dim, "allGatherAlong");
  torch::Tensor in = x.detach().movedim(dim, 0).contiguous();
  std::vector<int64_t> shape = in.sizes().vec();
  shape[0] *= k;
  torch::Tensor out = torch::empty(shape, in.options());
  BufferView vi = viewOf(in), vo = viewOf(out);
  comm::AllgatherOptions o;
  o.input = vi.data;
  o.output = vo.data;
  o.count = vi.count;
  o.dtype = vi.dtype;
  g->allgather(o);
  return dim == 0 ? out : out.movedim(0, dim).contiguous();
}

torch::Tensor reduceScatterAlong(const torch::Tensor& x, int64_t dim, const TpGroup& g) {
  const int k = tpSize(g);
  if (k == 1) return x;
  dim = normDim(x, dim, "reduceScatterAlong");
  checkDivisible(x, dim, k, "reduceScatterAlong");
  torch::Tensor in = x.detach().movedim(dim, 0).contiguous();
  std::vector<int64_t> shape = in.sizes().vec();
  shape[0] /= k;
  torch::Tensor out = torch::empty(shape, in.options());
  BufferView vi = viewOf(in), vo = viewOf(out);
  comm::ReduceScatterOptions o;
  o.input = vi.data;
  o.output = vo.data;
  o.count = vo.count;
  o.dtype = vi.dtype;
  o.op = ReduceOp::kSum;
  g->reduceScatter(o);
  return dim == 0 ? out : out.movedim(0, dim).contiguous();
}

torch::Tensor sliceAlong(const torch::Tensor& x, int64_t dim, const TpGroup& g) {
  const int k = tpSize(g);
  if (k == 1) return x;
  dim = normDim(x, dim, "sliceAlong");
  checkDivisible(x, dim, k, "sliceAlong");
  const int64_t piece = x.size(dim) / k;
  return x.detach().narrow(dim, tpRank(g) * piece, piece).contiguous();
}

torch::Tensor copyToTensorParallelRegion(const torch::Tensor& x, const TpGroup& g) {
  if (tpSize(g) == 1) return x;
  return Conjugate<identity, allReduceSum>::apply(x, g);
}

torch::Tensor reduceFromTensorParallelRegion(const torch::Tensor& x, const TpGroup& g) {
  if (tpSize(g) == 1) return x;
  return Conjugate<allReduceSum, identity>::apply(x, g);
}

torch::Tensor scatterToTensorParallelRegion(const torch::Tensor& x, const TpGroup& g) {
  if (tpSize(g) == 1) return x;
  normDim(x, -1, "scatterToTensorParallelRegion");
  checkDivisible(x, x.dim() - 1, tpSize(g), "scatterToTensorParallelRegion");
  return Conjugate<sliceLast, gatherLast>::apply(x, g);
}

torch::Tensor gatherFromTensorParallelRegion(const torch::Tensor& x, const TpGroup& g) {
  if (tpSize(g) == 1) return x;
  normDim(x, -1, "gatherFromTensorParallelRegion");
  return Conjugate<gatherLast, sliceLast>::apply(x, g);
}

torch::Tensor scatterToSequenceParallelRegion(const torch::Tensor& x, const TpGroup& g) {
  if (tpSize(g) == 1) return x;
  checkSequence(x, "scatterToSequenceParallelRegion");
  checkDivisible(x, 1, tpSize(g), "scatterToSequenceParallelRegion");
  return Conjugate<sliceSeq, gatherSeq>::apply(x, g);
}

torch::Tensor gatherFromSequenceParallelRegion(const torch::Tensor& x, const TpGroup& g) {
  if (tpSize(g) == 1) return x;
  checkSequence(x, "gatherFromSequenceParallelRegion");
  return Conjugate<gatherSeq, reduceScatterSeq>::apply(x, g);
}

torch::Tensor reduceScatterToSequenceParallelRegion(const torch::Tensor& x, const TpGroup& g) {
  if (tpSize(g) == 1) return x;
  checkSequence(x, "reduceScatterToSequenceParallelRegion");
  checkDivisible(x, 1, tpSize(g), "reduceScatterToSequenceParallelRegion");
  return Conjugate<reduceScatterSeq, gatherSeq>::apply(x, g);
}

}  // namespace chorus::parallel
