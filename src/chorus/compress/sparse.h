// Sparsifying codecs: each step send only some entries of (gradient + residual) as (index,
// value) pairs and keep the rest as the residual for later steps (error feedback). Random-k's
// residual decays each step (RandomKOptions below).
//
//   acc      = grad + residual              (computed in place in state.buffers["residual"])
//   idx      = select(acc)                  (top-k, sampled top-k, random-k or threshold)
//   message  = header | indices (Elias-Fano) | acc[idx][k] (float32)
//   residual = acc with acc[idx] set to 0   (so decoded(message) + residual == acc, bit for bit)
//
// Wire format (little-endian), sparseMessageBytes(n, k) bytes for k pairs out of n entries:
//
//   offset 0   uint8   kSparseMagic
//          1   uint8   SparseKind of the sender (any sparse kind decodes the same way)
//          2   uint8   l, the low bits per index: floor(log2(n / k)) (0 when k == 0 or k >= n)
//          3   uint8   0 (reserved)
//          4   uint32  n, the numel of the dense gradient
//          8   uint32  k, the number of pairs
//         12   low part:  k codes of l bits (index & (2^l - 1)), LSB first, ceil(k l / 8) bytes
//              high part: a bit array of k + ((n - 1) >> l) + 1 bits (none when k == 0);
//                         index i (of the sorted ones) sets bit (index_i >> l) + i,
//                         ceil(bits / 8) bytes
//              (padding bits at the end of either part are 0; a decoder rejects others)
//              float32 values[k], in index order
//
// The indices are ascending and distinct, so the Elias-Fano code above stores them in at most
// 2 + ceil(log2(n / k)) bits each instead of 32: about 12 bits at 99.9% sparsity, 9 at 99%.
// A gradient may hold at most 2^31 - 1 entries; encode() throws InvalidArgument beyond that.
// Codecs hold only their options (no per-tensor state), so one codec object may encode many
// tensors, each with its own CodecState; encode() on different states may run concurrently,
// decodeAdd() is const and thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "chorus/compress/codec.h"
#include "chorus/compress/sparse_format.h"  // kSparseMagic, SparseKind, sparseMessageBytes

namespace chorus::compress {

// How many entries a top-k / random-k codec sends out of numel.
struct SparseOptions {
  double ratio = 0.01;       // fraction of the entries to send, in (0, 1]
  int64_t k = 0;             // when > 0, send this many entries instead of ratio * numel
  double sampleRatio = 0.01;  // topk_sampled: fraction of the entries sampled for the threshold
  int64_t minSample = 256;    // topk_sampled: at least this many samples
  // Pick each parameter tensor's share (ratio of its own entries, at least 1) within its range
  // of CodecState::segments, rather than the top of the whole bucket, where the layers with
  // the largest gradients would crowd out the others. No effect when segments is empty.
  bool layerwise = true;
};

// The number of entries to send for a tensor of numel entries: round(ratio * numel) (or k),
// clamped to [1, numel]; 0 when numel is 0.
int64_t targetCount(const SparseOptions& opts, int64_t numel);

// Throws InvalidArgument naming `codec` unless `grad` has fewer than 2^31 entries.
void checkSparseGrad(std::span<const float> grad, const std::string& codec);

// |x| of every entry, the input of the selection helpers.
std::vector<float> magnitudes(std::span<const float> values);

// Selection helpers, shared with DGC. `magnitude` is flat float32 (|acc|); each returns the
// chosen indices sorted and duplicate-free.
// The k entries of largest magnitude, by std::nth_element. NaN counts as larger than any
// number (as in torch::topk); ties go to the lower index, so the selection is deterministic.
std::vector<int64_t> selectTopK(std::span<const float> magnitude, int64_t k);
// About k entries: those at or above a threshold estimated from a random sample of
// max(minSample, sampleRatio * numel) magnitudes drawn with state's RNG. If more than 2k pass,
// the exact top k of those; if none pass (NaNs), the single largest. Exact top-k when the
// sample would cover the whole tensor.
std::vector<int64_t> selectTopKSampled(std::span<const float> magnitude, int64_t k, const SparseOptions& opts,
                                       CodecState& state);

// Calls pick(slice) for each range of `ends` (see CodecState::segments) on flat `magnitude`,
// and returns the picked indices shifted to the whole tensor, sorted. With `ends` empty, pick
// sees the whole tensor. Throws InvalidArgument unless ends ascend to magnitude.size().
std::vector<int64_t> selectLayerwise(std::span<const float> magnitude, const std::vector<int64_t>& ends,
                                     const std::function<std::vector<int64_t>(std::span<const float>)>& pick);

// A sparse message decoded: indices (ascending), values, the dense numel.
struct SparsePairs {
  SparseKind kind{};
  int64_t numel = 0;
  std::vector<int64_t> indices;
  std::vector<float> values;
};
// Throws InvalidArgument on a malformed message (size, magic, kind, or indices that are out of
// range or not ascending).
SparsePairs unpackSparse(const Message& msg);

// Packs a sparse message; `indices` (distinct, in [0, numel), ascending) and `values` have
// the same length.
Message packSparse(SparseKind kind, int64_t numel, std::span<const int64_t> indices, std::span<const float> values);

// What every sparse codec shares: the error-feedback step around select(), and decoding.
class SparseCodec : public Codec {
 public:
  Message encode(std::span<const float> grad, CodecState& state) override;
  // out[idx] += val for every pair; throws InvalidArgument on a malformed message or an `out`
  // whose size differs from the message's numel.
  void decodeAdd(const Message& msg, std::span<float> out) const override;
  int64_t sparseCount(const Message& msg) const override;

 protected:
  // The entries of `acc` to send, as sorted distinct indices.
  virtual std::vector<int64_t> select(std::span<const float> acc, CodecState& state) = 0;
  virtual SparseKind kind() const = 0;
};

// Exact top-k of |grad + residual|.
class TopKCodec : public SparseCodec {
 public:
  explicit TopKCodec(SparseOptions opts);
  std::string name() const override { return "topk"; }

 protected:
  std::vector<int64_t> select(std::span<const float> acc, CodecState& state) override;
  SparseKind kind() const override { return SparseKind::kTopK; }

 private:
  SparseOptions opts_;
};

// Top-k with a threshold estimated from a sample (see selectTopKSampled): cheaper than an exact
// top-k on large tensors; sends between 1 and 2k entries, about k on most gradients.
class TopKSampledCodec : public SparseCodec {
 public:
  explicit TopKSampledCodec(SparseOptions opts);
  std::string name() const override { return "topk_sampled"; }

 protected:
  std::vector<int64_t> select(std::span<const float> acc, CodecState& state) override;
  SparseKind kind() const override { return SparseKind::kTopKSampled; }

 private:
  SparseOptions opts_;
};

// What random-k does with the entries it does not send (docs/compression.md, "Random-k").
// With p = k / n, each entry is drawn with probability p per step:
//   error feedback (the default)  sends (g + residual)[idx] unscaled and keeps the rest, after
//       multiplying the residual by residualDecay each step. An entry waits 1 / p steps on
//       average for its draw; with decay d it arrives carrying at most 1 / (1 - d) steps of its
//       gradient (10 at the default 0.9). With d = 1 (plain error feedback) it carries all of
//       them, and these delayed bursts, amplified by optimizer momentum, diverge at small ratios
//       (measured: ratio 0.01, sgd momentum 0.9).
//   no error feedback  the unbiased estimator g[idx] * n / k and no residual: E[sent] = g, but
//       E|sent|^2 = |g|^2 / p, so it needs a learning rate about sqrt(p) times dense's.
struct RandomKOptions {
  bool errorFeedback = true;
  double residualDecay = 0.9;  // in [0, 1]; 1: plain error feedback, 0: no memory
};

// k distinct indices drawn uniformly with state's RNG (Floyd's sampling), sent as `rk` says.
// Without error feedback the state holds only the RNG. Throws InvalidArgument for a decay
// outside [0, 1].
class RandomKCodec : public SparseCodec {
 public:
  explicit RandomKCodec(SparseOptions opts, RandomKOptions rk = {});
  std::string name() const override { return "randomk"; }
  Message encode(std::span<const float> grad, CodecState& state) override;
  const RandomKOptions& options() const { return rk_; }

 protected:
  std::vector<int64_t> select(std::span<const float> acc, CodecState& state) override;
  SparseKind kind() const override { return SparseKind::kRandomK; }

 private:
  SparseOptions opts_;
  RandomKOptions rk_;
};

// Every entry with |grad + residual| >= tau (tau >= 0); the count varies from step to step.
class ThresholdCodec : public SparseCodec {
 public:
  explicit ThresholdCodec(double tau);
  std::string name() const override { return "threshold"; }

 protected:
  std::vector<int64_t> select(std::span<const float> acc, CodecState& state) override;
  SparseKind kind() const override { return SparseKind::kThreshold; }

 private:
  double tau_;
};


}  // namespace chorus::compress
