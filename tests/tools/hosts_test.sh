#!/usr/bin/env bash
# Jobs across hosts, on 2 netlab hosts (each with its own hostname and network) x 2 ranks:
# - mpirun: OpenMPI's own launcher, entering the second host through `netlab.sh rsh` as its
#   rsh agent, runs `chorus bench collectives` (exact results, on the mixed transport with the
#   hierarchical all-reduce that auto picks there, and the flat ring over tcp), a short
#   `chorus train` and the parameter-server job with chorus's OpenMPI bootstrap (skipped
#   without mpirun or a chorus built with MPI);
# - `chorus launch --nnodes 2`: one launcher per host, node 0 hosting the store, runs the
#   benchmark; a rank that fails on one node ends both nodes' launchers, naming it.
# Skipped (exit 77) without root or network namespaces. The lab is removed on every way out.
# usage: bash hosts_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=${1:?usage: hosts_test.sh BUILD_DIR SOURCE_DIR}
SRC=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
NETLAB=$SRC/tools/netlab/netlab.sh
CHORUS=$(realpath -m "$BUILD/chorus")
LAB=mpih$$

"$NETLAB" usable || exit 77
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built (build the chorus target)"; exit 1; }
MPI_SKIP=""
if ! command -v mpirun >/dev/null; then
  MPI_SKIP="no mpirun (apt install openmpi-bin)"
elif ! ldd "$CHORUS" | grep -q libmpi; then
  MPI_SKIP="chorus was built without MPI"
elif ldd "$CHORUS" | grep -q -E 'libasan|libtsan|libubsan'; then
  MPI_SKIP="sanitizer build (OpenMPI itself is not sanitizer-clean)"
fi

TMP=$(mktemp -d)
cleanup() {
  "$NETLAB" down "$LAB" >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

"$NETLAB" up 2 --rate 1gbit --name "$LAB" >/dev/null || { echo "FAIL: netlab up"; exit 1; }

test_mpirun() {
  if [ -n "$MPI_SKIP" ]; then echo "skip: mpirun across hosts: $MPI_SKIP"; return; fi
  # mpirun runs on host 0; OpenMPI starts its daemon on host 1 through the rsh agent. Its own
  # traffic and the MPI byte transfer layer stay on the lab's subnet.
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_plm_rsh_agent="$NETLAB rsh"
  export OMPI_MCA_oob_tcp_if_include=10.77.0.0/24 OMPI_MCA_btl_tcp_if_include=10.77.0.0/24
  MPIRUN=(mpirun -H "$LAB-h0:2,$LAB-h1:2" -n 4 -x CHORUS_TIMEOUT_MS=20000)

  # Each rank says where it runs: host names and the bootstrap's local ranks.
  out=$(timeout 120 "$NETLAB" run "$LAB" 0 -- "${MPIRUN[@]}" sh -c \
    'echo "$OMPI_COMM_WORLD_RANK $(hostname) $OMPI_COMM_WORLD_LOCAL_RANK/$OMPI_COMM_WORLD_LOCAL_SIZE"' 2>&1 | sort)
  want=$(printf '%s\n' "0 $LAB-h0 0/2" "1 $LAB-h0 1/2" "2 $LAB-h1 0/2" "3 $LAB-h1 1/2")
  [ "$out" = "$want" ] && pass "mpirun -H $LAB-h0:2,$LAB-h1:2 places ranks 0, 1 on host 0 and 2, 3 on host 1" ||
    fail "placement: got '$out', want '$want'"

  # The all-reduce benchmark across the hosts: every row exact.
  timeout 180 "$NETLAB" run "$LAB" 0 -- "${MPIRUN[@]}" "$CHORUS" bench collectives --op allreduce \
    --min-bytes 4K --max-bytes 1M --step-factor 16 --iters 3 --warmup 1 >"$TMP/bench.out" 2>&1
  rc=$?
  rows=$(grep -E '^ *[0-9]+ ' "$TMP/bench.out")
  if [ $rc -eq 0 ] && [ "$(echo "$rows" | wc -l)" -eq 3 ] && ! echo "$rows" | awk '$NF != 0 { bad = 1 } END { exit !bad }'; then
    pass "chorus bench collectives under mpirun on 2 hosts x 2 ranks: 4K, 64K, 1M, every row wrong = 0"
  else
    fail "bench under mpirun: exit $rc"
    cat "$TMP/bench.out"
  fi
  grep -q "4 ranks, transport mixed" "$TMP/bench.out" ||
    { fail "the benchmark did not run 4 ranks on the mixed transport"; head -5 "$TMP/bench.out"; }
  # Across hosts with two ranks on each, auto picks the hierarchical all-reduce at every size.
  if [ -n "$rows" ] && echo "$rows" | awk '$4 != "hier" { bad = 1 } END { exit bad }'; then
    pass "auto chose the mixed transport (shm inside a host, tcp between) and the hierarchical all-reduce"
  else
    fail "auto's choices across hosts: want transport mixed and algo hier in every row"
    head -8 "$TMP/bench.out"
  fi
  # The flat ring over tcp, for comparison, still exact.
  timeout 180 "$NETLAB" run "$LAB" 0 -- "${MPIRUN[@]}" "$CHORUS" bench collectives --op allreduce --transport tcp \
    --algo ring --min-bytes 1M --max-bytes 1M --iters 3 --warmup 1 >"$TMP/ring.out" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -q "transport tcp" "$TMP/ring.out" &&
    grep -E '^ *[0-9]+ ' "$TMP/ring.out" | awk '$4 == "ring" && $NF == 0 { ok = 1 } END { exit !ok }'; then
    pass "--transport tcp --algo ring across the hosts: exact"
  else
    fail "flat ring over tcp: exit $rc"
    cat "$TMP/ring.out"
  fi

  # A short training run: 4 workers over the two hosts, one metrics file with the whole job.
  timeout 300 "$NETLAB" run "$LAB" 0 -- "${MPIRUN[@]}" "$CHORUS" train --set data.limit_train=512 \
    --set data.limit_test=256 --set train.epochs=1 --set train.batch_size=64 --set train.threads=1 \
    --set model.hidden=[32] --set output.progress=lines --set "output.dir=$TMP/train" >"$TMP/train.out" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -q '"event": "summary"' "$TMP/train/metrics.jsonl" 2>/dev/null &&
    grep -q '"event": "start", "world": 4,' "$TMP/train/metrics.jsonl" &&
    grep -q '"transport": "mixed"' "$TMP/train/metrics.jsonl"; then
    pass "chorus train under mpirun across the hosts: 4 workers on the mixed transport, summary written"
  else
    fail "train under mpirun: exit $rc"
    tail -20 "$TMP/train.out"
    head -c 600 "$TMP/train/metrics.jsonl" 2>/dev/null
  fi

  # Compression between the hosts only: PowerSGD among each host's first worker, dense sums
  # and broadcasts inside the hosts. The first ranks of the hosts report the factors they sent;
  # the others send nothing compressed.
  timeout 300 "$NETLAB" run "$LAB" 0 -- "${MPIRUN[@]}" "$CHORUS" train --set data.limit_train=512 \
    --set data.limit_test=256 --set train.epochs=1 --set train.batch_size=64 --set train.threads=1 \
    --set model.hidden=[32] --set compression.method=powersgd --set compression.rank=2 \
    --set compression.scope=inter-host --set output.progress=lines --set "output.dir=$TMP/inter" >"$TMP/inter.out" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -q '"event": "summary"' "$TMP/inter/metrics.jsonl" 2>/dev/null; then
    pass "chorus train with compression.scope = inter-host (powersgd) across the hosts: summary written"
  else
    fail "train with inter-host compression: exit $rc"
    tail -20 "$TMP/inter.out"
  fi

  # The parameter-server job: 3 workers and 1 server (the last rank, on host 1).
  timeout 300 "$NETLAB" run "$LAB" 0 -- "${MPIRUN[@]}" "$CHORUS" train --set ps.servers=1 --set data.limit_train=480 \
    --set data.limit_test=256 --set train.epochs=1 --set train.batch_size=48 --set train.threads=1 \
    --set model.hidden=[32] --set output.progress=lines --set "output.dir=$TMP/ps" >"$TMP/ps.out" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -q '"event": "summary"' "$TMP/ps/metrics.jsonl" 2>/dev/null; then
    pass "the parameter-server job under mpirun across the hosts: 3 workers, 1 server, summary written"
  else
    fail "parameter-server job under mpirun: exit $rc"
    tail -20 "$TMP/ps.out"
  fi
}

# chorus launch --nnodes 2: one launcher per host (node rank = the host), node 0 hosting the
# store on its lab address.
test_launch_nnodes() {
  local out rc t0 t1
  timeout 180 "$NETLAB" exec-all "$LAB" -- sh -c "exec '$CHORUS' launch --nnodes 2 --node-rank \$GROUP_RANK \
    --rdzv-endpoint 10.77.0.1:29611 -n 2 -- '$CHORUS' bench collectives --op allreduce --min-bytes 4K \
    --max-bytes 1M --step-factor 16 --iters 3 --warmup 1" >"$TMP/launch.out" 2>&1
  rc=$?
  rows=$(grep -E '^\[h0\] \[rank 0\] +[0-9]+ ' "$TMP/launch.out" | sed 's/^\[h0\] \[rank 0\]//')
  if [ $rc -eq 0 ] && [ "$(echo "$rows" | wc -l)" -eq 3 ] && ! echo "$rows" | awk '$NF != 0 { bad = 1 } END { exit !bad }'; then
    pass "chorus launch --nnodes 2 -n 2 across the hosts: the benchmark's 4 ranks, every row wrong = 0"
  else
    fail "launch --nnodes: exit $rc"
    cat "$TMP/launch.out"
  fi
  # Rank 3 (on node 1) is killed mid-run: its launcher stops node 1, node 0's ranks fail
  # naming the lost peer, and both launchers exit non-zero.
  t0=$(date +%s)
  timeout 120 "$NETLAB" exec-all "$LAB" -- sh -c "exec '$CHORUS' launch --nnodes 2 --node-rank \$GROUP_RANK \
    --rdzv-endpoint 10.77.0.1:29612 -n 2 -- sh -c 'if [ \$CHORUS_RANK = 3 ]; then (sleep 3; kill -KILL \$\$) & fi; \
    exec $CHORUS bench collectives --op allreduce --iters 1000000 --min-bytes 4K --max-bytes 4K'" >"$TMP/fail.out" 2>&1
  rc=$?
  t1=$(date +%s)
  if [ $rc -ne 0 ] && [ $((t1 - t0)) -lt 60 ] && grep -q "rank 1 was killed by signal 9 (SIGKILL)" "$TMP/fail.out"; then
    pass "rank 3 killed on node 1 ends the two-node job in $((t1 - t0)) s (exit $rc), node 1's launcher naming it"
  else
    fail "rank 3 killed on node 1: exit $rc after $((t1 - t0)) s"
    tail -20 "$TMP/fail.out"
  fi
}

test_mpirun
test_launch_nnodes

if [ $failures -ne 0 ]; then
  echo "hosts_test: $failures FAILED"
  exit 1
fi
echo "hosts_test: all passed"
