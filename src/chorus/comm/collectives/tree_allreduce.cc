// Tree all-reduce on a double binary tree: reduce up to the root, broadcast back down, both
// pipelined in chunks, with the two halves of the buffer on two complementary trees.
//
// Tree 0 is the binary tree NCCL uses: a rank's parent is found by clearing its lowest set
// bit b and setting 2b (or only clearing b when that falls outside the world), so rank 0 is
// the root with a single child, every odd rank is a leaf and every even rank an inner node.
// Tree 1 is tree 0 mirrored (rank -> P-1-rank, P even) or shifted by one (P odd), so the
// ranks that are leaves in one tree are the inner nodes of the other. Eight ranks:
//
//   tree 0:  0 -- 4 -+- 2 -+- 1        tree 1:  7 -- 3 -+- 5 -+- 6
//                    |     `- 3                         |     `- 4
//                    `- 6 -+- 5                         `- 1 -+- 2
//                          `- 7                               `- 0
//
// The first half of the buffer is reduced and broadcast on tree 0, the second half on tree 1,
// concurrently. An inner node receives from at most two children and sends to one parent in
// each tree, so each rank's links carry about the same load and no rank sends more than
// n bytes in either phase.
//
// Steps, per tree, for each chunk c in order:
//   up:    receive chunk c from the first child reducing on receive (RecvReduce) and from the
//          second into a scratch slot (two reductions must not write the same chunk at once);
//          reduce the slot; send chunk c to the parent — the root instead has the result and
//          starts chunk c down at once.
//   down:  once chunk c went up, receive the result's chunk c from the parent (overwriting)
//          and pass it to the children.
// Receives run up to kTreeWindow chunks ahead, so a node works on chunk c while chunks
// c+1..c+W are on the wire. An average sums; the root divides each chunk, once. Tree 0's
// upward messages use tag step 0, the step ring and halving-doubling use, so a rank that
// wrongly runs another algorithm on the same call gets MismatchError where they meet.
//
// Cost (n bytes, depth D ~ log2 P, C chunks per tree). Each phase is a pipeline of D + C - 1
// chunk steps, and in each step a rank's link carries one chunk of each tree (n/C bytes):
//   2·(D + C - 1)·α + 2·(1 + (D-1)/C)·n·β + n·γ
// For small n (C = 1) that is 2·D·α: latency grows with log P, not with P as in ring's
// 2(P-1)·α, so it wins for medium messages on many ranks; for large n ring's 2(P-1)/P·n·β
// is about half the bytes on the wire.
#include <algorithm>
#include <vector>

#include "chorus/common/error.h"
#include "chorus/common/reduce.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

namespace {

// Chunk size and receive window. Tuned with `chorus bench collectives --algo tree`.
constexpr size_t kTreeChunkBytes = size_t{128} << 10;
constexpr size_t kTreeWindow = 8;

// Parent of rank r in tree 0 (-1 for the root, rank 0).
int btreeParent(int n, int r) {
  if (r == 0) return -1;
  const int bit = r & -r;
  int up = (r ^ bit) | (bit << 1);
  if (up >= n) up = r ^ bit;
  return up;
}

// Position of rank r in tree `which`, and back.
int toPosition(int n, int r, int which) {
  if (which == 0) return r;
  return n % 2 == 0 ? n - 1 - r : detail::mod(r - 1, n);
}
int toRank(int n, int pos, int which) {
  if (which == 0) return pos;
  return n % 2 == 0 ? n - 1 - pos : (pos + 1) % n;
}

// One tree's share of the buffer and this rank's state in it.
struct TreeHalf {
  detail::TreeLinks links;
  size_t offset = 0;  // elements
  size_t count = 0;
  size_t chunks = 0;
  uint16_t upStep = 0, downStep = 0;
  std::vector<char> scratch;                 // kTreeWindow slots for the second child
  std::vector<RequestPtr> fromChild0, fromChild1, up, down, toChildren;
};

}  // namespace

namespace detail {

TreeLinks treeLinks(int size, int rank, int which) {
  TreeLinks t;
  const int parentPos = btreeParent(size, toPosition(size, rank, which));
  t.parent = parentPos < 0 ? -1 : toRank(size, parentPos, which);
  for (int q = 0; q < size; ++q) {
    if (q == rank) continue;
    const int p = btreeParent(size, toPosition(size, q, which));
    if (p >= 0 && toRank(size, p, which) == rank) t.children.push_back(q);
  }
  return t;
}

}  // namespace detail

void allreduceTree(Comm& comm, const AllreduceOptions& o) {
  if (detail::trivialAllreduce(comm, o)) return;
  const int P = comm.size(), r = comm.rank();
  const size_t esize = dtypeSize(o.dtype);
  const ReduceOp partial = detail::partialOp(o.op);
  const RecvReduce rr{o.dtype, partial};
  const size_t chunkElems = std::max<size_t>(1, kTreeChunkBytes / esize);

  TreeHalf trees[2];
  const size_t firstHalf = (o.count + 1) / 2;
  for (int t = 0; t < 2; ++t) {
    TreeHalf& h = trees[t];
    h.links = detail::treeLinks(P, r, t);
    h.offset = t == 0 ? 0 : firstHalf;
    h.count = t == 0 ? firstHalf : o.count - firstHalf;
    h.chunks = (h.count + chunkElems - 1) / chunkElems;
    h.upStep = static_cast<uint16_t>(2 * t);
    h.downStep = static_cast<uint16_t>(2 * t + 1);
    h.fromChild0.resize(h.chunks);
    h.fromChild1.resize(h.chunks);
    h.up.resize(h.chunks);
    h.down.resize(h.chunks);
    if (h.links.children.size() == 2) h.scratch.resize(std::min(kTreeWindow, h.chunks) * chunkElems * esize);
  }
  auto chunk = [&](const TreeHalf& h, size_t c) {
    const size_t begin = c * chunkElems;
    return detail::Block{h.offset + begin, std::min(chunkElems, h.count - begin)};
  };
  auto ptr = [&](const detail::Block& b) { return detail::advance(o.data, b.offset, esize); };
  auto slot = [&](TreeHalf& h, size_t c) { return h.scratch.data() + (c % kTreeWindow) * chunkElems * esize; };
  auto wait = [&](const RequestPtr& req) {
    if (req) comm.waitAll({req});
  };
  auto postChildRecvs = [&](TreeHalf& h, size_t c) {
    const detail::Block b = chunk(h, c);
    const auto& kids = h.links.children;
    if (!kids.empty()) h.fromChild0[c] = comm.irecv(kids[0], h.upStep, ptr(b), b.count * esize, &rr);
    if (kids.size() == 2) h.fromChild1[c] = comm.irecv(kids[1], h.upStep, slot(h, c), b.count * esize);
  };
  auto sendDown = [&](TreeHalf& h, size_t c) {
    const detail::Block b = chunk(h, c);
    for (int kid : h.links.children) h.toChildren.push_back(comm.isend(kid, h.downStep, ptr(b), b.count * esize));
  };
  const size_t maxChunks = std::max(trees[0].chunks, trees[1].chunks);

  // Up: reduce toward each root.
  for (TreeHalf& h : trees) {
    for (size_t c = 0; c < std::min(kTreeWindow, h.chunks); ++c) postChildRecvs(h, c);
  }
  for (size_t c = 0; c < maxChunks; ++c) {
    for (TreeHalf& h : trees) {
      if (c >= h.chunks) continue;
      const detail::Block b = chunk(h, c);
      wait(h.fromChild0[c]);
      if (h.fromChild1[c]) {
        wait(h.fromChild1[c]);
        reduceInto(ptr(b), slot(h, c), b.count, o.dtype, partial);
      }
      if (c + kTreeWindow < h.chunks) postChildRecvs(h, c + kTreeWindow);
      if (h.links.parent >= 0) {
        h.up[c] = comm.isend(h.links.parent, h.upStep, ptr(b), b.count * esize);
      } else {
        finishReduce(ptr(b), b.count, o.dtype, o.op, P);
        sendDown(h, c);
      }
    }
  }

  // Down: every chunk, once it has left for the parent, is overwritten by the result.
  for (TreeHalf& h : trees) {
    if (h.links.parent < 0) continue;
    for (size_t c = 0; c < h.chunks; ++c) {
      wait(h.up[c]);
      const detail::Block b = chunk(h, c);
      h.down[c] = comm.irecv(h.links.parent, h.downStep, ptr(b), b.count * esize);
    }
  }
  for (size_t c = 0; c < maxChunks; ++c) {
    for (TreeHalf& h : trees) {
      if (c >= h.chunks || h.links.parent < 0) continue;
      wait(h.down[c]);
      sendDown(h, c);
    }
  }
  std::vector<RequestPtr> sends;
  for (TreeHalf& h : trees) sends.insert(sends.end(), h.toChildren.begin(), h.toChildren.end());
  comm.waitAll(sends);
}

}  // namespace chorus::comm
