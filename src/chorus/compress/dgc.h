// Deep Gradient Compression (Lin et al., "Deep Gradient Compression", ICLR 2018) as a codec:
// top-k sparsification of a locally accumulated *momentum* velocity, so that what is sent is
// already momentum-corrected.
//
// Per encode(), for this rank's gradient g of one tensor (flat, n entries):
//   1. local clipping: when maxNorm > 0, g *= min(1, (maxNorm / sqrt(worldSize)) / ||g||_2)
//      (the norm summed in float64; g scaled in float32)
//   2. momentum correction:  u = m * u + g;   v = v + u
//   3. k = round((1 - sparsity(epoch)) * n), at least 1; idx = top-k of |v| (exact or sampled),
//      per parameter tensor when layerwise and the state has segments
//   4. send v[idx] (the sparse wire format of sparse.h, kind kDgc)
//   5. momentum factor masking: v[idx] = 0 and u[idx] = 0
// State (per tensor, in CodecState::buffers): "momentum" = u and "velocity" = v. The
// velocity is this codec's error-feedback residual; "residual" is not used (not an alias, so a
// checkpoint restores two independent tensors without losing anything). After encode(),
// decoded(message) + velocity == velocity_before + u_new, exactly.
//
// Receiving side: momentum is applied here, before sparsification, so the optimizer that
// applies the combined gradient (sum of the decoded messages / worldSize) must be plain SGD
// *without* momentum (DGC's momentum replaces it). Weight decay, if any, belongs in g before
// encode() (add wd * param to the gradient), as in the paper.
//
// Warm-up: sparsity follows a per-epoch schedule, by default 75%, 93.75%, 98.4375%, 99.6%,
// 99.9% for epochs 0..4 and the last value (99.9%) from then on. The epoch is
// state.scalars["epoch"] when the state has it, else the value last given to setEpoch().
//
// Thread-safety: encode() on different states may run concurrently; setEpoch() may be called
// from another thread (the value is atomic). decodeAdd() is const and thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "chorus/compress/sparse.h"

namespace chorus::compress {

struct DgcOptions {
  double momentum = 0.9;  // m, in [0, 1)
  double maxNorm = 0.0;   // global clipping norm; each rank clips to maxNorm / sqrt(worldSize); 0 = off
  int64_t worldSize = 1;  // ranks that average their gradients (for the clipping threshold)
  // Sparsity (fraction of entries *not* sent) for epochs 0, 1, ...; the last value holds after.
  std::vector<double> sparsitySchedule = {0.75, 0.9375, 0.984375, 0.996, 0.999};
  bool sampledTopK = false;  // pick the top k by a sampled threshold (selectTopKSampled)
  double sampleRatio = 0.01;  // for sampledTopK: fraction of entries sampled
  int64_t minSample = 256;    // for sampledTopK: at least this many samples
  bool layerwise = true;      // k per parameter tensor (CodecState::segments), as in the paper
};

class DgcCodec : public SparseCodec {
 public:
  // Throws InvalidArgument for momentum outside [0, 1), maxNorm < 0, worldSize < 1, or an
  // empty schedule or a sparsity outside [0, 1).
  explicit DgcCodec(DgcOptions opts);
  std::string name() const override { return "dgc"; }
  Message encode(std::span<const float> grad, CodecState& state) override;

  // The epoch used by states without a scalars["epoch"] entry.
  void setEpoch(int64_t epoch) { epoch_.store(epoch); }
  int64_t epoch() const { return epoch_.load(); }
  // The scheduled sparsity for `epoch` (epochs past the schedule use its last value).
  double sparsity(int64_t epoch) const;
  const DgcOptions& options() const { return opts_; }

 protected:
  // Top-k of |velocity| for the state's epoch.
  std::vector<int64_t> select(std::span<const float> velocity, CodecState& state) override;
  SparseKind kind() const override { return SparseKind::kDgc; }

 private:
  int64_t epochOf(const CodecState& state) const;

  DgcOptions opts_;
  std::atomic<int64_t> epoch_{0};
};

}  // namespace chorus::compress
