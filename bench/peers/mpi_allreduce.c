/* The MPI peer of `chorus bench collectives --op allreduce`: MPI_Allreduce (float32, sum, in
 * place) over a sweep of sizes, measured and checked exactly as chorus measures itself, so
 * the rows of both can sit side by side in bench/results/collectives.md.
 *
 * For each size (min-bytes, doubling, up to max-bytes), every rank:
 *   1. fills its buffer with zeros, runs one call (first touch, connection warm-up), then one
 *      timed call whose slowest-rank time sets warmup (~0.05 s worth, at most 20) and
 *      iterations (~0.25 s worth, 5 to 10000) unless --warmup/--iters say otherwise;
 *   2. runs the warmup, a barrier, then the timed loop; its mean per call is reduced with
 *      MPI_MAX, so time_us is the slowest rank's;
 *   3. fills v(r, i) = (r + i) mod 4, runs one more call and counts elements that differ from
 *      sum_r v(r, i) (exact in float32); the counts are summed over ranks.
 * Rank 0 prints one row per size: bytes count dtype algo time_us algbw_GBps busbw_GBps wrong,
 * with busbw = algbw * 2(n-1)/n as nccl-tests defines it (GB = 1e9 bytes).
 *
 * usage: mpirun -n N mpi_allreduce_bench [--min-bytes 4K] [--max-bytes 64M] [--iters K]
 *                                        [--warmup W] [--check 0|1]
 * Exits 1 if any element was wrong, 2 on a usage error. */
#include <mpi.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double kWarmupSeconds = 0.05;
static const double kTimedSeconds = 0.25;
static const long kMaxAutoIters = 10000;
static const long kMinAutoIters = 5;
static const long kMaxAutoWarmup = 20;

/* "4096", "4K", "64M", "1G" -> bytes; 0 on a malformed value. */
static uint64_t parseSize(const char* s) {
  char* end = NULL;
  unsigned long long v = strtoull(s, &end, 10);
  if (end == s) return 0;
  switch (*end) {
    case 'k': case 'K': v <<= 10; ++end; break;
    case 'm': case 'M': v <<= 20; ++end; break;
    case 'g': case 'G': v <<= 30; ++end; break;
    default: break;
  }
  if (*end == 'i') ++end;
  if (*end == 'B' || *end == 'b') ++end;
  return *end == '\0' ? (uint64_t)v : 0;
}

static long clampLong(long v, long lo, long hi) { return v < lo ? lo : (v > hi ? hi : v); }

static double maxOverRanks(double v) {
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return v;
}

static void allreduce(float* buf, int count) {
  MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
}

static int usage(int rank, const char* msg) {
  if (rank == 0) {
    fprintf(stderr, "mpi_allreduce_bench: %s\nusage: mpirun -n N mpi_allreduce_bench [--min-bytes 4K] "
                    "[--max-bytes 64M] [--iters K] [--warmup W] [--check 0|1]\n", msg);
  }
  MPI_Finalize();
  return 2;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  int size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  uint64_t minBytes = 4096;
  uint64_t maxBytes = 64u << 20;
  long iters = 0;
  long warmup = -1;
  int check = 1;
  for (int a = 1; a < argc; ++a) {
    if (a + 1 >= argc) return usage(rank, "every flag takes a value");
    const char* v = argv[a + 1];
    if (strcmp(argv[a], "--min-bytes") == 0) {
      minBytes = parseSize(v);
    } else if (strcmp(argv[a], "--max-bytes") == 0) {
      maxBytes = parseSize(v);
    } else if (strcmp(argv[a], "--iters") == 0) {
      iters = atol(v);
      if (iters <= 0) return usage(rank, "--iters must be positive");
    } else if (strcmp(argv[a], "--warmup") == 0) {
      warmup = atol(v);
      if (warmup < 0) return usage(rank, "--warmup must be >= 0");
    } else if (strcmp(argv[a], "--check") == 0) {
      check = atoi(v);
    } else {
      return usage(rank, "unknown flag");
    }
    ++a;
  }
  if (minBytes < 4 || minBytes > maxBytes) return usage(rank, "need 4 <= --min-bytes <= --max-bytes");
  if ((maxBytes / 4) > (uint64_t)2147483647) return usage(rank, "--max-bytes too large for one MPI call");

  const double busFactor = 2.0 * (size - 1) / size;
  if (rank == 0) {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(version, &len);
    char* nl = strchr(version, '\n');
    if (nl != NULL) *nl = '\0';
    printf("# mpi_allreduce_bench: MPI_Allreduce in place, float32 sum, %d ranks, iters %s, warmup %s, check %s\n",
           size, iters > 0 ? "given" : "auto", warmup >= 0 ? "given" : "auto", check ? "on" : "off");
    printf("# library: %s\n", version);
    printf("# time_us: mean per call over the timed iterations, slowest rank; bandwidths in GB/s (1e9 B/s)\n");
    printf("%12s %12s %9s %6s %12s %11s %11s %7s\n", "bytes", "count", "dtype", "algo", "time_us", "algbw_GBps",
           "busbw_GBps", "wrong");
    fflush(stdout);
  }

  long long wrongTotal = 0;
  for (uint64_t bytes = minBytes; bytes <= maxBytes;) {
    int count = (int)(bytes / 4);
    float* buf = NULL;
    size_t alloc = ((size_t)count * 4 + 63) / 64 * 64;
    if (posix_memalign((void**)&buf, 64, alloc) != 0) {
      fprintf(stderr, "rank %d: cannot allocate %zu bytes\n", rank, alloc);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    memset(buf, 0, alloc);

    allreduce(buf, count);
    double t0 = MPI_Wtime();
    allreduce(buf, count);
    double probe = maxOverRanks(MPI_Wtime() - t0);
    if (probe < 1e-7) probe = 1e-7;
    long w = warmup >= 0 ? warmup : clampLong((long)(kWarmupSeconds / probe), 0, kMaxAutoWarmup);
    long k = iters > 0 ? iters : clampLong((long)(kTimedSeconds / probe), kMinAutoIters, kMaxAutoIters);
    for (long i = 0; i < w; ++i) allreduce(buf, count);
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = MPI_Wtime();
    for (long i = 0; i < k; ++i) allreduce(buf, count);
    double timeS = maxOverRanks((MPI_Wtime() - t0) / (double)k);

    long long wrong = -1;
    if (check) {
      for (int i = 0; i < count; ++i) buf[i] = (float)((rank + i) % 4);
      allreduce(buf, count);
      float sum4[4] = {0, 0, 0, 0}; /* sum_r v(r, i) depends only on i mod 4 */
      for (int m = 0; m < 4; ++m) {
        for (int r = 0; r < size; ++r) sum4[m] += (float)((r + m) % 4);
      }
      long long mine = 0;
      for (int i = 0; i < count; ++i) mine += buf[i] != sum4[i % 4];
      MPI_Allreduce(&mine, &wrong, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
      wrongTotal += wrong;
    }
    free(buf);

    if (rank == 0) {
      double algbw = (double)bytes / timeS / 1e9;
      char wrongText[32];
      if (wrong >= 0) {
        snprintf(wrongText, sizeof wrongText, "%lld", wrong);
      } else {
        snprintf(wrongText, sizeof wrongText, "-");
      }
      printf("%12llu %12d %9s %6s %12.2f %11.3f %11.3f %7s\n", (unsigned long long)bytes, count, "float32", "mpi",
             timeS * 1e6, algbw, algbw * busFactor, wrongText);
      fflush(stdout);
    }
    if (bytes > maxBytes / 2) break;
    bytes *= 2;
  }
  MPI_Finalize();
  return wrongTotal == 0 ? 0 : 1;
}
