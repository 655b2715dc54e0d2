// Tests for bitpack.h: round trips for every width 1..8 and lengths that do not fill a byte,
// packed sizes, the documented little-endian bit order, masking of high bits, and errors.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/compress/bitpack.h"

namespace chorus::compress {
namespace {

TEST(Bitpack, PackedBytesIsCeilOfTotalBits) {
  for (int bits = 1; bits <= 8; ++bits)
    for (size_t n : {0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 1000, 1001, 1021})
      EXPECT_EQ(packedBytes(n, bits), (n * bits + 7) / 8) << "bits=" << bits << " n=" << n;
  EXPECT_EQ(packedBytes(size_t(1) << 62, 8), size_t(1) << 62);  // no overflow of n * bits
}

class BitpackWidth : public ::testing::TestWithParam<int> {};

TEST_P(BitpackWidth, RoundTripsOddLengths) {
  const int bits = GetParam();
  std::mt19937 rng(1234 + bits);
  for (size_t n : {0, 1, 2, 3, 5, 7, 8, 9, 13, 31, 33, 255, 1021, 4099}) {
    std::vector<uint8_t> codes(n);
    for (auto& c : codes) c = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
    // Sentinel bytes past the packed size must survive.
    std::vector<uint8_t> packed(packedBytes(n, bits) + 3, 0xA5);
    packBits(codes, bits, packed);
    for (size_t j = packedBytes(n, bits); j < packed.size(); ++j) EXPECT_EQ(packed[j], 0xA5);
    // Padding bits of the last byte are zero.
    if ((n * bits) % 8) {
      EXPECT_EQ(packed[packedBytes(n, bits) - 1] >> ((n * bits) % 8), 0) << "n=" << n;
    }
    std::vector<uint8_t> back(n, 0xFF);
    unpackBits(std::span<const uint8_t>(packed).first(packedBytes(n, bits)), bits, back);
    EXPECT_EQ(back, codes) << "bits=" << bits << " n=" << n;
  }
}

TEST_P(BitpackWidth, MatchesBitByBitReference) {
  // Reference: code i's bit k is stream bit i*bits + k, stream bit j is bit j%8 of byte j/8.
  const int bits = GetParam();
  std::mt19937 rng(99 + bits);
  const size_t n = 77;
  std::vector<uint8_t> codes(n);
  for (auto& c : codes) c = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
  std::vector<uint8_t> expect(packedBytes(n, bits), 0);
  for (size_t i = 0; i < n; ++i)
    for (int k = 0; k < bits; ++k)
      if (codes[i] >> k & 1) {
        const size_t j = i * bits + k;
        expect[j / 8] |= static_cast<uint8_t>(1u << (j % 8));
      }
  std::vector<uint8_t> packed(expect.size());
  packBits(codes, bits, packed);
  EXPECT_EQ(packed, expect);
}

TEST_P(BitpackWidth, IgnoresBitsAboveTheWidth) {
  const int bits = GetParam();
  std::vector<uint8_t> codes = {0xFF, 0x00, 0xFF, 0xFF, 0x00, 0x80, 0x7F};
  std::vector<uint8_t> packed(packedBytes(codes.size(), bits));
  packBits(codes, bits, packed);
  std::vector<uint8_t> back(codes.size());
  unpackBits(packed, bits, back);
  const uint8_t mask = static_cast<uint8_t>((1u << bits) - 1);
  for (size_t i = 0; i < codes.size(); ++i) EXPECT_EQ(back[i], codes[i] & mask) << "bits=" << bits << " i=" << i;
}

INSTANTIATE_TEST_SUITE_P(AllWidths, BitpackWidth, ::testing::Range(1, 9));

TEST(Bitpack, KnownLayouts) {
  std::vector<uint8_t> out(2);
  packBits(std::vector<uint8_t>{1, 0, 1, 1, 0, 0, 0, 1, 1}, 1, out);
  EXPECT_EQ(out[0], 0b10001101);
  EXPECT_EQ(out[1], 0b1);
  packBits(std::vector<uint8_t>{1, 2, 3, 0, 2}, 2, out);
  EXPECT_EQ(out[0], 0b00111001);
  EXPECT_EQ(out[1], 0b10);
  packBits(std::vector<uint8_t>{0x3, 0xC}, 4, out);
  EXPECT_EQ(out[0], 0xC3);
  std::vector<uint8_t> three(3);
  packBits(std::vector<uint8_t>{5, 7, 1, 6}, 3, three);  // 5 | 7 << 3 | 1 << 6 | 6 << 9 = 0x0C7D
  EXPECT_EQ(three[0], 0b01111101);
  EXPECT_EQ(three[1], 0b1100);
}

TEST(Bitpack, RejectsBadWidthAndShortBuffers) {
  std::vector<uint8_t> codes(10, 1), buf(10);
  EXPECT_THROW(packBits(codes, 0, buf), InvalidArgument);
  EXPECT_THROW(packBits(codes, 9, buf), InvalidArgument);
  EXPECT_THROW(unpackBits(buf, 0, codes), InvalidArgument);
  EXPECT_THROW(packedBytes(1, 9), InvalidArgument);
  std::vector<uint8_t> small(2);
  EXPECT_THROW(packBits(codes, 3, small), InvalidArgument);    // needs 4 bytes
  EXPECT_THROW(unpackBits(small, 3, codes), InvalidArgument);  // truncated input
  EXPECT_NO_THROW(packBits(std::span<const uint8_t>(codes).first(5), 3, small));
}

}  // namespace
}  // namespace chorus::compress
