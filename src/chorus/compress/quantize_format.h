// The quantizing codecs' wire format (laid out in quantize.h) on plain arrays: the decoder,
// and the few expressions that encoder and decoder share so that they agree bit for bit.
// Torch-free, so the decoder, which runs on bytes from other ranks, can be fuzzed on its own
// (fuzz/quantize_fuzz.cc); quantize.cc wraps it in tensors. Pure functions, thread-safe.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

namespace chorus::compress {

// Kind byte of each quantizer's messages (0x20-0x2F are reserved for this file).
enum class QuantKind : uint8_t { kFloat16 = 0x20, kBFloat16 = 0x21, kQsgd = 0x22, kTernGrad = 0x23, kSign = 0x24, kInt8 = 0x25 };

// Size of the common header (kind + numel) in bytes.
inline constexpr size_t kQuantHeaderBytes = 9;

// The codec's name for a kind ("fp16", "qsgd", ...), as messages name it; "unknown" otherwise.
const char* quantKindName(QuantKind kind);

// Adds the values of `msg`, a message of codec `kind`, into out[0, n). Throws InvalidArgument
// naming the codec when the message is another codec's, holds another number of elements
// than n, or is malformed (truncated, trailing bytes, a parameter or a code out of range);
// `out` is then left untouched.
void quantizedDecodeAdd(QuantKind kind, std::span<const uint8_t> msg, float* out, int64_t n);

// ---- Shared by encoder and decoder ---------------------------------------------------------

// The chunks of n elements, `size` each (the last may be shorter); size 0 is one chunk.
struct QuantChunks {
  int64_t n, size;
  QuantChunks(int64_t numel, uint32_t chunk) : n(numel), size(chunk == 0 ? std::max<int64_t>(numel, 1) : chunk) {}
  int64_t count() const { return (n + size - 1) / size; }
  int64_t begin(int64_t c) const { return c * size; }
  int64_t end(int64_t c) const { return std::min(n, (c + 1) * size); }
};

// QSGD: bits for a level in 0..s plus one sign bit; s must be in 1..127 (checkQsgdLevels
// throws InvalidArgument otherwise).
int qsgdBits(int64_t s);
void checkQsgdLevels(int64_t s);

// TernGrad's 2-bit codes (3 is invalid).
inline constexpr uint8_t kTernZero = 0, kTernPlus = 1, kTernMinus = 2;

// The value a scaled code decodes to.
inline float signedValue(bool negative, float magnitude) { return negative ? -magnitude : magnitude; }

// int8: the step between codes of a chunk with range [lo, hi], computed in double so that a
// range wider than FLT_MAX still gives a finite step; and a code's value.
inline float int8Step(float lo, float hi) {
  return static_cast<float>((static_cast<double>(hi) - static_cast<double>(lo)) / 255.0);
}
inline float int8Value(float lo, float step, uint8_t code) { return lo + static_cast<float>(code) * step; }

}  // namespace chorus::compress
