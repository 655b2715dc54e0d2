// What each layer of a sequence costs, measured: the input to a balanced pipeline partition
// by time (balancedPartition in layerwise.h minimizes the slowest stage's summed cost, the
// dynamic program over contiguous ranges that PipeDream's planner uses).
//
//   LayerProfile p = profileLayers(numLayers, build, sampleInput);
//   std::vector<int> counts = balancedPartition(p.costs(), stages);
//
// The times are this process's: ranks that partition by them must use one rank's profile
// (broadcast it), or they may disagree on the split.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace chorus::parallel {

struct LayerProfile {
  std::vector<double> seconds;       // per layer: fastest forward + backward time
  std::vector<int64_t> outputBytes;  // per layer: the bytes of its output for the sample (what
                                     // a stage boundary after it sends, and what it keeps)
  // The times in microseconds (each at least 1), as balancedPartition's costs.
  std::vector<int64_t> costs() const;
};

// Builds the layers one at a time with build(i) (each dropped before the next is built),
// feeds each the previous layer's output (the first gets `sample`), and times forward plus
// backward (from a gradient of ones on a floating-point output) `repeats` times after one
// warm-up. It sweeps the whole sequence `rounds` times (build(i) is called once per round), so
// that a burst of interference on a shared machine, which lasts longer than one layer's passes,
// rarely covers every pass of a layer; the fastest pass counts (interference only adds time).
// Layers of the same kind (module name, parameter shapes, input shape and type) cost the same,
// so each gets the fastest time of its kind: identical transformer blocks then measure exactly
// equal, and noise cannot make an uneven split of them look faster.
// With `lastLoss`, the last layer's time also holds the loss the last stage computes from its
// output, and its backward starts there (the last stage runs both); it is never pooled with
// another layer. Layers run in training mode; gradients they accumulate are discarded with them.
// Throws InvalidArgument for repeats or rounds < 1, a layer that returns no tensor, or a lastLoss
// that is not a scalar.
LayerProfile profileLayers(size_t numLayers, const std::function<torch::nn::AnyModule(size_t)>& build,
                           const torch::Tensor& sample, int repeats = 5,
                           const std::function<torch::Tensor(const torch::Tensor&)>& lastLoss = {}, int rounds = 3);

}  // namespace chorus::parallel
