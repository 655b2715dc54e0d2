// The positional recovery plan of tensor- and pipeline-parallel elastic jobs (elastic.h,
// planShardRecovery): which step the world restores and where each rank's shard comes from.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/train/elastic.h"

namespace chorus::train {
namespace {

TEST(MeshShards, FollowsTheMeshLayout) {
  // ProcessMesh::make(world, tp, pp): rank = (pp_i * dp + dp_i) * tp + tp_i; shard = pp_i * tp + tp_i.
  EXPECT_EQ(meshShards(4, 2, 1), (std::vector<int>{0, 1, 0, 1}));
  EXPECT_EQ(meshShards(4, 1, 2), (std::vector<int>{0, 0, 1, 1}));
  EXPECT_EQ(meshShards(8, 2, 2), (std::vector<int>{0, 1, 0, 1, 2, 3, 2, 3}));
  EXPECT_EQ(meshShards(6, 1, 1), (std::vector<int>(6, 0)));
  EXPECT_THROW(meshShards(6, 2, 2), InvalidArgument);
}

TEST(PlanShardRecovery, AReplacementTakesItsShardFromAReplica) {
  // tp 2 x dp 2: rank 1 (shard 1) was replaced; rank 3 holds shard 1 too.
  const ShardRecoveryPlan p = planShardRecovery({5, -1, 5, 5}, {4, -1, 4, 4}, meshShards(4, 2, 1));
  EXPECT_EQ(p.step, 5);
  EXPECT_EQ(p.source, (std::vector<int>{0, 3, 2, 3}));
}

TEST(PlanShardRecovery, TheWorldGoesBackToTheStepEveryShardHolds) {
  // Shard 0's ranks completed step 6, shard 1's survivor only step 5: all restore step 5, the
  // ranks at 6 from the snapshot before their newest.
  const ShardRecoveryPlan p = planShardRecovery({6, -1, 6, 5}, {5, -1, 5, 4}, meshShards(4, 2, 1));
  EXPECT_EQ(p.step, 5);
  EXPECT_EQ(p.source, (std::vector<int>{0, 3, 2, 3}));
}

TEST(PlanShardRecovery, TheLowestHolderOfTheShardSends) {
  // pp 2 x dp 3: stage 1's ranks are 3, 4, 5; rank 4 was replaced and rank 3 is a step behind.
  const ShardRecoveryPlan p = planShardRecovery({8, 8, 8, 7, -1, 8}, {7, 7, 7, 6, -1, 7}, meshShards(6, 1, 2));
  EXPECT_EQ(p.step, 8);
  EXPECT_EQ(p.source, (std::vector<int>{0, 1, 2, 5, 5, 5}));
}

TEST(PlanShardRecovery, NothingHeldAnywhereStartsAfresh) {
  const ShardRecoveryPlan p = planShardRecovery({-1, -1, -1, -1}, {-1, -1, -1, -1}, meshShards(4, 2, 1));
  EXPECT_EQ(p.step, -1);
  EXPECT_EQ(p.source, (std::vector<int>{0, 1, 2, 3}));
}

TEST(PlanShardRecovery, AShardWithNoHolderLeftIsAnErrorThatSaysWhatToDo) {
  // Both replicas of shard 1 (ranks 1 and 3) were replaced at once.
  try {
    planShardRecovery({5, -1, 5, -1}, {4, -1, 4, -1}, meshShards(4, 2, 1));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("no member holds any state of shard 1"), std::string::npos) << what;
    EXPECT_NE(what.find("--restarts R without --min"), std::string::npos) << what;
  }
}

// dp = 1: rank r keeps rank r - 1's snapshots as copies (Snapshot::replicate).
TEST(PlanShardRecovery, AtDpOneAReplacementTakesItsShardFromItsNeighboursCopy) {
  // tp 2: rank 1 was replaced; rank 0 keeps its own shard and a copy of rank 1's.
  const std::vector<int> shards = meshShards(2, 2, 1);
  const ShardRecoveryPlan p = planShardRecovery(shards, {{0, 0, false, 5, 4}, {0, 1, true, 5, 4}});
  EXPECT_EQ(p.step, 5);
  EXPECT_EQ(p.source, (std::vector<int>{0, 0}));
  EXPECT_EQ(p.fromCopy, (std::vector<bool>{false, true}));
}

TEST(PlanShardRecovery, ACopyOneStepBehindTakesTheWorldBackAStep) {
  // pp 3: rank 1 died after its step-5 snapshot reached rank 2 only as far as step 4.
  const ShardRecoveryPlan p = planShardRecovery(
      meshShards(3, 1, 3), {{0, 0, false, 5, 4}, {0, 2, true, 5, 4}, {2, 2, false, 5, 4}, {2, 1, true, 4, 3}});
  EXPECT_EQ(p.step, 4);
  EXPECT_EQ(p.source, (std::vector<int>{0, 2, 2}));
  EXPECT_EQ(p.fromCopy, (std::vector<bool>{false, true, false}));
}

TEST(PlanShardRecovery, ARankAndTheNeighbourWithItsCopyFailingTogetherLoseTheShard) {
  // pp 3: ranks 1 and 2 replaced; shard 1 was on rank 1 and its copy on rank 2.
  EXPECT_THROW(planShardRecovery(meshShards(3, 1, 3), {{0, 0, false, 5, 4}, {0, 2, true, 5, 4}}), Error);
}

TEST(PlanShardRecovery, RanksMoreThanAStepApartAreRefused) {
  // Shard 0 holds 7 and 6, shard 1 at most 5: no step that every shard holds.
  EXPECT_THROW(planShardRecovery({7, 5, 7, 5}, {6, 4, 6, 4}, meshShards(4, 2, 1)), Error);
  EXPECT_THROW(planShardRecovery({1, 2}, {0, 1}, {0, 0, 1}), InvalidArgument);
}

}  // namespace
}  // namespace chorus::train
