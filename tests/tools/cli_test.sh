#!/usr/bin/env bash
# The `chorus` command line itself: help for every command, `chorus env`, and the messages for
# unknown commands and flags.
# usage: bash cli_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=${1:?usage: cli_test.sh BUILD_DIR SOURCE_DIR}
SOURCE=${2:?usage: cli_test.sh BUILD_DIR SOURCE_DIR}
CHORUS=$BUILD/chorus
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built"; exit 1; }

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# expect RC PATTERN... -- COMMAND...: runs COMMAND; checks its exit status and that its
# output (stdout and stderr) matches every grep -E PATTERN.
expect() {
  local want=$1; shift
  local patterns=()
  while [ "$1" != "--" ]; do patterns+=("$1"); shift; done
  shift
  local out rc p
  out=$("$@" 2>&1); rc=$?
  if [ $rc -ne "$want" ]; then
    fail "\`${*#$BUILD/}\` exited $rc, expected $want"; echo "$out" | head -20; return
  fi
  for p in "${patterns[@]}"; do
    if ! echo "$out" | grep -qE -- "$p"; then
      fail "\`${*#$BUILD/}\`: output lacks /$p/"; echo "$out" | head -20; return
    fi
  done
  pass "\`chorus ${*:2}\` exits $want and says what it should"
}

expect 0 '^usage: chorus <command>' 'launch' 'bench collectives' 'env' -- "$CHORUS" --help
expect 0 '^usage: chorus <command>' -- "$CHORUS" help
expect 2 '^usage: chorus <command>' -- "$CHORUS"
expect 0 'usage: chorus launch -n N' '-n, --nproc N' '--transport NAME' '--timeout-ms MS' '--store-addr ADDR' \
  '--grace-ms MS' 'CHORUS_JOB_SECRET' -- "$CHORUS" help launch
expect 0 'usage: chorus launch -n N' -- "$CHORUS" launch --help
expect 0 'usage: chorus bench collectives' '--op OP' '--ranks N' '--algo ALGO' '--min-bytes SIZE' '--json' \
  'busbw' -- "$CHORUS" help bench collectives
expect 0 'usage: chorus bench collectives' -- "$CHORUS" bench collectives --help
expect 0 'usage: chorus bench <benchmark>' 'collectives' -- "$CHORUS" bench --help
expect 2 'which benchmark' -- "$CHORUS" bench
expect 0 'usage: chorus env' -- "$CHORUS" help env
expect 2 "unknown command 'lanch' \(did you mean launch\?\)" 'launch, bench, env, help' -- "$CHORUS" lanch
expect 2 "unknown command 'frobnicate'; the choices are" -- "$CHORUS" frobnicate
expect 2 "unknown benchmark 'colectives' \(did you mean collectives\?\)" -- "$CHORUS" bench colectives
expect 2 "unknown command 'nope'" -- "$CHORUS" help nope
expect 2 "'--verbose' is not a command; flags come after the command" -- "$CHORUS" --verbose
expect 2 'unknown flag --all' 'Valid flags: -h/--help' -- "$CHORUS" env --all
# Message sizes are checked before any rank starts: no overflow, no 0, min <= max, a cap.
expect 2 'over the limit of 4G' -- "$CHORUS" bench collectives --min-bytes 18446744073709551615 \
  --max-bytes 18446744073709551615
expect 2 "'99999999999999999999G' is too large a size" -- "$CHORUS" bench collectives --max-bytes 99999999999999999999G
expect 2 '--max-bytes 5G is over the limit of 4G' -- "$CHORUS" bench collectives --max-bytes 5G
expect 2 '--min-bytes must be at least 1' -- "$CHORUS" bench collectives --min-bytes 0
expect 2 'need --min-bytes <= --max-bytes, got 8M' -- "$CHORUS" bench collectives --min-bytes 8M --max-bytes 4M

# chorus env lists every variable of the table in common/env.cc, with values and defaults.
env_out=$(env -u CHORUS_TIMEOUT_MS CHORUS_TRANSPORT=tcp CHORUS_JOB_SECRET=topsecretvalue "$CHORUS" env 2>&1)
rc=$?
ok=1
[ $rc -eq 0 ] || { ok=0; echo "  exit $rc"; }
names=$(grep -oE '\{"CHORUS_[A-Z0-9_]+"' "$SOURCE/src/chorus/common/env.cc" | tr -d '{"')
[ -n "$names" ] || { ok=0; echo "  found no variables in env.cc"; }
for name in $names; do
  echo "$env_out" | grep -qE "^$name " || { ok=0; echo "  $name missing"; }
done
echo "$env_out" | head -1 | grep -qE '^NAME +VALUE +DEFAULT +MEANING' || { ok=0; echo "  no header"; }
echo "$env_out" | grep -qE '^CHORUS_TRANSPORT +tcp +auto +Transport' || { ok=0; echo "  CHORUS_TRANSPORT row wrong"; }
echo "$env_out" | grep -qE '^CHORUS_TIMEOUT_MS +- +300000 ' || { ok=0; echo "  CHORUS_TIMEOUT_MS row wrong"; }
echo "$env_out" | grep -qE '^CHORUS_JOB_SECRET +\(set\) ' || { ok=0; echo "  secret row wrong"; }
echo "$env_out" | grep -q topsecretvalue && { ok=0; echo "  chorus env printed the job secret"; }
[ $ok -eq 1 ] && pass "chorus env: every variable of env.cc with its value and default; the secret hidden" \
  || { fail "chorus env"; echo "$env_out"; }

if [ $failures -ne 0 ]; then
  echo "cli_test: $failures FAILED"
  exit 1
fi
echo "cli_test: all passed"
