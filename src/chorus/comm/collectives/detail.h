// Helpers shared by the algorithm files of collectives/: how a buffer is cut into blocks and
// chunks, argument checks, the trees of the tree algorithms, and the in-place ring
// reduce-scatter that ring all-reduce and large reduce share. Internal to collectives/ and
// its tests; not part of the public API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "chorus/common/dtype.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"

namespace chorus::comm::detail {

// A range of elements [offset, offset + count).
struct Block {
  size_t offset = 0;
  size_t count = 0;
};

// Block i of `count` elements cut into `parts` nearly equal blocks: the first count % parts
// blocks hold one element more. Blocks are empty when count < parts.
inline Block evenBlock(size_t count, int parts, int i) {
  const size_t p = static_cast<size_t>(parts), k = static_cast<size_t>(i);
  const size_t base = count / p, extra = count % p;
  return Block{k * base + (k < extra ? k : extra), base + (k < extra ? 1 : 0)};
}

// Byte pointer `elems` elements past p.
inline char* advance(void* p, size_t elems, size_t esize) { return static_cast<char*>(p) + elems * esize; }
inline const char* advance(const void* p, size_t elems, size_t esize) {
  return static_cast<const char*>(p) + elems * esize;
}

// The operator the partial reductions use: an average sums, then finishReduce divides once.
inline ReduceOp partialOp(ReduceOp op) { return op == ReduceOp::kAvg ? ReduceOp::kSum : op; }

// (a + b) mod n for a, b in (-n, n).
inline int mod(int a, int n) { return ((a % n) + n) % n; }

// The `extra` byte of a signature (comm.cc): the op in bits 0-2, `variant` (the all-reduce
// algorithm, the root clamped to 31, or 1 for a "v" form) in bits 3-7.
uint8_t signatureExtra(ReduceOp op, unsigned variant);

// The all-reduce cases every algorithm shares: checks the buffer, and returns true when the
// call is already finished — nothing to reduce (count 0) or one rank (only kAvg's division
// by 1). Each algorithm starts with `if (detail::trivialAllreduce(comm, o)) return;`.
bool trivialAllreduce(const Comm& comm, const AllreduceOptions& o);

// Throws InvalidArgument naming `what` when a buffer of count > 0 elements is null.
void requireBuffer(const void* p, size_t count, const char* what);
// An all-gather's blocks: counts[r] elements from rank r (opts.counts, or opts.count for every
// rank), checked against the group and opts.count, and offsets[r] their prefix sums (size + 1
// entries); checks the buffers too.
struct GatherLayout {
  std::vector<size_t> counts;
  std::vector<size_t> offsets;
};
GatherLayout allgatherLayout(const Comm& comm, const AllgatherOptions& opts);

// Throws InvalidArgument when root is not a rank of the group.
void requireRoot(const Comm& comm, int root);
// Throws InvalidArgument unless counts has one entry per rank.
void requireCounts(const Comm& comm, const std::vector<size_t>& counts, const char* what);
// True when the byte ranges [a, a+an) and [b, b+bn) overlap.
bool overlaps(const void* a, size_t an, const void* b, size_t bn);

// Ring reduce-scatter in place over `data` cut into comm.size() even blocks: afterwards rank r
// holds the reduction (with partialOp(op)) of block (r + 1) % size in its buffer; the other
// blocks are left partially reduced. Uses steps [stepBase, stepBase + 1]. Pipelined in
// chunks like ring all-reduce (ring_allreduce.cc).
void ringReduceScatterInPlace(Comm& comm, void* data, size_t count, DType dtype, ReduceOp op, uint16_t stepBase);

// The trees of tree all-reduce (tree_allreduce.cc): in tree 0, rank 0 is the root and the
// odd ranks are the leaves; tree 1 mirrors (even size) or shifts by one (odd size) tree 0 so
// that almost every rank is a leaf in one tree and an inner node in the other.
struct TreeLinks {
  int parent = -1;            // -1 at the root
  std::vector<int> children;  // at most two, ascending
};
TreeLinks treeLinks(int size, int rank, int which);

}  // namespace chorus::comm::detail
