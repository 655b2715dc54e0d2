// Sparsifying codecs: each step send only some entries of (gradient + residual) as (index,
// value) pairs and keep the rest as the residual for later steps (error feedback).
//
//   acc      = grad + residual              (computed in place in state.tensors["residual"])
//   idx      = select(acc)                  (top-k, sampled top-k, random-k or threshold)
//   message  = header | idx[k] (int32) | acc[idx][k] (float32)
//   residual = acc with acc[idx] set to 0   (so decoded(message) + residual == acc, bit for bit)
//
// Wire format (host byte order, little-endian on every platform we build for), 20 + 8k bytes:
//
//   offset 0   uint8   kSparseMagic
//          1   uint8   SparseKind of the sender (any sparse kind decodes the same way)
//          2   uint16  0 (reserved)
//          4   int64   numel of the dense gradient
//         12   int64   k, the number of pairs
//         20   int32   indices[k], ascending and distinct
//     20 + 4k  float32 values[k]
//
// Indices are int32, so a gradient may hold at most 2^31 - 1 entries; encode() throws
// InvalidArgument beyond that. Codecs hold only their options (no per-tensor state), so one
// codec object may encode many tensors, each with its own CodecState; encode() on different
// states may run concurrently, decodeAdd() is const and thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "chorus/compress/codec.h"

namespace chorus::compress {

inline constexpr uint8_t kSparseMagic = 0x5C;
inline constexpr size_t kSparseHeaderBytes = 20;

enum class SparseKind : uint8_t { kTopK = 1, kTopKSampled = 2, kRandomK = 3, kThreshold = 4, kDgc = 5 };

// How many entries a top-k / random-k codec sends out of numel.
struct SparseOptions {
  double ratio = 0.01;       // fraction of the entries to send, in (0, 1]
  int64_t k = 0;             // when > 0, send this many entries instead of ratio * numel
  double sampleRatio = 0.01;  // topk_sampled: fraction of the entries sampled for the threshold
  int64_t minSample = 256;    // topk_sampled: at least this many samples
};

// The number of entries to send for a tensor of numel entries: round(ratio * numel) (or k),
// clamped to [1, numel]; 0 when numel is 0.
int64_t targetCount(const SparseOptions& opts, int64_t numel);

// A flat view of `grad` after checking that it is a defined, contiguous float32 CPU tensor of
// fewer than 2^31 entries; throws InvalidArgument naming `codec` otherwise.
torch::Tensor checkedFlatGrad(const torch::Tensor& grad, const std::string& codec);

// Selection helpers, shared with DGC. `magnitude` is flat float32 (|acc|); each returns the
// chosen indices as a sorted, duplicate-free int64 tensor.
// The k entries of largest magnitude (ties broken by torch::topk).
torch::Tensor selectTopK(const torch::Tensor& magnitude, int64_t k);
// About k entries: those at or above a threshold estimated from a random sample of
// max(minSample, sampleRatio * numel) magnitudes drawn with state's RNG. If more than 2k pass,
// the exact top k of those; if none pass (NaNs), the single largest. Exact top-k when the
// sample would cover the whole tensor.
torch::Tensor selectTopKSampled(const torch::Tensor& magnitude, int64_t k, const SparseOptions& opts,
                                CodecState& state);

// Packs a sparse message; `indices` (int64, distinct, in [0, numel)) and `values` (float32)
// have the same length.
Message packSparse(SparseKind kind, int64_t numel, const torch::Tensor& indices, const torch::Tensor& values);

// What every sparse codec shares: the error-feedback step around select(), and decoding.
class SparseCodec : public Codec {
 public:
  Message encode(const torch::Tensor& grad, CodecState& state) override;
  // out[idx] += val for every pair; throws InvalidArgument on a malformed message or an `out`
  // whose numel differs from the message's.
  void decodeAdd(const Message& msg, torch::Tensor& out) const override;
  int64_t sparseCount(const Message& msg) const override;

 protected:
  // The entries of `acc` (flat float32) to send, as sorted distinct int64 indices.
  virtual torch::Tensor select(const torch::Tensor& acc, CodecState& state) = 0;
  virtual SparseKind kind() const = 0;
};

// Exact top-k of |grad + residual|.
class TopKCodec : public SparseCodec {
 public:
  explicit TopKCodec(SparseOptions opts);
  std::string name() const override { return "topk"; }

 protected:
  torch::Tensor select(const torch::Tensor& acc, CodecState& state) override;
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
  torch::Tensor select(const torch::Tensor& acc, CodecState& state) override;
  SparseKind kind() const override { return SparseKind::kTopKSampled; }

 private:
  SparseOptions opts_;
};

// k distinct indices drawn uniformly with state's RNG (Floyd's sampling). Values are sent
// unscaled (not multiplied by numel / k): the residual keeps what was not sent, so error
// feedback already makes the sum over steps unbiased, and scaling would inflate the variance.
class RandomKCodec : public SparseCodec {
 public:
  explicit RandomKCodec(SparseOptions opts);
  std::string name() const override { return "randomk"; }

 protected:
  torch::Tensor select(const torch::Tensor& acc, CodecState& state) override;
  SparseKind kind() const override { return SparseKind::kRandomK; }

 private:
  SparseOptions opts_;
};

// Every entry with |grad + residual| >= tau (tau >= 0); the count varies from step to step.
class ThresholdCodec : public SparseCodec {
 public:
  explicit ThresholdCodec(double tau);
  std::string name() const override { return "threshold"; }

 protected:
  torch::Tensor select(const torch::Tensor& acc, CodecState& state) override;
  SparseKind kind() const override { return SparseKind::kThreshold; }

 private:
  double tau_;
};

// The codec for a config's method name: "topk", "topk_sampled", "randomk" (ratioOrTau is the
// fraction of entries to send, in (0, 1]) or "threshold" (ratioOrTau is tau >= 0). Throws
// ConfigError for an unknown method or a value out of range.
std::unique_ptr<Codec> makeSparse(const std::string& method, double ratioOrTau);

}  // namespace chorus::compress
