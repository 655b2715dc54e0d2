#!/usr/bin/env bash
# `chorus pipeline show`: every grid docs/pipeline.md shows is what the command prints today
# (each ```text block that starts with a "$ chorus pipeline show ..." line is rerun and
# compared), every schedule prints for a few sizes, and bad input is a usage error (exit 2)
# naming the choices.
# usage: bash pipeline_cli_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=${1:?usage: pipeline_cli_test.sh BUILD_DIR SOURCE_DIR}
SOURCE=${2:?usage: pipeline_cli_test.sh BUILD_DIR SOURCE_DIR}
CHORUS=$BUILD/chorus
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built"; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# 1. The documented grids.
doc=$SOURCE/docs/pipeline.md
awk -v dir="$TMP" '
  /^```text$/ { inside = 1; first = 1; next }
  inside && /^```$/ { inside = 0; if (file) close(file); file = ""; next }
  inside && first { first = 0; if ($0 ~ /^\$ chorus pipeline show /) { n++; file = dir "/doc" n; print > file }; next }
  inside && file { print > file }
' "$doc"
blocks=$(ls "$TMP"/doc* 2>/dev/null | wc -l)
[ "$blocks" -ge 4 ] || fail "docs/pipeline.md shows $blocks pipeline show blocks; expected at least 4"
for f in "$TMP"/doc*; do
  [ -f "$f" ] || continue
  cmd=$(head -1 "$f" | sed 's/^\$ chorus //')
  tail -n +2 "$f" >"$f.want"
  # shellcheck disable=SC2086
  "$CHORUS" $cmd >"$f.got" 2>"$f.err"
  rc=$?
  if [ $rc -eq 0 ] && diff -u "$f.want" "$f.got" >"$f.diff"; then
    pass "docs/pipeline.md: chorus $cmd"
  else
    fail "docs/pipeline.md: chorus $cmd (exit $rc) prints other than the doc shows (diff doc command):"
    head -30 "$f.diff" "$f.err"
  fi
done

# 2. Every schedule, a few sizes: a grid with one row per rank and the bubble line.
for s in gpipe 1f1b zb-h1 interleaved pipedream 2bw; do
  for p in 1 2 5; do
    extra=()
    [ "$s" = interleaved ] && extra=(--chunks 2)
    if "$CHORUS" pipeline show --schedule "$s" --stages "$p" --micro-batches 7 "${extra[@]}" >"$TMP/out" 2>"$TMP/err"; then
      rows=$(grep -c '^rank [0-9]* |' "$TMP/out")
      if [ "$rows" -eq "$p" ] && grep -q '; bubble ' "$TMP/out" && grep -q '^theory (equal stages): bubble ' "$TMP/out"; then
        pass "$s with $p stages: $rows rows"
      else
        fail "$s with $p stages: $rows rows (want $p) or no bubble line"
        cat "$TMP/out"
      fi
    else
      fail "$s with $p stages exited $?"
      cat "$TMP/err"
    fi
  done
done

# The asynchronous schedules report the weight versions they stash; 2bw with an update every 8
# of 16 micro-batches keeps at most two.
"$CHORUS" pipeline show --schedule 2bw --stages 4 --micro-batches 16 --update-every 8 >"$TMP/out" 2>&1
if grep -q 'peak weight versions (stashed) 2, 2, 2, 1$' "$TMP/out"; then
  pass "2bw --update-every 8: at most two weight versions"
else
  fail "2bw --update-every 8: want 'peak weight versions (stashed) 2, 2, 2, 1':"
  cat "$TMP/out"
fi

# 3. Usage errors.
expect_usage() {
  local want=$1
  shift
  "$CHORUS" "$@" >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  if [ $rc -eq 2 ] && grep -qF -- "$want" "$TMP/err"; then
    pass "chorus $*: exit 2, says '$want'"
  else
    fail "chorus $*: exit $rc (want 2), stderr:"
    cat "$TMP/err"
  fi
}
expect_usage "gpipe, 1f1b, interleaved, zb-h1, pipedream, 2bw" pipeline show --schedule pipedream-2
expect_usage "--update-every is for --schedule 2bw" pipeline show --schedule 1f1b --update-every 3
expect_usage "needs --schedule interleaved" pipeline show --schedule 1f1b --chunks 2
expect_usage "--stages" pipeline show --stages 0
expect_usage "the one there is: show" pipeline draw
expect_usage "chorus pipeline show" pipeline
expect_usage "'x' is not a cost" pipeline show --costs 1,x,2
expect_usage "give three costs F,B,W" pipeline show --costs 1,2

# --costs: ZB-H1 at p = 2, m = 4 with F 60, B 70, W 40. Each stage works m (F + B + W) = 680;
# the fill and drain leave it idle (p - 1)(F + B - W) = 90, so the bubble is 90 / 770; with
# unit costs it is the formula's 1 / 13. 1F1B's bubble does not depend on the costs' ratio.
PY=/usr/bin/python3
json_field() { $PY -c "import json,sys; print(round(json.loads(sys.stdin.read())[sys.argv[1]], 4))" "$1"; }
got=$("$CHORUS" pipeline show --schedule zb-h1 --stages 2 --micro-batches 4 --costs 60,70,40 --json | json_field mean_bubble)
[ -n "$got" ] && [ "$got" = "$($PY -c 'print(round(90 / 770, 4))')" ] && pass "zb-h1 with costs 60,70,40: bubble $got" \
  || fail "zb-h1 with costs 60,70,40: bubble $got, want 90/770"
got=$("$CHORUS" pipeline show --schedule zb-h1 --stages 2 --micro-batches 4 --json | json_field mean_bubble)
[ -n "$got" ] && [ "$got" = "$($PY -c 'print(round(1 / 13, 4))')" ] && pass "zb-h1 with unit costs: bubble $got" \
  || fail "zb-h1 with unit costs: bubble $got, want 1/13"
got=$("$CHORUS" pipeline show --schedule 1f1b --stages 2 --micro-batches 4 --costs 60,110,0 --json | json_field mean_bubble)
[ "$got" = "0.2" ] && pass "1f1b with costs 60,110,0: bubble 0.2" || fail "1f1b with costs 60,110,0: bubble $got, want 0.2"

if [ $failures -ne 0 ]; then
  echo "pipeline_cli_test: $failures FAILED"
  exit 1
fi
echo "pipeline_cli_test: all passed"
