#!/usr/bin/env bash
# Fuzzes the tcp transport's frame decoder and receive state machine (fuzz/frame_fuzz.cc) for 15 s from
# its seed corpus fuzz/corpus/frame/ (fuzz/run.sh builds it with clang, ASan and UBSan). Fails
# if the build fails or the fuzzer finds a crash, a leak, a broken invariant or an unexpected
# exception; skipped (exit 77) where clang or its libFuzzer runtime is not installed.
# usage: bash frame_fuzz_test.sh BUILD_DIR SOURCE_DIR
set -uo pipefail
build=${1:?usage: $0 BUILD_DIR SOURCE_DIR}
src=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

bash "$src/fuzz/run.sh" frame "$build/fuzz" 15
rc=$?
if [ $rc -eq 3 ]; then
  echo "skipped: no clang with libFuzzer here"
  exit 77
fi
exit $rc
