// Ring all-reduce: a reduce-scatter then an all-gather around the ring r-1 -> r -> r+1.
//
// The buffer is cut into P blocks (P ranks; block sizes differ by at most one element, so
// counts that do not divide, and counts smaller than P, just give some blocks one element
// more or none at all). In reduce-scatter step s (0 <= s < P-1) rank r sends block r-s to
// r+1 and receives block r-s-1 from r-1, reducing it into its own copy as it arrives
// (RecvReduce); after P-1 steps rank r holds the full reduction of block r+1. In all-gather
// step t rank r sends block r+1-t and receives block r-t, overwriting it. Four ranks,
// reduce-scatter (Σ marks a block that has the full reduction):
//
//   step 0:  r0 sends b0 -> r1   r1 sends b1 -> r2   r2 sends b2 -> r3   r3 sends b3 -> r0
//   step 1:  r0 sends b3 -> r1   r1 sends b0 -> r2   r2 sends b1 -> r3   r3 sends b2 -> r0
//   step 2:  r0 sends b2 -> r1   r1 sends b3 -> r2   r2 sends b0 -> r3   r3 sends b1 -> r0
//   after:   r0 holds Σb1        r1 holds Σb2        r2 holds Σb3        r3 holds Σb0
//
// Pipelining: each block is cut into C chunks, sent as separate messages. The block a rank
// sends in step s is the block it received in step s-1, so chunk c of step s leaves as soon
// as chunk c of step s-1 has arrived and been reduced, while chunks c+1.. of step s-1 are
// still in flight: the ring runs as a wavefront instead of 2(P-1) store-and-forward steps,
// and reduction overlaps the wire. Every message between two neighbours travels under one
// tag (step 0), matched in posting order (the transport's FIFO rule), which both sides share.
// Halving-doubling and the first tree use step 0 too, so where ranks that run different
// all-reduce algorithms on one call exchange messages, they meet on a tag and get
// MismatchError (the signature names the algorithm) instead of waiting for the timeout.
//
// An average sums, and each rank divides only the block it owns, once, before the
// all-gather spreads it, so every rank ends with bitwise the same result.
//
// Cost (α latency, β seconds per byte, γ seconds per reduced byte, n bytes):
//   2(P-1)·α + 2·(P-1)/P·n·β + (P-1)/P·n·γ   (+ (C-1)·(α + n/(P·C)·β) to fill the pipeline)
// Bandwidth-optimal: every rank sends and receives 2(P-1)/P·n bytes, the lower bound, which
// is why large messages use it. The 2(P-1)·α term makes it slow for small messages at scale.
#include <algorithm>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/common/reduce.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

namespace {

// A block is cut into ceil(block / kRingChunkBytes) chunks, so chunks are at most this large
// (a block under it is one chunk), and into at most kRingMaxChunks of them (bounding the
// requests in flight; past 16 MiB blocks the chunks grow beyond kRingChunkBytes).
constexpr size_t kRingChunkBytes = size_t{256} << 10;
constexpr size_t kRingMaxChunks = 64;

// Runs the ring over `data`: reduce-scatter always, then the all-gather when `allgather`.
// Steps are numbered 0..P-2 (reduce-scatter) and P-1..2P-3 (all-gather); every message uses
// the one tag step `tag`.
void runRing(Comm& comm, void* data, size_t count, DType dtype, ReduceOp op, bool allgather, uint16_t tag) {
  const int P = comm.size(), r = comm.rank();
  const size_t esize = dtypeSize(dtype);
  const int prev = detail::mod(r - 1, P), next = detail::mod(r + 1, P);
  const RecvReduce rr{dtype, detail::partialOp(op)};

  const size_t maxBlockBytes = detail::evenBlock(count, P, 0).count * esize;
  const size_t chunks =
      std::clamp<size_t>((maxBlockBytes + kRingChunkBytes - 1) / kRingChunkBytes, 1, kRingMaxChunks);
  auto chunkOf = [&](int block, size_t c) {
    const detail::Block b = detail::evenBlock(count, P, block);
    const detail::Block part = detail::evenBlock(b.count, static_cast<int>(chunks), static_cast<int>(c));
    return detail::Block{b.offset + part.offset, part.count};
  };

  const int rsSteps = P - 1;
  const int steps = allgather ? 2 * (P - 1) : P - 1;
  auto sendBlock = [&](int s) { return s < rsSteps ? detail::mod(r - s, P) : detail::mod(r + 1 - (s - rsSteps), P); };
  auto recvBlock = [&](int s) { return s < rsSteps ? detail::mod(r - s - 1, P) : detail::mod(r - (s - rsSteps), P); };

  // recvs[s * chunks + c], sends[s * chunks + c]; null where the chunk is empty.
  std::vector<RequestPtr> recvs(static_cast<size_t>(steps) * chunks), sends(static_cast<size_t>(steps) * chunks);
  auto wait = [&](const RequestPtr& req) {
    if (req) comm.waitAll({req});
  };

  for (int s = 0; s < steps; ++s) {
    const bool reducing = s < rsSteps;
    for (size_t c = 0; c < chunks; ++c) {
      const size_t i = static_cast<size_t>(s) * chunks + c;
      if (s > 0) {
        wait(recvs[i - chunks]);
        if (s == rsSteps && op == ReduceOp::kAvg) {
          // The owned block's chunk c is now fully reduced: finish it before it is spread.
          const detail::Block own = chunkOf(recvBlock(s - 1), c);
          finishReduce(detail::advance(data, own.offset, esize), own.count, dtype, op, P);
        }
      }
      const detail::Block in = chunkOf(recvBlock(s), c);
      if (in.count > 0) {
        // All-gather step t overwrites the block that reduce-scatter step t sent: that send
        // must be complete first.
        if (!reducing) wait(sends[static_cast<size_t>(s - rsSteps) * chunks + c]);
        recvs[i] = comm.irecv(prev, tag, detail::advance(data, in.offset, esize), in.count * esize,
                              reducing ? &rr : nullptr);
      }
      const detail::Block out = chunkOf(sendBlock(s), c);
      if (out.count > 0) sends[i] = comm.isend(next, tag, detail::advance(data, out.offset, esize), out.count * esize);
    }
  }
  std::vector<RequestPtr> rest;
  for (size_t c = 0; c < chunks; ++c) {
    const RequestPtr& last = recvs[static_cast<size_t>(steps - 1) * chunks + c];
    if (last) rest.push_back(last);
  }
  for (const auto& s : sends) {
    if (s) rest.push_back(s);
  }
  comm.waitAll(rest);
}

}  // namespace

void allreduceRing(Comm& comm, const AllreduceOptions& o) {
  if (detail::trivialAllreduce(comm, o)) return;
  runRing(comm, o.data, o.count, o.dtype, o.op, /*allgather=*/true, 0);
}

namespace detail {

void ringReduceScatterInPlace(Comm& comm, void* data, size_t count, DType dtype, ReduceOp op, uint16_t stepBase) {
  if (count == 0 || comm.size() == 1) return;
  runRing(comm, data, count, dtype, op, /*allgather=*/false, stepBase);
}

}  // namespace detail

}  // namespace chorus::comm
