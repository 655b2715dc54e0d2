#!/usr/bin/env bash
# The GPT job from the command line: a tiny GPT trains with `chorus train` on 1 worker and at
# tp 2 on 2 workers, writes step records with "bpb" and eval records with "val_loss" and
# "val_bpb" (also every train.eval_every steps), and `chorus generate` prints the prompt and
# N sampled bytes from either checkpoint (the tp 2 one joined into the unsplit model); the
# errors of tensor parallelism (heads or workers not divisible by tp, sequence parallelism with
# pp) and of a missing corpus stop the job before any worker starts; generate's own errors; at
# pp 4 the share of time each stage had no free core, and the warning when it is large.
# usage: bash gpt_cli_test.sh BUILD_DIR SOURCE_DIR
source "$(dirname "${BASH_SOURCE[0]}")/gpt_script_lib.sh" gpt_cli_test "$@"

TINY=(--set model.layers=1 --set model.embed=16 --set model.heads=2 --set model.context=16
      --set train.max_steps=6 --set train.batch_size=4 --set data.eval_windows=4 --set train.log_every=2
      --set train.eval_every=4 --set output.progress=none --set data.path="$CORPUS")

# expect_error DESCRIPTION PATTERN... -- ARGS: non-zero exit, every pattern in the output, and
# no worker started (no output folder).
expect_error() {
  local what=$1; shift
  local pats=()
  while [ "$1" != "--" ]; do pats+=("$1"); shift; done
  shift
  local out
  out=$("$CHORUS" train "$SOURCE/configs/gpt.toml" "${TINY[@]}" "$@" --set output.dir="$TMP/never" 2>&1)
  local rc=$?
  if [ $rc -eq 0 ]; then fail "$what: exit 0"; return; fi
  for p in "${pats[@]}"; do
    if ! grep -qF -- "$p" <<<"$out"; then fail "$what: '$p' not in: $out"; return; fi
  done
  if [ -e "$TMP/never" ]; then fail "$what: a worker started"; return; fi
  pass "$what"
}

expect_error "heads not divisible by tp" "parallel.tp" "model.heads = 3" -- \
  --nproc 2 --set model.heads=3 --set model.embed=18 --set parallel.tp=2
expect_error "workers not a multiple of tp" "parallel.tp" "3 workers cannot be divided" -- \
  --nproc 3 --set parallel.tp=2
expect_error "sequence parallelism with pp" "parallel.sequence_parallel" "not combined with parallel.pp" -- \
  --nproc 4 --set model.layers=2 --set parallel.tp=2 --set parallel.pp=2 --set parallel.sequence_parallel=true
expect_error "missing corpus" "apt install fortunes" "$TMP/nocorpus" -- --nproc 1 --set data.path="$TMP/nocorpus"

# check_run NAME DIR WORKERS TP: the run's records (python checks them).
check_run() {
  $PY - "$2/metrics.jsonl" "$3" "$4" <<'PYEOF'
import json, math, sys
path, world, tp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
recs = [json.loads(l) for l in open(path)]
start = [r for r in recs if r["event"] == "start"]
steps = [r for r in recs if r["event"] == "step"]
evals = [r for r in recs if r["event"] == "eval"]
assert len(start) == 1 and start[0]["world"] == world and start[0]["tp"] == tp, start
assert [r["step"] for r in steps] == [2, 4, 6], [r["step"] for r in steps]
for r in steps:
    assert abs(r["bpb"] - r["loss"] / math.log(2)) < 1e-6, r
# eval_every = 4: one evaluation inside the epoch, one at the end of the run.
assert [r["step"] for r in evals] == [4, 6], [r["step"] for r in evals]
for r in evals:
    assert abs(r["val_bpb"] - r["val_loss"] / math.log(2)) < 1e-6, r
    assert 0 < r["val_bpb"] < 8.5, r
summary = [r for r in recs if r["event"] == "summary"]
assert summary and "val_bpb" in summary[-1], summary
PYEOF
}

# check_generate NAME CKPT: the prompt, then exactly N bytes, then a newline; the same seed
# gives the same text.
check_generate() {
  local name=$1 ckpt=$2
  "$CHORUS" generate "$ckpt" --prompt "The " --tokens 25 --seed 3 > "$TMP/$name.gen" 2> "$TMP/$name.err"
  local rc=$?
  if [ $rc -ne 0 ]; then fail "$name: generate exited $rc: $(cat "$TMP/$name.err")"; return; fi
  local size
  size=$(stat -c %s "$TMP/$name.gen")
  if [ "$size" -ne 30 ]; then fail "$name: generate wrote $size bytes, not 4 + 25 + 1"; return; fi
  if [ "$(head -c 4 "$TMP/$name.gen")" != "The " ]; then fail "$name: the output does not start with the prompt"; return; fi
  "$CHORUS" generate --seed 3 --tokens 25 --prompt "The " "$ckpt" > "$TMP/$name.again" 2>&1
  if ! cmp -s "$TMP/$name.gen" "$TMP/$name.again"; then fail "$name: the same seed gave other text"; return; fi
  pass "$name: generate prints the prompt and 25 bytes"
}

for run in "one 1 1" "tp2 2 2"; do
  set -- $run
  name=$1 workers=$2 tp=$3
  dir=$TMP/$name
  out=$("$CHORUS" train "$SOURCE/configs/gpt.toml" --nproc "$workers" "${TINY[@]}" --set parallel.tp="$tp" \
        --set output.dir="$dir" 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then fail "$name: train exited $rc: $out"; continue; fi
  grep -q "final validation: [0-9.]* bits per byte" <<<"$out" && pass "$name: prints the validation bits per byte" \
    || fail "$name: no final validation line: $out"
  check_run "$name" "$dir" "$workers" "$tp" && pass "$name: step records with bpb, eval records at steps 4 and 6" \
    || fail "$name: records"
  ckpt=$dir/checkpoints/ckpt-00000006.pt
  [ -f "$ckpt" ] || { fail "$name: no checkpoint $ckpt"; continue; }
  check_generate "$name" "$ckpt"
done
# The tp 2 shards form the same model as the tp 1 run (same seed and windows): same validation.
if [ -f "$TMP/one/metrics.jsonl" ] && [ -f "$TMP/tp2/metrics.jsonl" ]; then
  $PY - "$TMP/one/metrics.jsonl" "$TMP/tp2/metrics.jsonl" <<'PYEOF' && pass "tp 2 scores as tp 1" || fail "tp 2 differs from tp 1"
import json, sys
a, b = ([json.loads(l) for l in open(p) if '"eval"' in l] for p in sys.argv[1:3])
assert len(a) == len(b) == 2 and all(abs(x["val_loss"] - y["val_loss"]) < 1e-3 for x, y in zip(a, b)), (a, b)
PYEOF
fi

# generate's errors: status 1 (or 2 for usage) and a message naming what to do.
expect_gen() {
  local what=$1 want=$2 pat=$3; shift 3
  local out rc
  out=$("$CHORUS" generate "$@" 2>&1)
  rc=$?
  if [ $rc -ne "$want" ]; then fail "$what: exit $rc, not $want: $out"; return; fi
  grep -qF -- "$pat" <<<"$out" && pass "$what" || fail "$what: '$pat' not in: $out"
}
expect_gen "generate: missing checkpoint" 1 "does not exist" "$TMP/none.pt"
ckpt=$TMP/one/checkpoints/ckpt-00000006.pt
expect_gen "generate: tokens out of range" 2 "--tokens must be between 1 and" "$ckpt" --tokens 0
expect_gen "generate: bad temperature" 2 "--temperature" "$ckpt" --temperature hot
expect_gen "generate: two checkpoints" 2 "one CHECKPOINT" "$ckpt" "$ckpt"
mkdir -p "$TMP/bare/checkpoints" && cp "$ckpt" "$TMP/bare/checkpoints/" 2>/dev/null
expect_gen "generate: no config" 1 "$TMP/bare/config.toml" "$TMP/bare/checkpoints/ckpt-00000006.pt"
expect_gen "generate: missing --config" 1 "--config $TMP/no.toml" "$ckpt" --config "$TMP/no.toml"
printf '[model]\nname = "mlp"\n' > "$TMP/mlp.toml"
expect_gen "generate: not a GPT config" 1 'model.name = "mlp"' "$ckpt" --config "$TMP/mlp.toml"
printf '[data]\ndataset = "fortunes"\n[model]\nname = "gpt"\nlayers = 2\nembed = 16\nheads = 2\ncontext = 16\n' \
  > "$TMP/other.toml"
expect_gen "generate: checkpoint of another shape" 1 "does not load into the GPT" "$ckpt" --config "$TMP/other.toml"
if out=$("$CHORUS" help 2>&1) && grep -q "generate" <<<"$out"; then pass "help lists generate"; else fail "help: $out"; fi

# A pipeline of 4 stages (1F1B): each stage's share of its pipeline time with no free core is in
# the step records and, over the run, in the summary; the run warns, saying what to change,
# exactly when that share is a tenth or more (on a 2-core machine 4 workers share the cores).
if "$CHORUS" train "$SOURCE/configs/gpt.toml" "${TINY[@]}" --nproc 4 --set model.layers=4 --set parallel.pp=4 \
    --set parallel.schedule=1f1b --set parallel.micro_batches=2 --set output.dir="$TMP/pp4" \
    > "$TMP/pp4.out" 2> "$TMP/pp4.err"; then
  $PY - "$TMP/pp4/metrics.jsonl" "$TMP/pp4.err" <<'PYEOF' && pass "pp 4: cpu_wait recorded, warned about at a tenth" \
    || fail "pp 4 cpu_wait: $(tail -3 "$TMP/pp4.err")"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
err = open(sys.argv[2]).read()
steps = [r for r in recs if r["event"] == "step"]
summary = [r for r in recs if r["event"] == "summary"][-1]
for r in steps:
    for s in range(4):
        assert 0 <= r[f"cpu_wait_stage{s}"] <= 1, r
    assert "cpu_wait_stage4" not in r, r
share = summary["cpu_wait"]
assert 0 <= share <= 1, summary
warned = "waited for a free core" in err and "what to change" in err
assert warned == (share >= 0.10), (share, err[-600:])
print(f"cpu_wait {share:.2f}, warned {warned}")
PYEOF
else
  fail "pp 4 run: $(tail -5 "$TMP/pp4.err")"
fi

if [ $failures -gt 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all gpt CLI checks passed"
