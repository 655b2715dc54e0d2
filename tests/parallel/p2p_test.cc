// TensorP2P on threads-as-ranks: tensors of every supported dtype and several shapes arrive
// bit-exact in both meta modes; a kAgreeOnce stream sends its header once (counted in bytes
// on the wire) and refuses a changed shape; async receives waited out of order keep the
// stream's order; recvInto reuses the caller's buffer; an expected shape that differs names
// the peer and both shapes; a dead peer fails a receive with PeerError instead of a hang.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <chrono>
#include <mutex>

#include "chorus/parallel/p2p.h"
#include "util/rank_threads.h"

namespace chorus::parallel {
namespace {

using testutil::messageOf;
using testutil::runRanks;
using testutil::runRanksCollect;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

// The tensors rank 0 sends, built the same way on both ranks from a fixed seed: every
// supported dtype, a scalar, empty tensors and a non-contiguous one.
std::vector<torch::Tensor> samples() {
  auto gen = at::detail::createCPUGenerator(5);
  auto f = [&](std::vector<int64_t> shape) { return torch::randn(shape, gen); };
  auto i = [&](std::vector<int64_t> shape, at::ScalarType t) { return torch::randint(-100, 100, shape, gen).to(t); };
  return {
      f({3, 5}),
      f({7}).to(at::kDouble),
      f({2, 3}).to(at::kHalf),
      f({4}).to(at::kBFloat16),
      i({9}, at::kChar),
      i({2, 2, 2}, at::kShort),
      i({0}, at::kInt),
      i({}, at::kLong),
      torch::randint(0, 255, {5}, gen).to(at::kByte),
      torch::randint(0, 2, {6}, gen).to(at::kBool),
      torch::complex(f({3}), f({3})),
      f({5, 3}).t(),  // non-contiguous
      f({0, 4}),
      f({1, 1, 1, 1, 1, 1, 1, 2}),  // kMaxDims
  };
}

void expectSame(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  EXPECT_EQ(got.scalar_type(), want.scalar_type()) << what;
  EXPECT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(got.is_contiguous()) << what;
  EXPECT_FALSE(got.requires_grad()) << what;
  if (got.sizes() == want.sizes() && got.scalar_type() == want.scalar_type()) {
    EXPECT_TRUE(torch::equal(got, want)) << what;
  }
}

struct Case {
  std::string transport;
  MetaMode meta;
};

class P2PDtypes : public ::testing::TestWithParam<Case> {};

// kAgreeOnce: one stream (tag) per tensor; kEveryMessage: all on one stream, shapes changing.
TEST_P(P2PDtypes, EveryDtypeAndShapeArrivesExactly) {
  const Case c = GetParam();
  const auto want = samples();
  std::mutex mu;
  std::vector<torch::Tensor> got(want.size());
  runRanks(2, c.transport, [&](comm::ProcessGroup& g) {
    TensorP2P p2p(borrow(g), P2POptions{c.meta});
    for (size_t k = 0; k < want.size(); ++k) {
      const uint32_t tag = c.meta == MetaMode::kAgreeOnce ? static_cast<uint32_t>(10 + k) : 10;
      if (g.rank() == 0) {
        p2p.send(want[k], 1, tag, "sample " + std::to_string(k));
      } else {
        torch::Tensor t = p2p.recv(0, tag, "sample " + std::to_string(k));
        std::lock_guard<std::mutex> lock(mu);
        got[k] = t;
      }
    }
  });
  for (size_t k = 0; k < want.size(); ++k) expectSame(got[k], want[k], "sample " + std::to_string(k));
}

INSTANTIATE_TEST_SUITE_P(Modes, P2PDtypes,
                         ::testing::Values(Case{"loopback", MetaMode::kAgreeOnce}, Case{"loopback", MetaMode::kEveryMessage},
                                           Case{"shm", MetaMode::kAgreeOnce}),
                         [](const auto& info) {
                           return info.param.transport + (info.param.meta == MetaMode::kAgreeOnce ? "_once" : "_every");
                         });

// The bytes rank 0 puts on the wire per transfer: header + payload the first time, then the
// payload alone (kAgreeOnce) or header + payload again (kEveryMessage).
TEST(P2P, AgreeOnceSendsTheHeaderOnlyOnce) {
  for (MetaMode mode : {MetaMode::kAgreeOnce, MetaMode::kEveryMessage}) {
    std::vector<uint64_t> sent;
    std::vector<torch::Tensor> received;
    runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
      TensorP2P p2p(borrow(g), P2POptions{mode});
      auto gen = at::detail::createCPUGenerator(9);
      std::vector<torch::Tensor> ts;
      for (int k = 0; k < 3; ++k) ts.push_back(torch::randn({4, 6}, gen));
      if (g.rank() == 0) {
        for (const auto& t : ts) {
          const uint64_t before = g.bytesSent();
          p2p.send(t, 1, 3, "x");
          sent.push_back(g.bytesSent() - before);
        }
        if (mode == MetaMode::kAgreeOnce) {
          EXPECT_EQ(p2p.agreedSend(1, 3), TensorMeta::of(ts[0]));
        } else {
          EXPECT_FALSE(p2p.agreedSend(1, 3).has_value());
        }
      } else {
        for (int k = 0; k < 3; ++k) received.push_back(p2p.recv(0, 3, "x"));
        for (int k = 0; k < 3; ++k) EXPECT_TRUE(torch::equal(received[static_cast<size_t>(k)], ts[static_cast<size_t>(k)]));
        if (mode == MetaMode::kAgreeOnce) {
          EXPECT_EQ(p2p.agreedRecv(0, 3), TensorMeta::of(ts[0]));
        }
      }
    });
    const uint64_t payload = 4 * 6 * sizeof(float);
    const uint64_t header = TensorP2P::kHeaderBytes;
    ASSERT_EQ(sent.size(), 3u);
    EXPECT_EQ(sent[0], header + payload);
    const uint64_t later = mode == MetaMode::kAgreeOnce ? payload : header + payload;
    EXPECT_EQ(sent[1], later);
    EXPECT_EQ(sent[2], later);
  }
}

TEST(P2P, AgreeOnceRefusesAnotherShapeOnTheSender) {
  runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    TensorP2P p2p(borrow(g));
    if (g.rank() == 0) {
      p2p.send(torch::zeros({4, 8}), 1, 2, "activation");
      try {
        p2p.send(torch::zeros({2, 8}), 1, 2, "activation");
        ADD_FAILURE() << "a changed shape on a kAgreeOnce stream was sent";
      } catch (const InvalidArgument& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("float32[4, 8]"), std::string::npos) << m;
        EXPECT_NE(m.find("float32[2, 8]"), std::string::npos) << m;
        EXPECT_NE(m.find("to rank 1"), std::string::npos) << m;
      }
      // The stream is still usable with its agreed shape.
      p2p.send(torch::ones({4, 8}), 1, 2, "activation");
    } else {
      EXPECT_TRUE(torch::equal(p2p.recv(0, 2, "activation"), torch::zeros({4, 8})));
      EXPECT_TRUE(torch::equal(p2p.recv(0, 2, "activation"), torch::ones({4, 8})));
    }
  });
}

// Receives posted before anything is sent and waited for in reverse order still take the
// stream's transfers in the order they were posted, with headers (shapes changing) or not.
TEST(P2P, AsyncReceivesWaitedOutOfOrderKeepTheStreamOrder) {
  for (MetaMode mode : {MetaMode::kAgreeOnce, MetaMode::kEveryMessage}) {
    runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
      TensorP2P p2p(borrow(g), P2POptions{mode});
      auto shape = [&](int k) {
        return mode == MetaMode::kAgreeOnce ? std::vector<int64_t>{3, 2} : std::vector<int64_t>{k + 1, 2};
      };
      if (g.rank() == 1) {
        std::vector<TensorWorkPtr> works;
        for (int k = 0; k < 4; ++k) works.push_back(p2p.recvAsync(0, 4, "t" + std::to_string(k)));
        g.barrier();  // now rank 0 sends
        for (int k = 3; k >= 0; --k) {
          torch::Tensor t = works[static_cast<size_t>(k)]->wait();
          EXPECT_TRUE(torch::equal(t, torch::full(shape(k), static_cast<float>(k)))) << "transfer " << k;
          EXPECT_TRUE(works[static_cast<size_t>(k)]->test());
        }
      } else {
        g.barrier();
        std::vector<TensorWorkPtr> works;
        for (int k = 0; k < 4; ++k) {
          works.push_back(p2p.sendAsync(torch::full(shape(k), static_cast<float>(k)), 1, 4, "t" + std::to_string(k)));
        }
        for (auto& w : works) w->wait();
      }
    });
  }
}

TEST(P2P, RecvIntoReusesTheCallersBuffer) {
  runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    TensorP2P p2p(borrow(g));
    if (g.rank() == 0) {
      for (int k = 0; k < 3; ++k) p2p.send(torch::full({5}, static_cast<double>(k), torch::kDouble), 1, 6, "g");
    } else {
      torch::Tensor buf = torch::empty({5}, torch::kDouble);
      const void* ptr = buf.data_ptr();
      for (int k = 0; k < 3; ++k) {
        p2p.recvInto(buf, 0, 6, "g");
        EXPECT_EQ(buf.data_ptr(), ptr);
        EXPECT_TRUE(torch::equal(buf, torch::full({5}, static_cast<double>(k), torch::kDouble)));
      }
    }
  });
}

TEST(P2P, AnExpectedShapeThatDiffersNamesThePeerAndBothShapes) {
  testutil::RankOptions opts;
  opts.timeout = Millis(5000);
  auto outcomes = runRanksCollect(2, opts, [&](comm::ProcessGroup& g) {
    TensorP2P p2p(borrow(g));
    if (g.rank() == 0) {
      try {
        p2p.send(torch::zeros({4, 6}), 1, 8, "the gradient");
      } catch (const PeerError&) {
        // rank 1 refused the tensor and closed its transport: expected
      }
    } else {
      p2p.recv(0, 8, "the gradient", TensorMeta{at::kFloat, {4, 8}});
    }
  });
  ASSERT_TRUE(outcomes[1]);
  try {
    std::rethrow_exception(outcomes[1]);
  } catch (const MismatchError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("from rank 0"), std::string::npos) << m;
    EXPECT_NE(m.find("the gradient"), std::string::npos) << m;
    EXPECT_NE(m.find("expected float32[4, 8]"), std::string::npos) << m;
    EXPECT_NE(m.find("sent float32[4, 6]"), std::string::npos) << m;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected MismatchError, got: " << e.what();
  }
}

TEST(P2P, ADeadPeerFailsAReceiveWithPeerErrorNotAHang) {
  testutil::RankOptions opts;
  opts.timeout = Millis(20000);
  const auto start = std::chrono::steady_clock::now();
  auto outcomes = runRanksCollect(2, opts, [&](comm::ProcessGroup& g) {
    TensorP2P p2p(borrow(g));
    if (g.rank() == 1) throw Error("rank 1 gives up before sending");  // closes its transport
    p2p.recv(1, 5, "the activation into stage 0");
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 10.0) << "the receive waited for its timeout instead of failing at once";
  ASSERT_TRUE(outcomes[0]);
  try {
    std::rethrow_exception(outcomes[0]);
  } catch (const PeerError& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.peer(), 1) << m;
    EXPECT_NE(m.find("recv of the activation into stage 0 from rank 1"), std::string::npos) << m;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected PeerError, got: " << e.what();
  }
}

TEST(P2P, BadArgumentsAreRefusedBeforeAnythingIsSent) {
  runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    TensorP2P p2p(borrow(g));
    const int other = 1 - g.rank();
    EXPECT_THROW(p2p.send(torch::zeros({2}), g.rank(), 1), InvalidArgument);
    EXPECT_THROW(p2p.send(torch::zeros({2}), 2, 1), InvalidArgument);
    EXPECT_THROW(p2p.send(torch::zeros({2}), other, TensorP2P::kHeaderTagBit | 1), InvalidArgument);
    EXPECT_THROW(p2p.recvAsync(other, TensorP2P::kHeaderTagBit), InvalidArgument);
    EXPECT_THROW(p2p.send(torch::Tensor(), other, 1), InvalidArgument);
    EXPECT_THROW(p2p.send(torch::zeros({1, 1, 1, 1, 1, 1, 1, 1, 1}), other, 1), InvalidArgument);
    EXPECT_THROW(p2p.send(torch::zeros({2, 2}).to_sparse(), other, 1), InvalidArgument);
    EXPECT_THROW(p2p.recvInto(torch::zeros({4, 4}).t(), other, 1), InvalidArgument);
    EXPECT_THROW(TensorP2P(nullptr), InvalidArgument);
    // Nothing was posted: a real transfer afterwards still works.
    if (g.rank() == 0) {
      p2p.send(torch::arange(3), 1, 1, "after");
    } else {
      EXPECT_TRUE(torch::equal(p2p.recv(0, 1, "after"), torch::arange(3)));
    }
  });
}

TEST(TensorMeta, DescribesDtypeAndShape) {
  EXPECT_EQ(TensorMeta::of(torch::zeros({4, 8})).str(), "float32[4, 8]");
  EXPECT_EQ(TensorMeta::of(torch::zeros({}, torch::kLong)).str(), "int64[]");
  EXPECT_EQ(TensorMeta::of(torch::zeros({3}, torch::kBFloat16)).bytes(), 6u);
  EXPECT_EQ((TensorMeta{at::kDouble, {2, 0}}).numel(), 0);
}

}  // namespace
}  // namespace chorus::parallel
