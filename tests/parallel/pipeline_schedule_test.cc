// Pipeline schedules as data and their checker (src/chorus/parallel/pipeline/schedule.h): every
// generated schedule passes the checker over a grid of sizes, its simulated bubble and stored
// activations match the theory, and broken schedules are rejected with a message naming the
// fault.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "chorus/common/error.h"
#include "chorus/parallel/pipeline/schedule.h"

namespace chorus::parallel {
namespace {

// The first action of `rank` matching op and micro-batch (chunk 0), as an index.
size_t find(const PipeSchedule& s, int rank, PipeOp op, int mb, int chunk = 0) {
  const auto& list = s.ranks[static_cast<size_t>(rank)];
  for (size_t i = 0; i < list.size(); ++i)
    if (list[i].op == op && list[i].microBatch == mb && list[i].chunk == chunk) return i;
  ADD_FAILURE() << "rank " << rank << " has no " << opName(op) << " of micro-batch " << mb;
  return 0;
}

std::string rejection(const PipeSchedule& s) {
  try {
    checkSchedule(s);
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

TEST(PipelineSchedule, EveryScheduleIsSoundUpToEightStagesAnd32MicroBatches) {
  int checked = 0;
  for (int p = 1; p <= 8; ++p) {
    for (int m = 1; m <= 32; ++m) {
      for (const std::string name : {"gpipe", "1f1b", "zb-h1"}) {
        SCOPED_TRACE(name + " p=" + std::to_string(p) + " m=" + std::to_string(m));
        const PipeSchedule s = makeSchedule(name, p, m);
        SimResult r;
        ASSERT_NO_THROW(r = checkSchedule(s));
        ++checked;
        for (int rank = 0; rank < p; ++rank) {
          if (name == "gpipe") {
            EXPECT_EQ(r.peakActivations[rank], m);
          }
          if (name == "1f1b") {
            EXPECT_EQ(r.peakActivations[rank], std::min(p - rank, m));
          }
          // ZB-H1 keeps 1F1B's bound on whole activations; rank r holds at most r + 1 micro-batches
          // between their B and their W (r after the W that follows each B).
          if (name == "zb-h1") {
            EXPECT_LE(r.peakActivations[rank], std::min(p - rank, m));
            EXPECT_LE(r.peakDeferred[rank], std::min(rank + 1, m));
            EXPECT_GE(r.peakDeferred[rank], 1);
          } else {
            EXPECT_EQ(r.peakDeferred[rank], 0);
          }
        }
      }
      for (int v = 2; v <= 4; ++v) {
        SCOPED_TRACE("interleaved p=" + std::to_string(p) + " m=" + std::to_string(m) + " v=" + std::to_string(v));
        ASSERT_NO_THROW(checkSchedule(makeSchedule("interleaved", p, m, v)));
        ++checked;
      }
      // The asynchronous schedules: 1F1B's order and activation bound; PipeDream holds up to
      // p - r weight versions on rank r (one per update between a forward and its backward,
      // plus the latest), 2BW with an update every p micro-batches at most two.
      for (const std::string name : {"pipedream", "2bw"}) {
        SCOPED_TRACE(name + " p=" + std::to_string(p) + " m=" + std::to_string(m));
        const PipeSchedule s = makeSchedule(name, p, m);
        ASSERT_TRUE(s.asynchronous());
        SimResult r;
        ASSERT_NO_THROW(r = checkSchedule(s));
        ++checked;
        for (int rank = 0; rank < p; ++rank) {
          EXPECT_EQ(r.peakActivations[rank], std::min(p - rank, m));
          if (name == "pipedream") {
            // p - r once the steady state runs long enough for every micro-batch in flight to
            // have seen another update (m >= 2 (p - r) - 1).
            EXPECT_LE(r.peakWeightVersions[rank], std::min(p - rank, m));
            if (m >= 2 * (p - rank) - 1) {
              EXPECT_EQ(r.peakWeightVersions[rank], p - rank);
            }
          } else {
            EXPECT_LE(r.peakWeightVersions[rank], 2);
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, 8 * 32 * 8);
}

TEST(PipelineSchedule, AsynchronousSchedulesUpdateAfterEachGroupOfBackwards) {
  const PipeSchedule pd = pipedreamSchedule(3, 5);
  EXPECT_EQ(pd.updateEvery, 1);
  for (int r = 0; r < 3; ++r) {
    int updates = 0;
    for (const PipeAction& a : pd.ranks[static_cast<size_t>(r)]) {
      EXPECT_NE(a.op, PipeOp::kOptimizerStep);
      updates += a.op == PipeOp::kWeightUpdate;
    }
    EXPECT_EQ(updates, 5) << "rank " << r;
    for (int i = 0; i < 5; ++i) EXPECT_EQ(find(pd, r, PipeOp::kWeightUpdate, i), find(pd, r, PipeOp::kBackward, i) + 1 + (r > 0));
  }
  // 2BW, an update every 2 of 5 micro-batches: after 1, 3 and the last, 4.
  const PipeSchedule tb = makeSchedule("2bw", 3, 5, 1, 2);
  EXPECT_EQ(tb.updateEvery, 2);
  std::vector<int> at;
  for (const PipeAction& a : tb.ranks[0])
    if (a.op == PipeOp::kWeightUpdate) at.push_back(a.microBatch);
  EXPECT_EQ(at, (std::vector<int>{1, 3, 4}));
  EXPECT_EQ(makeSchedule("2bw", 3, 5).updateEvery, 3);
  EXPECT_THROW(makeSchedule("1f1b", 3, 5, 1, 2), InvalidArgument);
  EXPECT_THROW(twoBufferedSchedule(3, 5, 0), InvalidArgument);
  EXPECT_NEAR(theoreticalBubble("pipedream", 4, 8), 3.0 / 11, 1e-12);
}

// A stream's segments, then its drain, are the schedule of all its micro-batches, so the
// checker's proof covers PipeDream without a flush; the steady state has no bubble.
TEST(PipelineSchedule, StreamSegmentsAndDrainAreTheWholeSchedule) {
  int checked = 0;
  for (int p = 1; p <= 6; ++p) {
    for (int m = 1; m <= 9; ++m) {
      for (int every : {0, 1, 2, 3, 5}) {
        const std::string name = every == 0 ? "pipedream" : "2bw";
        const PipeSchedule step = makeSchedule(name, p, m, 1, every);
        for (int k = 1; k <= 4; ++k) {
          SCOPED_TRACE(name + " p=" + std::to_string(p) + " m=" + std::to_string(m) + " every=" +
                       std::to_string(every) + " segments=" + std::to_string(k));
          PipeSchedule joined = makeSchedule(name, p, k * m, 1, every);
          const PipeSchedule whole = joined;
          for (int r = 0; r < p; ++r) {
            std::vector<PipeAction> list;
            for (int seg = 0; seg < k; ++seg) {
              const auto part = asyncSegment(step, r, seg);
              // Each segment forwards exactly its own m micro-batches.
              int forwards = 0;
              for (const PipeAction& a : part) {
                if (a.op != PipeOp::kForward) continue;
                EXPECT_EQ(a.microBatch, seg * m + forwards);
                ++forwards;
              }
              EXPECT_EQ(forwards, m);
              list.insert(list.end(), part.begin(), part.end());
            }
            const auto drain = asyncDrain(step, r, k);
            list.insert(list.end(), drain.begin(), drain.end());
            EXPECT_EQ(list, whole.ranks[static_cast<size_t>(r)]) << "rank " << r;
            joined.ranks[static_cast<size_t>(r)] = list;
          }
          EXPECT_NO_THROW(checkSchedule(joined));
          ++checked;
        }
      }
    }
  }
  EXPECT_EQ(checked, 6 * 9 * 5 * 4);
  // The pipeline fills once per stream: over K segments the bubble is (p - 1) / (K m + p - 1).
  const PipeSchedule step = makeSchedule("pipedream", 4, 8);
  EXPECT_NEAR(checkSchedule(makeSchedule("pipedream", 4, 10 * 8)).meanBubble(), 3.0 / (80 + 3), 1e-9);
  EXPECT_TRUE(asyncDrain(step, 0, 0).empty());
  EXPECT_THROW(asyncSegment(makeSchedule("1f1b", 2, 4), 0, 0), InvalidArgument);
  EXPECT_THROW(asyncSegment(step, 4, 0), InvalidArgument);
  EXPECT_THROW(asyncSegment(step, 0, int64_t{1} << 40), InvalidArgument);
}

TEST(PipelineSchedule, RejectsBrokenUpdates) {
  // An update before the backward it applies.
  PipeSchedule early = pipedreamSchedule(2, 3);
  auto& r1 = early.ranks[1];
  const size_t u = find(early, 1, PipeOp::kWeightUpdate, 0);
  const PipeAction upd = r1[u];
  r1.erase(r1.begin() + static_cast<std::ptrdiff_t>(u));
  r1.insert(r1.begin(), upd);
  EXPECT_NE(rejection(early).find("before the micro-batch's backward completed"), std::string::npos) << rejection(early);

  // A gradient no update applies.
  PipeSchedule lost = pipedreamSchedule(2, 3);
  lost.ranks[0].erase(lost.ranks[0].begin() + static_cast<std::ptrdiff_t>(find(lost, 0, PipeOp::kWeightUpdate, 2)));
  EXPECT_NE(rejection(lost).find("micro-batch 2 on rank 0 never gets an update that applies its gradient"),
            std::string::npos)
      << rejection(lost);

  // An optimizer step in an asynchronous schedule, an update in a synchronous one.
  PipeSchedule stepped = pipedreamSchedule(2, 3);
  stepped.ranks[0].push_back({PipeOp::kOptimizerStep, -1, -1});
  EXPECT_NE(rejection(stepped).find("not in one optimizer step"), std::string::npos) << rejection(stepped);
  PipeSchedule sync = oneFOneBSchedule(2, 3);
  sync.ranks[0].insert(sync.ranks[0].end() - 1, PipeAction{PipeOp::kWeightUpdate, 2, 0});
  EXPECT_NE(rejection(sync).find("has no per-micro-batch updates"), std::string::npos) << rejection(sync);
}

// With equal stages (F = 1, B = W = 1) the simulated bubble is the textbook formula.
TEST(PipelineSchedule, SimulatedBubbleMatchesTheory) {
  for (int p : {2, 4, 8}) {
    for (int m : {4, 8, 16, 32}) {
      for (const std::string name : {"gpipe", "1f1b"}) {
        const SimResult r = checkSchedule(makeSchedule(name, p, m));
        EXPECT_NEAR(r.meanBubble(), theoreticalBubble(name, p, m), 1e-9) << name << " p=" << p << " m=" << m;
        EXPECT_DOUBLE_EQ(r.makespan, 3.0 * (m + p - 1)) << name;
      }
      if (m % p == 0) {
        for (int v : {2, 4}) {
          const SimResult r = checkSchedule(makeSchedule("interleaved", p, m, v));
          EXPECT_NEAR(r.meanBubble(), theoreticalBubble("interleaved", p, m, v), 1e-9)
              << "interleaved p=" << p << " m=" << m << " v=" << v;
        }
      }
      // ZB-H1: about a third of 1F1B's bubble (the paper's (p - 1)(F + B - W) idle time per
      // rank) once the steady state is reached (m >= p); below that, still less than 1F1B's.
      const double zb = checkSchedule(makeSchedule("zb-h1", p, m)).meanBubble();
      const double ofob = theoreticalBubble("1f1b", p, m);
      if (m >= p) {
        EXPECT_NEAR(zb, theoreticalBubble("zb-h1", p, m), 1e-9) << "zb-h1 p=" << p << " m=" << m;
        EXPECT_LT(zb, 0.5 * ofob) << "zb-h1 p=" << p << " m=" << m;
      } else {
        EXPECT_LT(zb, ofob) << "zb-h1 p=" << p << " m=" << m;
      }
    }
  }
}

TEST(PipelineSchedule, OneFOneBHasItsWarmUpSteadyStateAndDrain) {
  const PipeSchedule s = oneFOneBSchedule(4, 8);
  // Rank 0: 3 warm-up forwards, then F3 before its first backward.
  EXPECT_LT(find(s, 0, PipeOp::kForward, 3), find(s, 0, PipeOp::kBackward, 0));
  EXPECT_GT(find(s, 0, PipeOp::kForward, 4), find(s, 0, PipeOp::kBackward, 0));
  // The last rank alternates from the start.
  EXPECT_LT(find(s, 3, PipeOp::kBackward, 0), find(s, 3, PipeOp::kForward, 1));
  EXPECT_EQ(s.ranks[3].back().op, PipeOp::kOptimizerStep);
}

TEST(PipelineSchedule, RejectsAMissingBackward) {
  PipeSchedule s = oneFOneBSchedule(2, 3);
  auto& r0 = s.ranks[0];
  r0.erase(r0.begin() + static_cast<std::ptrdiff_t>(find(s, 0, PipeOp::kBackward, 1)));
  const std::string why = rejection(s);
  EXPECT_NE(why.find("micro-batch 1 on rank 0 never gets its backward"), std::string::npos) << why;
}

TEST(PipelineSchedule, RejectsASendWithNoReceive) {
  PipeSchedule s = gpipeSchedule(2, 2);
  // Rank 1 forgets to receive micro-batch 1's activation and forwards it anyway.
  auto& r1 = s.ranks[1];
  r1.erase(r1.begin() + static_cast<std::ptrdiff_t>(find(s, 1, PipeOp::kRecvActivation, 1)));
  EXPECT_NE(rejection(s).find("before its input was received"), std::string::npos) << rejection(s);

  // Rank 0 sends a gradient-less activation twice; the second has no receive.
  PipeSchedule t = gpipeSchedule(2, 2);
  t.ranks[0].insert(t.ranks[0].begin() + static_cast<std::ptrdiff_t>(find(t, 0, PipeOp::kSendActivation, 1)),
                    PipeAction{PipeOp::kSendActivation, 0, 0});
  EXPECT_NE(rejection(t).find("sent twice"), std::string::npos) << rejection(t);
}

TEST(PipelineSchedule, RejectsADeadlock) {
  // Rank 0 waits for micro-batch 0's gradient before it sends the activation rank 1 waits for.
  PipeSchedule s;
  s.name = "cycle";
  s.stages = 2;
  s.microBatches = 1;
  s.ranks = {{{PipeOp::kForward, 0, 0}, {PipeOp::kRecvGradient, 0, 0}, {PipeOp::kSendActivation, 0, 0},
              {PipeOp::kBackward, 0, 0}, {PipeOp::kOptimizerStep, -1, -1}},
             {{PipeOp::kRecvActivation, 0, 0}, {PipeOp::kForward, 0, 0}, {PipeOp::kBackward, 0, 0},
              {PipeOp::kSendGradient, 0, 0}, {PipeOp::kOptimizerStep, -1, -1}}};
  const std::string why = rejection(s);
  EXPECT_NE(why.find("deadlocks"), std::string::npos) << why;
  EXPECT_NE(why.find("rank 0 recvG of micro-batch 0"), std::string::npos) << why;
  EXPECT_NE(why.find("rank 1 recvA of micro-batch 0"), std::string::npos) << why;
  // Sending first makes the same lists sound.
  std::swap(s.ranks[0][1], s.ranks[0][2]);
  EXPECT_EQ(rejection(s), "");
}

TEST(PipelineSchedule, RejectsMicroBatchesOutOfOrderOnAChannel) {
  PipeSchedule s = gpipeSchedule(2, 2);
  // Rank 1 receives micro-batch 1's activation first; each forward still follows its own
  // receive, but rank 0 sends micro-batch 0 first on that channel.
  auto& r1 = s.ranks[1];
  const PipeAction recv1 = r1[find(s, 1, PipeOp::kRecvActivation, 1)];
  r1.erase(r1.begin() + static_cast<std::ptrdiff_t>(find(s, 1, PipeOp::kRecvActivation, 1)));
  r1.insert(r1.begin(), recv1);
  const std::string why = rejection(s);
  EXPECT_NE(why.find("rank 1 recvA of micro-batch 1 takes the next message of its channel, which rank 0 sent for "
                     "micro-batch 0"),
            std::string::npos)
      << why;
}

TEST(PipelineSchedule, RejectsBadSizesAndNames) {
  EXPECT_THROW(makeSchedule("1f1b", 0, 4), InvalidArgument);
  EXPECT_THROW(makeSchedule("1f1b", 2, 0), InvalidArgument);
  EXPECT_THROW(makeSchedule("1f1b", 2, 4, 2), InvalidArgument);
  try {
    makeSchedule("pipedream-9", 2, 4);
    FAIL() << "an unknown name was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("gpipe, 1f1b, interleaved, zb-h1, pipedream, 2bw"), std::string::npos) << e.what();
  }
}

TEST(PipelineSchedule, RenderShowsTheGrid) {
  const PipeSchedule s = oneFOneBSchedule(2, 2);
  const std::string g = renderSchedule(s, checkSchedule(s));
  // Rank 0: F0 F1 . b0 b0 ...; rank 1 idles one unit, then F0 b0 b0 F1 b1 b1.
  EXPECT_NE(g.find("rank 0 | F0 F1"), std::string::npos) << g;
  EXPECT_NE(g.find("rank 1 | .  F0 b0 b0 F1 b1 b1"), std::string::npos) << g;
  EXPECT_NE(g.find("peak stored activations 2, 1"), std::string::npos) << g;
}

}  // namespace
}  // namespace chorus::parallel
