#!/usr/bin/env bash
# Builds one libFuzzer target: fuzz/NAME_fuzz.cc plus the library sources it lists on lines
#   // fuzz-sources: src/chorus/a.cc src/chorus/b.cc
# (paths relative to the repository root; several such lines may appear) and the libraries on
#   // fuzz-libs: -lz
# lines, with clang, AddressSanitizer and UndefinedBehaviorSanitizer, into OUTDIR/NAME_fuzz.
# The targets are torch-free: the decoders they test live in torch-free files for that reason.
#
# usage: fuzz/build.sh NAME OUTDIR
#   CXX_FUZZ   the compiler (default: clang++)
#   FUZZ_FLAGS extra compiler flags (e.g. -O2, or -fsanitize=fuzzer,memory instead)
# exit: 0 built; 1 the compiler failed; 2 usage or a bad target; 3 clang or its libFuzzer
#       runtime is not installed (the tests report that as skipped)
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 NAME OUTDIR   (builds fuzz/NAME_fuzz.cc into OUTDIR/NAME_fuzz)" >&2
  exit 2
fi
name=$1
out=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/fuzz/${name}_fuzz.cc"
cxx=${CXX_FUZZ:-clang++}

if [ ! -f "$src" ]; then
  echo "fuzz/build.sh: no fuzz target $src" >&2
  exit 2
fi
if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "fuzz/build.sh: $cxx not found; libFuzzer needs clang (apt-get install clang libclang-rt-14-dev)" >&2
  exit 3
fi
runtime=$("$cxx" -print-runtime-dir 2>/dev/null || true)
if [ -n "$runtime" ] && ! ls "$runtime"/libclang_rt.fuzzer*.a >/dev/null 2>&1 &&
   ! ls "$runtime"/*/libclang_rt.fuzzer*.a >/dev/null 2>&1; then
  echo "fuzz/build.sh: $cxx has no libFuzzer runtime in $runtime (apt-get install libclang-rt-14-dev)" >&2
  exit 3
fi

sources=()
while read -r rel; do
  [ -n "$rel" ] || continue
  if [ ! -f "$root/$rel" ]; then
    echo "fuzz/build.sh: $src lists $rel, which does not exist" >&2
    exit 2
  fi
  sources+=("$root/$rel")
done < <(sed -n 's|^// fuzz-sources:||p' "$src" | tr ' \t' '\n\n')
# shellcheck disable=SC2207
libs=($(sed -n 's|^// fuzz-libs:||p' "$src"))

mkdir -p "$out"
# shellcheck disable=SC2086
"$cxx" -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -fno-omit-frame-pointer -I "$root/src" ${FUZZ_FLAGS:-} "$src" "${sources[@]}" -pthread \
  ${libs[@]+"${libs[@]}"} -o "$out/${name}_fuzz" || exit 1
echo "built $out/${name}_fuzz"
