// The training loop on threads-as-ranks: an interrupted run resumed from its checkpoint ends
// with weights bitwise equal to an uninterrupted run's; metrics and evaluation are written.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "chorus/compress/sparse.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/config.h"
#include "chorus/train/models.h"
#include "chorus/train/optim.h"
#include "chorus/train/trainer.h"
#include "util/rank_threads.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

fs::path tempDir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / str("chorus-trainer-test-", getpid(), "-", name);
  fs::remove_all(d);
  return d;
}

// 640 samples, global batch 64 over 2 ranks: 10 steps per epoch, 2 epochs.
Config smallConfig(const std::vector<std::string>& extra, const fs::path& dir) {
  std::vector<std::string> sets = {"data.limit_train=640", "data.limit_test=200", "train.batch_size=64",
                                   "train.epochs=2",       "output.progress=none", "train.log_every=4",
                                   "output.dir=" + dir.string()};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return defaultConfig(sets, 2);
}

// Runs cfg on 2 ranks; returns rank 0's final parameters and buffers.
std::vector<torch::Tensor> run(const Config& cfg, TrainOptions opts, TrainResult* result = nullptr) {
  std::vector<torch::Tensor> state;
  testutil::RankOptions ro;
  ro.timeout = Millis(20000);
  testutil::runRanks(2, ro, [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    opts.out = &sink;
    // The trainer builds its own model: read the weights back from its last checkpoint.
    TrainResult r = train(cfg, borrow(g), opts);
    if (g.rank() == 0) {
      if (result) *result = r;
      EXPECT_FALSE(r.lastCheckpoint.empty());
      torch::manual_seed(0);
      auto model = makeModel(cfg.model, 1, 28, 28, 10);
      auto opt = makeOptimizer(cfg.optim, model->parameters());
      loadCheckpoint(r.lastCheckpoint, *model, *opt);
      for (auto& p : model->parameters()) state.push_back(p.detach().clone());
      for (auto& b : model->buffers()) state.push_back(b.detach().clone());
    }
  });
  return state;
}

void expectBitwiseEqual(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  ASSERT_FALSE(a.empty()) << what;
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << what << ": tensor " << i << " differs";
}

void resumeIsBitExact(const std::vector<std::string>& extra, const std::string& name) {
  torch::set_num_threads(1);
  fs::path full = tempDir(name + "-full"), cut = tempDir(name + "-cut");
  auto whole = run(smallConfig(extra, full), {});
  for (int64_t stopAt : {7, 10, 13}) {  // mid-epoch, at the epoch boundary, in the second epoch
    fs::remove_all(cut);
    Config cfg = smallConfig(extra, cut);
    TrainOptions first;
    first.stopAfter = stopAt;
    TrainResult r1;
    run(cfg, first, &r1);
    EXPECT_EQ(r1.globalStep, stopAt);
    TrainOptions second;
    second.resume = true;
    TrainResult r2;
    auto resumed = run(cfg, second, &r2);
    EXPECT_EQ(r2.steps, 20 - stopAt) << name;
    EXPECT_EQ(r2.globalStep, 20);
    expectBitwiseEqual(resumed, whole, str(name, " stopped at ", stopAt));
  }
  // The check can fail: a run with another seed ends elsewhere.
  fs::path other = tempDir(name + "-other");
  auto different = run(smallConfig([&] { auto e = extra; e.push_back("train.seed=5"); return e; }(), other), {});
  bool allEqual = true;
  for (size_t i = 0; i < different.size(); ++i) allEqual = allEqual && torch::equal(different[i], whole[i]);
  EXPECT_FALSE(allEqual);
  fs::remove_all(full);
  fs::remove_all(cut);
  fs::remove_all(other);
}

TEST(Trainer, ResumeIsBitExactSgdMlp) {
  resumeIsBitExact({"model.hidden=[32]", "optim.name=sgd", "optim.nesterov=true", "schedule.warmup_steps=3",
                    "output.checkpoint_every=3"},
                   "sgd");
}

TEST(Trainer, ResumeIsBitExactAdamWCnnBf16) {
  resumeIsBitExact({"model.name=cnn", "model.channels=[4]", "model.fc=16", "optim.name=adamw", "optim.lr=0.003",
                    "schedule.name=step", "precision=bf16", "output.checkpoint_every=3"},
                   "adamw");
}

TEST(Trainer, ResumeIsBitExactWithTopKResiduals) {
  resumeIsBitExact({"model.hidden=[32]", "compression.method=topk", "compression.ratio=0.05",
                    "output.checkpoint_every=3"},
                   "topk");
}

TEST(Trainer, ResumeIsBitExactWithDgcMomentum) {
  resumeIsBitExact({"model.hidden=[32]", "compression.method=dgc", "optim.momentum=0", "compression.warmup_epochs=1",
                    "output.checkpoint_every=3"},
                   "dgc");
}

// PowerSGD keeps its residuals and Q as the codec state's float32 buffers, viewed as matrices.
TEST(Trainer, ResumeIsBitExactWithPowerSgdState) {
  resumeIsBitExact({"model.hidden=[32]", "compression.method=powersgd", "compression.rank=2",
                    "output.checkpoint_every=3"},
                   "powersgd");
}

// optim.clip_norm under DDP: with plain SGD (no momentum, no decay, constant lr) each step moves
// the weights by lr times the clipped gradient, so with a norm far below the gradient's every
// step's move has length lr * clip_norm exactly (and without clipping it is far longer).
TEST(Trainer, ClipNormBoundsEveryStepsMove) {
  torch::set_num_threads(1);
  auto moves = [](double clip, const std::string& name) {
    fs::path dir = tempDir(name);
    Config cfg = smallConfig({"optim.momentum=0", "optim.lr=0.1", str("optim.clip_norm=", clip), "schedule.name=constant",
                              "train.max_steps=4", "output.checkpoint_every=1", "output.keep=10", "train.eval=false"},
                             dir);
    run(cfg, {});
    std::vector<std::vector<torch::Tensor>> at;
    for (int64_t step = 1; step <= 4; ++step) {
      auto model = makeModel(cfg.model, 1, 28, 28, 10);
      auto opt = makeOptimizer(cfg.optim, model->parameters());
      loadCheckpoint((dir / "checkpoints" / checkpointName(step)).string(), *model, *opt);
      std::vector<torch::Tensor> v;
      for (auto& p : model->parameters()) v.push_back(p.detach().clone());
      at.push_back(v);
    }
    std::vector<double> out;
    for (size_t s = 1; s < at.size(); ++s) {
      double sq = 0;
      for (size_t i = 0; i < at[s].size(); ++i) sq += (at[s][i] - at[s - 1][i]).pow(2).sum().item<double>();
      out.push_back(std::sqrt(sq));
    }
    fs::remove_all(dir);
    return out;
  };
  for (double m : moves(0.01, "clip")) EXPECT_NEAR(m, 0.1 * 0.01, 1e-6);
  for (double m : moves(0, "noclip")) EXPECT_GT(m, 0.1 * 0.01 * 10);
}

TEST(Trainer, WritesMetricsEvaluationAndSummary) {
  torch::set_num_threads(1);
  fs::path dir = tempDir("metrics");
  TrainResult r;
  run(smallConfig({"model.hidden=[32]", "ddp.comm_dtype=fp16", "precision=fp16"}, dir), {}, &r);
  EXPECT_EQ(r.steps, 20);
  EXPECT_GT(r.testAccuracy, 0.3) << "20 steps on 640 samples should beat chance (0.1)";
  std::ifstream in(r.metricsPath);
  std::string line, last;
  int steps = 0, evals = 0;
  while (std::getline(in, line)) {
    std::erase(line, ' ');  // keys and these values hold no spaces
    if (line.find("\"event\":\"step\"") != std::string::npos) {
      ++steps;
      for (const char* k : {"\"loss\":", "\"lr\":", "\"samples_per_s\":", "\"bytes_sent\":", "\"comm_s\":", "\"compute_s\":"}) {
        EXPECT_NE(line.find(k), std::string::npos) << k << " missing in " << line;
      }
    }
    if (line.find("\"event\":\"eval\"") != std::string::npos) ++evals;
    last = line;
  }
  EXPECT_EQ(steps, 6);  // every 4 steps and at each epoch's end: 4, 8, 10 per epoch
  EXPECT_EQ(evals, 2);
  EXPECT_NE(last.find("\"event\":\"summary\""), std::string::npos) << last;
  EXPECT_NE(last.find("\"overlap_frac\":"), std::string::npos) << last;
  fs::remove_all(dir);
}

// The summary's gradient accounting: what rank 0 sent during backward passes, and the ratio
// to a dense float32 ring all-reduce of the same buckets, for dense, 16-bit and top-k runs.
double summaryField(const std::string& metricsPath, const std::string& key) {
  std::ifstream in(metricsPath);
  std::string line, last;
  while (std::getline(in, line)) last = line;
  std::erase(last, ' ');
  size_t at = last.find("\"" + key + "\":");
  if (at == std::string::npos) {
    ADD_FAILURE() << key << " missing in " << last;
    return -1;
  }
  return std::stod(last.substr(at + key.size() + 3));
}

TEST(Trainer, CountsGradientBytesAndCompressionRatio) {
  torch::set_num_threads(1);
  // MLP 784-32-10: 25450 parameters in one bucket (under the 1 MiB first-bucket cap).
  const double params = 784 * 32 + 32 + 32 * 10 + 10;
  struct Case {
    std::vector<std::string> sets;
    double gradBytes;  // per step, rank 0, 2 ranks
    bool rebuilds;     // DDP rebuilds the buckets (without a codec)
  };
  // Dense ring on 2 ranks: reduce-scatter and all-gather each send half the buffer.
  // fp16: the same in 2-byte entries. topk 5%, layer-wise: round(0.05 n) per tensor =
  // 1254 + 2 + 16 + 1 pairs; the allgather sends the 16-byte (size, count) pair, then the message.
  const double topkBytes = 16.0 + static_cast<double>(compress::sparseMessageBytes(25450, 1254 + 2 + 16 + 1));
  std::vector<Case> cases = {{{}, params * 4, true},
                             {{"compression.method=fp16"}, params * 2, true},
                             {{"compression.method=topk", "compression.ratio=0.05"}, topkBytes, false}};
  for (const auto& c : cases) {
    fs::path dir = tempDir("grad-bytes");
    auto sets = c.sets;
    sets.push_back("model.hidden=[32]");
    TrainResult r;
    run(smallConfig(sets, dir), {}, &r);
    SCOPED_TRACE(c.sets.empty() ? "dense" : c.sets[0]);
    // Dense and fp16 also broadcast the rebuilt bucket layout once, during the second backward
    // (rebuildBuckets; off with a codec): a few bytes per step over 20 steps.
    const double slack = c.rebuilds ? 100.0 / 20 : 0.0;
    const double got = summaryField(r.metricsPath, "grad_bytes_per_step");
    EXPECT_GE(got, c.gradBytes);
    EXPECT_LE(got, c.gradBytes + slack);
    EXPECT_NEAR(summaryField(r.metricsPath, "compression_ratio"), params * 4 / got, 1e-6);
    // Everything sent includes the evaluation's reductions too.
    EXPECT_GT(summaryField(r.metricsPath, "bytes_per_step"), c.gradBytes);
    fs::remove_all(dir);
  }
}

TEST(Trainer, ResumeWithoutACheckpointNamesTheFix) {
  fs::path dir = tempDir("nockpt");
  Config cfg = smallConfig({}, dir);
  auto outcomes = testutil::runRanksCollect(2, {}, [&](comm::ProcessGroup& g) {
    TrainOptions o;
    o.resume = true;
    train(cfg, borrow(g), o);
  });
  EXPECT_NE(testutil::messageOf(outcomes[0]).find("run without --resume"), std::string::npos)
      << testutil::messageOf(outcomes[0]);
}

// ---- checkpoint folders: one line of runs per output.dir/checkpoints ----

std::vector<std::string> withSets(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Runs cfg on 2 ranks expecting both to refuse; returns rank 0's and rank 1's messages.
std::pair<std::string, std::string> refusal(const Config& cfg, const TrainOptions& opts) {
  auto outcomes = testutil::runRanksCollect(2, {}, [&](comm::ProcessGroup& g) {
    TrainOptions o = opts;
    std::ostringstream sink;
    o.out = &sink;
    train(cfg, borrow(g), o);
  });
  EXPECT_TRUE(outcomes[0] && outcomes[1]) << "both ranks must stop";
  return {testutil::messageOf(outcomes[0]), testutil::messageOf(outcomes[1])};
}

// The case: a new run in a folder with an older run's checkpoints at higher steps used
// to prune its own newest file (pruning kept the highest steps), report it anyway, and let
// --resume load the other run's file. Now a fresh run refuses the folder, naming it and the
// choices; with output.overwrite it deletes them, and what --resume finds is its own.
TEST(Trainer, FreshRunRefusesAnotherRunsCheckpointsUnlessOverwrite) {
  torch::set_num_threads(1);
  const fs::path dir = tempDir("folders"), ckpts = dir / "checkpoints";
  const std::vector<std::string> quick = {"model.hidden=[16]", "output.checkpoint_every=2", "train.max_steps=4"};
  run(smallConfig(quick, dir), {});
  ASSERT_EQ(listCheckpoints(ckpts.string()),
            (std::vector<std::string>{(ckpts / checkpointName(2)).string(), (ckpts / checkpointName(4)).string()}));
  fs::rename(ckpts / checkpointName(4), ckpts / checkpointName(5000));  // a long run's newest
  const auto before = listCheckpoints(ckpts.string());

  auto [lead, other] = refusal(smallConfig(quick, dir), {});
  for (const std::string& part : std::initializer_list<std::string>{ckpts.string(), "holds 2 checkpoint(s) of another run", "ckpt-00005000.pt",
                                 "this run starts fresh", "--resume", "output.dir", "--set output.overwrite=true"})
    EXPECT_NE(lead.find(part), std::string::npos) << "'" << part << "' not in: " << lead;
  EXPECT_NE(other.find("rank 0's message"), std::string::npos) << other;
  EXPECT_EQ(listCheckpoints(ckpts.string()), before);  // nothing written, nothing removed

  // A writer killed mid-save left a temporary; the next start removes it.
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  const fs::path tmp = ckpts / str(checkpointName(6), ".tmp.", dead);
  std::ofstream(tmp) << "half a checkpoint";

  TrainResult second;
  run(smallConfig(withSets(quick, {"output.overwrite=true", "train.max_steps=3"}), dir), {}, &second);
  EXPECT_EQ(second.lastCheckpoint, (ckpts / checkpointName(3)).string());
  EXPECT_EQ(listCheckpoints(ckpts.string()),
            (std::vector<std::string>{(ckpts / checkpointName(2)).string(), (ckpts / checkpointName(3)).string()}));
  EXPECT_FALSE(fs::exists(tmp));

  // --resume continues this run's newest, step 3.
  TrainOptions resume;
  resume.resume = true;
  TrainResult third;
  run(smallConfig(withSets(quick, {"train.max_steps=6"}), dir), resume, &third);
  EXPECT_EQ(third.steps, 3);
  EXPECT_EQ(third.globalStep, 6);
  fs::remove_all(dir);
}

// Resuming an older checkpoint of the folder (a roll-back) would mix two futures of one run:
// refused, unless output.overwrite deletes the newer files; the file resumed from is kept, and
// the run continues from it bit-exactly.
TEST(Trainer, ResumingAnOlderCheckpointNeedsOverwriteAndKeepsIt) {
  torch::set_num_threads(1);
  const fs::path dir = tempDir("rollback"), ckpts = dir / "checkpoints";
  const std::vector<std::string> quick = {"model.hidden=[16]", "output.checkpoint_every=1", "train.max_steps=4",
                                          "output.keep=3"};
  auto whole = run(smallConfig(quick, dir), {});
  const std::string two = (ckpts / checkpointName(2)).string();
  TrainOptions from;
  from.resumeFrom = two;
  auto [lead, other] = refusal(smallConfig(quick, dir), from);
  EXPECT_NE(lead.find(str("this run continues ", two, ", which is not the newest")), std::string::npos) << lead;
  EXPECT_NE(lead.find("the file resumed from is kept"), std::string::npos) << lead;
  EXPECT_EQ(listCheckpoints(ckpts.string()).size(), 3u);

  TrainResult r;
  auto again = run(smallConfig(withSets(quick, {"output.overwrite=true", "output.keep=2"}), dir), from, &r);
  EXPECT_EQ(r.steps, 2);
  expectBitwiseEqual(again, whole, "rolled back to step 2 and run to 4");
  // Its line was [2], then 3 and 4 written: with keep = 2 the inherited file went first.
  EXPECT_EQ(listCheckpoints(ckpts.string()),
            (std::vector<std::string>{(ckpts / checkpointName(3)).string(), (ckpts / checkpointName(4)).string()}));
  fs::remove_all(dir);
}

// ---- divergence: a non-finite loss or gradient stops every rank at the same step ----

// The JSON lines of a metrics file whose "event" is `event`, spaces removed.
std::vector<std::string> eventLines(const std::string& path, const std::string& event) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    std::erase(line, ' ');
    if (line.find("\"event\":\"" + event + "\"") != std::string::npos) out.push_back(line);
  }
  return out;
}

// lr = 1e6 blows the MLP's weights up within a few steps. Both ranks stop with DivergenceError
// at the same step, after the last checkpoint written before it; rank 0's message names the
// step, the ranks and that checkpoint, rank 1's points to rank 0; no run summary is written.
TEST(Trainer, DivergenceStopsEveryRankAtTheSameStep) {
  torch::set_num_threads(1);
  fs::path dir = tempDir("diverge");
  Config cfg = smallConfig({"model.hidden=[32]", "optim.lr=1e6", "output.checkpoint_every=1"}, dir);
  std::vector<int64_t> steps(2, -1);
  auto outcomes = testutil::runRanksCollect(2, {}, [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    TrainOptions o;
    o.out = &sink;
    try {
      train(cfg, borrow(g), o);
    } catch (const DivergenceError& e) {
      steps[static_cast<size_t>(g.rank())] = e.step();
      throw;
    }
  });
  const std::string lead = testutil::messageOf(outcomes[0]), other = testutil::messageOf(outcomes[1]);
  ASSERT_GT(steps[0], 1) << lead << " / " << other;  // the first step has a finite loss
  EXPECT_LT(steps[0], 20);
  EXPECT_EQ(steps[1], steps[0]) << other;
  const std::string at = str("training diverged at step ", steps[0], " (epoch ");
  EXPECT_NE(lead.find(at), std::string::npos) << lead;
  EXPECT_NE(lead.find("rank 0"), std::string::npos) << lead;
  EXPECT_NE(lead.find("rank 1"), std::string::npos) << lead;
  EXPECT_NE(lead.find("last good checkpoint: " + (dir / "checkpoints" / checkpointName(steps[0] - 1)).string()),
            std::string::npos)
      << lead;
  EXPECT_NE(lead.find("a lower optim.lr"), std::string::npos) << lead;
  EXPECT_NE(other.find(at), std::string::npos) << other;
  EXPECT_NE(other.find("rank 0 reports the details"), std::string::npos) << other;
  const std::string metrics = (dir / "metrics.jsonl").string();
  auto diverged = eventLines(metrics, "diverged");
  ASSERT_EQ(diverged.size(), 1u);
  EXPECT_NE(diverged[0].find(str("\"step\":", steps[0], ",")), std::string::npos) << diverged[0];
  EXPECT_TRUE(eventLines(metrics, "summary").empty());
  fs::remove_all(dir);
}

// Without a checkpoint the message says the run has to start over and how to keep one.
TEST(Trainer, DivergenceWithoutACheckpointSaysSo) {
  torch::set_num_threads(1);
  fs::path dir = tempDir("diverge-nockpt");
  Config cfg = smallConfig({"model.hidden=[32]", "optim.lr=1e6", "output.checkpoint_epoch=false"}, dir);
  auto outcomes = testutil::runRanksCollect(2, {}, [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    TrainOptions o;
    o.out = &sink;
    train(cfg, borrow(g), o);
  });
  const std::string lead = testutil::messageOf(outcomes[0]);
  EXPECT_NE(lead.find("training diverged at step"), std::string::npos) << lead;
  EXPECT_NE(lead.find("no checkpoint was written before this step"), std::string::npos) << lead;
  EXPECT_NE(lead.find("output.checkpoint_every"), std::string::npos) << lead;
  fs::remove_all(dir);
}

// fp16: a loss scale too large for the gradients overflows them (in the float16 all-reduce)
// for the first steps; the GradScaler skips those steps and backs off, which is expected and
// must not stop the run.
TEST(Trainer, Fp16SkippedStepsAreNotDivergence) {
  torch::set_num_threads(1);
  fs::path dir = tempDir("fp16-skips");
  TrainResult r;
  run(smallConfig({"model.hidden=[32]", "precision=fp16", "ddp.comm_dtype=fp16", "amp.init_scale=1e8"}, dir), {}, &r);
  EXPECT_GT(r.skippedSteps, 0) << "the test needs overflowing steps";
  EXPECT_LT(r.skippedSteps, 20) << "the scale should have come down to one that fits";
  EXPECT_EQ(r.steps, 20);
  EXPECT_TRUE(eventLines(r.metricsPath, "diverged").empty());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace chorus::train
