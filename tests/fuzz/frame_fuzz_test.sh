#!/usr/bin/env bash
# Builds fuzz/frame_fuzz.cc (the tcp transport's frame decoder and receive state machine) and
# runs it briefly from the seed corpus in fuzz/corpus/frame/. Fails if the build fails or the
# fuzzer finds a crash, a leak, a broken invariant or an unexpected exception.
# usage: bash frame_fuzz_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR SOURCE_DIR}
src=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
out="$build/fuzz"

bash "$src/fuzz/build.sh" frame "$out"

# libFuzzer adds what it learns to the first corpus directory: a scratch copy, so the seeds
# in the source tree stay as they are.
work="$out/corpus-frame"
rm -rf "$work" "$out/artifacts-frame"
mkdir -p "$work" "$out/artifacts-frame"

"$out/frame_fuzz" -max_total_time=15 -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$out/artifacts-frame/" "$work" "$src/fuzz/corpus/frame"
echo "frame_fuzz: no crash"
