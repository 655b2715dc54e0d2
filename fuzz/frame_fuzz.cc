// libFuzzer target for the tcp transport's receive side, which runs on bytes from the network.
//
// 1. The frame decoder on the raw input: it either decodes or throws FrameError, never reads
//    out of bounds (ASan) or misuses a value (UBSan); what decodes re-encodes to the same 40
//    bytes, so a header has one encoding.
// 2. A Pair (one connection's state machine) reading a stream built from the input over a
//    socketpair, with tiny chunks so reads stop at every possible byte boundary. The input is
//    a config byte and then ops: send a valid frame (tag, size, signature, payload from the
//    input), send raw garbage, or post a receive (copy, uint8 sum or float32 sum; size and
//    signature either those of the frame it will match or random). Invariants: nothing is
//    written past a receive buffer; after the peer's EOF every receive is done; and while the
//    stream held only valid frames, each receive ends exactly as the FIFO-per-tag model says:
//    the payload (MismatchError and an untouched buffer when size or signature differ, PeerError
//    when its frame never came).
//
// fuzz-sources: src/chorus/comm/transport/tcp/frame.cc src/chorus/comm/transport/tcp/pair.cc
// fuzz-sources: src/chorus/comm/net/socket.cc src/chorus/common/error.cc src/chorus/common/clock.cc
// fuzz-sources: src/chorus/common/dtype.cc
// reduceInto is defined below as a plain loop for the two dtypes the harness uses, so the
// fuzzer does not depend on the vectorized kernels' build flags.
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "chorus/comm/transport/tcp/frame.h"
#include "chorus/comm/transport/tcp/pair.h"

using namespace chorus;
using namespace chorus::comm;
using namespace chorus::comm::tcp;

namespace chorus {

void reduceInto(void* dst, const void* src, size_t count, DType dtype, ReduceOp op) {
  if (op != ReduceOp::kSum) std::abort();
  if (dtype == DType::kUInt8) {
    auto* d = static_cast<uint8_t*>(dst);
    const auto* s = static_cast<const uint8_t*>(src);
    for (size_t i = 0; i < count; ++i) d[i] = static_cast<uint8_t>(d[i] + s[i]);
  } else if (dtype == DType::kFloat32) {
    for (size_t i = 0; i < count; ++i) {
      float a, b;
      std::memcpy(&a, static_cast<const uint8_t*>(dst) + 4 * i, 4);
      std::memcpy(&b, static_cast<const uint8_t*>(src) + 4 * i, 4);
      a += b;
      std::memcpy(static_cast<uint8_t*>(dst) + 4 * i, &a, 4);
    }
  } else {
    std::abort();
  }
}

}  // namespace chorus

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "frame_fuzz: %s\n", what);
  std::abort();
}

void fuzzDecoder(const uint8_t* data, size_t size) {
  FrameHeader h;
  try {
    h = decodeFrame(data, size);
  } catch (const FrameError&) {
    return;
  }
  uint8_t again[kFrameHeaderBytes];
  encodeFrame(h, again);
  if (std::memcmp(again, data, kFrameHeaderBytes) != 0) fail("a decoded header re-encodes differently");
  if (!(decodeFrame(again, sizeof again) == h)) fail("a re-encoded header decodes differently");
}

// Reads the input front to back; past its end every byte is 0.
struct Input {
  const uint8_t* p;
  size_t n;
  size_t at = 0;
  bool empty() const { return at >= n; }
  uint8_t byte() { return at < n ? p[at++] : 0; }
};

constexpr size_t kGuard = 16;
constexpr int kTags = 4;

enum class Mode { kCopy, kSumU8, kSumF32 };

struct Frame {
  uint64_t sig;
  std::vector<uint8_t> payload;
};

struct Recv {
  TcpRequestPtr req;
  Mode mode;
  std::vector<uint8_t> buf;  // bytes + kGuard
  std::vector<uint8_t> initial;
  size_t indexInTag;
};

uint8_t fillByte(Mode m) { return m == Mode::kCopy ? 0xEE : 0; }

class Harness {
 public:
  Harness(size_t chunk) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) fail("socketpair");
    writer_.reset(sv[1]);
    net::setNonBlocking(writer_.get(), true);
    pair_ = std::make_unique<Pair>(0, 1, net::Fd(sv[0]), chunk);
  }

  void send(const uint8_t* p, size_t n) {
    size_t done = 0;
    while (done < n) {
      ssize_t w = ::send(writer_.get(), p + done, n - done, MSG_NOSIGNAL);
      if (w > 0) {
        done += static_cast<size_t>(w);
        continue;
      }
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (pair_->failed()) return;  // the reader gave up on the stream; the rest is moot
        pair_->onEvents(POLLIN);
        continue;
      }
      return;  // EPIPE: the reader shut the connection down after a malformed frame
    }
  }

  void sendFrame(uint64_t tag, const Frame& f) {
    uint8_t hdr[kFrameHeaderBytes];
    FrameHeader h;
    h.tag = tag;
    h.sig = f.sig;
    h.bytes = f.payload.size();
    encodeFrame(h, hdr);
    send(hdr, sizeof hdr);
    send(f.payload.data(), f.payload.size());
  }

  void step() { pair_->onEvents(POLLIN); }

  void finish() {
    ::shutdown(writer_.get(), SHUT_WR);
    for (int i = 0; i < 1 << 20 && !pair_->failed(); ++i) pair_->onEvents(POLLIN);
    if (!pair_->failed()) fail("the pair never saw the end of the stream");
  }

  Pair& pair() { return *pair_; }

 private:
  net::Fd writer_;
  std::unique_ptr<Pair> pair_;
};

void fuzzStream(const uint8_t* data, size_t size) {
  Input in{data, size};
  const uint8_t config = in.byte();
  const size_t chunks[] = {64, 100, 4096, 65536};
  Harness h(chunks[config & 3]);

  std::map<uint64_t, std::vector<Frame>> sent;  // per tag, in stream order
  std::map<uint64_t, size_t> posted;            // receives posted per tag
  std::vector<Recv> recvs;
  bool garbage = false;

  while (!in.empty()) {
    const uint8_t op = in.byte();
    switch (op % 4) {
      case 0:
      case 1: {
        const uint64_t tag = in.byte() % kTags;
        const size_t len = static_cast<size_t>(in.byte()) * 8 + in.byte() % 8;
        Frame f;
        f.sig = in.byte() % 2;
        f.payload.resize(len);
        for (auto& b : f.payload) b = in.byte();
        h.sendFrame(tag, f);
        sent[tag].push_back(std::move(f));
        break;
      }
      case 2: {
        uint8_t junk[64];
        const size_t n = in.byte() % sizeof junk;
        for (size_t i = 0; i < n; ++i) junk[i] = in.byte();
        h.send(junk, n);
        garbage = garbage || n > 0;
        break;
      }
      case 3: {
        const uint64_t tag = in.byte() % kTags;
        const uint8_t how = in.byte();
        Recv r;
        r.indexInTag = posted[tag]++;
        r.mode = static_cast<Mode>((how >> 2) % 3);
        const auto& frames = sent[tag];
        size_t bytes;
        uint64_t sig;
        if ((how & 1) != 0 && r.indexInTag < frames.size()) {
          bytes = frames[r.indexInTag].payload.size();
          sig = frames[r.indexInTag].sig;
        } else {
          bytes = static_cast<size_t>(in.byte()) * 8 + in.byte() % 8;
          sig = (how >> 1) & 1;
        }
        if (r.mode == Mode::kSumF32) bytes -= bytes % 4;
        r.buf.assign(bytes + kGuard, fillByte(r.mode));
        if (r.mode == Mode::kSumF32) {
          const float negZero = -0.0f;
          for (size_t i = 0; i + 4 <= bytes; i += 4) std::memcpy(r.buf.data() + i, &negZero, 4);
        }
        r.initial = r.buf;
        RecvReduce u8{DType::kUInt8, ReduceOp::kSum};
        RecvReduce f32{DType::kFloat32, ReduceOp::kSum};
        const RecvReduce* rr = r.mode == Mode::kCopy ? nullptr : (r.mode == Mode::kSumU8 ? &u8 : &f32);
        r.req = std::make_shared<TcpRequest>(Request::Kind::kRecv, 1, tag, sig, bytes, r.buf.data(), rr);
        h.pair().postRecv(r.req);
        recvs.push_back(std::move(r));
        break;
      }
    }
    h.step();
  }
  h.finish();

  for (const Recv& r : recvs) {
    const size_t bytes = r.req->bytes;
    if (std::memcmp(r.buf.data() + bytes, r.initial.data() + bytes, kGuard) != 0) {
      fail("a receive wrote past its buffer");
    }
    if (!r.req->done) fail("a receive is still pending after the peer's EOF");
    if (garbage) continue;  // the stream lost its frame boundaries: no model to check against
    const auto& frames = sent[r.req->tag];
    if (r.indexInTag >= frames.size()) {
      bool isPeerError = false;
      try {
        std::rethrow_exception(r.req->error);
      } catch (const PeerError&) {
        isPeerError = true;
      } catch (...) {
      }
      if (!isPeerError) fail("a receive whose message never came did not fail with PeerError");
      continue;
    }
    const Frame& f = frames[r.indexInTag];
    if (f.payload.size() != bytes || f.sig != r.req->sig) {
      bool isMismatch = false;
      try {
        if (r.req->error) std::rethrow_exception(r.req->error);
      } catch (const MismatchError&) {
        isMismatch = true;
      } catch (...) {
      }
      if (!isMismatch) fail("a mismatched receive did not fail with MismatchError");
      if (r.buf != r.initial) fail("a mismatched receive changed its buffer");
      continue;
    }
    if (r.req->error) fail("a matching receive failed");
    if (r.mode == Mode::kSumF32) {
      for (size_t i = 0; i < bytes; i += 4) {
        float got, want;
        std::memcpy(&got, r.buf.data() + i, 4);
        std::memcpy(&want, f.payload.data() + i, 4);
        if (std::isnan(want) ? !std::isnan(got) : std::memcmp(&got, &want, 4) != 0) {
          fail("a float32 sum into -0.0 did not reproduce the payload");
        }
      }
    } else if (bytes > 0 && std::memcmp(r.buf.data(), f.payload.data(), bytes) != 0) {
      fail("a received payload differs from the one sent");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzzDecoder(data, size);
  try {
    fuzzStream(data, size);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "frame_fuzz: unexpected exception: %s\n", e.what());
    std::abort();
  }
  return 0;
}
