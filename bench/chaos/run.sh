#!/usr/bin/env bash
# Fault tolerance under failures (issue 15): what a failure costs and whether jobs survive many.
# The job: the MLP of bench/ddp (784-512-256-10, SGD momentum 0.9) on the first 42000
# Fashion-MNIST samples, global batch 840 (divisible by every world size 1 to 8), 50 steps
# (one epoch), train.threads 1, all workers on this 2-core machine (shm).
#
# Sections (SECTIONS, all by default):
#   lost    time lost per failure: worker 2 of 4 kills itself (SIGKILL, CHORUS_FAULT) as it
#           starts step 25; time lost = from the kill until step 26 completes (the step in
#           flight, done again). LOST_REPEAT rounds, alternating:
#             elastic          chorus train --nproc 4 --min 2 (the 3 survivors go on)
#             elastic-replace  the same with --restarts 1 (a new worker joins: 4 again)
#             elastic-spare    the same with --restarts 1 --spares 1 (a spare started with the
#                              job, loaded and waiting, joins: 4 again)
#             chorus-restart   chorus without --min: the job stops, this script starts it
#                              again with --resume from its checkpoint (every 10 steps)
#             torch-restart    torchrun's strategy with PyTorch DDP (gloo): stop all, start
#                              all, resume the checkpoint (every 10 steps) (torch_restart.py)
#   worlds  recovery time against world size: chorus elastic at 2, 4, 6 and 8 workers (6 and 8
#           oversubscribe the 2 cores), worker 1 killed at step 25, --min 1; WORLDS_REPEAT each.
#   chaos   CHAOS_RUNS runs of chorus train --nproc 4 --min 2 --restarts 4 with eval on, each
#           with 4 faults at random steps (a random live worker, kill -9 or SIGSTOP), seeds
#           1..CHAOS_RUNS; plus undisturbed runs: jobs finished, clear errors, hangs (no exit
#           within CHAOS_TIMEOUT s), unreadable final checkpoints, steps in the final
#           trajectory against the plan, accuracy against undisturbed. Every third run (seeds
#           1, 4, 7, ...) also checkpoints every 5 steps and runs bench/chaos/inject.py beside it:
#           once the first checkpoint exists it waits for rank 0's next checkpoint temporary
#           (checkpoints/ckpt-*.pt.tmp.<pid>) and SIGKILLs that writer (worker 0, before the
#           plan's faults, which start at step 20 there); the checkpoint it would have replaced
#           is hard-linked aside and must still load (chorus checkpoint diff).
#   ps      PS_RUNS runs of a parameter-server job over tcp: 3 workers (ranks 0-2) and 2 servers
#           (ranks 3-4), the same MLP and data, 2 epochs of 50 steps, ps.restarts 4,
#           ps.checkpoint_every 5, eval on; ps.mode cycles bsp, asp, ssp. bench/chaos/inject.py
#           delivers 4 faults per run from outside, at random times 0.3-4 s into training (each
#           once every rank runs again, plus 1 s): a random rank, worker or server, gets SIGKILL
#           (2 in 3) or SIGSTOP; in about a third of the runs one of the 4 is a "ckpt" fault
#           that SIGKILLs a server while its shard temporary (ps/server<s>.ckpt.tmp.<pid>)
#           exists. Plus PS_CLEAN undisturbed runs per mode. report.py verifies every final
#           shard (CPSCKPT magic, SHA-256) and the shards the ckpt kills left in place.
#   mp      time lost per failure in tensor- and pipeline-parallel jobs (not in the default
#           SECTIONS; its page is bench/results/chaos-mp.md): the GPT of configs/gpt.toml (0.84 M
#           parameters, global batch 16 windows of 128 bytes, 40 steps, eval off) on 4 workers as
#           tp 2 x dp 2, and as pp 2 x dp 2 (1F1B, 4 micro-batches), and on 2 workers as tp 2 at
#           dp 1 (each worker keeps its neighbour's snapshots); worker 1 kills itself as it
#           starts step 25; time lost as in `lost`. MP_REPEAT rounds, alternating:
#             replace   --min 4 --restarts 1: a new process takes worker 1's place and receives
#                       its shard from a data-parallel replica
#             spare     the same with --spares 1 (a spare started with the job takes the place)
#             restart   --restarts 1 without --min: every worker is stopped and the job starts
#                       again from its checkpoint (every 10 steps), torchrun's strategy
#           and, per round, two undisturbed tp 2 runs at dp 1, plain and elastic (--min 2): the
#           wall time per step that the per-step copies cost.
# Writes bench/results/chaos.md (bench/chaos/report.py); raw outputs in BUILD_DIR/bench-chaos/.
#
# usage: bash bench/chaos/run.sh [BUILD_DIR]      (default: build)
#   SECTIONS="lost worlds chaos ps"  LOST_REPEAT=3  WORLDS_REPEAT=3  CHAOS_RUNS=25  CHAOS_TIMEOUT=300
#   PS_RUNS=15  PS_CLEAN=4  PS_TIMEOUT=180  MP_REPEAT=3
#   the mp page: SECTIONS=mp OUT=bench/results/chaos-mp.md bash bench/chaos/run.sh build
set -uo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build_arg=${1:-build}
build=$(cd "$src" && realpath -m "$build_arg")
sections=" ${SECTIONS:-lost worlds chaos ps} "
lost_repeat=${LOST_REPEAT:-3}
worlds_repeat=${WORLDS_REPEAT:-3}
chaos_runs=${CHAOS_RUNS:-25}
chaos_timeout=${CHAOS_TIMEOUT:-300}
ps_runs=${PS_RUNS:-15}
ps_clean=${PS_CLEAN:-4}
ps_timeout=${PS_TIMEOUT:-180}
mp_repeat=${MP_REPEAT:-3}
out=${OUT:-$src/bench/results/chaos.md}
raw=$build/bench-chaos
export BENCH_TIMEOUT=${BENCH_TIMEOUT:-600}
export CHORUS_HEARTBEAT_TIMEOUT_MS=${CHORUS_HEARTBEAT_TIMEOUT_MS:-3000}
export CHORUS_TIMEOUT_MS=${CHORUS_TIMEOUT_MS:-30000}

cmake --build "$build" --target chorus || exit 2
py=/usr/bin/python3  # Debian's, with python3-torch (not a python3 earlier on PATH)
"$py" -c "import torch.distributed" 2> /dev/null || { echo "run.sh: $py cannot import torch.distributed (install python3-torch)" >&2; exit 2; }
rm -rf "$raw" && mkdir -p "$raw"
failed=()
source "$src/bench/common/run_lib.sh"
rel() { echo "${1#"$src"/}"; }
chorus=$(rel "$build/chorus")
job=(--set data.limit_train=42000 --set train.batch_size=840 --set train.epochs=1 --set model.hidden=[512,256]
     --set optim.momentum=0.9 --set schedule.name=constant --set train.threads=1 --set train.log_every=1
     --set output.progress=none --set train.eval=false)
cat /proc/loadavg | awk '{print "before: " $1 " " $2 " " $3}' > "$raw/loadavg.txt"

if [[ $sections == *" lost "* ]]; then
  for r in $(seq 1 "$lost_repeat"); do
    CHORUS_FAULT=kill:2:25 bench_run "lost-elastic-r$r" "$chorus" train --nproc 4 --min 2 "${job[@]}" \
      --set "output.dir=$raw/lost-elastic-r$r"
    CHORUS_FAULT=kill:2:25 bench_run "lost-elastic-replace-r$r" "$chorus" train --nproc 4 --min 2 --restarts 1 \
      "${job[@]}" --set "output.dir=$raw/lost-elastic-replace-r$r"
    CHORUS_FAULT=kill:2:25 bench_run "lost-elastic-spare-r$r" "$chorus" train --nproc 4 --min 2 --restarts 1 --spares 1 \
      "${job[@]}" --set "output.dir=$raw/lost-elastic-spare-r$r"
    # chorus's own restart-all: the first run fails (expected), the second resumes.
    CHORUS_FAULT=kill:2:25 bench_run "lost-chorus-restart-r$r-a" "$chorus" train --nproc 4 "${job[@]}" \
      --set output.checkpoint_every=10 --set output.keep=10 --set "output.dir=$raw/lost-chorus-restart-r$r"
    bench_run "lost-chorus-restart-r$r-b" "$chorus" train --nproc 4 --resume "${job[@]}" \
      --set output.checkpoint_every=10 --set output.keep=10 --set "output.dir=$raw/lost-chorus-restart-r$r"
    bench_run "lost-torch-restart-r$r" "$py" bench/chaos/torch_restart.py --world 4 --steps 50 \
      --checkpoint-every 10 --kill-rank 2 --kill-step 25 --out "$raw/lost-torch-restart-r$r"
  done
fi

if [[ $sections == *" worlds "* ]]; then
  for r in $(seq 1 "$worlds_repeat"); do
    for w in 2 4 6 8; do
      CHORUS_FAULT=kill:1:25 bench_run "worlds-$w-r$r" "$chorus" train --nproc "$w" --min 1 "${job[@]}" \
        --set "output.dir=$raw/worlds-$w-r$r"
    done
  done
fi

if [[ $sections == *" chaos "* ]]; then
  chaos_job=(--set data.limit_train=42000 --set train.batch_size=840 --set train.epochs=2 --set model.hidden=[512,256]
             --set optim.momentum=0.9 --set train.threads=1 --set train.log_every=1 --set output.progress=none
             --set train.eval=true --set output.checkpoint_epoch=true)
  for r in 1 2 3; do
    bench_run "chaos-clean-r$r" "$chorus" train --nproc 4 "${chaos_job[@]}" --set "output.dir=$raw/chaos-clean-r$r"
  done
  for s in $(seq 1 "$chaos_runs"); do
    # The plan: 4 faults at steps 8..92 at least 12 apart; each hits a worker alive then (every
    # failure brings in a replacement with the next id). In a ckpt run (every third) the
    # injector kills worker 0 (rank 0) in its checkpoint write of step 10 (or the next one it
    # catches), so the plan starts at step 20 with worker 0 already replaced by worker 4.
    ckpt=$(( s % 3 == 1 ? 1 : 0 ))
    plan=$(python3 - "$s" "$ckpt" << 'EOF'
import random, sys
rng = random.Random(int(sys.argv[1]))
if sys.argv[2] == "1":
    alive, nxt, steps, faults = [1, 2, 3, 4], 5, sorted(rng.sample(range(20, 93, 12), 4)), []
else:
    alive, nxt, steps, faults = [0, 1, 2, 3], 4, sorted(rng.sample(range(8, 93, 12), 4)), []
for st in steps:
    victim = rng.choice(alive)
    faults.append(f"{rng.choice(['kill', 'kill', 'stop'])}:{victim}:{st}")
    alive.remove(victim)
    alive.append(nxt)
    nxt += 1
print(",".join(faults))
EOF
)
    echo "$plan" > "$raw/chaos-$s.plan"
    extra=()
    inj=
    if [[ $ckpt == 1 ]]; then
      extra=(--set output.checkpoint_every=5)
      "$py" "$src/bench/chaos/inject.py" --dir "$raw/chaos-$s" --ranks 0 --seed "$s" --count 1 --ckpt 1 \
        --window 0 0 --settle 0 --ckpt-glob 'checkpoints/ckpt-*.pt.tmp.*' --ckpt-after-final --ckpt-wait 60 \
        --keep-prev "$raw/chaos-$s.prev" --max-seconds $((chaos_timeout + 60)) --log "$raw/chaos-$s.inject.json" \
        2> "$raw/chaos-$s.inject.err" &
      inj=$!
    fi
    CHORUS_FAULT=$plan BENCH_TIMEOUT=$chaos_timeout bench_run "chaos-$s" "$chorus" train --nproc 4 --min 2 --restarts 4 \
      "${chaos_job[@]}" "${extra[@]}" --set "output.dir=$raw/chaos-$s"
    if [[ -n $inj ]]; then
      wait "$inj"
      # The checkpoint in place when rank 0 was killed in its write (hard-linked aside).
      : > "$raw/chaos-$s.prev"
      for f in "$raw/chaos-$s.prev"-*; do
        [[ -e $f ]] || continue
        if "$build/chorus" checkpoint diff "$f" "$f" > /dev/null 2>&1; then
          echo "ok $(basename "$f")" >> "$raw/chaos-$s.prev"
        else
          echo "unreadable $(basename "$f")" >> "$raw/chaos-$s.prev"
        fi
      done
    fi
    last=$(find "$raw/chaos-$s/checkpoints" -name 'ckpt-*.pt' 2> /dev/null | sort | tail -n 1)
    if [[ -n $last ]] && "$build/chorus" checkpoint diff "$last" "$last" > /dev/null 2>&1; then
      echo ok > "$raw/chaos-$s.ckpt"
    else
      echo "unreadable: ${last:-none}" > "$raw/chaos-$s.ckpt"
    fi
  done
else
  chaos_runs=0
fi

if [[ $sections == *" ps "* ]]; then
  ps_job=(--nproc 3 --set ps.servers=2 --set ps.restarts=4 --set ps.checkpoint_every=5
          --set data.limit_train=42000 --set train.batch_size=840 --set train.epochs=2 --set model.hidden=[512,256]
          --set optim.momentum=0.9 --set train.threads=1 --set train.log_every=1 --set output.progress=none
          --set train.eval=true)
  modes=(bsp asp ssp)
  for r in $(seq 1 "$ps_clean"); do
    for m in "${modes[@]}"; do
      BENCH_TIMEOUT=$ps_timeout bench_run "ps-clean-$m-r$r" "$chorus" train "${ps_job[@]}" --set "ps.mode=$m" \
        --set "output.dir=$raw/ps-clean-$m-r$r"
    done
  done
  for s in $(seq 1 "$ps_runs"); do
    m=${modes[$(((s - 1) % 3))]}
    # One of the 4 faults is a ckpt fault in runs 1, 6, 8, 10, 15, ...: about a third, every mode.
    ckpt=$(( (s + (s - 1) / 3) % 3 == 1 ? 1 : 0 ))
    echo "$m" > "$raw/ps-$s.mode"
    "$py" "$src/bench/chaos/inject.py" --dir "$raw/ps-$s" --ranks 0,1,2,3,4 --seed "$s" --count 4 --ckpt "$ckpt" \
      --window 0.3 4 --settle 1 --start-glob 'ps/worker0.jsonl' --ckpt-glob 'ps/server*.ckpt.tmp.*' \
      --ckpt-after-final --keep-prev "$raw/ps-$s.prev" --max-seconds $((ps_timeout + 60)) \
      --log "$raw/ps-$s.inject.json" 2> "$raw/ps-$s.inject.err" &
    inj=$!
    BENCH_TIMEOUT=$ps_timeout bench_run "ps-$s" "$chorus" train "${ps_job[@]}" --set "ps.mode=$m" \
      --set "output.dir=$raw/ps-$s"
    wait "$inj"
  done
else
  ps_runs=0
fi
if [[ $sections == *" mp "* ]]; then
  gpt=("$src/configs/gpt.toml" --set train.max_steps=40 --set train.eval=false --set train.log_every=1
       --set output.progress=none --set train.threads=1)
  declare -A layout=([tp]="--nproc 4 --set parallel.tp=2"
                     [pp]="--nproc 4 --set parallel.pp=2 --set parallel.schedule=1f1b --set parallel.micro_batches=4"
                     [tp1]="--nproc 2 --set parallel.tp=2")
  declare -A workers=([tp]=4 [pp]=4 [tp1]=2)
  for r in $(seq 1 "$mp_repeat"); do
    for l in tp pp tp1; do
      read -r -a sets <<< "${layout[$l]}"
      n=${workers[$l]}
      CHORUS_FAULT=kill:1:25 bench_run "mp-$l-replace-r$r" "$chorus" train "${gpt[@]}" "${sets[@]}" --min "$n" \
        --restarts 1 --set "output.dir=$raw/mp-$l-replace-r$r"
      CHORUS_FAULT=kill:1:25 bench_run "mp-$l-spare-r$r" "$chorus" train "${gpt[@]}" "${sets[@]}" --min "$n" \
        --restarts 1 --spares 1 --set "output.dir=$raw/mp-$l-spare-r$r"
      CHORUS_FAULT=kill:1:25 bench_run "mp-$l-restart-r$r" "$chorus" train "${gpt[@]}" "${sets[@]}" --restarts 1 \
        --set output.checkpoint_every=10 --set output.keep=10 --set "output.dir=$raw/mp-$l-restart-r$r"
    done
    # What the per-step copies of dp = 1 cost an undisturbed run: elastic against plain.
    read -r -a sets <<< "${layout[tp1]}"
    bench_run "mp-tp1-plain-r$r" "$chorus" train "${gpt[@]}" "${sets[@]}" --set "output.dir=$raw/mp-tp1-plain-r$r"
    bench_run "mp-tp1-copies-r$r" "$chorus" train "${gpt[@]}" "${sets[@]}" --min 2 --restarts 1 \
      --set "output.dir=$raw/mp-tp1-copies-r$r"
  done
fi
cat /proc/loadavg | awk '{print "after: " $1 " " $2 " " $3}' >> "$raw/loadavg.txt"
# The command as run: the variables given that differ from their defaults, then the script.
command="bash bench/chaos/run.sh $build_arg"
[[ -n ${SECTIONS:-} ]] && command="SECTIONS=\"${SECTIONS}\" $command"
[[ -n ${OUT:-} ]] && command="OUT=$(rel "$(realpath -m "$OUT")") $command"
for v in LOST_REPEAT WORLDS_REPEAT CHAOS_RUNS CHAOS_TIMEOUT PS_RUNS PS_CLEAN PS_TIMEOUT MP_REPEAT; do
  [[ -n ${!v:-} ]] && command="$v=${!v} $command"
done
python3 "$src/bench/chaos/report.py" --raw "$raw" --lost-repeat "$lost_repeat" --worlds-repeat "$worlds_repeat" \
  --chaos-runs "$chaos_runs" --chaos-timeout "$chaos_timeout" --ps-runs "$ps_runs" --ps-clean "$ps_clean" \
  --ps-timeout "$ps_timeout" --mp-repeat "$mp_repeat" --sections $sections \
  --command "$command" --out "$out"
echo "wrote $out"
