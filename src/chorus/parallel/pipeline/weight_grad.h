// The B/W split of a backward pass, for zero-bubble pipeline schedules: a linear layer's
// backward computes the gradient of its input at once (what the previous stage waits for)
// and leaves the gradients of its weight and bias, about half the work, for later.
//
//   auto store = std::make_shared<WeightGradStore>();
//   torch::Tensor y;
//   { WeightGradScope scope(store); y = model->forward(x); }  // linears attach to `store`
//   store->setDeferring(true);
//   y.backward(dy);               // B: x.grad() is complete; linear weight gradients queued
//   store->setDeferring(false);
//   ... send x.grad() to the previous stage, run other micro-batches ...
//   store->flush();               // W: the queued gradients accumulate into weight.grad()
//
// Which layers defer: deferrableLinear, and through it chorus's ColumnParallelLinear and
// RowParallelLinear (so the GPT's qkv, proj, fc1 and fc2). Other parameters (LayerNorm,
// embeddings) get their gradients in B as usual: they are cheap. Outside a WeightGradScope
// deferrableLinear is torch::linear, the same numbers and cost.
//
// A store holds each queued gradient's input and output gradient until flush(): that memory is
// part of what a schedule keeps per micro-batch until its W.
//
// Thread-safety: a store is driven by one thread; the scope is per thread (it marks the
// forwards that thread runs). The backward may run on another thread (autograd's device
// threads): the store reached at forward time travels with the graph.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

namespace chorus::parallel {

class WeightGradStore {
 public:
  // While deferring, the backward of a linear attached to this store queues its weight and
  // bias gradients instead of returning them to autograd.
  void setDeferring(bool on) { deferring_ = on; }
  bool deferring() const { return deferring_; }
  size_t pending() const { return queue_.size(); }
  // Computes the queued gradients in the order queued and adds each to its parameter's grad()
  // (defining it when undefined), as autograd's accumulation would have.
  void flush();
  // Drops the queued gradients without computing them.
  void clear() { queue_.clear(); }

  void push(std::function<void()> fn) { queue_.push_back(std::move(fn)); }

 private:
  bool deferring_ = false;
  std::vector<std::function<void()>> queue_;
};

// While alive, deferrableLinear calls on this thread attach to `store` (nullptr: none). Scopes
// nest; the innermost wins.
class WeightGradScope {
 public:
  explicit WeightGradScope(std::shared_ptr<WeightGradStore> store);
  ~WeightGradScope();
  WeightGradScope(const WeightGradScope&) = delete;
  WeightGradScope& operator=(const WeightGradScope&) = delete;

 private:
  std::shared_ptr<WeightGradStore> prev_;
};

// The store of the innermost WeightGradScope on this thread, or nullptr.
std::shared_ptr<WeightGradStore> currentWeightGradStore();

// y = x w^T + b (b may be undefined), x [.., in], w [out, in]. Inside a WeightGradScope its
// backward defers dw and db while the store is deferring.
torch::Tensor deferrableLinear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {});

}  // namespace chorus::parallel
