// Names, signatures and argument checks shared by every collective.
//
// The signature word travels with every message of a call, so a receiver tells "my peer
// called something else" (MismatchError) apart from "my peer is slow" (a wait). Layout:
//
//   63      56 55     48 47     40 39                                  0
//   +---------+---------+---------+-------------------------------------+
//   |  kind   |  dtype  |  extra  |          count mod 2^40             |
//   +---------+---------+---------+-------------------------------------+
//
// `extra` is the part of the call, beyond kind/dtype/count, on which every rank must agree:
// bits 0-2 hold the ReduceOp of reducing collectives; bits 3-7 hold the all-reduce algorithm,
// the root (clamped to 31) of rooted collectives, or 1 for the "v" forms (allgatherv,
// alltoallv, reduce-scatter with counts). signatureExtra() in detail.h builds it.
#include "chorus/comm/collectives/comm.h"

#include "chorus/common/error.h"
#include "chorus/common/reduce.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/collectives/detail.h"

namespace chorus::comm {

namespace {
constexpr uint64_t kCountMask = (uint64_t{1} << 40) - 1;

bool isReducing(CollectiveKind k) {
  return k == CollectiveKind::kAllreduce || k == CollectiveKind::kReduceScatter || k == CollectiveKind::kReduce;
}
bool isRooted(CollectiveKind k) {
  return k == CollectiveKind::kBroadcast || k == CollectiveKind::kReduce || k == CollectiveKind::kGather ||
         k == CollectiveKind::kScatter;
}
bool hasVariableForm(CollectiveKind k) {
  return k == CollectiveKind::kAllgather || k == CollectiveKind::kAlltoall || k == CollectiveKind::kReduceScatter;
}
}  // namespace

const char* collectiveName(CollectiveKind k) {
  switch (k) {
    case CollectiveKind::kAllreduce: return "allreduce";
    case CollectiveKind::kReduceScatter: return "reduce_scatter";
    case CollectiveKind::kAllgather: return "allgather";
    case CollectiveKind::kBroadcast: return "broadcast";
    case CollectiveKind::kReduce: return "reduce";
    case CollectiveKind::kGather: return "gather";
    case CollectiveKind::kScatter: return "scatter";
    case CollectiveKind::kAlltoall: return "alltoall";
    case CollectiveKind::kBarrier: return "barrier";
    case CollectiveKind::kSendRecv: return "send_recv";
    case CollectiveKind::kSplit: return "split";
  }
  return "unknown_collective";
}

uint64_t makeSignature(CollectiveKind kind, DType dtype, uint64_t count, uint8_t extra) {
  return (static_cast<uint64_t>(kind) << 56) | (static_cast<uint64_t>(dtype) << 48) |
         (static_cast<uint64_t>(extra) << 40) | (count & kCountMask);
}

std::string describeSignature(uint64_t sig) {
  const auto kindCode = static_cast<uint8_t>(sig >> 56);
  const auto dtypeCode = static_cast<uint8_t>(sig >> 48);
  const auto extra = static_cast<uint8_t>(sig >> 40);
  const uint64_t count = sig & kCountMask;
  if (kindCode < static_cast<uint8_t>(CollectiveKind::kAllreduce) ||
      kindCode > static_cast<uint8_t>(CollectiveKind::kSplit)) {
    return str("unknown signature 0x", std::hex, sig);
  }
  const auto kind = static_cast<CollectiveKind>(kindCode);
  const uint8_t opCode = extra & 7, variant = extra >> 3;
  const bool dtypeKnown = dtypeCode <= static_cast<uint8_t>(DType::kUInt8);
  const char* dtype = dtypeKnown ? dtypeName(static_cast<DType>(dtypeCode)) : "unknown-dtype";
  const char* op = opCode <= static_cast<uint8_t>(ReduceOp::kProd) ? reduceOpName(static_cast<ReduceOp>(opCode))
                                                                   : "unknown-op";

  std::string s = collectiveName(kind);
  if (hasVariableForm(kind) && variant == 1) s += (kind == CollectiveKind::kReduceScatter) ? "_v" : "v";
  switch (kind) {
    case CollectiveKind::kBarrier: return s + "()";
    case CollectiveKind::kSendRecv: return str(s, "(bytes=", count, ")");
    case CollectiveKind::kSplit: return str(s, "(size=", count, ")");
    default: break;
  }
  // alltoallv's signature carries no count: each rank's total is its own.
  if (kind == CollectiveKind::kAlltoall && variant == 1) return str(s, "(", dtype, ")");
  s += "(";
  if (kind == CollectiveKind::kAllreduce) {
    s += variant <= static_cast<uint8_t>(AllreduceAlgo::kHierarchical) ? algoName(static_cast<AllreduceAlgo>(variant))
                                                              : "unknown-algo";
    s += ", ";
  }
  s += str(hasVariableForm(kind) && variant == 1 ? "total=" : "count=", count, ", ", dtype);
  if (isReducing(kind)) s += str(", ", op);
  if (isRooted(kind)) s += variant >= 31 ? std::string(", root>=31") : str(", root=", int(variant));
  return s + ")";
}

const char* algoName(AllreduceAlgo a) {
  switch (a) {
    case AllreduceAlgo::kAuto: return "auto";
    case AllreduceAlgo::kRing: return "ring";
    case AllreduceAlgo::kHalvingDoubling: return "hd";
    case AllreduceAlgo::kTree: return "tree";
    case AllreduceAlgo::kMpi: return "mpi";
    case AllreduceAlgo::kDirect: return "direct";
    case AllreduceAlgo::kHierarchical: return "hier";
  }
  return "unknown";
}

AllreduceAlgo parseAlgo(const std::string& name) {
  if (name == "auto") return AllreduceAlgo::kAuto;
  if (name == "ring") return AllreduceAlgo::kRing;
  if (name == "hd" || name == "halving_doubling" || name == "halving-doubling" || name == "rabenseifner") {
    return AllreduceAlgo::kHalvingDoubling;
  }
  if (name == "tree") return AllreduceAlgo::kTree;
  if (name == "mpi") return AllreduceAlgo::kMpi;
  if (name == "direct") return AllreduceAlgo::kDirect;
  if (name == "hier" || name == "hierarchical") return AllreduceAlgo::kHierarchical;
  throw InvalidArgument(str("unknown all-reduce algorithm '", name, "'; use auto, ring, hd, tree, direct, hier or mpi"));
}

namespace detail {

uint8_t signatureExtra(ReduceOp op, unsigned variant) {
  return static_cast<uint8_t>((static_cast<unsigned>(op) & 7u) | ((variant > 31u ? 31u : variant) << 3));
}

void requireBuffer(const void* p, size_t count, const char* what) {
  if (p == nullptr && count > 0) {
    throw InvalidArgument(str(what, " is null but count is ", count, "; pass a buffer of at least count elements"));
  }
}

bool trivialAllreduce(const Comm& comm, const AllreduceOptions& o) {
  requireBuffer(o.data, o.count, "allreduce data");
  if (o.count == 0) return true;
  if (comm.size() > 1) return false;
  finishReduce(o.data, o.count, o.dtype, o.op, 1);
  return true;
}

void requireRoot(const Comm& comm, int root) {
  if (root < 0 || root >= comm.size()) {
    throw InvalidArgument(str("root ", root, " is not a rank of this group of ", comm.size(),
                              " (rank ", comm.rank(), "); use 0..", comm.size() - 1));
  }
}

void requireCounts(const Comm& comm, const std::vector<size_t>& counts, const char* what) {
  if (counts.size() != static_cast<size_t>(comm.size())) {
    throw InvalidArgument(str(what, " has ", counts.size(), " entries on rank ", comm.rank(),
                              "; it needs one per rank of the group (", comm.size(), ")"));
  }
}

bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  if (an == 0 || bn == 0) return false;
  const auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return x < y + bn && y < x + an;
}

}  // namespace detail

}  // namespace chorus::comm
