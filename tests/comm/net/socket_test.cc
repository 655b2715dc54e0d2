// Socket helpers: listen/accept/connect on loopback, full reads and writes in both socket
// modes, deadlines on every blocking call, and errors that name the peer.
#include "chorus/comm/net/socket.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <numeric>
#include <thread>
#include <vector>

#include "chorus/common/error.h"
#include "util/reserved_port.h"

namespace chorus::comm::net {
namespace {

struct Pair {
  Fd listener;
  Fd client;
  Fd server;
  int port = 0;
};

Pair connectedPair() {
  Pair p;
  p.listener = listenTcp("127.0.0.1", 0, &p.port);
  p.client = connectTcp({"127.0.0.1", p.port}, Deadline(Millis(5000)));
  std::string peer;
  p.server = acceptTcp(p.listener.get(), Deadline(Millis(5000)), &peer);
  EXPECT_TRUE(p.server);
  EXPECT_EQ(peer, "127.0.0.1");
  return p;
}

bool fdIsOpen(int fd) { return fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

TEST(Endpoint, Str) {
  EXPECT_EQ((Endpoint{"10.0.0.1", 29500}).str(), "10.0.0.1:29500");
  EXPECT_EQ((Endpoint{"::1", 80}).str(), "[::1]:80");
  EXPECT_EQ((Endpoint{"node03", 1}).str(), "node03:1");
}

TEST(Fd, ClosesOnDestructionAndMove) {
  int raw;
  {
    Fd a(::socket(AF_INET, SOCK_STREAM, 0));
    raw = a.get();
    ASSERT_TRUE(a);
    Fd b(std::move(a));
    EXPECT_FALSE(a);
    EXPECT_EQ(b.get(), raw);
    EXPECT_TRUE(fdIsOpen(raw));
  }
  EXPECT_FALSE(fdIsOpen(raw));

  Fd c(::socket(AF_INET, SOCK_STREAM, 0));
  int cRaw = c.get();
  Fd d(::socket(AF_INET, SOCK_STREAM, 0));
  int dRaw = d.get();
  c = std::move(d);
  EXPECT_FALSE(fdIsOpen(cRaw));
  EXPECT_EQ(c.get(), dRaw);
  int released = c.release();
  EXPECT_FALSE(c);
  EXPECT_TRUE(fdIsOpen(released));
  ::close(released);
}

TEST(Socket, ListenBindsEphemeralPortAndAddresses) {
  Pair p = connectedPair();
  EXPECT_GT(p.port, 0);
  EXPECT_EQ(localAddress(p.client.get()), "127.0.0.1");
  EXPECT_EQ(peerAddress(p.client.get()), "127.0.0.1");
  EXPECT_EQ(peerAddress(p.server.get()), "127.0.0.1");
}

TEST(Socket, ListenOnBusyPortThrows) {
  int port = 0;
  Fd a = listenTcp("127.0.0.1", 0, &port);
  EXPECT_THROW(listenTcp("127.0.0.1", port, nullptr), SystemError);
}

TEST(Socket, ListenOnForeignAddressThrowsNamingIt) {
  // 192.0.2.1 (TEST-NET-1) is never an address of this host.
  try {
    listenTcp("192.0.2.1", 0, nullptr);
    FAIL() << "bind to a foreign address succeeded";
  } catch (const SystemError& e) {
    EXPECT_NE(std::string(e.what()).find("192.0.2.1"), std::string::npos) << e.what();
  }
}

TEST(Socket, AcceptTimesOutWithInvalidFd) {
  int port = 0;
  Fd l = listenTcp("127.0.0.1", 0, &port);
  auto start = Clock::now();
  Fd c = acceptTcp(l.get(), Deadline(Millis(100)));
  EXPECT_FALSE(c);
  EXPECT_GE(Clock::now() - start, Millis(90));
}

TEST(Socket, ConnectToClosedPortTimesOutNamingAddress) {
  const test::ReservedPort reserved;  // bound, never listening: nobody can take it meanwhile
  const int port = reserved.port();
  auto start = Clock::now();
  try {
    connectTcp({"127.0.0.1", port}, Deadline(Millis(300)));
    FAIL() << "connected to a closed port";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find(Endpoint{"127.0.0.1", port}.str()), std::string::npos) << e.what();
  }
  EXPECT_GE(Clock::now() - start, Millis(250));
  EXPECT_LT(Clock::now() - start, Millis(3000));
}

TEST(Socket, ConnectRetriesUntilPeerListens) {
  const test::ReservedPort reserved;  // kept from other tests until the late listener binds it
  const int port = reserved.port();
  Fd late;
  std::thread t([&] {
    std::this_thread::sleep_for(Millis(300));
    late = listenTcp("127.0.0.1", port, nullptr);
  });
  Fd c = connectTcp({"127.0.0.1", port}, Deadline(Millis(5000)));
  t.join();
  EXPECT_TRUE(c);
  Fd s = acceptTcp(late.get(), Deadline(Millis(2000)));
  EXPECT_TRUE(s);
}

TEST(Socket, ConnectResolvesLocalhost) {
  int port = 0;
  Fd l = listenTcp("127.0.0.1", 0, &port);
  Fd c = connectTcp({"localhost", port}, Deadline(Millis(5000)));
  EXPECT_TRUE(c);
}

TEST(Socket, Ipv6LoopbackWhenAvailable) {
  int port = 0;
  Fd l;
  try {
    l = listenTcp("::1", 0, &port);
  } catch (const Error&) {
    GTEST_SKIP() << "no IPv6 loopback on this host";
  }
  Fd c = connectTcp({"::1", port}, Deadline(Millis(5000)));
  Fd s = acceptTcp(l.get(), Deadline(Millis(5000)));
  ASSERT_TRUE(s);
  EXPECT_EQ(peerAddress(s.get()), "::1");
}

void roundTrip(bool nonBlocking) {
  Pair p = connectedPair();
  setNonBlocking(p.client.get(), nonBlocking);
  setNonBlocking(p.server.get(), nonBlocking);
  setNoDelay(p.client.get());
  setBufferSizes(p.client.get(), 64 * 1024);
  // Larger than any socket buffer, so both sides must interleave.
  std::vector<uint8_t> out(8 << 20);
  std::iota(out.begin(), out.end(), uint8_t{0});
  for (size_t i = 0; i < out.size(); i += 4093) out[i] ^= 0x5a;
  std::vector<uint8_t> in(out.size());
  std::thread writer([&] { writeFull(p.client.get(), out.data(), out.size(), Deadline(Millis(10000))); });
  readFull(p.server.get(), in.data(), in.size(), Deadline(Millis(10000)));
  writer.join();
  EXPECT_EQ(in, out);
  readFull(p.server.get(), nullptr, 0, Deadline(Millis(0)));
  writeFull(p.server.get(), nullptr, 0, Deadline(Millis(0)));
}

TEST(Socket, RoundTripBlocking) { roundTrip(false); }
TEST(Socket, RoundTripNonBlocking) { roundTrip(true); }

TEST(Socket, SetNonBlockingToggles) {
  Pair p = connectedPair();
  setNonBlocking(p.client.get(), true);
  EXPECT_TRUE(fcntl(p.client.get(), F_GETFL) & O_NONBLOCK);
  setNonBlocking(p.client.get(), false);
  EXPECT_FALSE(fcntl(p.client.get(), F_GETFL) & O_NONBLOCK);
}

TEST(Socket, ReadTimesOutWhenPeerSilent) {
  Pair p = connectedPair();
  uint8_t buf[16];
  auto start = Clock::now();
  EXPECT_THROW(readFull(p.server.get(), buf, sizeof buf, Deadline(Millis(150))), TimeoutError);
  EXPECT_GE(Clock::now() - start, Millis(140));
}

TEST(Socket, ReadFromClosedPeerNamesIt) {
  Pair p = connectedPair();
  uint8_t four[4] = {1, 2, 3, 4};
  writeFull(p.client.get(), four, 2, Deadline(Millis(1000)));
  p.client.reset();
  uint8_t buf[4];
  try {
    readFull(p.server.get(), buf, sizeof buf, Deadline(Millis(5000)));
    FAIL() << "read past a closed connection";
  } catch (const TimeoutError&) {
    FAIL() << "a closed connection must not look like a timeout";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("closed by 127.0.0.1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("2 of 4"), std::string::npos) << msg;
  }
}

TEST(Socket, WriteToClosedPeerThrowsWithoutSigpipe) {
  Pair p = connectedPair();
  p.server.reset();
  std::vector<uint8_t> big(4 << 20, 7);
  // The first send may land in the buffer; a later one meets the reset. Either way an Error,
  // and the process survives (no SIGPIPE).
  EXPECT_THROW(
      {
        for (int i = 0; i < 16; ++i) writeFull(p.client.get(), big.data(), big.size(), Deadline(Millis(5000)));
      },
      Error);
}

TEST(Socket, WriteTimesOutWhenPeerDoesNotRead) {
  Pair p = connectedPair();
  setBufferSizes(p.client.get(), 16 * 1024);
  setBufferSizes(p.server.get(), 16 * 1024);
  std::vector<uint8_t> big(64 << 20, 1);
  auto start = Clock::now();
  EXPECT_THROW(writeFull(p.client.get(), big.data(), big.size(), Deadline(Millis(200))), TimeoutError);
  EXPECT_GE(Clock::now() - start, Millis(190));
}

TEST(Socket, PollFdReportsReadiness) {
  Pair p = connectedPair();
  EXPECT_FALSE(pollFd(p.server.get(), POLLIN, Deadline(Millis(50))));
  EXPECT_TRUE(pollFd(p.client.get(), POLLOUT, Deadline(Millis(50))));
  uint8_t b = 9;
  writeFull(p.client.get(), &b, 1, Deadline(Millis(1000)));
  EXPECT_TRUE(pollFd(p.server.get(), POLLIN, Deadline(Millis(1000))));
}

}  // namespace
}  // namespace chorus::comm::net
