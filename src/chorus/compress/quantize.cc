// Quantizing codecs (see quantize.h for the message layout and the contract they share).
//
// Every encode follows the same steps:
//   1. acc = grad (+ residual, with error feedback), flat float32;
//   2. one pass for the message's parameters (per-chunk L2 norm or max|v|, mean|v|, or
//      per-chunk range);
//   3. one pass that picks each code and, with error feedback, stores
//      residual_i = acc_i - decoded_i, where decoded_i is computed by the same expression
//      the decoder uses (shared through quantize_format.h), so sender and receiver agree
//      bit for bit;
//   4. the codes are bit-packed after the header.
// Decoding is in quantize_format.cc; decodeAdd calls it.
// A non-finite parameter (NaN/Inf in the gradient) is sent as NaN, so every value it scales
// (the whole message, or the chunk) decodes to NaN and the receiver's overflow check trips; residual elements that would be non-finite
// are reset to 0 so one bad step does not poison every later one.
#include "chorus/compress/quantize.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

#include "chorus/common/dtype.h"
#include "chorus/common/error.h"
#include "chorus/compress/bitpack.h"

namespace chorus::compress {
namespace {

static_assert(std::endian::native == std::endian::little, "quantize.cc writes headers in host order");

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Step 1: the values to encode. With error feedback `acc` holds grad + residual (a fresh
// buffer) and `residual` points at the state's residual, to be overwritten in step 3; without
// it `acc` is empty and data() is the gradient itself.
struct Accumulated {
  std::span<const float> grad;
  std::vector<float> acc;
  float* residual = nullptr;
  const float* data() const { return residual ? acc.data() : grad.data(); }
};

Accumulated accumulate(std::span<const float> grad, CodecState& state, bool errorFeedback) {
  Accumulated a;
  a.grad = grad;
  if (!errorFeedback) return a;
  std::vector<float>& r = state.residual(grad.size());
  a.acc.resize(grad.size());
  for (size_t i = 0; i < grad.size(); ++i) a.acc[i] = grad[i] + r[i];
  a.residual = r.data();
  return a;
}

// residual_i = acc_i - decoded_i in float32; non-finite results are reset to 0.
inline void storeResidual(float* residual, int64_t i, float acc, float decoded) {
  const float r = acc - decoded;
  residual[i] = std::isfinite(r) ? r : 0.0f;
}

// Little-endian message writer over a preallocated Message (the reader is in quantize_format.cc).
class Writer {
 public:
  Writer(Message& msg, size_t size) : msg_(msg) { msg_.assign(size, 0); }
  template <typename T>
  void put(T v) {
    std::memcpy(msg_.data() + pos_, &v, sizeof(T));
    pos_ += sizeof(T);
  }
  std::span<uint8_t> rest() { return std::span<uint8_t>(msg_).subspan(pos_); }
  uint8_t* at(size_t offset) { return msg_.data() + offset; }
  size_t pos() const { return pos_; }
  void skip(size_t n) { pos_ += n; }

 private:
  Message& msg_;
  size_t pos_ = 0;
};

void writeHeader(Writer& w, QuantKind kind, int64_t numel) {
  w.put(static_cast<uint8_t>(kind));
  w.put(static_cast<uint64_t>(numel));
}

void packInto(Writer& w, const std::vector<uint8_t>& codes, int bits) { packBits(codes, bits, w.rest()); }

}  // namespace

// ---- Cast16 --------------------------------------------------------------------------------

Cast16Codec::Cast16Codec(Format format, bool errorFeedback) : format_(format), errorFeedback_(errorFeedback) {}

std::string Cast16Codec::name() const { return format_ == Format::kFloat16 ? "fp16" : "bf16"; }

Message Cast16Codec::encode(std::span<const float> grad, CodecState& state) {
  const auto n = static_cast<int64_t>(grad.size());
  Accumulated a = accumulate(grad, state, errorFeedback_);
  const float* acc = a.data();
  const bool half = format_ == Format::kFloat16;
  Message msg;
  Writer w(msg, kQuantHeaderBytes + 2 * static_cast<size_t>(n));
  writeHeader(w, half ? QuantKind::kFloat16 : QuantKind::kBFloat16, n);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = half ? floatToHalf(acc[i]) : floatToBf16(acc[i]);
    w.put(h);
    if (a.residual) storeResidual(a.residual, i, acc[i], half ? halfToFloat(h) : bf16ToFloat(h));
  }
  return msg;
}

void Cast16Codec::decodeAdd(const Message& msg, std::span<float> out) const {
  const QuantKind kind = format_ == Format::kFloat16 ? QuantKind::kFloat16 : QuantKind::kBFloat16;
  quantizedDecodeAdd(kind, msg, out.data(), static_cast<int64_t>(out.size()));
}

// ---- Chunks of the scaled codecs (QSGD, TernGrad; QuantChunks in quantize_format.h) ----------

namespace {

void checkChunk(int64_t chunk, const std::string& codec) {
  if (chunk < 0 || chunk > std::numeric_limits<uint32_t>::max())
    throw InvalidArgument(str(codec, ": chunk of ", chunk,
                              " elements is out of range; use 1 to 2^32 - 1, or 0 for one chunk per message"));
}

void putScales(Writer& w, const std::vector<float>& scales) {
  for (float v : scales) w.put(v);
}

}  // namespace

// ---- QSGD ----------------------------------------------------------------------------------

QsgdCodec::QsgdCodec(int64_t levels, bool errorFeedback, int64_t chunk)
    : levels_(levels), chunk_(chunk), errorFeedback_(errorFeedback) {
  checkQsgdLevels(levels);
  checkChunk(chunk, "qsgd");
  bits_ = qsgdBits(levels);
}

std::string QsgdCodec::name() const { return "qsgd"; }

Message QsgdCodec::encode(std::span<const float> grad, CodecState& state) {
  const auto n = static_cast<int64_t>(grad.size());
  Accumulated a = accumulate(grad, state, errorFeedback_);
  const float* acc = a.data();
  const QuantChunks chunks(n, static_cast<uint32_t>(chunk_));
  const float s = static_cast<float>(levels_);
  std::vector<float> norms(static_cast<size_t>(chunks.count()));
  std::vector<uint8_t> codes(static_cast<size_t>(n), 0);
  for (int64_t c = 0; c < chunks.count(); ++c) {
    const int64_t begin = chunks.begin(c), end = chunks.end(c);
    double sumSq = 0;
    for (int64_t i = begin; i < end; ++i) sumSq += static_cast<double>(acc[i]) * acc[i];
    float norm = static_cast<float>(std::sqrt(sumSq));
    if (!std::isfinite(norm)) norm = kNaN;
    norms[c] = norm;
    const float unit = norm / s;  // the value of one level
    if (norm > 0) {  // false for an all-zero chunk and for NaN: its codes stay 0
      for (int64_t i = begin; i < end; ++i) {
        const float x = std::fabs(acc[i]) / norm * s;  // in [0, s] up to rounding
        float l = std::floor(x);
        if (state.nextUniform() < x - l) l += 1;
        const auto level = static_cast<unsigned>(std::min(l, s));
        const bool negative = acc[i] < 0;
        codes[i] = static_cast<uint8_t>(level << 1 | unsigned(negative));
      }
    }
    if (a.residual)
      for (int64_t i = begin; i < end; ++i)
        storeResidual(a.residual, i, acc[i], signedValue(codes[i] & 1, static_cast<float>(codes[i] >> 1) * unit));
  }
  Message msg;
  Writer w(msg, kQuantHeaderBytes + 8 + 4 * norms.size() + packedBytes(codes.size(), bits_));
  writeHeader(w, QuantKind::kQsgd, n);
  w.put(static_cast<uint32_t>(levels_));
  w.put(static_cast<uint32_t>(chunk_));
  putScales(w, norms);
  packInto(w, codes, bits_);
  return msg;
}

void QsgdCodec::decodeAdd(const Message& msg, std::span<float> out) const {
  quantizedDecodeAdd(QuantKind::kQsgd, msg, out.data(), static_cast<int64_t>(out.size()));
}

// ---- TernGrad ------------------------------------------------------------------------------

TernGradCodec::TernGradCodec(bool errorFeedback, int64_t chunk) : errorFeedback_(errorFeedback), chunk_(chunk) {
  checkChunk(chunk, "terngrad");
}

std::string TernGradCodec::name() const { return "terngrad"; }

Message TernGradCodec::encode(std::span<const float> grad, CodecState& state) {
  const auto n = static_cast<int64_t>(grad.size());
  Accumulated a = accumulate(grad, state, errorFeedback_);
  const float* acc = a.data();
  const QuantChunks chunks(n, static_cast<uint32_t>(chunk_));
  std::vector<float> scales(static_cast<size_t>(chunks.count()));
  std::vector<uint8_t> codes(static_cast<size_t>(n), 0);
  for (int64_t c = 0; c < chunks.count(); ++c) {
    const int64_t begin = chunks.begin(c), end = chunks.end(c);
    float scale = 0;
    bool finite = true;
    for (int64_t i = begin; i < end; ++i) {
      finite &= std::isfinite(acc[i]);
      scale = std::max(scale, std::fabs(acc[i]));
    }
    if (!finite) scale = kNaN;
    scales[c] = scale;
    if (scale > 0) {
      for (int64_t i = begin; i < end; ++i) {
        // |acc_i| == scale gives p == 1, always kept, so the chunk's largest element is exact.
        if (state.nextUniform() < std::fabs(acc[i]) / scale) codes[i] = acc[i] < 0 ? kTernMinus : kTernPlus;
      }
    }
    if (a.residual)
      for (int64_t i = begin; i < end; ++i)
        storeResidual(a.residual, i, acc[i], codes[i] == 0 ? 0.0f : signedValue(codes[i] == kTernMinus, scale));
  }
  Message msg;
  Writer w(msg, kQuantHeaderBytes + 4 + 4 * scales.size() + packedBytes(codes.size(), 2));
  writeHeader(w, QuantKind::kTernGrad, n);
  w.put(static_cast<uint32_t>(chunk_));
  putScales(w, scales);
  packInto(w, codes, 2);
  return msg;
}

void TernGradCodec::decodeAdd(const Message& msg, std::span<float> out) const {
  quantizedDecodeAdd(QuantKind::kTernGrad, msg, out.data(), static_cast<int64_t>(out.size()));
}

// ---- Sign ----------------------------------------------------------------------------------

SignCodec::SignCodec(bool errorFeedback) : errorFeedback_(errorFeedback) {}

std::string SignCodec::name() const { return "sign"; }

Message SignCodec::encode(std::span<const float> grad, CodecState& state) {
  const auto n = static_cast<int64_t>(grad.size());
  Accumulated a = accumulate(grad, state, errorFeedback_);
  const float* acc = a.data();
  double l1 = 0;
  for (int64_t i = 0; i < n; ++i) l1 += std::fabs(acc[i]);
  float scale = n > 0 ? static_cast<float>(l1 / static_cast<double>(n)) : 0.0f;
  if (!std::isfinite(scale)) scale = kNaN;
  std::vector<uint8_t> codes(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) codes[i] = acc[i] >= 0 ? 1 : 0;
  if (a.residual)
    for (int64_t i = 0; i < n; ++i) storeResidual(a.residual, i, acc[i], signedValue(codes[i] == 0, scale));
  Message msg;
  Writer w(msg, kQuantHeaderBytes + 4 + packedBytes(codes.size(), 1));
  writeHeader(w, QuantKind::kSign, n);
  w.put(scale);
  packInto(w, codes, 1);
  return msg;
}

void SignCodec::decodeAdd(const Message& msg, std::span<float> out) const {
  quantizedDecodeAdd(QuantKind::kSign, msg, out.data(), static_cast<int64_t>(out.size()));
}

// ---- Int8 ----------------------------------------------------------------------------------

Int8Codec::Int8Codec(bool errorFeedback) : errorFeedback_(errorFeedback) {}

std::string Int8Codec::name() const { return "int8"; }

Message Int8Codec::encode(std::span<const float> grad, CodecState& state) {
  const auto n = static_cast<int64_t>(grad.size());
  Accumulated a = accumulate(grad, state, errorFeedback_);
  const float* acc = a.data();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  Message msg;
  Writer w(msg, kQuantHeaderBytes + 4 + 8 * static_cast<size_t>(chunks) + static_cast<size_t>(n));
  writeHeader(w, QuantKind::kInt8, n);
  w.put(kChunk);
  // Ranges first, then one byte per element: codes land directly in the message.
  uint8_t* codes = w.at(w.pos() + 8 * static_cast<size_t>(chunks));
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, end = std::min<int64_t>(n, begin + kChunk);
    float lo = acc[begin], hi = acc[begin];
    bool finite = true;
    for (int64_t i = begin; i < end; ++i) {
      finite &= std::isfinite(acc[i]);
      lo = std::min(lo, acc[i]);
      hi = std::max(hi, acc[i]);
    }
    if (!finite) lo = hi = kNaN;
    w.put(lo);
    w.put(hi);
    const float step = int8Step(lo, hi);
    for (int64_t i = begin; i < end; ++i) {
      uint8_t code = 0;
      if (step > 0) {  // false for a constant chunk and for NaN
        const double q = std::nearbyint((static_cast<double>(acc[i]) - lo) / step);
        code = static_cast<uint8_t>(std::clamp(q, 0.0, 255.0));
      }
      codes[i] = code;
      if (a.residual) storeResidual(a.residual, i, acc[i], int8Value(lo, step, code));
    }
  }
  return msg;
}

void Int8Codec::decodeAdd(const Message& msg, std::span<float> out) const {
  quantizedDecodeAdd(QuantKind::kInt8, msg, out.data(), static_cast<int64_t>(out.size()));
}

}  // namespace chorus::compress
