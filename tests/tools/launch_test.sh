#!/usr/bin/env bash
# `chorus launch`: output tagging, environment, failure handling, signal forwarding, and real
# multi-process collectives (tests/programs/collective_check) over shm and tcp.
# usage: bash launch_test.sh BUILD_DIR [SOURCE_DIR]
set -u
BUILD=${1:?usage: launch_test.sh BUILD_DIR [SOURCE_DIR]}
CHORUS=$BUILD/chorus
PROBE=$BUILD/tests/launch_probe
CHECK=$BUILD/tests/collective_check
for bin in "$CHORUS" "$PROBE" "$CHECK"; do
  [ -x "$bin" ] || { echo "FAIL: $bin is not built (build the chorus, launch_probe and collective_check targets)"; exit 1; }
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Waits (up to 10 s) until N files match the glob pattern $2 in directory $1.
wait_files() {
  local dir=$1 pattern=$2 n=$3 i
  for i in $(seq 100); do
    [ "$(find "$dir" -name "$pattern" | wc -l)" -ge "$n" ] && return 0
    sleep 0.1
  done
  return 1
}

# True when no process whose pid is in the files DIR/pid.* is alive.
all_dead() {
  local f
  for f in "$1"/pid.*; do
    if kill -0 "$(cat "$f")" 2>/dev/null; then
      echo "  pid $(cat "$f") (${f##*/}) is still alive"
      return 1
    fi
  done
  return 0
}

test_tags_every_line() {
  local out=$TMP/tags.out err=$TMP/tags.err rc
  timeout 30 "$CHORUS" launch -n 3 "$PROBE" print 3 >"$out" 2>"$err"
  rc=$?
  [ $rc -eq 0 ] || { fail "tags: exit status $rc"; cat "$err"; return; }
  local k ok=1
  for k in 0 1 2; do
    [ "$(grep -c "^\[rank $k\] hello from rank $k line [0-2]$" "$out")" -eq 3 ] || { ok=0; echo "  rank $k: hello lines missing"; }
    grep -qx "\[rank $k\] unterminated from rank $k" "$out" || { ok=0; echo "  rank $k: partial last line not flushed"; }
    grep -qx "\[rank $k\] warning from rank $k" "$err" || { ok=0; echo "  rank $k: stderr line not tagged"; }
  done
  [ "$(wc -l <"$out")" -eq 12 ] || { ok=0; echo "  expected 12 stdout lines, got $(wc -l <"$out")"; }
  if grep -v '^\[rank [0-2]\] ' "$out" "$err" | grep -q .; then ok=0; echo "  untagged lines:"; grep -v '^\[rank [0-2]\] ' "$out"; fi
  [ $ok -eq 1 ] && pass "every line is tagged with its rank, partial lines flushed" || fail "tags"
}

test_lines_never_interleave() {
  local out=$TMP/flood.out rc
  timeout 60 "$CHORUS" launch -n 3 "$PROBE" flood 3000 >"$out" 2>"$TMP/flood.err"
  rc=$?
  [ $rc -eq 0 ] || { fail "flood: exit status $rc"; return; }
  local total good
  total=$(wc -l <"$out")
  good=$(grep -cE '^\[rank ([0-2])\] flood rank \1 seq [0-9]+ ([a-c])\2{299} end$' "$out")
  if [ "$total" -eq 9000 ] && [ "$good" -eq 9000 ]; then
    # Each rank's lines arrive in order.
    local k
    for k in 0 1 2; do
      if ! grep "^\[rank $k\]" "$out" | awk '{ if ($7 != NR - 1) { bad = 1 } } END { exit bad }'; then
        fail "flood: rank $k's lines out of order"; return
      fi
    done
    pass "9000 long lines from 3 ranks: none split or mixed, each rank's in order"
  else
    fail "flood: $good of $total lines intact (expected 9000)"
  fi
}

test_environment() {
  local out=$TMP/env.out
  timeout 30 "$CHORUS" launch -n 2 --transport tcp --timeout-ms 1234 "$PROBE" env >"$out" 2>&1 || { fail "env: non-zero exit"; cat "$out"; return; }
  local ok=1 k
  for k in 0 1; do
    for want in "CHORUS_RANK=$k" "CHORUS_WORLD_SIZE=2" "CHORUS_LOCAL_RANK=$k" "CHORUS_LOCAL_WORLD_SIZE=2" \
                "CHORUS_STORE_ADDR=127.0.0.1" "CHORUS_TRANSPORT=tcp" "CHORUS_TIMEOUT_MS=1234" "CHORUS_JOB_SECRET_LEN=32"; do
      grep -qx "\[rank $k\] $want" "$out" || { ok=0; echo "  rank $k lacks $want"; }
    done
    grep -qE "^\[rank $k\] CHORUS_STORE_PORT=[1-9][0-9]*$" "$out" || { ok=0; echo "  rank $k: no store port"; }
  done
  [ "$(grep -o 'CHORUS_JOB_ID=.*' "$out" | sort -u | wc -l)" -eq 1 ] || { ok=0; echo "  ranks disagree on the job id"; }
  grep -q 'CHORUS_JOB_ID=<unset>' "$out" && { ok=0; echo "  no job id"; }
  [ $ok -eq 1 ] && pass "ranks get rank, sizes, store address/port, job id and secret, transport, timeout" || fail "environment"
}

test_failing_rank_stops_the_job() {
  local dir=$TMP/fail err=$TMP/fail.err rc t0 t1
  mkdir -p "$dir"
  t0=$(now_ms)
  timeout 30 "$CHORUS" launch -n 4 "$PROBE" fail 2 3 "$dir" >/dev/null 2>"$err"
  rc=$?
  t1=$(now_ms)
  local ok=1
  [ $rc -eq 3 ] || { ok=0; echo "  exit status $rc, expected the failing rank's 3"; }
  [ $((t1 - t0)) -lt 5000 ] || { ok=0; echo "  took $((t1 - t0)) ms; sleeping ranks kept the job alive"; }
  grep -q "chorus launch: rank 2 exited with status 3; stopped the other 3 ranks" "$err" || { ok=0; echo "  message missing:"; cat "$err"; }
  grep -q "^\[rank 2\] rank 2 failing on purpose" "$err" || { ok=0; echo "  the rank's own message is missing"; }
  all_dead "$dir" || ok=0
  [ $ok -eq 1 ] && pass "rank 2 exits 3: launcher exits 3 in $((t1 - t0)) ms, names the rank, other ranks gone" || fail "failing rank"
}

test_rank_killed_by_signal() {
  local dir=$TMP/sig err=$TMP/sig.err rc
  mkdir -p "$dir"
  timeout 30 "$CHORUS" launch -n 3 "$PROBE" signal 1 9 "$dir" >/dev/null 2>"$err"
  rc=$?
  local ok=1
  [ $rc -eq 137 ] || { ok=0; echo "  exit status $rc, expected 128+9"; }
  grep -q "rank 1 was killed by signal 9 (SIGKILL); stopped the other 2 ranks" "$err" || { ok=0; cat "$err"; }
  all_dead "$dir" || ok=0
  [ $ok -eq 1 ] && pass "a rank killed by SIGKILL: exit 137, message names the signal" || fail "rank killed by signal"
}

test_sigterm_is_forwarded() {
  local dir=$TMP/term rc pid
  mkdir -p "$dir"
  timeout 30 "$CHORUS" launch -n 3 "$PROBE" trap "$dir" >"$TMP/term.out" 2>"$TMP/term.err" &
  pid=$!
  wait_files "$dir" 'ready.*' 3 || { fail "sigterm: ranks never got ready"; kill $pid; wait $pid; return; }
  # $! is timeout(1); signal the launcher itself, its child.
  local launcher
  launcher=$(pgrep -P $pid -x chorus || pgrep -P $pid)
  kill -TERM "$launcher"
  wait $pid
  rc=$?
  local ok=1 k
  [ $rc -eq 143 ] || { ok=0; echo "  exit status $rc, expected 128+15"; }
  for k in 0 1 2; do
    [ "$(cat "$dir/got.$k" 2>/dev/null)" = 15 ] || { ok=0; echo "  rank $k did not get SIGTERM"; }
  done
  grep -q "received SIGTERM; forwarded it to 3 ranks" "$TMP/term.err" || { ok=0; cat "$TMP/term.err"; }
  all_dead "$dir" || ok=0
  [ $ok -eq 1 ] && pass "SIGTERM to the launcher reaches all 3 ranks; exit 143" || fail "sigterm forwarding"
}

test_sigkill_after_grace() {
  local dir=$TMP/grace rc pid t0 t1
  mkdir -p "$dir"
  timeout 30 "$CHORUS" launch -n 2 --grace-ms 300 "$PROBE" trap "$dir" ignore >/dev/null 2>"$TMP/grace.err" &
  pid=$!
  wait_files "$dir" 'ready.*' 2 || { fail "grace: ranks never got ready"; kill $pid; wait $pid; return; }
  t0=$(now_ms)
  kill -TERM "$(pgrep -P $pid)"
  wait $pid
  rc=$?
  t1=$(now_ms)
  local ok=1
  [ $rc -eq 143 ] || { ok=0; echo "  exit status $rc"; }
  [ $((t1 - t0)) -lt 3000 ] || { ok=0; echo "  took $((t1 - t0)) ms"; }
  [ "$(grep -c 'did not exit within 300 ms of SIGTERM; sending SIGKILL' "$TMP/grace.err")" -eq 2 ] || { ok=0; cat "$TMP/grace.err"; }
  all_dead "$dir" || ok=0
  [ $ok -eq 1 ] && pass "ranks that ignore SIGTERM get SIGKILL after --grace-ms" || fail "sigkill after grace"
}

test_sigint_twice_kills_at_once() {
  # A shell starts background jobs with SIGINT ignored (and the launcher keeps that), so start
  # the launcher from python with SIGINT at its default.
  local dir=$TMP/int out
  mkdir -p "$dir"
  out=$(python3 - "$CHORUS" "$PROBE" "$dir" <<'PY' 2>&1
import os, signal, subprocess, sys, time
chorus, probe, d = sys.argv[1:4]
def wait_files(prefix, n):
    for _ in range(100):
        if len([f for f in os.listdir(d) if f.startswith(prefix)]) >= n:
            return True
        time.sleep(0.1)
    return False
p = subprocess.Popen([chorus, "launch", "-n", "2", "--grace-ms", "20000", probe, "trap", d, "ignore"],
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
try:
    if not wait_files("ready.", 2):
        sys.exit("ranks never got ready")
    p.send_signal(signal.SIGINT)
    if not wait_files("got.", 2):
        sys.exit("the ranks did not get the forwarded SIGINT")
    got = sorted(open(os.path.join(d, f)).read() for f in os.listdir(d) if f.startswith("got."))
    if got != ["2", "2"]:
        sys.exit("ranks got signals %s, expected SIGINT (2)" % got)
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=5)
    err = p.stderr.read()
    if rc != 130:
        sys.exit("exit status %d, expected 130; stderr: %s" % (rc, err))
    if "received SIGINT; forwarded it to 2 ranks" not in err:
        sys.exit("no message: " + err)
    print("second SIGINT ended the job in %.0f ms" % ((time.time() - t0) * 1000))
except subprocess.TimeoutExpired:
    p.kill()
    sys.exit("a second SIGINT did not end the job within 5 s")
PY
)
  local rc=$?
  if [ $rc -eq 0 ] && all_dead "$dir"; then
    pass "SIGINT is forwarded; a second SIGINT kills the ranks at once ($out)"
  else
    fail "sigint: $out"
  fi
}

test_store_on_every_interface() {
  local out=$TMP/anyif.out rc
  timeout 60 "$CHORUS" launch -n 2 --store-addr 0.0.0.0 "$PROBE" env >"$out" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && [ "$(grep -c 'CHORUS_STORE_ADDR=127.0.0.1$' "$out")" -eq 2 ]; then
    pass "--store-addr 0.0.0.0: the store binds every interface, ranks dial 127.0.0.1"
  else
    fail "--store-addr 0.0.0.0 (exit $rc)"; cat "$out"
  fi
}

test_usage_errors() {
  local out rc ok=1
  out=$("$CHORUS" launch -n 2 --nprocs 3 "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "unknown flag --nprocs (did you mean --nproc?)" && echo "$out" | grep -q -- "--grace-ms" \
    || { ok=0; echo "  unknown flag: rc $rc: $out"; }
  out=$("$CHORUS" launch -n 2 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "no program given" || { ok=0; echo "  no program: rc $rc: $out"; }
  out=$("$CHORUS" launch "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "give the number of ranks" || { ok=0; echo "  no -n: rc $rc: $out"; }
  out=$("$CHORUS" launch -n 0 "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q -- "--nproc must be between 1" || { ok=0; echo "  -n 0: rc $rc: $out"; }
  out=$("$CHORUS" launch -n 2 no-such-program-xyz 2>&1); rc=$?
  [ $rc -eq 1 ] && echo "$out" | grep -q "cannot find program 'no-such-program-xyz' on PATH" || { ok=0; echo "  missing program: rc $rc: $out"; }
  printf '#!/no/such/interpreter\n' >"$TMP/bad.sh"; chmod +x "$TMP/bad.sh"
  out=$("$CHORUS" launch -n 2 "$TMP/bad.sh" 2>&1); rc=$?
  [ $rc -eq 1 ] && echo "$out" | grep -q "cannot start rank 0" || { ok=0; echo "  exec failure: rc $rc: $out"; }
  out=$("$CHORUS" launch -n 2 --transport mpi "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "mpirun" || { ok=0; echo "  --transport mpi: rc $rc: $out"; }
  out=$("$CHORUS" launch -n 2 -- "$PROBE" exit 0 2>&1); rc=$?
  [ $rc -eq 0 ] || { ok=0; echo "  -- before the program: rc $rc: $out"; }
  [ $ok -eq 1 ] && pass "usage errors name the problem (exit 2); a program that cannot run exits 1" || fail "usage errors"
}

test_collectives_across_processes() {
  local transport n out rc
  for transport in shm tcp; do
    for n in 2 3 4; do
      out=$TMP/coll.$transport.$n
      timeout 120 "$CHORUS" launch -n $n --transport $transport --timeout-ms 20000 "$CHECK" >"$out" 2>&1
      rc=$?
      if [ $rc -eq 0 ] && [ "$(grep -c "collective_check: rank [0-9] of $n ok (transport $transport)" "$out")" -eq $n ]; then
        pass "collective_check: $n processes over $transport"
      else
        fail "collective_check: $n processes over $transport (exit $rc)"
        head -40 "$out"
      fi
    done
  done
}

# --nnodes: one launcher per node. Here both "nodes" are this machine (loopback), which
# exercises the rank numbering, the shared store of node 0 and the shared secret; the
# cross-host run is tests/tools/hosts_test.sh.
test_two_nodes_on_loopback() {
  local port=$((20000 + $$ % 20000)) ok=1 out rc
  export CHORUS_JOB_SECRET=0123456789abcdef0123456789abcdef
  for k in 0 1; do
    timeout 60 "$CHORUS" launch --nnodes 2 --node-rank $k --rdzv-endpoint 127.0.0.1:$port -n 2 --transport tcp \
      --timeout-ms 20000 "$PROBE" env >"$TMP/node$k.out" 2>&1 &
  done
  wait %1 || { ok=0; echo "  node 0 failed"; }
  wait %2 || { ok=0; echo "  node 1 failed"; }
  for k in 0 1; do
    for j in 0 1; do
      for want in "CHORUS_RANK=$((2 * k + j))" "CHORUS_WORLD_SIZE=4" "CHORUS_LOCAL_RANK=$j" "CHORUS_LOCAL_WORLD_SIZE=2" \
                  "CHORUS_NODE_RANK=$k" "CHORUS_NNODES=2" "CHORUS_STORE_PORT=$port" "CHORUS_STORE_ADDR=127.0.0.1"; do
        grep -qx "\[rank $j\] $want" "$TMP/node$k.out" || { ok=0; echo "  node $k rank $j lacks $want"; }
      done
    done
  done
  [ "$(cat "$TMP"/node?.out | grep -o 'CHORUS_JOB_ID=.*' | sort -u | wc -l)" -eq 1 ] || { ok=0; echo "  nodes disagree on the job id"; }
  [ $ok -eq 1 ] && pass "--nnodes 2 on loopback: ranks 0 .. 3, local ranks, node ranks, one store and one job id" ||
    { fail "two nodes (environment)"; cat "$TMP"/node?.out | head -40; }
  # Real collectives across the two launchers.
  port=$((port + 1))
  for k in 0 1; do
    timeout 120 "$CHORUS" launch --nnodes 2 --node-rank $k --rdzv-endpoint 127.0.0.1:$port -n 2 --transport tcp \
      --timeout-ms 20000 "$CHECK" >"$TMP/cnode$k.out" 2>&1 &
  done
  ok=1
  wait %1 || ok=0
  wait %2 || ok=0
  [ $ok -eq 1 ] && [ "$(cat "$TMP"/cnode?.out | grep -c "collective_check: rank [0-3] of 4 ok (transport tcp)")" -eq 4 ] &&
    pass "collective_check: 2 launchers x 2 ranks over tcp" || { fail "collective_check across two launchers"; head -30 "$TMP"/cnode?.out; }
  # Usage errors.
  ok=1
  out=$("$CHORUS" launch --nnodes 2 -n 2 "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "needs --rdzv-endpoint HOST:PORT" || { ok=0; echo "  no endpoint: rc $rc: $out"; }
  out=$("$CHORUS" launch --nnodes 2 --node-rank 2 --rdzv-endpoint 127.0.0.1:1 -n 2 "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "node-rank 2 is not one of the --nnodes 2 nodes" || { ok=0; echo "  node rank: rc $rc: $out"; }
  out=$("$CHORUS" launch --nnodes 2 --rdzv-endpoint 127.0.0.1:99999 -n 2 "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "is not HOST:PORT" || { ok=0; echo "  bad port: rc $rc: $out"; }
  out=$(env -u CHORUS_JOB_SECRET "$CHORUS" launch --nnodes 2 --rdzv-endpoint 127.0.0.1:$port -n 2 "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "needs the same job secret on every node" || { ok=0; echo "  no secret: rc $rc: $out"; }
  out=$("$CHORUS" launch --rdzv-endpoint 127.0.0.1:$port -n 2 "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "is for multi-node jobs" || { ok=0; echo "  endpoint alone: rc $rc: $out"; }
  [ $ok -eq 1 ] && pass "--nnodes usage errors name the problem (exit 2)" || fail "--nnodes usage errors"
  unset CHORUS_JOB_SECRET
}

# Flags from the environment (Kubernetes): torchrun's PET_* variables, which Kubeflow's trainer
# sets in each pod, and an Indexed Job's JOB_COMPLETION_INDEX; the command line wins over both.
test_flags_from_environment() {
  local port=$((20000 + ($$ + 7) % 20000)) ok=1 out rc k
  export CHORUS_JOB_SECRET=0123456789abcdef0123456789abcdef
  for k in 0 1; do
    env PET_NNODES=2 PET_NODE_RANK=$k PET_MASTER_ADDR=127.0.0.1 PET_MASTER_PORT=$port PET_NPROC_PER_NODE=2 \
      timeout 60 "$CHORUS" launch --transport tcp --timeout-ms 20000 -- "$PROBE" env >"$TMP/pet$k.out" 2>&1 &
  done
  wait %1 || { ok=0; echo "  node 0 failed"; }
  wait %2 || { ok=0; echo "  node 1 failed"; }
  for k in 0 1; do
    grep -q "from the environment: --nnodes 2 (PET_NNODES), --nproc 2 (PET_NPROC_PER_NODE), --node-rank $k \
(PET_NODE_RANK), --rdzv-endpoint 127.0.0.1:$port (PET_MASTER_ADDR, PET_MASTER_PORT)" "$TMP/pet$k.out" ||
      { ok=0; echo "  node $k did not say which flags came from where"; }
    grep -qx "\[rank 1\] CHORUS_RANK=$((2 * k + 1))" "$TMP/pet$k.out" || { ok=0; echo "  node $k rank 1 is not rank $((2 * k + 1))"; }
    grep -qx "\[rank 0\] CHORUS_WORLD_SIZE=4" "$TMP/pet$k.out" || { ok=0; echo "  node $k: world is not 4"; }
  done
  [ $ok -eq 1 ] && pass "PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR/PORT, PET_NPROC_PER_NODE: 2 nodes x 2 ranks" ||
    { fail "flags from PET_*"; head -20 "$TMP"/pet?.out; }
  # JOB_COMPLETION_INDEX gives the node rank; explicit flags win over PET_*.
  ok=1
  port=$((port + 1))
  for k in 0 1; do
    env JOB_COMPLETION_INDEX=$k PET_NNODES=5 PET_NPROC_PER_NODE=3 timeout 60 "$CHORUS" launch --nnodes 2 \
      --rdzv-endpoint 127.0.0.1:$port -n 1 --transport tcp --timeout-ms 20000 -- "$PROBE" env >"$TMP/jci$k.out" 2>&1 &
  done
  wait %1 || { ok=0; echo "  node 0 failed"; }
  wait %2 || { ok=0; echo "  node 1 failed"; }
  for k in 0 1; do
    grep -q "from the environment: --node-rank $k (JOB_COMPLETION_INDEX)$" "$TMP/jci$k.out" || { ok=0; echo "  node $k: $(head -1 "$TMP/jci$k.out")"; }
    grep -qx "\[rank 0\] CHORUS_RANK=$k" "$TMP/jci$k.out" && grep -qx "\[rank 0\] CHORUS_WORLD_SIZE=2" "$TMP/jci$k.out" ||
      { ok=0; echo "  node $k: not rank $k of 2"; }
  done
  [ $ok -eq 1 ] && pass "JOB_COMPLETION_INDEX is the node rank; --nnodes and -n on the command line win over PET_*" ||
    { fail "JOB_COMPLETION_INDEX"; head -20 "$TMP"/jci?.out; }
  # Bad values are usage errors naming the variable; one node ignores the rank and endpoint.
  ok=1
  out=$(PET_NNODES=1:4 "$CHORUS" launch -n 1 "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "PET_NNODES='1:4' is a torchrun range" || { ok=0; echo "  range: rc $rc: $out"; }
  out=$(PET_NNODES=two "$CHORUS" launch -n 1 "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "PET_NNODES='two' is not a node count" || { ok=0; echo "  nnodes: rc $rc: $out"; }
  out=$(PET_NPROC_PER_NODE=gpu "$CHORUS" launch "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "PET_NPROC_PER_NODE=gpu" || { ok=0; echo "  gpu: rc $rc: $out"; }
  out=$(JOB_COMPLETION_INDEX=3 PET_MASTER_ADDR=127.0.0.1 "$CHORUS" launch -n 1 "$PROBE" env 2>&1); rc=$?
  [ $rc -eq 0 ] && echo "$out" | grep -qx "\[rank 0\] CHORUS_WORLD_SIZE=1" || { ok=0; echo "  one node: rc $rc: $out"; }
  [ $ok -eq 1 ] && pass "PET_* usage errors name the variable (exit 2); a one-node launch ignores the node index" ||
    fail "PET_* usage errors"
  unset CHORUS_JOB_SECRET
}

test_tags_every_line
test_lines_never_interleave
test_environment
test_failing_rank_stops_the_job
test_rank_killed_by_signal
test_sigterm_is_forwarded
test_sigkill_after_grace
test_sigint_twice_kills_at_once
test_store_on_every_interface
test_usage_errors
test_collectives_across_processes
test_two_nodes_on_loopback
test_flags_from_environment

if [ $failures -ne 0 ]; then
  echo "launch_test: $failures FAILED"
  exit 1
fi
echo "launch_test: all passed"
