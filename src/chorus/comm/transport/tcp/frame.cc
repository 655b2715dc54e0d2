#include "chorus/comm/transport/tcp/frame.h"

#include <cinttypes>
#include <cstdio>

namespace chorus::comm::tcp {

namespace {

constexpr size_t kCheckOffset = 36;

void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

uint32_t fnv1a(const uint8_t* p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 16777619u;
  }
  return h;
}

bool knownType(uint8_t t) { return t == static_cast<uint8_t>(FrameType::kMessage); }

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

}  // namespace

void encodeFrame(const FrameHeader& h, uint8_t* out) {
  if (!knownType(static_cast<uint8_t>(h.type))) {
    throw FrameError(str("cannot encode a frame of unknown type ", static_cast<int>(h.type)));
  }
  if (h.bytes > kMaxFrameBytes) {
    throw FrameError(str("cannot send a message of ", h.bytes, " bytes over tcp: the limit is ",
                         kMaxFrameBytes, " bytes; hint: split it"));
  }
  put32(out, kFrameMagic);
  out[4] = kFrameVersion;
  out[5] = static_cast<uint8_t>(h.type);
  out[6] = 0;
  out[7] = 0;
  put64(out + 8, h.tag);
  put64(out + 16, h.sig);
  put64(out + 24, h.bytes);
  put32(out + 32, 0);
  put32(out + kCheckOffset, fnv1a(out, kCheckOffset));
}

FrameHeader decodeFrame(const uint8_t* data, size_t n) {
  if (data == nullptr || n < kFrameHeaderBytes) {
    throw FrameError(str("frame header truncated: ", n, " of ", kFrameHeaderBytes, " bytes"));
  }
  uint32_t magic = get32(data);
  if (magic != kFrameMagic) throw FrameError(str("bad frame magic ", hex(magic)));
  if (data[4] != kFrameVersion) {
    throw FrameError(str("frame version ", static_cast<int>(data[4]), ", expected ",
                         static_cast<int>(kFrameVersion), " (are both ranks the same chorus build?)"));
  }
  if (!knownType(data[5])) throw FrameError(str("unknown frame type ", static_cast<int>(data[5])));
  if (data[6] != 0 || data[7] != 0 || get32(data + 32) != 0) {
    throw FrameError("reserved frame bits are set");
  }
  uint32_t check = get32(data + kCheckOffset);
  uint32_t want = fnv1a(data, kCheckOffset);
  if (check != want) throw FrameError(str("frame check ", hex(check), " != ", hex(want)));
  FrameHeader h;
  h.type = static_cast<FrameType>(data[5]);
  h.tag = get64(data + 8);
  h.sig = get64(data + 16);
  h.bytes = get64(data + 24);
  if (h.bytes > kMaxFrameBytes) {
    throw FrameError(str("frame announces ", h.bytes, " payload bytes, over the limit of ", kMaxFrameBytes));
  }
  return h;
}

}  // namespace chorus::comm::tcp
