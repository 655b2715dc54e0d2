// Direct all-reduce: a reduce-scatter in which every rank takes its block straight from every
// other rank, then an all-gather in which every rank takes every other block straight from
// its owner. Made for shared memory, where a receive is one copy out of the sender's buffer
// (CMA) and "the network" is the memory bus.
//
//   reduce-scatter (step 0)                  all-gather (step 1)
//   rank r receives block r from each peer   rank r receives block p from each peer p
//   and reduces it into its own block r      and sends its finished block r to each peer
//
//      r0  [A0|a1|a2]      r0 owns A = a0+b0+c0      r0  [A |B |C ]
//      r1  [b0|B1|b2]  ->  r1 owns B = ...       ->  r1  [A |B |C ]
//      r2  [c0|c1|C2]      r2 owns C = ...           r2  [A |B |C ]
//
// Each block is cut into chunks and the chunks are posted peer by peer, so the P-1 partial
// blocks arriving for chunk c are reduced into the destination while it is still in cache.
// The sends of the reduce-scatter read block p of this rank's buffer, which it never writes
// in that phase; the all-gather starts only when every reduce-scatter message is done.
//
// Cost, with P ranks and n bytes: 2 rounds (α·2) and 2·(P-1)/P·n·β bytes received per rank,
// like ring, but with only two synchronizations instead of 2(P-1) and no data forwarded
// through intermediate ranks. Every rank talks to every other at once, so it suits a
// transport whose links share one memory system (shm), not a switched network of slow links.
#include <algorithm>
#include <vector>

#include "chorus/common/reduce.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

namespace {
// Chunks of at most this many bytes (a block under it is one chunk), at most kMaxChunks per block.
constexpr size_t kDirectChunkBytes = size_t{256} << 10;
constexpr size_t kDirectMaxChunks = 64;
}  // namespace

void allreduceDirect(Comm& comm, const AllreduceOptions& o) {
  if (detail::trivialAllreduce(comm, o)) return;
  const int P = comm.size(), r = comm.rank();
  const size_t esize = dtypeSize(o.dtype);
  const RecvReduce rr{o.dtype, detail::partialOp(o.op)};
  const detail::Block own = detail::evenBlock(o.count, P, r);
  const size_t maxBlockBytes = detail::evenBlock(o.count, P, 0).count * esize;
  const size_t chunks =
      std::clamp<size_t>((maxBlockBytes + kDirectChunkBytes - 1) / kDirectChunkBytes, 1, kDirectMaxChunks);
  auto chunkOf = [&](int block, size_t c) {
    const detail::Block b = detail::evenBlock(o.count, P, block);
    const detail::Block part = detail::evenBlock(b.count, static_cast<int>(chunks), static_cast<int>(c));
    return detail::Block{b.offset + part.offset, part.count};
  };

  std::vector<RequestPtr> reqs;
  reqs.reserve(2 * static_cast<size_t>(P - 1) * chunks);
  for (size_t c = 0; c < chunks; ++c) {
    // Peers in the order r+1, r+2, ...: at any moment the ranks read from different owners.
    for (int k = 1; k < P; ++k) {
      const int peer = detail::mod(r + k, P);
      const detail::Block in = chunkOf(r, c), out = chunkOf(peer, c);
      if (in.count > 0) {
        reqs.push_back(comm.irecv(peer, 0, detail::advance(o.data, in.offset, esize), in.count * esize, &rr));
      }
      if (out.count > 0) {
        reqs.push_back(comm.isend(peer, 0, detail::advance(o.data, out.offset, esize), out.count * esize));
      }
    }
  }
  comm.waitAll(reqs);
  finishReduce(detail::advance(o.data, own.offset, esize), own.count, o.dtype, o.op, P);

  reqs.clear();
  for (int k = 1; k < P; ++k) {
    const int peer = detail::mod(r + k, P);
    const detail::Block theirs = detail::evenBlock(o.count, P, peer);
    if (theirs.count > 0) {
      reqs.push_back(comm.irecv(peer, 1, detail::advance(o.data, theirs.offset, esize), theirs.count * esize));
    }
    if (own.count > 0) {
      reqs.push_back(comm.isend(peer, 1, detail::advance(o.data, own.offset, esize), own.count * esize));
    }
  }
  comm.waitAll(reqs);
}

}  // namespace chorus::comm
