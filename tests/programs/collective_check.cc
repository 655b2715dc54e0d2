// A rank program for tests/tools/launch_test.sh: joins the job through
// ProcessGroup::fromEnvironment() and checks each collective against values computed here
// from the rank-dependent inputs, over counts that do not divide evenly (0, 1, 7, a large
// prime). Prints one line per mismatch (the first few per check) and exits 1 if there was
// any; prints "collective_check: rank R of N ok" and exits 0 otherwise.
//
//   collective_check [--quick]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/group.h"

using chorus::DType;
using chorus::ReduceOp;
namespace comm = chorus::comm;

namespace {

int gFailures = 0;

// Compares got with want element by element; reports the first few differences.
template <typename T>
void expectEqual(const std::string& what, int rank, const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size()) {
    std::fprintf(stderr, "MISMATCH %s rank %d: size %zu, expected %zu\n", what.c_str(), rank, got.size(), want.size());
    ++gFailures;
    return;
  }
  int shown = 0;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] == want[i]) continue;
    ++bad;
    if (shown++ < 3) {
      std::fprintf(stderr, "MISMATCH %s rank %d: element %zu is %g, expected %g\n", what.c_str(), rank, i,
                   static_cast<double>(got[i]), static_cast<double>(want[i]));
    }
  }
  if (bad > 0) {
    std::fprintf(stderr, "MISMATCH %s rank %d: %zu of %zu elements wrong\n", what.c_str(), rank, bad, got.size());
    ++gFailures;
  }
}

// The input of rank r at element i: small integers, so float sums are exact.
float value(int r, size_t i) { return static_cast<float>((static_cast<size_t>(r) * 3 + i) % 11); }

void checkAllreduce(comm::ProcessGroup& pg, size_t count, comm::AllreduceAlgo algo) {
  const int n = pg.size(), r = pg.rank();
  std::vector<float> data(count), want(count, 0.0f);
  for (size_t i = 0; i < count; ++i) {
    data[i] = value(r, i);
    for (int q = 0; q < n; ++q) want[i] += value(q, i);
  }
  comm::AllreduceOptions o;
  o.data = data.data();
  o.count = count;
  o.dtype = DType::kFloat32;
  o.op = ReduceOp::kSum;
  o.algo = algo;
  pg.allreduce(o);
  expectEqual(chorus::str("allreduce sum float32 count ", count, " algo ", comm::algoName(algo)), r, data, want);

  std::vector<int32_t> mx(count), wantMax(count, 0);
  for (size_t i = 0; i < count; ++i) {
    mx[i] = static_cast<int32_t>((static_cast<size_t>(r) * 7 + i) % 13);
    for (int q = 0; q < n; ++q) wantMax[i] = std::max(wantMax[i], static_cast<int32_t>((static_cast<size_t>(q) * 7 + i) % 13));
  }
  comm::AllreduceOptions m;
  m.data = mx.data();
  m.count = count;
  m.dtype = DType::kInt32;
  m.op = ReduceOp::kMax;
  m.algo = algo;
  pg.allreduce(m);
  expectEqual(chorus::str("allreduce max int32 count ", count, " algo ", comm::algoName(algo)), r, mx, wantMax);
}

void checkBroadcast(comm::ProcessGroup& pg, size_t count, int root) {
  const int r = pg.rank();
  std::vector<float> data(count), want(count);
  for (size_t i = 0; i < count; ++i) {
    data[i] = r == root ? value(root, i) : -1.0f;
    want[i] = value(root, i);
  }
  comm::BroadcastOptions o;
  o.data = data.data();
  o.count = count;
  o.dtype = DType::kFloat32;
  o.root = root;
  pg.broadcast(o);
  expectEqual(chorus::str("broadcast count ", count, " root ", root), r, data, want);
}

void checkAllgather(comm::ProcessGroup& pg, size_t count) {
  const int n = pg.size(), r = pg.rank();
  std::vector<float> in(count), out(count * static_cast<size_t>(n), -1.0f), want;
  for (size_t i = 0; i < count; ++i) in[i] = value(r, i);
  for (int q = 0; q < n; ++q) {
    for (size_t i = 0; i < count; ++i) want.push_back(value(q, i));
  }
  comm::AllgatherOptions o;
  o.input = in.data();
  o.output = out.data();
  o.count = count;
  o.dtype = DType::kFloat32;
  pg.allgather(o);
  expectEqual(chorus::str("allgather count ", count), r, out, want);
}

void checkReduceScatter(comm::ProcessGroup& pg, size_t count) {
  const int n = pg.size(), r = pg.rank();
  std::vector<float> in(count * static_cast<size_t>(n)), out(count, -1.0f), want(count, 0.0f);
  for (size_t i = 0; i < in.size(); ++i) in[i] = value(r, i);
  for (size_t j = 0; j < count; ++j) {
    for (int q = 0; q < n; ++q) want[j] += value(q, static_cast<size_t>(r) * count + j);
  }
  comm::ReduceScatterOptions o;
  o.input = in.data();
  o.output = out.data();
  o.count = count;
  o.dtype = DType::kFloat32;
  o.op = ReduceOp::kSum;
  pg.reduceScatter(o);
  expectEqual(chorus::str("reduce_scatter count ", count), r, out, want);
}

void checkAlltoall(comm::ProcessGroup& pg, size_t count) {
  const int n = pg.size(), r = pg.rank();
  std::vector<float> in(count * static_cast<size_t>(n)), out(in.size(), -1.0f), want;
  for (size_t i = 0; i < in.size(); ++i) in[i] = value(r, i);
  for (int q = 0; q < n; ++q) {
    for (size_t j = 0; j < count; ++j) want.push_back(value(q, static_cast<size_t>(r) * count + j));
  }
  comm::AlltoallOptions o;
  o.input = in.data();
  o.output = out.data();
  o.count = count;
  o.dtype = DType::kFloat32;
  pg.alltoall(o);
  expectEqual(chorus::str("alltoall count ", count), r, out, want);
}

// Even and odd ranks form two sub-groups, ordered by descending rank; each all-reduces its
// members' ranks.
void checkSplit(comm::ProcessGroup& pg) {
  const int n = pg.size(), r = pg.rank();
  std::shared_ptr<comm::ProcessGroup> sub = pg.split(r % 2, -r);
  if (!sub) {
    std::fprintf(stderr, "MISMATCH split rank %d: got no sub-group for color %d\n", r, r % 2);
    ++gFailures;
    return;
  }
  int members = 0, expectRank = 0;
  int64_t want = 0;
  for (int q = 0; q < n; ++q) {
    if (q % 2 != r % 2) continue;
    ++members;
    want += q;
    if (q > r) ++expectRank;
  }
  if (sub->size() != members || sub->rank() != expectRank) {
    std::fprintf(stderr, "MISMATCH split rank %d: sub-group rank %d of %d, expected %d of %d\n", r, sub->rank(),
                 sub->size(), expectRank, members);
    ++gFailures;
    return;
  }
  std::vector<int64_t> v = {r, 1};
  comm::AllreduceOptions o;
  o.data = v.data();
  o.count = v.size();
  o.dtype = DType::kInt64;
  o.op = ReduceOp::kSum;
  sub->allreduce(o);
  expectEqual("allreduce in split sub-group", r, v, std::vector<int64_t>{want, members});
  sub->barrier();

  // A negative color joins no sub-group.
  std::shared_ptr<comm::ProcessGroup> none = pg.split(r == 0 ? -1 : 0, r);
  if ((r == 0) != (none == nullptr)) {
    std::fprintf(stderr, "MISMATCH split rank %d: color -1 must give no group, others one\n", r);
    ++gFailures;
  }
  if (none) none->barrier();
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  try {
    std::shared_ptr<comm::ProcessGroup> pg = comm::ProcessGroup::fromEnvironment();
    const int n = pg->size();
    std::vector<size_t> counts = {0, 1, 7, 1000};
    if (!quick) counts.push_back(262147);  // a prime, 1 MiB of float32: several ring chunks
    for (size_t count : counts) {
      for (auto algo : {comm::AllreduceAlgo::kAuto, comm::AllreduceAlgo::kRing, comm::AllreduceAlgo::kHalvingDoubling,
                        comm::AllreduceAlgo::kTree, comm::AllreduceAlgo::kDirect}) {
        checkAllreduce(*pg, count, algo);
      }
      checkBroadcast(*pg, count, static_cast<int>(count % static_cast<size_t>(n)));
      checkAllgather(*pg, count);
      checkReduceScatter(*pg, count);
      checkAlltoall(*pg, count);
    }
    checkSplit(*pg);
    pg->barrier();
    // A second join of the same job: its own transport and keys, usable beside the first.
    std::shared_ptr<comm::ProcessGroup> second = comm::ProcessGroup::fromEnvironment();
    checkAllreduce(*second, 1000, comm::AllreduceAlgo::kRing);
    checkAllreduce(*pg, 1000, comm::AllreduceAlgo::kRing);
    if (gFailures > 0) {
      std::fprintf(stderr, "collective_check: rank %d of %d: %d checks FAILED\n", pg->rank(), n, gFailures);
      return 1;
    }
    std::printf("collective_check: rank %d of %d ok (transport %s)\n", pg->rank(), n, pg->transportName());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "collective_check: error: %s\n", e.what());
    return 1;
  }
}
