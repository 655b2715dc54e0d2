// The pieces every collective shares: signatures and their descriptions, algorithm names,
// how buffers are cut into blocks, and the double binary tree.
#include <gtest/gtest.h>

#include <set>

#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {
namespace {

TEST(Signature, DescribesTheCall) {
  EXPECT_EQ(describeSignature(makeSignature(CollectiveKind::kAllreduce, DType::kFloat32, 1000,
                                            detail::signatureExtra(ReduceOp::kSum, unsigned(AllreduceAlgo::kRing)))),
            "allreduce(ring, count=1000, float32, sum)");
  EXPECT_EQ(describeSignature(makeSignature(CollectiveKind::kReduce, DType::kBFloat16, 7,
                                            detail::signatureExtra(ReduceOp::kMax, 3))),
            "reduce(count=7, bfloat16, max, root=3)");
  EXPECT_EQ(describeSignature(makeSignature(CollectiveKind::kAllgather, DType::kInt64, 12,
                                            detail::signatureExtra(ReduceOp::kSum, 1))),
            "allgatherv(total=12, int64)");
  EXPECT_EQ(describeSignature(makeSignature(CollectiveKind::kBroadcast, DType::kUInt8, 5,
                                            detail::signatureExtra(ReduceOp::kSum, 40))),
            "broadcast(count=5, uint8, root>=31)");
  EXPECT_EQ(describeSignature(makeSignature(CollectiveKind::kAlltoall, DType::kFloat16, 0,
                                            detail::signatureExtra(ReduceOp::kSum, 1))),
            "alltoallv(float16)");
  EXPECT_EQ(describeSignature(makeSignature(CollectiveKind::kBarrier, DType::kUInt8, 0)), "barrier()");
  EXPECT_EQ(describeSignature(makeSignature(CollectiveKind::kSendRecv, DType::kUInt8, 64)), "send_recv(bytes=64)");
  EXPECT_NE(describeSignature(0).find("unknown"), std::string::npos);
}

TEST(Signature, DiffersWhenAnythingRanksMustAgreeOnDiffers) {
  const auto base = makeSignature(CollectiveKind::kAllreduce, DType::kFloat32, 1000, 0);
  EXPECT_NE(base, makeSignature(CollectiveKind::kReduce, DType::kFloat32, 1000, 0));
  EXPECT_NE(base, makeSignature(CollectiveKind::kAllreduce, DType::kInt32, 1000, 0));
  EXPECT_NE(base, makeSignature(CollectiveKind::kAllreduce, DType::kFloat32, 1001, 0));
  EXPECT_NE(base, makeSignature(CollectiveKind::kAllreduce, DType::kFloat32, 1000, 1));
  EXPECT_EQ(base, makeSignature(CollectiveKind::kAllreduce, DType::kFloat32, 1000, 0));
}

TEST(AlgoNames, RoundTripAndRejectUnknown) {
  for (AllreduceAlgo a : {AllreduceAlgo::kAuto, AllreduceAlgo::kRing, AllreduceAlgo::kHalvingDoubling,
                          AllreduceAlgo::kTree, AllreduceAlgo::kMpi, AllreduceAlgo::kDirect}) {
    EXPECT_EQ(parseAlgo(algoName(a)), a);
  }
  EXPECT_EQ(parseAlgo("halving_doubling"), AllreduceAlgo::kHalvingDoubling);
  try {
    parseAlgo("bogus");
    FAIL() << "parseAlgo accepted 'bogus'";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("ring"), std::string::npos) << "should list the names: " << e.what();
  }
}

TEST(EvenBlocks, CoverTheBufferWithoutGaps) {
  for (size_t count : {size_t{0}, size_t{1}, size_t{7}, size_t{1000003}}) {
    for (int parts : {1, 2, 3, 8, 13}) {
      size_t next = 0, smallest = count, largest = 0;
      for (int i = 0; i < parts; ++i) {
        const detail::Block b = detail::evenBlock(count, parts, i);
        EXPECT_EQ(b.offset, next);
        next += b.count;
        smallest = std::min(smallest, b.count);
        largest = std::max(largest, b.count);
      }
      EXPECT_EQ(next, count);
      EXPECT_LE(largest - smallest, 1u);
      EXPECT_EQ(detail::evenBlock(count, parts, parts).offset, count);
    }
  }
}

// Both trees are spanning trees with at most two children per node, and (for P > 2) most
// inner nodes of one tree are leaves of the other.
TEST(DoubleBinaryTree, TreesAreValidAndComplementary) {
  for (int n = 1; n <= 70; ++n) {
    int innerInBoth = 0;
    std::vector<bool> inner0(static_cast<size_t>(n));
    for (int which = 0; which < 2; ++which) {
      int roots = 0;
      for (int r = 0; r < n; ++r) {
        const detail::TreeLinks t = detail::treeLinks(n, r, which);
        EXPECT_LE(t.children.size(), 2u);
        if (t.parent < 0) ++roots;
        for (int c : t.children) EXPECT_EQ(detail::treeLinks(n, c, which).parent, r) << "n=" << n;
        // Walking up reaches the root without a cycle.
        int up = r, steps = 0;
        while (up >= 0 && steps <= n) {
          up = detail::treeLinks(n, up, which).parent;
          ++steps;
        }
        EXPECT_LE(steps, n) << "cycle in tree " << which << " of " << n << " ranks";
        if (which == 0) inner0[static_cast<size_t>(r)] = !t.children.empty();
        if (which == 1 && inner0[static_cast<size_t>(r)] && !t.children.empty()) ++innerInBoth;
      }
      EXPECT_EQ(roots, 1) << "tree " << which << " of " << n << " ranks";
    }
    if (n > 2) {
      EXPECT_LE(innerInBoth, 1) << n << " ranks";
    }
  }
}

}  // namespace
}  // namespace chorus::comm
