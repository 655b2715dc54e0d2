#!/usr/bin/env bash
# Builds fuzz/NAME_fuzz.cc (fuzz/build.sh) and runs it for SECONDS from its seed corpus
# fuzz/corpus/NAME/, single-process, under ASan and UBSan; the test scripts (tests/fuzz/) and
# `make fuzz` (bench/fuzz/run.sh) both go through here.
#
# libFuzzer adds what it learns to the first corpus directory: a scratch copy in
# OUTDIR/corpus-NAME, so the seeds in the source tree stay as they are. Its whole log goes to
# OUTDIR/logs/NAME.log; a crash, leak, timeout, out-of-memory or failed invariant leaves the
# input in OUTDIR/artifacts-NAME/ (replay it with: OUTDIR/NAME_fuzz FILE). A target may set
#   // fuzz-max-len: N     the longest input tried (default 4096)
# and have a libFuzzer dictionary of tokens to splice in, fuzz/NAME.dict.
#
# usage: fuzz/run.sh NAME OUTDIR SECONDS [libFuzzer flags...]
# exit: 0 no finding; 1 a finding or a failed build; 2 usage; 3 clang or libFuzzer missing.
# (libFuzzer itself exits 77 on a finding, which is ctest's skip code for the script tests, so
# its status is never passed on as it is.)
set -uo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 NAME OUTDIR SECONDS [libFuzzer flags...]" >&2
  exit 2
fi
name=$1
out=$2
seconds=$3
shift 3
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seeds="$root/fuzz/corpus/$name"

bash "$root/fuzz/build.sh" "$name" "$out"
rc=$?
[ $rc -eq 0 ] || exit $rc
corpora=("$seeds")
if [ ! -d "$seeds" ]; then
  echo "fuzz/run.sh: no seed corpus $seeds; starting from nothing (bash fuzz/make_seeds.sh $name makes one)" >&2
  corpora=()
fi

dict=()
[ -f "$root/fuzz/$name.dict" ] && dict=(-dict="$root/fuzz/$name.dict")
maxlen=$(sed -n 's|^// fuzz-max-len:[[:space:]]*||p' "$root/fuzz/${name}_fuzz.cc" | head -1)
work="$out/corpus-$name"
artifacts="$out/artifacts-$name"
log="$out/logs/$name.log"
rm -rf "$work" "$artifacts"
mkdir -p "$work" "$artifacts" "$out/logs"

"$out/${name}_fuzz" -max_total_time="$seconds" -max_len="${maxlen:-4096}" -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" ${dict[@]+"${dict[@]}"} "$@" "$work" ${corpora[@]+"${corpora[@]}"} >"$log" 2>&1
rc=$?

# The last status line ("#N DONE cov: .. ft: .. corp: U/Bb ...") and the final stats.
runs=$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$log" | tail -1)
speed=$(sed -n 's/^stat::average_exec_per_sec:[[:space:]]*//p' "$log" | tail -1)
took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | cut -d' ' -f2)
if [ $rc -eq 0 ] && [ -z "$(ls -A "$artifacts")" ]; then
  tail -n 8 "$log"
  echo "fuzz $name: ${runs:-?} runs (${speed:-?}/s) in ${took:-?} s, corpus ${corp:-?}; no finding"
  exit 0
fi
tail -n 60 "$log"
echo "fuzz $name: FINDING (libFuzzer exit $rc) after ${runs:-?} runs; the input is in $artifacts/:" >&2
ls -l "$artifacts" >&2
echo "replay: $out/${name}_fuzz $artifacts/<file>   (full log: $log)" >&2
exit 1
