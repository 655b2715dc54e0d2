// The wire format of the rendezvous store: one frame per request or reply.
//
//   offset  size  field
//   0       4     magic "CHST"
//   4       1     version (kStoreProtocolVersion)
//   5       1     type (StoreMsgType)
//   6       2     reserved, must be 0
//   8       4     body length in bytes (at most kMaxStoreBodyBytes)
//   12      ...   body: u32 key count, then per key u32 length + bytes; u32 value length +
//                 bytes; i64 counter; u64 timeout in milliseconds
//
// Integers are little-endian. Which fields a type may carry is fixed (see StoreMessage), and
// the decoder rejects anything else, so every frame has exactly one encoding. The decoder
// reads only inside the buffer it is given and throws StoreProtocolError on any malformed
// input: it is fuzzed (fuzz/store_fuzz.cc) because the server runs it on bytes from the
// network. Pure functions; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/rendezvous/store.h"

namespace chorus::comm {

constexpr uint32_t kStoreMagic = 0x54534843;  // "CHST" read as little-endian u32
constexpr uint8_t kStoreProtocolVersion = 1;
constexpr size_t kStoreHeaderBytes = 12;
constexpr size_t kMaxStoreBodyBytes = size_t{64} << 20;
constexpr size_t kMaxStoreKeyBytes = 64 * 1024;
constexpr size_t kMaxStoreKeys = 1 << 16;

enum class StoreMsgType : uint8_t {
  // Requests (client -> server).
  kSet = 1,     // keys[0], value
  kGet = 2,     // keys[0], timeoutMs
  kAdd = 3,     // keys[0], counter = delta
  kWait = 4,    // keys (>= 1), timeoutMs
  kCheck = 5,   // keys (>= 1)
  kErase = 6,   // keys[0]
  // Replies (server -> client).
  kOk = 64,       // nothing
  kValue = 65,    // value
  kCounter = 66,  // counter = the new value
  kBool = 67,     // counter = 0 or 1
  kTimeout = 68,  // keys = the keys still missing
  kError = 69,    // value = a message
};

// Name of a type ("set", "timeout"), or "unknown(N)".
std::string storeMsgTypeName(StoreMsgType type);

struct StoreMessage {
  StoreMsgType type = StoreMsgType::kOk;
  std::vector<std::string> keys;
  Bytes value;
  int64_t counter = 0;
  uint64_t timeoutMs = 0;

  bool operator==(const StoreMessage&) const = default;
};

// A frame that breaks the format (bad magic, version, type, length, field shape).
class StoreProtocolError : public Error {
 public:
  using Error::Error;
};

// Encodes one frame (header and body). Throws StoreProtocolError if msg has fields its type
// may not carry or exceeds the size limits.
Bytes encodeStoreMessage(const StoreMessage& msg);

// Given the first n bytes received of a frame: 0 while fewer than kStoreHeaderBytes are
// there, else the frame's total size (header + body). Throws StoreProtocolError if the
// header is invalid, so a server can drop a bad peer before buffering its body.
size_t storeFrameSize(const uint8_t* data, size_t n);

// Decodes exactly one whole frame of n bytes. Throws StoreProtocolError if the bytes are not
// exactly one valid frame.
StoreMessage decodeStoreMessage(const uint8_t* data, size_t n);

}  // namespace chorus::comm
