// Test-set evaluation for the training loops: accuracy and mean cross-entropy of a model.
#pragma once

#include <torch/torch.h>

#include "chorus/amp/autocast.h"
#include "chorus/comm/group.h"
#include "chorus/train/datasets.h"

namespace chorus::train {

struct EvalResult {
  double accuracy = 0, loss = 0;
};

// With a group, each rank scores a contiguous slice of the test split and the sums meet in one
// all-reduce (every rank must call it); with nullptr, this process scores all of it. The model
// is put in eval mode for the pass and back in train mode after.
EvalResult evaluate(torch::nn::Sequential& model, const Dataset& test, comm::ProcessGroup* group, amp::Precision prec);

}  // namespace chorus::train
