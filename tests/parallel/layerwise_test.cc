// Layer-wise model parallelism on threads-as-ranks. The reference is the same model, unsplit,
// in one thread: its loss, every parameter's gradient, and its parameters after several SGD
// steps. A split over 2, 3 and 4 stages with every kind of partition must give the same on
// the rank that owns each parameter. The model has a residual block and LayerNorms, so a
// stage boundary inside it would show (each layer's input gradient goes through a sum).
//
// Tolerance: each stage runs the same kernels on the same bytes as the unsplit model, so the
// results agree to rounding: 1e-6 relative for one step, 1e-5 after several SGD steps.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "chorus/parallel/pipeline/layerwise.h"
#include "chorus/parallel/pipeline/profile.h"
#include "util/rank_threads.h"

namespace chorus::parallel {
namespace {

using testutil::runRanks;
using testutil::runRanksCollect;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

// x + fc(gelu(ln(x))): a pre-LayerNorm residual block, as in a transformer.
struct ResidualImpl : torch::nn::Module {
  explicit ResidualImpl(int64_t d)
      : ln(register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})))),
        fc(register_module("fc", torch::nn::Linear(d, d))) {}
  torch::Tensor forward(const torch::Tensor& x) { return x + fc(torch::gelu(ln(x))); }
  torch::nn::LayerNorm ln;
  torch::nn::Linear fc;
};
TORCH_MODULE(Residual);

constexpr int64_t kIn = 6, kHidden = 8, kClasses = 3, kBatch = 5;

// Four layers with 56, 88, 16 and 27 parameters; values from a fixed generator, so every rank
// builds the same model without touching torch's shared global generator.
torch::nn::Sequential makeModel() {
  torch::nn::Sequential m(torch::nn::Linear(kIn, kHidden), Residual(kHidden),
                          torch::nn::LayerNorm(torch::nn::LayerNormOptions({kHidden})),
                          torch::nn::Linear(kHidden, kClasses));
  auto gen = at::detail::createCPUGenerator(11);
  torch::NoGradGuard noGrad;
  for (auto& p : m->parameters()) p.copy_(torch::randn(p.sizes(), gen) * 0.5);
  return m;
}

struct Batch {
  torch::Tensor x, y;
};
Batch batch(int64_t step) {
  auto gen = at::detail::createCPUGenerator(100 + static_cast<uint64_t>(step));
  return {torch::randn({kBatch, kIn}, gen), torch::randint(0, kClasses, {kBatch}, gen)};
}

torch::Tensor lossOf(const torch::Tensor& out, const Batch& b) {
  return torch::nn::functional::cross_entropy(out, b.y);
}

using Named = std::map<std::string, torch::Tensor>;

// The unsplit model trained for `steps` SGD steps: the loss of each step, the gradients of
// the first step, and the parameters at the end.
struct Reference {
  std::vector<double> losses;
  Named firstGrads, params;
};
Reference reference(int steps) {
  Reference r;
  auto model = makeModel();
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.2).momentum(0.9));
  for (int s = 0; s < steps; ++s) {
    const Batch b = batch(s);
    opt.zero_grad();
    auto loss = lossOf(model->forward(b.x), b);
    loss.backward();
    r.losses.push_back(loss.item<double>());
    if (s == 0) {
      for (const auto& p : model->named_parameters()) r.firstGrads[p.key()] = p.value().grad().clone();
    }
    opt.step();
  }
  for (const auto& p : model->named_parameters()) r.params[p.key()] = p.value().detach().clone();
  return r;
}

// What the stages produced, gathered from every rank.
struct Split {
  std::mutex mu;
  std::vector<double> losses;
  Named firstGrads, params;
  std::vector<std::vector<int>> partitions;
  std::vector<std::pair<size_t, size_t>> ranges;
};

void runSplit(Split& out, int stages, const std::string& transport, const std::vector<int>& partition, int steps,
              MetaMode meta = MetaMode::kEveryMessage) {
  out.ranges.assign(static_cast<size_t>(stages), {0, 0});
  out.partitions.assign(static_cast<size_t>(stages), {});
  runRanks(stages, transport, [&](comm::ProcessGroup& g) {
    LayerwiseOptions o;
    o.partition = partition;
    o.meta = meta;
    LayerwiseStage stage(borrow(g), makeModel(), o);
    torch::optim::SGD opt(stage.parameters(), torch::optim::SGDOptions(0.2).momentum(0.9));
    for (int s = 0; s < steps; ++s) {
      const Batch b = batch(s);
      opt.zero_grad();
      torch::Tensor outp = stage.forward(stage.isFirst() ? b.x : torch::Tensor());
      torch::Tensor loss;
      if (stage.isLast()) loss = lossOf(outp, b);
      stage.backward(loss);
      std::lock_guard<std::mutex> lock(out.mu);
      if (stage.isLast()) out.losses.push_back(loss.item<double>());
      if (s == 0) {
        for (const auto& p : stage.module().named_parameters()) {
          EXPECT_EQ(out.firstGrads.count(p.key()), 0u) << p.key() << " is on two stages";
          out.firstGrads[p.key()] = p.value().grad().clone();
        }
      }
      opt.step();
    }
    std::lock_guard<std::mutex> lock(out.mu);
    for (const auto& p : stage.module().named_parameters()) out.params[p.key()] = p.value().detach().clone();
    out.partitions[static_cast<size_t>(g.rank())] = stage.partition();
    out.ranges[static_cast<size_t>(g.rank())] = {stage.layerBegin(), stage.layerEnd()};
  });
}

double relativeError(const torch::Tensor& got, const torch::Tensor& want) {
  const double scale = std::max(want.abs().max().item<double>(), 1e-12);
  return (got - want).abs().max().item<double>() / scale;
}

void expectClose(const Named& got, const Named& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what << ": every parameter must be on exactly one stage";
  for (const auto& [name, w] : want) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << what << ": no stage owns " << name;
    EXPECT_LE(relativeError(it->second, w), tol) << what << ": " << name;
  }
}

struct SplitCase {
  int stages;
  std::vector<int> partition;  // empty: the default
  std::vector<int> expected;   // the partition the stages use
  std::string transport = "loopback";
  MetaMode meta = MetaMode::kEveryMessage;
};

void PrintTo(const SplitCase& c, std::ostream* os) {
  *os << c.stages << " stages, partition [";
  for (int n : c.partition) *os << n << " ";
  *os << "], " << c.transport << (c.meta == MetaMode::kAgreeOnce ? ", agree once" : ", every message");
}

class LayerwiseSplit : public ::testing::TestWithParam<SplitCase> {};

TEST_P(LayerwiseSplit, EqualsTheUnsplitModel) {
  const SplitCase c = GetParam();
  const int steps = 4;
  const Reference ref = reference(steps);
  Split split;
  runSplit(split, c.stages, c.transport, c.partition, steps, c.meta);

  size_t begin = 0;
  for (int s = 0; s < c.stages; ++s) {
    EXPECT_EQ(split.partitions[static_cast<size_t>(s)], c.expected) << "stage " << s;
    const size_t end = begin + static_cast<size_t>(c.expected[static_cast<size_t>(s)]);
    EXPECT_EQ(split.ranges[static_cast<size_t>(s)], std::make_pair(begin, end)) << "stage " << s;
    begin = end;
  }
  ASSERT_EQ(split.losses.size(), ref.losses.size());
  EXPECT_NEAR(split.losses[0], ref.losses[0], 1e-6 * std::abs(ref.losses[0]));
  for (size_t s = 1; s < ref.losses.size(); ++s) {
    EXPECT_NEAR(split.losses[s], ref.losses[s], 1e-5 * std::abs(ref.losses[s])) << "step " << s;
  }
  expectClose(split.firstGrads, ref.firstGrads, 1e-6, "gradients of step 0");
  expectClose(split.params, ref.params, 1e-5, "parameters after " + std::to_string(steps) + " SGD steps");
}

INSTANTIATE_TEST_SUITE_P(
    Partitions, LayerwiseSplit,
    ::testing::Values(SplitCase{2, {}, {1, 3}}, SplitCase{2, {1, 3}, {1, 3}}, SplitCase{2, {2, 2}, {2, 2}},
                      SplitCase{2, {3, 1}, {3, 1}}, SplitCase{3, {}, {1, 1, 2}}, SplitCase{3, {2, 1, 1}, {2, 1, 1}},
                      SplitCase{4, {}, {1, 1, 1, 1}},
                      SplitCase{2, {2, 2}, {2, 2}, "loopback", MetaMode::kAgreeOnce},
                      SplitCase{3, {1, 2, 1}, {1, 2, 1}, "shm", MetaMode::kAgreeOnce}),
    [](const auto& info) {
      std::string name = std::to_string(info.param.stages) + "stages_";
      if (info.param.partition.empty()) name += "default";
      for (int n : info.param.partition) name += std::to_string(n);
      name += "_" + info.param.transport;
      if (info.param.meta == MetaMode::kAgreeOnce) name += "_once";
      return name;
    });

TEST(LayerwisePartition, BalancedByCost) {
  // The test model's parameter counts.
  auto model = makeModel();
  std::vector<torch::nn::AnyModule> layers(model->begin(), model->end());
  EXPECT_EQ(parameterCounts(layers), (std::vector<int64_t>{56, 88, 16, 27}));
  // 2 stages: 56 | 131 beats 144 | 43 and 160 | 27. 3 stages: 56 | 88 | 43.
  EXPECT_EQ(balancedPartition({56, 88, 16, 27}, 2), (std::vector<int>{1, 3}));
  EXPECT_EQ(balancedPartition({56, 88, 16, 27}, 3), (std::vector<int>{1, 1, 2}));
  // Linear, ReLU, Linear, ReLU, Linear: the largest stage holds 306 either way; the ReLUs
  // spread out ([2, 3] rather than [1, 4]).
  EXPECT_EQ(balancedPartition({80, 0, 272, 0, 34}, 2), (std::vector<int>{2, 3}));
  EXPECT_EQ(balancedPartition({80, 0, 272, 0, 34}, 3), (std::vector<int>{2, 2, 1}));
  // Equal costs: as even as the count allows, the longer stages first.
  EXPECT_EQ(balancedPartition(std::vector<int64_t>(7, 1), 3), (std::vector<int>{3, 2, 2}));
  EXPECT_EQ(balancedPartition(std::vector<int64_t>(4, 5), 4), (std::vector<int>{1, 1, 1, 1}));
  EXPECT_EQ(balancedPartition({10, 1, 1, 1, 1, 10}, 2), (std::vector<int>{3, 3}));
  EXPECT_EQ(balancedPartition({1, 1, 1, 1, 30}, 2), (std::vector<int>{4, 1}));
  EXPECT_EQ(balancedPartition({3}, 1), (std::vector<int>{1}));
  // Measured costs: a noisy block makes [3, 2, 2, 1] 5% faster on paper than the even split;
  // with a tolerance of 10% the even split counts as optimal and wins by its counts.
  const std::vector<int64_t> noisy = {10, 100, 99, 100, 100, 103, 100, 120};
  EXPECT_EQ(balancedPartition(noisy, 4), (std::vector<int>{3, 2, 2, 1}));
  EXPECT_EQ(balancedPartition(noisy, 4, 0.10), (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(balancedPartition(noisy, 4, 0.02), (std::vector<int>{3, 2, 2, 1}));
  EXPECT_THROW(balancedPartition(noisy, 4, -0.1), InvalidArgument);
}

// profileLayers times each layer on the previous one's output; with lastLoss the last layer's
// backward starts from the loss, which runs in its timed passes.
TEST(LayerwisePartition, ProfileTimesEachLayerAndTheLastStagesLoss) {
  const std::vector<int64_t> widths = {8, 64, 4};
  auto build = [&](size_t i) {
    torch::manual_seed(static_cast<uint64_t>(i));
    return torch::nn::AnyModule(torch::nn::Linear(i == 0 ? 8 : widths[i - 1], widths[i]));
  };
  const torch::Tensor sample = torch::randn({16, 8});
  int lossCalls = 0;
  const LayerProfile p = profileLayers(widths.size(), build, sample, 3, [&](const torch::Tensor& out) {
    ++lossCalls;
    EXPECT_EQ(out.sizes(), (std::vector<int64_t>{16, 4}));
    return out.pow(2).mean();
  });
  ASSERT_EQ(p.seconds.size(), 3u);
  for (double s : p.seconds) EXPECT_GT(s, 0);
  EXPECT_EQ(p.outputBytes, (std::vector<int64_t>{16 * 8 * 4, 16 * 64 * 4, 16 * 4 * 4}));
  EXPECT_EQ(lossCalls, 3 * 4) << "three rounds of one warm-up and three timed passes";
  EXPECT_EQ(p.costs().size(), 3u);
  EXPECT_THROW(profileLayers(widths.size(), build, sample, 1, [](const torch::Tensor& out) { return out; }),
               InvalidArgument);
  EXPECT_THROW(profileLayers(widths.size(), build, sample, 0), InvalidArgument);
}

// Identical layers measure exactly the same time (the fastest of their kind), so timing noise
// cannot tilt a split of identical blocks; a layer of another shape keeps its own time. Every
// round builds each layer once.
TEST(LayerwisePartition, ProfilePoolsLayersOfOneKind) {
  // Linear 8->32, three Linear 32->32, Linear 32->2048 (64x the work of one 32->32), Linear 2048->4.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{8, 32}, {32, 32}, {32, 32}, {32, 32}, {32, 2048}, {2048, 4}};
  std::vector<int> builds(shapes.size(), 0);
  auto build = [&](size_t i) {
    ++builds[i];
    torch::manual_seed(static_cast<uint64_t>(i));
    return torch::nn::AnyModule(torch::nn::Linear(shapes[i].first, shapes[i].second));
  };
  const torch::Tensor sample = torch::randn({64, 8});
  const LayerProfile p = profileLayers(shapes.size(), build, sample, 2, {}, 4);
  EXPECT_EQ(builds, std::vector<int>(shapes.size(), 4)) << "one build per layer and round";
  ASSERT_EQ(p.seconds.size(), shapes.size());
  EXPECT_EQ(p.seconds[2], p.seconds[1]);
  EXPECT_EQ(p.seconds[3], p.seconds[1]);
  EXPECT_GT(p.seconds[4], p.seconds[1]) << "a wider Linear is another kind";
  EXPECT_THROW(profileLayers(shapes.size(), build, sample, 2, {}, 0), InvalidArgument);
}

// The message of what fn throws, which must be InvalidArgument.
template <typename Fn>
std::string invalidArgumentOf(Fn fn) {
  try {
    fn();
  } catch (const InvalidArgument& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected InvalidArgument, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected InvalidArgument, nothing thrown";
  return "";
}

TEST(LayerwisePartition, BadPartitionsAreRefusedWithTheNumbers) {
  std::string m = invalidArgumentOf([] { checkPartition({1, 1, 1}, 2, 3); });
  EXPECT_NE(m.find("3 stages needs at least 3 layers"), std::string::npos) << m;
  EXPECT_NE(m.find("the model has 2"), std::string::npos) << m;
  m = invalidArgumentOf([] { checkPartition({1, 2}, 4, 2); });
  EXPECT_NE(m.find("[1, 2] covers 3 layers and the model has 4"), std::string::npos) << m;
  m = invalidArgumentOf([] { checkPartition({1, 2, 1}, 4, 2); });
  EXPECT_NE(m.find("3 entries for 2 stages"), std::string::npos) << m;
  m = invalidArgumentOf([] { checkPartition({0, 4}, 4, 2); });
  EXPECT_NE(m.find("at least one"), std::string::npos) << m;
  m = invalidArgumentOf([] { balancedPartition({1, 1}, 3); });
  EXPECT_NE(m.find("needs at least 3 layers"), std::string::npos) << m;
  invalidArgumentOf([] { balancedPartition({1, -1}, 1); });
  EXPECT_NO_THROW(checkPartition({1, 3}, 4, 2));
}

// Every rank refuses the same bad setup before communicating anything.
TEST(LayerwiseStageErrors, ConstructionRefusesBadSetupsOnEveryRank) {
  auto expectAll = [](int ranks, LayerwiseOptions o, size_t layers, const std::string& needle) {
    testutil::RankOptions ro;
    auto outcomes = runRanksCollect(ranks, ro, [&](comm::ProcessGroup& g) {
      auto model = makeModel();
      std::vector<torch::nn::AnyModule> all(model->begin(), model->end());
      all.resize(layers);
      LayerwiseStage stage(borrow(g), all, o);
    });
    for (int r = 0; r < ranks; ++r) {
      ASSERT_TRUE(outcomes[static_cast<size_t>(r)]) << "rank " << r << " accepted it";
      std::string m = invalidArgumentOf([&] { std::rethrow_exception(outcomes[static_cast<size_t>(r)]); });
      EXPECT_NE(m.find(needle), std::string::npos) << m;
    }
  };
  expectAll(3, {}, 2, "3 stages needs at least 3 layers");  // more stages than layers
  LayerwiseOptions o;
  o.partition = {1, 2};
  expectAll(2, o, 4, "[1, 2] covers 3 layers and the model has 4");
  o.partition = {3, 3};
  expectAll(2, o, 4, "covers 6 layers");
  o.partition = {};
  o.names = {"a", "b"};
  expectAll(2, o, 4, "2 names for 4 layers");
}

TEST(LayerwiseStageErrors, MisuseOfForwardAndBackward) {
  runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    LayerwiseStage stage(borrow(g), makeModel());
    const Batch b = batch(0);
    if (stage.isFirst()) {
      EXPECT_THROW(stage.forward(), InvalidArgument);
      EXPECT_THROW(stage.backward(), InvalidArgument);  // no forward yet
      stage.forward(b.x);
      EXPECT_THROW(stage.backward(torch::ones({})), InvalidArgument);  // the loss is the last stage's
      stage.backward();
    } else {
      EXPECT_THROW(stage.forward(b.x), InvalidArgument);
      auto out = stage.forward();
      EXPECT_THROW(stage.backward(), InvalidArgument);  // the last stage needs the loss
      stage.backward(lossOf(out, b));
    }
  });
}

// Stage 1 is not a LayerwiseStage but a stand-in that answers the activation with a gradient
// of the wrong shape: stage 0's backward must say so, naming the peer and both shapes.
TEST(LayerwiseStageErrors, AGradientOfTheWrongShapeNamesThePeerAndBothShapes) {
  testutil::RankOptions ro;
  auto outcomes = runRanksCollect(2, ro, [&](comm::ProcessGroup& g) {
    LayerwiseOptions o;
    o.partition = {1, 3};
    if (g.rank() == 0) {
      LayerwiseStage stage(borrow(g), makeModel(), o);
      stage.forward(batch(0).x);
      stage.backward();
    } else {
      TensorP2P p2p(borrow(g), P2POptions{o.meta});
      torch::Tensor act = p2p.recv(0, o.tag, "activation");
      EXPECT_EQ(act.sizes(), (std::vector<int64_t>{kBatch, kHidden}));
      try {
        p2p.send(torch::zeros({kBatch, kHidden - 2}), 0, o.tag + 1, "a wrong gradient");
      } catch (const PeerError&) {
        // stage 0 refused it and closed its transport
      }
    }
  });
  ASSERT_TRUE(outcomes[0]) << "stage 0 accepted a gradient of the wrong shape";
  try {
    std::rethrow_exception(outcomes[0]);
  } catch (const MismatchError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("from rank 1"), std::string::npos) << m;
    EXPECT_NE(m.find("gradient of stage 0's output"), std::string::npos) << m;
    EXPECT_NE(m.find("expected float32[5, 8]"), std::string::npos) << m;
    EXPECT_NE(m.find("sent float32[5, 6]"), std::string::npos) << m;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected MismatchError, got: " << e.what();
  }
}

TEST(LayerwiseStage, ADeadStageFailsItsNeighbourWithPeerError) {
  testutil::RankOptions ro;
  ro.timeout = Millis(20000);
  const auto start = std::chrono::steady_clock::now();
  auto outcomes = runRanksCollect(2, ro, [&](comm::ProcessGroup& g) {
    LayerwiseStage stage(borrow(g), makeModel());
    if (stage.isLast()) throw Error("stage 1 dies");
    stage.forward(batch(0).x);
    stage.backward();
  });
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
  ASSERT_TRUE(outcomes[0]);
  try {
    std::rethrow_exception(outcomes[0]);
  } catch (const PeerError& e) {
    EXPECT_EQ(e.peer(), 1) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected PeerError, got: " << e.what();
  }
}

// The builder form builds only the stage's own layers, and names them as given.
TEST(LayerwiseStage, BuilderBuildsOnlyItsOwnLayers) {
  const Reference ref = reference(1);
  std::mutex mu;
  std::vector<std::vector<size_t>> built(2);
  Split split;
  runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    LayerwiseOptions o;
    o.layerCosts = {56, 88, 16, 27};  // the default partition without building anything twice
    LayerwiseStage stage(borrow(g), 4, [&](size_t i) {
      {
        std::lock_guard<std::mutex> lock(mu);
        built[static_cast<size_t>(g.rank())].push_back(i);
      }
      return *(makeModel()->begin() + static_cast<std::ptrdiff_t>(i));
    }, o);
    const Batch b = batch(0);
    auto out = stage.forward(stage.isFirst() ? b.x : torch::Tensor());
    torch::Tensor loss;
    if (stage.isLast()) loss = lossOf(out, b);
    stage.backward(loss);
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& p : stage.module().named_parameters()) split.firstGrads[p.key()] = p.value().grad().clone();
  });
  EXPECT_EQ(built[0], (std::vector<size_t>{0}));
  EXPECT_EQ(built[1], (std::vector<size_t>{1, 2, 3}));
  expectClose(split.firstGrads, ref.firstGrads, 1e-6, "builder form");
}

// Token ids + 1: an integer layer without parameters.
struct ShiftIdsImpl : torch::nn::Module {
  torch::Tensor forward(const torch::Tensor& ids) { return ids + 1; }
};
TORCH_MODULE(ShiftIds);

// One step of any model split as given, against the same model unsplit: the loss on the last
// stage and every parameter's gradient on its owner.
void expectOneStepEqual(const std::function<torch::nn::Sequential()>& make, const torch::Tensor& input,
                        const std::function<torch::Tensor(const torch::Tensor&)>& loss, int stages,
                        const std::vector<int>& partition, const std::string& what) {
  auto whole = make();
  auto refLoss = loss(whole->forward(input));
  refLoss.backward();
  Named refGrads;
  for (const auto& p : whole->named_parameters()) refGrads[p.key()] = p.value().grad().clone();

  std::mutex mu;
  Named grads;
  double got = 0;
  runRanks(stages, "loopback", [&](comm::ProcessGroup& g) {
    LayerwiseOptions o;
    o.partition = partition;
    LayerwiseStage stage(borrow(g), make(), o);
    auto out = stage.forward(stage.isFirst() ? input : torch::Tensor());
    torch::Tensor l;
    if (stage.isLast()) l = loss(out);
    stage.backward(l);
    std::lock_guard<std::mutex> lock(mu);
    if (stage.isLast()) got = l.item<double>();
    for (const auto& p : stage.module().named_parameters()) grads[p.key()] = p.value().grad().clone();
  });
  EXPECT_NEAR(got, refLoss.item<double>(), 1e-6 * std::abs(refLoss.item<double>())) << what;
  expectClose(grads, refGrads, 1e-6, what);
}

// A GPT-like layout: token ids into an embedding on the first stage (no gradient goes to the
// ids), an integer activation across a stage boundary (no gradient comes back for it), and a
// first stage without parameters whose float output still gets (and drops) its gradient.
TEST(LayerwiseStage, IntegerInputsAndStagesWithoutParameters) {
  auto gen = at::detail::createCPUGenerator(21);
  const torch::Tensor ids = torch::randint(0, 9, {3, 4}, gen);
  const torch::Tensor targets = torch::randint(0, kClasses, {3 * 4}, gen);
  auto tokenLoss = [&](const torch::Tensor& logits) {
    return torch::nn::functional::cross_entropy(logits.reshape({-1, kClasses}), targets);
  };
  auto seeded = [](torch::nn::Sequential m) {
    auto g = at::detail::createCPUGenerator(13);
    torch::NoGradGuard noGrad;
    for (auto& p : m->parameters()) p.copy_(torch::randn(p.sizes(), g) * 0.5);
    return m;
  };
  auto gpt = [&] {
    return seeded(torch::nn::Sequential(torch::nn::Embedding(10, kHidden), Residual(kHidden), Residual(kHidden),
                                        torch::nn::Linear(kHidden, kClasses)));
  };
  expectOneStepEqual(gpt, ids, tokenLoss, 2, {1, 3}, "embedding alone on stage 0");
  expectOneStepEqual(gpt, ids, tokenLoss, 3, {2, 1, 1}, "embedding and a block on stage 0");
  auto shifted = [&] {
    return seeded(torch::nn::Sequential(ShiftIds(), torch::nn::Embedding(10, kHidden), torch::nn::Linear(kHidden, kClasses)));
  };
  expectOneStepEqual(shifted, ids, tokenLoss, 2, {1, 2}, "integer activation between the stages");
  auto tanhFirst = [&] {
    return seeded(torch::nn::Sequential(torch::nn::Tanh(), torch::nn::Linear(kIn, kHidden), torch::nn::Linear(kHidden, kClasses)));
  };
  const Batch b = batch(0);
  expectOneStepEqual(tanhFirst, b.x, [&](const torch::Tensor& o) { return lossOf(o, b); }, 2, {1, 2},
                     "a first stage without parameters");
}

// A layer that takes a while, so the other stage's waiting shows.
struct SlowImpl : torch::nn::Module {
  torch::Tensor forward(const torch::Tensor& x) {
    std::this_thread::sleep_for(std::chrono::milliseconds(40));
    return x * 1.0;
  }
};
TORCH_MODULE(Slow);

// On 2 stages, stage 0 is idle while stage 1 runs forward and backward: its "wait gradient"
// span starts before stage 1's forward ends and ends after stage 1's backward.
TEST(LayerwiseStage, SpansShowTheIdleTime) {
  std::vector<std::vector<StageSpan>> spans(2);
  runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    torch::nn::Sequential model(torch::nn::Linear(kIn, kHidden), Slow(), torch::nn::Linear(kHidden, kClasses));
    LayerwiseOptions o;
    o.partition = {1, 2};
    LayerwiseStage stage(borrow(g), model, o);
    for (int s = 0; s < 2; ++s) {
      const Batch b = batch(s);
      auto out = stage.forward(stage.isFirst() ? b.x : torch::Tensor());
      torch::Tensor loss;
      if (stage.isLast()) loss = lossOf(out, b);
      stage.backward(loss);
    }
    spans[static_cast<size_t>(g.rank())] = stage.takeSpans();
    EXPECT_TRUE(stage.spans().empty());
  });
  using K = StageSpan::Kind;
  auto find = [&](int rank, K kind, int64_t step) {
    for (const auto& s : spans[static_cast<size_t>(rank)]) {
      if (s.kind == kind && s.step == step) return s;
    }
    ADD_FAILURE() << "stage " << rank << " has no " << StageSpan::name(kind) << " span for step " << step;
    return StageSpan{kind, step, {}, {}};
  };
  for (int64_t step = 0; step < 2; ++step) {
    const StageSpan f0 = find(0, K::kForward, step), wait0 = find(0, K::kWaitGradient, step),
                    b0 = find(0, K::kBackward, step);
    const StageSpan wa1 = find(1, K::kWaitActivation, step), f1 = find(1, K::kForward, step),
                    b1 = find(1, K::kBackward, step);
    for (const auto& s : {f0, wait0, b0, wa1, f1, b1}) EXPECT_LE(s.start, s.end) << s.name();
    // Stage 0: forward, then idle, then backward.
    EXPECT_LE(f0.end, wait0.start);
    EXPECT_LE(wait0.end, b0.start);
    // Stage 1 computes while stage 0 waits.
    EXPECT_LT(wait0.start, f1.end);
    EXPECT_GE(wait0.end, b1.end);
    EXPECT_GE(wa1.end, f0.end);  // stage 1 could not start before stage 0's output existed
    EXPECT_GE(wait0.end - wait0.start, std::chrono::milliseconds(30)) << "the idle time is missing";
    EXPECT_GE(f1.end - f1.start, std::chrono::milliseconds(35));
  }
  EXPECT_STREQ(StageSpan::name(K::kWaitGradient), "wait gradient");
}

// One stage: no communication, just the model.
TEST(LayerwiseStage, OneStageIsTheWholeModel) {
  const Reference ref = reference(1);
  Split split;
  runSplit(split, 1, "loopback", {}, 1);
  EXPECT_EQ(split.partitions[0], (std::vector<int>{4}));
  expectClose(split.firstGrads, ref.firstGrads, 1e-6, "one stage");
  // runLayers is the model's forward without communication.
  runRanks(1, "loopback", [&](comm::ProcessGroup& g) {
    auto model = makeModel();
    LayerwiseStage stage(borrow(g), model);
    const Batch b = batch(0);
    EXPECT_TRUE(torch::equal(stage.runLayers(b.x), model->forward(b.x)));
  });
}

}  // namespace
}  // namespace chorus::parallel
