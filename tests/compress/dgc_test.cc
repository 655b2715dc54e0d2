// Deep Gradient Compression: momentum correction and factor masking against a plain-loop
// reference over several steps, the warm-up sparsity schedule (from setEpoch and from
// state.scalars["epoch"]), local gradient clipping, sampled top-k, option checks, and a state
// copied as a checkpoint continuing identically.
//
// Tolerance: the reference runs the same float32 operations in the same order per element, so
// it agrees to an ulp or so; values are compared with |a - b| <= 1e-6 + 1e-6 |b| and the sent
// indices exactly.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/compress/dgc.h"
#include "compress/torch_codec.h"

namespace chorus::compress {
namespace {

torch::Tensor randomGrad(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({n});
}

std::vector<int64_t> sentIndices(const Message& msg) { return unpackSparse(msg).indices; }

std::vector<float> sentValues(const Message& msg) { return unpackSparse(msg).values; }

std::vector<float> toVector(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

void expectClose(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(a[i], b[i], 1e-6 + 1e-6 * std::abs(b[i])) << what << "[" << i << "]";
}

// Against a plain-loop reference, on one tensor and on two tensors in one bucket (layer-wise:
// each picks round(ratio * its size) of its own entries, at least 1).
TEST(Dgc, MomentumCorrectionMatchesReference) {
  const int64_t n = 20;
  const float m = 0.9f;
  for (bool layered : {false, true}) {
    SCOPED_TRACE(layered ? "two tensors of 8 and 12" : "one tensor");
    DgcOptions opts;
    opts.momentum = m;
    opts.sparsitySchedule = {0.75, 0.9, 0.5};  // k = 5, 2, 10 for epochs 0, 1, 2
    DgcCodec codec(opts);
    CodecState state;
    // Segments [0, 8) and [8, 20): k = (2, 3), (1, 1), (4, 6).
    const std::vector<std::pair<int64_t, int64_t>> ranges =
        layered ? std::vector<std::pair<int64_t, int64_t>>{{0, 8}, {8, 20}} : std::vector<std::pair<int64_t, int64_t>>{{0, 20}};
    if (layered) state.segments = {8, 20};
    const std::vector<std::vector<int64_t>> ks =
        layered ? std::vector<std::vector<int64_t>>{{2, 3}, {1, 1}, {4, 6}} : std::vector<std::vector<int64_t>>{{5}, {2}, {10}};

    std::vector<float> u(n, 0.0f), v(n, 0.0f);
    for (int step = 0; step < 3; ++step) {
      codec.setEpoch(step);
      torch::Tensor grad = randomGrad(n, 10 + step);
      std::vector<float> g = toVector(grad);
      Message msg = encode(codec, grad, state);

      // Reference: u = m u + g; v = v + u; top-k of |v| per range; send; mask v and u.
      for (int64_t i = 0; i < n; ++i) {
        u[i] = m * u[i] + g[i];
        v[i] = v[i] + u[i];
      }
      std::vector<int64_t> sent;
      for (size_t r = 0; r < ranges.size(); ++r) {
        std::vector<int64_t> order;
        for (int64_t i = ranges[r].first; i < ranges[r].second; ++i) order.push_back(i);
        std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return std::abs(v[a]) > std::abs(v[b]); });
        sent.insert(sent.end(), order.begin(), order.begin() + ks[step][r]);
      }
      std::sort(sent.begin(), sent.end());
      std::vector<float> sentVal;
      for (int64_t i : sent) sentVal.push_back(v[i]);
      for (int64_t i : sent) u[i] = v[i] = 0.0f;

      SCOPED_TRACE(testing::Message() << "step " << step);
      EXPECT_EQ(sentIndices(msg), sent);
      expectClose(sentValues(msg), sentVal, "sent values");
      expectClose(toVector(buf(state, "momentum")), u, "momentum");
      expectClose(toVector(buf(state, "velocity")), v, "velocity");
      EXPECT_EQ(state.buffers.count("residual"), 0u);
      for (int64_t i : sent) {
        EXPECT_EQ(buf(state, "momentum")[i].item<float>(), 0.0f);
        EXPECT_EQ(buf(state, "velocity")[i].item<float>(), 0.0f);
      }
    }
  }
}

TEST(Dgc, SentPlusVelocityIsExact) {
  // Whatever is sent leaves the velocity bit for bit: decoded + v_after == v_before + u_new.
  DgcCodec codec(DgcOptions{});
  CodecState state;
  const int64_t n = 997;
  for (int step = 0; step < 4; ++step) {
    torch::Tensor grad = randomGrad(n, 30 + step);
    torch::Tensor uBefore = state.buffers.count("momentum") ? buf(state, "momentum").clone() : torch::zeros({n});
    torch::Tensor vBefore = state.buffers.count("velocity") ? buf(state, "velocity").clone() : torch::zeros({n});
    torch::Tensor uNew = uBefore * 0.9 + grad;
    Message msg = encode(codec, grad, state);
    torch::Tensor dense = torch::zeros({n});
    decodeAdd(codec, msg, dense);
    EXPECT_TRUE(torch::equal(dense + buf(state, "velocity"), vBefore + uNew)) << "step " << step;
  }
}

TEST(Dgc, WarmupSchedule) {
  DgcCodec codec(DgcOptions{});
  const double expected[] = {0.75, 0.9375, 0.984375, 0.996, 0.999, 0.999, 0.999};
  for (int64_t e = 0; e < 7; ++e) EXPECT_DOUBLE_EQ(codec.sparsity(e), expected[e]) << "epoch " << e;
  EXPECT_DOUBLE_EQ(codec.sparsity(1000), 0.999);
  EXPECT_DOUBLE_EQ(codec.sparsity(-1), 0.75);

  // Entries sent for 10000 entries: round((1 - sparsity) * n).
  const int64_t n = 10000;
  const int64_t counts[] = {2500, 625, 156, 40, 10, 10};
  for (int64_t e = 0; e < 6; ++e) {
    codec.setEpoch(e);
    EXPECT_EQ(codec.epoch(), e);
    CodecState state;
    EXPECT_EQ(codec.sparseCount(encode(codec, randomGrad(n, e), state)), counts[e]) << "epoch " << e;
  }
  // state.scalars["epoch"] wins over setEpoch.
  codec.setEpoch(4);
  CodecState state;
  state.scalars["epoch"] = 1;
  EXPECT_EQ(codec.sparseCount(encode(codec, randomGrad(n, 9), state)), 625);
}

TEST(Dgc, LocalClippingScalesByWorldSize) {
  DgcOptions opts;
  opts.momentum = 0.0;
  opts.maxNorm = 2.0;
  opts.worldSize = 4;             // each rank clips to 2 / sqrt(4) = 1
  opts.sparsitySchedule = {0.0};  // send everything: the message is the clipped gradient
  DgcCodec codec(opts);

  CodecState s1;
  torch::Tensor big = torch::tensor({3.0f, 0.0f, -4.0f});  // norm 5
  Message m1 = encode(codec, big, s1);
  expectClose(sentValues(m1), {0.6f, 0.0f, -0.8f}, "clipped");
  EXPECT_TRUE(torch::equal(big, torch::tensor({3.0f, 0.0f, -4.0f}))) << "encode modified the gradient";

  CodecState s2;
  torch::Tensor small = torch::tensor({0.3f, 0.0f, -0.4f});  // norm 0.5: untouched
  EXPECT_EQ(sentValues(encode(codec, small, s2)), (std::vector<float>{0.3f, 0.0f, -0.4f}));

  opts.maxNorm = 0.0;  // off
  DgcCodec noClip(opts);
  CodecState s3;
  EXPECT_EQ(sentValues(encode(noClip, big, s3)), (std::vector<float>{3.0f, 0.0f, -4.0f}));
}

TEST(Dgc, SampledTopKSendsAboutK) {
  DgcOptions opts;
  opts.sampledTopK = true;
  opts.sparsitySchedule = {0.99};  // k = 500
  DgcCodec codec(opts);
  CodecState state;
  state.rngState = 5;
  const int64_t n = 50000;
  for (int step = 0; step < 3; ++step) {
    Message msg = encode(codec, randomGrad(n, 40 + step), state);
    int64_t k = codec.sparseCount(msg);
    EXPECT_GE(k, 125);
    EXPECT_LE(k, 1000);
    for (int64_t i : sentIndices(msg)) {
      ASSERT_EQ(buf(state, "velocity")[i].item<float>(), 0.0f);
      ASSERT_EQ(buf(state, "momentum")[i].item<float>(), 0.0f);
    }
  }
}

TEST(Dgc, CheckpointedStateContinuesIdentically) {
  DgcOptions opts;
  opts.sampledTopK = true;  // exercises the RNG state too
  opts.minSample = 64;
  opts.maxNorm = 10.0;
  DgcCodec codec(opts);
  const int64_t n = 4000;
  CodecState a;
  a.rngState = 77;
  a.scalars["epoch"] = 2;
  for (int step = 0; step < 3; ++step) encode(codec, randomGrad(n, step), a);
  CodecState b;
  b.buffers = a.buffers;
  b.scalars = a.scalars;
  b.rngState = a.rngState;
  for (int step = 3; step < 6; ++step) {
    torch::Tensor grad = randomGrad(n, step);
    EXPECT_EQ(encode(codec, grad, a), encode(codec, grad, b)) << "step " << step;
  }
  EXPECT_TRUE(torch::equal(buf(a, "velocity"), buf(b, "velocity")));
  EXPECT_TRUE(torch::equal(buf(a, "momentum"), buf(b, "momentum")));
}

TEST(Dgc, RejectsBadOptions) {
  auto with = [](auto edit) {
    DgcOptions o;
    edit(o);
    return o;
  };
  EXPECT_THROW(DgcCodec(with([](DgcOptions& o) { o.momentum = 1.0; })), InvalidArgument);
  EXPECT_THROW(DgcCodec(with([](DgcOptions& o) { o.maxNorm = -1.0; })), InvalidArgument);
  EXPECT_THROW(DgcCodec(with([](DgcOptions& o) { o.worldSize = 0; })), InvalidArgument);
  EXPECT_THROW(DgcCodec(with([](DgcOptions& o) { o.sparsitySchedule.clear(); })), InvalidArgument);
  EXPECT_THROW(DgcCodec(with([](DgcOptions& o) { o.sparsitySchedule = {0.5, 1.0}; })), InvalidArgument);
  DgcCodec ok(DgcOptions{});
  EXPECT_EQ(ok.name(), "dgc");
}

}  // namespace
}  // namespace chorus::compress
