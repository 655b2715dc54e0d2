// The tcp transport's listening sockets under a flood of connections that never finish the
// handshake (idle, or one byte of the greeting): setup and the rejoin acceptor serve every
// connection in one poll loop, so the flood adds no thread, and the real peers connect as
// fast as without it. Ranks are threads of one process meeting through a MemoryStore.
#include <dirent.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/net/socket.h"
#include "chorus/comm/rendezvous/memory_store.h"
#include "chorus/comm/transport/tcp/context.h"

namespace chorus::comm {
namespace {

using TcpContext = tcp::Context;

constexpr Millis kTimeout(20000);
constexpr int kFlood = 32;
const std::string kSecret = "flood-test-secret";

TransportOptions options(Store* store, int rank, int size, bool rejoin = false) {
  TransportOptions o;
  o.rank = rank;
  o.size = size;
  o.store = store;
  o.prefix = "fl";
  o.secret = kSecret;
  o.timeout = kTimeout;
  o.acceptRejoin = true;
  o.rejoin = rejoin;
  return o;
}

size_t threadCount() {
  size_t n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

net::Endpoint endpointOf(const std::string& addr) {
  const auto colon = addr.rfind(':');
  return net::Endpoint{addr.substr(0, colon), std::stoi(addr.substr(colon + 1))};
}

// kFlood connections to `addr`: half stay silent, half send the greeting's first byte.
std::vector<net::Fd> flood(const std::string& addr) {
  std::vector<net::Fd> fds;
  for (int i = 0; i < kFlood; ++i) {
    fds.push_back(net::connectTcp(endpointOf(addr), Deadline(kTimeout)));
    if (i % 2 == 1) {
      const uint8_t first = 'C';
      net::writeFull(fds.back().get(), &first, 1, Deadline(kTimeout));
    }
  }
  return fds;
}

// The most threads this process had over about a second: the flood had time to make its
// threads, if any would be made.
size_t peakThreadsOverASecond() {
  size_t peak = threadCount();
  const auto until = std::chrono::steady_clock::now() + Millis(1000);
  while (std::chrono::steady_clock::now() < until) {
    peak = std::max(peak, threadCount());
    std::this_thread::sleep_for(Millis(20));
  }
  return peak;
}

void exchange(TcpContext& from, TcpContext& to) {
  uint32_t out = 0x5eed, in = 0;
  std::thread sender([&] {
    RequestPtr r[] = {from.isend(to.rank(), 7, 1, &out, sizeof out)};
    from.waitAll(r, Deadline(kTimeout));
  });
  RequestPtr r[] = {to.irecv(from.rank(), 7, 1, &in, sizeof in)};
  to.waitAll(r, Deadline(kTimeout));
  sender.join();
  EXPECT_EQ(in, out);
}

// Before, every accepted connection at setup got a thread of its own until setup ended.
TEST(TcpAcceptFlood, SetupMakesNoThreadPerConnectionAndStillConnects) {
  MemoryStore store;
  std::unique_ptr<TcpContext> rank0, rank1;
  std::string error0;
  std::thread t0([&] {
    try {
      rank0 = std::make_unique<TcpContext>(options(&store, 0, 2));
    } catch (const std::exception& e) {
      error0 = e.what();
    }
  });
  // Rank 0 publishes its address once its acceptor runs.
  const std::string addr = toString(store.get("fl/tcp/0", kTimeout));
  const size_t before = threadCount();
  std::vector<net::Fd> fds = flood(addr);
  const size_t peak = peakThreadsOverASecond();
  EXPECT_LE(peak, before + 1) << kFlood << " idle connections made " << peak - before << " threads";

  const auto start = std::chrono::steady_clock::now();
  std::string error1;
  try {
    rank1 = std::make_unique<TcpContext>(options(&store, 1, 2));
  } catch (const std::exception& e) {
    error1 = e.what();
  }
  t0.join();
  ASSERT_EQ(error0, "");
  ASSERT_EQ(error1, "");
  EXPECT_LT(std::chrono::steady_clock::now() - start, Millis(10000));
  exchange(*rank0, *rank1);
  exchange(*rank1, *rank0);
  // The flood was still pending when setup ended: closed, and not counted as refusals.
  EXPECT_EQ(rank0->refusedConnections(), 0);
}

// Before, the rejoin acceptor took one connection at a time, giving each 5 s: a few idle
// connections held a real restart up for their whole deadlines.
TEST(TcpAcceptFlood, RejoinIsPromptAndThreadsStayFlatUnderAFlood) {
  MemoryStore store;
  std::vector<std::unique_ptr<TcpContext>> w(2);
  std::string error0;
  std::thread t0([&] {
    try {
      w[0] = std::make_unique<TcpContext>(options(&store, 0, 2));
    } catch (const std::exception& e) {
      error0 = e.what();
    }
  });
  std::string error1;
  try {
    w[1] = std::make_unique<TcpContext>(options(&store, 1, 2));
  } catch (const std::exception& e) {
    error1 = e.what();
  }
  t0.join();
  ASSERT_EQ(error0, "");
  ASSERT_EQ(error1, "");

  const size_t before = threadCount();
  std::vector<net::Fd> fds = flood(w[0]->listenAddress());
  const size_t peak = peakThreadsOverASecond();
  EXPECT_LE(peak, before + 1) << kFlood << " idle connections made " << peak - before << " threads";

  w[1].reset();  // rank 1 dies; a restarted process takes its place
  const auto start = std::chrono::steady_clock::now();
  auto fresh = std::make_unique<TcpContext>(options(&store, 1, 2, /*rejoin=*/true));
  EXPECT_EQ(w[0]->awaitPeer(1, 0, Deadline(kTimeout)), 1u);
  EXPECT_LT(std::chrono::steady_clock::now() - start, Millis(10000));
  exchange(*w[0], *fresh);
  exchange(*fresh, *w[0]);
}

}  // namespace
}  // namespace chorus::comm
