// Tensor send/recv over a ProcessGroup's tagged byte transfers.
//
// Wire format. A header is kHeaderBytes, little-endian as the hosts are (both ends run the
// same build):
//   uint32 magic 'CTP1' | uint16 dtype code | uint8 ndim | uint8 0 | uint64 payload bytes |
//   int64 dims[kMaxDims] (unused ones 0)
// It goes under tag | kHeaderTagBit, the payload (the tensor's contiguous bytes, nothing else)
// under tag; a tensor with no bytes sends no payload message. The dtype code is our own table
// (not c10's enum values), so the format does not follow LibTorch's numbering.
//
// Why a separate header message rather than a size agreed in advance. A transport receive
// must name the exact byte count, and a layer's output shape is only known to the stage that
// computes it (the trainer's last batch of an epoch may also be smaller). kAgreeOnce pays the
// header once per stream: the pipeline's steady state is payload only, posted into a buffer
// of the agreed size before the peer has sent (Megatron-LM agrees shapes through its config;
// here the first transfer does it, so no one has to configure them).
//
// Ordering. Headers and payloads are FIFO per (peer, tag) on the transport. A receive that
// waits for its header posts its payload receive only then, so a later receive on the same
// stream could otherwise post its payload first and take the earlier payload: every receive
// therefore keeps the previous not-yet-posted receive of its stream and posts it first.
#include "chorus/parallel/p2p.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "chorus/common/error.h"

namespace chorus::parallel {

namespace {

constexpr uint32_t kMagic = 0x31505443;  // "CTP1"

struct DTypeName {
  at::ScalarType type;
  uint16_t code;
  const char* name;
};
constexpr std::array<DTypeName, 12> kDTypes = {{
    {at::kFloat, 1, "float32"},
    {at::kDouble, 2, "float64"},
    {at::kHalf, 3, "float16"},
    {at::kBFloat16, 4, "bfloat16"},
    {at::kChar, 5, "int8"},
    {at::kShort, 6, "int16"},
    {at::kInt, 7, "int32"},
    {at::kLong, 8, "int64"},
    {at::kByte, 9, "uint8"},
    {at::kBool, 10, "bool"},
    {at::kComplexFloat, 11, "complex64"},
    {at::kComplexDouble, 12, "complex128"},
}};

const DTypeName* findType(at::ScalarType t) {
  for (const auto& d : kDTypes) {
    if (d.type == t) return &d;
  }
  return nullptr;
}
const DTypeName* findCode(uint16_t code) {
  for (const auto& d : kDTypes) {
    if (d.code == code) return &d;
  }
  return nullptr;
}

std::string supportedTypes() {
  std::string s;
  for (const auto& d : kDTypes) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

using Header = std::array<uint8_t, TensorP2P::kHeaderBytes>;

void encodeHeader(const TensorMeta& m, Header& h) {
  h.fill(0);
  const uint16_t code = findType(m.dtype)->code;
  const auto ndim = static_cast<uint8_t>(m.shape.size());
  const uint64_t bytes = m.bytes();
  std::memcpy(h.data(), &kMagic, 4);
  std::memcpy(h.data() + 4, &code, 2);
  h[6] = ndim;
  std::memcpy(h.data() + 8, &bytes, 8);
  for (size_t i = 0; i < m.shape.size(); ++i) std::memcpy(h.data() + 16 + 8 * i, &m.shape[i], 8);
}

// The meta a header declares; PeerError if it is not a header this code wrote.
TensorMeta decodeHeader(const Header& h, int peer) {
  uint32_t magic = 0;
  uint16_t code = 0;
  uint64_t bytes = 0;
  std::memcpy(&magic, h.data(), 4);
  std::memcpy(&code, h.data() + 4, 2);
  std::memcpy(&bytes, h.data() + 8, 8);
  const size_t ndim = h[6];
  const DTypeName* d = findCode(code);
  if (magic != kMagic || d == nullptr || ndim > TensorP2P::kMaxDims) {
    throw PeerError(chorus::str("rank ", peer, " sent a tensor header this build cannot read (magic ", magic, ", dtype code ",
                        code, ", ", ndim, " dims); both ranks must run the same chorus build"),
                    peer);
  }
  TensorMeta m;
  m.dtype = d->type;
  m.shape.resize(ndim);
  for (size_t i = 0; i < ndim; ++i) {
    std::memcpy(&m.shape[i], h.data() + 16 + 8 * i, 8);
    if (m.shape[i] < 0) throw PeerError(chorus::str("rank ", peer, " sent a tensor header with a negative dimension"), peer);
  }
  if (m.bytes() != bytes) {
    throw PeerError(chorus::str("rank ", peer, " sent a tensor header for ", m.str(), " that says ", bytes,
                        " bytes instead of ", m.bytes()),
                    peer);
  }
  return m;
}

Millis remaining(const Deadline& d) { return Millis(std::max<int64_t>(1, d.remainingMs())); }

}  // namespace

// ---- TensorMeta ----

TensorMeta TensorMeta::of(const torch::Tensor& t) {
  TensorMeta m;
  m.dtype = t.scalar_type();
  m.shape = t.sizes().vec();
  return m;
}

int64_t TensorMeta::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

size_t TensorMeta::bytes() const { return static_cast<size_t>(numel()) * c10::elementSize(dtype); }

std::string TensorMeta::str() const {
  const DTypeName* d = findType(dtype);
  std::string s = d != nullptr ? d->name : c10::toString(dtype);
  s += "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---- streams and works ----

struct TensorP2P::SendStream {
  std::optional<TensorMeta> agreed;
};

namespace {

// A work that keeps its first failure: once test() or wait() has thrown (with the transfer's
// context in front of the message), every later call throws the same exception.
class ContextWork : public TensorWork {
 protected:
  explicit ContextWork(std::string context) : context_(std::move(context)) {}
  void rethrowIfFailed() const {
    if (error_) std::rethrow_exception(error_);
  }
  // Call inside a catch block.
  [[noreturn]] void fail() {
    try {
      rethrowWithContext(context_);
    } catch (...) {
      error_ = std::current_exception();
      throw;
    }
  }

 private:
  const std::string context_;
  std::exception_ptr error_;
};

class SendWork : public ContextWork {
 public:
  explicit SendWork(std::string context) : ContextWork(std::move(context)) {}

  Header header{};
  torch::Tensor data;  // contiguous; alive until the payload has gone
  comm::WorkPtr headerWork, payloadWork;

  bool test() override {
    rethrowIfFailed();
    try {
      return (!headerWork || headerWork->test()) && (!payloadWork || payloadWork->test());
    } catch (...) {
      fail();
    }
  }
  torch::Tensor wait() override {
    rethrowIfFailed();
    try {
      if (headerWork) headerWork->wait();
      if (payloadWork) payloadWork->wait();
    } catch (...) {
      fail();
    }
    return data;
  }
};

class RecvWork;

}  // namespace

struct TensorP2P::RecvStream {
  std::optional<TensorMeta> agreed;
  bool headerClaimed = false;         // kAgreeOnce: the stream's first receive has been issued
  std::weak_ptr<RecvWork> unposted;   // the latest receive whose payload is not posted yet
};

namespace {

class RecvWork : public ContextWork, public std::enable_shared_from_this<RecvWork> {
 public:
  RecvWork(std::shared_ptr<comm::ProcessGroup> group, std::shared_ptr<TensorP2P::RecvStream> stream, int peer,
           uint32_t tag, std::string context, Deadline deadline, bool agreeOnce)
      : ContextWork(std::move(context)),
        group_(std::move(group)),
        stream_(std::move(stream)),
        peer_(peer),
        tag_(tag),
        deadline_(deadline),
        agreeOnce_(agreeOnce) {}

  std::optional<TensorMeta> expect;
  torch::Tensor out;             // given by recvInto, else allocated once the meta is known
  Header header{};
  comm::WorkPtr headerWork;      // when this receive takes a header
  std::shared_ptr<RecvWork> prev;  // an earlier receive of the stream to post first

  // Posts the payload receive if the meta is known: at once, or (block) after waiting for
  // the earlier receive and the header. Returns whether it is posted.
  bool tryPost(bool block) {
    if (posted_) return true;
    if (prev) {
      if (!prev->tryPost(block)) return false;
      prev.reset();
    }
    TensorMeta meta;
    if (headerWork) {
      if (block) {
        headerWork->wait();
      } else if (!headerWork->test()) {
        return false;
      }
      meta = decodeHeader(header, peer_);
      if (agreeOnce_) stream_->agreed = meta;
    } else {
      CHORUS_CHECK(stream_->agreed.has_value(), "a header-less receive before its stream agreed on a shape");
      meta = *stream_->agreed;
    }
    if (expect && *expect != meta) {
      throw MismatchError(chorus::str("expected ", expect->str(), " but rank ", peer_, " sent ", meta.str(),
                              headerWork ? "" : " (the shape its stream agreed on at its first transfer)",
                              "; both sides must compute the same shape (same model, partition and batch)"));
    }
    if (!out.defined()) out = torch::empty(meta.shape, torch::TensorOptions().dtype(meta.dtype));
    if (meta.bytes() > 0) {
      payloadWork_ = group_->recvAsync(peer_, tag_, out.data_ptr(), meta.bytes(), remaining(deadline_));
    }
    posted_ = true;
    return true;
  }

  bool posted() const { return posted_; }

  bool test() override {
    rethrowIfFailed();
    try {
      if (!tryPost(false)) return false;
      return !payloadWork_ || payloadWork_->test();
    } catch (...) {
      fail();
    }
  }
  torch::Tensor wait() override {
    rethrowIfFailed();
    try {
      tryPost(true);
      if (payloadWork_) payloadWork_->wait();
    } catch (...) {
      fail();
    }
    return out;
  }

 private:
  std::shared_ptr<comm::ProcessGroup> group_;
  std::shared_ptr<TensorP2P::RecvStream> stream_;
  const int peer_;
  const uint32_t tag_;
  const Deadline deadline_;
  const bool agreeOnce_;
  bool posted_ = false;
  comm::WorkPtr payloadWork_;
};

}  // namespace

// ---- TensorP2P ----

TensorP2P::TensorP2P(std::shared_ptr<comm::ProcessGroup> group, P2POptions opts)
    : group_(std::move(group)), opts_(opts) {
  if (!group_) throw InvalidArgument("TensorP2P needs a process group; got nullptr");
}

TensorP2P::~TensorP2P() = default;

std::string TensorP2P::context(bool isSend, int peer, uint32_t tag, const std::string& what) const {
  return chorus::str(isSend ? "send of " : "recv of ", what, isSend ? " to rank " : " from rank ", peer, " tag ", tag,
             " on rank ", group_->rank(), ": ");
}

void TensorP2P::checkPeerAndTag(int peer, uint32_t tag, const std::string& context) const {
  if (peer < 0 || peer >= group_->size() || peer == group_->rank()) {
    throw InvalidArgument(chorus::str(context, "peer ", peer, " is not another rank of this group of ", group_->size()));
  }
  if ((tag & kHeaderTagBit) != 0) {
    throw InvalidArgument(chorus::str(context, "tag ", tag, " has the top bit set, which marks headers; use tags below ",
                              kHeaderTagBit));
  }
}

TensorWorkPtr TensorP2P::sendAsync(const torch::Tensor& t, int peer, uint32_t tag, const std::string& what) {
  const std::string ctx = context(true, peer, tag, what);
  checkPeerAndTag(peer, tag, ctx);
  if (!t.defined()) throw InvalidArgument(chorus::str(ctx, "the tensor is undefined"));
  if (!t.device().is_cpu() || t.layout() != torch::kStrided) {
    throw InvalidArgument(chorus::str(ctx, "only dense CPU tensors can be sent; this one is on ", t.device(), " with layout ",
                              t.layout()));
  }
  if (findType(t.scalar_type()) == nullptr) {
    throw InvalidArgument(chorus::str(ctx, "tensors of type ", c10::toString(t.scalar_type()),
                              " cannot be sent; use one of ", supportedTypes()));
  }
  if (t.dim() > static_cast<int64_t>(kMaxDims)) {
    throw InvalidArgument(chorus::str(ctx, "the tensor has ", t.dim(), " dimensions; at most ", kMaxDims,
                              " can be sent (reshape it first)"));
  }
  const TensorMeta meta = TensorMeta::of(t);
  auto& stream = sends_[{peer, tag}];
  if (!stream) stream = std::make_shared<SendStream>();
  const bool agreeOnce = opts_.meta == MetaMode::kAgreeOnce;
  if (agreeOnce && stream->agreed && *stream->agreed != meta) {
    throw InvalidArgument(chorus::str(ctx, "this stream agreed on ", stream->agreed->str(), " at its first transfer, and this tensor is ",
                              meta.str(), "; send one shape per (peer, tag), use another tag, or MetaMode::kEveryMessage"));
  }
  auto work = std::make_shared<SendWork>(ctx);
  work->data = t.detach().contiguous();
  try {
    if (!agreeOnce || !stream->agreed) {
      encodeHeader(meta, work->header);
      work->headerWork = group_->sendAsync(peer, tag | kHeaderTagBit, work->header.data(), kHeaderBytes, opts_.timeout);
    }
    if (meta.bytes() > 0) {
      work->payloadWork = group_->sendAsync(peer, tag, work->data.data_ptr(), meta.bytes(), opts_.timeout);
    }
  } catch (...) {
    rethrowWithContext(ctx);
  }
  if (agreeOnce) stream->agreed = meta;
  return work;
}

void TensorP2P::send(const torch::Tensor& t, int peer, uint32_t tag, const std::string& what) {
  sendAsync(t, peer, tag, what)->wait();
}

TensorWorkPtr TensorP2P::postRecv(int peer, uint32_t tag, const std::string& what,
                                  const std::optional<TensorMeta>& expect, torch::Tensor* out) {
  const std::string ctx = context(false, peer, tag, what);
  checkPeerAndTag(peer, tag, ctx);
  if (out != nullptr) {
    if (!out->defined() || !out->device().is_cpu() || out->layout() != torch::kStrided || !out->is_contiguous()) {
      throw InvalidArgument(chorus::str(ctx, "recvInto needs a defined, contiguous CPU tensor to write into"));
    }
    if (findType(out->scalar_type()) == nullptr) {
      throw InvalidArgument(chorus::str(ctx, "tensors of type ", c10::toString(out->scalar_type()),
                                " cannot be received; use one of ", supportedTypes()));
    }
  }
  auto& stream = recvs_[{peer, tag}];
  if (!stream) stream = std::make_shared<RecvStream>();
  const bool agreeOnce = opts_.meta == MetaMode::kAgreeOnce;
  const Millis timeout = opts_.timeout.count() > 0 ? opts_.timeout : group_->timeout();
  auto work = std::make_shared<RecvWork>(group_, stream, peer, tag, ctx, Deadline(timeout), agreeOnce);
  work->expect = expect;
  if (out != nullptr) work->out = *out;
  work->prev = stream->unposted.lock();
  try {
    if (!agreeOnce || !stream->headerClaimed) {
      stream->headerClaimed = true;
      work->headerWork = group_->recvAsync(peer, tag | kHeaderTagBit, work->header.data(), kHeaderBytes, timeout);
    }
    // Post the payload now when nothing is in the way (the steady state of kAgreeOnce).
    if (!work->headerWork && !work->prev) work->tryPost(false);
  } catch (...) {
    rethrowWithContext(ctx);
  }
  if (!work->posted()) stream->unposted = work;
  return work;
}

TensorWorkPtr TensorP2P::recvAsync(int peer, uint32_t tag, const std::string& what,
                                   const std::optional<TensorMeta>& expect) {
  return postRecv(peer, tag, what, expect, nullptr);
}

torch::Tensor TensorP2P::recv(int peer, uint32_t tag, const std::string& what, const std::optional<TensorMeta>& expect) {
  return recvAsync(peer, tag, what, expect)->wait();
}

TensorWorkPtr TensorP2P::recvIntoAsync(const torch::Tensor& out, int peer, uint32_t tag, const std::string& what) {
  torch::Tensor target = out;
  return postRecv(peer, tag, what, out.defined() ? std::optional<TensorMeta>(TensorMeta::of(out)) : std::nullopt,
                  &target);
}

void TensorP2P::recvInto(const torch::Tensor& out, int peer, uint32_t tag, const std::string& what) {
  recvIntoAsync(out, peer, tag, what)->wait();
}

std::optional<TensorMeta> TensorP2P::agreedSend(int peer, uint32_t tag) const {
  auto it = sends_.find({peer, tag});
  return it == sends_.end() ? std::nullopt : it->second->agreed;
}

std::optional<TensorMeta> TensorP2P::agreedRecv(int peer, uint32_t tag) const {
  auto it = recvs_.find({peer, tag});
  return it == recvs_.end() ? std::nullopt : it->second->agreed;
}

}  // namespace chorus::parallel
