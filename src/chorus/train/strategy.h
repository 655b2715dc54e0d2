// How a training step is computed and its gradients exchanged: the part of training that differs
// between data parallelism (DdpStrategy: all-reduce), a parameter server (PsWorkerStrategy:
// push and pull), and tensor- or pipeline-parallel training over a mesh. The loop (loop.h) owns
// everything around a step: the step plan and learning-rate schedule, resume and checkpoint
// timing, metrics files, progress, trace, evaluation timing, the statistics of every step, and
// the divergence decision's consequences. A Strategy says who this rank is (Roles), computes
// steps, and names what it measures in the metrics records. strategy_util.h holds what the
// strategies without a parameter server share (wire dtype, GradScaler, the divergence check and
// report, the GPT runs' records).
//
// The loop calls, on every rank that runs it: roles(); setup(); loadCheckpoint() when resuming
// (joinedAtStep() on ranks that keep no checkpoint);
// startRecord() (lead); then per epoch beginEpoch(), per step step() (and on divergence
// divergedRecord() and raiseDivergence()), stepRecord() per logged window (lead and rank log),
// evaluate() and evalFields() (lead), saveCheckpoint(); finally finish() and summaryRecord().
// Not thread-safe: one rank's loop calls it from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "chorus/comm/group.h"
#include "chorus/train/checkpoint.h"
#include "chorus/train/metrics.h"
#include "chorus/train/task.h"
#include "chorus/train/trace.h"

namespace chorus::train {

struct TrainResult;

// Sums over steps: one step's (steps = 1, from Strategy::step), a logged window's, or the run's.
struct StepStats {
  int64_t steps = 0;
  double loss = 0;            // sum of this rank's step losses
  double stepSeconds = 0;     // wall time of the steps, batch included (the loop measures it)
  double computeSeconds = 0;  // the part not spent waiting for communication
  double commSeconds = 0;     // gradient exchange: all-reduce spans (partly under backward), push + pull
  double overlapSeconds = 0;  // the part of commSeconds hidden under the backward pass
  double pushSeconds = 0, pullSeconds = 0;  // a parameter-server exchange's two halves
  double sleptSeconds = 0;    // straggler sleep (train.straggler_*)
  uint64_t gradBytes = 0;     // bytes this rank sent to exchange gradients
  uint64_t modelParallelBytes = 0;  // bytes this rank sent for model parallelism: tensor-parallel
                                    // collectives, or a pipeline stage's activations, activation
                                    // gradients and tied-embedding sum
  double denseBytes = 0;      // what a dense ring all-reduce of the same gradients would send
  int64_t skippedSteps = 0;   // steps the fp16 loss scaler skipped (not applied, not divergence)

  StepStats& operator+=(const StepStats& o);
  double meanLoss() const { return steps > 0 ? loss / static_cast<double>(steps) : 0.0; }
};

// What the divergence check saw in a step (docs/train.md, "Divergence").
struct Divergence {
  bool loss = false;      // the loss was not finite (on some rank that takes part in the decision)
  bool gradient = false;  // the gradient the optimizer would apply was not finite
  bool scale = false;     // fp16: the loss scaler backed off below its floor
  bool any() const { return loss || gradient || scale; }
};

// Where the loop stands when it asks for a step.
struct StepInfo {
  int64_t epoch = 0;
  int64_t stepInEpoch = 0;    // 0-based
  int64_t stepsPerEpoch = 0;
  int64_t globalStep = 0;     // steps taken before this one (resumed ones included)
  double lr = 0;              // the schedule's learning rate for this step
  std::chrono::steady_clock::time_point start;  // when the loop began the step, before its batch
  Tracer* tracer = nullptr;   // record spans here when tracer->enabled()
  // The loop pauses after this step: it evaluates, writes a checkpoint, ends an epoch or ends
  // the run (or this process's part of it). A strategy that keeps work in flight across
  // steps (a pipeline stream) finishes it within this step.
  bool pauseAfter = false;
};

struct StepOutcome {
  StepStats stats;        // this step's (the loop adds stepSeconds); stats.loss is this rank's loss
  Divergence diverged;    // any(): the step was not applied, and the loop stops the run
};

// Who this rank is in the loop. Fixed for the run.
struct Roles {
  // The ranks that run the loop together, for the loop's own collectives (the checkpoint
  // folder's check, a barrier before timing, the summary's maxima, gathering the trace);
  // nullptr: they share none (parameter-server workers).
  comm::ProcessGroup* group = nullptr;
  bool lead = false;       // writes metrics.jsonl, config.toml, checkpoints and the progress display
  int dataRank = 0;        // this rank's index among the data-parallel ranks ...
  int dataRanks = 1;       // ... and their number: the task splits each global batch over them
  bool evaluates = true;   // takes part in evaluation (the task loads its evaluation data)
  bool checkpoints = true; // the loop keeps <output.dir>/checkpoints, resumes from it, saves there
  std::string rankLog;     // a per-rank JSONL file (under output.dir) for step, diverged and summary
                           // records as well ("": none)
};

// The loop's state, for the records a strategy writes.
struct LoopStatus {
  int64_t stepsPerEpoch = 0, totalSteps = 0;
  int64_t epoch = 0;           // the epoch in progress
  int64_t stepInEpoch = 0;     // of the step just taken (0-based)
  int64_t globalStep = 0;      // steps taken in all
  int64_t stepsThisRun = 0;
  double lr = 0;               // of the step just taken
  double loss = 0;             // of the step just taken (this rank's)
  StepStats window;            // the steps since the last step record
  StepStats total;             // this run's steps
  uint64_t windowBytes = 0;    // bytes this process sent since the last step record
  uint64_t bytesSinceStart = 0;  // ... since the loop started
  uint64_t bytesSent = 0;      // ... in all (the job group's counter)
  double elapsedSeconds = 0;   // since the loop started (after setup)
  double startUnixSeconds = 0; // wall clock at that moment
  std::string resumedFrom;     // the checkpoint resumed from ("" fresh) ...
  int64_t resumedStep = 0;     // ... and its step
  std::string lastCheckpoint;  // the newest this run wrote, else the one it resumed from ("": none)
  std::string checkpointDir;
  // The summary's: over every rank of Roles::group (this rank's own without a group).
  double slowestTrainSeconds = 0, peakRssMaxMb = 0, peakRssMeanMb = 0;
  EvalMetrics lastEval;        // empty before the first evaluation
};

// A snapshot's payload (Strategy::snapshot) in its two parts. elastic.cc holds no strategy when
// the job re-forms, so the split is in the bytes: it gathers the `own` parts of the members that
// hold the agreed step into the one payload every member restores.
struct SnapshotParts {
  std::string shared;               // the same on every rank: model, optimizer, loss scale, position
  int world = 0;                    // the size of the generation that took the snapshot
  std::map<int, std::string> own;   // rank in that generation -> its own state (none: empty)
};
// The payload and back (elastic.cc); unpackSnapshot throws Error for bytes packSnapshot did not write.
std::string packSnapshot(const SnapshotParts& parts);
SnapshotParts unpackSnapshot(const std::string& payload);

class Strategy {
 public:
  virtual ~Strategy() = default;

  virtual Roles roles() const = 0;

  // Builds the model (seededModel(train.seed, [&] { return task.makeModel(); }), loop.h, or a
  // model of its own), wraps it for the exchange, makes the optimizer and whatever the step needs. Collective where the
  // exchange is (DDP broadcasts the initial weights, a PS worker pulls them).
  virtual void setup(Task& task) = 0;

  // Restores model, optimizer and the strategy's own state (loss scale, codec residuals) from a
  // checkpoint and returns the loop's position in it. Roles::checkpoints only.
  virtual TrainState loadCheckpoint(const std::string& path) = 0;
  // Every rank of Roles::group calls it (per-rank state is gathered); the lead writes `path`
  // with model, optimizer, `state` and the strategy's own state. Roles::checkpoints only.
  virtual void saveCheckpoint(const std::string& path, const TrainState& state) = 0;

  // In-process recovery (elastic.h). snapshot: this rank's state at the end of a completed
  // step, in memory and without any collective (model, optimizer, the strategy's own state
  // such as the loss scale, and `state`, the loop's position), as packSnapshot's bytes (above):
  // what every rank restores alike in `shared`, and this rank's own state, if it keeps any
  // (DDP's codec residuals), in `own`. restoreSnapshot: loads the agreed one into this rank's
  // freshly set-up strategy and returns the position; after a re-forming its `shared` is one
  // rank's and its `own` holds the parts of every member that held the agreed step, by their
  // ranks in the generation that took it (a failed rank's part is missing), for the strategy
  // to carry to this rank's place in the new world as a checkpoint resume would.
  // A strategy that cannot recover in process throws InvalidArgument (the defaults).
  virtual std::string snapshot(const TrainState& state);
  virtual TrainState restoreSnapshot(const std::string& payload);

  // A process restarted in a running job in place of one that failed (a parameter-server
  // worker, ps.restarts) starts at the step the job's state says, not at 0: the global step to
  // start at, or -1 (the default) to start fresh or from a checkpoint. Called after setup()
  // on ranks without Roles::checkpoints.
  virtual int64_t joinedAtStep() { return -1; }

  virtual void beginEpoch(int64_t /*epoch*/) {}

  // One optimizer step on batch: forward, backward, the gradient exchange and the update,
  // unless the divergence check fails (then nothing is applied and Divergence says why; every
  // rank that must stop with this one reports it at the same step). Blocks on communication.
  virtual StepOutcome step(const Batch& batch, const StepInfo& info) = 0;

  // The "diverged" record (lead and rank log), then the error (DivergenceError) that ends the
  // run. raiseDivergence may be collective over the ranks that agreed on the divergence.
  virtual JsonObject divergedRecord(const Divergence& d, const LoopStatus& s) = 0;
  [[noreturn]] virtual void raiseDivergence(const Divergence& d, const LoopStatus& s) = 0;

  // The run has reached its end and its last evaluation follows: a strategy whose model may
  // still change elsewhere brings it to its final state first (a parameter-server worker that
  // evaluates waits for the other workers' last pushes, Client::finalPull, and says its
  // goodbye). Called on every rank, only when the run evaluates.
  virtual void prepareFinalEvaluation() {}

  // Evaluates the model with task.evaluate (eval mode for the pass). Every rank calls it; a
  // rank without Roles::evaluates returns empty metrics; the lead's are recorded.
  virtual EvalMetrics evaluate(Task& task) = 0;

  // After the last step, before the summary (a PS worker says goodbye to the servers).
  virtual void finish() {}

  // The records' strategy-specific parts: the whole "start", "step" and "summary" records, and
  // the fields that end an "eval" record (after train_s); the task's stepFields follow the
  // strategy's in a "step" record. summaryRecord also fills what only it knows of result
  // (samplesPerSec, commSeconds, overlapFraction); the loop has filled the rest.
  virtual JsonObject startRecord(const LoopStatus& s) = 0;
  virtual JsonObject stepRecord(const LoopStatus& s) = 0;
  virtual void evalFields(JsonObject& record, const LoopStatus& s) = 0;
  virtual JsonObject summaryRecord(const LoopStatus& s, TrainResult& result) = 0;
};

}  // namespace chorus::train
