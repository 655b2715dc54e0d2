#!/usr/bin/env bash
# tools/netlab/netlab.sh: labs of 2 and 4 namespace "hosts" come up shaped to 100 Mbit/s,
# `chorus bench collectives` runs one rank per host over tcp with exact results and no faster
# than the link allows, and every way out (down, a failing host, a signal, a failed up) leaves
# no namespace behind. Skipped (exit 77, reported as skipped by ctest) unless run as root with
# network namespaces available.
# usage: bash netlab_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=${1:?usage: netlab_test.sh BUILD_DIR SOURCE_DIR}
SRC=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
NETLAB=$SRC/tools/netlab/netlab.sh
CHORUS=$BUILD/chorus
PREFIX=nltest$$

[ "$(id -u)" -eq 0 ] || { echo "skipped: needs root (network namespaces)"; exit 77; }
command -v ip >/dev/null && command -v tc >/dev/null || { echo "skipped: iproute2 (ip, tc) is not installed"; exit 77; }
if ! ip netns add "$PREFIX-probe" 2>/dev/null; then echo "skipped: ip netns is not available here"; exit 77; fi
ip netns del "$PREFIX-probe"
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built (build the chorus target)"; exit 1; }

TMP=$(mktemp -d)
cleanup() {
  local ns lab
  for ns in $(ip netns list | awk '{ print $1 }' | grep "^$PREFIX-"); do ip netns del "$ns"; done
  rm -rf /run/netlab/"$PREFIX"-*
  rm -rf "$TMP"
}
trap cleanup EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# The namespaces of lab $1 that still exist.
leftovers() { ip netns list | awk '{ print $1 }' | grep -E "^$1-(sw|h[0-9]+)$"; }

# A delay needs the netem qdisc; some kernels lack it, and then `up --delay` must refuse
# cleanly and remove what it had created.
DELAY=1ms
test_delay_support() {
  local lab=$PREFIX-d out rc
  out=$("$NETLAB" up 2 --rate 100mbit --delay 1ms --name "$lab" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then
    pass "up with --delay 1ms (netem available)"
    "$NETLAB" down "$lab"
  elif echo "$out" | grep -q "this kernel has no netem qdisc"; then
    DELAY=0ms
    if [ -z "$(leftovers "$lab")" ] && echo "$out" | grep -q "up failed; removing lab $lab"; then
      pass "no netem in this kernel: up --delay refuses with a clear error and removes its half-built lab (the rest runs with --delay 0ms)"
    else
      fail "failed up left: $(leftovers "$lab" | tr '\n' ' ') / $out"
    fi
  else
    fail "up --delay 1ms: exit $rc: $out"
  fi
  [ -z "$(leftovers "$lab")" ] || fail "lab $lab still has namespaces after down"
}

# Measured shaping between h0 and h1 of lab $1.
check_link() {
  local lab=$1 out mbit rtt
  out=$("$NETLAB" check "$lab" --bytes 4M 2>&1) || { fail "check $lab: $out"; return; }
  echo "$out" | sed 's/^/  /'
  mbit=$(echo "$out" | awk '/^throughput_mbit/ { print $2 }')
  rtt=$(echo "$out" | awk '/^rtt_ms/ { print $5 }')
  if awk -v m="$mbit" 'BEGIN { exit !(m > 70 && m < 110) }'; then
    pass "check: h0 -> h1 carries $mbit Mbit/s at --rate 100mbit"
  else
    fail "check: throughput $mbit Mbit/s, expected about 100"
  fi
  if [ "$DELAY" = 1ms ]; then
    awk -v r="$rtt" 'BEGIN { exit !(r >= 1.8 && r < 20) }' && pass "check: median round trip $rtt ms with 1 ms each way" ||
      fail "check: median round trip $rtt ms, expected about 2 ms"
  fi
}

# Runs a 4K .. 4M all-reduce with one rank per host of an N-host lab; every row must be exact
# and the 4 MiB row no faster than the bandwidth-optimal bound 2(N-1)/N * 4 MiB at 100 Mbit/s.
test_lab() {
  local n=$1
  local lab=$PREFIX-$n out=$TMP/bench.$n rc
  "$NETLAB" up "$n" --rate 100mbit --delay "$DELAY" --name "$lab" >/dev/null || { fail "up $n"; return; }
  local addrs
  addrs=$("$NETLAB" exec-all "$lab" -- sh -c 'echo "$NETLAB_HOST $HOST_ADDR $RANK/$WORLD_SIZE $MASTER_ADDR"' | sort | tr '\n' ';')
  local want="" k
  for ((k = 0; k < n; k++)); do want+="[h$k] $k 10.77.0.$((k + 1)) $k/$n 10.77.0.1;"; done
  [ "$addrs" = "$want" ] && pass "$n hosts: addresses and torchrun-style variables" || fail "$n hosts: got '$addrs', want '$want'"
  # Each host has its own hostname, and every host resolves every other by name.
  local names
  names=$("$NETLAB" exec-all "$lab" -- sh -c "echo \$(hostname) \$(getent hosts $lab-h$((n - 1)) | awk '{ print \$1 }')" |
    sort | tr '\n' ';')
  want=""
  for ((k = 0; k < n; k++)); do want+="[h$k] $lab-h$k 10.77.0.$n;"; done
  [ "$names" = "$want" ] && pass "$n hosts: hostnames $lab-h0 .. and /etc/hosts naming them" ||
    fail "$n hosts: hostnames got '$names', want '$want'"
  [ "$(hostname)" != "$lab-h0" ] || fail "the machine's own hostname changed"
  ! grep -q "$lab-h0" /etc/hosts || fail "the machine's own /etc/hosts names the lab"
  [ "$n" -ne 2 ] || check_link "$lab"
  timeout 60 "$NETLAB" exec-all "$lab" -- "$CHORUS" bench collectives --op allreduce --transport tcp \
    --min-bytes 4K --max-bytes 4M --step-factor 32 --iters 3 --warmup 1 --timeout-ms 20000 >"$out" 2>&1
  rc=$?
  local rows
  rows=$(grep -E '^\[h0\] +[0-9]+ ' "$out")
  if [ $rc -ne 0 ] || [ "$(echo "$rows" | wc -l)" -ne 3 ] || echo "$rows" | awk '$9 != 0 { bad = 1 } END { exit !bad }'; then
    fail "$n hosts: bench exit $rc or wrong elements"; cat "$out"
  else
    pass "$n hosts: all-reduce 4K, 128K, 4M over tcp, every row wrong = 0"
  fi
  local t4 min_us
  t4=$(echo "$rows" | awk '$2 == 4194304 { print $6 }')
  min_us=$((2 * (n - 1) * 4194304 * 8 / n / 100))  # bits / (100 bit/us)
  if [ -n "$t4" ] && awk -v t="$t4" -v m="$min_us" 'BEGIN { exit !(t >= 0.9 * m) }'; then
    pass "$n hosts: 4 MiB all-reduce took $t4 us, the 100 Mbit/s link needs at least $min_us us"
  else
    fail "$n hosts: 4 MiB all-reduce took '$t4' us, faster than 100 Mbit/s allows ($min_us us): shaping is not applied"
  fi
  "$NETLAB" down "$lab"
  [ -z "$(leftovers "$lab")" ] && [ ! -e "/run/netlab/$lab" ] && pass "$n hosts: down removes every namespace" ||
    fail "$n hosts: left $(leftovers "$lab") $(ls -d "/run/netlab/$lab" 2>/dev/null)"
}

# Several ranks per host (--per-host), and rsh, the way into a host that mpirun's rsh agent uses.
test_ranks_per_host() {
  local lab=$PREFIX-r out want k j
  "$NETLAB" up 2 --rate none --name "$lab" >/dev/null || { fail "up 2 (ranks per host)"; return; }
  out=$("$NETLAB" exec-all "$lab" --per-host 3 -- sh -c 'echo $RANK/$WORLD_SIZE $LOCAL_RANK/$LOCAL_WORLD_SIZE $GROUP_RANK $(hostname)' |
    sort | tr '\n' ';')
  want=""
  for ((k = 0; k < 2; k++)); do
    for ((j = 0; j < 3; j++)); do want+="[h$k.$j] $((k * 3 + j))/6 $j/3 $k $lab-h$k;"; done
  done
  [ "$out" = "$want" ] && pass "--per-host 3: ranks 0 .. 5, local ranks and node ranks per host" ||
    fail "--per-host 3: got '$out', want '$want'"
  out=$("$NETLAB" rsh "$lab-h1" 'echo $(hostname) $HOST_ADDR' 2>&1)
  [ "$out" = "$lab-h1 10.77.0.2" ] && pass "rsh $lab-h1 runs a shell command inside host 1" || fail "rsh: got '$out'"
  out=$("$NETLAB" rsh -x "$lab-h0" echo '$(hostname)' 2>&1)
  [ "$out" = "$lab-h0" ] && pass "rsh skips ssh options and joins the command's words as ssh does" || fail "rsh -x: got '$out'"
  out=$("$NETLAB" rsh "$lab-h7" true 2>&1)
  [ $? -ne 0 ] && echo "$out" | grep -q "there is no host 7" && pass "rsh to a missing host names it" || fail "rsh h7: '$out'"
  "$NETLAB" down "$lab"
  [ -z "$(leftovers "$lab")" ] || fail "ranks per host: left $(leftovers "$lab")"
}

test_with_failing_command() {
  local lab=$PREFIX-f err=$TMP/with.err rc t0 t1
  t0=$(now_ms)
  timeout 30 "$NETLAB" with 3 --name "$lab" -- sh -c '[ "$NETLAB_HOST" = 1 ] && exit 5; sleep 30' >/dev/null 2>"$err"
  rc=$?
  t1=$(now_ms)
  local ok=1
  [ $rc -eq 5 ] || { ok=0; echo "  exit status $rc, expected 5"; }
  grep -q "host 1 (10.77.0.2) exited with status 5" "$err" || { ok=0; cat "$err"; }
  [ $((t1 - t0)) -lt 10000 ] || { ok=0; echo "  took $((t1 - t0)) ms: the sleeping hosts were not stopped"; }
  [ -z "$(leftovers "$lab")" ] || { ok=0; echo "  left: $(leftovers "$lab")"; }
  [ $ok -eq 1 ] && pass "with: a failing host stops the others, exit 5 names host 1, lab removed" || fail "with failing command"
}

test_with_sigterm() {
  local lab=$PREFIX-s pid rc
  "$NETLAB" with 2 --name "$lab" -- sleep 30 >/dev/null 2>"$TMP/term.err" &
  pid=$!
  for _ in $(seq 100); do
    [ -n "$(ip netns pids "$lab-h1" 2>/dev/null)" ] && break
    sleep 0.05
  done
  kill -TERM $pid
  wait $pid
  rc=$?
  local ok=1
  [ $rc -eq 143 ] || { ok=0; echo "  exit status $rc, expected 143"; cat "$TMP/term.err"; }
  [ -z "$(leftovers "$lab")" ] || { ok=0; echo "  left: $(leftovers "$lab")"; }
  [ $ok -eq 1 ] && pass "with: SIGTERM stops the hosts, removes the lab, exit 143" || fail "with sigterm"
}

test_usage_errors() {
  local out rc ok=1
  out=$("$NETLAB" up 2 --rate fast --name "$PREFIX-u" 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$out" | grep -q "bad --rate 'fast'" || { ok=0; echo "  --rate fast: $rc $out"; }
  out=$("$NETLAB" run "$PREFIX-none" 0 -- true 2>&1); rc=$?
  [ $rc -eq 1 ] && echo "$out" | grep -q "no lab '$PREFIX-none'" || { ok=0; echo "  missing lab: $rc $out"; }
  out=$("$NETLAB" down "$PREFIX-none" 2>&1); rc=$?
  [ $rc -eq 0 ] || { ok=0; echo "  down of a missing lab: $rc $out"; }
  [ -z "$(leftovers "$PREFIX-u")" ] || ok=0
  [ $ok -eq 1 ] && pass "usage errors exit 2 and name the problem; down of a missing lab is fine" || fail "usage errors"
}

t0=$(now_ms)
test_usage_errors
test_delay_support
test_lab 2
test_lab 4
test_ranks_per_host
test_with_failing_command
test_with_sigterm
echo "netlab_test: $(($(now_ms) - t0)) ms"

if [ $failures -ne 0 ]; then
  echo "netlab_test: $failures FAILED"
  exit 1
fi
echo "netlab_test: all passed"
