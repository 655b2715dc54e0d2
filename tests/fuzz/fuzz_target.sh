#!/usr/bin/env bash
# One fuzz target as a ctest (tests/CMakeLists.txt registers NAME_fuzz_test for every
# fuzz/NAME_fuzz.cc): fuzz/run.sh builds it with clang, ASan and UBSan and runs it for SECONDS
# from its seed corpus fuzz/corpus/NAME/. Fails if the build fails or the fuzzer finds a crash,
# a leak, a broken invariant or an unexpected exception; skipped (exit 77) where clang or its
# libFuzzer runtime is not installed.
# usage: bash fuzz_target.sh NAME BUILD_DIR SOURCE_DIR [SECONDS]
set -uo pipefail
name=${1:?usage: $0 NAME BUILD_DIR SOURCE_DIR [SECONDS]}
build=${2:?usage: $0 NAME BUILD_DIR SOURCE_DIR [SECONDS]}
src=${3:?usage: $0 NAME BUILD_DIR SOURCE_DIR [SECONDS]}
seconds=${4:-15}

bash "$src/fuzz/run.sh" "$name" "$build/fuzz" "$seconds"
rc=$?
if [ $rc -eq 3 ]; then
  echo "skipped: no clang with libFuzzer here"
  exit 77
fi
exit $rc
