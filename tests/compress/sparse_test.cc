// The sparsifying codecs (topk, topk_sampled, randomk, threshold): error feedback is exact
// (sent + residual == grad + old residual, bit for bit, over many steps), what is sent decodes
// exactly, each selection rule picks what it promises, the wire size is 20 + 8k bytes, the
// decoder rejects malformed messages, and a state copied as a checkpoint continues identically.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cstring>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/compress/sparse.h"

namespace chorus::compress {
namespace {

torch::Tensor randomGrad(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({n});
}

// The indices a sparse message carries, read straight from the documented wire format.
torch::Tensor sentIndices(const Message& msg) {
  int64_t k;
  std::memcpy(&k, msg.data() + 12, sizeof k);
  std::vector<int64_t> idx(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    int32_t v;
    std::memcpy(&v, msg.data() + kSparseHeaderBytes + 4 * i, sizeof v);
    idx[static_cast<size_t>(i)] = v;
  }
  return torch::tensor(idx, torch::kLong);
}

torch::Tensor decodeDense(const Codec& codec, const Message& msg, int64_t n) {
  torch::Tensor out = torch::zeros({n});
  codec.decodeAdd(msg, out);
  return out;
}

// Checks one encode step against acc = grad + old residual: the message holds acc at distinct
// indices, the residual holds acc elsewhere and 0 at the sent indices, and both add up to acc.
void checkStep(const Codec& codec, const Message& msg, const torch::Tensor& acc, const torch::Tensor& residual) {
  int64_t n = acc.numel();
  torch::Tensor idx = sentIndices(msg);
  int64_t k = idx.numel();
  ASSERT_EQ(codec.sparseCount(msg), k);
  ASSERT_EQ(msg.size(), kSparseHeaderBytes + 8 * static_cast<size_t>(k));
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

TEST_P(SparseCodecTest, ErrorFeedbackIsExactOverSteps) {
  auto codec = makeSparse(GetParam().name, GetParam().value);
  EXPECT_EQ(codec->name(), GetParam().name);
  for (int64_t n : {0, 1, 7, 1000, 4099}) {
    CodecState state;
    state.rngState = 42;
    for (int step = 0; step < 5; ++step) {
      torch::Tensor grad = randomGrad(n, 100 * n + step);
      torch::Tensor gradCopy = grad.clone();
      torch::Tensor oldResidual = state.residual(grad).clone();
      torch::Tensor acc = grad + oldResidual;
      Message msg = codec->encode(grad, state);
      EXPECT_TRUE(torch::equal(grad, gradCopy)) << "encode modified the gradient";
      SCOPED_TRACE(testing::Message() << GetParam().name << " n=" << n << " step=" << step);
      checkStep(*codec, msg, acc, state.tensors.at("residual"));
      if (n > 0 && GetParam().name != "threshold") {
        EXPECT_GE(codec->sparseCount(msg), 1);
      }
    }
  }
}

TEST_P(SparseCodecTest, CheckpointedStateContinuesIdentically) {
  auto codec = makeSparse(GetParam().name, GetParam().value);
  const int64_t n = 3001;
  CodecState a;
  a.rngState = 7;
  for (int step = 0; step < 3; ++step) codec->encode(randomGrad(n, step), a);
  CodecState b;  // restored from a "checkpoint" of a
  for (const auto& [name, t] : a.tensors) b.tensors[name] = t.clone();
  b.scalars = a.scalars;
  b.rngState = a.rngState;
  for (int step = 3; step < 6; ++step) {
    torch::Tensor grad = randomGrad(n, step);
    EXPECT_EQ(codec->encode(grad, a), codec->encode(grad, b)) << "step " << step;
  }
  EXPECT_TRUE(torch::equal(a.tensors.at("residual"), b.tensors.at("residual")));
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
  Message msg = codec.encode(grad, state);
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
  Message m1 = byCount.encode(randomGrad(n, 2), s1);
  EXPECT_EQ(byCount.sparseCount(m1), 17);
  EXPECT_EQ(m1.size(), 20u + 8u * 17u);

  TopKCodec byRatio(SparseOptions{.ratio = 0.01});
  CodecState s2;
  Message m2 = byRatio.encode(randomGrad(n, 3), s2);
  EXPECT_EQ(byRatio.sparseCount(m2), 100);
  EXPECT_EQ(m2.size(), 820u);  // vs 40000 bytes dense

  // k larger than the tensor sends everything, and nothing is left behind.
  TopKCodec all(SparseOptions{.k = 50});
  CodecState s3;
  Message m3 = all.encode(randomGrad(7, 4), s3);
  EXPECT_EQ(all.sparseCount(m3), 7);
  EXPECT_TRUE(torch::equal(s3.tensors.at("residual"), torch::zeros({7})));
}

TEST(TopK, ResidualEntriesAreSentLater) {
  // A constant small gradient on one entry grows in the residual until it wins the top-1.
  TopKCodec codec(SparseOptions{.k = 1});
  CodecState state;
  torch::Tensor grad = torch::tensor({1.0f, 0.25f});
  int64_t sentSecond = -1;
  for (int step = 0; step < 8 && sentSecond < 0; ++step) {
    Message msg = codec.encode(grad, state);
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
    torch::Tensor acc = grad + state.residual(grad);
    Message msg = codec.encode(grad, state);
    int64_t k = codec.sparseCount(msg);
    EXPECT_GE(k, 250) << "step " << step;
    EXPECT_LE(k, 2000) << "step " << step;
    checkStep(codec, msg, acc, state.tensors.at("residual"));
    // Everything sent is at least as large as everything kept (a threshold selection).
    torch::Tensor dense = decodeDense(codec, msg, n).abs();
    EXPECT_GE(dense.max().item<float>(), state.tensors.at("residual").abs().max().item<float>());
  }
}

TEST(TopKSampled, SmallTensorsUseExactTopK) {
  // With 200 entries the minimum sample (256) would cover the whole tensor: exact top-k.
  torch::Tensor grad = distinctGrad(200, 5);
  TopKSampledCodec sampled(SparseOptions{.ratio = 0.1});
  TopKCodec exact(SparseOptions{.ratio = 0.1});
  CodecState s1, s2;
  EXPECT_TRUE(torch::equal(sentIndices(sampled.encode(grad, s1)), sentIndices(exact.encode(grad, s2))));
}

TEST(RandomK, ReproducibleForTheSameRngState) {
  const int64_t n = 5000;
  RandomKCodec codec(SparseOptions{.ratio = 0.02});
  CodecState a, b, c;
  a.rngState = b.rngState = 99;
  c.rngState = 100;
  for (int step = 0; step < 3; ++step) {
    torch::Tensor grad = randomGrad(n, step);
    Message ma = codec.encode(grad, a);
    EXPECT_EQ(ma, codec.encode(grad, b));
    EXPECT_NE(ma, codec.encode(grad, c));
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
    torch::Tensor idx = sentIndices(codec.encode(grad, state));
    ASSERT_EQ(idx.numel(), 10);
    hits.index_add_(0, idx, torch::ones({10}, torch::kLong));
  }
  EXPECT_GT(hits.min().item<int64_t>(), 140);
  EXPECT_LT(hits.max().item<int64_t>(), 260);
}

TEST(Threshold, SendsExactlyTheEntriesAtOrAboveTau) {
  const int64_t n = 1000;
  ThresholdCodec codec(1.0);
  CodecState state;
  torch::Tensor grad = randomGrad(n, 8);
  grad[3] = 1.0f;  // exactly tau is sent
  grad[4] = -1.0f;
  grad[5] = std::nextafter(1.0f, 0.0f);  // just below is kept
  Message msg = codec.encode(grad, state);
  torch::Tensor expected = (grad.abs() >= 1.0f).nonzero().reshape({-1});
  EXPECT_TRUE(torch::equal(sentIndices(msg), expected));
  EXPECT_EQ(state.tensors.at("residual")[5].item<float>(), std::nextafter(1.0f, 0.0f));
  // Step 2: the residual counts, e.g. entry 5 now holds ~1 + grad[5].
  torch::Tensor grad2 = randomGrad(n, 9);
  torch::Tensor acc = grad2 + state.tensors.at("residual");
  Message msg2 = codec.encode(grad2, state);
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
  Message good = codec.encode(randomGrad(10, 1), state);
  torch::Tensor out = torch::zeros({10});
  EXPECT_NO_THROW(codec.decodeAdd(good, out));

  torch::Tensor wrongSize = torch::zeros({11});
  EXPECT_THROW(codec.decodeAdd(good, wrongSize), InvalidArgument);
  torch::Tensor wrongType = torch::zeros({10}, torch::kDouble);
  EXPECT_THROW(codec.decodeAdd(good, wrongType), InvalidArgument);

  Message badMagic = good;
  badMagic[0] ^= 0xFF;
  EXPECT_THROW(codec.decodeAdd(badMagic, out), InvalidArgument);
  Message truncated(good.begin(), good.end() - 1);
  EXPECT_THROW(codec.decodeAdd(truncated, out), InvalidArgument);
  EXPECT_THROW(codec.sparseCount(Message(5, 0)), InvalidArgument);
  Message hugeK = good;
  int64_t k = int64_t{1} << 61;
  std::memcpy(hugeK.data() + 12, &k, sizeof k);
  EXPECT_THROW(codec.decodeAdd(hugeK, out), InvalidArgument);
  Message badIndex = good;
  int32_t idx = 10;
  std::memcpy(badIndex.data() + kSparseHeaderBytes, &idx, sizeof idx);
  EXPECT_THROW(codec.decodeAdd(badIndex, out), InvalidArgument);

  torch::Tensor notFloat = torch::zeros({10}, torch::kDouble);
  EXPECT_THROW(codec.encode(notFloat, state), InvalidArgument);
}

TEST(SparseDecode, MessagesFromSeveralRanksAccumulate) {
  TopKCodec codec(SparseOptions{.k = 2});
  CodecState r0, r1;
  Message m0 = codec.encode(torch::tensor({5.0f, 0.0f, 1.0f, -4.0f}), r0);
  Message m1 = codec.encode(torch::tensor({3.0f, 2.0f, 0.5f, 0.0f}), r1);
  torch::Tensor out = torch::zeros({4});
  codec.decodeAdd(m0, out);
  codec.decodeAdd(m1, out);
  EXPECT_TRUE(torch::equal(out, torch::tensor({8.0f, 2.0f, 0.0f, -4.0f})));
}

}  // namespace
}  // namespace chorus::compress
