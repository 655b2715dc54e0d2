// Dynamic loss scaling for float16: the loss is multiplied by a scale before backward so
// small gradients survive in 16 bits; before the optimizer steps, the gradients are divided
// back. If any gradient is inf or NaN the step is skipped and the scale shrinks
// (backoffFactor); after growthInterval clean steps in a row it grows (growthFactor).
//
//   auto loss = scaler.scale(criterion(out, y));
//   loss.backward();                       // DDP averages the scaled gradients
//   bool stepped = scaler.step(optimizer); // unscale, check, step or skip
//   scaler.update();
//
// With a process group, ranks agree on "found inf" by an all-reduce, so they skip together
// even when their gradients were not all-reduced (e.g. under noSync).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "chorus/comm/group.h"

namespace chorus::amp {

struct GradScalerOptions {
  double initScale = 65536.0;
  double growthFactor = 2.0;
  double backoffFactor = 0.5;
  int64_t growthInterval = 2000;
  bool enabled = true;  // false: scale() and unscale are identity, step() always steps
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions opts = {}, std::shared_ptr<comm::ProcessGroup> group = nullptr);
  torch::Tensor scale(const torch::Tensor& loss) const;
  // Divides the optimizer's gradients by the scale and checks them; true if all finite.
  // Called by step() unless already called since the last update().
  bool unscale(torch::optim::Optimizer& opt);
  // Steps the optimizer unless a gradient was inf/NaN; returns whether it stepped.
  bool step(torch::optim::Optimizer& opt);
  // Adjusts the scale after step().
  void update();

  double scaleValue() const { return scale_; }
  int64_t goodSteps() const { return good_; }
  int64_t skippedSteps() const { return skipped_; }
  bool enabled() const { return opts_.enabled; }
  // For checkpoints.
  void restore(double scale, int64_t goodSteps, int64_t skippedSteps);

 private:
  GradScalerOptions opts_;
  std::shared_ptr<comm::ProcessGroup> group_;
  double scale_;
  int64_t good_ = 0, skipped_ = 0;
  bool unscaled_ = false, foundInf_ = false;
};

}  // namespace chorus::amp
