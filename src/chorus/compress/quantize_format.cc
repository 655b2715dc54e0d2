// The quantizing codecs' decoder (layout in quantize.h). Each message is read front to back
// by a Reader that checks every length before it touches a byte: header (kind, numel), the
// codec's parameters, per-chunk scales, then exactly the packed codes and nothing after them.
// Everything is checked before the first value is added, so a message that is refused leaves
// the output as it was (decodeAdd sums several ranks' messages into one tensor).
#include "chorus/compress/quantize_format.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "chorus/common/dtype.h"
#include "chorus/common/error.h"
#include "chorus/compress/bitpack.h"

namespace chorus::compress {
namespace {

static_assert(std::endian::native == std::endian::little, "quantized messages are read in host order");

// Little-endian reader over a message; every read is bounds-checked.
class Reader {
 public:
  Reader(std::span<const uint8_t> msg, const char* codec) : msg_(msg), codec_(codec) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, msg_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  // The next n bytes; throws if the message is shorter.
  std::span<const uint8_t> take(size_t n) {
    need(n);
    auto s = msg_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  void expectEnd() const {
    if (pos_ != msg_.size())
      throw InvalidArgument(str(codec_, " decode: message has ", msg_.size() - pos_,
                                " trailing bytes; it was not made by this codec or is corrupt"));
  }

 private:
  void need(size_t n) const {
    if (msg_.size() - pos_ < n)
      throw InvalidArgument(str(codec_, " decode: message of ", msg_.size(), " bytes is truncated (needs at least ",
                                pos_ + n, "); it was not made by this codec or is corrupt"));
  }
  std::span<const uint8_t> msg_;
  const char* codec_;
  size_t pos_ = 0;
};

// Checks the kind and numel against the output's n.
void readHeader(Reader& r, QuantKind kind, int64_t n, const char* codec) {
  const auto k = r.get<uint8_t>();
  if (k != static_cast<uint8_t>(kind))
    throw InvalidArgument(str(codec, " decode: message kind 0x", std::hex, int(k), " is not this codec's (0x", int(kind),
                              std::dec, "); decode with the codec that encoded it"));
  const auto numel = r.get<uint64_t>();
  if (static_cast<uint64_t>(n) != numel)
    throw InvalidArgument(str(codec, " decode: message holds ", numel, " elements but the output has ", n,
                              "; decode into a tensor of the encoded size"));
}

// Codes of `bits` bits for n elements from the rest of the message, which must end there.
std::vector<uint8_t> readCodes(Reader& r, int64_t n, int bits) {
  std::vector<uint8_t> codes(static_cast<size_t>(n));
  unpackBits(r.take(packedBytes(codes.size(), bits)), bits, codes);
  r.expectEnd();
  return codes;
}

// The per-chunk float32 scales that follow the chunk size in a message.
std::vector<float> readScales(Reader& r, int64_t count) {
  std::vector<float> scales(static_cast<size_t>(count));
  const auto bytes = r.take(4 * scales.size());
  if (!scales.empty()) std::memcpy(scales.data(), bytes.data(), bytes.size());
  return scales;
}

void decodeCast16(Reader& r, bool half, float* o, int64_t n) {
  const uint8_t* p = r.take(2 * static_cast<size_t>(n)).data();
  r.expectEnd();
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    o[i] += half ? halfToFloat(h) : bf16ToFloat(h);
  }
}

void decodeQsgd(Reader& r, float* o, int64_t n) {
  // Levels and chunk come from the message, so a receiver need not be built with the sender's.
  const auto s = r.get<uint32_t>();
  checkQsgdLevels(s);
  const QuantChunks chunks(n, r.get<uint32_t>());
  const auto norms = readScales(r, chunks.count());
  const auto codes = readCodes(r, n, qsgdBits(s));
  // Every code is checked before any is added, so a corrupt message leaves `o` untouched.
  for (int64_t i = 0; i < n; ++i)
    if (const unsigned level = codes[i] >> 1; level > s)
      throw InvalidArgument(str("qsgd decode: level ", level, " at element ", i, " exceeds the message's ", s,
                                " levels; the message is corrupt"));
  for (int64_t c = 0; c < chunks.count(); ++c) {
    const float unit = norms[c] / static_cast<float>(s);
    for (int64_t i = chunks.begin(c); i < chunks.end(c); ++i)
      o[i] += signedValue(codes[i] & 1, static_cast<float>(codes[i] >> 1) * unit);
  }
}

void decodeTernGrad(Reader& r, float* o, int64_t n) {
  const QuantChunks chunks(n, r.get<uint32_t>());
  const auto scales = readScales(r, chunks.count());
  const auto codes = readCodes(r, n, 2);
  // Every code is checked before any is added, so a corrupt message leaves `o` untouched.
  for (int64_t i = 0; i < n; ++i)
    if (codes[i] == 3)
      throw InvalidArgument(str("terngrad decode: invalid code 3 at element ", i, "; the message is corrupt"));
  for (int64_t c = 0; c < chunks.count(); ++c) {
    const float scale = scales[c];
    // A NaN scale must reach every element of its chunk, zeros included, so the receiver sees it.
    const float zero = std::isnan(scale) ? scale : 0.0f;
    const float value[3] = {zero, scale, -scale};
    for (int64_t i = chunks.begin(c); i < chunks.end(c); ++i) o[i] += value[codes[i]];
  }
}

void decodeSign(Reader& r, float* o, int64_t n) {
  const float scale = r.get<float>();
  const auto codes = readCodes(r, n, 1);
  for (size_t i = 0; i < codes.size(); ++i) o[i] += signedValue(codes[i] == 0, scale);
}

void decodeInt8(Reader& r, float* o, int64_t n) {
  const auto chunk = r.get<uint32_t>();
  if (chunk == 0) throw InvalidArgument("int8 decode: chunk size 0 in the message; the message is corrupt");
  const int64_t chunks = (n + chunk - 1) / chunk;
  const uint8_t* ranges = r.take(8 * static_cast<size_t>(chunks)).data();
  const uint8_t* codes = r.take(static_cast<size_t>(n)).data();
  r.expectEnd();
  for (int64_t c = 0; c < chunks; ++c) {
    float lo, hi;
    std::memcpy(&lo, ranges + 8 * c, 4);
    std::memcpy(&hi, ranges + 8 * c + 4, 4);
    const float step = int8Step(lo, hi);
    const int64_t begin = c * chunk, end = std::min<int64_t>(n, begin + chunk);
    for (int64_t i = begin; i < end; ++i) o[i] += int8Value(lo, step, codes[i]);
  }
}

}  // namespace

const char* quantKindName(QuantKind kind) {
  switch (kind) {
    case QuantKind::kFloat16: return "fp16";
    case QuantKind::kBFloat16: return "bf16";
    case QuantKind::kQsgd: return "qsgd";
    case QuantKind::kTernGrad: return "terngrad";
    case QuantKind::kSign: return "sign";
    case QuantKind::kInt8: return "int8";
  }
  return "unknown";
}

int qsgdBits(int64_t s) { return std::bit_width(static_cast<uint64_t>(s)) + 1; }

void checkQsgdLevels(int64_t s) {
  if (s < 1 || s > 127)
    throw InvalidArgument(str("qsgd: ", s, " levels is out of range; use 1 to 127 (at most 8 bits per element)"));
}

void quantizedDecodeAdd(QuantKind kind, std::span<const uint8_t> msg, float* out, int64_t n) {
  const char* codec = quantKindName(kind);
  Reader r(msg, codec);
  readHeader(r, kind, n, codec);
  switch (kind) {
    case QuantKind::kFloat16: return decodeCast16(r, true, out, n);
    case QuantKind::kBFloat16: return decodeCast16(r, false, out, n);
    case QuantKind::kQsgd: return decodeQsgd(r, out, n);
    case QuantKind::kTernGrad: return decodeTernGrad(r, out, n);
    case QuantKind::kSign: return decodeSign(r, out, n);
    case QuantKind::kInt8: return decodeInt8(r, out, n);
  }
  throw InvalidArgument(str("quantized decode: unknown codec kind ", int(kind)));
}

}  // namespace chorus::compress
