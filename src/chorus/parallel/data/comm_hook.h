// Communication hooks: what DDP does with one bucket of gradients. A hook takes the bucket's
// flat gradient (this rank's sum of local gradients), starts its reduction across the
// group, and returns a handle whose wait() leaves the AVERAGE over the group's ranks back in
// the same buffer. The compression codecs (top-k, PowerSGD, ...) plug in here.
//
// start() runs on the autograd thread inside the backward pass, so it should only launch
// work (async collectives) and return; wait() runs once the backward pass is over, in bucket
// order. Every rank must call the same collectives in the same order.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "chorus/comm/group.h"

namespace chorus::parallel {

// One bucket as a hook sees it.
struct GradBucket {
  size_t index = 0;       // 0 is the first bucket reduced (the model's last layers)
  torch::Tensor buffer;   // flat, contiguous; the parameters' .grad() are views into it
  std::vector<std::string> names;  // the parameters it holds, in buffer order
  std::vector<std::vector<int64_t>> shapes;  // their shapes, in the same order
  std::vector<int64_t> offsets;              // where each starts in buffer (elements)
  bool isLast = false;
};

// A started reduction.
class HookWork {
 public:
  virtual ~HookWork() = default;
  // Blocks until the averaged gradient is in bucket.buffer; rethrows the collective's error.
  virtual void wait() = 0;
  // The collectives it ran (for the trace and the overlap figure); may be empty.
  virtual std::vector<comm::WorkPtr> works() const = 0;
};

class CommHook {
 public:
  virtual ~CommHook() = default;
  virtual std::unique_ptr<HookWork> start(comm::ProcessGroup& group, GradBucket& bucket) = 0;
  virtual std::string name() const = 0;
};

// The default: an async all-reduce (average) of the buffer in place, with the group's
// algorithm or `algo`.
std::shared_ptr<CommHook> allreduceHook(comm::AllreduceAlgo algo = comm::AllreduceAlgo::kAuto);

// Casts the bucket to float16 or bfloat16, all-reduces the 16-bit copy (half the bytes), and
// casts the average back into the buffer. float16 is scaled by 1/world before the sum so the
// sum stays in range; an overflow shows up as inf, which the fp16 loss scaler catches.
std::shared_ptr<CommHook> castHook(at::ScalarType wireType, comm::AllreduceAlgo algo = comm::AllreduceAlgo::kAuto);

}  // namespace chorus::parallel
