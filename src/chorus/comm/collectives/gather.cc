// Gather: the root receives every rank's input, concatenated in rank order.
//
// Steps: every non-root rank sends its input to the root; the root copies its own and posts
// one receive per rank, straight into that rank's slot of the output, all at once, so the
// transfers overlap and their order does not matter.
//
//   r1 ---.
//   r2 ----+---> root: [ b0 | b1 | b2 | b3 ]
//   r3 ---'
//
// Cost (n = bytes per rank): α + (P-1)·n·β at the root, whose incoming link carries every
// other rank's block once — the lower bound for a gather; a tree would only move the
// bottleneck's latency, not its bytes.
#include <cstring>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

void gather(Comm& comm, const GatherOptions& o) {
  detail::requireRoot(comm, o.root);
  detail::requireBuffer(o.input, o.count, "gather input");
  const int P = comm.size(), r = comm.rank();
  const size_t bytes = o.count * dtypeSize(o.dtype);
  if (r != o.root) {
    if (bytes > 0) comm.send(o.root, 0, o.input, bytes);
    return;
  }
  detail::requireBuffer(o.output, o.count * static_cast<size_t>(P), "gather output (on the root)");
  if (bytes == 0) return;
  auto slot = [&](int q) { return static_cast<char*>(o.output) + static_cast<size_t>(q) * bytes; };
  std::vector<RequestPtr> reqs;
  for (int q = 0; q < P; ++q) {
    if (q != r) reqs.push_back(comm.irecv(q, 0, slot(q), bytes));
  }
  if (o.input != slot(r)) std::memmove(slot(r), o.input, bytes);
  comm.waitAll(reqs);
}

}  // namespace chorus::comm
