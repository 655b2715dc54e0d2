// `chorus train` for the GPT (TensorParallelStrategy) on threads-as-ranks, on the fortunes
// text: a dp2 x tp2 mesh trains to the same parameters as one process on the same global
// batch; a checkpoint written at one tp resumes at another with the loss the uninterrupted run
// has; sequence parallelism does not change the losses; the records hold the GPT keys and the
// measured tp traffic matches the all-reduces the model makes; a divergence stops every rank at
// the same step.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "chorus/common/error.h"
#include "chorus/parallel/mesh.h"
#include "chorus/train/config.h"
#include "chorus/train/gpt.h"
#include "chorus/train/optim.h"
#include "chorus/train/sharded_checkpoint.h"
#include "chorus/train/text_task.h"
#include "chorus/train/tp_strategy.h"
#include "chorus/train/trainer.h"
#include "util/rank_threads.h"
#include "util/scratch_dir.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kBatch = 8, kContext = 16, kEmbed = 32, kLayers = 2;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

fs::path tempDir(const std::string& name) { return test::scratchDir("chorus-tp-trainer-test", name); }

// A tiny GPT on the fortunes corpus, every step logged.
Config gptConfig(int world, int tp, const fs::path& dir, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> sets = {"model.name=gpt",
                                   "data.dataset=fortunes",
                                   "data.path=/usr/share/games/fortunes",
                                   str("model.layers=", kLayers),
                                   "model.heads=4",
                                   str("model.embed=", kEmbed),
                                   str("model.context=", kContext),
                                   str("train.batch_size=", kBatch),
                                   "train.max_steps=20",
                                   "train.threads=1",
                                   "train.log_every=1",
                                   "train.eval=false",
                                   "data.eval_windows=8",
                                   "optim.lr=0.1",
                                   "output.progress=none",
                                   str("parallel.tp=", tp),
                                   "output.dir=" + dir.string()};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return defaultConfig(sets, world);
}

// Runs cfg on `world` ranks; returns rank 0's result.
TrainResult run(int world, const Config& cfg, TrainOptions opts = {}) {
  TrainResult out;
  testutil::RankOptions ro;
  ro.timeout = Millis(30000);
  testutil::runRanks(world, ro, [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    TrainOptions o = opts;
    o.out = &sink;
    TrainResult r = train(cfg, borrow(g), o);
    if (g.rank() == 0) out = r;
  });
  return out;
}

// The full (tp = 1) parameters of a checkpoint written at any tp.
std::map<std::string, torch::Tensor> fullParameters(const Config& cfg, const std::string& path) {
  Gpt model(gptOptions(cfg));
  auto opt = makeOptimizer(cfg.optim, model->parameters());
  loadShardedCheckpoint(path, *model, *opt, 0, 1);
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : model->named_parameters()) out[p.key()] = p.value().detach().clone();
  return out;
}

std::vector<std::string> events(const fs::path& file, const std::string& event) {
  std::ifstream in(file);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("\"event\": \"" + event + "\"") != std::string::npos) out.push_back(line);
  }
  return out;
}

bool has(const std::string& line, const std::string& key) { return line.find("\"" + key + "\": ") != std::string::npos; }

double field(const std::string& line, const std::string& key) {
  const size_t at = line.find("\"" + key + "\": ");
  if (at == std::string::npos) return -12345;
  return std::stod(line.substr(at + key.size() + 4));
}

// The loss of every step record, by global step (a resumed run's records follow the first's).
std::map<int64_t, double> stepLosses(const fs::path& dir) {
  std::map<int64_t, double> out;
  for (const auto& line : events(dir / "metrics.jsonl", "step"))
    out[static_cast<int64_t>(field(line, "step"))] = field(line, "loss");
  return out;
}

TEST(TpTrainer, DpTwoByTpTwoEqualsOneProcessOnTheGlobalBatch) {
  const fs::path one = tempDir("one"), mesh = tempDir("mesh");
  const Config c1 = gptConfig(1, 1, one), c4 = gptConfig(4, 2, mesh);
  const TrainResult r1 = run(1, c1), r4 = run(4, c4);
  ASSERT_EQ(r1.globalStep, 20);
  ASSERT_EQ(r4.globalStep, 20);
  const auto want = fullParameters(c1, r1.lastCheckpoint), got = fullParameters(c1, r4.lastCheckpoint);
  ASSERT_EQ(want.size(), got.size());
  for (const auto& [name, w] : want) {
    const torch::Tensor& g = got.at(name);
    ASSERT_EQ(g.sizes(), w.sizes()) << name;
    EXPECT_LE((g - w).abs().max().item<double>(), 1e-4 * (1 + w.abs().max().item<double>())) << name;
  }
  // Both learned, and the global-batch losses agree step by step.
  const auto l1 = stepLosses(one), l4 = stepLosses(mesh);
  ASSERT_EQ(l1.size(), 20u);
  ASSERT_EQ(l4.size(), 20u);
  EXPECT_LT(l1.at(20), l1.at(1) - 0.5);
  for (const auto& [step, loss] : l1) EXPECT_NEAR(l4.at(step), loss, 1e-4) << "step " << step;
  // The first step's tp traffic on the mesh: the all-reduces of each replica's half batch (see
  // RecordsHoldTheGptKeysAndTheTpTraffic), apart from DDP's gradient buckets.
  const auto steps = events(mesh / "metrics.jsonl", "step");
  const double bt = kBatch / 2 * kContext, formula = 4.0 * (bt * kEmbed * (2 + 4 * kLayers) + 3 * bt);
  EXPECT_NEAR(field(steps[0], "tp_bytes"), formula, 0.01 * formula);
  EXPECT_GT(field(steps[0], "grad_bytes"), 0);
}

// optim.clip_norm at dp 2 x tp 2: the norm is the whole model's (each shard's squares summed
// over tp, the replicated LayerNorms and biases counted once), so the run ends where one process
// clipping the unsplit model with the same norm ends; the clipping binds (without it the
// weights end elsewhere).
TEST(TpTrainer, ClipNormIsTheWholeModelsNorm) {
  const fs::path one = tempDir("clip-one"), mesh = tempDir("clip-mesh"), free = tempDir("clip-free");
  const std::vector<std::string> extra = {"optim.clip_norm=0.2", "train.max_steps=6"};
  const Config c1 = gptConfig(1, 1, one, extra), c4 = gptConfig(4, 2, mesh, extra);
  const Config cf = gptConfig(1, 1, free, {"train.max_steps=6"});
  const TrainResult r1 = run(1, c1), r4 = run(4, c4), rf = run(1, cf);
  const auto want = fullParameters(c1, r1.lastCheckpoint), got = fullParameters(c1, r4.lastCheckpoint),
             unclipped = fullParameters(c1, rf.lastCheckpoint);
  double moved = 0;
  for (const auto& [name, w] : want) {
    EXPECT_LE((got.at(name) - w).abs().max().item<double>(), 1e-4 * (1 + w.abs().max().item<double>())) << name;
    moved = std::max(moved, (unclipped.at(name) - w).abs().max().item<double>());
  }
  EXPECT_GT(moved, 1e-3) << "the clipping does not bind";
  fs::remove_all(one);
  fs::remove_all(mesh);
  fs::remove_all(free);
}

// Stops a run of `from` tp after 5 steps, resumes it at `to` tp, and compares every later step's
// loss with a run that did not stop.
void resumeAtAnotherTp(int from, int to) {
  const fs::path whole = tempDir(str("whole", from, to)), cut = tempDir(str("cut", from, to));
  const std::vector<std::string> extra = {"train.max_steps=8"};
  run(from, gptConfig(from, from, whole, extra));
  TrainOptions stop;
  stop.stopAfter = 5;
  const TrainResult first = run(from, gptConfig(from, from, cut, extra), stop);
  ASSERT_EQ(first.globalStep, 5);
  ASSERT_FALSE(first.lastCheckpoint.empty());
  EXPECT_EQ(readCheckpointLayout(first.lastCheckpoint).tp, from);
  TrainOptions resume;
  resume.resume = true;
  const TrainResult second = run(to, gptConfig(to, to, cut, extra), resume);
  EXPECT_EQ(second.globalStep, 8);
  EXPECT_EQ(second.steps, 3);
  const auto want = stepLosses(whole), got = stepLosses(cut);
  ASSERT_EQ(want.size(), 8u);
  ASSERT_EQ(got.size(), 8u);
  for (int64_t s = 6; s <= 8; ++s) EXPECT_NEAR(got.at(s), want.at(s), 1e-5) << "step " << s << ", tp " << from << " -> " << to;
}

TEST(TpTrainer, ResumeAtTpTwoFromTpOne) { resumeAtAnotherTp(1, 2); }
TEST(TpTrainer, ResumeAtTpOneFromTpTwo) { resumeAtAnotherTp(2, 1); }

TEST(TpTrainer, SequenceParallelGivesTheSameLosses) {
  const fs::path off = tempDir("sp-off"), on = tempDir("sp-on");
  const std::vector<std::string> extra = {"train.max_steps=6"};
  run(2, gptConfig(2, 2, off, extra));
  std::vector<std::string> withSp = extra;
  withSp.push_back("parallel.sequence_parallel=true");
  run(2, gptConfig(2, 2, on, withSp));
  const auto a = stepLosses(off), b = stepLosses(on);
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(b.at(step), loss, 1e-5) << "step " << step;
}

// parameterBytes of the model each rank builds, at tp 1 and 2, against the shapes' count.
TEST(TpTrainer, ParameterBytesFromTheShapes) {
  for (bool tied : {true, false}) {
    GptOptions o;
    o.layers = 2;
    o.embed = 32;
    o.heads = 4;
    o.context = 16;
    o.vocab = 255;  // padded at tp 2
    o.tieEmbeddings = tied;
    Gpt one(o);
    const ParamBytes p1 = parameterBytes(*one), f1 = gptParameterBytes(o, 1);
    EXPECT_EQ(p1.total(), f1.total()) << "tied " << tied;
    testutil::runRanks(2, "loopback", [&](comm::ProcessGroup& g) {
      Gpt two(o, borrow(g));
      const ParamBytes p2 = parameterBytes(*two), f2 = gptParameterBytes(o, 2);
      EXPECT_EQ(p2.sharded, f2.sharded) << "tied " << tied;
      EXPECT_EQ(p2.replicated, f2.replicated) << "tied " << tied;
    });
  }
}

TEST(TpTrainer, RecordsHoldTheGptKeysAndTheTpTraffic) {
  const fs::path dir = tempDir("records");
  const Config cfg = gptConfig(2, 2, dir, {"train.max_steps=3", "train.eval=true"});
  const TrainResult r = run(2, cfg);
  ASSERT_EQ(r.globalStep, 3);
  const auto start = events(dir / "metrics.jsonl", "start");
  ASSERT_EQ(start.size(), 1u);
  const ParamBytes pb = gptParameterBytes(gptOptions(cfg), 2);
  EXPECT_EQ(field(start[0], "tp"), 2);
  EXPECT_EQ(field(start[0], "dp"), 1);
  EXPECT_EQ(field(start[0], "pp"), 1);
  EXPECT_EQ(field(start[0], "param_bytes_sharded"), static_cast<double>(pb.sharded));
  EXPECT_EQ(field(start[0], "param_bytes_replicated"), static_cast<double>(pb.replicated));
  EXPECT_EQ(field(start[0], "optimizer_bytes"), static_cast<double>(pb.total()));  // sgd, momentum 0.9: one buffer
  const auto steps = events(dir / "metrics.jsonl", "step");
  ASSERT_EQ(steps.size(), 3u);
  for (const auto& s : steps) {
    for (const char* key : {"loss", "tokens_per_s", "bpb", "samples_per_s", "tp_bytes", "grad_bytes"})
      EXPECT_TRUE(has(s, key)) << key << " missing in " << s;
    EXPECT_NEAR(field(s, "tokens_per_s"), field(s, "samples_per_s") * kContext, 1e-6 * field(s, "tokens_per_s") + 1e-9);
    EXPECT_NEAR(field(s, "bpb"), field(s, "loss") / std::log(2.0), 1e-9);
  }
  const auto evals = events(dir / "metrics.jsonl", "eval");
  ASSERT_EQ(evals.size(), 1u);
  EXPECT_GT(field(evals[0], "val_loss"), 0);
  EXPECT_NEAR(field(evals[0], "val_bpb"), field(evals[0], "val_loss") / std::log(2.0), 1e-9);
  const auto summary = events(dir / "metrics.jsonl", "summary");
  ASSERT_EQ(summary.size(), 1u);
  EXPECT_EQ(field(summary[0], "optimizer_bytes"), static_cast<double>(pb.total()));
  // The all-reduces of one step at tp 2 (each sends its payload once per rank at 2 ranks), in
  // float32 elements: forward the embedding and the two row-parallel outputs per block, backward
  // the two column-parallel inputs per block and the tied head's input, each B x T x E; the
  // loss's max and its [2, B*T] sums.
  const double bt = kBatch * kContext;
  const double formula = 4.0 * (bt * kEmbed * (2 + 4 * kLayers) + 3 * bt);
  EXPECT_NEAR(field(summary[0], "tp_bytes_per_step"), formula, 0.01 * formula);
  EXPECT_NEAR(field(steps[0], "tp_bytes"), formula, 0.01 * formula);
  EXPECT_EQ(field(steps[0], "grad_bytes"), 0);  // dp = 1
}

// bf16 (autocast) and fp16 (the GradScaler over the world) train at tp 2: finite, falling losses.
TEST(TpTrainer, MixedPrecisionTrains) {
  for (const char* precision : {"bf16", "fp16"}) {
    const fs::path dir = tempDir(str("precision-", precision));
    run(2, gptConfig(2, 2, dir, {"train.max_steps=6", str("precision=", precision)}));
    const auto losses = stepLosses(dir);
    ASSERT_EQ(losses.size(), 6u) << precision;
    for (const auto& [step, loss] : losses) EXPECT_TRUE(std::isfinite(loss)) << precision << " step " << step;
    EXPECT_LT(losses.at(6), losses.at(1)) << precision;
  }
}

TEST(TpTrainer, DivergenceStopsEveryRankAtTheSameStep) {
  const fs::path dir = tempDir("diverge");
  const Config cfg = gptConfig(4, 2, dir, {"optim.lr=1e30", "train.max_steps=6"});
  testutil::RankOptions ro;
  ro.timeout = Millis(30000);
  std::vector<int64_t> steps(4, -1);
  auto errors = testutil::runRanksCollect(4, ro, [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    TrainOptions o;
    o.out = &sink;
    try {
      train(cfg, borrow(g), o);
    } catch (const DivergenceError& e) {
      steps[static_cast<size_t>(g.rank())] = e.step();
      if (g.rank() == 0) {
        EXPECT_NE(std::string(e.what()).find("optim.lr"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find(str("training diverged at step ", e.step(), " (epoch 1, step ", e.step())),
                  std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find(") (tp 2 x dp 2): "), std::string::npos) << e.what();
      } else {
        EXPECT_NE(std::string(e.what()).find("; rank 0 reports the details"), std::string::npos) << e.what();
      }
      throw;
    }
  });
  for (int r = 0; r < 4; ++r) {
    EXPECT_TRUE(errors[static_cast<size_t>(r)]) << "rank " << r << " did not stop";
    EXPECT_EQ(steps[static_cast<size_t>(r)], steps[0]) << "rank " << r;
  }
  EXPECT_GE(steps[0], 1);
  EXPECT_LE(steps[0], 3);
  EXPECT_EQ(events(dir / "metrics.jsonl", "diverged").size(), 1u);
}

}  // namespace
}  // namespace chorus::train
