// The parameter-server roles of `chorus train` (see ps_trainer.h).
#include "chorus/train/ps_trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <span>
#include <sstream>
#include <thread>

#include "chorus/amp/autocast.h"
#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/parallel/data/sampler.h"
#include "chorus/ps/client.h"
#include "chorus/ps/server.h"
#include "chorus/train/datasets.h"
#include "chorus/train/evaluate.h"
#include "chorus/train/metrics.h"
#include "chorus/train/models.h"
#include "chorus/train/optim.h"
#include "chorus/train/progress.h"

namespace chorus::train {
namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The model every rank builds the same way (same seed), and its parameters as the plan's tensors.
struct Built {
  torch::nn::Sequential model{nullptr};
  std::vector<torch::Tensor> params;
  ps::ShardPlan plan;
};

Built build(const Config& cfg, const Dataset& shapeOf, int servers) {
  static std::mutex initMu;  // threads-as-ranks tests share torch's generator
  std::lock_guard<std::mutex> lock(initMu);
  torch::manual_seed(cfg.train.seed);
  Built b;
  b.model = makeModel(cfg.model, shapeOf.images.size(1), shapeOf.images.size(2), shapeOf.images.size(3),
                      shapeOf.classes);
  std::vector<ps::TensorSpec> specs;
  for (auto& item : b.model->named_parameters()) {
    b.params.push_back(item.value());
    specs.push_back(ps::TensorSpec{item.key(), item.value().numel()});
  }
  b.plan = ps::ShardPlan::make(std::move(specs), servers);
  return b;
}

std::vector<std::span<float>> spansOf(std::vector<torch::Tensor>& ts) {
  std::vector<std::span<float>> out;
  for (auto& t : ts) out.emplace_back(t.data_ptr<float>(), static_cast<size_t>(t.numel()));
  return out;
}
std::vector<std::span<const float>> constSpansOf(std::vector<torch::Tensor>& ts) {
  std::vector<std::span<const float>> out;
  for (auto& t : ts) out.emplace_back(t.data_ptr<float>(), static_cast<size_t>(t.numel()));
  return out;
}

ps::OptimizerOptions serverOptimizer(const OptimConfig& o) {
  ps::OptimizerOptions so;
  so.name = o.name;
  so.momentum = o.name == "sgd" ? o.momentum : 0.0;
  so.nesterov = o.nesterov;
  so.weightDecay = o.weightDecay;
  so.beta1 = o.beta1;
  so.beta2 = o.beta2;
  so.eps = o.eps;
  return so;
}

// The error a worker stops with when its loss or gradient is not finite (docs/train.md,
// "Divergence"): the step, the worker, the servers' shard checkpoints and what to change.
DivergenceError workerDivergence(const Config& cfg, int worker, int64_t step, int64_t epoch, int64_t stepInEpoch,
                                 int64_t stepsPerEpoch, double loss, bool gradFinite, double lr) {
  std::ostringstream m;
  m << "training diverged at step " << step << " (epoch " << epoch + 1 << ", step " << stepInEpoch + 1 << " of "
    << stepsPerEpoch << ") on worker " << worker << ": ";
  if (!std::isfinite(loss)) {
    m << "its loss is " << (std::isnan(loss) ? std::string("nan") : str(loss))
      << (gradFinite ? "" : " and its gradient is not finite");
  } else {
    m << "its gradient is not finite (the loss is " << loss << ")";
  }
  m << "; it was not pushed.\n";
  const fs::path shard = fs::path(cfg.output.dir) / "ps" / "server0.ckpt";
  if (fs::exists(shard)) {
    m << "  last checkpoint: the servers' shards, " << (fs::path(cfg.output.dir) / "ps").string()
      << "/server*.ckpt (written every ps.checkpoint_every = " << cfg.ps.checkpointEvery
      << " updates); after the change below, --resume continues from them\n";
  } else {
    m << "  no server checkpoint was written, so the run has to start over (ps.checkpoint_every = N checkpoints "
         "the shards every N updates)\n";
  }
  m << "  what to change: a lower optim.lr (" << lr << " at this step";
  if (cfg.schedule.warmupSteps > 0) m << "; or a longer schedule.warmup_steps, now " << cfg.schedule.warmupSteps;
  m << ")";
  if (cfg.ps.mode == "asp")
    m << "; ps.mode = \"ssp\" with a small ps.staleness, or \"bsp\" (stale gradients amplify it)";
  if (cfg.ps.mode == "ssp") m << "; a lower ps.staleness (now " << cfg.ps.staleness << ") or ps.mode = \"bsp\"";
  return DivergenceError(m.str(), step, worker);
}

TrainResult runServer(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group, const TrainOptions& opts,
                      int workers, int serverIndex) {
  // Only the shapes are needed: the smallest split of the dataset gives them.
  Dataset shapes = loadDataset(cfg.data.dataset, cfg.data.path, true, 1);
  Built b = build(cfg, shapes, static_cast<int>(cfg.ps.servers));
  std::vector<int> workerRanks(static_cast<size_t>(workers));
  for (int w = 0; w < workers; ++w) workerRanks[static_cast<size_t>(w)] = w;
  ps::ServerOptions so;
  so.consistency.mode = ps::parseMode(cfg.ps.mode);
  so.consistency.workers = workers;
  so.consistency.staleness = static_cast<int>(cfg.ps.staleness);
  so.consistency.backup = static_cast<int>(cfg.ps.backup);
  so.optimizer = serverOptimizer(cfg.optim);
  so.optimizer.roundMomentum = cfg.ps.asyncMomentum == "round";
  so.applyThreads = static_cast<int>(cfg.ps.applyThreads);
  const fs::path dir = fs::path(cfg.output.dir) / "ps";
  fs::create_directories(dir);
  so.checkpointPath = (dir / str("server", serverIndex, ".ckpt")).string();
  so.checkpointEvery = cfg.ps.checkpointEvery;
  // A server restarted in a running job (chorus launch --restarts) reloads the shard its
  // predecessor checkpointed; a fresh start removes a shard left by an earlier job, so that a
  // restart can never load it.
  const bool restarted = envString("CHORUS_REJOIN") == "join";
  so.resume = opts.resume || restarted;
  if (!so.resume && fs::remove(so.checkpointPath)) {
    CHORUS_INFO("ps server ", serverIndex, ": removed the shard checkpoint of an earlier run, ", so.checkpointPath,
                " (run with --resume to continue from it)");
  }
  ps::Server server(group, serverIndex, workerRanks, b.plan, so);
  ps::ServerReport r = server.run();

  JsonObject o;
  o.add("server", r.server).add("version", r.version).add("pushes", r.pushes).add("pulls", r.pulls);
  o.add("errors_sent", r.errorsSent).add("bsp_partial_rounds", r.bspPartialRounds);
  o.add("bytes_received", r.bytesReceived).add("bytes_sent", r.bytesSent);
  o.add("busy_s", r.busySeconds).add("wall_s", r.wallSeconds).add("load", b.plan.load(serverIndex));
  o.add("resumed", r.resumedFromCheckpoint).add("failed_workers", static_cast<int64_t>(r.failedWorkers.size()));
  o.add("restart", envInt("CHORUS_RESTART_COUNT"));
  for (size_t w = 0; w < r.workers.size(); ++w) {
    const ps::WorkerStats& s = r.workers[w];
    const std::string p = str("w", w, "_");
    o.add(p + "pushes", s.pushes).add(p + "applied", s.applied).add(p + "dropped", s.dropped);
    o.add(p + "max_staleness", s.maxStaleness)
        .add(p + "mean_staleness", s.applied > 0 ? static_cast<double>(s.sumStaleness) / static_cast<double>(s.applied) : 0.0);
    o.add(p + "max_clock_gap", s.maxClockGap).add(p + "failed", s.failed);
  }
  std::ofstream(dir / str("server", serverIndex, ".json")) << o.str() << "\n";
  return {};
}

TrainResult runWorker(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group, const TrainOptions& opts,
                      int workers) {
  const int w = group->rank();
  const bool lead = w == 0;
  std::ostream& out = opts.out ? *opts.out : std::cout;
  const amp::Precision prec = amp::parsePrecision(cfg.precision);
  const int servers = static_cast<int>(cfg.ps.servers);

  setWorkerThreads(cfg.train, opts.localWorldSize);

  Dataset trainSet = loadDataset(cfg.data.dataset, cfg.data.path, true, cfg.data.limitTrain);
  Dataset testSet;
  if (cfg.train.eval && lead) testSet = loadDataset(cfg.data.dataset, cfg.data.path, false, cfg.data.limitTest);
  Built b = build(cfg, trainSet, servers);
  std::vector<int> serverRanks(static_cast<size_t>(servers));
  for (int s = 0; s < servers; ++s) serverRanks[static_cast<size_t>(s)] = workers + s;
  // With restartable servers (CHORUS_REJOIN), a dead server is waited for, up to the group's
  // timeout, and the client resynchronizes with its restarted process.
  const Millis reconnect = envString("CHORUS_REJOIN").empty() ? Millis(0) : group->timeout();
  ps::Client client(group, w, serverRanks, b.plan, Millis(0), reconnect);
  {
    torch::NoGradGuard ng;
    if (lead) client.init(constSpansOf(b.params));
    client.pull(spansOf(b.params));  // every worker starts from the servers' model
  }

  StepPlan plan = planSteps(cfg, trainSet.size(), w, workers);
  const int64_t localBatch = plan.localBatch, shard = plan.shard, stepsPerEpoch = plan.stepsPerEpoch,
                totalSteps = plan.totalSteps;
  parallel::DistributedSampler& sampler = plan.sampler;
  const LrSchedule& schedule = plan.schedule;

  TrainResult result;
  const fs::path dir = cfg.output.dir;
  fs::create_directories(dir / "ps");
  result.metricsPath = (dir / "metrics.jsonl").string();
  MetricsLog mine((dir / "ps" / str("worker", w, ".jsonl")).string());
  std::unique_ptr<MetricsLog> metrics;
  if (lead) {
    std::ofstream(dir / "config.toml") << toToml(cfg);
    metrics = std::make_unique<MetricsLog>(result.metricsPath);
    metrics->write(JsonObject()
                       .add("event", "start")
                       .add("world", workers)
                       .add("servers", servers)
                       .add("ps_mode", cfg.ps.mode)
                       .add("model", cfg.model.name)
                       .add("params", parameterCount(*b.model))
                       .add("precision", cfg.precision)
                       .add("transport", std::string(group->transportName()))
                       .add("steps_per_epoch", stepsPerEpoch)
                       .add("total_steps", totalSteps));
  }
  ProgressBar bar(out, lead ? progressModeFor(cfg.output.progress, STDOUT_FILENO) : ProgressMode::kNone,
                  cfg.train.epochs, stepsPerEpoch, cfg.train.logEvery);

  double trainSeconds = 0, computeSeconds = 0, pushSeconds = 0, pullSeconds = 0, sleptSeconds = 0;
  double wLoss = 0, wTrain = 0, wCompute = 0, wPush = 0, wPull = 0;
  int64_t wSteps = 0, step = 0;
  EvalResult lastEval{-1, -1};
  const uint64_t bytesAtStart = group->bytesSent();
  const Clock::time_point start = Clock::now();
  // Wall-clock start, so a report can line the workers' elapsed_s up on one time axis.
  const double startUnix = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  uint64_t bytesAtWindow = bytesAtStart;
  for (int64_t epoch = 0; epoch < cfg.train.epochs && step < totalSteps; ++epoch) {
    sampler.setEpoch(epoch);
    const torch::Tensor order = torch::tensor(sampler.indices(), torch::kLong);
    for (int64_t i = 0; i < stepsPerEpoch && step < totalSteps; ++i) {
      const Clock::time_point t0 = Clock::now();
      const int64_t begin = i * localBatch, len = std::min(localBatch, shard - begin);
      torch::Tensor idx = order.narrow(0, begin, len);
      torch::Tensor x = trainSet.images.index_select(0, idx), y = trainSet.labels.index_select(0, idx);
      for (auto& p : b.params) p.mutable_grad() = torch::Tensor();
      torch::Tensor loss;
      {
        amp::Autocast ac(prec, torch::kCPU);
        loss = torch::nn::functional::cross_entropy(b.model->forward(x).to(torch::kFloat), y);
      }
      loss.backward();
      const double lossValue = loss.item<double>();
      const double compute = since(t0);
      const double slept = stragglerSleep(cfg.train, w, compute);
      std::vector<torch::Tensor> grads;
      for (auto& p : b.params) grads.push_back(p.grad().defined() ? p.grad().contiguous() : torch::zeros_like(p));
      // Divergence: a non-finite gradient pushed would poison every worker's model, so the
      // worker stops before the push. Workers share no collective to agree on it; each checks
      // its own, and the launcher stops the job when a worker fails (under bsp at once; asp and
      // ssp go on without it, and every worker stops at its next step if the model itself
      // went non-finite).
      const bool lossFinite = std::isfinite(lossValue), gradFinite = allFinite(grads);
      if (!lossFinite || !gradFinite) {
        JsonObject o;
        o.add("event", "diverged").add("worker", w).add("step", step + 1).add("epoch", epoch);
        o.add("loss_finite", lossFinite).add("grad_finite", gradFinite);
        mine.write(o);
        if (metrics) metrics->write(o);
        if (lead) bar.endEpoch("");
        throw workerDivergence(cfg, w, step + 1, epoch, i, stepsPerEpoch, lossValue, gradFinite, schedule.at(step));
      }
      const Clock::time_point t1 = Clock::now();
      client.push(constSpansOf(grads), schedule.at(step));
      const Clock::time_point t2 = Clock::now();
      {
        torch::NoGradGuard ng;
        client.pull(spansOf(b.params));
      }
      const Clock::time_point t3 = Clock::now();
      ++step;
      const double stepSeconds = std::chrono::duration<double>(t3 - t0).count();
      const double push = std::chrono::duration<double>(t2 - t1).count(), pull = std::chrono::duration<double>(t3 - t2).count();
      trainSeconds += stepSeconds;
      computeSeconds += compute;
      sleptSeconds += slept;
      pushSeconds += push;
      pullSeconds += pull;
      wLoss += lossValue;
      wTrain += stepSeconds;
      wCompute += compute;
      wPush += push;
      wPull += pull;
      ++wSteps;
      const bool lastOfEpoch = i + 1 == stepsPerEpoch || step >= totalSteps;
      if (wSteps >= cfg.train.logEvery || lastOfEpoch) {
        const uint64_t bytes = group->bytesSent();
        JsonObject o;
        o.add("event", "step").add("worker", w).add("step", step).add("epoch", epoch).add("elapsed_s", since(start));
        o.add("loss", wLoss / static_cast<double>(wSteps)).add("lr", schedule.at(step - 1));
        o.add("step_s", wTrain / static_cast<double>(wSteps)).add("compute_s", wCompute / static_cast<double>(wSteps));
        o.add("push_s", wPush / static_cast<double>(wSteps)).add("pull_s", wPull / static_cast<double>(wSteps));
        o.add("samples_per_s", static_cast<double>(wSteps * localBatch) / std::max(1e-9, wTrain));
        o.add("bytes_sent", bytes - bytesAtWindow);
        const auto& v = client.versions();
        o.add("version", v.empty() ? int64_t{0} : *std::min_element(v.begin(), v.end()));
        // How far this worker's parameters lag the step count: steps done minus the version it
        // read, per worker push (asp/ssp versions count every worker's pushes).
        o.add("clock", client.clock()).add("reconnects", client.reconnects());
        mine.write(o);
        if (metrics) metrics->write(o);
        bytesAtWindow = bytes;
        wLoss = wTrain = wCompute = wPush = wPull = 0;
        wSteps = 0;
      }
      if (lead) bar.update(epoch, i + 1, lossValue, static_cast<double>(localBatch * workers) / std::max(1e-9, stepSeconds), 0);
    }
    if (lead && cfg.train.eval) {
      lastEval = evaluate(b.model, testSet, nullptr, prec);
      metrics->write(JsonObject()
                         .add("event", "eval")
                         .add("epoch", epoch)
                         .add("step", step)
                         .add("test_acc", lastEval.accuracy)
                         .add("test_loss", lastEval.loss)
                         .add("train_s", trainSeconds)
                         .add("elapsed_s", since(start)));
      bar.endEpoch(str("epoch ", epoch + 1, "/", cfg.train.epochs, ": test accuracy ", lastEval.accuracy,
                       ", test loss ", lastEval.loss));
    } else if (lead) {
      bar.endEpoch(str("epoch ", epoch + 1, "/", cfg.train.epochs, " done"));
    }
  }
  client.bye();

  result.steps = step;
  result.globalStep = step;
  result.trainSeconds = trainSeconds;
  result.samplesPerSec = trainSeconds > 0 ? static_cast<double>(step * localBatch) / trainSeconds : 0;
  result.testAccuracy = lastEval.accuracy;
  result.testLoss = lastEval.loss;
  JsonObject sum;
  sum.add("event", "summary").add("worker", w).add("workers", workers).add("servers", servers);
  sum.add("ps_mode", cfg.ps.mode).add("steps", step).add("train_s", trainSeconds).add("elapsed_s", since(start));
  sum.add("start_unix_s", startUnix);
  sum.add("samples_per_s", result.samplesPerSec).add("compute_s", computeSeconds).add("straggler_sleep_s", sleptSeconds);
  sum.add("push_s", pushSeconds).add("pull_s", pullSeconds).add("bytes_sent", group->bytesSent() - bytesAtStart);
  sum.add("test_acc", lastEval.accuracy).add("test_loss", lastEval.loss).add("peak_rss_mb", peakRssMb());
  sum.add("reconnects", client.reconnects());
  mine.write(sum);
  if (metrics) metrics->write(sum);
  return result;
}

}  // namespace

TrainResult trainWithServers(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group, const TrainOptions& opts) {
  const int servers = static_cast<int>(cfg.ps.servers);
  const int workers = group->size() - servers;
  if (workers < 1)
    throw ConfigError(str("ps.servers = ", servers, " leaves no worker in a job of ", group->size(),
                          " processes; start more processes (chorus train --nproc N starts N workers plus the servers)"));
  if (group->rank() >= workers) return runServer(cfg, group, opts, workers, group->rank() - workers);
  return runWorker(cfg, group, opts, workers);
}

}  // namespace chorus::train
