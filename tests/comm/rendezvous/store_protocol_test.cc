// Store frames: every type round-trips; the decoder rejects each kind of malformed input
// (truncation, lengths past the end or over the limits, unknown types, fields a type may not
// carry, trailing bytes) by throwing StoreProtocolError.
#include "chorus/comm/rendezvous/store_protocol.h"

#include <gtest/gtest.h>

#include <cstring>

namespace chorus::comm {
namespace {

StoreMessage msg(StoreMsgType type, std::vector<std::string> keys = {}, std::string value = "", int64_t counter = 0,
                 uint64_t timeoutMs = 0) {
  StoreMessage m;
  m.type = type;
  m.keys = std::move(keys);
  m.value = toBytes(value);
  m.counter = counter;
  m.timeoutMs = timeoutMs;
  return m;
}

std::vector<StoreMessage> samples() {
  return {
      msg(StoreMsgType::kSet, {"rank/3/addr"}, std::string("10.0.0.3:4000\0bin", 17)),
      msg(StoreMsgType::kSet, {""}, ""),
      msg(StoreMsgType::kGet, {"k"}, "", 0, 30000),
      msg(StoreMsgType::kAdd, {"counter"}, "", -5),
      msg(StoreMsgType::kAdd, {"counter"}, "", INT64_MIN),
      msg(StoreMsgType::kWait, {"a", "b", "c"}, "", 0, UINT64_MAX),
      msg(StoreMsgType::kCheck, {"a", "b"}),
      msg(StoreMsgType::kErase, {"a"}),
      msg(StoreMsgType::kOk),
      msg(StoreMsgType::kValue, {}, std::string(100000, 'v')),
      msg(StoreMsgType::kCounter, {}, "", INT64_MAX),
      msg(StoreMsgType::kBool, {}, "", 1),
      msg(StoreMsgType::kTimeout, {"missing"}),
      msg(StoreMsgType::kError, {}, "bad request"),
  };
}

void expectRejected(const Bytes& b, const std::string& why) {
  EXPECT_THROW(decodeStoreMessage(b.data(), b.size()), StoreProtocolError) << why;
}

TEST(StoreProtocol, RoundTripsEveryType) {
  for (const auto& m : samples()) {
    Bytes b = encodeStoreMessage(m);
    EXPECT_EQ(storeFrameSize(b.data(), b.size()), b.size());
    EXPECT_EQ(storeFrameSize(b.data(), kStoreHeaderBytes), b.size());
    EXPECT_EQ(storeFrameSize(b.data(), kStoreHeaderBytes - 1), 0u);
    StoreMessage back = decodeStoreMessage(b.data(), b.size());
    EXPECT_EQ(back, m) << storeMsgTypeName(m.type);
    EXPECT_EQ(encodeStoreMessage(back), b);
  }
}

TEST(StoreProtocol, HeaderLayoutIsLittleEndian) {
  Bytes b = encodeStoreMessage(msg(StoreMsgType::kErase, {"ab"}));
  ASSERT_GE(b.size(), kStoreHeaderBytes);
  EXPECT_EQ(std::string(b.begin(), b.begin() + 4), "CHST");
  EXPECT_EQ(b[4], kStoreProtocolVersion);
  EXPECT_EQ(b[5], static_cast<uint8_t>(StoreMsgType::kErase));
  uint32_t body = b[8] | (b[9] << 8) | (b[10] << 16) | (uint32_t(b[11]) << 24);
  EXPECT_EQ(body, b.size() - kStoreHeaderBytes);
  EXPECT_EQ(body, 4u + 4u + 2u + 4u + 8u + 8u);
}

TEST(StoreProtocol, RejectsEveryTruncation) {
  for (const auto& m : samples()) {
    Bytes b = encodeStoreMessage(m);
    if (b.size() > 4096) continue;
    for (size_t n = 0; n < b.size(); ++n) {
      Bytes cut(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n));
      expectRejected(cut, str("truncated to ", n));
    }
  }
}

TEST(StoreProtocol, RejectsTrailingBytes) {
  Bytes b = encodeStoreMessage(msg(StoreMsgType::kOk));
  b.push_back(0);
  expectRejected(b, "frame longer than its header says");
  // The same extra byte counted in the body length.
  b[8] += 1;
  expectRejected(b, "body longer than its fields");
}

TEST(StoreProtocol, RejectsBadHeader) {
  Bytes good = encodeStoreMessage(msg(StoreMsgType::kGet, {"k"}, "", 0, 5));
  Bytes b = good;
  b[0] = 'X';
  expectRejected(b, "magic");
  EXPECT_THROW(storeFrameSize(b.data(), b.size()), StoreProtocolError);
  b = good;
  b[4] = kStoreProtocolVersion + 1;
  expectRejected(b, "version");
  for (int t : {0, 7, 63, 70, 255}) {
    b = good;
    b[5] = static_cast<uint8_t>(t);
    expectRejected(b, str("type ", t));
  }
  b = good;
  b[7] = 1;
  expectRejected(b, "reserved");
  b = good;
  uint32_t huge = static_cast<uint32_t>(kMaxStoreBodyBytes + 1);
  std::memcpy(&b[8], &huge, 4);
  EXPECT_THROW(storeFrameSize(b.data(), kStoreHeaderBytes), StoreProtocolError);
  b = good;
  b[8] = b[9] = b[10] = b[11] = 0xff;
  expectRejected(b, "body length past the end");
}

TEST(StoreProtocol, RejectsLengthsPastTheEnd) {
  Bytes good = encodeStoreMessage(msg(StoreMsgType::kSet, {"key"}, "value"));
  const size_t keyCount = kStoreHeaderBytes;
  const size_t keyLen = keyCount + 4;
  const size_t valueLen = keyLen + 4 + 3;
  Bytes b = good;
  b[keyCount] = 0xff;
  b[keyCount + 1] = 0xff;
  expectRejected(b, "key count larger than the body");
  b = good;
  b[keyLen + 3] = 0x7f;
  expectRejected(b, "key length past the end");
  b = good;
  b[keyLen] = 9;
  expectRejected(b, "key length one field too long");
  b = good;
  b[valueLen + 2] = 0x01;
  expectRejected(b, "value length past the end");
}

TEST(StoreProtocol, RejectsFieldsTheTypeCannotCarry) {
  auto reject = [](const StoreMessage& m, const char* why) {
    EXPECT_THROW(encodeStoreMessage(m), StoreProtocolError) << why;
  };
  reject(msg(StoreMsgType::kSet, {}), "set without key");
  reject(msg(StoreMsgType::kSet, {"a", "b"}), "set with two keys");
  reject(msg(StoreMsgType::kGet, {"a"}, "v"), "get with value");
  reject(msg(StoreMsgType::kAdd, {"a"}, "", 1, 5), "add with timeout");
  reject(msg(StoreMsgType::kWait, {}), "wait without keys");
  reject(msg(StoreMsgType::kCheck, {"a"}, "", 1), "check with counter");
  reject(msg(StoreMsgType::kOk, {"a"}), "ok with key");
  reject(msg(StoreMsgType::kBool, {}, "", 2), "bool of 2");
  reject(msg(StoreMsgType::kTimeout, {}), "timeout without keys");
  reject(msg(StoreMsgType::kSet, {std::string(kMaxStoreKeyBytes + 1, 'k')}), "key over the limit");
  reject(msg(static_cast<StoreMsgType>(9), {"a"}), "unknown type");
  EXPECT_EQ(storeMsgTypeName(static_cast<StoreMsgType>(9)), "unknown(9)");

  // The decoder applies the same rules to bytes from the wire: a GET carrying a value.
  Bytes b = encodeStoreMessage(msg(StoreMsgType::kSet, {"a"}, "v"));
  b[5] = static_cast<uint8_t>(StoreMsgType::kGet);
  expectRejected(b, "get with value on the wire");
}

TEST(StoreProtocol, EnforcesSizeLimits) {
  StoreMessage big = msg(StoreMsgType::kSet, {"k"});
  big.value.assign(kMaxStoreBodyBytes, 1);
  EXPECT_THROW(encodeStoreMessage(big), StoreProtocolError);
  big.value.resize(kMaxStoreBodyBytes - 64);
  Bytes b = encodeStoreMessage(big);
  EXPECT_EQ(decodeStoreMessage(b.data(), b.size()).value.size(), big.value.size());
}

}  // namespace
}  // namespace chorus::comm
