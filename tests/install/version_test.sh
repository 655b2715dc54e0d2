#!/usr/bin/env bash
# `chorus --version` and `chorus version` print "chorus X.Y.Z (commit HASH)" with the version
# of project(chorus VERSION ...) and, in a git checkout, the 12-digit HEAD commit (maybe
# "-dirty"); `chorus help` lists the command; `chorus help version` explains it.
# usage: bash version_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=${1:?usage: version_test.sh BUILD_DIR SOURCE_DIR}
SOURCE=${2:?usage: version_test.sh BUILD_DIR SOURCE_DIR}
CHORUS=$BUILD/chorus
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built (build the chorus target)"; exit 1; }
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

want=$(sed -n 's/^project(chorus VERSION \([0-9.]*\)$/\1/p' "$SOURCE/CMakeLists.txt")
[ -n "$want" ] || fail "no 'project(chorus VERSION x.y.z' line in $SOURCE/CMakeLists.txt"
commit="unknown"
if [ "$(git -C "$SOURCE" rev-parse --show-toplevel 2>/dev/null)" = "$(cd "$SOURCE" && pwd -P)" ]; then
  commit="$(git -C "$SOURCE" rev-parse --short=12 HEAD)(-dirty)?"
fi

line=$("$CHORUS" --version)
rc=$?
if [ $rc -eq 0 ] && [[ "$line" =~ ^chorus\ ${want//./\\.}\ \(commit\ ${commit}\)$ ]]; then
  pass "chorus --version: $line"
else
  fail "chorus --version (exit $rc) printed '$line'; expected 'chorus $want (commit $commit)'" \
       "(a build older than the last commit? rebuild the chorus target)"
fi
line2=$("$CHORUS" version)
[ $? -eq 0 ] && [ "$line2" = "$line" ] && pass "chorus version prints the same line" ||
  fail "chorus version printed '$line2', chorus --version '$line'"
"$CHORUS" help | grep -q '^  version  ' && pass "chorus help lists version" ||
  fail "chorus help does not list the version command"
"$CHORUS" help version | grep -q '^usage: chorus version' && pass "chorus help version" ||
  fail "chorus help version shows no usage"
"$CHORUS" version extra >/dev/null 2>&1
[ $? -eq 2 ] && pass "chorus version extra is a usage error (2)" || fail "chorus version extra did not exit 2"

if [ $failures -ne 0 ]; then
  echo "version_test: $failures FAILED"
  exit 1
fi
echo "version_test: all passed"
