#!/usr/bin/env bash
# Elastic tensor- and pipeline-parallel jobs (train/elastic.h, docs/fault-tolerance.md): with
# `chorus train --nproc 4 --min 4 --restarts R` a worker that fails is replaced in its own place
# (its rank), the other workers keep their processes, every rank restores the last step that all
# shards hold in memory, the replacement receives its shard from a data-parallel replica, and
# the job ends where an undisturbed run ends (final validation loss and every parameter and
# optimizer tensor within 1e-5):
#   1. tp 2 x dp 2, worker 1 killed at step 9: a new process takes rank 1, its shard comes from
#      rank 3;
#   2. pp 2 (1F1B) x dp 2, worker 2 (stage 1 of replica 0) killed at step 7: a waiting spare
#      takes rank 2;
#   3. tp 2 x dp 2, worker 3 stopped (SIGSTOP) at step 6: its heartbeat stops, the launcher names
#      and excludes it, and a new process takes rank 3;
#   4. what cannot recover this way is refused before any worker starts, saying what to do:
#      --min below --nproc, no --restarts, an asynchronous pipeline schedule;
#   5. the GPT at tp 1 is an all-reduce job like any other: the survivor goes on alone;
#   6. at dp = 1 (tp 2, and pp 2 with a spare, on 2 workers) the replacement receives its shard
#      from the copy its neighbour keeps, and the job ends as the undisturbed one does;
#   7. dp 2 x tp 2 x pp 2 on 8 workers (3D): worker 5 killed, a new process in its place, its
#      shard from rank 7, and the job ends as the undisturbed one does.
# usage: bash elastic_mp_test.sh BUILD_DIR SOURCE_DIR
source "$(dirname "${BASH_SOURCE[0]}")/gpt_script_lib.sh" elastic_mp_test "$@"

TINY=(--set model.layers=2 --set model.embed=16 --set model.heads=2 --set model.context=16
      --set train.max_steps=12 --set train.batch_size=4 --set data.eval_windows=4 --set train.log_every=2
      --set output.checkpoint_every=6 --set output.progress=none --set train.threads=1 --set data.path="$CORPUS")
TP=(--set parallel.tp=2)
PP=(--set parallel.pp=2 --set parallel.schedule=1f1b --set parallel.micro_batches=2)

last_ckpt() { find "$1/checkpoints" -name 'ckpt-*.pt' | sort | tail -n 1; }

# Every tensor of the two runs' last checkpoints (joined over tp by `chorus checkpoint convert`,
# optimizer state included) within 1e-5, and the same validation loss within 1e-5 relative.
same_as() {  # name run-dir reference-dir
  local a b
  a=$(last_ckpt "$2"); b=$(last_ckpt "$3")
  if [ -z "$a" ] || [ -z "$b" ] || [ "$(basename "$a")" != "$(basename "$b")" ]; then
    fail "$1: last checkpoints '$a' and '$b' are not of the same step"
    return
  fi
  rm -f "$TMP/a.pt" "$TMP/b.pt"
  "$CHORUS" checkpoint convert "$a" "$TMP/a.pt" --with-optimizer > /dev/null 2>&1 \
    && "$CHORUS" checkpoint convert "$b" "$TMP/b.pt" --with-optimizer > /dev/null 2>&1 \
    || { fail "$1: chorus checkpoint convert failed"; return; }
  local cmp
  cmp=$($PY -c 'import sys, torch
a = torch.load(sys.argv[1]); b = torch.load(sys.argv[2])
assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))
worst = max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
print(f"{len(a)} tensors, largest difference {worst:.3g}")
sys.exit(0 if worst <= 1e-5 else 1)' "$TMP/a.pt" "$TMP/b.pt" 2>&1)
  [ $? -eq 0 ] && pass "$1: the final parameters and optimizer state equal the undisturbed run's ($cmp)" \
    || fail "$1: the final checkpoint differs from the undisturbed run's: $cmp"
  local got ref
  got=$(final_loss "$2"); ref=$(final_loss "$3")
  $PY -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 1e-5 * abs(b) else 1)' \
    "$got" "$ref" 2>/dev/null && pass "$1: val_loss $got, undisturbed $ref" || fail "$1: val_loss $got, undisturbed $ref"
}

# The survivors' pids at generation 0 and 1 (the lines each worker prints) must match.
kept_processes() {  # name err-file ids...
  local name=$1 err=$2; shift 2
  local id before after ok=1
  for id in "$@"; do
    before=$(grep -o "worker $id (pid [0-9]*): generation 0" "$err" | grep -o 'pid [0-9]*')
    after=$(grep -o "worker $id (pid [0-9]*): generation 1" "$err" | grep -o 'pid [0-9]*')
    if [ -z "$before" ] || [ "$before" != "$after" ]; then
      fail "$name: worker $id: '$before' at generation 0, '$after' at generation 1"
      ok=0
    fi
  done
  [ $ok -eq 1 ] && pass "$name: workers $* kept their processes through the re-forming"
}

run() {  # dir, then flags; CHORUS_FAULT etc. and NPROC (default 4) from the environment
  local dir=$1; shift
  timeout 240 "$CHORUS" train "$SOURCE/configs/gpt.toml" --nproc "${NPROC:-4}" "${TINY[@]}" "$@" --set output.dir="$TMP/$dir" \
    > "$TMP/$dir.out" 2> "$TMP/$dir.err"
}

run tp-ref "${TP[@]}" || fail "tp: the undisturbed run failed: $(tail -5 "$TMP/tp-ref.err")"
run pp-ref "${PP[@]}" || fail "pp: the undisturbed run failed: $(tail -5 "$TMP/pp-ref.err")"

# --- 1. tp 2 x dp 2: a new process in the killed worker's place
CHORUS_FAULT=kill:1:9 run tp-kill "${TP[@]}" --min 4 --restarts 1
rc=$?
if [ $rc -ne 0 ]; then
  fail "tp kill: exit $rc"; tail -20 "$TMP/tp-kill.err"
else
  grep -q "generation 1: 4 workers (ids 0,4,2,3), 1 replacement starting" "$TMP/tp-kill.err" \
    && pass "tp kill: worker 4 replaces worker 1 in its place" || fail "tp kill: no in-place replacement message"
  grep -q "worker 4 (pid [0-9]*): generation 1, rank 1 of 4" "$TMP/tp-kill.err" \
    && pass "tp kill: the replacement joined as rank 1 of 4" || fail "tp kill: the replacement is not rank 1"
  kept_processes "tp kill" "$TMP/tp-kill.err" 0 2 3
  grep -q "resuming at step 9" "$TMP/tp-kill.err" && pass "tp kill: resumed at step 9 (only the step in flight redone)" \
    || fail "tp kill: no 'resuming at step 9' line"
  grep -q "rank 1 of generation 1: received its shard.s state of step 9 ([0-9]* bytes) from rank 3" "$TMP/tp-kill.err" \
    && pass "tp kill: rank 1's shard came from its replica, rank 3" || fail "tp kill: no sign of the shard coming from rank 3"
  same_as "tp kill" "$TMP/tp-kill" "$TMP/tp-ref"
fi

# --- 2. pp 2 x dp 2: a waiting spare in the killed worker's place
CHORUS_FAULT=kill:2:7 run pp-kill "${PP[@]}" --min 4 --restarts 1 --spares 1
rc=$?
if [ $rc -ne 0 ]; then
  fail "pp kill: exit $rc"; tail -20 "$TMP/pp-kill.err"
else
  grep -q "generation 1: 4 workers (ids 0,1,4,3), 1 spare joining" "$TMP/pp-kill.err" \
    && pass "pp kill: spare 4 takes worker 2's place" || fail "pp kill: no in-place spare message"
  grep -q "worker 4 (pid [0-9]*): generation 1, rank 2 of 4" "$TMP/pp-kill.err" \
    && pass "pp kill: the spare joined as rank 2 of 4" || fail "pp kill: the spare is not rank 2"
  kept_processes "pp kill" "$TMP/pp-kill.err" 0 1 3
  same_as "pp kill" "$TMP/pp-kill" "$TMP/pp-ref"
fi

# --- 3. tp 2 x dp 2: a stopped worker is excluded and replaced in its place
CHORUS_FAULT=stop:3:6 CHORUS_HEARTBEAT_TIMEOUT_MS=3000 run tp-stop "${TP[@]}" --min 4 --restarts 1
rc=$?
if [ $rc -ne 0 ]; then
  fail "tp stop: exit $rc"; tail -20 "$TMP/tp-stop.err"
else
  grep -q "worker 3 .*heartbeat" "$TMP/tp-stop.err" && pass "tp stop: the launcher named worker 3 by its heartbeat" \
    || fail "tp stop: no heartbeat message naming worker 3"
  grep -q "generation 1: 4 workers (ids 0,1,2,4)" "$TMP/tp-stop.err" \
    && pass "tp stop: worker 4 replaces worker 3 in its place" || fail "tp stop: no in-place replacement message"
  kept_processes "tp stop" "$TMP/tp-stop.err" 0 1 2
  same_as "tp stop" "$TMP/tp-stop" "$TMP/tp-ref"
fi

# --- 7. dp 2 x tp 2 x pp 2 on 8 workers: worker 5 (stage 1, replica 0, tp rank 1) killed at step
# 7; a new process takes rank 5 and receives its shard from rank 7 (stage 1, replica 1, tp rank 1)
D3=(--set parallel.tp=2 --set parallel.pp=2 --set parallel.schedule=1f1b --set parallel.micro_batches=2)
NPROC=8 run 3d-ref "${D3[@]}" || fail "3d: the undisturbed run failed: $(tail -5 "$TMP/3d-ref.err")"
CHORUS_FAULT=kill:5:7 NPROC=8 run 3d-kill "${D3[@]}" --min 8 --restarts 1
rc=$?
if [ $rc -ne 0 ]; then
  fail "3d kill: exit $rc"; tail -20 "$TMP/3d-kill.err"
else
  grep -q "generation 1: 8 workers (ids 0,1,2,3,4,8,6,7), 1 replacement starting" "$TMP/3d-kill.err" \
    && pass "3d kill: worker 8 replaces worker 5 in its place" || fail "3d kill: no in-place replacement message"
  grep -q "rank 5 of generation 1: received its shard.s state of step 7 ([0-9]* bytes) from rank 7" "$TMP/3d-kill.err" \
    && pass "3d kill: rank 5's shard came from its replica, rank 7" || fail "3d kill: no sign of the shard coming from rank 7"
  kept_processes "3d kill" "$TMP/3d-kill.err" 0 1 2 3 4 6 7
  same_as "3d kill" "$TMP/3d-kill" "$TMP/3d-ref"
fi

# --- 6. dp = 1: no replica, so each rank keeps its left neighbour's snapshots; the replacement
# receives its shard from that copy (tp 2: worker 1's copy is on rank 0; pp 2 with a spare:
# worker 0's copy is on rank 1)
for c in "tp:kill:1:9:0:2" "pp:kill:0:7:1:2"; do
  IFS=: read -r name kind victim step holder newid <<<"$c"
  [ "$name" = tp ] && sets=("${TP[@]}") || sets=("${PP[@]}")
  extra=(); [ "$name" = pp ] && extra=(--spares 1)
  timeout 240 "$CHORUS" train "$SOURCE/configs/gpt.toml" --nproc 2 "${TINY[@]}" "${sets[@]}" \
    --set output.dir="$TMP/$name-dp1-ref" > "$TMP/$name-dp1-ref.out" 2>&1 \
    || fail "$name at dp 1: the undisturbed run failed: $(tail -5 "$TMP/$name-dp1-ref.out")"
  CHORUS_FAULT=$kind:$victim:$step timeout 240 "$CHORUS" train "$SOURCE/configs/gpt.toml" --nproc 2 "${TINY[@]}" \
    "${sets[@]}" --min 2 --restarts 1 "${extra[@]}" --set output.dir="$TMP/$name-dp1" > "$TMP/$name-dp1.out" 2> "$TMP/$name-dp1.err"
  rc=$?
  if [ $rc -ne 0 ]; then
    fail "$name at dp 1: exit $rc"; tail -20 "$TMP/$name-dp1.err"
    continue
  fi
  grep -q "rank $victim of generation 1: received its shard's state of step $step ([0-9]* bytes) from rank $holder's copy" \
    "$TMP/$name-dp1.err" && pass "$name at dp 1: rank $victim's shard came from rank $holder's copy" \
    || fail "$name at dp 1: no sign of rank $victim's shard coming from rank $holder's copy"
  grep -q "worker $newid (pid [0-9]*): generation 1, rank $victim of 2" "$TMP/$name-dp1.err" \
    && pass "$name at dp 1: worker $newid took rank $victim" || fail "$name at dp 1: worker $newid is not rank $victim"
  kept_processes "$name at dp 1" "$TMP/$name-dp1.err" $((1 - victim))
  same_as "$name at dp 1" "$TMP/$name-dp1" "$TMP/$name-dp1-ref"
done

# --- 5. the GPT at tp 1 (the tensor-parallel strategy on one shard) shrinks like any all-reduce job
CHORUS_FAULT=kill:1:5 timeout 240 "$CHORUS" train "$SOURCE/configs/gpt.toml" --nproc 2 "${TINY[@]}" --min 1 \
  --set output.dir="$TMP/tp1" > "$TMP/tp1.out" 2> "$TMP/tp1.err"
rc=$?
[ $rc -eq 0 ] && grep -q "generation 1: 1 worker (ids 0)" "$TMP/tp1.err" && grep -q "resuming at step 5" "$TMP/tp1.err" \
  && pass "gpt at tp 1: worker 1 killed at step 5, worker 0 went on alone from step 5" \
  || { fail "gpt at tp 1: exit $rc"; tail -20 "$TMP/tp1.err"; }
kept_processes "gpt at tp 1" "$TMP/tp1.err" 0

# --- 4. refused before any worker starts
refused() {  # name expected-text flags...
  local name=$1 text=$2; shift 2
  local out
  out=$("$CHORUS" train "$SOURCE/configs/gpt.toml" "${TINY[@]}" "$@" --set output.dir="$TMP/never" 2>&1)
  [ $? -ne 0 ] && grep -qF -- "$text" <<<"$out" && [ ! -e "$TMP/never" ] && pass "refused: $name" \
    || fail "$name: $out"
}
refused "--min below --nproc" "keeps its world size" --nproc 4 "${TP[@]}" --min 2 --restarts 1
refused "no replacements" "give --restarts R" --nproc 4 "${TP[@]}" --min 4
refused "an asynchronous schedule" "recovers synchronous pipeline schedules" --nproc 4 --set parallel.pp=2 \
  --set parallel.schedule=pipedream --set parallel.micro_batches=2 --set model.tie_embeddings=false --min 4 --restarts 1

finish
