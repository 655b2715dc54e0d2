// The arithmetic and the output format of `chorus bench collectives`, apart from the
// communication so they can be unit-tested: the size sweep, nccl-tests' bus-bandwidth
// factors, and the table and JSON rows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace chorus::tools {

// The collectives the benchmark runs.
const std::vector<std::string>& benchOps();

// True for the collectives whose buffer is n blocks of one per-rank count (reduce_scatter,
// allgather, alltoall).
bool isBlockedOp(const std::string& op);

// The bus bandwidth factor of `op` on n ranks, as nccl-tests defines it: allreduce
// 2(n-1)/n; reduce_scatter, allgather and alltoall (n-1)/n; broadcast 1. Throws
// InvalidArgument for an unknown op.
double busFactor(const std::string& op, int n);

struct SweepSpec {
  std::string op;
  size_t elementBytes = 4;
  int ranks = 1;
  uint64_t minBytes = 4096;
  uint64_t maxBytes = 64 << 20;
  uint64_t stepFactor = 2;  // >= 2
};

// Element counts of the sweep: minBytes, minBytes*f, ... up to maxBytes, rounded down to whole
// elements (and to a multiple of the ranks for the blocked collectives), at least one element
// per rank, without repeats.
std::vector<size_t> sweepCounts(const SweepSpec& spec);

struct BenchRow {
  std::string op;
  int ranks = 0;
  std::string transport;
  uint64_t bytes = 0;
  size_t count = 0;
  std::string dtype;
  std::string algo;  // "-" where the collective has no algorithm choice
  int64_t iters = 0;
  double timeUs = 0;
  double algbwGBps = 0;
  double busbwGBps = 0;
  int64_t wrong = -1;  // -1: not checked
};

// Fills algbw and busbw from bytes, timeUs, op and ranks (GB = 1e9 bytes).
void computeBandwidth(BenchRow& row);

// The column names line: bytes count dtype algo time_us algbw_GBps busbw_GBps wrong.
std::string tableHeader();
// One aligned table row (no newline); wrong is "-" when not checked.
std::string tableRow(const BenchRow& row);
// One JSON object (no newline) with the row's fields plus op, ranks, transport and iters;
// wrong is null when not checked.
std::string jsonRow(const BenchRow& row);

}  // namespace chorus::tools
