// The consistency state machine: bsp rounds, backup workers, asp staleness, ssp's clock bound
// on a schedule with one slow worker, workers leaving or failing, the errors, and random
// interleavings of workers following the protocol (push based on the last pulled version,
// pull when allowed) checked against each mode's invariants.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>

#include "chorus/common/error.h"
#include "chorus/ps/consistency.h"

namespace chorus::ps {
namespace {

using Verdict = Consistency::Verdict;

ConsistencyOptions options(Mode mode, int workers, int staleness = 0, int backup = 0) {
  ConsistencyOptions o;
  o.mode = mode;
  o.workers = workers;
  o.staleness = staleness;
  o.backup = backup;
  return o;
}

std::string errorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "no InvalidArgument";
}

TEST(ConsistencyTest, BspRounds) {
  Consistency c(options(Mode::kBsp, 3));
  EXPECT_EQ(c.roundNeeds(), 3);
  for (int round = 0; round < 3; ++round) {
    for (int w = 0; w < 3; ++w) EXPECT_TRUE(c.canPull(w)) << "round " << round;
    for (int w = 0; w < 3; ++w) {
      const auto d = c.onPush(w, round);
      EXPECT_EQ(d.verdict, Verdict::kAggregate);
      EXPECT_EQ(d.round, round);
      EXPECT_EQ(d.closesRound, w == 2);
      EXPECT_EQ(c.roundPushes(), w + 1);
      EXPECT_FALSE(c.canPull(w)) << "pulled before round " << round << " was applied";
    }
    EXPECT_EQ(c.version(), round);
    c.onApplied();
    EXPECT_EQ(c.version(), round + 1);
    EXPECT_EQ(c.roundPushes(), 0);
    for (int w = 0; w < 3; ++w) c.onPull(w);
  }
  EXPECT_EQ(c.stats()[1].pushes, 3);
  EXPECT_EQ(c.stats()[1].applied, 3);
  EXPECT_EQ(c.stats()[1].clock, 3);
  // Pushing twice to one round without pulling is a protocol error.
  c.onPush(0, 3);
  EXPECT_NE(errorOf([&] { c.onPush(0, 3); }).find("already pushed to round 3"), std::string::npos);
}

TEST(ConsistencyTest, BspBackupWorkers) {
  Consistency c(options(Mode::kBsp, 4, 0, 1));
  EXPECT_EQ(c.roundNeeds(), 3);
  EXPECT_FALSE(c.onPush(0, 0).closesRound);
  EXPECT_FALSE(c.onPush(2, 0).closesRound);
  EXPECT_TRUE(c.onPush(3, 0).closesRound);
  c.onApplied();
  // Worker 1 was the slowest: its push, based on round 0, is dropped; it may pull at once.
  const auto late = c.onPush(1, 0);
  EXPECT_EQ(late.verdict, Verdict::kDrop);
  EXPECT_EQ(late.round, 0);
  EXPECT_EQ(c.roundPushes(), 0);
  EXPECT_TRUE(c.canPull(1));
  EXPECT_TRUE(c.canPull(0));
  EXPECT_EQ(c.stats()[1].dropped, 1);
  EXPECT_EQ(c.stats()[1].applied, 0);
  EXPECT_EQ(c.stats()[1].pushes, 1);

  // Round 1: a push that arrives after the round closed but before its update is applied is
  // dropped too, and that worker waits for the update like the others.
  for (int w : {1, 2, 0}) c.onPush(w, 1);
  const auto afterClose = c.onPush(3, 1);
  EXPECT_EQ(afterClose.verdict, Verdict::kDrop);
  EXPECT_EQ(afterClose.round, 1);
  EXPECT_FALSE(c.canPull(3));
  c.onApplied();
  for (int w = 0; w < 4; ++w) EXPECT_TRUE(c.canPull(w));
  EXPECT_EQ(c.stats()[3].dropped, 1);
  EXPECT_EQ(c.version(), 2);
}

TEST(ConsistencyTest, AspAlwaysPullableAndCountsStaleness) {
  Consistency c(options(Mode::kAsp, 2));
  EXPECT_EQ(c.roundNeeds(), 0);
  // Worker 0 is fast: three pushes while worker 1 computes from version 0.
  for (int64_t v = 0; v < 3; ++v) {
    const auto d = c.onPush(0, v);
    EXPECT_EQ(d.verdict, Verdict::kApply);
    EXPECT_EQ(d.staleness, 0);
    c.onApplied();
    EXPECT_TRUE(c.canPull(0));
    EXPECT_TRUE(c.canPull(1));
  }
  EXPECT_EQ(c.onPush(1, 0).staleness, 3);
  c.onApplied();
  EXPECT_EQ(c.onPush(1, 2).staleness, 2);
  c.onApplied();
  EXPECT_EQ(c.version(), 5);
  EXPECT_EQ(c.stats()[1].maxStaleness, 3);
  EXPECT_EQ(c.stats()[1].sumStaleness, 5);
  EXPECT_EQ(c.stats()[1].applied, 2);
  EXPECT_EQ(c.stats()[0].sumStaleness, 0);
}

// Three workers; worker 2 acts only every third tick. Every tick a worker either pushes (based
// on what it pulled) or asks to pull. The test keeps its own clocks and checks that a pull is
// granted exactly when the worker's clock is at most s ahead of the slowest.
TEST(ConsistencyTest, SspBoundsTheClockGap) {
  for (int s : {0, 1, 2}) {
    SCOPED_TRACE(::testing::Message() << "staleness " << s);
    Consistency c(options(Mode::kSsp, 3, s));
    int64_t clock[3] = {0, 0, 0}, pulled[3] = {0, 0, 0};
    bool wantsPull[3] = {false, false, false};
    int blocked[3] = {0, 0, 0};
    for (int tick = 0; tick < 60; ++tick) {
      for (int w = 0; w < 3; ++w) {
        if (w == 2 && tick % 3 != 0) continue;
        if (!wantsPull[w]) {
          c.onPush(w, pulled[w]);
          c.onApplied();
          ++clock[w];
          wantsPull[w] = true;
          continue;
        }
        const int64_t gap = clock[w] - std::min({clock[0], clock[1], clock[2]});
        ASSERT_EQ(c.canPull(w), gap <= s) << "tick " << tick << " worker " << w << " gap " << gap;
        if (gap > s) {
          ++blocked[w];
          continue;
        }
        c.onPull(w);
        pulled[w] = c.version();
        wantsPull[w] = false;
      }
    }
    EXPECT_GT(blocked[0], 0);  // the fast workers did wait for the slow one
    EXPECT_GT(blocked[1], 0);
    EXPECT_EQ(blocked[2], 0);  // the slowest never waits
    for (int w = 0; w < 3; ++w) {
      EXPECT_EQ(c.stats()[w].clock, clock[w]);
      EXPECT_LE(c.stats()[w].maxClockGap, s);
    }
    EXPECT_EQ(c.stats()[0].maxClockGap, s);  // and ran as far ahead as allowed
    EXPECT_LE(clock[0] - clock[2], s + 1);
    EXPECT_EQ(c.version(), clock[0] + clock[1] + clock[2]);
  }
}

TEST(ConsistencyTest, LeftWorkersHoldNobodyBack) {
  // ssp: worker 2 stops; once it fails, the others' clocks are compared among themselves.
  Consistency ssp(options(Mode::kSsp, 3, 1));
  for (int w : {0, 1}) {
    ssp.onPush(w, 0);
    ssp.onPush(w, 0);
  }
  EXPECT_EQ(ssp.minLiveClock(), 0);
  EXPECT_FALSE(ssp.canPull(0));
  EXPECT_FALSE(ssp.onLeave(2, true));
  EXPECT_EQ(ssp.liveWorkers(), 2);
  EXPECT_EQ(ssp.minLiveClock(), 2);
  EXPECT_TRUE(ssp.canPull(0));
  EXPECT_TRUE(ssp.stats()[2].left);
  EXPECT_TRUE(ssp.stats()[2].failed);
  EXPECT_NE(errorOf([&] { ssp.onPush(2, 0); }).find("has already left"), std::string::npos);
  ssp.onLeave(0, false);
  ssp.onLeave(1, false);
  EXPECT_FALSE(ssp.stats()[0].failed);
  EXPECT_EQ(ssp.minLiveClock(), 2);  // none live: the highest clock

  // bsp: two of three pushed; the third leaving closes the round.
  Consistency bsp(options(Mode::kBsp, 3));
  bsp.onPush(0, 0);
  bsp.onPush(1, 0);
  EXPECT_TRUE(bsp.onLeave(2, false));
  EXPECT_EQ(bsp.roundNeeds(), 2);
  EXPECT_FALSE(bsp.onLeave(2, true));  // already gone: nothing changes
  EXPECT_FALSE(bsp.stats()[2].failed);
  bsp.onApplied();
  EXPECT_TRUE(bsp.canPull(0));
  // A leave with nothing pushed yet closes nothing; the last leave leaves nothing to wait for.
  EXPECT_FALSE(bsp.onLeave(1, true));
  EXPECT_EQ(bsp.roundNeeds(), 1);
  EXPECT_TRUE(bsp.onPush(0, 1).closesRound);
  bsp.onApplied();
  EXPECT_FALSE(bsp.onLeave(0, false));
  EXPECT_EQ(bsp.roundNeeds(), 0);

  // Backup workers: the round needs min(N - b, live).
  Consistency backup(options(Mode::kBsp, 4, 0, 1));
  backup.onPush(0, 0);
  backup.onPush(1, 0);
  EXPECT_FALSE(backup.onLeave(3, true));  // still 3 live, round needs 3
  EXPECT_TRUE(backup.onLeave(2, true));   // 2 live: the 2 pushes close it
  // A leave after the closing push does not close it a second time.
  Consistency closed(options(Mode::kBsp, 3, 0, 1));
  closed.onPush(0, 0);
  EXPECT_TRUE(closed.onPush(1, 0).closesRound);
  EXPECT_FALSE(closed.onLeave(2, false));
}

// A failed worker taken over by a restarted process: live again at its own clock (it skips
// none of its steps), and ssp holds the others back until it comes within s of them.
TEST(ConsistencyTest, RejoinKeepsTheWorkersOwnClock) {
  Consistency c(options(Mode::kSsp, 3, 1));
  for (int s = 0; s < 2; ++s) c.onPush(1, c.version());  // worker 1: clock 2, then it dies
  c.onLeave(1, true);
  for (int s = 0; s < 6; ++s) {
    c.onPush(0, c.version());
    c.onPush(2, c.version());
  }
  EXPECT_TRUE(c.canPull(0));  // while it is away nobody waits for it
  EXPECT_EQ(c.liveWorkers(), 2);
  EXPECT_EQ(c.onRejoin(1), 2);
  EXPECT_EQ(c.liveWorkers(), 3);
  EXPECT_FALSE(c.canPull(0));  // 6 - 2 > 1: the others wait for it now
  EXPECT_TRUE(c.canPull(1));
  EXPECT_EQ(c.stats()[1].rejoins, 1);
  EXPECT_FALSE(c.stats()[1].left);
  for (int s = 0; s < 3; ++s) c.onPush(1, c.version());
  EXPECT_TRUE(c.canPull(0));   // 6 - 5 <= 1
  EXPECT_EQ(c.stats()[1].clock, 5);
  // Only a failed worker can be taken over.
  Consistency d(options(Mode::kSsp, 2, 3));
  d.onPush(0, d.version());
  d.onLeave(0, true);
  EXPECT_EQ(d.onRejoin(0), 1);
  EXPECT_NE(errorOf([&] { d.onRejoin(0); }).find("is live"), std::string::npos);
  d.onLeave(1, false);
  EXPECT_NE(errorOf([&] { d.onRejoin(1); }).find("said goodbye"), std::string::npos);
  // Unless it said goodbye to wait for the final model and died waiting.
  d.onLostAfterLeave(1);
  EXPECT_TRUE(d.stats()[1].failed);
  EXPECT_EQ(d.onRejoin(1), 0);
  EXPECT_NE(errorOf([&] { d.onLostAfterLeave(1); }).find("is live"), std::string::npos);
}

// A push carries the worker's own count: a server that lost its counts (restarted) takes it,
// and a restored checkpoint's counts go on.
TEST(ConsistencyTest, PushesCarryTheWorkersOwnClock) {
  Consistency c(options(Mode::kAsp, 2));
  c.onPush(0, 0, 41);  // a worker at its 41st push meets a server that restarted
  EXPECT_EQ(c.stats()[0].clock, 41);
  c.onPush(0, c.version(), -1);
  EXPECT_EQ(c.stats()[0].clock, 42);
  c.onPush(0, c.version(), 5);  // a lower count never moves it back
  EXPECT_EQ(c.stats()[0].clock, 43);
  c.restoreClocks({10, 20});
  EXPECT_EQ(c.stats()[1].clock, 20);
  EXPECT_NE(errorOf([&] { c.restoreClocks({1}); }).find("1 clocks for 2 workers"), std::string::npos);
}

// bsp after a rejoin: the worker counts again from the round it pulls.
TEST(ConsistencyTest, BspRejoinCountsInTheNextRound) {
  Consistency c(options(Mode::kBsp, 2));
  c.onPush(0, 0);
  EXPECT_TRUE(c.onLeave(1, true));  // worker 1 dies: round 0 closes with worker 0's push
  c.onApplied();
  EXPECT_EQ(c.roundNeeds(), 1);
  c.onRejoin(1);
  EXPECT_EQ(c.roundNeeds(), 2);
  EXPECT_TRUE(c.canPull(1));
  EXPECT_EQ(c.onPush(1, c.version()).verdict, Verdict::kAggregate);
  EXPECT_FALSE(c.canPull(1));
  EXPECT_TRUE(c.onPush(0, c.version()).closesRound);
}

// A follower (backup agreement): counted pushes wait for the coordinator's decision, which
// drops the pushes outside it, admits a member's late arrival and refuses a non-member's.
TEST(ConsistencyTest, FollowedRoundsCloseOnTheDecision) {
  ConsistencyOptions o = options(Mode::kBsp, 3, 0, 1);
  o.followRounds = true;
  Consistency c(o);
  EXPECT_FALSE(c.onPush(1, 0).closesRound);
  EXPECT_FALSE(c.onPush(2, 0).closesRound);  // 2 = N - b pushes, but a follower does not close
  EXPECT_FALSE(c.roundReady());
  EXPECT_EQ(c.decideRound({1, 0, 1}), std::vector<int>{1});  // server 0 had workers 0 and 2
  EXPECT_EQ(c.stats()[1].dropped, 1);
  EXPECT_EQ(c.stats()[1].applied, 0);
  EXPECT_FALSE(c.roundReady());                               // worker 0's push is still on its way
  EXPECT_EQ(c.onPush(0, 0).verdict, Verdict::kAggregate);
  EXPECT_TRUE(c.roundReady());
  EXPECT_EQ(c.roundMembers(), (std::vector<uint8_t>{1, 0, 1}));
  EXPECT_NE(errorOf([&] { c.decideRound({1, 1, 0}); }).find("already decided"), std::string::npos);
  c.onApplied();
  EXPECT_EQ(c.version(), 1);
  EXPECT_TRUE(c.canPull(1));  // dropped: it gets the new parameters at once
  // A member that dies before its push arrives: the round is ready without it.
  c.onPush(1, 1);
  c.decideRound({1, 1, 0});
  EXPECT_FALSE(c.roundReady());
  EXPECT_FALSE(c.onLeave(0, true));
  EXPECT_TRUE(c.roundReady());
  // A push to the decided round by a worker outside it is dropped.
  EXPECT_EQ(c.onPush(2, 1).verdict, Verdict::kDrop);
  c.onApplied();
  // Without followRounds there is no decision to take.
  Consistency plain(options(Mode::kBsp, 3, 0, 1));
  EXPECT_NE(errorOf([&] { plain.decideRound({1, 1, 0}); }).find("followRounds"), std::string::npos);
}

TEST(ConsistencyTest, Errors) {
  Consistency c(options(Mode::kBsp, 2));
  EXPECT_NE(errorOf([&] { c.onPush(2, 0); }).find("worker 2 out of range [0, 2)"), std::string::npos);
  EXPECT_THROW(c.onPush(-1, 0), InvalidArgument);
  EXPECT_THROW(c.canPull(5), InvalidArgument);
  EXPECT_THROW(c.onPull(-1), InvalidArgument);
  EXPECT_THROW(c.onLeave(2, false), InvalidArgument);
  const std::string future = errorOf([&] { c.onPush(0, 1); });
  EXPECT_NE(future.find("based on version 1"), std::string::npos) << future;
  EXPECT_NE(future.find("at version 0"), std::string::npos) << future;
  EXPECT_THROW(c.onPush(0, -1), InvalidArgument);
  EXPECT_EQ(c.stats()[0].pushes, 0);  // refused pushes are not counted

  EXPECT_NE(errorOf([] { Consistency(options(Mode::kBsp, 0)); }).find("workers = 0"), std::string::npos);
  EXPECT_NE(errorOf([] { Consistency(options(Mode::kSsp, 2, -1)); }).find("staleness = -1"), std::string::npos);
  EXPECT_THROW(Consistency(options(Mode::kBsp, 2, 0, 2)), InvalidArgument);
  EXPECT_THROW(Consistency(options(Mode::kBsp, 2, 0, -1)), InvalidArgument);
  EXPECT_NE(errorOf([] { Consistency(options(Mode::kAsp, 2, 0, 1)); }).find("only apply to bsp"),
            std::string::npos);

  EXPECT_EQ(parseMode("bsp"), Mode::kBsp);
  EXPECT_EQ(parseMode("asp"), Mode::kAsp);
  EXPECT_EQ(parseMode("ssp"), Mode::kSsp);
  for (Mode m : {Mode::kBsp, Mode::kAsp, Mode::kSsp}) EXPECT_EQ(parseMode(modeName(m)), m);
  const std::string unknown = errorOf([] { parseMode("BSP"); });
  EXPECT_NE(unknown.find("'BSP'"), std::string::npos);
  EXPECT_NE(unknown.find("bsp, asp or ssp"), std::string::npos);
}

// Random interleavings. The server side may delay applying (another push or pull can come in
// between onPush and onApplied), and a worker may leave at a random moment.
void randomRun(const ConsistencyOptions& opts, uint32_t seed, int64_t* drops = nullptr) {
  SCOPED_TRACE(::testing::Message() << modeName(opts.mode) << " N " << opts.workers << " s " << opts.staleness
                                    << " b " << opts.backup << " seed " << seed);
  std::mt19937 rng(seed);
  Consistency c(opts);
  const int n = opts.workers;
  std::vector<int64_t> pulled(n, 0), clock(n, 0);
  std::vector<bool> wantsPull(n, false), left(n, false);
  int pendingApplies = 0;
  int64_t applies = 0, counted = 0, closes = 0;
  const int leaveAt = rng() % 3 == 0 ? static_cast<int>(rng() % 400) : -1;
  for (int step = 0; step < 2000; ++step) {
    if (step == leaveAt) {
      const int w = static_cast<int>(rng() % n);
      if (!left[w]) {
        left[w] = true;
        if (c.onLeave(w, rng() % 2 == 0)) ++pendingApplies, ++closes;
      }
    }
    // Pick an action among those possible; fail on a deadlock.
    std::vector<int> actors;
    for (int w = 0; w < n; ++w) {
      if (!left[w] && (!wantsPull[w] || c.canPull(w))) actors.push_back(w);
    }
    if (actors.empty() && pendingApplies == 0) {
      if (std::count(left.begin(), left.end(), false) == 0) break;
      FAIL() << "deadlock at step " << step;
    }
    if (pendingApplies > 0 && (actors.empty() || rng() % 3 == 0)) {
      c.onApplied();
      --pendingApplies;
      ++applies;
      continue;
    }
    const int w = actors[rng() % actors.size()];
    if (!wantsPull[w]) {
      const int64_t versionBefore = c.version();
      const auto d = c.onPush(w, pulled[w]);
      ++clock[w];
      wantsPull[w] = true;
      if (opts.mode == Mode::kBsp) {
        if (d.verdict == Verdict::kAggregate) {
          ++counted;
          ASSERT_EQ(d.round, versionBefore);
          ASSERT_EQ(pulled[w], d.round) << "a counted push must be based on its round";
        } else {
          ASSERT_EQ(d.verdict, Verdict::kDrop);
          ASSERT_FALSE(d.closesRound);
        }
        if (d.closesRound) ++pendingApplies, ++closes;
      } else {
        ASSERT_EQ(d.verdict, Verdict::kApply);
        ASSERT_EQ(d.staleness, versionBefore - pulled[w]);
        ++pendingApplies;
      }
    } else {
      if (opts.mode == Mode::kSsp) {
        int64_t lo = INT64_MAX;
        for (int v = 0; v < n; ++v) {
          if (!left[v]) lo = std::min(lo, clock[v]);
        }
        ASSERT_LE(clock[w] - lo, opts.staleness) << "ssp granted a pull beyond the bound";
      }
      c.onPull(w);
      pulled[w] = c.version();
      wantsPull[w] = false;
    }
  }
  while (pendingApplies > 0) c.onApplied(), --pendingApplies, ++applies;

  int64_t pushes = 0, dropped = 0;
  for (int w = 0; w < n; ++w) {
    const WorkerStats& st = c.stats()[w];
    EXPECT_EQ(st.clock, clock[w]);
    EXPECT_EQ(st.pushes, st.applied + st.dropped);
    EXPECT_EQ(st.left, left[w]);
    if (opts.mode == Mode::kSsp) {
      EXPECT_LE(st.maxClockGap, opts.staleness);
    }
    pushes += st.pushes;
    dropped += st.dropped;
  }
  EXPECT_EQ(c.version(), applies);
  if (opts.mode == Mode::kBsp) {
    EXPECT_EQ(c.version(), closes);
    EXPECT_EQ(pushes - dropped, counted);
    if (opts.backup == 0 && leaveAt < 0) {
      EXPECT_EQ(dropped, 0);
    }
  } else {
    EXPECT_EQ(c.version(), pushes);
    EXPECT_EQ(dropped, 0);
  }
  if (n > 1 || leaveAt < 0) {
    EXPECT_GT(c.version(), 100);  // no livelock: the run made progress
  }
  if (drops) *drops += dropped;
}

TEST(ConsistencyTest, RandomInterleavingsKeepInvariants) {
  uint32_t seed = 1;
  int64_t backupDrops = 0;
  for (int n : {1, 2, 3, 5}) {
    for (int trial = 0; trial < 4; ++trial) {
      randomRun(options(Mode::kBsp, n), seed++);
      if (n > 1) randomRun(options(Mode::kBsp, n, 0, 1), seed++, &backupDrops);
      randomRun(options(Mode::kAsp, n), seed++);
      for (int s : {0, 1, 3}) randomRun(options(Mode::kSsp, n, s), seed++);
    }
  }
  EXPECT_GT(backupDrops, 0);  // the backup workers' late pushes were exercised
}

}  // namespace
}  // namespace chorus::ps
