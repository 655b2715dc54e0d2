// The one training loop of `chorus train`, whatever the parallelism: it drives a Task (what the
// data and the loss are, task.h) and a Strategy (how a step is computed and its gradients
// exchanged, strategy.h). The loop's own part, shared by every strategy: worker threads, the
// task's data, seeding the model, the step plan and learning-rate schedule, resume and the
// checkpoint folder, metrics.jsonl and a per-rank log, the progress display, the Chrome trace,
// per-step statistics (StepStats) and their logged windows, evaluation after each epoch (and
// every train.eval_every steps), checkpoints, and stopping the run when a step diverged.
// docs/architecture.md, "Training loop", shows the seam.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "chorus/comm/group.h"
#include "chorus/train/config.h"
#include "chorus/train/strategy.h"
#include "chorus/train/task.h"
#include "chorus/train/trainer.h"

namespace chorus::train {

// The task a config asks for, built for this rank's Roles (its data shard; evaluation data only
// where it evaluates and train.eval is on): TextTask for data.dataset = "fortunes", else image
// classification (ImageTask).
std::unique_ptr<Task> makeTask(const Config& cfg, const Roles& roles);
using TaskFactory = std::function<std::unique_ptr<Task>(const Config& cfg, const Roles& roles)>;

// Runs the job on this rank: sets the worker threads, builds the task (makeTask unless
// `makeTaskFor` is given), strategy.setup(), resumes (opts.resume / opts.resumeFrom) when the
// strategy keeps checkpoints, then trains train.epochs epochs (train.max_steps caps the steps,
// opts.stopAfter stops early as an interrupted job would), evaluating after each epoch and
// every train.eval_every steps (train.eval), writing records and checkpoints (output.*).
// `world` is the job's group: its bytesSent() counter feeds the records. Throws what the task or strategy throws; a diverged
// step ends in the strategy's DivergenceError.
TrainResult runLoop(const Config& cfg, comm::ProcessGroup& world, Strategy& strategy, const TrainOptions& opts,
                    const TaskFactory& makeTaskFor = {});

// Runs make() with torch's global generator seeded to `seed`, under a process-wide lock: ranks
// that are threads of one process (tests) share that generator, and every model drawn this way
// (any strategy's, a parameter server's) takes the same lock.
torch::nn::Sequential seededModel(uint64_t seed, const std::function<torch::nn::Sequential()>& make);

// Every rank's bytes, in rank order, on every rank (an all-gather of sizes, then of the bytes).
// Collective over g.
std::vector<std::string> allgatherBytes(comm::ProcessGroup& g, const std::string& mine);

// An all-reduce of `n` values in place over g (blocking, collective).
void allreduceInPlace(comm::ProcessGroup& g, void* data, size_t n, DType dtype, ReduceOp op);

}  // namespace chorus::train
