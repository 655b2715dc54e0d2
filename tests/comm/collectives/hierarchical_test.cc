// The hierarchical collectives (hierarchical.cc) against the serial reference, on host
// layouts with even and uneven ranks per host, hosts whose ranks are not contiguous, and the
// degenerate layouts (one host; one rank per host). Ranks are threads that pretend to be on
// the layout's hosts: loopback transports with a host map, and the mixed transport (shm inside
// a pretend host, tcp between them).
//
// Each layout runs, in one process group: all-reduce with the hierarchical algorithm for every
// dtype and op at counts 0, 1, 7 and 4P+3 plus a 100003-element float32 sum, all-reduce with
// kAuto (which must pick the hierarchical one exactly when the layout has several hosts and
// a host with several ranks), broadcast from every root, and all-gather and all-gatherv.
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <thread>
#include <tuple>

#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/group.h"
#include "util/collective_reference.h"
#include "util/loopback_transport.h"
#include "util/rank_threads.h"

namespace chorus::comm {
namespace {

using testutil::checkReduced;
using testutil::checkTokens;
using testutil::fillTokens;
using testutil::makeInput;

struct Layout {
  const char* name;
  std::vector<int> hosts;
};

const std::vector<Layout>& layouts() {
  static const std::vector<Layout> all = {
      {"2x2", {0, 0, 1, 1}},
      {"2x3", {0, 0, 0, 1, 1, 1}},
      {"3x1", {0, 1, 2}},
      {"1and2", {0, 1, 1}},
      {"2and1", {0, 0, 1}},
      {"interleaved2x2", {0, 1, 0, 1}},
      {"1and2and3", {2, 0, 1, 2, 1, 2}},
      {"1x3", {0, 0, 0}},
  };
  return all;
}

bool spansHostsWithSharing(const std::vector<int>& hosts) {
  int most = 0, count = 0;
  for (int h : hosts) {
    most = std::max(most, static_cast<int>(std::count(hosts.begin(), hosts.end(), h)));
    count = std::max(count, h + 1);
  }
  return count > 1 && most > 1;
}

using Param = std::tuple<std::string, size_t>;  // transport, layout index

class Hierarchical : public ::testing::TestWithParam<Param> {};

TEST_P(Hierarchical, MatchesSerialReference) {
  const auto& [transport, which] = GetParam();
  const Layout& layout = layouts()[which];
  const int P = static_cast<int>(layout.hosts.size());
  std::mutex mu;
  std::vector<std::string> failures;
  auto fail = [&](const std::string& f) {
    std::lock_guard<std::mutex> lock(mu);
    failures.push_back(f);
  };

  testutil::RankOptions opts;
  opts.transport = transport;
  opts.hosts = layout.hosts;
  testutil::runRanks(P, opts, [&](ProcessGroup& g) {
    const Links& links = g.links();
    if (links.hierarchical() != spansHostsWithSharing(layout.hosts)) {
      fail(str("rank ", g.rank(), ": links say hierarchical=", links.hierarchical(), " for ", layout.name));
    }
    const bool autoHier = chooseAllreduceAlgo(1 << 20, P, links) == AllreduceAlgo::kHierarchical;
    if (autoHier != spansHostsWithSharing(layout.hosts)) {
      fail(str("rank ", g.rank(), ": auto picks ", algoName(chooseAllreduceAlgo(1 << 20, P, links)), " for ",
               layout.name));
    }
    // All-reduce, hierarchical and auto.
    std::vector<std::tuple<size_t, DType, ReduceOp, AllreduceAlgo>> cases;
    for (size_t count : {size_t{0}, size_t{1}, size_t{7}, static_cast<size_t>(4 * P + 3)}) {
      for (DType dtype : kAllDTypes) {
        for (ReduceOp op : kAllReduceOps) cases.emplace_back(count, dtype, op, AllreduceAlgo::kHierarchical);
      }
    }
    cases.emplace_back(100003, DType::kFloat32, ReduceOp::kSum, AllreduceAlgo::kHierarchical);
    cases.emplace_back(100003, DType::kFloat16, ReduceOp::kAvg, AllreduceAlgo::kAuto);
    cases.emplace_back(33, DType::kInt64, ReduceOp::kMax, AllreduceAlgo::kAuto);
    for (const auto& [count, dtype, op, algo] : cases) {
      std::vector<uint8_t> buf = makeInput(g.rank(), count, dtype, op);
      AllreduceOptions o;
      o.data = buf.data();
      o.count = count;
      o.dtype = dtype;
      o.op = op;
      o.algo = algo;
      g.allreduce(o);
      const std::string err = checkReduced(buf.data(), count, dtype, op, P);
      if (!err.empty()) fail(str("rank ", g.rank(), " allreduce ", algoName(algo), " count ", count, ": ", err));
    }
    // Broadcast from every root, small and large (the flat phases' two algorithms).
    for (int root = 0; root < P; ++root) {
      for (size_t count : {size_t{5}, size_t{300001}}) {
        for (DType dtype : {DType::kFloat32, DType::kUInt8}) {
          std::vector<uint8_t> buf(count * dtypeSize(dtype), 0);
          if (g.rank() == root) fillTokens(buf.data(), count, dtype, root);
          BroadcastOptions b;
          b.data = buf.data();
          b.count = count;
          b.dtype = dtype;
          b.root = root;
          g.broadcast(b);
          const std::string err = checkTokens(buf.data(), count, dtype, root);
          if (!err.empty()) fail(str("rank ", g.rank(), " broadcast root ", root, " count ", count, ": ", err));
        }
      }
    }
    // All-gather and all-gatherv (rank r gives r+1 elements, one rank none).
    for (bool variable : {false, true}) {
      for (DType dtype : {DType::kFloat64, DType::kBFloat16}) {
        std::vector<size_t> counts(static_cast<size_t>(P), 9);
        if (variable) {
          for (int r = 0; r < P; ++r) counts[static_cast<size_t>(r)] = r == 1 ? 0 : static_cast<size_t>(r + 1) * 1000;
        }
        size_t total = 0, at = 0;
        for (int r = 0; r < P; ++r) {
          if (r < g.rank()) at += counts[static_cast<size_t>(r)];
          total += counts[static_cast<size_t>(r)];
        }
        const size_t mine = counts[static_cast<size_t>(g.rank())];
        std::vector<uint8_t> in(mine * dtypeSize(dtype)), out(total * dtypeSize(dtype));
        fillTokens(in.data(), mine, dtype, g.rank());
        AllgatherOptions a;
        a.input = in.data();
        a.output = out.data();
        a.count = mine;
        if (variable) a.counts = counts;
        a.dtype = dtype;
        g.allgather(a);
        size_t off = 0;
        for (int r = 0; r < P; ++r) {
          const size_t n = counts[static_cast<size_t>(r)];
          const std::string err = checkTokens(out.data() + off * dtypeSize(dtype), n, dtype, r);
          if (!err.empty()) fail(str("rank ", g.rank(), " allgather block ", r, ": ", err));
          off += n;
        }
        (void)at;
      }
    }
  });
  for (const auto& f : failures) ADD_FAILURE() << layout.name << ": " << f;
}

INSTANTIATE_TEST_SUITE_P(Layouts, Hierarchical,
                         ::testing::Combine(::testing::Values("loopback", "mixed"),
                                            ::testing::Range(size_t{0}, layouts().size())),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           return std::get<0>(info.param) + "_" + layouts()[std::get<1>(info.param)].name;
                         });

// Counts the bytes a rank posts to ranks on other hosts; everything else goes to the wrapped
// transport unchanged.
class CrossHostCounter : public Transport {
 public:
  explicit CrossHostCounter(std::unique_ptr<Transport> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const char* name() const override { return "counting"; }
  RequestPtr isend(int peer, uint64_t tag, uint64_t sig, const void* data, size_t bytes) override {
    if (hostOf(peer) != hostOf(rank())) crossBytes += bytes;
    return inner_->isend(peer, tag, sig, data, bytes);
  }
  RequestPtr irecv(int peer, uint64_t tag, uint64_t sig, void* data, size_t bytes, const RecvReduce* reduce) override {
    return inner_->irecv(peer, tag, sig, data, bytes, reduce);
  }
  bool test(const RequestPtr& req) override { return inner_->test(req); }
  void close() override { inner_->close(); }
  uint64_t crossBytes = 0;

 protected:
  size_t wait(std::span<const RequestPtr> reqs, const Deadline& deadline, WaitMode mode) override {
    if (mode == WaitMode::kAll) {
      inner_->waitAll(reqs, deadline);
      return reqs.size();
    }
    return mode == WaitMode::kAny ? inner_->waitAny(reqs, deadline) : inner_->waitAnyUntil(reqs, deadline);
  }

 private:
  std::unique_ptr<Transport> inner_;
};

// On 2 hosts x 2 ranks a flat ring sends 2·(P-1)/P·n = 1.5·n over each of the two links that
// cross between the hosts (3·n in all); the hierarchical all-reduce sends n/2 across per rank
// (2·n in all): the 1.5x the design promises, counted byte by byte.
TEST(Hierarchical, SendsTwoThirdsOfAFlatRingAcrossHosts) {
  const size_t count = 1 << 16, n = count * sizeof(float);
  uint64_t cross[2] = {0, 0};  // hierarchical, ring; summed over ranks
  for (int k = 0; k < 2; ++k) {
    auto loop = testutil::createLoopbackTransports(4);
    std::vector<std::shared_ptr<CrossHostCounter>> ts;
    for (auto& t : loop) {
      ts.push_back(std::make_shared<CrossHostCounter>(std::move(t)));
      ts.back()->setHosts({0, 0, 1, 1});
    }
    std::vector<std::thread> threads;
    for (int r = 0; r < 4; ++r) {
      threads.emplace_back([&, r] {
        GroupOptions o;
        o.timeout = Millis(20000);
        auto g = ProcessGroup::create(ts[static_cast<size_t>(r)], o);
        std::vector<float> buf(count, 1.0f);
        AllreduceOptions a;
        a.data = buf.data();
        a.count = count;
        a.algo = k == 0 ? AllreduceAlgo::kHierarchical : AllreduceAlgo::kRing;
        g->allreduce(a);
        EXPECT_EQ(buf[count / 3], 4.0f);
      });
    }
    for (auto& t : threads) t.join();
    for (auto& t : ts) cross[k] += t->crossBytes;
  }
  EXPECT_EQ(cross[0], 2 * n);
  EXPECT_EQ(cross[1], 3 * n);
}

}  // namespace
}  // namespace chorus::comm
