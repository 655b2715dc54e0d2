// Collective operations on raw buffers: (pointer, count, dtype, op). Each is a free function
// over an options struct, run on a Comm (comm.h), the view of one ProcessGroup an algorithm
// sees. Users call them through ProcessGroup (group.h), which adds async handles, timeouts
// and error context. Buffers are caller-owned; counts are in elements.
//
// Every rank of the group must call the same collectives in the same order with matching
// counts and dtypes; a mismatch throws MismatchError on the ranks that detect it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "chorus/common/clock.h"
#include "chorus/common/dtype.h"

namespace chorus::comm {

class Comm;

enum class AllreduceAlgo : uint8_t { kAuto = 0, kRing, kHalvingDoubling, kTree, kMpi, kDirect, kHierarchical };
// "auto", "ring", "hd", "tree", "mpi", "direct", "hier"
const char* algoName(AllreduceAlgo a);
AllreduceAlgo parseAlgo(const std::string& name);  // throws InvalidArgument listing the names

// What algorithm choice knows of a group's links, from Transport::hostOf and sharedMemoryTo.
struct Links {
  bool sharedMemory = false;  // every rank reaches every other through shared memory
  int hosts = 1;              // how many hosts the group spans
  int largestHost = 1;        // the most ranks of the group on one host
  // A group the hierarchical algorithms help: several hosts, and some host with several ranks.
  bool hierarchical() const { return hosts > 1 && largestHost > 1; }
};
Links linksOf(const Comm& comm);

// Fields common to every collective.
struct CollectiveCommon {
  Millis timeout{0};              // 0: the group's timeout (CHORUS_TIMEOUT_MS by default)
  std::optional<uint32_t> tag;    // names the call in errors; default: the group's call counter
};

// In place: data holds this rank's input and receives the reduction.
struct AllreduceOptions : CollectiveCommon {
  void* data = nullptr;
  size_t count = 0;
  DType dtype = DType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  AllreduceAlgo algo = AllreduceAlgo::kAuto;
};

// input: counts[0] + ... + counts[size-1] elements; output: counts[rank] elements, the
// reduction of every rank's block `rank`. Empty counts means `count` for every rank.
struct ReduceScatterOptions : CollectiveCommon {
  const void* input = nullptr;
  void* output = nullptr;
  size_t count = 0;
  std::vector<size_t> counts;
  DType dtype = DType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
};

// output: every rank's input, concatenated in rank order. With counts (allgatherv), rank r
// contributes counts[r] elements (and count must equal counts[rank]).
struct AllgatherOptions : CollectiveCommon {
  const void* input = nullptr;
  void* output = nullptr;
  size_t count = 0;
  std::vector<size_t> counts;
  DType dtype = DType::kFloat32;
};

// data: root's buffer is copied into every other rank's.
struct BroadcastOptions : CollectiveCommon {
  void* data = nullptr;
  size_t count = 0;
  DType dtype = DType::kFloat32;
  int root = 0;
};

// In place: on root, data receives the reduction; on other ranks data may be used as scratch
// and is left unspecified.
struct ReduceOptions : CollectiveCommon {
  void* data = nullptr;
  size_t count = 0;
  DType dtype = DType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  int root = 0;
};

// root's output receives size*count elements (every rank's input in rank order); output is
// ignored on other ranks.
struct GatherOptions : CollectiveCommon {
  const void* input = nullptr;
  void* output = nullptr;
  size_t count = 0;
  DType dtype = DType::kFloat32;
  int root = 0;
};

// root's input holds size*count elements; rank r receives block r into output.
struct ScatterOptions : CollectiveCommon {
  const void* input = nullptr;
  void* output = nullptr;
  size_t count = 0;
  DType dtype = DType::kFloat32;
  int root = 0;
};

// Block j of input goes to rank j; block i of output comes from rank i. With sendCounts and
// recvCounts (alltoallv) blocks have those sizes, packed back to back; otherwise `count`.
struct AlltoallOptions : CollectiveCommon {
  const void* input = nullptr;
  void* output = nullptr;
  size_t count = 0;
  std::vector<size_t> sendCounts;
  std::vector<size_t> recvCounts;
  DType dtype = DType::kFloat32;
};

// The algorithms. All block until done or throw; ProcessGroup adds the async forms.
void allreduce(Comm& comm, const AllreduceOptions& opts);
void allreduceRing(Comm& comm, const AllreduceOptions& opts);
void allreduceHalvingDoubling(Comm& comm, const AllreduceOptions& opts);
void allreduceTree(Comm& comm, const AllreduceOptions& opts);
void allreduceDirect(Comm& comm, const AllreduceOptions& opts);
// Reduce-scatter inside each host, all-reduce of each slice across hosts, all-gather inside
// each host (hierarchical.cc).
void allreduceHierarchical(Comm& comm, const AllreduceOptions& opts);
// The choice kAuto makes for a message of `bytes` on `size` ranks with these links.
AllreduceAlgo chooseAllreduceAlgo(size_t bytes, int size, const Links& links);

void reduceScatter(Comm& comm, const ReduceScatterOptions& opts);
// All-gather and broadcast take their hierarchical form (hierarchical.cc) when the group's
// links are hierarchical(), the flat one otherwise.
void allgather(Comm& comm, const AllgatherOptions& opts);
void allgatherFlat(Comm& comm, const AllgatherOptions& opts);
void allgatherHierarchical(Comm& comm, const AllgatherOptions& opts);
void broadcast(Comm& comm, const BroadcastOptions& opts);
void broadcastFlat(Comm& comm, const BroadcastOptions& opts);
void broadcastHierarchical(Comm& comm, const BroadcastOptions& opts);
void reduce(Comm& comm, const ReduceOptions& opts);
void gather(Comm& comm, const GatherOptions& opts);
void scatter(Comm& comm, const ScatterOptions& opts);
void alltoall(Comm& comm, const AlltoallOptions& opts);
void barrier(Comm& comm);

}  // namespace chorus::comm
