// In-process elastic recovery carries the compression state (docs/fault-tolerance.md): each
// rank's snapshot holds its own codec state under its rank and world (SnapshotParts::own), a
// re-formed job restores the agreed snapshot with the parts of the members that held it, and
// DdpStrategy::restoreSnapshot carries them to the new world by codec_state.h's rule. A failed
// rank's part is missing: it counts as zeros, so new rank r' holds (W'/W) * the sum of the
// surviving old ranks r with r mod W' == r', and the gradient still owed, (1/W') * the sum over
// the new ranks, is (1/W) * the sum over the survivors.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include "chorus/parallel/data/compression_hooks.h"
#include "chorus/train/codec_state.h"
#include "chorus/train/config.h"
#include "chorus/train/ddp_strategy.h"
#include "chorus/train/loop.h"
#include "chorus/train/strategy.h"
#include "chorus/train/trainer.h"
#include "util/rank_threads.h"
#include "util/scratch_dir.h"

namespace chorus::train {
namespace {

namespace fs = std::filesystem;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

// 480 samples, global batch 48: 10 steps per epoch at 3 and 4 workers.
Config codecConfig(const std::vector<std::string>& compression, const fs::path& dir, int world) {
  std::vector<std::string> sets = {"data.limit_train=480", "data.limit_test=100", "train.batch_size=48",
                                   "train.epochs=2",       "train.threads=1",     "train.eval=false",
                                   "output.progress=none", "model.hidden=[32]",   "output.dir=" + dir.string()};
  sets.insert(sets.end(), compression.begin(), compression.end());
  return defaultConfig(sets, world);
}

// Each rank's in-memory snapshot after `steps` steps of cfg at `world` ranks (threads), as an
// elastic run keeps it.
std::vector<Snapshot> snapshotsAfter(const Config& cfg, int world, int64_t steps) {
  std::vector<Snapshot> snaps(static_cast<size_t>(world));
  testutil::RankOptions ro;
  ro.timeout = Millis(20000);
  testutil::runRanks(world, ro, [&](comm::ProcessGroup& g) {
    std::ostringstream sink;
    TrainOptions o;
    o.out = &sink;
    o.stopAfter = steps;
    o.snapshot = &snaps[static_cast<size_t>(g.rank())];
    train(cfg, borrow(g), o);
  });
  return snaps;
}

// What a re-forming hands every member (elastic.cc, agreeOnSnapshot): the lowest survivor's
// shared part with the own parts of every survivor.
std::string recovered(const std::vector<Snapshot>& snaps, const std::vector<int>& survivors) {
  SnapshotParts agreed = unpackSnapshot(snaps[static_cast<size_t>(survivors.front())].payload);
  agreed.own.clear();
  for (int r : survivors) agreed.own.merge(unpackSnapshot(snaps[static_cast<size_t>(r)].payload).own);
  return packSnapshot(agreed);
}

// Restores `payload` into a fresh DdpStrategy on each of `world` ranks and returns each rank's
// codec state right after (read back through its next snapshot's own part; none without
// compression).
std::vector<CodecStates> restoreAt(const Config& cfg, int world, const std::string& payload, int64_t wantStep) {
  std::vector<CodecStates> out(static_cast<size_t>(world));
  testutil::RankOptions ro;
  ro.timeout = Millis(20000);
  testutil::runRanks(world, ro, [&](comm::ProcessGroup& g) {
    DdpStrategy s(cfg, borrow(g));
    std::unique_ptr<Task> task = makeTask(cfg, s.roles());
    s.setup(*task);
    const TrainState st = s.restoreSnapshot(payload);
    EXPECT_EQ(st.globalStep, wantStep);
    const SnapshotParts again = unpackSnapshot(s.snapshot(st));
    EXPECT_EQ(again.world, world);
    if (cfg.compression.method == "none") {
      EXPECT_TRUE(again.own.empty());
      return;
    }
    ASSERT_EQ(again.own.size(), 1u);
    out[static_cast<size_t>(g.rank())] = decodeCodecStates(again.own.at(g.rank()), "restored");
  });
  return out;
}

// Old rank 1 of 4 dies after step 7: ranks 0, 2 and 3 re-form as a world of 3 (and, with a
// replacement, of 4). Every buffer that holds gradient still owed is checked against the
// formula, element by element, and PowerSGD-style "q." buffers, the warm-up count and the RNG
// against their rules.
void recoveryCarriesSurvivorsState(const std::vector<std::string>& compression, const std::string& name) {
  torch::set_num_threads(1);
  const fs::path dir = test::scratchDir("chorus-elastic-codec-test", name);
  const Config cfg4 = codecConfig(compression, dir, 4);
  const std::vector<Snapshot> snaps = snapshotsAfter(cfg4, 4, 7);
  std::vector<CodecStates> old;
  for (const Snapshot& s : snaps) {
    ASSERT_EQ(s.globalStep, 7) << name;
    const SnapshotParts p = unpackSnapshot(s.payload);
    ASSERT_EQ(p.world, 4) << name;
    ASSERT_EQ(p.own.size(), 1u) << name;
    old.push_back(decodeCodecStates(p.own.begin()->second, name));
  }
  const std::vector<int> survivors = {0, 2, 3};
  const std::string payload = recovered(snaps, survivors);
  const uint64_t seed = codecSeed(cfg4.compression);

  for (int world : {3, 4}) {
    const std::string what = str(name, ": 4 -> ", world, " without old rank 1");
    const std::vector<CodecStates> got = restoreAt(codecConfig(compression, dir, world), world, payload, 7);
    const double scale = static_cast<double>(world) / 4.0;
    double owed = 0;
    for (const auto& [bucket, ref] : old[0]) {
      for (const auto& [buf, values] : ref.buffers) {
        std::vector<double> wantMean(values.size(), 0.0), gotMean(values.size(), 0.0);
        for (int r : survivors) {
          const std::vector<float>& b = old[static_cast<size_t>(r)].at(bucket).buffers.at(buf);
          for (size_t i = 0; i < values.size(); ++i) wantMean[i] += b[i] / 4.0;  // (1/W) * the survivors' sum
        }
        for (int n = 0; n < world; ++n) {
          const std::vector<float>& b = got[static_cast<size_t>(n)].at(bucket).buffers.at(buf);
          ASSERT_EQ(b.size(), values.size()) << what << " " << buf;
          if (buf.starts_with("q.")) {  // equal on every rank: the lowest survivor's
            EXPECT_EQ(b, values) << what << " " << buf;
            continue;
          }
          for (size_t i = 0; i < values.size(); ++i) {
            double want = 0;  // (W'/W) * the sum of the surviving old ranks r == n (mod W')
            for (int r : survivors)
              if (r % world == n) want += old[static_cast<size_t>(r)].at(bucket).buffers.at(buf)[i];
            want *= scale;
            ASSERT_NEAR(b[i], want, 1e-6 * (1 + std::abs(want)))
                << what << ": new rank " << n << ", bucket " << bucket << " '" << buf << "'[" << i << "]";
            gotMean[i] += b[i] / static_cast<double>(world);
          }
        }
        if (buf.starts_with("q.")) continue;
        for (size_t i = 0; i < values.size(); ++i) {
          owed += std::abs(wantMean[i]);
          EXPECT_NEAR(gotMean[i], wantMean[i], 1e-6 * (1 + std::abs(wantMean[i]))) << what << " '" << buf << "'";
        }
      }
      for (int n = 0; n < world; ++n) {
        const compress::CodecState& cs = got[static_cast<size_t>(n)].at(bucket);
        EXPECT_EQ(cs.scalars, ref.scalars) << what << ": new rank " << n;  // the warm-up goes on
        // An old rank's RNG where that rank survived; a fresh seed for the dead rank's place.
        const uint64_t rng =
            n == 1 ? parallel::codecRngSeed(seed, bucket, n) : old[static_cast<size_t>(n)].at(bucket).rngState;
        EXPECT_EQ(cs.rngState, rng) << what << ": new rank " << n;
      }
    }
    EXPECT_GT(owed, 0) << what << ": the snapshots hold no unsent gradient";
    // Nothing of the dead rank's reaches its place.
    for (const auto& [bucket, cs] : got[1]) {
      for (const auto& [buf, b] : cs.buffers) {
        if (buf.starts_with("q.")) continue;
        for (float x : b) ASSERT_EQ(x, 0.0f) << what << ": new rank 1 '" << buf << "'";
      }
    }
  }
}

TEST(ElasticCodec, RecoveryCarriesTopKResidualsOfSurvivors) {
  recoveryCarriesSurvivorsState({"compression.method=topk", "compression.ratio=0.05"}, "topk");
}

TEST(ElasticCodec, RecoveryCarriesDgcVelocityAndMomentumOfSurvivors) {
  recoveryCarriesSurvivorsState({"compression.method=dgc", "optim.momentum=0", "compression.warmup_epochs=1"}, "dgc");
}

TEST(ElasticCodec, RecoveryCarriesPowerSgdResidualsAndQOfSurvivors) {
  recoveryCarriesSurvivorsState({"compression.method=powersgd", "compression.rank=2"}, "powersgd");
}

// Without compression a snapshot holds no per-rank part, and restores as before.
TEST(ElasticCodec, UncompressedSnapshotHasNoOwnPart) {
  torch::set_num_threads(1);
  const fs::path dir = test::scratchDir("chorus-elastic-codec-test", "none");
  const std::vector<Snapshot> snaps = snapshotsAfter(codecConfig({}, dir, 2), 2, 3);
  for (const Snapshot& s : snaps) {
    const SnapshotParts p = unpackSnapshot(s.payload);
    EXPECT_EQ(p.world, 2);
    EXPECT_TRUE(p.own.empty());
    EXPECT_FALSE(p.shared.empty());
  }
  restoreAt(codecConfig({}, dir, 1), 1, recovered(snaps, {1}), 3);
}

// The payload's framing: parts and back, bit for bit; damaged bytes are an Error that says so.
TEST(ElasticCodec, SnapshotPartsRoundTripAndRejectDamage) {
  SnapshotParts p;
  p.shared = std::string("model\0and optimizer", 19);
  p.world = 5;
  p.own[0] = "zero";
  p.own[3] = std::string(1000, '\x7f');
  p.own[4] = "";
  const std::string bytes = packSnapshot(p);
  const SnapshotParts back = unpackSnapshot(bytes);
  EXPECT_EQ(back.shared, p.shared);
  EXPECT_EQ(back.world, 5);
  EXPECT_EQ(back.own, p.own);
  EXPECT_EQ(unpackSnapshot(packSnapshot(SnapshotParts{})).world, 0);

  auto rejects = [](const std::string& b, const std::string& why) {
    try {
      unpackSnapshot(b);
      ADD_FAILURE() << why << ": accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("in-memory snapshot"), std::string::npos) << why << ": " << e.what();
    }
  };
  rejects("", "empty");
  rejects(std::string("CHORUSCK") + bytes.substr(8), "another magic");
  rejects(bytes.substr(0, bytes.size() - 1), "truncated");
  rejects(bytes + "x", "trailing bytes");
  SnapshotParts outside = p;
  outside.own[5] = "rank 5 of 5";
  rejects(packSnapshot(outside), "a rank outside the world");
}

// carryCodecStates with a lost rank (an empty state) at the same world: the others keep theirs
// bit for bit; the lost rank's place gets zeros, the others' warm-up count and a fresh RNG.
TEST(ElasticCodec, CarryAtTheSameWorldFillsALostRank) {
  const uint64_t seed = 7;
  std::vector<CodecStates> saved(3);
  for (int r : {0, 2}) {
    compress::CodecState& cs = saved[static_cast<size_t>(r)][0];
    cs.buffers["residual"] = {static_cast<float>(r + 1), -2.5f};
    cs.buffers["q.0"] = {1, 2};
    cs.scalars["calls"] = 4;
    cs.rngState = 50 + static_cast<uint64_t>(r);
  }
  for (int r : {0, 2}) {
    const CodecStates same = carryCodecStates(saved, r, 3, seed, "test");
    EXPECT_EQ(same.at(0).buffers, saved[static_cast<size_t>(r)].at(0).buffers);
    EXPECT_EQ(same.at(0).rngState, saved[static_cast<size_t>(r)].at(0).rngState);
  }
  const CodecStates lost = carryCodecStates(saved, 1, 3, seed, "test");
  EXPECT_EQ(lost.at(0).buffers.at("residual"), (std::vector<float>{0, 0}));
  EXPECT_EQ(lost.at(0).buffers.at("q.0"), (std::vector<float>{1, 2}));
  EXPECT_EQ(lost.at(0).scalars.at("calls"), 4.0);
  EXPECT_EQ(lost.at(0).rngState, parallel::codecRngSeed(seed, 0, 1));
  // Old rank 0 lost: the reference for Q and the scalars is the lowest rank that has a state.
  std::vector<CodecStates> noZero = saved;
  noZero[0].clear();
  noZero[2][0].scalars["calls"] = 6;
  const CodecStates two = carryCodecStates(noZero, 0, 2, seed, "test");  // 3 -> 2: old 0 and 2
  EXPECT_EQ(two.at(0).scalars.at("calls"), 6.0);
  const std::vector<float>& merged = two.at(0).buffers.at("residual");  // (2/3) * old rank 2's
  ASSERT_EQ(merged.size(), 2u);
  EXPECT_FLOAT_EQ(merged[0], 2.0f);
  EXPECT_FLOAT_EQ(merged[1], -2.5f * 2 / 3);
}

}  // namespace
}  // namespace chorus::train
