// The TCP store: every operation, blocking gets woken by other clients, timeouts that name
// the key, many concurrent clients, the secret challenge (refused and counted while others
// are served), binding only the given address, and a server that survives malformed bytes,
// silent peers and vanishing clients.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/common/hmac.h"
#include "chorus/comm/net/auth.h"
#include "chorus/comm/net/socket.h"
#include "chorus/comm/rendezvous/store.h"
#include "chorus/comm/rendezvous/store_protocol.h"
#include "util/reserved_port.h"

namespace chorus::comm {
namespace {

const std::string kSecret = "0123456789abcdef0123456789abcdef";
const Millis kLong(10000);

std::unique_ptr<TcpStoreServer> startServer(const std::string& secret = kSecret) {
  StoreServerOptions opts;
  opts.secret = secret;
  return std::make_unique<TcpStoreServer>(opts);
}

std::unique_ptr<TcpStore> client(const TcpStoreServer& s, const std::string& secret = kSecret,
                                 Millis timeout = kLong) {
  return std::make_unique<TcpStore>("127.0.0.1", s.port(), secret, timeout);
}

// A raw connection that has passed the handshake, for sending hand-made bytes.
net::Fd rawAuthenticated(const TcpStoreServer& s) {
  net::Fd fd = net::connectTcp({"127.0.0.1", s.port()}, Deadline(kLong));
  net::authenticate(fd.get(), kSecret, false, Deadline(kLong));
  return fd;
}

StoreMessage readReply(int fd) {
  Bytes in(kStoreHeaderBytes);
  net::readFull(fd, in.data(), in.size(), Deadline(kLong));
  in.resize(storeFrameSize(in.data(), in.size()));
  net::readFull(fd, in.data() + kStoreHeaderBytes, in.size() - kStoreHeaderBytes, Deadline(kLong));
  return decodeStoreMessage(in.data(), in.size());
}

// True once the server has closed fd (a read returns end of stream).
bool closedByServer(int fd) {
  uint8_t b[256];
  try {
    for (;;) net::readFull(fd, b, 1, Deadline(Millis(5000)));
  } catch (const TimeoutError&) {
    return false;
  } catch (const Error&) {
    return true;
  }
}

template <typename F>
bool eventually(F cond, Millis within = Millis(5000)) {
  Deadline d(within);
  while (!d.expired()) {
    if (cond()) return true;
    std::this_thread::sleep_for(Millis(5));
  }
  return cond();
}

TEST(TcpStore, SetGetAddCheckErase) {
  auto server = startServer();
  auto store = client(*server);
  store->set("a", toBytes("alpha"));
  EXPECT_EQ(toString(store->get("a", kLong)), "alpha");
  store->set("a", toBytes("again"));
  EXPECT_EQ(toString(store->get("a", kLong)), "again");
  store->set("empty", {});
  EXPECT_TRUE(store->get("empty", kLong).empty());

  EXPECT_EQ(store->add("n", 5), 5);
  EXPECT_EQ(store->add("n", -2), 3);
  EXPECT_EQ(store->add("n", 0), 3);
  Bytes raw = store->get("n", kLong);
  ASSERT_EQ(raw.size(), sizeof(int64_t));
  int64_t v;
  std::memcpy(&v, raw.data(), sizeof v);
  EXPECT_EQ(v, 3);

  EXPECT_TRUE(store->check({"a", "n"}));
  EXPECT_FALSE(store->check({"a", "missing"}));
  EXPECT_TRUE(store->check({}));
  EXPECT_TRUE(store->erase("a"));
  EXPECT_FALSE(store->erase("a"));
  EXPECT_FALSE(store->check({"a"}));
  store->wait({"n", "empty"}, kLong);
  EXPECT_EQ(store->localAddress(), "127.0.0.1");
  EXPECT_EQ(server->address(), "127.0.0.1");
  EXPECT_GT(server->port(), 0);
  EXPECT_EQ(server->refusedConnections(), 0);
}

TEST(TcpStore, BinaryAndLargeValues) {
  auto server = startServer();
  auto store = client(*server);
  Bytes big(3 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 131 + 7);
  store->set(std::string("bin\0key", 7), big);
  EXPECT_EQ(store->get(std::string("bin\0key", 7), kLong), big);
  EXPECT_FALSE(store->check({"bin"}));
}

TEST(TcpStore, ValueOverTheLimitIsInvalidArgument) {
  auto server = startServer();
  auto store = client(*server);
  EXPECT_THROW(store->set("k", Bytes(kMaxStoreBodyBytes + 1)), InvalidArgument);
  store->set("k", toBytes("still fine"));
  EXPECT_EQ(toString(store->get("k", kLong)), "still fine");
}

TEST(TcpStore, BlockingGetWokenByLaterSetFromAnotherClient) {
  auto server = startServer();
  auto waiter = client(*server);
  auto setter = client(*server);
  auto start = Clock::now();
  std::thread t([&] {
    std::this_thread::sleep_for(Millis(200));
    setter->set("late", toBytes("here"));
  });
  EXPECT_EQ(toString(waiter->get("late", kLong)), "here");
  t.join();
  EXPECT_GE(Clock::now() - start, Millis(150));
  EXPECT_LT(Clock::now() - start, Millis(5000));
}

TEST(TcpStore, WaitWokenByAddOfTheLastKey) {
  auto server = startServer();
  auto waiter = client(*server);
  auto other = client(*server);
  other->set("x", toBytes("1"));
  std::thread t([&] {
    std::this_thread::sleep_for(Millis(100));
    other->set("y", toBytes("2"));
    std::this_thread::sleep_for(Millis(100));
    other->add("z", 1);
  });
  waiter->wait({"x", "y", "z"}, kLong);
  t.join();
  EXPECT_TRUE(waiter->check({"x", "y", "z"}));
}

TEST(TcpStore, GetTimesOutNamingTheKey) {
  auto server = startServer();
  auto store = client(*server);
  auto start = Clock::now();
  try {
    store->get("never/set", Millis(200));
    FAIL() << "get of a missing key returned";
  } catch (const TimeoutError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("never/set"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(server->port())), std::string::npos) << msg;
  }
  EXPECT_GE(Clock::now() - start, Millis(190));
  EXPECT_LT(Clock::now() - start, Millis(3000));
  EXPECT_THROW(store->get("never/set", Millis(0)), TimeoutError);
  // The connection is still in step after timeouts.
  store->set("k", toBytes("v"));
  EXPECT_EQ(toString(store->get("k", kLong)), "v");
}

TEST(TcpStore, WaitTimeoutNamesOnlyTheMissingKeys) {
  auto server = startServer();
  auto store = client(*server);
  store->set("present", toBytes("1"));
  try {
    store->wait({"present", "absent"}, Millis(100));
    FAIL() << "wait returned";
  } catch (const TimeoutError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("'absent'"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("'present'"), std::string::npos) << msg;
  }
}

TEST(TcpStore, ManyClientsInThreads) {
  auto server = startServer();
  constexpr int kClients = 16;
  constexpr int kAdds = 25;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int r = 0; r < kClients; ++r) {
    threads.emplace_back([&, r] {
      try {
        auto store = client(*server);
        for (int i = 0; i < kAdds; ++i) store->add("counter", 1);
        store->set("rank/" + std::to_string(r), toBytes(std::to_string(r * r)));
        std::vector<std::string> all;
        for (int p = 0; p < kClients; ++p) all.push_back("rank/" + std::to_string(p));
        store->wait(all, kLong);
        int peer = (r + 1) % kClients;
        if (toString(store->get("rank/" + std::to_string(peer), kLong)) != std::to_string(peer * peer)) ++failures;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "client " << r << ": " << e.what();
        ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
  auto store = client(*server);
  EXPECT_EQ(store->add("counter", 0), kClients * kAdds);
}

TEST(TcpStore, OneClientSharedByThreadsDoesNotSerializeBlockingCalls) {
  // A thread blocked in get() must not stop another thread's set() on the same client.
  auto server = startServer();
  auto store = client(*server);
  std::thread t([&] {
    std::this_thread::sleep_for(Millis(100));
    store->set("k", toBytes("from the other thread"));
  });
  auto start = Clock::now();
  EXPECT_EQ(toString(store->get("k", Millis(5000))), "from the other thread");
  EXPECT_LT(Clock::now() - start, Millis(4000));
  t.join();
}

TEST(TcpStore, WrongSecretIsRefusedAndCountedWhileOthersAreServed) {
  auto server = startServer();
  auto good = client(*server);
  good->set("k", toBytes("v"));
  try {
    client(*server, "not-the-secret");
    FAIL() << "a client with the wrong secret connected";
  } catch (const AuthError& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(server->port())), std::string::npos) << e.what();
  }
  EXPECT_TRUE(eventually([&] { return server->refusedConnections() == 1; }));
  EXPECT_THROW(client(*server, ""), AuthError);
  EXPECT_TRUE(eventually([&] { return server->refusedConnections() == 2; }));
  EXPECT_EQ(toString(good->get("k", kLong)), "v");
  auto another = client(*server);
  EXPECT_EQ(toString(another->get("k", kLong)), "v");
  EXPECT_EQ(server->refusedConnections(), 2);
}

TEST(TcpStore, ForeignBytesBeforeHandshakeAreRefused) {
  auto server = startServer();
  net::Fd raw = net::connectTcp({"127.0.0.1", server->port()}, Deadline(kLong));
  Bytes frame = encodeStoreMessage(StoreMessage{StoreMsgType::kSet, {"k"}, toBytes("v"), 0, 0});
  frame.resize(std::max<size_t>(frame.size(), 64));
  net::writeFull(raw.get(), frame.data(), frame.size(), Deadline(kLong));
  EXPECT_TRUE(closedByServer(raw.get()));
  EXPECT_TRUE(eventually([&] { return server->refusedConnections() == 1; }));
  auto store = client(*server);
  EXPECT_FALSE(store->check({"k"}));
}

TEST(TcpStore, SilentPeerDoesNotBlockOthers) {
  auto server = startServer();
  std::vector<net::Fd> silent;
  for (int i = 0; i < 8; ++i) silent.push_back(net::connectTcp({"127.0.0.1", server->port()}, Deadline(kLong)));
  auto start = Clock::now();
  auto store = client(*server);
  store->set("k", toBytes("v"));
  EXPECT_LT(Clock::now() - start, Millis(2000));
}

// Connections that send the first byte of the greeting and stay open: the server collects the
// rest in its poll loop, so none of them holds anything a real client needs. (They used to
// hold the four handshake workers until the handshake deadline, delaying every client behind
// them by that long.) The deadline is 30 s here; the client must be served well before.
TEST(TcpStore, PartialGreetingsDoNotDelayOthers) {
  StoreServerOptions opts;
  opts.secret = kSecret;
  opts.handshakeTimeout = Millis(30000);
  TcpStoreServer server(opts);
  std::vector<net::Fd> stalled;
  for (int i = 0; i < 8; ++i) {
    stalled.push_back(net::connectTcp({"127.0.0.1", server.port()}, Deadline(kLong)));
    const uint8_t first = 'C';  // the greeting's first byte: nothing to refuse yet
    net::writeFull(stalled.back().get(), &first, 1, Deadline(kLong));
  }
  auto start = Clock::now();
  TcpStore store("127.0.0.1", server.port(), kSecret, Millis(20000));
  store.set("k", toBytes("v"));
  EXPECT_EQ(toString(store.get("k", kLong)), "v");
  EXPECT_LT(Clock::now() - start, Millis(10000));
  EXPECT_EQ(server.refusedConnections(), 0);
}

// The same for peers that send a whole greeting, get the server's answer, and never prove
// the secret: each waits in the poll set, and is refused and closed at the deadline.
TEST(TcpStore, PeersStalledAfterTheirGreetingDoNotDelayOthersAndTimeOut) {
  StoreServerOptions opts;
  opts.secret = kSecret;
  opts.handshakeTimeout = Millis(30000);
  auto server = std::make_unique<TcpStoreServer>(opts);
  uint8_t greeting[net::ServerHandshake::kGreetingBytes] = {'C', 'H', 'O', 'R', 'U', 'S', 'A', '1'};
  std::vector<net::Fd> stalled;
  for (int i = 0; i < 8; ++i) {
    greeting[8] = static_cast<uint8_t>(i);  // a nonce of our own, never echoing the server's
    stalled.push_back(net::connectTcp({"127.0.0.1", server->port()}, Deadline(kLong)));
    net::writeFull(stalled.back().get(), greeting, sizeof greeting, Deadline(kLong));
    uint8_t answer[net::ServerHandshake::kGreetingBytes + net::ServerHandshake::kProofBytes];
    net::readFull(stalled.back().get(), answer, sizeof answer, Deadline(kLong));  // the server's greeting and proof
    EXPECT_EQ(std::memcmp(answer, greeting, 8), 0);
  }
  auto start = Clock::now();
  TcpStore store("127.0.0.1", server->port(), kSecret, Millis(20000));
  store.set("k", toBytes("v"));
  EXPECT_LT(Clock::now() - start, Millis(10000));
  EXPECT_EQ(server->refusedConnections(), 0);
  server.reset();

  opts.handshakeTimeout = Millis(200);
  server = std::make_unique<TcpStoreServer>(opts);
  net::Fd late = net::connectTcp({"127.0.0.1", server->port()}, Deadline(kLong));
  net::writeFull(late.get(), greeting, sizeof greeting, Deadline(kLong));
  EXPECT_TRUE(eventually([&] { return server->refusedConnections() == 1; }, Millis(5000)));
  EXPECT_TRUE(closedByServer(late.get()));
}

// A client that dribbles its side of the handshake in pieces and sends its first request in
// the same write as its proof: the server's step-by-step handshake takes the pieces as they
// come and leaves the request in the socket for the client loop.
TEST(TcpStore, HandshakeInPiecesWithARequestRightBehindTheProof) {
  auto server = startServer();
  net::Fd fd = net::connectTcp({"127.0.0.1", server->port()}, Deadline(kLong));
  uint8_t hello[net::ServerHandshake::kGreetingBytes] = {'C', 'H', 'O', 'R', 'U', 'S', 'A', '1'};
  randomBytes(hello + 8, sizeof hello - 8);
  const size_t cuts[] = {0, 3, 20, sizeof hello};  // three pieces: 3, 17 and 20 bytes
  for (size_t i = 0; i + 1 < std::size(cuts); ++i) {
    net::writeFull(fd.get(), hello + cuts[i], cuts[i + 1] - cuts[i], Deadline(kLong));
    std::this_thread::sleep_for(Millis(20));
  }
  uint8_t answer[net::ServerHandshake::kGreetingBytes + net::ServerHandshake::kProofBytes];
  net::readFull(fd.get(), answer, sizeof answer, Deadline(kLong));
  uint8_t msg[1 + 64];
  msg[0] = 'C';
  std::memcpy(msg + 1, hello + 8, 32);
  std::memcpy(msg + 33, answer + 8, 32);
  Digest proof = hmacSha256(kSecret.data(), kSecret.size(), msg, sizeof msg);
  Bytes out(proof.begin(), proof.end());
  Bytes set = encodeStoreMessage(StoreMessage{StoreMsgType::kSet, {"k"}, toBytes("pieces"), 0, 0});
  out.insert(out.end(), set.begin(), set.end());
  net::writeFull(fd.get(), out.data(), 10, Deadline(kLong));
  std::this_thread::sleep_for(Millis(20));
  net::writeFull(fd.get(), out.data() + 10, out.size() - 10, Deadline(kLong));
  EXPECT_EQ(readReply(fd.get()).type, StoreMsgType::kOk);
  EXPECT_EQ(toString(client(*server)->get("k", kLong)), "pieces");
  EXPECT_EQ(server->refusedConnections(), 0);
}

TEST(TcpStore, SilentPeerIsRefusedAfterTheHandshakeTimeout) {
  // The handshake deadline follows CHORUS_TIMEOUT_MS (capped at 10 s); shorten it for this
  // server only.
  const char* old = std::getenv("CHORUS_TIMEOUT_MS");
  std::string saved = old ? old : "";
  setenv("CHORUS_TIMEOUT_MS", "300", 1);
  auto server = startServer();
  net::Fd silent = net::connectTcp({"127.0.0.1", server->port()}, Deadline(kLong));
  bool refused = eventually([&] { return server->refusedConnections() == 1; }, Millis(3000));
  bool closed = closedByServer(silent.get());
  server.reset();
  if (old) {
    setenv("CHORUS_TIMEOUT_MS", saved.c_str(), 1);
  } else {
    unsetenv("CHORUS_TIMEOUT_MS");
  }
  EXPECT_TRUE(refused);
  EXPECT_TRUE(closed);
}

TEST(TcpStore, MalformedBytesAreRejectedAndTheServerKeepsRunning) {
  auto server = startServer();
  auto good = client(*server);
  good->set("k", toBytes("v"));

  // Garbage after a valid handshake: an error reply, then the connection is closed.
  {
    net::Fd raw = rawAuthenticated(*server);
    const char junk[] = "GET / HTTP/1.1\r\nHost: store\r\n\r\n";
    net::writeFull(raw.get(), junk, sizeof junk, Deadline(kLong));
    StoreMessage reply = readReply(raw.get());
    EXPECT_EQ(reply.type, StoreMsgType::kError);
    EXPECT_NE(toString(reply.value).find("magic"), std::string::npos) << toString(reply.value);
    EXPECT_TRUE(closedByServer(raw.get()));
  }
  // A header announcing a body over the limit is refused before anything is buffered.
  {
    net::Fd raw = rawAuthenticated(*server);
    Bytes frame = encodeStoreMessage(StoreMessage{StoreMsgType::kOk, {}, {}, 0, 0});
    frame[8] = frame[9] = frame[10] = frame[11] = 0xff;
    net::writeFull(raw.get(), frame.data(), kStoreHeaderBytes, Deadline(kLong));
    EXPECT_EQ(readReply(raw.get()).type, StoreMsgType::kError);
    EXPECT_TRUE(closedByServer(raw.get()));
  }
  // A well-formed frame that is a reply, not a request.
  {
    net::Fd raw = rawAuthenticated(*server);
    Bytes frame = encodeStoreMessage(StoreMessage{StoreMsgType::kValue, {}, toBytes("x"), 0, 0});
    net::writeFull(raw.get(), frame.data(), frame.size(), Deadline(kLong));
    EXPECT_EQ(readReply(raw.get()).type, StoreMsgType::kError);
    EXPECT_TRUE(closedByServer(raw.get()));
  }
  // A frame cut short, then the peer leaves.
  {
    net::Fd raw = rawAuthenticated(*server);
    Bytes frame = encodeStoreMessage(StoreMessage{StoreMsgType::kSet, {"half"}, toBytes("value"), 0, 0});
    net::writeFull(raw.get(), frame.data(), frame.size() / 2, Deadline(kLong));
  }
  EXPECT_EQ(toString(good->get("k", kLong)), "v");
  EXPECT_FALSE(good->check({"half"}));
  auto fresh = client(*server);
  fresh->set("k2", toBytes("v2"));
  EXPECT_EQ(toString(good->get("k2", kLong)), "v2");
  EXPECT_EQ(server->refusedConnections(), 0);
}

TEST(TcpStore, PipelinedRequestsOnOneConnectionAreServedInOrder) {
  auto server = startServer();
  net::Fd raw = rawAuthenticated(*server);
  Bytes frames;
  for (const auto& m : {StoreMessage{StoreMsgType::kGet, {"later"}, {}, 0, 5000},
                        StoreMessage{StoreMsgType::kAdd, {"n"}, {}, 7, 0}}) {
    Bytes f = encodeStoreMessage(m);
    frames.insert(frames.end(), f.begin(), f.end());
  }
  net::writeFull(raw.get(), frames.data(), frames.size(), Deadline(kLong));
  auto other = client(*server);
  // The ADD waits behind the parked GET.
  std::this_thread::sleep_for(Millis(100));
  EXPECT_FALSE(other->check({"n"}));
  other->set("later", toBytes("now"));
  StoreMessage first = readReply(raw.get());
  EXPECT_EQ(first.type, StoreMsgType::kValue);
  EXPECT_EQ(toString(first.value), "now");
  StoreMessage second = readReply(raw.get());
  EXPECT_EQ(second.type, StoreMsgType::kCounter);
  EXPECT_EQ(second.counter, 7);
}

TEST(TcpStore, ClientLeavingWhileParkedIsHarmless) {
  auto server = startServer();
  {
    net::Fd raw = rawAuthenticated(*server);
    Bytes f = encodeStoreMessage(StoreMessage{StoreMsgType::kWait, {"a", "b"}, {}, 0, 60000});
    net::writeFull(raw.get(), f.data(), f.size(), Deadline(kLong));
    std::this_thread::sleep_for(Millis(50));
  }
  auto store = client(*server);
  store->set("a", toBytes("1"));
  store->set("b", toBytes("2"));
  EXPECT_TRUE(store->check({"a", "b"}));
}

TEST(TcpStore, ServerBindsOnlyTheGivenAddress) {
  auto server = startServer();
  EXPECT_EQ(server->address(), "127.0.0.1");
  // 127.0.0.2 is this host too, but not the address the server bound.
  EXPECT_THROW(net::connectTcp({"127.0.0.2", server->port()}, Deadline(Millis(300))), TimeoutError);
  EXPECT_THROW(TcpStore("127.0.0.2", server->port(), kSecret, Millis(300)), TimeoutError);

  StoreServerOptions any;
  any.secret = kSecret;
  any.anyInterface = true;
  TcpStoreServer wide(any);
  EXPECT_EQ(wide.address(), "0.0.0.0");
  TcpStore viaOther("127.0.0.2", wide.port(), kSecret, kLong);
  viaOther.set("k", toBytes("v"));

  StoreServerOptions explicitAny;
  explicitAny.secret = kSecret;
  explicitAny.bindAddr = "0.0.0.0";
  EXPECT_THROW(TcpStoreServer bad(explicitAny), InvalidArgument);

  StoreServerOptions emptyAddr;
  emptyAddr.secret = kSecret;
  emptyAddr.bindAddr = "";
  TcpStoreServer local(emptyAddr);
  EXPECT_EQ(local.address(), "127.0.0.1");
}

TEST(TcpStore, EmptySecretIsRefusedByTheServer) {
  StoreServerOptions opts;
  EXPECT_THROW(TcpStoreServer s(opts), InvalidArgument);
}

TEST(TcpStore, ClientWaitsForALateServer) {
  const test::ReservedPort reserved;  // kept from other tests until the late server binds it
  const int port = reserved.port();
  std::unique_ptr<TcpStoreServer> server;
  std::thread t([&] {
    std::this_thread::sleep_for(Millis(300));
    StoreServerOptions opts;
    opts.secret = kSecret;
    opts.port = port;
    server = std::make_unique<TcpStoreServer>(opts);
  });
  TcpStore store("127.0.0.1", port, kSecret, kLong);
  t.join();
  store.set("k", toBytes("v"));
  EXPECT_EQ(toString(store.get("k", kLong)), "v");
}

TEST(TcpStore, NoServerTimesOutNamingTheAddress) {
  const test::ReservedPort reserved;  // bound, never listening: no server can appear there
  const int port = reserved.port();
  try {
    TcpStore store("127.0.0.1", port, kSecret, Millis(200));
    FAIL() << "connected without a server";
  } catch (const TimeoutError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << msg;
    EXPECT_NE(msg.find("CHORUS_STORE_ADDR"), std::string::npos) << msg;
  }
}

TEST(TcpStore, DeadServerIsAnErrorNamingTheStore) {
  auto server = startServer();
  int port = server->port();
  auto store = client(*server, kSecret, Millis(500));
  store->set("k", toBytes("v"));
  server.reset();
  auto start = Clock::now();
  try {
    store->get("k", Millis(2000));
    FAIL() << "get from a dead server returned";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << msg;
    EXPECT_NE(msg.find("exited"), std::string::npos) << msg;
  }
  EXPECT_LT(Clock::now() - start, Millis(2000));
  EXPECT_THROW(store->set("k", toBytes("v")), Error);
}

TEST(TcpStore, StopIsPromptWithParkedClientsAndPendingHandshakes) {
  auto server = startServer();
  net::Fd silent = net::connectTcp({"127.0.0.1", server->port()}, Deadline(kLong));
  net::Fd parked = rawAuthenticated(*server);
  Bytes f = encodeStoreMessage(StoreMessage{StoreMsgType::kGet, {"never"}, {}, 0, 60000});
  net::writeFull(parked.get(), f.data(), f.size(), Deadline(kLong));
  std::this_thread::sleep_for(Millis(50));
  auto start = Clock::now();
  server->stop();
  server->stop();
  EXPECT_LT(Clock::now() - start, Millis(2000));
  EXPECT_TRUE(closedByServer(parked.get()));
}

TEST(PrefixStore, PrefixesEveryKey) {
  auto server = startServer();
  auto base = client(*server);
  PrefixStore a("job/a", base.get());
  PrefixStore b("job/b", base.get());
  a.set("k", toBytes("from a"));
  b.set("k", toBytes("from b"));
  EXPECT_EQ(toString(base->get("job/a/k", kLong)), "from a");
  EXPECT_EQ(toString(b.get("k", kLong)), "from b");
  EXPECT_EQ(a.add("n", 2), 2);
  EXPECT_EQ(base->add("job/a/n", 1), 3);
  a.wait({"k", "n"}, kLong);
  EXPECT_TRUE(a.check({"k", "n"}));
  EXPECT_FALSE(b.check({"k", "n"}));
  EXPECT_THROW(b.wait({"n"}, Millis(50)), TimeoutError);
  EXPECT_TRUE(a.erase("k"));
  EXPECT_TRUE(base->check({"job/b/k"}));
  EXPECT_FALSE(base->check({"job/a/k"}));
}

}  // namespace
}  // namespace chorus::comm
