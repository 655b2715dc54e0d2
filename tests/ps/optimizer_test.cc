// Server optimizers against references: sgd steps computed by hand, every variant against a
// double-precision loop of optimizer.h's formulas (torch.optim 1.13), adam and adamw against
// values from torch.optim in float64; save()/restore() continuing bitwise like an
// uninterrupted run; and the option, length and state errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "chorus/common/error.h"
#include "chorus/ps/optimizer.h"

namespace chorus::ps {
namespace {

OptimizerOptions sgd(double momentum = 0, double dampening = 0, bool nesterov = false, double wd = 0) {
  OptimizerOptions o;
  o.momentum = momentum;
  o.dampening = dampening;
  o.nesterov = nesterov;
  o.weightDecay = wd;
  return o;
}

OptimizerOptions adam(const std::string& name, double wd = 0) {
  OptimizerOptions o;
  o.name = name;
  o.weightDecay = wd;
  return o;
}

// The header's formulas in double, one element at a time.
struct Reference {
  OptimizerOptions o;
  std::vector<double> p, buf, m, v;
  int64_t t = 0;

  void step(const std::vector<double>& g, double lr) {
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      if (o.name == "sgd") {
        double d = g[i] + o.weightDecay * p[i];
        if (o.momentum > 0) {
          buf[i] = t == 1 ? d : o.momentum * buf[i] + (1 - o.dampening) * d;
          d = o.nesterov ? d + o.momentum * buf[i] : buf[i];
        }
        p[i] -= lr * d;
      } else {
        double gi = g[i];
        if (o.name == "adamw") p[i] *= 1 - lr * o.weightDecay;
        else gi += o.weightDecay * p[i];
        m[i] = o.beta1 * m[i] + (1 - o.beta1) * gi;
        v[i] = o.beta2 * v[i] + (1 - o.beta2) * gi * gi;
        p[i] -= (lr / (1 - std::pow(o.beta1, t))) * m[i] /
                (std::sqrt(v[i]) / std::sqrt(1 - std::pow(o.beta2, t)) + o.eps);
      }
    }
  }
};

const std::vector<float> kP0 = {1.0f, -0.5f, 0.25f, 2.0f, -3.0f};
const std::vector<std::vector<float>> kGrads = {
    {0.5f, -1.0f, 0.125f, 0.0f, 2.0f}, {0.25f, 0.5f, -0.75f, 1.0f, -1.0f}, {-0.5f, 0.25f, 0.5f, -2.0f, 0.5f}};
const std::vector<double> kLr = {0.1, 0.05, 0.2};  // a schedule: lr changes between steps

void expectMatchesReference(const OptimizerOptions& o) {
  SCOPED_TRACE(::testing::Message() << o.name << " momentum " << o.momentum << " dampening " << o.dampening
                                    << " nesterov " << o.nesterov << " wd " << o.weightDecay);
  const size_t n = kP0.size();
  auto opt = makeServerOptimizer(o, static_cast<int64_t>(n));
  std::vector<float> p = kP0;
  Reference ref{o, std::vector<double>(kP0.begin(), kP0.end()), std::vector<double>(n), std::vector<double>(n),
                std::vector<double>(n)};
  for (size_t s = 0; s < kGrads.size(); ++s) {
    opt->step(p, kGrads[s], kLr[s]);
    ref.step(std::vector<double>(kGrads[s].begin(), kGrads[s].end()), kLr[s]);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_NEAR(p[i], ref.p[i], 2e-6 * (1 + std::abs(ref.p[i]))) << "step " << s + 1 << " element " << i;
    }
  }
  EXPECT_EQ(opt->save().steps, 3);
}

TEST(OptimizerTest, SgdByHand) {
  // p0 = 1, g = 1 each step, lr = 0.1; the expected values are worked out on paper.
  struct Case {
    OptimizerOptions o;
    double p1, p2, p3;
  };
  const Case cases[] = {
      {sgd(), 0.9, 0.8, 0.7},
      {sgd(0.9), 0.9, 0.71, 0.439},                 // buf 1, 1.9, 2.71
      {sgd(0.9, 0.5), 0.9, 0.76, 0.584},            // buf 1, 1.4, 1.76 (no dampening at first)
      {sgd(0.9, 0, true), 0.81, 0.539, 0.1951},     // d 1.9, 2.71, 3.439
      {sgd(0, 0, false, 0.1), 0.89, 0.7811, 0.673289},  // d 1.1, 1.089, 1.07811
  };
  for (const Case& c : cases) {
    auto opt = makeServerOptimizer(c.o, 1);
    std::vector<float> p = {1.0f};
    const std::vector<float> g = {1.0f};
    const double expected[] = {c.p1, c.p2, c.p3};
    for (int s = 0; s < 3; ++s) {
      opt->step(p, g, 0.1);
      EXPECT_NEAR(p[0], expected[s], 1e-6) << "momentum " << c.o.momentum << " step " << s + 1;
    }
  }
}

TEST(OptimizerTest, AdamFirstStepIsLrTimesSign) {
  // m^ = g and v^ = g^2 after one step, so each parameter moves by lr * g / (|g| + eps).
  for (const char* name : {"adam", "adamw"}) {
    auto opt = makeServerOptimizer(adam(name), 3);
    std::vector<float> p = {1.0f, 1.0f, 1.0f};
    const std::vector<float> g = {3.0f, -0.001f, 0.0f};
    opt->step(p, g, 0.01);
    EXPECT_NEAR(p[0], 1 - 0.01 * 3 / (3 + 1e-8), 1e-7) << name;
    EXPECT_NEAR(p[1], 1 + 0.01 * 0.001 / (0.001 + 1e-8), 1e-7) << name;
    EXPECT_EQ(p[2], 1.0f) << name;
  }
}

TEST(OptimizerTest, MatchesReferenceFormulas) {
  expectMatchesReference(sgd());
  expectMatchesReference(sgd(0.9));
  expectMatchesReference(sgd(0.9, 0.3));
  expectMatchesReference(sgd(0.8, 0, true));
  expectMatchesReference(sgd(0.9, 0.1, false, 0.01));
  expectMatchesReference(sgd(0.5, 0, true, 0.2));
  expectMatchesReference(adam("adam"));
  expectMatchesReference(adam("adam", 0.1));
  expectMatchesReference(adam("adamw"));
  expectMatchesReference(adam("adamw", 0.1));
  OptimizerOptions odd = adam("adam", 0.05);
  odd.beta1 = 0.5;
  odd.beta2 = 0.9;
  odd.eps = 1e-3;
  expectMatchesReference(odd);
}

TEST(OptimizerTest, MatchesTorchFloat64) {
  // torch 1.13: torch.optim.Adam / AdamW(lr=0.1 then 0.05 then 0.2 set per step,
  // weight_decay=0.1) on float64 tensors kP0 with gradients kGrads.
  const double adamRef[] = {0.7925734020030054, -0.3595776834555748, 0.1828479018557957, 1.8918436829799374,
                            -3.1268192284140324};
  const double adamwRef[] = {0.8000055870514202, -0.35983621382416636, 0.18475722544885612, 1.9570925295728432,
                             -3.0746933435002357};
  for (const char* name : {"adam", "adamw"}) {
    auto opt = makeServerOptimizer(adam(name, 0.1), 5);
    std::vector<float> p = kP0;
    for (size_t s = 0; s < kGrads.size(); ++s) opt->step(p, kGrads[s], kLr[s]);
    const double* ref = std::string(name) == "adam" ? adamRef : adamwRef;
    for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(p[i], ref[i], 2e-6 * (1 + std::abs(ref[i]))) << name << " " << i;
  }
}

TEST(OptimizerTest, SaveRestoreContinuesBitwise) {
  OptimizerOptions midRound = sgd(0.9, 0.1, false, 0.01);
  midRound.pushesPerRound = 3;  // saved after 2 pushes: the round sum must travel too
  const OptimizerOptions all[] = {sgd(), sgd(0.9, 0.1, false, 0.01), sgd(0.9, 0, true), adam("adam", 0.1),
                                  adam("adamw", 0.1), midRound};
  for (const OptimizerOptions& o : all) {
    SCOPED_TRACE(o.name + " momentum " + std::to_string(o.momentum));
    auto straight = makeServerOptimizer(o, 5);
    std::vector<float> a = kP0;
    for (int s = 0; s < 5; ++s) straight->step(a, kGrads[s % 3], kLr[s % 3]);

    auto first = makeServerOptimizer(o, 5);
    std::vector<float> b = kP0;
    for (int s = 0; s < 2; ++s) first->step(b, kGrads[s % 3], kLr[s % 3]);
    const ServerOptimizer::State saved = first->save();
    EXPECT_EQ(saved.steps, 2);
    auto second = makeServerOptimizer(o, 5);
    second->restore(saved);
    for (int s = 2; s < 5; ++s) second->step(b, kGrads[s % 3], kLr[s % 3]);

    for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "element " << i;  // bitwise
    const ServerOptimizer::State x = straight->save(), y = second->save();
    EXPECT_EQ(x.steps, y.steps);
    EXPECT_EQ(x.names, y.names);
    EXPECT_EQ(x.buffers, y.buffers);
  }
  EXPECT_TRUE(makeServerOptimizer(sgd(), 5)->save().names.empty());
  EXPECT_EQ(makeServerOptimizer(adam("adam"), 5)->save().names,
            (std::vector<std::string>{"exp_avg", "exp_avg_sq"}));
}

std::string errorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "no InvalidArgument";
}

// asp/ssp with N workers: each push is a step on g_i / N. When the N pushes of a round are
// computed on the same parameters (as in ssp with s = 0), round momentum must give exactly the
// bsp step on the average gradient, round after round; per-push momentum must not.
TEST(OptimizerTest, RoundMomentumOfNPushesIsTheBspStep) {
  const int n = 3;
  const OptimizerOptions variants[] = {sgd(0.9), sgd(0.9, 0.3), sgd(0.5, 0, true)};
  for (const OptimizerOptions& base : variants) {
    SCOPED_TRACE(::testing::Message() << "momentum " << base.momentum << " dampening " << base.dampening
                                      << " nesterov " << base.nesterov);
    OptimizerOptions pushed = base;
    pushed.pushesPerRound = n;
    auto round = makeServerOptimizer(pushed, 5);
    pushed.roundMomentum = false;
    auto perPush = makeServerOptimizer(pushed, 5);
    auto bsp = makeServerOptimizer(base, 5);
    std::vector<float> a = kP0, b = kP0, ref = kP0;
    double worstPerPush = 0;
    for (int r = 0; r < 4; ++r) {
      // Worker i's gradient this round: kGrads rotated, scaled per round.
      std::vector<float> avg(5, 0.0f);
      for (int i = 0; i < n; ++i) {
        std::vector<float> g(5);
        for (size_t k = 0; k < 5; ++k) {
          const float gi = kGrads[static_cast<size_t>((i + r) % 3)][k] * static_cast<float>(1 + r);
          g[k] = gi / n;
          avg[k] += gi / n;
        }
        round->step(a, g, kLr[static_cast<size_t>(r % 3)]);
        perPush->step(b, g, kLr[static_cast<size_t>(r % 3)]);
      }
      bsp->step(ref, avg, kLr[static_cast<size_t>(r % 3)]);
      for (size_t k = 0; k < 5; ++k) {
        EXPECT_NEAR(a[k], ref[k], 1e-5 * (1 + std::abs(ref[k]))) << "round " << r << " element " << k;
        worstPerPush = std::max(worstPerPush, std::abs(static_cast<double>(b[k]) - ref[k]));
      }
    }
    EXPECT_GT(worstPerPush, 1e-2) << "per-push momentum should differ from the bsp step";
    EXPECT_EQ(round->save().names, (std::vector<std::string>{"momentum_buffer", "round_sum"}));
  }
}

TEST(OptimizerTest, PushSharesOfWeightDecayAndAdam) {
  // Weight decay is wd / N per push: with g = 0, N pushes decay like one bsp step would
  // (to first order in lr * wd).
  OptimizerOptions o = sgd(0, 0, false, 0.1);
  o.pushesPerRound = 4;
  auto decay = makeServerOptimizer(o, 1);
  std::vector<float> p = {1.0f};
  for (int i = 0; i < 4; ++i) decay->step(p, std::vector<float>{0.0f}, 0.1);
  EXPECT_NEAR(p[0], std::pow(1 - 0.1 * 0.1 / 4, 4), 1e-7);
  // Adam's first step moves lr * sign(g) whatever g's scale; one push moves a 1/N share of it.
  for (const char* name : {"adam", "adamw"}) {
    OptimizerOptions a = adam(name);
    a.pushesPerRound = 4;
    auto opt = makeServerOptimizer(a, 1);
    std::vector<float> q = {1.0f};
    opt->step(q, std::vector<float>{3.0f / 4}, 0.01);
    EXPECT_NEAR(q[0], 1 - 0.01 / 4, 1e-7) << name;
  }
  OptimizerOptions bad = sgd();
  bad.pushesPerRound = 0;
  EXPECT_NE(errorOf([&] { makeServerOptimizer(bad, 1); }).find("pushesPerRound"), std::string::npos);
}

TEST(OptimizerTest, Errors) {
  OptimizerOptions o;
  o.name = "rmsprop";
  const std::string unknown = errorOf([&] { makeServerOptimizer(o, 4); });
  EXPECT_NE(unknown.find("'rmsprop'"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("sgd, adam or adamw"), std::string::npos) << unknown;
  EXPECT_NE(errorOf([] { makeServerOptimizer(sgd(0, 0, true), 4); }).find("nesterov"), std::string::npos);
  EXPECT_NE(errorOf([] { makeServerOptimizer(sgd(0.9, 0.1, true), 4); }).find("dampening 0"), std::string::npos);
  EXPECT_NE(errorOf([] { makeServerOptimizer(sgd(-0.1), 4); }).find("momentum"), std::string::npos);
  EXPECT_NE(errorOf([] { makeServerOptimizer(sgd(0, 0, false, -1), 4); }).find("weight decay"), std::string::npos);
  for (double beta : {1.0, -0.1, 1.5}) {
    OptimizerOptions a = adam("adam");
    a.beta1 = beta;
    EXPECT_NE(errorOf([&] { makeServerOptimizer(a, 4); }).find("betas"), std::string::npos) << beta;
    a = adam("adamw");
    a.beta2 = beta;
    EXPECT_NE(errorOf([&] { makeServerOptimizer(a, 4); }).find("betas"), std::string::npos) << beta;
  }
  OptimizerOptions e = adam("adam");
  e.eps = 0;
  EXPECT_NE(errorOf([&] { makeServerOptimizer(e, 4); }).find("eps"), std::string::npos);

  auto opt = makeServerOptimizer(adam("adam"), 4);
  std::vector<float> p(4), g(3), p5(5), g4(4);
  EXPECT_NE(errorOf([&] { opt->step(p, g, 0.1); }).find("the slice has 4"), std::string::npos);
  EXPECT_THROW(opt->step(p5, g4, 0.1), InvalidArgument);
  EXPECT_EQ(opt->save().steps, 0);  // a refused step changes nothing

  ServerOptimizer::State s = opt->save();
  s.buffers[1].resize(3);
  EXPECT_NE(errorOf([&] { opt->restore(s); }).find("'exp_avg_sq' has 3"), std::string::npos);
  EXPECT_THROW(opt->restore(makeServerOptimizer(sgd(0.9), 4)->save()), InvalidArgument);
  EXPECT_THROW(makeServerOptimizer(sgd(), 4)->restore(opt->save()), InvalidArgument);
}

}  // namespace
}  // namespace chorus::ps
