// Tests for the quantizing codecs (quantize.h): message sizes, decodes of known inputs (with
// several chunks and odd lengths), the error-feedback invariant, unbiasedness of QSGD and
// TernGrad, QSGD's variance bound, the variance gained by per-chunk scales, decodeAdd
// accumulation, determinism under a fixed rngState, zero / empty / non-finite gradients, and
// the errors for malformed messages and bad arguments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "chorus/common/dtype.h"
#include "chorus/common/error.h"
#include "chorus/compress/quantize.h"
#include "compress/torch_codec.h"

namespace chorus::compress {
namespace {

const std::vector<std::string> kMethods = {"fp16", "bf16", "qsgd", "terngrad", "sign", "int8"};

torch::Tensor randomGrad(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({n});
}

torch::Tensor decode(const Codec& codec, const Message& msg, int64_t n) {
  torch::Tensor out = torch::zeros({n});
  decodeAdd(codec, msg, out);
  return out;
}

std::vector<float> values(const torch::Tensor& t) {
  auto c = t.contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// ---- Message sizes -------------------------------------------------------------------------

TEST(Quantize, MessageSizesMatchTheBitsPerElement) {
  for (int64_t n : {0, 1, 7, 1000, 1021}) {
    const size_t h = kQuantHeaderBytes, un = static_cast<size_t>(n);
    const auto g = randomGrad(n, 1);
    CodecState st;
    EXPECT_EQ(encode(*makeQuantizer("fp16"), g, st).size(), h + 2 * un);
    EXPECT_EQ(encode(*makeQuantizer("bf16"), g, st).size(), h + 2 * un);
    EXPECT_EQ(encode(*makeQuantizer("sign"), g, st).size(), h + 4 + (un + 7) / 8);
    // qsgd and terngrad: one float32 scale per chunk of 512 (the last one shorter).
    const size_t chunks = (un + 511) / 512;
    EXPECT_EQ(encode(*makeQuantizer("terngrad"), g, st).size(), h + 4 + 4 * chunks + (un + 3) / 4);
    EXPECT_EQ(encode(TernGradCodec(false, 0), g, st).size(), h + 4 + 4 * (n > 0) + (un + 3) / 4);
    EXPECT_EQ(encode(TernGradCodec(false, 7), g, st).size(), h + 4 + 4 * ((un + 6) / 7) + (un + 3) / 4);
    EXPECT_EQ(encode(*makeQuantizer("int8"), g, st).size(), h + 4 + 8 * ((un + 255) / 256) + un);
    // qsgd: ceil(log2(s + 1)) + 1 bits: s=1 -> 2, s=7 -> 4 (default), s=15 -> 5, s=127 -> 8.
    for (auto [s, bits] : std::vector<std::pair<int64_t, size_t>>{{1, 2}, {3, 3}, {7, 4}, {8, 5}, {15, 5}, {127, 8}}) {
      QsgdCodec q(s);
      EXPECT_EQ(q.bitsPerElement(), static_cast<int>(bits));
      EXPECT_EQ(encode(q, g, st).size(), h + 8 + 4 * chunks + (un * bits + 7) / 8) << "s=" << s << " n=" << n;
      EXPECT_EQ(encode(QsgdCodec(s, false, 0), g, st).size(), h + 8 + 4 * (n > 0) + (un * bits + 7) / 8);
      EXPECT_EQ(encode(QsgdCodec(s, false, 100), g, st).size(), h + 8 + 4 * ((un + 99) / 100) + (un * bits + 7) / 8);
    }
    EXPECT_EQ(encode(*makeQuantizer("qsgd"), g, st).size(), h + 8 + 4 * chunks + (un * 4 + 7) / 8);
  }
}

// ---- Known inputs --------------------------------------------------------------------------

TEST(Quantize, Cast16DecodesKnownValues) {
  const auto g = torch::tensor({1.0f, -2.0f, 0.5f, 0.0f, 65504.0f, 0.1f, 1.0f + 1.0f / 1024});
  CodecState st;
  Cast16Codec half(Cast16Codec::Format::kFloat16, false), bf(Cast16Codec::Format::kBFloat16, false);
  auto h = values(decode(half, encode(half, g, st), g.numel()));
  EXPECT_EQ(h, (std::vector<float>{1, -2, 0.5f, 0, 65504, 0.0999755859375f, 1.0f + 1.0f / 1024}));
  auto b = values(decode(bf, encode(bf, g, st), g.numel()));
  // bfloat16 keeps 8 significant bits: 0.1 -> 0.10009765625, 1 + 2^-10 -> 1, 65504 -> 65536.
  EXPECT_EQ(b, (std::vector<float>{1, -2, 0.5f, 0, 65536, 0.10009765625f, 1}));
  // Identical to the reference conversions, element by element.
  for (int i = 0; i < 7; ++i) EXPECT_EQ(h[i], halfToFloat(floatToHalf(g[i].item<float>())));
}

TEST(Quantize, SignDecodesToMeanAbsTimesSign) {
  const auto g = torch::tensor({1.0f, -3.0f, 2.0f, 0.0f, -0.5f});
  SignCodec sign(false);
  CodecState st;
  // scale = (1 + 3 + 2 + 0 + 0.5) / 5 = 1.3; zero counts as positive.
  EXPECT_EQ(values(decode(sign, encode(sign, g, st), 5)), (std::vector<float>{1.3f, -1.3f, 1.3f, 1.3f, -1.3f}));
}

TEST(Quantize, TernGradIsExactWhenEveryMagnitudeIsZeroOrTheMax) {
  const auto g = torch::tensor({0.0f, 2.0f, -2.0f, 2.0f, 0.0f});
  TernGradCodec t;
  CodecState st;
  EXPECT_EQ(values(decode(t, encode(t, g, st), 5)), (std::vector<float>{0, 2, -2, 2, 0}));
}

// The float32 at byte `offset` of a message.
float floatAt(const Message& msg, size_t offset) {
  float v;
  std::memcpy(&v, msg.data() + offset, 4);
  return v;
}

TEST(Quantize, TernGradScalesEachChunk) {
  // Chunks of 3 (the last one of 1) with scales 2, 5, 0, 1: every magnitude is 0 or its
  // chunk's max, so the decode is exact; one scale for all would round 2 and 1 randomly.
  const std::vector<float> v = {0, 2, -2, 5, -5, 0, 0, 0, 0, -1};
  const auto g = torch::tensor(v);
  TernGradCodec t(false, 3);
  CodecState st;
  const auto msg = encode(t, g, st);
  ASSERT_EQ(msg.size(), kQuantHeaderBytes + 4 + 4 * 4 + 3);
  const size_t at = kQuantHeaderBytes + 4;  // after the chunk size
  EXPECT_EQ((std::vector<float>{floatAt(msg, at), floatAt(msg, at + 4), floatAt(msg, at + 8), floatAt(msg, at + 12)}),
            (std::vector<float>{2, 5, 0, 1}));
  EXPECT_EQ(values(decode(t, msg, 10)), v);
  // The chunk size travels in the message: a receiver built with another chunk decodes it.
  EXPECT_EQ(values(decode(TernGradCodec(false, 512), msg, 10)), v);
}

TEST(Quantize, QsgdScalesEachChunk) {
  // Chunks of 4 (the last one of 3) with norms 1, 4, 0, 3; |v_i| / norm * s is an integer
  // for s = 2 and 4 in every chunk, so no rounding is random and the decode is exact.
  const std::vector<float> v = {0.5f, -0.5f, 0.5f, -0.5f, 2, 2, -2, 2, 0, 0, 0, 0, 0, -3, 0};
  const auto g = torch::tensor(v);
  for (int64_t s : {2, 4}) {
    QsgdCodec q(s, false, 4);
    CodecState st;
    const auto msg = encode(q, g, st);
    const size_t at = kQuantHeaderBytes + 8;  // after levels and chunk size
    ASSERT_EQ(msg.size(), at + 4 * 4 + (15 * static_cast<size_t>(q.bitsPerElement()) + 7) / 8);
    EXPECT_EQ((std::vector<float>{floatAt(msg, at), floatAt(msg, at + 4), floatAt(msg, at + 8), floatAt(msg, at + 12)}),
              (std::vector<float>{1, 4, 0, 3}));
    EXPECT_EQ(values(decode(q, msg, 15)), v) << "s=" << s;
    EXPECT_EQ(values(decode(QsgdCodec(7, false, 0), msg, 15)), v) << "s=" << s;
  }
}

TEST(Quantize, OddLengthsKeepTheShortLastChunk) {
  // n = 513 and 1031 with chunk 512: the last chunk holds 1 and 7 elements. A lone element is
  // its chunk's norm and max, so qsgd (s = 4) and terngrad decode it exactly.
  for (int64_t n : {513, 1031}) {
    const auto g = randomGrad(n, 30 + n) * 5;
    CodecState st;
    QsgdCodec q(4);
    TernGradCodec t;
    const auto dq = values(decode(q, encode(q, g, st), n)), dt = values(decode(t, encode(t, g, st), n));
    const auto v = values(g);
    if (n == 513) {
      EXPECT_EQ(dq[512], v[512]);
      EXPECT_EQ(dt[512], v[512]);
    }
    // Every decode lies on its own chunk's grid: norm/4 for qsgd, max|v| for terngrad.
    for (int64_t c = 0; c * 512 < n; ++c) {
      const auto part = g.slice(0, c * 512, std::min(n, (c + 1) * 512));
      const float unit = part.norm().item<float>() / 4, scale = part.abs().max().item<float>();
      for (int64_t i = c * 512; i < std::min(n, (c + 1) * 512); ++i) {
        EXPECT_NEAR(dq[i] / unit, std::round(dq[i] / unit), 1e-4) << "n=" << n << " i=" << i;
        EXPECT_TRUE(dt[i] == 0 || std::fabs(dt[i]) == scale) << "n=" << n << " i=" << i;
      }
    }
  }
}

TEST(Quantize, QsgdIsExactOnItsLevels) {
  // norm = 1 and |v_i| * s is an integer for s = 2 and 4, so no rounding is random.
  const auto g = torch::tensor({0.5f, -0.5f, 0.5f, -0.5f});
  for (int64_t s : {2, 4}) {
    QsgdCodec q(s);
    CodecState st;
    EXPECT_EQ(values(decode(q, encode(q, g, st), 4)), values(g)) << "s=" << s;
  }
  // One nonzero element: it is its own norm, level s.
  const auto one = torch::tensor({0.0f, -3.0f, 0.0f});
  QsgdCodec q(4);
  CodecState st;
  EXPECT_EQ(values(decode(q, encode(q, one, st), 3)), (std::vector<float>{0, -3, 0}));
}

TEST(Quantize, Int8DecodesPerChunkRanges) {
  // Chunk 0 holds 0..255 (step 1), chunk 1 a constant (step 0), chunk 2 the ends of a range
  // with step 0.5: all decode exactly.
  std::vector<float> v(256 + 256 + 2);
  for (int i = 0; i < 256; ++i) v[i] = static_cast<float>(i);
  for (int i = 256; i < 512; ++i) v[i] = 7.25f;
  v[512] = -1;
  v[513] = 126.5f;
  const auto g = torch::tensor(v);
  Int8Codec q(false);
  CodecState st;
  EXPECT_EQ(values(decode(q, encode(q, g, st), g.numel())), v);
}

TEST(Quantize, Int8ErrorIsAtMostHalfAStep) {
  const auto g = randomGrad(1000, 5) * 3;
  Int8Codec q(false);
  CodecState st;
  const auto d = values(decode(q, encode(q, g, st), g.numel()));
  const auto v = values(g);
  for (size_t c = 0; c < v.size(); c += 256) {
    const size_t end = std::min(v.size(), c + 256);
    const float lo = *std::min_element(v.begin() + c, v.begin() + end);
    const float hi = *std::max_element(v.begin() + c, v.begin() + end);
    const float halfStep = (hi - lo) / 255 / 2;
    for (size_t i = c; i < end; ++i) EXPECT_LE(std::fabs(d[i] - v[i]), halfStep * (1 + 1e-5f) + 2e-6f) << i;
  }
}

// ---- Error feedback ------------------------------------------------------------------------

// For every step: decoded + new residual == grad + old residual (acc), where the only error
// allowed is the rounding of the float32 subtraction residual = acc - decoded, i.e. half an
// ulp of the residual (checked in double). Over all steps the sum of decodes plus the final
// residual telescopes to the sum of the gradients.
void checkErrorFeedback(Codec& codec, int64_t n) {
  CodecState st;
  torch::Tensor sumGrad = torch::zeros({n}, torch::kFloat64), sumDecoded = torch::zeros({n}, torch::kFloat64);
  for (int step = 0; step < 6; ++step) {
    const auto g = randomGrad(n, 100 + step) * (step + 1);
    const auto old = st.buffers.count("residual") ? buf(st, "residual").clone() : torch::zeros({n});
    const auto acc = values(g + old);
    const auto msg = encode(codec, g, st);
    ASSERT_TRUE(st.buffers.count("residual")) << codec.name();
    const auto d = values(decode(codec, msg, n));
    const auto r = values(buf(st, "residual"));
    for (int64_t i = 0; i < n; ++i) {
      const double err = std::fabs(double(d[i]) + double(r[i]) - double(acc[i]));
      ASSERT_LE(err, std::ldexp(std::fabs(double(r[i])), -24)) << codec.name() << " step " << step << " i " << i;
    }
    sumGrad += g.to(torch::kFloat64);
    sumDecoded += torch::tensor(d).to(torch::kFloat64);
  }
  const auto gap = (sumDecoded + buf(st, "residual").to(torch::kFloat64) - sumGrad).abs().max().item<double>();
  EXPECT_LT(gap, 1e-4) << codec.name();
}

TEST(Quantize, ErrorFeedbackInvariantHolds) {
  for (const auto& m : kMethods) {
    auto codec = makeQuantizer(m, 0, true);
    checkErrorFeedback(*codec, 1021);
  }
}

TEST(Quantize, SignErrorFeedbackRecoversAConstantGradient) {
  // With error feedback, the average decode of a constant gradient converges to it (the
  // residual stays bounded); without, it stays at scale * sign.
  const auto g = torch::tensor({1.0f, -0.1f, 0.01f, 4.0f});
  SignCodec ef(true), plain(false);
  CodecState s1, s2;
  torch::Tensor sum1 = torch::zeros({4}), sum2 = torch::zeros({4});
  const int steps = 400;
  for (int t = 0; t < steps; ++t) {
    decodeAdd(ef, encode(ef, g, s1), sum1);
    decodeAdd(plain, encode(plain, g, s2), sum2);
  }
  EXPECT_TRUE(torch::allclose(sum1 / steps, g, 0, 0.05)) << sum1 / steps;
  EXPECT_FALSE(torch::allclose(sum2 / steps, g, 0, 0.05));
  EXPECT_EQ(s2.buffers.count("residual"), 0u);
}

TEST(Quantize, FactoryDefaultsForErrorFeedback) {
  const auto g = randomGrad(10, 3);
  for (auto [m, ef] : std::vector<std::pair<std::string, bool>>{
           {"fp16", true}, {"bf16", true}, {"qsgd", false}, {"terngrad", false}, {"sign", true}, {"int8", true}}) {
    auto codec = makeQuantizer(m);
    EXPECT_EQ(codec->name(), m);
    CodecState st;
    encode(*codec, g, st);
    EXPECT_EQ(st.buffers.count("residual") == 1, ef) << m;
    CodecState st2;
    encode(*makeQuantizer(m, 0, !ef), g, st2);
    EXPECT_EQ(st2.buffers.count("residual") == 1, !ef) << m;
  }
}

// ---- Unbiasedness and variance -------------------------------------------------------------

// Encodes `g` `trials` times (the rng advancing) and checks every element's mean decode is
// within 4 standard errors of g_i, the standard error coming from the exact per-element
// variance var_i, plus `slack` for float rounding (the 24-bit uniforms bias a rounding by at
// most 2^-24 of a grid step). Returns the mean of ||Q(g) - g||^2 over the trials.
double checkUnbiased(Codec& codec, const torch::Tensor& g, const std::vector<double>& var, int trials,
                     double slack) {
  const int64_t n = g.numel();
  CodecState st;
  st.rngState = 42;
  torch::Tensor sum = torch::zeros({n}, torch::kFloat64);
  double sqErr = 0;
  for (int t = 0; t < trials; ++t) {
    const auto d = decode(codec, encode(codec, g, st), n);
    sum += d.to(torch::kFloat64);
    sqErr += (d - g).pow(2).sum().item<double>();
  }
  const auto mean = values((sum / trials).to(torch::kFloat32));
  const auto v = values(g);
  for (int64_t i = 0; i < n; ++i) {
    const double se = std::sqrt(var[i] / trials);
    EXPECT_LE(std::fabs(mean[i] - v[i]), 4 * se + slack)
        << codec.name() << " element " << i << " (se " << se << ")";
  }
  return sqErr / trials;
}

// Exact per-element variance of QSGD with s levels in chunks of d (0 = one chunk), and the
// paper's bound min(d/s^2, sqrt(d)/s) ||v_chunk||^2 summed over the chunks.
std::vector<double> qsgdVariance(const torch::Tensor& g, int64_t s, int64_t d, double* bound) {
  const int64_t n = g.numel(), size = d == 0 ? n : d;
  std::vector<double> var(n);
  *bound = 0;
  for (int64_t b = 0; b < n; b += size) {
    const int64_t e = std::min(n, b + size);
    const double norm = g.slice(0, b, e).norm().item<double>(), len = double(e - b);
    *bound += std::min(len / (s * s), std::sqrt(len) / s) * norm * norm;
    for (int64_t i = b; i < e; ++i) {
      const double x = std::fabs(g[i].item<double>()) / norm * s, p = x - std::floor(x);
      var[i] = (norm / s) * (norm / s) * p * (1 - p);
    }
  }
  return var;
}

TEST(Quantize, QsgdIsUnbiasedAndWithinItsVarianceBound) {
  const int64_t n = 100, trials = 2000;
  const auto g = randomGrad(n, 7);
  const double norm = g.norm().item<double>();
  // Chunks of 0 (one), 512 (one, the default), 16 (seven, the last of 4 elements).
  for (int64_t d : {0, 512, 16}) {
    for (int64_t s : {1, 4, 7}) {
      double bound;
      const auto var = qsgdVariance(g, s, d, &bound);
      double expected = 0;
      for (double x : var) expected += x;
      QsgdCodec q(s, false, d);
      const double mse = checkUnbiased(q, g, var, trials, 1e-6 * norm);
      // The paper's bound, and the exact expected variance within 10%.
      EXPECT_LE(mse, bound) << "s=" << s << " d=" << d;
      EXPECT_NEAR(mse, expected, 0.1 * expected) << "s=" << s << " d=" << d;
    }
  }
}

TEST(Quantize, TernGradIsUnbiased) {
  const int64_t n = 100, trials = 2000;
  const auto g = randomGrad(n, 8);
  for (int64_t d : {0, 512, 16}) {
    const int64_t size = d == 0 ? n : d;
    std::vector<double> var(n);
    double expected = 0;
    for (int64_t b = 0; b < n; b += size) {
      const int64_t e = std::min(n, b + size);
      const double scale = g.slice(0, b, e).abs().max().item<double>();
      for (int64_t i = b; i < e; ++i) {
        const double p = std::fabs(g[i].item<double>()) / scale;
        var[i] = scale * scale * p * (1 - p);
        expected += var[i];
      }
    }
    TernGradCodec t(false, d);
    const double mse = checkUnbiased(t, g, var, trials, 1e-6 * g.abs().max().item<double>());
    EXPECT_NEAR(mse, expected, 0.1 * expected) << "d=" << d;
  }
}

TEST(Quantize, ChunksCutTheVarianceOfALongGradientWithOutliers) {
  // 100k small values and three large ones, as in a DDP bucket holding several layers. One
  // scale for the whole message makes every small value's grid step huge; with chunks of 512
  // only the three chunks holding an outlier pay for it.
  const int64_t n = 100000;
  auto g = randomGrad(n, 20) * 0.01f;
  g[10] = 100.0f;
  g[50000] = -80.0f;
  g[99999] = 60.0f;
  const auto mse = [&](Codec& codec) {
    CodecState st;
    st.rngState = 5;
    return (decode(codec, encode(codec, g, st), n) - g).pow(2).mean().item<double>();
  };
  QsgdCodec qWhole(7, false, 0), qChunked(7);
  TernGradCodec tWhole(false, 0), tChunked;
  const double qw = mse(qWhole), qc = mse(qChunked), tw = mse(tWhole), tc = mse(tChunked);
  EXPECT_GT(qw, 10 * qc) << "qsgd whole " << qw << " chunked " << qc;
  EXPECT_GT(tw, 10 * tc) << "terngrad whole " << tw << " chunked " << tc;
  std::cout << "mean squared error, whole vs chunked: qsgd " << qw << " vs " << qc << ", terngrad " << tw << " vs "
            << tc << "\n";
}

TEST(Quantize, StochasticDecodesLieOnTheGrid) {
  const auto g = randomGrad(100, 9);
  CodecState st;
  QsgdCodec q(7);
  const auto d = values(decode(q, encode(q, g, st), 100));
  const float unit = g.norm().item<float>() / 7;
  for (float x : d) EXPECT_NEAR(x / unit, std::round(x / unit), 1e-4);
  TernGradCodec t;
  const float scale = g.abs().max().item<float>();
  for (float x : values(decode(t, encode(t, g, st), 100))) EXPECT_TRUE(x == 0 || std::fabs(x) == scale) << x;
}

// ---- decodeAdd, determinism, edge cases ----------------------------------------------------

TEST(Quantize, DecodeAddAccumulatesMessages) {
  const int64_t n = 300;
  for (const auto& m : kMethods) {
    auto codec = makeQuantizer(m);
    CodecState a, b;
    const auto m1 = encode(*codec, randomGrad(n, 11), a);
    const auto m2 = encode(*codec, randomGrad(n, 12), b);
    const auto d1 = decode(*codec, m1, n), d2 = decode(*codec, m2, n);
    torch::Tensor out = torch::full({n}, 0.25f);
    decodeAdd(*codec, m1, out);
    decodeAdd(*codec, m2, out);
    EXPECT_TRUE(torch::allclose(out, d1 + d2 + 0.25f, 1e-6, 1e-6)) << m;
    EXPECT_GT((d1 - d2).abs().max().item<float>(), 0) << m;  // two different messages
  }
}

TEST(Quantize, SameRngStateGivesTheSameMessage) {
  const auto g = randomGrad(500, 13);
  for (const auto& m : kMethods) {
    auto codec = makeQuantizer(m);
    CodecState a, b, c;
    a.rngState = b.rngState = 77;
    c.rngState = 78;
    const auto ma = encode(*codec, g, a), mb = encode(*codec, g, b), mc = encode(*codec, g, c);
    EXPECT_EQ(ma, mb) << m;
    EXPECT_EQ(a.rngState, b.rngState) << m;
    const bool stochastic = m == "qsgd" || m == "terngrad";
    EXPECT_EQ(ma != mc, stochastic) << m;     // only the stochastic codecs use the rng
    EXPECT_EQ(a.rngState != 77, stochastic) << m;
  }
}

TEST(Quantize, ZeroAndEmptyGradientsDecodeToZeros) {
  for (const auto& m : kMethods) {
    auto codec = makeQuantizer(m, 0, true);
    for (int64_t n : {0, 1, 257}) {
      CodecState st;
      const auto d = decode(*codec, encode(*codec, torch::zeros({n}), st), n);
      EXPECT_TRUE(torch::equal(d, torch::zeros({n}))) << m << " n=" << n;
      EXPECT_TRUE(torch::equal(buf(st, "residual"), torch::zeros({n}))) << m;
    }
  }
}

TEST(Quantize, NonFiniteGradientDecodesToNonFiniteAndKeepsResidualFinite) {
  auto g = randomGrad(300, 14);
  g[5] = std::numeric_limits<float>::quiet_NaN();
  g[7] = std::numeric_limits<float>::infinity();
  for (const auto& m : kMethods) {
    auto codec = makeQuantizer(m, 0, true);
    CodecState st;
    const auto d = decode(*codec, encode(*codec, g, st), g.numel());
    EXPECT_FALSE(torch::isfinite(d).all().item<bool>()) << m;
    // The elements of the bad chunk (int8, qsgd, terngrad) or the whole message (the others)
    // are NaN.
    EXPECT_TRUE(std::isnan(d[5].item<float>())) << m;
    EXPECT_TRUE(torch::isfinite(buf(st, "residual")).all().item<bool>()) << m;
  }
}

TEST(Quantize, AcceptsAnyContiguousShape) {
  const auto g = randomGrad(24, 15).reshape({2, 3, 4});
  auto codec = makeQuantizer("int8", 0, false);
  CodecState st;
  EXPECT_TRUE(torch::allclose(decode(*codec, encode(*codec, g, st), 24), g.reshape({-1}), 0, 0.02));
}

// ---- Errors --------------------------------------------------------------------------------

TEST(Quantize, RejectsMalformedMessagesAndBadArguments) {
  const auto g = randomGrad(100, 16);
  CodecState st;
  for (const auto& m : kMethods) {
    auto codec = makeQuantizer(m);
    const auto msg = encode(*codec, g, st);
    torch::Tensor out = torch::zeros({100});
    EXPECT_THROW(decodeAdd(*codec, Message(msg.begin(), msg.end() - 1), out), InvalidArgument) << m;
    EXPECT_THROW(decodeAdd(*codec, Message(msg.begin(), msg.begin() + 3), out), InvalidArgument) << m;
    EXPECT_THROW(decodeAdd(*codec, Message{}, out), InvalidArgument) << m;
    auto longer = msg;
    longer.push_back(0);
    EXPECT_THROW(decodeAdd(*codec, longer, out), InvalidArgument) << m;
    torch::Tensor wrong = torch::zeros({99});
    EXPECT_THROW(decodeAdd(*codec, msg, wrong), InvalidArgument) << m;
    torch::Tensor dbl = torch::zeros({100}, torch::kFloat64);
    EXPECT_THROW(decodeAdd(*codec, msg, dbl), InvalidArgument) << m;
    EXPECT_THROW(encode(*codec, g.to(torch::kFloat64), st), InvalidArgument) << m;
    EXPECT_THROW(encode(*codec, torch::zeros({4, 4}).t(), st), InvalidArgument) << m;
    // Another codec's message is refused by its kind byte.
    for (const auto& other : kMethods) {
      if (other == m) continue;
      EXPECT_THROW(decodeAdd(*makeQuantizer(other), msg, out), InvalidArgument) << m << " by " << other;
    }
  }
  // Corrupt codes: terngrad's unused code 3, a qsgd level above s.
  TernGradCodec t;
  auto tm = encode(t, g, st);
  tm.back() = 0xFF;
  torch::Tensor out = torch::zeros({100});
  EXPECT_THROW(decodeAdd(t, tm, out), InvalidArgument);
  QsgdCodec q(5);  // 4 bits, levels 6 and 7 invalid
  auto qm = encode(q, g, st);
  qm.back() = 0xFF;
  EXPECT_THROW(decodeAdd(q, qm, out), InvalidArgument);
  // A chunk size that does not match the number of scales makes the message the wrong length.
  for (size_t at : {kQuantHeaderBytes + 4, kQuantHeaderBytes}) {  // qsgd's chunk, terngrad's chunk
    auto m = at == kQuantHeaderBytes ? encode(t, g, st) : encode(q, g, st);
    const uint32_t one = 1;
    std::memcpy(m.data() + at, &one, 4);
    if (at == kQuantHeaderBytes) EXPECT_THROW(decodeAdd(t, m, out), InvalidArgument);
    else EXPECT_THROW(decodeAdd(q, m, out), InvalidArgument);
  }
  EXPECT_THROW(QsgdCodec(7, false, -1), InvalidArgument);
  EXPECT_THROW(TernGradCodec(false, int64_t{1} << 32), InvalidArgument);
  EXPECT_EQ(QsgdCodec().chunk(), kDefaultQuantChunk);
  EXPECT_EQ(TernGradCodec().chunk(), kDefaultQuantChunk);

  EXPECT_THROW(makeQuantizer("fp8"), ConfigError);
  EXPECT_THROW(makeQuantizer("int8", 4), ConfigError);
  EXPECT_THROW(makeQuantizer("qsgd", 128), ConfigError);
  EXPECT_THROW(makeQuantizer("qsgd", -1), ConfigError);
  EXPECT_EQ(dynamic_cast<QsgdCodec&>(*makeQuantizer("qsgd", 15)).levels(), 15);
  EXPECT_EQ(dynamic_cast<QsgdCodec&>(*makeQuantizer("qsgd")).levels(), QsgdCodec::kDefaultLevels);
}

// Found by fuzz/quantize_fuzz.cc (fuzz/corpus/quantize/finding-*): a corrupt code in a later
// chunk was found only after the earlier chunks had been added, so a refused message left the
// sum of the other ranks' messages half-updated. Every code is now checked first.
TEST(Quantize, RefusedMessageLeavesTheOutputUntouched) {
  torch::Tensor g = randomGrad(1000, 5);
  CodecState st;
  TernGradCodec t(false, 100);
  QsgdCodec q(5, false, 100);  // 4-bit codes, levels 6 and 7 invalid
  for (Codec* codec : {static_cast<Codec*>(&t), static_cast<Codec*>(&q)}) {
    Message m = encode(*codec, g, st);
    m.back() = 0xFF;  // the last element's code: invalid for both
    torch::Tensor out = torch::full({1000}, 2.5f);
    EXPECT_THROW(decodeAdd(*codec, m, out), InvalidArgument) << codec->name();
    EXPECT_TRUE(torch::equal(out, torch::full({1000}, 2.5f))) << codec->name() << " changed the output";
  }
}

}  // namespace
}  // namespace chorus::compress
