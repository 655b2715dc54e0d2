// The parameter-server roles of `chorus train` (see ps_trainer.h): the server runs here; a
// worker is the one training loop with PsWorkerStrategy.
#include "chorus/train/ps_trainer.h"

#include <filesystem>
#include <fstream>

#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/common/logging.h"
#include "chorus/comm/rendezvous/store.h"
#include "chorus/ps/server.h"
#include "chorus/train/datasets.h"
#include "chorus/train/elastic.h"
#include "chorus/train/loop.h"
#include "chorus/train/metrics.h"
#include "chorus/train/models.h"
#include "chorus/train/ps_strategy.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

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

TrainResult runServer(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group, const TrainOptions& opts,
                      int workers, int serverIndex) {
  // Only the shapes are needed: the smallest split of the dataset gives them.
  Dataset shapes = loadDataset(cfg.data.dataset, cfg.data.path, true, 1);
  torch::nn::Sequential model = seededModel(cfg.train.seed, [&] {
    return makeModel(cfg.model, shapes.images.size(1), shapes.images.size(2), shapes.images.size(3), shapes.classes);
  });
  const ps::ShardPlan plan = shardPlanFor(*model, static_cast<int>(cfg.ps.servers));
  std::vector<int> workerRanks(static_cast<size_t>(workers));
  for (int w = 0; w < workers; ++w) workerRanks[static_cast<size_t>(w)] = w;
  ps::ServerOptions so;
  so.consistency.mode = ps::parseMode(cfg.ps.mode);
  so.consistency.workers = workers;
  so.consistency.staleness = static_cast<int>(cfg.ps.staleness);
  so.consistency.backup = static_cast<int>(cfg.ps.backup);
  for (int s = 0; s < static_cast<int>(cfg.ps.servers); ++s) so.serverRanks.push_back(workers + s);
  so.workerRestarts = static_cast<int>(cfg.ps.restarts);
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
  ps::Server server(group, serverIndex, workerRanks, plan, so);
  ps::ServerReport r = server.run();

  JsonObject o;
  o.add("server", r.server).add("version", r.version).add("pushes", r.pushes).add("pulls", r.pulls);
  o.add("errors_sent", r.errorsSent).add("bsp_partial_rounds", r.bspPartialRounds);
  o.add("codec_pushes", r.codecPushes);
  o.add("bytes_received", r.bytesReceived).add("bytes_sent", r.bytesSent);
  o.add("busy_s", r.busySeconds).add("wall_s", r.wallSeconds).add("load", plan.load(serverIndex));
  o.add("resumed", r.resumedFromCheckpoint).add("failed_workers", static_cast<int64_t>(r.failedWorkers.size()));
  o.add("rejoined_workers", static_cast<int64_t>(r.rejoinedWorkers.size())).add("decisions", r.decisions);
  o.add("restart", envInt("CHORUS_RESTART_COUNT"));
  for (size_t w = 0; w < r.workers.size(); ++w) {
    const ps::WorkerStats& s = r.workers[w];
    const std::string p = str("w", w, "_");
    o.add(p + "pushes", s.pushes).add(p + "applied", s.applied).add(p + "dropped", s.dropped);
    o.add(p + "max_staleness", s.maxStaleness)
        .add(p + "mean_staleness", s.applied > 0 ? static_cast<double>(s.sumStaleness) / static_cast<double>(s.applied) : 0.0);
    o.add(p + "max_clock_gap", s.maxClockGap).add(p + "failed", s.failed).add(p + "rejoins", s.rejoins);
  }
  std::ofstream(dir / str("server", serverIndex, ".json")) << o.str() << "\n";
  return {};
}

}  // namespace

TrainResult trainWithServers(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group, const TrainOptions& opts) {
  const int servers = static_cast<int>(cfg.ps.servers);
  const int workers = group->size() - servers;
  if (workers < 1)
    throw ConfigError(str("ps.servers = ", servers, " leaves no worker in a job of ", group->size(),
                          " processes; start more processes (chorus train --nproc N starts N workers plus the servers)"));
  // With restartable ranks (ps.restarts: CHORUS_REJOIN set) the launcher watches a heartbeat
  // from each: a stopped or frozen process is killed and restarted like one that died.
  std::unique_ptr<Heartbeat, HeartbeatStop> heartbeat;
  const bool restartable = !envString("CHORUS_REJOIN").empty();
  if (restartable) heartbeat = startHeartbeat(group->rank());
  TrainResult result;
  if (group->rank() >= workers) {
    result = runServer(cfg, group, opts, workers, group->rank() - workers);
  } else {
    PsWorkerStrategy worker(cfg, group, workers);
    result = runLoop(cfg, *group, worker, opts);
  }
  // Done: the launcher must not restart this rank if it dies from here on (a restarted process
  // would find the job over). A fault planned at the run's last step fires here (tests).
  if (restartable && group->store()) group->store()->set(str("chorus/done/", group->rank()), comm::toBytes("1"));
  if (group->rank() < workers) injectFault(result.globalStep);
  return result;
}

}  // namespace chorus::train

