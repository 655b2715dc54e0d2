// Tensor parallelism's building blocks on threads-as-ranks (loopback), tp = 1, 2, 3, 4:
// the tensor collectives along any dimension; each conjugate autograd function's forward and
// backward against the formula it stands for, computed here from every rank's inputs; the
// vocabulary-parallel cross-entropy against torch's cross_entropy on the full logits
// (padded vocabularies, large logits, the gradient's scale); sharding with explicit values;
// parameter seeds; the RNG tracker and dropout.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <functional>
#include <set>

#include "chorus/parallel/tensor/communication.h"
#include "chorus/parallel/tensor/cross_entropy.h"
#include "chorus/parallel/tensor/layers.h"
#include "chorus/parallel/tensor/rng.h"
#include "chorus/parallel/tensor/sharding.h"
#include "parallel/tensor_parallel_util.h"

namespace chorus::parallel {
namespace {

using tptest::expectClose;
using tptest::Record;
using tptest::runTp;

// Rank r's input: different on every rank.
torch::Tensor inputOf(int r, at::IntArrayRef shape, uint64_t salt = 0) { return tptest::randn(shape, 100 + 10 * r + salt); }

TEST(TensorCollectives, AllGatherAndReduceScatterAlongEveryDimension) {
  for (int k : {1, 2, 3, 4}) {
    for (int64_t dim : {0, 1, 2, -1}) {
      SCOPED_TRACE(chorus::str("tp ", k, " dim ", dim));
      const std::vector<int64_t> shape = {2 * k, 3 * k, k + 1};
      const int64_t d = dim < 0 ? dim + 3 : dim;
      if (shape[d] % k != 0) continue;
      auto records = runTp(k, [&](const TpGroup& tp, Record& rec) {
        torch::Tensor x = inputOf(tpRank(tp), shape);
        rec["gathered"] = allGatherAlong(x, dim, tp);
        rec["scattered"] = reduceScatterAlong(x, dim, tp);
        rec["sum"] = allReduceSum(x, tp);
        rec["max"] = allReduceMax(x, tp);
        rec["slice"] = sliceAlong(x, dim, tp);
        rec["x"] = x;
      });
      std::vector<torch::Tensor> xs;
      for (int r = 0; r < k; ++r) xs.push_back(inputOf(r, shape));
      torch::Tensor sum = torch::stack(xs).sum(0), max = std::get<0>(torch::stack(xs).max(0));
      for (int r = 0; r < k; ++r) {
        expectClose(records[r]["gathered"], torch::cat(xs, dim), "all-gather", 0, 0);
        expectClose(records[r]["scattered"], sum.chunk(k, dim)[r], "reduce-scatter");
        expectClose(records[r]["sum"], sum, "all-reduce sum");
        expectClose(records[r]["max"], max, "all-reduce max", 0, 0);
        expectClose(records[r]["slice"], xs[r].chunk(k, dim)[r], "slice", 0, 0);
        expectClose(records[r]["x"], xs[r], "input unchanged", 0, 0);
      }
    }
  }
}

TEST(TensorCollectives, NullGroupAndErrors) {
  torch::Tensor x = torch::ones({2, 3});
  EXPECT_TRUE(allReduceSum(x, nullptr).is_same(x));
  EXPECT_TRUE(allGatherAlong(x, 1, nullptr).is_same(x));
  EXPECT_EQ(tpSize(nullptr), 1);
  EXPECT_EQ(tpRank(nullptr), 0);
  runTp(2, [](const TpGroup& tp, Record&) {
    EXPECT_THROW(reduceScatterAlong(torch::ones({3, 2}), 0, tp), InvalidArgument);
    EXPECT_THROW(allGatherAlong(torch::ones({3, 2}), 2, tp), InvalidArgument);
    EXPECT_THROW(scatterToSequenceParallelRegion(torch::ones({2, 3, 4}), tp), InvalidArgument);
    EXPECT_THROW(scatterToSequenceParallelRegion(torch::ones({4}), tp), InvalidArgument);
  });
}

// One conjugate function: the forward and the input gradient expected from every rank's
// input x_q and every rank's output weight w_q (loss_r = sum(y_r * w_r)).
struct ConjugateCase {
  std::string name;
  std::function<torch::Tensor(const torch::Tensor&, const TpGroup&)> fn;
  bool replicatedInput;  // the input is the same on every rank
  std::function<torch::Tensor(const std::vector<torch::Tensor>& xs, int r, int k)> forward;
  std::function<torch::Tensor(const std::vector<torch::Tensor>& ws, int r, int k)> grad;
};

torch::Tensor sumOf(const std::vector<torch::Tensor>& ts) { return torch::stack(ts).sum(0); }

std::vector<ConjugateCase> conjugateCases() {
  const int64_t last = -1, seq = 1;
  return {
      {"copyTo", copyToTensorParallelRegion, true, [](auto& xs, int, int) { return xs[0]; },
       [](auto& ws, int, int) { return sumOf(ws); }},
      {"reduceFrom", reduceFromTensorParallelRegion, false, [](auto& xs, int, int) { return sumOf(xs); },
       [](auto& ws, int r, int) { return ws[r]; }},
      {"scatterTo", scatterToTensorParallelRegion, true, [=](auto& xs, int r, int k) { return xs[0].chunk(k, last)[r]; },
       [=](auto& ws, int, int) { return torch::cat(ws, last); }},
      {"gatherFrom", gatherFromTensorParallelRegion, false, [=](auto& xs, int, int) { return torch::cat(xs, last); },
       [=](auto& ws, int r, int k) { return ws[r].chunk(k, last)[r]; }},
      {"scatterToSequence", scatterToSequenceParallelRegion, true, [=](auto& xs, int r, int k) { return xs[0].chunk(k, seq)[r]; },
       [=](auto& ws, int, int) { return torch::cat(ws, seq); }},
      {"gatherFromSequence", gatherFromSequenceParallelRegion, false, [=](auto& xs, int, int) { return torch::cat(xs, seq); },
       [=](auto& ws, int r, int k) {
         std::vector<torch::Tensor> pieces;
         for (const auto& w : ws) pieces.push_back(w.chunk(k, seq)[r]);
         return sumOf(pieces);
       }},
      {"reduceScatterToSequence", reduceScatterToSequenceParallelRegion, false,
       [=](auto& xs, int r, int k) { return sumOf(xs).chunk(k, seq)[r]; }, [=](auto& ws, int, int) { return torch::cat(ws, seq); }},
  };
}

TEST(ConjugateFunctions, ForwardAndBackwardMatchTheirFormulas) {
  for (const auto& c : conjugateCases()) {
    for (int k : {1, 2, 3, 4}) {
      SCOPED_TRACE(chorus::str(c.name, " tp ", k));
      // [B, T, E] with T and E divisible by k; the input of a gather is already a piece.
      const std::vector<int64_t> shape = {2, 2 * k, 3 * k};
      auto xOf = [&](int r) { return inputOf(c.replicatedInput ? 0 : r, shape); };
      std::vector<torch::Tensor> xs;
      for (int r = 0; r < k; ++r) xs.push_back(xOf(r));
      std::vector<torch::Tensor> ws;
      for (int r = 0; r < k; ++r) ws.push_back(inputOf(r, c.forward(xs, r, k).sizes(), 7));
      auto records = runTp(k, [&](const TpGroup& tp, Record& rec) {
        const int r = tpRank(tp);
        torch::Tensor x = xOf(r).requires_grad_();
        torch::Tensor y = c.fn(x, tp);
        (y * ws[r]).sum().backward();
        rec = {{"y", y.detach()}, {"dx", x.grad()}};
      });
      for (int r = 0; r < k; ++r) {
        expectClose(records[r]["y"], c.forward(xs, r, k), chorus::str("rank ", r, " forward"));
        expectClose(records[r]["dx"], c.grad(ws, r, k), chorus::str("rank ", r, " input grad"));
      }
    }
  }
}

// The full logits [2, 3, V], with large values in some rows (the max-shift must hold).
torch::Tensor fullLogits(int64_t V, double offset) {
  torch::Tensor l = tptest::randn({2, 3, V}, 41) * 3;
  l[1] += offset;
  return l;
}

TEST(VocabParallelCrossEntropy, MatchesCrossEntropyOnTheFullLogits) {
  const torch::Tensor targets = torch::tensor({0, 9, 4, 7, 9, 2}, torch::kLong).view({2, 3});
  for (int64_t V : {10, 12}) {
    for (double offset : {0.0, 1000.0}) {
      for (int k : {1, 2, 3, 4}) {
        SCOPED_TRACE(chorus::str("V ", V, " offset ", offset, " tp ", k));
        const int64_t padded = (V + k - 1) / k * k, per = padded / k;
        torch::Tensor L = fullLogits(V, offset);
        // Padded columns hold values that would dominate the softmax if they were not masked.
        torch::Tensor Lpadded = torch::cat({L, torch::full({2, 3, padded - V}, 50.0) + offset}, -1);
        auto records = runTp(k, [&](const TpGroup& tp, Record& rec) {
          const int r = tpRank(tp);
          torch::Tensor shard = Lpadded.narrow(-1, r * per, per).clone().requires_grad_();
          torch::Tensor loss = vocabParallelCrossEntropy(shard, targets, r * per, V, tp);
          (loss * 2.5).backward();
          rec = {{"loss", loss.detach()}, {"grad", shard.grad()}};
        });
        torch::Tensor ref = L.clone().requires_grad_();
        torch::Tensor refLoss = torch::nn::functional::cross_entropy(ref.view({-1, V}), targets.view({-1}));
        (refLoss * 2.5).backward();
        torch::Tensor refGrad = torch::cat({ref.grad(), torch::zeros({2, 3, padded - V})}, -1);
        for (int r = 0; r < k; ++r) {
          expectClose(records[r]["loss"], refLoss.detach(), chorus::str("rank ", r, " loss"));
          expectClose(records[r]["grad"], refGrad.narrow(-1, r * per, per), chorus::str("rank ", r, " grad"), 1e-5, 1e-7);
        }
      }
    }
  }
}

TEST(VocabParallelCrossEntropy, Float64AndTargetErrors) {
  const int64_t V = 7;
  torch::Tensor L = tptest::randn({5, V}, 43).to(torch::kDouble);
  torch::Tensor t = torch::tensor({6, 0, 3, 3, 1}, torch::kLong);
  auto records = runTp(2, [&](const TpGroup& tp, Record& rec) {
    const int r = tpRank(tp);
    torch::Tensor padded = torch::cat({L, torch::zeros({5, 1}, torch::kDouble)}, 1);
    rec["loss"] = vocabParallelCrossEntropy(padded.narrow(1, 4 * r, 4), t, 4 * r, V, tp);
    EXPECT_THROW(vocabParallelCrossEntropy(padded.narrow(1, 4 * r, 4), t + 1, 4 * r, V, tp), InvalidArgument);
    EXPECT_THROW(vocabParallelCrossEntropy(padded.narrow(1, 4 * r, 4), t.narrow(0, 0, 4), 4 * r, V, tp), InvalidArgument);
  });
  torch::Tensor want = torch::nn::functional::cross_entropy(L, t);
  EXPECT_EQ(records[0]["loss"].scalar_type(), torch::kDouble);
  expectClose(records[0]["loss"], want, "rank 0 loss", 1e-12, 1e-12);
  expectClose(records[1]["loss"], want, "rank 1 loss", 1e-12, 1e-12);
}

TEST(Sharding, ShardOfCutsBlocksAndPadsExplicitly) {
  const torch::Tensor full = torch::arange(12, torch::kFloat).view({6, 2});
  ShardSpec fused;
  fused.dim = 0;
  fused.blocks = 3;
  fused.fullSize = fused.paddedSize = 6;
  expectClose(shardOf(full, fused, 0, 2), torch::tensor({0, 1, 4, 5, 8, 9}, torch::kFloat).view({3, 2}), "block rank 0", 0, 0);
  expectClose(shardOf(full, fused, 1, 2), torch::tensor({2, 3, 6, 7, 10, 11}, torch::kFloat).view({3, 2}), "block rank 1", 0, 0);
  expectClose(unshard({shardOf(full, fused, 0, 2), shardOf(full, fused, 1, 2)}, fused), full, "block round trip", 0, 0);

  ShardSpec vocab;
  vocab.dim = 0;
  vocab.fullSize = 5;
  vocab.paddedSize = paddedSizeFor(5, 4);
  EXPECT_EQ(vocab.paddedSize, 8);
  const torch::Tensor v = torch::arange(1, 6, torch::kFloat);
  expectClose(shardOf(v, vocab, 2, 4), torch::tensor({5, 0}, torch::kFloat), "padded rank 2", 0, 0);
  expectClose(shardOf(v, vocab, 3, 4), torch::tensor({0, 0}, torch::kFloat), "padded rank 3", 0, 0);
  std::vector<torch::Tensor> shards;
  for (int r = 0; r < 4; ++r) shards.push_back(shardOf(v, vocab, r, 4));
  expectClose(unshard(shards, vocab), v, "padding dropped", 0, 0);

  ShardSpec cols;
  cols.dim = 1;
  cols.fullSize = 6;
  const torch::Tensor m = torch::arange(18, torch::kFloat).view({3, 6});
  expectClose(shardOf(m, cols, 1, 3), m.narrow(1, 2, 2), "columns rank 1", 0, 0);
  expectClose(shardOf(m, ShardSpec{}, 1, 3), m, "replicated", 0, 0);

  EXPECT_THROW(shardOf(m, cols, 0, 4), InvalidArgument);  // 6 columns over 4 ranks
  EXPECT_THROW(shardOf(m, cols, 3, 3), InvalidArgument);  // no rank 3 of 3
  ShardSpec wrongSize = cols;
  wrongSize.fullSize = 7;
  EXPECT_THROW(shardOf(m, wrongSize, 0, 2), InvalidArgument);
}

struct TwoLayersImpl : torch::nn::Module {
  TwoLayersImpl(const TpGroup& tp) {
    ColumnParallelLinearOptions c;
    c.in = 4;
    c.out = 8;
    c.name = "inner.col";
    inner = register_module("inner", torch::nn::Sequential());
    inner->push_back("col", ColumnParallelLinear(c, tp));
    plain = register_module("plain", torch::nn::Linear(8, 2));
  }
  torch::nn::Sequential inner{nullptr};
  torch::nn::Linear plain{nullptr};
};
TORCH_MODULE(TwoLayers);

TEST(Sharding, ShardSpecsFindsNestedModulesByFullName) {
  runTp(2, [](const TpGroup& tp, Record&) {
    TwoLayers m(tp);
    const auto specs = shardSpecs(*m);
    std::set<std::string> names, want;
    for (const auto& [name, spec] : specs) names.insert(name);
    for (const auto& p : m->named_parameters()) want.insert(p.key());
    EXPECT_EQ(names, want);
    EXPECT_EQ(specs.at("inner.col.weight").dim, 0);
    EXPECT_EQ(specs.at("inner.col.weight").fullSize, 8);
    EXPECT_EQ(specs.at("inner.col.bias").dim, 0);
    EXPECT_EQ(specs.at("plain.weight").dim, -1);
    EXPECT_EQ(specs.at("plain.bias").dim, -1);
  });
}

TEST(Sharding, ParameterSeedsAndInitNormal) {
  EXPECT_EQ(parameterSeed(1, "wte.weight"), parameterSeed(1, "wte.weight"));
  EXPECT_NE(parameterSeed(1, "wte.weight"), parameterSeed(2, "wte.weight"));
  EXPECT_NE(parameterSeed(1, "h.0.mlp.fc1.weight"), parameterSeed(1, "h.0.mlp.fc2.weight"));
  torch::Tensor a = initNormal({64, 64}, 0.5, 3, "a"), b = initNormal({64, 64}, 0.5, 3, "a");
  expectClose(a, b, "the same draw twice", 0, 0);
  EXPECT_FALSE(torch::equal(a, initNormal({64, 64}, 0.5, 3, "b")));
  EXPECT_NEAR(a.std().item<double>(), 0.5, 0.03);
  EXPECT_NEAR(a.mean().item<double>(), 0.0, 0.03);
  EXPECT_EQ(a.scalar_type(), torch::kFloat);
  EXPECT_EQ(initNormal({3}, 0.0, 3, "z").abs().sum().item<double>(), 0.0);
}

TEST(TensorParallelRng, ParallelDiffersPerTpRankAndReplicatedDoesNot) {
  const int k = 4;
  auto records = runTp(k, [&](const TpGroup& tp, Record& rec) {
    TensorParallelRng rng(42, tpRank(tp));
    rec["parallel"] = torch::rand({16}, rng.parallel());
    rec["replicated"] = torch::rand({16}, rng.replicated());
    rec["dropped"] = dropout(torch::ones({64}), 0.5, rng.replicated());
    rng.reset();
    rec["parallelAgain"] = torch::rand({16}, rng.parallel());
  });
  for (int r = 0; r < k; ++r) {
    expectClose(records[r]["replicated"], records[0]["replicated"], "replicated", 0, 0);
    expectClose(records[r]["dropped"], records[0]["dropped"], "replicated dropout mask", 0, 0);
    expectClose(records[r]["parallelAgain"], records[r]["parallel"], "reset", 0, 0);
    EXPECT_FALSE(torch::equal(records[r]["parallel"], records[r]["replicated"]));
    for (int q = 0; q < r; ++q) EXPECT_FALSE(torch::equal(records[r]["parallel"], records[q]["parallel"])) << r << " vs " << q;
  }
  TensorParallelRng dp0(42, 0, 0), dp1(42, 0, 1);
  EXPECT_FALSE(torch::equal(torch::rand({16}, dp0.replicated()), torch::rand({16}, dp1.replicated())));
  EXPECT_EQ(dp0.parallelSeed(), 42u + 2718u);
}

TEST(TensorParallelRng, DropoutScalesKeptElementsAndPassesGradients) {
  TensorParallelRng rng(7, 0);
  torch::Tensor x = torch::full({4000}, 2.0).requires_grad_();
  torch::Tensor y = dropout(x, 0.25, rng.parallel());
  const double dropped = (y == 0).to(torch::kDouble).mean().item<double>();
  EXPECT_NEAR(dropped, 0.25, 0.04);
  EXPECT_TRUE(torch::all((y == 0) | ((y - 2.0 / 0.75).abs() < 1e-6)).item<bool>());
  y.sum().backward();
  expectClose(x.grad(), y.detach() / 2.0, "gradient is the scaled mask");
  torch::Tensor z = torch::ones({8});
  EXPECT_TRUE(dropout(z, 0.5, rng.parallel(), /*training=*/false).is_same(z));
  EXPECT_TRUE(dropout(z, 0.0, rng.parallel()).is_same(z));
  EXPECT_THROW(dropout(z, 1.0, rng.parallel()), InvalidArgument);
}

}  // namespace
}  // namespace chorus::parallel
