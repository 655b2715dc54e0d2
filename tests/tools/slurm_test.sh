#!/usr/bin/env bash
# Slurm, for real: a 2-host netlab lab runs a small Slurm cluster (tools/netlab/slurm.sh:
# munged and slurmctld on host 0, a slurmd on each host, 2 CPUs per node), and from inside
# host 0 chorus runs under srun with chorus's Slurm bootstrap (SLURM_PROCID, ...):
#   - srun -N 2 -n 4 chorus bench collectives: ranks 0, 1 on host 0 and 2, 3 on host 1, every
#     row exact, rank 0's store on 20000 + (job id mod 1000) * 10 + step id;
#   - srun -N 2 -n 4 chorus train: 4 workers over the two hosts, summary written;
#   - the parameter-server job under srun: 3 workers and 1 server;
#   - sbatch --wait examples/slurm/train.sbatch (the script docs/cluster.md shows, checked to be
#     the same): its srun trains with 4 workers and a secret the script made.
# Then `slurm.sh down` must leave no daemon behind, and the machine's /etc/slurm and
# /etc/munge must be as they were. Skipped (exit 77) without root or network namespaces, or
# without slurm-wlm and munge (bash scripts/bootstrap.sh installs them). Slurm and the lab are
# removed on every way out.
# usage: bash slurm_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=${1:?usage: slurm_test.sh BUILD_DIR SOURCE_DIR}
SRC=$(cd "${2:-$(dirname "$0")/../..}" && pwd)
NETLAB=$SRC/tools/netlab/netlab.sh
SLURM=$SRC/tools/netlab/slurm.sh
SBATCH_SCRIPT=$SRC/examples/slurm/train.sbatch
CHORUS=$(realpath -m "$BUILD/chorus")
LAB=slurm$$

"$NETLAB" usable || exit 77
for tool in munged mungekey munge slurmctld slurmd srun sbatch sinfo scontrol; do
  command -v $tool >/dev/null || { echo "skipped: $tool is not installed (bash scripts/bootstrap.sh installs slurm-wlm and munge)"; exit 77; }
done
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built (build the chorus target)"; exit 1; }

export CHORUS_TIMEOUT_MS=${CHORUS_TIMEOUT_MS:-20000}
TMP=$(mktemp -d)
SLURM_DIR=/run/netlab/$LAB/slurm
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# What the machine itself has of Slurm and munge, to compare at the end.
etc_state() { find /etc/slurm /etc/munge -printf '%p %s %m %T@\n' 2>/dev/null | sort; }
etc_state >"$TMP/etc.before"

# The daemons' logs, for a failure report (slurm.sh down removes them).
show_logs() {
  local f
  for f in "$SLURM_DIR"/*.log; do
    [ -f "$f" ] || continue
    echo "---- ${f##*/} (last 20 lines) ----"
    tail -n 20 "$f"
  done
}
cleanup() {
  [ $failures -eq 0 ] || show_logs
  "$SLURM" down "$LAB" >/dev/null 2>&1
  "$NETLAB" down "$LAB" >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t_start=$SECONDS
"$NETLAB" up 2 --rate 1gbit --name "$LAB" >/dev/null || { echo "FAIL: netlab up"; exit 1; }
if ! "$SLURM" up "$LAB" --timeout 30 >"$TMP/up.out" 2>&1; then
  failures=1
  echo "FAIL: slurm.sh up $LAB"
  cat "$TMP/up.out"
  exit 1
fi
pass "slurm.sh up: 2 nodes idle in $((SECONDS - t_start)) s"

# Runs a command inside host 0 (the login node) with SLURM_CONF set, bounded in time. It runs
# in the background and is waited for, so that SIGINT or SIGTERM reach the traps at once.
on_h0() {
  local limit=$1
  shift
  timeout "$limit" "$SLURM" run "$LAB" -- "$@" &
  wait $!
}
export CHORUS_JOB_SECRET
CHORUS_JOB_SECRET=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
TRAIN_ARGS=(--set data.limit_train=512 --set data.limit_test=256 --set train.epochs=1 --set train.batch_size=64
  --set train.threads=1 --set model.hidden=[32] --set output.progress=lines)

# (a) The all-reduce benchmark: each rank notes where it runs, then becomes chorus.
test_bench() {
  local rc rows port want_port job step
  mkdir -p "$TMP/where"
  CHORUS_LOG_LEVEL=info on_h0 120 srun -N 2 -n 4 --kill-on-bad-exit=1 sh -c \
    'echo "$(hostname) $SLURM_LOCALID $SLURM_JOB_ID $SLURM_STEP_ID" >"$0/$SLURM_PROCID"; exec "$@"' \
    "$TMP/where" "$CHORUS" bench collectives --op allreduce --min-bytes 4K --max-bytes 1M --step-factor 16 \
    --iters 3 --warmup 1 >"$TMP/bench.out" 2>&1
  rc=$?
  local where want
  where=$(for r in 0 1 2 3; do echo "$r $(cut -d' ' -f1,2 "$TMP/where/$r" 2>/dev/null)"; done)
  want=$(printf '%s\n' "0 $LAB-h0 0" "1 $LAB-h0 1" "2 $LAB-h1 0" "3 $LAB-h1 1")
  [ "$where" = "$want" ] && pass "srun -N 2 -n 4: ranks 0, 1 on $LAB-h0 and 2, 3 on $LAB-h1 (hostname, SLURM_LOCALID)" ||
    fail "placement under srun: got '$(tr '\n' ' ' <<<"$where")', want '$(tr '\n' ' ' <<<"$want")'"

  rows=$(grep -E '^ *[0-9]+ ' "$TMP/bench.out")
  if [ $rc -eq 0 ] && [ "$(echo "$rows" | wc -l)" -eq 3 ] && ! echo "$rows" | awk '$NF != 0 { bad = 1 } END { exit !bad }' &&
    grep -q "4 ranks," "$TMP/bench.out"; then
    pass "chorus bench collectives under srun on 2 hosts x 2 ranks ($(grep -o 'transport [a-z]*' "$TMP/bench.out" | head -1)): 4K, 64K, 1M, every row wrong = 0"
  else
    fail "bench under srun: exit $rc"
    cat "$TMP/bench.out"
  fi
  # Rank 0 hosts the store on the first node, on the port the job and step ids give.
  read -r _ _ job step <"$TMP/where/0"
  want_port=$((20000 + (job % 1000) * 10 + step % 10))
  port=$(sed -n 's/.*store server listening on \(.*\)$/\1/p' "$TMP/bench.out" | head -1)
  [ "$port" = "$LAB-h0:$want_port" ] && pass "the store of job $job step $step listened on $port (20000 + ($job mod 1000) * 10 + $step)" ||
    fail "store address: got '$port', want '$LAB-h0:$want_port'"
  ! grep -q "CHORUS_JOB_SECRET is not set" "$TMP/bench.out" || fail "a rank did not see CHORUS_JOB_SECRET through srun"
}

# (b) A short training run: 4 workers over the two hosts.
test_train() {
  local rc
  on_h0 180 srun -N 2 -n 4 --kill-on-bad-exit=1 "$CHORUS" train "${TRAIN_ARGS[@]}" --set "output.dir=$TMP/train" \
    >"$TMP/train.out" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -q '"event": "summary"' "$TMP/train/metrics.jsonl" 2>/dev/null &&
    grep -q '"event": "start", "world": 4,' "$TMP/train/metrics.jsonl"; then
    pass "srun -N 2 -n 4 chorus train: 4 workers ($(grep -o '"transport": "[a-z]*"' "$TMP/train/metrics.jsonl" | head -1)), summary written"
  else
    fail "train under srun: exit $rc"
    tail -20 "$TMP/train.out"
    head -c 600 "$TMP/train/metrics.jsonl" 2>/dev/null
  fi
}

# (c) The parameter-server job: 3 workers and 1 server (the last rank, on host 1).
test_ps() {
  local rc
  on_h0 180 srun -N 2 -n 4 --kill-on-bad-exit=1 "$CHORUS" train --set ps.servers=1 --set data.limit_train=480 \
    --set data.limit_test=256 --set train.epochs=1 --set train.batch_size=48 --set train.threads=1 \
    --set model.hidden=[32] --set output.progress=lines --set "output.dir=$TMP/ps" >"$TMP/ps.out" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -q '"event": "summary"' "$TMP/ps/metrics.jsonl" 2>/dev/null &&
    grep -q '"event": "start", "world": 3, "servers": 1,' "$TMP/ps/metrics.jsonl" && [ -s "$TMP/ps/ps/server0.json" ]; then
    pass "the parameter-server job under srun -N 2 -n 4: 3 workers, 1 server, summary written"
  else
    fail "parameter-server job under srun: exit $rc"
    tail -20 "$TMP/ps.out"
    head -c 600 "$TMP/ps/metrics.jsonl" 2>/dev/null
  fi
}

# (d) The documented batch script, waited on; it makes its own secret (none is passed).
test_sbatch() {
  local rc out
  # Submitted from $TMP: the job runs there.
  cd "$TMP" || return
  CHORUS=$CHORUS on_h0 180 env -u CHORUS_JOB_SECRET sbatch --wait --output="$TMP/sbatch-%j.out" \
    "$SBATCH_SCRIPT" "${TRAIN_ARGS[@]}" --set "output.dir=$TMP/sbatch" >"$TMP/sbatch.submit" 2>&1
  rc=$?
  cd - >/dev/null || return
  out=$(ls "$TMP"/sbatch-*.out 2>/dev/null | head -1)
  if [ $rc -eq 0 ] && [ -n "$out" ] && grep -q "^job [0-9]*: 4 ranks on $LAB-h\[0-1\]$" "$out" &&
    grep -q "trained [0-9]* steps on 4 worker(s)" "$out" && ! grep -q "CHORUS_JOB_SECRET is not set" "$out" &&
    grep -q '"event": "start", "world": 4,' "$TMP/sbatch/metrics.jsonl" 2>/dev/null &&
    grep -q '"event": "summary"' "$TMP/sbatch/metrics.jsonl"; then
    pass "sbatch --wait examples/slurm/train.sbatch: 4 workers on $LAB-h[0-1], its own secret, summary written"
  else
    fail "sbatch --wait $SBATCH_SCRIPT: exit $rc"
    cat "$TMP/sbatch.submit"
    [ -z "$out" ] || tail -20 "$out"
  fi
}

# slurm.sh down stops every daemon it started (only the hosts' keepers remain) and the
# machine's own Slurm and munge files are untouched.
test_down() {
  local left=() pid k
  "$SLURM" down "$LAB" || fail "slurm.sh down exited $?"
  for k in 0 1; do
    for pid in $(ip netns pids "$LAB-h$k" 2>/dev/null); do
      [ "$pid" = "$(cat "/run/netlab/$LAB/h$k.pid")" ] || left+=("$pid:$(cat "/proc/$pid/comm" 2>/dev/null)")
    done
  done
  for pid in $(pgrep -f "$SLURM_DIR" || true); do left+=("$pid:$(cat "/proc/$pid/comm" 2>/dev/null)"); done
  [ ${#left[@]} -eq 0 ] && [ ! -e "$SLURM_DIR" ] && pass "slurm.sh down: no daemon left, $SLURM_DIR removed" ||
    fail "after slurm.sh down: processes ${left[*]:-none}; $SLURM_DIR $([ -e "$SLURM_DIR" ] && echo exists || echo removed)"
  etc_state >"$TMP/etc.after"
  cmp -s "$TMP/etc.before" "$TMP/etc.after" && pass "/etc/slurm and /etc/munge unchanged" ||
    { fail "/etc/slurm or /etc/munge changed"; diff "$TMP/etc.before" "$TMP/etc.after"; }
}

# docs/cluster.md shows the batch script this test runs; the copy must be the file.
test_doc_copy() {
  awk '/^<!-- begin examples\/slurm\/train.sbatch -->$/ { on = 1; next } /^<!-- end examples\/slurm\/train.sbatch -->$/ { on = 0 }
       on && !/^```/' "$SRC/docs/cluster.md" >"$TMP/doc.sbatch"
  cmp -s "$TMP/doc.sbatch" "$SBATCH_SCRIPT" && pass "docs/cluster.md shows examples/slurm/train.sbatch as it is" ||
    { fail "the batch script in docs/cluster.md differs from $SBATCH_SCRIPT"; diff "$TMP/doc.sbatch" "$SBATCH_SCRIPT" | head -20; }
}

test_doc_copy
test_bench
test_train
test_ps
test_sbatch
[ $failures -eq 0 ] || show_logs
test_down

if [ $failures -ne 0 ]; then
  echo "slurm_test: $failures FAILED ($((SECONDS - t_start)) s)"
  exit 1
fi
echo "slurm_test: all passed ($((SECONDS - t_start)) s)"
