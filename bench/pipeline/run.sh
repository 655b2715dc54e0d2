#!/usr/bin/env bash
# The pipeline benchmark (issue 13's "Measure" list): `chorus train` on the GPT of
# bench/pipeline/gpt.toml under each pipeline schedule. Five sections:
#
#   bubble     pp = 2 and 4, micro-batches 4, 8 and 16, schedules gpipe, 1f1b, interleaved (2 model
#              chunks per stage) and zb-h1, balanced stages (pp = 2: the 6 blocks 3 per stage, the
#              embedding with the first and the head with the last; pp = 4: 8 blocks, 2 per stage;
#              fixed counts, as pp2_* and pp4_* say),
#              BUBBLE_STEPS steps with --trace, REPEATS times alternating: each stage's bubble measured from the trace
#              (bench/pipeline/timeline.py, median over the last steps) and by the executor (the
#              step records' bubble_stage<s>), against the formula and against the schedule
#              simulated with the op times the trace measured (chorus pipeline show --costs)
#   memory     the same runs: each stage's peak stored micro-batches (peak_stored_stage<s>)
#   speed      pp = 2 with 8 micro-batches, REPEATS times, alternating: the layer-wise split
#              without micro-batches (schedule none), gpipe, 1f1b, interleaved, zb-h1, pipedream, 2bw
#              (both as PipeDream's stream, no flush between steps), pipedream drained every step, and
#              PyTorch's own pipeline (torch.distributed.pipeline.sync.Pipe, GPipe, in
#              bench/pipeline/pipe_torch.py) on the same model and micro-batches: tokens/s
#   async      pp = 2, 8 micro-batches, ASYNC_STEPS steps with an evaluation at the end: 1f1b,
#              pipedream, pipedream drained every step, pipedream without weight stashing, pipedream
#              with vertical sync, and
#              2bw: validation bits per byte after equal steps, and the training time until the
#              loss first reaches 1f1b's final loss
#   partition  bench/pipeline/heavy.toml (long windows: a position embedding heavy in parameters,
#              light in time) at pp = 2, 1f1b over 8 micro-batches, REPEATS times alternating:
#              the even split [4, 4], balance = "params" and balance = "time": each stage's busy
#              time per step (from the trace) and tokens/s; and SPLIT_TRIALS one-step runs of
#              bench/pipeline/gpt.toml, interleaved over 16 micro-batches, with balance = "time":
#              the split each run's profile chose (6 identical blocks: the even split is right)
#
# Every chorus worker runs 1 torch thread; pp = 4 puts 4 workers on this machine's 2 cores (the
# page says so). Writes bench/results/pipeline.md through bench/pipeline/report.py and keeps each
# run's command, output, status, metrics and trace in BUILD_DIR/bench-pipeline/.
#
# usage: bash bench/pipeline/run.sh BUILD_DIR [--quick]
#   --quick   a smoke run (a couple of minutes): pp = 2 only, m = 4 only, few steps, one
#             repetition; the page goes to BUILD_DIR/bench-pipeline/pipeline-quick.md
#   environment: REPEATS=3, SECTIONS="bubble speed async partition" (memory comes with bubble),
#   BUBBLE_STEPS=10, SPEED_STEPS=12, ASYNC_STEPS=200, SPLIT_TRIALS=10, CHORUS=path (default BUILD_DIR/chorus, built
#   here), OUT=file.md
set -uo pipefail

usage() {
  echo "usage: bash bench/pipeline/run.sh BUILD_DIR [--quick]" >&2
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
here=bench/pipeline
py=/usr/bin/python3
raw=$build/bench-pipeline
read -ra sections <<< "${SECTIONS:-bubble speed async partition}"
for s in "${sections[@]}"; do
  [[ $s =~ ^(bubble|speed|async|partition)$ ]] || { echo "run.sh: SECTIONS: unknown section '$s' (bubble speed async partition)" >&2; exit 2; }
done
if [[ $quick -eq 1 ]]; then
  out=${OUT:-$raw/pipeline-quick.md}
  repeats=${REPEATS:-1}
  bubble_steps=${BUBBLE_STEPS:-3}
  speed_steps=${SPEED_STEPS:-3}
  async_steps=${ASYNC_STEPS:-10}
  split_trials=${SPLIT_TRIALS:-2}
  stage_counts=(2)
  micro_counts=(4)
else
  out=${OUT:-$src/bench/results/pipeline.md}
  repeats=${REPEATS:-3}
  bubble_steps=${BUBBLE_STEPS:-10}
  speed_steps=${SPEED_STEPS:-12}
  async_steps=${ASYNC_STEPS:-200}
  split_trials=${SPLIT_TRIALS:-10}
  stage_counts=(2 4)
  micro_counts=(4 8 16)
fi
for v in repeats bubble_steps speed_steps async_steps split_trials; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: $v=${!v} is not a positive count" >&2; exit 2; }
done
[[ $bubble_steps -ge 3 ]] || { echo "run.sh: BUBBLE_STEPS must be at least 3 (the first steps warm up)" >&2; exit 2; }

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
[[ -d /usr/share/games/fortunes ]] || { echo "run.sh: /usr/share/games/fortunes is missing (apt install fortunes)" >&2; exit 2; }

has() { [[ " ${sections[*]} " == *" $1 "* ]]; }
# The planned time, from runs on this 2-core machine: about 5 s to start a run and 0.6 s per
# step at pp = 2 (pp = 4: 1.2 s), 0.5 s per step of the torch Pipe run.
planned=0
if has bubble; then
  for p in "${stage_counts[@]}"; do
    planned=$((planned + repeats * 4 * ${#micro_counts[@]} * (5 + bubble_steps * (p == 2 ? 6 : 12) / 10)))
  done
fi
has speed && planned=$((planned + repeats * 9 * (5 + speed_steps * 6 / 10)))
has async && planned=$((planned + 6 * (8 + async_steps * 6 / 10)))
has partition && planned=$((planned + repeats * 3 * (8 + 8 * 2) + split_trials * 6))
planned_text="about $(((planned + 59) / 60)) min ($planned s) on 2 cores"
echo "run.sh: planned run time $planned_text: sections ${sections[*]}" >&2

rm -rf "$raw"
mkdir -p "$raw"
cp "$chorus_src" "$raw/chorus" || exit 1
rel() { local p=$1; echo "${p#"$src"/}"; }
chorus=$(rel "$raw/chorus")
[[ $chorus == /* ]] || chorus=./$chorus
failed=()
began=$(date +%s)

# bench_run (bench/common/run_lib.sh) keeps each run's command, output, status and wall time.
source "$src/bench/common/run_lib.sh"
BENCH_ERROR_LINE=error  # a rank's own error line; the launcher's closing line only points at it

# chorus_run NAME CONFIG WORKERS [--set ...]: a traced chorus train run into RAW/NAME.
chorus_run() {
  local name=$1 config=$2 workers=$3
  shift 3
  mkdir -p "$raw/$name"
  bench_run "$name" "$chorus" train "$here/$config" --nproc "$workers" "$@" --set "output.dir=$(rel "$raw/$name")" \
    --trace "$(rel "$raw/$name/trace.json")"
}

{
  echo "binary: $chorus_src ($(stat -c '%y' "$chorus_src" | cut -d. -f1))"
  echo "before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "planned: $planned_text"
  echo "stages: ${stage_counts[*]}"
  echo "micro-batches: ${micro_counts[*]}"
  echo "bubble steps: $bubble_steps"
  echo "speed steps: $speed_steps"
  echo "async steps: $async_steps"
  echo "split trials: $split_trials"
} > "$raw/machine.txt"

# Balanced stages by fixed counts, because a split by measured time is measured on 2 shared cores
# and lands elsewhere from run to run ([2, 1, 2, 3] once for interleaved at pp = 2). pp = 2: the 6
# blocks, 3 per stage (interleaved: 3 per rank, in chunks of 1 and 2), the embedding with the first
# and the head with the last. pp = 4: 6 blocks cannot make 4 equal stages, so those runs have 8,
# 2 per stage (interleaved: 1 per model chunk).
pp2_plain=(--set "parallel.partition=[4, 4]")
pp2_interleaved=(--set "parallel.partition=[2, 2, 2, 2]")
echo "pp 2: ${pp2_plain[*]} (interleaved: ${pp2_interleaved[*]})" >> "$raw/machine.txt"
pp4_args=(--set model.layers=8 --set parallel.balance=params)
pp4_plain=(--set "parallel.partition=[3, 2, 2, 3]")
pp4_interleaved=(--set "parallel.partition=[2, 1, 1, 1, 1, 1, 1, 2]")
echo "pp 4: ${pp4_args[*]} ${pp4_plain[*]} (interleaved: ${pp4_interleaved[*]})" >> "$raw/machine.txt"

if has bubble; then
  for ((r = 1; r <= repeats; r++)); do
    for p in "${stage_counts[@]}"; do
      for m in "${micro_counts[@]}"; do
        for s in gpipe 1f1b interleaved zb-h1; do
          chunks=1
          [[ $s == interleaved ]] && chunks=2
          if [[ $p -eq 4 ]]; then
            shape=("${pp4_args[@]}")
            if [[ $s == interleaved ]]; then shape+=("${pp4_interleaved[@]}"); else shape+=("${pp4_plain[@]}"); fi
          elif [[ $s == interleaved ]]; then
            shape=("${pp2_interleaved[@]}")
          else
            shape=("${pp2_plain[@]}")
          fi
          chorus_run "bubble-$s-p$p-m$m-r$r" gpt.toml "$p" --set "parallel.pp=$p" --set "parallel.schedule=$s" \
            --set "parallel.virtual_stages=$chunks" --set "parallel.micro_batches=$m" \
            --set "train.max_steps=$bubble_steps" "${shape[@]}"
        done
      done
    done
  done
fi

if has speed; then
  torch_args=()
  mapfile -t torch_args < <("$py" "$src/$here/report.py" torch-args "$src/$here/gpt.toml") || exit 1
  for ((r = 1; r <= repeats; r++)); do
    chorus_run "speed-none-r$r" gpt.toml 2 --set parallel.schedule=none --set parallel.micro_batches=1 \
      --set "train.max_steps=$speed_steps"
    for s in gpipe 1f1b interleaved zb-h1 pipedream 2bw; do
      chunks=1
      [[ $s == interleaved ]] && chunks=2
      chorus_run "speed-$s-r$r" gpt.toml 2 --set "parallel.schedule=$s" --set "parallel.virtual_stages=$chunks" \
        --set parallel.micro_batches=8 --set "train.max_steps=$speed_steps"
    done
    chorus_run "speed-pipedream-step-r$r" gpt.toml 2 --set parallel.schedule=pipedream \
      --set parallel.async_flush=step --set parallel.micro_batches=8 --set "train.max_steps=$speed_steps"
    bench_run "speed-torchpipe-r$r" "$py" "$here/pipe_torch.py" "${torch_args[@]}" --chunks 8 --steps "$speed_steps" \
      --split-from "$raw/speed-1f1b-r$r/metrics.jsonl" --json-out "$raw/speed-torchpipe-r$r.json"
  done
fi

if has async; then
  common=(--set parallel.micro_batches=8 --set "train.max_steps=$async_steps" --set train.eval=true
          --set train.log_every=5)
  chorus_run async-1f1b gpt.toml 2 --set parallel.schedule=1f1b "${common[@]}"
  chorus_run async-pipedream gpt.toml 2 --set parallel.schedule=pipedream "${common[@]}"
  chorus_run async-pipedream-step gpt.toml 2 --set parallel.schedule=pipedream \
    --set parallel.async_flush=step "${common[@]}"
  chorus_run async-pipedream-nostash gpt.toml 2 --set parallel.schedule=pipedream \
    --set parallel.weight_stashing=false "${common[@]}"
  chorus_run async-pipedream-vsync gpt.toml 2 --set parallel.schedule=pipedream \
    --set parallel.vertical_sync=true "${common[@]}"
  chorus_run async-2bw gpt.toml 2 --set parallel.schedule=2bw "${common[@]}"
fi

if has partition; then
  for ((r = 1; r <= repeats; r++)); do
    chorus_run "partition-even-r$r" heavy.toml 2 --set "parallel.partition=[4, 4]"
    chorus_run "partition-params-r$r" heavy.toml 2 --set parallel.balance=params
    chorus_run "partition-time-r$r" heavy.toml 2 --set parallel.balance=time
  done
  # The profile's own noise: how often balance = "time" splits 6 identical blocks unevenly.
  for ((t = 1; t <= split_trials; t++)); do
    chorus_run "split-r$t" gpt.toml 2 --set parallel.schedule=interleaved --set parallel.virtual_stages=2 \
      --set parallel.micro_batches=16 --set parallel.balance=time --set train.max_steps=1
  done
fi

took=$(($(date +%s) - began))
{
  echo "after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "took: $((took / 60)) min $((took % 60)) s"
} >> "$raw/machine.txt"

cmd="bash bench/pipeline/run.sh $(rel "$build")"
[[ $quick -eq 1 ]] && cmd+=" --quick"
prefix=""
[[ -n ${REPEATS:-} ]] && prefix+="REPEATS=$REPEATS "
[[ -n ${SECTIONS:-} ]] && prefix+="SECTIONS=\"$SECTIONS\" "
report_args=(report --raw "$raw" --repeats "$repeats" --command "$prefix$cmd" --out "$out" --sections "${sections[@]}")
[[ $quick -eq 1 ]] && report_args+=(--quick)
"$py" "$src/$here/report.py" "${report_args[@]}"
report_rc=$?
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "run.sh: runs that failed: ${failed[*]}" >&2
  exit 1
fi
exit $report_rc
