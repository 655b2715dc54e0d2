// All-to-all (and all-to-allv): block j of rank i's input becomes block i of rank j's output.
//
// Steps: every rank copies its own block, posts all P-1 receives (each straight into its
// slot of the output), then posts the P-1 sends in pairwise order — in step s to r+s while
// receiving from r-s — so that at any moment the ranks target different peers instead of
// all sending to rank 0 first. With sendCounts/recvCounts (alltoallv) the blocks are packed
// back to back with those sizes; zero-size blocks are still exchanged (as empty messages),
// so a sender and a receiver that disagree about a size get MismatchError, not a hang.
//
//   P = 4, pairwise order of sends:   s=1: r->r+1   s=2: r->r+2   s=3: r->r+3
//
// Cost (n = bytes each rank sends in all): (P-1)·α + (P-1)/P·n·β — every byte crosses the
// network once, the lower bound.
#include <cstring>
#include <numeric>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

void alltoall(Comm& comm, const AlltoallOptions& o) {
  const int P = comm.size(), r = comm.rank();
  const bool variable = !o.sendCounts.empty() || !o.recvCounts.empty();
  std::vector<size_t> sendCounts = o.sendCounts, recvCounts = o.recvCounts;
  if (variable) {
    detail::requireCounts(comm, sendCounts, "alltoallv sendCounts");
    detail::requireCounts(comm, recvCounts, "alltoallv recvCounts");
  } else {
    sendCounts.assign(static_cast<size_t>(P), o.count);
    recvCounts.assign(static_cast<size_t>(P), o.count);
  }
  const size_t esize = dtypeSize(o.dtype);
  std::vector<size_t> sendOff(static_cast<size_t>(P) + 1, 0), recvOff(static_cast<size_t>(P) + 1, 0);
  std::partial_sum(sendCounts.begin(), sendCounts.end(), sendOff.begin() + 1);
  std::partial_sum(recvCounts.begin(), recvCounts.end(), recvOff.begin() + 1);
  const size_t sendBytes = sendOff[static_cast<size_t>(P)] * esize, recvBytes = recvOff[static_cast<size_t>(P)] * esize;
  detail::requireBuffer(o.input, sendOff[static_cast<size_t>(P)], "alltoall input");
  detail::requireBuffer(o.output, recvOff[static_cast<size_t>(P)], "alltoall output");
  const auto me = static_cast<size_t>(r);
  if (sendCounts[me] != recvCounts[me]) {
    throw InvalidArgument(str("alltoallv on rank ", r, ": sendCounts[", r, "] = ", sendCounts[me], " but recvCounts[",
                              r, "] = ", recvCounts[me], "; a rank's block to itself must have one size"));
  }

  // Equal blocks are agreed through the signature, so empty ones need no messages.
  if (!variable && o.count == 0) return;

  // In place (input overlapping output): send from a copy, since receives overwrite.
  const void* input = o.input;
  std::vector<char> copy;
  if (detail::overlaps(o.input, sendBytes, o.output, recvBytes)) {
    copy.assign(static_cast<const char*>(o.input), static_cast<const char*>(o.input) + sendBytes);
    input = copy.data();
  }
  auto in = [&](int q) { return detail::advance(input, sendOff[static_cast<size_t>(q)], esize); };
  auto out = [&](int q) { return detail::advance(o.output, recvOff[static_cast<size_t>(q)], esize); };

  if (recvCounts[me] > 0) std::memmove(out(r), in(r), recvCounts[me] * esize);
  std::vector<RequestPtr> reqs;
  for (int s = 1; s < P; ++s) {
    const int from = detail::mod(r - s, P);
    reqs.push_back(comm.irecv(from, 0, out(from), recvCounts[static_cast<size_t>(from)] * esize));
  }
  for (int s = 1; s < P; ++s) {
    const int to = (r + s) % P;
    reqs.push_back(comm.isend(to, 0, in(to), sendCounts[static_cast<size_t>(to)] * esize));
  }
  comm.waitAll(reqs);
}

}  // namespace chorus::comm
