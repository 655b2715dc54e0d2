// All-gather (and all-gatherv) on a ring: every rank ends with every rank's input,
// concatenated in rank order.
//
// Steps: rank r first copies its input into its own slot of the output. Then in step s
// (0 <= s < P-1) it sends block r-s (its own in step 0, afterwards the one it just received)
// to r+1 and receives block r-s-1 from r-1 straight into its slot. With counts (allgatherv)
// the blocks have those sizes; empty blocks are skipped by both sides, which agree on them.
//
//   P = 3:   step 0:  r0: b0 -> r1   r1: b1 -> r2   r2: b2 -> r0
//            step 1:  r0: b2 -> r1   r1: b0 -> r2   r2: b1 -> r0
//
// Cost (n = output bytes): (P-1)·α + (P-1)/P·n·β, the bandwidth lower bound; with uneven
// counts each step costs the largest block in flight.
#include <cstring>
#include <numeric>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

void allgather(Comm& comm, const AllgatherOptions& o) {
  if (linksOf(comm).hierarchical()) return allgatherHierarchical(comm, o);
  allgatherFlat(comm, o);
}

namespace detail {

GatherLayout allgatherLayout(const Comm& comm, const AllgatherOptions& o) {
  const int P = comm.size(), r = comm.rank();
  GatherLayout l;
  l.counts = o.counts;
  if (l.counts.empty()) {
    l.counts.assign(static_cast<size_t>(P), o.count);
  } else {
    requireCounts(comm, l.counts, "allgatherv counts");
    if (l.counts[static_cast<size_t>(r)] != o.count) {
      throw InvalidArgument(str("allgatherv: count is ", o.count, " on rank ", r, " but counts[", r, "] is ",
                                l.counts[static_cast<size_t>(r)], "; they must agree"));
    }
  }
  l.offsets.assign(static_cast<size_t>(P) + 1, 0);
  std::partial_sum(l.counts.begin(), l.counts.end(), l.offsets.begin() + 1);
  requireBuffer(o.input, o.count, "allgather input");
  requireBuffer(o.output, l.offsets[static_cast<size_t>(P)], "allgather output");
  return l;
}

}  // namespace detail

void allgatherFlat(Comm& comm, const AllgatherOptions& o) {
  const int P = comm.size(), r = comm.rank();
  const auto [counts, offsets] = detail::allgatherLayout(comm, o);
  const size_t esize = dtypeSize(o.dtype);

  auto block = [&](int b) { return detail::advance(o.output, offsets[static_cast<size_t>(b)], esize); };
  auto blockBytes = [&](int b) { return counts[static_cast<size_t>(b)] * esize; };
  // memmove: the input may already be this rank's slot of the output (in place).
  if (blockBytes(r) > 0 && o.input != block(r)) std::memmove(block(r), o.input, blockBytes(r));

  const int prev = detail::mod(r - 1, P), next = detail::mod(r + 1, P);
  for (int s = 0; s < P - 1; ++s) {
    const int sendBlock = detail::mod(r - s, P), recvBlock = detail::mod(r - s - 1, P);
    std::vector<RequestPtr> reqs;
    if (blockBytes(recvBlock) > 0) reqs.push_back(comm.irecv(prev, 0, block(recvBlock), blockBytes(recvBlock)));
    if (blockBytes(sendBlock) > 0) reqs.push_back(comm.isend(next, 0, block(sendBlock), blockBytes(sendBlock)));
    comm.waitAll(reqs);
  }
}

}  // namespace chorus::comm
