// The training loop's seam (loop.h, strategy.h, task.h) with a toy Task and Strategy on
// threads-as-ranks: which steps the loop asks for and in what order (epochs, max_steps,
// stopAfter, resume), what its records hold (windows of StepStats, evaluations named by the
// task, the summary), checkpoints, and a diverged step ending the run.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <mutex>

#include "chorus/common/error.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/config.h"
#include "chorus/train/loop.h"
#include "chorus/train/optim.h"
#include "util/rank_threads.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

fs::path tempDir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / str("chorus-loop-test-", getpid(), "-", name);
  fs::remove_all(d);
  return d;
}

// y = 3x - 1 on a fixed grid; each step's batch depends only on (epoch, step, data rank).
class LineTask : public Task {
 public:
  LineTask(int64_t steps, int rank, int ranks) : steps_(steps), rank_(rank), ranks_(ranks) {}
  int64_t stepsPerEpoch() const override { return steps_; }
  void setEpoch(int64_t epoch) override { epoch_ = epoch; }
  Batch batch(int64_t step) override {
    torch::Tensor x = torch::arange(4, torch::kFloat).reshape({4, 1}) / 4 +
                      static_cast<float>((epoch_ * steps_ + step) * ranks_ + rank_) / 100;
    return {x, 3 * x - 1};
  }
  torch::nn::Sequential makeModel() override { return torch::nn::Sequential(torch::nn::Linear(1, 1)); }
  torch::Tensor loss(const torch::Tensor& out, const torch::Tensor& target) const override {
    return torch::mse_loss(out, target);
  }
  std::vector<std::string> evalKeys() const override { return {"val_mse"}; }
  EvalMetrics evaluate(const EvalRunner& run) override {
    torch::NoGradGuard ng;
    torch::Tensor x = torch::linspace(0, 1, 8).reshape({8, 1});
    const double mse = torch::mse_loss(run.forward(x), 3 * x - 1).item<double>();
    return {{{"val_mse", mse}}, str("val mse ", mse)};
  }

 private:
  int64_t steps_, epoch_ = 0;
  int rank_, ranks_;
};

// Plain SGD, gradients averaged over the group by hand. Logs every StepInfo it is given and
// the loss it returns; diverges (reports a non-finite loss) at step `divergeAt` (1-based).
class ToyStrategy : public Strategy {
 public:
  struct Seen {
    int64_t epoch, stepInEpoch, globalStep;
    double lr, loss, firstInput;
  };

  ToyStrategy(comm::ProcessGroup& g, int64_t divergeAt = 0) : g_(g), divergeAt_(divergeAt) {}

  Roles roles() const override {
    Roles r;
    r.group = &g_;
    r.lead = g_.rank() == 0;
    r.dataRank = g_.rank();
    r.dataRanks = g_.size();
    r.rankLog = str("toy/rank", g_.rank(), ".jsonl");
    return r;
  }
  void setup(Task& task) override {
    task_ = &task;
    model_ = seededModel(7, [&] { return task.makeModel(); });
    opt_ = std::make_unique<torch::optim::SGD>(model_->parameters(), torch::optim::SGDOptions(0.1));
  }
  TrainState loadCheckpoint(const std::string& path) override { return train::loadCheckpoint(path, *model_, *opt_); }
  void saveCheckpoint(const std::string& path, const TrainState& state) override {
    ++saves;
    if (g_.rank() == 0) train::saveCheckpoint(path, *model_, *opt_, state);
  }
  StepOutcome step(const Batch& b, const StepInfo& info) override {
    setLearningRate(*opt_, info.lr);
    opt_->zero_grad();
    torch::Tensor loss = task_->loss(model_->forward(b.input), b.target);
    loss.backward();
    for (auto& p : model_->parameters()) {
      torch::Tensor grad = p.grad().contiguous();
      allreduceInPlace(g_, grad.data_ptr<float>(), static_cast<size_t>(grad.numel()), DType::kFloat32, ReduceOp::kSum);
      p.mutable_grad() = grad / g_.size();
    }
    StepOutcome out;
    out.stats.loss = loss.item<double>();
    seen.push_back({info.epoch, info.stepInEpoch, info.globalStep, info.lr, out.stats.loss, b.input[0][0].item<double>()});
    if (info.globalStep + 1 == divergeAt_) {
      out.diverged.loss = true;
      return out;
    }
    opt_->step();
    out.stats.steps = 1;
    out.stats.computeSeconds = 0.5;
    out.stats.gradBytes = 10;
    return out;
  }
  JsonObject divergedRecord(const Divergence& d, const LoopStatus& s) override {
    return JsonObject().add("event", "diverged").add("step", s.globalStep + 1).add("loss_finite", !d.loss);
  }
  void raiseDivergence(const Divergence&, const LoopStatus& s) override {
    throw DivergenceError(str("toy diverged at step ", s.globalStep + 1), s.globalStep + 1, g_.rank());
  }
  EvalMetrics evaluate(Task& task) override {
    EvalRunner run;
    run.group = &g_;
    run.forward = [&](const torch::Tensor& x) { return model_->forward(x); };
    EvalMetrics m = task.evaluate(run);
    ++evaluations;
    return m;
  }
  JsonObject startRecord(const LoopStatus& s) override {
    return JsonObject().add("event", "start").add("total_steps", s.totalSteps).add("resumed_step", s.resumedStep);
  }
  JsonObject stepRecord(const LoopStatus& s) override {
    return JsonObject()
        .add("event", "step")
        .add("step", s.globalStep)
        .add("epoch", s.epoch)
        .add("loss", s.window.meanLoss())
        .add("steps", s.window.steps)
        .add("compute_s", s.window.computeSeconds)
        .add("grad_bytes", s.window.gradBytes);
  }
  void evalFields(JsonObject& o, const LoopStatus& s) override { o.add("steps_run", s.stepsThisRun); }
  JsonObject summaryRecord(const LoopStatus& s, TrainResult&) override {
    return JsonObject().add("event", "summary").add("steps", s.stepsThisRun).add("grad_bytes", s.total.gradBytes);
  }

  std::vector<torch::Tensor> weights() const {
    std::vector<torch::Tensor> w;
    for (auto& p : model_->parameters()) w.push_back(p.detach().clone());
    return w;
  }

  std::vector<Seen> seen;
  int saves = 0, evaluations = 0;

 private:
  comm::ProcessGroup& g_;
  int64_t divergeAt_;
  Task* task_ = nullptr;
  torch::nn::Sequential model_{nullptr};
  std::unique_ptr<torch::optim::SGD> opt_;
};

Config toyConfig(const fs::path& dir, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> sets = {"train.epochs=2",        "train.log_every=2", "output.progress=none",
                                   "train.batch_size=8",    "train.threads=1",   "schedule.warmup_steps=3",
                                   "output.dir=" + dir.string()};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return defaultConfig(sets, 2);
}

// The "event" lines of a JSONL file, and one numeric field of a line.
std::vector<std::string> events(const fs::path& file, const std::string& event) {
  std::ifstream in(file);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("\"event\": \"" + event + "\"") != std::string::npos) out.push_back(line);
  }
  return out;
}
double field(const std::string& line, const std::string& key) {
  const size_t at = line.find("\"" + key + "\": ");
  if (at == std::string::npos) return -12345;
  return std::stod(line.substr(at + key.size() + 4));
}

struct RankRun {
  std::vector<ToyStrategy::Seen> seen;
  std::vector<torch::Tensor> weights;
  TrainResult result;
  int saves = 0, evaluations = 0;
};

// Runs the loop on 2 ranks with 5 steps per epoch; returns each rank's view.
std::vector<RankRun> runToy(const Config& cfg, TrainOptions opts = {}, int64_t divergeAt = 0,
                            std::vector<std::exception_ptr>* outcomes = nullptr) {
  std::vector<RankRun> runs(2);
  testutil::RankOptions ro;
  ro.timeout = Millis(20000);
  auto fn = [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    TrainOptions o = opts;
    o.out = &sink;
    ToyStrategy toy(g, divergeAt);
    RankRun& mine = runs[static_cast<size_t>(g.rank())];
    auto keep = [&] {
      mine.seen = toy.seen;
      mine.saves = toy.saves;
      mine.evaluations = toy.evaluations;
    };
    try {
      mine.result = runLoop(cfg, g, toy, o, [](const Config&, const Roles& r) {
        return std::make_unique<LineTask>(5, r.dataRank, r.dataRanks);
      });
    } catch (...) {
      keep();
      throw;
    }
    keep();
    mine.weights = toy.weights();
  };
  if (outcomes) {
    *outcomes = testutil::runRanksCollect(2, ro, fn);
  } else {
    testutil::runRanks(2, ro, fn);
  }
  return runs;
}

TEST(Loop, StepsRecordsAndEvaluationsFollowTheConfig) {
  torch::set_num_threads(1);
  fs::path dir = tempDir("records");
  Config cfg = toyConfig(dir);
  auto runs = runToy(cfg);
  LrSchedule schedule(cfg.schedule, cfg.optim.lr, 10, 5);
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE(str("rank ", r));
    const auto& seen = runs[static_cast<size_t>(r)].seen;
    ASSERT_EQ(seen.size(), 10u);
    for (int64_t i = 0; i < 10; ++i) {
      EXPECT_EQ(seen[static_cast<size_t>(i)].epoch, i / 5);
      EXPECT_EQ(seen[static_cast<size_t>(i)].stepInEpoch, i % 5);
      EXPECT_EQ(seen[static_cast<size_t>(i)].globalStep, i);
      EXPECT_EQ(seen[static_cast<size_t>(i)].lr, schedule.at(i));
      // The task's batch of (epoch, step, rank): the loop asked for the right one.
      EXPECT_FLOAT_EQ(seen[static_cast<size_t>(i)].firstInput, static_cast<double>(i * 2 + r) / 100);
    }
    EXPECT_EQ(runs[static_cast<size_t>(r)].evaluations, 2);
    EXPECT_EQ(runs[static_cast<size_t>(r)].saves, 2);  // output.checkpoint_epoch: one per epoch
    EXPECT_EQ(runs[static_cast<size_t>(r)].result.globalStep, 10);
  }
  // Windows of log_every = 2 steps, cut at each epoch's end: after steps 2, 4, 5, 7, 9, 10.
  auto steps = events(dir / "metrics.jsonl", "step");
  ASSERT_EQ(steps.size(), 6u);
  const std::vector<std::pair<int64_t, int64_t>> windows = {{0, 2}, {2, 4}, {4, 5}, {5, 7}, {7, 9}, {9, 10}};
  const auto& lead = runs[0].seen;
  for (size_t k = 0; k < windows.size(); ++k) {
    auto [from, to] = windows[k];
    double sum = 0;
    for (int64_t i = from; i < to; ++i) sum += lead[static_cast<size_t>(i)].loss;
    EXPECT_EQ(field(steps[k], "step"), static_cast<double>(to));
    EXPECT_EQ(field(steps[k], "steps"), static_cast<double>(to - from));
    EXPECT_NEAR(field(steps[k], "loss"), sum / static_cast<double>(to - from), 1e-12);
    EXPECT_DOUBLE_EQ(field(steps[k], "compute_s"), 0.5 * static_cast<double>(to - from));
  }
  // Rank 1's own log has its own windows; metrics.jsonl has the task's evaluation keys.
  EXPECT_EQ(events(dir / "toy" / "rank1.jsonl", "step").size(), 6u);
  auto evals = events(dir / "metrics.jsonl", "eval");
  ASSERT_EQ(evals.size(), 2u);
  EXPECT_GT(field(evals[0], "val_mse"), field(evals[1], "val_mse"));  // it learns the line
  EXPECT_EQ(field(evals[1], "steps_run"), 10);
  auto summary = events(dir / "metrics.jsonl", "summary");
  ASSERT_EQ(summary.size(), 1u);
  EXPECT_EQ(field(summary[0], "grad_bytes"), 100);
  EXPECT_EQ(listCheckpoints((dir / "checkpoints").string()).size(), 2u);
  fs::remove_all(dir);
}

TEST(Loop, MaxStepsEndsInsideAnEpochAndEvaluatesThere) {
  torch::set_num_threads(1);
  fs::path dir = tempDir("max");
  auto runs = runToy(toyConfig(dir, {"train.max_steps=7", "output.checkpoint_epoch=false"}));
  EXPECT_EQ(runs[0].seen.size(), 7u);
  EXPECT_EQ(runs[0].evaluations, 2);  // after epoch 1, and where the run ends in epoch 2
  EXPECT_EQ(runs[0].saves, 0);
  auto evals = events(dir / "metrics.jsonl", "eval");
  ASSERT_EQ(evals.size(), 2u);
  EXPECT_EQ(field(evals[1], "step"), 7);
  EXPECT_EQ(field(events(dir / "metrics.jsonl", "start")[0], "total_steps"), 7);
  fs::remove_all(dir);
}

// Interrupted (stopAfter) and resumed, the strategy sees the same steps with the same batches
// and learning rates, and ends with the same weights, bit for bit.
TEST(Loop, ResumeContinuesWhereTheCheckpointStopped) {
  torch::set_num_threads(1);
  fs::path full = tempDir("full"), cut = tempDir("cut");
  auto whole = runToy(toyConfig(full));
  for (int64_t stopAt : {3, 5, 8}) {
    SCOPED_TRACE(str("stop after ", stopAt));
    fs::remove_all(cut);
    TrainOptions first;
    first.stopAfter = stopAt;
    auto a = runToy(toyConfig(cut), first);
    ASSERT_EQ(a[0].seen.size(), static_cast<size_t>(stopAt));
    TrainOptions again;
    again.resume = true;
    auto b = runToy(toyConfig(cut), again);
    ASSERT_EQ(a[0].seen.size() + b[0].seen.size(), whole[0].seen.size());
    for (size_t i = 0; i < whole[0].seen.size(); ++i) {
      const auto& s = i < a[0].seen.size() ? a[0].seen[i] : b[0].seen[i - a[0].seen.size()];
      const auto& w = whole[0].seen[i];
      EXPECT_EQ(s.epoch, w.epoch) << i;
      EXPECT_EQ(s.stepInEpoch, w.stepInEpoch) << i;
      EXPECT_EQ(s.globalStep, w.globalStep) << i;
      EXPECT_EQ(s.lr, w.lr) << i;
      EXPECT_EQ(s.firstInput, w.firstInput) << i;
      EXPECT_EQ(s.loss, w.loss) << i;
    }
    ASSERT_EQ(b[0].weights.size(), whole[0].weights.size());
    for (size_t i = 0; i < whole[0].weights.size(); ++i) EXPECT_TRUE(torch::equal(b[0].weights[i], whole[0].weights[i]));
    EXPECT_EQ(b[0].result.steps, 10 - stopAt);
    EXPECT_EQ(b[0].result.globalStep, 10);
    EXPECT_EQ(field(events(cut / "metrics.jsonl", "start").back(), "resumed_step"), stopAt);
  }
  fs::remove_all(full);
  fs::remove_all(cut);
}

// A diverged step: nothing more is trained, the record is written to metrics.jsonl and the
// rank's log, the strategy's error ends the run on every rank, and no summary follows.
TEST(Loop, ADivergedStepEndsTheRun) {
  torch::set_num_threads(1);
  fs::path dir = tempDir("diverge");
  std::vector<std::exception_ptr> outcomes;
  auto runs = runToy(toyConfig(dir), {}, /*divergeAt=*/4, &outcomes);
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(testutil::messageOf(outcomes[static_cast<size_t>(r)]).find("toy diverged at step 4"), std::string::npos)
        << testutil::messageOf(outcomes[static_cast<size_t>(r)]);
    EXPECT_EQ(runs[static_cast<size_t>(r)].seen.size(), 4u);
  }
  auto diverged = events(dir / "metrics.jsonl", "diverged");
  ASSERT_EQ(diverged.size(), 1u);
  EXPECT_EQ(field(diverged[0], "step"), 4);
  EXPECT_EQ(events(dir / "toy" / "rank1.jsonl", "diverged").size(), 1u);
  EXPECT_TRUE(events(dir / "metrics.jsonl", "summary").empty());
  fs::remove_all(dir);
}

TEST(Loop, StepStatsAddUp) {
  StepStats a, b;
  a.steps = 2;
  a.loss = 3;
  a.pushSeconds = 0.25;
  a.gradBytes = 7;
  b.steps = 1;
  b.loss = 3;
  b.pushSeconds = 0.5;
  b.gradBytes = 5;
  b.skippedSteps = 1;
  a += b;
  EXPECT_EQ(a.steps, 3);
  EXPECT_DOUBLE_EQ(a.meanLoss(), 2.0);
  EXPECT_DOUBLE_EQ(a.pushSeconds, 0.75);
  EXPECT_EQ(a.gradBytes, 12u);
  EXPECT_EQ(a.skippedSteps, 1);
  EXPECT_EQ(StepStats{}.meanLoss(), 0.0);
}

}  // namespace
}  // namespace chorus::train
