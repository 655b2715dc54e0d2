// ProcessMesh on threads-as-ranks: every rank's coordinates follow
// rank = (pp_i * dp + dp_i) * tp + tp_i; each dimension's group holds exactly the ranks that
// differ only along it, in coordinate order, and its collectives stay inside it; the errors
// name the sizes.
#include <gtest/gtest.h>

#include <mutex>
#include <set>

#include "chorus/parallel/mesh.h"
#include "util/rank_threads.h"

namespace chorus::parallel {
namespace {

using testutil::runRanks;

std::shared_ptr<comm::ProcessGroup> borrow(comm::ProcessGroup& g) {
  return std::shared_ptr<comm::ProcessGroup>(&g, [](comm::ProcessGroup*) {});
}

// The world ranks in g, asked through an all-gather of each member's world rank (so it checks
// that the group really connects those ranks).
std::vector<int> membersOf(comm::ProcessGroup& g, int worldRank) {
  std::vector<int32_t> all(g.size());
  int32_t mine = worldRank;
  comm::AllgatherOptions o;
  o.input = &mine;
  o.output = all.data();
  o.count = 1;
  o.dtype = DType::kInt32;
  g.allgather(o);
  return {all.begin(), all.end()};
}

struct Layout {
  int pp, dp, tp;
};

void checkLayout(const Layout& L) {
  const int n = L.pp * L.dp * L.tp;
  std::vector<std::map<std::string, std::vector<int>>> members(n);
  std::vector<std::string> described(n);
  runRanks(n, "loopback", [&](comm::ProcessGroup& g) {
    ProcessMesh mesh = L.pp == 1 ? ProcessMesh::make(borrow(g), L.tp) : ProcessMesh::make(borrow(g), L.tp, L.pp);
    const int r = g.rank();
    EXPECT_EQ(mesh.rank(), r);
    EXPECT_EQ(mesh.coord("tp"), r % L.tp);
    EXPECT_EQ(mesh.coord("dp"), (r / L.tp) % L.dp);
    EXPECT_EQ(mesh.coord("pp"), r / (L.tp * L.dp));
    EXPECT_EQ(mesh.size("tp"), L.tp);
    EXPECT_EQ(mesh.size("dp"), L.dp);
    EXPECT_EQ(mesh.size("pp"), L.pp);
    EXPECT_EQ(mesh.size("ep"), 1);
    EXPECT_EQ(mesh.coord("ep"), 0);
    EXPECT_EQ(mesh.rankAt({mesh.coord("pp"), mesh.coord("dp"), mesh.coord("tp")}), r);
    for (const std::string dim : {"pp", "dp", "tp"}) {
      auto group = mesh.group(dim);
      EXPECT_EQ(group->size(), mesh.size(dim)) << dim;
      EXPECT_EQ(group->rank(), mesh.coord(dim)) << dim;
      members[r][dim] = membersOf(*group, r);
    }
    described[r] = mesh.describe();
  });
  for (int r = 0; r < n; ++r) {
    const int tp = r % L.tp, dp = (r / L.tp) % L.dp, pp = r / (L.tp * L.dp);
    std::vector<int> wantTp, wantDp, wantPp;
    for (int i = 0; i < L.tp; ++i) wantTp.push_back((pp * L.dp + dp) * L.tp + i);
    for (int i = 0; i < L.dp; ++i) wantDp.push_back((pp * L.dp + i) * L.tp + tp);
    for (int i = 0; i < L.pp; ++i) wantPp.push_back((i * L.dp + dp) * L.tp + tp);
    EXPECT_EQ(members[r]["tp"], wantTp) << "rank " << r;
    EXPECT_EQ(members[r]["dp"], wantDp) << "rank " << r;
    EXPECT_EQ(members[r]["pp"], wantPp) << "rank " << r;
    EXPECT_EQ(described[r], chorus::str("pp", L.pp, " x dp", L.dp, " x tp", L.tp, "; rank ", r, " = (pp", pp, ", dp", dp, ", tp", tp, ")"));
  }
}

TEST(ProcessMesh, Tp2Dp2Pp2) { checkLayout({2, 2, 2}); }
TEST(ProcessMesh, Tp2Dp4) { checkLayout({1, 4, 2}); }
TEST(ProcessMesh, Tp4Dp1AndOneRank) {
  checkLayout({1, 1, 4});
  checkLayout({1, 1, 1});
}

TEST(ProcessMesh, CustomDimensionsSlowestFirst) {
  std::vector<std::vector<int>> members(6);
  runRanks(6, "loopback", [&](comm::ProcessGroup& g) {
    ProcessMesh mesh(borrow(g), {{"dp", 2}, {"tp", 3}});
    EXPECT_FALSE(mesh.has("pp"));
    EXPECT_THROW(mesh.group("pp"), InvalidArgument);
    members[g.rank()] = membersOf(*mesh.group("dp"), g.rank());
  });
  EXPECT_EQ(members[4], (std::vector<int>{1, 4}));
  EXPECT_EQ(members[2], (std::vector<int>{2, 5}));
}

std::string errorOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(ProcessMesh, ErrorsNameTheSizes) {
  runRanks(6, "loopback", [&](comm::ProcessGroup& g) {
    const std::string notMultiple = errorOf([&] { ProcessMesh::make(borrow(g), 4); });
    EXPECT_NE(notMultiple.find("world size 6"), std::string::npos) << notMultiple;
    EXPECT_NE(notMultiple.find("tp 4"), std::string::npos) << notMultiple;
    EXPECT_NE(notMultiple.find("dp would be"), std::string::npos) << notMultiple;
    const std::string product = errorOf([&] { ProcessMesh(borrow(g), {{"dp", 2}, {"tp", 2}}); });
    EXPECT_NE(product.find("4 ranks"), std::string::npos) << product;
    EXPECT_NE(product.find("world has 6"), std::string::npos) << product;
    EXPECT_NE(errorOf([&] { ProcessMesh(borrow(g), {{"tp", 3}, {"tp", 2}}); }).find("twice"), std::string::npos);
    EXPECT_NE(errorOf([&] { ProcessMesh(borrow(g), {{"dp", 6}, {"tp", 0}}); }).find("size 0"), std::string::npos);
    EXPECT_NE(errorOf([&] { ProcessMesh::make(borrow(g), 0); }), "");
    // The errors come before any split, so the world is still usable: a good mesh follows.
    ProcessMesh ok = ProcessMesh::make(borrow(g), 3);
    EXPECT_EQ(ok.size("dp"), 2);
  });
}

}  // namespace
}  // namespace chorus::parallel
