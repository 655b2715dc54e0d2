// DistributedDataParallel on threads-as-ranks: averaged gradients equal the single-process
// gradients of the whole batch, for every bucket layout; noSync; unused parameters; uneven
// inputs; buffers; the model check; the 16-bit hooks.
//
// Tolerance: gradients are float32 sums in a different order than the single process's, so
// they agree to a few ulps, not bitwise: |ddp - full| <= 1e-6 + 1e-5 * |full| per element.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <atomic>
#include <map>
#include <mutex>

#include "chorus/parallel/data/ddp.h"
#include "util/rank_threads.h"

namespace chorus::parallel {
namespace {

using testutil::runRanks;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

// Whether v is the same on every rank of g (its min and max over the ranks agree).
bool sameOnEveryRank(comm::ProcessGroup& g, double v) {
  double lo = v, hi = v;
  comm::AllreduceOptions o;
  o.data = &lo;
  o.count = 1;
  o.dtype = DType::kFloat64;
  o.op = ReduceOp::kMin;
  g.allreduce(o);
  o.data = &hi;
  o.op = ReduceOp::kMax;
  g.allreduce(o);
  return lo == hi;
}

// Ranks are threads sharing torch's global generator: seeding and initializing must not
// interleave between them, or rank 0's weights would differ from the reference's.
std::mutex initMu;

torch::nn::Sequential makeNet(int64_t hidden = 16) {
  std::lock_guard<std::mutex> lock(initMu);
  torch::manual_seed(7);
  return torch::nn::Sequential(torch::nn::Linear(10, hidden), torch::nn::ReLU(), torch::nn::Linear(hidden, 4));
}

struct Batch {
  torch::Tensor x, y;
};
Batch globalBatch(int64_t n = 24, int64_t seed = 3) {
  auto gen = at::detail::createCPUGenerator(seed);
  return {torch::randn({n, 10}, gen), torch::randint(0, 4, {n}, gen)};
}
Batch shard(const Batch& b, int rank, int world) {
  int64_t per = b.x.size(0) / world;
  return {b.x.narrow(0, rank * per, per), b.y.narrow(0, rank * per, per)};
}

std::map<std::string, torch::Tensor> grads(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> g;
  for (auto& p : m.named_parameters()) g[p.key()] = p.value().grad().clone();
  return g;
}

// The single-process reference: gradients of the mean loss over the whole batch.
std::map<std::string, torch::Tensor> fullBatchGrads(const Batch& b) {
  auto net = makeNet();
  torch::nn::functional::cross_entropy(net->forward(b.x), b.y).backward();
  return grads(*net);
}

void expectClose(const std::map<std::string, torch::Tensor>& got, const std::map<std::string, torch::Tensor>& want,
                 const std::string& what, double atol = 1e-6, double rtol = 1e-5) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (const auto& [name, w] : want) {
    const auto& g = got.at(name);
    EXPECT_TRUE(torch::allclose(g, w, rtol, atol)) << what << ": " << name << " differs by "
                                                   << (g - w).abs().max().item<double>();
  }
}

TEST(Ddp, GradientsEqualFullBatchForEveryWorldAndBucketCap) {
  torch::set_num_threads(1);
  Batch b = globalBatch();
  auto want = fullBatchGrads(b);
  for (int world : {1, 2, 3, 4}) {
    for (size_t cap : {size_t{1}, size_t{300}, size_t{1000}, size_t{25} << 20}) {
      runRanks(world, "loopback", [&](comm::ProcessGroup& g) {
        auto net = makeNet();
        DDPOptions o;
        o.bucketCapBytes = cap;
        DistributedDataParallel ddp(net, borrow(g), o);
        Batch mine = shard(b, g.rank(), world);
        torch::nn::functional::cross_entropy(ddp.forward(mine.x), mine.y).backward();
        expectClose(grads(*net), want, str("world ", world, " cap ", cap, " rank ", g.rank()));
        EXPECT_EQ(ddp.stats().syncs, 1);
        EXPECT_EQ(ddp.stats().spans.size(), ddp.bucketNames().size());
      });
    }
  }
}

TEST(Ddp, BucketsRebuiltFromTheReadyOrderAreTheSameOnEveryRankAndStayCorrect) {
  torch::set_num_threads(1);
  Batch b = globalBatch();
  auto want = fullBatchGrads(b);
  for (bool rebuild : {true, false}) {
    runRanks(3, "loopback", [&](comm::ProcessGroup& g) {
      auto net = makeNet();
      DDPOptions o;
      o.firstBucketCapBytes = 100;
      o.rebuildBuckets = rebuild;
      DistributedDataParallel ddp(net, borrow(g), o);
      auto initial = ddp.bucketNames();
      Batch mine = shard(b, g.rank(), 3);
      for (int step = 0; step < 4; ++step) {
        for (auto& p : net->parameters()) p.mutable_grad().zero_();
        torch::nn::functional::cross_entropy(ddp.forward(mine.x), mine.y).backward();
        expectClose(grads(*net), want, str("rebuild ", rebuild, " step ", step, " rank ", g.rank()));
      }
      // Every rank holds rank 0's layout: compare a digest of the names.
      std::string layout;
      for (const auto& bucket : ddp.bucketNames()) {
        for (const auto& n : bucket) layout += n + ",";
        layout += "|";
      }
      EXPECT_TRUE(sameOnEveryRank(g, static_cast<double>(std::hash<std::string>()(layout) >> 12))) << layout;
      if (!rebuild) {
        EXPECT_EQ(ddp.bucketNames(), initial);
      }
      size_t count = 0;
      for (const auto& bucket : ddp.bucketNames()) count += bucket.size();
      EXPECT_EQ(count, 4u) << layout;
    });
  }
}

TEST(Ddp, BucketsFollowReverseRegistrationOrderUpToTheCap) {
  // Sizes: 0.weight 16x10 = 640 B, 0.bias 64 B, 2.weight 4x16 = 256 B, 2.bias 16 B.
  using V = std::vector<std::vector<std::string>>;
  std::map<size_t, V> want = {
      {1, V{{"2.bias"}, {"2.weight"}, {"0.bias"}, {"0.weight"}}},
      {272, V{{"2.bias", "2.weight"}, {"0.bias"}, {"0.weight"}}},
      {300, V{{"2.bias", "2.weight"}, {"0.bias"}, {"0.weight"}}},
      {336, V{{"2.bias", "2.weight", "0.bias"}, {"0.weight"}}},
      {975, V{{"2.bias", "2.weight", "0.bias"}, {"0.weight"}}},
      {976, V{{"2.bias", "2.weight", "0.bias", "0.weight"}}},
  };
  runRanks(1, "loopback", [&](comm::ProcessGroup& g) {
    for (const auto& [cap, layout] : want) {
      auto net = makeNet();
      DDPOptions o;
      o.bucketCapBytes = cap;
      DistributedDataParallel ddp(net, borrow(g), o);
      EXPECT_EQ(ddp.bucketNames(), layout) << "cap " << cap;
    }
    // The first bucket has its own, lower cap (1 MiB by default, like PyTorch's).
    auto net = makeNet();
    DDPOptions o;
    o.bucketCapBytes = 1000;
    o.firstBucketCapBytes = 300;
    DistributedDataParallel ddp(net, borrow(g), o);
    EXPECT_EQ(ddp.bucketNames(), (V{{"2.bias", "2.weight"}, {"0.bias", "0.weight"}}));
  });
}

TEST(Ddp, GradientsAreViewsIntoTheBucketsAndSurviveZeroGrad) {
  runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    auto net = makeNet();
    DDPOptions o;
    o.rebuildBuckets = false;  // the rebuilt layout depends on timing; one bucket is what is checked here
    DistributedDataParallel ddp(net, borrow(g), o);
    torch::optim::SGD opt(net->parameters(), 0.1);
    Batch b = shard(globalBatch(), g.rank(), 2);
    for (int step = 0; step < 3; ++step) {
      opt.zero_grad();
      torch::nn::functional::cross_entropy(ddp.forward(b.x), b.y).backward();
      opt.step();
    }
    // One bucket holds all four gradients back to back: their storage is the same.
    auto params = net->parameters();
    for (auto& p : params) EXPECT_TRUE(p.grad().storage().is_alias_of(params[0].grad().storage()));
  });
}

TEST(Ddp, NoSyncAccumulatesLocallyThenAveragesEverything) {
  torch::set_num_threads(1);
  Batch b1 = globalBatch(24, 1), b2 = globalBatch(24, 2), b3 = globalBatch(24, 3);
  auto want = fullBatchGrads(b1);
  for (auto* b : {&b2, &b3}) {
    auto more = fullBatchGrads(*b);
    for (auto& [k, v] : want) v += more[k];
  }
  runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    auto net = makeNet();
    DDPOptions o;
    o.bucketCapBytes = 300;
    DistributedDataParallel ddp(net, borrow(g), o);
    {
      auto guard = ddp.noSync();
      for (auto* b : {&b1, &b2}) {
        Batch mine = shard(*b, g.rank(), 2);
        torch::nn::functional::cross_entropy(ddp.forward(mine.x), mine.y).backward();
      }
    }
    EXPECT_EQ(ddp.stats().syncs, 0);  // nothing was communicated yet
    Batch mine = shard(b3, g.rank(), 2);
    torch::nn::functional::cross_entropy(ddp.forward(mine.x), mine.y).backward();
    EXPECT_EQ(ddp.stats().syncs, 1);
    expectClose(grads(*net), want, str("rank ", g.rank()));
  });
}

// A model with a branch that only some ranks use.
struct BranchyImpl : torch::nn::Module {
  BranchyImpl() {
    std::lock_guard<std::mutex> lock(initMu);
    torch::manual_seed(11);
    a = register_module("a", torch::nn::Linear(10, 8));
    extra = register_module("extra", torch::nn::Linear(8, 8));
    head = register_module("head", torch::nn::Linear(8, 4));
  }
  torch::Tensor forward(torch::Tensor x, bool useExtra) {
    x = torch::relu(a->forward(x));
    if (useExtra) x = torch::relu(extra->forward(x));
    return head->forward(x);
  }
  torch::nn::Linear a{nullptr}, extra{nullptr}, head{nullptr};
};
TORCH_MODULE(Branchy);

TEST(Ddp, UnusedParametersGetTheAverageOfTheRanksThatUsedThem) {
  torch::set_num_threads(1);
  Batch b = globalBatch();
  for (bool find : {false, true}) {
    for (bool extraAnywhere : {false, true}) {
      // Reference: each rank's local gradients, averaged by hand.
      std::vector<std::map<std::string, torch::Tensor>> local;
      for (int r = 0; r < 2; ++r) {
        Branchy m;
        Batch mine = shard(b, r, 2);
        torch::nn::functional::cross_entropy(m->forward(mine.x, extraAnywhere && r == 0), mine.y).backward();
        std::map<std::string, torch::Tensor> gr;
        for (auto& p : m->named_parameters()) {
          gr[p.key()] = p.value().grad().defined() ? p.value().grad().clone() : torch::zeros_like(p.value());
        }
        local.push_back(gr);
      }
      std::map<std::string, torch::Tensor> want;
      for (auto& [k, v] : local[0]) want[k] = (v + local[1][k]) / 2;
      runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
        Branchy m;
        DDPOptions o;
        o.findUnusedParameters = find;
        o.bucketCapBytes = 200;
        DistributedDataParallel ddp(m, borrow(g), o);
        Batch mine = shard(b, g.rank(), 2);
        for (int step = 0; step < 2; ++step) {  // twice: the state resets between passes
          for (auto& p : m->parameters()) p.mutable_grad().zero_();
          torch::nn::functional::cross_entropy(ddp.forward(mine.x, extraAnywhere && g.rank() == 0), mine.y).backward();
          expectClose(grads(*m), want, str("find ", find, " extra ", extraAnywhere, " rank ", g.rank()));
        }
        EXPECT_EQ(ddp.stats().syncs, 2);
      });
    }
  }
}

// A forward whose result DDP cannot search (a pair): findUnusedParameters must not count
// every parameter unused (which would send buckets before their gradients exist).
struct PairNetImpl : torch::nn::Module {
  PairNetImpl() {
    {
      std::lock_guard<std::mutex> lock(initMu);  // drawing from the shared generator, too
      a = register_module("0", torch::nn::Linear(10, 16));
      b = register_module("2", torch::nn::Linear(16, 4));
    }
    auto ref = makeNet();  // the reference's weights
    torch::NoGradGuard noGrad;
    for (auto& p : named_parameters()) p.value().copy_(ref->named_parameters()[p.key()]);
  }
  std::pair<torch::Tensor, int> forward(torch::Tensor x) { return {b->forward(torch::relu(a->forward(x))), 1}; }
  torch::nn::Linear a{nullptr}, b{nullptr};
};
TORCH_MODULE(PairNet);

TEST(Ddp, FindUnusedWithAResultItCannotSearchStillAveragesCorrectly) {
  torch::set_num_threads(1);
  Batch b = globalBatch();
  auto want = fullBatchGrads(b);
  runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    PairNet net;
    DDPOptions o;
    o.findUnusedParameters = true;
    o.bucketCapBytes = 300;
    DistributedDataParallel ddp(net, borrow(g), o);
    Batch mine = shard(b, g.rank(), 2);
    for (int step = 0; step < 3; ++step) {
      for (auto& p : net->parameters()) p.mutable_grad().zero_();
      torch::nn::functional::cross_entropy(ddp.forward(mine.x).first, mine.y).backward();
      expectClose(grads(*net), want, str("step ", step, " rank ", g.rank()));
    }
  });
}

TEST(Ddp, AParameterUsedOutsideForwardWithFindUnusedIsAnErrorNotWrongGradients) {
  auto outcomes = testutil::runRanksCollect(2, {}, [&](comm::ProcessGroup& g) {
    Branchy m;
    DDPOptions o;
    o.findUnusedParameters = true;
    DistributedDataParallel ddp(m, borrow(g), o);
    Batch mine = shard(globalBatch(), g.rank(), 2);
    // The forward skips `extra`, but a penalty on its weight, outside ddp.forward, gives it a
    // gradient: its bucket may already be on the wire.
    auto loss = torch::nn::functional::cross_entropy(ddp.forward(mine.x, false), mine.y);
    (loss + 0.01 * m->extra->weight.pow(2).sum()).backward();
  });
  bool named = false;
  for (const auto& e : outcomes) named = named || testutil::messageOf(e).find("'extra.weight'") != std::string::npos;
  EXPECT_TRUE(named) << testutil::messageOf(outcomes[0]) << " / " << testutil::messageOf(outcomes[1]);
}

TEST(Ddp, UnevenInputsJoinWithoutHangingAndEndWithTheSameWeights) {
  torch::set_num_threads(1);
  const int world = 3;
  runRanks(world, "loopback", [&](comm::ProcessGroup& g) {
    auto net = makeNet();
    DDPOptions o;
    o.unevenInputs = true;
    DistributedDataParallel ddp(net, borrow(g), o);
    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    int steps = 2 + 2 * g.rank();  // 2, 4, 6 steps
    for (int s = 0; s < steps; ++s) {
      Batch mine = globalBatch(8, 100 * g.rank() + s);
      opt.zero_grad();
      torch::nn::functional::cross_entropy(ddp.forward(mine.x), mine.y).backward();
      opt.step();
    }
    ddp.join();
    // Every rank now holds the same weights: compare a checksum across ranks.
    double sum = 0;
    for (auto& p : net->parameters()) sum += p.detach().to(torch::kDouble).abs().sum().item<double>();
    EXPECT_TRUE(sameOnEveryRank(g, sum)) << "rank " << g.rank();
  });
}

TEST(Ddp, JoinWithoutUnevenInputsIsAnError) {
  runRanks(1, "loopback", [&](comm::ProcessGroup& g) {
    auto net = makeNet();
    DistributedDataParallel ddp(net, borrow(g));
    EXPECT_THROW(ddp.join(), InvalidArgument);
  });
}

TEST(Ddp, ConstructionBroadcastsRankZerosWeightsAndBuffers) {
  runRanks(3, "loopback", [&](comm::ProcessGroup& g) {
    std::unique_lock<std::mutex> lock(initMu);
    torch::manual_seed(g.rank());  // different weights on each rank
    torch::nn::Sequential net(torch::nn::Linear(4, 4), torch::nn::BatchNorm1d(4));
    {
      torch::NoGradGuard ng;
      net->named_buffers()["1.running_mean"].fill_(g.rank());
    }
    torch::manual_seed(0);
    torch::nn::Sequential ref(torch::nn::Linear(4, 4), torch::nn::BatchNorm1d(4));
    lock.unlock();
    DistributedDataParallel ddp(net, borrow(g));
    for (auto& p : net->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), ref->named_parameters()[p.key()]));
    EXPECT_EQ(net->named_buffers()["1.running_mean"].sum().item<float>(), 0.0f);
  });
}

TEST(Ddp, BroadcastBuffersEachForwardKeepsBatchNormStatisticsEqual) {
  torch::set_num_threads(1);
  for (bool broadcast : {true, false}) {
    runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
      torch::nn::Sequential net(torch::nn::Linear(4, 4), torch::nn::BatchNorm1d(4));
      DDPOptions o;
      o.broadcastBuffers = broadcast;
      DistributedDataParallel ddp(net, borrow(g), o);
      {
        torch::NoGradGuard ng;
        if (g.rank() == 1) net->named_buffers()["1.running_mean"].fill_(5);  // drifted
      }
      auto x = globalBatch(8, 5).x.narrow(1, 0, 4);  // the same input on both ranks
      ddp.forward(x).sum().backward();
      float mean = net->named_buffers()["1.running_mean"].sum().item<float>();
      float other = mean;
      comm::BroadcastOptions bo;
      bo.data = &other;
      bo.count = 1;
      bo.root = 0;
      g.broadcast(bo);
      if (broadcast) {
        EXPECT_EQ(mean, other);
      } else if (g.rank() == 1) {
        EXPECT_NE(mean, other);
      }
    });
  }
}

TEST(Ddp, DifferentModelsAreRefusedNamingTheFirstParameterThatDiffers) {
  auto outcomes = testutil::runRanksCollect(2, {}, [&](comm::ProcessGroup& g) {
    torch::nn::Sequential net(torch::nn::Linear(10, 16), torch::nn::ReLU(), torch::nn::Linear(16, g.rank() == 0 ? 4 : 5));
    DistributedDataParallel ddp(net, borrow(g));
  });
  for (int r = 0; r < 2; ++r) {
    std::string msg = testutil::messageOf(outcomes[r]);
    EXPECT_NE(msg.find("parameter #2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("2.weight [4, 16]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("same model"), std::string::npos) << msg;
  }
  EXPECT_NE(testutil::messageOf(outcomes[1]).find("2.weight [5, 16]"), std::string::npos);
}

TEST(Ddp, SixteenBitHooksAverageWithinTheirPrecision) {
  torch::set_num_threads(1);
  Batch b = globalBatch();
  auto want = fullBatchGrads(b);
  for (auto type : {at::kHalf, at::kBFloat16}) {
    runRanks(4, "loopback", [&](comm::ProcessGroup& g) {
      auto net = makeNet();
      DDPOptions o;
      o.hook = castHook(type);
      o.bucketCapBytes = 300;
      DistributedDataParallel ddp(net, borrow(g), o);
      Batch mine = shard(b, g.rank(), 4);
      torch::nn::functional::cross_entropy(ddp.forward(mine.x), mine.y).backward();
      double rtol = type == at::kHalf ? 2e-3 : 1.6e-2;  // 11- and 8-bit mantissas, a few roundings
      expectClose(grads(*net), want, c10::toString(type), 1e-4, rtol);
    });
  }
}

TEST(Ddp, WorksOverSharedMemoryAndTcpTransports) {
  torch::set_num_threads(1);
  Batch b = globalBatch();
  auto want = fullBatchGrads(b);
  for (const char* transport : {"shm", "tcp"}) {
    runRanks(2, transport, [&](comm::ProcessGroup& g) {
      auto net = makeNet();
      DistributedDataParallel ddp(net, borrow(g));
      Batch mine = shard(b, g.rank(), 2);
      torch::nn::functional::cross_entropy(ddp.forward(mine.x), mine.y).backward();
      expectClose(grads(*net), want, transport);
    });
  }
}

}  // namespace
}  // namespace chorus::parallel
