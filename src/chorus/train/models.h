// The models `chorus train` builds from its config: an MLP and a small CNN
// (conv-BN-ReLU-maxpool blocks, then two fully-connected layers).
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "chorus/train/config.h"

namespace chorus::train {

// Input [N, C, H, W] -> logits [N, classes]. Parameters are initialized from torch's global
// generator: seed it (torch::manual_seed) before calling for identical models on all ranks.
// MLP: Flatten, then Linear+ReLU per config.hidden width, then Linear to classes.
// CNN: per config.channels width c: Conv2d(3x3, pad 1, no bias) -> BatchNorm2d -> ReLU ->
// MaxPool2d(2); then Flatten -> Linear(fc) -> ReLU -> Linear(classes).
torch::nn::Sequential makeModel(const ModelConfig& cfg, int64_t channels, int64_t height, int64_t width,
                                int64_t classes);

// Number of trainable parameters (elements).
int64_t parameterCount(torch::nn::Module& m);

}  // namespace chorus::train
