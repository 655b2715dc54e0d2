// Reduce: the reduction of every rank's buffer lands in the root's. Other ranks' buffers are
// used as scratch. Two algorithms, by message size; ranks are numbered relative to the root
// (v = (r - root) mod P).
//
// Binomial tree (small messages), the mirror of binomial broadcast. In round k (mask 2^k) a
// rank with bit k set sends its partial to v - 2^k and is done; a rank with bits 0..k clear
// receives from v + 2^k (if it exists) and reduces on receive.
//
//   P = 8:  round 0: 1->0 3->2 5->4 7->6   round 1: 2->0 6->4   round 2: 4->0
//
// Cost: ceil(log2 P)·(α + n·β + n·γ); the root receives log2 P full buffers.
//
// Reduce-scatter + gather (large messages). The ring reduce-scatter of ring all-reduce leaves
// rank r with the full reduction of block r+1; each rank then sends that block to the root.
//
// Cost: (P-1)·α + (P-1)/P·n·β + (P-1)/P·n·γ for the reduce-scatter, then the root receives
// (P-1)/P·n bytes: ≈ 2·n·β at the root however large P is, against n·β·log2 P.
//
// An average sums, and the root divides once.
#include <vector>

#include "chorus/common/error.h"
#include "chorus/common/reduce.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

namespace {

// Messages of at least this many bytes take reduce-scatter + gather. Tuned with
// `chorus bench collectives --op reduce`.
constexpr size_t kReduceScatterGatherMinBytes = size_t{256} << 10;

constexpr uint16_t kBinomialStep = 0;
constexpr uint16_t kRingStep = 1;
constexpr uint16_t kGatherStep = 2;

void binomialReduce(Comm& comm, const ReduceOptions& o) {
  const int P = comm.size();
  const int v = detail::mod(comm.rank() - o.root, P);
  auto real = [&](int w) { return (w + o.root) % P; };
  const size_t bytes = o.count * dtypeSize(o.dtype);
  const RecvReduce rr{o.dtype, detail::partialOp(o.op)};
  for (int mask = 1; mask < P; mask <<= 1) {
    if (v & mask) {
      comm.send(real(v - mask), kBinomialStep, o.data, bytes);
      return;
    }
    // One child at a time: two reductions into one buffer must not run at once.
    if (v + mask < P) comm.recv(real(v + mask), kBinomialStep, o.data, bytes, &rr);
  }
}

void reduceScatterGather(Comm& comm, const ReduceOptions& o) {
  const int P = comm.size(), r = comm.rank();
  const size_t esize = dtypeSize(o.dtype);
  detail::ringReduceScatterInPlace(comm, o.data, o.count, o.dtype, o.op, kRingStep);
  if (r != o.root) {
    const detail::Block own = detail::evenBlock(o.count, P, (r + 1) % P);
    if (own.count > 0) comm.send(o.root, kGatherStep, detail::advance(o.data, own.offset, esize), own.count * esize);
    return;
  }
  std::vector<RequestPtr> reqs;
  for (int q = 0; q < P; ++q) {
    if (q == r) continue;
    const detail::Block b = detail::evenBlock(o.count, P, (q + 1) % P);
    if (b.count > 0) reqs.push_back(comm.irecv(q, kGatherStep, detail::advance(o.data, b.offset, esize), b.count * esize));
  }
  comm.waitAll(reqs);
}

}  // namespace

void reduce(Comm& comm, const ReduceOptions& o) {
  detail::requireRoot(comm, o.root);
  detail::requireBuffer(o.data, o.count, "reduce data");
  if (o.count == 0) return;
  const size_t bytes = o.count * dtypeSize(o.dtype);
  if (comm.size() > 1) {
    if (bytes >= kReduceScatterGatherMinBytes && comm.size() > 2) {
      reduceScatterGather(comm, o);
    } else {
      binomialReduce(comm, o);
    }
  }
  if (comm.rank() == o.root) finishReduce(o.data, o.count, o.dtype, o.op, comm.size());
}

}  // namespace chorus::comm
