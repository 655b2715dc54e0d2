// `chorus train` with parameter servers, on threads-as-ranks: bsp follows the same trajectory
// as all-reduce DDP on the same data and update rule; asp and ssp train, stay within their
// staleness bound, and write per-worker and per-server reports.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "chorus/train/config.h"
#include "chorus/train/trainer.h"
#include "util/rank_threads.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

fs::path tempDir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / str("chorus-ps-trainer-test-", getpid(), "-", name);
  fs::remove_all(d);
  return d;
}

// 640 samples, global batch 64 over 2 workers: 10 steps per epoch, 2 epochs, a small MLP.
Config smallConfig(const std::vector<std::string>& extra, const fs::path& dir, int workers = 2) {
  std::vector<std::string> sets = {"data.limit_train=640", "data.limit_test=500", "train.batch_size=64",
                                   "train.epochs=2",       "output.progress=none", "train.log_every=1",
                                   "model.hidden=[32]",    "output.dir=" + dir.string()};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return defaultConfig(sets, workers);
}

// The values of `key` in every line of a JSONL file with "event": "<event>".
std::vector<double> column(const fs::path& file, const std::string& event, const std::string& key) {
  std::ifstream in(file);
  std::vector<double> out;
  std::string line;
  while (std::getline(in, line)) {
    std::erase(line, ' ');
    if (line.find("\"event\":\"" + event + "\"") == std::string::npos) continue;
    size_t at = line.find("\"" + key + "\":");
    if (at != std::string::npos) out.push_back(std::stod(line.substr(at + key.size() + 3)));
  }
  return out;
}

// One flat JSON object's numeric fields.
std::map<std::string, double> fields(const fs::path& file) {
  std::ifstream in(file);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::map<std::string, double> out;
  size_t pos = 0;
  while ((pos = text.find('"', pos)) != std::string::npos) {
    size_t end = text.find('"', pos + 1);
    std::string key = text.substr(pos + 1, end - pos - 1);
    size_t colon = text.find(':', end);
    std::string rest = text.substr(colon + 1);
    size_t first = rest.find_first_not_of(' ');
    if (first != std::string::npos && (isdigit(rest[first]) || rest[first] == '-')) out[key] = std::stod(rest.substr(first));
    pos = text.find_first_of(",}", colon);
  }
  return out;
}

void runJob(const Config& cfg, int processes) {
  testutil::RankOptions ro;
  ro.timeout = Millis(30000);
  testutil::runRanks(processes, ro, [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    TrainOptions o;
    o.out = &sink;
    train(cfg, borrow(g), o);
  });
}

// bsp averages the workers' gradients and applies the optimizer once per round, as DDP does:
// the same losses step by step (worker 0's shard) and the same test loss, up to float
// rounding (the server sums in another order and computes its update in double).
TEST(PsTrainer, BspFollowsDdp) {
  torch::set_num_threads(1);
  for (const std::string opt : {"optim.name=sgd", "optim.name=adam"}) {
    SCOPED_TRACE(opt);
    fs::path ddpDir = tempDir("ddp"), psDir = tempDir("bsp");
    std::vector<std::string> common = {opt, "optim.lr=0.01", "output.checkpoint_epoch=false"};
    runJob(smallConfig(common, ddpDir), 2);
    auto psSets = common;
    psSets.insert(psSets.end(), {"ps.servers=2", "ps.mode=bsp"});
    runJob(smallConfig(psSets, psDir), 4);
    auto ddpLoss = column(ddpDir / "metrics.jsonl", "step", "loss");
    auto psLoss = column(psDir / "metrics.jsonl", "step", "loss");
    ASSERT_EQ(ddpLoss.size(), 20u);
    ASSERT_EQ(psLoss.size(), ddpLoss.size());
    for (size_t i = 0; i < ddpLoss.size(); ++i) EXPECT_NEAR(psLoss[i], ddpLoss[i], 1e-4 * std::abs(ddpLoss[i])) << "step " << i + 1;
    auto ddpTest = column(ddpDir / "metrics.jsonl", "eval", "test_loss");
    auto psTest = column(psDir / "metrics.jsonl", "eval", "test_loss");
    ASSERT_EQ(ddpTest.size(), 2u);
    ASSERT_EQ(psTest.size(), 2u);
    EXPECT_NEAR(psTest[1], ddpTest[1], 1e-4 * ddpTest[1]);
    // The losses moved: the comparison is not between two untrained models.
    EXPECT_LT(ddpTest[1], ddpTest[0] + 0.5);
    EXPECT_LT(ddpLoss.back(), ddpLoss.front());
    fs::remove_all(ddpDir);
    fs::remove_all(psDir);
  }
}

// asp and ssp with a straggler: the job finishes, the servers count every worker's pushes,
// ssp keeps the clock gap within its bound, asp lets the fast workers run ahead (staleness),
// and each worker's file has its summary.
TEST(PsTrainer, AspAndSspWithAStragglerReportStaleness) {
  torch::set_num_threads(1);
  for (const std::string mode : {"asp", "ssp"}) {
    SCOPED_TRACE(mode);
    fs::path dir = tempDir(mode);
    // 640 samples over 3 workers: shards of 214, local batch 20, 11 steps per epoch, 22 in all.
    Config cfg = smallConfig({"train.batch_size=60", "ps.servers=1", "ps.mode=" + mode, "ps.staleness=1",
                              "train.straggler_workers=[1]", "train.straggler_delay_ms=20", "optim.lr=0.01"},
                             dir, 3);
    runJob(cfg, 4);
    auto server = fields(dir / "ps" / "server0.json");
    EXPECT_EQ(server["version"], 66.0);  // asp and ssp apply every push: 3 x 22
    for (int w = 0; w < 3; ++w) {
      SCOPED_TRACE(str("worker ", w));
      EXPECT_EQ(server[str("w", w, "_pushes")], 22.0);
      EXPECT_EQ(server[str("w", w, "_applied")], 22.0);
      if (mode == "ssp") {
        EXPECT_LE(server[str("w", w, "_max_clock_gap")], 1.0);
      }
      auto steps = column(dir / "ps" / str("worker", w, ".jsonl"), "summary", "steps");
      ASSERT_EQ(steps.size(), 1u);
      EXPECT_EQ(steps[0], 22.0);
    }
    // The straggler slept; the others did not.
    EXPECT_GT(column(dir / "ps" / "worker1.jsonl", "summary", "straggler_sleep_s").at(0), 0.2);
    EXPECT_EQ(column(dir / "ps" / "worker0.jsonl", "summary", "straggler_sleep_s").at(0), 0.0);
    // Without a bound the fast workers read parameters that others' pushes then overtake.
    if (mode == "asp") {
      EXPECT_GT(server["w0_max_staleness"] + server["w2_max_staleness"], 0.0);
    }
    auto acc = column(dir / "metrics.jsonl", "eval", "test_acc");
    ASSERT_EQ(acc.size(), 2u);
    EXPECT_GT(acc[1], 0.3) << "training on 640 samples beats chance (0.1)";
    fs::remove_all(dir);
  }
}

// Compressed pushes: top-k workers train the MLP, each server decoded every push after the
// dense warm-up, and the workers pushed far fewer bytes than dense ones (their reports).
TEST(PsTrainer, CompressedPushesTrain) {
  torch::set_num_threads(1);
  fs::path dir = tempDir("topk"), denseDir = tempDir("dense");
  const std::vector<std::string> common = {"ps.servers=2", "ps.mode=bsp", "optim.lr=0.05"};
  auto sets = common;
  sets.insert(sets.end(), {"compression.method=topk", "compression.ratio=0.05", "compression.dense_steps=2"});
  runJob(smallConfig(sets, dir), 4);
  runJob(smallConfig(common, denseDir), 4);
  for (int s = 0; s < 2; ++s) {
    auto server = fields(dir / "ps" / str("server", s, ".json"));
    EXPECT_EQ(server["version"], 20.0);
    EXPECT_EQ(server["codec_pushes"], 2.0 * 18) << "server " << s << ": 2 workers x (20 - 2 dense) steps";
    EXPECT_EQ(fields(denseDir / "ps" / str("server", s, ".json"))["codec_pushes"], 0.0);
  }
  const double sparse = column(dir / "ps" / "worker0.jsonl", "summary", "bytes_pushed").at(0);
  const double dense = column(denseDir / "ps" / "worker0.jsonl", "summary", "bytes_pushed").at(0);
  EXPECT_LT(sparse, 0.3 * dense) << "top-k 5% after 2 dense steps of 20";
  auto acc = column(dir / "metrics.jsonl", "eval", "test_acc");
  ASSERT_EQ(acc.size(), 2u);
  EXPECT_GT(acc[1], 0.3) << "training on 640 samples beats chance (0.1)";
  fs::remove_all(dir);
  fs::remove_all(denseDir);
}

// Config rules of the parameter server.
TEST(PsTrainer, ConfigRules) {
  EXPECT_THROW(defaultConfig({"ps.servers=1", "ps.mode=asp", "ps.backup=1"}, 2), ConfigError);
  EXPECT_THROW(defaultConfig({"ps.servers=1", "ps.backup=2"}, 2), ConfigError);
  EXPECT_NO_THROW(defaultConfig({"ps.servers=1", "ps.backup=1"}, 2));
  // Workers compress their pushes with any codec; PowerSGD needs an all-reduce among them, and
  // inter-host compression is an all-reduce's too.
  EXPECT_NO_THROW(defaultConfig({"ps.servers=1", "compression.method=topk"}, 2));
  EXPECT_NO_THROW(defaultConfig({"ps.servers=1", "compression.method=dgc", "optim.momentum=0"}, 2));
  EXPECT_THROW(defaultConfig({"ps.servers=1", "compression.method=powersgd"}, 2), ConfigError);
  EXPECT_THROW(defaultConfig({"ps.servers=1", "compression.method=topk", "compression.scope=inter-host"}, 2),
               ConfigError);
  EXPECT_THROW(defaultConfig({"train.straggler_workers=[2]"}, 2), ConfigError);
  // A restarted server reconnects over tcp only.
  EXPECT_THROW(defaultConfig({"ps.servers=1", "ps.restarts=1", "ddp.transport=shm"}, 2), ConfigError);
  EXPECT_NO_THROW(defaultConfig({"ps.servers=1", "ps.restarts=1", "ddp.transport=tcp"}, 2));
  EXPECT_NO_THROW(defaultConfig({"ps.servers=1", "ps.restarts=1"}, 2));
  // Worker count not known yet (0): the checks that need it wait.
  EXPECT_NO_THROW(defaultConfig({"train.batch_size=100"}, 0));
}

// A worker whose loss or gradient is not finite stops with DivergenceError before it pushes
// (so the servers never apply it), naming the step and itself. lr = 1e6 on the servers blows
// the shared model up within a few rounds, and under bsp every worker then sees it.
TEST(PsTrainer, AWorkerStopsOnDivergence) {
  torch::set_num_threads(1);
  fs::path dir = tempDir("diverge");
  Config cfg = smallConfig({"ps.servers=1", "ps.mode=bsp", "optim.lr=1e6"}, dir);
  testutil::RankOptions ro;
  ro.timeout = Millis(30000);
  std::vector<int64_t> steps(2, -1);
  auto outcomes = testutil::runRanksCollect(3, ro, [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    TrainOptions o;
    o.out = &sink;
    try {
      train(cfg, borrow(g), o);
    } catch (const DivergenceError& e) {
      EXPECT_EQ(e.rank(), g.rank());
      steps[static_cast<size_t>(g.rank())] = e.step();
      throw;
    }
  });
  int stopped = 0;
  for (int w = 0; w < 2; ++w) {
    const std::string m = testutil::messageOf(outcomes[static_cast<size_t>(w)]);
    if (steps[static_cast<size_t>(w)] < 0) continue;  // stopped by the other worker's failure instead
    ++stopped;
    EXPECT_GT(steps[static_cast<size_t>(w)], 1) << m;
    const int64_t step = steps[static_cast<size_t>(w)];
    EXPECT_NE(m.find(str("training diverged at step ", step, " (epoch ")), std::string::npos) << m;
    EXPECT_NE(m.find(str("on worker ", w, ": ")), std::string::npos) << m;
    EXPECT_NE(m.find("it was not pushed"), std::string::npos) << m;
    EXPECT_NE(m.find("no server checkpoint was written"), std::string::npos) << m;
    EXPECT_NE(m.find("a lower optim.lr"), std::string::npos) << m;
  }
  EXPECT_GE(stopped, 1);
  EXPECT_EQ(column(dir / "metrics.jsonl", "summary", "steps").size(), 0u);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace chorus::train
