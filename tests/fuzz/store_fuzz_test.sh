#!/usr/bin/env bash
# Builds fuzz/store_fuzz.cc and runs it briefly from the seed corpus in fuzz/corpus/store/.
# Fails if the build fails or the fuzzer finds a crash, a leak or an unexpected exception.
# usage: bash store_fuzz_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR SOURCE_DIR}
src=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
out="$build/fuzz"

bash "$src/fuzz/build.sh" store "$out"

# libFuzzer adds what it learns to the first corpus directory: a scratch copy, so the seeds
# in the source tree stay as they are.
work="$out/corpus-store"
rm -rf "$work" "$out/artifacts-store"
mkdir -p "$work" "$out/artifacts-store"

"$out/store_fuzz" -runs=200000 -max_total_time=20 -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$out/artifacts-store/" "$work" "$src/fuzz/corpus/store"
echo "store_fuzz: no crash"
