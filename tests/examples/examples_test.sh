#!/usr/bin/env bash
# The programs under examples/ run as documented: examples/ddp_custom_model under
# `chorus launch` with 1 and 2 ranks exits 0, rank 0 alone prints the loss of each epoch and
# a final line, and the loss falls from the first epoch to the last. examples/tensor_parallel_mlp
# under `chorus launch` with 2 ranks (tp = 2) and 1 exits 0, rank 0 alone prints its step
# losses and a final line whose loss equals the unsplit model's, and the loss falls. With
# SOURCE_DIR, also checks that docs/ddp.md shows the example's code verbatim.
# usage: bash examples_test.sh BUILD_DIR [SOURCE_DIR]
set -u
BUILD=${1:?usage: examples_test.sh BUILD_DIR [SOURCE_DIR]}
SOURCE=${2:-}
CHORUS=$BUILD/chorus
EXAMPLE=$BUILD/ddp_custom_model
for bin in "$CHORUS" "$EXAMPLE"; do
  [ -x "$bin" ] || { echo "FAIL: $bin is not built (build the chorus and ddp_custom_model targets)"; exit 1; }
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

test_ddp_custom_model() {
  local n=$1 out=$TMP/ddp.$1.out err=$TMP/ddp.$1.err rc
  timeout 60 "$CHORUS" launch -n "$n" "$EXAMPLE" >"$out" 2>"$err"
  rc=$?
  if [ $rc -ne 0 ]; then
    fail "ddp_custom_model on $n rank(s): exit status $rc"
    cat "$out" "$err"
    return
  fi
  local ok=1 first final epochs
  epochs=$(grep -c '^\[rank 0\] epoch [0-9]* loss [0-9.]*$' "$out")
  [ "$epochs" -eq 5 ] || { ok=0; echo "  expected 5 epoch lines from rank 0, got $epochs"; }
  first=$(sed -n 's/^\[rank 0\] epoch 0 loss \([0-9.]*\)$/\1/p' "$out")
  final=$(sed -n 's/^\[rank 0\] final loss \([0-9.]*\)$/\1/p' "$out")
  [ -n "$first" ] || { ok=0; echo "  no 'epoch 0 loss' line from rank 0"; }
  [ -n "$final" ] || { ok=0; echo "  no 'final loss' line from rank 0"; }
  if [ -n "$first" ] && [ -n "$final" ] && ! awk -v a="$first" -v b="$final" 'BEGIN { exit !(b < a) }'; then
    ok=0
    echo "  the loss did not fall: epoch 0 $first, final $final"
  fi
  if grep -v '^\[rank 0\] ' "$out" | grep -q .; then
    ok=0
    echo "  ranks other than 0 printed to stdout:"
    grep -v '^\[rank 0\] ' "$out"
  fi
  if [ $ok -eq 1 ]; then
    pass "ddp_custom_model on $n rank(s): loss $first -> $final"
  else
    fail "ddp_custom_model on $n rank(s)"
    cat "$out" "$err"
  fi
}

test_tensor_parallel_mlp() {
  local n=$1 bin=$BUILD/tensor_parallel_mlp out=$TMP/tp.$1.out err=$TMP/tp.$1.err rc
  [ -x "$bin" ] || { fail "$bin is not built (build the tensor_parallel_mlp target)"; return; }
  timeout 60 "$CHORUS" launch -n "$n" "$bin" >"$out" 2>"$err"
  rc=$?
  if [ $rc -ne 0 ]; then
    fail "tensor_parallel_mlp on $n rank(s): exit status $rc"
    cat "$out" "$err"
    return
  fi
  local ok=1 first final unsplit steps
  steps=$(grep -c '^\[rank 0\] step [0-9]* loss [0-9.]*$' "$out")
  [ "$steps" -eq 6 ] || { ok=0; echo "  expected 6 step lines from rank 0, got $steps"; }
  grep -q "^\[rank 0\] mesh pp1 x dp1 x tp$n; rank 0 = (pp0, dp0, tp0)$" "$out" || { ok=0; echo "  no mesh line for tp$n"; }
  first=$(sed -n 's/^\[rank 0\] step 0 loss \([0-9.]*\)$/\1/p' "$out")
  final=$(sed -n 's/^\[rank 0\] final loss \([0-9.]*\) unsplit \([0-9.]*\) max difference .*$/\1/p' "$out")
  unsplit=$(sed -n 's/^\[rank 0\] final loss \([0-9.]*\) unsplit \([0-9.]*\) max difference .*$/\2/p' "$out")
  [ -n "$first" ] || { ok=0; echo "  no 'step 0 loss' line from rank 0"; }
  [ -n "$final" ] || { ok=0; echo "  no 'final loss .. unsplit ..' line from rank 0"; }
  if [ -n "$first" ] && [ -n "$final" ] && ! awk -v a="$first" -v b="$final" 'BEGIN { exit !(b < a) }'; then
    ok=0
    echo "  the loss did not fall: step 0 $first, final $final"
  fi
  # The program itself fails when the losses differ by more than 1e-5; the printed values
  # (6 decimals) must agree too.
  if [ -n "$final" ] && ! awk -v a="$final" -v b="$unsplit" 'BEGIN { d = a - b; exit !(b != "" && d <= 2e-6 && d >= -2e-6) }'; then
    ok=0
    echo "  the final loss $final differs from the unsplit model's $unsplit"
  fi
  if grep -v '^\[rank 0\] ' "$out" | grep -q .; then
    ok=0
    echo "  ranks other than 0 printed to stdout:"
    grep -v '^\[rank 0\] ' "$out"
  fi
  if [ $ok -eq 1 ]; then
    pass "tensor_parallel_mlp on $n rank(s): loss $first -> $final (unsplit $unsplit)"
  else
    fail "tensor_parallel_mlp on $n rank(s)"
    cat "$out" "$err"
  fi
}

# The first ```cpp block after the "verbatim" marker in docs/ddp.md is the example's file.
# test_docs_show_the_example DOC EXAMPLE: DOC quotes examples/EXAMPLE in full, in the ```cpp
# block after the line that says "examples/EXAMPLE, verbatim".
test_docs_show_the_example() {
  local doc=$SOURCE/docs/$1 src=$SOURCE/examples/$2
  [ -n "$SOURCE" ] || { echo "skip: no SOURCE_DIR, docs/$1 not checked"; return; }
  awk -v mark="examples/$2, verbatim" 'index($0, mark) { marked = 1; next }
       marked && !inside && /^```cpp$/ { inside = 1; next }
       inside && /^```$/ { exit }
       inside { print }' "$doc" >"$TMP/doc_example.cc"
  if [ -s "$TMP/doc_example.cc" ] && diff -u "$src" "$TMP/doc_example.cc" >"$TMP/doc.diff"; then
    pass "docs/$1 shows examples/$2 verbatim"
  else
    fail "docs/$1's copy of examples/$2 differs from the file (diff file doc):"
    head -40 "$TMP/doc.diff"
  fi
}

test_ddp_custom_model 2
test_ddp_custom_model 1
test_tensor_parallel_mlp 2
test_tensor_parallel_mlp 1
test_docs_show_the_example ddp.md ddp_custom_model.cc
test_docs_show_the_example model-parallel.md tensor_parallel_mlp.cc

if [ $failures -ne 0 ]; then
  echo "examples_test: $failures FAILED"
  exit 1
fi
echo "examples_test: all passed"
