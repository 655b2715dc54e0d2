// The sparse codecs' wire format (laid out in sparse.h): the Elias-Fano index code and the
// float32 values, encoded and decoded on plain arrays. Torch-free, so the decoder that runs on
// bytes from other ranks can be fuzzed on its own (fuzz/sparse_fuzz.cc); sparse.cc wraps these
// functions in tensors. All functions are pure and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace chorus::compress {

inline constexpr uint8_t kSparseMagic = 0x5C;
inline constexpr size_t kSparseHeaderBytes = 12;

enum class SparseKind : uint8_t { kTopK = 1, kTopKSampled = 2, kRandomK = 3, kThreshold = 4, kDgc = 5 };

// The size of a sparse message with k pairs out of numel entries.
size_t sparseMessageBytes(int64_t numel, int64_t k);

// A sparse message's header, checked against the message's size.
struct SparseHeader {
  SparseKind kind{};
  int64_t numel = 0;  // the dense gradient's entries, < 2^31
  int64_t k = 0;      // the pairs that follow, <= numel
  int lowBits = 0;    // l, the low bits per index
};

// Reads and checks the header of `msg`: magic, kind, reserved byte, k <= numel < 2^31, l as
// the format derives it from numel and k, and msg.size() == sparseMessageBytes(numel, k).
// Throws InvalidArgument naming what is wrong.
SparseHeader parseSparseHeader(std::span<const uint8_t> msg);

// Decodes the k pairs of `msg` (whose header parseSparseHeader returned as `h`) into
// indices[0, k) (ascending, distinct, in [0, numel)) and values[0, k). Throws InvalidArgument
// when the index code is malformed (marks out of place, indices out of order or range, or
// padding bits set); the outputs hold garbage then.
void decodeSparsePairs(std::span<const uint8_t> msg, const SparseHeader& h, int64_t* indices, float* values);

// Encodes k pairs (indices ascending, distinct, in [0, numel); numel < 2^31) into a message of
// sparseMessageBytes(numel, k) bytes. Throws chorus::Error (a failed check) otherwise.
std::vector<uint8_t> encodeSparsePairs(SparseKind kind, int64_t numel, const int64_t* indices, const float* values,
                                       int64_t k);

}  // namespace chorus::compress
