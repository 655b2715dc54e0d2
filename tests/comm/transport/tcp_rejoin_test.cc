// Restarted ranks on the tcp transport ("rejoin"), with ranks as TcpContexts of one process
// meeting through a MemoryStore. Destroying a context closes its sockets, as if its process
// died; a new context with opts.rejoin then takes its place. Checked: pending requests to the
// dead process fail with PeerError; awaitPeer/peerEpoch see the replacement; messages flow
// both ways with the new process (the lowest rank too, where the rejoin connects the other
// way round from setup); a request posted after the replacement connected goes to it; a
// joiner comes up in bounded time while other ranks are dead or silent; a wrong secret is
// refused; awaitPeer times out; a transport without acceptRejoin is unchanged; no thread or
// descriptor outlives the contexts.
#include <dirent.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/net/socket.h"
#include "chorus/comm/rendezvous/memory_store.h"
#include "chorus/comm/transport/factory.h"
#include "chorus/comm/transport/tcp/context.h"

namespace chorus::comm {
namespace {

using TcpContext = tcp::Context;
using Ctx = std::unique_ptr<TcpContext>;

constexpr Millis kSetup(5000);  // connecting and rejoining
constexpr Millis kWait(3000);   // one exchange or awaitPeer
const std::string kSecret = "rejoin-test-secret";

TransportOptions options(Store* store, int rank, int size, bool acceptRejoin = true, bool rejoin = false) {
  TransportOptions o;
  o.rank = rank;
  o.size = size;
  o.store = store;
  o.prefix = "rj";
  o.secret = kSecret;
  o.timeout = kSetup;
  o.acceptRejoin = acceptRejoin;
  o.rejoin = rejoin;
  return o;
}

// Sets up n ranks at once (setup needs every rank at the same time).
std::vector<Ctx> makeWorld(Store* store, int n, bool acceptRejoin = true) {
  std::vector<Ctx> world(static_cast<size_t>(n));
  std::vector<std::string> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        world[r] = std::make_unique<TcpContext>(options(store, r, n, acceptRejoin));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  return world;
}

// A restarted process for `rank`.
Ctx rejoin(Store* store, int rank, int size, const std::string& secret = kSecret, Millis timeout = kSetup) {
  TransportOptions o = options(store, rank, size, true, true);
  o.secret = secret;
  o.timeout = timeout;
  return std::make_unique<TcpContext>(o);
}

std::vector<uint8_t> pattern(size_t n, int seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 31 + static_cast<size_t>(seed) * 17 + (i >> 8));
  return v;
}

void waitOne(Transport& t, const RequestPtr& r) {
  RequestPtr rs[] = {r};
  t.waitAll(rs, Deadline(kWait));
}

// One message from `from` to `to` (each side waits on its own thread, so any size works);
// checks its contents on arrival.
void exchange(TcpContext& from, TcpContext& to, uint64_t tag, size_t bytes, int seed) {
  const std::vector<uint8_t> out = pattern(bytes, seed);
  std::vector<uint8_t> in(bytes, 0);
  std::string sendError;
  std::thread sender([&] {
    try {
      waitOne(from, from.isend(to.rank(), tag, 9, out.data(), out.size()));
    } catch (const std::exception& e) {
      sendError = e.what();
    }
  });
  try {
    waitOne(to, to.irecv(from.rank(), tag, 9, in.data(), in.size()));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "recv on rank " << to.rank() << " from rank " << from.rank() << ": " << e.what();
  }
  sender.join();
  EXPECT_EQ(sendError, "") << "send from rank " << from.rank() << " to rank " << to.rank();
  EXPECT_TRUE(in == out) << "the message from rank " << from.rank() << " to rank " << to.rank() << " differs";
}

// Both directions, a small and a multi-chunk message.
void talk(TcpContext& a, TcpContext& b, uint64_t tag) {
  exchange(a, b, tag, 1000, a.rank() * 10 + b.rank());
  exchange(b, a, tag, 1000, b.rank() * 10 + a.rank());
  exchange(a, b, tag + 1, 3 << 20, a.rank());
  exchange(b, a, tag + 1, 3 << 20, b.rank());
}

// Waits for a failure of `r` on `t` and checks that it is a PeerError naming `peer`.
void expectPeerError(Transport& t, const RequestPtr& r, int peer) {
  try {
    waitOne(t, r);
    ADD_FAILURE() << "rank " << t.rank() << ": the request to rank " << peer << " succeeded";
  } catch (const PeerError& e) {
    EXPECT_EQ(e.peer(), peer) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "rank " << t.rank() << ": expected PeerError, got: " << e.what();
  }
}

double secondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

size_t entriesIn(const char* dir) {
  size_t n = 0;
  if (DIR* d = opendir(dir)) {
    while (readdir(d) != nullptr) ++n;
    closedir(d);
  }
  return n;
}

// ---------------------------------------------------------------------------------------

TEST(TcpRejoin, RestartedHighestRankTakesItsPlace) {
  MemoryStore store;
  auto w = makeWorld(&store, 3);
  talk(*w[0], *w[2], 10);
  EXPECT_EQ(w[0]->peerEpoch(2), 0u);

  // Requests pending on the dead process fail with PeerError.
  uint8_t buf0[8], buf1[8];
  RequestPtr pending0 = w[0]->irecv(2, 50, 1, buf0, sizeof buf0);
  RequestPtr pending1 = w[1]->irecv(2, 50, 1, buf1, sizeof buf1);
  w[2].reset();
  expectPeerError(*w[0], pending0, 2);

  Ctx fresh = rejoin(&store, 2, 3);
  EXPECT_EQ(w[0]->awaitPeer(2, 0, Deadline(kWait)), 1u);
  EXPECT_EQ(w[1]->awaitPeer(2, 0, Deadline(kWait)), 1u);
  // Rank 1 never waited on its request: it failed on EOF or on the replacement, as a PeerError.
  expectPeerError(*w[1], pending1, 2);

  talk(*fresh, *w[0], 20);
  talk(*fresh, *w[1], 30);
  talk(*w[0], *w[1], 40);
  EXPECT_EQ(w[0]->peerEpoch(2), 1u);
  EXPECT_EQ(w[1]->peerEpoch(2), 1u);
  EXPECT_EQ(w[0]->peerEpoch(1), 0u);
  EXPECT_EQ(w[1]->peerEpoch(0), 0u);
  EXPECT_EQ(fresh->peerEpoch(0), 0u);
  EXPECT_EQ(fresh->peerEpoch(2), 0u);  // itself
  EXPECT_EQ(w[0]->refusedConnections(), 0);
  EXPECT_EQ(w[1]->refusedConnections(), 0);
}

TEST(TcpRejoin, RequestPostedAfterTheReplacementGoesToIt) {
  MemoryStore store;
  auto w = makeWorld(&store, 3);
  w[2].reset();
  Ctx fresh = rejoin(&store, 2, 3);
  // Nobody called awaitPeer or peerEpoch: posting a request adopts the new connection.
  const std::vector<uint8_t> out = pattern(777, 5);
  RequestPtr s = w[0]->isend(2, 7, 3, out.data(), out.size());
  std::vector<uint8_t> in(out.size());
  waitOne(*fresh, fresh->irecv(0, 7, 3, in.data(), in.size()));
  waitOne(*w[0], s);
  EXPECT_TRUE(in == out);
  // A receive posted before anything arrived goes to the new process too.
  std::vector<uint8_t> in1(100);
  RequestPtr r = w[1]->irecv(2, 8, 3, in1.data(), in1.size());
  const std::vector<uint8_t> out1 = pattern(100, 6);
  waitOne(*fresh, fresh->isend(1, 8, 3, out1.data(), out1.size()));
  waitOne(*w[1], r);
  EXPECT_TRUE(in1 == out1);
  EXPECT_EQ(w[0]->peerEpoch(2), 1u);
  EXPECT_EQ(w[1]->peerEpoch(2), 1u);
}

TEST(TcpRejoin, RestartedLowestRankTakesItsPlace) {
  MemoryStore store;
  auto w = makeWorld(&store, 3);
  uint8_t buf[8];
  RequestPtr pending = w[2]->irecv(0, 1, 1, buf, sizeof buf);
  w[0].reset();
  expectPeerError(*w[2], pending, 0);
  // At setup rank 0 only accepted; now it connects to ranks 1 and 2.
  Ctx fresh = rejoin(&store, 0, 3);
  EXPECT_EQ(w[1]->awaitPeer(0, 0, Deadline(kWait)), 1u);
  EXPECT_EQ(w[2]->awaitPeer(0, 0, Deadline(kWait)), 1u);
  talk(*fresh, *w[1], 10);
  talk(*fresh, *w[2], 20);
  talk(*w[1], *w[2], 30);
}

TEST(TcpRejoin, JoinerComesUpWhileAnotherRankIsDead) {
  MemoryStore store;
  auto w = makeWorld(&store, 3);
  w[1].reset();
  w[2].reset();
  const auto t0 = std::chrono::steady_clock::now();
  Ctx fresh2 = rejoin(&store, 2, 3);
  EXPECT_LT(secondsSince(t0), 2.0) << "a dead rank's port refuses at once; the joiner must not wait on it";

  uint8_t x[16] = {0};
  expectPeerError(*fresh2, fresh2->isend(1, 1, 1, x, sizeof x), 1);
  expectPeerError(*fresh2, fresh2->irecv(1, 1, 1, x, sizeof x), 1);
  EXPECT_EQ(w[0]->awaitPeer(2, 0, Deadline(kWait)), 1u);
  talk(*fresh2, *w[0], 10);
  expectPeerError(*w[0], w[0]->isend(1, 1, 1, x, sizeof x), 1);

  // The dead rank restarts later and rejoins both.
  Ctx fresh1 = rejoin(&store, 1, 3);
  EXPECT_EQ(w[0]->awaitPeer(1, 0, Deadline(kWait)), 1u);
  EXPECT_EQ(fresh2->awaitPeer(1, 0, Deadline(kWait)), 1u);
  talk(*fresh1, *w[0], 20);
  talk(*fresh1, *fresh2, 30);
  talk(*w[0], *fresh2, 40);
}

TEST(TcpRejoin, SilentRankCostsAtMostTheTimeout) {
  MemoryStore store;
  auto w = makeWorld(&store, 3);
  w[2].reset();
  // Rank 1's key now names a socket that accepts (backlog) but never answers.
  int port = 0;
  net::Fd silent = net::listenTcp("127.0.0.1", 0, &port);
  store.set("rj/tcp/1", toBytes(net::Endpoint{"127.0.0.1", port}.str()));
  const auto t0 = std::chrono::steady_clock::now();
  Ctx fresh = rejoin(&store, 2, 3, kSecret, Millis(800));
  const double took = secondsSince(t0);
  EXPECT_GE(took, 0.7);
  EXPECT_LT(took, 3.0);
  uint8_t x[4] = {0};
  expectPeerError(*fresh, fresh->isend(1, 1, 1, x, sizeof x), 1);
  EXPECT_EQ(w[0]->awaitPeer(2, 0, Deadline(kWait)), 1u);
  talk(*fresh, *w[0], 10);
}

TEST(TcpRejoin, WrongSecretIsRefused) {
  MemoryStore store;
  auto w = makeWorld(&store, 3);
  Ctx impostor = rejoin(&store, 2, 3, "not-the-secret");
  const Deadline d(kWait);
  while ((w[0]->refusedConnections() < 1 || w[1]->refusedConnections() < 1) && !d.expired()) {
    std::this_thread::sleep_for(Millis(5));
  }
  EXPECT_GE(w[0]->refusedConnections(), 1);
  EXPECT_GE(w[1]->refusedConnections(), 1);
  EXPECT_EQ(w[0]->peerEpoch(2), 0u);
  EXPECT_EQ(w[1]->peerEpoch(2), 0u);
  uint8_t x[4] = {0};
  expectPeerError(*impostor, impostor->isend(0, 1, 1, x, sizeof x), 0);
  // The real rank 2 still holds its place.
  talk(*w[0], *w[2], 10);
  talk(*w[1], *w[2], 20);
}

TEST(TcpRejoin, AwaitPeerTimesOutWithoutARestart) {
  MemoryStore store;
  auto w = makeWorld(&store, 2);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    w[0]->awaitPeer(1, 0, Deadline(Millis(300)));
    ADD_FAILURE() << "awaitPeer returned without a restart";
  } catch (const TimeoutError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("rank 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("CHORUS_REJOIN"), std::string::npos) << msg;
  }
  const double took = secondsSince(t0);
  EXPECT_GE(took, 0.25);
  EXPECT_LT(took, 2.5);
  EXPECT_THROW(w[0]->awaitPeer(0, 0, Deadline(kWait)), InvalidArgument);
  EXPECT_THROW(w[0]->awaitPeer(2, 0, Deadline(kWait)), InvalidArgument);
  EXPECT_THROW(w[0]->peerEpoch(-1), InvalidArgument);
  // The live connection still works after the timeout.
  talk(*w[0], *w[1], 10);
}

TEST(TcpRejoin, WithoutAcceptRejoinNothingChanges) {
  MemoryStore store;
  auto w = makeWorld(&store, 3, /*acceptRejoin=*/false);
  EXPECT_EQ(w[0]->peerEpoch(1), 0u);
  EXPECT_EQ(w[2]->peerEpoch(0), 0u);
  EXPECT_THROW(w[0]->awaitPeer(1, 0, Deadline(Millis(100))), Error);
  try {
    w[0]->awaitPeer(1, 0, Deadline(Millis(100)));
  } catch (const TimeoutError&) {
    ADD_FAILURE() << "awaitPeer without acceptRejoin must fail at once, not time out";
  } catch (const Error&) {
  }
  // The highest rank accepts nobody, so it never listened; the others stopped after setup.
  EXPECT_EQ(w[2]->listenAddress(), "");
  // A restart is answered by nobody (rank 2 never published an address: it waits for that
  // key until its timeout), and changes nothing for the live ranks.
  Ctx fresh = rejoin(&store, 1, 3, kSecret, Millis(500));
  uint8_t x[4] = {0};
  expectPeerError(*fresh, fresh->isend(0, 1, 1, x, sizeof x), 0);
  EXPECT_EQ(w[0]->peerEpoch(1), 0u);
  talk(*w[0], *w[1], 10);
  talk(*w[1], *w[2], 20);
}

TEST(TcpRejoin, TwoRestartsMakeEpochTwo) {
  MemoryStore store;
  auto w = makeWorld(&store, 3);
  w[1].reset();
  Ctx first = rejoin(&store, 1, 3);
  EXPECT_EQ(w[0]->awaitPeer(1, 0, Deadline(kWait)), 1u);
  talk(*first, *w[0], 10);
  uint8_t x[4];
  RequestPtr pending = w[2]->irecv(1, 99, 1, x, sizeof x);
  first.reset();
  Ctx second = rejoin(&store, 1, 3);
  EXPECT_EQ(w[0]->awaitPeer(1, 1, Deadline(kWait)), 2u);
  EXPECT_EQ(w[2]->awaitPeer(1, 0, Deadline(kWait)), 2u);
  expectPeerError(*w[2], pending, 1);
  talk(*second, *w[0], 20);
  talk(*second, *w[2], 30);
  EXPECT_EQ(w[0]->peerEpoch(1), 2u);
  EXPECT_EQ(w[2]->peerEpoch(1), 2u);
}

TEST(TcpRejoin, CloseDoesNotWaitForAStalledRejoin) {
  MemoryStore store;
  auto w = makeWorld(&store, 2);
  // A client that connects to rank 0's listener and never says a word.
  const std::string addr = w[0]->listenAddress();
  const auto colon = addr.rfind(':');
  net::Fd stalled = net::connectTcp(net::Endpoint{addr.substr(0, colon), std::stoi(addr.substr(colon + 1))},
                                    Deadline(kWait));
  std::this_thread::sleep_for(Millis(50));  // the acceptor is now mid-handshake with it
  const auto t0 = std::chrono::steady_clock::now();
  w[0]->close();
  EXPECT_LT(secondsSince(t0), 1.0);
  EXPECT_EQ(w[0]->refusedConnections(), 0) << "our own shutdown is no refusal";
  EXPECT_THROW(w[0]->peerEpoch(5), InvalidArgument);
  EXPECT_THROW(w[0]->awaitPeer(1, 0, Deadline(Millis(100))), Error);
}

TEST(TcpRejoin, NoThreadOrDescriptorOutlivesTheContexts) {
  const size_t threads0 = entriesIn("/proc/self/task");
  const size_t fds0 = entriesIn("/proc/self/fd");
  {
    MemoryStore store;
    auto w = makeWorld(&store, 3);
    w[1].reset();
    Ctx fresh = rejoin(&store, 1, 3);
    EXPECT_EQ(w[0]->awaitPeer(1, 0, Deadline(kWait)), 1u);
    talk(*fresh, *w[0], 10);
    w[0]->close();  // close, then destroy: the acceptor is stopped once
  }
  EXPECT_EQ(entriesIn("/proc/self/task"), threads0);
  EXPECT_EQ(entriesIn("/proc/self/fd"), fds0);
}

}  // namespace
}  // namespace chorus::comm
