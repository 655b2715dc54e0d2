// What is particular to the tcp transport, with ranks as threads of one process rendezvousing
// through a MemoryStore: sizes around its chunk, held copies, large simultaneous exchanges,
// reduce-on-receive with odd chunk sizes and into a partly held message, large messages still
// delivered after their sender closed, a single rank, setup, and connections that fail the
// job-secret handshake. The rules every transport keeps (transport.h) are checked on tcp, as
// on the others, by the conformance suite (tests/comm/transport/conformance_test.cc).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/net/auth.h"
#include "chorus/comm/net/socket.h"
#include "chorus/comm/rendezvous/memory_store.h"
#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/tcp/context.h"

namespace chorus::comm {
namespace {

constexpr Millis kTimeout(10000);
const std::string kSecret = "tcp-test-secret";

Deadline soon() { return Deadline(kTimeout); }

std::vector<uint8_t> pattern(size_t n, int seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 131 + static_cast<size_t>(seed) * 7 + (i >> 9));
  return v;
}

TransportOptions options(Store* store, int rank, int size) {
  TransportOptions o;
  o.rank = rank;
  o.size = size;
  o.store = store;
  o.prefix = "t";
  o.secret = kSecret;
  o.timeout = kTimeout;
  return o;
}

using RankFn = std::function<void(int rank, std::unique_ptr<Transport>& t)>;

// Runs fn on `size` threads, each with its own transport; rethrows the first failure.
void runRanks(int size, const RankFn& fn, MemoryStore* sharedStore = nullptr) {
  MemoryStore ownStore;
  Store* store = sharedStore != nullptr ? sharedStore : &ownStore;
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      try {
        std::unique_ptr<Transport> t = createTcpTransport(options(store, r, size));
        fn(r, t);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < size; ++r) {
    if (errors[r]) {
      try {
        std::rethrow_exception(errors[r]);
      } catch (const std::exception& e) {
        FAIL() << "rank " << r << " threw: " << e.what();
      }
    }
  }
}

tcp::Context& tcpOf(Transport& t) { return dynamic_cast<tcp::Context&>(t); }

void waitOne(Transport& t, const RequestPtr& r, Millis timeout = kTimeout) {
  RequestPtr rs[] = {r};
  t.waitAll(rs, Deadline(timeout));
}

// ---------------------------------------------------------------------------------------

TEST(TcpTransport, SingleRankRefusesSelfMessages) {
  runRanks(1, [](int, std::unique_ptr<Transport>& t) {
    uint8_t b = 0;
    EXPECT_THROW(t->isend(0, 1, 0, &b, 1), InvalidArgument);
    EXPECT_THROW(t->irecv(0, 1, 0, &b, 1), InvalidArgument);
    EXPECT_THROW(t->isend(3, 1, 0, &b, 1), InvalidArgument);
    t->waitAll({}, soon());
  });
}

TEST(TcpTransport, SizesAroundTheChunk) {
  runRanks(2, [](int rank, std::unique_ptr<Transport>& t) {
    const size_t chunk = tcpOf(*t).chunkBytes();
    const size_t sizes[] = {0, 1, 7, 4096, 65535, 65536, 65537, chunk - 1, chunk, chunk + 1, 3 * chunk + 5};
    const int other = 1 - rank;
    uint64_t tag = 0;
    for (size_t n : sizes) {
      // Posted before the data arrives: straight into the buffer.
      auto out = pattern(n, static_cast<int>(n) + rank);
      std::vector<uint8_t> in(n + 16, 0xAB);
      auto r = t->irecv(other, ++tag, n, in.data(), n);
      auto s = t->isend(other, tag, n, out.data(), n);
      RequestPtr both[] = {r, s};
      t->waitAll(both, soon());
      EXPECT_TRUE(std::equal(in.begin(), in.begin() + static_cast<long>(n), pattern(n, static_cast<int>(n) + other).begin()))
          << n << " bytes";
      for (size_t i = n; i < in.size(); ++i) ASSERT_EQ(in[i], 0xAB) << "wrote past the buffer at " << i;

      // Posted after the data surely arrived (the other rank acknowledged): from the held copy.
      std::fill(in.begin(), in.end(), 0xAB);
      s = t->isend(other, ++tag, n, out.data(), n);
      waitOne(*t, s);
      uint8_t ack = 1;
      auto ackR = t->irecv(other, ++tag, 0, &ack, 1);
      waitOne(*t, t->isend(other, tag, 0, &ack, 1));
      waitOne(*t, ackR);
      waitOne(*t, t->irecv(other, tag - 1, n, in.data(), n));
      EXPECT_TRUE(std::equal(in.begin(), in.begin() + static_cast<long>(n), pattern(n, static_cast<int>(n) + other).begin()))
          << n << " bytes, held";
      for (size_t i = n; i < in.size(); ++i) ASSERT_EQ(in[i], 0xAB) << "wrote past the buffer at " << i;
    }
  });
}

// Both ranks send a large message to each other at once; each also checks that waiting on
// its send alone completes (the other side must drain into a held buffer to let it).
void exchangeLarge(size_t bytes, bool waitSendsFirst) {
  runRanks(2, [bytes, waitSendsFirst](int rank, std::unique_ptr<Transport>& t) {
    const int other = 1 - rank;
    auto out = pattern(bytes, rank);
    std::vector<uint8_t> in(bytes);
    if (waitSendsFirst) {
      waitOne(*t, t->isend(other, 1, 9, out.data(), bytes));
      waitOne(*t, t->irecv(other, 1, 9, in.data(), bytes));
    } else {
      auto r = t->irecv(other, 1, 9, in.data(), bytes);
      auto s = t->isend(other, 1, 9, out.data(), bytes);
      RequestPtr both[] = {s, r};
      t->waitAll(both, soon());
    }
    EXPECT_TRUE(in == pattern(bytes, other));
  });
}

TEST(TcpTransport, TwentyMiBBothWaysAtOnce) { exchangeLarge(20 << 20, false); }
TEST(TcpTransport, TwentyMiBBothWaysSendsWaitedFirst) { exchangeLarge(20 << 20, true); }
TEST(TcpTransport, SixtyFourMiBBothWaysAtOnce) { exchangeLarge(64 << 20, false); }

TEST(TcpTransport, ReceivePostedWhileMessageStreamsIntoHeld) {
  // The receive is posted while the message is (most likely) half held: the held prefix is
  // copied and the rest streams straight into the buffer. Correct whichever way it lands.
  runRanks(2, [](int rank, std::unique_ptr<Transport>& t) {
    const size_t bytes = 24 << 20;
    if (rank == 0) {
      auto big = pattern(bytes, 3);
      uint8_t small = 5;
      auto s1 = t->isend(1, 1, 0, big.data(), bytes);
      auto s2 = t->isend(1, 2, 0, &small, 1);
      RequestPtr both[] = {s1, s2};
      t->waitAll(both, soon());
    } else {
      uint8_t small = 0;
      auto r2 = t->irecv(0, 2, 0, &small, 1);
      auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(3);
      while (std::chrono::steady_clock::now() < until && !t->test(r2)) {
      }
      std::vector<uint8_t> in(bytes);
      auto r1 = t->irecv(0, 1, 0, in.data(), bytes);
      RequestPtr both[] = {r1, r2};
      t->waitAll(both, soon());
      EXPECT_EQ(small, 5);
      EXPECT_TRUE(in == pattern(bytes, 3));
    }
  });
}

// Ranks 1..n-1 send float vectors to rank 0, which sums them into its own with RecvReduce.
void reduceToRoot(int n, size_t count, bool postLate) {
  runRanks(n, [n, count, postLate](int rank, std::unique_ptr<Transport>& t) {
    auto value = [](int r, size_t i) { return static_cast<float>((i % 1000) * 0.25 + r); };
    std::vector<float> v(count);
    for (size_t i = 0; i < count; ++i) v[i] = value(rank, i);
    const size_t bytes = count * sizeof(float);
    if (rank != 0) {
      waitOne(*t, t->isend(0, 4, 77, v.data(), bytes));
      uint8_t ack = 0;
      waitOne(*t, t->irecv(0, 5, 0, &ack, 1));
      return;
    }
    RecvReduce rr{DType::kFloat32, ReduceOp::kSum};
    std::vector<RequestPtr> reqs;
    if (postLate) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (int p = 1; p < n; ++p) reqs.push_back(t->irecv(p, 4, 77, v.data(), bytes, &rr));
    t->waitAll(reqs, soon());
    for (size_t i = 0; i < count; ++i) {
      float want = value(0, i);
      for (int p = 1; p < n; ++p) want += value(p, i);
      ASSERT_FLOAT_EQ(v[i], want) << "element " << i;
    }
    uint8_t ack = 1;
    std::vector<RequestPtr> acks;
    for (int p = 1; p < n; ++p) acks.push_back(t->isend(p, 5, 0, &ack, 1));
    t->waitAll(acks, soon());
  });
}

TEST(TcpTransport, RecvReduceWithChunksThatSplitElements) {
  // A chunk of 102 bytes is not a whole number of floats: partial elements wait in the scratch.
  ASSERT_EQ(setenv("CHORUS_TCP_CHUNK_BYTES", "102", 1), 0);
  reduceToRoot(2, 100003, false);
  reduceToRoot(2, 100003, true);
  unsetenv("CHORUS_TCP_CHUNK_BYTES");
}

TEST(TcpTransport, RecvReduceAdoptsAPartiallyHeldMessage) {
  runRanks(2, [](int rank, std::unique_ptr<Transport>& t) {
    const size_t count = 6 << 20;  // 24 MiB of int32
    std::vector<int32_t> v(count);
    for (size_t i = 0; i < count; ++i) v[i] = static_cast<int32_t>(i % 977) * (rank == 0 ? 1 : -3);
    if (rank == 1) {
      uint8_t small = 5;
      auto s1 = t->isend(0, 1, 0, v.data(), count * 4);
      auto s2 = t->isend(0, 2, 0, &small, 1);
      RequestPtr both[] = {s1, s2};
      t->waitAll(both, soon());
      return;
    }
    uint8_t small = 0;
    auto r2 = t->irecv(1, 2, 0, &small, 1);
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(3);
    while (std::chrono::steady_clock::now() < until && !t->test(r2)) {
    }
    RecvReduce rr{DType::kInt32, ReduceOp::kMax};
    auto r1 = t->irecv(1, 1, 0, v.data(), count * 4, &rr);
    RequestPtr both[] = {r1, r2};
    t->waitAll(both, soon());
    for (size_t i = 0; i < count; ++i) ASSERT_EQ(v[i], static_cast<int32_t>(i % 977)) << i;
  });
}

// Every transport delivers small messages sent before their sender closed (the conformance
// suite); tcp delivers large ones too: whatever reached the socket before the EOF.
TEST(TcpTransport, MessagesSentBeforeAPeerClosedAreStillDelivered) {
  runRanks(2, [](int rank, std::unique_ptr<Transport>& t) {
    auto msg = pattern(300000, 4);
    if (rank == 0) {
      waitOne(*t, t->isend(1, 1, 0, msg.data(), msg.size()));
      t.reset();
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    uint8_t b;
    EXPECT_THROW(waitOne(*t, t->irecv(0, 2, 0, &b, 1)), PeerError);  // sees the EOF
    std::vector<uint8_t> in(msg.size());
    waitOne(*t, t->irecv(0, 1, 0, in.data(), in.size()));  // held before the EOF
    EXPECT_EQ(in, msg);
  });
}

// ---------------------------------------------------------------------------------------
// Connections that are not real peers.

std::string publishedAddress(MemoryStore& store, int rank) {
  return toString(store.get("t/tcp/" + std::to_string(rank), kTimeout));
}

net::Fd connectTo(const std::string& addr) {
  auto colon = addr.rfind(':');
  net::Endpoint ep{addr.substr(0, colon), std::atoi(addr.c_str() + colon + 1)};
  return net::connectTcp(ep, soon());
}

// Half-closes our side and waits until the server closes its: the refusal is then counted.
void drainUntilClosed(int fd) {
  ::shutdown(fd, SHUT_WR);
  uint8_t buf[256];
  Deadline d = soon();
  while (!d.expired()) {
    if (!net::pollFd(fd, POLLIN, d)) break;
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return;
  }
  ADD_FAILURE() << "the server never closed a refused connection";
}

TEST(TcpTransport, ConnectionsFailingTheHandshakeAreRefusedAndCounted) {
  MemoryStore store;
  std::atomic<int> refused{-1};
  std::exception_ptr error0, error1;
  std::thread rank0([&] {
    try {
      auto t = createTcpTransport(options(&store, 0, 2));
      refused = tcpOf(*t).refusedConnections();
      uint32_t v = 0;
      waitOne(*t, t->irecv(1, 1, 0, &v, sizeof v));
      EXPECT_EQ(v, 42u);
    } catch (...) {
      error0 = std::current_exception();
    }
  });
  const std::string addr = publishedAddress(store, 0);
  {  // the wrong secret
    net::Fd fd = connectTo(addr);
    EXPECT_THROW(net::authenticate(fd.get(), "not-the-secret", false, soon()), AuthError);
    drainUntilClosed(fd.get());
  }
  {  // garbage instead of the handshake
    net::Fd fd = connectTo(addr);
    std::string junk(100, 'x');
    net::writeFull(fd.get(), junk.data(), junk.size(), soon());
    drainUntilClosed(fd.get());
  }
  {  // the right secret, then a hello that is not one
    net::Fd fd = connectTo(addr);
    net::authenticate(fd.get(), kSecret, false, soon());
    uint8_t zeros[16] = {};
    net::writeFull(fd.get(), zeros, sizeof zeros, soon());
    drainUntilClosed(fd.get());
  }
  std::thread rank1([&] {
    try {
      auto t = createTcpTransport(options(&store, 1, 2));
      uint32_t v = 42;
      waitOne(*t, t->isend(0, 1, 0, &v, sizeof v));
    } catch (...) {
      error1 = std::current_exception();
    }
  });
  rank0.join();
  rank1.join();
  if (error0) std::rethrow_exception(error0);
  if (error1) std::rethrow_exception(error1);
  EXPECT_EQ(refused.load(), 3);
}

TEST(TcpTransport, WrongSecretBetweenRanksFailsSetup) {
  MemoryStore store;
  std::exception_ptr error1;
  std::thread rank0([&] {
    auto o = options(&store, 0, 2);
    o.timeout = Millis(1500);
    EXPECT_THROW(createTcpTransport(o), TimeoutError);
  });
  std::thread rank1([&] {
    auto o = options(&store, 1, 2);
    o.secret = "another-secret";
    o.timeout = Millis(1500);
    EXPECT_THROW(createTcpTransport(o), AuthError);
  });
  rank0.join();
  rank1.join();
}

TEST(TcpTransport, MalformedFrameFailsThePeer) {
  // The test plays rank 1 by hand: a correct handshake, then bytes that are not a frame.
  MemoryStore store;
  std::thread rank0([&] {
    auto t = createTcpTransport(options(&store, 0, 2));
    uint8_t b[8];
    try {
      waitOne(*t, t->irecv(1, 1, 0, b, sizeof b));
      ADD_FAILURE() << "no PeerError";
    } catch (const PeerError& e) {
      EXPECT_EQ(e.peer(), 1);
      EXPECT_NE(std::string(e.what()).find("malformed frame from rank 1"), std::string::npos) << e.what();
    }
  });
  net::Fd fd = connectTo(publishedAddress(store, 0));
  net::authenticate(fd.get(), kSecret, false, soon());
  uint8_t hello[16] = {'C', 'H', 'T', 'H', 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0};
  net::writeFull(fd.get(), hello, sizeof hello, soon());
  net::readFull(fd.get(), hello, sizeof hello, soon());
  std::string junk(tcp::kFrameHeaderBytes, '\xff');
  net::writeFull(fd.get(), junk.data(), junk.size(), soon());
  rank0.join();
}

TEST(TcpTransport, SetupTimesOutNamingMissingRanks) {
  MemoryStore store;
  auto o = options(&store, 0, 3);
  o.timeout = Millis(300);
  try {
    createTcpTransport(o);
    ADD_FAILURE() << "no TimeoutError";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("rank(s) 1, 2"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace chorus::comm
