// The conformance cases. Most of them run on a ring: every rank sends to the next rank and
// receives from the previous one, so every rank both sends and receives and, on the mixed
// transport with hosts [0,0,1] or [0,0,1,1], the ring crosses both shm and tcp links.
// Messages that must not arrive yet are held back by causality (a rank sends only after the
// peer said it is ready), never by sleeps.
#include "transport_conformance.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <functional>
#include <thread>
#include <type_traits>

#include "chorus/common/clock.h"
#include "chorus/common/error.h"

namespace chorus::testutil::conformance {

namespace {

using comm::checkDone;
using comm::RecvReduce;
using comm::RequestPtr;
using comm::Transport;

// The deadline of every wait that should complete.
constexpr Millis kWait(15000);
// How soon a closed or dead peer must fail a pending request (every backend notices within
// milliseconds; this leaves room for a loaded machine).
constexpr double kPeerGoneWithinMs = 5000;
// The signature of ordinary messages.
constexpr uint64_t kSig = 0x5157;

Deadline soon() { return Deadline(kWait); }

[[noreturn]] void failAt(const Transport& t, int line, const std::string& what) {
  throw Failure(
      str("rank ", t.rank(), " of ", t.size(), " on ", t.name(), " (transport_conformance.cc:", line, "): ", what));
}

// Checks a condition inside a case (where `t` is the transport).
#define CONFORM(cond, ...)                                                                               \
  do {                                                                                                   \
    if (!(cond)) failAt(t, __LINE__, ::chorus::str("expected " #cond __VA_OPT__(, ": ", ) __VA_ARGS__)); \
  } while (0)

double msSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

int nextOf(const Transport& t) { return (t.rank() + 1) % t.size(); }
int prevOf(const Transport& t) { return (t.rank() + t.size() - 1) % t.size(); }

std::vector<int> othersOf(const Transport& t) {
  std::vector<int> v;
  for (int p = 0; p < t.size(); ++p) {
    if (p != t.rank()) v.push_back(p);
  }
  return v;
}

void waitOne(Transport& t, const RequestPtr& r) {
  const RequestPtr one[] = {r};
  t.waitAll(one, soon());
}

void waitAll(Transport& t, const std::vector<RequestPtr>& reqs) { t.waitAll(reqs, soon()); }

// One byte that says "go on" (the receive is posted, the timeout happened, ...).
void sendSignal(Transport& t, int peer, uint64_t tag) {
  uint8_t b = 1;
  waitOne(t, t.isend(peer, tag, 0, &b, 1));
}

void recvSignal(Transport& t, int peer, uint64_t tag) {
  uint8_t b = 0;
  waitOne(t, t.irecv(peer, tag, 0, &b, 1));
}

// ---- message contents ----

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Distinct for every (sender, receiver, tag, extra).
uint64_t seedOf(int from, int to, uint64_t tag, uint64_t extra = 0) {
  return mix((static_cast<uint64_t>(from) << 48) ^ (static_cast<uint64_t>(to) << 32) ^ mix(tag) ^ (extra << 20));
}

uint64_t wordAt(uint64_t seed, size_t off) { return mix(seed + off); }

std::vector<uint8_t> pattern(uint64_t seed, size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t off = 0; off < n; off += 8) {
    const uint64_t w = wordAt(seed, off);
    std::memcpy(v.data() + off, &w, std::min<size_t>(8, n - off));
  }
  return v;
}

// The first byte of p[0, n) that differs from pattern(seed, n), or -1.
long firstWrong(const uint8_t* p, size_t n, uint64_t seed) {
  for (size_t off = 0; off < n; off += 8) {
    const uint64_t w = wordAt(seed, off);
    const size_t len = std::min<size_t>(8, n - off);
    if (std::memcmp(p + off, &w, len) != 0) {
      const auto* want = reinterpret_cast<const uint8_t*>(&w);
      for (size_t i = 0; i < len; ++i) {
        if (p[off + i] != want[i]) return static_cast<long>(off + i);
      }
    }
  }
  return -1;
}

// A receive buffer followed by a guard region that nothing may write.
constexpr size_t kGuardBytes = 64;
constexpr uint8_t kGuardByte = 0xA5;

struct Inbox {
  explicit Inbox(size_t n) : bytes(n), buf(n + kGuardBytes, kGuardByte) {}
  uint8_t* data() { return buf.data(); }
  const uint8_t* data() const { return buf.data(); }
  bool guardIntact() const {
    return std::all_of(buf.begin() + static_cast<std::ptrdiff_t>(bytes), buf.end(),
                       [](uint8_t b) { return b == kGuardByte; });
  }
  size_t bytes;
  std::vector<uint8_t> buf;
};

void checkData(const Transport& t, int line, const Inbox& in, uint64_t seed, const std::string& what) {
  const long bad = firstWrong(in.data(), in.bytes, seed);
  if (bad >= 0) failAt(t, line, str(what, " (", in.bytes, " bytes): wrong data from byte ", bad, " on"));
  if (!in.guardIntact()) {
    failAt(t, line, str(what, ": the transport wrote past the ", in.bytes, "-byte receive buffer"));
  }
}

// ---- what error messages name ----

bool wordChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_'; }

// `token` occurs in s, not as part of a longer word or number ("rank 1" is not in "rank 12").
bool hasToken(const std::string& s, const std::string& token) {
  for (size_t pos = s.find(token); pos != std::string::npos; pos = s.find(token, pos + 1)) {
    const size_t end = pos + token.size();
    const bool startOk = pos == 0 || !wordChar(s[pos - 1]) || !wordChar(token.front());
    const bool endOk = end == s.size() || !wordChar(s[end]) || !wordChar(token.back());
    if (startOk && endOk) return true;
  }
  return false;
}

std::string hexOf(uint64_t v) { return str("0x", std::hex, v); }

// Backends name a peer "rank P", "peer P" or "peer rank P".
bool namesPeer(const std::string& msg, int peer) {
  return hasToken(msg, str("rank ", peer)) || hasToken(msg, str("peer ", peer));
}

// Backends print a tag in decimal or in hex.
bool namesTag(const std::string& msg, uint64_t tag) {
  return hasToken(msg, str("tag ", tag)) || hasToken(msg, str("tag ", hexOf(tag)));
}

// What an expected exception said.
struct Caught {
  std::string what;
  int peer = -1;  // PeerError::peer()
};

// Runs body and returns what the E it threw said; fails the case if it threw nothing, another
// type, or (where E is not TimeoutError) a TimeoutError: a wait that should have ended early
// ran to its deadline instead.
template <typename E>
Caught expectThrow(const Transport& t, int line, const char* type, const std::string& what,
                   const std::function<void()>& body) {
  try {
    body();
  } catch (const E& e) {
    if constexpr (!std::is_same_v<E, TimeoutError>) {
      if (dynamic_cast<const TimeoutError*>(&e) != nullptr) {
        failAt(t, line, str(what, ": expected ", type, " at once, the wait ran to its deadline: ", e.what()));
      }
    }
    Caught c{e.what()};
    if constexpr (std::is_base_of_v<PeerError, E>) c.peer = e.peer();
    return c;
  } catch (const std::exception& e) {
    failAt(t, line, str(what, ": expected ", type, ", got another error: ", e.what()));
  }
  failAt(t, line, str(what, ": expected ", type, ", nothing was thrown"));
}

#define EXPECT_THROWS(E, what, ...) expectThrow<E>(t, __LINE__, #E, what, __VA_ARGS__)

// Joins a thread when the scope ends, also when a check throws.
struct Joiner {
  std::thread& th;
  ~Joiner() {
    if (th.joinable()) th.join();
  }
};

// Sizes at and around every backend's boundaries: loopback's eager copy (4 KiB), mpi's
// inline limit (16 KiB) and chunk (1 MiB), shm's single-copy threshold (64 KiB) and ring
// (1 MiB), tcp's staging (64 KiB) and chunk (512 KiB); then a large message.
const size_t kBoundarySizes[] = {
    0,     1,     7,      4095,   4096,   4097,   16383,   16384,   16385,   65535,
    65536, 65537, 262144, 524287, 524288, 524289, 1048575, 1048576, 1048577, (size_t{3} << 20) + 5};

// =====================================================================================
// Data: every pair, every size; FIFO; held messages; reduce-on-receive.

void allPairsExchange(Transport& t) {
  const int me = t.rank();
  // With more than 4 ranks, the sizes up to 64 KiB + 1 only: the large ones are checked on
  // smaller jobs, and every rank holds all of its messages at once.
  const size_t maxBytes = t.size() > 4 ? 65537 : SIZE_MAX;
  std::vector<size_t> sizes;
  for (size_t s : kBoundarySizes) {
    if (s <= maxBytes) sizes.push_back(s);
  }
  auto tagOf = [](size_t k) { return uint64_t{0x1000} + k; };
  struct Expected {
    int peer;
    size_t k;
  };
  std::deque<Inbox> in;  // a deque: posted buffers stay where they are
  std::vector<Expected> expected;
  std::vector<std::vector<uint8_t>> out;
  std::vector<RequestPtr> reqs;
  // The receives of the even sizes are posted before the sends, those of the odd sizes after
  // them (their messages may arrive first and be held).
  auto postReceives = [&](size_t parity) {
    for (int p : othersOf(t)) {
      for (size_t k = parity; k < sizes.size(); k += 2) {
        in.emplace_back(sizes[k]);
        expected.push_back({p, k});
        reqs.push_back(t.irecv(p, tagOf(k), kSig, in.back().data(), sizes[k]));
      }
    }
  };
  postReceives(0);
  out.reserve(othersOf(t).size() * sizes.size());
  for (int p : othersOf(t)) {
    for (size_t k = 0; k < sizes.size(); ++k) {
      out.push_back(pattern(seedOf(me, p, tagOf(k)), sizes[k]));
      reqs.push_back(t.isend(p, tagOf(k), kSig, out.back().data(), sizes[k]));
    }
  }
  postReceives(1);
  waitAll(t, reqs);
  for (size_t i = 0; i < in.size(); ++i) {
    const auto [p, k] = expected[i];
    checkData(t, __LINE__, in[i], seedOf(p, me, tagOf(k)), str("message from rank ", p, " tag ", tagOf(k)));
  }
}

// A token goes around the ring, lap after lap: every rank waits for it and forwards it.
void tokenRing(Transport& t) {
  const size_t sizes[] = {1, 4096, 70000};
  const int laps[] = {40, 40, 8};
  for (size_t k = 0; k < std::size(sizes); ++k) {
    const uint64_t tag = 0x3000 + k;
    for (int lap = 0; lap < laps[k]; ++lap) {
      const uint64_t seed = seedOf(0, 0, tag, static_cast<uint64_t>(lap));
      Inbox in(sizes[k]);
      if (t.rank() == 0) {
        auto token = pattern(seed, sizes[k]);
        waitOne(t, t.isend(nextOf(t), tag, kSig, token.data(), token.size()));
        waitOne(t, t.irecv(prevOf(t), tag, kSig, in.data(), in.bytes));
        checkData(t, __LINE__, in, seed, str("the token after lap ", lap));
      } else {
        waitOne(t, t.irecv(prevOf(t), tag, kSig, in.data(), in.bytes));
        checkData(t, __LINE__, in, seed, str("the token in lap ", lap));
        waitOne(t, t.isend(nextOf(t), tag, kSig, in.data(), in.bytes));
      }
    }
  }
}

// Messages of different sizes under one tag are matched in the order they were sent: with
// receives posted before the messages come, and after they all came (held).
void fifoWithinATag(Transport& t) {
  const size_t sizes[] = {10, 0, 16385, 1, 70000, 4097, 1048585, 300, 524289, 16384, 2, 65536, 3, 4096, 99999, 5};
  const size_t count = std::size(sizes);
  const uint64_t tag = 0x2000, doneTag = 0x2001;
  const int next = nextOf(t), prev = prevOf(t);
  for (int round = 0; round < 2; ++round) {
    std::vector<std::vector<uint8_t>> out;
    std::vector<RequestPtr> sends;
    for (size_t k = 0; k < count; ++k) {
      out.push_back(pattern(seedOf(t.rank(), next, tag, k + 100 * static_cast<size_t>(round)), sizes[k]));
      sends.push_back(t.isend(next, tag, kSig, out.back().data(), sizes[k]));
    }
    std::deque<Inbox> in;
    std::vector<RequestPtr> recvs;
    if (round == 0) {
      // Half posted at once, the rest once the first half is in.
      for (size_t k = 0; k < count; ++k) {
        in.emplace_back(sizes[k]);
        recvs.push_back(t.irecv(prev, tag, kSig, in.back().data(), sizes[k]));
        if (k == count / 2) waitAll(t, recvs);
      }
    } else {
      // Every message was sent before the sender said so: the receives come last.
      sendSignal(t, next, doneTag);
      recvSignal(t, prev, doneTag);
      for (size_t k = 0; k < count; ++k) {
        in.emplace_back(sizes[k]);
        recvs.push_back(t.irecv(prev, tag, kSig, in.back().data(), sizes[k]));
      }
    }
    waitAll(t, recvs);
    waitAll(t, sends);
    for (size_t k = 0; k < count; ++k) {
      checkData(t, __LINE__, in[k], seedOf(prev, t.rank(), tag, k + 100 * static_cast<size_t>(round)),
                str("round ", round, ", message ", k, " under one tag"));
    }
  }
}

// Messages under other tags are held until their receive is posted: received in the reverse
// order of sending, each waited for alone; then with the receives posted (in reverse) before
// anything is sent.
void tagsOutOfOrder(Transport& t) {
  const size_t sizes[] = {(size_t{3} << 20) + 1, 100, size_t{2} << 20, 0, 70000, 5000};
  const size_t count = std::size(sizes);
  const int next = nextOf(t), prev = prevOf(t), me = t.rank();
  const uint64_t markTag = 0x4100, postedTag = 0x4101;
  auto tagOf = [](int round, size_t k) { return uint64_t{0x4000} + 0x10 * static_cast<uint64_t>(round) + k; };

  // Round 0: everything sent, then a mark; the receiver takes the mark first.
  std::vector<std::vector<uint8_t>> out;
  std::vector<RequestPtr> sends;
  for (size_t k = 0; k < count; ++k) {
    out.push_back(pattern(seedOf(me, next, tagOf(0, k)), sizes[k]));
    sends.push_back(t.isend(next, tagOf(0, k), kSig, out.back().data(), sizes[k]));
  }
  sendSignal(t, next, markTag);
  recvSignal(t, prev, markTag);
  for (size_t k = count; k-- > 0;) {
    Inbox in(sizes[k]);
    waitOne(t, t.irecv(prev, tagOf(0, k), kSig, in.data(), sizes[k]));
    checkData(t, __LINE__, in, seedOf(prev, me, tagOf(0, k)), str("tag ", tagOf(0, k), " received out of order"));
  }
  waitAll(t, sends);

  // Round 1: the receives are posted in reverse before the sender starts.
  std::deque<Inbox> in;
  std::vector<RequestPtr> recvs;
  for (size_t k = count; k-- > 0;) {
    in.emplace_front(sizes[k]);
    recvs.push_back(t.irecv(prev, tagOf(1, k), kSig, in.front().data(), sizes[k]));
  }
  sendSignal(t, prev, postedTag);
  recvSignal(t, next, postedTag);
  out.clear();
  sends.clear();
  for (size_t k = 0; k < count; ++k) {
    out.push_back(pattern(seedOf(me, next, tagOf(1, k)), sizes[k]));
    sends.push_back(t.isend(next, tagOf(1, k), kSig, out.back().data(), sizes[k]));
  }
  waitAll(t, recvs);
  waitAll(t, sends);
  for (size_t k = 0; k < count; ++k) {
    checkData(t, __LINE__, in[k], seedOf(prev, me, tagOf(1, k)), str("tag ", tagOf(1, k), ", receive posted first"));
  }
}

// float32 sum into the destination, with the receive posted before the message is sent and
// after it arrived; elements past the count stay untouched.
void reduceFloat32Sum(Transport& t) {
  const size_t counts[] = {0, 1, 7, 4099, 131073, 786435};  // the last one is 3 MiB
  const int next = nextOf(t), prev = prevOf(t), me = t.rank();
  const RecvReduce sum{DType::kFloat32, ReduceOp::kSum};
  auto mine = [](int rank, size_t i) { return static_cast<float>((i * 7 + static_cast<size_t>(rank) * 13) % 1001); };
  auto base = [](size_t i) { return static_cast<float>(2 * (i % 77)) - 50.0f; };
  for (int late = 0; late < 2; ++late) {
    const uint64_t tag0 = 0x5000 + 0x100 * static_cast<uint64_t>(late);
    std::vector<std::vector<float>> acc, out;
    std::vector<RequestPtr> recvs, sends;
    auto postReceives = [&] {
      for (size_t k = 0; k < std::size(counts); ++k) {
        acc.emplace_back(counts[k] + 4);
        for (size_t i = 0; i < acc.back().size(); ++i) acc.back()[i] = base(i);
        recvs.push_back(t.irecv(prev, tag0 + k, kSig, acc.back().data(), counts[k] * sizeof(float), &sum));
      }
    };
    acc.reserve(std::size(counts));
    if (!late) {
      postReceives();
      sendSignal(t, prev, tag0 + 0x80);  // "my receives are posted"
      recvSignal(t, next, tag0 + 0x80);
    }
    for (size_t k = 0; k < std::size(counts); ++k) {
      out.emplace_back(counts[k]);
      for (size_t i = 0; i < counts[k]; ++i) out.back()[i] = mine(me, i);
      sends.push_back(t.isend(next, tag0 + k, kSig, out.back().data(), counts[k] * sizeof(float)));
    }
    if (late) {
      sendSignal(t, next, tag0 + 0x81);  // "everything is sent"
      recvSignal(t, prev, tag0 + 0x81);
      postReceives();
    }
    waitAll(t, recvs);
    waitAll(t, sends);
    for (size_t k = 0; k < std::size(counts); ++k) {
      const auto& a = acc[k];
      for (size_t i = 0; i < a.size(); ++i) {
        const float want = i < counts[k] ? base(i) + mine(prev, i) : base(i);
        if (a[i] != want) {
          failAt(t, __LINE__,
                 str(late ? "receive posted after the message came" : "receive posted first", ", count ", counts[k],
                     ": element ", i, " is ", a[i], ", want ", want,
                     i < counts[k] ? "" : " (past the count: must stay untouched)"));
        }
      }
    }
  }
}

// Every dtype, and every op with some dtype, reduced on receive.
void reduceEveryDtypeAndOp(Transport& t) {
  struct Combo {
    DType dtype;
    ReduceOp op;
  };
  const Combo combos[] = {{DType::kFloat32, ReduceOp::kSum},  {DType::kFloat64, ReduceOp::kProd},
                          {DType::kInt32, ReduceOp::kMax},    {DType::kInt64, ReduceOp::kMin},
                          {DType::kUInt8, ReduceOp::kSum},    {DType::kFloat16, ReduceOp::kSum},
                          {DType::kBFloat16, ReduceOp::kMax}, {DType::kFloat32, ReduceOp::kAvg}};
  const size_t counts[] = {0, 7, 1031, 300007};
  const int next = nextOf(t), prev = prevOf(t), me = t.rank();
  struct Posted {
    Combo c;
    size_t count;
    std::vector<uint8_t> out, in;
    RecvReduce reduce;
  };
  std::deque<Posted> posted;
  std::vector<RequestPtr> reqs;
  uint64_t tag = 0x5800;
  for (const Combo& c : combos) {
    for (size_t n : counts) {
      const size_t bytes = n * dtypeSize(c.dtype);
      posted.push_back({c, n, std::vector<uint8_t>(bytes), std::vector<uint8_t>(bytes), RecvReduce{c.dtype, c.op}});
      Posted& p = posted.back();
      for (size_t i = 0; i < n; ++i) {
        setElement(p.out.data(), c.dtype, i, smallValue(me, i, c.op, c.dtype));
        setElement(p.in.data(), c.dtype, i, smallValue(me + 7, i, c.op, c.dtype));
      }
      reqs.push_back(t.irecv(prev, tag, kSig, p.in.data(), bytes, &p.reduce));
      reqs.push_back(t.isend(next, tag, kSig, p.out.data(), bytes));
      ++tag;
    }
  }
  waitAll(t, reqs);
  for (const Posted& p : posted) {
    for (size_t i = 0; i < p.count; ++i) {
      const double want =
          combine(smallValue(me + 7, i, p.c.op, p.c.dtype), smallValue(prev, i, p.c.op, p.c.dtype), p.c.op);
      const double got = getElement(p.in.data(), p.c.dtype, i);
      if (!closeEnough(got, want, p.c.dtype)) {
        failAt(t, __LINE__,
               str(dtypeName(p.c.dtype), " ", reduceOpName(p.c.op), " on receive, count ", p.count, ": element ", i,
                   " is ", got, ", want ", want));
      }
    }
  }
}

// =====================================================================================
// Mismatches.

struct MismatchCase {
  size_t sentBytes;
  uint64_t sentSig;
  size_t wantBytes;
  uint64_t wantSig;
};

// Sends every case and then a good message under one tag to the next rank; receives them from
// the previous one, with each receive posted while the rest may still come (round 0) and after
// all of them came (round 1). Each mismatched receive throws MismatchError naming the peer, the
// tag, and what differs, and leaves the guard after its buffer alone; the good message still
// arrives intact. The sender's side of a mismatched message may complete or fail with
// MismatchError (a backend that reads from the sender's memory tells it), nothing else.
void expectMismatches(Transport& t, uint64_t tag, const std::vector<MismatchCase>& cases, bool sizes) {
  const int next = nextOf(t), prev = prevOf(t), me = t.rank();
  const size_t goodBytes = 5000;
  for (int round = 0; round < 2; ++round) {
    const uint64_t markTag = tag + 0x100;
    std::vector<std::vector<uint8_t>> out;
    std::vector<RequestPtr> sends;
    for (const auto& c : cases) {
      out.push_back(pattern(seedOf(me, next, tag, 1), c.sentBytes));
      sends.push_back(t.isend(next, tag, c.sentSig, out.back().data(), c.sentBytes));
    }
    out.push_back(pattern(seedOf(me, next, tag, 2 + static_cast<uint64_t>(round)), goodBytes));
    sends.push_back(t.isend(next, tag, kSig, out.back().data(), goodBytes));
    if (round == 1) {
      sendSignal(t, next, markTag);
      recvSignal(t, prev, markTag);
    }
    for (const auto& c : cases) {
      Inbox in(c.wantBytes);
      const std::string what =
          str("round ", round, ": a message of ", c.sentBytes, " bytes, signature ", hexOf(c.sentSig),
              " into a receive of ", c.wantBytes, " bytes, signature ", hexOf(c.wantSig));
      const Caught e = EXPECT_THROWS(MismatchError, what,
                                     [&] { waitOne(t, t.irecv(prev, tag, c.wantSig, in.data(), c.wantBytes)); });
      CONFORM(namesPeer(e.what, prev), what, ": the MismatchError does not name peer ", prev, ": ", e.what);
      CONFORM(namesTag(e.what, tag), what, ": the MismatchError does not name tag ", tag, ": ", e.what);
      if (sizes) {
        CONFORM(hasToken(e.what, str(c.sentBytes)) && hasToken(e.what, str(c.wantBytes)), what,
                ": the MismatchError does not name both sizes: ", e.what);
      } else {
        CONFORM(hasToken(e.what, hexOf(c.sentSig)) && hasToken(e.what, hexOf(c.wantSig)), what,
                ": the MismatchError does not name both signatures: ", e.what);
      }
      CONFORM(in.guardIntact(), what, ": the transport wrote past the receive buffer");
    }
    Inbox good(goodBytes);
    waitOne(t, t.irecv(prev, tag, kSig, good.data(), goodBytes));
    checkData(t, __LINE__, good, seedOf(prev, me, tag, 2 + static_cast<uint64_t>(round)),
              str("round ", round, ": the good message after the mismatched ones"));
    for (size_t i = 0; i < sends.size(); ++i) {
      try {
        waitOne(t, sends[i]);
      } catch (const MismatchError&) {
        CONFORM(i < cases.size(), "the good message's send failed with MismatchError");
      }
    }
  }
}

void sizeMismatch(Transport& t) {
  expectMismatches(t, 0x1f4,
                   {{100, kSig, 200, kSig},
                    {300, kSig, 60, kSig},
                    {0, kSig, 16, kSig},
                    {70001, kSig, 70000, kSig},
                    {size_t{2} << 20, kSig, size_t{1} << 20, kSig},
                    {10, kSig, 4 << 20, kSig}},
                   true);
}

void signatureMismatch(Transport& t) {
  expectMismatches(
      t, 0x1f5,
      {{256, 0xaaaa, 256, 0xbbbb}, {0, 0x1111, 0, 0x2222}, {size_t{4} << 20, 0xcafe, size_t{4} << 20, 0xbeef}}, false);
}

// =====================================================================================
// Waiting.

// Every rank waits for a message from every other one, which none has sent: TimeoutError at
// the deadline, naming this rank and every pending receive; the receives stay posted and
// complete once the peers send.
void timeoutNamesThePendingPeers(Transport& t) {
  const int me = t.rank();
  const auto others = othersOf(t);
  auto tagOf = [](int from) { return uint64_t{7000} + static_cast<uint64_t>(from); };
  const uint64_t goTag = 0x6001;
  std::deque<Inbox> in;
  std::vector<RequestPtr> recvs;
  for (int p : others) {
    in.emplace_back(64);
    recvs.push_back(t.irecv(p, tagOf(p), kSig, in.back().data(), 64));
  }
  const Millis deadline(200);
  const auto start = Clock::now();
  const Caught e =
      EXPECT_THROWS(TimeoutError, "a wait for messages nobody sent", [&] { t.waitAll(recvs, Deadline(deadline)); });
  const double ms = msSince(start);
  CONFORM(ms >= 190 && ms < 3000, "the wait with a 200 ms deadline ended after ", ms, " ms");
  CONFORM(hasToken(e.what, str("rank ", me)), "the TimeoutError does not name this rank: ", e.what);
  for (int p : others) {
    CONFORM(hasToken(e.what, str("recv from rank ", p, " tag ", tagOf(p))),
            "the TimeoutError does not name the receive from rank ", p, " tag ", tagOf(p), ": ", e.what);
  }
  CONFORM(e.what.find("CHORUS_TIMEOUT_MS") != std::string::npos,
          "the TimeoutError does not say how to raise the timeout: ", e.what);
  for (const auto& r : recvs) CONFORM(!r->done, "a receive completed with nothing sent");
  // Every rank timed out before anyone sends: a rank sends to p only after p said go.
  for (int p : others) sendSignal(t, p, goTag);
  std::vector<std::vector<uint8_t>> out;
  std::vector<RequestPtr> sends;
  for (int p : others) {
    recvSignal(t, p, goTag);
    out.push_back(pattern(seedOf(me, p, tagOf(me)), 64));
    sends.push_back(t.isend(p, tagOf(me), kSig, out.back().data(), 64));
  }
  waitAll(t, recvs);
  waitAll(t, sends);
  for (size_t i = 0; i < others.size(); ++i) {
    checkData(t, __LINE__, in[i], seedOf(others[i], me, tagOf(others[i])), "a receive that timed out once");
  }
}

// A wait with no deadline blocks until the message comes (the sender first waits a while, so
// the receiver is past its spin and blocked).
void waitWithoutDeadline(Transport& t) {
  const uint64_t tag = 0x6100;
  Inbox in(100);
  auto r = t.irecv(prevOf(t), tag, kSig, in.data(), 100);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto out = pattern(seedOf(t.rank(), nextOf(t), tag), 100);
  auto s = t.isend(nextOf(t), tag, kSig, out.data(), out.size());
  const RequestPtr both[] = {r, s};
  t.waitAll(both, Deadline::never());
  checkData(t, __LINE__, in, seedOf(prevOf(t), t.rank(), tag), "a message waited for without a deadline");
}

// test() makes progress: polling it alone completes a send and a receive.
void testPollsToCompletion(Transport& t) {
  const size_t sizes[] = {100, 100000, (size_t{1} << 20) + 7};
  for (size_t k = 0; k < std::size(sizes); ++k) {
    const uint64_t tag = 0x6200 + k;
    Inbox in(sizes[k]);
    auto out = pattern(seedOf(t.rank(), nextOf(t), tag), sizes[k]);
    auto r = t.irecv(prevOf(t), tag, kSig, in.data(), in.bytes);
    auto s = t.isend(nextOf(t), tag, kSig, out.data(), out.size());
    const Deadline deadline = soon();
    bool rDone = false, sDone = false;
    while (!(rDone && sDone)) {
      CONFORM(!deadline.expired(), "test() did not complete a ", sizes[k], "-byte exchange within ", kWait.count(),
              " ms");
      if (!rDone) rDone = t.test(r);
      if (!sDone) sDone = t.test(s);
      if (!(rDone && sDone)) std::this_thread::yield();
    }
    checkData(t, __LINE__, in, seedOf(prevOf(t), t.rank(), tag), "a message polled with test()");
  }
}

// waitAny returns the first request that finished, and the lowest index among finished ones;
// it waits for no other. Each rank receives two messages from the previous rank: the small
// one is sent first, the large one only when the receiver asks for it.
void waitAnyReturnsTheFirstFinished(Transport& t) {
  const int next = nextOf(t), prev = prevOf(t), me = t.rank();
  const uint64_t largeTag = 0x6300, smallTag = 0x6301, goTag = 0x6302;
  const size_t large = (size_t{1} << 20) + 3, small = 100;
  Inbox inLarge(large), inSmall(small);
  const std::vector<RequestPtr> reqs = {t.irecv(prev, largeTag, kSig, inLarge.data(), large),
                                        t.irecv(prev, smallTag, kSig, inSmall.data(), small)};
  auto outSmall = pattern(seedOf(me, next, smallTag), small);
  auto outLarge = pattern(seedOf(me, next, largeTag), large);
  auto sendSmall = t.isend(next, smallTag, kSig, outSmall.data(), small);
  CONFORM(t.waitAny(reqs, soon()) == 1, "waitAny did not return the receive that was sent first");
  CONFORM(!reqs[0]->done, "the large receive completed before its message was sent");
  checkData(t, __LINE__, inSmall, seedOf(prev, me, smallTag), "the small message");
  CONFORM(t.waitAny(reqs, soon()) == 1, "waitAny did not return the finished request again");
  const std::vector<RequestPtr> swapped = {reqs[1], reqs[0]};
  CONFORM(t.waitAny(swapped, soon()) == 0, "waitAny did not return the finished request at its index");
  sendSignal(t, prev, goTag);
  recvSignal(t, next, goTag);
  auto sendLarge = t.isend(next, largeTag, kSig, outLarge.data(), large);
  const std::vector<RequestPtr> rest = {reqs[0]};
  CONFORM(t.waitAny(rest, soon()) == 0);
  CONFORM(checkDone(*reqs[0]), "waitAny returned a request that is not done");
  checkData(t, __LINE__, inLarge, seedOf(prev, me, largeTag), "the large message");
  const std::vector<RequestPtr> sends = {sendSmall, sendLarge};
  waitAll(t, sends);
}

// waitAnyUntil returns reqs.size() at its deadline, without throwing, and the request stays
// posted; given a finished request it returns its index.
void waitAnyUntilReturnsAtItsDeadline(Transport& t) {
  const int next = nextOf(t), prev = prevOf(t), me = t.rank();
  const uint64_t tag = 0x6400, goTag = 0x6401;
  Inbox in(3000);
  const std::vector<RequestPtr> reqs = {t.irecv(prev, tag, kSig, in.data(), in.bytes)};
  const auto start = Clock::now();
  size_t got = 0;
  try {
    got = t.waitAnyUntil(reqs, Deadline(Millis(100)));
  } catch (const std::exception& e) {
    failAt(t, __LINE__, str("waitAnyUntil threw at its deadline: ", e.what()));
  }
  const double ms = msSince(start);
  CONFORM(got == reqs.size(), "waitAnyUntil returned ", got, " with nothing sent");
  CONFORM(ms >= 90 && ms < 3000, "waitAnyUntil with a 100 ms deadline returned after ", ms, " ms");
  CONFORM(!reqs[0]->done);
  sendSignal(t, prev, goTag);
  recvSignal(t, next, goTag);
  auto out = pattern(seedOf(me, next, tag), in.bytes);
  auto s = t.isend(next, tag, kSig, out.data(), out.size());
  CONFORM(t.waitAnyUntil(reqs, soon()) == 0, "waitAnyUntil did not return the receive once its message came");
  CONFORM(checkDone(*reqs[0]));
  checkData(t, __LINE__, in, seedOf(prev, me, tag), "the message after waitAnyUntil's deadline");
  waitOne(t, s);
}

// Requests that name no peer of the job, a reduction of part of an element, and waits on an
// empty or null list are refused with InvalidArgument; the transport stays usable.
void invalidArguments(Transport& t) {
  const int me = t.rank(), n = t.size();
  uint8_t b[16] = {};
  EXPECT_THROWS(InvalidArgument, "isend to this rank", [&] { t.isend(me, 1, kSig, b, 1); });
  EXPECT_THROWS(InvalidArgument, "irecv from this rank", [&] { t.irecv(me, 1, kSig, b, 1); });
  EXPECT_THROWS(InvalidArgument, "isend to rank size()", [&] { t.isend(n, 1, kSig, b, 1); });
  EXPECT_THROWS(InvalidArgument, "irecv from rank -1", [&] { t.irecv(-1, 1, kSig, b, 1); });
  const RecvReduce sum{DType::kFloat32, ReduceOp::kSum};
  EXPECT_THROWS(InvalidArgument, "a float32 reduce-on-receive of 6 bytes",
                [&] { t.irecv(nextOf(t), 1, kSig, b, 6, &sum); });
  EXPECT_THROWS(InvalidArgument, "waitAny on no requests", [&] { t.waitAny({}, soon()); });
  EXPECT_THROWS(InvalidArgument, "waitAnyUntil on no requests", [&] { t.waitAnyUntil({}, soon()); });
  const std::vector<RequestPtr> nulls = {nullptr};
  EXPECT_THROWS(InvalidArgument, "waitAny on a null request", [&] { t.waitAny(nulls, soon()); });
  EXPECT_THROWS(InvalidArgument, "waitAll on a null request", [&] { t.waitAll(nulls, soon()); });
  t.waitAll({}, soon());  // nothing to wait for
  // Still usable.
  const uint64_t tag = 0x6500;
  Inbox in(16);
  auto out = pattern(seedOf(me, nextOf(t), tag), 16);
  const std::vector<RequestPtr> reqs = {t.irecv(prevOf(t), tag, kSig, in.data(), 16),
                                        t.isend(nextOf(t), tag, kSig, out.data(), 16)};
  waitAll(t, reqs);
  checkData(t, __LINE__, in, seedOf(prevOf(t), me, tag), "a message after the refused calls");
}

// =====================================================================================
// Peers that go away.

// The ranks other than `gone` exchange messages (small and large) in a ring of their own.
void survivorsStillTalk(Transport& t, int gone) {
  std::vector<int> alive;
  for (int p = 0; p < t.size(); ++p) {
    if (p != gone) alive.push_back(p);
  }
  if (alive.size() < 2) return;
  const size_t i = static_cast<size_t>(std::find(alive.begin(), alive.end(), t.rank()) - alive.begin());
  const int next = alive[(i + 1) % alive.size()], prev = alive[(i + alive.size() - 1) % alive.size()];
  const size_t sizes[] = {100, (size_t{3} << 20) + 5};
  std::deque<Inbox> in;
  std::vector<std::vector<uint8_t>> out;
  std::vector<RequestPtr> reqs;
  for (size_t k = 0; k < std::size(sizes); ++k) {
    const uint64_t tag = 0x7000 + k;
    in.emplace_back(sizes[k]);
    reqs.push_back(t.irecv(prev, tag, kSig, in.back().data(), sizes[k]));
    out.push_back(pattern(seedOf(t.rank(), next, tag), sizes[k]));
    reqs.push_back(t.isend(next, tag, kSig, out.back().data(), sizes[k]));
  }
  waitAll(t, reqs);
  for (size_t k = 0; k < std::size(sizes); ++k) {
    checkData(t, __LINE__, in[k], seedOf(prev, t.rank(), 0x7000 + k),
              str("from rank ", prev, " after rank ", gone, " left"));
  }
}

void expectPeerError(const Transport& t, int line, const Caught& e, int peer, const std::string& what) {
  if (e.peer != peer) failAt(t, line, str(what, ": PeerError::peer() is ", e.peer, ", not ", peer, ": ", e.what));
  if (!namesPeer(e.what, peer)) failAt(t, line, str(what, ": the PeerError does not name rank ", peer, ": ", e.what));
}

// On every rank but `gone`: a receive and a large send to `gone` are pending when it leaves
// (its transport closes or its process dies): waitAny returns the receive without throwing,
// and it holds PeerError naming `gone`, soon; the send completes (if `gone` took it in first)
// or fails so too; later requests to `gone` fail so; the other ranks still talk. `leave` runs
// on `gone` once every other rank has its requests posted.
void peerLeaves(Transport& t, int gone, const std::function<void()>& leave) {
  const uint64_t readyTag = 900, pendingRecvTag = 901, pendingSendTag = 902, laterTag = 903;
  if (t.rank() == gone) {
    for (int p : othersOf(t)) recvSignal(t, p, readyTag);
    leave();
    return;
  }
  Inbox pendingIn(1000);
  auto big = pattern(seedOf(t.rank(), gone, pendingSendTag), size_t{4} << 20);
  const RequestPtr recvPending = t.irecv(gone, pendingRecvTag, kSig, pendingIn.data(), pendingIn.bytes);
  const RequestPtr sendPending = t.isend(gone, pendingSendTag, kSig, big.data(), big.size());
  sendSignal(t, gone, readyTag);
  const auto start = Clock::now();
  const std::vector<RequestPtr> one = {recvPending};
  size_t got = 1;
  try {
    got = t.waitAny(one, soon());
  } catch (const TimeoutError& e) {
    failAt(t, __LINE__,
           str("the receive from rank ", gone, ", which left, was still pending at the deadline: ", e.what()));
  } catch (const std::exception& e) {
    failAt(t, __LINE__, str("waitAny threw instead of returning the failed receive from rank ", gone, ": ", e.what()));
  }
  const double ms = msSince(start);
  CONFORM(got == 0);
  CONFORM(ms < kPeerGoneWithinMs, "the receive from rank ", gone, " failed only after ", ms, " ms");
  const Caught e =
      EXPECT_THROWS(PeerError, str("the receive pending when rank ", gone, " left"), [&] { checkDone(*recvPending); });
  expectPeerError(t, __LINE__, e, gone, "the pending receive");
  CONFORM(pendingIn.guardIntact(), "the failed receive wrote past its buffer");
  try {
    waitOne(t, sendPending);
  } catch (const PeerError& pe) {
    expectPeerError(t, __LINE__, Caught{pe.what(), pe.peer()}, gone, "the pending send");
  } catch (const std::exception& x) {
    failAt(t, __LINE__,
           str("the send pending when rank ", gone, " left failed with another error than PeerError: ", x.what()));
  }
  uint8_t b[8] = {};
  expectPeerError(t, __LINE__,
                  EXPECT_THROWS(PeerError, "a receive posted after the peer left",
                                [&] { waitOne(t, t.irecv(gone, laterTag, kSig, b, sizeof b)); }),
                  gone, "a later receive");
  expectPeerError(t, __LINE__,
                  EXPECT_THROWS(PeerError, "a send posted after the peer left",
                                [&] { waitOne(t, t.isend(gone, laterTag, kSig, b, sizeof b)); }),
                  gone, "a later send");
  survivorsStillTalk(t, gone);
}

constexpr int kClosingRank = 1;

void peerCloses(Transport& t) {
  peerLeaves(t, kClosingRank, [&] {
    t.close();
    t.close();  // idempotent
    uint8_t b = 0;
    const Caught e = EXPECT_THROWS(Error, "an isend after close()", [&] { waitOne(t, t.isend(0, 1, kSig, &b, 1)); });
    CONFORM(e.what.find("close") != std::string::npos, "the error of an isend after close() does not say so: ", e.what);
  });
}

void peerDies(Transport& t) {
  peerLeaves(t, kDyingRank, [] {
    ::kill(::getpid(), SIGKILL);
    for (;;) ::pause();
  });
}

// Messages a peer sent (and whose sends completed) before it closed are still delivered:
// small ones, which every backend buffers. The receiver first sees the close (a receive of a
// message never sent fails), then takes them.
void messagesSentBeforeCloseAreDelivered(Transport& t) {
  const size_t sizes[] = {0, 100, 3000};
  const uint64_t tag0 = 1100, neverTag = 1199;
  if (t.rank() == kClosingRank) {
    std::vector<std::vector<uint8_t>> out;
    std::vector<RequestPtr> sends;
    for (int p : othersOf(t)) {
      for (size_t k = 0; k < std::size(sizes); ++k) {
        out.push_back(pattern(seedOf(t.rank(), p, tag0 + k), sizes[k]));
        sends.push_back(t.isend(p, tag0 + k, kSig, out.back().data(), sizes[k]));
      }
    }
    waitAll(t, sends);
    t.close();
    return;
  }
  uint8_t b = 0;
  expectPeerError(t, __LINE__,
                  EXPECT_THROWS(PeerError, "a receive of a message the closed peer never sent",
                                [&] { waitOne(t, t.irecv(kClosingRank, neverTag, kSig, &b, 1)); }),
                  kClosingRank, "the receive of a message never sent");
  for (size_t k = 0; k < std::size(sizes); ++k) {
    Inbox in(sizes[k]);
    try {
      waitOne(t, t.irecv(kClosingRank, tag0 + k, kSig, in.data(), in.bytes));
    } catch (const std::exception& e) {
      failAt(t, __LINE__,
             str("the message of ", sizes[k], " bytes that rank ", kClosingRank,
                 " sent before it closed was not delivered: ", e.what()));
    }
    checkData(t, __LINE__, in, seedOf(kClosingRank, t.rank(), tag0 + k), "a message sent before the peer closed");
  }
  survivorsStillTalk(t, kClosingRank);
}

// close() from another thread ends a wait at once with Error (not at its deadline); later
// calls throw; the peers' requests to the closed rank fail with PeerError.
void closeFromAnotherThread(Transport& t) {
  constexpr int kClosed = 0;
  const uint64_t tag = 1000;
  uint8_t b[4] = {};
  if (t.rank() != kClosed) {
    const auto start = Clock::now();
    expectPeerError(t, __LINE__,
                    EXPECT_THROWS(PeerError, "a receive from a rank closed by another thread",
                                  [&] { waitOne(t, t.irecv(kClosed, tag, kSig, b, sizeof b)); }),
                    kClosed, "the receive from the closed rank");
    CONFORM(msSince(start) < kPeerGoneWithinMs);
    return;
  }
  auto r = t.irecv(1, tag, kSig, b, sizeof b);
  std::thread closer([&t] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    t.close();
  });
  Joiner joiner{closer};
  const auto start = Clock::now();
  const Caught e = EXPECT_THROWS(Error, "a wait while another thread closes the transport", [&] { waitOne(t, r); });
  const double ms = msSince(start);
  closer.join();
  CONFORM(ms < 3000, "close() from another thread ended the wait only after ", ms, " ms");
  CONFORM(e.what.find("close") != std::string::npos, "the error of a wait ended by close() does not say so: ", e.what);
  EXPECT_THROWS(Error, "an irecv after close()", [&] { waitOne(t, t.irecv(1, tag + 1, kSig, b, 1)); });
  t.close();  // idempotent
}

}  // namespace

// =====================================================================================

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {"all_pairs_exchange", "every rank sends every other rank a message of each boundary size, 0 B to 3 MiB",
       allPairsExchange, 2, true},
      {"token_ring", "a token of 1 B, 4 KiB and 70 KB goes around the ring, lap after lap", tokenRing, 2, true},
      {"fifo_within_a_tag", "messages of different sizes under one tag arrive in order, received early and late",
       fifoWithinATag},
      {"tags_out_of_order", "messages under other tags are held until received, in reverse order", tagsOutOfOrder},
      {"reduce_float32_sum", "reduce-on-receive (float32 sum) up to 3 MiB, posted before and after the data came",
       reduceFloat32Sum},
      {"reduce_every_dtype_and_op", "reduce-on-receive for every dtype and op", reduceEveryDtypeAndOp},
      {"size_mismatch", "a receive of another size: MismatchError naming peer, tag and sizes; no overrun",
       sizeMismatch},
      {"signature_mismatch", "a receive of another signature: MismatchError naming peer, tag and signatures",
       signatureMismatch},
      {"timeout_names_the_pending_peers", "TimeoutError at the deadline names the rank and each pending receive",
       timeoutNamesThePendingPeers},
      {"wait_without_deadline", "a wait with Deadline::never() blocks until the message comes", waitWithoutDeadline},
      {"test_polls_to_completion", "test() alone completes sends and receives", testPollsToCompletion},
      {"wait_any_returns_the_first_finished", "waitAny returns the request that finished first",
       waitAnyReturnsTheFirstFinished},
      {"wait_any_until_returns_at_its_deadline", "waitAnyUntil returns reqs.size() at its deadline, no throw",
       waitAnyUntilReturnsAtItsDeadline},
      {"invalid_arguments", "bad peers, partial elements and empty waits throw InvalidArgument", invalidArguments},
      {"peer_closes", "a peer that closes fails pending and later requests to it with PeerError naming it", peerCloses},
      {"messages_sent_before_close_are_delivered", "small messages sent before a peer closed still arrive",
       messagesSentBeforeCloseAreDelivered},
      {"close_from_another_thread", "close() from another thread wakes the waiter; peers see PeerError",
       closeFromAnotherThread},
      {"peer_dies", "a peer killed by SIGKILL fails pending and later requests to it with PeerError naming it",
       peerDies, 2, false, true},
  };
  return all;
}

const Case& findCase(const std::string& name) {
  for (const Case& c : cases()) {
    if (name == c.name) return c;
  }
  throw std::invalid_argument("no transport conformance case named '" + name + "'");
}

void setElement(uint8_t* buf, DType t, size_t i, double v) {
  uint8_t* p = buf + i * dtypeSize(t);
  switch (t) {
    case DType::kFloat32: {
      const float f = static_cast<float>(v);
      std::memcpy(p, &f, 4);
      break;
    }
    case DType::kFloat64: std::memcpy(p, &v, 8); break;
    case DType::kFloat16: {
      const uint16_t h = floatToHalf(static_cast<float>(v));
      std::memcpy(p, &h, 2);
      break;
    }
    case DType::kBFloat16: {
      const uint16_t h = floatToBf16(static_cast<float>(v));
      std::memcpy(p, &h, 2);
      break;
    }
    case DType::kInt32: {
      const int32_t x = static_cast<int32_t>(v);
      std::memcpy(p, &x, 4);
      break;
    }
    case DType::kInt64: {
      const int64_t x = static_cast<int64_t>(v);
      std::memcpy(p, &x, 8);
      break;
    }
    case DType::kUInt8: *p = static_cast<uint8_t>(v); break;
  }
}

double getElement(const uint8_t* buf, DType t, size_t i) {
  const uint8_t* p = buf + i * dtypeSize(t);
  switch (t) {
    case DType::kFloat32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::kFloat64: {
      double d;
      std::memcpy(&d, p, 8);
      return d;
    }
    case DType::kFloat16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return halfToFloat(h);
    }
    case DType::kBFloat16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return bf16ToFloat(h);
    }
    case DType::kInt32: {
      int32_t x;
      std::memcpy(&x, p, 4);
      return x;
    }
    case DType::kInt64: {
      int64_t x;
      std::memcpy(&x, p, 8);
      return static_cast<double>(x);
    }
    case DType::kUInt8: return *p;
  }
  return 0;
}

double smallValue(int rank, size_t i, ReduceOp op, DType t) {
  if (op == ReduceOp::kProd) return static_cast<double>((static_cast<size_t>(rank) + i) % 2 + 1);
  const double v = static_cast<double>((static_cast<size_t>(rank) * 5 + i * 3) % 17);
  return t == DType::kUInt8 ? v : v - 8;
}

double combine(double a, double b, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return a + b;
    case ReduceOp::kMin: return std::min(a, b);
    case ReduceOp::kMax: return std::max(a, b);
    case ReduceOp::kProd: return a * b;
  }
  return 0;
}

bool closeEnough(double got, double want, DType t) {
  const double tol = t == DType::kFloat16 || t == DType::kBFloat16 ? 1e-2 : 1e-6;
  return std::fabs(got - want) <= tol * std::max(1.0, std::fabs(want));
}

}  // namespace chorus::testutil::conformance
