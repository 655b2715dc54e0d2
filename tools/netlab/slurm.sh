#!/usr/bin/env bash
# slurm.sh: a small, real Slurm cluster on the hosts of a netlab lab (tools/netlab/netlab.sh),
# so that chorus jobs can be started with srun and sbatch as on a cluster. Needs root, a lab
# that is up, and Debian's slurm-wlm and munge (scripts/bootstrap.sh installs them).
#
#   host 0 (LAB-h0, 10.77.0.1): munged, slurmctld, slurmd     the controller and a node
#   host K (LAB-hK)           : slurmd                        a node named LAB-hK
#
# Every daemon runs inside its host's network, UTS and mount namespaces (entered through the
# host's keeper, as `netlab.sh run` does), so the nodes have their own names and addresses and
# see the machine's cgroups. Everything else is private to the lab, in /run/netlab/LAB/slurm/:
# the configuration (SLURM_CONF), the munge key and socket, the daemons' state, spool, pid and
# log files. The machine's own /etc/slurm, /etc/munge and munge socket are never read or
# changed, and no system service is started. See docs/netlab.md.
set -euo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NETLAB=$HERE/netlab.sh
STATE=/run/netlab
SUBNET=10.77.0
DEFAULT_CPUS=2
DEFAULT_TIMEOUT=30

usage() {
  cat <<EOF
usage:
  $PROG up LAB [--cpus N] [--timeout S]
      start Slurm on the hosts of netlab lab LAB: munged and slurmctld on host 0, a slurmd on
      every host (node LAB-hK, N CPUs, default $DEFAULT_CPUS), one partition 'lab' with all of
      them; waits until every node is idle (at most S seconds, default $DEFAULT_TIMEOUT)
  $PROG down LAB
      stop every Slurm daemon of LAB (and any job step still running) and remove its files
  $PROG run LAB [--host K] -- CMD...
      run CMD inside host K (default 0) with SLURM_CONF set, e.g. srun, sbatch, sinfo
  $PROG conf LAB
      print the path of LAB's slurm.conf (export SLURM_CONF=... inside a host)

Jobs run as the calling user (root) in the caller's working directory; the hosts share the
machine's files. 'netlab.sh down LAB' also ends whatever slurm.sh started.
EOF
}

die() { echo "$PROG: $*" >&2; exit 1; }
usage_error() { echo "$PROG: $*" >&2; echo "run '$PROG --help' for usage" >&2; exit 2; }

check_name() {
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$ ]] ||
    usage_error "bad lab name '$1': use letters, digits, '.', '_' and '-', at most 32"
}

require_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it enters the lab's namespaces)"
}

require_binaries() {
  local b missing=()
  for b in munged mungekey munge slurmctld slurmd sinfo scontrol srun sbatch; do
    command -v "$b" >/dev/null || missing+=("$b")
  done
  [ ${#missing[@]} -eq 0 ] ||
    die "missing ${missing[*]}; install slurm-wlm and munge (bash scripts/bootstrap.sh)"
}

# Number of hosts of a lab that is up: its keepers' pid files h0.pid .. h(N-1).pid.
host_count() {
  local lab=$1 n=0
  [ -f "$STATE/$lab/h0.pid" ] ||
    die "no netlab lab '$lab' (no $STATE/$lab/h0.pid); create it with 'netlab.sh up N --name $lab'"
  while [ -f "$STATE/$lab/h$n.pid" ]; do n=$((n + 1)); done
  echo $n
}

# Slurm's directory of a lab.
dir_of() { echo "$STATE/$1/slurm"; }

# Runs "$@" inside host K of LAB (network, hostname, /etc/hosts) with SLURM_CONF set.
on_host() {
  local lab=$1 k=$2
  shift 2
  "$NETLAB" run "$lab" "$k" -- env SLURM_CONF="$(dir_of "$lab")/slurm.conf" "$@"
}

write_conf() {
  local lab=$1 n=$2 cpus=$3 d k
  d=$(dir_of "$lab")
  {
    cat <<EOF
# Slurm on netlab lab $lab, written by $PROG up; removed by $PROG down.
ClusterName=$(tr 'A-Z.' 'a-z_' <<<"$lab")
SlurmctldHost=$lab-h0($SUBNET.1)
SlurmUser=root
SlurmdUser=root
# The lab's own munged (one key and one socket for every host: they share the file system).
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge.socket
StateSaveLocation=$d/state
SlurmctldPidFile=$d/slurmctld.pid
SlurmctldLogFile=$d/slurmctld.log
SlurmdSpoolDir=$d/spool-%n
SlurmdPidFile=$d/slurmd-%n.pid
SlurmdLogFile=$d/slurmd-%n.log
# The nodes declare more CPUs than the machine may have; take the configured ones.
SlurmdParameters=config_overrides
# No cgroups and no binding: the hosts share the machine's CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
PropagateResourceLimits=NONE
KillWait=5
# Finished jobs are forgotten after 5 s (not 300), so that sbatch --wait polls every 2 s.
MinJobAge=5
EOF
    for ((k = 0; k < n; k++)); do
      echo "NodeName=$lab-h$k NodeAddr=$SUBNET.$((k + 1)) CPUs=$cpus State=UNKNOWN"
    done
    echo "PartitionName=lab Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$d/slurm.conf"
}

# Prints the end of every log of the lab's Slurm (for a failure report).
log_tails() {
  local d f
  d=$(dir_of "$1")
  for f in "$d"/munged.log "$d"/munged.stderr "$d"/slurmctld.log "$d"/slurmctld.stderr "$d"/slurmd-*.log "$d"/slurmd-*.stderr; do
    [ -s "$f" ] || continue
    echo "---- ${f#"$d"/} (last 15 lines) ----"
    tail -n 15 "$f"
  done >&2
}

# Sends SIG to the process in pid file F when it still runs as NAME (so that a recycled pid is
# never hit); prints the pid it signalled. The daemons remove their pid files when they exit.
signal_pidfile() {
  local f=$1 name=$2 sig=$3 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null) || return 0
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 0
  # A daemon that exited but is not reaped yet (a zombie) is gone.
  [ "$(sed 's/.*) \([A-Z]\).*/\1/' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 0
  kill "-$sig" "$pid" 2>/dev/null && echo "$pid"
  return 0
}

# Pids of the Slurm and munge processes that run in the lab's host namespaces (also those that
# never wrote a pid file, and job steps' slurmstepd).
lab_daemons() {
  local lab=$1 n=$2 k pid
  for ((k = 0; k < n; k++)); do
    for pid in $(ip netns pids "$lab-h$k" 2>/dev/null); do
      case $(cat "/proc/$pid/comm" 2>/dev/null) in
        munged | slurmctld | slurmscriptd | slurmd | slurmstepd) echo "$pid" ;;
      esac
    done
  done
  return 0
}

# Stops every daemon: running jobs are cancelled first (briefly), then the daemons get SIGTERM
# through their pid files (munged last), and any Slurm or munge process still in the lab's
# namespaces after that (up to 8 s) gets SIGKILL.
stop_all() {
  local lab=$1 d n f name pids
  d=$(dir_of "$lab")
  [ -d "$d" ] || return 0
  n=0
  while [ -f "$STATE/$lab/h$n.pid" ]; do n=$((n + 1)); done
  if [ -f "$d/slurmctld.pid" ] && [ -S "$d/munge.socket" ] && [ "$n" -gt 0 ]; then
    local jobs
    jobs=$(timeout 5 "$NETLAB" run "$lab" 0 -- env SLURM_CONF="$d/slurm.conf" squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      timeout 5 "$NETLAB" run "$lab" 0 -- env SLURM_CONF="$d/slurm.conf" scancel $jobs >/dev/null 2>&1 || true
      for _ in $(seq 20); do
        [ -n "$(timeout 5 "$NETLAB" run "$lab" 0 -- env SLURM_CONF="$d/slurm.conf" squeue -h -o %i 2>/dev/null)" ] || break
        sleep 0.25
      done
    fi
  fi
  for f in "$d"/slurmd-*.pid; do signal_pidfile "$f" slurmd TERM >/dev/null; done
  signal_pidfile "$d/slurmctld.pid" slurmctld TERM >/dev/null
  for _ in $(seq 50); do
    pids=$(for f in "$d"/slurmd-*.pid "$d/slurmctld.pid"; do
      [ "$f" = "$d/slurmctld.pid" ] && name=slurmctld || name=slurmd
      signal_pidfile "$f" "$name" 0
    done)
    [ -n "$pids" ] || break
    sleep 0.1
  done
  # munged last: the others talk to it while they shut down.
  signal_pidfile "$d/munged.pid" munged TERM >/dev/null
  for _ in $(seq 30); do
    [ -n "$(signal_pidfile "$d/munged.pid" munged 0)" ] || break
    sleep 0.1
  done
  pids=$(lab_daemons "$lab" "$n")
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
  return 0
}

cmd_down() {
  [ $# -eq 1 ] || usage_error "down: give the lab name, e.g. '$PROG down lab'"
  check_name "$1"
  require_root
  stop_all "$1"
  rm -rf "$(dir_of "$1")"
}

UP_LAB=""
up_failed() {
  local rc=$?
  trap - EXIT
  [ $rc -ne 0 ] || return 0
  echo "$PROG: up failed; stopping Slurm on lab $UP_LAB" >&2
  log_tails "$UP_LAB"
  stop_all "$UP_LAB"
  rm -rf "$(dir_of "$UP_LAB")"
  exit $rc
}

cmd_up() {
  local lab="" cpus=$DEFAULT_CPUS timeout_s=$DEFAULT_TIMEOUT
  while [ $# -gt 0 ]; do
    case $1 in
      --cpus) [ $# -ge 2 ] || usage_error "--cpus needs a value"; cpus=$2; shift 2 ;;
      --timeout) [ $# -ge 2 ] || usage_error "--timeout needs a value"; timeout_s=$2; shift 2 ;;
      -*) usage_error "up: unknown option '$1'" ;;
      *) [ -z "$lab" ] || usage_error "up: unexpected argument '$1'"; lab=$1; shift ;;
    esac
  done
  [ -n "$lab" ] || usage_error "up: give the lab name, e.g. '$PROG up lab'"
  check_name "$lab"
  if ! [[ $cpus =~ ^[0-9]+$ ]] || [ "$cpus" -lt 1 ] || [ "$cpus" -gt 1024 ]; then
    usage_error "--cpus must be between 1 and 1024, not '$cpus'"
  fi
  if ! [[ $timeout_s =~ ^[0-9]+$ ]] || [ "$timeout_s" -lt 1 ]; then
    usage_error "--timeout must be a positive number of seconds, not '$timeout_s'"
  fi
  require_root
  require_binaries
  local n d k
  n=$(host_count "$lab")
  d=$(dir_of "$lab")
  [ ! -e "$d" ] || die "Slurm is already up on lab '$lab' ($d exists); stop it with '$PROG down $lab'"

  # From here on, a failure (or Ctrl-C) stops what was started and shows the logs.
  UP_LAB=$lab
  trap up_failed EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # munged wants every directory above its socket searchable, and the key readable by its
  # owner only.
  mkdir -p "$d/state"
  chmod 755 "$d"
  for ((k = 0; k < n; k++)); do mkdir -p "$d/spool-$lab-h$k"; done
  mungekey --create --keyfile="$d/munge.key" >/dev/null 2>&1 ||
    dd if=/dev/urandom of="$d/munge.key" bs=1024 count=1 status=none
  chmod 600 "$d/munge.key"
  write_conf "$lab" "$n" "$cpus"

  # Every daemon detaches; its stderr (errors before it opens its log) stays in NAME.stderr.
  on_host "$lab" 0 munged --socket="$d/munge.socket" --key-file="$d/munge.key" --pid-file="$d/munged.pid" \
    --log-file="$d/munged.log" --seed-file="$d/munged.seed" </dev/null >/dev/null 2>"$d/munged.stderr" ||
    die "munged did not start"
  on_host "$lab" 0 sh -c "munge -n -S '$d/munge.socket' | unmunge -S '$d/munge.socket'" >/dev/null 2>&1 ||
    die "munged does not answer on $d/munge.socket"

  on_host "$lab" 0 slurmctld -f "$d/slurm.conf" </dev/null >/dev/null 2>"$d/slurmctld.stderr" ||
    die "slurmctld did not start"
  local deadline=$((SECONDS + timeout_s))
  until on_host "$lab" 0 scontrol ping 2>/dev/null | grep -q 'is UP'; do
    [ $SECONDS -lt $deadline ] || die "slurmctld on $lab-h0 did not answer within ${timeout_s} s"
    sleep 0.2
  done

  for ((k = 0; k < n; k++)); do
    on_host "$lab" "$k" slurmd -f "$d/slurm.conf" -N "$lab-h$k" </dev/null >/dev/null 2>"$d/slurmd-$lab-h$k.stderr" ||
      die "slurmd on $lab-h$k did not start"
  done

  # The nodes register and turn idle (ReturnToService=2 takes them back after a restart too).
  local states
  while :; do
    states=$(on_host "$lab" 0 sinfo -h -N -o '%N %t' 2>/dev/null || true)
    [ "$(grep -c ' idle$' <<<"$states")" -eq "$n" ] && break
    if [ $SECONDS -ge $deadline ]; then
      echo "$PROG: the nodes of $lab are not all idle after ${timeout_s} s; sinfo says:" >&2
      sed 's/^/  /' <<<"${states:-(nothing)}" >&2
      exit 1
    fi
    sleep 0.2
  done
  trap - EXIT INT TERM
  echo "$PROG: Slurm is up on lab $lab: nodes $lab-h0 .. $lab-h$((n - 1)), $cpus CPUs each, partition 'lab';" \
    "controller $lab-h0 ($SUBNET.1); SLURM_CONF=$d/slurm.conf"
}

cmd_run() {
  local lab="" k=0
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    case $1 in
      --host) [ $# -ge 2 ] || usage_error "--host needs a value"; k=$2; shift 2 ;;
      -*) usage_error "run: unknown option '$1'" ;;
      *) [ -z "$lab" ] || usage_error "run: unexpected argument '$1'"; lab=$1; shift ;;
    esac
  done
  if [ -z "$lab" ] || [ $# -lt 2 ]; then usage_error "run: usage is '$PROG run LAB [--host K] -- CMD...'"; fi
  shift
  check_name "$lab"
  [[ $k =~ ^[0-9]+$ ]] || usage_error "bad host number '$k'"
  require_root
  [ -f "$(dir_of "$lab")/slurm.conf" ] || die "Slurm is not up on lab '$lab'; start it with '$PROG up $lab'"
  on_host "$lab" "$k" "$@"
}

cmd_conf() {
  [ $# -eq 1 ] || usage_error "conf: give the lab name"
  check_name "$1"
  [ -f "$(dir_of "$1")/slurm.conf" ] || die "Slurm is not up on lab '$1'"
  echo "$(dir_of "$1")/slurm.conf"
}

main() {
  [ $# -ge 1 ] || { usage >&2; exit 2; }
  local cmd=$1
  shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    run) cmd_run "$@" ;;
    conf) cmd_conf "$@" ;;
    -h | --help | help) usage ;;
    *) usage_error "unknown command '$cmd'" ;;
  esac
}

main "$@"
