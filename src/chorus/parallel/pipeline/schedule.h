// Pipeline schedules as data: for each rank of the pipeline, the ordered list of what it does
// in one training step (forward of micro-batch i, backward of i or its input- and weight-
// gradient halves, the sends and receives between them, the optimizer step). One small
// function generates each schedule; a checker simulates any schedule without processes and
// proves it sound before anything runs; the executor (executor.h) runs the lists.
//
//   PipeSchedule s = makeSchedule("1f1b", /*stages=*/4, /*microBatches=*/8);
//   SimResult r = checkSchedule(s);          // throws InvalidArgument naming the first fault
//   std::cout << renderSchedule(s, r);       // `chorus pipeline show` prints this grid
//
// Layout. p ranks (pipeline stages), v model chunks per rank (v > 1: the interleaved
// schedule), so V = p * v virtual stages hold the layers in order; virtual stage s lives on
// rank s % p as its chunk s / p (Megatron's interleaving: rank r holds stages r, r + p, ...).
// Activations go from virtual stage s to s + 1 and their gradients from s + 1 back to s, so
// the last rank's chunk c feeds rank 0's chunk c + 1.
//
// Channels. Each (activation or gradient, from virtual stage, to virtual stage) pair is one
// FIFO channel: the k-th receive on it takes the k-th send. Every schedule here sends and
// receives each channel's micro-batches in ascending order, and the checker requires the
// micro-batch numbers of a receive and of the send it takes to agree, so an executor may give
// each channel one message stream (one tag) and agree shapes once.
//
// What the checker proves (checkSchedule), for any list of actions, not only the generated
// ones: every (virtual stage, micro-batch) has exactly one forward and exactly one backward
// (whole, or its input half before its weight half) on the rank that owns it, forward first;
// a non-first virtual stage receives the micro-batch's activation before its forward and a
// non-last one sends it after; a non-last virtual stage receives the output's gradient before
// its backward (input half) and a non-first one sends its input's gradient after; every send
// has its receive and the micro-batches agree; a synchronous schedule steps the optimizer once
// per rank, after all its compute, and an asynchronous one applies every micro-batch's
// gradient exactly once, by an update of its chunk after its backward (no optimizer step);
// and the ranks, running the lists with buffered sends and blocking receives, cannot deadlock
// (the simulation completes). It also measures, under given action costs, each rank's idle
// (bubble) fraction, its peak number of micro-batches holding their forward state (forward
// done, backward not), of micro-batches waiting for their W, and of weight versions alive.
//
// Thread-safety: plain values and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace chorus::parallel {

enum class PipeOp : uint8_t {
  kForward,         // run the chunk's layers on the micro-batch; keep what backward needs
  kBackward,        // the whole backward of the chunk for the micro-batch (input and weight gradients)
  kBackwardInput,   // B: only the gradient with respect to the chunk's input (what the previous stage waits for)
  kBackwardWeight,  // W: the weight gradients, later; frees the micro-batch's stored activations
  kSendActivation,  // the chunk's output for the micro-batch, to the next virtual stage
  kRecvActivation,  // the chunk's input for the micro-batch, from the previous virtual stage
  kSendGradient,    // the gradient of the chunk's input, to the previous virtual stage
  kRecvGradient,    // the gradient of the chunk's output, from the next virtual stage
  kOptimizerStep,   // after every gradient of the step is in (microBatch and chunk are -1)
  kWeightUpdate,    // asynchronous schedules: apply the chunk's gradients accumulated since its
                    // previous update (microBatch: the one whose backward completed them) and
                    // bump the chunk's weight version
};

// "F", "B", "W", "FB" (whole backward), "sendA", "recvA", "sendG", "recvG", "step", "update".
const char* opName(PipeOp op);

struct PipeAction {
  PipeOp op;
  int32_t microBatch;  // 0 .. m-1; -1 for kOptimizerStep
  int32_t chunk;       // 0 .. v-1, the rank's model chunk; -1 for kOptimizerStep
  bool operator==(const PipeAction&) const = default;
};

struct PipeSchedule {
  std::string name;       // "gpipe", "1f1b", "interleaved", "zb-h1", "pipedream", "2bw"
  int stages = 0;         // p, the pipeline ranks
  int microBatches = 0;   // m
  int chunks = 1;         // v, model chunks per rank
  // 0: synchronous (one kOptimizerStep per rank, after all its compute). k >= 1: asynchronous,
  // no flush: each rank updates its weights (kWeightUpdate) after the backward of every k-th
  // micro-batch and of the last, while later micro-batches are in flight.
  int updateEvery = 0;
  std::vector<std::vector<PipeAction>> ranks;  // [p]: each rank's actions, in order

  bool asynchronous() const { return updateEvery > 0; }

  int virtualStages() const { return stages * chunks; }
  int virtualStage(int rank, int chunk) const { return chunk * stages + rank; }
  int rankOf(int virtualStage) const { return virtualStage % stages; }
  int chunkOf(int virtualStage) const { return virtualStage / stages; }
};

// The schedule names makeSchedule knows, for errors and --help.
const std::vector<std::string>& scheduleNames();

// GPipe: every forward, then every backward (in reverse micro-batch order is not needed: each
// stage's backwards run in ascending order, as the gradients arrive). Stores m activations.
PipeSchedule gpipeSchedule(int stages, int microBatches);
// 1F1B (PipeDream-Flush): rank r runs min(p - r - 1, m) warm-up forwards, then alternates one
// forward and one backward, then drains the remaining backwards. Stores at most p - r.
PipeSchedule oneFOneBSchedule(int stages, int microBatches);
// Interleaved 1F1B with v chunks per rank: the forwards go in rounds of p micro-batches
// (the last round may be shorter), each round through chunk 0, 1, .., v-1; the backwards
// likewise through chunk v-1 .. 0. Rank r warms up with (p - r - 1) * 2 + (v - 1) * p
// forwards (Megatron's count), then alternates. Megatron needs m to be a multiple of p; other
// counts are padded with phantom micro-batches whose actions are dropped (the rest keeps its
// order and dependencies). Bubble (p - 1) / (v * m + p - 1) with equal chunks when m is a
// multiple of p.
PipeSchedule interleavedSchedule(int stages, int microBatches, int chunks);
// ZB-H1 (zero bubble at 1F1B's activation memory, Qi et al. 2023): the backward split into B
// (the input gradient, which the previous stage waits for) and W (the weight gradients). Rank
// r runs, for x = 0, 1, ..., m + p - 2, the forward of x, the B of x - (p - 1 - r) and the W of
// x - (p - 1), each where that micro-batch exists: 1F1B's warm-up and its bound of p - r
// micro-batches before their B, with r W's deferred into the time 1F1B leaves idle. A
// micro-batch between its B and its W keeps only what W needs (its linear layers' inputs and
// output gradients); at most r + 1 wait on rank r. Bubble about a third of 1F1B's when F, B
// and W cost the same.
PipeSchedule zeroBubbleH1Schedule(int stages, int microBatches);
// PipeDream's asynchronous 1F1B (Narayanan et al. 2019): 1F1B's order without the flush; each
// rank updates its weights right after each micro-batch's backward (updateEvery 1), so a
// micro-batch's forward and backward on rank r are r .. p - 1 updates apart. Correct gradients
// need weight stashing (the executor keeps the version each forward used for its backward):
// rank r holds up to p - r weight versions. Optionally vertical sync: every stage runs a
// micro-batch on the version the first stage used (PipelineOptions). Within one run (m
// micro-batches) the pipeline fills once and drains once: bubble (p - 1) / (m + p - 1) of the
// run, none in its steady state; a stream of runs (asyncSegment below) fills it only once.
PipeSchedule pipedreamSchedule(int stages, int microBatches);
// PipeDream-2BW (Narayanan et al. 2021): the same order, but gradients accumulate over
// updateEvery micro-batches before an update (the last group may be shorter). With updateEvery
// >= p at most two weight versions are alive on a rank (the double buffer).
PipeSchedule twoBufferedSchedule(int stages, int microBatches, int updateEvery);
// PipeDream without a flush (the executor's stream mode). An asynchronous schedule of m
// micro-batches per step also runs as a stream of segments, one per training step, with no
// flush between them: segment k holds rank r's forwards of micro-batches k m .. k m + m - 1
// (numbered from the stream's start) and the backwards and updates 1F1B's order puts between
// them, so the micro-batches a rank forwards last in a segment finish their backward in the
// next one, and the pipeline fills once per stream instead of once per step. The drain after
// K segments holds the backwards still in flight and the update of what they accumulated.
// Segments 0 .. K-1 followed by the drain are exactly the schedule of the same name for K m
// micro-batches (a test checks it), so checkSchedule's proof covers every stream. Both throw
// InvalidArgument for a synchronous or multi-chunk schedule, a rank outside it, or micro-batch
// numbers past 31 bits (a stream that long must be flushed sooner).
std::vector<PipeAction> asyncSegment(const PipeSchedule& s, int rank, int64_t segment);
std::vector<PipeAction> asyncDrain(const PipeSchedule& s, int rank, int64_t segments);
// By name: "gpipe", "1f1b", "interleaved" (uses chunks), "zb-h1", "pipedream", "2bw" (updates
// every `updateEvery` micro-batches; 0 means the stage count). InvalidArgument for another
// name, stages < 1, microBatches < 1, chunks < 1, chunks > 1 with a schedule other than
// "interleaved", or updateEvery < 0 (or > 0 with a schedule other than "2bw").
PipeSchedule makeSchedule(const std::string& name, int stages, int microBatches, int chunks = 1, int updateEvery = 0);

// ---- The checker ----

// What each compute action costs in the simulation (sends and receives cost nothing and a
// message arrives when it is sent; a whole backward costs backwardInput + backwardWeight).
struct SimCosts {
  double forward = 1;
  double backwardInput = 1;
  double backwardWeight = 1;
};

struct SimSpan {
  PipeAction action;
  double start, end;
};

struct SimResult {
  double makespan = 0;                   // the last rank's finish time
  std::vector<double> busy;              // [p] compute time per rank
  std::vector<double> bubble;            // [p] 1 - busy / makespan
  std::vector<int> peakActivations;      // [p] most (chunk, micro-batch) pairs forwarded and not yet
                                         //     through their backward (whole, or its B half)
  std::vector<int> peakDeferred;         // [p] most micro-batches between their B and their W
  std::vector<int> peakWeightVersions;   // [p] most weight versions alive at once with stashing: the
                                         //     latest, and each one a micro-batch in flight ran its
                                         //     forward on (1 for synchronous schedules)
  std::vector<std::vector<SimSpan>> timeline;  // [p] the compute actions as simulated

  double meanBubble() const;
};

// Proves the schedule sound (see the top of this file) and simulates it under `costs`.
// Throws InvalidArgument naming the rank, the action and what is wrong: a missing or repeated
// forward or backward, a backward before its forward, a send without its receive, micro-
// batches that disagree on a channel, or a deadlock (each stuck rank and what it waits for).
SimResult checkSchedule(const PipeSchedule& schedule, const SimCosts& costs = {});

// The theoretical bubble fraction of the generated schedules with equal stages (F = 1,
// B = W = 1): gpipe, 1f1b, pipedream and 2bw (p - 1) / (m + p - 1) (the asynchronous ones: of
// a run of m micro-batches, filled and drained once); interleaved (p - 1) / (v m + p - 1);
// zb-h1 (p - 1) / (3 m + p - 1).
double theoreticalBubble(const std::string& name, int stages, int microBatches, int chunks = 1);

// The schedule as a text grid: one row per rank, one column per time unit of the simulation,
// each cell the action there ("F3" forward of micro-batch 3; "B3", "W3", "b3" whole
// backward; chunk c > 0 as a suffix ".c"; "." idle), then each rank's bubble and peak
// stored activations. Made for unit costs; other costs are rounded to the grid.
std::string renderSchedule(const PipeSchedule& schedule, const SimResult& result);

}  // namespace chorus::parallel
