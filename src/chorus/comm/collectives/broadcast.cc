// Broadcast: the root's buffer reaches every rank. Two algorithms, by message size; ranks
// are numbered relative to the root (v = (r - root) mod P).
//
// Binomial tree (small messages). In round k (mask m = 2^k) every rank v < m that already
// has the data sends it to v + m. log2(P) rounds; the root sends log2(P) full copies.
//
//   P = 8:  round 0: 0->1   round 1: 0->2 1->3   round 2: 0->4 1->5 2->6 3->7
//
// Cost: ceil(log2 P)·(α + n·β).
//
// Pipelined chain (large messages). The ranks form a chain root -> v1 -> v2 -> .. -> vP-1
// and the buffer is cut into chunks; each rank passes chunk c on as soon as it has arrived,
// while chunk c+1 is on the way in, so every link is busy at once.
//
// Cost (C chunks): (P - 2 + C)·(α + n/C·β) ≈ n·β + (P-2)·n/C·β + (P-2+C)·α: a single n·β
// instead of log2(P) of them, paid for with a pipeline fill that grows with P.
#include <algorithm>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

namespace {

// Messages of at least this many bytes take the pipelined chain, in chunks of
// kBroadcastChunkBytes. Tuned with `chorus bench collectives --op broadcast`.
constexpr size_t kBroadcastChainMinBytes = size_t{256} << 10;
constexpr size_t kBroadcastChunkBytes = size_t{256} << 10;

void binomialBroadcast(Comm& comm, void* data, size_t bytes, int root) {
  const int P = comm.size();
  const int v = detail::mod(comm.rank() - root, P);
  auto real = [&](int w) { return (w + root) % P; };
  int mask = 1;
  while (mask < P) {
    if (v & mask) {
      comm.recv(real(v - mask), 0, data, bytes);
      break;
    }
    mask <<= 1;
  }
  std::vector<RequestPtr> sends;
  for (mask >>= 1; mask > 0; mask >>= 1) {
    if (v + mask < P) sends.push_back(comm.isend(real(v + mask), 0, data, bytes));
  }
  comm.waitAll(sends);
}

void chainBroadcast(Comm& comm, void* data, size_t bytes, int root) {
  const int P = comm.size();
  const int v = detail::mod(comm.rank() - root, P);
  const int from = (comm.rank() - 1 + P) % P, to = (comm.rank() + 1) % P;
  const size_t chunks = (bytes + kBroadcastChunkBytes - 1) / kBroadcastChunkBytes;
  auto part = [&](size_t c) { return detail::evenBlock(bytes, static_cast<int>(chunks), static_cast<int>(c)); };
  auto at = [&](size_t c) { return static_cast<char*>(data) + part(c).offset; };

  std::vector<RequestPtr> recvs(chunks), sends;
  if (v > 0) {
    for (size_t c = 0; c < chunks; ++c) recvs[c] = comm.irecv(from, 1, at(c), part(c).count);
  }
  for (size_t c = 0; c < chunks; ++c) {
    if (v > 0) comm.waitAll({recvs[c]});
    if (v < P - 1) sends.push_back(comm.isend(to, 1, at(c), part(c).count));
  }
  comm.waitAll(sends);
}

}  // namespace

void broadcast(Comm& comm, const BroadcastOptions& o) {
  if (linksOf(comm).hierarchical()) return broadcastHierarchical(comm, o);
  broadcastFlat(comm, o);
}

void broadcastFlat(Comm& comm, const BroadcastOptions& o) {
  detail::requireRoot(comm, o.root);
  detail::requireBuffer(o.data, o.count, "broadcast data");
  const size_t bytes = o.count * dtypeSize(o.dtype);
  if (bytes == 0 || comm.size() == 1) return;
  if (bytes >= kBroadcastChainMinBytes && comm.size() > 2) {
    chainBroadcast(comm, o.data, bytes, o.root);
  } else {
    binomialBroadcast(comm, o.data, bytes, o.root);
  }
}

}  // namespace chorus::comm
