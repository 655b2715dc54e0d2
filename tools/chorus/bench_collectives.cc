// The collective benchmark. For each message size, every rank:
//
//   1. allocates 64-byte aligned buffers and fills its input with the pattern
//      v(r, i) = (r + i) mod 4 (small integers, exact in every dtype, so the expected result
//      of any collective is known exactly, e.g. all-reduce sum[i] = sum_r v(r, i));
//   2. runs one call (first touch of the buffers, connection warm-up), then one timed call
//      whose slowest-rank time sets the defaults: warmup to fill ~0.05 s, iters to fill
//      ~0.25 s (clamped; --warmup and --iters override), so small sizes get many iterations;
//   3. after the warmup, a barrier, then the timed loop; the per-call mean of each rank is
//      all-reduced with max, so time_us is the slowest rank's;
//   4. checks: out-of-place collectives and broadcast are idempotent, so their outputs are
//      checked after the timed loop; all-reduce works in place (its buffer would grow every
//      iteration), so its timed loop runs on zeros and one more call on the pattern is
//      checked. Wrong elements are summed over ranks with one more all-reduce.
//
// Rank 0 prints one row per size as soon as it is measured.
#include "bench_collectives.h"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <utility>

#include "args.h"
#include "bench_report.h"
#include "chorus/common/clock.h"
#include "chorus/common/dtype.h"
#include "chorus/common/env.h"
#include "chorus/common/error.h"
#include "chorus/comm/collectives/collectives.h"
#include "chorus/comm/group.h"
#include "launch.h"

namespace chorus::tools {

namespace {

using comm::AllreduceAlgo;
using comm::ProcessGroup;

constexpr double kWarmupSeconds = 0.05;
constexpr double kTimedSeconds = 0.25;
constexpr int64_t kMaxAutoIters = 10000;
constexpr int64_t kMinAutoIters = 5;
constexpr int64_t kMaxAutoWarmup = 20;
// Largest message: each rank holds two buffers of it (input and output), every byte touched.
// 4 GiB is beyond what a CPU collective benchmark needs and keeps every size computation far
// from overflow.
constexpr uint64_t kMaxMessageBytes = uint64_t{4} << 30;

struct BenchOptions {
  std::string op = "allreduce";
  int ranks = 2;
  bool ranksGiven = false;
  std::string transport = "auto";
  AllreduceAlgo algo = AllreduceAlgo::kAuto;
  DType dtype = DType::kFloat32;
  uint64_t minBytes = 4096;
  uint64_t maxBytes = 64 << 20;
  uint64_t stepFactor = 2;
  int64_t iters = 0;   // 0: chosen per size
  int64_t warmup = -1; // -1: chosen per size
  bool json = false;
  bool check = true;
  int64_t timeoutMs = 0;
};

// A 64-byte aligned, zero-initialized byte buffer.
class Buffer {
 public:
  explicit Buffer(size_t bytes) : bytes_(bytes) {
    if (bytes > kMaxMessageBytes) {
      throw InvalidArgument(str("chorus bench: a ", bytes, "-byte buffer is over the ", formatSize(kMaxMessageBytes),
                                " limit; lower --max-bytes"));
    }
    size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    data_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, rounded)));
    if (!data_) throw Error(str("chorus bench: cannot allocate ", bytes, " bytes; lower --max-bytes"));
    std::memset(data_.get(), 0, rounded);
  }
  void* data() { return data_.get(); }
  size_t bytes() const { return bytes_; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> data_;
  size_t bytes_;
};

// The largest integer every value of the dtype's pattern results must stay under to be exact.
int64_t exactIntegerLimit(DType t) {
  switch (t) {
    case DType::kFloat32: return int64_t{1} << 24;
    case DType::kFloat64: return int64_t{1} << 53;
    case DType::kFloat16: return 2048;
    case DType::kBFloat16: return 256;
    case DType::kInt32: return int64_t{1} << 31;
    case DType::kInt64: return int64_t{1} << 62;
    case DType::kUInt8: return 255;
  }
  return 0;
}

// Writes value(i) (a small integer) into element i for i < count.
template <typename F>
void fill(DType t, void* buf, size_t count, F value) {
  switch (t) {
    case DType::kFloat32: {
      auto* p = static_cast<float*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = static_cast<float>(value(i));
      return;
    }
    case DType::kFloat64: {
      auto* p = static_cast<double*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = static_cast<double>(value(i));
      return;
    }
    case DType::kFloat16: {
      auto* p = static_cast<uint16_t*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = floatToHalf(static_cast<float>(value(i)));
      return;
    }
    case DType::kBFloat16: {
      auto* p = static_cast<uint16_t*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = floatToBf16(static_cast<float>(value(i)));
      return;
    }
    case DType::kInt32: {
      auto* p = static_cast<int32_t*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = static_cast<int32_t>(value(i));
      return;
    }
    case DType::kInt64: {
      auto* p = static_cast<int64_t*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = static_cast<int64_t>(value(i));
      return;
    }
    case DType::kUInt8: {
      auto* p = static_cast<uint8_t*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = static_cast<uint8_t>(value(i));
      return;
    }
  }
}

// Number of elements i < count that are not exactly expected(i).
template <typename F>
int64_t countWrong(DType t, const void* buf, size_t count, F expected) {
  int64_t wrong = 0;
  auto scan = [&](auto load) {
    for (size_t i = 0; i < count; ++i) wrong += load(i) != static_cast<double>(expected(i)) ? 1 : 0;
  };
  switch (t) {
    case DType::kFloat32: scan([p = static_cast<const float*>(buf)](size_t i) { return double(p[i]); }); break;
    case DType::kFloat64: scan([p = static_cast<const double*>(buf)](size_t i) { return p[i]; }); break;
    case DType::kFloat16:
      scan([p = static_cast<const uint16_t*>(buf)](size_t i) { return double(halfToFloat(p[i])); });
      break;
    case DType::kBFloat16:
      scan([p = static_cast<const uint16_t*>(buf)](size_t i) { return double(bf16ToFloat(p[i])); });
      break;
    case DType::kInt32: scan([p = static_cast<const int32_t*>(buf)](size_t i) { return double(p[i]); }); break;
    case DType::kInt64: scan([p = static_cast<const int64_t*>(buf)](size_t i) { return double(p[i]); }); break;
    case DType::kUInt8: scan([p = static_cast<const uint8_t*>(buf)](size_t i) { return double(p[i]); }); break;
  }
  return wrong;
}

// The input pattern of rank r at element i.
inline int64_t pattern(int r, size_t i) { return static_cast<int64_t>((static_cast<size_t>(r) + i) % 4); }

double maxOverRanks(ProcessGroup& pg, double v) {
  comm::AllreduceOptions o;
  o.data = &v;
  o.count = 1;
  o.dtype = DType::kFloat64;
  o.op = ReduceOp::kMax;
  pg.allreduce(o);
  return v;
}

int64_t sumOverRanks(ProcessGroup& pg, int64_t v) {
  comm::AllreduceOptions o;
  o.data = &v;
  o.count = 1;
  o.dtype = DType::kInt64;
  o.op = ReduceOp::kSum;
  pg.allreduce(o);
  return v;
}

// count elements of esize bytes, refused (rather than wrapped) past the message limit.
size_t bufferBytes(size_t count, size_t esize) {
  if (esize == 0 || count > kMaxMessageBytes / esize) {
    throw InvalidArgument(str("chorus bench: ", count, " elements of ", esize, " bytes are over the ",
                              formatSize(kMaxMessageBytes), " limit; lower --max-bytes"));
  }
  return count * esize;
}

// One size of one collective: its buffers, the call, and the check of its result.
class Case {
 public:
  Case(ProcessGroup& pg, const BenchOptions& opts, size_t count)
      : pg_(pg), opts_(opts), n_(pg.size()), rank_(pg.rank()), count_(count), block_(count / static_cast<size_t>(n_)),
        esize_(dtypeSize(opts.dtype)), a_(bufferBytes(count, esize_)), b_(bufferBytes(count, esize_)) {}

  // Fills the buffers for the timed loop.
  void prepareTimed() {
    DType t = opts_.dtype;
    const int r = rank_;
    const int64_t sentinel = 3 * n_ + 1;  // above every expected value
    if (opts_.op == "allreduce") {
      fill(t, a_.data(), count_, [](size_t) { return int64_t{0}; });
    } else if (opts_.op == "broadcast") {
      if (r == 0) {
        fill(t, a_.data(), count_, [](size_t i) { return pattern(0, i); });
      } else {
        fill(t, a_.data(), count_, [&](size_t) { return sentinel; });
      }
    } else {
      size_t inCount = opts_.op == "allgather" ? block_ : count_;
      fill(t, a_.data(), inCount, [r](size_t i) { return pattern(r, i); });
      size_t outCount = opts_.op == "reduce_scatter" ? block_ : count_;
      fill(t, b_.data(), outCount, [&](size_t) { return sentinel; });
    }
  }

  void run() {
    const std::string& op = opts_.op;
    if (op == "allreduce") {
      comm::AllreduceOptions o;
      o.data = a_.data();
      o.count = count_;
      o.dtype = opts_.dtype;
      o.op = ReduceOp::kSum;
      o.algo = opts_.algo;
      pg_.allreduce(o);
    } else if (op == "reduce_scatter") {
      comm::ReduceScatterOptions o;
      o.input = a_.data();
      o.output = b_.data();
      o.count = block_;
      o.dtype = opts_.dtype;
      o.op = ReduceOp::kSum;
      pg_.reduceScatter(o);
    } else if (op == "allgather") {
      comm::AllgatherOptions o;
      o.input = a_.data();
      o.output = b_.data();
      o.count = block_;
      o.dtype = opts_.dtype;
      pg_.allgather(o);
    } else if (op == "broadcast") {
      comm::BroadcastOptions o;
      o.data = a_.data();
      o.count = count_;
      o.dtype = opts_.dtype;
      o.root = 0;
      pg_.broadcast(o);
    } else {
      comm::AlltoallOptions o;
      o.input = a_.data();
      o.output = b_.data();
      o.count = block_;
      o.dtype = opts_.dtype;
      pg_.alltoall(o);
    }
  }

  // This rank's wrong elements. Collective for all-reduce (one more call on the pattern).
  int64_t check() {
    DType t = opts_.dtype;
    const int n = n_;
    const int r = rank_;
    // sum_r v(r, i) depends only on i mod 4.
    int64_t sum4[4] = {0, 0, 0, 0};
    for (int m = 0; m < 4; ++m) {
      for (int q = 0; q < n; ++q) sum4[m] += pattern(q, static_cast<size_t>(m));
    }
    const size_t c = block_;
    const std::string& op = opts_.op;
    if (op == "allreduce") {
      fill(t, a_.data(), count_, [r](size_t i) { return pattern(r, i); });
      run();
      return countWrong(t, a_.data(), count_, [&](size_t i) { return sum4[i % 4]; });
    }
    if (op == "broadcast") {
      return countWrong(t, a_.data(), count_, [](size_t i) { return pattern(0, i); });
    }
    if (op == "reduce_scatter") {
      size_t base = static_cast<size_t>(r) * c;
      return countWrong(t, b_.data(), c, [&](size_t j) { return sum4[(base + j) % 4]; });
    }
    if (op == "allgather") {
      return countWrong(t, b_.data(), count_, [&](size_t i) { return pattern(static_cast<int>(i / c), i % c); });
    }
    size_t base = static_cast<size_t>(r) * c;  // alltoall: block k comes from rank k's block r
    return countWrong(t, b_.data(), count_,
                      [&](size_t i) { return pattern(static_cast<int>(i / c), base + i % c); });
  }

 private:
  ProcessGroup& pg_;
  const BenchOptions& opts_;
  const int n_;
  const int rank_;
  const size_t count_;
  const size_t block_;  // count / n: the per-rank block of the blocked collectives
  const size_t esize_;
  Buffer a_;  // in-place buffer, or the input
  Buffer b_;  // the output of out-of-place collectives
};

std::string algoLabel(const BenchOptions& o, size_t bytes, const ProcessGroup& pg) {
  if (o.op != "allreduce") return "-";
  if (o.algo != AllreduceAlgo::kAuto) return comm::algoName(o.algo);
  if (pg.defaultAlgo() != AllreduceAlgo::kAuto) return comm::algoName(pg.defaultAlgo());
  return comm::algoName(comm::chooseAllreduceAlgo(bytes, pg.size(), pg.links()));
}

BenchRow measure(ProcessGroup& pg, const BenchOptions& o, size_t count) {
  Case c(pg, o, count);
  c.prepareTimed();
  c.run();  // first touch and connection warm-up
  int64_t t0 = nowNs();
  c.run();
  double probeS = maxOverRanks(pg, static_cast<double>(nowNs() - t0) * 1e-9);
  probeS = std::max(probeS, 1e-7);
  int64_t warmup = o.warmup >= 0 ? o.warmup : std::clamp<int64_t>(static_cast<int64_t>(kWarmupSeconds / probeS), 0,
                                                                      kMaxAutoWarmup);
  int64_t iters = o.iters > 0 ? o.iters
                              : std::clamp<int64_t>(static_cast<int64_t>(kTimedSeconds / probeS), kMinAutoIters,
                                                    kMaxAutoIters);
  for (int64_t i = 0; i < warmup; ++i) c.run();
  pg.barrier();
  t0 = nowNs();
  for (int64_t i = 0; i < iters; ++i) c.run();
  double meanS = static_cast<double>(nowNs() - t0) * 1e-9 / static_cast<double>(iters);
  double timeS = maxOverRanks(pg, meanS);
  int64_t wrong = -1;
  if (o.check) wrong = sumOverRanks(pg, c.check());

  BenchRow row;
  row.op = o.op;
  row.ranks = pg.size();
  row.transport = pg.transportName();
  row.count = count;
  row.bytes = count * dtypeSize(o.dtype);
  row.dtype = dtypeName(o.dtype);
  row.algo = algoLabel(o, row.bytes, pg);
  row.iters = iters;
  row.timeUs = timeS * 1e6;
  row.wrong = wrong;
  computeBandwidth(row);
  return row;
}

void printHeader(const BenchOptions& o, const ProcessGroup& pg) {
  std::printf("# chorus bench collectives: op %s, %d ranks, transport %s, dtype %s, iters %s, warmup %s, check %s\n",
              o.op.c_str(), pg.size(), pg.transportName(), dtypeName(o.dtype),
              o.iters > 0 ? str(o.iters).c_str() : "auto", o.warmup >= 0 ? str(o.warmup).c_str() : "auto",
              o.check ? "on" : "off");
  std::printf("# time_us: mean per call over the timed iterations, slowest rank; bandwidths in GB/s (1e9 B/s)\n");
  std::printf("%s\n", tableHeader().c_str());
  std::fflush(stdout);
}

void printRow(const BenchOptions& o, const BenchRow& r) {
  std::printf("%s\n", o.json ? jsonRow(r).c_str() : tableRow(r).c_str());
  std::fflush(stdout);
}

int runAsRank(const BenchOptions& o) {
  comm::InitOptions init;
  init.transport = o.transport;
  init.group.timeout = Millis(o.timeoutMs);
  std::shared_ptr<ProcessGroup> pg = ProcessGroup::fromEnvironment(init);
  if (o.ranksGiven && o.ranks != pg->size()) {
    throw UsageError(str("chorus bench collectives: --ranks ", o.ranks, " but this job has ", pg->size(),
                         " ranks; leave out --ranks when running under a launcher"));
  }
  if (o.check && 3 * int64_t{pg->size()} + 1 >= exactIntegerLimit(o.dtype)) {
    throw UsageError(str("chorus bench collectives: the check pattern overflows ", dtypeName(o.dtype), " on ",
                         pg->size(), " ranks; use --dtype float32 or --check 0"));
  }
  const bool printing = pg->rank() == 0;
  if (printing && !o.json) printHeader(o, *pg);
  double busSum = 0;
  int rows = 0;
  int64_t wrongTotal = 0;
  SweepSpec sweep;
  sweep.op = o.op;
  sweep.elementBytes = dtypeSize(o.dtype);
  sweep.ranks = pg->size();
  sweep.minBytes = o.minBytes;
  sweep.maxBytes = o.maxBytes;
  sweep.stepFactor = o.stepFactor;
  for (size_t count : sweepCounts(sweep)) {
    BenchRow r = measure(*pg, o, count);
    if (printing) printRow(o, r);
    busSum += r.busbwGBps;
    ++rows;
    wrongTotal += std::max<int64_t>(r.wrong, 0);
  }
  if (printing && !o.json) {
    std::printf("# average busbw: %.3f GB/s over %d sizes; wrong elements: %" PRId64 "\n", rows > 0 ? busSum / rows : 0.0,
                rows, wrongTotal);
    std::fflush(stdout);
  }
  pg->barrier();
  return wrongTotal == 0 ? 0 : 1;
}

ArgParser makeParser() {
  ArgParser p("chorus bench collectives", ArgParser::Positional::kReject);
  p.addValue("--op", "OP", "allreduce, reduce_scatter, allgather, broadcast or alltoall", "allreduce");
  p.addValue("--ranks", "N", "ranks to start on this host; under a launcher the job's size (must match if given)", "2");
  p.addValue("--transport", "NAME", "auto, shm, tcp, mixed, or mpi (under mpirun)", "auto");
  p.addValue("--algo", "ALGO", "all-reduce algorithm: auto, ring, hd, tree, direct, hier or mpi", "auto");
  p.addValue("--dtype", "TYPE", "float32, float64, float16, bfloat16, int32, int64 or uint8", "float32");
  p.addValue("--min-bytes", "SIZE", "smallest message (K, M, G suffixes)", "4K");
  p.addValue("--max-bytes", "SIZE", "largest message", "64M");
  p.addValue("--step-factor", "F", "each size is F times the previous", "2");
  p.addValue("--iters", "K", "timed iterations per size (default: enough for ~0.25 s, 5 to 10000)");
  p.addValue("--warmup", "W", "untimed iterations per size before timing (default: ~0.05 s worth, up to 20)");
  p.addValue("--check", "0|1", "verify every result against the exact expected values", "1");
  p.addValue("--timeout-ms", "MS", "timeout of every blocking call (default: CHORUS_TIMEOUT_MS)");
  p.addSwitch("--json", "print one JSON object per size instead of the table");
  p.addSwitch("-h,--help", "show this help");
  return p;
}

}  // namespace

// Inside a job when any launch convention bootstrap understands is present (chorus launch,
// torchrun variables, mpirun, srun); ProcessGroup::fromEnvironment reads the same.
bool insideJob() { return comm::detectBootstrap().source != "single"; }

std::string benchCollectivesHelp() {
  return str(
      "usage: chorus bench collectives [flags]\n"
      "\n"
      "Measures one collective over a sweep of message sizes, like nccl-tests. Outside a job it\n"
      "starts --ranks ranks of itself on this host (through `chorus launch`); under `chorus\n"
      "launch`, mpirun or a torchrun-style launcher it joins that job. Rank 0 prints one row per\n"
      "size: bytes count dtype algo time_us algbw_GBps busbw_GBps wrong. time_us is the mean per\n"
      "call of the slowest rank; busbw uses nccl-tests' factors (allreduce 2(n-1)/n,\n"
      "reduce_scatter/allgather/alltoall (n-1)/n, broadcast 1); wrong counts elements that differ\n"
      "from the exact expected result. Exits 1 if any element was wrong.\n"
      "\n"
      "flags:\n",
      makeParser().flagTable(),
      "\n"
      "examples:\n"
      "  chorus bench collectives --op allreduce --ranks 4 --transport shm --max-bytes 16M\n"
      "  mpirun -n 4 chorus bench collectives --transport mpi --algo mpi --json\n");
}

int benchCollectivesCommand(const std::vector<std::string>& args) {
  ArgParser p = makeParser();
  p.parse(args);
  if (p.has("--help")) {
    std::cout << benchCollectivesHelp();
    return 0;
  }
  const std::string cmd = "chorus bench collectives";
  BenchOptions o;
  o.op = p.getChoice("--op", benchOps());
  o.ranks = static_cast<int>(p.getInt("--ranks", 1, 1024));
  o.ranksGiven = p.has("--ranks");
  o.transport = p.getChoice("--transport", {"auto", "shm", "tcp", "mixed", "mpi"});
  try {
    o.algo = comm::parseAlgo(p.get("--algo"));
    o.dtype = parseDType(p.get("--dtype"));
  } catch (const InvalidArgument& e) {
    throw UsageError(str(cmd, ": ", e.what()));
  }
  if (o.op != "allreduce" && o.algo != AllreduceAlgo::kAuto) {
    throw UsageError(str(cmd, ": --algo applies to --op allreduce only; the other collectives have one algorithm"));
  }
  o.minBytes = p.getSize("--min-bytes");
  o.maxBytes = p.getSize("--max-bytes");
  if (o.minBytes == 0) {
    throw UsageError(str(cmd, ": --min-bytes must be at least 1 (the smallest message is one element); got 0"));
  }
  for (const auto& [flag, v] : {std::pair{"--min-bytes", o.minBytes}, std::pair{"--max-bytes", o.maxBytes}}) {
    if (v > kMaxMessageBytes) {
      throw UsageError(str(cmd, ": ", flag, " ", p.get(flag), " is over the limit of ", formatSize(kMaxMessageBytes),
                           " (", kMaxMessageBytes, " bytes); every rank holds two buffers of the largest message"));
    }
  }
  if (o.minBytes > o.maxBytes) {
    throw UsageError(str(cmd, ": need --min-bytes <= --max-bytes, got ", p.get("--min-bytes"), " (", o.minBytes,
                         " bytes) and ", p.get("--max-bytes"), " (", o.maxBytes, " bytes)"));
  }
  o.stepFactor = static_cast<uint64_t>(p.getInt("--step-factor", 2, 1 << 20));
  if (p.has("--iters")) o.iters = p.getInt("--iters", 1, int64_t{1} << 40);
  if (p.has("--warmup")) o.warmup = p.getInt("--warmup", 0, int64_t{1} << 40);
  o.check = p.getInt("--check", 0, 1) == 1;
  o.json = p.has("--json");
  if (p.has("--timeout-ms")) o.timeoutMs = p.getInt("--timeout-ms", 1, int64_t{1} << 40);

  if (insideJob()) return runAsRank(o);

  if (o.transport == "mpi") {
    throw UsageError(str(cmd, ": --transport mpi runs under mpirun: `mpirun -n ", o.ranks,
                         " chorus bench collectives --transport mpi ...`"));
  }
  // Every local rank holds two buffers of the largest message: refuse what this host cannot
  // hold, rather than let the ranks be killed for memory halfway through the sweep.
  const long pages = ::sysconf(_SC_PHYS_PAGES), pageSize = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && pageSize > 0) {
    const uint64_t physical = static_cast<uint64_t>(pages) * static_cast<uint64_t>(pageSize);
    const uint64_t needed = 2 * o.maxBytes * static_cast<uint64_t>(o.ranks);  // <= 2 * 4 GiB * 1024: no overflow
    if (needed > physical) {
      throw UsageError(str(cmd, ": --max-bytes ", p.get("--max-bytes"), " on ", o.ranks, " ranks needs ",
                           needed >> 20, " MiB of buffers (two per rank) but this host has ", physical >> 20,
                           " MiB of memory; lower --max-bytes or --ranks"));
    }
  }
  LaunchOptions lo;
  lo.nproc = o.ranks;
  lo.transport = o.transport;
  lo.timeoutMs = o.timeoutMs;
  lo.tagStdout = false;  // only rank 0 prints, and its table is meant for parsing
  lo.messagePrefix = "chorus bench";
  std::vector<std::string> argv = {selfExecutable(), "bench", "collectives"};
  for (const auto& a : p.given()) argv.push_back(a);
  return launchLocal(lo, argv);
}

}  // namespace chorus::tools
