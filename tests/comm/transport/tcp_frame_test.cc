// The tcp transport's frame header: round trips, and every way a header can be malformed.
#include <gtest/gtest.h>

#include <cstring>

#include "chorus/comm/transport/tcp/frame.h"

namespace chorus::comm::tcp {
namespace {

uint32_t fnv1a(const uint8_t* p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 16777619u;
  return h;
}

// Rewrites the check word so only the field under test is wrong.
void reseal(uint8_t* b) {
  uint32_t c = fnv1a(b, 36);
  for (int i = 0; i < 4; ++i) b[36 + i] = static_cast<uint8_t>(c >> (8 * i));
}

FrameHeader sample() {
  FrameHeader h;
  h.tag = 0x0102030405060708ull;
  h.sig = 0xdeadbeefcafef00dull;
  h.bytes = 123456789;
  return h;
}

TEST(TcpFrame, RoundTrips) {
  for (uint64_t bytes : {uint64_t{0}, uint64_t{1}, uint64_t{1} << 32, kMaxFrameBytes}) {
    FrameHeader h = sample();
    h.bytes = bytes;
    uint8_t b[kFrameHeaderBytes];
    encodeFrame(h, b);
    EXPECT_EQ(decodeFrame(b, sizeof b), h);
  }
}

TEST(TcpFrame, LayoutIsLittleEndian) {
  uint8_t b[kFrameHeaderBytes];
  encodeFrame(sample(), b);
  EXPECT_EQ(std::memcmp(b, "CHTF", 4), 0);
  EXPECT_EQ(b[4], kFrameVersion);
  EXPECT_EQ(b[8], 0x08);   // tag, low byte first
  EXPECT_EQ(b[15], 0x01);
  EXPECT_EQ(b[16], 0x0d);  // signature
  EXPECT_EQ(b[24], 123456789 & 0xff);
}

TEST(TcpFrame, RejectsTruncatedInput) {
  uint8_t b[kFrameHeaderBytes];
  encodeFrame(sample(), b);
  for (size_t n = 0; n < kFrameHeaderBytes; ++n) EXPECT_THROW(decodeFrame(b, n), FrameError) << n;
  EXPECT_THROW(decodeFrame(nullptr, 100), FrameError);
}

TEST(TcpFrame, RejectsEveryCorruptedField) {
  uint8_t good[kFrameHeaderBytes];
  encodeFrame(sample(), good);
  struct Case {
    const char* what;
    size_t offset;
    uint8_t value;
    bool resealed;
  };
  const Case cases[] = {
      {"magic", 0, 'X', true},         {"version", 4, 2, true},        {"type 0", 5, 0, true},
      {"type 9", 5, 9, true},          {"flags", 6, 1, true},          {"flags high", 7, 0x80, true},
      {"reserved", 33, 1, true},       {"tag without reseal", 8, 0x09, false},
      {"check", 37, 0x00, false},
  };
  for (const Case& c : cases) {
    uint8_t b[kFrameHeaderBytes];
    std::memcpy(b, good, sizeof b);
    if (b[c.offset] == c.value) b[c.offset] ^= 0xff;
    else b[c.offset] = c.value;
    if (c.resealed) reseal(b);
    EXPECT_THROW(decodeFrame(b, sizeof b), FrameError) << c.what;
  }
}

TEST(TcpFrame, RejectsAbsurdSizes) {
  uint8_t b[kFrameHeaderBytes];
  encodeFrame(sample(), b);
  for (int i = 0; i < 8; ++i) b[24 + i] = 0xff;  // 2^64 - 1 bytes
  reseal(b);
  EXPECT_THROW(decodeFrame(b, sizeof b), FrameError);
  FrameHeader h = sample();
  h.bytes = kMaxFrameBytes + 1;
  EXPECT_THROW(encodeFrame(h, b), FrameError);
}

}  // namespace
}  // namespace chorus::comm::tcp
