// Scatter: the root's input holds one block per rank; rank r receives block r.
//
// Steps: the root posts one send per rank at once and copies its own block; every other
// rank receives its block straight into its output.
//
//   root: [ b0 | b1 | b2 | b3 ] --> b1 to r1, b2 to r2, b3 to r3
//
// Cost (n = bytes per rank): α + (P-1)·n·β at the root, whose outgoing link carries every
// other rank's block once — the lower bound for a scatter.
#include <cstring>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

void scatter(Comm& comm, const ScatterOptions& o) {
  detail::requireRoot(comm, o.root);
  detail::requireBuffer(o.output, o.count, "scatter output");
  const int P = comm.size(), r = comm.rank();
  const size_t bytes = o.count * dtypeSize(o.dtype);
  if (r != o.root) {
    if (bytes > 0) comm.recv(o.root, 0, o.output, bytes);
    return;
  }
  detail::requireBuffer(o.input, o.count * static_cast<size_t>(P), "scatter input (on the root)");
  if (bytes == 0) return;
  auto slot = [&](int q) { return static_cast<const char*>(o.input) + static_cast<size_t>(q) * bytes; };
  std::vector<RequestPtr> reqs;
  for (int q = 0; q < P; ++q) {
    if (q != r) reqs.push_back(comm.isend(q, 0, slot(q), bytes));
  }
  // The root's own block is copied after the sends complete, so an output that overlaps
  // the input cannot change what the others receive.
  comm.waitAll(reqs);
  if (o.output != slot(r)) std::memmove(o.output, slot(r), bytes);
}

}  // namespace chorus::comm
