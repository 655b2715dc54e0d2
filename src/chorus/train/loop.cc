// The training loop (see loop.h and strategy.h).
#include "chorus/train/loop.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>

#include "chorus/common/error.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/elastic.h"
#include "chorus/train/image_task.h"
#include "chorus/train/metrics.h"
#include "chorus/train/optim.h"
#include "chorus/train/progress.h"
#include "chorus/train/text_task.h"
#include "chorus/train/trace.h"

namespace chorus::train {
namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A checkpoint folder holds one line of runs: a run and the runs that resumed it (docs/train.md,
// "Checkpoint folders"). The lead calls this before anything is loaded or written. It removes the
// temporaries of writers that died mid-save; then, when the folder holds no checkpoint or the run
// continues its newest, it returns "" and sets `inherited` to the folder's checkpoints (the line
// this run continues). Otherwise the checkpoints are another run's: with `overwrite` it deletes
// them (all but the one resumed from, which is inherited) and returns ""; without, it returns the
// message that refuses to start.
std::string claimCheckpointFolder(const fs::path& dir, const std::string& resumePath, bool overwrite,
                                  std::ostream& out, std::vector<std::string>* inherited) {
  for (const auto& tmp : removeStaleTemporaries(dir.string()))
    out << "removed " << tmp << ", an unfinished checkpoint of a writer that is gone\n";
  const std::vector<std::string> existing = listCheckpoints(dir.string());
  auto same = [](const std::string& a, const std::string& b) {
    std::error_code ec;
    return fs::equivalent(a, b, ec);
  };
  if (existing.empty() || (!resumePath.empty() && same(resumePath, existing.back()))) {
    *inherited = existing;
    return "";
  }
  if (overwrite) {
    size_t removed = 0;
    for (const auto& f : existing) {
      if (!resumePath.empty() && same(resumePath, f)) {
        inherited->push_back(f);
        continue;
      }
      std::error_code ec;
      fs::remove(f, ec);
      if (ec) throw Error(str("output.overwrite: cannot remove ", f, ": ", ec.message()));
      ++removed;
    }
    out << "removed " << removed << " checkpoint(s) of an earlier run from " << dir.string()
        << " (output.overwrite = true)\n";
    return "";
  }
  const std::string what = resumePath.empty()
                               ? std::string("this run starts fresh")
                               : str("this run continues ", resumePath, ", which is not the newest of them");
  return str(dir.string(), " holds ", existing.size(), " checkpoint(s) of another run (the newest: ",
             fs::path(existing.back()).filename().string(), "), and ", what,
             "; its own checkpoints would be mixed with them. Choose one: --resume to continue from the newest; "
             "another output.dir (--set output.dir=...); or --set output.overwrite=true to delete them",
             resumePath.empty() ? "" : " (the file resumed from is kept)");
}

// Everything one rank's loop holds between steps. The constructor is the shared setup; step(),
// endEpoch() and finish() are the loop's three moments.
class Run {
 public:
  Run(const Config& cfg, comm::ProcessGroup& world, Strategy& strategy, const TrainOptions& opts,
      const TaskFactory& makeTaskFor)
      : cfg_(cfg), world_(world), strategy_(strategy), opts_(opts), out_(opts.out ? *opts.out : std::cout),
        roles_(strategy.roles()) {
    setWorkerThreads(cfg.train, opts.localWorldSize);
    task_ = makeTaskFor ? makeTaskFor(cfg, roles_) : makeTask(cfg, roles_);
    strategy_.setup(*task_);
    s_.stepsPerEpoch = task_->stepsPerEpoch();
    s_.totalSteps = s_.stepsPerEpoch * cfg.train.epochs;
    if (cfg.train.maxSteps > 0) s_.totalSteps = std::min(s_.totalSteps, cfg.train.maxSteps);
    schedule_ = std::make_unique<LrSchedule>(cfg.schedule, cfg.optim.lr, s_.totalSteps, s_.stepsPerEpoch);
    const fs::path dir = cfg.output.dir;
    result_.metricsPath = (dir / "metrics.jsonl").string();
    if (roles_.checkpoints) {
      resume(dir / "checkpoints");
    } else if (const int64_t at = strategy_.joinedAtStep(); at >= 0) {
      start_ = TrainState{at / s_.stepsPerEpoch, at % s_.stepsPerEpoch, at, {}, {}};
      s_.resumedFrom = str("the running job (this process restarted in place of a failed one)");
      s_.resumedStep = at;
      joined_ = true;
    }
    if (opts_.snapshot && !fromSnapshot_) {
      // Elastic: the state this run starts from, so a failure in its first step has a step to
      // go back to (not a fresh start, nor a checkpoint file).
      opts_.snapshot->payload = strategy_.snapshot(TrainState{start_.epoch, start_.stepInEpoch, start_.globalStep, {}, {}});
      opts_.snapshot->globalStep = start_.globalStep;
      opts_.snapshot->previous.clear();
      opts_.snapshot->previousStep = -1;
      opts_.snapshot->source = str("the state this run started from (step ", start_.globalStep, ", in memory)");
    }
    if (opts_.snapshot && opts_.snapshot->replicate) opts_.snapshot->replicate(*opts_.snapshot);
    if (roles_.lead) {
      fs::create_directories(dir);
      std::ofstream(dir / "config.toml") << toToml(cfg);
      metrics_ = std::make_unique<MetricsLog>(result_.metricsPath, /*append=*/!s_.resumedFrom.empty());
      metrics_->write(strategy_.startRecord(s_));
      if (!s_.resumedFrom.empty()) out_ << "resuming from " << s_.resumedFrom << " at step " << s_.resumedStep << "\n";
    }
    if (!roles_.rankLog.empty())
      rankLog_ = std::make_unique<MetricsLog>((dir / roles_.rankLog).string(), /*append=*/!s_.resumedFrom.empty());
    bar_ = std::make_unique<ProgressBar>(
        out_, roles_.lead ? progressModeFor(cfg.output.progress, STDOUT_FILENO) : ProgressMode::kNone, cfg.train.epochs,
        s_.stepsPerEpoch, cfg.train.logEvery);
    if (roles_.group) roles_.group->barrier();
    origin_ = Clock::now();
    s_.startUnixSeconds = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    tracer_ = std::make_unique<Tracer>(world.rank(), origin_);
    tracer_->setEnabled(!opts.tracePath.empty());
    bytesAtStart_ = bytesAtWindow_ = world.bytesSent();
    s_.globalStep = start_.globalStep;
  }

  Task& task() { return *task_; }
  const TrainState& start() const { return start_; }
  bool finished() const {
    return s_.globalStep >= s_.totalSteps || (opts_.stopAfter > 0 && s_.stepsThisRun >= opts_.stopAfter);
  }

  // One step: the task's batch, the strategy's step, its statistics, records, progress, and a
  // checkpoint every output.checkpoint_every steps.
  void step(int64_t epoch, int64_t stepInEpoch) {
    const Clock::time_point t0 = Clock::now();
    injectFault(s_.globalStep);  // CHORUS_FAULT (elastic.h): tests and the chaos benchmark
    const Batch batch = task_->batch(stepInEpoch);
    s_.epoch = epoch;
    s_.stepInEpoch = stepInEpoch;
    s_.lr = schedule_->at(s_.globalStep);
    StepOutcome o = strategy_.step(batch, {epoch, stepInEpoch, s_.stepsPerEpoch, s_.globalStep, s_.lr, t0,
                                           tracer_.get(), pausesAfter(stepInEpoch)});
    s_.loss = o.stats.loss;
    if (o.diverged.any()) diverged(o.diverged);
    o.stats.stepSeconds = since(t0);
    ++s_.globalStep;
    ++s_.stepsThisRun;
    s_.window += o.stats;
    s_.total += o.stats;
    if (opts_.snapshot) {  // elastic: what a re-formed job resumes from, should a later step fail
      const bool epochDone = stepInEpoch + 1 == s_.stepsPerEpoch;
      if (opts_.snapshot->keepPrevious) {
        opts_.snapshot->previous = std::move(opts_.snapshot->payload);
        opts_.snapshot->previousStep = opts_.snapshot->globalStep;
      }
      opts_.snapshot->payload = strategy_.snapshot(epochDone ? TrainState{epoch + 1, 0, s_.globalStep, {}, {}}
                                                             : TrainState{epoch, stepInEpoch + 1, s_.globalStep, {}, {}});
      opts_.snapshot->globalStep = s_.globalStep;
      if (opts_.snapshot->replicate) opts_.snapshot->replicate(*opts_.snapshot);
    }

    const bool lastOfEpoch = stepInEpoch + 1 == s_.stepsPerEpoch || s_.globalStep >= s_.totalSteps;
    if (s_.window.steps >= cfg_.train.logEvery || lastOfEpoch) {
      recentRate_ = s_.window.stepSeconds > 0
                        ? static_cast<double>(s_.window.steps * cfg_.train.batchSize) / s_.window.stepSeconds
                        : 0;
      refresh();
      s_.windowBytes = world_.bytesSent() - bytesAtWindow_;
      bytesAtWindow_ += s_.windowBytes;
      JsonObject record = strategy_.stepRecord(s_);
      task_->stepFields(record, s_.window.meanLoss());
      // Wall-clock time the window ended: puts the records of ranks, runs and re-formed
      // elastic generations on one axis (bench/chaos measures recoveries with it).
      record.add("unix_s", std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
      perRankRecord(record);
      s_.window = StepStats{};
    }
    if (roles_.lead) {
      const double eta = recentRate_ > 0
                             ? static_cast<double>((s_.totalSteps - s_.globalStep) * cfg_.train.batchSize) / recentRate_
                             : 0;
      bar_->update(epoch, stepInEpoch + 1, s_.loss, recentRate_, eta);
    }
    // train.eval_every: evaluations inside the epoch; the epoch's last step is endEpoch's.
    const int64_t evalEvery = cfg_.train.evalEvery;
    if (cfg_.train.eval && evalEvery > 0 && s_.globalStep % evalEvery == 0 && !lastOfEpoch) {
      evaluate(epoch, str("step ", s_.globalStep, ": "));
    }
    const int64_t every = cfg_.output.checkpointEvery;
    if (roles_.checkpoints && every > 0 && s_.globalStep % every == 0 && !lastOfEpoch) {
      save({epoch, stepInEpoch + 1, s_.globalStep, {}, {}});
    }
  }

  // Whether the step about to be taken is followed by an evaluation, a checkpoint, the end of
  // an epoch or the end of the run (StepInfo::pauseAfter): the conditions of step() and
  // endEpoch(), one step ahead.
  bool pausesAfter(int64_t stepInEpoch) const {
    const int64_t done = s_.globalStep + 1;
    if (stepInEpoch + 1 == s_.stepsPerEpoch || done >= s_.totalSteps) return true;
    if (opts_.stopAfter > 0 && s_.stepsThisRun + 1 >= opts_.stopAfter) return true;
    if (cfg_.train.eval && cfg_.train.evalEvery > 0 && done % cfg_.train.evalEvery == 0) return true;
    return roles_.checkpoints && cfg_.output.checkpointEvery > 0 && done % cfg_.output.checkpointEvery == 0;
  }

  // The end of an epoch, or of the run inside one: evaluation and the epoch's checkpoint.
  // Returns whether the run has reached its end.
  bool endEpoch(int64_t epoch, int64_t doneInEpoch) {
    const bool epochComplete = doneInEpoch == s_.stepsPerEpoch;
    const bool reachedEnd = finished();
    if (cfg_.train.eval && (epochComplete || reachedEnd)) {
      if (reachedEnd) strategy_.prepareFinalEvaluation();
      evaluate(epoch, str("epoch ", epoch + 1, "/", cfg_.train.epochs, ": "));
    } else if (roles_.lead) {
      bar_->endEpoch(str("epoch ", epoch + 1, "/", cfg_.train.epochs, " done"));
    }
    const bool every = cfg_.output.checkpointEvery > 0;
    if (roles_.checkpoints && ((cfg_.output.checkpointEpoch && epochComplete) ||
                               (every && s_.globalStep % cfg_.output.checkpointEvery == 0) ||
                               (reachedEnd && (cfg_.output.checkpointEpoch || every)))) {
      save(epochComplete ? TrainState{epoch + 1, 0, s_.globalStep, {}, {}}
                         : TrainState{epoch, doneInEpoch, s_.globalStep, {}, {}});
    }
    return reachedEnd;
  }

  // A process restarted in place of one that had done every step (it died waiting for the
  // final model) owes the run its final evaluation.
  void evaluateIfJoinedAtEnd() {
    if (!joined_ || !finished() || !cfg_.train.eval) return;
    strategy_.prepareFinalEvaluation();
    evaluate(cfg_.train.epochs - 1, "final: ");
  }

  // An evaluation (every rank), its "eval" record and its progress line `prefix` + the
  // metrics' text (lead).
  void evaluate(int64_t epoch, const std::string& prefix) {
    s_.lastEval = strategy_.evaluate(*task_);
    if (!roles_.lead) return;
    refresh();
    JsonObject o;
    o.add("event", "eval").add("epoch", epoch).add("step", s_.globalStep);
    for (const auto& [key, value] : s_.lastEval.values) o.add(key, value);
    o.add("train_s", s_.total.stepSeconds);
    strategy_.evalFields(o, s_);
    metrics_->write(o);
    bar_->endEpoch(prefix + s_.lastEval.text);
  }

  // The summary: throughput and memory over the loop's ranks, the trace, the result.
  TrainResult finish() {
    strategy_.finish();
    const double rss = peakRssMb();
    double agg[3] = {rss, rss, s_.total.stepSeconds};  // max rss, summed rss, slowest rank's training time
    int ranks = 1;
    if (roles_.group) {
      allreduceInPlace(*roles_.group, agg, 1, DType::kFloat64, ReduceOp::kMax);
      allreduceInPlace(*roles_.group, agg + 1, 1, DType::kFloat64, ReduceOp::kSum);
      allreduceInPlace(*roles_.group, agg + 2, 1, DType::kFloat64, ReduceOp::kMax);
      ranks = roles_.group->size();
    }
    s_.peakRssMaxMb = agg[0];
    s_.peakRssMeanMb = agg[1] / ranks;
    s_.slowestTrainSeconds = agg[2];
    if (!opts_.tracePath.empty()) writeTrace();
    result_.steps = s_.stepsThisRun;
    result_.globalStep = s_.globalStep;
    result_.trainSeconds = s_.slowestTrainSeconds;
    result_.testAccuracy = s_.lastEval.value("test_acc");
    result_.testLoss = s_.lastEval.value("test_loss");
    result_.eval = s_.lastEval.values;
    result_.skippedSteps = s_.total.skippedSteps;
    refresh();
    perRankRecord(strategy_.summaryRecord(s_, result_));
    return result_;
  }

 private:
  // Resolves the checkpoint to resume from, claims the folder (the lead decides, every rank
  // follows), and restores the strategy's state from the checkpoint.
  void resume(const fs::path& ckptDir) {
    result_.checkpointDir = s_.checkpointDir = ckptDir.string();
    if (opts_.snapshot && opts_.snapshot->globalStep >= 0) {
      // A re-formed elastic job: the checkpoints in the folder are this job's own.
      history_ = CheckpointHistory(listCheckpoints(ckptDir.string()));
      start_ = strategy_.restoreSnapshot(opts_.snapshot->payload);
      s_.resumedFrom = opts_.snapshot->source;
      fromSnapshot_ = true;
      s_.resumedStep = start_.globalStep;
      return;
    }
    std::string resumePath = opts_.resumeFrom;
    if (opts_.resume && resumePath.empty()) {
      resumePath = latestCheckpoint(ckptDir.string());
      if (resumePath.empty()) {
        throw InvalidArgument(str("--resume: no checkpoint in ", ckptDir.string(),
                                  "; run without --resume to start fresh, or name a file with --resume-from"));
      }
    }
    std::vector<std::string> inherited;
    std::string refusal;
    if (roles_.lead) refusal = claimCheckpointFolder(ckptDir, resumePath, cfg_.output.overwrite, out_, &inherited);
    int64_t refused = refusal.empty() ? 0 : 1;
    if (roles_.group) allreduceInPlace(*roles_.group, &refused, 1, DType::kInt64, ReduceOp::kMax);
    if (refused != 0) {
      throw ConfigError(roles_.lead ? refusal
                                    : str(ckptDir.string(), " holds checkpoints of another run; rank 0's message says what to do"));
    }
    history_ = CheckpointHistory(std::move(inherited));
    if (resumePath.empty()) return;
    start_ = strategy_.loadCheckpoint(resumePath);
    s_.resumedFrom = s_.lastCheckpoint = resumePath;
    s_.resumedStep = start_.globalStep;
  }

  void save(const TrainState& state) {
    const std::string path = (fs::path(s_.checkpointDir) / checkpointName(state.globalStep)).string();
    strategy_.saveCheckpoint(path, state);
    if (roles_.lead) history_.add(path, cfg_.output.keep);  // only this run's line, oldest first; never `path`
    s_.lastCheckpoint = result_.lastCheckpoint = path;
  }

  // A diverged step: the record, then the strategy's error. The last good checkpoint is the
  // newest this run wrote, else the one it resumed from.
  [[noreturn]] void diverged(const Divergence& d) {
    if (roles_.lead) bar_->endEpoch("");
    refresh();
    perRankRecord(strategy_.divergedRecord(d, s_));
    strategy_.raiseDivergence(d, s_);
    throw Error("Strategy::raiseDivergence returned; it must throw");  // [[noreturn]] binds no override
  }

  // step, diverged and summary records go to metrics.jsonl (the lead's) and the rank's own log.
  void perRankRecord(const JsonObject& o) {
    if (metrics_) metrics_->write(o);
    if (rankLog_) rankLog_->write(o);
  }

  void refresh() {
    s_.elapsedSeconds = since(origin_);
    s_.bytesSent = world_.bytesSent();
    s_.bytesSinceStart = s_.bytesSent - bytesAtStart_;
  }

  // Gathers every rank's trace events to the lead, which writes the file (without a group:
  // the lead's own events).
  void writeTrace() {
    std::vector<std::string> all =
        roles_.group ? allgatherBytes(*roles_.group, tracer_->eventsJson()) : std::vector<std::string>{tracer_->eventsJson()};
    if (!roles_.lead) return;
    std::vector<std::string> bodies;
    for (auto& b : all) {
      if (!b.empty()) bodies.push_back(std::move(b));
    }
    writeChromeTrace(opts_.tracePath, bodies);
  }

  const Config& cfg_;
  comm::ProcessGroup& world_;
  Strategy& strategy_;
  const TrainOptions& opts_;
  std::ostream& out_;
  const Roles roles_;
  std::unique_ptr<Task> task_;
  std::unique_ptr<LrSchedule> schedule_;
  TrainState start_;          // where this run starts (a resumed checkpoint's position)
  bool fromSnapshot_ = false;  // ... restored from TrainOptions::snapshot (elastic, re-formed)
  bool joined_ = false;       // restarted in place of a failed process (Strategy::joinedAtStep)
  LoopStatus s_;
  TrainResult result_;
  CheckpointHistory history_;
  std::unique_ptr<MetricsLog> metrics_, rankLog_;
  std::unique_ptr<ProgressBar> bar_;
  std::unique_ptr<Tracer> tracer_;
  Clock::time_point origin_;
  uint64_t bytesAtStart_ = 0, bytesAtWindow_ = 0;
  double recentRate_ = 0;  // global samples per second over the last logged window
};

}  // namespace

double EvalMetrics::value(const std::string& key, double otherwise) const {
  for (const auto& [k, v] : values) {
    if (k == key) return v;
  }
  return otherwise;
}

StepStats& StepStats::operator+=(const StepStats& o) {
  steps += o.steps;
  loss += o.loss;
  stepSeconds += o.stepSeconds;
  computeSeconds += o.computeSeconds;
  commSeconds += o.commSeconds;
  overlapSeconds += o.overlapSeconds;
  pushSeconds += o.pushSeconds;
  pullSeconds += o.pullSeconds;
  sleptSeconds += o.sleptSeconds;
  gradBytes += o.gradBytes;
  modelParallelBytes += o.modelParallelBytes;
  denseBytes += o.denseBytes;
  skippedSteps += o.skippedSteps;
  return *this;
}

std::unique_ptr<Task> makeTask(const Config& cfg, const Roles& roles) {
  if (cfg.data.dataset == "fortunes")
    return std::make_unique<TextTask>(cfg, roles.dataRank, roles.dataRanks, cfg.train.eval && roles.evaluates);
  return std::make_unique<ImageTask>(cfg, roles.dataRank, roles.dataRanks, cfg.train.eval && roles.evaluates);
}

TrainResult runLoop(const Config& cfg, comm::ProcessGroup& world, Strategy& strategy, const TrainOptions& opts,
                    const TaskFactory& makeTaskFor) {
  Run run(cfg, world, strategy, opts, makeTaskFor);
  const TrainState& start = run.start();
  bool done = run.finished();
  run.evaluateIfJoinedAtEnd();
  for (int64_t epoch = start.epoch; epoch < cfg.train.epochs && !done; ++epoch) {
    run.task().setEpoch(epoch);
    strategy.beginEpoch(epoch);
    int64_t step = epoch == start.epoch ? start.stepInEpoch : 0;
    for (; step < run.task().stepsPerEpoch() && !run.finished(); ++step) run.step(epoch, step);
    done = run.endEpoch(epoch, step);
  }
  return run.finish();
}

torch::nn::Sequential seededModel(uint64_t seed, const std::function<torch::nn::Sequential()>& make) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  torch::manual_seed(seed);
  return make();
}

std::vector<std::string> allgatherBytes(comm::ProcessGroup& g, const std::string& mine) {
  std::vector<uint64_t> sizes(g.size());
  uint64_t len = mine.size();
  comm::AllgatherOptions so;
  so.input = &len;
  so.output = sizes.data();
  so.count = 1;
  so.dtype = DType::kInt64;
  g.allgather(so);
  std::vector<size_t> counts(sizes.begin(), sizes.end());
  size_t total = 0;
  for (auto c : counts) total += c;
  std::string all(total, '\0');
  comm::AllgatherOptions ao;
  ao.input = mine.data();
  ao.output = all.data();
  ao.count = mine.size();
  ao.counts = counts;
  ao.dtype = DType::kUInt8;
  g.allgather(ao);
  std::vector<std::string> out;
  size_t off = 0;
  for (auto c : counts) {
    out.push_back(all.substr(off, c));
    off += c;
  }
  return out;
}

void allreduceInPlace(comm::ProcessGroup& g, void* data, size_t n, DType dtype, ReduceOp op) {
  comm::AllreduceOptions o;
  o.data = data;
  o.count = n;
  o.dtype = dtype;
  o.op = op;
  g.allreduce(o);
}

}  // namespace chorus::train
