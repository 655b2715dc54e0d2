// The parameter server's 64-byte message header: little-endian encode and checked decode
// (layout in protocol.h). Bytes are written one by one, so the wire format does not depend
// on the host's byte order.
#include "chorus/ps/protocol.h"

#include <bit>

#include "chorus/common/error.h"

namespace chorus::ps {
namespace {

void put(std::array<uint8_t, kHeaderBytes>& b, size_t at, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t get(const std::array<uint8_t, kHeaderBytes>& b, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{b[at + i]} << (8 * i);
  return v;
}

}  // namespace

const char* opName(Op op) {
  switch (op) {
    case Op::kInit: return "init";
    case Op::kPush: return "push";
    case Op::kPull: return "pull";
    case Op::kBye: return "bye";
    case Op::kAck: return "ack";
    case Op::kParams: return "params";
    case Op::kError: return "error";
  }
  return "unknown";
}

std::array<uint8_t, kHeaderBytes> encodeHeader(const Header& h) {
  std::array<uint8_t, kHeaderBytes> b{};
  put(b, 0, kMagic, 4);
  b[4] = static_cast<uint8_t>(h.op);
  b[5] = h.flags;
  put(b, 6, h.codec, 2);
  put(b, 8, static_cast<uint32_t>(h.worker), 4);
  put(b, 12, static_cast<uint32_t>(h.server), 4);
  put(b, 16, h.fingerprint, 8);
  put(b, 24, static_cast<uint64_t>(h.version), 8);
  put(b, 32, static_cast<uint64_t>(h.clock), 8);
  put(b, 40, std::bit_cast<uint64_t>(h.lr), 8);
  put(b, 48, h.payloadBytes, 8);
  put(b, 56, static_cast<uint64_t>(h.firstSlice), 8);
  return b;
}

Header decodeHeader(const std::array<uint8_t, kHeaderBytes>& b) {
  const auto magic = static_cast<uint32_t>(get(b, 0, 4));
  if (magic != kMagic) {
    throw InvalidArgument(str("parameter-server message: bad magic 0x", std::hex, magic, " (expected 0x",
                              kMagic, " \"CPS1\"); the peer is not a chorus parameter-server endpoint or "
                              "the stream is out of step"));
  }
  const Op op = static_cast<Op>(b[4]);
  if (std::string(opName(op)) == "unknown") {
    throw InvalidArgument(str("parameter-server message: unknown op ", int{b[4]},
                              " (expected 1-4 or 16-18); the peer speaks another protocol version"));
  }
  // Unknown flags mean something this version does not know; a codec goes with kFlagCodec
  // and only with it, so one header has one encoding.
  const uint8_t flags = b[5];
  const auto codec = static_cast<uint16_t>(get(b, 6, 2));
  if ((flags != 0 && flags != kFlagCodec && flags != kFlagFinal && flags != kFlagAgree) ||
      (flags == kFlagCodec) != (codec != 0)) {
    throw InvalidArgument(str("parameter-server message: flags 0x", std::hex, int{flags}, " with codec 0x", codec,
                              std::dec, " (expected flags 0, 2 or 4 and codec 0, or flags 1 and a codec); the peer "
                              "speaks another protocol version or the stream is out of step"));
  }
  Header h;
  h.op = op;
  h.flags = flags;
  h.codec = codec;
  h.worker = static_cast<int32_t>(get(b, 8, 4));
  h.server = static_cast<int32_t>(get(b, 12, 4));
  h.fingerprint = get(b, 16, 8);
  h.version = static_cast<int64_t>(get(b, 24, 8));
  h.clock = static_cast<int64_t>(get(b, 32, 8));
  h.lr = std::bit_cast<double>(get(b, 40, 8));
  h.payloadBytes = get(b, 48, 8);
  h.firstSlice = static_cast<int64_t>(get(b, 56, 8));
  return h;
}

std::vector<uint8_t> encodeDecision(const Decision& d) {
  std::vector<uint8_t> b(decisionBytes(static_cast<int>(d.members.size())));
  auto put = [&](size_t at, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) b[at + static_cast<size_t>(i)] = static_cast<uint8_t>(v >> (8 * i));
  };
  put(0, kDecisionMagic, 4);
  put(4, d.members.size(), 4);
  put(8, static_cast<uint64_t>(d.round), 8);
  for (size_t w = 0; w < d.members.size(); ++w) b[16 + w] = d.members[w] != 0 ? 1 : 0;
  return b;
}

Decision decodeDecision(const std::vector<uint8_t>& b, int workers) {
  if (b.size() != decisionBytes(workers)) {
    throw InvalidArgument(str("ps decision: ", b.size(), " bytes, expected ", decisionBytes(workers), " for ", workers,
                              " workers"));
  }
  auto get = [&](size_t at, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t{b[at + static_cast<size_t>(i)]} << (8 * i);
    return v;
  };
  if (get(0, 4) != kDecisionMagic) throw InvalidArgument(str("ps decision: bad magic 0x", std::hex, get(0, 4)));
  if (get(4, 4) != static_cast<uint64_t>(workers)) {
    throw InvalidArgument(str("ps decision: for ", get(4, 4), " workers, this server has ", workers,
                              "; every server must be started with the same workers"));
  }
  Decision d;
  d.round = static_cast<int64_t>(get(8, 8));
  d.members.assign(b.begin() + 16, b.end());
  for (size_t w = 0; w < d.members.size(); ++w) {
    if (d.members[w] > 1) throw InvalidArgument(str("ps decision: member byte ", int{d.members[w]}, " for worker ", w));
  }
  return d;
}

}  // namespace chorus::ps
