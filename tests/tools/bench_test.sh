#!/usr/bin/env bash
# `chorus bench collectives`: the table and JSON rows (sizes, bandwidth arithmetic, wrong=0 for
# every collective), the spawn and inside-a-job paths, and its usage errors.
# usage: bash bench_test.sh BUILD_DIR [SOURCE_DIR]
set -u
BUILD=${1:?usage: bench_test.sh BUILD_DIR [SOURCE_DIR]}
CHORUS=$BUILD/chorus
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built"; exit 1; }
command -v python3 >/dev/null || { echo "FAIL: python3 is needed to check the JSON rows"; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# Checks a table on stdin: the header, then one row per size from $1 to $2 bytes doubling,
# each with dtype float32, wrong 0, a positive time, and busbw = algbw * $3.
check_table() {
  python3 -c '
import sys
lo, hi, factor = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
lines = [l for l in sys.stdin.read().splitlines() if l.strip() and not l.startswith("#")]
cols = "bytes count dtype algo time_us algbw_GBps busbw_GBps wrong".split()
if not lines or lines[0].split() != cols:
    sys.exit("no header line: %r" % (lines[:1],))
rows = [l.split() for l in lines[1:]]
sizes = []
b = lo
while b <= hi:
    sizes.append(b)
    b *= 2
if [int(r[0]) for r in rows] != sizes:
    sys.exit("sizes %s, expected %s" % ([r[0] for r in rows], sizes))
for r in rows:
    if len(r) != 8:
        sys.exit("row with %d fields: %s" % (len(r), r))
    nbytes, count, dtype, algo, t, alg, bus, wrong = r
    if int(count) * 4 != int(nbytes) or dtype != "float32":
        sys.exit("bad count/dtype: %s" % r)
    if wrong != "0":
        sys.exit("wrong elements: %s" % r)
    if not float(t) > 0:
        sys.exit("non-positive time: %s" % r)
    want_alg = int(nbytes) / (float(t) * 1e-6) / 1e9
    if abs(float(alg) - want_alg) > 0.002 + 0.01 * want_alg:
        sys.exit("algbw %s, expected %.3f from bytes/time: %s" % (alg, want_alg, r))
    if abs(float(bus) - float(alg) * factor) > 0.002 + 0.01 * float(alg):
        sys.exit("busbw %s is not algbw x %g: %s" % (bus, factor, r))
' "$@"
}

# Checks JSON rows on stdin: every line an object with the fields, op $1, ranks $2,
# transport $3, wrong 0, busbw = algbw * the op's factor; at least $4 rows.
check_json() {
  python3 -c '
import json, sys
op, ranks, transport, min_rows = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
n = ranks
factor = {"allreduce": 2 * (n - 1) / n, "reduce_scatter": (n - 1) / n, "allgather": (n - 1) / n,
          "broadcast": 1.0, "alltoall": (n - 1) / n}[op]
rows = [json.loads(l) for l in sys.stdin.read().splitlines() if l.strip()]
if len(rows) < min_rows:
    sys.exit("%d rows, expected at least %d" % (len(rows), min_rows))
fields = {"op", "ranks", "transport", "bytes", "count", "dtype", "algo", "iters", "time_us", "algbw_GBps", "busbw_GBps", "wrong"}
for r in rows:
    if set(r) != fields:
        sys.exit("fields %s" % sorted(r))
    if (r["op"], r["ranks"], r["transport"], r["wrong"]) != (op, ranks, transport, 0):
        sys.exit("row %s" % r)
    if op in ("reduce_scatter", "allgather", "alltoall") and r["count"] % ranks:
        sys.exit("count not a multiple of the ranks: %s" % r)
    if abs(r["busbw_GBps"] - r["algbw_GBps"] * factor) > 0.0002 + 0.001 * r["algbw_GBps"]:
        sys.exit("busbw is not algbw x %g: %s" % (factor, r))
' "$@"
}

test_allreduce_table_shm() {
  local out=$TMP/ar.out rc msg
  timeout 120 "$CHORUS" bench collectives --ranks 2 --transport shm --max-bytes 1M --iters 3 >"$out" 2>"$TMP/ar.err"
  rc=$?
  [ $rc -eq 0 ] || { fail "bench allreduce shm: exit $rc"; cat "$TMP/ar.err" "$out"; return; }
  if msg=$(check_table 4096 1048576 1.0 <"$out" 2>&1); then
    pass "allreduce on 2 shm ranks, 4K..1M: 9 rows, wrong=0, algbw=bytes/time, busbw=algbw x 2(n-1)/n"
  else
    fail "allreduce table: $msg"; cat "$out"
  fi
}

test_every_op_json() {
  local transport op out rc msg
  for transport in shm tcp; do
    for op in allreduce reduce_scatter allgather broadcast alltoall; do
      out=$TMP/$op.$transport.json
      timeout 120 "$CHORUS" bench collectives --op $op --ranks 3 --transport $transport --min-bytes 1K \
        --max-bytes 256K --iters 2 --warmup 1 --json >"$out" 2>"$TMP/json.err"
      rc=$?
      if [ $rc -ne 0 ]; then
        fail "bench $op on 3 $transport ranks: exit $rc"; cat "$TMP/json.err"; continue
      fi
      if msg=$(check_json $op 3 $transport 9 <"$out" 2>&1); then
        pass "$op on 3 $transport ranks (sizes not divisible by 3): JSON rows, wrong=0, bus factor"
      else
        fail "$op on 3 $transport ranks: $msg"; cat "$out"
      fi
    done
  done
}

test_algorithms_and_dtypes() {
  local algo dtype out rc
  for algo in ring hd tree; do
    out=$TMP/algo.$algo
    timeout 60 "$CHORUS" bench collectives --ranks 3 --algo $algo --max-bytes 64K --iters 2 --json >"$out" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && check_json allreduce 3 "$(head -1 "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["transport"])')" 5 <"$out" \
       && [ "$(grep -c "\"algo\":\"$algo\"" "$out")" -eq 5 ]; then
      pass "allreduce --algo $algo on 3 ranks: every row says $algo, wrong=0"
    else
      fail "allreduce --algo $algo (exit $rc)"; cat "$out"
    fi
  done
  for dtype in float64 bfloat16 int32 uint8; do
    out=$TMP/dtype.$dtype
    timeout 60 "$CHORUS" bench collectives --ranks 2 --dtype $dtype --min-bytes 1K --max-bytes 16K --iters 2 --json >"$out" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && [ "$(grep -c "\"dtype\":\"$dtype\".*\"wrong\":0}" "$out")" -eq 5 ]; then
      pass "allreduce in $dtype: wrong=0"
    else
      fail "allreduce in $dtype (exit $rc)"; cat "$out"
    fi
  done
}

test_inside_a_job() {
  local out=$TMP/job.out rc
  timeout 60 "$CHORUS" launch -n 2 "$CHORUS" bench collectives --max-bytes 8K --iters 2 >"$out" 2>&1
  rc=$?
  local ok=1
  [ $rc -eq 0 ] || ok=0
  # Only rank 0 prints; the launcher tags its lines.
  grep -v '^\[rank 0\] ' "$out" | grep -q . && ok=0
  sed 's/^\[rank 0\] //' "$out" | check_table 4096 8192 1.0 || ok=0
  [ $ok -eq 1 ] && pass "under chorus launch it joins the job; only rank 0 prints" || { fail "inside a job (exit $rc)"; cat "$out"; }
  out=$("$CHORUS" launch -n 2 "$CHORUS" bench collectives --ranks 3 --max-bytes 8K 2>&1); rc=$?
  [ $rc -ne 0 ] && echo "$out" | grep -q -- "--ranks 3 but this job has 2 ranks" \
    && pass "--ranks that disagrees with the job is an error" || { fail "--ranks mismatch (exit $rc)"; echo "$out"; }
}

test_check_off() {
  local out
  out=$(timeout 60 "$CHORUS" bench collectives --ranks 2 --max-bytes 4K --iters 1 --check 0 2>&1)
  echo "$out" | grep -v '^#' | tail -1 | grep -qE ' -$' && pass "--check 0 prints wrong as -" || { fail "--check 0"; echo "$out"; }
}

test_usage_errors() {
  local out rc ok=1
  out=$("$CHORUS" bench collectives --op gossip 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "must be one of allreduce, reduce_scatter, allgather, broadcast, alltoall" || { ok=0; echo "  --op: $out"; }
  out=$("$CHORUS" bench collectives --max-bytes 4X 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q -- "--max-bytes '4X' has an unknown size suffix" || { ok=0; echo "  size: $out"; }
  out=$("$CHORUS" bench collectives --iter 3 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "did you mean --iters?" && echo "$out" | grep -q -- "--step-factor" || { ok=0; echo "  flag: $out"; }
  out=$("$CHORUS" bench collectives --op allgather --algo ring 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q -- "--algo applies to --op allreduce only" || { ok=0; echo "  algo: $out"; }
  out=$("$CHORUS" bench collectives --min-bytes 8K --max-bytes 4K 2>&1); rc=$?
  [ $rc -eq 2 ] || { ok=0; echo "  min > max: $out"; }
  out=$("$CHORUS" bench collectives --transport mpi 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "mpirun -n 2 chorus bench collectives --transport mpi" || { ok=0; echo "  mpi: $out"; }
  out=$("$CHORUS" bench collectives --dtype complex 2>&1); rc=$?
  [ $rc -eq 2 ] || { ok=0; echo "  dtype: $out"; }
  [ $ok -eq 1 ] && pass "usage errors exit 2 and say what is valid" || fail "bench usage errors"
}

test_under_mpirun() {
  if ! command -v mpirun >/dev/null || ! ldd "$CHORUS" | grep -q libmpi; then
    echo "skip: mpirun run (no mpirun, or chorus built without MPI)"
    return
  fi
  # OpenMPI's own MPI_Init trips ThreadSanitizer (a lock-order report inside mca_btl_tcp) and
  # LeakSanitizer; `make sanitize` leaves MPI out (its mpi tests are excluded the same way).
  if grep -q '^CHORUS_SANITIZE:STRING=..*' "$BUILD/CMakeCache.txt" 2>/dev/null; then
    echo "skip: mpirun run (sanitizer build; OpenMPI itself is not sanitizer-clean)"
    return
  fi
  local out=$TMP/mpi.out rc
  timeout 120 mpirun --allow-run-as-root --oversubscribe -n 2 "$CHORUS" bench collectives --transport mpi \
    --max-bytes 16K --iters 2 --json >"$out" 2>"$TMP/mpi.err"
  rc=$?
  if [ $rc -eq 0 ] && check_json allreduce 2 mpi 3 <"$out"; then
    pass "under mpirun with --transport mpi"
  else
    fail "under mpirun (exit $rc)"; cat "$out" "$TMP/mpi.err" | head -30
  fi
}

test_usage_errors
test_allreduce_table_shm
test_every_op_json
test_algorithms_and_dtypes
test_inside_a_job
test_check_off
test_under_mpirun

if [ $failures -ne 0 ]; then
  echo "bench_test: $failures FAILED"
  exit 1
fi
echo "bench_test: all passed"
