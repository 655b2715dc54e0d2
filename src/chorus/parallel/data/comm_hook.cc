// The communication hooks that ship with DDP: plain all-reduce, and a 16-bit cast around it.
#include "chorus/parallel/data/comm_hook.h"

#include "chorus/parallel/tensor_view.h"

namespace chorus::parallel {
namespace {

comm::WorkPtr allreduceAvg(comm::ProcessGroup& group, const torch::Tensor& t, comm::AllreduceAlgo algo, ReduceOp op) {
  BufferView v = viewOf(t);
  comm::AllreduceOptions o;
  o.data = v.data;
  o.count = v.count;
  o.dtype = v.dtype;
  o.op = op;
  o.algo = algo;
  return group.allreduceAsync(o);
}

class OneCollective : public HookWork {
 public:
  OneCollective(comm::WorkPtr w, std::function<void()> then = nullptr) : w_(std::move(w)), then_(std::move(then)) {}
  void wait() override {
    w_->wait();
    if (then_) then_();
    then_ = nullptr;
  }
  std::vector<comm::WorkPtr> works() const override { return {w_}; }

 private:
  comm::WorkPtr w_;
  std::function<void()> then_;
};

class AllreduceHook : public CommHook {
 public:
  explicit AllreduceHook(comm::AllreduceAlgo algo) : algo_(algo) {}
  std::unique_ptr<HookWork> start(comm::ProcessGroup& group, GradBucket& bucket) override {
    return std::make_unique<OneCollective>(allreduceAvg(group, bucket.buffer, algo_, ReduceOp::kAvg));
  }
  std::string name() const override { return "allreduce"; }

 private:
  comm::AllreduceAlgo algo_;
};

class CastHook : public CommHook {
 public:
  CastHook(at::ScalarType wire, comm::AllreduceAlgo algo) : wire_(wire), algo_(algo) {
    if (wire != at::kHalf && wire != at::kBFloat16) {
      throw InvalidArgument(str("castHook: the wire type must be float16 or bfloat16, not ", c10::toString(wire)));
    }
  }
  std::unique_ptr<HookWork> start(comm::ProcessGroup& group, GradBucket& bucket) override {
    torch::NoGradGuard noGrad;
    torch::Tensor buffer = bucket.buffer;
    // float16 tops out at 65504: divide before the sum so the sum of n ranks cannot overflow
    // where each rank's gradient alone would not. bfloat16 has float32's range.
    torch::Tensor wire = wire_ == at::kHalf ? (buffer / static_cast<double>(group.size())).to(wire_) : buffer.to(wire_);
    ReduceOp op = wire_ == at::kHalf ? ReduceOp::kSum : ReduceOp::kAvg;
    auto w = allreduceAvg(group, wire, algo_, op);
    return std::make_unique<OneCollective>(w, [buffer, wire]() mutable {
      torch::NoGradGuard g;
      buffer.copy_(wire);
    });
  }
  std::string name() const override { return wire_ == at::kHalf ? "fp16" : "bf16"; }

 private:
  at::ScalarType wire_;
  comm::AllreduceAlgo algo_;
};

}  // namespace

std::shared_ptr<CommHook> allreduceHook(comm::AllreduceAlgo algo) { return std::make_shared<AllreduceHook>(algo); }

std::shared_ptr<CommHook> castHook(at::ScalarType wireType, comm::AllreduceAlgo algo) {
  return std::make_shared<CastHook>(wireType, algo);
}

}  // namespace chorus::parallel
