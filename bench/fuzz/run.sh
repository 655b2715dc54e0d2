#!/usr/bin/env bash
# `make fuzz`: builds every fuzz target (fuzz/*_fuzz.cc, each a decoder of bytes from the network
# or from files) and runs each for FUZZ_SECONDS from its seed corpus, one after the other on
# one core (fuzz/run.sh: clang, ASan, UBSan, libFuzzer). Prints each target's executions and
# writes bench/results/fuzz.md from the logs (bench/fuzz/report.py): per target the
# executions, the time, the corpus before and after, and what this run found; the findings
# of past runs, and their fixes, come from bench/fuzz/findings.md.
#
# usage: bash bench/fuzz/run.sh [BUILD_DIR]     (default: build; the fuzzers go to BUILD_DIR/fuzz-bench)
#   FUZZ_SECONDS=60  TARGETS="frame store ..." (default: all)  OUT=bench/results/fuzz.md
# exit: 0 when no target found anything, 1 otherwise (the page is written either way), 3 when
# clang or libFuzzer is missing.
set -uo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "$src" && realpath -m "${1:-build}")
seconds=${FUZZ_SECONDS:-60}
out=${OUT:-$src/bench/results/fuzz.md}
raw=$build/fuzz-bench
if [ -n "${TARGETS:-}" ]; then
  read -r -a targets <<<"$TARGETS"
else
  targets=()
  for f in "$src"/fuzz/*_fuzz.cc; do targets+=("$(basename "$f" _fuzz.cc)"); done
fi

rm -rf "$raw" && mkdir -p "$raw"
{
  echo "before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "compiler: $(${CXX_FUZZ:-clang++} --version 2>/dev/null | head -1)"
} >"$raw/machine.txt"
status=0
for name in "${targets[@]}"; do
  echo "== fuzz $name for $seconds s" >&2
  start=$(date +%s.%N)
  bash "$src/fuzz/run.sh" "$name" "$raw" "$seconds" >"$raw/$name.out" 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "$rc" >"$raw/$name.rc"
  echo "$start $end" >"$raw/$name.wall"
  tail -n 1 "$raw/$name.out"
  if [ $rc -eq 3 ]; then
    cat "$raw/$name.out" >&2
    exit 3
  fi
  [ $rc -eq 0 ] || status=1
done
echo "after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$raw/machine.txt"
command="bash bench/fuzz/run.sh ${1:-build}"
[ "$seconds" = 60 ] || command="FUZZ_SECONDS=$seconds $command"
python3 "$src/bench/fuzz/report.py" --raw "$raw" --seconds "$seconds" --command "$command" --out "$out" \
  "${targets[@]}" || status=1
echo "wrote $out"
exit $status
