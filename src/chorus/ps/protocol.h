// The messages between parameter-server workers and servers, over the comm core's
// point-to-point send/recv (any transport). Every message is a fixed 64-byte header under
// kHeaderTag, followed, when header.payloadBytes > 0, by exactly that many payload bytes
// under kPayloadTag. The transport needs exact receive sizes, which is why the size travels
// first.
//
//   op          from    payload                                  answer
//   kInit       worker  float32 values of the server's slices    kAck (only the first init
//                       (in slice order)                         counts; later ones are acked
//                                                                 and ignored)
//   kPush       worker  float32 gradient of the server's slices  kAck, or kError
//                       or, with flag kFlagCodec, one codec message
//                       (compress/codec.h) of that gradient
//   kPull       worker  none                                     kParams when consistency
//                                                                 allows (and the version
//                                                                 asked for is there), or
//                                                                 kError
//   kBye        worker  none                                     kAck
//   kBye with   worker  none (the final pull: this worker is     kParams with kFlagFinal once
//   kFlagFinal          done and wants the servers' final model) every worker has left and
//                                                                 every push is applied; until
//                                                                 then kAck with kFlagFinal
//                                                                 every keepalive interval
//   kAck        server  none
//   kParams     server  float32 values of the server's slices
//   kError      server  UTF-8 message (what was wrong, what to do)
//
// Header fields, all little-endian:
//   0  uint32 magic kMagic       4  uint8 op      5  uint8 flags       6  uint16 codec
//   8  int32  worker index       12 int32 server index
//   16 uint64 plan fingerprint (ShardPlan::fingerprint: both sides must agree)
//   24 int64  version: push: basedOn (the version pulled); params: the version sent;
//             pull: the least version to answer with (0: any; see kFlagAgree)
//   32 int64  clock: push: the worker's step; pull: the worker's clock after its push
//   40 double lr: push: the learning rate to apply with (the worker's schedule)
//   48 uint64 payloadBytes
//   56 int64  first slice index of the payload (pushes and inits: the server's first slice)
//
// flags is 0, kFlagFinal (a final pull's goodbye and its answers: see above; the worker
// stays watched, and says a plain goodbye after the kParams), kFlagAgree (below) or
// kFlagCodec, which only a push may set: its payload is then one message of the
// codec whose 1-based index in compress::codecNames() is `codec` (0 otherwise), encoding the
// gradient of the server's slices in slice order, at most kMaxCodecPayload(load) bytes. Codec
// messages describe themselves (compress/codec.h), so the server decodes any of them with a
// default-configured codec of that name and needs no compression settings of its own.
//
// kFlagAgree, on a pull's kParams only: this server's rounds are server 0's (bsp with backup
// workers on several servers, below) and its versions count as server 0's do. A worker must
// then hold one version from all of them, or its next push counts in one round on server 0
// and in an older one on a follower that had not caught up when it answered (the follower
// then drops it while server 0 applies it). So when a follower's flagged answer is older
// than server 0's, the worker pulls from it again with version = server 0's, and the
// follower holds that pull until it has applied server 0's decisions up to there. A server
// that loaded a checkpoint, or a follower that saw server 0's numbering differ from its own
// (a restart), does not set the flag and answers every pull as if the version asked were 0.
//
// A server checks every header (magic, op, worker and server index, fingerprint, version, first
// slice, payload size == 4 x its load) before it touches any parameter. A bad message is
// answered with kError naming the field, the value and the expected one; the server keeps
// running and the payload, if any, is received and dropped (up to kMaxPayloadBytes; a larger
// claimed payload ends the connection to that worker, since it cannot be drained safely).
//
// Between servers (bsp with backup workers and more than one server): the round's decision.
// Server 0 coordinates: when its round closes it sends every other server, under
// kDecisionTag, which workers' pushes form the round; they apply exactly those (server.h).
// A decision is decisionBytes(N) bytes: u32 magic kDecisionMagic, u32 N (workers), i64 round
// (the coordinator's version; -1: the coordinator is done, nothing follows), then one byte
// per worker, 1 when its push is in the round.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace chorus::ps {

inline constexpr uint32_t kMagic = 0x43505331;  // "CPS1"
inline constexpr uint32_t kHeaderTag = 0x5053;
inline constexpr uint32_t kPayloadTag = 0x5054;
inline constexpr size_t kHeaderBytes = 64;
inline constexpr uint64_t kMaxPayloadBytes = uint64_t{1} << 34;  // 16 GiB
inline constexpr uint8_t kFlagCodec = 1;  // the push payload is a codec message (see above)
inline constexpr uint8_t kFlagFinal = 2;  // a final pull's goodbye, its keepalives and its answer
inline constexpr uint8_t kFlagAgree = 4;  // a pull's kParams from a server whose rounds are server 0's
// The largest codec message a server of `load` floats accepts: a sparse message of every
// entry (a 4-byte index and a 4-byte value each) plus a small header, with room to spare.
inline constexpr uint64_t maxCodecPayload(int64_t load) { return 16 * static_cast<uint64_t>(load) + 4096; }

inline constexpr uint32_t kDecisionTag = 0x5055;
inline constexpr uint32_t kDecisionMagic = 0x43505344;  // "CPSD"
inline constexpr size_t decisionBytes(int workers) { return 16 + static_cast<size_t>(workers); }

enum class Op : uint8_t { kInit = 1, kPush = 2, kPull = 3, kBye = 4, kAck = 16, kParams = 17, kError = 18 };
const char* opName(Op op);

struct Header {
  Op op = Op::kAck;
  uint8_t flags = 0;    // 0, kFlagCodec or kFlagFinal
  uint16_t codec = 0;   // with kFlagCodec: 1 + the codec's index in compress::codecNames()
  int32_t worker = 0;
  int32_t server = 0;
  uint64_t fingerprint = 0;
  int64_t version = 0;
  int64_t clock = 0;
  double lr = 0.0;
  uint64_t payloadBytes = 0;
  int64_t firstSlice = 0;
};

std::array<uint8_t, kHeaderBytes> encodeHeader(const Header& h);
// Throws InvalidArgument on a bad magic, an unknown op, an unknown flag or two flags at once,
// or a codec without kFlagCodec or kFlagCodec without one (naming the bytes found).
Header decodeHeader(const std::array<uint8_t, kHeaderBytes>& bytes);

struct Decision {
  int64_t round = 0;               // -1: the coordinator is done
  std::vector<uint8_t> members;    // per worker: 1 when its push is in the round
};
std::vector<uint8_t> encodeDecision(const Decision& d);
// Throws InvalidArgument on a size other than decisionBytes(workers), a bad magic, another
// worker count, or a member byte other than 0 and 1 (naming what was found).
Decision decodeDecision(const std::vector<uint8_t>& bytes, int workers);

}  // namespace chorus::ps
