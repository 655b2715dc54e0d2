// Server-side sgd, adam and adamw over one slice (formulas in optimizer.h).
//
// Parameters and state are float, like torch's float32 tensors; each element's update is
// computed in double from them and rounded once when stored, so the result is the exact
// formula rounded to float (torch's float kernels round after every operation, which differs
// by a few ulps at most).
#include "chorus/ps/optimizer.h"

#include <cmath>

#include "chorus/common/error.h"

namespace chorus::ps {
namespace {

class Base : public ServerOptimizer {
 public:
  Base(const char* name, int64_t numel, std::vector<std::string> bufferNames)
      : name_(name), numel_(numel), names_(std::move(bufferNames)),
        buffers_(names_.size(), std::vector<float>(numel, 0.0f)) {}

  State save() const override { return State{steps_, names_, buffers_}; }

  void restore(const State& state) override {
    if (state.steps < 0) {
      throw InvalidArgument(str(name_, " restore: negative step count ", state.steps));
    }
    if (state.names != names_ || state.buffers.size() != names_.size()) {
      throw InvalidArgument(str(name_, " restore: the state holds ", state.names.size(), " names and ",
                                state.buffers.size(), " buffers, expected ", names_.size(),
                                " (", joined(), "); restore a state saved by the same optimizer"));
    }
    for (size_t i = 0; i < names_.size(); ++i) {
      if (static_cast<int64_t>(state.buffers[i].size()) != numel_) {
        throw InvalidArgument(str(name_, " restore: buffer '", names_[i], "' has ",
                                  state.buffers[i].size(), " elements, the slice has ", numel_));
      }
    }
    steps_ = state.steps;
    buffers_ = state.buffers;
  }

 protected:
  void checkLengths(std::span<float> param, std::span<const float> grad) const {
    if (static_cast<int64_t>(param.size()) != numel_ || static_cast<int64_t>(grad.size()) != numel_) {
      throw InvalidArgument(str(name_, " step: param has ", param.size(), " and grad ", grad.size(),
                                " elements, the slice has ", numel_));
    }
  }

  std::string joined() const {
    std::string s;
    for (const std::string& n : names_) s += (s.empty() ? "" : ", ") + n;
    return s;
  }

  const char* name_;
  int64_t numel_;
  int64_t steps_ = 0;
  std::vector<std::string> names_;
  std::vector<std::vector<float>> buffers_;
};

class Sgd : public Base {
 public:
  Sgd(const OptimizerOptions& o, int64_t numel)
      : Base("sgd", numel, bufferNames(o)), o_(o),
        perRound_(o.momentum > 0 && o.pushesPerRound > 1 && o.roundMomentum) {}

  void step(std::span<float> param, std::span<const float> grad, double lr) override {
    checkLengths(param, grad);
    if (perRound_) {
      roundStep(param, grad, lr);
      return;
    }
    const bool first = steps_ == 0;
    const double wd = o_.weightDecay / o_.pushesPerRound;
    float* buf = o_.momentum > 0 ? buffers_[0].data() : nullptr;
    for (size_t i = 0; i < param.size(); ++i) {
      double d = grad[i] + wd * param[i];
      if (buf) {
        const double b = first ? d : o_.momentum * buf[i] + (1 - o_.dampening) * d;
        buf[i] = static_cast<float>(b);
        d = o_.nesterov ? d + o_.momentum * b : b;
      }
      param[i] = static_cast<float>(param[i] - lr * d);
    }
    ++steps_;
  }

 private:
  static std::vector<std::string> bufferNames(const OptimizerOptions& o) {
    if (o.momentum <= 0) return {};
    if (o.pushesPerRound > 1 && o.roundMomentum) return {"momentum_buffer", "round_sum"};
    return {"momentum_buffer"};
  }

  // Momentum per round of pushesPerRound pushes (optimizer.h).
  void roundStep(std::span<float> param, std::span<const float> grad, double lr) {
    const int n = o_.pushesPerRound;
    const double m = o_.momentum, wd = o_.weightDecay / n;
    const double c = steps_ < n ? 1.0 : 1.0 - o_.dampening;  // torch's first step takes d undamped
    const double dCoef = o_.nesterov ? 1 + m * c : c;
    const double bCoef = (o_.nesterov ? m * m : m) / n;
    float* buf = buffers_[0].data();
    float* sum = buffers_[1].data();
    for (size_t i = 0; i < param.size(); ++i) {
      const double d = grad[i] + wd * param[i];
      sum[i] = static_cast<float>(sum[i] + d);
      param[i] = static_cast<float>(param[i] - lr * (dCoef * d + bCoef * buf[i]));
    }
    ++steps_;
    if (steps_ % n == 0) {
      for (size_t i = 0; i < param.size(); ++i) {
        buf[i] = static_cast<float>(m * buf[i] + c * sum[i]);
        sum[i] = 0.0f;
      }
    }
  }

  OptimizerOptions o_;
  const bool perRound_;
};

// adam and adamw differ only in where weight decay enters: the gradient (adam) or the
// parameter itself, decoupled (adamw).
class Adam : public Base {
 public:
  Adam(const OptimizerOptions& o, int64_t numel, bool decoupled)
      : Base(decoupled ? "adamw" : "adam", numel, {"exp_avg", "exp_avg_sq"}), o_(o),
        decoupled_(decoupled) {}

  void step(std::span<float> param, std::span<const float> grad, double lr) override {
    checkLengths(param, grad);
    ++steps_;
    const double b1 = o_.beta1, b2 = o_.beta2, t = static_cast<double>(steps_);
    const double share = 1.0 / o_.pushesPerRound;  // asp/ssp: one push is 1/N of a round
    const double stepSize = share * lr / (1 - std::pow(b1, t));
    const double bc2Sqrt = std::sqrt(1 - std::pow(b2, t));
    const double decay = decoupled_ ? 1 - share * lr * o_.weightDecay : 1.0;
    const double wd = share * o_.weightDecay;
    float* m = buffers_[0].data();
    float* v = buffers_[1].data();
    for (size_t i = 0; i < param.size(); ++i) {
      double p = param[i] * decay;
      const double g = decoupled_ ? grad[i] : grad[i] + wd * param[i];
      const double mi = b1 * m[i] + (1 - b1) * g;
      const double vi = b2 * v[i] + (1 - b2) * g * g;
      m[i] = static_cast<float>(mi);
      v[i] = static_cast<float>(vi);
      p -= stepSize * mi / (std::sqrt(vi) / bc2Sqrt + o_.eps);
      param[i] = static_cast<float>(p);
    }
  }

 private:
  OptimizerOptions o_;
  bool decoupled_;
};

}  // namespace

std::unique_ptr<ServerOptimizer> makeServerOptimizer(const OptimizerOptions& o, int64_t numel) {
  auto bad = [&](const std::string& what) {
    return InvalidArgument(str("optimizer '", o.name, "': ", what));
  };
  if (numel < 0) throw bad(str("slice numel ", numel, " is negative"));
  if (o.weightDecay < 0) throw bad(str("weight decay ", o.weightDecay, " must be >= 0"));
  if (o.pushesPerRound < 1) throw bad(str("pushesPerRound ", o.pushesPerRound, " must be >= 1"));
  if (o.name == "sgd") {
    if (o.momentum < 0) throw bad(str("momentum ", o.momentum, " must be >= 0"));
    if (o.nesterov && (o.momentum <= 0 || o.dampening != 0)) {
      throw bad(str("nesterov needs momentum > 0 and dampening 0 (got momentum ", o.momentum,
                    ", dampening ", o.dampening, ")"));
    }
    return std::make_unique<Sgd>(o, numel);
  }
  if (o.name == "adam" || o.name == "adamw") {
    if (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1)) {
      throw bad(str("betas (", o.beta1, ", ", o.beta2, ") must lie in [0, 1)"));
    }
    if (!(o.eps > 0)) throw bad(str("eps ", o.eps, " must be > 0"));
    return std::make_unique<Adam>(o, numel, o.name == "adamw");
  }
  throw InvalidArgument(str("unknown optimizer '", o.name, "'; choose sgd, adam or adamw"));
}

}  // namespace chorus::ps
