// Point-to-point transfer of torch tensors between two ranks of a group: the activations and
// activation gradients that layer-wise and pipeline stages pass to each other.
//
//   TensorP2P p2p(group);                                  // MetaMode::kAgreeOnce
//   p2p.send(activation, /*peer=*/1, /*tag=*/7, "activation of stage 0");   // on rank 0
//   torch::Tensor x = p2p.recv(/*peer=*/0, /*tag=*/7, "activation of stage 0");  // on rank 1
//
// Streams. The transfers from one rank to one peer under one tag form a stream; they arrive
// in the order they were posted (the transport's FIFO per peer and tag). The receiver learns
// a tensor's dtype and shape from a small fixed-size header (kHeaderBytes) that travels
// under a tag of its own (tag | kHeaderTagBit) ahead of the payload:
// - MetaMode::kAgreeOnce: only a stream's first transfer carries the header; both ends then
//   keep that dtype and shape for the stream, and every later transfer is the payload alone,
//   posted at once into a buffer of the agreed size (so a receive can be posted before its
//   sender has run). A send of another dtype or shape on the stream is refused on the sender
//   (InvalidArgument naming both); use another tag or kEveryMessage for tensors that change.
// - MetaMode::kEveryMessage: every transfer carries the header, so shapes may change from one
//   transfer to the next (a smaller last batch); the payload receive is posted once its
//   header has arrived.
// Both ends of a stream must use the same mode (a header-less payload is never mistaken for
// a header: it travels under the other tag, and the receiver times out naming the tag).
//
// A receive may name the dtype and shape it expects: a sender that declared another one makes
// it throw MismatchError naming the peer, the tensor and both shapes. Every wait is bounded
// by the timeout (P2POptions::timeout, else the group's), counted from the call that posted
// the transfer. A dead or closed peer fails pending and later transfers with PeerError
// naming it. Errors keep their chorus::Error type and gain "send of <what> to rank P tag T on
// rank R: " in front. After an error a stream is out of step: make a new TensorP2P (and, as
// after any failed transfer, expect the job to end).
//
// Tensors: CPU, strided, of float32/64, float16, bfloat16, int8/16/32/64, uint8, bool, complex
// 64/128, of any shape with at most kMaxDims dimensions (zero elements and scalars included).
// A non-contiguous tensor is sent through a contiguous copy. Received tensors are new,
// contiguous and do not require grad; recvInto writes into a caller's tensor instead.
//
// Thread-safety: a TensorP2P is used by one thread at a time. Its tags share the group's
// point-to-point tag space with every other user of the group: tags must be < kHeaderTagBit,
// and two users of one group must not share a (peer, tag) stream.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "chorus/common/clock.h"
#include "chorus/comm/group.h"

namespace chorus::parallel {

// What a receiver needs to allocate a tensor: its dtype and shape.
struct TensorMeta {
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;

  static TensorMeta of(const torch::Tensor& t);
  int64_t numel() const;
  size_t bytes() const;
  std::string str() const;  // "float32[4, 8]"; "float32[]" for a scalar
  bool operator==(const TensorMeta& o) const = default;
};

enum class MetaMode {
  kAgreeOnce,     // the header on a stream's first transfer only; shapes fixed per stream
  kEveryMessage,  // a header before every payload; shapes may change
};

struct P2POptions {
  MetaMode meta = MetaMode::kAgreeOnce;
  Millis timeout{0};  // bounds each transfer (header and payload), from its post; 0: the group's
};

// The handle of an async send or receive. Keep it until the transfer has finished (wait, or
// test returned true): the transport writes into or reads from the buffers it holds.
class TensorWork {
 public:
  virtual ~TensorWork() = default;
  // True when the transfer has finished; never blocks (a receive whose header has arrived
  // posts its payload here). Rethrows the transfer's error.
  virtual bool test() = 0;
  // Blocks until the transfer has finished, bounded by its timeout, and returns the tensor:
  // the received one, or the one sent. Rethrows the transfer's error (the same one each call).
  virtual torch::Tensor wait() = 0;
};
using TensorWorkPtr = std::shared_ptr<TensorWork>;

class TensorP2P {
 public:
  static constexpr uint32_t kHeaderTagBit = 0x80000000u;  // headers travel under tag | this
  static constexpr size_t kMaxDims = 8;
  static constexpr size_t kHeaderBytes = 16 + 8 * kMaxDims;

  // Throws InvalidArgument for a null group.
  explicit TensorP2P(std::shared_ptr<comm::ProcessGroup> group, P2POptions opts = {});
  ~TensorP2P();
  TensorP2P(const TensorP2P&) = delete;
  TensorP2P& operator=(const TensorP2P&) = delete;

  // Sends t to group rank `peer` under `tag`; `what` names the tensor in errors. The blocking
  // form returns when the transfer has finished. The async form posts it and returns; the
  // work keeps the tensor (or its contiguous copy) alive, and t must not be modified in place
  // until it has finished. Throws InvalidArgument (a bad peer, tag or tensor; a changed shape
  // on a kAgreeOnce stream) before posting anything.
  void send(const torch::Tensor& t, int peer, uint32_t tag, const std::string& what = "tensor");
  TensorWorkPtr sendAsync(const torch::Tensor& t, int peer, uint32_t tag, const std::string& what = "tensor");

  // Receives the next tensor of the stream from `peer` under `tag`. With `expect`, a tensor of
  // another dtype or shape is refused with MismatchError naming the peer and both. Async
  // receives on one stream may be waited for in any order: each gets its own transfer, in the
  // order they were posted.
  torch::Tensor recv(int peer, uint32_t tag, const std::string& what = "tensor",
                     const std::optional<TensorMeta>& expect = std::nullopt);
  TensorWorkPtr recvAsync(int peer, uint32_t tag, const std::string& what = "tensor",
                          const std::optional<TensorMeta>& expect = std::nullopt);
  // Receives into `out` (contiguous CPU; its dtype and shape are the ones expected), so a
  // caller can reuse one buffer. `out` must stay alive and untouched until the work finishes.
  void recvInto(const torch::Tensor& out, int peer, uint32_t tag, const std::string& what = "tensor");
  TensorWorkPtr recvIntoAsync(const torch::Tensor& out, int peer, uint32_t tag, const std::string& what = "tensor");

  // The dtype and shape a kAgreeOnce stream agreed on (nullopt before its first transfer's
  // header went out or came in, and always under kEveryMessage).
  std::optional<TensorMeta> agreedSend(int peer, uint32_t tag) const;
  std::optional<TensorMeta> agreedRecv(int peer, uint32_t tag) const;

  comm::ProcessGroup& group() const { return *group_; }
  const P2POptions& options() const { return opts_; }

  struct SendStream;
  struct RecvStream;

 private:
  TensorWorkPtr postRecv(int peer, uint32_t tag, const std::string& what, const std::optional<TensorMeta>& expect,
                         torch::Tensor* out);
  void checkPeerAndTag(int peer, uint32_t tag, const std::string& context) const;
  std::string context(bool isSend, int peer, uint32_t tag, const std::string& what) const;

  std::shared_ptr<comm::ProcessGroup> group_;
  P2POptions opts_;
  std::map<std::pair<int, uint32_t>, std::shared_ptr<SendStream>> sends_;
  std::map<std::pair<int, uint32_t>, std::shared_ptr<RecvStream>> recvs_;
};

}  // namespace chorus::parallel
