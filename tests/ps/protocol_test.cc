// The parameter server's message header: round trip of every field, the little-endian layout
// at the documented offsets, rejection of a bad magic or an unknown op, and opName.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "chorus/common/error.h"
#include "chorus/ps/protocol.h"

namespace chorus::ps {
namespace {

const Op kAllOps[] = {Op::kInit, Op::kPush, Op::kPull, Op::kBye, Op::kAck, Op::kParams, Op::kError};

Header sample() {
  Header h;
  h.op = Op::kPush;
  h.worker = 0x01020304;
  h.server = -2;
  h.fingerprint = 0x1122334455667788ull;
  h.version = -3;  // negative values survive the unsigned wire form
  h.clock = int64_t{1} << 40;
  h.lr = 0.125;
  h.payloadBytes = 4ull * 1000003;
  h.firstSlice = 7;
  return h;
}

std::string errorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "no InvalidArgument";
}

TEST(ProtocolTest, RoundTripsEveryField) {
  for (Op op : kAllOps) {
    Header h = sample();
    h.op = op;
    const Header d = decodeHeader(encodeHeader(h));
    EXPECT_EQ(d.op, op);
    EXPECT_EQ(d.worker, h.worker);
    EXPECT_EQ(d.server, h.server);
    EXPECT_EQ(d.fingerprint, h.fingerprint);
    EXPECT_EQ(d.version, h.version);
    EXPECT_EQ(d.clock, h.clock);
    EXPECT_EQ(d.lr, h.lr);
    EXPECT_EQ(d.payloadBytes, h.payloadBytes);
    EXPECT_EQ(d.firstSlice, h.firstSlice);
    EXPECT_EQ(d.flags, 0);
    EXPECT_EQ(d.codec, 0);
  }
  Header coded = sample();
  coded.flags = kFlagCodec;
  coded.codec = 0xfffe;
  const Header c = decodeHeader(encodeHeader(coded));
  EXPECT_EQ(c.flags, kFlagCodec);
  EXPECT_EQ(c.codec, 0xfffe);
  Header extremes;
  extremes.worker = INT32_MIN;
  extremes.server = INT32_MAX;
  extremes.fingerprint = UINT64_MAX;
  extremes.version = INT64_MIN;
  extremes.clock = INT64_MAX;
  extremes.lr = -1e-300;
  extremes.payloadBytes = kMaxPayloadBytes;
  extremes.firstSlice = -1;
  const Header d = decodeHeader(encodeHeader(extremes));
  EXPECT_EQ(d.worker, INT32_MIN);
  EXPECT_EQ(d.server, INT32_MAX);
  EXPECT_EQ(d.fingerprint, UINT64_MAX);
  EXPECT_EQ(d.version, INT64_MIN);
  EXPECT_EQ(d.clock, INT64_MAX);
  EXPECT_EQ(d.lr, -1e-300);
  EXPECT_EQ(d.payloadBytes, kMaxPayloadBytes);
  EXPECT_EQ(d.firstSlice, -1);
}

TEST(ProtocolTest, LittleEndianLayout) {
  const auto b = encodeHeader(sample());
  ASSERT_EQ(b.size(), 64u);
  // magic "CPS1" = 0x43505331, least significant byte first
  EXPECT_EQ(b[0], 0x31);
  EXPECT_EQ(b[1], 0x53);
  EXPECT_EQ(b[2], 0x50);
  EXPECT_EQ(b[3], 0x43);
  EXPECT_EQ(b[4], 2);  // kPush
  EXPECT_EQ(b[5], 0);  // flags
  EXPECT_EQ(b[6], 0);  // codec
  EXPECT_EQ(b[7], 0);
  Header coded = sample();
  coded.flags = kFlagCodec;
  coded.codec = 0x0203;
  const auto c = encodeHeader(coded);
  EXPECT_EQ(c[5], 1);
  EXPECT_EQ(c[6], 0x03);  // codec, little-endian
  EXPECT_EQ(c[7], 0x02);
  EXPECT_EQ(b[8], 0x04);  // worker 0x01020304
  EXPECT_EQ(b[11], 0x01);
  EXPECT_EQ(b[12], 0xfe);  // server -2
  EXPECT_EQ(b[15], 0xff);
  EXPECT_EQ(b[16], 0x88);  // fingerprint
  EXPECT_EQ(b[23], 0x11);
  EXPECT_EQ(b[24], 0xfd);  // version -3
  EXPECT_EQ(b[31], 0xff);
  EXPECT_EQ(b[32], 0x00);  // clock 2^40: byte 5 is 1
  EXPECT_EQ(b[37], 0x01);
  EXPECT_EQ(b[39], 0x00);
  EXPECT_EQ(b[46], 0xc0);  // lr 0.125 = 0x3fc0000000000000
  EXPECT_EQ(b[47], 0x3f);
  uint64_t payload = 0;
  for (int i = 7; i >= 0; --i) payload = payload << 8 | b[48 + i];
  EXPECT_EQ(payload, 4ull * 1000003);
  EXPECT_EQ(b[56], 7);  // first slice
  for (int i = 57; i < 64; ++i) EXPECT_EQ(b[i], 0) << "byte " << i;
}

TEST(ProtocolTest, RejectsBadMagicAndUnknownOp) {
  auto b = encodeHeader(sample());
  b[0] = 0x32;  // "CPS2"
  const std::string magic = errorOf([&] { decodeHeader(b); });
  EXPECT_NE(magic.find("bad magic 0x43505332"), std::string::npos) << magic;

  for (uint8_t op : {0, 5, 15, 19, 255}) {
    b = encodeHeader(sample());
    b[4] = op;
    const std::string msg = errorOf([&] { decodeHeader(b); });
    EXPECT_NE(msg.find("unknown op " + std::to_string(op) + " "), std::string::npos) << msg;
  }
  std::array<uint8_t, kHeaderBytes> zeros{};
  EXPECT_THROW(decodeHeader(zeros), InvalidArgument);
}

// Found by fuzz/ps_protocol_fuzz.cc: a header with flags or reserved bytes set decoded as if
// they were 0, so one header had many encodings and a peer's unknown flag went unnoticed.
// Since the codec field took the reserved bytes: unknown flags, a codec without kFlagCodec
// and kFlagCodec without a codec are all refused.
TEST(ProtocolTest, RejectsUnknownFlagsAndCodecWithoutFlag) {
  for (size_t at : {5, 6, 7}) {
    auto b = encodeHeader(sample());
    b[at] = 0xff;
    const std::string msg = errorOf([&] { decodeHeader(b); });
    EXPECT_NE(msg.find("expected flags 0, 2 or 4 and codec 0"), std::string::npos) << "byte " << at << ": " << msg;
    EXPECT_NE(msg.find("0xff"), std::string::npos) << "byte " << at << ": " << msg;
  }
  auto b = encodeHeader(sample());
  b[5] = kFlagCodec;  // the flag, no codec
  EXPECT_NE(errorOf([&] { decodeHeader(b); }).find("flags 0x1 with codec 0x0"), std::string::npos);
  b[5] = kFlagCodec | kFlagFinal;  // two flags at once
  b[6] = 1;
  EXPECT_NE(errorOf([&] { decodeHeader(b); }).find("flags 0x3 with codec 0x1"), std::string::npos);
  b[5] = kFlagFinal;  // the final flag with a codec
  EXPECT_NE(errorOf([&] { decodeHeader(b); }).find("flags 0x2 with codec 0x1"), std::string::npos);
  b[6] = 0;
  EXPECT_EQ(decodeHeader(b).flags, kFlagFinal);
  b[5] = kFlagAgree;
  EXPECT_EQ(decodeHeader(b).flags, kFlagAgree);
  b[5] = kFlagAgree | kFlagFinal;
  EXPECT_NE(errorOf([&] { decodeHeader(b); }).find("flags 0x6 with codec 0x0"), std::string::npos);
}

TEST(ProtocolTest, OpNames) {
  const char* names[] = {"init", "push", "pull", "bye", "ack", "params", "error"};
  for (size_t i = 0; i < std::size(kAllOps); ++i) EXPECT_STREQ(opName(kAllOps[i]), names[i]);
  EXPECT_STREQ(opName(static_cast<Op>(99)), "unknown");
}

}  // namespace
}  // namespace chorus::ps
