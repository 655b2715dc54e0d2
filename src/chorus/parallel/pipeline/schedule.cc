// Pipeline schedules and their checker (see schedule.h).
#include "chorus/parallel/pipeline/schedule.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <map>
#include <sstream>
#include <utility>

#include "chorus/common/error.h"

namespace chorus::parallel {

namespace {

PipeAction act(PipeOp op, int mb, int chunk) { return {op, static_cast<int32_t>(mb), static_cast<int32_t>(chunk)}; }

void checkSizes(const char* what, int stages, int microBatches, int chunks) {
  if (stages < 1 || microBatches < 1 || chunks < 1)
    throw InvalidArgument(chorus::str(what, ": stages ", stages, ", micro-batches ", microBatches, " and chunks ", chunks,
                                      " must each be at least 1"));
}

PipeSchedule blank(const std::string& name, int stages, int microBatches, int chunks) {
  PipeSchedule s;
  s.name = name;
  s.stages = stages;
  s.microBatches = microBatches;
  s.chunks = chunks;
  s.ranks.resize(static_cast<size_t>(stages));
  return s;
}

// Appends a compute action of rank r with the receive it needs before and the send it makes
// after (see the channel rules in schedule.h).
void emitTo(const PipeSchedule& s, std::vector<PipeAction>& out, int r, PipeOp op, int mb, int chunk) {
  const int vs = s.virtualStage(r, chunk), last = s.virtualStages() - 1;
  switch (op) {
    case PipeOp::kForward:
      if (vs > 0) out.push_back(act(PipeOp::kRecvActivation, mb, chunk));
      out.push_back(act(op, mb, chunk));
      if (vs < last) out.push_back(act(PipeOp::kSendActivation, mb, chunk));
      break;
    case PipeOp::kBackward:
    case PipeOp::kBackwardInput:
      if (vs < last) out.push_back(act(PipeOp::kRecvGradient, mb, chunk));
      out.push_back(act(op, mb, chunk));
      if (vs > 0) out.push_back(act(PipeOp::kSendGradient, mb, chunk));
      break;
    case PipeOp::kBackwardWeight:
      out.push_back(act(op, mb, chunk));
      break;
    default:
      CHORUS_CHECK(false, "emit: ", opName(op), " is not a compute action");
  }
}

void emit(PipeSchedule& s, int r, PipeOp op, int mb, int chunk) {
  emitTo(s, s.ranks[static_cast<size_t>(r)], r, op, mb, chunk);
}

void finish(PipeSchedule& s) {
  for (auto& r : s.ranks) r.push_back(act(PipeOp::kOptimizerStep, -1, -1));
}

}  // namespace

const char* opName(PipeOp op) {
  switch (op) {
    case PipeOp::kForward: return "F";
    case PipeOp::kBackward: return "FB";
    case PipeOp::kBackwardInput: return "B";
    case PipeOp::kBackwardWeight: return "W";
    case PipeOp::kSendActivation: return "sendA";
    case PipeOp::kRecvActivation: return "recvA";
    case PipeOp::kSendGradient: return "sendG";
    case PipeOp::kRecvGradient: return "recvG";
    case PipeOp::kOptimizerStep: return "step";
    case PipeOp::kWeightUpdate: return "update";
  }
  return "?";
}

const std::vector<std::string>& scheduleNames() {
  static const std::vector<std::string> names = {"gpipe", "1f1b", "interleaved", "zb-h1", "pipedream", "2bw"};
  return names;
}

PipeSchedule gpipeSchedule(int stages, int microBatches) {
  checkSizes("gpipe schedule", stages, microBatches, 1);
  PipeSchedule s = blank("gpipe", stages, microBatches, 1);
  for (int r = 0; r < stages; ++r) {
    for (int i = 0; i < microBatches; ++i) emit(s, r, PipeOp::kForward, i, 0);
    for (int i = 0; i < microBatches; ++i) emit(s, r, PipeOp::kBackward, i, 0);
  }
  finish(s);
  return s;
}

PipeSchedule oneFOneBSchedule(int stages, int microBatches) {
  checkSizes("1f1b schedule", stages, microBatches, 1);
  PipeSchedule s = blank("1f1b", stages, microBatches, 1);
  for (int r = 0; r < stages; ++r) {
    const int warm = std::min(stages - r - 1, microBatches);
    int f = 0, b = 0;
    while (f < warm) emit(s, r, PipeOp::kForward, f++, 0);
    while (f < microBatches) {
      emit(s, r, PipeOp::kForward, f++, 0);
      emit(s, r, PipeOp::kBackward, b++, 0);
    }
    while (b < microBatches) emit(s, r, PipeOp::kBackward, b++, 0);
  }
  finish(s);
  return s;
}

PipeSchedule interleavedSchedule(int stages, int microBatches, int chunks) {
  checkSizes("interleaved schedule", stages, microBatches, chunks);
  PipeSchedule s = blank("interleaved", stages, microBatches, chunks);
  // Megatron's order needs whole rounds of p micro-batches. Other counts are padded with
  // phantom micro-batches up to a multiple of p, and the phantoms' actions are dropped: what
  // remains keeps every dependency and the order of the padded schedule, so it stays sound.
  const int padded = (microBatches + stages - 1) / stages * stages;
  // The (chunk, micro-batch) order of the forwards and of the backwards, the same on every rank.
  std::vector<std::pair<int, int>> fwd, bwd;
  for (int start = 0; start < padded; start += stages) {
    for (int c = 0; c < chunks; ++c)
      for (int i = start; i < start + stages; ++i) fwd.emplace_back(c, i);
    for (int c = chunks - 1; c >= 0; --c)
      for (int i = start; i < start + stages; ++i) bwd.emplace_back(c, i);
  }
  const int total = static_cast<int>(fwd.size());
  for (int r = 0; r < stages; ++r) {
    auto forward = [&](int k) {
      if (fwd[k].second < microBatches) emit(s, r, PipeOp::kForward, fwd[k].second, fwd[k].first);
    };
    auto backward = [&](int k) {
      if (bwd[k].second < microBatches) emit(s, r, PipeOp::kBackward, bwd[k].second, bwd[k].first);
    };
    const int warm = std::min((stages - r - 1) * 2 + (chunks - 1) * stages, total);
    int f = 0, b = 0;
    while (f < warm) forward(f++);
    while (f < total) {
      forward(f++);
      backward(b++);
    }
    while (b < total) backward(b++);
  }
  finish(s);
  return s;
}

PipeSchedule zeroBubbleH1Schedule(int stages, int microBatches) {
  checkSizes("zb-h1 schedule", stages, microBatches, 1);
  PipeSchedule s = blank("zb-h1", stages, microBatches, 1);
  const int p = stages, m = microBatches;
  // Qi et al.'s ZB-H1 on rank r: the forward of x, the B of x - (p - 1 - r) and the W of
  // x - (p - 1), for x = 0, 1, ..., m + p - 2, each where its micro-batch exists. So rank r
  // warms up with p - 1 - r forwards (1F1B's), keeps at most p - r micro-batches before their
  // B, and defers r W's to fill what 1F1B leaves idle at the end.
  for (int r = 0; r < p; ++r) {
    for (int x = 0; x < m + p - 1; ++x) {
      const int b = x - (p - 1 - r), w = x - (p - 1);
      if (x < m) emit(s, r, PipeOp::kForward, x, 0);
      if (b >= 0 && b < m) emit(s, r, PipeOp::kBackwardInput, b, 0);
      if (w >= 0 && w < m) emit(s, r, PipeOp::kBackwardWeight, w, 0);
    }
  }
  finish(s);
  return s;
}

namespace {

// 1F1B's order without the flush, on rank r: the backward of micro-batch b, then an update
// after every `every`-th micro-batch and after the last of a run of `total` (-1: unknown yet,
// a stream's segment).
void asyncBackward(const PipeSchedule& s, std::vector<PipeAction>& out, int r, int b, int64_t total) {
  emitTo(s, out, r, PipeOp::kBackward, b, 0);
  if ((b + 1) % s.updateEvery == 0 || b == total - 1) out.push_back(act(PipeOp::kWeightUpdate, b, 0));
}

// The forwards of micro-batches [begin, end), each followed by the backward 1F1B puts after it
// once rank r's p - r - 1 warm-up forwards are done.
void asyncForwards(const PipeSchedule& s, std::vector<PipeAction>& out, int r, int begin, int end) {
  const int warm = s.stages - r - 1;
  for (int f = begin; f < end; ++f) {
    emitTo(s, out, r, PipeOp::kForward, f, 0);
    if (f >= warm) asyncBackward(s, out, r, f - warm, -1);
  }
}

// What is left after the forwards of micro-batches [0, total): the backwards still in flight
// and the update of what they accumulated (on a rank with none in flight, the update the last
// backward did not make).
void asyncDrainTo(const PipeSchedule& s, std::vector<PipeAction>& out, int r, int total) {
  const int warm = std::min(s.stages - r - 1, total);
  if (warm == 0 && total % s.updateEvery != 0) out.push_back(act(PipeOp::kWeightUpdate, total - 1, 0));
  for (int b = total - warm; b < total; ++b) asyncBackward(s, out, r, b, total);
}

PipeSchedule asyncOneFOneB(const std::string& name, int stages, int microBatches, int every) {
  PipeSchedule s = blank(name, stages, microBatches, 1);
  s.updateEvery = every;
  for (int r = 0; r < stages; ++r) {
    asyncForwards(s, s.ranks[static_cast<size_t>(r)], r, 0, microBatches);
    asyncDrainTo(s, s.ranks[static_cast<size_t>(r)], r, microBatches);
  }
  return s;
}

void checkStreamable(const PipeSchedule& s, int rank, int64_t segments, const char* what) {
  if (!s.asynchronous() || s.chunks != 1)
    throw InvalidArgument(chorus::str(what, ": schedule \"", s.name, "\" is not an asynchronous one-chunk schedule (pipedream, 2bw); ",
                                      "only those run as a stream without a flush"));
  if (rank < 0 || rank >= s.stages)
    throw InvalidArgument(chorus::str(what, ": rank ", rank, " is not one of the schedule's ", s.stages, " stages"));
  if (segments < 0 || segments > std::numeric_limits<int32_t>::max() / s.microBatches)
    throw InvalidArgument(chorus::str(what, ": segment ", segments, " of ", s.microBatches,
                                      " micro-batches is out of range (micro-batch numbers must fit 31 bits; flush sooner)"));
}

}  // namespace

PipeSchedule pipedreamSchedule(int stages, int microBatches) {
  checkSizes("pipedream schedule", stages, microBatches, 1);
  return asyncOneFOneB("pipedream", stages, microBatches, 1);
}

PipeSchedule twoBufferedSchedule(int stages, int microBatches, int updateEvery) {
  checkSizes("2bw schedule", stages, microBatches, 1);
  if (updateEvery < 1)
    throw InvalidArgument(chorus::str("2bw schedule: updateEvery ", updateEvery, " must be at least 1"));
  return asyncOneFOneB("2bw", stages, microBatches, updateEvery);
}

std::vector<PipeAction> asyncSegment(const PipeSchedule& s, int rank, int64_t segment) {
  checkStreamable(s, rank, segment + 1, "asyncSegment");
  std::vector<PipeAction> out;
  const int m = s.microBatches, begin = static_cast<int>(segment) * m;
  asyncForwards(s, out, rank, begin, begin + m);
  return out;
}

std::vector<PipeAction> asyncDrain(const PipeSchedule& s, int rank, int64_t segments) {
  checkStreamable(s, rank, segments, "asyncDrain");
  std::vector<PipeAction> out;
  if (segments > 0) asyncDrainTo(s, out, rank, static_cast<int>(segments) * s.microBatches);
  return out;
}

PipeSchedule makeSchedule(const std::string& name, int stages, int microBatches, int chunks, int updateEvery) {
  if (chunks != 1 && name != "interleaved")
    throw InvalidArgument(chorus::str("schedule \"", name, "\" runs one model chunk per rank; ", chunks,
                                      " chunks (virtual stages per rank) need schedule \"interleaved\""));
  if (updateEvery < 0 || (updateEvery > 0 && name != "2bw"))
    throw InvalidArgument(chorus::str("schedule \"", name, "\": updateEvery ", updateEvery,
                                      " is for schedule \"2bw\" (0 = one update per stage count of micro-batches)"));
  if (name == "gpipe") return gpipeSchedule(stages, microBatches);
  if (name == "1f1b") return oneFOneBSchedule(stages, microBatches);
  if (name == "interleaved") return interleavedSchedule(stages, microBatches, chunks);
  if (name == "zb-h1") return zeroBubbleH1Schedule(stages, microBatches);
  if (name == "pipedream") return pipedreamSchedule(stages, microBatches);
  if (name == "2bw") return twoBufferedSchedule(stages, microBatches, updateEvery > 0 ? updateEvery : stages);
  std::string known;
  for (const auto& n : scheduleNames()) known += (known.empty() ? "" : ", ") + n;
  throw InvalidArgument(chorus::str("unknown pipeline schedule \"", name, "\"; the schedules are ", known));
}

double theoreticalBubble(const std::string& name, int stages, int microBatches, int chunks) {
  const double p = stages, m = microBatches, v = chunks;
  if (name == "gpipe" || name == "1f1b" || name == "pipedream" || name == "2bw") return (p - 1) / (m + p - 1);
  if (name == "interleaved") return (p - 1) / (v * m + p - 1);
  if (name == "zb-h1") return (p - 1) / (3 * m + p - 1);
  throw InvalidArgument(chorus::str("theoreticalBubble: unknown schedule \"", name, "\""));
}

double SimResult::meanBubble() const {
  if (bubble.empty()) return 0;
  double s = 0;
  for (double b : bubble) s += b;
  return s / static_cast<double>(bubble.size());
}

// ---- the checker ----

namespace {

std::string describe(const PipeSchedule& s, int rank, const PipeAction& a) {
  if (a.op == PipeOp::kOptimizerStep) return chorus::str("rank ", rank, " ", opName(a.op));
  std::string where = s.chunks > 1 ? chorus::str(" chunk ", a.chunk, " (virtual stage ", s.virtualStage(rank, a.chunk), ")")
                                   : std::string();
  return chorus::str("rank ", rank, " ", opName(a.op), " of micro-batch ", a.microBatch, where);
}

struct UnitState {
  bool recvA = false, fwd = false, sendA = false, recvG = false, bwdInput = false, bwdWeight = false, whole = false,
       sendG = false, applied = false;
};

// The per-rank rules that need no other rank: ranges, exactly-once, order on the rank.
void checkRank(const PipeSchedule& s, int r) {
  const int v = s.chunks, m = s.microBatches, last = s.virtualStages() - 1;
  std::vector<UnitState> st(static_cast<size_t>(v * m));
  bool stepped = false;
  // Asynchronous: per chunk, the micro-batches whose backward is complete and whose gradient
  // no update has applied yet.
  std::vector<std::vector<int>> pending(static_cast<size_t>(v));
  auto fail = [&](const PipeAction& a, const std::string& why) {
    throw InvalidArgument(chorus::str("pipeline schedule \"", s.name, "\" (", s.stages, " stages, ", m,
                                      " micro-batches): ", describe(s, r, a), ": ", why));
  };
  for (const PipeAction& a : s.ranks[static_cast<size_t>(r)]) {
    if (a.op == PipeOp::kOptimizerStep) {
      if (s.asynchronous()) fail(a, "an asynchronous schedule updates its weights per micro-batch, not in one optimizer step");
      if (stepped) fail(a, "the optimizer steps twice in one schedule");
      stepped = true;
      continue;
    }
    if (a.chunk < 0 || a.chunk >= v) fail(a, chorus::str("chunk ", a.chunk, " does not exist (chunks 0..", v - 1, ")"));
    if (a.microBatch < 0 || a.microBatch >= m)
      fail(a, chorus::str("micro-batch ", a.microBatch, " does not exist (0..", m - 1, ")"));
    if (stepped) fail(a, "comes after the optimizer step");
    UnitState& u = st[static_cast<size_t>(a.chunk * m + a.microBatch)];
    std::vector<int>& waiting = pending[static_cast<size_t>(a.chunk)];
    // The backward that completes a micro-batch's gradient (whole, or its W half).
    const bool completes = a.op == PipeOp::kBackward || a.op == PipeOp::kBackwardWeight;
    const int vs = s.virtualStage(r, a.chunk);
    const bool backwardDone = u.whole || u.bwdInput;
    switch (a.op) {
      case PipeOp::kRecvActivation:
        if (vs == 0) fail(a, "the first virtual stage takes the batch, not an activation");
        if (u.recvA) fail(a, "the activation is received twice");
        u.recvA = true;
        break;
      case PipeOp::kForward:
        if (u.fwd) fail(a, "a second forward");
        if (vs > 0 && !u.recvA) fail(a, "the forward comes before its input was received");
        u.fwd = true;
        break;
      case PipeOp::kSendActivation:
        if (vs == last) fail(a, "the last virtual stage has no next stage to send to");
        if (!u.fwd) fail(a, "the activation is sent before the forward made it");
        if (u.sendA) fail(a, "the activation is sent twice");
        u.sendA = true;
        break;
      case PipeOp::kRecvGradient:
        if (vs == last) fail(a, "the last virtual stage computes its gradient from the loss, it receives none");
        if (u.recvG) fail(a, "the gradient is received twice");
        u.recvG = true;
        break;
      case PipeOp::kBackward:
      case PipeOp::kBackwardInput:
        if (!u.fwd) fail(a, "the backward comes before its forward");
        if (backwardDone) fail(a, "a second backward");
        if (vs < last && !u.recvG) fail(a, "the backward comes before the output's gradient was received");
        (a.op == PipeOp::kBackward ? u.whole : u.bwdInput) = true;
        break;
      case PipeOp::kBackwardWeight:
        if (u.whole) fail(a, "a weight-gradient half after a whole backward");
        if (!u.bwdInput) fail(a, "the weight-gradient half comes before the input-gradient half");
        if (u.bwdWeight) fail(a, "a second weight-gradient half");
        u.bwdWeight = true;
        break;
      case PipeOp::kSendGradient:
        if (vs == 0) fail(a, "the first virtual stage has no previous stage to send a gradient to");
        if (!backwardDone) fail(a, "the gradient is sent before the backward made it");
        if (u.sendG) fail(a, "the gradient is sent twice");
        u.sendG = true;
        break;
      case PipeOp::kWeightUpdate: {
        if (!s.asynchronous()) fail(a, "a synchronous schedule steps the optimizer once, it has no per-micro-batch updates");
        if (std::find(waiting.begin(), waiting.end(), a.microBatch) == waiting.end())
          fail(a, u.applied ? "the micro-batch's gradient was already applied"
                            : "the update comes before the micro-batch's backward completed its gradient");
        for (int i : waiting) st[static_cast<size_t>(a.chunk * m + i)].applied = true;
        waiting.clear();
        break;
      }
      case PipeOp::kOptimizerStep:
        break;
    }
    if (completes && s.asynchronous()) waiting.push_back(a.microBatch);
  }
  for (int c = 0; c < v; ++c) {
    for (int i = 0; i < m; ++i) {
      const UnitState& u = st[static_cast<size_t>(c * m + i)];
      const int vs = s.virtualStage(r, c);
      std::string missing;
      if (!u.fwd) missing = "its forward";
      else if (!u.whole && !u.bwdInput) missing = "its backward";
      else if (u.bwdInput && !u.bwdWeight) missing = "the weight-gradient half of its backward";
      else if (vs > 0 && !u.recvA) missing = "the receive of its input";
      else if (vs < last && !u.sendA) missing = "the send of its output";
      else if (vs < last && !u.recvG) missing = "the receive of its output's gradient";
      else if (vs > 0 && !u.sendG) missing = "the send of its input's gradient";
      else if (s.asynchronous() && !u.applied) missing = "an update that applies its gradient";
      if (!missing.empty()) {
        const std::string where = v > 1 ? chorus::str(" chunk ", c, " (virtual stage ", vs, ")") : std::string();
        throw InvalidArgument(chorus::str("pipeline schedule \"", s.name, "\": micro-batch ", i, " on rank ", r, where,
                                          " never gets ", missing));
      }
    }
  }
  if (!stepped && !s.asynchronous())
    throw InvalidArgument(chorus::str("pipeline schedule \"", s.name, "\": rank ", r, " never steps the optimizer"));
}

}  // namespace

SimResult checkSchedule(const PipeSchedule& s, const SimCosts& costs) {
  if (s.stages < 1 || s.microBatches < 1 || s.chunks < 1 || s.updateEvery < 0 ||
      static_cast<int>(s.ranks.size()) != s.stages)
    throw InvalidArgument(chorus::str("pipeline schedule \"", s.name, "\": ", s.stages, " stages, ", s.microBatches,
                                      " micro-batches, ", s.chunks, " chunks and ", s.ranks.size(),
                                      " action lists; need at least 1 of each and one list per stage"));
  if (!(costs.forward >= 0 && costs.backwardInput >= 0 && costs.backwardWeight >= 0))
    throw InvalidArgument("checkSchedule: action costs must be >= 0");
  for (int r = 0; r < s.stages; ++r) checkRank(s, r);

  // Run the lists: sends are buffered, receives block until their message was sent.
  const int p = s.stages;
  struct Message {
    int microBatch;
    double sentAt;
    int rank;
  };
  // Channel: (0 activation / 1 gradient, the sending virtual stage).
  std::map<std::pair<int, int>, std::deque<Message>> channels;
  std::vector<size_t> pc(static_cast<size_t>(p), 0);
  std::vector<double> clock(static_cast<size_t>(p), 0);
  std::vector<int> held(static_cast<size_t>(p), 0), deferred(static_cast<size_t>(p), 0);
  SimResult res;
  res.busy.assign(static_cast<size_t>(p), 0);
  res.peakActivations.assign(static_cast<size_t>(p), 0);
  res.peakDeferred.assign(static_cast<size_t>(p), 0);
  res.peakWeightVersions.assign(static_cast<size_t>(p), 1);
  res.timeline.resize(static_cast<size_t>(p));
  // Weight versions, per rank: each chunk's current version, and the version each micro-batch
  // ran its forward on while it waits for its backward (input half); -1 when not in flight.
  const int units = s.chunks * s.microBatches;
  std::vector<std::vector<int>> version(static_cast<size_t>(p), std::vector<int>(static_cast<size_t>(s.chunks), 0));
  std::vector<std::vector<int>> inFlight(static_cast<size_t>(p), std::vector<int>(static_cast<size_t>(units), -1));
  auto countVersions = [&](int r) {
    int live = 0;
    for (int c = 0; c < s.chunks; ++c) {
      std::vector<int> seen = {version[static_cast<size_t>(r)][static_cast<size_t>(c)]};
      for (int i = 0; i < s.microBatches; ++i) {
        const int fv = inFlight[static_cast<size_t>(r)][static_cast<size_t>(c * s.microBatches + i)];
        if (fv >= 0 && std::find(seen.begin(), seen.end(), fv) == seen.end()) seen.push_back(fv);
      }
      live += static_cast<int>(seen.size());
    }
    int& peak = res.peakWeightVersions[static_cast<size_t>(r)];
    peak = std::max(peak, live);
  };
  bool progress = true;
  while (progress) {
    progress = false;
    for (int r = 0; r < p; ++r) {
      const auto& list = s.ranks[static_cast<size_t>(r)];
      size_t& i = pc[static_cast<size_t>(r)];
      double& now = clock[static_cast<size_t>(r)];
      while (i < list.size()) {
        const PipeAction& a = list[i];
        const int vs = a.chunk >= 0 ? s.virtualStage(r, a.chunk) : -1;
        bool blocked = false;
        switch (a.op) {
          case PipeOp::kSendActivation:
          case PipeOp::kSendGradient:
            channels[{a.op == PipeOp::kSendActivation ? 0 : 1, vs}].push_back({a.microBatch, now, r});
            break;
          case PipeOp::kRecvActivation:
          case PipeOp::kRecvGradient: {
            const bool activation = a.op == PipeOp::kRecvActivation;
            auto& q = channels[{activation ? 0 : 1, activation ? vs - 1 : vs + 1}];
            if (q.empty()) {
              blocked = true;
              break;
            }
            const Message msg = q.front();
            if (msg.microBatch != a.microBatch)
              throw InvalidArgument(chorus::str(
                  "pipeline schedule \"", s.name, "\": ", describe(s, r, a), " takes the next message of its channel, ",
                  "which rank ", msg.rank, " sent for micro-batch ", msg.microBatch,
                  ": each channel must send and receive its micro-batches in the same order"));
            q.pop_front();
            now = std::max(now, msg.sentAt);
            break;
          }
          case PipeOp::kForward:
          case PipeOp::kBackward:
          case PipeOp::kBackwardInput:
          case PipeOp::kBackwardWeight: {
            double cost = costs.forward;
            if (a.op == PipeOp::kBackward) cost = costs.backwardInput + costs.backwardWeight;
            if (a.op == PipeOp::kBackwardInput) cost = costs.backwardInput;
            if (a.op == PipeOp::kBackwardWeight) cost = costs.backwardWeight;
            res.timeline[static_cast<size_t>(r)].push_back({a, now, now + cost});
            now += cost;
            res.busy[static_cast<size_t>(r)] += cost;
            int& h = held[static_cast<size_t>(r)];
            int& d = deferred[static_cast<size_t>(r)];
            int& fv = inFlight[static_cast<size_t>(r)][static_cast<size_t>(a.chunk * s.microBatches + a.microBatch)];
            if (a.op == PipeOp::kForward) {
              h += 1;
              fv = version[static_cast<size_t>(r)][static_cast<size_t>(a.chunk)];
            }
            if (a.op == PipeOp::kBackward || a.op == PipeOp::kBackwardInput) {
              h -= 1;
              fv = -1;
            }
            countVersions(r);
            if (a.op == PipeOp::kBackwardInput) d += 1;
            if (a.op == PipeOp::kBackwardWeight) d -= 1;
            res.peakActivations[static_cast<size_t>(r)] = std::max(res.peakActivations[static_cast<size_t>(r)], h);
            res.peakDeferred[static_cast<size_t>(r)] = std::max(res.peakDeferred[static_cast<size_t>(r)], d);
            break;
          }
          case PipeOp::kWeightUpdate:
            ++version[static_cast<size_t>(r)][static_cast<size_t>(a.chunk)];
            countVersions(r);
            break;
          case PipeOp::kOptimizerStep:
            break;
        }
        if (blocked) break;
        ++i;
        progress = true;
      }
    }
  }
  std::string stuck;
  for (int r = 0; r < p; ++r) {
    const auto& list = s.ranks[static_cast<size_t>(r)];
    if (pc[static_cast<size_t>(r)] < list.size())
      stuck += chorus::str(stuck.empty() ? "" : "; ", describe(s, r, list[pc[static_cast<size_t>(r)]]),
                           " waits for a message never sent");
  }
  if (!stuck.empty())
    throw InvalidArgument(chorus::str("pipeline schedule \"", s.name, "\" deadlocks: ", stuck));
  for (const auto& [key, q] : channels) {
    if (!q.empty())
      throw InvalidArgument(chorus::str("pipeline schedule \"", s.name, "\": rank ", q.front().rank, " sends the ",
                                        key.first == 0 ? "activation" : "gradient", " of micro-batch ",
                                        q.front().microBatch, " that no rank receives"));
  }
  for (double c : clock) res.makespan = std::max(res.makespan, c);
  res.bubble.resize(static_cast<size_t>(p));
  for (int r = 0; r < p; ++r)
    res.bubble[static_cast<size_t>(r)] = res.makespan > 0 ? 1 - res.busy[static_cast<size_t>(r)] / res.makespan : 0;
  return res;
}

std::string renderSchedule(const PipeSchedule& s, const SimResult& res) {
  const int width = static_cast<int>(std::lround(res.makespan));
  std::vector<std::vector<std::string>> grid(static_cast<size_t>(s.stages),
                                             std::vector<std::string>(static_cast<size_t>(std::max(width, 0)), "."));
  size_t cell = 1;
  for (int r = 0; r < s.stages; ++r) {
    for (const SimSpan& sp : res.timeline[static_cast<size_t>(r)]) {
      const char* tag = "?";
      switch (sp.action.op) {
        case PipeOp::kForward: tag = "F"; break;
        case PipeOp::kBackward: tag = "b"; break;
        case PipeOp::kBackwardInput: tag = "B"; break;
        case PipeOp::kBackwardWeight: tag = "W"; break;
        default: break;
      }
      std::string label = chorus::str(tag, sp.action.microBatch);
      if (s.chunks > 1) label += chorus::str(".", sp.action.chunk);
      cell = std::max(cell, label.size());
      const long a = std::lround(sp.start), b = std::max(a + 1, std::lround(sp.end));
      for (long t = a; t < b && t < width; ++t) grid[static_cast<size_t>(r)][static_cast<size_t>(t)] = label;
    }
  }
  std::ostringstream os;
  os << "schedule " << s.name << ": " << s.stages << " stages, " << s.microBatches << " micro-batches";
  if (s.chunks > 1) os << ", " << s.chunks << " chunks per rank";
  if (s.asynchronous()) os << ", asynchronous: weights updated after every " << (s.updateEvery == 1 ? std::string("micro-batch's backward") : chorus::str(s.updateEvery, " micro-batches' backwards")) << " (not drawn)";
  os << "; one column per time unit (F forward, B input gradient, W weight gradient, b whole backward";
  if (s.chunks > 1) os << ", .c the model chunk";
  os << ", . idle)\n";
  for (int r = 0; r < s.stages; ++r) {
    os << "rank " << r << " |";
    for (const std::string& c : grid[static_cast<size_t>(r)]) os << ' ' << c << std::string(cell - c.size(), ' ');
    os << " |\n";
  }
  os << "time " << res.makespan << "; bubble";
  for (int r = 0; r < s.stages; ++r) os << (r ? ", " : " ") << std::lround(100 * res.bubble[static_cast<size_t>(r)]) << "%";
  os << " (mean " << std::lround(100 * res.meanBubble()) << "%); peak stored activations";
  for (int r = 0; r < s.stages; ++r) os << (r ? ", " : " ") << res.peakActivations[static_cast<size_t>(r)];
  if (s.asynchronous()) {
    os << "; peak weight versions (stashed)";
    for (int r = 0; r < s.stages; ++r) os << (r ? ", " : " ") << res.peakWeightVersions[static_cast<size_t>(r)];
  }
  bool anyDeferred = false;
  for (int d : res.peakDeferred) anyDeferred = anyDeferred || d > 0;
  if (anyDeferred) {
    os << "; peak deferred weight gradients";
    for (int r = 0; r < s.stages; ++r) os << (r ? ", " : " ") << res.peakDeferred[static_cast<size_t>(r)];
  }
  os << "\n";
  return os.str();
}

}  // namespace chorus::parallel
