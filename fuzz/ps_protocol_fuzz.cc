// libFuzzer target for the parameter server's message header, which servers decode from any
// worker and workers from any server (src/chorus/ps/protocol.cc). Each input is cut into
// 64-byte headers (the last one zero-padded), as a stream of messages arrives. Every header
// must either decode or throw InvalidArgument, never read out of bounds (ASan) or misuse a
// value (UBSan); what decodes must re-encode to exactly the same 64 bytes and decode again to
// the same fields, so a header has one encoding, and its op must have a name.
//
// fuzz-sources: src/chorus/ps/protocol.cc src/chorus/common/error.cc
#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/ps/protocol.h"
#include "seeds.h"

using namespace chorus::ps;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "ps_protocol_fuzz: %s\n", what);
  std::abort();
}

bool sameFields(const Header& a, const Header& b) {
  // lr compared by its bits: a NaN must survive as the same NaN.
  return a.op == b.op && a.flags == b.flags && a.codec == b.codec && a.worker == b.worker && a.server == b.server && a.fingerprint == b.fingerprint &&
         a.version == b.version && a.clock == b.clock &&
         std::bit_cast<uint64_t>(a.lr) == std::bit_cast<uint64_t>(b.lr) && a.payloadBytes == b.payloadBytes &&
         a.firstSlice == b.firstSlice;
}

void fuzzOne(const std::array<uint8_t, kHeaderBytes>& bytes) {
  Header h;
  try {
    h = decodeHeader(bytes);
  } catch (const chorus::InvalidArgument&) {
    return;
  }
  if (std::string(opName(h.op)) == "unknown") fail("decoded an op that has no name");
  const auto again = encodeHeader(h);
  if (again != bytes) fail("a decoded header re-encodes to other bytes");
  if (!sameFields(decodeHeader(again), h)) fail("a re-encoded header decodes to other fields");
}

void writeSeeds(const char* folder) {
  const Op ops[] = {Op::kInit, Op::kPush, Op::kPull, Op::kBye, Op::kAck, Op::kParams, Op::kError};
  for (Op op : ops) {
    Header h;
    h.op = op;
    h.worker = 1;
    h.server = 2;
    h.fingerprint = 0x0123456789abcdefull;
    h.version = 5;
    h.clock = 6;
    h.lr = 0.05;
    h.payloadBytes = op == Op::kInit || op == Op::kPush || op == Op::kParams ? 4000 : (op == Op::kError ? 17 : 0);
    h.firstSlice = op == Op::kInit || op == Op::kPush ? 3 : 0;
    const auto b = encodeHeader(h);
    chorus::fuzz::writeSeed(folder, opName(op), std::vector<uint8_t>(b.begin(), b.end()));
  }
  // A push and its answer back to back, as a stream.
  Header push;
  push.op = Op::kPush;
  push.payloadBytes = 8;
  Header ack;
  ack.op = Op::kAck;
  std::vector<uint8_t> stream;
  for (const Header& h : {push, ack}) {
    const auto b = encodeHeader(h);
    stream.insert(stream.end(), b.begin(), b.end());
  }
  chorus::fuzz::writeSeed(folder, "push_then_ack", stream);
}

}  // namespace

CHORUS_FUZZ_SEEDS(writeSeeds)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (size_t at = 0; at < size; at += kHeaderBytes) {
    std::array<uint8_t, kHeaderBytes> bytes{};
    std::memcpy(bytes.data(), data + at, std::min(kHeaderBytes, size - at));
    fuzzOne(bytes);
  }
  return 0;
}
