#!/usr/bin/env bash
# The model-parallel benchmark (issue 12's "Measure" list): `chorus train` on the byte-level GPT
# at tensor-parallel sizes 1, 2 and 4 and layer-wise pp = 2, against the same GPT in eager
# PyTorch (bench/model-parallel/gpt_torch.py). Five sections, one per measurement:
#
#   memory  bench/model-parallel/memory.toml (embed 512, 4 layers) for a few steps at tp = 1, 2, 4:
#           per-rank parameter, gradient and optimizer bytes (sharded and replicated) and peak RSS
#   oom     bench/model-parallel/oom.toml (embed 1024, 6 layers) at tp = 1 and tp = 4, each under
#           the same per-process address-space limit (prlimit --as on `chorus train`, inherited by
#           every worker it forks): tp = 1 must stop with an out-of-memory error, tp = 4 must train
#   comm    bench/model-parallel/small.toml for a few steps at tp = 2 and 4 (dp = 1, no
#           evaluation): tp bytes per step against the formula derived from the code
#   speed   small.toml, REPEATS times, alternating: chorus tp=1 against gpt_torch.py at 1 thread,
#           then both at 2 threads; then chorus tp=2 and layer-wise pp=2 (2 workers x 1 thread)
#   bpb     small.toml for BPB_STEPS steps: chorus tp=1 (2 threads), chorus tp=2 (2 workers x 1
#           thread) and gpt_torch.py (2 threads), validation bits per byte on the same windows
#
# About 30 minutes on an idle 2-core machine with the defaults (the script prints its plan first);
# other work on the machine slows the 2-thread runs many times over: run it alone.
#
# Writes bench/results/model-parallel.md through bench/model-parallel/report.py (naming the
# commit, the commands and the machine) and keeps every run's command, output, exit status and
# metrics in BUILD_DIR/bench-model-parallel/. Every run uses one copy of the chorus binary there.
#
# usage: bash bench/model-parallel/run.sh BUILD_DIR [--quick]
#   --quick   a smoke run of the pipeline (about 2-3 minutes on an idle machine): few steps, one
#             repetition, the bpb runs at 1 thread per process; the page goes to
#             BUILD_DIR/bench-model-parallel/model-parallel-quick.md
#   environment: REPEATS=3 (speed; at least 3 for the full page), SECTIONS="memory oom comm speed bpb",
#   SPEED_STEPS=50, BPB_STEPS=800, OOM_LIMIT_MB=<address-space limit per process, MiB>,
#   CHORUS=path (default BUILD_DIR/chorus, built here), OUT=file.md
# Builds only the `chorus` target of an existing build dir (none with CHORUS). A run that fails
# is named on stderr and in the page, the others go on, and the script exits 1.
set -uo pipefail

usage() {
  echo "usage: bash bench/model-parallel/run.sh BUILD_DIR [--quick]" >&2
  exit 2
}
[[ $# -ge 1 && $# -le 2 ]] || usage
build_arg=$1
quick=0
if [[ $# -eq 2 ]]; then
  [[ $2 == --quick ]] || usage
  quick=1
fi

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "$src" && realpath -m "$build_arg")
here=bench/model-parallel
py=/usr/bin/python3
raw=$build/bench-model-parallel
read -ra sections <<< "${SECTIONS:-memory oom comm speed bpb}"
for s in "${sections[@]}"; do
  [[ $s =~ ^(memory|oom|comm|speed|bpb)$ ]] || { echo "run.sh: SECTIONS: unknown section '$s' (memory oom comm speed bpb)" >&2; exit 2; }
done
if [[ $quick -eq 1 ]]; then
  out=${OUT:-$raw/model-parallel-quick.md}
  repeats=${REPEATS:-1}
  speed_steps=${SPEED_STEPS:-4}
  bpb_steps=${BPB_STEPS:-8}
  bpb_threads=1  # a loaded machine slows 2-thread runs many times over; the smoke run stays short
  mem_steps=2
  oom_steps=1
  comm_steps=2
else
  out=${OUT:-$src/bench/results/model-parallel.md}
  repeats=${REPEATS:-3}
  speed_steps=${SPEED_STEPS:-50}
  bpb_steps=${BPB_STEPS:-800}
  bpb_threads=2
  mem_steps=3
  oom_steps=2
  comm_steps=5
fi
# The address-space limit of every process of the out-of-memory runs, between what a worker of
# oom.toml maps at its peak at tp = 4 (VmPeak about 1.5 GiB) and at tp = 1 (about 2.7 GiB),
# measured on this machine (2 cores, LibTorch 1.13; the launcher itself maps about 1 GiB).
oom_limit_mb=${OOM_LIMIT_MB:-2048}
for v in repeats speed_steps bpb_steps oom_limit_mb; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: $v=${!v} is not a positive count" >&2; exit 2; }
done

if ! "$py" -c 'import torch' > /dev/null 2>&1; then
  echo "run.sh: $py cannot import torch (install python3-torch)" >&2
  exit 2
fi
if [[ -n ${CHORUS:-} ]]; then
  chorus_src=$(realpath -m "$CHORUS")
else
  if [[ ! -f $build/build.ninja && ! -f $build/Makefile ]]; then
    echo "run.sh: $build is not a configured build dir; run: cmake -S $src -B $build -G Ninja" >&2
    exit 2
  fi
  cmake --build "$build" --target chorus -j2 || exit 1
  chorus_src=$build/chorus
fi
[[ -x $chorus_src ]] || { echo "run.sh: $chorus_src is not an executable" >&2; exit 2; }
if [[ ! -d /usr/share/games/fortunes ]]; then
  echo "run.sh: /usr/share/games/fortunes is missing (apt install fortunes)" >&2
  exit 2
fi

# The planned time, from runs on this 2-core machine: seconds to start and finish a run, and per
# step (in hundredths of a second where a step is shorter).
has() { [[ " ${sections[*]} " == *" $1 "* ]]; }
planned=0
has memory && planned=$((planned + 3 * (5 + 2 * mem_steps)))
has oom && planned=$((planned + 11 + 10 + 13 * oom_steps))
has comm && planned=$((planned + 2 * (4 + comm_steps)))
# per repetition, seconds per step: chorus 0.55 and PyTorch 0.7 at 1 thread, 0.35 and 0.4 at 2
# threads, tp=2 0.6, pp=2 0.7
has speed && planned=$((planned + repeats * (6 * 3 + speed_steps * (55 + 70 + 35 + 40 + 60 + 70) / 100)))
[[ $bpb_threads -eq 2 ]] && bpb_hundredths=$((35 + 60 + 40)) || bpb_hundredths=$((55 + 60 + 70))
has bpb && planned=$((planned + 3 * 10 + bpb_steps * bpb_hundredths / 100))
planned_text="about $(((planned + 59) / 60)) min ($planned s) on 2 cores"
echo "run.sh: planned run time $planned_text: sections ${sections[*]}, speed $repeats x $speed_steps steps, bpb $bpb_steps steps" >&2

rm -rf "$raw"
mkdir -p "$raw"
cp "$chorus_src" "$raw/chorus" || exit 1
# Paths in the commands are relative to the source dir (where every run starts) when inside it.
rel() { local p=$1; echo "${p#"$src"/}"; }
chorus=$(rel "$raw/chorus")
[[ $chorus == /* ]] || chorus=./$chorus
torch_args=()
mapfile -t torch_args < <("$py" "$src/$here/report.py" torch-args "$src/$here/small.toml") || exit 1
[[ ${#torch_args[@]} -gt 0 ]] || { echo "run.sh: report.py torch-args printed nothing" >&2; exit 1; }
# The speed runs score only a few validation windows (after the timed steps; it only shortens them).
torch_speed_args=()
for ((i = 0; i < ${#torch_args[@]}; i++)); do
  if [[ ${torch_args[$i]} == --eval-windows ]]; then
    i=$((i + 1))
  else
    torch_speed_args+=("${torch_args[$i]}")
  fi
done
failed=()
began=$(date +%s)

# bench_run NAME CMD... (bench/common/run_lib.sh): runs from the source dir and keeps the command,
# stdout, stderr, exit status and wall time in $raw.
source "$src/bench/common/run_lib.sh"
BENCH_ERROR_LINE=error  # a rank's own error line; the launcher's closing line only points at it
# chorus_run NAME CONFIG WORKERS SETTINGS...: chorus train with its output in RAW/NAME.
chorus_run() {
  local name=$1 config=$2 workers=$3
  shift 3
  bench_run "$name" "$chorus" train "$here/$config" --nproc "$workers" "$@" --set "output.dir=$(rel "$raw/$name")"
}

{
  echo "binary: $chorus_src ($(stat -c '%y' "$chorus_src" | cut -d. -f1))"
  echo "before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "address-space limit: $oom_limit_mb MiB"
  echo "planned: $planned_text"
} > "$raw/machine.txt"

if has memory; then
  for k in 1 2 4; do
    chorus_run "mem-tp$k" memory.toml "$k" --set "parallel.tp=$k" --set "train.max_steps=$mem_steps"
  done
fi

if has oom; then
  # prlimit sets RLIMIT_AS on `chorus train`, the launcher; fork and exec keep it, so every worker
  # has its own limit of the same size (a limit per process, not shared by the job).
  for k in 1 4; do
    bench_run "oom-tp$k" prlimit --as=$((oom_limit_mb * 1024 * 1024)) -- "$chorus" train "$here/oom.toml" --nproc "$k" \
      --set "parallel.tp=$k" --set "train.max_steps=$oom_steps" --set "output.dir=$(rel "$raw/oom-tp$k")"
  done
  # tp = 1 is meant to fail: only a zero exit status or a signal is a failure of the run itself.
  rc=$(cat "$raw/oom-tp1.rc")
  if [[ $rc -ne 0 && $rc -lt 128 ]]; then
    echo "run.sh: oom-tp1 failing is this section's expected result (report.py checks that it names memory)" >&2
    kept=()
    for f in "${failed[@]}"; do [[ $f == oom-tp1 ]] || kept+=("$f"); done
    failed=("${kept[@]}")
  fi
fi

if has comm; then
  for k in 2 4; do
    chorus_run "comm-tp$k" small.toml "$k" --set "parallel.tp=$k" --set "train.max_steps=$comm_steps" \
      --set train.eval=false --set train.log_every=1
  done
fi

if has speed; then
  # One repetition runs every setting once, back to back, so slow phases of the machine hit
  # all sides alike.
  for r in $(seq 1 "$repeats"); do
    for t in 1 2; do
      chorus_run "speed-chorus_t$t-r$r" small.toml 1 --set "train.threads=$t" --set "train.max_steps=$speed_steps" \
        --set train.eval=false
      bench_run "speed-torch_t$t-r$r" "$py" "$here/gpt_torch.py" "${torch_speed_args[@]}" --steps "$speed_steps" \
        --threads "$t" --eval-windows 8
    done
    chorus_run "speed-chorus_tp2-r$r" small.toml 2 --set parallel.tp=2 --set train.threads=1 \
      --set "train.max_steps=$speed_steps" --set train.eval=false
    chorus_run "speed-chorus_pp2-r$r" small.toml 2 --set parallel.pp=2 --set train.threads=1 \
      --set "train.max_steps=$speed_steps" --set train.eval=false
  done
fi

if has bpb; then
  chorus_run bpb-chorus_tp1 small.toml 1 --set "train.threads=$bpb_threads" --set "train.max_steps=$bpb_steps" \
    --set train.eval=true
  chorus_run bpb-chorus_tp2 small.toml 2 --set parallel.tp=2 --set train.threads=1 --set "train.max_steps=$bpb_steps" \
    --set train.eval=true
  run bpb-torch "$py" "$here/gpt_torch.py" "${torch_args[@]}" --steps "$bpb_steps" --threads "$bpb_threads"
fi

{
  echo "after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "took: $(( ($(date +%s) - began + 30) / 60 )) min ($(( $(date +%s) - began )) s)"
} >> "$raw/machine.txt"

command="bash $here/run.sh $build_arg"
[[ $quick -eq 1 ]] && command+=" --quick"
for v in REPEATS SECTIONS SPEED_STEPS BPB_STEPS OOM_LIMIT_MB CHORUS; do
  [[ -n ${!v:-} ]] && command="$v=\"${!v}\" $command"
done
report=(report --raw "$raw" --repeats "$repeats" --src "$src" --command "$command" --out "$out" --sections "${sections[@]}")
[[ $quick -eq 1 ]] && report+=(--quick)
"$py" "$src/$here/report.py" "${report[@]}"
status=$?
echo "wrote $out" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "run.sh: failed runs: ${failed[*]} (outputs in $raw)" >&2
  status=1
fi
exit $status
