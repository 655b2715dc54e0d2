// Encoder and bounds-checked decoder of store frames (layout in store_protocol.h).
//
// The decoder never trusts a length: every read first checks that the bytes left in the
// buffer cover it (comparing against what is left, so no addition can overflow), every count
// is capped before anything is allocated for it, and the body must end exactly where the
// header said. Then the per-type shape check rejects fields a type may not carry, which
// makes decode(encode(m)) == m and encode(decode(b)) == b for every accepted b.
#include "chorus/comm/rendezvous/store_protocol.h"

#include <cstring>

#include "chorus/common/hmac.h"

namespace chorus::comm {

namespace {

struct Shape {
  bool known;
  int minKeys;  // -1: no keys allowed
  int maxKeys;
  bool value;
  bool counter;
  bool timeout;
};

Shape shapeOf(StoreMsgType type) {
  const int many = static_cast<int>(kMaxStoreKeys);
  switch (type) {
    case StoreMsgType::kSet: return {true, 1, 1, true, false, false};
    case StoreMsgType::kGet: return {true, 1, 1, false, false, true};
    case StoreMsgType::kAdd: return {true, 1, 1, false, true, false};
    case StoreMsgType::kWait: return {true, 1, many, false, false, true};
    case StoreMsgType::kCheck: return {true, 1, many, false, false, false};
    case StoreMsgType::kErase: return {true, 1, 1, false, false, false};
    case StoreMsgType::kOk: return {true, 0, 0, false, false, false};
    case StoreMsgType::kValue: return {true, 0, 0, true, false, false};
    case StoreMsgType::kCounter: return {true, 0, 0, false, true, false};
    case StoreMsgType::kBool: return {true, 0, 0, false, true, false};
    case StoreMsgType::kTimeout: return {true, 1, many, false, false, false};
    case StoreMsgType::kError: return {true, 0, 0, true, false, false};
  }
  return {false, 0, 0, false, false, false};
}

void checkShape(const StoreMessage& m, const char* what) {
  Shape s = shapeOf(m.type);
  std::string name = storeMsgTypeName(m.type);
  if (!s.known) throw StoreProtocolError(str(what, ": unknown message type ", name));
  size_t nKeys = m.keys.size();
  if (nKeys < static_cast<size_t>(s.minKeys) || nKeys > static_cast<size_t>(s.maxKeys)) {
    throw StoreProtocolError(str(what, ": a '", name, "' message carries ", s.minKeys,
                                 s.minKeys == s.maxKeys ? "" : str(" to ", s.maxKeys), " key(s), not ", nKeys));
  }
  for (const auto& k : m.keys) {
    if (k.size() > kMaxStoreKeyBytes) {
      throw StoreProtocolError(str(what, ": a key of ", k.size(), " bytes exceeds the limit of ", kMaxStoreKeyBytes));
    }
  }
  if (!s.value && !m.value.empty()) throw StoreProtocolError(str(what, ": a '", name, "' message carries no value"));
  if (!s.counter && m.counter != 0) throw StoreProtocolError(str(what, ": a '", name, "' message carries no counter"));
  if (!s.timeout && m.timeoutMs != 0) throw StoreProtocolError(str(what, ": a '", name, "' message carries no timeout"));
  if (m.type == StoreMsgType::kBool && m.counter != 0 && m.counter != 1) {
    throw StoreProtocolError(str(what, ": a 'bool' reply must be 0 or 1, not ", m.counter));
  }
}

void putU32(Bytes& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void putU64(Bytes& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

uint32_t getU32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

uint64_t getU64(const uint8_t* p) { return uint64_t(getU32(p)) | (uint64_t(getU32(p + 4)) << 32); }

// Reads fields from [data, data + n), throwing instead of stepping outside it.
class Reader {
 public:
  Reader(const uint8_t* data, size_t n) : data_(data), n_(n) {}
  size_t left() const { return n_ - pos_; }

  const uint8_t* take(size_t len, const char* field) {
    if (len > left()) {
      throw StoreProtocolError(str("store frame: ", field, " needs ", len, " bytes but only ", left(), " remain"));
    }
    const uint8_t* p = data_ + pos_;
    pos_ += len;
    return p;
  }
  uint32_t u32(const char* field) { return getU32(take(4, field)); }
  uint64_t u64(const char* field) { return getU64(take(8, field)); }

 private:
  const uint8_t* data_;
  size_t n_;
  size_t pos_ = 0;
};

}  // namespace

std::string storeMsgTypeName(StoreMsgType type) {
  switch (type) {
    case StoreMsgType::kSet: return "set";
    case StoreMsgType::kGet: return "get";
    case StoreMsgType::kAdd: return "add";
    case StoreMsgType::kWait: return "wait";
    case StoreMsgType::kCheck: return "check";
    case StoreMsgType::kErase: return "erase";
    case StoreMsgType::kOk: return "ok";
    case StoreMsgType::kValue: return "value";
    case StoreMsgType::kCounter: return "counter";
    case StoreMsgType::kBool: return "bool";
    case StoreMsgType::kTimeout: return "timeout";
    case StoreMsgType::kError: return "error";
  }
  return str("unknown(", static_cast<int>(type), ")");
}

Bytes encodeStoreMessage(const StoreMessage& msg) {
  checkShape(msg, "encoding a store message");
  size_t body = 4 + 4 + msg.value.size() + 8 + 8;
  for (const auto& k : msg.keys) body += 4 + k.size();
  if (body > kMaxStoreBodyBytes) {
    throw StoreProtocolError(str("encoding a store '", storeMsgTypeName(msg.type), "' message: ", body,
                                 " bytes exceed the limit of ", kMaxStoreBodyBytes,
                                 "; the store is for rendezvous metadata, not bulk data"));
  }
  Bytes out;
  out.reserve(kStoreHeaderBytes + body);
  putU32(out, kStoreMagic);
  out.push_back(kStoreProtocolVersion);
  out.push_back(static_cast<uint8_t>(msg.type));
  out.push_back(0);
  out.push_back(0);
  putU32(out, static_cast<uint32_t>(body));
  putU32(out, static_cast<uint32_t>(msg.keys.size()));
  for (const auto& k : msg.keys) {
    putU32(out, static_cast<uint32_t>(k.size()));
    out.insert(out.end(), k.begin(), k.end());
  }
  putU32(out, static_cast<uint32_t>(msg.value.size()));
  out.insert(out.end(), msg.value.begin(), msg.value.end());
  putU64(out, static_cast<uint64_t>(msg.counter));
  putU64(out, msg.timeoutMs);
  return out;
}

size_t storeFrameSize(const uint8_t* data, size_t n) {
  if (n < kStoreHeaderBytes) return 0;
  uint32_t magic = getU32(data);
  if (magic != kStoreMagic) {
    throw StoreProtocolError(str("store frame: bad magic bytes ", toHex(data, 4),
                                 "; the peer is not speaking the chorus store protocol"));
  }
  if (data[4] != kStoreProtocolVersion) {
    throw StoreProtocolError(str("store frame: protocol version ", static_cast<int>(data[4]), ", expected ",
                                 static_cast<int>(kStoreProtocolVersion),
                                 "; every process of a job must run the same chorus build"));
  }
  auto type = static_cast<StoreMsgType>(data[5]);
  if (!shapeOf(type).known) {
    throw StoreProtocolError(str("store frame: unknown message type ", static_cast<int>(data[5])));
  }
  if (data[6] != 0 || data[7] != 0) throw StoreProtocolError("store frame: reserved header bytes are not zero");
  uint32_t body = getU32(data + 8);
  if (body > kMaxStoreBodyBytes) {
    throw StoreProtocolError(str("store frame: body of ", body, " bytes exceeds the limit of ", kMaxStoreBodyBytes));
  }
  return kStoreHeaderBytes + body;
}

StoreMessage decodeStoreMessage(const uint8_t* data, size_t n) {
  if (n < kStoreHeaderBytes) {
    throw StoreProtocolError(str("store frame: ", n, " bytes is shorter than the ", kStoreHeaderBytes, "-byte header"));
  }
  size_t total = storeFrameSize(data, n);
  if (total != n) {
    throw StoreProtocolError(str("store frame: header announces ", total, " bytes but the frame has ", n));
  }
  StoreMessage m;
  m.type = static_cast<StoreMsgType>(data[5]);
  Reader r(data + kStoreHeaderBytes, n - kStoreHeaderBytes);
  uint32_t nKeys = r.u32("key count");
  // Each key takes at least its 4-byte length, so a count the body cannot hold is rejected
  // before reserving memory for it.
  if (nKeys > kMaxStoreKeys || nKeys > r.left() / 4) {
    throw StoreProtocolError(str("store frame: key count ", nKeys, " is impossible for a body of ", r.left(),
                                 " bytes (limit ", kMaxStoreKeys, ")"));
  }
  m.keys.reserve(nKeys);
  for (uint32_t i = 0; i < nKeys; ++i) {
    uint32_t len = r.u32("key length");
    if (len > kMaxStoreKeyBytes) {
      throw StoreProtocolError(str("store frame: key of ", len, " bytes exceeds the limit of ", kMaxStoreKeyBytes));
    }
    const uint8_t* p = r.take(len, "key");
    m.keys.emplace_back(reinterpret_cast<const char*>(p), len);
  }
  uint32_t valueLen = r.u32("value length");
  const uint8_t* v = r.take(valueLen, "value");
  m.value.assign(v, v + valueLen);
  m.counter = static_cast<int64_t>(r.u64("counter"));
  m.timeoutMs = r.u64("timeout");
  if (r.left() != 0) throw StoreProtocolError(str("store frame: ", r.left(), " trailing bytes after the body"));
  checkShape(m, "store frame");
  return m;
}

}  // namespace chorus::comm
