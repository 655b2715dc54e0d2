// Layer profiling (see profile.h).
#include "chorus/parallel/pipeline/profile.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "chorus/common/error.h"

namespace chorus::parallel {

std::vector<int64_t> LayerProfile::costs() const {
  std::vector<int64_t> c;
  c.reserve(seconds.size());
  for (double s : seconds) c.push_back(std::max<int64_t>(1, std::llround(s * 1e6)));
  return c;
}

LayerProfile profileLayers(size_t numLayers, const std::function<torch::nn::AnyModule(size_t)>& build,
                           const torch::Tensor& sample, int repeats,
                           const std::function<torch::Tensor(const torch::Tensor&)>& lastLoss) {
  if (repeats < 1) throw InvalidArgument(chorus::str("profileLayers: repeats ", repeats, " must be at least 1"));
  if (!sample.defined()) throw InvalidArgument("profileLayers: the sample input is undefined");
  using Clock = std::chrono::steady_clock;
  LayerProfile p;
  torch::Tensor x = sample;
  for (size_t i = 0; i < numLayers; ++i) {
    torch::nn::AnyModule layer = build(i);
    layer.ptr()->train();
    torch::Tensor out;
    std::vector<double> times;
    for (int r = 0; r < repeats + 1; ++r) {
      torch::Tensor in = x.is_floating_point() ? x.detach().requires_grad_(true) : x;
      const Clock::time_point t0 = Clock::now();
      out = layer.forward(in);
      if (!out.defined()) throw InvalidArgument(chorus::str("profileLayers: layer ", i, " returned no tensor"));
      if (lastLoss && i + 1 == numLayers) {
        const torch::Tensor loss = lastLoss(out);
        if (!loss.defined() || loss.numel() != 1)
          throw InvalidArgument("profileLayers: lastLoss must return a scalar tensor");
        if (loss.requires_grad()) loss.backward();
      } else if (out.is_floating_point() && out.requires_grad()) {
        out.backward(torch::ones_like(out));
      }
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      if (r > 0) times.push_back(s);  // the first pass warms up (allocations, lazy init)
    }
    // The fastest pass: interference (another process, an interrupt) only ever adds time.
    p.seconds.push_back(*std::min_element(times.begin(), times.end()));
    p.outputBytes.push_back(static_cast<int64_t>(out.numel()) * static_cast<int64_t>(out.element_size()));
    x = out.detach();
  }
  return p;
}

}  // namespace chorus::parallel
