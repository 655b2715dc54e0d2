#!/usr/bin/env bash
# The parameter-server benchmark (chorus issue #5): Fashion-MNIST trained by `chorus train` with
# 4 workers and 2 parameter servers under each consistency mode, with and without a straggler.
#
#   main runs     bench/ps/cnn.toml on the first 30,000 training samples for 3 epochs, 4
#                 workers: all-reduce DDP (no server), then with 2 servers bsp, asp, ssp s=2,
#                 ssp s=4, bsp with 1 backup worker and asp with per-push momentum; each
#                 once as is and once with worker 1
#                 slowed 3x (train.straggler_factor = 3: it sleeps twice its compute time every
#                 step); then bsp, asp and ssp again with seed 1 (ACC_SEEDS), for the accuracy
#                 target
#   server load   bench/ps/mlp.toml, asp with 1 server and 1, 2, 4, 8 workers (32 samples per
#                 worker per step) for 1000 steps each: throughput and the server's busy
#                 fraction as the workers grow
#
# Writes bench/results/ps.md and ps.svg through bench/ps/report.py and keeps every run's
# command, output, exit status, wall time and metrics in BUILD_DIR/bench-ps/{full,quick}/.
# About 30 minutes on a 2-core machine (the slowed bsp and ssp runs take most of it).
#
# usage: bash bench/ps/run.sh BUILD_DIR [--quick]
#   --quick   a smoke run of the pipeline (about 2 minutes): the first 2560 train / 1000 test
#             samples, 1 epoch, the same 12 main runs, server load with 1, 2, 4 workers for 100
#             steps; the page goes to BUILD_DIR/bench-ps/quick.md
#   environment: CHORUS=path (default BUILD_DIR/chorus), EPOCHS=n and LIMIT_TRAIN=n (main runs;
#   LIMIT_TRAIN=0: the whole train split), CONFIGS="ddp bsp asp ssp2 ssp4 bsp-b1 asp-push" (main
#   runs: ddp, bsp, asp, ssp<s>, bsp-b<b>, asp-push: asp with the servers' momentum applied on
#   every push instead of once per round of N pushes), ACC_SEEDS="1" (bsp, asp and ssp run again, with and without the
#   straggler, with each of these seeds, and the accuracy target compares their means; "" for
#   none), SCALE_WORKERS="1 2 4 8", SCALE_STEPS=n, OUT=file.md (the plot goes next to it as .svg)
# Builds nothing. A failed run is named on stderr with its last error line and in the page; the
# others go on, and the script exits 1.
set -uo pipefail

usage() {
  echo "usage: bash bench/ps/run.sh BUILD_DIR [--quick]" >&2
  exit 2
}
[[ $# -ge 1 ]] || usage
build_arg=$1
shift
quick=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) quick=1 ;;
    *) usage ;;
  esac
  shift
done

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "$src" && realpath -m "$build_arg")
py=/usr/bin/python3
chorus=$(realpath -m "${CHORUS:-$build/chorus}")
workers=4
servers=2
straggler=1
factor=3

if [[ ! -x $chorus ]]; then
  echo "run.sh: $chorus is not an executable; build it (ninja -C $build chorus) or set CHORUS=path" >&2
  exit 2
fi
if ! grep -q '^\[ps\]' <<< "$("$chorus" train --help-config 2>/dev/null)"; then
  echo "run.sh: $chorus has no [ps] section (chorus train --help-config); rebuild it with the parameter server" >&2
  exit 2
fi

if [[ $quick -eq 1 ]]; then
  raw=$build/bench-ps/quick
  out=${OUT:-$build/bench-ps/quick.md}
  epochs=${EPOCHS:-1}
  limit_train=${LIMIT_TRAIN:-2560}
  limit_test=1000
  log_every=5
  read -ra scale_workers <<< "${SCALE_WORKERS:-1 2 4}"
  scale_steps=${SCALE_STEPS:-100}
else
  raw=$build/bench-ps/full
  out=${OUT:-$src/bench/results/ps.md}
  epochs=${EPOCHS:-3}
  limit_train=${LIMIT_TRAIN:-30000}
  limit_test=0
  log_every=10
  read -ra scale_workers <<< "${SCALE_WORKERS:-1 2 4 8}"
  scale_steps=${SCALE_STEPS:-1000}
fi
read -ra configs <<< "${CONFIGS:-ddp bsp asp ssp2 ssp4 bsp-b1 asp-push}"
read -ra acc_seeds <<< "${ACC_SEEDS-1}"
svg=${out%.md}.svg

# The --set arguments of one main-run configuration.
config_args() {
  local c=$1
  case $c in
    ddp) ;;
    bsp | asp) printf '%s\n' --set "ps.servers=$servers" --set "ps.mode=$c" ;;
    asp-push) printf '%s\n' --set "ps.servers=$servers" --set ps.mode=asp --set ps.async_momentum=push ;;
    ssp[0-9]*) printf '%s\n' --set "ps.servers=$servers" --set ps.mode=ssp --set "ps.staleness=${c#ssp}" ;;
    bsp-b[0-9]*) printf '%s\n' --set "ps.servers=$servers" --set ps.mode=bsp --set "ps.backup=${c#bsp-b}" ;;
    *)
      echo "run.sh: unknown configuration '$c' (ddp, bsp, asp, asp-push, ssp<s>, bsp-b<b>)" >&2
      return 2
      ;;
  esac
}
for c in "${configs[@]}"; do
  config_args "$c" > /dev/null || exit 2
done

rm -rf "$raw"
mkdir -p "$raw"
# Every run uses one copy of the binary, so a rebuild during the benchmark changes nothing.
cp "$chorus" "$raw/chorus" || exit 1
chorus_src=$chorus
chorus=$raw/chorus
failed=()

# bench_run NAME CMD... (bench/common/run_lib.sh): runs from the source dir and keeps the command,
# stdout, stderr, exit status and wall time in $raw.
source "$src/bench/common/run_lib.sh"

{
  echo "binary: $chorus_src ($(stat -c '%y' "$chorus_src" | cut -d. -f1))"
  echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); nproc $(nproc)"
  echo "before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$raw/machine.txt"
start=$(date +%s)

common=(--set "train.epochs=$epochs" --set "data.limit_train=$limit_train" --set "data.limit_test=$limit_test"
  --set "train.log_every=$log_every")
slow=(--set "train.straggler_workers=[$straggler]" --set "train.straggler_factor=$factor")
for c in "${configs[@]}"; do
  mapfile -t cargs < <(config_args "$c")
  bench_run "$c" "$chorus" train bench/ps/cnn.toml --nproc "$workers" "${common[@]}" "${cargs[@]}" \
    --set "output.dir=$raw/$c"
  bench_run "$c-slow" "$chorus" train bench/ps/cnn.toml --nproc "$workers" "${common[@]}" "${cargs[@]}" "${slow[@]}" \
    --set "output.dir=$raw/$c-slow"
done
# Repeats with other seeds for the accuracy target: one run's final accuracy moves by a few
# tenths of a point with the seed (and, asynchronous, with timing), so bsp, asp and ssp are
# compared on their mean over seeds 0 (the main runs) and ACC_SEEDS.
for k in "${acc_seeds[@]}"; do
  for c in "${configs[@]}"; do
    case $c in bsp | asp | ssp[0-9]*) ;; *) continue ;; esac
    mapfile -t cargs < <(config_args "$c")
    bench_run "$c-seed$k" "$chorus" train bench/ps/cnn.toml --nproc "$workers" "${common[@]}" "${cargs[@]}" \
      --set "train.seed=$k" --set "output.dir=$raw/$c-seed$k"
    bench_run "$c-slow-seed$k" "$chorus" train bench/ps/cnn.toml --nproc "$workers" "${common[@]}" "${cargs[@]}" "${slow[@]}" \
      --set "train.seed=$k" --set "output.dir=$raw/$c-slow-seed$k"
  done
done
for w in "${scale_workers[@]}"; do
  bench_run "scale-w$w" "$chorus" train bench/ps/mlp.toml --nproc "$w" --set ps.servers=1 --set ps.mode=asp \
    --set "train.batch_size=$((32 * w))" --set "train.max_steps=$scale_steps" --set "train.log_every=$log_every" \
    --set "output.dir=$raw/scale-w$w"
done
echo "after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$raw/machine.txt"
echo "wall: $(($(date +%s) - start))" >> "$raw/machine.txt"

command="bash bench/ps/run.sh $build_arg"
[[ $quick -eq 1 ]] && command+=" --quick"
for v in CHORUS EPOCHS LIMIT_TRAIN CONFIGS ACC_SEEDS SCALE_WORKERS SCALE_STEPS; do
  [[ -n ${!v:-} ]] && command="$v=\"${!v}\" $command"
done
report=(--raw "$raw" --configs "${configs[@]}" --acc-seeds "${acc_seeds[@]}" --scale-workers "${scale_workers[@]}" --scale-steps "$scale_steps"
  --workers "$workers" --servers "$servers" --straggler "$straggler" --factor "$factor" --epochs "$epochs"
  --limit-train "$limit_train" --limit-test "$limit_test" --command "$command" --out "$out" --svg "$svg")
[[ $quick -eq 1 ]] && report+=(--quick)
"$py" "$src/bench/ps/report.py" "${report[@]}"
status=$?
echo "wrote $out and $svg" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "run.sh: failed runs: ${failed[*]} (outputs in $raw)" >&2
  status=1
fi
exit $status
