// Checkpoints at any world size: a data-parallel run checkpointed at 4 workers resumes at 2 and
// 3 on the same samples and ends where the uninterrupted run does; per-rank compression state
// is carried to the new world by codec_state.h's rule (residuals merged so that their sum over
// the ranks, divided by the world size, is kept; PowerSGD's Q and the warm-up count taken from
// rank 0; new ranks' RNG seeded as a fresh hook would).
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "chorus/parallel/data/compression_hooks.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/codec_state.h"
#include "chorus/train/config.h"
#include "chorus/train/models.h"
#include "chorus/train/optim.h"
#include "chorus/train/trainer.h"
#include "util/rank_threads.h"
#include "util/scratch_dir.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

fs::path tempDir(const std::string& name) { return test::scratchDir("chorus-elastic-test", name); }

// 480 samples, global batch 48 (divisible by 2, 3 and 4): 10 steps per epoch at each of those
// world sizes, 2 epochs.
Config elasticConfig(const std::vector<std::string>& extra, const fs::path& dir, int world) {
  std::vector<std::string> sets = {"data.limit_train=480", "data.limit_test=100",  "train.batch_size=48",
                                   "train.epochs=2",       "train.threads=1",      "output.progress=none",
                                   "train.log_every=5",    "output.checkpoint_epoch=true",
                                   "model.hidden=[32]",    "output.dir=" + dir.string()};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return defaultConfig(sets, world);
}

// A checkpoint read into a fresh model and optimizer of cfg: its parameters and its state.
struct Loaded {
  std::vector<torch::Tensor> weights;
  TrainState state;
};

Loaded load(const Config& cfg, const std::string& path) {
  torch::manual_seed(0);
  auto model = makeModel(cfg.model, 1, 28, 28, 10);
  auto opt = makeOptimizer(cfg.optim, model->parameters());
  Loaded l;
  l.state = loadCheckpoint(path, *model, *opt);
  for (auto& p : model->parameters()) l.weights.push_back(p.detach().clone());
  return l;
}

struct Outcome {
  TrainResult result;
  Loaded last;  // the run's last checkpoint
};

// Runs cfg on `world` ranks (threads); returns rank 0's result and its last checkpoint.
Outcome run(const Config& cfg, int world, const TrainOptions& opts) {
  Outcome out;
  testutil::RankOptions ro;
  ro.timeout = Millis(20000);
  testutil::runRanks(world, ro, [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    TrainOptions o = opts;
    o.out = &sink;
    TrainResult r = train(cfg, borrow(g), o);
    if (g.rank() != 0) return;
    out.result = r;
    EXPECT_FALSE(r.lastCheckpoint.empty());
    if (!r.lastCheckpoint.empty()) out.last = load(cfg, r.lastCheckpoint);
  });
  return out;
}

double maxAbsDiff(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  EXPECT_EQ(a.size(), b.size());
  EXPECT_FALSE(a.empty());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, (a[i] - b[i]).abs().max().item<double>());
  return m;
}

// The value of `key` in the last "start" record of a metrics file (-1 when absent).
double lastStartField(const fs::path& metrics, const std::string& key) {
  std::ifstream in(metrics);
  std::string line, start;
  while (std::getline(in, line))
    if (line.find("\"event\": \"start\"") != std::string::npos) start = line;
  const size_t at = start.find("\"" + key + "\": ");
  return at == std::string::npos ? -1 : std::stod(start.substr(at + key.size() + 4));
}

// A copy of a finished run's folder, to resume from without touching the original.
fs::path copyRun(const fs::path& from, const std::string& name) {
  fs::path to = tempDir(name);
  fs::copy(from, to, fs::copy_options::recursive);
  return to;
}

// ---- the whole job: plain DDP ----

// Plain DDP with a constant global batch takes the mean gradient over the same 48 samples at
// any world size (the sampler's order depends on (seed, epoch) alone, and step i takes its
// positions [48 i, 48 (i+1)) whatever the world), and the optimizer's momentum travels in the
// checkpoint. So a 4-worker run stopped mid-epoch (7) or in the second epoch (13) and resumed at
// 2 or 3 workers ends where the uninterrupted 4-worker run does, within float rounding (the
// all-reduce sums in another order).
TEST(ElasticCheckpoint, World4CheckpointResumesAtWorld2And3) {
  torch::set_num_threads(1);
  const std::vector<std::string> sgd = {"optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.9",
                                        "schedule.warmup_steps=3"};
  const fs::path full = tempDir("full");
  const Outcome whole = run(elasticConfig(sgd, full, 4), 4, {});
  ASSERT_EQ(whole.result.globalStep, 20);
  for (int64_t stopAt : {7, 13}) {
    const fs::path cut = tempDir(str("cut", stopAt));
    TrainOptions first;
    first.stopAfter = stopAt;
    const Outcome part = run(elasticConfig(sgd, cut, 4), 4, first);
    ASSERT_EQ(part.result.globalStep, stopAt);
    EXPECT_EQ(part.last.state.scalars.at("world"), 4.0);
    // The steps after the checkpoint move the weights far more than the tolerance below.
    EXPECT_GT(maxAbsDiff(part.last.weights, whole.last.weights), 1e-3);
    for (int world : {2, 3}) {
      const fs::path dir = copyRun(cut, str("cut", stopAt, "-w", world));
      TrainOptions second;
      second.resume = true;
      const Outcome resumed = run(elasticConfig(sgd, dir, world), world, second);
      const std::string what = str("stopped at ", stopAt, " at 4 workers, resumed at ", world);
      EXPECT_EQ(resumed.result.steps, 20 - stopAt) << what;
      EXPECT_EQ(resumed.result.globalStep, 20) << what;
      EXPECT_LT(maxAbsDiff(resumed.last.weights, whole.last.weights), 1e-5) << what;
      EXPECT_EQ(resumed.last.state.scalars.at("world"), static_cast<double>(world)) << what;
      EXPECT_EQ(lastStartField(dir / "metrics.jsonl", "resumed_world"), 4.0) << what;
      fs::remove_all(dir);
    }
    fs::remove_all(cut);
  }
  fs::remove_all(full);
}

// ---- per-rank compression state ----

// A state per old rank: bucket 0 with a residual, DGC's two buffers and PowerSGD's Q (equal on
// every rank, like the real one), bucket 1 with a PowerSGD residual; the warm-up count, and an
// RNG per rank.
std::vector<CodecStates> syntheticStates(int world) {
  std::vector<CodecStates> all(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    const auto f = static_cast<float>(r + 1);
    compress::CodecState& b0 = all[static_cast<size_t>(r)][0];
    b0.buffers["residual"] = {f, 10 * f, -0.5f * f};
    b0.buffers["velocity"] = {2 * f, 0.25f};
    b0.buffers["momentum"] = {-f, 3 * f};
    b0.buffers["q.0"] = {7, 8, 9, 10};
    b0.scalars["calls"] = 5;
    b0.rngState = 100 + static_cast<uint64_t>(r);
    compress::CodecState& b1 = all[static_cast<size_t>(r)][1];
    b1.buffers["residual.2"] = {100 * f};
    b1.scalars["calls"] = 5;
    b1.rngState = 200 + static_cast<uint64_t>(r);
  }
  return all;
}

// (1/W) * the sum over ranks of buffer `name` of `bucket`, in double.
std::vector<double> meanOver(const std::vector<CodecStates>& states, size_t bucket, const std::string& name) {
  std::vector<double> m;
  for (const CodecStates& s : states) {
    const std::vector<float>& b = s.at(bucket).buffers.at(name);
    m.resize(b.size(), 0.0);
    for (size_t i = 0; i < b.size(); ++i) m[i] += b[i];
  }
  for (double& x : m) x /= static_cast<double>(states.size());
  return m;
}

std::vector<CodecStates> carryAll(const std::vector<CodecStates>& saved, int world, uint64_t seed) {
  std::vector<CodecStates> out;
  for (int r = 0; r < world; ++r) out.push_back(carryCodecStates(saved, r, world, seed, "test"));
  return out;
}

// What each rule does, on states small enough to write the answers down.
TEST(ElasticCheckpoint, CarryMergesResidualsKeepsQAndSeedsNewRanks) {
  const uint64_t seed = 42;
  const std::vector<CodecStates> four = syntheticStates(4);

  // The same world: each rank's own state, unchanged.
  for (int r = 0; r < 4; ++r) {
    const CodecStates same = carryCodecStates(four, r, 4, seed, "test");
    EXPECT_EQ(same.at(0).buffers, four[static_cast<size_t>(r)].at(0).buffers);
    EXPECT_EQ(same.at(0).rngState, four[static_cast<size_t>(r)].at(0).rngState);
  }

  // 4 -> 3: new rank 0 takes old ranks 0 and 3, new ranks 1 and 2 their own; each scaled by 3/4.
  const std::vector<CodecStates> three = carryAll(four, 3, seed);
  EXPECT_EQ(three[0].at(0).buffers.at("residual"), (std::vector<float>{0.75f * 5, 0.75f * 50, 0.75f * -2.5f}));
  EXPECT_EQ(three[1].at(0).buffers.at("residual"), (std::vector<float>{0.75f * 2, 0.75f * 20, 0.75f * -1.0f}));
  EXPECT_EQ(three[2].at(1).buffers.at("residual.2"), (std::vector<float>{0.75f * 300}));
  // 4 -> 2: pairs (0, 2) and (1, 3), halved: their average.
  const std::vector<CodecStates> two = carryAll(four, 2, seed);
  EXPECT_EQ(two[1].at(0).buffers.at("velocity"), (std::vector<float>{0.5f * (4 + 8), 0.25f}));
  // 2 -> 4: the old ranks' residuals doubled on ranks 0 and 1, zeros on the new ranks 2 and 3.
  const std::vector<CodecStates> grown = carryAll(two, 4, seed);
  EXPECT_EQ(grown[2].at(0).buffers.at("residual"), (std::vector<float>{0, 0, 0}));

  for (const auto& [states, from] : {std::pair{three, &four}, std::pair{two, &four}, std::pair{grown, &two}}) {
    const int world = static_cast<int>(states.size());
    for (const auto& [bucket, name] : std::vector<std::pair<size_t, std::string>>{
             {0, "residual"}, {0, "velocity"}, {0, "momentum"}, {1, "residual.2"}}) {
      const std::vector<double> want = meanOver(*from, bucket, name), got = meanOver(states, bucket, name);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i)
        EXPECT_NEAR(got[i], want[i], 1e-6 * (1 + std::abs(want[i]))) << name << "[" << i << "] at world " << world;
    }
    for (int r = 0; r < world; ++r) {
      const CodecStates& s = states[static_cast<size_t>(r)];
      EXPECT_EQ(s.at(0).buffers.at("q.0"), (std::vector<float>{7, 8, 9, 10})) << "rank " << r;
      EXPECT_EQ(s.at(0).scalars.at("calls"), 5.0);
      // An old rank's RNG goes on where it was; a rank the old world lacked gets a fresh seed.
      const int old = static_cast<int>(from->size());
      const uint64_t rng = r < old ? (*from)[static_cast<size_t>(r)].at(1).rngState : parallel::codecRngSeed(seed, 1, r);
      EXPECT_EQ(s.at(1).rngState, rng) << "rank " << r << " of " << world;
    }
  }
  EXPECT_NE(grown[2].at(0).rngState, grown[3].at(0).rngState);

  // Bytes and back, bit for bit.
  const CodecStates back = decodeCodecStates(encodeCodecStates(four[3]), "test");
  EXPECT_EQ(back.at(0).buffers, four[3].at(0).buffers);
  EXPECT_EQ(back.at(1).scalars, four[3].at(1).scalars);
  EXPECT_EQ(back.at(1).rngState, four[3].at(1).rngState);

  // Old ranks that disagree on a buffer's size: a corrupt checkpoint, named.
  std::vector<CodecStates> bad = four;
  bad[2][0].buffers["residual"].push_back(1);
  try {
    carryCodecStates(bad, 0, 3, seed, "checkpoint x.pt");
    ADD_FAILURE() << "buffers of different sizes were merged";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("checkpoint x.pt"), std::string::npos) << m;
    EXPECT_NE(m.find("'residual'"), std::string::npos) << m;
    EXPECT_NE(m.find("corrupt"), std::string::npos) << m;
  }
}

// A compressed run at 4 workers, checkpointed mid-epoch, resumed at 2 and at 3. The checkpoint
// holds 4 per-rank states; carried to the new world, every buffer that holds gradient still owed
// (residuals, DGC's velocity and momentum) keeps its sum over the ranks divided by the world
// size, and PowerSGD's Q is rank 0's on every rank. The resumed runs then finish.
void compressedRunResumesAtWorld2And3(const std::vector<std::string>& compression, const std::string& name) {
  torch::set_num_threads(1);
  const fs::path cut = tempDir(name);
  TrainOptions first;
  first.stopAfter = 7;
  const Config cfg4 = elasticConfig(compression, cut, 4);
  const Outcome part = run(cfg4, 4, first);
  ASSERT_EQ(part.result.globalStep, 7);
  const TrainState& saved = part.last.state;
  ASSERT_EQ(saved.scalars.at("world"), 4.0);
  std::vector<CodecStates> four;
  for (int r = 0; r < 4; ++r) {
    const torch::Tensor blob = saved.tensors.at(str("codec.rank", r)).contiguous();
    four.push_back(decodeCodecStates(std::string(static_cast<const char*>(blob.data_ptr()), blob.numel()), name));
  }
  const uint64_t seed = codecSeed(cfg4.compression);
  for (int world : {2, 3}) {
    const std::vector<CodecStates> carried = carryAll(four, world, seed);
    double owed = 0;  // how much unsent gradient there is: the check must have something to keep
    for (const auto& [bucket, ref] : four[0]) {
      for (const auto& [buf, values] : ref.buffers) {
        if (buf.starts_with("q.")) {
          for (const CodecStates& s : carried) EXPECT_EQ(s.at(bucket).buffers.at(buf), values) << name << " " << buf;
          continue;
        }
        const std::vector<double> want = meanOver(four, bucket, buf), got = meanOver(carried, bucket, buf);
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < want.size(); ++i) {
          owed += std::abs(want[i]);
          ASSERT_NEAR(got[i], want[i], 1e-6 * (1 + std::abs(want[i])))
              << name << ": bucket " << bucket << " '" << buf << "'[" << i << "] at world " << world;
        }
      }
    }
    EXPECT_GT(owed, 0) << name << ": the checkpoint holds no unsent gradient";

    const fs::path dir = copyRun(cut, str(name, "-w", world));
    TrainOptions second;
    second.resume = true;
    const Outcome resumed = run(elasticConfig(compression, dir, world), world, second);
    EXPECT_EQ(resumed.result.globalStep, 20) << name << " at " << world;
    EXPECT_EQ(resumed.result.steps, 13) << name << " at " << world;
    EXPECT_TRUE(std::isfinite(resumed.result.testLoss)) << name << " at " << world;
    // Its own checkpoint holds one state per rank of the new world.
    EXPECT_EQ(resumed.last.state.scalars.at("world"), static_cast<double>(world));
    EXPECT_TRUE(resumed.last.state.tensors.count(str("codec.rank", world - 1)));
    EXPECT_FALSE(resumed.last.state.tensors.count(str("codec.rank", world)));
    fs::remove_all(dir);
  }
  fs::remove_all(cut);
}

TEST(ElasticCheckpoint, TopKResidualsMergeAcrossWorlds) {
  compressedRunResumesAtWorld2And3({"compression.method=topk", "compression.ratio=0.05"}, "topk");
}

TEST(ElasticCheckpoint, DgcVelocityAndMomentumMergeAcrossWorlds) {
  compressedRunResumesAtWorld2And3(
      {"compression.method=dgc", "optim.momentum=0", "compression.warmup_epochs=1"}, "dgc");
}

TEST(ElasticCheckpoint, PowerSgdKeepsQAndMergesResidualsAcrossWorlds) {
  compressedRunResumesAtWorld2And3({"compression.method=powersgd", "compression.rank=2"}, "powersgd");
}

}  // namespace
}  // namespace chorus::train
