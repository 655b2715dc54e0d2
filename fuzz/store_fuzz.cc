// libFuzzer target for the store-message decoder, which the store server runs on bytes from
// the network. Every input must either decode or throw StoreProtocolError, never read out of
// bounds (ASan), overflow or misuse a value (UBSan), or throw anything else. What decodes
// must re-encode to exactly the same bytes and decode again to the same message, so the
// format has one encoding per message.
//
// fuzz-sources: src/chorus/comm/rendezvous/store_protocol.cc src/chorus/common/error.cc src/chorus/common/hmac.cc
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "chorus/comm/rendezvous/store_protocol.h"

using chorus::comm::Bytes;
using chorus::comm::StoreMessage;
using chorus::comm::StoreProtocolError;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "store_fuzz: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The streaming entry point sees every prefix length a server can.
  try {
    size_t total = chorus::comm::storeFrameSize(data, size);
    if (size < chorus::comm::kStoreHeaderBytes && total != 0) fail("storeFrameSize sized a partial header");
    if (total != 0 && total < chorus::comm::kStoreHeaderBytes) fail("storeFrameSize smaller than a header");
  } catch (const StoreProtocolError&) {
  }

  StoreMessage msg;
  try {
    msg = chorus::comm::decodeStoreMessage(data, size);
  } catch (const StoreProtocolError&) {
    return 0;
  }
  if (chorus::comm::storeFrameSize(data, size) != size) fail("decoded a frame whose header gives another size");
  Bytes again = chorus::comm::encodeStoreMessage(msg);
  if (again.size() != size || std::memcmp(again.data(), data, size) != 0) fail("re-encoding changed the bytes");
  if (!(chorus::comm::decodeStoreMessage(again.data(), again.size()) == msg)) fail("round trip changed the message");
  return 0;
}
