// The tensor-parallel layers on threads-as-ranks at tp = 1, 2, 3, 4 (where the sizes divide):
// each layer's forward output and the gradients of its input and of every parameter
// (gathered with unshard) equal the unsplit reference, plain torch ops on the full tensors
// drawn by initNormal, within 1e-5 relative in float32. Also with sequence parallelism
// (column with a [B, T/k, in] input, row with a [B, T/k, out] output), a fused (blocks = 3)
// column layer, the vocabulary-parallel embedding with a padded vocabulary, and ParallelMLP.
//
// The reference never calls the modules under test; the per-rank slices of the reference
// are cut by pieceOf below, written independently of shardOf.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "chorus/parallel/tensor/layers.h"
#include "parallel/tensor_parallel_util.h"

namespace chorus::parallel {
namespace {

using tptest::collect;
using tptest::expectClose;
using tptest::Record;
using tptest::runTp;

constexpr int64_t B = 2, T = 4;
constexpr uint64_t kSeed = 1234;

// Rank r's piece of t along dim: `blocks` equal blocks, each cut in k, piece r of each.
torch::Tensor pieceOf(const torch::Tensor& t, int64_t dim, int r, int k, int blocks = 1) {
  std::vector<torch::Tensor> parts;
  for (const auto& block : t.chunk(blocks, dim)) parts.push_back(block.chunk(k, dim)[r]);
  return torch::cat(parts, dim);
}

// One linear layer's reference: y = x W^T + b with the gradients of sum(y * dy).
struct LinearRef {
  torch::Tensor x, w, b, y;
};
LinearRef linearRef(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, const torch::Tensor& dy) {
  LinearRef r{x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_(), {}};
  r.y = torch::linear(r.x, r.w, r.b);
  (r.y * dy).sum().backward();
  return r;
}

void setParameter(torch::Tensor& p, const torch::Tensor& value) {
  torch::NoGradGuard noGrad;
  p.copy_(value);
}

TEST(ColumnParallelLinear, MatchesTheUnsplitLayer) {
  const int64_t in = 6, out = 12;
  for (int blocks : {1, 3}) {
    for (bool gatherOutput : {false, true}) {
      for (int k : {1, 2, 3, 4}) {
        if (out % (k * blocks) != 0) continue;
        SCOPED_TRACE(chorus::str("blocks ", blocks, " gatherOutput ", gatherOutput, " tp ", k));
        torch::Tensor X = tptest::randn({B, T, in}, 1), dY = tptest::randn({B, T, out}, 2);
        torch::Tensor bias = tptest::randn({out}, 3);
        ColumnParallelLinearOptions o;
        o.in = in;
        o.out = out;
        o.blocks = blocks;
        o.gatherOutput = gatherOutput;
        o.seed = kSeed;
        o.name = "h.0.attn.qkv";
        auto records = runTp(k, [&](const TpGroup& tp, Record& rec) {
          ColumnParallelLinear m(o, tp);
          const int r = tpRank(tp);
          EXPECT_EQ(m->weight.sizes(), (std::vector<int64_t>{out / k, in}));
          setParameter(m->bias, pieceOf(bias, 0, r, k, blocks));
          torch::Tensor x = X.clone().requires_grad_();
          torch::Tensor y = m(x);
          (y * (gatherOutput ? dY : pieceOf(dY, -1, r, k, blocks))).sum().backward();
          rec = {{"y", y.detach()}, {"dx", x.grad()}, {"w", m->weight.detach()}, {"dw", m->weight.grad()}, {"db", m->bias.grad()}};
          const auto specs = shardSpecs(*m);
          EXPECT_EQ(specs.at("weight").dim, 0);
          EXPECT_EQ(specs.at("weight").blocks, blocks);
          EXPECT_EQ(specs.at("bias").dim, 0);
        });
        const torch::Tensor W = initNormal({out, in}, 0.02, kSeed, "h.0.attn.qkv.weight");
        LinearRef ref = linearRef(X, W, bias, dY);
        ShardSpec spec;
        spec.dim = 0;
        spec.blocks = blocks;
        spec.fullSize = spec.paddedSize = out;
        expectClose(unshard(collect(records, "w"), spec), W, "weight (init)", 0, 0);
        expectClose(unshard(collect(records, "dw"), spec), ref.w.grad(), "weight grad");
        expectClose(unshard(collect(records, "db"), spec), ref.b.grad(), "bias grad");
        for (int r = 0; r < k; ++r) {
          expectClose(records[r]["y"], gatherOutput ? ref.y : pieceOf(ref.y, -1, r, k, blocks), chorus::str("rank ", r, " output"));
          expectClose(records[r]["dx"], ref.x.grad(), chorus::str("rank ", r, " input grad"));
        }
      }
    }
  }
}

TEST(ColumnParallelLinear, SequenceParallelInput) {
  const int64_t in = 6, out = 8;
  for (int k : {1, 2, 4}) {
    SCOPED_TRACE(chorus::str("tp ", k));
    torch::Tensor X = tptest::randn({B, T, in}, 4), dY = tptest::randn({B, T, out}, 5);
    torch::Tensor bias = tptest::randn({out}, 6);
    ColumnParallelLinearOptions o;
    o.in = in;
    o.out = out;
    o.sequenceParallel = true;
    o.seed = kSeed;
    o.name = "fc1";
    auto records = runTp(k, [&](const TpGroup& tp, Record& rec) {
      ColumnParallelLinear m(o, tp);
      const int r = tpRank(tp);
      setParameter(m->bias, pieceOf(bias, 0, r, k));
      torch::Tensor x = pieceOf(X, 1, r, k).clone().requires_grad_();  // [B, T/k, in]
      torch::Tensor y = m(x);                                          // [B, T, out/k]
      (y * pieceOf(dY, -1, r, k)).sum().backward();
      rec = {{"y", y.detach()}, {"dx", x.grad()}, {"dw", m->weight.grad()}, {"db", m->bias.grad()}};
    });
    LinearRef ref = linearRef(X, initNormal({out, in}, 0.02, kSeed, "fc1.weight"), bias, dY);
    ShardSpec spec;
    spec.dim = 0;
    spec.fullSize = out;
    expectClose(unshard(collect(records, "dw"), spec), ref.w.grad(), "weight grad");
    expectClose(unshard(collect(records, "db"), spec), ref.b.grad(), "bias grad");
    for (int r = 0; r < k; ++r) {
      expectClose(records[r]["y"], pieceOf(ref.y, -1, r, k), chorus::str("rank ", r, " output"));
      expectClose(records[r]["dx"], pieceOf(ref.x.grad(), 1, r, k), chorus::str("rank ", r, " input grad"));
    }
  }
}

TEST(ColumnParallelLinear, NullGroupIsThePlainLayer) {
  ColumnParallelLinearOptions o;
  o.in = 3;
  o.out = 5;
  o.seed = 9;
  o.name = "lin";
  ColumnParallelLinear m(o, nullptr);
  torch::Tensor x = tptest::randn({2, 3}, 7);
  expectClose(m(x), torch::linear(x, initNormal({5, 3}, 0.02, 9, "lin.weight")), "output");
}

TEST(ColumnParallelLinear, RejectsOutNotDivisible) {
  runTp(4, [](const TpGroup& tp, Record&) {
    ColumnParallelLinearOptions o;
    o.in = 4;
    o.out = 10;
    o.name = "qkv";
    try {
      ColumnParallelLinear m(o, tp);
      ADD_FAILURE() << "no error for out 10 at tp 4";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("10"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("qkv"), std::string::npos) << e.what();
    }
  });
}

TEST(RowParallelLinear, MatchesTheUnsplitLayer) {
  const int64_t in = 12, out = 5;
  for (bool inputIsParallel : {true, false}) {
    for (int k : {1, 2, 3, 4}) {
      SCOPED_TRACE(chorus::str("inputIsParallel ", inputIsParallel, " tp ", k));
      torch::Tensor X = tptest::randn({B, T, in}, 11), dY = tptest::randn({B, T, out}, 12);
      torch::Tensor bias = tptest::randn({out}, 13);
      RowParallelLinearOptions o;
      o.in = in;
      o.out = out;
      o.inputIsParallel = inputIsParallel;
      o.initStd = 0.05;
      o.seed = kSeed;
      o.name = "h.1.mlp.fc2";
      auto records = runTp(k, [&](const TpGroup& tp, Record& rec) {
        RowParallelLinear m(o, tp);
        const int r = tpRank(tp);
        EXPECT_EQ(m->weight.sizes(), (std::vector<int64_t>{out, in / k}));
        setParameter(m->bias, bias);
        torch::Tensor x = (inputIsParallel ? pieceOf(X, -1, r, k) : X).clone().requires_grad_();
        torch::Tensor y = m(x);
        (y * dY).sum().backward();
        rec = {{"y", y.detach()}, {"dx", x.grad()}, {"dw", m->weight.grad()}, {"db", m->bias.grad()}};
        const auto specs = shardSpecs(*m);
        EXPECT_EQ(specs.at("weight").dim, 1);
        EXPECT_EQ(specs.at("bias").dim, -1);
        EXPECT_FALSE(specs.at("bias").sequenceParallel);
      });
      LinearRef ref = linearRef(X, initNormal({out, in}, 0.05, kSeed, "h.1.mlp.fc2.weight"), bias, dY);
      ShardSpec spec;
      spec.dim = 1;
      spec.fullSize = in;
      expectClose(unshard(collect(records, "dw"), spec), ref.w.grad(), "weight grad");
      for (int r = 0; r < k; ++r) {
        expectClose(records[r]["y"], ref.y, chorus::str("rank ", r, " output"));
        expectClose(records[r]["db"], ref.b.grad(), chorus::str("rank ", r, " bias grad"));
        expectClose(records[r]["dx"], inputIsParallel ? pieceOf(ref.x.grad(), -1, r, k) : ref.x.grad(),
                    chorus::str("rank ", r, " input grad"));
      }
    }
  }
}

TEST(RowParallelLinear, SequenceParallelOutput) {
  const int64_t in = 8, out = 6;
  for (int k : {1, 2, 4}) {
    SCOPED_TRACE(chorus::str("tp ", k));
    torch::Tensor X = tptest::randn({B, T, in}, 14), dY = tptest::randn({B, T, out}, 15);
    torch::Tensor bias = tptest::randn({out}, 16);
    RowParallelLinearOptions o;
    o.in = in;
    o.out = out;
    o.sequenceParallel = true;
    o.seed = kSeed;
    o.name = "proj";
    auto records = runTp(k, [&](const TpGroup& tp, Record& rec) {
      RowParallelLinear m(o, tp);
      const int r = tpRank(tp);
      setParameter(m->bias, bias);
      torch::Tensor x = pieceOf(X, -1, r, k).clone().requires_grad_();  // [B, T, in/k]
      torch::Tensor y = m(x);                                           // [B, T/k, out]
      (y * pieceOf(dY, 1, r, k)).sum().backward();
      EXPECT_TRUE(shardSpecs(*m).at("bias").sequenceParallel);
      rec["db_partial"] = m->bias.grad().clone();
      allReduceSequenceParallelGradients(*m, tp);
      rec.insert({{"y", y.detach()}, {"dx", x.grad()}, {"dw", m->weight.grad()}, {"db", m->bias.grad()}});
    });
    LinearRef ref = linearRef(X, initNormal({out, in}, 0.02, kSeed, "proj.weight"), bias, dY);
    ShardSpec spec;
    spec.dim = 1;
    spec.fullSize = in;
    expectClose(unshard(collect(records, "dw"), spec), ref.w.grad(), "weight grad");
    torch::Tensor partialSum = torch::zeros({out});
    for (int r = 0; r < k; ++r) {
      partialSum += records[r]["db_partial"];
      expectClose(records[r]["y"], pieceOf(ref.y, 1, r, k), chorus::str("rank ", r, " output"));
      expectClose(records[r]["db"], ref.b.grad(), chorus::str("rank ", r, " bias grad after the all-reduce"));
      expectClose(records[r]["dx"], pieceOf(ref.x.grad(), -1, r, k), chorus::str("rank ", r, " input grad"));
    }
    expectClose(partialSum, ref.b.grad(), "the partial bias grads sum to the full one");
  }
}

TEST(RowParallelLinear, RejectsInNotDivisibleAndSequenceParallelWithFullInput) {
  runTp(3, [](const TpGroup& tp, Record&) {
    RowParallelLinearOptions o;
    o.in = 8;
    o.out = 4;
    EXPECT_THROW(RowParallelLinear(o, tp), InvalidArgument);
    o.in = 9;
    o.inputIsParallel = false;
    o.sequenceParallel = true;
    EXPECT_THROW(RowParallelLinear(o, tp), InvalidArgument);
  });
}

// x -> gelu(x W1^T + b1) W2^T + b2: the reference of ParallelMLP.
TEST(ParallelMLP, MatchesTheUnsplitMlp) {
  const int64_t E = 4, F = 12;
  for (bool sequenceParallel : {false, true}) {
    for (int k : {1, 2, 3, 4}) {
      if (sequenceParallel && T % k != 0) continue;
      SCOPED_TRACE(chorus::str("sequenceParallel ", sequenceParallel, " tp ", k));
      torch::Tensor X = tptest::randn({B, T, E}, 21), dY = tptest::randn({B, T, E}, 22);
      torch::Tensor b1 = tptest::randn({F}, 23), b2 = tptest::randn({E}, 24);
      ParallelMLPOptions o;
      o.embed = E;
      o.hidden = F;
      o.sequenceParallel = sequenceParallel;
      o.initStd = 0.3;
      o.outputInitStd = 0.2;
      o.seed = kSeed;
      o.name = "h.2.mlp";
      auto records = runTp(k, [&](const TpGroup& tp, Record& rec) {
        ParallelMLP m(o, tp);
        const int r = tpRank(tp);
        setParameter(m->fc1->bias, pieceOf(b1, 0, r, k));
        setParameter(m->fc2->bias, b2);
        torch::Tensor x = (sequenceParallel ? pieceOf(X, 1, r, k) : X).clone().requires_grad_();
        torch::Tensor y = m(x);
        (y * (sequenceParallel ? pieceOf(dY, 1, r, k) : dY)).sum().backward();
        allReduceSequenceParallelGradients(*m, tp);
        rec = {{"y", y.detach()}, {"dx", x.grad()}};
        for (const auto& p : m->named_parameters()) rec["d" + p.key()] = p.value().grad();
        EXPECT_EQ(shardSpecs(*m).size(), 4u);
      });
      auto w1 = initNormal({F, E}, 0.3, kSeed, "h.2.mlp.fc1.weight").requires_grad_();
      auto w2 = initNormal({E, F}, 0.2, kSeed, "h.2.mlp.fc2.weight").requires_grad_();
      auto rb1 = b1.clone().requires_grad_(), rb2 = b2.clone().requires_grad_();
      auto rx = X.clone().requires_grad_();
      auto ry = torch::linear(torch::gelu(torch::linear(rx, w1, rb1)), w2, rb2);
      (ry * dY).sum().backward();
      ShardSpec col, row;
      col.dim = 0;
      row.dim = 1;
      expectClose(unshard(collect(records, "dfc1.weight"), col), w1.grad(), "fc1.weight grad");
      expectClose(unshard(collect(records, "dfc1.bias"), col), rb1.grad(), "fc1.bias grad");
      expectClose(unshard(collect(records, "dfc2.weight"), row), w2.grad(), "fc2.weight grad");
      for (int r = 0; r < k; ++r) {
        expectClose(records[r]["dfc2.bias"], rb2.grad(), chorus::str("rank ", r, " fc2.bias grad"));
        expectClose(records[r]["y"], sequenceParallel ? pieceOf(ry, 1, r, k) : ry, chorus::str("rank ", r, " output"));
        expectClose(records[r]["dx"], sequenceParallel ? pieceOf(rx.grad(), 1, r, k) : rx.grad(),
                    chorus::str("rank ", r, " input grad"));
      }
    }
  }
}

TEST(VocabParallelEmbedding, MatchesTheUnsplitEmbeddingWithPaddedVocabulary) {
  const int64_t V = 10, D = 4;
  // Every id of the vocabulary, some twice, so every rank's range is used.
  const torch::Tensor ids = torch::tensor({3, 0, 9, 4, 7, 1, 8, 2, 6, 5, 9, 0}, torch::kLong).view({2, 6});
  for (bool sequenceParallel : {false, true}) {
    for (int k : {1, 2, 3, 4}) {
      if (sequenceParallel && ids.size(1) % k != 0) continue;
      SCOPED_TRACE(chorus::str("sequenceParallel ", sequenceParallel, " tp ", k));
      const int64_t padded = (V + k - 1) / k * k, per = padded / k;
      torch::Tensor dY = tptest::randn({2, 6, D}, 31);
      VocabParallelEmbeddingOptions o;
      o.vocab = V;
      o.dim = D;
      o.initStd = 1.0;
      o.seed = kSeed;
      o.name = "wte";
      o.sequenceParallel = sequenceParallel;
      auto records = runTp(k, [&](const TpGroup& tp, Record& rec) {
        VocabParallelEmbedding m(o, tp);
        const int r = tpRank(tp);
        EXPECT_EQ(m->paddedVocab(), padded);
        EXPECT_EQ(m->vocabStart(), r * per);
        EXPECT_EQ(m->vocabEnd(), (r + 1) * per);
        EXPECT_EQ(m->weight.sizes(), (std::vector<int64_t>{per, D}));
        torch::Tensor y = m(ids);
        (y * (sequenceParallel ? pieceOf(dY, 1, r, k) : dY)).sum().backward();
        rec = {{"y", y.detach()}, {"w", m->weight.detach()}, {"dw", m->weight.grad()}};
        const ShardSpec s = shardSpecs(*m).at("weight");
        EXPECT_EQ(s.fullSize, V);
        EXPECT_EQ(s.paddedSize, padded);
      });
      torch::Tensor W = initNormal({V, D}, 1.0, kSeed, "wte.weight").requires_grad_();
      torch::Tensor ry = torch::embedding(W, ids);
      (ry * dY).sum().backward();
      // The padded rows (the last rank's rows >= V) are zero and get no gradient.
      torch::Tensor lastW = records[k - 1]["w"], lastDw = records[k - 1]["dw"];
      const int64_t realRows = V - (k - 1) * per;
      EXPECT_EQ(lastW.narrow(0, realRows, per - realRows).abs().sum().item<double>(), 0.0);
      EXPECT_EQ(lastDw.narrow(0, realRows, per - realRows).abs().sum().item<double>(), 0.0);
      ShardSpec spec;
      spec.dim = 0;
      spec.fullSize = V;
      spec.paddedSize = padded;
      expectClose(unshard(collect(records, "w"), spec), W, "weight (init)", 0, 0);
      expectClose(unshard(collect(records, "dw"), spec), W.grad(), "weight grad");
      for (int r = 0; r < k; ++r)
        expectClose(records[r]["y"], sequenceParallel ? pieceOf(ry, 1, r, k) : ry, chorus::str("rank ", r, " output"));
    }
  }
}

}  // namespace
}  // namespace chorus::parallel
