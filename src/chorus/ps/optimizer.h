// Server-side optimizers: the update a parameter server applies to one slice of parameters
// when a gradient arrives (asp, ssp) or a round's average is ready (bsp). Torch-free loops over
// float spans, written to give the same result as torch::optim on the same inputs (the
// ps tests compare against the formulas below, and the bsp test against DDP + torch::optim):
//
//   sgd:   d = g + wd * p
//          buf = d (first step) | momentum * buf + (1 - dampening) * d
//          d = nesterov ? d + momentum * buf : buf          (when momentum > 0)
//          p -= lr * d
//   adam:  (adamw: p *= 1 - lr * wd first; adam: g += wd * p)
//          m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  t += 1
//          p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//
// Asynchronous updates (pushesPerRound = N > 1: asp and ssp, where every worker's push is
// applied on its own and `g` is that worker's gradient divided by N). N pushes then make one
// "round", and each optimizer is set up so that a round moves the parameters as one bsp step
// on the average gradient would:
//   weight decay is applied as wd / N per push;
//   sgd with momentum (roundMomentum): the momentum buffer advances once per round, as in bsp,
//     and its contribution is spread evenly over the round's pushes. With buf frozen during a
//     round, c = 1 in the first round and 1 - dampening after, and d the push's decayed g:
//       p -= lr * (c * d + momentum * buf / N)                     (plain)
//       p -= lr * ((1 + momentum * c) * d + momentum^2 * buf / N)  (nesterov)
//     and after every N-th push: buf = momentum * buf + c * (sum of the round's d). N pushes
//     computed on the same parameters give exactly the bsp step. Without roundMomentum, sgd
//     applies torch's momentum on every push (a buffer that decays N times per round, which
//     asynchrony's own implicit momentum then upsets: see docs/parameter-server.md);
//   adam, adamw: the step size is lr / N (Adam's update does not shrink with g / N).
//
// State (momentum buffer and round sum; m, v and t) lives in the optimizer object, one per
// slice, and can be saved and restored for server checkpoints.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace chorus::ps {

struct OptimizerOptions {
  std::string name = "sgd";  // sgd | adam | adamw
  double momentum = 0.0;     // sgd
  double dampening = 0.0;    // sgd
  bool nesterov = false;     // sgd; needs momentum > 0
  double weightDecay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adam, adamw
  int pushesPerRound = 1;    // N >= 1: asp/ssp apply each of N workers' pushes (see above)
  bool roundMomentum = true; // sgd with pushesPerRound > 1: momentum per round, not per push
};

class ServerOptimizer {
 public:
  virtual ~ServerOptimizer() = default;
  // One update of `param` by `grad` (same length as the slice) at learning rate lr.
  // Throws InvalidArgument if the lengths differ from the slice's numel.
  virtual void step(std::span<float> param, std::span<const float> grad, double lr) = 0;
  // The state as named float vectors plus the step count, for checkpoints; restore() takes
  // what save() gave (throws InvalidArgument on a size or name mismatch).
  struct State {
    int64_t steps = 0;
    std::vector<std::string> names;
    std::vector<std::vector<float>> buffers;
  };
  virtual State save() const = 0;
  virtual void restore(const State& state) = 0;
};

// Throws InvalidArgument for an unknown name, a negative numel, or out-of-range options
// (nesterov without momentum or with dampening != 0, as torch, betas outside [0, 1), eps <= 0,
// negative weight decay or momentum, pushesPerRound < 1).
std::unique_ptr<ServerOptimizer> makeServerOptimizer(const OptimizerOptions& opts, int64_t numel);

}  // namespace chorus::ps
