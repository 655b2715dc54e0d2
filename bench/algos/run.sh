#!/usr/bin/env bash
# The all-reduce algorithm sweep behind `--algo auto`: every algorithm (ring, hd, tree, direct) and
# auto's own choice, on shm and tcp, at 2, 3 and 4 ranks, 4 KiB to 64 MiB, float32 sum, in
# one run. Writes bench/results/algorithms.md (through bench/algos/report.py): per setting,
# the fastest algorithm at each size and how far auto's pick is from it.
#
# usage: bash bench/algos/run.sh [BUILD_DIR]     (default: build)
#   RANKS="2 3 4"  TRANSPORTS="shm tcp"  MIN_BYTES=4K  MAX_BYTES=64M  OUT=bench/results/algorithms.md
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "$src" && realpath -m "${1:-build}")
ranks=(${RANKS:-2 3 4})
transports=(${TRANSPORTS:-shm tcp})
min=${MIN_BYTES:-4K}
max=${MAX_BYTES:-64M}
out=${OUT:-$src/bench/results/algorithms.md}
raw=$build/bench-algos
cmake --build "$build" --target chorus
rm -rf "$raw" && mkdir -p "$raw"
commands=()
for t in "${transports[@]}"; do
  for n in "${ranks[@]}"; do
    for a in ring hd tree direct auto; do
      cmd=("$build/chorus" bench collectives --op allreduce --ranks "$n" --transport "$t" --algo "$a"
           --min-bytes "$min" --max-bytes "$max" --json)
      echo "== ${cmd[*]#$src/}" >&2
      "${cmd[@]}" > "$raw/$t-$n-$a.jsonl"
      commands+=("${cmd[*]#$src/}")
    done
  done
done
printf '%s\n' "${commands[@]}" > "$raw/commands.txt"
python3 "$src/bench/algos/report.py" --raw "$raw" --ranks "${ranks[@]}" --transports "${transports[@]}" \
  --command "bash bench/algos/run.sh ${1:-build}" --out "$out"
echo "wrote $out"
