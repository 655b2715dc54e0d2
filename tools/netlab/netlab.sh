#!/usr/bin/env bash
# netlab: a small network lab on one Linux machine. N "hosts" are network namespaces joined
# through a bridge in a switch namespace, each host's link shaped by tc, so multi-host chorus
# jobs (tcp transport, training) can run with a chosen bandwidth and latency. Needs root.
#
#   LAB-sw  bridge br0, ports h0 .. h(N-1)
#   LAB-hK  eth0 = 10.77.0.(K+1)/24, lo; egress shaped: [netem delay] -> tbf rate; its own
#           hostname LAB-hK (a UTS namespace) and /etc/hosts naming every host of the lab (a
#           mount namespace), held by a keeper process whose pid is in /run/netlab/LAB/hK.pid
#
# Only the lab's own namespaces are ever created, changed or removed; the machine's own
# interfaces and routes are never touched. See docs/netlab.md.
set -euo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUBNET=10.77.0
MAX_HOSTS=250
DEFAULT_RATE=100mbit
DEFAULT_DELAY=0ms
DEFAULT_MASTER_PORT=29500
STATE=/run/netlab

usage() {
  cat <<EOF
usage:
  $PROG up N [--rate RATE] [--delay DELAY] [--name LAB]
      create LAB-h0 .. LAB-h(N-1) (10.77.0.1 .. 10.77.0.N) and the switch LAB-sw
  $PROG run LAB K -- CMD...
      run CMD inside host K
  $PROG exec-all LAB [--master-port PORT] [--per-host R] -- CMD...
      run CMD on every host at once (R copies per host); if one fails, stop the others
  $PROG rsh HOST CMD...
      run the shell command CMD inside HOST (LAB-hK or its address): an rsh agent for
      mpirun (--mca plm_rsh_agent "$PROG rsh") and a way into a host for scripts
  $PROG check LAB [--bytes SIZE]
      measure round-trip time and throughput from host 0 to host 1
  $PROG down LAB
      remove the lab (what is already gone is ignored)
  $PROG with N [--rate RATE] [--delay DELAY] [--name LAB] [--master-port PORT] [--per-host R] -- CMD...
      up, exec-all CMD, then down (always); exits with CMD's status
  $PROG list
      show the labs that exist
  $PROG usable
      exit 0 when labs can be made here; else say why on stdout and exit 77 (the status
      ctest counts as skipped), for the scripts that test on a lab

options:
  --rate RATE     egress rate of every host: INTEGER followed by bit, kbit, mbit or gbit,
                  or 'none' for no rate limit (default: $DEFAULT_RATE)
  --delay DELAY   one-way delay added to every host's egress (netem): INTEGER followed by
                  us or ms; 0ms for none (default: $DEFAULT_DELAY). A round trip between two
                  hosts then takes about 2 x DELAY.
  --name LAB      lab name: letters, digits, '.', '_' and '-', at most 32 (default: netlab;
                  for 'with', netlab-PID)
  --master-port P the port MASTER_PORT names (default: $DEFAULT_MASTER_PORT)
  --per-host R    copies of CMD on each host, ranks K*R .. K*R+R-1 (default: 1)
  --bytes SIZE    bytes the throughput check sends, with K or M suffix (default: 8M)

Every host has its own hostname, LAB-hK, and an /etc/hosts that names all the lab's hosts.
exec-all and with give copy J of CMD on host K these variables:
  NETLAB_HOST=K NETLAB_HOSTS=N NETLAB_ADDR_0=$SUBNET.1 HOST_ADDR=$SUBNET.(K+1)
  RANK=K*R+J WORLD_SIZE=N*R LOCAL_RANK=J LOCAL_WORLD_SIZE=R GROUP_RANK=K
  MASTER_ADDR=$SUBNET.1 MASTER_PORT=P
  CHORUS_JOB_SECRET (the caller's, else one random value shared by all hosts)
run and rsh give NETLAB_HOST, NETLAB_HOSTS, NETLAB_ADDR_0 and HOST_ADDR.
EOF
}

die() { echo "$PROG: $*" >&2; exit 1; }
usage_error() { echo "$PROG: $*" >&2; echo "run '$PROG --help' for usage" >&2; exit 2; }

require_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it creates network namespaces)"
  command -v ip >/dev/null || die "the 'ip' command (iproute2) is not installed"
  command -v tc >/dev/null || die "the 'tc' command (iproute2) is not installed"
}

check_name() {
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$ ]] ||
    usage_error "bad lab name '$1': use letters, digits, '.', '_' and '-', at most 32"
}

# The lab's namespaces that exist now, one per line (switch and hosts).
lab_namespaces() {
  local lab=$1 ns
  while read -r ns _; do
    case $ns in
      "$lab-sw") echo "$ns" ;;
      "$lab-h"*) [[ ${ns#"$lab-h"} =~ ^[0-9]+$ ]] && echo "$ns" ;;
    esac
  done < <(ip netns list 2>/dev/null)
  return 0
}

# Number of hosts of an existing lab (hosts are numbered 0 .. N-1 without gaps).
host_count() {
  local lab=$1 n=0
  local -A have=()
  local ns
  while read -r ns; do have[$ns]=1; done < <(lab_namespaces "$lab")
  [ -n "${have[$lab-sw]:-}" ] || die "no lab '$lab' (no namespace $lab-sw); create it with '$PROG up N --name $lab'"
  while [ -n "${have[$lab-h$n]:-}" ]; do n=$((n + 1)); done
  [ $n -gt 0 ] || die "lab '$lab' has no hosts; remove it with '$PROG down $lab'"
  echo $n
}

check_host() {
  local lab=$1 k=$2 n
  [[ $k =~ ^[0-9]+$ ]] || usage_error "bad host number '$k'"
  n=$(host_count "$lab")
  [ "$k" -lt "$n" ] || die "lab '$lab' has hosts 0 .. $((n - 1)); there is no host $k"
}

# Rate in bits per second from 'INTEGER(bit|kbit|mbit|gbit)'.
rate_bits() {
  [[ $1 =~ ^([1-9][0-9]*)(bit|kbit|mbit|gbit)$ ]] ||
    usage_error "bad --rate '$1': give an integer followed by bit, kbit, mbit or gbit (e.g. 100mbit), or 'none'"
  case ${BASH_REMATCH[2]} in
    bit) echo "${BASH_REMATCH[1]}" ;;
    kbit) echo $((BASH_REMATCH[1] * 1000)) ;;
    mbit) echo $((BASH_REMATCH[1] * 1000000)) ;;
    gbit) echo $((BASH_REMATCH[1] * 1000000000)) ;;
  esac
}

# Delay in microseconds from 'INTEGER(us|ms)' or '0'.
delay_us() {
  [[ $1 =~ ^([0-9]+)(us|ms)?$ ]] ||
    usage_error "bad --delay '$1': give an integer followed by us or ms (e.g. 1ms), or 0ms"
  [ -n "${BASH_REMATCH[2]}" ] || [ "${BASH_REMATCH[1]}" -eq 0 ] ||
    usage_error "bad --delay '$1': give a unit, us or ms"
  case ${BASH_REMATCH[2]} in
    ms) echo $((10#${BASH_REMATCH[1]} * 1000)) ;;
    *) echo $((10#${BASH_REMATCH[1]})) ;;
  esac
}

# Kills what still runs in a namespace: SIGTERM, then SIGKILL after up to a second.
kill_namespace_processes() {
  local ns=$1 keep=${2:-} pids i
  pids=$(ip netns pids "$ns" 2>/dev/null | grep -v -x -F -e "${keep:-none}" || true)
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for i in $(seq 10); do
    pids=$(ip netns pids "$ns" 2>/dev/null | grep -v -x -F -e "${keep:-none}" || true)
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
}

teardown() {
  local lab=$1 ns
  for ns in $(lab_namespaces "$lab"); do
    kill_namespace_processes "$ns"
    ip netns del "$ns" 2>/dev/null || true
  done
  # Deleting a namespace destroys its veth ends, and a veth pair dies with either end. The
  # hosts' UTS and mount namespaces went with their keepers, killed above.
  rm -rf "${STATE:?}/$lab"
  return 0
}

# Host K's identity: its hostname LAB-hK (a UTS namespace) and an /etc/hosts that names every
# host of the lab after the machine's own entries (a mount namespace with it bound over
# /etc/hosts; /sys and every other mount are the machine's, so cgroups stay visible). A keeper
# process (sleep) lives in the host's network, UTS and mount namespaces and holds them; its pid
# is in $STATE/LAB/hK.pid, and entering the host is entering the keeper's namespaces (through
# /proc, which every host sees, so one host can enter another: mpirun's rsh agent does).
make_identities() {
  local lab=$1 n=$2 dir=$STATE/$1 k pid i
  mkdir -p "$dir"
  {
    grep -v -E "[[:space:]]$lab-h[0-9]+([[:space:]]|\$)" /etc/hosts 2>/dev/null || true
    echo "# netlab $lab"
    for ((k = 0; k < n; k++)); do echo "$SUBNET.$((k + 1)) $lab-h$k"; done
  } > "$dir/hosts"
  for ((k = 0; k < n; k++)); do
    nsenter --net="/run/netns/$lab-h$k" unshare --uts --mount --propagation private \
      sh -c "hostname '$lab-h$k' && mount --bind '$dir/hosts' /etc/hosts && exec sleep infinity" \
      </dev/null >/dev/null 2>&1 &
    pid=$!
    for i in $(seq 100); do
      [ "$(nsenter -t "$pid" -u hostname 2>/dev/null)" = "$lab-h$k" ] && break
      kill -0 "$pid" 2>/dev/null || die "the keeper of $lab-h$k exited at once (unshare --uts --mount failed?)"
      sleep 0.02
    done
    [ "$(nsenter -t "$pid" -u hostname 2>/dev/null)" = "$lab-h$k" ] || die "$lab-h$k did not get its hostname"
    echo "$pid" > "$dir/h$k.pid"
  done
}

# Runs "$@" inside host K of lab LAB: its network, hostname and /etc/hosts, in the caller's
# working directory. A lab made by an older netlab (no keeper) gets the network only.
enter_host() {
  local lab=$1 k=$2 pidfile=$STATE/$1/h$2.pid pid
  shift 2
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    [ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" = "sleep infinity " ] ||
      die "the process that holds $lab-h$k's hostname (pid $pid) is gone; recreate the lab ('$PROG down $lab', then up)"
    exec nsenter -t "$pid" --net --uts --mount --wd="$PWD" -- "$@"
  fi
  exec ip netns exec "$lab-h$k" "$@"
}

# Shapes host K's egress: netem delay as the root with tbf below it, or tbf alone.
shape_host() {
  local ns=$1 rate=$2 delay=$3
  local parent=(root handle 1:)
  if [ "$delay" -gt 0 ]; then
    local err
    if ! err=$(tc -n "$ns" qdisc add dev eth0 root handle 1: netem delay "${delay}us" limit 100000 2>&1); then
      if grep -q "qdisc kind is unknown" <<<"$err"; then
        die "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so --delay cannot be applied; use --delay 0ms, or a kernel with sch_netem"
      fi
      die "tc netem on $ns: $err"
    fi
    parent=(parent 1:1 handle 10:)
  fi
  [ "$rate" = none ] && return 0
  local bits burst
  bits=$(rate_bits "$rate")
  # Burst: 10 ms worth of the rate, at least 64 KiB so a GSO packet fits. The queue holds
  # 50 ms more before tbf drops, enough for TCP to keep the link busy.
  burst=$((bits / 8 / 100))
  [ $burst -ge 65536 ] || burst=65536
  tc -n "$ns" qdisc add dev eth0 "${parent[@]}" tbf rate "$rate" burst "$burst" latency 50ms ||
    die "tc tbf on $ns failed"
}

cmd_up() {
  local n="" rate=$DEFAULT_RATE delay=$DEFAULT_DELAY lab=netlab
  while [ $# -gt 0 ]; do
    case $1 in
      --rate) [ $# -ge 2 ] || usage_error "--rate needs a value"; rate=$2; shift 2 ;;
      --delay) [ $# -ge 2 ] || usage_error "--delay needs a value"; delay=$2; shift 2 ;;
      --name) [ $# -ge 2 ] || usage_error "--name needs a value"; lab=$2; shift 2 ;;
      -*) usage_error "up: unknown option '$1'" ;;
      *) [ -z "$n" ] || usage_error "up: unexpected argument '$1'"; n=$1; shift ;;
    esac
  done
  [ -n "$n" ] || usage_error "up: give the number of hosts, e.g. '$PROG up 4'"
  if ! [[ $n =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt $MAX_HOSTS ]; then
    usage_error "up: the number of hosts must be between 1 and $MAX_HOSTS, not '$n'"
  fi
  check_name "$lab"
  [ "$rate" = none ] || rate_bits "$rate" >/dev/null
  local delay_u
  delay_u=$(delay_us "$delay")
  require_root
  [ -z "$(lab_namespaces "$lab")" ] ||
    die "lab '$lab' already exists ($(lab_namespaces "$lab" | tr '\n' ' ')); remove it with '$PROG down $lab' or pick another --name"

  # From here on, a failure (or Ctrl-C) removes whatever was created.
  trap 'rc=$?; if [ $rc -ne 0 ]; then echo "$PROG: up failed; removing lab $lab" >&2; teardown "$lab"; fi' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  local sw=$lab-sw k ns
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
  for ((k = 0; k < n; k++)); do
    ns=$lab-h$k
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$sw" link add "h$k" type veth peer name eth0 netns "$ns"
    ip -n "$sw" link set "h$k" master br0 up
    ip -n "$ns" addr add "$SUBNET.$((k + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    shape_host "$ns" "$rate" "$delay_u"
  done
  make_identities "$lab" "$n"
  trap - EXIT INT TERM
  echo "$PROG: lab $lab is up: $n hosts $lab-h0 .. $lab-h$((n - 1)) ($SUBNET.1 .. $SUBNET.$n), rate $rate, delay $delay per hop"
}

cmd_down() {
  [ $# -eq 1 ] || usage_error "down: give the lab name, e.g. '$PROG down netlab'"
  check_name "$1"
  require_root
  teardown "$1"
}

cmd_list() {
  require_root
  ip netns list 2>/dev/null | awk '{ print $1 }' | sed -n 's/-sw$//p'
}

# Environment for host K of N (run and exec-all).
host_env() {
  local k=$1 n=$2
  echo "NETLAB_HOST=$k" "NETLAB_HOSTS=$n" "NETLAB_ADDR_0=$SUBNET.1" "HOST_ADDR=$SUBNET.$((k + 1))"
}

cmd_run() {
  if [ $# -lt 4 ] || [ "$3" != -- ]; then usage_error "run: usage is '$PROG run LAB K -- CMD...'"; fi
  local lab=$1 k=$2
  shift 3
  check_name "$lab"
  require_root
  check_host "$lab" "$k"
  local n
  n=$(host_count "$lab")
  # shellcheck disable=SC2046
  enter_host "$lab" "$k" env $(host_env "$k" "$n") "$@"
}

# rsh HOST CMD...: ssh's contract (the words of CMD joined by spaces, run by a shell on HOST),
# for mpirun's plm_rsh_agent. HOST is LAB-hK or a lab address; ssh options (-x, -o ...) that
# mpirun may pass before it are ignored.
cmd_rsh() {
  while [ $# -gt 0 ]; do
    case $1 in
      -o | -p | -l) shift 2 ;;
      -*) shift ;;
      *) break ;;
    esac
  done
  [ $# -ge 2 ] || usage_error "rsh: usage is '$PROG rsh HOST CMD...'"
  local host=$1 lab k ns
  shift
  require_root
  if [[ $host =~ ^(.+)-h([0-9]+)$ ]]; then
    lab=${BASH_REMATCH[1]}
    k=${BASH_REMATCH[2]}
  elif [[ $host =~ ^${SUBNET//./\.}\.([0-9]+)$ ]]; then
    k=$((BASH_REMATCH[1] - 1))
    # The address names a host in every lab; it must be unambiguous.
    local -a labs=()
    while read -r ns; do [ -n "$ns" ] && labs+=("$ns"); done < <(cmd_list)
    [ ${#labs[@]} -eq 1 ] || die "rsh: address $host is ambiguous or unknown with ${#labs[@]} labs up; name the host LAB-hK"
    lab=${labs[0]}
  else
    die "rsh: '$host' is not a netlab host (LAB-hK or $SUBNET.X)"
  fi
  check_name "$lab"
  check_host "$lab" "$k"
  local n
  n=$(host_count "$lab")
  # shellcheck disable=SC2046
  enter_host "$lab" "$k" env $(host_env "$k" "$n") /bin/sh -c "$*"
}

# Prefixes each line with a tag as it arrives.
tag_lines() { sed -u "s/^/$1 /"; }

# Stops every host's processes (all that run in the hosts' namespaces).
stop_hosts() {
  local lab=$1 n=$2 k
  for ((k = 0; k < n; k++)); do
    kill_namespace_processes "$lab-h$k" "$(cat "$STATE/$lab/h$k.pid" 2>/dev/null)" &
  done
  wait
}

EXEC_LAB=""
EXEC_N=0
exec_all_signal() {
  local sig=$1 code=$2
  trap '' INT TERM
  echo "$PROG: received SIG$sig; stopping all $EXEC_N hosts" >&2
  stop_hosts "$EXEC_LAB" "$EXEC_N"
  exit "$code"
}

cmd_exec_all() {
  local lab="" port=$DEFAULT_MASTER_PORT per=1
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    case $1 in
      --master-port) [ $# -ge 2 ] || usage_error "--master-port needs a value"; port=$2; shift 2 ;;
      --per-host) [ $# -ge 2 ] || usage_error "--per-host needs a value"; per=$2; shift 2 ;;
      -*) usage_error "exec-all: unknown option '$1'" ;;
      *) [ -z "$lab" ] || usage_error "exec-all: unexpected argument '$1'"; lab=$1; shift ;;
    esac
  done
  if [ -z "$lab" ] || [ $# -lt 2 ]; then usage_error "exec-all: usage is '$PROG exec-all LAB -- CMD...'"; fi
  shift
  if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    usage_error "--master-port must be between 1 and 65535, not '$port'"
  fi
  if ! [[ $per =~ ^[0-9]+$ ]] || [ "$per" -lt 1 ] || [ "$per" -gt 64 ]; then
    usage_error "--per-host must be between 1 and 64, not '$per'"
  fi
  check_name "$lab"
  require_root
  local n secret=${CHORUS_JOB_SECRET:-}
  n=$(host_count "$lab")
  [ -n "$secret" ] || secret=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')

  EXEC_LAB=$lab
  EXEC_N=$n
  trap 'exec_all_signal INT 130' INT
  trap 'exec_all_signal TERM 143' TERM

  local -a pids=()
  local -A host_of=()
  local k j tag
  for ((k = 0; k < n; k++)); do
    for ((j = 0; j < per; j++)); do
      tag="[h$k]"
      [ "$per" -eq 1 ] || tag="[h$k.$j]"
      # stdout and stderr each go through their own tagger; pipefail makes the group's status
      # the command's. The subshell's own stderr is muted so that a host stopped by stop_hosts
      # does not add bash's "Terminated" line.
      (
        trap - INT TERM
        set +e -o pipefail
        exec 4>&2 2>/dev/null
        # shellcheck disable=SC2046
        { (enter_host "$lab" "$k" env $(host_env "$k" "$n") RANK="$((k * per + j))" WORLD_SIZE="$((n * per))" \
            LOCAL_RANK="$j" LOCAL_WORLD_SIZE="$per" GROUP_RANK="$k" MASTER_ADDR="$SUBNET.1" MASTER_PORT="$port" \
            CHORUS_JOB_SECRET="$secret" "$@") 2>&1 1>&3 3>&- 4>&- | tag_lines "$tag" >&4; } 3>&1 |
          tag_lines "$tag"
      ) &
      pids+=($!)
      host_of[$!]=$k
    done
  done

  local done_pid rc pid
  while [ ${#pids[@]} -gt 0 ]; do
    rc=0
    wait -n -p done_pid "${pids[@]}" || rc=$?
    local -a running=()
    for pid in "${pids[@]}"; do [ "$pid" = "$done_pid" ] || running+=("$pid"); done
    pids=("${running[@]}")
    if [ $rc -ne 0 ]; then
      k=${host_of[$done_pid]}
      trap '' INT TERM
      stop_hosts "$lab" "$n"
      wait
      echo "$PROG: host $k ($SUBNET.$((k + 1))) exited with status $rc; stopped the other hosts ($((n - 1)))" >&2
      return "$rc"
    fi
  done
  trap - INT TERM
  return 0
}

cmd_with() {
  local -a up_args=() exec_args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    case $1 in
      --rate | --delay | --name)
        [ $# -ge 2 ] || usage_error "$1 needs a value"; up_args+=("$1" "$2"); shift 2 ;;
      --master-port | --per-host)
        [ $# -ge 2 ] || usage_error "$1 needs a value"; exec_args+=("$1" "$2"); shift 2 ;;
      -*) usage_error "with: unknown option '$1'" ;;
      *) up_args+=("$1"); shift ;;
    esac
  done
  [ $# -ge 2 ] || usage_error "with: usage is '$PROG with N [options] -- CMD...'"
  shift
  # Without --name the lab is named after this process, so that jobs can run side by side.
  local lab=netlab-$$ i
  for ((i = 0; i < ${#up_args[@]}; i++)); do
    [ "${up_args[$i]}" != --name ] || lab=${up_args[$((i + 1))]}
  done
  [[ " ${up_args[*]} " == *" --name "* ]] || up_args+=(--name "$lab")
  check_name "$lab"
  require_root
  [ -z "$(lab_namespaces "$lab")" ] ||
    die "lab '$lab' already exists; remove it with '$PROG down $lab' or pick another --name"
  # The lab is ours from here on: remove it however this ends, also when a signal arrives
  # while up is still building it. up runs in a subshell so that its own exit handling
  # (removing a half-built lab) stays its own.
  trap 'teardown "$lab"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  (cmd_up "${up_args[@]}")
  local rc=0
  cmd_exec_all "$lab" "${exec_args[@]}" -- "$@" || rc=$?
  exit $rc
}

cmd_check() {
  local lab="" bytes=8M
  while [ $# -gt 0 ]; do
    case $1 in
      --bytes) [ $# -ge 2 ] || usage_error "--bytes needs a value"; bytes=$2; shift 2 ;;
      -*) usage_error "check: unknown option '$1'" ;;
      *) [ -z "$lab" ] || usage_error "check: unexpected argument '$1'"; lab=$1; shift ;;
    esac
  done
  [ -n "$lab" ] || usage_error "check: give the lab name"
  [[ $bytes =~ ^([1-9][0-9]*)([KM]?)$ ]] || usage_error "bad --bytes '$bytes': e.g. 8M, 512K or 100000"
  case ${BASH_REMATCH[2]} in
    K) bytes=$((BASH_REMATCH[1] * 1024)) ;;
    M) bytes=$((BASH_REMATCH[1] * 1024 * 1024)) ;;
  esac
  check_name "$lab"
  require_root
  local n py=/usr/bin/python3
  [ -x $py ] || py=python3
  n=$(host_count "$lab")
  [ "$n" -ge 2 ] || die "check needs at least 2 hosts; lab '$lab' has $n"
  echo "shaping of h0 (tc): $(tc -n "$lab-h0" qdisc show dev eth0 | sed 's/ refcnt [0-9]*//' | paste -sd ';')"
  local port=5999
  ip netns exec "$lab-h1" timeout 120 "$py" "$HERE/probe.py" serve $port &
  local server=$!
  local rc=0
  ip netns exec "$lab-h0" timeout 120 "$py" "$HERE/probe.py" measure "$SUBNET.2" $port "$bytes" 50 || rc=$?
  wait $server || rc=$?
  [ $rc -eq 0 ] || die "check: the measurement between $lab-h0 and $lab-h1 failed (status $rc)"
}

# Whether a lab can be made here: root, the tools, and network namespaces.
cmd_usable() {
  [ $# -eq 0 ] || usage_error "usable takes no arguments"
  local skip="skipped:" probe="netlab-probe-$$"
  [ "$(id -u)" -eq 0 ] || { echo "$skip needs root (network namespaces)"; exit 77; }
  for tool in ip tc nsenter unshare; do
    command -v $tool >/dev/null || { echo "$skip $tool is not installed"; exit 77; }
  done
  ip netns add "$probe" 2>/dev/null || { echo "$skip ip netns is not available here"; exit 77; }
  ip netns del "$probe"
}

main() {
  [ $# -ge 1 ] || { usage >&2; exit 2; }
  local cmd=$1
  shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    run) cmd_run "$@" ;;
    exec-all) cmd_exec_all "$@" ;;
    with) cmd_with "$@" ;;
    check) cmd_check "$@" ;;
    list) cmd_list "$@" ;;
    usable) cmd_usable "$@" ;;
    rsh) cmd_rsh "$@" ;;
    -h | --help | help) usage ;;
    *) usage_error "unknown command '$cmd'" ;;
  esac
}

main "$@"
