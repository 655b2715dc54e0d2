// The sparsifying codecs (topk, topk_sampled, randomk, threshold): error feedback is exact
// (sent + residual == grad + old residual, bit for bit, over many steps), what is sent decodes
// exactly, each selection rule picks what it promises (per tensor when layer-wise), the Elias-Fano
// index code round-trips and has the documented size, the
// decoder rejects malformed messages, and a state copied as a checkpoint continues identically.
// Random-k's decayed residual bounds each entry's backlog; plain error feedback does not (the
// bursts that made it diverge); without error feedback its estimator is unbiased.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/compress/sparse.h"
#include "compress/torch_codec.h"

namespace chorus::compress {
namespace {

torch::Tensor randomGrad(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({n});
}

// The indices a sparse message carries.
torch::Tensor sentIndices(const Message& msg) { return toTensor(unpackSparse(msg).indices); }

torch::Tensor decodeDense(const Codec& codec, const Message& msg, int64_t n) {
  torch::Tensor out = torch::zeros({n});
  decodeAdd(codec, msg, out);
  return out;
}

// Checks one encode step against acc = grad + old residual: the message holds acc at distinct
// indices, the residual holds acc elsewhere and 0 at the sent indices, and both add up to acc.
void checkStep(const Codec& codec, const Message& msg, const torch::Tensor& acc, const torch::Tensor& residual) {
  int64_t n = acc.numel();
  torch::Tensor idx = sentIndices(msg);
  int64_t k = idx.numel();
  ASSERT_EQ(codec.sparseCount(msg), k);
  ASSERT_EQ(msg.size(), sparseMessageBytes(n, k));
  if (k > 1) {
    EXPECT_TRUE((idx.slice(0, 1) > idx.slice(0, 0, k - 1)).all().item<bool>()) << "indices not ascending/distinct";
  }
  torch::Tensor dense = decodeDense(codec, msg, n);
  EXPECT_TRUE(torch::equal(dense + residual, acc));
  EXPECT_TRUE(torch::equal(dense.index_select(0, idx), acc.index_select(0, idx)));
  EXPECT_TRUE(torch::equal(residual.index_select(0, idx), torch::zeros({k})));
  torch::Tensor unsent = torch::ones({n}, torch::kBool).index_fill_(0, idx, false);
  EXPECT_TRUE(torch::equal(dense.masked_select(unsent), torch::zeros({n - k})));
  EXPECT_TRUE(torch::equal(residual.masked_select(unsent), acc.masked_select(unsent)));
}

struct Method {
  std::string name;
  double value;
};
void PrintTo(const Method& m, std::ostream* os) { *os << m.name << "(" << m.value << ")"; }

class SparseCodecTest : public ::testing::TestWithParam<Method> {};

// The codec of a parameter; random-k with plain error feedback (no decay), the rule these tests
// are about (its default decays the residual: RandomK.DecayBoundsTheBacklog).
std::unique_ptr<Codec> codecFor(const Method& m) {
  return makeSparse(m.name, m.value, true, RandomKOptions{.errorFeedback = true, .residualDecay = 1.0});
}

TEST_P(SparseCodecTest, ErrorFeedbackIsExactOverSteps) {
  auto codec = codecFor(GetParam());
  EXPECT_EQ(codec->name(), GetParam().name);
  for (int64_t n : {0, 1, 7, 1000, 4099}) {
    CodecState state;
    state.rngState = 42;
    for (int step = 0; step < 5; ++step) {
      torch::Tensor grad = randomGrad(n, 100 * n + step);
      torch::Tensor gradCopy = grad.clone();
      torch::Tensor oldResidual = residualOf(state, grad);
      torch::Tensor acc = grad + oldResidual;
      Message msg = encode(*codec, grad, state);
      EXPECT_TRUE(torch::equal(grad, gradCopy)) << "encode modified the gradient";
      SCOPED_TRACE(testing::Message() << GetParam().name << " n=" << n << " step=" << step);
      checkStep(*codec, msg, acc, buf(state, "residual"));
      if (n > 0 && GetParam().name != "threshold") {
        EXPECT_GE(codec->sparseCount(msg), 1);
      }
    }
  }
}

TEST_P(SparseCodecTest, CheckpointedStateContinuesIdentically) {
  auto codec = codecFor(GetParam());
  const int64_t n = 3001;
  CodecState a;
  a.rngState = 7;
  for (int step = 0; step < 3; ++step) encode(*codec, randomGrad(n, step), a);
  CodecState b;  // restored from a "checkpoint" of a
  b.buffers = a.buffers;
  b.scalars = a.scalars;
  b.rngState = a.rngState;
  for (int step = 3; step < 6; ++step) {
    torch::Tensor grad = randomGrad(n, step);
    EXPECT_EQ(encode(*codec, grad, a), encode(*codec, grad, b)) << "step " << step;
  }
  EXPECT_TRUE(torch::equal(buf(a, "residual"), buf(b, "residual")));
}

INSTANTIATE_TEST_SUITE_P(Methods, SparseCodecTest,
                         ::testing::Values(Method{"topk", 0.05}, Method{"topk_sampled", 0.05},
                                           Method{"randomk", 0.05}, Method{"threshold", 1.5}),
                         [](const auto& info) { return info.param.name; });

// Distinct magnitudes 1..n in shuffled order with random signs, so the top k is unique.
torch::Tensor distinctGrad(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor mag = (torch::randperm(n) + 1).to(torch::kFloat);
  torch::Tensor sign = torch::randint(0, 2, {n}).to(torch::kFloat) * 2 - 1;
  return mag * sign;
}

TEST(TopK, PicksTheKLargestMagnitudes) {
  const int64_t n = 1000;
  torch::Tensor grad = distinctGrad(n, 1);
  TopKCodec codec(SparseOptions{.ratio = 0.05});
  CodecState state;
  Message msg = encode(codec, grad, state);
  ASSERT_EQ(codec.sparseCount(msg), 50);
  torch::Tensor expected = std::get<0>(std::get<1>(grad.abs().topk(50)).sort());
  EXPECT_TRUE(torch::equal(sentIndices(msg), expected));
  // Magnitudes 951..1000 are the ones sent.
  torch::Tensor sent = decodeDense(codec, msg, n).abs();
  EXPECT_EQ(sent.max().item<float>(), 1000.0f);
  EXPECT_EQ(sent.masked_select(sent > 0).min().item<float>(), 951.0f);
}

TEST(TopK, ExplicitCountAndMessageSize) {
  const int64_t n = 10000;
  TopKCodec byCount(SparseOptions{.k = 17});
  CodecState s1;
  Message m1 = encode(byCount, randomGrad(n, 2), s1);
  EXPECT_EQ(byCount.sparseCount(m1), 17);
  // 12 header + 17 x 9 low bits (20 bytes) + 17 + (9999 >> 9) + 1 = 37 high bits (5) + 68 values.
  EXPECT_EQ(m1.size(), 12u + 20u + 5u + 4u * 17u);

  TopKCodec byRatio(SparseOptions{.ratio = 0.01});
  CodecState s2;
  Message m2 = encode(byRatio, randomGrad(n, 3), s2);
  EXPECT_EQ(byRatio.sparseCount(m2), 100);
  // 12 + 100 x 6 low bits (75) + 257 high bits (33) + 400: 520 bytes vs 40000 dense (820 with int32 indices).
  EXPECT_EQ(m2.size(), 520u);

  // k larger than the tensor sends everything, and nothing is left behind.
  TopKCodec all(SparseOptions{.k = 50});
  CodecState s3;
  Message m3 = encode(all, randomGrad(7, 4), s3);
  EXPECT_EQ(all.sparseCount(m3), 7);
  EXPECT_TRUE(torch::equal(buf(s3, "residual"), torch::zeros({7})));
}

TEST(TopK, ResidualEntriesAreSentLater) {
  // A constant small gradient on one entry grows in the residual until it wins the top-1.
  TopKCodec codec(SparseOptions{.k = 1});
  CodecState state;
  torch::Tensor grad = torch::tensor({1.0f, 0.25f});
  int64_t sentSecond = -1;
  for (int step = 0; step < 8 && sentSecond < 0; ++step) {
    Message msg = encode(codec, grad, state);
    if (sentIndices(msg)[0].item<int64_t>() == 1) sentSecond = step;
  }
  EXPECT_GT(sentSecond, 0);
}

TEST(TopKSampled, SendsAboutKAndKeepsTheInvariant) {
  const int64_t n = 100000;
  TopKSampledCodec codec(SparseOptions{.ratio = 0.01});
  CodecState state;
  state.rngState = 123;
  for (int step = 0; step < 4; ++step) {
    torch::Tensor grad = randomGrad(n, 50 + step);
    torch::Tensor acc = grad + residualOf(state, grad);
    Message msg = encode(codec, grad, state);
    int64_t k = codec.sparseCount(msg);
    EXPECT_GE(k, 250) << "step " << step;
    EXPECT_LE(k, 2000) << "step " << step;
    checkStep(codec, msg, acc, buf(state, "residual"));
    // Everything sent is at least as large as everything kept (a threshold selection).
    torch::Tensor dense = decodeDense(codec, msg, n).abs();
    EXPECT_GE(dense.max().item<float>(), buf(state, "residual").abs().max().item<float>());
  }
}

TEST(TopKSampled, SmallTensorsUseExactTopK) {
  // With 200 entries the minimum sample (256) would cover the whole tensor: exact top-k.
  torch::Tensor grad = distinctGrad(200, 5);
  TopKSampledCodec sampled(SparseOptions{.ratio = 0.1});
  TopKCodec exact(SparseOptions{.ratio = 0.1});
  CodecState s1, s2;
  EXPECT_TRUE(torch::equal(sentIndices(encode(sampled, grad, s1)), sentIndices(encode(exact, grad, s2))));
}

TEST(RandomK, ReproducibleForTheSameRngState) {
  const int64_t n = 5000;
  RandomKCodec codec(SparseOptions{.ratio = 0.02});
  CodecState a, b, c;
  a.rngState = b.rngState = 99;
  c.rngState = 100;
  for (int step = 0; step < 3; ++step) {
    torch::Tensor grad = randomGrad(n, step);
    Message ma = encode(codec, grad, a);
    EXPECT_EQ(ma, encode(codec, grad, b));
    EXPECT_NE(ma, encode(codec, grad, c));
    EXPECT_EQ(codec.sparseCount(ma), 100);  // exactly k distinct (checked ascending in checkStep)
  }
}

TEST(RandomK, IndicesAreUniform) {
  // 2000 draws of 10 out of 100: every index expects 200 hits (sd ~13.4).
  const int64_t n = 100;
  RandomKCodec codec(SparseOptions{.k = 10});
  CodecState state;
  torch::Tensor hits = torch::zeros({n}, torch::kLong);
  torch::Tensor grad = torch::ones({n});
  for (int i = 0; i < 2000; ++i) {
    torch::Tensor idx = sentIndices(encode(codec, grad, state));
    ASSERT_EQ(idx.numel(), 10);
    hits.index_add_(0, idx, torch::ones({10}, torch::kLong));
  }
  EXPECT_GT(hits.min().item<int64_t>(), 140);
  EXPECT_LT(hits.max().item<int64_t>(), 260);
}

// Random-k over many steps of one constant gradient g (n = 1000, k = 10, p = 0.01), measured
// as the mean message and the mean energy |message|^2 against g, and the largest residual
// entry against the gradient's:
//   decay 0.9 (the default)  mean p / (1 - 0.9 (1 - p)) g = 0.0917 g; no entry's residual ever
//                            exceeds 10 |g_i| (the geometric sum 1 / (1 - 0.9))
//   decay 1 (plain EF)       mean g (nothing lost, only late), but energy about 2 / p |g|^2 and
//                            residual entries hundreds of steps deep: the bursts that diverged
//   no error feedback        mean g, energy |g|^2 / p, no residual
// The random draws are seeded, so the numbers are exact repeats; the bounds hold with 5
// standard deviations of the sampling noise to spare.
struct RandomKMoments {
  double mean;         // <mean message, g> / |g|^2
  double energy;       // mean |message|^2 / |g|^2
  double maxBacklog;   // max over steps and entries of |residual_i| / |g_i|
  bool residual;       // the state holds a residual tensor
};

RandomKMoments randomKMoments(RandomKOptions rk) {
  const int64_t n = 1000;
  const int steps = 2000;
  torch::Tensor g = randomGrad(n, 5);
  RandomKCodec codec(SparseOptions{.ratio = 0.01}, rk);
  CodecState state;
  state.rngState = 3;
  torch::Tensor sum = torch::zeros({n});
  double energy = 0, backlog = 0;
  for (int t = 0; t < steps; ++t) {
    torch::Tensor d = decodeDense(codec, encode(codec, g, state), n);
    sum += d;
    energy += d.pow(2).sum().item<double>();
    if (state.buffers.count("residual"))
      backlog = std::max(backlog, (buf(state, "residual").abs() / g.abs()).max().item<double>());
  }
  const double gg = g.pow(2).sum().item<double>();
  return {(sum / steps).dot(g).item<double>() / gg, energy / steps / gg, backlog, state.buffers.count("residual") > 0};
}

TEST(RandomK, DecayBoundsTheBacklog) {
  RandomKMoments m = randomKMoments({});
  EXPECT_NEAR(m.mean, 0.01 / (1 - 0.9 * 0.99), 0.005);
  EXPECT_LE(m.maxBacklog, 10.0 + 1e-3);
  EXPECT_GT(m.maxBacklog, 5.0);  // the bound is reached, not far above it
  EXPECT_LT(m.energy, 2.0);
  EXPECT_TRUE(m.residual);
  auto made = makeSparse("randomk", 0.01);
  EXPECT_EQ(dynamic_cast<RandomKCodec&>(*made).options().residualDecay, 0.9);
  EXPECT_TRUE(dynamic_cast<RandomKCodec&>(*made).options().errorFeedback);
}

TEST(RandomK, PlainErrorFeedbackSendsBacklogsInBursts) {
  RandomKMoments m = randomKMoments({.errorFeedback = true, .residualDecay = 1.0});
  EXPECT_NEAR(m.mean, 1.0, 0.1);  // nothing lost, only late
  EXPECT_GT(m.energy, 100.0);     // ~2 / p: an entry arrives as the sum of ~1 / p steps
  EXPECT_GT(m.maxBacklog, 300.0);
}

TEST(RandomK, WithoutErrorFeedbackTheEstimatorIsUnbiased) {
  RandomKMoments m = randomKMoments({.errorFeedback = false});
  EXPECT_NEAR(m.mean, 1.0, 0.05);
  EXPECT_NEAR(m.energy, 100.0, 5.0);
  EXPECT_FALSE(m.residual);
}

// The residual decays before the gradient is added, and what is sent plus what is kept is
// exactly decay * old residual + gradient.
TEST(RandomK, DecayedErrorFeedbackIsExact) {
  RandomKCodec codec(SparseOptions{.ratio = 0.05}, {.errorFeedback = true, .residualDecay = 0.75});
  CodecState state;
  for (int step = 0; step < 5; ++step) {
    torch::Tensor grad = randomGrad(4099, 50 + step);
    torch::Tensor acc = residualOf(state, grad).mul_(0.75).add_(grad);
    Message msg = encode(codec, grad, state);
    SCOPED_TRACE(step);
    checkStep(codec, msg, acc, buf(state, "residual"));
  }
  EXPECT_THROW(RandomKCodec(SparseOptions{}, {.residualDecay = 1.5}), InvalidArgument);
  EXPECT_THROW(makeSparse("randomk", 0.01, true, {.residualDecay = -0.1}), ConfigError);
}

// k = n (ratio 1) sends every entry unscaled either way; without error feedback k of n entries
// are scaled by n / k.
TEST(RandomK, ScalesOnlyWithoutErrorFeedback) {
  for (bool ef : {true, false}) {
    SCOPED_TRACE(ef);
    CodecState state;
    for (int64_t n : {0, 1, 7, 100}) {
      torch::Tensor g = randomGrad(n, static_cast<uint64_t>(n));
      RandomKCodec all(SparseOptions{.ratio = 1.0}, {.errorFeedback = ef});
      EXPECT_TRUE(torch::equal(decodeDense(all, encode(all, g, state), n), g)) << "n=" << n;
    }
    torch::Tensor g = randomGrad(100, 1);
    RandomKCodec four(SparseOptions{.k = 4}, {.errorFeedback = ef});
    CodecState fresh;
    SparsePairs p = unpackSparse(encode(four, g, fresh));
    ASSERT_EQ(p.indices.size(), 4u);
    EXPECT_TRUE(torch::allclose(toTensor(p.values), g.index_select(0, toTensor(p.indices)) * (ef ? 1.0 : 25.0)));
  }
}

TEST(Threshold, SendsExactlyTheEntriesAtOrAboveTau) {
  const int64_t n = 1000;
  ThresholdCodec codec(1.0);
  CodecState state;
  torch::Tensor grad = randomGrad(n, 8);
  grad[3] = 1.0f;  // exactly tau is sent
  grad[4] = -1.0f;
  grad[5] = std::nextafter(1.0f, 0.0f);  // just below is kept
  Message msg = encode(codec, grad, state);
  torch::Tensor expected = (grad.abs() >= 1.0f).nonzero().reshape({-1});
  EXPECT_TRUE(torch::equal(sentIndices(msg), expected));
  EXPECT_EQ(buf(state, "residual")[5].item<float>(), std::nextafter(1.0f, 0.0f));
  // Step 2: the residual counts, e.g. entry 5 now holds ~1 + grad[5].
  torch::Tensor grad2 = randomGrad(n, 9);
  torch::Tensor acc = grad2 + buf(state, "residual");
  Message msg2 = encode(codec, grad2, state);
  EXPECT_TRUE(torch::equal(sentIndices(msg2), (acc.abs() >= 1.0f).nonzero().reshape({-1})));
}

TEST(SparseFactory, RejectsBadConfigs) {
  EXPECT_THROW(makeSparse("topq", 0.1), ConfigError);
  EXPECT_THROW(makeSparse("topk", 0.0), ConfigError);
  EXPECT_THROW(makeSparse("randomk", 1.5), ConfigError);
  EXPECT_THROW(makeSparse("threshold", -1.0), ConfigError);
  EXPECT_NO_THROW(makeSparse("topk", 1.0));
  EXPECT_NO_THROW(makeSparse("threshold", 0.0));
  EXPECT_THROW(ThresholdCodec(-0.5), InvalidArgument);
}

TEST(SparseDecode, RejectsMalformedMessages) {
  TopKCodec codec(SparseOptions{.k = 3});
  CodecState state;
  Message good = encode(codec, randomGrad(10, 1), state);
  torch::Tensor out = torch::zeros({10});
  EXPECT_NO_THROW(decodeAdd(codec, good, out));

  torch::Tensor wrongSize = torch::zeros({11});
  EXPECT_THROW(decodeAdd(codec, good, wrongSize), InvalidArgument);
  torch::Tensor wrongType = torch::zeros({10}, torch::kDouble);
  EXPECT_THROW(decodeAdd(codec, good, wrongType), InvalidArgument);

  Message badMagic = good;
  badMagic[0] ^= 0xFF;
  EXPECT_THROW(decodeAdd(codec, badMagic, out), InvalidArgument);
  Message truncated(good.begin(), good.end() - 1);
  EXPECT_THROW(decodeAdd(codec, truncated, out), InvalidArgument);
  EXPECT_THROW(codec.sparseCount(Message(5, 0)), InvalidArgument);
  Message hugeK = good;
  uint32_t k = 1u << 30;
  std::memcpy(hugeK.data() + 8, &k, sizeof k);
  EXPECT_THROW(decodeAdd(codec, hugeK, out), InvalidArgument);
  Message badLowBits = good;
  badLowBits[2] ^= 1;
  EXPECT_THROW(decodeAdd(codec, badLowBits, out), InvalidArgument);
  Message noMarks = good;
  // Clear every bit of the high part (it follows the low part): fewer marks than k.
  const int l = good[2];
  const size_t lowLen = static_cast<size_t>((3 * l + 7) / 8);
  const size_t highLen = good.size() - kSparseHeaderBytes - lowLen - 4 * 3;
  for (size_t i = 0; i < highLen; ++i) noMarks[kSparseHeaderBytes + lowLen + i] = 0;
  EXPECT_THROW(decodeAdd(codec, noMarks, out), InvalidArgument);
  Message allMarks = good;
  for (size_t i = 0; i < highLen; ++i) allMarks[kSparseHeaderBytes + lowLen + i] = 0xFF;
  EXPECT_THROW(decodeAdd(codec, allMarks, out), InvalidArgument);

  torch::Tensor notFloat = torch::zeros({10}, torch::kDouble);
  EXPECT_THROW(encode(codec, notFloat, state), InvalidArgument);
}

TEST(SparseDecode, MessagesFromSeveralRanksAccumulate) {
  TopKCodec codec(SparseOptions{.k = 2});
  CodecState r0, r1;
  Message m0 = encode(codec, torch::tensor({5.0f, 0.0f, 1.0f, -4.0f}), r0);
  Message m1 = encode(codec, torch::tensor({3.0f, 2.0f, 0.5f, 0.0f}), r1);
  torch::Tensor out = torch::zeros({4});
  decodeAdd(codec, m0, out);
  decodeAdd(codec, m1, out);
  EXPECT_TRUE(torch::equal(out, torch::tensor({8.0f, 2.0f, 0.0f, -4.0f})));
}


// Index sets of every shape the Elias-Fano code meets: empty, one, all, both ends, clustered at
// either end, evenly spread, random at several densities, on sizes around powers of two.
TEST(SparseWire, IndexCodeRoundTripsExactly) {
  auto gen = at::detail::createCPUGenerator(7);
  std::vector<std::pair<int64_t, std::vector<int64_t>>> cases;
  for (int64_t n : {1, 2, 7, 8, 9, 1000, 1023, 1024, 1025, 65537}) {
    cases.push_back({n, {}});
    cases.push_back({n, {0}});
    cases.push_back({n, {n - 1}});
    std::vector<int64_t> all(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
    cases.push_back({n, all});
    if (n > 3) cases.push_back({n, {0, n - 1}});
    if (n > 10) {
      cases.push_back({n, {n - 3, n - 2, n - 1}});  // all in the last high bucket
      cases.push_back({n, {0, 1, 2}});
      std::vector<int64_t> even;
      for (int64_t i = 0; i < n; i += n / 10) even.push_back(i);
      cases.push_back({n, even});
    }
    for (double density : {0.001, 0.01, 0.1, 0.5, 0.9}) {
      int64_t k = std::max<int64_t>(1, static_cast<int64_t>(density * static_cast<double>(n)));
      torch::Tensor pick = std::get<0>(torch::randperm(n, gen, torch::kLong).narrow(0, 0, k).sort());
      cases.push_back({n, std::vector<int64_t>(pick.data_ptr<int64_t>(), pick.data_ptr<int64_t>() + k)});
    }
  }
  for (const auto& [n, idx] : cases) {
    const auto k = static_cast<int64_t>(idx.size());
    torch::Tensor indices = torch::tensor(idx, torch::kLong);
    torch::Tensor values = torch::randn({k}, gen);
    Message msg = packSparse(SparseKind::kDgc, n, indices, values);
    ASSERT_EQ(msg.size(), sparseMessageBytes(n, k)) << "n " << n << " k " << k;
    SparsePairs p = unpackSparse(msg);
    EXPECT_EQ(p.kind, SparseKind::kDgc);
    EXPECT_EQ(p.numel, n);
    ASSERT_TRUE(torch::equal(toTensor(p.indices), indices)) << "n " << n << " k " << k;
    ASSERT_TRUE(torch::equal(toTensor(p.values), values)) << "n " << n << " k " << k;
  }
}

TEST(SparseWire, SizeIsTheDocumentedEliasFanoBound) {
  // n = 10^6, k = 1000 (99.9% sparsity): l = floor(log2(1000)) = 9 low bits, 9000 bits = 1125
  // bytes; high part 1000 + (999999 >> 9) + 1 = 2954 bits = 370 bytes; values 4000; header 12.
  EXPECT_EQ(sparseMessageBytes(1000000, 1000), 12u + 1125u + 370u + 4000u);
  // At most 2 + ceil(log2(n / k)) bits per index, against the 32 of a plain int32 index.
  for (int64_t k : {1, 10, 421, 4210, 42100}) {
    const int64_t n = 421642;
    const double bits = 8.0 * static_cast<double>(sparseMessageBytes(n, k) - 12 - 4 * static_cast<size_t>(k));
    EXPECT_LE(bits / static_cast<double>(k), 2 + std::ceil(std::log2(static_cast<double>(n) / k)) + 16.0 / k)
        << "k " << k;
  }
  EXPECT_EQ(sparseMessageBytes(0, 0), 12u);
  EXPECT_THROW(packSparse(SparseKind::kTopK, 10, torch::tensor({3, 3}, torch::kLong), torch::zeros({2})), Error);
  EXPECT_THROW(packSparse(SparseKind::kTopK, 10, torch::tensor({5, 2}, torch::kLong), torch::zeros({2})), Error);
  EXPECT_THROW(packSparse(SparseKind::kTopK, 10, torch::tensor({10}, torch::kLong), torch::zeros({1})), Error);
}

// Found by fuzz/sparse_fuzz.cc (inputs in fuzz/corpus/sparse/finding-*): the decoder accepted
// a set reserved byte, index marks in a message of k = 0 (which carried numel / 8 bytes of
// marks nobody read), and set padding bits after the low codes. A message now has exactly one
// encoding, and one with no pairs is its 12-byte header.
TEST(SparseWire, DecoderRejectsWhatTheEncoderNeverWrites) {
  EXPECT_EQ(sparseMessageBytes(100, 0), kSparseHeaderBytes);
  EXPECT_EQ(sparseMessageBytes(int64_t{1} << 30, 0), kSparseHeaderBytes);
  Message empty = packSparse(SparseKind::kThreshold, 100, torch::empty({0}, torch::kLong), torch::empty({0}));
  ASSERT_EQ(empty.size(), kSparseHeaderBytes);
  EXPECT_EQ(unpackSparse(empty).indices.size(), 0u);
  Message marked = empty;
  marked.resize(kSparseHeaderBytes + 13, 0);  // the old layout: 100 bits of marks
  marked.back() = 0x5c;
  EXPECT_THROW(unpackSparse(marked), InvalidArgument);

  Message good = packSparse(SparseKind::kTopK, 9, torch::tensor({2}, torch::kLong), torch::tensor({1.5f}));
  ASSERT_EQ(good[2], 3);  // l = 3 low bits, so bits 3..7 of the low byte are padding
  EXPECT_NO_THROW(unpackSparse(good));
  Message reserved = good;
  reserved[3] = 1;
  EXPECT_THROW(unpackSparse(reserved), InvalidArgument);
  Message lowPadding = good;
  lowPadding[kSparseHeaderBytes] |= 0x80;
  EXPECT_THROW(unpackSparse(lowPadding), InvalidArgument);
  Message highPadding = good;
  highPadding[kSparseHeaderBytes + 1] |= 0x80;  // 1 + (8 >> 3) + 1 = 3 mark bits are used
  EXPECT_THROW(unpackSparse(highPadding), InvalidArgument);
}

// Layer-wise top-k: each segment sends its own share, even a segment whose entries are all
// smaller than every entry of another; without segments (or layerwise off) the bucket's top-k.
TEST(SparseLayerwise, EachTensorSendsItsShare) {
  torch::Tensor g = torch::cat({torch::full({100}, 10.0f), torch::arange(1, 901, torch::kFloat) * 1e-3f});
  for (const std::string method : {"topk", "topk_sampled"}) {
    for (bool layerwise : {true, false}) {
      auto codec = makeSparse(method, 0.02, layerwise);
      CodecState st;
      st.segments = {100, 1000};
      torch::Tensor idx = sentIndices(encode(*codec, g, st));
      int64_t first = (idx < 100).sum().item<int64_t>(), second = (idx >= 100).sum().item<int64_t>();
      if (layerwise) {
        EXPECT_EQ(first, 2) << method;
        if (method == "topk") {
          EXPECT_EQ(second, 18);
        } else {
          EXPECT_TRUE(second >= 1 && second <= 36) << second;  // sampled: between 1 and 2k
        }
        // The largest of the second tensor: indices 982..999 hold its 18 largest entries.
        if (method == "topk") {
          EXPECT_TRUE(torch::equal(idx.narrow(0, 2, 18), torch::arange(982, 1000, torch::kLong)));
        }
      } else {
        EXPECT_EQ(first, 20) << method;
        EXPECT_EQ(second, 0) << method;
      }
    }
  }
  CodecState bad;
  bad.segments = {100, 999};
  EXPECT_THROW(encode(*makeSparse("topk", 0.02), g, bad), InvalidArgument);
}

}  // namespace
}  // namespace chorus::compress
