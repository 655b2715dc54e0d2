# Shell helpers the benchmark scripts share; source it from a bench/<name>/run.sh:
#   source "$src/bench/common/run_lib.sh"
#
# bench_run NAME CMD...  runs CMD from $src under `timeout ${BENCH_TIMEOUT:-3600}` and keeps, in
#   $raw: NAME.cmd (the command, shell-quoted), NAME.out, NAME.err, NAME.rc (exit status) and
#   NAME.wall (seconds). A run that fails is named on stderr with its last error line and added
#   to the caller's `failed` array. The last error line is the last line of NAME.err that
#   matches $BENCH_ERROR_LINE (an extended regex, e.g. a rank's "error" line rather than the
#   launcher's closing one) and does not match $BENCH_SKIP_LINE, else its last non-blank line.
# Needs: src, raw, and an array `failed` declared by the caller.

bench_run() {
  local name=$1
  shift
  printf '%q ' "$@" | sed 's/ $//' > "$raw/$name.cmd"
  echo "== $name: $(cat "$raw/$name.cmd")" >&2
  local t0
  t0=$(date +%s.%N)
  (cd "$src" && timeout "${BENCH_TIMEOUT:-3600}" "$@") > "$raw/$name.out" 2> "$raw/$name.err"
  local rc=$?
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' > "$raw/$name.wall"
  echo $rc > "$raw/$name.rc"
  if [[ $rc -ne 0 ]]; then
    local last="" lines
    lines=$(grep -v '^[[:space:]]*$' "$raw/$name.err")
    [[ -n ${BENCH_SKIP_LINE:-} ]] && lines=$(grep -Ev -e "$BENCH_SKIP_LINE" <<< "$lines")
    [[ -n ${BENCH_ERROR_LINE:-} ]] && last=$(grep -Ei -e "$BENCH_ERROR_LINE" <<< "$lines" | tail -n 1)
    [[ -n $last ]] || last=$(tail -n 1 <<< "$lines")
    echo "run.sh: $name failed with exit status $rc: ${last:-no error output} (all of it: $raw/$name.err)" >&2
    failed+=("$name")
  fi
}
