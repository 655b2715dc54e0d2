// Packing of small unsigned codes (b bits each, 1 <= b <= 8) into bytes and back, for the
// quantizing gradient codecs. Torch-free so it is fast and testable on its own.
//
// Bit order is little-endian: code i occupies stream bits [i*b, (i+1)*b), its lowest bit
// first, and stream bit k is bit (k % 8) of byte k / 8. The last byte is padded with zeros.
// Widths 1, 2, 4 and 8 have fast paths; any other width goes through a 64-bit accumulator.
// All functions are pure (no shared state) and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace chorus::compress {

// Bytes needed for `count` codes of `bits` bits: ceil(count * bits / 8).
// Throws InvalidArgument unless 1 <= bits <= 8.
size_t packedBytes(size_t count, int bits);

// Packs codes[i] (only its low `bits` bits are used; higher bits are ignored) into
// out[0, packedBytes(codes.size(), bits)). Throws InvalidArgument if `bits` is out of range
// or `out` is too small. Bytes of `out` past the packed size are left untouched.
void packBits(std::span<const uint8_t> codes, int bits, std::span<uint8_t> out);

// Unpacks codes.size() codes of `bits` bits from `packed` into `codes` (each < 2^bits).
// Throws InvalidArgument if `bits` is out of range or `packed` is shorter than
// packedBytes(codes.size(), bits).
void unpackBits(std::span<const uint8_t> packed, int bits, std::span<uint8_t> codes);

}  // namespace chorus::compress
