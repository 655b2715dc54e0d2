// Bit packing for the quantizing codecs (see bitpack.h for the bit order). The fast paths for
// 1, 2 and 4 bits fill one whole byte from 8, 4 or 2 codes; 8 bits is a copy; other widths
// shift codes through a 64-bit accumulator and flush whole bytes as they fill up.
#include "chorus/compress/bitpack.h"

#include <cstring>

#include "chorus/common/error.h"

namespace chorus::compress {
namespace {

void checkBits(int bits, const char* op) {
  if (bits < 1 || bits > 8)
    throw InvalidArgument(str(op, ": code width ", bits, " bits is out of range; use 1 to 8 bits"));
}

// Codes per byte for the widths that divide 8 (1, 2, 4): byte j holds codes [j*k, j*k + k).
template <int kBits>
void packDividing(const uint8_t* codes, size_t n, uint8_t* out) {
  constexpr int kPerByte = 8 / kBits;
  constexpr uint8_t kMask = static_cast<uint8_t>((1u << kBits) - 1);
  const size_t full = n / kPerByte;
  for (size_t j = 0; j < full; ++j) {
    const uint8_t* c = codes + j * kPerByte;
    unsigned byte = 0;
    for (int k = 0; k < kPerByte; ++k) byte |= static_cast<unsigned>(c[k] & kMask) << (k * kBits);
    out[j] = static_cast<uint8_t>(byte);
  }
  if (size_t rest = n - full * kPerByte) {
    unsigned byte = 0;
    for (size_t k = 0; k < rest; ++k) byte |= static_cast<unsigned>(codes[full * kPerByte + k] & kMask) << (k * kBits);
    out[full] = static_cast<uint8_t>(byte);
  }
}

template <int kBits>
void unpackDividing(const uint8_t* in, size_t n, uint8_t* codes) {
  constexpr int kPerByte = 8 / kBits;
  constexpr unsigned kMask = (1u << kBits) - 1;
  const size_t full = n / kPerByte;
  for (size_t j = 0; j < full; ++j) {
    const unsigned byte = in[j];
    uint8_t* c = codes + j * kPerByte;
    for (int k = 0; k < kPerByte; ++k) c[k] = static_cast<uint8_t>((byte >> (k * kBits)) & kMask);
  }
  for (size_t k = 0, rest = n - full * kPerByte; k < rest; ++k)
    codes[full * kPerByte + k] = static_cast<uint8_t>((in[full] >> (k * kBits)) & kMask);
}

void packGeneral(const uint8_t* codes, size_t n, int bits, uint8_t* out) {
  const uint64_t mask = (1u << bits) - 1;
  uint64_t acc = 0;
  int have = 0;  // bits waiting in acc
  for (size_t i = 0; i < n; ++i) {
    acc |= (codes[i] & mask) << have;
    have += bits;
    while (have >= 8) {
      *out++ = static_cast<uint8_t>(acc);
      acc >>= 8;
      have -= 8;
    }
  }
  if (have > 0) *out = static_cast<uint8_t>(acc);
}

void unpackGeneral(const uint8_t* in, size_t n, int bits, uint8_t* codes) {
  const uint64_t mask = (1u << bits) - 1;
  uint64_t acc = 0;
  int have = 0;
  for (size_t i = 0; i < n; ++i) {
    if (have < bits) {
      acc |= static_cast<uint64_t>(*in++) << have;
      have += 8;
    }
    codes[i] = static_cast<uint8_t>(acc & mask);
    acc >>= bits;
    have -= bits;
  }
}

}  // namespace

size_t packedBytes(size_t count, int bits) {
  checkBits(bits, "packedBytes");
  // count * bits / 8 rounded up, without overflowing count * bits for huge counts.
  return (count / 8) * static_cast<size_t>(bits) + ((count % 8) * static_cast<size_t>(bits) + 7) / 8;
}

void packBits(std::span<const uint8_t> codes, int bits, std::span<uint8_t> out) {
  checkBits(bits, "packBits");
  const size_t need = packedBytes(codes.size(), bits);
  if (out.size() < need)
    throw InvalidArgument(str("packBits: ", codes.size(), " codes of ", bits, " bits need ", need,
                              " bytes but the output holds ", out.size(), "; size it with packedBytes()"));
  const size_t n = codes.size();
  switch (bits) {
    case 1: packDividing<1>(codes.data(), n, out.data()); break;
    case 2: packDividing<2>(codes.data(), n, out.data()); break;
    case 4: packDividing<4>(codes.data(), n, out.data()); break;
    case 8: if (n) std::memcpy(out.data(), codes.data(), n); break;
    default: packGeneral(codes.data(), n, bits, out.data());
  }
}

void unpackBits(std::span<const uint8_t> packed, int bits, std::span<uint8_t> codes) {
  checkBits(bits, "unpackBits");
  const size_t need = packedBytes(codes.size(), bits);
  if (packed.size() < need)
    throw InvalidArgument(str("unpackBits: ", codes.size(), " codes of ", bits, " bits need ", need,
                              " packed bytes but only ", packed.size(), " were given; the message is truncated"));
  const size_t n = codes.size();
  switch (bits) {
    case 1: unpackDividing<1>(packed.data(), n, codes.data()); break;
    case 2: unpackDividing<2>(packed.data(), n, codes.data()); break;
    case 4: unpackDividing<4>(packed.data(), n, codes.data()); break;
    case 8: if (n) std::memcpy(codes.data(), packed.data(), n); break;
    default: unpackGeneral(packed.data(), n, bits, codes.data());
  }
}

}  // namespace chorus::compress
