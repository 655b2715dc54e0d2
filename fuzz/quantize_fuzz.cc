// libFuzzer target for the quantizing codecs' decoder (src/chorus/compress/quantize_format.cc)
// and the bit packing under it (bitpack.cc), which every rank runs on the others' bytes:
// fp16, bf16, QSGD, TernGrad, sign and int8 messages.
//
// 1. The input as a message of the kind its first byte names, decoded into an output of the
//    numel it claims (when that is at most 2^16; else of another size, which must be refused):
//    it either adds into the output or throws InvalidArgument, and then leaves the output
//    exactly as it was, so a corrupt message from one rank cannot half-apply to a sum. No
//    other exception, no out-of-bounds access (ASan), no undefined behaviour (UBSan). The same
//    message given to every other codec is refused, also without touching the output.
// 2. Bit packing at width 1 + input[0] % 8: codes from the input pack and unpack to their low
//    bits, and the input read as packed bytes unpacks and packs back to itself, padding bits
//    of the last byte aside.
//
// fuzz-sources: src/chorus/compress/quantize_format.cc src/chorus/compress/bitpack.cc
// fuzz-sources: src/chorus/common/dtype.cc src/chorus/common/error.cc
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "chorus/common/dtype.h"
#include "chorus/common/error.h"
#include "chorus/compress/bitpack.h"
#include "chorus/compress/quantize_format.h"
#include "seeds.h"

using namespace chorus::compress;

namespace {

constexpr uint64_t kMaxOutput = 1 << 16;
constexpr QuantKind kKinds[] = {QuantKind::kFloat16, QuantKind::kBFloat16, QuantKind::kQsgd,
                                QuantKind::kTernGrad, QuantKind::kSign,     QuantKind::kInt8};

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "quantize_fuzz: %s\n", what);
  std::abort();
}

// Decodes into an output of n floats that starts with a pattern; on InvalidArgument the
// output must still hold it, bit for bit.
void decodeInto(QuantKind kind, std::span<const uint8_t> msg, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(i % 7) - 3.0f;
  const std::vector<float> before = out;
  try {
    quantizedDecodeAdd(kind, msg, out.data(), n);
  } catch (const chorus::InvalidArgument&) {
    if (n > 0 && std::memcmp(out.data(), before.data(), 4 * out.size()) != 0)
      fail("a refused message changed the output");
  }
}

void fuzzMessage(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> msg(data, size);
  uint64_t numel = 0;
  if (size >= kQuantHeaderBytes) std::memcpy(&numel, data + 1, 8);
  const int64_t n = numel <= kMaxOutput ? static_cast<int64_t>(numel) : static_cast<int64_t>(numel % 97);
  for (QuantKind kind : kKinds) {
    const bool own = size > 0 && data[0] == static_cast<uint8_t>(kind);
    // Other kinds are refused at the first byte: try them on a small output only.
    decodeInto(kind, msg, own ? n : std::min<int64_t>(n, 8));
  }
}

void fuzzBitpack(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const int bits = 1 + data[0] % 8;
  const std::span<const uint8_t> rest(data + 1, size - 1);
  const uint8_t mask = static_cast<uint8_t>((1u << bits) - 1);

  std::vector<uint8_t> packed(packedBytes(rest.size(), bits) + 1, 0xA5);
  packBits(rest, bits, packed);
  if (packed.back() != 0xA5) fail("packBits wrote past packedBytes()");
  std::vector<uint8_t> codes(rest.size());
  unpackBits(packed, bits, codes);
  for (size_t i = 0; i < codes.size(); ++i)
    if (codes[i] != (rest[i] & mask)) fail("codes do not survive pack + unpack");

  const size_t count = rest.size() * 8 / static_cast<size_t>(bits);
  std::vector<uint8_t> unpacked(count);
  unpackBits(rest, bits, unpacked);
  std::vector<uint8_t> repacked(packedBytes(count, bits));
  packBits(unpacked, bits, repacked);
  const size_t usedBits = count * static_cast<size_t>(bits);
  for (size_t b = 0; b < repacked.size(); ++b) {
    const size_t valid = std::min<size_t>(8, usedBits - 8 * b);
    const uint8_t keep = static_cast<uint8_t>(valid == 8 ? 0xFF : (1u << valid) - 1);
    if ((repacked[b] & keep) != (rest[b] & keep) || (repacked[b] & ~keep) != 0)
      fail("packed bytes do not survive unpack + pack");
  }
  if (count > 0) {
    std::vector<uint8_t> shortBuf(packedBytes(count, bits) - 1);
    try {
      unpackBits(shortBuf, bits, unpacked);
      fail("unpackBits read from a buffer too short for its codes");
    } catch (const chorus::InvalidArgument&) {
    }
  }
}

// Messages laid out as quantize.h documents them, built by hand (the encoders need torch).
class Builder {
 public:
  Builder(QuantKind kind, uint64_t n) : n_(n) {
    bytes_.push_back(static_cast<uint8_t>(kind));
    put(n);
  }
  template <typename T>
  Builder& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    bytes_.insert(bytes_.end(), p, p + sizeof v);
    return *this;
  }
  Builder& codes(int bits, uint8_t step) {
    std::vector<uint8_t> c(n_);
    for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<uint8_t>(i * step);
    std::vector<uint8_t> packed(packedBytes(c.size(), bits));
    packBits(c, bits, packed);
    bytes_.insert(bytes_.end(), packed.begin(), packed.end());
    return *this;
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  uint64_t n_;
  std::vector<uint8_t> bytes_;
};

void writeSeeds(const char* folder) {
  using chorus::fuzz::writeSeed;
  Builder fp16(QuantKind::kFloat16, 5);
  Builder bf16(QuantKind::kBFloat16, 5);
  for (float v : {0.0f, -1.5f, 65504.0f, 1e-7f, INFINITY}) {
    fp16.put(chorus::floatToHalf(v));
    bf16.put(chorus::floatToBf16(v));
  }
  writeSeed(folder, "fp16", fp16.bytes());
  writeSeed(folder, "bf16", bf16.bytes());
  // qsgd with s = 7 (4-bit codes: level << 1 | sign), chunks of 4 over 10 elements: 3 norms.
  writeSeed(folder, "qsgd_chunked",
            Builder(QuantKind::kQsgd, 10).put(uint32_t{7}).put(uint32_t{4}).put(1.0f).put(2.0f).put(0.5f)
                .codes(4, 3).bytes());
  // qsgd with s = 1 (2-bit codes), one chunk for the message (chunk 0).
  writeSeed(folder, "qsgd_one_chunk",
            Builder(QuantKind::kQsgd, 9).put(uint32_t{1}).put(uint32_t{0}).put(3.0f).codes(2, 1).bytes());
  // terngrad: codes 0, 1, 2 (3 is invalid), chunks of 3 over 7 elements.
  Builder tern(QuantKind::kTernGrad, 7);
  tern.put(uint32_t{3}).put(0.25f).put(NAN).put(4.0f);
  std::vector<uint8_t> t = {0, 1, 2, 2, 1, 0, 1}, tp(packedBytes(t.size(), 2));
  packBits(t, 2, tp);
  for (uint8_t b : tp) tern.put(b);
  writeSeed(folder, "terngrad", tern.bytes());
  writeSeed(folder, "sign", Builder(QuantKind::kSign, 13).put(0.75f).codes(1, 1).bytes());
  // int8 with chunks of 4 over 6 elements: 2 ranges (min, max), then 6 codes.
  Builder int8(QuantKind::kInt8, 6);
  int8.put(uint32_t{4}).put(-1.0f).put(1.0f).put(5.0f).put(5.0f);
  for (uint8_t c : {0, 255, 128, 7, 0, 9}) int8.put(c);
  writeSeed(folder, "int8", int8.bytes());
  writeSeed(folder, "empty_sign", Builder(QuantKind::kSign, 0).put(0.0f).bytes());
}

}  // namespace

CHORUS_FUZZ_SEEDS(writeSeeds)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    fuzzMessage(data, size);
    fuzzBitpack(data, size);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quantize_fuzz: unexpected exception: %s\n", e.what());
    std::abort();
  }
  return 0;
}
