// `chorus train` on every rank: the one training loop (loop.h) with the strategy the config
// asks for: all-reduce data parallelism (DdpStrategy: data sharded by DistributedSampler, the
// model wrapped in DistributedDataParallel, compression, mixed precision); for model.name = "gpt"
// tensor parallelism over a tp x dp mesh (TensorParallelStrategy, tp_strategy.h, tp = 1
// included); or, with ps.servers, the parameter server's roles (ps_trainer.h); the loop adds the learning-rate schedule,
// evaluation after each epoch, metrics (JSONL), the progress display, checkpoints and bit-exact
// resume, and an optional Chrome trace. Also the helpers every strategy shares.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chorus/comm/group.h"
#include "chorus/parallel/data/sampler.h"
#include "chorus/train/config.h"
#include "chorus/train/optim.h"

namespace chorus::train {

// A rank's state at the end of its last completed step, kept in memory by an elastic run
// (elastic.h): Strategy::snapshot's payload.
struct Snapshot {
  std::string payload;
  int64_t globalStep = -1;  // the steps it holds; -1: none
  std::string source;       // where it came from, for messages
  // Tensor- and pipeline-parallel jobs keep the one before as well (each rank holds its own
  // shard, and the world may have to agree on the step before a rank's newest: elastic.cc).
  bool keepPrevious = false;
  std::string previous;
  int64_t previousStep = -1;  // -1: none
  // At dp = 1 no other rank holds this rank's shard, so each rank also keeps copies of another
  // rank's two newest snapshots (its buddy's), which `replicate` exchanges after each one the
  // loop takes (elastic.cc). Empty steps: -1.
  std::string copy, copyPrevious;
  int64_t copyStep = -1, copyPreviousStep = -1;
  std::function<void(Snapshot&)> replicate;  // called by the loop after each snapshot; may be empty
};

struct TrainOptions {
  bool resume = false;        // continue from the newest checkpoint in <output.dir>/checkpoints
  std::string resumeFrom;     // or from this checkpoint file
  std::string tracePath;      // write a Chrome trace here (rank 0 gathers every rank's spans)
  int localWorldSize = 1;     // ranks on this host (sets the default thread count)
  int64_t stopAfter = 0;      // > 0: stop after this many steps of this run, as an interrupted job
                              // would, leaving the schedule untouched (tests, time-boxed runs)
  std::ostream* out = nullptr;  // rank 0's progress and summary (nullptr: std::cout)
  // In-process recovery (elastic.h): when set, the loop keeps the state at the end of every
  // completed step here, and a run that starts with one (globalStep >= 0) resumes from it
  // instead of a checkpoint file.
  Snapshot* snapshot = nullptr;
};

struct TrainResult {
  int64_t steps = 0;           // optimizer steps taken in this run (not counting resumed ones)
  int64_t globalStep = 0;      // steps in all, resumed ones included
  double trainSeconds = 0;     // wall time of the training steps (no evaluation, no checkpoints)
  double samplesPerSec = 0;    // global samples trained / trainSeconds
  double testAccuracy = -1;    // after the last epoch (-1: no evaluation ran)
  double testLoss = -1;
  std::vector<std::pair<std::string, double>> eval;  // the last evaluation's metrics, by the task's names
  double overlapFraction = 0;  // of all-reduce time, the part hidden under backward passes
  double commSeconds = 0;      // all-reduce time (rank 0)
  int64_t skippedSteps = 0;    // fp16 steps skipped on overflow
  std::string metricsPath;     // rank 0's metrics.jsonl
  std::string checkpointDir;
  std::string lastCheckpoint;  // "" if none was written
};

// Runs the job described by cfg on this rank of group. Throws chorus errors (bad data path,
// bad checkpoint, a peer that died); a failed allocation (a memory limit) becomes an
// OutOfMemoryError naming the rank, its peak resident memory, the model's bytes per rank and
// what to change.
TrainResult train(const Config& cfg, std::shared_ptr<comm::ProcessGroup> group, const TrainOptions& opts);

// Sets torch's intra-op threads: train.threads, or the cores shared by the local workers.
void setWorkerThreads(const TrainLoopConfig& cfg, int localWorldSize);

// The steps a data-parallel rank runs over a dataset of samples (ImageTask): its sampler over
// its shard of a training set of `datasetSize` samples, its share of the global batch, the
// steps per epoch (the last batch smaller unless train.drop_last) and in all (train.max_steps
// caps them), and the learning-rate schedule over them. Throws ConfigError when the shard
// leaves no batch.
struct StepPlan {
  int64_t localBatch;
  parallel::DistributedSampler sampler;
  int64_t shard;
  int64_t stepsPerEpoch;
  int64_t totalSteps;
  LrSchedule schedule;
};
StepPlan planSteps(const Config& cfg, int64_t datasetSize, int rank, int world);

// The straggler of train.straggler_*: when `worker` is listed, sleeps straggler_delay_ms plus
// (straggler_factor - 1) x computeSeconds and returns the seconds slept; otherwise 0.
double stragglerSleep(const TrainLoopConfig& cfg, int worker, double computeSeconds);

// Peak resident memory of this process in MiB (getrusage).
double peakRssMb();

// Whether every entry of every defined tensor is finite (no inf, no NaN), as the divergence
// check of every strategy asks of the gradients (docs/train.md, "Divergence"): one sum per
// tensor and a single read of their total (an inf or NaN entry makes it non-finite); only when
// that is not finite, a look at every entry (a sum can also overflow on huge finite entries).
bool allFinite(const std::vector<torch::Tensor>& tensors);

}  // namespace chorus::train
