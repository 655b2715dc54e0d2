// The consistency rules of one parameter server, as a state machine with no threads, no I/O
// and no parameters: the server asks it what to do with each push and when a worker's pull
// may be answered, and tells it when an update has been applied. The server serializes the
// calls (one small mutex; the parameter data has its own per-slice locks).
//
// Terms. version: updates applied on this server so far (bsp: rounds; asp/ssp: pushes).
// A push carries `basedOn`, the version of the parameters its gradient was computed from
// (what the worker last pulled). clock(w): pushes worker w has made.
//
//   mode  push                                              pull by w is answered when
//   bsp   counted in round `version` if basedOn == version;  version > the round w last
//         dropped if basedOn < version (late), or if the    pushed to (or was dropped from)
//         round already closed and awaits onApplied(). The
//         round closes at N - b counted pushes (b = backup
//         workers, 0 for plain bsp): the caller averages
//         them, applies, calls onApplied(). A second push
//         by w to the same round (without pulling) is
//         refused.
//   asp   applied at once; staleness = version - basedOn    always
//   ssp   applied at once, like asp                          clock(w) - min over the live
//                                                            workers' clocks <= s
//
// Workers that said goodbye or died ("left") no longer hold anyone back: ssp's minimum skips
// them; a bsp round then needs min(N - b, live workers) pushes, and with no live worker left
// there is nothing to wait for. A push basedOn > version is malformed (a version that does
// not exist yet) and is refused.
//
// A worker that died can come back (a restarted process, onRejoin): it is live again, at its
// own clock, so it skips none of its steps. Behind the others, it counts in bsp rounds from the
// one it pulls (finishing its last steps alone), and in ssp the others wait for it to come
// within s of them, as for any slow worker.
//
// Following rounds (followRounds, bsp with backup workers on every server but the
// coordinator): the round does not close on a count. Pushes basedOn == version are held as
// counted until decideRound(members) says which pushes form it (the coordinator's choice,
// protocol.h); the others are then dropped, and so is any later push to the round by a worker
// outside it. roundReady() says when every member's push is in (or the member left); the
// caller applies the members' average and calls onApplied().
//
// Instrumentation (stats()): per worker, pushes, applied and dropped pushes, staleness
// (max and sum, in updates, asp/ssp), and the largest clock gap clock(w) - min seen when one
// of its pulls was granted (ssp keeps it <= s; the tests check that).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace chorus::ps {

enum class Mode { kBsp, kAsp, kSsp };

// "bsp" | "asp" | "ssp"; throws InvalidArgument naming the choices otherwise.
Mode parseMode(const std::string& name);
const char* modeName(Mode mode);

struct ConsistencyOptions {
  Mode mode = Mode::kBsp;
  int workers = 1;    // N >= 1
  int staleness = 0;  // ssp: s >= 0
  int backup = 0;     // bsp: b in [0, N); a round closes after N - b pushes
  bool followRounds = false;  // bsp: rounds close by decideRound() only (see above)
};

struct WorkerStats {
  int64_t pushes = 0, applied = 0, dropped = 0;
  int64_t maxStaleness = 0, sumStaleness = 0;  // in updates, over applied asp/ssp pushes
  int64_t maxClockGap = 0;                     // at granted pulls
  int64_t clock = 0;
  int64_t rejoins = 0;                         // times a restarted process took its place
  bool left = false, failed = false;
};

class Consistency {
 public:
  // Throws InvalidArgument for workers < 1, staleness < 0, backup outside [0, workers), or
  // backup > 0 outside bsp.
  explicit Consistency(ConsistencyOptions opts);

  enum class Verdict { kApply, kAggregate, kDrop };
  struct PushDecision {
    Verdict verdict;
    int64_t round = 0;        // bsp: the round it counts in (or was computed for, if dropped)
    int64_t staleness = 0;    // asp/ssp: version - basedOn
    bool closesRound = false; // bsp: this push completes the round; apply it, then onApplied()
  };
  // Records a push by `worker` (clock + 1). Throws InvalidArgument for a worker out of range,
  // one that has left, basedOn outside [0, version()], or (bsp) a second push to the round w
  // already pushed to (the server answers with the message; a refused push changes nothing).
  // workerClock: the worker's own count of its pushes including this one (the header's clock;
  // -1: unknown); clock(w) becomes the larger of it and clock + 1, so a server that restarted
  // learns the workers' real counts from their next pushes.
  PushDecision onPush(int worker, int64_t basedOn, int64_t workerClock = -1);
  // The update (asp/ssp: one push; bsp: the round) is in the parameters: version + 1.
  // bsp: only after the round closed (closesRound or onLeave returned true); checked.
  void onApplied();
  // Whether worker's pending pull may be answered now.
  bool canPull(int worker) const;
  // Records a granted pull (for the clock-gap statistic).
  void onPull(int worker);
  // The worker said goodbye (failed = false) or its connection died (failed = true). In bsp,
  // returns true when this lets the open round close (fewer pushes are now needed, and at
  // least one was counted): the caller applies what it has, then calls onApplied(). A second
  // leave by the same worker changes nothing and returns false.
  bool onLeave(int worker, bool failed);
  // A worker that said goodbye but stayed connected for the final model (Server, the final
  // pull) died before the model came: from now on it counts as failed, so a restarted process
  // may take its place (onRejoin). Throws InvalidArgument for a worker that has not left.
  void onLostAfterLeave(int worker);
  // A restarted process took the place of `worker`, which failed: it is live again, and its
  // clock is returned (the worker resumes at that step). Throws InvalidArgument for a worker that did
  // not fail or is live.
  int64_t onRejoin(int worker);
  // Every worker's clock, as saved in a checkpoint (a restarted server resumes the counts).
  // Throws InvalidArgument for a list of the wrong size or a negative clock.
  void restoreClocks(const std::vector<int64_t>& clocks);

  // bsp: the workers whose pushes count in the open round so far (the coordinator's decision).
  std::vector<uint8_t> roundMembers() const;
  // followRounds: the coordinator's decision for the open round. Returns the workers whose
  // counted pushes it drops. Throws InvalidArgument outside followRounds, on a second decision
  // for the same round, or a members list of the wrong size.
  std::vector<int> decideRound(const std::vector<uint8_t>& members);
  // followRounds: the open round is decided and every member's push is in or the member left.
  bool roundReady() const;
  // followRounds: the decided round's members (empty before the decision).
  const std::vector<uint8_t>& decidedMembers() const { return members_; }

  int64_t version() const { return version_; }
  int liveWorkers() const;
  // bsp: pushes counted in the open round, and how many close it (0 outside bsp).
  int roundPushes() const { return roundPushes_; }
  int roundNeeds() const;
  const ConsistencyOptions& options() const { return opts_; }
  const std::vector<WorkerStats>& stats() const { return stats_; }
  // The lowest clock among live workers (the highest clock when none is live).
  int64_t minLiveClock() const;

 private:
  ConsistencyOptions opts_;
  int64_t version_ = 0;
  int roundPushes_ = 0;
  std::vector<int64_t> lastRound_;  // bsp: round each worker last pushed to; -1 before any
  std::vector<uint8_t> inRound_;    // bsp: counted in the open round
  std::vector<uint8_t> members_;    // followRounds: the decided round's members
  bool decided_ = false;            // followRounds: the open round is decided
  std::vector<WorkerStats> stats_;
};

}  // namespace chorus::ps
