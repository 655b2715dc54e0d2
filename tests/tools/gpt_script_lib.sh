# Sourced first by the GPT script tests, with the test's name and its arguments:
#   source "$(dirname "${BASH_SOURCE[0]}")/gpt_script_lib.sh" NAME "$@"
# Checks BUILD_DIR SOURCE_DIR and the chorus binary (BUILD, SOURCE, CHORUS; PY is the Python with
# torch), makes TMP (removed on exit), defines pass/fail (fail counts in $failures), final_loss
# DIR (the last eval record's val_loss of a run folder) and finish (the summary line, then the
# exit status), and sets CORPUS: the fortunes package's folder, or, when the package is missing,
# ten files of English-like text made under $TMP.
set -u
_script=$1
shift
BUILD=${1:?usage: $_script BUILD_DIR SOURCE_DIR}
SOURCE=${2:?usage: $_script BUILD_DIR SOURCE_DIR}
CHORUS=$BUILD/chorus
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built"; exit 1; }
PY=/usr/bin/python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

final_loss() {
  $PY -c 'import json,sys
ls=[json.loads(l) for l in open(sys.argv[1])]
print([e for e in ls if e["event"]=="eval"][-1]["val_loss"])' "$1/metrics.jsonl" 2>&1
}

finish() {
  [ $failures -eq 0 ] && echo "$_script: all passed" || echo "$_script: $failures failure(s)"
  [ $failures -eq 0 ]
}

CORPUS=/usr/share/games/fortunes
if [ ! -d "$CORPUS" ]; then
  CORPUS=$TMP/corpus
  mkdir -p "$CORPUS"
  for i in 0 1 2 3 4 5 6 7 8 9; do
    for j in $(seq 1 200); do echo "A fortune, number $j of file $i, says that the test is running."; done \
      > "$CORPUS/f$i"
  done
fi
