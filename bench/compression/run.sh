#!/usr/bin/env bash
# The gradient-compression benchmark (chorus issue #4): the Fashion-MNIST CNN trained with each
# compression method of `chorus train` (bench/compression/cnn.toml + [compression] settings).
#
#   phase 1  every method, 4 workers on this machine (shared memory): final accuracy, bytes
#            per step, compression ratio, samples/s, accuracy per epoch against bytes sent
#   phase 2  every method again, one rank per host on a 4-host netlab at 100 Mbit/s: the
#            training time each needs to reach dense's final accuracy
#   phase 3  dense, dgc and powersgd again on this machine for --long-epochs epochs (10 by
#            default): the accuracy gap once the sparse methods have more steps to catch up
#   phase 4  (--randomk) random-k against top-k at phase 1's ratio (0.01): random-k's variants
#            (ef: compression.residual_decay = 1, plain error feedback, the rule it had before it
#            was fixed; unbiased: compression.error_feedback = false) next to phase 1's topk and
#            randomk (decay 0.9, the default) runs
#
# Writes bench/results/compression.md and compression.svg through bench/compression/report.py
# and keeps every run's command, output, exit status and metrics in BUILD_DIR/bench-compression/.
#
# usage: bash bench/compression/run.sh BUILD_DIR [--quick] [--netlab-limit-train N] [--no-netlab]
#                                     [--long-epochs N] [--phase2-only] [--randomk] [--randomk-only]
#   --quick                 a smoke run of the pipeline: first 2560 train / 1000 test samples,
#                           2 epochs, 2 workers (2 hosts in phase 2), methods none topk dgc
#                           powersgd sign; the page goes to BUILD_DIR/bench-compression/quick.md
#   --netlab-limit-train N  phase 2 trains on the first N training samples only (it is slow:
#                           dense moves ~1.7 MB per step per rank over 100 Mbit/s)
#   --no-netlab             no phase 2
#   --long-epochs N         phase 3's epochs; 0 skips it (the default with --quick)
#   --phase2-only           rerun phase 2 only, keeping phases 1 and 3 of the previous run in
#                           the raw folder, and rewrite the page from all of them
#   --randomk               run phase 4 too (2 more phase-1-sized runs; error_feedback stops
#                           early when it diverges); adds topk and randomk to phase 1's methods
#                           when METHODS (or --quick) leaves them out
#   --randomk-only          run phase 4 alone, keeping phases 1-3 of the previous run in the raw
#                           folder (its topk and randomk runs are phase 4's reference), with that
#                           run's copy of the binary, and rewrite the page from all of them
#                           (--phase2-only and --randomk-only: give the other flags of the run
#                           they complete, e.g. --randomk, --no-netlab, so the page keeps its phases)
#   environment: LONG_METHODS="none dgc powersgd" (phase 3), CHORUS=path (default BUILD_DIR/chorus), METHODS="none fp16 ..." (phase 1),
#   RANDOMK_VARIANTS="ef unbiased" (phase 4),
#   PHASE2_METHODS="none dgc ..." (instead of the selection), THRESHOLD=tau (threshold codec),
#   OUT=file.md (the page; the plot goes next to it as .svg)
# Builds nothing. A failed run is named on stderr with its last error line and in the page; the
# others go on, and the script exits 1.
set -uo pipefail

usage() {
  echo "usage: bash bench/compression/run.sh BUILD_DIR [--quick] [--netlab-limit-train N] [--no-netlab] [--long-epochs N] [--phase2-only] [--randomk] [--randomk-only]" >&2
  exit 2
}
[[ $# -ge 1 ]] || usage
build_arg=$1
shift
quick=0
netlab=1
netlab_limit=0
long_epochs=
long_epochs_arg=
phase2_only=0
randomk=0
randomk_only=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) quick=1 ;;
    --no-netlab) netlab=0 ;;
    --phase2-only) phase2_only=1 ;;
    --randomk) randomk=1 ;;
    --randomk-only)
      randomk=1
      randomk_only=1
      ;;
    --long-epochs)
      [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || usage
      long_epochs=$2
      long_epochs_arg=$2
      shift
      ;;
    --netlab-limit-train)
      [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || usage
      netlab_limit=$2
      shift
      ;;
    *) usage ;;
  esac
  shift
done

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "$src" && realpath -m "$build_arg")
py=/usr/bin/python3
chorus=$(realpath -m "${CHORUS:-$build/chorus}")
tau=${THRESHOLD:-0.03}
netlab_sh=$src/tools/netlab/netlab.sh

if [[ ! -x $chorus ]]; then
  echo "run.sh: $chorus is not an executable; build it (ninja -C $build chorus) or set CHORUS=path" >&2
  exit 2
fi

if [[ $quick -eq 1 ]]; then
  raw=$build/bench-compression/quick
  out=${OUT:-$build/bench-compression/quick.md}
  read -ra methods <<< "${METHODS:-none topk dgc powersgd sign}"
  workers=2
  common=(--set data.limit_train=2560 --set data.limit_test=1000 --set train.epochs=2 --set train.log_every=5)
  dgc_warmup=1
  long_epochs=${long_epochs:-0}
else
  raw=$build/bench-compression/full
  out=${OUT:-$src/bench/results/compression.md}
  read -ra methods <<< "${METHODS:-none fp16 bf16 topk topk_sampled randomk threshold qsgd terngrad sign int8 dgc powersgd}"
  workers=4
  common=()
  dgc_warmup=4
  long_epochs=${long_epochs:-10}
fi
read -ra long_methods <<< "${LONG_METHODS:-none dgc powersgd}"
[[ $long_epochs -gt 0 ]] || long_methods=()
# The --set arguments of one phase 4 variant of random-k.
variant_args() {
  case $1 in
    ef) printf '%s\n' --set compression.residual_decay=1 ;;
    unbiased) printf '%s\n' --set compression.error_feedback=false ;;
    *)
      echo "run.sh: RANDOMK_VARIANTS: unknown variant '$1' (ef, unbiased)" >&2
      return 2
      ;;
  esac
}
randomk_variants=()
[[ $randomk -eq 1 ]] && read -ra randomk_variants <<< "${RANDOMK_VARIANTS:-ef unbiased}"
for v in "${randomk_variants[@]}"; do
  variant_args "$v" > /dev/null || exit 2
done
if [[ $phase2_only -eq 1 && $randomk_only -eq 1 ]]; then
  echo "run.sh: --phase2-only and --randomk-only each rerun one phase; run them one after the other" >&2
  exit 2
fi
# --phase2-only and --randomk-only rerun one phase into the previous run's raw folder.
rerun_only=$((phase2_only + randomk_only))
# Phase 4 compares with phase 1's topk and randomk runs: phase 1 runs them too.
if [[ $randomk -eq 1 ]]; then
  for m in topk randomk; do
    [[ " ${methods[*]} " == *" $m "* ]] || methods+=("$m")
  done
fi
svg=${out%.md}.svg

# The --set arguments of one method (the issue's settings).
method_args() {
  local m=$1
  local a=(--set "compression.method=$m")
  case $m in
    none | fp16 | bf16 | terngrad | sign | int8) ;;
    topk | topk_sampled | randomk) a+=(--set compression.ratio=0.01) ;;
    threshold) a+=(--set "compression.threshold=$tau") ;;
    qsgd) a+=(--set compression.levels=16) ;;
    dgc)
      a+=(--set optim.momentum=0 --set compression.momentum=0.9 --set compression.sparsity=0.999
        --set "compression.warmup_epochs=$dgc_warmup")
      ;;
    powersgd) a+=(--set compression.rank=4) ;;
    *)
      echo "run.sh: unknown method '$m'" >&2
      exit 2
      ;;
  esac
  printf '%s\n' "${a[@]}"
}

read -ra extra_methods <<< "${PHASE2_METHODS:-}"
for m in "${methods[@]}" "${extra_methods[@]}" "${long_methods[@]}"; do
  method_args "$m" > /dev/null || exit 2
done

chorus_src=$chorus
if [[ $phase2_only -eq 1 ]]; then
  if [[ ! -x $raw/chorus || $netlab -eq 0 ]]; then
    echo "run.sh: --phase2-only needs a previous run's $raw (with its chorus copy) and the netlab" >&2
    exit 2
  fi
  rm -rf "$raw"/p2-*
  # Phase 2 runs the binary of phases 1 and 3, so the page compares one build.
elif [[ $randomk_only -eq 1 ]]; then
  if [[ ! -x $raw/chorus ]]; then
    echo "run.sh: --randomk-only needs a previous run's $raw (with its chorus copy)" >&2
    exit 2
  fi
  rm -rf "$raw"/p4-*
  # Phase 4 runs the binary of the phase 1 runs it is compared with.
else
  rm -rf "$raw"
  mkdir -p "$raw"
  # Every run uses one copy of the binary, so a rebuild during the (long) benchmark changes nothing.
  cp "$chorus" "$raw/chorus" || exit 1
fi
chorus=$raw/chorus
failed=()

# run NAME CMD...: runs from the source dir, keeps the command, stdout, stderr and exit status;
# on failure names the run and shows its last error line.
run() {
  local name=$1
  shift
  printf '%q ' "$@" | sed 's/ $//' > "$raw/$name.cmd"
  echo "== $name: $(cat "$raw/$name.cmd")" >&2
  (cd "$src" && timeout 14400 "$@") > "$raw/$name.out" 2> "$raw/$name.err"
  local rc=$?
  echo $rc > "$raw/$name.rc"
  if [[ $rc -ne 0 ]]; then
    local last
    # The run's own last error line (netlab.sh's closing line names only the host).
    last=$(grep -v -e '^[[:space:]]*$' -e '^netlab.sh: host' "$raw/$name.err" | tail -n 1)
    [[ -n $last ]] || last=$(grep -v '^[[:space:]]*$' "$raw/$name.err" | tail -n 1)
    echo "run.sh: $name failed with exit status $rc: ${last:-no error output} (all of it: $raw/$name.err)" >&2
    failed+=("$name")
  fi
}

if [[ $phase2_only -eq 1 ]]; then
  echo "phase 2 rerun before: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$raw/machine.txt"
elif [[ $randomk_only -eq 1 ]]; then
  echo "phase 4 rerun before: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$raw/machine.txt"
else
  {
    echo "binary: $chorus_src ($(stat -c '%y' "$chorus_src" | cut -d. -f1))"
    echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); nproc $(nproc)"
    echo "before: $(cut -d' ' -f1-3 /proc/loadavg)"
  } > "$raw/machine.txt"
fi

[[ $rerun_only -eq 1 ]] || for m in "${methods[@]}"; do
  mapfile -t margs < <(method_args "$m")
  run "p1-$m" "$chorus" train bench/compression/cnn.toml --nproc "$workers" "${common[@]}" "${margs[@]}" \
    --set "output.dir=$raw/p1-$m"
done

phase2=()
hosts=$workers
if [[ $netlab -eq 1 ]]; then
  if [[ -n ${PHASE2_METHODS:-} ]]; then
    read -ra phase2 <<< "$PHASE2_METHODS"
  else
    phase2=("${methods[@]}")
  fi
  echo "phase 2 methods: ${phase2[*]}" >&2
  limit=()
  [[ $netlab_limit -gt 0 ]] && limit=(--set "data.limit_train=$netlab_limit")
  [[ $(id -u) -eq 0 ]] && sudo=() || sudo=(sudo -n)
  # ddp.transport=tcp: the lab's hosts share one kernel (same hostname and boot id), so the
  # auto transport would pick shared memory and never touch the shaped links.
  [[ $randomk_only -eq 1 ]] || for m in "${phase2[@]}"; do
    mapfile -t margs < <(method_args "$m")
    run "p2-$m" "${sudo[@]}" "$netlab_sh" with "$hosts" --rate 100mbit --delay 0ms -- \
      "$chorus" train bench/compression/cnn.toml "${common[@]}" "${limit[@]}" "${margs[@]}" \
      --set ddp.transport=tcp --set train.threads=1 --set output.progress=none --set "output.dir=$raw/p2-$m"
  done
fi
[[ $rerun_only -eq 1 ]] || for m in "${long_methods[@]}"; do
  mapfile -t margs < <(method_args "$m")
  run "p3-$m" "$chorus" train bench/compression/cnn.toml --nproc "$workers" "${common[@]}" "${margs[@]}" \
    --set "train.epochs=$long_epochs" --set "output.dir=$raw/p3-$m"
done
# Phase 4: random-k's variants as phase 1 runs, next to phase 1's topk and randomk (default).
# A run that diverges (chorus train stops it with DivergenceError and writes a "diverged" event)
# is one of this phase's results, not a failure of the benchmark.
[[ $phase2_only -eq 1 ]] || for v in "${randomk_variants[@]}"; do
  name=p4-randomk-$v
  mapfile -t margs < <(method_args randomk)
  mapfile -t vargs < <(variant_args "$v")
  run "$name" "$chorus" train bench/compression/cnn.toml --nproc "$workers" "${common[@]}" "${margs[@]}" \
    "${vargs[@]}" --set "output.dir=$raw/$name"
  if [[ $(cat "$raw/$name.rc") != 0 ]] && grep -Eq '"event": ?"diverged"' "$raw/$name/metrics.jsonl" 2> /dev/null; then
    echo "run.sh: $name diverged, which phase 4 reports as its result" >&2
    kept=()
    for f in "${failed[@]}"; do [[ $f == "$name" ]] || kept+=("$f"); done
    failed=("${kept[@]}")
  fi
done
if [[ $phase2_only -eq 1 ]]; then
  echo "phase 2 rerun after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$raw/machine.txt"
elif [[ $randomk_only -eq 1 ]]; then
  echo "phase 4 rerun after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$raw/machine.txt"
else
  echo "after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$raw/machine.txt"
fi

command="bash bench/compression/run.sh $build_arg"
[[ $quick -eq 1 ]] && command+=" --quick"
[[ $netlab -eq 0 ]] && command+=" --no-netlab"
[[ $netlab_limit -gt 0 ]] && command+=" --netlab-limit-train $netlab_limit"
[[ -n $long_epochs_arg ]] && command+=" --long-epochs $long_epochs_arg"
[[ $phase2_only -eq 1 ]] && command+=" --phase2-only"
[[ $randomk -eq 1 && $randomk_only -eq 0 ]] && command+=" --randomk"
[[ $randomk_only -eq 1 ]] && command+=" --randomk-only"
for v in CHORUS METHODS PHASE2_METHODS THRESHOLD LONG_METHODS RANDOMK_VARIANTS; do
  [[ -n ${!v:-} ]] && command="$v=\"${!v}\" $command"
done
report=(--raw "$raw" --methods "${methods[@]}" --phase2 "${phase2[@]}" --phase3 "${long_methods[@]}"
  --phase4 "${randomk_variants[@]}"
  --long-epochs "$long_epochs" --workers "$workers"
  --netlab-limit-train "$netlab_limit" --threshold "$tau" --dgc-warmup "$dgc_warmup"
  --command "$command" --out "$out" --svg "$svg")
[[ $quick -eq 1 ]] && report+=(--quick)
"$py" "$src/bench/compression/report.py" report "${report[@]}"
status=$?
echo "wrote $out and $svg" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "run.sh: failed runs: ${failed[*]} (outputs in $raw)" >&2
  status=1
fi
exit $status
