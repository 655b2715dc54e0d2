#!/usr/bin/env bash
# (Re)writes the seed corpora of the fuzz targets that make their own (those that use
# CHORUS_FUZZ_SEEDS, see fuzz/seeds.h) into fuzz/corpus/NAME/. Files a target does not write
# are kept: the inputs of past findings (finding-*) stay in the corpus as regression seeds.
# usage: bash fuzz/make_seeds.sh [NAME...]   (default: every such target)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in "$root"/fuzz/*_fuzz.cc; do
    grep -q '^CHORUS_FUZZ_SEEDS(' "$f" && names+=("$(basename "$f" _fuzz.cc)")
  done
fi
for name in "${names[@]}"; do
  bash "$root/fuzz/build.sh" "$name" "$out" >/dev/null
  mkdir -p "$root/fuzz/corpus/$name"
  CHORUS_FUZZ_WRITE_SEEDS="$root/fuzz/corpus/$name" "$out/${name}_fuzz"
  echo "fuzz/corpus/$name: $(ls "$root/fuzz/corpus/$name" | wc -l) files, $(du -sb "$root/fuzz/corpus/$name" | cut -f1) bytes"
done
