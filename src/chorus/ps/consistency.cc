// The bsp / asp / ssp rules of one parameter server as a state machine (see consistency.h).
//
// bsp keeps one open round, numbered by version(). A push basedOn == version counts in it;
// the push that brings the count to roundNeeds() closes it, and the round stays closed (later
// pushes for it are dropped as late, like backup workers' pushes) until onApplied() opens the
// next one. A worker may pull once version() has passed the round it last pushed to, so a
// counted worker waits for the round's update and a dropped one gets the newer parameters at
// once. asp and ssp apply every push; ssp only holds back pulls by workers more than s clocks
// ahead of the slowest live worker.
#include "chorus/ps/consistency.h"

#include <algorithm>

#include "chorus/common/error.h"

namespace chorus::ps {

Mode parseMode(const std::string& name) {
  if (name == "bsp") return Mode::kBsp;
  if (name == "asp") return Mode::kAsp;
  if (name == "ssp") return Mode::kSsp;
  throw InvalidArgument(str("unknown consistency mode '", name, "'; choose bsp, asp or ssp"));
}

const char* modeName(Mode mode) {
  switch (mode) {
    case Mode::kBsp: return "bsp";
    case Mode::kAsp: return "asp";
    case Mode::kSsp: return "ssp";
  }
  return "unknown";
}

Consistency::Consistency(ConsistencyOptions opts) : opts_(opts) {
  if (opts_.workers < 1) {
    throw InvalidArgument(str("consistency: workers = ", opts_.workers, "; need at least one"));
  }
  if (opts_.staleness < 0) {
    throw InvalidArgument(str("consistency: staleness = ", opts_.staleness, "; must be >= 0"));
  }
  if (opts_.backup < 0 || opts_.backup >= opts_.workers) {
    throw InvalidArgument(str("consistency: backup workers = ", opts_.backup, " with ", opts_.workers,
                              " workers; must lie in [0, ", opts_.workers, ")"));
  }
  if (opts_.backup > 0 && opts_.mode != Mode::kBsp) {
    throw InvalidArgument(str("consistency: backup workers (", opts_.backup, ") only apply to bsp, not ",
                              modeName(opts_.mode), "; set backup to 0"));
  }
  if (opts_.followRounds && opts_.mode != Mode::kBsp) {
    throw InvalidArgument(str("consistency: followRounds applies to bsp, not ", modeName(opts_.mode)));
  }
  lastRound_.assign(opts_.workers, -1);
  inRound_.assign(opts_.workers, 0);
  stats_.resize(opts_.workers);
}

static void checkWorker(int worker, int workers, const char* what) {
  if (worker < 0 || worker >= workers) {
    throw InvalidArgument(str("consistency ", what, ": worker ", worker, " out of range [0, ", workers, ")"));
  }
}

Consistency::PushDecision Consistency::onPush(int worker, int64_t basedOn, int64_t workerClock) {
  checkWorker(worker, opts_.workers, "push");
  WorkerStats& st = stats_[worker];
  if (st.left) {
    throw InvalidArgument(str("consistency push: worker ", worker, " has already left; ",
                              "a worker that said goodbye or failed must rejoin as a new job"));
  }
  if (basedOn < 0 || basedOn > version_) {
    throw InvalidArgument(str("consistency push: worker ", worker, " pushed a gradient based on version ",
                              basedOn, " but the server is at version ", version_,
                              "; push what was computed from the last pulled parameters"));
  }
  if (opts_.mode == Mode::kBsp && basedOn == version_ && lastRound_[worker] == version_) {
    throw InvalidArgument(str("consistency push: worker ", worker, " already pushed to round ", version_,
                              "; pull the round's parameters before pushing again"));
  }
  ++st.pushes;
  st.clock = std::max(st.clock + 1, workerClock);

  PushDecision d{Verdict::kApply};
  if (opts_.mode != Mode::kBsp) {
    d.staleness = version_ - basedOn;
    ++st.applied;
    st.maxStaleness = std::max(st.maxStaleness, d.staleness);
    st.sumStaleness += d.staleness;
    return d;
  }
  d.round = basedOn;
  lastRound_[worker] = basedOn;
  const bool closed = opts_.followRounds ? decided_ && members_[worker] == 0
                                         : roundPushes_ > 0 && roundPushes_ >= roundNeeds();
  if (basedOn < version_ || closed) {
    d.verdict = Verdict::kDrop;
    ++st.dropped;
    return d;
  }
  d.verdict = Verdict::kAggregate;
  ++st.applied;
  ++roundPushes_;
  inRound_[worker] = 1;
  d.closesRound = !opts_.followRounds && roundPushes_ >= roundNeeds();
  return d;
}

void Consistency::onApplied() {
  if (opts_.followRounds) {
    CHORUS_CHECK(roundReady(), "bsp onApplied() with round ", version_, " not ready (decided: ", decided_, ")");
    decided_ = false;
    members_.clear();
  } else if (opts_.mode == Mode::kBsp) {
    CHORUS_CHECK(roundPushes_ > 0 && roundPushes_ >= roundNeeds(), "bsp onApplied() with round ",
                 version_, " open (", roundPushes_, " of ", roundNeeds(), " pushes)");
  }
  roundPushes_ = 0;
  std::fill(inRound_.begin(), inRound_.end(), uint8_t{0});
  ++version_;
}

std::vector<uint8_t> Consistency::roundMembers() const { return inRound_; }

void Consistency::restoreClocks(const std::vector<int64_t>& clocks) {
  if (clocks.size() != static_cast<size_t>(opts_.workers)) {
    throw InvalidArgument(str("consistency: ", clocks.size(), " clocks for ", opts_.workers, " workers"));
  }
  for (size_t w = 0; w < clocks.size(); ++w) {
    if (clocks[w] < 0) throw InvalidArgument(str("consistency: worker ", w, " has a negative clock ", clocks[w]));
    stats_[w].clock = clocks[w];
  }
}

std::vector<int> Consistency::decideRound(const std::vector<uint8_t>& members) {
  if (!opts_.followRounds) throw InvalidArgument("consistency: decideRound() needs followRounds (bsp)");
  if (decided_) throw InvalidArgument(str("consistency: round ", version_, " is already decided"));
  if (members.size() != static_cast<size_t>(opts_.workers)) {
    throw InvalidArgument(str("consistency: a decision for ", members.size(), " workers, this server has ", opts_.workers));
  }
  decided_ = true;
  members_ = members;
  std::vector<int> dropped;
  for (int w = 0; w < opts_.workers; ++w) {
    if (inRound_[w] != 0 && members_[w] == 0) {
      inRound_[w] = 0;
      --roundPushes_;
      --stats_[w].applied;
      ++stats_[w].dropped;
      dropped.push_back(w);
    }
  }
  return dropped;
}

bool Consistency::roundReady() const {
  if (!decided_) return false;
  for (int w = 0; w < opts_.workers; ++w) {
    if (members_[w] != 0 && inRound_[w] == 0 && !stats_[w].left) return false;
  }
  return true;
}

int64_t Consistency::onRejoin(int worker) {
  checkWorker(worker, opts_.workers, "rejoin");
  WorkerStats& st = stats_[worker];
  if (!st.left || !st.failed) {
    throw InvalidArgument(str("consistency rejoin: worker ", worker, st.left ? " said goodbye" : " is live",
                              "; only a worker that failed can be taken over by a restarted process"));
  }
  st.left = false;
  st.failed = false;
  ++st.rejoins;
  return st.clock;
}

bool Consistency::canPull(int worker) const {
  checkWorker(worker, opts_.workers, "pull");
  switch (opts_.mode) {
    case Mode::kBsp: return version_ > lastRound_[worker];
    case Mode::kAsp: return true;
    case Mode::kSsp: return stats_[worker].clock - minLiveClock() <= opts_.staleness;
  }
  return false;
}

void Consistency::onPull(int worker) {
  checkWorker(worker, opts_.workers, "pull");
  WorkerStats& st = stats_[worker];
  st.maxClockGap = std::max(st.maxClockGap, st.clock - minLiveClock());
}

bool Consistency::onLeave(int worker, bool failed) {
  checkWorker(worker, opts_.workers, "leave");
  WorkerStats& st = stats_[worker];
  if (st.left) return false;  // a goodbye followed by the connection closing
  const bool wasOpen = roundPushes_ < roundNeeds();
  st.left = true;
  st.failed = failed;
  return opts_.mode == Mode::kBsp && !opts_.followRounds && wasOpen && roundPushes_ > 0 &&
         roundPushes_ >= roundNeeds();
}

void Consistency::onLostAfterLeave(int worker) {
  checkWorker(worker, opts_.workers, "lost after leave");
  WorkerStats& st = stats_[worker];
  if (!st.left) {
    throw InvalidArgument(str("consistency: worker ", worker, " is live; only a worker that said goodbye can be lost "
                              "after it"));
  }
  st.failed = true;
}

int Consistency::liveWorkers() const {
  return static_cast<int>(std::count_if(stats_.begin(), stats_.end(), [](const WorkerStats& s) { return !s.left; }));
}

int Consistency::roundNeeds() const {
  if (opts_.mode != Mode::kBsp) return 0;
  return std::min(opts_.workers - opts_.backup, liveWorkers());
}

int64_t Consistency::minLiveClock() const {
  int64_t lo = INT64_MAX, hi = 0;
  for (const WorkerStats& s : stats_) {
    if (!s.left) lo = std::min(lo, s.clock);
    hi = std::max(hi, s.clock);
  }
  return lo == INT64_MAX ? hi : lo;
}

}  // namespace chorus::ps
