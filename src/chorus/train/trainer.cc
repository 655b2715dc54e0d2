// `chorus train` (see trainer.h): the all-reduce strategy in the one loop, or the parameter
// server's roles; and the helpers every strategy shares.
#include "chorus/train/trainer.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

#include "chorus/common/error.h"
#include "chorus/train/ddp_strategy.h"
#include "chorus/train/loop.h"
#include "chorus/train/ps_trainer.h"

namespace chorus::train {
namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

void setWorkerThreads(const TrainLoopConfig& cfg, int localWorldSize) {
  int64_t threads = cfg.threads;
  if (threads == 0) {
    int64_t cores = std::max(1u, std::thread::hardware_concurrency());
    threads = std::max<int64_t>(1, cores / std::max(1, localWorldSize));
  }
  torch::set_num_threads(static_cast<int>(threads));
}

StepPlan planSteps(const Config& cfg, int64_t datasetSize, int rank, int world) {
  const TrainLoopConfig& t = cfg.train;
  const int64_t localBatch = t.batchSize / world;
  parallel::DistributedSampler sampler(datasetSize, rank, world, t.shuffle, t.seed, t.dropLast);
  const int64_t shard = sampler.shardSize();
  const int64_t steps = t.dropLast ? shard / localBatch : (shard + localBatch - 1) / localBatch;
  if (steps == 0)
    throw ConfigError(str("train.batch_size = ", t.batchSize, " leaves no full batch in the ", shard,
                          " samples per worker; lower it or turn train.drop_last off"));
  int64_t total = steps * t.epochs;
  if (t.maxSteps > 0) total = std::min(total, t.maxSteps);
  return StepPlan{localBatch, std::move(sampler), shard, steps, total,
                  LrSchedule(cfg.schedule, cfg.optim.lr, total, steps)};
}

double stragglerSleep(const TrainLoopConfig& cfg, int worker, double computeSeconds) {
  if (std::find(cfg.stragglerWorkers.begin(), cfg.stragglerWorkers.end(), worker) == cfg.stragglerWorkers.end())
    return 0.0;
  const double seconds = cfg.stragglerDelayMs / 1000.0 + (cfg.stragglerFactor - 1.0) * std::max(0.0, computeSeconds);
  if (seconds <= 0) return 0.0;
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double peakRssMb() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

bool allFinite(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard noGrad;
  std::vector<torch::Tensor> sums;
  for (const auto& t : tensors) {
    if (t.defined() && t.numel() > 0) sums.push_back(t.sum());
  }
  if (sums.empty() || std::isfinite(torch::stack(sums).sum().item<double>())) return true;
  // The sums are in the tensors' own dtype, which huge finite entries can overflow too: only
  // then, look at every entry.
  for (const auto& t : tensors) {
    if (t.defined() && t.numel() > 0 && !torch::isfinite(t).all().item<bool>()) return false;
  }
  return true;
}

TrainResult train(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group, const TrainOptions& opts) {
  if (cfg.ps.servers > 0) return trainWithServers(cfg, std::move(group), opts);
  DdpStrategy ddp(cfg, group);
  return runLoop(cfg, *group, ddp, opts);
}

}  // namespace chorus::train
