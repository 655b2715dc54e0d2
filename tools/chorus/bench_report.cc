#include "bench_report.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

#include "chorus/common/error.h"

namespace chorus::tools {

const std::vector<std::string>& benchOps() {
  static const std::vector<std::string> ops = {"allreduce", "reduce_scatter", "allgather", "broadcast", "alltoall"};
  return ops;
}

bool isBlockedOp(const std::string& op) { return op == "reduce_scatter" || op == "allgather" || op == "alltoall"; }

double busFactor(const std::string& op, int n) {
  double dn = static_cast<double>(n);
  if (op == "allreduce") return 2.0 * (dn - 1) / dn;
  if (isBlockedOp(op)) return (dn - 1) / dn;
  if (op == "broadcast") return 1.0;
  throw InvalidArgument(str("unknown collective '", op, "'"));
}

std::vector<size_t> sweepCounts(const SweepSpec& s) {
  CHORUS_CHECK(s.stepFactor >= 2 && s.elementBytes > 0 && s.ranks > 0, "bad sweep");
  std::vector<size_t> counts;
  const size_t n = static_cast<size_t>(s.ranks);
  for (uint64_t b = s.minBytes; b <= s.maxBytes;) {
    size_t count = b / s.elementBytes;
    count = isBlockedOp(s.op) ? std::max<size_t>(count / n, 1) * n : std::max<size_t>(count, 1);
    if (counts.empty() || counts.back() != count) counts.push_back(count);
    if (b > s.maxBytes / s.stepFactor) break;
    b *= s.stepFactor;
  }
  return counts;
}

void computeBandwidth(BenchRow& row) {
  double seconds = row.timeUs * 1e-6;
  row.algbwGBps = seconds > 0 ? static_cast<double>(row.bytes) / seconds / 1e9 : 0.0;
  row.busbwGBps = row.algbwGBps * busFactor(row.op, row.ranks);
}

std::string tableHeader() {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%12s %12s %9s %6s %12s %11s %11s %7s", "bytes", "count", "dtype", "algo", "time_us",
                "algbw_GBps", "busbw_GBps", "wrong");
  return buf;
}

std::string tableRow(const BenchRow& r) {
  char buf[512];
  std::string wrong = r.wrong >= 0 ? str(r.wrong) : "-";
  std::snprintf(buf, sizeof buf, "%12" PRIu64 " %12zu %9s %6s %12.2f %11.3f %11.3f %7s", r.bytes, r.count,
                r.dtype.c_str(), r.algo.c_str(), r.timeUs, r.algbwGBps, r.busbwGBps, wrong.c_str());
  return buf;
}

std::string jsonRow(const BenchRow& r) {
  char buf[1024];
  std::string wrong = r.wrong >= 0 ? str(r.wrong) : "null";
  std::snprintf(buf, sizeof buf,
                "{\"op\":\"%s\",\"ranks\":%d,\"transport\":\"%s\",\"bytes\":%" PRIu64
                ",\"count\":%zu,\"dtype\":\"%s\",\"algo\":\"%s\",\"iters\":%" PRId64
                ",\"time_us\":%.3f,\"algbw_GBps\":%.4f,\"busbw_GBps\":%.4f,\"wrong\":%s}",
                r.op.c_str(), r.ranks, r.transport.c_str(), r.bytes, r.count, r.dtype.c_str(), r.algo.c_str(), r.iters,
                r.timeUs, r.algbwGBps, r.busbwGBps, wrong.c_str());
  return buf;
}

}  // namespace chorus::tools
