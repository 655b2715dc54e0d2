// Layer profiling (see profile.h).
#include "chorus/parallel/pipeline/profile.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <string>

#include "chorus/common/error.h"

namespace chorus::parallel {

std::vector<int64_t> LayerProfile::costs() const {
  std::vector<int64_t> c;
  c.reserve(seconds.size());
  for (double s : seconds) c.push_back(std::max<int64_t>(1, std::llround(s * 1e6)));
  return c;
}

namespace {

// What makes two layers cost the same: the module's name, its parameters' shapes, and the
// shape and type of the input it gets.
std::string layerKind(const torch::nn::AnyModule& layer, const torch::Tensor& input) {
  std::string k = layer.ptr()->name();
  k += "|in " + std::string(c10::toString(input.scalar_type())) + " " + c10::str(input.sizes());
  for (const auto& p : layer.ptr()->named_parameters()) k += "|" + p.key() + " " + c10::str(p.value().sizes());
  return k;
}

}  // namespace

LayerProfile profileLayers(size_t numLayers, const std::function<torch::nn::AnyModule(size_t)>& build,
                           const torch::Tensor& sample, int repeats,
                           const std::function<torch::Tensor(const torch::Tensor&)>& lastLoss, int rounds) {
  if (repeats < 1) throw InvalidArgument(chorus::str("profileLayers: repeats ", repeats, " must be at least 1"));
  if (rounds < 1) throw InvalidArgument(chorus::str("profileLayers: rounds ", rounds, " must be at least 1"));
  if (!sample.defined()) throw InvalidArgument("profileLayers: the sample input is undefined");
  using Clock = std::chrono::steady_clock;
  LayerProfile p;
  p.seconds.assign(numLayers, std::numeric_limits<double>::infinity());
  p.outputBytes.assign(numLayers, 0);
  std::vector<std::string> kinds(numLayers);
  for (int round = 0; round < rounds; ++round) {
    torch::Tensor x = sample;
    for (size_t i = 0; i < numLayers; ++i) {
      torch::nn::AnyModule layer = build(i);
      layer.ptr()->train();
      const bool withLoss = lastLoss && i + 1 == numLayers;
      if (round == 0) kinds[i] = withLoss ? "" : layerKind(layer, x);
      torch::Tensor out;
      for (int r = 0; r < repeats + 1; ++r) {
        torch::Tensor in = x.is_floating_point() ? x.detach().requires_grad_(true) : x;
        const Clock::time_point t0 = Clock::now();
        out = layer.forward(in);
        if (!out.defined()) throw InvalidArgument(chorus::str("profileLayers: layer ", i, " returned no tensor"));
        if (withLoss) {
          const torch::Tensor loss = lastLoss(out);
          if (!loss.defined() || loss.numel() != 1)
            throw InvalidArgument("profileLayers: lastLoss must return a scalar tensor");
          if (loss.requires_grad()) loss.backward();
        } else if (out.is_floating_point() && out.requires_grad()) {
          out.backward(torch::ones_like(out));
        }
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        // The first pass of each build warms up (allocations, lazy init); the fastest counts.
        if (r > 0) p.seconds[i] = std::min(p.seconds[i], s);
      }
      p.outputBytes[i] = static_cast<int64_t>(out.numel()) * static_cast<int64_t>(out.element_size());
      x = out.detach();
    }
  }
  // Layers of one kind: each gets the kind's fastest time.
  std::map<std::string, double> fastest;
  for (size_t i = 0; i < numLayers; ++i) {
    if (kinds[i].empty()) continue;
    auto [it, fresh] = fastest.emplace(kinds[i], p.seconds[i]);
    if (!fresh) it->second = std::min(it->second, p.seconds[i]);
  }
  for (size_t i = 0; i < numLayers; ++i) {
    if (!kinds[i].empty()) p.seconds[i] = fastest.at(kinds[i]);
  }
  return p;
}

}  // namespace chorus::parallel
