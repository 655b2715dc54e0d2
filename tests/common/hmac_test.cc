// SHA-256 against FIPS 180-4 examples (and padding-boundary lengths), HMAC-SHA256 against
// RFC 4231, plus constantTimeEqual, randomBytes and toHex.
#include "chorus/common/hmac.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

namespace chorus {
namespace {

std::string hexOf(const Digest& d) { return toHex(d.data(), d.size()); }

std::string shaHex(const std::string& s) { return hexOf(sha256(s.data(), s.size())); }

std::string hmacHex(const std::string& key, const std::string& msg) {
  return hexOf(hmacSha256(key.data(), key.size(), msg.data(), msg.size()));
}

TEST(Sha256, FipsExamples) {
  EXPECT_EQ(shaHex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(shaHex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(shaHex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(shaHex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
                   "mnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(shaHex(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PaddingBoundaries) {
  // 55 bytes is the longest that pads into one block; 56 and 64 spill into a second.
  EXPECT_EQ(shaHex(std::string(55, 'a')), "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  EXPECT_EQ(shaHex(std::string(56, 'a')), "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
  EXPECT_EQ(shaHex(std::string(63, 'a')), "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34");
  EXPECT_EQ(shaHex(std::string(64, 'a')), "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
  EXPECT_EQ(shaHex(std::string(119, 'a')), "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb");
  EXPECT_EQ(shaHex(std::string(120, 'a')), "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c");
}

TEST(Sha256, AllByteValues) {
  std::string s;
  for (int r = 0; r < 3; ++r) {
    for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
  }
  EXPECT_EQ(shaHex(s), "f3a25aa93aa2fbba28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe363");
}

TEST(HmacSha256, Rfc4231) {
  EXPECT_EQ(hmacHex(std::string(20, '\x0b'), "Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(hmacHex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(hmacHex(std::string(20, '\xaa'), std::string(50, '\xdd')),
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
  std::string key4;
  for (int i = 1; i <= 25; ++i) key4.push_back(static_cast<char>(i));
  EXPECT_EQ(hmacHex(key4, std::string(50, '\xcd')),
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
  // Test case 5 checks only the first 128 bits.
  EXPECT_EQ(hmacHex(std::string(20, '\x0c'), "Test With Truncation").substr(0, 32), "a3b6167473100ee06e0c796c2955552b");
  EXPECT_EQ(hmacHex(std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  EXPECT_EQ(hmacHex(std::string(131, '\xaa'),
                    "This is a test using a larger than block-size key and a larger than block-size data. The key "
                    "needs to be hashed before being used by the HMAC algorithm."),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

TEST(HmacSha256, KeyAndMessageMatter) {
  EXPECT_NE(hmacHex("secret-a", "msg"), hmacHex("secret-b", "msg"));
  EXPECT_NE(hmacHex("secret", "msg-a"), hmacHex("secret", "msg-b"));
  EXPECT_EQ(hmacHex("secret", "msg"), hmacHex("secret", "msg"));
}

TEST(ConstantTimeEqual, ComparesEveryByte) {
  uint8_t a[40];
  uint8_t b[40];
  for (int i = 0; i < 40; ++i) a[i] = b[i] = static_cast<uint8_t>(i * 7);
  EXPECT_TRUE(constantTimeEqual(a, b, sizeof a));
  EXPECT_TRUE(constantTimeEqual(a, b, 0));
  for (int pos : {0, 17, 39}) {
    b[pos] ^= 0x01;
    EXPECT_FALSE(constantTimeEqual(a, b, sizeof a)) << "difference at byte " << pos;
    b[pos] ^= 0x01;
  }
}

TEST(RandomBytes, FillsAndDiffers) {
  std::set<std::string> seen;
  for (int i = 0; i < 16; ++i) {
    uint8_t buf[32] = {};
    randomBytes(buf, sizeof buf);
    seen.insert(toHex(buf, sizeof buf));
  }
  EXPECT_EQ(seen.size(), 16u);
  std::vector<uint8_t> big(1 << 20, 0);
  randomBytes(big.data(), big.size());
  size_t zeros = 0;
  for (uint8_t v : big) zeros += v == 0;
  // About 1/256 of random bytes are zero; an unfilled tail would make this near 1.
  EXPECT_LT(zeros, big.size() / 100);
  randomBytes(nullptr, 0);
}

TEST(ToHex, LowercasePairs) {
  const uint8_t bytes[] = {0x00, 0x0f, 0xa5, 0xff};
  EXPECT_EQ(toHex(bytes, sizeof bytes), "000fa5ff");
  EXPECT_EQ(toHex(bytes, 0), "");
}

}  // namespace
}  // namespace chorus
