// Deferred weight gradients (see weight_grad.h).
//
// The autograd function saves x and w for the backward, and keeps the parameters themselves
// (the tensors whose grad() autograd would accumulate into) and the store as IValues. Its
// backward always returns dx; it returns dw and db to autograd unless the store is deferring,
// in which case it queues a closure that computes them from x and dy and adds them to the
// parameters' grad(). Returning no gradient for w makes autograd skip its accumulation.
#include "chorus/parallel/pipeline/weight_grad.h"

#include <torch/csrc/autograd/custom_function.h>

namespace chorus::parallel {

namespace {

thread_local std::shared_ptr<WeightGradStore> tlsStore;

struct StoreCapsule : torch::CustomClassHolder {
  explicit StoreCapsule(std::shared_ptr<WeightGradStore> s) : store(std::move(s)) {}
  std::shared_ptr<WeightGradStore> store;
};

void accumulate(torch::Tensor param, const torch::Tensor& grad) {
  torch::NoGradGuard noGrad;
  torch::Tensor g = grad.to(param.scalar_type());
  if (param.grad().defined()) {
    param.mutable_grad().add_(g);
  } else {
    param.mutable_grad() = g.clone(at::MemoryFormat::Contiguous);
  }
}

// dw = dy^T x and db = sum dy over every leading dimension.
torch::Tensor weightGrad(const torch::Tensor& x, const torch::Tensor& dy) {
  const int64_t in = x.size(-1), out = dy.size(-1);
  return dy.reshape({-1, out}).t().mm(x.reshape({-1, in}).to(dy.scalar_type()));
}
torch::Tensor biasGrad(const torch::Tensor& dy) { return dy.reshape({-1, dy.size(-1)}).sum(0); }

// The shared backward: dx always; dw (and db) returned, or queued while the store defers.
torch::autograd::variable_list linearBackward(torch::autograd::AutogradContext* ctx, const torch::Tensor& dy,
                                              bool hasBias) {
  const auto saved = ctx->get_saved_variables();
  const torch::Tensor& x = saved[0];
  const torch::Tensor& w = saved[1];
  auto holder = ctx->saved_data["store"].toCapsule();
  std::shared_ptr<WeightGradStore> store = static_cast<StoreCapsule*>(holder.get())->store;

  torch::Tensor dx;
  if (ctx->needs_input_grad(0)) dx = dy.matmul(w.to(dy.scalar_type())).to(x.scalar_type());
  const bool wantW = ctx->needs_input_grad(1), wantB = hasBias && ctx->needs_input_grad(2);
  torch::autograd::variable_list out = {dx, torch::Tensor()};
  if (hasBias) out.push_back(torch::Tensor());
  out.push_back(torch::Tensor());  // the store
  if (store && store->deferring() && (wantW || wantB)) {
    torch::Tensor param = ctx->saved_data["w"].toTensor();
    torch::Tensor bias = hasBias ? ctx->saved_data["b"].toTensor() : torch::Tensor();
    torch::Tensor xs = x.detach(), dys = dy.detach();
    store->push([param, bias, xs, dys, wantW, wantB] {
      if (wantW) accumulate(param, weightGrad(xs, dys));
      if (wantB) accumulate(bias, biasGrad(dys));
    });
    return out;
  }
  if (wantW) out[1] = weightGrad(x, dy).to(w.scalar_type());
  if (wantB) out[2] = biasGrad(dy);
  return out;
}

void saveFor(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
             const torch::Tensor* b, std::shared_ptr<WeightGradStore> store) {
  ctx->save_for_backward({x, w});
  ctx->saved_data["w"] = w;
  if (b != nullptr) ctx->saved_data["b"] = *b;
  ctx->saved_data["store"] = c10::IValue::make_capsule(c10::make_intrusive<StoreCapsule>(std::move(store)));
}

// An autograd function may not take an undefined tensor: with and without a bias are two.
struct DeferrableLinearFn : torch::autograd::Function<DeferrableLinearFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& b, std::shared_ptr<WeightGradStore> store) {
    saveFor(ctx, x, w, &b, std::move(store));
    return torch::linear(x, w, b);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return linearBackward(ctx, grads[0], true);
  }
};

struct DeferrableLinearNoBiasFn : torch::autograd::Function<DeferrableLinearNoBiasFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               std::shared_ptr<WeightGradStore> store) {
    saveFor(ctx, x, w, nullptr, std::move(store));
    return torch::linear(x, w);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return linearBackward(ctx, grads[0], false);
  }
};

}  // namespace

void WeightGradStore::flush() {
  // Taken first: a closure that throws leaves the store empty rather than half-run twice.
  std::vector<std::function<void()>> q;
  q.swap(queue_);
  for (auto& fn : q) fn();
}

WeightGradScope::WeightGradScope(std::shared_ptr<WeightGradStore> store) : prev_(std::move(tlsStore)) {
  tlsStore = std::move(store);
}

WeightGradScope::~WeightGradScope() { tlsStore = std::move(prev_); }

std::shared_ptr<WeightGradStore> currentWeightGradStore() { return tlsStore; }

torch::Tensor deferrableLinear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  if (!tlsStore || !torch::GradMode::is_enabled()) return torch::linear(x, w, b);
  if (!b.defined()) return DeferrableLinearNoBiasFn::apply(x, w, tlsStore);
  return DeferrableLinearFn::apply(x, w, b, tlsStore);
}

}  // namespace chorus::parallel
