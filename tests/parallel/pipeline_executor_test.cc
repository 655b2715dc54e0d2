// The pipeline executor (src/chorus/parallel/pipeline/executor.h) and the B/W split
// (weight_grad.h): every synchronous schedule gives the gradients of the unsplit model on the
// same mini-batch, over uneven partitions; GPipe stores m micro-batches and 1F1B at most p - r;
// a stage that dies mid-schedule makes the others fail promptly, naming it.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/parallel/pipeline/executor.h"
#include "chorus/parallel/pipeline/weight_grad.h"
#include "util/rank_threads.h"

namespace chorus::parallel {
namespace {

constexpr int64_t kWidth = 6;
constexpr int64_t kRowsPerMicroBatch = 3;

// One layer: tanh(x W^T + b) through deferrableLinear, so B/W splits it.
struct LayerImpl : torch::nn::Module {
  explicit LayerImpl(int index) {
    auto gen = at::detail::createCPUGenerator(1000 + index);
    weight = register_parameter("weight", torch::randn({kWidth, kWidth}, gen) * 0.4);
    bias = register_parameter("bias", torch::randn({kWidth}, gen) * 0.1);
  }
  torch::Tensor forward(const torch::Tensor& x) { return torch::tanh(deferrableLinear(x, weight, bias)); }
  torch::Tensor weight, bias;
};
TORCH_MODULE(Layer);

// Layer counts per virtual stage, uneven: 1, 2, 1, 2, ...
std::vector<int> unevenCounts(int virtualStages) {
  std::vector<int> c;
  for (int vs = 0; vs < virtualStages; ++vs) c.push_back(1 + vs % 2);
  return c;
}

int totalLayers(int virtualStages) {
  int n = 0;
  for (int c : unevenCounts(virtualStages)) n += c;
  return n;
}

struct Data {
  torch::Tensor x, y;
};
Data data(int m) {
  auto gen = at::detail::createCPUGenerator(7);
  return {torch::randn({m * kRowsPerMicroBatch, kWidth}, gen), torch::randn({m * kRowsPerMicroBatch, kWidth}, gen)};
}

// The unsplit model's gradients on the whole mini-batch (mean squared error).
std::vector<torch::Tensor> referenceGrads(int layers, const Data& d) {
  std::vector<Layer> model;
  for (int i = 0; i < layers; ++i) model.emplace_back(i);
  torch::Tensor h = d.x;
  for (auto& l : model) h = l->forward(h);
  torch::mse_loss(h, d.y).backward();
  std::vector<torch::Tensor> g;
  for (auto& l : model) {
    g.push_back(l->weight.grad().clone());
    g.push_back(l->bias.grad().clone());
  }
  return g;
}

struct RankOut {
  std::vector<int> layerIndex;  // the global index of each layer this rank held
  std::vector<torch::Tensor> grads;  // weight, bias per held layer
  int peakStored = 0;
  int reusedBuffers = 0;
  std::vector<double> losses;
};

// Runs `schedule` on threads-as-ranks; each rank builds only its chunks' layers. `recomputed`
// (when given) gets each rank's PipelineRun::recomputedForwards.
std::vector<RankOut> runPipeline(const PipeSchedule& schedule, const Data& d, PipelineOptions opts = {},
                                 std::vector<int>* recomputed = nullptr) {
  const int p = schedule.stages, m = schedule.microBatches, V = schedule.virtualStages();
  const std::vector<int> counts = unevenCounts(V);
  std::vector<int> begin(V + 1, 0);
  for (int vs = 0; vs < V; ++vs) begin[vs + 1] = begin[vs] + counts[vs];
  std::vector<RankOut> outs(p);
  testutil::runRanks(p, "loopback", [&](comm::ProcessGroup& g) {
    auto group = std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
    const int r = g.rank();
    std::vector<std::vector<Layer>> chunks(schedule.chunks);
    RankOut& o = outs[r];
    for (int c = 0; c < schedule.chunks; ++c) {
      const int vs = schedule.virtualStage(r, c);
      for (int i = begin[vs]; i < begin[vs + 1]; ++i) {
        chunks[c].emplace_back(i);
        o.layerIndex.push_back(i);
      }
    }
    PipelineExecutor exec(group, schedule, opts);
    PipelineExecutor::Step step;
    step.forward = [&](int c, const torch::Tensor& x) {
      torch::Tensor h = x;
      for (auto& l : chunks[c]) h = l->forward(h);
      return h;
    };
    step.input = [&](int mb) { return d.x.narrow(0, mb * kRowsPerMicroBatch, kRowsPerMicroBatch); };
    step.loss = [&](const torch::Tensor& out, int mb) {
      return torch::mse_loss(out, d.y.narrow(0, mb * kRowsPerMicroBatch, kRowsPerMicroBatch)) / m;
    };
    PipelineRun run = exec.run(step);
    if (recomputed) (*recomputed)[static_cast<size_t>(r)] = run.recomputedForwards;
    o.peakStored = run.peakStored;
    o.reusedBuffers = run.reusedBuffers;
    o.losses = run.losses;
    for (int c = 0; c < schedule.chunks; ++c) {
      for (auto& l : chunks[c]) {
        ASSERT_TRUE(l->weight.grad().defined()) << "rank " << r << " chunk " << c;
        o.grads.push_back(l->weight.grad().clone());
        o.grads.push_back(l->bias.grad().clone());
      }
    }
  });
  return outs;
}

void expectSameGrads(const std::vector<RankOut>& outs, const std::vector<torch::Tensor>& ref, const std::string& what) {
  size_t seen = 0;
  for (const RankOut& o : outs) {
    for (size_t k = 0; k < o.layerIndex.size(); ++k) {
      const int i = o.layerIndex[k];
      for (int j = 0; j < 2; ++j) {
        const torch::Tensor& want = ref[2 * i + j];
        const torch::Tensor& got = o.grads[2 * k + j];
        const double err = (got - want).abs().max().item<double>();
        const double scale = want.abs().max().item<double>();
        EXPECT_LE(err, 1e-5 * scale + 1e-7) << what << ": layer " << i << (j ? " bias" : " weight");
        ++seen;
      }
    }
  }
  EXPECT_EQ(seen, ref.size()) << what << ": every layer's gradients, once";
}

TEST(PipelineExecutor, SynchronousSchedulesGiveTheUnsplitGradients) {
  for (const std::string name : {"gpipe", "1f1b", "zb-h1", "interleaved"}) {
    for (int p : {2, 3, 4}) {
      for (int m : {1, p, 2 * p + 1}) {
        const int v = name == "interleaved" ? 2 : 1;
        const PipeSchedule s = makeSchedule(name, p, m, v);
        const Data d = data(m);
        const auto ref = referenceGrads(totalLayers(s.virtualStages()), d);
        const std::string what = name + " p=" + std::to_string(p) + " m=" + std::to_string(m);
        const auto outs = runPipeline(s, d);
        expectSameGrads(outs, ref, what);
        // The last rank reports every micro-batch's loss (the mean over them is the batch's).
        const RankOut& lastRank = outs[s.rankOf(s.virtualStages() - 1)];
        ASSERT_EQ(static_cast<int>(lastRank.losses.size()), m) << what;
        for (int r = 0; r < p; ++r) {
          if (name == "gpipe") {
            EXPECT_EQ(outs[r].peakStored, m) << what << " rank " << r;
          }
          if (name == "1f1b") {
            EXPECT_LE(outs[r].peakStored, std::min(p - r, m)) << what << " rank " << r;
          }
        }
      }
    }
  }
}

// Once a channel has agreed its shape, receives go into buffers recycled from earlier
// micro-batches: with 8 micro-batches over 2 stages both ranks reuse some.
TEST(PipelineExecutor, ReceivesReuseBuffers) {
  const PipeSchedule s = makeSchedule("1f1b", 2, 8);
  const auto outs = runPipeline(s, data(8));
  for (int r = 0; r < 2; ++r) EXPECT_GT(outs[r].reusedBuffers, 0) << "rank " << r;
}

TEST(PipelineExecutor, OneStageWithChunksUsesLocalChannels) {
  // p = 1 with v = 3: every channel is between chunks of rank 0.
  const PipeSchedule s = makeSchedule("interleaved", 1, 4, 3);
  const Data d = data(4);
  const auto ref = referenceGrads(totalLayers(3), d);
  expectSameGrads(runPipeline(s, d), ref, "interleaved p=1 v=3");
}

// Activation recomputation: the same gradients from every synchronous schedule, one extra
// forward per micro-batch and stage.
TEST(PipelineExecutor, RecomputationGivesTheSameGradients) {
  for (const std::string name : {"gpipe", "1f1b", "zb-h1"}) {
    const int p = 3, m = 4;
    const PipeSchedule s = makeSchedule(name, p, m);
    const Data d = data(m);
    const auto ref = referenceGrads(totalLayers(p), d);
    PipelineOptions opts;
    opts.recompute = true;
    std::vector<int> recomputed(p, 0);
    const auto outs = runPipeline(s, d, opts, &recomputed);
    expectSameGrads(outs, ref, name + " with recomputation");
    for (int r = 0; r < p; ++r) EXPECT_EQ(recomputed[r], m) << name << " rank " << r;
  }
}

// The recomputed forward draws the same dropout masks: one stage, dropout in the chunk, the
// gradients with and without recomputation agree exactly.
TEST(PipelineExecutor, RecomputationReplaysDropout) {
  const int m = 3;
  const PipeSchedule s = makeSchedule("1f1b", 1, m);
  const Data d = data(m);
  auto once = [&](bool recompute) {
    torch::manual_seed(11);
    Layer layer(0);
    std::vector<torch::Tensor> grads;
    testutil::runRanks(1, "loopback", [&](comm::ProcessGroup& g) {
      auto group = std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
      PipelineOptions opts;
      opts.recompute = recompute;
      PipelineExecutor exec(group, s, opts);
      PipelineExecutor::Step step;
      step.forward = [&](int, const torch::Tensor& x) { return torch::dropout(layer->forward(x), 0.5, true); };
      step.input = [&](int mb) { return d.x.narrow(0, mb * kRowsPerMicroBatch, kRowsPerMicroBatch); };
      step.loss = [&](const torch::Tensor& out, int mb) {
        return torch::mse_loss(out, d.y.narrow(0, mb * kRowsPerMicroBatch, kRowsPerMicroBatch));
      };
      const PipelineRun run = exec.run(step);
      EXPECT_EQ(run.recomputedForwards, recompute ? m : 0);
    });
    grads = {layer->weight.grad().clone(), layer->bias.grad().clone()};
    // The generator ends where the run without recomputation leaves it.
    grads.push_back(torch::rand({4}));
    return grads;
  };
  const auto plain = once(false), again = once(true);
  for (size_t k = 0; k < plain.size(); ++k) EXPECT_TRUE(torch::equal(plain[k], again[k])) << "tensor " << k;
}

TEST(WeightGradStore, DefersLinearWeightGradientsUntilFlush) {
  Layer l(3);
  auto gen = at::detail::createCPUGenerator(5);
  torch::Tensor x = torch::randn({4, kWidth}, gen).requires_grad_(true);
  // Reference: an ordinary backward.
  Layer ref(3);
  torch::Tensor xr = x.detach().clone().requires_grad_(true);
  ref->forward(xr).sum().backward();

  auto store = std::make_shared<WeightGradStore>();
  torch::Tensor y;
  {
    WeightGradScope scope(store);
    y = l->forward(x);
  }
  store->setDeferring(true);
  y.sum().backward();
  store->setDeferring(false);
  EXPECT_TRUE(x.grad().defined());
  EXPECT_TRUE(torch::allclose(x.grad(), xr.grad(), 1e-6, 1e-7)) << "B computes the input gradient";
  EXPECT_FALSE(l->weight.grad().defined()) << "the weight gradient waits for W";
  EXPECT_EQ(store->pending(), 1u);
  store->flush();
  EXPECT_EQ(store->pending(), 0u);
  ASSERT_TRUE(l->weight.grad().defined());
  EXPECT_TRUE(torch::allclose(l->weight.grad(), ref->weight.grad(), 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(l->bias.grad(), ref->bias.grad(), 1e-6, 1e-7));
  // A second flush-backed pass accumulates, as autograd does.
  {
    WeightGradScope scope(store);
    y = l->forward(x.detach());
  }
  store->setDeferring(true);
  y.sum().backward();
  store->setDeferring(false);
  store->flush();
  EXPECT_TRUE(torch::allclose(l->weight.grad(), 2 * ref->weight.grad(), 1e-6, 1e-7));
}

TEST(WeightGradStore, OutsideAScopeItIsPlainLinear) {
  Layer l(4);
  torch::Tensor x = torch::ones({2, kWidth});
  EXPECT_TRUE(torch::equal(l->forward(x), torch::tanh(torch::linear(x, l->weight, l->bias))));
  l->forward(x).sum().backward();
  EXPECT_TRUE(l->weight.grad().defined());
}

TEST(PipelineExecutor, AStageThatDiesMakesTheOthersFailNamingIt) {
  const PipeSchedule s = makeSchedule("1f1b", 3, 6);
  const Data d = data(6);
  testutil::RankOptions opts;
  opts.timeout = Millis(20000);  // far above "promptly": a failure must not come from a timeout
  const auto start = std::chrono::steady_clock::now();
  auto outcomes = testutil::runRanksCollect(3, opts, [&](comm::ProcessGroup& g) {
    auto group = std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
    Layer layer(g.rank());
    PipelineExecutor exec(group, s);
    PipelineExecutor::Step step;
    int calls = 0;
    step.forward = [&](int, const torch::Tensor& x) {
      if (g.rank() == 1 && ++calls == 3) throw std::runtime_error("stage 1 killed");
      return layer->forward(x);
    };
    step.input = [&](int mb) { return d.x.narrow(0, mb * kRowsPerMicroBatch, kRowsPerMicroBatch); };
    step.loss = [&](const torch::Tensor& out, int mb) {
      return torch::mse_loss(out, d.y.narrow(0, mb * kRowsPerMicroBatch, kRowsPerMicroBatch));
    };
    exec.run(step);
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 10.0) << "the other stages waited for a timeout instead of failing at once";
  EXPECT_NE(testutil::messageOf(outcomes[1]).find("stage 1 killed"), std::string::npos);
  for (int r : {0, 2}) {
    const std::string msg = testutil::messageOf(outcomes[r]);
    EXPECT_NE(msg.find("rank 1"), std::string::npos) << "rank " << r << ": " << msg;
  }
}

// ---- asynchronous schedules: weight versions ----

constexpr double kLr = 0.5;  // large, so that a gradient taken on the wrong version differs clearly

// tanh(x W^T + b) * g: the product saves the gain parameter itself, which autograd reads when
// the backward runs, so a backward on another weight version than its forward's changes the
// gradients (with the linear layer alone, this model did not show it: checked by making the
// executor run every backward on the latest weights, which these tests then catch).
struct GainLayerImpl : torch::nn::Module {
  explicit GainLayerImpl(int index) {
    auto gen = at::detail::createCPUGenerator(2000 + index);
    weight = register_parameter("weight", torch::randn({kWidth, kWidth}, gen) * 0.4);
    bias = register_parameter("bias", torch::randn({kWidth}, gen) * 0.1);
    gain = register_parameter("gain", 1 + torch::randn({kWidth}, gen) * 0.2);
  }
  torch::Tensor forward(const torch::Tensor& x) { return torch::tanh(deferrableLinear(x, weight, bias)) * gain; }
  std::vector<torch::Tensor> params() const { return {weight, bias, gain}; }
  torch::Tensor weight, bias, gain;
};
TORCH_MODULE(GainLayer);
constexpr size_t kParamsPerLayer = 3;

struct AsyncRankOut {
  std::vector<int> layerIndex;                        // global index of each held layer
  std::map<int, std::vector<torch::Tensor>> usedAt;   // micro-batch -> each held layer's parameters at its forward
  std::vector<std::vector<torch::Tensor>> applied;    // per update: each held layer's parameters' gradients
  std::vector<torch::Tensor> finalParams;             // each held layer's parameters after the run
  std::vector<torch::Tensor> initialParams;
  std::vector<double> losses;
  std::vector<PipelineRun::WeightUse> uses;
  int peakVersions = 0;
  std::vector<int64_t> inFlightAfterRun;  // stream mode: segmentsInFlight() after each run, and the flush
  std::vector<int> usesAfterRun;          // stream mode: backwards completed by the end of each run
};

// Runs an asynchronous schedule of one chunk per rank, two layers per stage (so that a stale
// weight of the second layer shows in the first one's gradient), plain SGD (lr kLr) as the
// update.
// segments > 0: stream mode, that many runs of the schedule's m micro-batches (the k-th run
// feeding micro-batches k m .. k m + m - 1 of d), then a flush.
std::vector<AsyncRankOut> runAsync(const PipeSchedule& schedule, const Data& d, PipelineOptions opts, int segments = 0) {
  const int p = schedule.stages;
  const std::vector<int> counts(static_cast<size_t>(p), 2);
  std::vector<AsyncRankOut> outs(p);
  testutil::runRanks(p, "loopback", [&](comm::ProcessGroup& g) {
    auto group = std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
    const int r = g.rank();
    AsyncRankOut& o = outs[r];
    int first = 0;
    for (int k = 0; k < r; ++k) first += counts[k];
    std::vector<GainLayer> layers;
    std::vector<torch::Tensor> params;
    for (int i = first; i < first + counts[r]; ++i) {
      layers.emplace_back(i);
      o.layerIndex.push_back(i);
      for (const auto& t : layers.back()->params()) params.push_back(t);
    }
    for (const auto& t : params) o.initialParams.push_back(t.detach().clone());
    // The k-th forward on this rank is the k-th F of its action list.
    std::vector<int> forwardOrder;
    if (segments > 0) {
      for (int k = 0; k < segments; ++k)
        for (const PipeAction& a : asyncSegment(schedule, r, k))
          if (a.op == PipeOp::kForward) forwardOrder.push_back(a.microBatch);
    } else {
      for (const PipeAction& a : schedule.ranks[static_cast<size_t>(r)])
        if (a.op == PipeOp::kForward) forwardOrder.push_back(a.microBatch);
    }
    int base = 0;  // the micro-batch the current run's 0 is
    size_t forwards = 0;
    opts.stream = segments > 0;
    PipelineExecutor exec(group, schedule, opts);
    PipelineExecutor::Step step;
    step.forward = [&](int, const torch::Tensor& x) {
      std::vector<torch::Tensor> used;
      for (const auto& t : params) used.push_back(t.detach().clone());
      o.usedAt[forwardOrder.at(forwards++)] = used;
      torch::Tensor h = x;
      for (auto& l : layers) h = l->forward(h);
      return h;
    };
    step.input = [&](int mb) { return d.x.narrow(0, (base + mb) * kRowsPerMicroBatch, kRowsPerMicroBatch); };
    step.loss = [&](const torch::Tensor& out, int mb) {
      return torch::mse_loss(out, d.y.narrow(0, (base + mb) * kRowsPerMicroBatch, kRowsPerMicroBatch));
    };
    step.parameters = [&](int) { return params; };
    step.update = [&](int) {
      torch::NoGradGuard noGrad;
      std::vector<torch::Tensor> grads;
      for (auto& t : params) {
        grads.push_back(t.grad().clone());
        t.sub_(kLr * t.grad());
        t.mutable_grad().zero_();
      }
      o.applied.push_back(grads);
    };
    auto take = [&](const PipelineRun& run) {
      o.losses.insert(o.losses.end(), run.losses.begin(), run.losses.end());
      o.uses.insert(o.uses.end(), run.weightUses.begin(), run.weightUses.end());
      o.peakVersions = std::max(o.peakVersions, run.peakWeightVersions);
    };
    if (segments > 0) {
      for (int k = 0; k < segments; ++k, base += schedule.microBatches) {
        take(exec.run(step));
        o.inFlightAfterRun.push_back(exec.segmentsInFlight());
        o.usesAfterRun.push_back(static_cast<int>(o.uses.size()));
      }
      take(exec.flush(step));
      o.inFlightAfterRun.push_back(exec.segmentsInFlight());
    } else {
      take(exec.run(step));
    }
    for (const auto& t : params) o.finalParams.push_back(t.detach().clone());
  });
  return outs;
}

// For micro-batch i: the gradient of its loss through every stage, each stage's layers holding
// the weights that stage's forward of i used.
std::vector<torch::Tensor> stashedReference(const std::vector<AsyncRankOut>& outs, const Data& d, int i) {
  std::vector<GainLayer> model;
  for (const AsyncRankOut& o : outs) {
    const auto& used = o.usedAt.at(i);
    for (size_t k = 0; k < o.layerIndex.size(); ++k) {
      GainLayer l(o.layerIndex[k]);
      torch::NoGradGuard noGrad;
      const auto ps = l->params();
      for (size_t j = 0; j < kParamsPerLayer; ++j) ps[j].copy_(used[kParamsPerLayer * k + j]);
      model.push_back(l);
    }
  }
  torch::Tensor h = d.x.narrow(0, i * kRowsPerMicroBatch, kRowsPerMicroBatch);
  for (auto& l : model) h = l->forward(h);
  torch::mse_loss(h, d.y.narrow(0, i * kRowsPerMicroBatch, kRowsPerMicroBatch)).backward();
  std::vector<torch::Tensor> g;
  for (auto& l : model)
    for (const auto& t : l->params()) g.push_back(t.grad().clone());
  return g;
}

// The largest relative difference between what each update applied and the stashed reference
// (the sum of its group's micro-batches' reference gradients).
double worstStashedError(const std::vector<AsyncRankOut>& outs, const PipeSchedule& s, const Data& d) {
  const int m = s.microBatches, every = s.updateEvery;
  std::vector<std::vector<torch::Tensor>> ref;
  for (int i = 0; i < m; ++i) ref.push_back(stashedReference(outs, d, i));
  double worst = 0;
  for (const AsyncRankOut& o : outs) {
    const int groups = (m + every - 1) / every;
    EXPECT_EQ(static_cast<int>(o.applied.size()), groups);
    for (int gi = 0; gi < groups && gi < static_cast<int>(o.applied.size()); ++gi) {
      for (size_t k = 0; k < o.layerIndex.size(); ++k) {
        for (size_t j = 0; j < kParamsPerLayer; ++j) {
          const torch::Tensor& got = o.applied[gi][kParamsPerLayer * k + j];
          torch::Tensor want = torch::zeros_like(got);
          for (int i = gi * every; i < std::min(m, (gi + 1) * every); ++i)
            want += ref[i][kParamsPerLayer * static_cast<size_t>(o.layerIndex[k]) + j];
          const double err = (got - want).abs().max().item<double>();
          worst = std::max(worst, err / (want.abs().max().item<double>() + 1e-12));
        }
      }
    }
  }
  return worst;
}

TEST(PipelineExecutor, WeightStashingRunsEachBackwardOnItsForwardsWeights) {
  for (int p : {2, 3}) {
    const int m = 2 * p + 1;
    const PipeSchedule s = makeSchedule("pipedream", p, m);
    const Data d = data(m);
    const std::string what = "pipedream p=" + std::to_string(p);
    const auto outs = runAsync(s, d, {});
    for (int r = 0; r < p; ++r) {
      ASSERT_EQ(static_cast<int>(outs[r].uses.size()), m) << what;
      for (const auto& u : outs[r].uses) {
        EXPECT_EQ(u.backwardVersion, u.forwardVersion) << what << " rank " << r << " micro-batch " << u.microBatch;
      }
      // Rank r runs micro-batch i on the version after i - (p - 1 - r) updates (its warm-up
      // forwards on the initial weights): the staleness PipeDream trades for no flush.
      for (const auto& u : outs[r].uses) EXPECT_EQ(u.forwardVersion, std::max(0, u.microBatch - (p - 1 - r))) << what;
      EXPECT_EQ(outs[r].peakVersions, p - r) << what << " rank " << r;
      // The parameters end on the latest weights: the initial ones minus every update.
      for (size_t k = 0; k < outs[r].finalParams.size(); ++k) {
        torch::Tensor want = outs[r].initialParams[k].clone();
        for (const auto& g : outs[r].applied) want -= kLr * g[k];
        EXPECT_TRUE(torch::allclose(outs[r].finalParams[k], want, 1e-5, 1e-6)) << what << " rank " << r;
      }
    }
    EXPECT_LE(worstStashedError(outs, s, d), 1e-5) << what;
    // The losses are the stashed forwards' losses.
    const auto& last = outs[p - 1].losses;
    ASSERT_EQ(static_cast<int>(last.size()), m);

    // Without stashing the backward runs on weights updated since the forward: the same check
    // fails (this is what makes it able to fail).
    PipelineOptions off;
    off.weightStashing = false;
    const auto loose = runAsync(s, d, off);
    bool stale = false;
    for (const auto& u : loose[0].uses) stale = stale || u.backwardVersion != u.forwardVersion;
    EXPECT_TRUE(stale) << what << ": without stashing rank 0's backwards see newer weights";
    EXPECT_GT(worstStashedError(loose, s, d), 1e-3) << what << ": without stashing the gradients must differ";
  }
}

TEST(PipelineExecutor, VerticalSyncRunsAMicroBatchOnOneVersionEverywhere) {
  const int p = 3, m = 7;
  const PipeSchedule s = makeSchedule("pipedream", p, m);
  const Data d = data(m);
  PipelineOptions opts;
  opts.verticalSync = true;
  const auto outs = runAsync(s, d, opts);
  for (int i = 0; i < m; ++i) {
    const int64_t v0 = outs[0].uses[static_cast<size_t>(i)].forwardVersion;
    for (int r = 0; r < p; ++r) {
      for (const auto& u : outs[r].uses) {
        if (u.microBatch != i) continue;
        EXPECT_EQ(u.forwardVersion, v0) << "micro-batch " << i << " rank " << r;
        EXPECT_EQ(u.backwardVersion, v0) << "micro-batch " << i << " rank " << r;
      }
    }
  }
  EXPECT_LE(worstStashedError(outs, s, d), 1e-5);
  // Later stages keep older versions for micro-batches still to come.
  EXPECT_GT(outs[p - 1].peakVersions, 1);
  testutil::runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    auto group = std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
    PipelineOptions bad;
    bad.verticalSync = true;
    EXPECT_THROW(PipelineExecutor(group, makeSchedule("1f1b", 2, 4), bad), InvalidArgument);
    bad.weightStashing = false;
    EXPECT_THROW(PipelineExecutor(group, makeSchedule("pipedream", 2, 4), bad), InvalidArgument);
  });
}

TEST(PipelineExecutor, TwoBufferedWeightsHoldAtMostTwoVersions) {
  const int p = 3, m = 9;
  const PipeSchedule s = makeSchedule("2bw", p, m);  // an update every 3 micro-batches
  const Data d = data(m);
  const auto outs = runAsync(s, d, {});
  for (int r = 0; r < p; ++r) {
    EXPECT_LE(outs[r].peakVersions, 2) << "rank " << r;
    for (const auto& u : outs[r].uses) EXPECT_EQ(u.backwardVersion, u.forwardVersion) << "rank " << r;
  }
  EXPECT_GE(outs[0].peakVersions, 2);
  EXPECT_LE(worstStashedError(outs, s, d), 1e-5);
}

// PipeDream proper: a stream of K runs of m micro-batches without a flush between them does
// exactly what one run of the schedule for K m micro-batches does (same weights, losses and
// weight versions), while each run leaves micro-batches in flight for the next.
TEST(PipelineExecutor, AStreamRunsWithoutAFlushBetweenSteps) {
  struct Case {
    const char* name;
    int p, m;
    bool verticalSync;
  };
  for (const Case& c : {Case{"pipedream", 2, 2, false}, Case{"pipedream", 3, 4, false}, Case{"pipedream", 3, 2, true},
                        Case{"2bw", 3, 4, false}, Case{"2bw", 2, 3, false}}) {
    const int segments = 3;
    const std::string what = std::string(c.name) + " p=" + std::to_string(c.p) + " m=" + std::to_string(c.m) +
                             (c.verticalSync ? " vertical sync" : "");
    const Data d = data(segments * c.m);
    PipelineOptions opts;
    opts.verticalSync = c.verticalSync;
    const auto stream = runAsync(makeSchedule(c.name, c.p, c.m), d, opts, segments);
    const auto whole = runAsync(makeSchedule(c.name, c.p, segments * c.m), d, opts);
    for (int r = 0; r < c.p; ++r) {
      const AsyncRankOut &a = stream[r], &b = whole[r];
      ASSERT_EQ(a.finalParams.size(), b.finalParams.size());
      for (size_t k = 0; k < a.finalParams.size(); ++k)
        EXPECT_TRUE(torch::equal(a.finalParams[k], b.finalParams[k])) << what << " rank " << r << " parameter " << k;
      EXPECT_EQ(a.applied.size(), b.applied.size()) << what << " rank " << r;
      ASSERT_EQ(a.uses.size(), b.uses.size()) << what << " rank " << r;
      for (size_t k = 0; k < a.uses.size(); ++k) {
        EXPECT_EQ(a.uses[k].microBatch, b.uses[k].microBatch) << what;
        EXPECT_EQ(a.uses[k].forwardVersion, b.uses[k].forwardVersion) << what << " rank " << r;
        EXPECT_EQ(a.uses[k].backwardVersion, a.uses[k].forwardVersion) << what << " rank " << r;
      }
      EXPECT_EQ(a.peakVersions, b.peakVersions) << what << " rank " << r;
      // No flush between runs: rank r ends each run with its last p - 1 - r forwards still
      // waiting for their backward (rank 0 with p - 1 of them), and the flush empties it.
      ASSERT_EQ(static_cast<int>(a.usesAfterRun.size()), segments);
      for (int k = 0; k < segments; ++k) {
        EXPECT_EQ(a.usesAfterRun[k], std::max(0, (k + 1) * c.m - (c.p - 1 - r))) << what << " rank " << r << " run " << k;
        EXPECT_EQ(a.inFlightAfterRun[k], k + 1) << what;
      }
      EXPECT_EQ(a.inFlightAfterRun.back(), 0) << what;
    }
    ASSERT_EQ(stream[c.p - 1].losses.size(), whole[c.p - 1].losses.size()) << what;
    for (size_t i = 0; i < stream[c.p - 1].losses.size(); ++i)
      EXPECT_EQ(stream[c.p - 1].losses[i], whole[c.p - 1].losses[i]) << what << " micro-batch " << i;
  }
  // Only asynchronous schedules stream; a flush outside stream mode does nothing.
  testutil::runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    auto group = std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
    PipelineOptions opts;
    opts.stream = true;
    PipelineExecutor exec(group, makeSchedule("1f1b", 2, 4), opts);
    EXPECT_FALSE(exec.streaming());
    EXPECT_EQ(exec.segmentsInFlight(), 0);
    EXPECT_TRUE(exec.flush(PipelineExecutor::Step{}).losses.empty());
  });
}

TEST(PipelineExecutor, RefusesAGroupOfAnotherSize) {
  testutil::runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    auto group = std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
    EXPECT_THROW(PipelineExecutor(group, makeSchedule("1f1b", 3, 4)), InvalidArgument);
  });
}

}  // namespace
}  // namespace chorus::parallel
