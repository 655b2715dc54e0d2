// Reduce-scatter on a ring: rank r ends with the reduction of every rank's block r.
//
// Steps (P ranks, blocks of counts[i] elements, possibly all different): in step s
// (0 <= s < P-1) rank r sends its running partial of block r-s-1 to r+1 and receives r-1's
// partial of block r-s-2, which it reduces into a copy of its own input block as it arrives
// (RecvReduce). In step 0 the partial sent is just the input block; in the last step the
// block received is r's own, reduced straight into the output. Two scratch buffers of the
// largest block alternate: one being sent while the next is received into.
//
//   P = 3, partials travelling to the right (bX.r is rank r's input block X):
//   step 0:  r0 sends b2.0 -> r1        r1 sends b0.1 -> r2        r2 sends b1.2 -> r0
//   step 1:  r0 sends b1.2+b1.0 -> r1   r1 sends b2.0+b2.1 -> r2   r2 sends b0.1+b0.2 -> r0
//   after:   r0 holds Σb0               r1 holds Σb1               r2 holds Σb2
//
// An average sums, then divides the output once.
//
// Cost (n = total input bytes): (P-1)·α + (P-1)/P·n·β + (P-1)/P·n·γ — the bandwidth lower
// bound. With uneven counts each step costs the largest block it moves.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/common/reduce.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

void reduceScatter(Comm& comm, const ReduceScatterOptions& o) {
  const int P = comm.size(), r = comm.rank();
  std::vector<size_t> counts = o.counts;
  if (counts.empty()) {
    counts.assign(static_cast<size_t>(P), o.count);
  } else {
    detail::requireCounts(comm, counts, "reduce_scatter counts");
  }
  std::vector<size_t> offsets(static_cast<size_t>(P) + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  const size_t esize = dtypeSize(o.dtype);
  const size_t total = offsets[static_cast<size_t>(P)];
  detail::requireBuffer(o.input, total, "reduce_scatter input");
  detail::requireBuffer(o.output, counts[static_cast<size_t>(r)], "reduce_scatter output");

  auto inBlock = [&](int b) { return detail::advance(o.input, offsets[static_cast<size_t>(b)], esize); };
  auto blockBytes = [&](int b) { return counts[static_cast<size_t>(b)] * esize; };
  const size_t outBytes = blockBytes(r);
  if (detail::overlaps(o.output, outBytes, o.input, total * esize) && o.output != inBlock(r)) {
    throw InvalidArgument(str("reduce_scatter output overlaps the input on rank ", r,
                              "; it may only be the input's own block ", r, " (in place)"));
  }
  if (P == 1) {
    if (outBytes > 0) std::memmove(o.output, inBlock(0), outBytes);
    finishReduce(o.output, counts[0], o.dtype, o.op, 1);
    return;
  }

  const int prev = detail::mod(r - 1, P), next = detail::mod(r + 1, P);
  const RecvReduce rr{o.dtype, detail::partialOp(o.op)};
  const size_t maxBytes = *std::max_element(counts.begin(), counts.end()) * esize;
  std::vector<char> work[2];
  if (P > 2) {
    work[0].resize(maxBytes);
    work[1].resize(maxBytes);
  }
  for (int s = 0; s < P - 1; ++s) {
    const int sendBlock = detail::mod(r - s - 1, P), recvBlock = detail::mod(r - s - 2, P);
    const void* sendBuf = s == 0 ? static_cast<const void*>(inBlock(sendBlock)) : work[(s - 1) % 2].data();
    void* recvBuf = s == P - 2 ? o.output : work[s % 2].data();
    // The partial starts as this rank's own contribution; the incoming one is added to it.
    if (blockBytes(recvBlock) > 0) std::memmove(recvBuf, inBlock(recvBlock), blockBytes(recvBlock));
    std::vector<RequestPtr> reqs;
    if (blockBytes(recvBlock) > 0) reqs.push_back(comm.irecv(prev, 0, recvBuf, blockBytes(recvBlock), &rr));
    if (blockBytes(sendBlock) > 0) reqs.push_back(comm.isend(next, 0, sendBuf, blockBytes(sendBlock)));
    comm.waitAll(reqs);
  }
  finishReduce(o.output, counts[static_cast<size_t>(r)], o.dtype, o.op, P);
}

}  // namespace chorus::comm
