// `chorus train` (see trainer.h): the all-reduce strategy in the one loop, or the parameter
// server's roles; and the helpers every strategy shares.
#include "chorus/train/trainer.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>
#include <thread>

#include "chorus/common/error.h"
#include "chorus/train/ddp_strategy.h"
#include "chorus/train/layerwise_strategy.h"
#include "chorus/train/loop.h"
#include "chorus/train/ps_trainer.h"
#include "chorus/train/text_task.h"
#include "chorus/train/tp_strategy.h"

namespace chorus::train {
namespace {
using Clock = std::chrono::steady_clock;

// Whether a LibTorch error is a failed allocation (the CPU allocator's "can't allocate memory").
bool isAllocationFailure(const c10::Error& e) {
  const std::string what = e.what_without_backtrace();
  return what.find("can't allocate memory") != std::string::npos ||
         what.find("Cannot allocate memory") != std::string::npos || what.find("std::bad_alloc") != std::string::npos;
}

std::string mib(double bytes) { return str(std::llround(bytes / (1024.0 * 1024.0)), " MiB"); }

// The out-of-memory error of this rank: what it held and what to change (docs/errors.md).
OutOfMemoryError outOfMemory(const Config& cfg, int rank, int world, const std::string& cause) {
  std::ostringstream m;
  m << "rank " << rank << " of " << world << " ran out of memory (" << cause << "); its peak resident memory was "
    << std::llround(peakRssMb()) << " MiB";
  struct rlimit lim {};
  if (getrlimit(RLIMIT_AS, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY)
    m << " under an address-space limit of " << mib(static_cast<double>(lim.rlim_cur)) << " per process (ulimit -v / prlimit --as)";
  if (cfg.model.name == "gpt" && cfg.parallel.pp > 1) {
    const double params = static_cast<double>(gptParameterBytes(gptOptions(cfg), 1).total());
    m << ". The whole model's parameters take " << mib(params) << " (about 1/" << cfg.parallel.pp
      << " of them, with their gradients and optimizer state, on each of the parallel.pp = " << cfg.parallel.pp
      << " stages), and the activations grow with train.batch_size x model.context.\n  what to change: a larger "
         "parallel.pp (at most model.layers = "
      << cfg.model.layers << "), or a smaller model.embed, model.layers, train.batch_size or model.context, or a higher "
      << "memory limit";
  } else if (cfg.model.name == "gpt") {
    const ParamBytes pb = gptParameterBytes(gptOptions(cfg), cfg.parallel.tp);
    const double params = static_cast<double>(pb.total());
    m << ". The model's parameters take " << mib(params) << " per rank at parallel.tp = " << cfg.parallel.tp << " ("
      << mib(static_cast<double>(pb.sharded)) << " split over tp, " << mib(static_cast<double>(pb.replicated))
      << " replicated), their gradients " << mib(params) << ", the " << cfg.optim.name << " optimizer's state "
      << mib(params * static_cast<double>(optimizerStateMultiple(cfg.optim)))
      << ", and the activations grow with train.batch_size x model.context.\n  what to change: a larger parallel.tp (it "
      << "must divide model.heads = " << cfg.model.heads << "; each rank then holds 1/tp of the split part), or a "
      << "smaller model.embed, model.layers, train.batch_size or model.context, or a higher memory limit";
  } else {
    m << ".\n  what to change: a smaller model or train.batch_size, or a higher memory limit";
  }
  return OutOfMemoryError(m.str());
}
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
  const int rank = group->rank(), world = group->size();
  // A failed allocation becomes an OutOfMemoryError that says what this rank held, instead of
  // LibTorch's message (or std::terminate) without a word on what to change.
  try {
    if (cfg.model.name == "gpt" && cfg.parallel.pp > 1) {
      LayerwiseStrategy layerwise(cfg, group);
      return runLoop(cfg, *group, layerwise, opts);
    }
    if (cfg.model.name == "gpt") {
      TensorParallelStrategy tp(cfg, group);
      return runLoop(cfg, *group, tp, opts);
    }
    DdpStrategy ddp(cfg, group);
    return runLoop(cfg, *group, ddp, opts);
  } catch (const std::bad_alloc&) {
    throw outOfMemory(cfg, rank, world, "std::bad_alloc");
  } catch (const c10::Error& e) {
    if (!isAllocationFailure(e)) throw;
    std::string first = e.what_without_backtrace();
    first = first.substr(0, first.find('\n'));
    throw outOfMemory(cfg, rank, world, first);
  }
}

}  // namespace chorus::train
