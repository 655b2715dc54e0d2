// The job-secret handshake: matching secrets pass, a wrong secret fails on both sides, a
// reflected MAC or a foreign greeting is refused, a silent peer times out.
#include "chorus/comm/net/auth.h"

#include <gtest/gtest.h>

#include <cstring>
#include <exception>
#include <thread>

#include "chorus/common/error.h"
#include "chorus/common/hmac.h"
#include "chorus/comm/net/socket.h"

namespace chorus::comm::net {
namespace {

struct Pair {
  Fd listener;
  Fd client;
  Fd server;
};

Pair connectedPair() {
  Pair p;
  int port = 0;
  p.listener = listenTcp("127.0.0.1", 0, &port);
  p.client = connectTcp({"127.0.0.1", port}, Deadline(Millis(5000)));
  p.server = acceptTcp(p.listener.get(), Deadline(Millis(5000)));
  return p;
}

// Runs the server side of the handshake with the right secret on a thread; its failure, if
// any, lands in `err`.
std::thread serveHandshake(Pair& p, std::exception_ptr& err) {
  return std::thread([&p, &err] {
    try {
      authenticate(p.server.get(), "job-secret", true, Deadline(Millis(5000)));
    } catch (...) {
      err = std::current_exception();
    }
  });
}


// Runs both sides of the handshake on two threads; returns each side's exception (if any).
std::pair<std::exception_ptr, std::exception_ptr> handshake(const std::string& serverSecret,
                                                            const std::string& clientSecret) {
  Pair p = connectedPair();
  std::exception_ptr serverErr;
  std::exception_ptr clientErr;
  std::thread server([&] {
    try {
      authenticate(p.server.get(), serverSecret, true, Deadline(Millis(5000)));
    } catch (...) {
      serverErr = std::current_exception();
    }
  });
  try {
    authenticate(p.client.get(), clientSecret, false, Deadline(Millis(5000)));
  } catch (...) {
    clientErr = std::current_exception();
  }
  server.join();
  return {serverErr, clientErr};
}

void expectAuthError(std::exception_ptr e, const char* side) {
  ASSERT_TRUE(e) << side << " accepted a wrong secret";
  try {
    std::rethrow_exception(e);
  } catch (const AuthError& a) {
    std::string msg = a.what();
    EXPECT_NE(msg.find("127.0.0.1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("CHORUS_JOB_SECRET"), std::string::npos) << msg;
  } catch (const std::exception& other) {
    FAIL() << side << " threw something other than AuthError: " << other.what();
  }
}

TEST(Auth, MatchingSecretPasses) {
  auto [s, c] = handshake("0123456789abcdef", "0123456789abcdef");
  EXPECT_FALSE(s);
  EXPECT_FALSE(c);
}

TEST(Auth, ConnectionUsableAfterHandshake) {
  Pair p = connectedPair();
  std::thread server([&] {
    authenticate(p.server.get(), "s3cret", true, Deadline(Millis(5000)));
    uint8_t b = 0;
    readFull(p.server.get(), &b, 1, Deadline(Millis(5000)));
    b += 1;
    writeFull(p.server.get(), &b, 1, Deadline(Millis(5000)));
  });
  authenticate(p.client.get(), "s3cret", false, Deadline(Millis(5000)));
  uint8_t b = 41;
  writeFull(p.client.get(), &b, 1, Deadline(Millis(5000)));
  readFull(p.client.get(), &b, 1, Deadline(Millis(5000)));
  server.join();
  EXPECT_EQ(b, 42);
}

TEST(Auth, WrongSecretFailsOnBothSides) {
  auto [s, c] = handshake("right-secret", "wrong-secret");
  expectAuthError(s, "server");
  expectAuthError(c, "client");
}

TEST(Auth, SecretsDifferingInLastByteFail) {
  auto [s, c] = handshake("abcdefgh", "abcdefgi");
  expectAuthError(s, "server");
  expectAuthError(c, "client");
}

TEST(Auth, EmptyVersusNonEmptySecretFails) {
  auto [s, c] = handshake("", "x");
  expectAuthError(s, "server");
  expectAuthError(c, "client");
}

TEST(Auth, TwoServersOrTwoClientsNeverAgree) {
  // Same secret, same role on both ends: the role byte makes each side's expectation differ.
  Pair p = connectedPair();
  std::exception_ptr a;
  std::thread t([&] {
    try {
      authenticate(p.server.get(), "same", true, Deadline(Millis(5000)));
    } catch (...) {
      a = std::current_exception();
    }
  });
  EXPECT_THROW(authenticate(p.client.get(), "same", true, Deadline(Millis(5000))), AuthError);
  t.join();
  EXPECT_TRUE(a);
}

TEST(Auth, ReflectedMacIsRefused) {
  // An attacker without the secret connects as a client, and answers the server's challenge
  // with the server's own MAC.
  Pair p = connectedPair();
  std::exception_ptr serverErr;
  std::thread server = serveHandshake(p, serverErr);
  uint8_t serverHello[40];
  readFull(p.client.get(), serverHello, sizeof serverHello, Deadline(Millis(5000)));
  uint8_t myHello[40];
  std::memcpy(myHello, serverHello, 8);  // the greeting
  randomBytes(myHello + 8, 32);
  writeFull(p.client.get(), myHello, sizeof myHello, Deadline(Millis(5000)));
  uint8_t serverMac[32];
  readFull(p.client.get(), serverMac, sizeof serverMac, Deadline(Millis(5000)));
  writeFull(p.client.get(), serverMac, sizeof serverMac, Deadline(Millis(5000)));
  server.join();
  ASSERT_TRUE(serverErr);
  EXPECT_THROW(std::rethrow_exception(serverErr), AuthError);
}

TEST(Auth, EchoedNonceIsRefused) {
  Pair p = connectedPair();
  std::exception_ptr serverErr;
  std::thread server = serveHandshake(p, serverErr);
  uint8_t serverHello[40];
  readFull(p.client.get(), serverHello, sizeof serverHello, Deadline(Millis(5000)));
  writeFull(p.client.get(), serverHello, sizeof serverHello, Deadline(Millis(5000)));
  server.join();
  ASSERT_TRUE(serverErr);
  EXPECT_THROW(std::rethrow_exception(serverErr), AuthError);
}

TEST(Auth, ForeignGreetingIsRefused) {
  Pair p = connectedPair();
  std::exception_ptr serverErr;
  std::thread server = serveHandshake(p, serverErr);
  const char request[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\nxxxxxxxxxxxxxx";
  writeFull(p.client.get(), request, 40, Deadline(Millis(5000)));
  server.join();
  ASSERT_TRUE(serverErr);
  EXPECT_THROW(std::rethrow_exception(serverErr), AuthError);
}

TEST(Auth, SilentPeerTimesOut) {
  Pair p = connectedPair();
  auto start = Clock::now();
  try {
    authenticate(p.server.get(), "job-secret", true, Deadline(Millis(200)));
    FAIL() << "handshake with a silent peer succeeded";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("handshake"), std::string::npos) << e.what();
  }
  EXPECT_GE(Clock::now() - start, Millis(190));
  EXPECT_LT(Clock::now() - start, Millis(3000));
}

TEST(Auth, PeerClosingMidHandshakeIsAnError) {
  Pair p = connectedPair();
  p.client.reset();
  EXPECT_THROW(authenticate(p.server.get(), "job-secret", true, Deadline(Millis(2000))), Error);
}

}  // namespace
}  // namespace chorus::comm::net
