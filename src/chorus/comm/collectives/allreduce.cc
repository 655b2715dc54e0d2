// All-reduce dispatch: runs the requested algorithm, or for kAuto the one the table below
// picks for the message size, world size and the group's links (shared memory, hosts).
//
// The algorithms (each file opens with its steps and its α-β cost):
//   hier  hierarchical.cc                shm inside hosts, one slice per rank across hosts:
//                                        every group that spans hosts with a shared host
//   hd    halving_doubling_allreduce.cc  2·log2(P)·α + 2·(P-1)/P·n·β   few rounds: small n
//   tree  tree_allreduce.cc              ~2·log2(P)·α + ~2·n·β         medium n, many ranks
//   ring  ring_allreduce.cc              2·(P-1)·α + 2·(P-1)/P·n·β     large n
//   direct direct_allreduce.cc           2·α + 2·(P-1)/P·n·β           shm past hd; medium n
//                                                                      when P is not a power of two
//   mpi   the transport's own all-reduce (MPI_Allreduce), for comparisons under mpirun
//
// The table is a starting point from the cost model: hd while the α terms dominate, tree for
// medium messages once P is large enough that ring's 2(P-1) rounds hurt, ring when bandwidth
// dominates. The crossovers are measured with `chorus bench collectives --algo <each>`
// (results under bench/results/) and the constants below are updated from them.
#include <string>

#include "chorus/common/error.h"
#include "chorus/common/reduce.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/comm.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

namespace {

// Messages below these many bytes use halving-doubling. Measured in
// bench/results/algorithms.md (bash bench/algos/run.sh, 2-4 ranks on 2 cores): with a power-of-
// two world hd beats ring up to 64 KiB on shm and up to 512 KiB on tcp (where each of ring's
// 2(P-1) rounds costs tens of microseconds); with other world sizes hd pays for folding the
// extra ranks in and out, and ring wins from 32 KiB on.
constexpr size_t kAutoHdMaxBytesShm = size_t{128} << 10;
constexpr size_t kAutoHdMaxBytesTcp = size_t{1} << 20;
constexpr size_t kAutoHdMaxBytesNonPow2 = size_t{32} << 10;
// From this many ranks up, medium messages (below the bytes bound) use the double binary tree:
// the cost model's choice once ring's 2(P-1) rounds dominate. Not measured here (at most 4
// ranks fit this machine, and there ring or hd always won).
constexpr int kAutoTreeMinRanks = 16;
constexpr size_t kAutoTreeMaxBytes = size_t{4} << 20;
// Direct all-reduce (two rounds, every rank reading its block from every peer at once): on
// shm it is the algorithm past hd's range (ranks sharing one memory bus are bandwidth-bound,
// and direct moves the least data through it and synchronizes twice; measured 0-12% ahead of
// ring at 2 ranks and up to 40% at 3-4); with a non-power-of-two world it also takes the
// medium messages that hd handles poorly (it folds the extra ranks in and out), on any
// transport.
constexpr int kAutoDirectMinRanksShm = 2;
constexpr size_t kAutoDirectMaxBytesNonPow2 = size_t{1} << 20;

}  // namespace

AllreduceAlgo chooseAllreduceAlgo(size_t bytes, int size, const Links& links) {
  if (size <= 1) return AllreduceAlgo::kRing;
  // Across hosts with several ranks on a host: reduce inside the hosts first, so each host
  // link carries one slice per rank instead of a flat ring's 2(P-1)/P of the buffer
  // (hierarchical.cc; bench/results/hosts.md).
  if (links.hierarchical()) return AllreduceAlgo::kHierarchical;
  const bool pow2 = (size & (size - 1)) == 0;
  const bool shm = links.sharedMemory;
  const size_t hdMax = !pow2 ? kAutoHdMaxBytesNonPow2 : shm ? kAutoHdMaxBytesShm : kAutoHdMaxBytesTcp;
  if (bytes < hdMax) return AllreduceAlgo::kHalvingDoubling;
  if (shm && size >= kAutoDirectMinRanksShm) return AllreduceAlgo::kDirect;
  if (!pow2 && bytes < kAutoDirectMaxBytesNonPow2) return AllreduceAlgo::kDirect;
  if (size >= kAutoTreeMinRanks && bytes < kAutoTreeMaxBytes) return AllreduceAlgo::kTree;
  return AllreduceAlgo::kRing;
}

void allreduce(Comm& comm, const AllreduceOptions& opts) {
  AllreduceAlgo algo = opts.algo;
  if (algo == AllreduceAlgo::kAuto) {
    algo = chooseAllreduceAlgo(opts.count * dtypeSize(opts.dtype), comm.size(), linksOf(comm));
  }
  switch (algo) {
    case AllreduceAlgo::kRing: return allreduceRing(comm, opts);
    case AllreduceAlgo::kHalvingDoubling: return allreduceHalvingDoubling(comm, opts);
    case AllreduceAlgo::kTree: return allreduceTree(comm, opts);
    case AllreduceAlgo::kDirect: return allreduceDirect(comm, opts);
    case AllreduceAlgo::kHierarchical: return allreduceHierarchical(comm, opts);
    case AllreduceAlgo::kMpi: {
      detail::requireBuffer(opts.data, opts.count, "allreduce data");
      const bool wholeJob = comm.size() == comm.transport().size();
      // MPI has no average: sum natively, divide once here.
      if (!wholeJob || !comm.transport().nativeAllreduce(opts.data, opts.count, opts.dtype,
                                                         detail::partialOp(opts.op))) {
        throw InvalidArgument(str("--algo mpi needs the mpi transport under mpirun (this group runs on '",
                                  comm.transport().name(), "' with ", comm.size(), " of ", comm.transport().size(),
                                  " ranks; mpi all-reduce covers the whole job only)"));
      }
      finishReduce(opts.data, opts.count, opts.dtype, opts.op, comm.size());
      return;
    }
    case AllreduceAlgo::kAuto: break;
  }
  throw InvalidArgument(str("unknown all-reduce algorithm code ", static_cast<int>(algo)));
}

}  // namespace chorus::comm
