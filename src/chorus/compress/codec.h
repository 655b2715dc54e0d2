// Gradient compression codecs behind one interface, usable by DDP (through a CommHook), the
// parameter server and pipeline stages alike: a codec turns this rank's flat gradient into a
// wire message (keeping what it did not send as state, for error feedback), and adds a
// decoded message into a dense buffer. The codecs are torch-free: they read a span of float32
// and add into one (parallel/compress_adapter.h views a CPU tensor as such a span).
//
// Contract every codec keeps:
// - encode() reads `grad` (flat float32) and does not modify it; it updates `state` so that,
//   for error-feedback codecs, after the call
//       decoded(message) + state.buffers["residual"] == grad + residual_before
//   (exactly for the lossless parts: what is sent is taken out of the residual bit for bit).
// - decodeAdd() adds the message's values into `out` (flat float32 with the encoded numel);
//   messages from several ranks are combined by calling it once per message.
// - Messages are self-describing (numel and parameters in a small header), so a receiver
//   needs only the codec, not the sender's state.
// - Randomness (random-k, stochastic rounding) comes from state.rng, seeded by the caller, so
//   runs are reproducible and resumable.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace chorus::compress {

// What a codec keeps for one gradient tensor between steps. Everything in it but `segments`
// is saved in checkpoints (the trainer stores `buffers` and `scalars` by name).
struct CodecState {
  // Where the parameter tensors packed into the flat gradient end (ascending, the last equal
  // to its numel), set by the caller before encode(); empty when the gradient is one tensor.
  // Layer-wise codecs (top-k, DGC) pick each tensor's share within its own range.
  std::vector<int64_t> segments;
  std::map<std::string, std::vector<float>> buffers;  // "residual", "momentum", ...
  std::map<std::string, double> scalars;              // e.g. "step"
  uint64_t rngState = 0x9E3779B97F4A7C15ull;          // splitmix64 state for the codec's randomness
  // The next pseudo-random 64-bit value (splitmix64), advancing rngState.
  uint64_t nextRandom();
  // A uniform float in [0, 1).
  float nextUniform() { return static_cast<float>(nextRandom() >> 40) * (1.0f / 16777216.0f); }
  // The buffer `name` of `numel` entries: created (or, when its size differs, replaced) as
  // zeros. The reference stays valid until `buffers` loses or adds that name.
  std::vector<float>& buffer(const std::string& name, size_t numel);
  // buffer("residual", numel).
  std::vector<float>& residual(size_t numel) { return buffer("residual", numel); }
};

using Message = std::vector<uint8_t>;

class Codec {
 public:
  virtual ~Codec() = default;
  virtual std::string name() const = 0;
  // Throws InvalidArgument for a gradient of 2^31 or more entries (sparse codecs).
  virtual Message encode(std::span<const float> grad, CodecState& state) = 0;
  // Throws InvalidArgument on a malformed message or an `out` whose size differs from the
  // message's numel.
  virtual void decodeAdd(const Message& msg, std::span<float> out) const = 0;
  // For sparse messages: the number of (index, value) pairs the message holds; -1 if dense.
  virtual int64_t sparseCount(const Message& /*msg*/) const { return -1; }
};

}  // namespace chorus::compress
