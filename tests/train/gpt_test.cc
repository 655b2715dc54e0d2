// The tensor-parallel GPT and its attention against an independent, unsplit reference written
// here in plain torch (LayerNorm, linear layers as matmuls, causal softmax attention, exact
// GELU, logits, cross-entropy), on full parameters drawn with initNormal. For tp = 1, 2, 3, 4
// (threads as ranks), tied and untied embeddings, with and without sequence parallelism: the
// gathered logits, the loss and every parameter's gradient (gathered with unshard, by name)
// equal the reference's. Also: the init, dropout through the RNG tracker, generation, the
// parameter bytes and the errors.
//
// Tolerance: float32 sums in another order than the reference's:
// max |got - want| <= 1e-5 * max |want| + 1e-8 per tensor.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "chorus/parallel/tensor/attention.h"
#include "chorus/parallel/tensor/sharding.h"
#include "chorus/train/gpt.h"
#include "util/rank_threads.h"

namespace chorus::train {
namespace {

using parallel::ShardSpec;
using Params = std::map<std::string, torch::Tensor>;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

void expectClose(const torch::Tensor& got, const torch::Tensor& want, const std::string& what, double rtol = 1e-5) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double err = (got.to(torch::kFloat64) - want.to(torch::kFloat64)).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  EXPECT_LE(err, rtol * scale + 1e-8) << what << ": max error " << err << ", max |want| " << scale;
}

// ---------------------------------------------------------------------------------------------
// The reference: plain torch on full tensors.

torch::Tensor refLayerNorm(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  torch::Tensor mean = x.mean(-1, true);
  torch::Tensor var = (x - mean).pow(2).mean(-1, true);
  return (x - mean) / torch::sqrt(var + 1e-5) * w + b;
}

torch::Tensor refLinear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  return torch::matmul(x, w.t()) + b;
}

torch::Tensor refGelu(const torch::Tensor& x) { return 0.5 * x * (1 + torch::erf(x / std::sqrt(2.0))); }

// x [B, T, E] -> [B, T, E]; parameters under prefix + ".qkv.weight" etc.
torch::Tensor refAttention(const torch::Tensor& x, const Params& p, const std::string& prefix, int64_t H) {
  const int64_t B = x.size(0), T = x.size(1), E = x.size(2), D = E / H;
  torch::Tensor qkv = refLinear(x, p.at(prefix + ".qkv.weight"), p.at(prefix + ".qkv.bias"));
  auto head = [&](int64_t part) { return qkv.narrow(2, part * E, E).reshape({B, T, H, D}).permute({0, 2, 1, 3}); };
  torch::Tensor q = head(0), k = head(1), v = head(2);
  torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(D));
  torch::Tensor allowed = torch::ones({T, T}, torch::kBool).tril();  // key j <= query i
  scores = torch::where(allowed, scores, torch::full({}, -INFINITY));
  torch::Tensor e = torch::exp(scores - std::get<0>(scores.max(-1, true)));
  torch::Tensor probs = e / e.sum(-1, true);
  torch::Tensor y = torch::matmul(probs, v).permute({0, 2, 1, 3}).reshape({B, T, E});
  return refLinear(y, p.at(prefix + ".proj.weight"), p.at(prefix + ".proj.bias"));
}

torch::Tensor refLogits(const Params& p, const torch::Tensor& ids, const GptOptions& o) {
  const int64_t B = ids.size(0), T = ids.size(1);
  torch::Tensor x = p.at("wte.weight").index_select(0, ids.reshape({-1})).reshape({B, T, o.embed}) +
                    p.at("wpe.weight").narrow(0, 0, T);
  for (int64_t i = 0; i < o.layers; ++i) {
    const std::string h = "h." + std::to_string(i);
    x = x + refAttention(refLayerNorm(x, p.at(h + ".ln1.weight"), p.at(h + ".ln1.bias")), p, h + ".attn", o.heads);
    torch::Tensor m = refLayerNorm(x, p.at(h + ".ln2.weight"), p.at(h + ".ln2.bias"));
    m = refGelu(refLinear(m, p.at(h + ".mlp.fc1.weight"), p.at(h + ".mlp.fc1.bias")));
    x = x + refLinear(m, p.at(h + ".mlp.fc2.weight"), p.at(h + ".mlp.fc2.bias"));
  }
  x = refLayerNorm(x, p.at("lnf.weight"), p.at("lnf.bias"));
  return torch::matmul(x, (o.tieEmbeddings ? p.at("wte.weight") : p.at("lm_head.weight")).t());
}

torch::Tensor refLoss(const torch::Tensor& logits, const torch::Tensor& targets) {
  const int64_t V = logits.size(-1);
  torch::Tensor z = logits.reshape({-1, V});
  torch::Tensor logp = z - torch::logsumexp(z, -1, true);
  return -logp.gather(1, targets.reshape({-1, 1})).mean();
}

// Full shapes and init std of every parameter, by the spec.
struct ParamInfo {
  std::vector<int64_t> shape;
  double std;  // < 0: LayerNorm weight (ones); 0: zeros
};
std::map<std::string, ParamInfo> expectedParams(const GptOptions& o) {
  const int64_t E = o.embed, V = o.vocab;
  const double resid = 0.02 / std::sqrt(2.0 * o.layers);
  std::map<std::string, ParamInfo> m;
  m["wte.weight"] = {{V, E}, 0.02};
  m["wpe.weight"] = {{o.context, E}, 0.02};
  for (int64_t i = 0; i < o.layers; ++i) {
    const std::string h = "h." + std::to_string(i);
    m[h + ".ln1.weight"] = {{E}, -1};
    m[h + ".ln1.bias"] = {{E}, 0};
    m[h + ".attn.qkv.weight"] = {{3 * E, E}, 0.02};
    m[h + ".attn.qkv.bias"] = {{3 * E}, 0};
    m[h + ".attn.proj.weight"] = {{E, E}, resid};
    m[h + ".attn.proj.bias"] = {{E}, 0};
    m[h + ".ln2.weight"] = {{E}, -1};
    m[h + ".ln2.bias"] = {{E}, 0};
    m[h + ".mlp.fc1.weight"] = {{4 * E, E}, 0.02};
    m[h + ".mlp.fc1.bias"] = {{4 * E}, 0};
    m[h + ".mlp.fc2.weight"] = {{E, 4 * E}, resid};
    m[h + ".mlp.fc2.bias"] = {{E}, 0};
  }
  m["lnf.weight"] = {{E}, -1};
  m["lnf.bias"] = {{E}, 0};
  if (!o.tieEmbeddings) m["lm_head.weight"] = {{V, E}, 0.02};
  return m;
}

// The spec's init (perturb = false), or that plus noise on every tensor (perturb = true), so
// that biases and LayerNorm parameters take part and attention is far from uniform.
Params referenceParams(const GptOptions& o, bool perturb, uint64_t noiseSeed = 99) {
  auto gen = at::detail::createCPUGenerator(noiseSeed);
  Params p;
  for (const auto& [name, info] : expectedParams(o)) {
    torch::Tensor t = info.std > 0   ? parallel::initNormal(info.shape, info.std, o.seed, name)
                      : info.std < 0 ? torch::ones(info.shape)
                                     : torch::zeros(info.shape);
    if (perturb) t = t + 0.3 * torch::randn(info.shape, gen);
    p[name] = t;
  }
  return p;
}

// Copies rank `rank`'s shard of every full tensor into m's parameters.
void loadShards(torch::nn::Module& m, const Params& full, int rank, int k) {
  torch::NoGradGuard g;
  auto specs = parallel::shardSpecs(m);
  for (auto& p : m.named_parameters()) {
    ASSERT_TRUE(full.count(p.key())) << p.key();
    p.value().copy_(parallel::shardOf(full.at(p.key()), specs.at(p.key()), rank, k));
  }
}

// Per rank: named tensors; unshard over ranks by name.
Params gather(const std::vector<Params>& perRank, const std::map<std::string, ShardSpec>& specs) {
  Params out;
  for (const auto& [name, spec] : specs) {
    std::vector<torch::Tensor> shards;
    for (const auto& r : perRank) shards.push_back(r.at(name));
    out[name] = parallel::unshard(shards, spec);
  }
  return out;
}

Params gradsOf(torch::nn::Module& m) {
  Params g;
  for (const auto& p : m.named_parameters()) g[p.key()] = p.value().grad().defined() ? p.value().grad().clone() : torch::Tensor();
  return g;
}

Params valuesOf(torch::nn::Module& m) {
  Params g;
  for (const auto& p : m.named_parameters()) g[p.key()] = p.value().detach().clone();
  return g;
}

struct Batch {
  torch::Tensor ids, targets;
};
Batch makeBatch(const GptOptions& o, int64_t B, int64_t T, uint64_t seed = 5) {
  auto gen = at::detail::createCPUGenerator(seed);
  return {torch::randint(0, o.vocab, {B, T}, gen), torch::randint(0, o.vocab, {B, T}, gen)};
}

GptOptions tiny(int64_t heads = 4) {
  GptOptions o;
  o.vocab = 256;
  o.layers = 2;
  o.embed = 24;
  o.heads = heads;
  o.context = 8;
  o.seed = 11;
  return o;
}

// ---------------------------------------------------------------------------------------------
// Golden: the whole model.

struct Case {
  int k;
  int64_t heads;
  bool tie;
  bool sp;
  int64_t vocab;
  int64_t T;
};
std::string describe(const Case& c) {
  return "tp" + std::to_string(c.k) + "_h" + std::to_string(c.heads) + (c.tie ? "_tied" : "_untied") +
         (c.sp ? "_sp" : "") + "_v" + std::to_string(c.vocab) + "_T" + std::to_string(c.T);
}
void PrintTo(const Case& c, std::ostream* os) { *os << describe(c); }
std::string caseName(const testing::TestParamInfo<Case>& i) { return describe(i.param); }

class GptGolden : public testing::TestWithParam<Case> {};

TEST_P(GptGolden, LogitsLossAndEveryGradientMatchTheReference) {
  const Case c = GetParam();
  GptOptions o = tiny(c.heads);
  o.tieEmbeddings = c.tie;
  o.sequenceParallel = c.sp;
  o.vocab = c.vocab;
  const Batch b = makeBatch(o, 2, c.T);
  const Params full = referenceParams(o, /*perturb=*/true);

  struct Out {
    torch::Tensor logits, loss;
    Params grads;
    std::map<std::string, ShardSpec> specs;
    std::vector<std::string> names;
  };
  std::vector<Out> outs(c.k);
  testutil::runRanks(c.k, "loopback", [&](comm::ProcessGroup& g) {
    auto tp = borrow(g);
    Gpt model(o, tp);
    loadShards(*model, full, g.rank(), c.k);
    Out& out = outs[g.rank()];
    {
      torch::NoGradGuard ng;
      out.logits = model->fullLogits(b.ids);
    }
    torch::Tensor loss = model->loss(b.ids, b.targets);
    loss.backward();
    parallel::allReduceSequenceParallelGradients(*model, tp);
    out.loss = loss.detach();
    out.grads = gradsOf(*model);
    out.specs = model->shardSpecs();
    for (const auto& p : model->named_parameters()) out.names.push_back(p.key());
  });

  // The reference.
  Params ref;
  for (const auto& [name, t] : full) ref[name] = t.clone().requires_grad_(true);
  torch::Tensor refZ = refLogits(ref, b.ids, o);
  torch::Tensor refL = refLoss(refZ, b.targets);
  refL.backward();

  std::set<std::string> want;
  for (const auto& [name, info] : expectedParams(o)) want.insert(name);
  for (int r = 0; r < c.k; ++r) {
    EXPECT_EQ(std::set<std::string>(outs[r].names.begin(), outs[r].names.end()), want) << "rank " << r;
    expectClose(outs[r].logits, refZ.detach(), "logits on rank " + std::to_string(r));
    expectClose(outs[r].loss, refL.detach(), "loss on rank " + std::to_string(r));
  }
  std::vector<Params> perRank;
  for (const auto& out : outs) perRank.push_back(out.grads);
  Params grads = gather(perRank, outs[0].specs);
  for (const auto& [name, t] : ref) {
    ASSERT_TRUE(grads.count(name)) << name;
    ASSERT_TRUE(grads[name].defined()) << name << " has no gradient";
    expectClose(grads[name], t.grad(), "gradient of " + name);
  }
  // Replicated parameters: every rank holds the same gradient.
  for (const auto& [name, spec] : outs[0].specs)
    if (spec.dim < 0)
      for (int r = 1; r < c.k; ++r) expectClose(outs[r].grads.at(name), outs[0].grads.at(name), name + " across ranks");
}

INSTANTIATE_TEST_SUITE_P(Tp, GptGolden,
                         testing::Values(Case{1, 4, true, false, 256, 8}, Case{2, 4, true, false, 256, 8},
                                         Case{4, 4, true, false, 256, 8}, Case{3, 6, true, false, 256, 8},
                                         Case{2, 4, false, false, 256, 8}, Case{4, 4, false, false, 250, 7},
                                         Case{3, 6, false, false, 256, 5}, Case{2, 4, true, true, 256, 8},
                                         Case{4, 4, true, true, 250, 8}, Case{4, 4, false, true, 256, 4},
                                         Case{3, 6, true, true, 256, 6}),
                         caseName);

// Every rank's shards of a freshly built model are the spec's init cut with shardOf.
TEST(Gpt, InitIsTheSpecsFullTensorsSharded) {
  for (int k : {1, 2, 3}) {
    GptOptions o = tiny(6);
    o.tieEmbeddings = (k != 2);
    const Params want = referenceParams(o, /*perturb=*/false);
    std::vector<Params> perRank(k);
    std::map<std::string, ShardSpec> specs;
    testutil::runRanks(k, "loopback", [&](comm::ProcessGroup& g) {
      Gpt model(o, borrow(g));
      perRank[g.rank()] = valuesOf(*model);
      if (g.rank() == 0) specs = model->shardSpecs();
      // Padded vocabulary rows are zero.
      if (model->vocabEnd() > o.vocab) {
        const int64_t pad = model->vocabEnd() - o.vocab;
        EXPECT_EQ(model->wte->weight.narrow(0, model->wte->weight.size(0) - pad, pad).abs().max().item<float>(), 0);
      }
    });
    Params got = gather(perRank, specs);
    ASSERT_EQ(got.size(), want.size()) << "tp " << k;
    for (const auto& [name, t] : want) EXPECT_TRUE(torch::equal(got.at(name), t)) << name << " at tp " << k;
  }
}

// ---------------------------------------------------------------------------------------------
// The attention module alone.

class AttentionGolden : public testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(AttentionGolden, OutputAndGradientsMatchTheReference) {
  const auto [k, sp] = GetParam();
  const int64_t B = 2, T = 8, E = 24, H = 4;
  auto gen = at::detail::createCPUGenerator(3);
  Params full;
  full["attn.qkv.weight"] = 0.3 * torch::randn({3 * E, E}, gen);
  full["attn.qkv.bias"] = 0.3 * torch::randn({3 * E}, gen);
  full["attn.proj.weight"] = 0.3 * torch::randn({E, E}, gen);
  full["attn.proj.bias"] = 0.3 * torch::randn({E}, gen);
  const torch::Tensor x = torch::randn({B, T, E}, gen);
  const torch::Tensor w = torch::randn({B, T, E}, gen);  // loss = sum(y * w)

  struct Out {
    torch::Tensor y, dx;
    Params grads;
    std::map<std::string, ShardSpec> specs;
  };
  std::vector<Out> outs(k);
  testutil::runRanks(k, "loopback", [&](comm::ProcessGroup& g) {
    auto tp = borrow(g);
    parallel::ParallelSelfAttentionOptions opts;
    opts.embed = E;
    opts.heads = H;
    opts.sequenceParallel = sp;
    opts.name = "attn";
    parallel::ParallelSelfAttention attn(opts, tp);
    auto root = std::make_shared<torch::nn::Module>();  // the parameters under "attn."
    root->register_module("attn", attn.ptr());
    loadShards(*root, full, g.rank(), k);
    torch::Tensor xin = x.clone();
    torch::Tensor win = w;
    if (sp) {
      xin = xin.narrow(1, g.rank() * T / k, T / k).contiguous();
      win = w.narrow(1, g.rank() * T / k, T / k);
    }
    xin.requires_grad_(true);
    torch::Tensor y = attn->forward(xin);
    (y * win).sum().backward();
    parallel::allReduceSequenceParallelGradients(*root, tp);
    Out& out = outs[g.rank()];
    out.y = y.detach();
    out.dx = xin.grad();
    out.grads = gradsOf(*root);
    out.specs = parallel::shardSpecs(*root);
    EXPECT_EQ(attn->localHeads(), H / k);
  });

  Params ref;
  for (const auto& [name, t] : full) ref[name] = t.clone().requires_grad_(true);
  torch::Tensor xr = x.clone().requires_grad_(true);
  torch::Tensor yr = refAttention(xr, ref, "attn", H);
  (yr * w).sum().backward();

  std::vector<torch::Tensor> ys, dxs;
  for (const auto& out : outs) {
    ys.push_back(out.y);
    dxs.push_back(out.dx);
  }
  if (sp) {
    expectClose(torch::cat(ys, 1), yr.detach(), "output");
    expectClose(torch::cat(dxs, 1), xr.grad(), "input gradient");
  } else {
    for (int r = 0; r < k; ++r) {
      expectClose(ys[r], yr.detach(), "output on rank " + std::to_string(r));
      expectClose(dxs[r], xr.grad(), "input gradient on rank " + std::to_string(r));
    }
  }
  std::vector<Params> perRank;
  for (const auto& out : outs) perRank.push_back(out.grads);
  Params grads = gather(perRank, outs[0].specs);
  for (const auto& [name, t] : ref) expectClose(grads.at(name), t.grad(), "gradient of " + name);
}

INSTANTIATE_TEST_SUITE_P(Tp, AttentionGolden,
                         testing::Values(std::make_tuple(1, false), std::make_tuple(2, false),
                                         std::make_tuple(4, false), std::make_tuple(2, true),
                                         std::make_tuple(4, true)),
                         [](const testing::TestParamInfo<std::tuple<int, bool>>& i) {
                           return "tp" + std::to_string(std::get<0>(i.param)) + (std::get<1>(i.param) ? "_sp" : "");
                         });

// ---------------------------------------------------------------------------------------------
// Dropout through the RNG tracker.

// Every head gets the same q, k and v weights, so without dropout all heads compute the same
// output: rank 0's heads equal rank 1's. With dropout on the probabilities the ranks draw
// different masks (parallel generator), so they differ.
TEST(GptDropout, AttentionMasksDifferBetweenTpRanks) {
  const int k = 2;
  const int64_t E = 24, H = 4, D = E / H;
  auto gen = at::detail::createCPUGenerator(8);
  Params full;
  torch::Tensor qkvW = torch::empty({3 * E, E});
  for (int64_t part = 0; part < 3; ++part) {
    torch::Tensor oneHead = 0.5 * torch::randn({D, E}, gen);
    for (int64_t hd = 0; hd < H; ++hd) qkvW.narrow(0, part * E + hd * D, D).copy_(oneHead);
  }
  full["attn.qkv.weight"] = qkvW;
  full["attn.qkv.bias"] = torch::zeros({3 * E});
  full["attn.proj.weight"] = torch::randn({E, E}, gen);
  full["attn.proj.bias"] = torch::zeros({E});
  const torch::Tensor x = torch::randn({2, 8, E}, gen);

  std::vector<torch::Tensor> eval(k), train(k);
  testutil::runRanks(k, "loopback", [&](comm::ProcessGroup& g) {
    auto tp = borrow(g);
    parallel::ParallelSelfAttentionOptions opts;
    opts.embed = E;
    opts.heads = H;
    opts.dropout = 0.5;
    opts.name = "attn";
    auto rng = std::make_shared<parallel::TensorParallelRng>(1, g.rank());
    parallel::ParallelSelfAttention attn(opts, tp, rng);
    auto root = std::make_shared<torch::nn::Module>();  // the parameters under "attn."
    root->register_module("attn", attn.ptr());
    loadShards(*root, full, g.rank(), k);
    torch::NoGradGuard ng;
    attn->eval();
    eval[g.rank()] = attn->heads(x);
    attn->train();
    train[g.rank()] = attn->heads(x);
  });
  // The set-up: identical heads without dropout, on each rank and across ranks.
  EXPECT_TRUE(torch::allclose(eval[0], eval[1]));
  EXPECT_TRUE(torch::allclose(eval[0].narrow(2, 0, D), eval[0].narrow(2, D, D)));
  EXPECT_FALSE(torch::allclose(train[0], eval[0])) << "dropout had no effect";
  EXPECT_FALSE(torch::allclose(train[0], train[1])) << "the tp ranks drew the same attention dropout masks";
}

// The residual stream (embeddings, after attn and mlp) is a replicated region: with dropout
// it must stay identical on every tp rank, so the masks come from the replicated generator.
// Eval mode is the dropout-free model (the reference).
TEST(GptDropout, ReplicatedRegionSameOnEveryRankAndEvalIsDropoutFree) {
  const int k = 2;
  GptOptions o = tiny();
  o.dropout = 0.3;
  const Batch b = makeBatch(o, 2, 8);
  const Params full = referenceParams(o, true);
  std::vector<torch::Tensor> hiddenTrain(k), logitsEval(k), logitsTrain(k);
  testutil::runRanks(k, "loopback", [&](comm::ProcessGroup& g) {
    Gpt model(o, borrow(g));
    loadShards(*model, full, g.rank(), k);
    torch::NoGradGuard ng;
    hiddenTrain[g.rank()] = model->hidden(b.ids);
    logitsTrain[g.rank()] = model->fullLogits(b.ids);
    model->eval();
    logitsEval[g.rank()] = model->fullLogits(b.ids);
  });
  torch::Tensor ref = refLogits(full, b.ids, o);
  for (int r = 0; r < k; ++r) expectClose(logitsEval[r], ref, "eval logits on rank " + std::to_string(r));
  EXPECT_TRUE(torch::equal(hiddenTrain[0], hiddenTrain[1])) << "the residual stream differs between tp ranks";
  EXPECT_FALSE(torch::allclose(logitsTrain[0], ref, 1e-3, 1e-3)) << "dropout had no effect in training mode";
}

// The trainer gives each data-parallel replica its own masks by assigning a new tracker.
TEST(GptDropout, RngCanBeReseededPerDataParallelReplica) {
  GptOptions o = tiny();
  o.dropout = 0.3;
  const Batch b = makeBatch(o, 2, 8);
  auto hiddenWith = [&](int dpRank) {
    Gpt model(o);
    model->rng() = parallel::TensorParallelRng(o.seed, 0, dpRank);
    torch::NoGradGuard ng;
    return model->hidden(b.ids);
  };
  Gpt plain(o);
  torch::Tensor base;
  {
    torch::NoGradGuard ng;
    base = plain->hidden(b.ids);
  }
  EXPECT_TRUE(torch::equal(hiddenWith(0), base));
  EXPECT_FALSE(torch::allclose(hiddenWith(1), base));
}

// ---------------------------------------------------------------------------------------------
// Generation, parameter bytes, errors.

TEST(GptGenerate, SameBytesOnEveryTpRankAndAtEveryTp) {
  GptOptions o = tiny();
  o.context = 8;
  const Params full = referenceParams(o, true);
  auto sample = [&](int k, bool sp, double temperature, int64_t topK) {
    GptOptions ok = o;
    ok.sequenceParallel = sp;
    std::vector<std::string> out(k);
    testutil::runRanks(k, "loopback", [&](comm::ProcessGroup& g) {
      auto tp = borrow(g);
      Gpt model(ok, tp);
      loadShards(*model, full, g.rank(), k);
      out[g.rank()] = generate(model, "hello", 12, temperature, topK, 42, tp);
      EXPECT_TRUE(model->is_training()) << "generate must restore training mode";
    });
    for (int r = 1; r < k; ++r) EXPECT_EQ(out[r], out[0]) << "rank " << r;
    EXPECT_EQ(out[0].size(), 12u);
    return out[0];
  };
  const std::string one = sample(1, false, 1.0, 0);
  EXPECT_EQ(sample(2, false, 1.0, 0), one);
  EXPECT_EQ(sample(2, true, 1.0, 0), one);  // odd prompt lengths padded for sequence parallelism
  const std::string greedy = sample(1, false, 0.0, 0);
  EXPECT_EQ(sample(2, false, 0.0, 0), greedy);
  // Greedy: the reference's argmax, token by token (cropped to the context).
  std::vector<int64_t> ctx;
  for (unsigned char ch : std::string("hello")) ctx.push_back(ch);
  std::string want;
  for (int n = 0; n < 12; ++n) {
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(ctx.size()) - o.context);
    torch::Tensor ids = torch::tensor(std::vector<int64_t>(ctx.begin() + start, ctx.end())).reshape({1, -1});
    const int64_t t = refLogits(full, ids, o)[0][-1].argmax().item<int64_t>();
    ctx.push_back(t);
    want.push_back(static_cast<char>(t));
  }
  EXPECT_EQ(greedy, want);
  // top-k 1 is greedy whatever the temperature.
  EXPECT_EQ(sample(2, false, 5.0, 1), greedy);
}

TEST(GptParams, BytesSplitIntoShardedAndReplicated) {
  GptOptions o = tiny();
  o.vocab = 250;
  const int k = 4;
  const int64_t E = o.embed, L = o.layers, Vp = 252;
  std::vector<ParamBytes> got(k);
  testutil::runRanks(k, "loopback", [&](comm::ProcessGroup& g) {
    Gpt model(o, borrow(g));
    got[g.rank()] = parameterBytes(*model);
  });
  const int64_t sharded = Vp / k * E + L * (3 * E * E / k + 3 * E / k + E * E / k + 4 * E * E / k + 4 * E / k + 4 * E * E / k);
  const int64_t replicated = o.context * E + (2 * L + 1) * 2 * E + L * 2 * E;  // wpe, LayerNorms, row biases
  for (int r = 0; r < k; ++r) {
    EXPECT_EQ(got[r].sharded, sharded * 4) << "rank " << r;
    EXPECT_EQ(got[r].replicated, replicated * 4) << "rank " << r;
  }
}

template <class F>
std::string errorOf(F&& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "no error";
}

TEST(GptErrors, NameTheNumbersAndTheFix) {
  // embed % heads
  GptOptions o = tiny(5);
  std::string m = errorOf([&] { Gpt model(o); });
  EXPECT_NE(m.find("embed 24"), std::string::npos) << m;
  EXPECT_NE(m.find("heads 5"), std::string::npos) << m;
  // T > context
  o = tiny();
  m = errorOf([&] {
    Gpt model(o);
    model->forward(torch::zeros({2, 9}, torch::kLong));
  });
  EXPECT_NE(m.find("T = 9"), std::string::npos) << m;
  EXPECT_NE(m.find("context 8"), std::string::npos) << m;
  // heads % tp, T % tp under sequence parallelism (every rank throws before any collective)
  std::vector<std::string> headsMsg(4), seqMsg(2);
  testutil::runRanks(4, "loopback", [&](comm::ProcessGroup& g) {
    headsMsg[g.rank()] = errorOf([&] { Gpt model(tiny(6), borrow(g)); });
  });
  for (const auto& s : headsMsg) {
    EXPECT_NE(s.find("heads 6"), std::string::npos) << s;
    EXPECT_NE(s.find("tensor-parallel size 4"), std::string::npos) << s;
  }
  testutil::runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    GptOptions s = tiny();
    s.sequenceParallel = true;
    Gpt model(s, borrow(g));
    seqMsg[g.rank()] = errorOf([&] { model->forward(torch::zeros({2, 7}, torch::kLong)); });
  });
  for (const auto& s : seqMsg) {
    EXPECT_NE(s.find("T = 7"), std::string::npos) << s;
    EXPECT_NE(s.find("multiple of 2"), std::string::npos) << s;
  }
  // ids out of range, the attention module alone
  m = errorOf([&] {
    Gpt model(tiny());
    model->forward(torch::full({1, 4}, 256, torch::kLong));
  });
  EXPECT_NE(m.find("[0, 256)"), std::string::npos) << m;
  std::vector<std::string> attnMsg(3);
  testutil::runRanks(3, "loopback", [&](comm::ProcessGroup& g) {
    parallel::ParallelSelfAttentionOptions a;
    a.embed = 24;
    a.heads = 4;
    attnMsg[g.rank()] = errorOf([&] { parallel::ParallelSelfAttention attn(a, borrow(g)); });
  });
  for (const auto& s : attnMsg) EXPECT_NE(s.find("heads 4 is not divisible by the tensor-parallel size 3"), std::string::npos) << s;
}

}  // namespace
}  // namespace chorus::train
