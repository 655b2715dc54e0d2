// The GPT split by layers (gpt_stages.h) and the layer-wise strategy in the training loop
// (layerwise_strategy.h), ranks as threads. The reference is one process training the unsplit
// Gpt at tp 1 (pinned against an independent implementation by gpt_test) with the same
// optimizer on the same batches: the split must give the same losses, gradients and weights
// (within 1e-5), and the two copies of a tied embedding must stay bitwise equal.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "chorus/parallel/pipeline/layerwise.h"
#include "chorus/parallel/tensor/communication.h"
#include "chorus/parallel/tensor/sharding.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/config.h"
#include "chorus/train/gpt.h"
#include "chorus/train/gpt_stages.h"
#include "chorus/train/layerwise_strategy.h"
#include "chorus/train/loop.h"
#include "chorus/train/optim.h"
#include "chorus/train/text_task.h"
#include "util/rank_threads.h"
#include "util/scratch_dir.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;
using Params = std::map<std::string, torch::Tensor>;

GptOptions tiny(bool tied) {
  GptOptions o;
  o.vocab = 256;
  o.layers = 3;
  o.heads = 2;
  o.embed = 16;
  o.context = 8;
  o.seed = 5;
  o.tieEmbeddings = tied;
  return o;
}

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

Params valuesOf(torch::nn::Module& m, bool grads = false) {
  Params v;
  for (const auto& p : m.named_parameters()) {
    const torch::Tensor& t = grads ? p.value().grad() : p.value();
    v[p.key()] = t.defined() ? t.detach().clone() : torch::Tensor();
  }
  return v;
}

double maxDiff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// ---- the layer list ----

TEST(GptStages, NamesAndCostsAreTheWholeModels) {
  for (bool tied : {true, false}) {
    const GptOptions o = tiny(tied);
    Gpt whole(o);
    std::vector<std::string> want;
    for (const auto& p : whole->named_parameters()) want.push_back(p.key());
    EXPECT_EQ(gptParameterNames(o), want) << "tied " << tied;

    // One stage holding every layer: the same names in the same order, and the same tensors.
    testutil::runRanks(1, "loopback", [&](comm::ProcessGroup& g) {
      GptStage stage(o, borrow(g));
      std::vector<std::string> got;
      for (const auto& p : stage.module().named_parameters()) got.push_back(p.key());
      EXPECT_EQ(got, want);
      const Params w = valuesOf(*whole);
      for (const auto& p : stage.module().named_parameters())
        EXPECT_TRUE(torch::equal(p.value(), w.at(p.key()))) << p.key();
      // (The head here shares the embedding's table, which it counts as its own copy would be.)
      EXPECT_EQ(parallel::parameterCounts(stage.layers().layers()), gptLayerCosts(o));
    });
  }
}

TEST(GptStages, RefusesWhatTheSplitCannotDo) {
  GptOptions o = tiny(true);
  o.sequenceParallel = true;
  testutil::runRanks(1, "loopback", [&](comm::ProcessGroup& g) {
    EXPECT_THROW(GptStage(o, borrow(g)), InvalidArgument);
    GptOptions bad = tiny(true);
    bad.embed = 15;
    EXPECT_THROW(GptStage(bad, borrow(g)), InvalidArgument);
  });
  // More stages than the L + 2 layers.
  GptOptions one = tiny(true);
  one.layers = 1;
  auto outcomes = testutil::runRanksCollect(4, {}, [&](comm::ProcessGroup& g) { GptStage s(one, borrow(g)); });
  for (auto& e : outcomes) EXPECT_TRUE(e != nullptr);
}

// ---- split = unsplit, driven by hand ----

struct Data {
  torch::Tensor ids, targets;
};
Data batchAt(int step) {
  auto gen = at::detail::createCPUGenerator(100 + step);
  return {torch::randint(0, 256, {3, 8}, gen), torch::randint(0, 256, {3, 8}, gen)};
}

constexpr int kSteps = 4;
constexpr double kLr = 0.3;

struct Reference {
  std::vector<double> losses;
  Params firstGrads, final;
};
Reference trainWhole(const GptOptions& o) {
  Gpt model(o);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(kLr).momentum(0.9));
  Reference r;
  for (int s = 0; s < kSteps; ++s) {
    const Data d = batchAt(s);
    opt.zero_grad();
    torch::Tensor loss = model->loss(d.ids, d.targets);
    loss.backward();
    if (s == 0) r.firstGrads = valuesOf(*model, true);
    opt.step();
    r.losses.push_back(loss.item<double>());
  }
  r.final = valuesOf(*model);
  return r;
}

class SplitEqualsWhole : public testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(SplitEqualsWhole, LossesGradientsAndWeights) {
  const auto [stages, tied] = GetParam();
  const GptOptions o = tiny(tied);
  const Reference ref = trainWhole(o);
  ASSERT_LT(ref.losses.back(), ref.losses.front());

  struct Out {
    std::vector<double> losses;
    Params firstGrads, final;
    std::vector<int> partition;
  };
  std::vector<Out> outs(stages);
  testutil::runRanks(stages, "loopback", [&](comm::ProcessGroup& g) {
    GptStage st(o, borrow(g));
    torch::optim::SGD opt(st.module().parameters(), torch::optim::SGDOptions(kLr).momentum(0.9));
    Out& out = outs[g.rank()];
    for (int s = 0; s < kSteps; ++s) {
      const Data d = batchAt(s);
      opt.zero_grad();
      torch::Tensor y = st.forward(st.isFirst() ? d.ids : torch::Tensor());
      torch::Tensor loss;
      if (st.isLast()) loss = gptStageLoss(y, d.targets, o.vocab);
      st.backward(loss);
      st.syncTiedGradients();
      if (s == 0) out.firstGrads = valuesOf(st.module(), true);
      opt.step();
      if (st.isLast()) out.losses.push_back(loss.item<double>());
    }
    out.final = valuesOf(st.module());
    out.partition = st.layers().partition();
  });

  ASSERT_EQ(outs.back().losses.size(), static_cast<size_t>(kSteps));
  for (int s = 0; s < kSteps; ++s) EXPECT_NEAR(outs.back().losses[s], ref.losses[s], 1e-5) << "step " << s;
  std::map<std::string, int> seen;
  for (int r = 0; r < stages; ++r) {
    for (const auto& [name, g] : outs[r].firstGrads) {
      ++seen[name];
      ASSERT_TRUE(g.defined()) << name << " on stage " << r;
      EXPECT_LE(maxDiff(g, ref.firstGrads.at(name)), 1e-5) << "gradient of " << name << " on stage " << r;
      EXPECT_LE(maxDiff(outs[r].final.at(name), ref.final.at(name)), 1e-5) << name << " on stage " << r;
    }
  }
  EXPECT_EQ(seen.size(), ref.final.size());
  if (tied) {
    EXPECT_EQ(seen["wte.weight"], 2);
    EXPECT_TRUE(torch::equal(outs.front().final.at("wte.weight"), outs.back().final.at("wte.weight")))
        << "the tied copies drifted apart";
  } else {
    EXPECT_EQ(seen["lm_head.weight"], 1);
  }
  // Every stage holds something; the partition covers the L + 2 layers.
  int layers = 0;
  for (int c : outs[0].partition) layers += c;
  EXPECT_EQ(layers, o.layers + 2);
}

INSTANTIATE_TEST_SUITE_P(Stages, SplitEqualsWhole,
                         testing::Combine(testing::Values(2, 3), testing::Values(true, false)),
                         [](const testing::TestParamInfo<std::tuple<int, bool>>& i) {
                           return str("pp", std::get<0>(i.param), std::get<1>(i.param) ? "_tied" : "_untied");
                         });

// ---- the strategy in the loop ----

fs::path tempDir(const std::string& name) { return test::scratchDir("chorus-layerwise-test", name); }

Config gptConfig(const fs::path& dir, int world, int pp, bool tied, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> sets = {"model.name=gpt",
                                   "data.dataset=fortunes",
                                   "data.path=/usr/share/games/fortunes",
                                   "data.eval_windows=6",
                                   "model.layers=3",
                                   "model.heads=2",
                                   "model.embed=16",
                                   "model.context=8",
                                   str("model.tie_embeddings=", tied ? "true" : "false"),
                                   str("parallel.pp=", pp),
                                   "train.batch_size=4",
                                   "train.max_steps=4",
                                   "train.log_every=1",
                                   "train.threads=1",
                                   "train.seed=9",
                                   "optim.name=sgd",
                                   "optim.lr=0.1",
                                   "optim.momentum=0.9",
                                   "schedule.name=constant",
                                   "schedule.warmup_steps=0",
                                   "output.progress=none",
                                   "output.dir=" + dir.string()};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return defaultConfig(sets, world);
}

std::unique_ptr<Task> textTask(const Config& c, const Roles& r) {
  return std::make_unique<TextTask>(c, r.dataRank, r.dataRanks, c.train.eval && r.evaluates);
}

std::vector<std::string> events(const fs::path& file, const std::string& event) {
  std::ifstream in(file);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line))
    if (line.find("\"event\": \"" + event + "\"") != std::string::npos) out.push_back(line);
  return out;
}
double field(const std::string& line, const std::string& key) {
  const size_t at = line.find("\"" + key + "\": ");
  if (at == std::string::npos) return -12345;
  return std::stod(line.substr(at + key.size() + 4));
}

// One process, the unsplit Gpt, the task's batches (global rows; `rows` of them for the
// reported loss: the lead reports its replica's), the config's optimizer.
struct LoopReference {
  std::vector<double> losses;
  double valLoss = 0;
  Params final;
};
LoopReference trainWholeOnTask(const Config& cfg, int replicaRows) {
  TextTask task(cfg, 0, 1, true);
  Gpt model(gptOptions(cfg));
  auto opt = makeOptimizer(cfg.optim, model->parameters());
  LoopReference r;
  task.setEpoch(0);
  for (int64_t s = 0; s < cfg.train.maxSteps; ++s) {
    const Batch b = task.batch(s);
    opt->zero_grad();
    torch::Tensor loss = model->loss(b.input, b.target);
    {
      torch::NoGradGuard ng;
      r.losses.push_back(model->loss(b.input.narrow(0, 0, replicaRows), b.target.narrow(0, 0, replicaRows)).item<double>());
    }
    loss.backward();
    if (cfg.optim.clipNorm > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), cfg.optim.clipNorm);
    opt->step();
  }
  model->eval();
  EvalRunner run;
  run.loss = [&](const Batch& b) { return model->loss(b.input, b.target); };
  r.valLoss = task.evaluate(run).value("val_loss");
  r.final = valuesOf(*model);
  return r;
}

struct LoopRun {
  Params final;  // this rank's shards at tp > 1
  std::map<std::string, parallel::ShardSpec> specs;
  int tpRank = 0, tpSize = 1;
  bool first = false, last = false;
  TrainResult result;
  // The reference's whole tensor `name` as this rank holds it.
  torch::Tensor mine(const std::string& name, const torch::Tensor& whole) const {
    const parallel::ShardSpec& sp = specs.at(name);
    return tpSize > 1 && sp.dim >= 0 ? parallel::shardOf(whole, sp, tpRank, tpSize) : whole;
  }
};
std::vector<LoopRun> runLayerwise(const Config& cfg, int world, const TrainOptions& opts = {}) {
  std::vector<LoopRun> runs(world);
  testutil::RankOptions ro;
  ro.timeout = Millis(30000);
  testutil::runRanks(world, ro, [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    TrainOptions o = opts;
    o.out = &sink;
    LayerwiseStrategy strategy(cfg, borrow(g));
    LoopRun& mine = runs[g.rank()];
    mine.result = runLoop(cfg, g, strategy, o, textTask);
    mine.final = valuesOf(strategy.stage().module());
    mine.specs = parallel::shardSpecs(strategy.stage().module());
    mine.tpRank = parallel::tpRank(strategy.stage().tp());
    mine.tpSize = parallel::tpSize(strategy.stage().tp());
    mine.first = strategy.stage().isFirst();
    mine.last = strategy.stage().isLast();
  });
  return runs;
}

void expectSameAsWhole(const std::vector<LoopRun>& runs, const LoopReference& ref, const fs::path& dir, bool tied,
                       double tol = 1e-5) {
  const auto steps = events(dir / "metrics.jsonl", "step");
  ASSERT_EQ(steps.size(), ref.losses.size());
  for (size_t s = 0; s < steps.size(); ++s) EXPECT_NEAR(field(steps[s], "loss"), ref.losses[s], tol) << "step " << s;
  const auto evals = events(dir / "metrics.jsonl", "eval");
  ASSERT_FALSE(evals.empty());
  EXPECT_NEAR(field(evals.back(), "val_loss"), ref.valLoss, tol);
  for (const auto& run : runs)
    for (const auto& [name, t] : run.final) EXPECT_LE(maxDiff(t, run.mine(name, ref.final.at(name))), tol) << name;
  if (tied) {
    for (const auto& a : runs)
      for (const auto& b : runs)
        if (a.first && b.last && a.tpRank == b.tpRank) {
          EXPECT_TRUE(torch::equal(a.final.at("wte.weight"), b.final.at("wte.weight")));
        }
  }
}

class LayerwiseLoop : public testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(LayerwiseLoop, SameLossesAsTheWholeModel) {
  const auto [pp, tied] = GetParam();
  const fs::path dir = tempDir(str("pp", pp, tied));
  const Config cfg = gptConfig(dir, pp, pp, tied);
  const LoopReference ref = trainWholeOnTask(cfg, 4);
  const auto runs = runLayerwise(cfg, pp);
  expectSameAsWhole(runs, ref, dir, tied);
  const auto start = events(dir / "metrics.jsonl", "start");
  ASSERT_EQ(start.size(), 1u);
  EXPECT_EQ(field(start[0], "pp"), pp);
  EXPECT_EQ(field(start[0], "dp"), 1);
  EXPECT_EQ(field(start[0], "tp"), 1);
  EXPECT_GT(field(events(dir / "metrics.jsonl", "step")[0], "tokens_per_s"), 0);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Stages, LayerwiseLoop, testing::Combine(testing::Values(2, 3), testing::Values(true, false)),
                         [](const testing::TestParamInfo<std::tuple<int, bool>>& i) {
                           return str("pp", std::get<0>(i.param), std::get<1>(i.param) ? "_tied" : "_untied");
                         });

// pp 2 x dp 2: the replicas split the batch and DDP averages each stage's gradients.
TEST(LayerwiseLoopMesh, TwoStagesTimesTwoReplicas) {
  const fs::path dir = tempDir("pp2dp2");
  const Config cfg = gptConfig(dir, 4, 2, true);
  const LoopReference ref = trainWholeOnTask(cfg, 2);  // the lead reports replica 0's two rows
  const auto runs = runLayerwise(cfg, 4);
  expectSameAsWhole(runs, ref, dir, true);
  EXPECT_EQ(field(events(dir / "metrics.jsonl", "start")[0], "dp"), 2);
  fs::remove_all(dir);
}

// Pipeline schedules with micro-batches compute what the whole model does on the whole batch
// (each micro-batch's loss is divided by their count), and record every stage's bubble.
class PipelinedLoop : public testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(PipelinedLoop, SameLossesAsTheWholeModel) {
  const auto [schedule, pp] = GetParam();
  const fs::path dir = tempDir(str("pipe-", schedule, pp));
  const Config cfg = gptConfig(dir, pp, pp, true, {"parallel.schedule=" + schedule, "parallel.micro_batches=4"});
  const LoopReference ref = trainWholeOnTask(cfg, 4);
  const auto runs = runLayerwise(cfg, pp);
  expectSameAsWhole(runs, ref, dir, true);
  const auto start = events(dir / "metrics.jsonl", "start");
  ASSERT_EQ(start.size(), 1u);
  EXPECT_EQ(field(start[0], "micro_batches"), 4);
  const auto steps = events(dir / "metrics.jsonl", "step");
  ASSERT_FALSE(steps.empty());
  for (int st = 0; st < pp; ++st) {
    const double b = field(steps.back(), str("bubble_stage", st));
    EXPECT_GE(b, 0) << "stage " << st;
    EXPECT_LT(b, 1) << "stage " << st;
  }
  EXPECT_EQ(field(steps.back(), str("bubble_stage", pp)), -12345) << "one field per stage";
  // The share of each stage's pipeline time its thread had no free core (cpu_wait.h).
  for (int st = 0; st < pp; ++st) {
    const double w = field(steps.back(), str("cpu_wait_stage", st));
    EXPECT_GE(w, 0) << "stage " << st;
    EXPECT_LE(w, 1) << "stage " << st;
  }
  EXPECT_EQ(field(steps.back(), str("cpu_wait_stage", pp)), -12345) << "one field per stage";
  // Micro-batches holding forward state: GPipe all 4, 1F1B at most pp - stage; ZB-H1 keeps a
  // micro-batch's (smaller) state until its W, so up to stage + 1 more.
  for (int st = 0; st < pp; ++st) {
    const double peak = field(steps.back(), str("peak_stored_stage", st));
    if (schedule == "gpipe") {
      EXPECT_EQ(peak, 4) << "stage " << st;
    }
    if (schedule == "1f1b") {
      EXPECT_EQ(peak, std::min(pp - st, 4)) << "stage " << st;
    }
    if (schedule == "zb-h1") {
      EXPECT_GE(peak, std::min(pp - st, 4)) << "stage " << st;
      EXPECT_LE(peak, std::min(pp - st, 4) + st + 1) << "stage " << st;
    }
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Schedules, PipelinedLoop,
                         testing::Combine(testing::Values("gpipe", "1f1b", "zb-h1"), testing::Values(2, 3)),
                         [](const testing::TestParamInfo<std::tuple<std::string, int>>& i) {
                           std::string n = std::get<0>(i.param);
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return str(n, "_pp", std::get<1>(i.param));
                         });

// The interleaved schedule in the loop: 2 stages x 2 chunks (layers 0..4 cut into 4 virtual
// stages, balanced [1, 2, 1, 1]; rank 0 holds virtual stages 0 and 2, rank 1 holds 1 and 3), tied and untied, and at
// dp 2; also with a given partition and recomputation. The losses, the evaluation (activations
// round the ranks once per chunk) and the weights equal the whole model's.
TEST(InterleavedLoop, SameLossesAsTheWholeModel) {
  for (const bool tied : {true, false}) {
    const fs::path dir = tempDir(str("interleaved", tied));
    const Config cfg = gptConfig(dir, 2, 2, tied,
                                 {"parallel.schedule=interleaved", "parallel.virtual_stages=2", "parallel.micro_batches=4"});
    const LoopReference ref = trainWholeOnTask(cfg, 4);
    const auto runs = runLayerwise(cfg, 2);
    expectSameAsWhole(runs, ref, dir, tied);
    const auto start = events(dir / "metrics.jsonl", "start");
    ASSERT_EQ(start.size(), 1u);
    EXPECT_EQ(field(start[0], "virtual_stages"), 2);
    EXPECT_NE(start[0].find("\"pp_partition\": \"[1, 2, 1, 1]\""), std::string::npos) << start[0];
    fs::remove_all(dir);
  }
  const fs::path dir = tempDir("interleaved-dp2");
  const Config cfg = gptConfig(dir, 4, 2, true,
                               {"parallel.schedule=interleaved", "parallel.virtual_stages=2", "parallel.micro_batches=2",
                                "parallel.partition=[2, 1, 1, 1]", "parallel.recompute=true"});
  const LoopReference ref = trainWholeOnTask(cfg, 2);
  expectSameAsWhole(runLayerwise(cfg, 4), ref, dir, true);
  EXPECT_NE(events(dir / "metrics.jsonl", "start")[0].find("\"pp_partition\": \"[2, 1, 1, 1]\""), std::string::npos);
  fs::remove_all(dir);
}

// parallel.recompute: each stage runs its forward again in the backward; the run is unchanged.
TEST(PipelinedLoopRecompute, SameLossesAsTheWholeModel) {
  for (const std::string schedule : {"1f1b", "zb-h1"}) {
    const fs::path dir = tempDir("recompute-" + schedule);
    const Config cfg = gptConfig(dir, 2, 2, true,
                                 {"parallel.schedule=" + schedule, "parallel.micro_batches=4", "parallel.recompute=true"});
    const LoopReference ref = trainWholeOnTask(cfg, 4);
    expectSameAsWhole(runLayerwise(cfg, 2), ref, dir, true);
  }
}

// The asynchronous schedules. With one micro-batch per step drained at every step, pipedream's
// update after the backward is the synchronous step, so the run equals the whole model. With several, each
// stage updates after every micro-batch while later ones are in flight: the job trains (the
// loss falls), its losses differ from 1f1b's, and with stashing off they differ again.
TEST(AsyncPipelinedLoop, PipedreamTrains) {
  {
    const fs::path dir = tempDir("pipedream-m1");
    const Config cfg = gptConfig(dir, 2, 2, false, {"parallel.schedule=pipedream", "parallel.micro_batches=1",
                                                           "parallel.async_flush=step"});
    const LoopReference ref = trainWholeOnTask(cfg, 4);
    expectSameAsWhole(runLayerwise(cfg, 2), ref, dir, false);
  }
  auto losses = [](const fs::path& dir) {
    std::vector<double> out;
    for (const auto& line : events(dir / "metrics.jsonl", "step")) out.push_back(field(line, "loss"));
    return out;
  };
  const std::vector<std::string> longer = {"train.max_steps=12", "optim.lr=0.05", "parallel.micro_batches=4"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), longer.begin(), longer.end());
    return extra;
  };
  const fs::path sync = tempDir("async-1f1b"), pd = tempDir("async-pipedream"), loose = tempDir("async-nostash"),
                 tbw = tempDir("async-2bw");
  runLayerwise(gptConfig(sync, 2, 2, false, with({"parallel.schedule=1f1b"})), 2);
  runLayerwise(gptConfig(pd, 2, 2, false, with({"parallel.schedule=pipedream"})), 2);
  runLayerwise(gptConfig(loose, 2, 2, false, with({"parallel.schedule=pipedream", "parallel.weight_stashing=false"})), 2);
  runLayerwise(gptConfig(tbw, 2, 2, false, with({"parallel.schedule=2bw", "parallel.update_every=2"})), 2);
  const auto a = losses(sync), b = losses(pd), c = losses(loose), d = losses(tbw);
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  ASSERT_EQ(c.size(), 12u);
  ASSERT_EQ(d.size(), 12u);
  for (const auto* run : {&b, &d}) {
    EXPECT_LT(std::accumulate(run->end() - 3, run->end(), 0.0), std::accumulate(run->begin(), run->begin() + 3, 0.0))
        << "the loss falls";
  }
  EXPECT_GT(std::abs(a.back() - b.back()), 1e-6) << "pipedream updates inside the step; 1f1b does not";
  EXPECT_GT(std::abs(b.back() - c.back()), 1e-6) << "stashing changes the gradients";
  EXPECT_GT(std::abs(b.back() - d.back()), 1e-6) << "2bw updates half as often";
}

// PipeDream without a flush (parallel.async_flush = "never", the default): micro-batches in
// flight at a step's end finish in the next step, so from the second step on the losses differ
// from a run that drains every step; the stream drains inside the step before a checkpoint, so
// a run resumed from it continues exactly as the uninterrupted one.
TEST(AsyncPipelinedLoop, AStreamDrainsOnlyBeforeAPause) {
  auto losses = [](const fs::path& dir) {
    std::vector<double> out;
    for (const auto& line : events(dir / "metrics.jsonl", "step")) out.push_back(field(line, "loss"));
    return out;
  };
  const std::vector<std::string> sets = {"parallel.schedule=pipedream", "parallel.micro_batches=4", "train.max_steps=6",
                                         "output.checkpoint_every=3", "optim.lr=0.05"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), sets.begin(), sets.end());
    return extra;
  };
  const fs::path stream = tempDir("stream"), flushed = tempDir("stream-flushed"), resumed = tempDir("stream-resumed");
  runLayerwise(gptConfig(stream, 3, 3, false, with({})), 3);
  runLayerwise(gptConfig(flushed, 3, 3, false, with({"parallel.async_flush=step"})), 3);
  const auto a = losses(stream), b = losses(flushed);
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  EXPECT_EQ(a[0], b[0]) << "the first step runs the same actions either way";
  EXPECT_GT(std::abs(a[1] - b[1]), 1e-7) << "the stream's second step runs on weights that still miss the first "
                                            "step's last micro-batches";
  TrainOptions opts;
  opts.resumeFrom = (stream / "checkpoints" / checkpointName(3)).string();
  ASSERT_TRUE(fs::exists(opts.resumeFrom));
  runLayerwise(gptConfig(resumed, 3, 3, false, with({})), 3, opts);
  const auto c = losses(resumed);
  ASSERT_EQ(c.size(), 3u);
  for (size_t k = 0; k < 3; ++k) EXPECT_NEAR(c[k], a[3 + k], 1e-6) << "step " << 4 + k;
  fs::remove_all(stream);
  fs::remove_all(flushed);
  fs::remove_all(resumed);
}

// parallel.partition places the layers as given; parallel.balance = "time" partitions by the
// times worker 0 measured, the same split on every rank; either way the run equals the whole model.
TEST(LayerwisePartition, GivenAndTimed) {
  {
    const fs::path dir = tempDir("partition-given");
    const Config cfg = gptConfig(dir, 2, 2, true, {"parallel.partition=[1, 4]"});
    const LoopReference ref = trainWholeOnTask(cfg, 4);
    const auto runs = runLayerwise(cfg, 2);
    expectSameAsWhole(runs, ref, dir, true);
    const auto start = events(dir / "metrics.jsonl", "start");
    ASSERT_EQ(start.size(), 1u);
    EXPECT_NE(start[0].find("\"pp_partition\": \"[1, 4]\""), std::string::npos) << start[0];
    fs::remove_all(dir);
  }
  {
    const fs::path dir = tempDir("partition-timed");
    const Config cfg = gptConfig(dir, 3, 3, false, {"parallel.balance=time", "parallel.schedule=1f1b",
                                                    "parallel.micro_batches=2"});
    const LoopReference ref = trainWholeOnTask(cfg, 4);
    const auto runs = runLayerwise(cfg, 3);
    expectSameAsWhole(runs, ref, dir, false);
    const auto start = events(dir / "metrics.jsonl", "start");
    ASSERT_EQ(start.size(), 1u);
    EXPECT_NE(start[0].find("\"pp_partition\": \"["), std::string::npos) << start[0];
    fs::remove_all(dir);
  }
}

// pp 2 x dp 2 under 1F1B: each replica's two windows in two micro-batches, then the dp average.
TEST(PipelinedLoopMesh, TwoStagesTimesTwoReplicas) {
  const fs::path dir = tempDir("pipe-pp2dp2");
  const Config cfg = gptConfig(dir, 4, 2, true, {"parallel.schedule=1f1b", "parallel.micro_batches=2"});
  const LoopReference ref = trainWholeOnTask(cfg, 2);
  const auto runs = runLayerwise(cfg, 4);
  expectSameAsWhole(runs, ref, dir, true);
  fs::remove_all(dir);
}

// 3D parallelism: dp 2 x tp 2 x pp 2 on 8 ranks, 1F1B over two micro-batches, the tied
// embedding and gradient clipping by the whole model's norm (over the tp shards and both
// stages), against one process training the unsplit Gpt with clip_grad_norm_ for 10 steps.
// The clipping binds (the reference without it ends elsewhere), so a norm summed over the
// wrong ranks would show. A checkpoint written at step 5 by the 3D run holds the whole model
// (a one-process Gpt loads it), and resuming from it at tp 2 x pp 2 x dp 1 gives steps 6..10.
TEST(ThreeD, DpTwoTpTwoPpTwoMatchesOneProcess) {
  const fs::path dir = tempDir("3d");
  const std::vector<std::string> extra = {"parallel.tp=2",        "parallel.schedule=1f1b", "parallel.micro_batches=2",
                                          "optim.clip_norm=0.5",  "train.max_steps=10",     "output.checkpoint_every=5"};
  const Config cfg = gptConfig(dir, 8, 2, true, extra);
  const LoopReference ref = trainWholeOnTask(cfg, 2);  // the lead reports replica 0's two rows
  {
    Config unclipped = cfg;
    unclipped.optim.clipNorm = 0;
    const LoopReference free = trainWholeOnTask(unclipped, 2);
    double moved = 0;
    for (const auto& [name, t] : ref.final) moved = std::max(moved, maxDiff(t, free.final.at(name)));
    EXPECT_GT(moved, 1e-3) << "the clipping does not bind: this test could not tell a wrong norm";
  }
  const auto runs = runLayerwise(cfg, 8);
  expectSameAsWhole(runs, ref, dir, true, 1e-4);
  const auto start = events(dir / "metrics.jsonl", "start");
  ASSERT_EQ(start.size(), 1u);
  EXPECT_EQ(field(start[0], "tp"), 2);
  EXPECT_EQ(field(start[0], "dp"), 2);
  EXPECT_EQ(field(start[0], "pp"), 2);

  const std::string at5 = (dir / "checkpoints" / checkpointName(5)).string();
  ASSERT_TRUE(fs::exists(at5));
  const std::string at10 = (dir / "checkpoints" / checkpointName(10)).string();
  {
    Gpt whole(gptOptions(cfg));
    auto opt = makeOptimizer(cfg.optim, whole->parameters());
    EXPECT_EQ(loadCheckpoint(at10, *whole, *opt).globalStep, 10);
    for (const auto& p : whole->named_parameters()) EXPECT_LE(maxDiff(p.value(), ref.final.at(p.key())), 1e-4) << p.key();
  }
  const fs::path dir2 = tempDir("3d-resume");
  std::vector<std::string> extra2 = extra;
  extra2.back() = "output.checkpoint_every=0";
  const Config cfg2 = gptConfig(dir2, 4, 2, true, extra2);
  TrainOptions opts;
  opts.resumeFrom = at5;
  const auto runs2 = runLayerwise(cfg2, 4, opts);
  const auto steps = events(dir2 / "metrics.jsonl", "step");
  ASSERT_EQ(steps.size(), 5u);
  // dp 1: the lead reports the whole batch's loss; the reference reported replica 0's rows, so
  // compare the weights, which are the whole batch's either way.
  for (const auto& run : runs2)
    for (const auto& [name, t] : run.final) EXPECT_LE(maxDiff(t, run.mine(name, ref.final.at(name))), 1e-4) << name;
  fs::remove_all(dir);
  fs::remove_all(dir2);
}

// pp_bytes: what stage 0 sent for the pipeline, its activation [B, T, E] in float32 each step (the
// first step adds the stream's header), plus with a tied embedding its half of the two-rank
// all-reduce that sums the copies' gradients [V, E]; grad_bytes stays 0 at dp = 1. The summary
// gives the mean per step and the optimizer state as measured (momentum: one buffer a parameter).
TEST(LayerwiseRecords, PipelineBytesAreTheActivationsAndTheTiedSum) {
  for (bool tied : {false, true}) {
    const fs::path dir = tempDir(str("ppbytes", tied));
    const Config cfg = gptConfig(dir, 2, 2, tied, {"train.eval=false"});
    runLayerwise(cfg, 2);
    const double activation = 4 * 8 * 16 * 4;  // batch x context x embed x float32
    const double tiedSum = tied ? 256 * 16 * 4 : 0;
    const double header = parallel::TensorP2P::kHeaderBytes;  // at most one per transfer
    const auto steps = events(dir / "metrics.jsonl", "step");
    ASSERT_EQ(steps.size(), 4u);
    double sum = 0;
    for (size_t s = 0; s < steps.size(); ++s) {
      const double pp = field(steps[s], "pp_bytes");
      sum += pp;
      // A two-rank all-reduce sends between half and all of the tensor, whatever the algorithm.
      EXPECT_GE(pp, activation + 0.5 * tiedSum) << "tied " << tied << ", step " << s + 1;
      EXPECT_LE(pp, activation + header + tiedSum) << "tied " << tied << ", step " << s + 1;
      EXPECT_EQ(field(steps[s], "grad_bytes"), 0) << "tied " << tied << ", step " << s + 1;
      EXPECT_LE(pp, field(steps[s], "bytes_sent"));
    }
    const auto summary = events(dir / "metrics.jsonl", "summary");
    ASSERT_EQ(summary.size(), 1u);
    EXPECT_DOUBLE_EQ(field(summary[0], "pp_bytes_per_step"), sum / 4);
    EXPECT_EQ(field(summary[0], "grad_bytes_per_step"), 0);
    EXPECT_EQ(field(summary[0], "pp"), 2);
    // SGD with momentum holds one buffer a parameter after the first step: measured = computed.
    const double computed = field(events(dir / "metrics.jsonl", "start")[0], "optimizer_bytes");
    EXPECT_GT(computed, 0);
    EXPECT_EQ(field(summary[0], "optimizer_bytes"), computed);
    fs::remove_all(dir);
  }
}

// The trace shows stage 0 idle while the later stages run: its "wait gradient" spans.
TEST(LayerwiseLoopTrace, StageZeroWaitsForTheGradient) {
  const fs::path dir = tempDir("trace");
  const Config cfg = gptConfig(dir, 2, 2, true, {"train.eval=false"});
  TrainOptions opts;
  opts.tracePath = (dir / "trace.json").string();
  runLayerwise(cfg, 2, opts);
  std::ifstream in(opts.tracePath);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string trace = ss.str();
  size_t waits = 0;
  for (size_t at = trace.find("\"wait gradient\""); at != std::string::npos; at = trace.find("\"wait gradient\"", at + 1)) {
    const size_t end = trace.find('}', at);
    if (trace.substr(at, end - at).find("\"pid\":0,") != std::string::npos) ++waits;
  }
  EXPECT_EQ(waits, 4u) << "one per step on stage 0";
  EXPECT_NE(trace.find("\"wait activation\""), std::string::npos);
  fs::remove_all(dir);
}

// Checkpoints: one plain file that a whole tp-1 Gpt loads; resuming the split from it
// continues with the same losses.
TEST(LayerwiseLoopCheckpoint, PlainFileLoadsWholeAndResumesSplit) {
  const fs::path dir = tempDir("ckpt");
  const Config cfg = gptConfig(dir, 2, 2, true, {"output.checkpoint_every=2"});
  const LoopReference ref = trainWholeOnTask(cfg, 4);
  runLayerwise(cfg, 2);
  const std::string last = latestCheckpoint((dir / "checkpoints").string());
  ASSERT_FALSE(last.empty());
  {
    Gpt whole(gptOptions(cfg));
    auto opt = makeOptimizer(cfg.optim, whole->parameters());
    const TrainState st = loadCheckpoint(last, *whole, *opt);
    EXPECT_EQ(st.globalStep, 4);
    for (const auto& p : whole->named_parameters()) EXPECT_LE(maxDiff(p.value(), ref.final.at(p.key())), 1e-5) << p.key();
  }
  // Resume at step 2 in a fresh folder: steps 3 and 4 as before.
  const fs::path dir2 = tempDir("ckpt-resume");
  const std::string at2 = (dir / "checkpoints" / checkpointName(2)).string();
  ASSERT_TRUE(fs::exists(at2));
  const Config cfg2 = gptConfig(dir2, 2, 2, true);
  TrainOptions opts;
  opts.resumeFrom = at2;
  const auto runs = runLayerwise(cfg2, 2, opts);
  const auto steps = events(dir2 / "metrics.jsonl", "step");
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_NEAR(field(steps[0], "loss"), ref.losses[2], 1e-5);
  EXPECT_NEAR(field(steps[1], "loss"), ref.losses[3], 1e-5);
  for (const auto& run : runs)
    for (const auto& [name, t] : run.final) EXPECT_LE(maxDiff(t, ref.final.at(name)), 1e-5) << name;
  // The same checkpoint resumed at another pp (3 stages, with 1F1B): each stage takes its layers
  // from the whole-model file, and steps 3 and 4 are unchanged.
  const fs::path dir3 = tempDir("ckpt-resume-pp3");
  const Config cfg3 = gptConfig(dir3, 3, 3, true, {"parallel.schedule=1f1b", "parallel.micro_batches=2"});
  const auto runs3 = runLayerwise(cfg3, 3, opts);
  const auto steps3 = events(dir3 / "metrics.jsonl", "step");
  ASSERT_EQ(steps3.size(), 2u);
  EXPECT_NEAR(field(steps3[0], "loss"), ref.losses[2], 1e-5);
  EXPECT_NEAR(field(steps3[1], "loss"), ref.losses[3], 1e-5);
  for (const auto& run : runs3)
    for (const auto& [name, t] : run.final) EXPECT_LE(maxDiff(t, ref.final.at(name)), 1e-5) << name;
  fs::remove_all(dir);
  fs::remove_all(dir2);
  fs::remove_all(dir3);
}

// A step whose loss is not finite stops every rank at that step with a DivergenceError; the
// lead (stage 0, which never sees the loss itself) reports it.
TEST(LayerwiseStrategy, DivergenceStopsEveryRankAtTheSameStep) {
  const fs::path dir = tempDir("diverge");
  const Config cfg = gptConfig(dir, 2, 2, true, {"optim.lr=1e30", "train.eval=false"});
  testutil::RankOptions ro;
  ro.timeout = Millis(30000);
  std::vector<int64_t> stepOf(2, -1);
  std::vector<std::string> messages(2);
  auto outcomes = testutil::runRanksCollect(2, ro, [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    TrainOptions o;
    o.out = &sink;
    LayerwiseStrategy strategy(cfg, borrow(g));
    try {
      runLoop(cfg, g, strategy, o, textTask);
    } catch (const DivergenceError& e) {
      stepOf[g.rank()] = e.step();
      messages[g.rank()] = e.what();
      throw;
    }
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(outcomes[r] != nullptr) << "rank " << r << " did not stop";
    EXPECT_GT(stepOf[r], 0) << "rank " << r;
  }
  EXPECT_EQ(stepOf[0], stepOf[1]);
  // The lead reports the step, the split, the ranks' losses (each its replica's) and what to
  // change; the other rank points to it.
  EXPECT_NE(messages[0].find(str("training diverged at step ", stepOf[0], " (epoch 1, step ", stepOf[0], " of ")),
            std::string::npos)
      << messages[0];
  EXPECT_NE(messages[0].find("on a 2-stage layer-wise split (pp 2 x dp 1"), std::string::npos) << messages[0];
  EXPECT_NE(messages[0].find("rank 0: "), std::string::npos) << messages[0];
  EXPECT_NE(messages[0].find("what to change: a lower optim.lr (1e+30 at this step"), std::string::npos) << messages[0];
  EXPECT_NE(messages[1].find("; rank 0 reports the details"), std::string::npos) << messages[1];
  EXPECT_EQ(events(dir / "metrics.jsonl", "diverged").size(), 1u);
  fs::remove_all(dir);
}

TEST(LayerwiseStrategy, RefusesWhatItDoesNotRun) {
  const fs::path dir = tempDir("refuse");
  testutil::runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
    Config one = gptConfig(dir, 2, 2, true);
    one.parallel.pp = 1;
    EXPECT_THROW(LayerwiseStrategy(one, borrow(g)), ConfigError);
    Config half = gptConfig(dir, 2, 2, true);
    half.precision = "bf16";
    EXPECT_THROW(LayerwiseStrategy(half, borrow(g)), ConfigError);
  });
}

}  // namespace
}  // namespace chorus::train
