// Checks the mpi transport under `mpirun -n N` (N >= 2): every case of the transport
// conformance suite (tests/util/transport_conformance.h: exact data at every boundary size,
// FIFO per tag, held messages, reduce-on-receive, mismatches, timeouts, waitAny, close — the
// same cases tests/comm/transport/conformance_test.cc runs on loopback, shm, tcp and mixed),
// each on a fresh mpi transport; then what only the mpi transport has: how far a timed-out
// receive got, nativeAllreduce for every dtype and op against a serial reference, a private
// communicator ordered by chorus rank, refused options, and the store-address exchange that
// lets a job started by mpirun find its rendezvous store.
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
#include "util/transport_conformance.h"

using namespace chorus;
using namespace chorus::comm;
namespace conformance = chorus::testutil::conformance;

namespace {

int gRank = 0;
int gSize = 1;
int gFailures = 0;
const char* gSection = "";

void fail(int line, const std::string& what) {
  ++gFailures;
  if (line > 0) {
    std::fprintf(stderr, "rank %d: FAIL %s (line %d): %s\n", gRank, gSection, line, what.c_str());
  } else {
    std::fprintf(stderr, "rank %d: FAIL %s: %s\n", gRank, gSection, what.c_str());
  }
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
  } catch (const conformance::Failure& e) {
    fail(0, e.what());
  } catch (const std::exception& e) {
    fail(0, str("unexpected exception: ", e.what()));
  }
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (gRank == 0) std::printf("%-44s %s (%.0f ms)\n", name, gFailures == before ? "ok" : "FAILED", ms);
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

bool isFloat(DType t) { return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kFloat16 || t == DType::kBFloat16; }

// Every conformance case that a job of this size can run, each on a fresh transport (a case
// may close its own); the world transport only keeps the ranks in step between cases.
void checkConformance(Transport& world) {
  for (const conformance::Case& c : conformance::cases()) {
    if (c.killsARank || gSize < c.minRanks) continue;  // a dead rank ends an mpirun job
    TransportOptions o;
    o.rank = gRank;
    o.size = gSize;
    auto t = createMpiTransport(o);
    section(c.name, [&] {
      try {
        c.run(*t);
      } catch (...) {
        t->close();  // the other ranks fail at once instead of at their deadline
        throw;
      }
    });
    barrier(world);
  }
}

// What only the mpi transport says, and refuses.
void checkMpiSpecifics(Transport& t) {
  int next = (gRank + 1) % gSize;

  section("timeout says how far it got", [&] {
    // On a transport of its own, closed with the receive still pending (nobody sends tag 600).
    TransportOptions o;
    o.rank = gRank;
    o.size = gSize;
    auto own = createMpiTransport(o);
    std::vector<uint8_t> in(64);
    expectThrow<TimeoutError>(
        __LINE__,
        [&] {
          own->waitAll(std::vector<RequestPtr>{own->irecv(next, 600, 1, in.data(), in.size())}, Deadline(Millis(100)));
        },
        {str("recv from rank ", next, " tag 600"), "the peer has not sent it"});
    barrier(t);
    own->close();
  });
  barrier(t);

  section("refused options", [&] {
    std::vector<uint8_t> buf(12);
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
          for (size_t i = 0; i < n; ++i) conformance::setElement(buf.data(), dt, i, conformance::smallValue(gRank, i, op, dt));
          t.nativeAllreduce(buf.data(), n, dt, op);
          size_t bad = 0;
          for (size_t i = 0; i < n; ++i) {
            double want = conformance::smallValue(0, i, op, dt);
            for (int r = 1; r < gSize; ++r) want = conformance::combine(want, conformance::smallValue(r, i, op, dt), op);
            if (op == ReduceOp::kAvg) want = isFloat(dt) ? want / gSize : std::trunc(want / gSize);
            double got = conformance::getElement(buf.data(), dt, i);
            if (!conformance::closeEnough(got, want, dt) && bad++ == 0) {
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
    checkConformance(*t);
    checkMpiSpecifics(*t);
    barrier(*t);
    checkNativeAllreduce(*t);
    checkRankOrder();
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
