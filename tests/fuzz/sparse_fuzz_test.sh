#!/usr/bin/env bash
# Fuzzes the sparse codecs' message decoder, Elias-Fano indices included (fuzz/sparse_fuzz.cc) for 15 s from
# its seed corpus fuzz/corpus/sparse/ (fuzz/run.sh builds it with clang, ASan and UBSan). Fails
# if the build fails or the fuzzer finds a crash, a leak, a broken invariant or an unexpected
# exception; skipped (exit 77) where clang or its libFuzzer runtime is not installed.
# usage: bash sparse_fuzz_test.sh BUILD_DIR SOURCE_DIR
set -uo pipefail
build=${1:?usage: $0 BUILD_DIR SOURCE_DIR}
src=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

bash "$src/fuzz/run.sh" sparse "$build/fuzz" 15
rc=$?
if [ $rc -eq 3 ]; then
  echo "skipped: no clang with libFuzzer here"
  exit 77
fi
exit $rc
