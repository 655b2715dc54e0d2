#include "chorus/amp/grad_scaler.h"

#include "chorus/common/error.h"

namespace chorus::amp {

GradScaler::GradScaler(GradScalerOptions opts, std::shared_ptr<comm::ProcessGroup> group)
    : opts_(opts), group_(std::move(group)), scale_(opts.initScale) {
  if (!(opts.initScale > 0)) throw InvalidArgument("GradScaler: initScale must be > 0");
  if (!(opts.growthFactor > 1)) throw InvalidArgument("GradScaler: growthFactor must be > 1");
  if (!(opts.backoffFactor > 0 && opts.backoffFactor < 1)) throw InvalidArgument("GradScaler: backoffFactor must be in (0, 1)");
  if (opts.growthInterval < 1) throw InvalidArgument("GradScaler: growthInterval must be >= 1");
}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) const {
  if (!opts_.enabled) return loss;
  return loss * scale_;
}

bool GradScaler::unscale(torch::optim::Optimizer& opt) {
  if (unscaled_) return !foundInf_;
  unscaled_ = true;
  foundInf_ = false;
  if (!opts_.enabled) return true;
  torch::NoGradGuard noGrad;
  const double inv = 1.0 / scale_;
  bool bad = false;
  for (auto& group : opt.param_groups()) {
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      torch::Tensor g = p.mutable_grad();
      g.mul_(inv);
      if (!bad && !torch::isfinite(g).all().item<bool>()) bad = true;
    }
  }
  if (group_ && group_->size() > 1) {
    int32_t flag = bad ? 1 : 0;
    comm::AllreduceOptions o;
    o.data = &flag;
    o.count = 1;
    o.dtype = DType::kInt32;
    o.op = ReduceOp::kMax;
    group_->allreduce(o);
    bad = flag != 0;
  }
  foundInf_ = bad;
  return !bad;
}

bool GradScaler::step(torch::optim::Optimizer& opt) {
  bool ok = unscale(opt);
  if (ok) opt.step();
  return ok;
}

void GradScaler::update() {
  if (!unscaled_) throw InvalidArgument("GradScaler::update() called without step() or unscale() since the last update");
  unscaled_ = false;
  if (!opts_.enabled) return;
  if (foundInf_) {
    scale_ *= opts_.backoffFactor;
    good_ = 0;
    ++skipped_;
  } else if (++good_ >= opts_.growthInterval) {
    scale_ *= opts_.growthFactor;
    good_ = 0;
  }
}

void GradScaler::restore(double scale, int64_t goodSteps, int64_t skippedSteps) {
  scale_ = scale;
  good_ = goodSteps;
  skipped_ = skippedSteps;
}

}  // namespace chorus::amp
