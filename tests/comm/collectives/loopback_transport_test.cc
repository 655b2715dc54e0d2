// The loopback transport (tests/util) keeps the rules of transport.h, since every collective
// test relies on it as the reference: FIFO per (peer, tag), tags that overtake each other,
// size and signature checks, reduce-on-receive, deadlines, and close() failing the peers.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "chorus/common/error.h"
#include "util/loopback_transport.h"

namespace chorus::comm {
namespace {

using testutil::createLoopbackTransports;

void waitOne(Transport& t, const RequestPtr& r, Millis timeout = Millis(2000)) {
  RequestPtr one[] = {r};
  t.waitAll(one, Deadline(timeout));
}

TEST(LoopbackTransport, FifoPerTagAndTagsMayOvertake) {
  auto t = createLoopbackTransports(2);
  int a = 1, b = 2, c = 3;
  auto s1 = t[0]->isend(1, 10, 0, &a, sizeof a);
  auto s2 = t[0]->isend(1, 10, 0, &b, sizeof b);
  auto s3 = t[0]->isend(1, 20, 0, &c, sizeof c);
  int x = 0, y = 0, z = 0;
  waitOne(*t[1], t[1]->irecv(0, 20, 0, &z, sizeof z));  // tag 20 overtakes tag 10
  waitOne(*t[1], t[1]->irecv(0, 10, 0, &x, sizeof x));
  waitOne(*t[1], t[1]->irecv(0, 10, 0, &y, sizeof y));
  EXPECT_EQ(x, 1);
  EXPECT_EQ(y, 2);
  EXPECT_EQ(z, 3);
  RequestPtr sends[] = {s1, s2, s3};
  t[0]->waitAll(sends, Deadline(Millis(1000)));
}

TEST(LoopbackTransport, SizeOrSignatureMismatchFailsTheReceiveWithoutWriting) {
  auto t = createLoopbackTransports(2);
  std::vector<char> out(64, 'x'), in(32, '.');
  t[0]->isend(1, 1, 7, out.data(), 64);
  EXPECT_THROW(waitOne(*t[1], t[1]->irecv(0, 1, 7, in.data(), 32)), MismatchError);
  EXPECT_EQ(in, std::vector<char>(32, '.'));
  t[0]->isend(1, 2, 7, out.data(), 32);
  EXPECT_THROW(waitOne(*t[1], t[1]->irecv(0, 2, 8, in.data(), 32)), MismatchError);
}

TEST(LoopbackTransport, ReduceOnReceive) {
  auto t = createLoopbackTransports(2);
  std::vector<float> mine = {1, 2, 3}, theirs = {10, 20, 30};
  t[0]->isend(1, 1, 0, theirs.data(), 12);
  RecvReduce rr{DType::kFloat32, ReduceOp::kSum};
  waitOne(*t[1], t[1]->irecv(0, 1, 0, mine.data(), 12, &rr));
  EXPECT_EQ(mine, (std::vector<float>{11, 22, 33}));
}

TEST(LoopbackTransport, LargeSendCompletesOnlyWhenReceived) {
  auto t = createLoopbackTransports(2);
  std::vector<char> out(testutil::kEagerBytes + 1, 'a'), in(out.size());
  auto s = t[0]->isend(1, 1, 0, out.data(), out.size());
  EXPECT_FALSE(t[0]->test(s));
  auto r = t[1]->irecv(0, 1, 0, in.data(), in.size());
  EXPECT_TRUE(t[1]->test(r));
  EXPECT_TRUE(t[0]->test(s));
  EXPECT_EQ(in, out);
}

TEST(LoopbackTransport, ZeroByteMessages) {
  auto t = createLoopbackTransports(2);
  t[0]->isend(1, 3, 5, nullptr, 0);
  waitOne(*t[1], t[1]->irecv(0, 3, 5, nullptr, 0));
}

TEST(LoopbackTransport, TimeoutNamesThePendingPeerAndTag) {
  auto t = createLoopbackTransports(3);
  int x = 0;
  const auto start = std::chrono::steady_clock::now();
  try {
    waitOne(*t[0], t[0]->irecv(2, 0xabc, 0, &x, sizeof x), Millis(200));
    FAIL() << "the receive completed without a sender";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("recv from rank 2 tag 2748"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST(LoopbackTransport, CloseFailsThePeersRequestsWithPeerError) {
  auto t = createLoopbackTransports(3);
  int x = 0;
  auto pending = t[0]->irecv(1, 1, 0, &x, sizeof x);
  std::thread closer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    t[1]->close();
  });
  try {
    waitOne(*t[0], pending);
    FAIL() << "the receive from a closed peer completed";
  } catch (const PeerError& e) {
    EXPECT_EQ(e.peer(), 1);
  }
  closer.join();
  EXPECT_THROW(waitOne(*t[0], t[0]->isend(1, 2, 0, &x, sizeof x)), PeerError);
  EXPECT_THROW(t[1]->isend(0, 2, 0, &x, sizeof x), Error);
  // A message sent before the close is still delivered.
  auto t2 = createLoopbackTransports(2);
  int y = 42, z = 0;
  t2[1]->isend(0, 1, 0, &y, sizeof y);
  t2[1]->close();
  waitOne(*t2[0], t2[0]->irecv(1, 1, 0, &z, sizeof z));
  EXPECT_EQ(z, 42);
}

}  // namespace
}  // namespace chorus::comm
