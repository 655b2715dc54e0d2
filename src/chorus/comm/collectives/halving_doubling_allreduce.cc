// Halving-doubling all-reduce (Rabenseifner): a reduce-scatter by recursive halving, then an
// all-gather by recursive doubling, on the largest power of two P2 <= P ranks.
//
// 1. Fold (only when P is not a power of two; R = P - P2 extra ranks). Among ranks
//    0..2R-1, each even rank sends its whole buffer to the odd rank above it, which reduces
//    it into its own, and sits out until step 4. The P2 ranks left are renumbered 0..P2-1.
// 2. Recursive halving. The buffer is cut into P2 blocks. In round k (distance
//    d = P2/2, P2/4, .., 1) each rank pairs with v XOR d; of the block range both still
//    share, the rank with bit d clear keeps the lower half and the other the upper; each
//    sends the half it gives up and reduces the partner's copy of the half it keeps. After
//    log2 P2 rounds renumbered rank v holds the full reduction of block v.
// 3. Recursive doubling: the same pairs in reverse order (d = 1, 2, .., P2/2) swap the
//    ranges they hold, doubling them, until every rank has the whole result.
// 4. Unfold: each odd rank of 0..2R-1 sends the result to the even rank it folded.
//
//   P2 = 4, blocks b0..b3, halving:                doubling:
//   d=2:  v0 <-> v2 swap halves (keep b0b1 | b2b3)   d=1:  v0 <-> v1 swap b0 | b1
//   d=1:  v0 <-> v1 swap quarters (keep b0 | b1)     d=2:  v0 <-> v2 swap b0b1 | b2b3
//
// An average sums; each rank divides only its block v, once, before the doubling spreads it.
// Every message uses tag step 0: a pair of ranks exchanges at most once per round and the
// fold and unfold run in opposite directions, so FIFO order alone keeps them apart; and a
// rank that wrongly runs another algorithm (which also sends on step 0) is told apart by the
// signature, with MismatchError, wherever its messages meet ours.
//
// Cost (n bytes; the fold and unfold lines only when P is not a power of two):
//   2·log2(P2)·α + 2·(P2-1)/P2·n·β + (P2-1)/P2·n·γ
//   + 2·(α + n·β) + n·γ
// Few rounds and bandwidth-optimal at powers of two, so it suits small and medium messages;
// the fold makes a non-power-of-two world pay two extra full-buffer transfers.
#include <vector>

#include "chorus/common/error.h"
#include "chorus/common/reduce.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

void allreduceHalvingDoubling(Comm& comm, const AllreduceOptions& o) {
  if (detail::trivialAllreduce(comm, o)) return;
  const int P = comm.size(), r = comm.rank();
  const size_t esize = dtypeSize(o.dtype);
  const size_t bytes = o.count * esize;
  const RecvReduce rr{o.dtype, detail::partialOp(o.op)};

  int p2 = 1;
  while (p2 * 2 <= P) p2 *= 2;
  const int extra = P - p2;
  constexpr uint16_t kStep = 0;

  // 1. Fold.
  int v;  // renumbered rank, -1 while sitting out
  if (r < 2 * extra) {
    if (r % 2 == 0) {
      comm.send(r + 1, kStep, o.data, bytes);
      v = -1;
    } else {
      comm.recv(r - 1, kStep, o.data, bytes, &rr);
      v = r / 2;
    }
  } else {
    v = r - extra;
  }
  auto real = [&](int w) { return w < extra ? 2 * w + 1 : w + extra; };

  if (v >= 0) {
    auto offset = [&](int block) { return detail::evenBlock(o.count, p2, block).offset; };
    auto at = [&](int block) { return detail::advance(o.data, offset(block), esize); };
    auto span = [&](int lo, int hi) { return (offset(hi) - offset(lo)) * esize; };

    // 2. Recursive halving over the block range [lo, hi).
    int lo = 0, hi = p2;
    for (int d = p2 / 2; d >= 1; d /= 2) {
      const int peer = real(v ^ d);
      const int mid = (lo + hi) / 2;
      const bool lower = (v & d) == 0;
      const int keepLo = lower ? lo : mid, keepHi = lower ? mid : hi;
      const int giveLo = lower ? mid : lo, giveHi = lower ? hi : mid;
      std::vector<RequestPtr> reqs;
      if (span(keepLo, keepHi) > 0) reqs.push_back(comm.irecv(peer, kStep, at(keepLo), span(keepLo, keepHi), &rr));
      if (span(giveLo, giveHi) > 0) reqs.push_back(comm.isend(peer, kStep, at(giveLo), span(giveLo, giveHi)));
      comm.waitAll(reqs);
      lo = keepLo;
      hi = keepHi;
    }
    finishReduce(at(lo), offset(hi) - offset(lo), o.dtype, o.op, P);

    // 3. Recursive doubling: swap the held range with the partner's sibling range.
    for (int d = 1; d < p2; d *= 2) {
      const int peer = real(v ^ d);
      const int width = hi - lo;
      const bool lower = (v & d) == 0;
      const int theirLo = lower ? hi : lo - width, theirHi = lower ? hi + width : lo;
      std::vector<RequestPtr> reqs;
      if (span(theirLo, theirHi) > 0) reqs.push_back(comm.irecv(peer, kStep, at(theirLo), span(theirLo, theirHi)));
      if (span(lo, hi) > 0) reqs.push_back(comm.isend(peer, kStep, at(lo), span(lo, hi)));
      comm.waitAll(reqs);
      lo = lower ? lo : theirLo;
      hi = lower ? theirHi : hi;
    }
  }

  // 4. Unfold.
  if (r < 2 * extra) {
    if (r % 2 == 1) {
      comm.send(r - 1, kStep, o.data, bytes);
    } else {
      comm.recv(r + 1, kStep, o.data, bytes);
    }
  }
}

}  // namespace chorus::comm
