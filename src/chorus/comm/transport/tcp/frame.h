// The tcp transport's wire frame: every message on a connection is one 40-byte header
// followed by its payload as a plain byte stream (the receiver reads the payload straight
// into the posted buffer, so the header is not repeated per chunk). All fields are
// little-endian, written byte by byte, so the format does not depend on the host.
//
//   offset  size  field
//        0     4  magic "CHTF" (0x46544843 little-endian)
//        4     1  version (kFrameVersion)
//        5     1  type (FrameType)
//        6     2  flags, must be 0
//        8     8  tag
//       16     8  signature of the collective call
//       24     8  payload bytes that follow the header
//       32     4  reserved, must be 0
//       36     4  check: FNV-1a over bytes 0..35, so a stream that lost its place is caught
//
// decodeFrame trusts nothing: a wrong magic, version, type, non-zero reserved bits, a bad
// check or a payload size over kMaxFrameBytes throws FrameError. The caller (the pair) turns
// that into a PeerError naming the peer, since the stream cannot be resynchronised.
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "chorus/common/error.h"

namespace chorus::comm::tcp {

inline constexpr size_t kFrameHeaderBytes = 40;
inline constexpr uint32_t kFrameMagic = 0x46544843;  // "CHTF"
inline constexpr uint8_t kFrameVersion = 1;
// The largest payload a frame may announce (1 TiB): anything larger is a corrupt stream.
inline constexpr uint64_t kMaxFrameBytes = uint64_t{1} << 40;

enum class FrameType : uint8_t { kMessage = 1 };

struct FrameHeader {
  FrameType type = FrameType::kMessage;
  uint64_t tag = 0;
  uint64_t sig = 0;
  uint64_t bytes = 0;

  bool operator==(const FrameHeader&) const = default;
};

// A header that violates the format.
class FrameError : public Error {
 public:
  using Error::Error;
};

// Writes exactly kFrameHeaderBytes bytes to `out`. Throws FrameError if h.bytes is over
// kMaxFrameBytes or h.type unknown (a caller bug: such a frame would be refused).
void encodeFrame(const FrameHeader& h, uint8_t* out);

// Decodes the first kFrameHeaderBytes bytes of data[0..n). Throws FrameError when n is too
// short or the header is malformed (the message says which field and its value).
FrameHeader decodeFrame(const uint8_t* data, size_t n);

}  // namespace chorus::comm::tcp
