// The compressing communication hooks: compressedAllreduce's sparse and dense paths, the
// codec hook inside DDP, and PowerSGD's error feedback and low-rank exactness.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cstring>
#include <mutex>
#include <span>

#include "chorus/compress/compressed_allreduce.h"
#include "chorus/compress/factory.h"
#include "chorus/parallel/compress_adapter.h"
#include "chorus/parallel/data/compression_hooks.h"
#include "chorus/parallel/data/ddp.h"
#include "util/rank_threads.h"

namespace chorus::parallel {
namespace {

using testutil::runRanks;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

// Test codecs: "dense" sends every float; "nonzero" sends the nonzero entries as (index,
// value) pairs, a sparse message.
class DenseCodec : public compress::Codec {
 public:
  std::string name() const override { return "dense"; }
  compress::Message encode(std::span<const float> g, compress::CodecState&) override {
    compress::Message m(g.size() * 4);
    std::memcpy(m.data(), g.data(), m.size());
    return m;
  }
  void decodeAdd(const compress::Message& m, std::span<float> out) const override {
    const float* v = reinterpret_cast<const float*>(m.data());
    for (size_t i = 0; i < out.size(); ++i) out[i] += v[i];
  }
};
class NonzeroCodec : public compress::Codec {
 public:
  std::string name() const override { return "nonzero"; }
  compress::Message encode(std::span<const float> g, compress::CodecState&) override {
    compress::Message m;
    const float* v = g.data();
    for (int32_t i = 0; i < static_cast<int32_t>(g.size()); ++i) {
      if (v[i] == 0) continue;
      m.resize(m.size() + 8);
      std::memcpy(m.data() + m.size() - 8, &i, 4);
      std::memcpy(m.data() + m.size() - 4, &v[i], 4);
    }
    return m;
  }
  void decodeAdd(const compress::Message& m, std::span<float> out) const override {
    float* o = out.data();
    for (size_t p = 0; p < m.size(); p += 8) {
      int32_t i;
      float x;
      std::memcpy(&i, m.data() + p, 4);
      std::memcpy(&x, m.data() + p + 4, 4);
      o[i] += x;
    }
  }
  int64_t sparseCount(const compress::Message& m) const override { return static_cast<int64_t>(m.size() / 8); }
};

TEST(CompressedAllreduce, SparseEqualsDenseOnSparseInputsAndSwitchesToDenseWhenCheaper) {
  for (int world : {1, 2, 3, 4}) {
    for (int nonzeros : {3, 900}) {  // of 1000: sparse pairs, then too dense to pay
      runRanks(world, "loopback", [&](comm::ProcessGroup& g) {
        auto gen = at::detail::createCPUGenerator(100 + g.rank());
        torch::Tensor x = torch::zeros({1000});
        torch::Tensor idx = torch::randperm(1000, gen, torch::kLong).narrow(0, 0, nonzeros);
        x.index_put_({idx}, torch::randn({nonzeros}, gen));
        torch::Tensor dense = x.clone();
        comm::AllreduceOptions o;
        o.data = dense.data_ptr();
        o.count = 1000;
        o.op = ReduceOp::kAvg;
        g.allreduce(o);
        NonzeroCodec codec;
        compress::CodecState st;
        auto r = compress::compressedAllreduce(g, codec, mutableFloatSpan(x, "test"), st);
        EXPECT_TRUE(torch::allclose(x, dense, 1e-6, 1e-7)) << "world " << world << " nonzeros " << nonzeros;
        EXPECT_EQ(r.wentDense, world > 1 && nonzeros == 900);
        EXPECT_EQ(r.messageBytes, static_cast<uint64_t>(nonzeros) * 8);
      });
    }
  }
  EXPECT_FALSE(compress::denseIsCheaper(1000, 4 * 100 * 8, 4));  // 2400 bytes sent per rank against 6000
  EXPECT_FALSE(compress::denseIsCheaper(1000, 8000, 4));         // 6000 against 6000: stay sparse
  EXPECT_TRUE(compress::denseIsCheaper(1000, 4 * 500 * 8, 4));
}

TEST(CodecHook, DdpWithALosslessCodecMatchesPlainDdp) {
  torch::set_num_threads(1);
  for (int world : {2, 3}) {
    std::vector<torch::Tensor> plain(world), coded(world);
    for (bool useCodec : {false, true}) {
      runRanks(world, "loopback", [&](comm::ProcessGroup& g) {
        static std::mutex initMu;  // ranks are threads sharing torch's generator
        std::unique_lock<std::mutex> lock(initMu);
        torch::manual_seed(1);
        torch::nn::Sequential net(torch::nn::Linear(8, 16), torch::nn::ReLU(), torch::nn::Linear(16, 3));
        lock.unlock();
        DDPOptions o;
        o.bucketCapBytes = 256;
        if (useCodec) o.hook = codecHook(std::make_shared<DenseCodec>());
        DistributedDataParallel ddp(net, borrow(g), o);
        auto gen = at::detail::createCPUGenerator(g.rank());
        for (int step = 0; step < 3; ++step) {
          for (auto& p : net->parameters()) p.mutable_grad().zero_();
          ddp.forward(torch::randn({4, 8}, gen)).pow(2).sum().backward();
        }
        std::vector<torch::Tensor> gs;
        for (auto& p : net->parameters()) gs.push_back(p.grad().reshape({-1}));
        (useCodec ? coded : plain)[g.rank()] = torch::cat(gs);
      });
    }
    for (int r = 0; r < world; ++r) EXPECT_TRUE(torch::allclose(coded[r], plain[r], 1e-5, 1e-6)) << "rank " << r;
  }
}

TEST(PowerSgdHook, RecoversALowRankGradientExactlyAndKeepsTheResidual) {
  torch::set_num_threads(1);
  runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    auto hook = powerSgdHook(2, /*seed=*/3);
    // One 32 x 24 matrix (rank 1 on every rank: u v^T scaled by the rank) and one vector.
    auto gen = at::detail::createCPUGenerator(9);
    torch::Tensor u = torch::randn({32, 1}, gen), v = torch::randn({1, 24}, gen);
    torch::Tensor m = torch::matmul(u, v) * (g.rank() + 1);
    torch::Tensor bias = torch::full({5}, static_cast<float>(g.rank()));
    GradBucket b;
    b.buffer = torch::cat({m.reshape({-1}), bias});
    b.names = {"w", "b"};
    b.shapes = {{32, 24}, {5}};
    b.offsets = {0, 32 * 24};
    hook->start(g, b)->wait();
    torch::Tensor avgM = torch::matmul(u, v) * 1.5;  // (1 + 2) / 2
    EXPECT_TRUE(torch::allclose(b.buffer.narrow(0, 0, 32 * 24).view({32, 24}), avgM, 1e-4, 1e-5));
    EXPECT_TRUE(torch::allclose(b.buffer.narrow(0, 32 * 24, 5), torch::full({5}, 0.5f)));
    // Sent: P (32 x 2) and Q (24 x 2) for the matrix, 5 floats dense.
    EXPECT_EQ(hook->lastMessageBytes(), static_cast<uint64_t>((32 * 2 + 24 * 2 + 5) * 4));
    EXPECT_EQ(hook->lastDenseBytes(), static_cast<uint64_t>((32 * 24 + 5) * 4));

    // A full-rank gradient: approximation + new residual == gradient + old residual.
    auto gen2 = at::detail::createCPUGenerator(20 + g.rank());
    torch::Tensor full = torch::randn({32, 24}, gen2);
    torch::Tensor before = bufferTensor(hook->states()[0], "residual.0").view({32, 24});
    GradBucket c = b;
    c.buffer = torch::cat({full.reshape({-1}), bias});
    torch::Tensor input = full.clone();
    hook->start(g, c)->wait();
    torch::Tensor approx = c.buffer.narrow(0, 0, 32 * 24).view({32, 24});
    torch::Tensor after = bufferTensor(hook->states()[0], "residual.0").view({32, 24});
    // Error feedback: what went out (the shared approximation) plus what this rank keeps is
    // exactly this rank's gradient plus its old residual.
    EXPECT_GT(after.abs().sum().item<double>(), 0.0);
    EXPECT_TRUE(torch::allclose(approx + after, input + before, 1e-5, 1e-5));
  });
}

// scope = inter-host on ranks that pretend to be on two hosts: each host sums densely to its
// first rank, only those run the codec (PowerSGD) between them, and the result is the average
// over every rank. Only the first ranks send compressed messages; the others report none.
TEST(CompressionHooks, InterHostScopeCompressesOnlyBetweenHosts) {
  torch::set_num_threads(1);
  for (const std::vector<int>& hosts : {std::vector<int>{0, 0, 1, 1}, std::vector<int>{0, 0, 1}}) {
    const int world = static_cast<int>(hosts.size());
    testutil::RankOptions opts;
    opts.hosts = hosts;
    runRanks(world, opts, [&](comm::ProcessGroup& g) {
      ASSERT_TRUE(g.links().hierarchical());
      const bool first = g.rank() == 0 || hosts[static_cast<size_t>(g.rank())] != hosts[static_cast<size_t>(g.rank() - 1)];
      // A lossless sparse codec: the average of every rank's sparse gradient, exactly.
      auto hook = codecHook(std::make_shared<NonzeroCodec>(), 0, 0, CompressionScope::kInterHost);
      GradBucket b;
      b.buffer = torch::zeros({100});
      b.buffer[g.rank() * 7] = static_cast<float>(g.rank() + 1);
      b.buffer[99] = 2.0f;
      b.names = {"w"};
      b.shapes = {{100}};
      b.offsets = {0};
      hook->start(g, b)->wait();
      torch::Tensor want = torch::zeros({100});
      for (int r = 0; r < world; ++r) want[r * 7] = static_cast<float>(r + 1) / static_cast<float>(world);
      want[99] = 2.0f;
      EXPECT_TRUE(torch::allclose(b.buffer, want, 1e-6, 1e-7)) << "rank " << g.rank() << " of " << world;
      // A host's first rank sends its host's nonzeros (its own and its neighbours', plus index 99).
      EXPECT_EQ(hook->lastMessageBytes() > 0, first) << "rank " << g.rank();

      // PowerSGD of rank 2 on a rank-1 matrix (every rank u v^T times rank + 1): exact.
      auto psgd = powerSgdHook(2, /*seed=*/3, 0, CompressionScope::kInterHost);
      auto gen = at::detail::createCPUGenerator(9);
      torch::Tensor u = torch::randn({32, 1}, gen), v = torch::randn({1, 24}, gen);
      GradBucket c;
      c.buffer = (torch::matmul(u, v) * (g.rank() + 1)).reshape({-1});
      c.names = {"w"};
      c.shapes = {{32, 24}};
      c.offsets = {0};
      psgd->start(g, c)->wait();
      const float mean = static_cast<float>(world + 1) / 2.0f;
      EXPECT_TRUE(torch::allclose(c.buffer.view({32, 24}), torch::matmul(u, v) * mean, 1e-4, 1e-4)) << "rank " << g.rank();
      EXPECT_EQ(psgd->lastMessageBytes(), first ? static_cast<uint64_t>((32 * 2 + 24 * 2) * 4) : 0u);
    });
  }
  EXPECT_THROW(parseCompressionScope("everywhere"), InvalidArgument);
}

// The first denseSteps calls per bucket are a plain average; the codec runs after them, and
// the count lives in the bucket's state (so checkpoints carry it).
TEST(CompressionHooks, DenseWarmupStepsThenCompress) {
  torch::set_num_threads(1);
  runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    compress::CodecConfig topkConfig;
    topkConfig.method = "topk";
    topkConfig.ratio = 0.1;
    auto topk = std::shared_ptr<compress::Codec>(compress::makeCodec(topkConfig));
    for (auto hook : {codecHook(topk, 1, /*denseSteps=*/2), powerSgdHook(1, 1, /*denseSteps=*/2)}) {
      SCOPED_TRACE(hook->name());
      for (int call = 1; call <= 3; ++call) {
        auto gen = at::detail::createCPUGenerator(40 + call + 10 * g.rank());
        torch::Tensor mine = torch::randn({16, 12}, gen);
        torch::Tensor other = torch::randn({16, 12}, at::detail::createCPUGenerator(40 + call + 10 * (1 - g.rank())));
        torch::Tensor avg = (mine + other) / 2;
        GradBucket b;
        b.buffer = mine.reshape({-1}).clone();
        b.names = {"w"};
        b.shapes = {{16, 12}};
        b.offsets = {0};
        hook->start(g, b)->wait();
        const bool dense = torch::allclose(b.buffer.view({16, 12}), avg, 1e-6, 1e-6);
        EXPECT_EQ(dense, call <= 2) << "call " << call;
        EXPECT_EQ(hook->lastMessageBytes() == static_cast<uint64_t>(16 * 12 * 4), call <= 2) << "call " << call;
        EXPECT_EQ(hook->states()[0].scalars["calls"], call);
      }
    }
  });
}

}  // namespace
}  // namespace chorus::parallel
