#!/usr/bin/env bash
# `chorus train` from the command line: config errors stop the job before any worker starts,
# with the key and the allowed values; a short 2-worker run through --nproc and through
# `chorus launch` writes metrics, a checkpoint and a valid Chrome trace; --resume continues;
# a fresh run refuses a used checkpoint folder; `chorus checkpoint upgrade` checks its input.
# usage: bash train_cli_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=${1:?usage: train_cli_test.sh BUILD_DIR SOURCE_DIR}
SOURCE=${2:?usage: train_cli_test.sh BUILD_DIR SOURCE_DIR}
CHORUS=$BUILD/chorus
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built"; exit 1; }
PY=/usr/bin/python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# expect_error DESCRIPTION PATTERN... -- ARGS: non-zero exit, every pattern in the output, and
# no worker started (no "[rank" line, no metrics).
expect_error() {
  local what=$1; shift
  local pats=()
  while [ "$1" != "--" ]; do pats+=("$1"); shift; done
  shift
  local out
  out=$("$CHORUS" train "$@" --set output.dir="$TMP/never" 2>&1)
  local rc=$?
  if [ $rc -eq 0 ]; then fail "$what: exit 0"; return; fi
  for p in "${pats[@]}"; do
    if ! grep -qF -- "$p" <<<"$out"; then fail "$what: '$p' not in: $out"; return; fi
  done
  if [ -e "$TMP/never" ]; then fail "$what: a worker started"; return; fi
  pass "$what"
}

expect_error "batch not divisible" "train.batch_size" "multiple of 3" -- --nproc 3
expect_error "unknown key" "unknown key" "train.epochs" -- --nproc 2 --set train.epoch=2
expect_error "bad choice" "optim.name" "sgd, adam, adamw" -- --nproc 2 --set optim.name=adamx
expect_error "wrong type" "train.epochs" -- --nproc 2 --set train.epochs=many
echo 'epochs = 2' > "$TMP/bad.toml"
expect_error "file key outside a section" "bad.toml:1" -- "$TMP/bad.toml" --nproc 2
expect_error "missing config file" "$TMP/none.toml" -- "$TMP/none.toml" --nproc 2
expect_error "bad data path" "/nonexistent" "dataset-fashion-mnist" -- --nproc 2 --set data.path=/nonexistent
expect_error "resume without checkpoint" "run without --resume" -- --nproc 2 --resume
expect_error "unknown flag" "--resum" -- --resum

SETS=(--set data.limit_train=1280 --set data.limit_test=500 --set train.epochs=2 --set train.batch_size=64
      --set output.progress=lines --set output.checkpoint_every=10 --set model.hidden=[64])
out=$("$CHORUS" train --nproc 2 "${SETS[@]}" --set output.dir="$TMP/run" --trace "$TMP/trace.json" 2>&1)
rc=$?
if [ $rc -ne 0 ]; then
  fail "2-worker run exited $rc: $out"
else
  grep -q "final test accuracy: 0\.[0-9]" <<<"$out" && pass "run prints the final accuracy" || fail "no final accuracy: $out"
  grep -q "metrics: $TMP/run/metrics.jsonl" <<<"$out" && pass "run says where the metrics went" || fail "no metrics path: $out"
  grep -q "checkpoint: $TMP/run/checkpoints/ckpt-00000040.pt" <<<"$out" && pass "run says where the checkpoint went" \
    || fail "no checkpoint path: $out"
  $PY - "$TMP/run/metrics.jsonl" "$TMP/trace.json" <<'PYEOF' && pass "metrics and trace are valid" || fail "metrics or trace invalid"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert lines[0]["event"] == "start" and lines[0]["world"] == 2, lines[0]
s = lines[-1]
assert s["event"] == "summary" and s["steps"] == 40 and 0 < s["test_acc"] <= 1, s
assert s["bytes_sent"] > 0 and s["samples_per_s"] > 0 and 0 <= s["overlap_frac"] <= 1, s
t = json.load(open(sys.argv[2]))["traceEvents"]
pids = {e["pid"] for e in t if e.get("ph") == "X"}
names = {e["name"] for e in t if e.get("ph") == "X"}
assert pids == {0, 1}, pids
assert "backward" in names and any(n.startswith("allreduce bucket") for n in names), names
PYEOF
  # Resume from the step-30 checkpoint continues to 40 and ends where the run did.
  mkdir -p "$TMP/cut/checkpoints"
  cp "$TMP/run/checkpoints/ckpt-00000030.pt" "$TMP/cut/checkpoints/"
  out=$("$CHORUS" train --nproc 2 "${SETS[@]}" --set output.dir="$TMP/cut" --resume 2>&1)
  # Checkpoints are data only (docs/train.md): a 52-byte header, then a table of entries and
  # their raw bytes, read here with nothing but the standard library. Every entry of the final
  # checkpoint (weights, momentum, loop state) must be bitwise equal to the run's.
  if grep -q "resuming from .*ckpt-00000030.pt at step 30" <<<"$out" && $PY - "$TMP/run/checkpoints/ckpt-00000040.pt" \
       "$TMP/cut/checkpoints/ckpt-00000040.pt" <<'PYEOF'
import hashlib, struct, sys
def entries(path):
    data = open(path, "rb").read()
    magic, version, length = struct.unpack_from("<8sIQ", data)
    assert magic == b"CHORUSCK" and version == 2 and len(data) == 52 + length, (magic, version, length)
    payload = data[52:]
    assert hashlib.sha256(payload).digest() == data[20:52]
    count, _ = struct.unpack_from("<II", payload)
    at, out = 8, {}
    for _ in range(count):
        (n,) = struct.unpack_from("<H", payload, at)
        name = payload[at + 2:at + 2 + n].decode()
        at += 2 + n
        dtype, rank = struct.unpack_from("<BB", payload, at)
        at += 2 + 8 * rank
        offset, size = struct.unpack_from("<QQ", payload, at)
        at += 16
        out[name] = payload[offset:offset + size]
    return out
a, b = entries(sys.argv[1]), entries(sys.argv[2])
assert any(k.startswith("params/") for k in a) and any(k.startswith("optim/0/0/") for k in a), sorted(a)
assert a.keys() == b.keys(), (sorted(a), sorted(b))
bad = [k for k in a if a[k] != b[k]]
assert not bad, "differ: %s" % bad
PYEOF
  then
    pass "--resume continues bit-exactly (every tensor of the final checkpoint equal)"
  else
    fail "--resume: $out"
  fi
fi

# A fresh run into a folder that holds another run's checkpoints stops and says what to do.
out=$("$CHORUS" train --nproc 2 "${SETS[@]}" --set output.dir="$TMP/run" 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -qF "$TMP/run/checkpoints holds" <<<"$out" && grep -qF -- "--set output.overwrite=true" <<<"$out"; then
  pass "a fresh run refuses another run's checkpoint folder"
else
  fail "fresh run into a used folder ($rc): $out"
fi
# chorus checkpoint upgrade: a current file needs none; the command takes two files.
out=$("$CHORUS" checkpoint upgrade "$TMP/run/checkpoints/ckpt-00000040.pt" "$TMP/up.pt" 2>&1)
rc=$?
[ $rc -eq 1 ] && grep -q "already version 2" <<<"$out" && [ ! -e "$TMP/up.pt" ] && pass "upgrade of a current file" \
  || fail "upgrade of a current file ($rc): $out"
out=$("$CHORUS" checkpoint upgrade "$TMP/up.pt" 2>&1)
rc=$?
[ $rc -eq 2 ] && grep -q "two files, OLD NEW" <<<"$out" && pass "upgrade usage" || fail "upgrade usage ($rc): $out"

# The same job through `chorus launch` (the rank joins the launcher's job).
out=$("$CHORUS" launch -n 2 "$CHORUS" train "${SETS[@]}" --set train.epochs=1 --set output.dir="$TMP/launched" 2>&1)
rc=$?
[ $rc -eq 0 ] && grep -q "final test accuracy" <<<"$out" && pass "runs under chorus launch" || fail "under launch ($rc): $out"

[ $failures -eq 0 ] && echo "all passed" || echo "$failures failed"
[ $failures -eq 0 ]
