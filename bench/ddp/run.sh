#!/usr/bin/env bash
# The data-parallel training comparison: `chorus train` against PyTorch DDP (gloo, CPU) on
# Fashion-MNIST, the same model, data order, optimizer and schedule on both sides
# (bench/ddp/{mlp,cnn}.toml and bench/ddp/torch_ddp.py), one epoch, for the mlp and the cnn
# at 1, 2 and 4 workers. chorus runs twice per setting: over its default transport for local
# workers (shared memory) and over tcp on loopback, so the transport's share of the gap to
# PyTorch (gloo, tcp on loopback) shows. Each setting is repeated REPEATS times with the sides
# alternating (torch, chorus shm, chorus tcp, torch, ...); the page gives the median and the
# spread. Writes bench/results/ddp.md (through bench/ddp/report.py), naming the commit it ran
# at, and keeps every raw output in BUILD_DIR/bench-ddp/.
#
# usage: bash bench/ddp/run.sh BUILD_DIR [--quick]
#   --quick   first 6400 training samples only (a smoke run of a few minutes); the page goes
#             to BUILD_DIR/bench-ddp/ddp-quick.md instead of bench/results/ddp.md
#   MODELS="mlp cnn"  WORLDS="1 2 4"  REPEATS=3  OUT=bench/results/ddp.md   (environment overrides)
#   CHORUS=path   use this chorus binary as is instead of building BUILD_DIR's
# Builds nothing but the `chorus` target of an existing build dir. A side that cannot run or
# fails is reported as such in the page (and the script exits 1); the others go on.
set -uo pipefail

usage() {
  echo "usage: bash bench/ddp/run.sh BUILD_DIR [--quick]" >&2
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
models=(${MODELS:-mlp cnn})
worlds=(${WORLDS:-1 2 4})
repeats=${REPEATS:-3}
[[ $repeats =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: REPEATS=$repeats is not a positive count" >&2; exit 2; }
raw=$build/bench-ddp
if [[ $quick -eq 1 ]]; then
  out=${OUT:-$raw/ddp-quick.md}
else
  out=${OUT:-$src/bench/results/ddp.md}
fi
py=/usr/bin/python3

if [[ ! -f $build/build.ninja && ! -f $build/Makefile ]]; then
  echo "run.sh: $build is not a configured build dir; run: cmake -S $src -B $build -G Ninja" >&2
  exit 2
fi
if ! "$py" -c 'import torch.distributed' > /dev/null 2>&1; then
  echo "run.sh: $py cannot import torch.distributed (install python3-torch)" >&2
  exit 2
fi
have_chorus=0
if [[ -n ${CHORUS:-} ]]; then
  [[ -x $CHORUS ]] && have_chorus=1 || echo "run.sh: CHORUS=$CHORUS is not an executable" >&2
  chorus_bin=$(realpath -m "$CHORUS")
else
  cmake --build "$build" --target chorus && have_chorus=1
  chorus_bin=$build/chorus
fi

rm -rf "$raw"
mkdir -p "$raw"
rel() { local p=$1; echo "${p#"$src"/}"; }

# run NAME CMD...: runs from the source dir, keeps stdout/stderr/exit status/command.
run() {
  local name=$1
  shift
  echo "$*" > "$raw/$name.cmd"
  echo "== $name: $*" >&2
  (cd "$src" && timeout 3600 "$@") > "$raw/$name.out" 2> "$raw/$name.err"
  local rc=$?
  echo $rc > "$raw/$name.rc"
  [[ $rc -eq 0 ]] || echo "   $name exited with $rc (see $raw/$name.err)" >&2
}

torch_limit=()
chorus_limit=()
if [[ $quick -eq 1 ]]; then
  torch_limit=(--limit-train 6400)
  chorus_limit=(--set data.limit_train=6400)
fi

cat /proc/loadavg | awk '{print "before: " $1 " " $2 " " $3}' > "$raw/loadavg.txt"
chorus=$(rel "$chorus_bin")
# One repetition runs every setting once, the sides back to back, so slow phases of the
# machine hit both sides alike.
for r in $(seq 1 "$repeats"); do
  for model in "${models[@]}"; do
    for w in "${worlds[@]}"; do
      run "torch-$model-$w-r$r" "$py" bench/ddp/torch_ddp.py --model "$model" --world "$w" --epochs 1 --batch 128 \
        --lr 0.05 "${torch_limit[@]}"
      for transport in shm tcp; do
        name="chorus_$transport-$model-$w-r$r"
        if [[ $have_chorus -eq 1 ]]; then
          run "$name" "$chorus" train "bench/ddp/$model.toml" --nproc "$w" --set "ddp.transport=$transport" \
            --set "output.dir=$(rel "$raw/$name")" "${chorus_limit[@]}"
        else
          echo "no chorus binary: $chorus_bin did not build or is not executable" > "$raw/$name.err"
          echo 1 > "$raw/$name.rc"
        fi
      done
    done
  done
done
cat /proc/loadavg | awk '{print "after: " $1 " " $2 " " $3}' >> "$raw/loadavg.txt"

command="bash bench/ddp/run.sh $build_arg"
[[ $quick -eq 1 ]] && command="$command --quick"
for v in MODELS WORLDS REPEATS CHORUS; do
  [[ -n ${!v:-} ]] && command="$v=\"${!v}\" $command"
done
"$py" "$src/bench/ddp/report.py" --raw "$raw" --models "${models[@]}" --worlds "${worlds[@]}" \
  --repeats "$repeats" --src "$src" --command "$command" --out "$out" $([[ $quick -eq 1 ]] && echo --quick)
status=$?
echo "wrote $out" >&2
exit $status
