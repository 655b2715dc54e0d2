// Checks the mpi transport under `mpirun -n N` (N >= 2): point-to-point semantics (sizes
// around the inline and chunk limits, tags out of order, FIFO per tag, reduce-on-receive,
// size/signature mismatch, timeouts naming the peer, invalid arguments, closing — by a peer
// and from another thread), the chorus-rank order of the private communicator,
// nativeAllreduce for every dtype and op against a serial reference, and the store-address
// exchange that lets a job started by mpirun find its rendezvous store.
//
// Prints one line per failed check ("rank R: FAIL section: what") and exits 1 on every rank
// if any rank failed; run by tests/comm/transport/mpi_transport_test.sh.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/dtype.h"
#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/comm/rendezvous/bootstrap.h"
#include "chorus/comm/rendezvous/store.h"
#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/mpi/context.h"

using namespace chorus;
using namespace chorus::comm;

namespace {

int gRank = 0;
int gSize = 1;
int gFailures = 0;
const char* gSection = "";

void fail(int line, const std::string& what) {
  ++gFailures;
  std::fprintf(stderr, "rank %d: FAIL %s (line %d): %s\n", gRank, gSection, line, what.c_str());
}

#define EXPECT(cond, ...)                                                               \
  do {                                                                                  \
    if (!(cond)) fail(__LINE__, str("expected " #cond " " __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)

// Runs `body` and expects it to throw E whose message contains every word of `needles`.
template <typename E>
void expectThrow(int line, const std::function<void()>& body, std::vector<std::string> needles, E* caught = nullptr) {
  try {
    body();
    fail(line, "expected an exception, none was thrown");
  } catch (const E& e) {
    for (const auto& n : needles) {
      if (std::string(e.what()).find(n) == std::string::npos) fail(line, str("message lacks '", n, "': ", e.what()));
    }
    if (caught != nullptr) *caught = e;
  } catch (const std::exception& e) {
    fail(line, str("wrong exception type: ", e.what()));
  }
}

void section(const char* name, const std::function<void()>& body) {
  gSection = name;
  int before = gFailures;
  auto t0 = std::chrono::steady_clock::now();
  try {
    body();
  } catch (const std::exception& e) {
    fail(0, str("unexpected exception: ", e.what()));
  }
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (gRank == 0) std::printf("%-28s %s (%.0f ms)\n", name, gFailures == before ? "ok" : "FAILED", ms);
  std::fflush(stdout);
}

void barrier(Transport& t) {
  int32_t x = 0;
  t.nativeAllreduce(&x, 1, DType::kInt32, ReduceOp::kSum);
}

uint8_t pattern(int sender, uint64_t tag, size_t i) {
  return static_cast<uint8_t>(sender * 131 + tag * 17 + i * 7 + i / 251);
}

std::vector<uint8_t> message(int sender, uint64_t tag, size_t bytes) {
  std::vector<uint8_t> v(bytes);
  for (size_t i = 0; i < bytes; ++i) v[i] = pattern(sender, tag, i);
  return v;
}

// Index of the first byte that differs from sender's pattern, or -1.
long firstWrong(const std::vector<uint8_t>& v, int sender, uint64_t tag) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != pattern(sender, tag, i)) return static_cast<long>(i);
  }
  return -1;
}

Deadline soon() { return Deadline(Millis(20000)); }

// Elements of any dtype, read and written as doubles.
void setElem(std::vector<uint8_t>& buf, DType t, size_t i, double v) {
  uint8_t* p = buf.data() + i * dtypeSize(t);
  switch (t) {
    case DType::kFloat32: { float f = static_cast<float>(v); std::memcpy(p, &f, 4); break; }
    case DType::kFloat64: std::memcpy(p, &v, 8); break;
    case DType::kFloat16: { uint16_t h = floatToHalf(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
    case DType::kBFloat16: { uint16_t h = floatToBf16(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
    case DType::kInt32: { int32_t x = static_cast<int32_t>(v); std::memcpy(p, &x, 4); break; }
    case DType::kInt64: { int64_t x = static_cast<int64_t>(v); std::memcpy(p, &x, 8); break; }
    case DType::kUInt8: *p = static_cast<uint8_t>(v); break;
  }
}

double getElem(const std::vector<uint8_t>& buf, DType t, size_t i) {
  const uint8_t* p = buf.data() + i * dtypeSize(t);
  switch (t) {
    case DType::kFloat32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::kFloat64: { double d; std::memcpy(&d, p, 8); return d; }
    case DType::kFloat16: { uint16_t h; std::memcpy(&h, p, 2); return halfToFloat(h); }
    case DType::kBFloat16: { uint16_t h; std::memcpy(&h, p, 2); return bf16ToFloat(h); }
    case DType::kInt32: { int32_t x; std::memcpy(&x, p, 4); return x; }
    case DType::kInt64: { int64_t x; std::memcpy(&x, p, 8); return static_cast<double>(x); }
    case DType::kUInt8: return *p;
  }
  return 0;
}

bool isFloat(DType t) { return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kFloat16 || t == DType::kBFloat16; }

// Small integers, exact in every dtype, negative too where the dtype has a sign; products
// of `size` of them stay exact.
double value(int rank, size_t i, ReduceOp op, DType t) {
  if (op == ReduceOp::kProd) return static_cast<double>((rank + i) % 2 + 1);
  double v = static_cast<double>((rank * 5 + i * 3) % 17);
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

bool near(double got, double want, DType t) {
  double tol = t == DType::kFloat16 || t == DType::kBFloat16 ? 1e-2 : 1e-6;
  return std::fabs(got - want) <= tol * std::max(1.0, std::fabs(want));
}

void checkPointToPoint(Transport& t) {
  int next = (gRank + 1) % gSize;
  int prev = (gRank + gSize - 1) % gSize;

  section("sizes around the limits", [&] {
    const size_t sizes[] = {0, 1, 7, 4096, 16383, 16384, 16385, 1048576, 1048577, 3 * 1048576 + 5};
    uint64_t tag = 100;
    for (size_t bytes : sizes) {
      auto out = message(gRank, tag, bytes);
      std::vector<uint8_t> in(bytes, 0);
      auto s = t.isend(next, tag, 7, out.data(), bytes);
      auto r = t.irecv(prev, tag, 7, in.data(), bytes);
      t.waitAll(std::vector<RequestPtr>{s, r}, soon());
      EXPECT(firstWrong(in, prev, tag) == -1, "bytes ", bytes, " first wrong byte ", firstWrong(in, prev, tag));
      ++tag;
    }
  });

  section("every pair at once", [&] {
    const size_t bytes = 2 * 1048576 + 3;
    std::vector<std::vector<uint8_t>> outs(gSize), ins(gSize);
    std::vector<RequestPtr> reqs;
    for (int p = 0; p < gSize; ++p) {
      if (p == gRank) continue;
      outs[p] = message(gRank, 150 + p, bytes);
      ins[p].assign(bytes, 0);
      reqs.push_back(t.irecv(p, 150 + gRank, 1, ins[p].data(), bytes));
      reqs.push_back(t.isend(p, 150 + p, 1, outs[p].data(), bytes));
    }
    t.waitAll(reqs, soon());
    for (int p = 0; p < gSize; ++p) {
      if (p != gRank) EXPECT(firstWrong(ins[p], p, 150 + gRank) == -1, "from peer ", p);
    }
  });

  section("tags out of order", [&] {
    // Sent A, B, C; received C, B, A, each waited for alone: A and B must be held.
    const uint64_t tags[] = {200, 201, 202};
    const size_t sizes[] = {3 * 1048576 + 1, 100, 2 * 1048576};
    std::vector<std::vector<uint8_t>> outs, ins;
    std::vector<RequestPtr> sends;
    for (int k = 0; k < 3; ++k) {
      outs.push_back(message(gRank, tags[k], sizes[k]));
      ins.emplace_back(sizes[k], 0);
    }
    for (int k = 0; k < 3; ++k) sends.push_back(t.isend(next, tags[k], 3, outs[k].data(), sizes[k]));
    std::this_thread::sleep_for(Millis(30));
    for (int k = 2; k >= 0; --k) {
      t.waitAll(std::vector<RequestPtr>{t.irecv(prev, tags[k], 3, ins[k].data(), sizes[k])}, soon());
      EXPECT(firstWrong(ins[k], prev, tags[k]) == -1, "tag ", tags[k]);
    }
    t.waitAll(sends, soon());
  });

  section("fifo per tag", [&] {
    // One tag, mixed inline and chunked sizes; the second round posts its receives late,
    // after every header has arrived and waits in the held queue.
    const size_t sizes[] = {10, 2 * 1048576, 0, 16384, 16385, 50, 1048576 + 9};
    for (int round = 0; round < 2; ++round) {
      std::vector<std::vector<uint8_t>> outs, ins;
      std::vector<RequestPtr> reqs;
      for (size_t k = 0; k < std::size(sizes); ++k) {
        outs.push_back(message(gRank, 300 + k, sizes[k]));
        ins.emplace_back(sizes[k], 0);
      }
      for (size_t k = 0; k < std::size(sizes); ++k) reqs.push_back(t.isend(next, 300, k, outs[k].data(), sizes[k]));
      if (round == 1) {
        barrier(t);
        std::this_thread::sleep_for(Millis(50));
        t.test(reqs.front());  // takes in every header that arrived
      }
      for (size_t k = 0; k < std::size(sizes); ++k) {
        reqs.push_back(t.irecv(prev, 300, k, ins[k].data(), sizes[k]));
      }
      t.waitAll(reqs, soon());
      for (size_t k = 0; k < std::size(sizes); ++k) {
        EXPECT(firstWrong(ins[k], prev, 300 + k) == -1, "round ", round, " message ", k);
      }
    }
  });

  section("reduce on receive", [&] {
    struct Case {
      DType dtype;
      ReduceOp op;
    };
    const Case cases[] = {{DType::kFloat32, ReduceOp::kSum},  {DType::kFloat64, ReduceOp::kProd},
                          {DType::kInt32, ReduceOp::kMax},    {DType::kInt64, ReduceOp::kMin},
                          {DType::kUInt8, ReduceOp::kSum},    {DType::kFloat16, ReduceOp::kSum},
                          {DType::kBFloat16, ReduceOp::kSum}, {DType::kFloat32, ReduceOp::kAvg}};
    const size_t counts[] = {0, 7, 1031, 300007, (1u << 20) + 3};
    uint64_t tag = 400;
    for (const Case& c : cases) {
      for (size_t n : counts) {
        size_t bytes = n * dtypeSize(c.dtype);
        std::vector<uint8_t> out(bytes), in(bytes);
        for (size_t i = 0; i < n; ++i) {
          setElem(out, c.dtype, i, value(gRank, i, c.op, c.dtype));
          setElem(in, c.dtype, i, value(gRank + 7, i, c.op, c.dtype));
        }
        RecvReduce red{c.dtype, c.op};
        auto s = t.isend(next, tag, 9, out.data(), bytes);
        auto r = t.irecv(prev, tag, 9, in.data(), bytes, &red);
        t.waitAll(std::vector<RequestPtr>{s, r}, soon());
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) {
          double want = combine(value(gRank + 7, i, c.op, c.dtype), value(prev, i, c.op, c.dtype), c.op);
          if (!near(getElem(in, c.dtype, i), want, c.dtype) && bad++ == 0) {
            fail(__LINE__, str(dtypeName(c.dtype), " ", reduceOpName(c.op), " count ", n, " element ", i, ": got ",
                               getElem(in, c.dtype, i), " want ", want));
          }
        }
        ++tag;
      }
    }
  });

  section("mismatch", [&] {
    // (sent bytes, sent sig, expected bytes, expected sig) under one tag, then a good one.
    struct Case {
      size_t sentBytes;
      uint64_t sentSig;
      size_t wantBytes;
      uint64_t wantSig;
    };
    const Case cases[] = {{100, 1, 200, 1}, {4 << 20, 2, 4 << 20, 3}, {2 << 20, 4, 1 << 20, 4}, {300, 5, 60, 5}};
    const uint64_t tag = 500;
    std::vector<std::vector<uint8_t>> outs;
    std::vector<RequestPtr> sends;
    for (const Case& c : cases) {
      outs.push_back(message(gRank, tag, c.sentBytes));
      sends.push_back(t.isend(next, tag, c.sentSig, outs.back().data(), c.sentBytes));
    }
    auto good = message(gRank, tag + 1, 5000);
    sends.push_back(t.isend(next, tag, 77, good.data(), good.size()));
    const size_t kGuard = 64;
    for (const Case& c : cases) {
      std::vector<uint8_t> in(c.wantBytes + kGuard, 0xAB);
      MismatchError caught("");
      expectThrow<MismatchError>(
          __LINE__, [&] { t.waitAll(std::vector<RequestPtr>{t.irecv(prev, tag, c.wantSig, in.data(), c.wantBytes)}, soon()); },
          {str("peer ", prev), "0x1f4", str(c.sentBytes), str(c.wantBytes)}, &caught);
      bool untouched = true;
      for (uint8_t b : in) untouched = untouched && b == 0xAB;
      EXPECT(untouched, "the receive buffer of a mismatched message was written (", c.sentBytes, " sent, ",
             c.wantBytes, " expected)");
    }
    std::vector<uint8_t> in(5000, 0);
    t.waitAll(std::vector<RequestPtr>{t.irecv(prev, tag, 77, in.data(), in.size())}, soon());
    EXPECT(firstWrong(in, prev, tag + 1) == -1, "the message after the mismatches");
    t.waitAll(sends, soon());
  });

  section("timeout names the peer", [&] {
    std::vector<uint8_t> in(64);
    auto t0 = std::chrono::steady_clock::now();
    expectThrow<TimeoutError>(
        __LINE__, [&] { t.waitAll(std::vector<RequestPtr>{t.irecv(next, 600, 1, in.data(), in.size())}, Deadline(Millis(100))); },
        {str("rank ", gRank), str("recv from rank ", next, " tag 600"), "the peer has not sent it", "CHORUS_TIMEOUT_MS"});
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    EXPECT(ms >= 99 && ms < 3000, "waited ", ms, " ms for a 100 ms deadline");
  });

  section("invalid arguments", [&] {
    std::vector<uint8_t> buf(12);
    expectThrow<InvalidArgument>(__LINE__, [&] { t.isend(gRank, 1, 1, buf.data(), 4); }, {"peer"});
    expectThrow<InvalidArgument>(__LINE__, [&] { t.irecv(gSize, 1, 1, buf.data(), 4); }, {"peer"});
    RecvReduce red{DType::kFloat64, ReduceOp::kSum};
    expectThrow<InvalidArgument>(__LINE__, [&] { t.irecv(next, 1, 1, buf.data(), 12, &red); }, {"float64"});
    TransportOptions bad;
    bad.rank = gRank;
    bad.size = gSize + 1;
    expectThrow<ConfigError>(__LINE__, [&] { createMpiTransport(bad); }, {"world size"});
    bad.size = gSize;
    bad.rank = 0;
    expectThrow<ConfigError>(__LINE__, [&] { createMpiTransport(bad); }, {"claims rank"});
  });
}

void checkNativeAllreduce(Transport& t) {
  section("nativeAllreduce", [&] {
    const size_t counts[] = {0, 1, 7, 1031, 300007};
    for (DType dt : kAllDTypes) {
      for (ReduceOp op : kAllReduceOps) {
        for (size_t n : counts) {
          std::vector<uint8_t> buf(n * dtypeSize(dt));
          for (size_t i = 0; i < n; ++i) setElem(buf, dt, i, value(gRank, i, op, dt));
          t.nativeAllreduce(buf.data(), n, dt, op);
          size_t bad = 0;
          for (size_t i = 0; i < n; ++i) {
            double want = value(0, i, op, dt);
            for (int r = 1; r < gSize; ++r) want = combine(want, value(r, i, op, dt), op);
            if (op == ReduceOp::kAvg) want = isFloat(dt) ? want / gSize : std::trunc(want / gSize);
            double got = getElem(buf, dt, i);
            if (!near(got, want, dt) && bad++ == 0) {
              fail(__LINE__, str(dtypeName(dt), " ", reduceOpName(op), " count ", n, " element ", i, ": got ", got,
                                 " want ", want));
            }
          }
        }
      }
    }
  });
}

void checkRankOrder() {
  section("communicator follows rank", [&] {
    // Chorus rank = reversed MPI rank: data must still come from the chorus-rank neighbour.
    TransportOptions o;
    o.rank = gSize - 1 - gRank;
    o.size = gSize;
    auto t = createMpiTransport(o);
    EXPECT(t->rank() == o.rank);
    int next = (o.rank + 1) % gSize;
    int prev = (o.rank + gSize - 1) % gSize;
    auto out = message(o.rank, 700, 4000);
    std::vector<uint8_t> in(4000);
    t->waitAll(std::vector<RequestPtr>{t->isend(next, 700, 0, out.data(), out.size()),
                                       t->irecv(prev, 700, 0, in.data(), in.size())},
               soon());
    EXPECT(firstWrong(in, prev, 700) == -1, "data did not come from chorus rank ", prev);
    barrier(*t);
  });
}

void checkClose(Transport& world) {
  section("peer closes", [&] {
    TransportOptions o;
    o.rank = gRank;
    o.size = gSize;
    auto t = createMpiTransport(o);
    std::vector<uint8_t> in(1000), big(4 << 20, 1);
    RequestPtr pendingRecv, pendingSend;
    if (gRank != 0) {
      pendingRecv = t->irecv(0, 900, 1, in.data(), in.size());
      pendingSend = t->isend(0, 902, 1, big.data(), big.size());
    }
    barrier(world);
    if (gRank == 0) {
      t->close();
      t->close();
      expectThrow<Error>(__LINE__, [&] { t->isend(1, 903, 1, in.data(), 10); }, {"closed"});
    } else {
      auto t0 = std::chrono::steady_clock::now();
      PeerError caught("", -1);
      expectThrow<PeerError>(__LINE__, [&] { t->waitAll(std::vector<RequestPtr>{pendingRecv}, soon()); },
                             {"peer 0", "closed"}, &caught);
      EXPECT(caught.peer() == 0, "PeerError names peer ", caught.peer());
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      EXPECT(ms < 5000, "took ", ms, " ms to see the peer close");
      expectThrow<PeerError>(__LINE__, [&] { t->waitAll(std::vector<RequestPtr>{pendingSend}, soon()); }, {"peer 0"});
      expectThrow<PeerError>(
          __LINE__, [&] { t->waitAll(std::vector<RequestPtr>{t->irecv(0, 901, 1, in.data(), in.size())}, soon()); },
          {"peer 0"});
      expectThrow<PeerError>(
          __LINE__, [&] { t->waitAll(std::vector<RequestPtr>{t->isend(0, 904, 1, big.data(), big.size())}, soon()); },
          {"peer 0"});
      if (gSize > 2) {
        // The other pairs keep working.
        int next = gRank == gSize - 1 ? 1 : gRank + 1;
        int prev = gRank == 1 ? gSize - 1 : gRank - 1;
        auto out = message(gRank, 905, 3 << 20);
        std::vector<uint8_t> got(3 << 20);
        t->waitAll(std::vector<RequestPtr>{t->isend(next, 905, 1, out.data(), out.size()),
                                           t->irecv(prev, 905, 1, got.data(), got.size())},
                   soon());
        EXPECT(firstWrong(got, prev, 905) == -1, "from peer ", prev, " after peer 0 closed");
      }
    }
    barrier(world);
  });

  section("close from another thread", [&] {
    TransportOptions o;
    o.rank = gRank;
    o.size = gSize;
    auto t = createMpiTransport(o);
    std::vector<uint8_t> in(100);
    auto r = t->irecv((gRank + 1) % gSize, 1000, 1, in.data(), in.size());
    std::thread closer([&] {
      std::this_thread::sleep_for(Millis(100));
      t->close();
    });
    auto t0 = std::chrono::steady_clock::now();
    expectThrow<Error>(__LINE__, [&] { t->waitAll(std::vector<RequestPtr>{r}, soon()); }, {"closed"});
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    EXPECT(ms < 3000, "waitAll took ", ms, " ms to notice close()");
    closer.join();
    expectThrow<Error>(__LINE__, [&] { t->irecv((gRank + 1) % gSize, 1001, 1, in.data(), 4); }, {"closed"});
    barrier(world);
  });
}

void checkStoreExchange(Transport& world) {
  section("store address over MPI", [&] {
    EXPECT(mpiLaunched());
    BootstrapInfo info;
    info.source = "openmpi";
    info.rank = gRank;
    info.worldSize = gSize;
    info.needsStoreFromMpi = true;
    std::unique_ptr<TcpStoreServer> server;
    mpiExchangeStoreAddress(info, &server);
    EXPECT(!info.needsStoreFromMpi && !info.hostStore);
    EXPECT(info.storeAddr == "127.0.0.1", "one host, got ", info.storeAddr);
    EXPECT(info.storePort > 0 && info.storePort < 65536);
    EXPECT(info.secret.size() >= 16, "secret '", info.secret, "'");
    EXPECT(!info.jobId.empty());
    EXPECT((server != nullptr) == (gRank == 0));
    {
      TcpStore store(info.storeAddr, info.storePort, info.secret, Millis(10000));
      if (gRank == 0) store.set("job", toBytes(info.jobId + "/" + info.secret));
      store.set(str("rank/", gRank), toBytes(str(gRank * 11)));
      EXPECT(toString(store.get("job", Millis(10000))) == info.jobId + "/" + info.secret,
             "every rank must get rank 0's job id and secret");
      for (int r = 0; r < gSize; ++r) {
        EXPECT(toString(store.get(str("rank/", r), Millis(10000))) == str(r * 11), "key of rank ", r);
      }
      barrier(world);
    }
    barrier(world);
  });
}

}  // namespace

int main() {
  auto rankEnv = envGet("OMPI_COMM_WORLD_RANK");
  auto sizeEnv = envGet("OMPI_COMM_WORLD_SIZE");
  if (!rankEnv || !sizeEnv) {
    std::fprintf(stderr, "mpi_transport_check: run me under mpirun -n N (N >= 2)\n");
    return 2;
  }
  gRank = std::atoi(rankEnv->c_str());
  gSize = std::atoi(sizeEnv->c_str());
  if (gSize < 2) {
    std::fprintf(stderr, "mpi_transport_check: needs at least 2 ranks\n");
    return 2;
  }
  int total = 0;
  try {
    TransportOptions o;
    o.rank = gRank;
    o.size = gSize;
    auto t = createMpiTransport(o);
    if (std::string(t->name()) != "mpi" || t->rank() != gRank || t->size() != gSize) {
      fail(__LINE__, "transport identity");
    }
    checkPointToPoint(*t);
    barrier(*t);
    checkNativeAllreduce(*t);
    checkRankOrder();
    checkClose(*t);
    checkStoreExchange(*t);
    int32_t f = gFailures;
    t->nativeAllreduce(&f, 1, DType::kInt32, ReduceOp::kSum);
    total = f;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: FAIL: %s\n", gRank, e.what());
    return 1;
  }
  if (gRank == 0) std::printf("mpi_transport_check: %d ranks, %d failures\n", gSize, total);
  return total == 0 ? 0 : 1;
}
