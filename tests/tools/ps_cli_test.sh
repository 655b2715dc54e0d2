#!/usr/bin/env bash
# `chorus train` with parameter servers from the command line: --nproc N with ps.servers = S
# starts N workers and S servers that write their reports; `chorus launch --servers` does the
# same; in asp a worker killed mid-run does not stop the job (the servers report it, the other
# workers finish); with --resume the servers reload their checkpointed shards; with ps.restarts a
# server killed mid-run is started again, reloads its shard, and the workers reconnect to it; a
# worker killed mid-run is started again and rejoins where the servers counted it (bsp, asp,
# ssp); with backup workers both servers apply the same pushes;
# under asp a worker that diverges still ends the whole job (exit status 3).
# usage: bash ps_cli_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=${1:?usage: ps_cli_test.sh BUILD_DIR SOURCE_DIR}
CHORUS=$BUILD/chorus
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built"; exit 1; }
PY=/usr/bin/python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

SETS=(--set data.limit_train=1280 --set data.limit_test=500 --set train.epochs=1 --set train.batch_size=64
      --set output.progress=none --set model.hidden=[32] --set optim.lr=0.01)

# rank_pid DIR RANK: the pid of the process of the job writing to DIR whose CHORUS_RANK is RANK
# (empty while there is none).
rank_pid() {
  local p
  for p in $(pgrep -f "output.dir=$1"); do
    if { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null | grep -qx "CHORUS_RANK=$2"; then echo "$p"; return; fi
  done
}

# json FILE EXPR: evaluates a Python expression over the parsed JSON object `j` (or, for JSONL,
# the list of objects `ls`) and prints it.
json() { $PY -c "import json,sys; t=open(sys.argv[1]).read(); ls=[json.loads(l) for l in t.splitlines() if l.strip()]; j=ls[0]; print($2)" "$1"; }

# 1. --nproc 2 with one server: the roles, the reports, the final line.
out=$("$CHORUS" train --nproc 2 "${SETS[@]}" --set ps.servers=1 --set ps.mode=bsp --set output.dir="$TMP/bsp" 2>&1)
rc=$?
if [ $rc -ne 0 ]; then
  fail "bsp run exited $rc: $out"
else
  grep -q "with 1 parameter server(s) (bsp)" <<<"$out" && pass "bsp run names its servers" || fail "no server line: $out"
  # 1280 samples over 2 workers, local batch 32: 20 steps, so 20 bsp rounds.
  [ "$(json "$TMP/bsp/ps/server0.json" 'j["version"]')" = "20" ] && pass "the server applied 20 rounds" \
    || fail "server0.json: $(cat "$TMP/bsp/ps/server0.json")"
  [ "$(json "$TMP/bsp/ps/worker1.jsonl" '[e for e in ls if e["event"]=="summary"][0]["steps"]')" = "20" ] \
    && pass "worker 1 wrote its summary" || fail "worker1.jsonl: $(tail -n 2 "$TMP/bsp/ps/worker1.jsonl")"
  acc=$(json "$TMP/bsp/metrics.jsonl" '[e for e in ls if e["event"]=="eval"][-1]["test_acc"]')
  $PY -c "import sys; sys.exit(0 if float('$acc') > 0.3 else 1)" && pass "bsp trains (accuracy $acc)" || fail "accuracy $acc"
fi

# 2. The same job through the launcher.
out=$("$CHORUS" launch -n 2 --servers 1 -- "$CHORUS" train "${SETS[@]}" --set ps.mode=ssp --set output.dir="$TMP/launch" 2>&1)
rc=$?
[ $rc -eq 0 ] && [ -f "$TMP/launch/ps/server0.json" ] && pass "chorus launch --servers 1 runs a ps job" \
  || fail "launch --servers exited $rc: $out"
out=$("$CHORUS" launch -n 2 --keep-going -- true 2>&1)
[ $? -ne 0 ] && grep -q -- "--servers" <<<"$out" && pass "--keep-going without --servers is refused" || fail "keep-going: $out"
# --restarts: the server rank (1) fails twice and is started again each time, with the rejoin
# variables; the worker (0) is never restarted.
out=$("$CHORUS" launch -n 1 --servers 1 --restarts 2 -- sh -c \
  'echo "$CHORUS_RANK $CHORUS_REJOIN $CHORUS_RESTART_COUNT"; [ "$CHORUS_RANK" = 0 ] || [ "$CHORUS_RESTART_COUNT" = 2 ] || exit 4' 2>&1)
rc=$?
[ $rc -eq 0 ] && grep -q "rank 1 exited with status 4; restarting it (restart 2 of 2)" <<<"$out" \
  && grep -q "^\[rank 1\] 1 join 2$" <<<"$out" && grep -q "^\[rank 0\] 0 accept 0$" <<<"$out" \
  && pass "launch --restarts starts a failed server again with CHORUS_REJOIN=join" || fail "launch --restarts: rc $rc: $out"
# The worker (rank 0) sleeps, so it is certainly still running when the server gives up: the
# launcher must stop it (a worker that exits at once races the server's second failure).
out=$("$CHORUS" launch -n 1 --servers 1 --restarts 1 -- sh -c '[ "$CHORUS_RANK" = 0 ] && exec sleep 60; exit 4' 2>&1)
rc=$?
[ $rc -eq 4 ] && [ "$(grep -c "restarting it" <<<"$out")" = 1 ] && grep -q "rank 1 exited with status 4; stopped the other 1 rank" <<<"$out" \
  && pass "launch --restarts gives up after R restarts" || fail "launch --restarts limit: rc $rc: $out"

# Exit status 3 (a diverged rank, kFatalExitStatus) is never restarted: the job ends.
out=$("$CHORUS" launch -n 1 --servers 1 --restarts 2 -- sh -c '[ "$CHORUS_RANK" = 0 ] && exec sleep 60; exit 3' 2>&1)
rc=$?
[ $rc -eq 3 ] && ! grep -q "restarting it" <<<"$out" && pass "launch --restarts does not restart a rank that exits with status 3" \
  || fail "launch --restarts status 3: rc $rc: $out"

# 3. asp: kill worker 1 mid-run; the servers go on, worker 0 finishes, the exit status tells.
"$CHORUS" train --nproc 3 "${SETS[@]}" --set train.batch_size=60 --set train.epochs=4 --set ps.servers=1 \
  --set ps.mode=asp --set train.straggler_workers=[1] --set train.straggler_delay_ms=30 \
  --set output.dir="$TMP/fault" > "$TMP/fault.out" 2>&1 &
job=$!
victim=""
for _ in $(seq 1 100); do
  victim=$(rank_pid "$TMP/fault" 1)
  [ -n "$victim" ] && [ -s "$TMP/fault/ps/worker1.jsonl" ] && break
  sleep 0.1
done
if [ -z "$victim" ]; then
  fail "worker 1 of the asp job never appeared: $(cat "$TMP/fault.out")"
  kill "$job" 2>/dev/null
else
  kill -9 "$victim"
  wait "$job"
  rc=$?
  [ $rc -ne 0 ] && grep -q "rank 1 .*the job goes on without it" "$TMP/fault.out" \
    && pass "the launcher reports the dead worker and lets the job go on (exit $rc)" || fail "fault run: rc $rc: $(cat "$TMP/fault.out")"
  [ "$(json "$TMP/fault/ps/server0.json" 'j["w1_failed"]')" = "True" ] && pass "the server reports worker 1 as failed" \
    || fail "server0.json: $(cat "$TMP/fault/ps/server0.json" 2>&1)"
  [ "$(json "$TMP/fault/ps/worker2.jsonl" '[e for e in ls if e["event"]=="summary"][0]["steps"]')" = "88" ] \
    && pass "worker 2 finished all its steps" || fail "worker2.jsonl: $(tail -n 1 "$TMP/fault/ps/worker2.jsonl" 2>&1)"
fi

# 4. Checkpoints: a second run with --resume reloads the servers' shards.
"$CHORUS" train --nproc 2 "${SETS[@]}" --set ps.servers=2 --set ps.mode=asp --set ps.checkpoint_every=5 \
  --set output.dir="$TMP/ckpt" > "$TMP/ckpt1.out" 2>&1 || fail "checkpointed run: $(cat "$TMP/ckpt1.out")"
v1=$(json "$TMP/ckpt/ps/server1.json" 'j["version"]')
[ -f "$TMP/ckpt/ps/server0.ckpt" ] && [ -f "$TMP/ckpt/ps/server1.ckpt" ] && pass "each server wrote its shard" \
  || fail "no shard checkpoints: $(ls "$TMP/ckpt/ps")"
"$CHORUS" train --nproc 2 "${SETS[@]}" --set ps.servers=2 --set ps.mode=asp --set ps.checkpoint_every=5 \
  --set output.dir="$TMP/ckpt" --resume > "$TMP/ckpt2.out" 2>&1 || fail "resumed run: $(cat "$TMP/ckpt2.out")"
[ "$(json "$TMP/ckpt/ps/server1.json" 'j["resumed"]')" = "True" ] \
  && [ "$(json "$TMP/ckpt/ps/server1.json" 'j["version"]')" = "$((v1 * 2))" ] \
  && pass "the servers resumed from their shards (version $v1 -> $((v1 * 2)))" \
  || fail "resume: $(cat "$TMP/ckpt/ps/server1.json")"

# 5. A server dies in a running job (ps.restarts = 1): the launcher starts it again, it reloads
# its checkpointed shard, the workers reconnect and every step is done.
for mode in asp bsp; do
  "$CHORUS" train --nproc 2 "${SETS[@]}" --set train.epochs=4 --set ps.servers=2 --set ps.mode=$mode \
    --set ps.restarts=1 --set ps.checkpoint_every=10 --set train.straggler_workers=[0,1] --set train.straggler_delay_ms=20 \
    --set output.dir="$TMP/restart-$mode" > "$TMP/restart-$mode.out" 2>&1 &
  job=$!
  victim=""
  for _ in $(seq 1 150); do
    victim=$(rank_pid "$TMP/restart-$mode" 3)
    # Kill once the server has checkpointed and the workers are well into the run.
    [ -n "$victim" ] && [ -f "$TMP/restart-$mode/ps/server1.ckpt" ] && [ "$(wc -l < "$TMP/restart-$mode/ps/worker1.jsonl" 2>/dev/null || echo 0)" -ge 3 ] && break
    sleep 0.1
  done
  if [ -z "$victim" ]; then
    fail "$mode: server 1 of the restart job never appeared: $(cat "$TMP/restart-$mode.out")"
    kill "$job" 2>/dev/null
    continue
  fi
  kill -9 "$victim"
  wait "$job"
  rc=$?
  out=$(cat "$TMP/restart-$mode.out")
  [ $rc -eq 0 ] && grep -q "rank 3 was killed by signal 9 (SIGKILL); restarting it (restart 1 of 1)" <<<"$out" \
    && pass "$mode: the launcher restarts the killed server and the job succeeds" || fail "$mode restart run: rc $rc: $out"
  [ "$(json "$TMP/restart-$mode/ps/server1.json" 'j["restart"] == 1 and j["resumed"]')" = "True" ] \
    && pass "$mode: the restarted server reloaded its shard" || fail "server1.json: $(cat "$TMP/restart-$mode/ps/server1.json" 2>&1)"
  for w in 0 1; do
    [ "$(json "$TMP/restart-$mode/ps/worker$w.jsonl" '[(e["steps"], e["reconnects"] >= 1) for e in ls if e["event"]=="summary"][0]')" = "(80, True)" ] \
      && pass "$mode: worker $w reconnected and finished its 80 steps" \
      || fail "$mode worker$w.jsonl: $(tail -n 1 "$TMP/restart-$mode/ps/worker$w.jsonl" 2>&1)"
  done
  acc=$(json "$TMP/restart-$mode/metrics.jsonl" '[e for e in ls if e["event"]=="eval"][-1]["test_acc"]')
  $PY -c "import sys; sys.exit(0 if float('$acc') > 0.5 else 1)" && pass "$mode: trains on after the restart (accuracy $acc)" \
    || fail "$mode: accuracy $acc after the restart"
done
# 5b. A worker dies in a running job (ps.restarts = 1): the launcher starts it again, the new
# process rejoins at the step the servers counted for it (its 12 pushes), and every worker ends
# with its pushes counted once.
for mode in bsp asp ssp; do
  out=$(CHORUS_FAULT=kill:1:12 timeout 120 "$CHORUS" train --nproc 2 "${SETS[@]}" --set train.epochs=2 --set ps.servers=2 \
    --set ps.mode=$mode --set ps.staleness=2 --set ps.restarts=1 --set output.dir="$TMP/wrestart-$mode" 2>&1)
  rc=$?
  at=$(sed -n 's/.*worker 1 (restart 1) rejoined the job at step \([0-9]*\).*/\1/p' <<<"$out")
  if [ $rc -ne 0 ] || [ -z "$at" ] || ! grep -q "rank 1 was killed by signal 9 (SIGKILL); restarting it (restart 1 of 1)" <<<"$out"; then
    fail "$mode worker restart: rc $rc: $out"
    continue
  fi
  pass "$mode: the killed worker was restarted and rejoined at step $at"
  # The new process's steps plus where it resumed make the run's 40; each server counted
  # worker 1's 12 pushes before the kill plus the new process's, and the rejoin.
  after=$(json "$TMP/wrestart-$mode/ps/worker1.jsonl" '[e["steps"] for e in ls if e["event"]=="summary"][-1]')
  for s in 0 1; do
    got=$(json "$TMP/wrestart-$mode/ps/server$s.json" '(j["w1_rejoins"], j["w1_pushes"] - 12 - '"$after"', j["rejoined_workers"])')
    [ "$((at + after))" = 40 ] && [ "$got" = "(1, 0, 1)" ] && [ "$at" = 12 ] \
      && pass "$mode: server $s counted the rejoin and worker 1's pushes once (resumed at $at, $after steps after)" \
      || fail "$mode server$s: at $at after $after: $got: $(cat "$TMP/wrestart-$mode/ps/server$s.json")"
  done
  # The last evaluation is of the servers' final model, after the restarted worker's last push.
  final=$(json "$TMP/wrestart-$mode/metrics.jsonl" '[e for e in ls if e["event"]=="eval"][-1].get("final_model")')
  [ "$final" = True ] && pass "$mode: worker 0 evaluated the servers' final model" \
    || fail "$mode final model: $(tail -n 3 "$TMP/wrestart-$mode/metrics.jsonl")"
done

# 5b'. A stopped worker (SIGSTOP) of such a job: its heartbeat stops, the launcher kills it
# after CHORUS_HEARTBEAT_TIMEOUT_MS and restarts it, and it rejoins; bsp rounds go on.
out=$(CHORUS_HEARTBEAT_TIMEOUT_MS=3000 CHORUS_FAULT=stop:1:10 timeout 120 "$CHORUS" train --nproc 2 "${SETS[@]}" \
  --set train.epochs=2 --set ps.servers=2 --set ps.mode=bsp --set ps.restarts=1 --set output.dir="$TMP/wstop" 2>&1)
rc=$?
[ $rc -eq 0 ] && grep -q "rank 1 (pid [0-9]*) sent no heartbeat for [0-9]* ms (stopped, or its process is frozen); excluding it" <<<"$out" \
  && grep -q "worker 1 (restart 1) rejoined the job at step 10," <<<"$out" \
  && pass "bsp: a stopped worker is found by its heartbeat, killed, restarted and rejoins" || fail "stopped worker: rc $rc: $out"

# 5b''. A worker killed after it finished its steps (the fault at the run's last step fires once
# it has said goodbye) is not restarted: the job is done with it, and ends with status 0.
out=$(CHORUS_FAULT=kill:1:20 timeout 120 "$CHORUS" train --nproc 2 "${SETS[@]}" --set ps.servers=1 --set ps.mode=bsp \
  --set ps.restarts=1 --set output.dir="$TMP/wdone" 2>&1)
rc=$?
[ $rc -eq 0 ] && grep -q "rank 1 was killed by signal 9 (SIGKILL) after it had finished its work; not restarting it" <<<"$out" \
  && ! grep -q "rank 1 .*restarting it (restart" <<<"$out" \
  && pass "a worker killed after its last step is not restarted" || fail "killed after finishing: rc $rc: $out"

# 5c. Backup workers on two servers: both apply the same pushes in every round.
out=$(timeout 120 "$CHORUS" train --nproc 3 "${SETS[@]}" --set train.batch_size=60 --set ps.servers=2 --set ps.mode=bsp \
  --set ps.backup=1 --set train.straggler_workers=[2] --set train.straggler_delay_ms=15 --set output.dir="$TMP/backup" 2>&1)
rc=$?
agree=$(json "$TMP/backup/ps/server0.json" 'j["decisions"] == j["version"] > 0' 2>&1)
for w in 0 1 2; do
  a0=$(json "$TMP/backup/ps/server0.json" "j['w${w}_applied'], j['w${w}_dropped']" 2>&1)
  a1=$(json "$TMP/backup/ps/server1.json" "j['w${w}_applied'], j['w${w}_dropped']" 2>&1)
  [ "$a0" = "$a1" ] || agree="worker $w: $a0 vs $a1"
done
[ $rc -eq 0 ] && [ "$agree" = True ] && pass "backup workers: both servers applied and dropped the same pushes" \
  || fail "backup agreement: rc $rc: $agree: $out"
out=$("$CHORUS" train --nproc 2 "${SETS[@]}" --set ps.servers=1 --set ps.restarts=1 --set ddp.transport=shm 2>&1)
[ $? -ne 0 ] && grep -q "reconnects over tcp only" <<<"$out" && pass "ps.restarts with shm is refused" || fail "restarts+shm: $out"

# 6. A worker that diverges ends the whole job, even under asp where the launcher lets a failed
# worker go (train.md, "Divergence"): worker 1 straggles, so worker 0 meets the non-finite model
# first; the job ends with status 3 at once (the others stopped, not waited for), the message
# names the divergence, and no process of the job is left.
start=$(date +%s)
out=$(timeout 120 "$CHORUS" train --nproc 2 "${SETS[@]}" --set train.epochs=4 --set ps.servers=1 --set ps.mode=asp \
  --set optim.lr=1e30 --set train.straggler_workers=[1] --set train.straggler_delay_ms=500 \
  --set output.dir="$TMP/diverge" 2>&1)
rc=$?
took=$(( $(date +%s) - start ))
[ $rc -eq 3 ] && grep -q "training diverged at step" <<<"$out" && grep -q "stopped the other" <<<"$out" \
  && ! grep -q "goes on without it" <<<"$out" \
  && pass "asp: a diverged worker ends the job (exit 3 after ${took}s)" || fail "asp divergence: rc $rc: $out"
sleep 0.5
[ -z "$(pgrep -f "output.dir=$TMP/diverge")" ] && pass "asp divergence: no process of the job is left" \
  || fail "asp divergence: processes left: $(pgrep -af "output.dir=$TMP/diverge")"
$PY -c "import glob,json,sys; d=sys.argv[1]; ev=lambda f: [json.loads(l)['event'] for l in open(f) if l.strip()]
sys.exit(0 if any('diverged' in ev(f) for f in glob.glob(d + '/ps/worker*.jsonl')) and 'summary' not in ev(d + '/metrics.jsonl') else 1)" \
  "$TMP/diverge" && pass "asp divergence: a diverged record, no summary" || fail "asp divergence records: $(cat "$TMP/diverge/metrics.jsonl" 2>&1)"

[ $failures -eq 0 ] && echo "all passed" || echo "$failures failure(s)"
exit $((failures > 0))
