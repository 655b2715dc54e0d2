#!/usr/bin/env bash
# Elastic training (docs/fault-tolerance.md), through `chorus train --nproc 4 --min 2`:
#   1. worker 2 is killed with SIGKILL as it starts step 5 (CHORUS_FAULT): workers 0, 1 and 3
#      go on in the same processes (the pids they print before and after re-forming match),
#      and the final checkpoint equals, within 1e-5, a reference that trained with 4 workers
#      up to step 5 and resumed with 3 from its step-5 checkpoint;
#   2. with --restarts 1, worker 1 killed at step 3 is replaced: the new worker receives the
#      state by broadcast and the job ends where an undisturbed 4-worker run ends (1e-5);
#   3. killing 3 of 4 workers with --min 2 ends the job with an error naming --min;
#   4. a worker stopped with SIGSTOP is named by the launcher when its heartbeat stops, excluded,
#      and the job ends as in 1;
#   5. a worker whose own code never returns (it spins) gets a stall report naming it and the
#      call the others wait in, and is excluded when the collective timeout has passed;
#   6. a run killed with SIGKILL while it writes a checkpoint leaves the previous one loadable,
#      and --resume removes the unfinished temporary and goes on from it;
#   7. with top-k compression, worker 2 killed at step 5: the survivors carry the compression
#      state of the 3 surviving ranks of 4 (rank 0 logs it) and the run finishes;
#   8. with --spares 1 a standby worker, started with the job and loaded, takes worker 1's
#      place and the job ends where an undisturbed run does; an unused spare exits with the job;
#   9. a healthy job grows: SIGUSR1 to `chorus train --nproc 2 --max 3 --spares 1` brings the
#      waiting spare in as rank 2 of 3, the two workers go on in their own processes, and the
#      job ends where an undisturbed run does; at --max a second SIGUSR1 is refused, and so is
#      growth to a world the global batch does not divide over.
# usage: bash elastic_test.sh BUILD_DIR [SOURCE_DIR]
set -u
BUILD=${1:?usage: elastic_test.sh BUILD_DIR [SOURCE_DIR]}
CHORUS=$BUILD/chorus
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built"; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# 480 samples, a global batch of 48 (divisible by 4, 3 and 2): 10 steps per epoch, 2 epochs.
COMMON=(--set data.limit_train=480 --set train.batch_size=48 --set train.epochs=2 --set train.eval=false
        --set model.hidden=[32] --set train.threads=1 --set output.progress=none --set optim.momentum=0.9
        --set output.checkpoint_epoch=true --set train.log_every=5)
last_ckpt() { find "$1/checkpoints" -name 'ckpt-*.pt' | sort | tail -n 1; }

# --- 1. a worker dies; the survivors go on in their processes
CHORUS_FAULT=kill:2:5 "$CHORUS" train --nproc 4 --min 2 "${COMMON[@]}" --set "output.dir=$TMP/el" \
  > "$TMP/el.out" 2> "$TMP/el.err"
rc=$?
[ $rc -eq 0 ] && pass "elastic run finished after a worker was killed" || { fail "elastic run exit $rc"; tail -20 "$TMP/el.err"; }
grep -q "generation 1: 3 workers (ids 0,1,3)" "$TMP/el.err" && pass "the launcher formed generation 1 of ids 0,1,3" \
  || fail "no generation-1 message in the launcher's output"
for id in 0 1 3; do
  before=$(grep -o "worker $id (pid [0-9]*): generation 0" "$TMP/el.err" | grep -o 'pid [0-9]*')
  after=$(grep -o "worker $id (pid [0-9]*): generation 1" "$TMP/el.err" | grep -o 'pid [0-9]*')
  if [ -n "$before" ] && [ "$before" = "$after" ]; then
    pass "worker $id kept its process ($before) through the re-forming"
  else
    fail "worker $id: '$before' at generation 0, '$after' at generation 1"
  fi
done
grep -q "resuming at step 5" "$TMP/el.err" && pass "the survivors resumed at step 5 (the step in flight was redone)" \
  || fail "no 'resuming at step 5' line"

# The reference: 4 workers with a checkpoint at step 5, then 3 workers from it.
"$CHORUS" train --nproc 4 "${COMMON[@]}" --set output.checkpoint_every=5 --set output.keep=10 \
  --set "output.dir=$TMP/ref4" > "$TMP/ref4.out" 2>&1 || fail "reference (4 workers) failed: $(tail -3 "$TMP/ref4.out")"
ckpt5=$(find "$TMP/ref4/checkpoints" -name 'ckpt-*' | sort | head -n 1)
[ -n "$ckpt5" ] || fail "the reference wrote no checkpoint"
"$CHORUS" train --nproc 3 "${COMMON[@]}" --resume-from "$ckpt5" --set "output.dir=$TMP/ref3" \
  > "$TMP/ref3.out" 2>&1 || fail "reference (resumed at 3 workers) failed: $(tail -3 "$TMP/ref3.out")"
if "$CHORUS" checkpoint diff "$(last_ckpt "$TMP/el")" "$(last_ckpt "$TMP/ref3")" --atol 1e-5 > "$TMP/diff1.out"; then
  pass "final parameters equal 4 workers to step 5 and 3 after ($(tail -1 "$TMP/diff1.out"))"
else
  fail "the elastic run's final checkpoint differs from the reference:"; cat "$TMP/diff1.out"
fi

# --- 2. a replacement joins at a step boundary
CHORUS_FAULT=kill:1:3 "$CHORUS" train --nproc 4 --min 2 --restarts 1 "${COMMON[@]}" --set "output.dir=$TMP/rep" \
  > "$TMP/rep.out" 2> "$TMP/rep.err"
rc=$?
[ $rc -eq 0 ] && pass "elastic run with a replacement finished" || { fail "replacement run exit $rc"; tail -20 "$TMP/rep.err"; }
grep -q "generation 1: 4 workers (ids 0,2,3,4), 1 replacement starting" "$TMP/rep.err" \
  && pass "worker 4 replaced worker 1 in generation 1" || fail "no replacement message"
grep -q "worker 4 (pid [0-9]*): generation 1, rank 3 of 4" "$TMP/rep.err" && pass "the replacement joined as rank 3 of 4" \
  || fail "the replacement did not report its join"
"$CHORUS" train --nproc 4 "${COMMON[@]}" --set "output.dir=$TMP/plain" > "$TMP/plain.out" 2>&1 \
  || fail "undisturbed run failed: $(tail -3 "$TMP/plain.out")"
if "$CHORUS" checkpoint diff "$(last_ckpt "$TMP/rep")" "$(last_ckpt "$TMP/plain")" --atol 1e-5 > "$TMP/diff2.out"; then
  pass "with the replacement, the job ends where an undisturbed run does ($(tail -1 "$TMP/diff2.out"))"
else
  fail "the replaced run's final checkpoint differs from the undisturbed one:"; cat "$TMP/diff2.out"
fi

# --- 3. below --min the job ends with a clear error
CHORUS_FAULT=kill:1:2,kill:2:2,kill:3:2 timeout 120 "$CHORUS" train --nproc 4 --min 2 "${COMMON[@]}" \
  --set "output.dir=$TMP/min" > "$TMP/min.out" 2> "$TMP/min.err"
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] && pass "losing 3 of 4 with --min 2 ends the job (exit $rc)" || fail "exit $rc"
grep -q "fewer than --min 2" "$TMP/min.err" && pass "the error names --min" || { fail "no --min message"; tail -5 "$TMP/min.err"; }

# --- 4. a stopped worker: its heartbeat stops
start=$(date +%s)
CHORUS_FAULT=stop:2:5 CHORUS_HEARTBEAT_TIMEOUT_MS=3000 timeout 180 "$CHORUS" train --nproc 4 --min 2 "${COMMON[@]}" \
  --set "output.dir=$TMP/stop" > "$TMP/stop.out" 2> "$TMP/stop.err"
rc=$?
took=$(($(date +%s) - start))
[ $rc -eq 0 ] && pass "a stopped worker did not hang the job (${took} s)" || { fail "stopped-worker run exit $rc"; tail -20 "$TMP/stop.err"; }
grep -q "worker 2 (pid [0-9]*) sent no heartbeat for [0-9]* ms (stopped, or its process is frozen); excluding it" \
  "$TMP/stop.err" && pass "the launcher named the stopped worker" || fail "no heartbeat message for worker 2"
if "$CHORUS" checkpoint diff "$(last_ckpt "$TMP/stop")" "$(last_ckpt "$TMP/ref3")" --atol 1e-5 > "$TMP/diff4.out"; then
  pass "after excluding the stopped worker the job ends as with a dead one"
else
  fail "the stopped-worker run's final checkpoint differs from the reference:"; cat "$TMP/diff4.out"
fi

# --- 5. a worker whose own code never returns: stall report, then excluded at the timeout
CHORUS_FAULT=loop:1:3 CHORUS_STALL_WARN_S=2 CHORUS_TIMEOUT_MS=8000 timeout 180 "$CHORUS" train --nproc 4 --min 2 \
  "${COMMON[@]}" --set "output.dir=$TMP/loop" > "$TMP/loop.out" 2> "$TMP/loop.err"
rc=$?
[ $rc -eq 0 ] && pass "a spinning worker did not hang the job" || { fail "spinning-worker run exit $rc"; tail -20 "$TMP/loop.err"; }
grep -q "stall: worker 1 (pid [0-9]*) has issued [0-9]* collective calls of generation 0 and no more for [0-9]* s; workers 0,2,3 have issued [0-9]* and wait in the last, allreduce" \
  "$TMP/loop.err" && pass "a stall report named worker 1 and the call the others wait in" \
  || { fail "no stall report for worker 1"; grep -i stall "$TMP/loop.err" | head -3; }
grep -q "worker 1 (pid [0-9]*) has issued [0-9]* collective calls of generation 0 and no more for [0-9]* ms while the others wait in call" "$TMP/loop.err" \
  && pass "the spinning worker was excluded" || fail "the spinning worker was not excluded"

# --- 6. killed during a checkpoint write: a large model (two 2048-wide layers, ~20 MB with
# momentum) checkpointed every step; SIGKILL lands while a temporary exists (retried until it
# does: the write is a window of a few tens of ms).
landed=""
for attempt in 1 2 3 4 5 6 7 8; do
  rm -rf "$TMP/ck"
  "$CHORUS" train --set data.limit_train=4800 --set train.batch_size=48 --set train.epochs=1 --set train.eval=false \
    --set model.hidden=[2048,2048] --set train.threads=1 --set output.progress=none --set output.checkpoint_every=1 \
    --set output.keep=2 --set "output.dir=$TMP/ck" > "$TMP/ck.out" 2>&1 &
  pid=$!
  for i in $(seq 1 3000); do
    if [ "$(find "$TMP/ck/checkpoints" -name 'ckpt-*.pt' 2> /dev/null | wc -l)" -ge 1 ] &&
       find "$TMP/ck/checkpoints" -name '*.tmp.*' 2> /dev/null | grep -q .; then
      kill -9 $pid
      break
    fi
    kill -0 $pid 2> /dev/null || break
    sleep 0.005
  done
  wait $pid 2> /dev/null
  if find "$TMP/ck/checkpoints" -name '*.tmp.*' 2> /dev/null | grep -q .; then
    landed=$attempt
    break
  fi
done
if [ -z "$landed" ]; then
  fail "no SIGKILL landed inside a checkpoint write in 8 attempts"
else
  pass "SIGKILL landed while a checkpoint was being written (attempt $landed)"
  prev=$(last_ckpt "$TMP/ck")
  "$CHORUS" checkpoint diff "$prev" "$prev" > /dev/null 2>&1 && pass "the previous checkpoint ($(basename "$prev")) still loads" \
    || fail "the previous checkpoint $prev does not load"
  "$CHORUS" train --resume --set data.limit_train=4800 --set train.batch_size=48 --set train.epochs=1 \
    --set train.eval=false --set model.hidden=[2048,2048] --set train.threads=1 --set output.progress=none \
    --set train.max_steps=$(( $(basename "$prev" | tr -dc 0-9 | sed 's/^0*//') + 2 )) --set output.keep=2 \
    --set "output.dir=$TMP/ck" > "$TMP/ck2.out" 2>&1
  rc=$?
  [ $rc -eq 0 ] && grep -q "an unfinished checkpoint of a writer that is gone" "$TMP/ck2.out" \
    && pass "--resume removed the unfinished temporary and went on" || { fail "resume after the kill: exit $rc"; tail -5 "$TMP/ck2.out"; }
fi

# --- 7. compression state survives a re-forming: the residuals of 3 of 4 ranks are carried
CHORUS_FAULT=kill:2:5 CHORUS_LOG_LEVEL=info "$CHORUS" train --nproc 4 --min 2 "${COMMON[@]}" \
  --set compression.method=topk --set compression.ratio=0.05 --set "output.dir=$TMP/topk" \
  > "$TMP/topk.out" 2> "$TMP/topk.err"
rc=$?
[ $rc -eq 0 ] && pass "a top-k run finished after a worker was killed" || { fail "top-k elastic run exit $rc"; tail -20 "$TMP/topk.err"; }
grep -q "compression state of step 5 carried from 3 of 4 ranks to 3 (the missing ranks' residuals are lost)" "$TMP/topk.err" \
  && pass "the survivors carried the compression state of 3 of 4 ranks" \
  || { fail "no 'carried from 3 of 4 ranks' line"; grep -i "compression state\|resuming" "$TMP/topk.err" | head -5; }

# --- 8. a spare (--spares 1) takes the failed worker's place; an unused spare exits with the job
CHORUS_FAULT=kill:1:3 "$CHORUS" train --nproc 4 --min 2 --restarts 1 --spares 1 "${COMMON[@]}" \
  --set "output.dir=$TMP/spare" > "$TMP/spare.out" 2> "$TMP/spare.err"
rc=$?
[ $rc -eq 0 ] && grep -q "worker 4 (pid [0-9]*): a spare, loaded and waiting" "$TMP/spare.err" \
  && grep -q "generation 1: 4 workers (ids 0,2,3,4), 1 spare joining" "$TMP/spare.err" \
  && grep -q "worker 4 (pid [0-9]*): generation 1, rank 3 of 4" "$TMP/spare.err" \
  && pass "the waiting spare joined generation 1 as rank 3 of 4" || { fail "spare run exit $rc"; tail -20 "$TMP/spare.err"; }
if "$CHORUS" checkpoint diff "$(last_ckpt "$TMP/spare")" "$(last_ckpt "$TMP/plain")" --atol 1e-5 > "$TMP/diff8.out"; then
  pass "with the spare, the job ends where an undisturbed run does ($(tail -1 "$TMP/diff8.out"))"
else
  fail "the spare run's final checkpoint differs from the undisturbed one:"; cat "$TMP/diff8.out"
fi
start=$(date +%s)
timeout 120 "$CHORUS" train --nproc 2 --min 1 --restarts 1 --spares 1 "${COMMON[@]}" --set "output.dir=$TMP/idle" \
  > "$TMP/idle.out" 2> "$TMP/idle.err"
rc=$?
[ $rc -eq 0 ] && [ $(( $(date +%s) - start )) -lt 60 ] && ! grep -q "spare worker" "$TMP/idle.err" \
  && pass "an unused spare exits when the job is done" || { fail "unused spare: exit $rc"; tail -5 "$TMP/idle.err"; }
out=$("$CHORUS" train --nproc 2 --min 1 --restarts 1 --spares 2 "${COMMON[@]}" 2>&1)
[ $? -ne 0 ] && grep -q "more than --restarts" <<<"$out" && pass "--spares above --restarts is refused" || fail "spares > restarts: $out"

# --- 9. a healthy job grows by a spare (SIGUSR1 to the launcher). Rank 0 sleeps 250 ms a step
# (the same arithmetic, a slower job), so the signal comes while it trains.
"$CHORUS" train --nproc 2 --min 1 --max 3 --restarts 1 --spares 1 "${COMMON[@]}" --set train.straggler_workers=[0] \
  --set train.straggler_delay_ms=250 --set "output.dir=$TMP/grow" > "$TMP/grow.out" 2> "$TMP/grow.err" &
job=$!
for _ in $(seq 1 300); do
  grep -q "a spare, loaded and waiting" "$TMP/grow.err" && grep -q '"event": "step"' "$TMP/grow/metrics.jsonl" 2>/dev/null && break
  sleep 0.1
done
kill -USR1 $job
sleep 1.5
kill -USR1 $job  # at --max 3 now: refused
wait $job
rc=$?
pids_before=$(sed -n 's/.*worker \([01]\) (pid \([0-9]*\)): generation 0,.*/\1:\2/p' "$TMP/grow.err" | sort | tr '\n' ' ')
pids_after=$(sed -n 's/.*worker \([01]\) (pid \([0-9]*\)): generation 1,.*/\1:\2/p' "$TMP/grow.err" | sort | tr '\n' ' ')
[ $rc -eq 0 ] && grep -q "received SIGUSR1; generation 1: 3 workers (ids 0,1,2), 1 spare joining" "$TMP/grow.err" \
  && grep -q "worker 2 (pid [0-9]*): generation 1, rank 2 of 3" "$TMP/grow.err" \
  && [ -n "$pids_before" ] && [ "$pids_before" = "$pids_after" ] \
  && pass "SIGUSR1 grew the job: the spare joined as rank 2 of 3, workers 0 and 1 kept their pids ($pids_after)" \
  || { fail "grow run: exit $rc, pids '$pids_before' then '$pids_after'"; tail -20 "$TMP/grow.err"; }
grep -q "received SIGUSR1, but the job has 3 workers, the most --max 3 allows; not growing" "$TMP/grow.err" \
  && pass "at --max, SIGUSR1 is refused with a message" || fail "no refusal at --max: $(grep SIGUSR1 "$TMP/grow.err")"
# The reference ends at world 3 too (the checkpoint records the world); the samples of each
# step are the same at any world size.
"$CHORUS" train --nproc 3 "${COMMON[@]}" --set "output.dir=$TMP/plain3" > "$TMP/plain3.out" 2>&1 \
  || fail "undisturbed 3-worker run failed: $(tail -3 "$TMP/plain3.out")"
if "$CHORUS" checkpoint diff "$(last_ckpt "$TMP/grow")" "$(last_ckpt "$TMP/plain3")" --atol 1e-5 > "$TMP/diff9.out"; then
  pass "grown from 2 to 3 workers, the job ends where an undisturbed run does ($(tail -1 "$TMP/diff9.out"))"
else
  fail "the grown run's final checkpoint differs from the undisturbed one:"; cat "$TMP/diff9.out"
fi

# A world the global batch does not divide over is declined (40 samples over 3 workers).
"$CHORUS" train --nproc 2 --min 1 --max 3 --restarts 1 --spares 1 "${COMMON[@]}" --set train.batch_size=40 \
  --set train.straggler_workers=[0] --set train.straggler_delay_ms=100 --set "output.dir=$TMP/nogrow" \
  > "$TMP/nogrow.out" 2> "$TMP/nogrow.err" &
job=$!
for _ in $(seq 1 300); do
  grep -q "a spare, loaded and waiting" "$TMP/nogrow.err" && break
  sleep 0.1
done
kill -USR1 $job
wait $job
rc=$?
[ $rc -eq 0 ] && grep -q "received SIGUSR1, but the job cannot run with 3 workers: train.batch_size = 40 does not divide over 3 workers; not growing" \
  "$TMP/nogrow.err" && pass "growth to a world the batch does not divide over is declined" \
  || { fail "nogrow run: exit $rc"; tail -5 "$TMP/nogrow.err"; }

echo "$failures failed"
[ $failures -eq 0 ]
