// The arithmetic and output format of `chorus bench collectives`: the size sweep, the
// nccl-tests bus factors, bandwidths, and the table and JSON rows that scripts parse.
#include "bench_report.h"

#include <gtest/gtest.h>

#include "chorus/common/error.h"

namespace chorus::tools {
namespace {

TEST(BusFactor, NcclTestsDefinitions) {
  EXPECT_DOUBLE_EQ(busFactor("allreduce", 4), 1.5);
  EXPECT_DOUBLE_EQ(busFactor("reduce_scatter", 4), 0.75);
  EXPECT_DOUBLE_EQ(busFactor("allgather", 2), 0.5);
  EXPECT_DOUBLE_EQ(busFactor("alltoall", 8), 0.875);
  EXPECT_DOUBLE_EQ(busFactor("broadcast", 5), 1.0);
  EXPECT_DOUBLE_EQ(busFactor("allreduce", 1), 0.0);
  EXPECT_THROW(busFactor("gossip", 2), InvalidArgument);
  for (const auto& op : benchOps()) EXPECT_NO_THROW(busFactor(op, 3)) << op;
}

TEST(SweepCounts, PowersOfTwo) {
  SweepSpec s;
  s.op = "allreduce";
  s.elementBytes = 4;
  s.ranks = 2;
  s.minBytes = 4096;
  s.maxBytes = 1 << 20;
  std::vector<size_t> counts = sweepCounts(s);
  ASSERT_EQ(counts.size(), 9u);  // 4K, 8K, ..., 1M
  EXPECT_EQ(counts.front(), 1024u);
  EXPECT_EQ(counts.back(), 262144u);
  for (size_t i = 1; i < counts.size(); ++i) EXPECT_EQ(counts[i], 2 * counts[i - 1]);
}

TEST(SweepCounts, StepFactorAndUnevenMax) {
  SweepSpec s;
  s.op = "broadcast";
  s.elementBytes = 8;
  s.minBytes = 100;
  s.maxBytes = 10000;
  s.stepFactor = 4;
  // 100, 400, 1600, 6400 bytes -> 12, 50, 200, 800 doubles
  EXPECT_EQ(sweepCounts(s), (std::vector<size_t>{12, 50, 200, 800}));
}

TEST(SweepCounts, BlockedOpsRoundToRanksAndDropRepeats) {
  SweepSpec s;
  s.op = "allgather";
  s.elementBytes = 4;
  s.ranks = 3;
  s.minBytes = 1;
  s.maxBytes = 64;
  // 1, 2, 4 bytes -> 0 elements -> one per rank (3); 8 -> 2 -> 3 again (dropped); 16 -> 4 -> 3
  // (dropped); 32 -> 8 -> 6; 64 -> 16 -> 15.
  EXPECT_EQ(sweepCounts(s), (std::vector<size_t>{3, 6, 15}));
  s.op = "allreduce";
  EXPECT_EQ(sweepCounts(s), (std::vector<size_t>{1, 2, 4, 8, 16}));
}

TEST(SweepCounts, NoOverflowAtTheTop) {
  SweepSpec s;
  s.op = "allreduce";
  s.elementBytes = 1;
  s.minBytes = uint64_t{1} << 62;
  s.maxBytes = UINT64_MAX;
  EXPECT_EQ(sweepCounts(s).size(), 2u);  // 2^62, 2^63; 2^64 would wrap
}

TEST(Bandwidth, FromBytesAndTime) {
  BenchRow r;
  r.op = "allreduce";
  r.ranks = 4;
  r.bytes = 1000000;
  r.timeUs = 500;  // 1e6 B in 5e-4 s = 2 GB/s
  computeBandwidth(r);
  EXPECT_DOUBLE_EQ(r.algbwGBps, 2.0);
  EXPECT_DOUBLE_EQ(r.busbwGBps, 3.0);
}

TEST(Rows, TableAndJson) {
  BenchRow r;
  r.op = "reduce_scatter";
  r.ranks = 2;
  r.transport = "shm";
  r.bytes = 4096;
  r.count = 1024;
  r.dtype = "float32";
  r.algo = "-";
  r.iters = 7;
  r.timeUs = 12.5;
  r.wrong = 0;
  computeBandwidth(r);
  EXPECT_EQ(tableHeader().find("bytes"), tableHeader().find_first_not_of(' '));
  for (const char* col : {"count", "dtype", "algo", "time_us", "algbw_GBps", "busbw_GBps", "wrong"}) {
    EXPECT_NE(tableHeader().find(col), std::string::npos) << col;
  }
  std::string row = tableRow(r);
  EXPECT_NE(row.find("4096"), std::string::npos) << row;
  EXPECT_NE(row.find("12.50"), std::string::npos) << row;
  EXPECT_NE(row.find("0.328"), std::string::npos) << row;  // 4096 / 12.5e-6 / 1e9
  EXPECT_NE(row.find("0.164"), std::string::npos) << row;  // x (n-1)/n
  EXPECT_EQ(row.back(), '0');
  EXPECT_EQ(jsonRow(r),
            "{\"op\":\"reduce_scatter\",\"ranks\":2,\"transport\":\"shm\",\"bytes\":4096,\"count\":1024,"
            "\"dtype\":\"float32\",\"algo\":\"-\",\"iters\":7,\"time_us\":12.500,\"algbw_GBps\":0.3277,"
            "\"busbw_GBps\":0.1638,\"wrong\":0}");
  r.wrong = -1;
  EXPECT_EQ(tableRow(r).back(), '-');
  EXPECT_NE(jsonRow(r).find("\"wrong\":null}"), std::string::npos);
}

}  // namespace
}  // namespace chorus::tools
