// Quantizing gradient codecs: every element is sent, in fewer bits. Each message is a small
// header followed by packed codes (bitpack.h):
//
//   byte 0      kind (Kind below; a decoder rejects any other codec's message)
//   bytes 1-8   numel, uint64 little-endian
//   parameters  per codec, float32/uint32 little-endian (listed with each class)
//   payload     packed codes, little-endian bit order
//
//   codec      parameters                  payload bits/element   default error feedback
//   fp16/bf16  none                        16                     on
//   qsgd       levels s (u32), chunk       ceil(log2(s+1)) + 1    off (unbiased)
//              (u32), per chunk norm (f32)    (+32 bits per chunk)
//   terngrad   chunk (u32), per chunk      2 (+32 bits per chunk) off (unbiased)
//              scale (f32)
//   sign       scale (f32)                 1                      on  (EF-signSGD)
//   int8       chunk (u32), per chunk      8 (+64 bits per chunk  on
//              min and max (f32 each)         of 256 values)
//
// A chunk is that many consecutive elements (the last one may be shorter) quantized with its
// own scale, so that one large value does not flatten the rest of a long gradient. For qsgd
// and terngrad a chunk of 0 means the whole message is one chunk (one scale, as in the
// papers); a message holds ceil(numel / chunk) scales (one if chunk is 0, none if numel is 0).
//
// Error feedback (when on): acc = grad + residual; the message encodes acc; the new residual
// is acc - decoded(message), computed in float32, so decoded + residual == acc up to the
// rounding of that one subtraction (exact whenever decoded is within a factor 2 of acc). With
// it off, acc = grad and no residual is kept. A gradient with NaN or Inf is not an error: the
// message then decodes to non-finite values (so an overflow check downstream, e.g. the AMP
// loss scaler, sees it) and the elements whose residual would be non-finite are reset to 0.
//
// Randomness (QSGD, TernGrad stochastic rounding) comes from state.nextUniform(), so the
// same rngState gives the same message. Codecs hold only their settings: encode/decodeAdd on
// one codec object are thread-safe as long as each thread uses its own CodecState.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "chorus/compress/codec.h"
#include "chorus/compress/quantize_format.h"  // QuantKind, kQuantHeaderBytes, the torch-free decoder

namespace chorus::compress {

// Casts every value to IEEE float16 or bfloat16 (round to nearest even), 2 bytes each.
// Deterministic. float16 overflows to Inf beyond 65504 and flushes below ~6e-8 to zero;
// error feedback carries what the cast lost (not for Inf: see the header comment).
class Cast16Codec : public Codec {
 public:
  enum class Format { kFloat16, kBFloat16 };
  explicit Cast16Codec(Format format, bool errorFeedback = true);
  std::string name() const override;  // "fp16" or "bf16"
  Message encode(std::span<const float> grad, CodecState& state) override;
  void decodeAdd(const Message& msg, std::span<float> out) const override;

 private:
  Format format_;
  bool errorFeedback_;
};

// Default chunk of the per-chunk scaled codecs (QSGD's bucket size d in the paper's
// experiments): 32 bits of scale per 512 elements, 1/16 bit per element.
inline constexpr int64_t kDefaultQuantChunk = 512;

// QSGD (Alistarh et al. 2017) with s levels, in chunks of d elements: per chunk
// norm = ||v_chunk||_2; each |v_i|/norm*s is rounded stochastically to a neighbouring
// integer level in 0..s (unbiased); the code is (level << 1) | sign in ceil(log2(s+1)) + 1
// bits, so 1 <= s <= 127. Decodes to norm * sign * level / s. Variance per element is
// (norm/s)^2 p (1 - p) <= norm^2 / (4 s^2), where p is the fractional part rounded away; per
// chunk E||Q(v) - v||^2 <= min(d/s^2, sqrt(d)/s) ||v_chunk||^2 (the paper's Lemma 3.1), so
// in all at most min(d/s^2, sqrt(d)/s) ||v||^2: the chunk, not the message, sets the bound.
// `chunk` is d, 1 to 2^32 - 1, or 0 for the whole message (d = n; diverges on long buckets).
class QsgdCodec : public Codec {
 public:
  static constexpr int64_t kDefaultLevels = 7;  // 4 bits per element
  explicit QsgdCodec(int64_t levels = kDefaultLevels, bool errorFeedback = false,
                     int64_t chunk = kDefaultQuantChunk);
  std::string name() const override;  // "qsgd"
  int64_t levels() const { return levels_; }
  int64_t chunk() const { return chunk_; }
  int bitsPerElement() const { return bits_; }
  Message encode(std::span<const float> grad, CodecState& state) override;
  void decodeAdd(const Message& msg, std::span<float> out) const override;

 private:
  int64_t levels_;
  int64_t chunk_;
  int bits_;
  bool errorFeedback_;
};

// TernGrad (Wen et al. 2017), in chunks: per chunk scale = max|v_i|; code in {-1, 0, +1}
// with P(code != 0) = |v_i| / scale and the sign of v_i; 2 bits each (0 = 0, 1 = +1,
// 2 = -1). Decodes to scale * code. Unbiased; variance per element scale |v_i| - v_i^2.
// `chunk` as for QsgdCodec (0 = one scale for the whole message, as in the paper per layer).
class TernGradCodec : public Codec {
 public:
  explicit TernGradCodec(bool errorFeedback = false, int64_t chunk = kDefaultQuantChunk);
  std::string name() const override;  // "terngrad"
  int64_t chunk() const { return chunk_; }
  Message encode(std::span<const float> grad, CodecState& state) override;
  void decodeAdd(const Message& msg, std::span<float> out) const override;

 private:
  bool errorFeedback_;
  int64_t chunk_;
};

// Scaled sign (EF-signSGD, Karimireddy et al. 2019; 1-bit SGD): one bit per element
// (1 = acc_i >= 0, 0 = negative) and scale = mean|acc_i| (the L1 norm / n). Decodes to
// scale * sign. Biased, so error feedback is on by default; turning it off gives plain
// scaled signSGD.
class SignCodec : public Codec {
 public:
  explicit SignCodec(bool errorFeedback = true);
  std::string name() const override;  // "sign"
  Message encode(std::span<const float> grad, CodecState& state) override;
  void decodeAdd(const Message& msg, std::span<float> out) const override;

 private:
  bool errorFeedback_;
};

// Linear 8-bit quantization per chunk of kChunk consecutive values: each chunk sends its min
// and max, and codes 0..255 rounded to nearest (deterministic); decodes to
// min + code * ((max - min) / 255). The per-chunk range costs 8 bytes per 256 values
// (1.03125 bytes per element in all) and keeps one outlier from flattening the whole tensor.
class Int8Codec : public Codec {
 public:
  static constexpr uint32_t kChunk = 256;
  explicit Int8Codec(bool errorFeedback = true);
  std::string name() const override;  // "int8"
  Message encode(std::span<const float> grad, CodecState& state) override;
  void decodeAdd(const Message& msg, std::span<float> out) const override;

 private:
  bool errorFeedback_;
};

}  // namespace chorus::compress
