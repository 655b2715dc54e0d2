#!/usr/bin/env bash
# chorus installs as a package that other CMake projects use (docs/install.md):
#  1. `cmake --install BUILD_DIR --prefix TMP` puts the chorus CLI, the static libraries, every
#     header of src/chorus under include/chorus/, and the CMake package in place; the installed
#     `chorus --version` says what the build's says;
#  2. examples/ builds as a project of its own against that prefix (find_package(chorus CONFIG),
#     chorus::chorus), and its ddp_custom_model trains on 2 ranks under the installed
#     `chorus launch -n 2`;
#  3. find_package(chorus CONFIG COMPONENTS comm) loads the torch-free targets without
#     LibTorch, and a request for a version it is not compatible with finds nothing;
#  4. a project that add_subdirectory()s the source tree gets the same chorus:: names with
#     chorus's tests off, and a program linking chorus::common builds and runs.
# Needs the chorus target built. Takes about a minute (one LibTorch program compiles).
# usage: bash install_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=$(cd "${1:?usage: install_test.sh BUILD_DIR SOURCE_DIR}" && pwd)
SOURCE=$(cd "${2:?usage: install_test.sh BUILD_DIR SOURCE_DIR}" && pwd)
[ -x "$BUILD/chorus" ] || { echo "FAIL: $BUILD/chorus is not built (build the chorus target)"; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT   # a signal (ctest's timeout, ^C) still runs the EXIT trap
trap 'exit 143' TERM
PREFIX=$TMP/prefix
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
# Runs a step quietly; on failure prints its log and stops the test (later steps need it).
run_or_stop() {
  local what=$1 log=$TMP/step.log
  shift
  if ! "$@" >"$log" 2>&1; then
    echo "FAIL: $what: $*"
    tail -40 "$log"
    echo "install_test: FAILED"
    exit 1
  fi
}

# 1. The install tree.
run_or_stop "cmake --install" cmake --install "$BUILD" --prefix "$PREFIX"
config=$(find "$PREFIX" -path '*/cmake/chorus/chorusConfig.cmake' | head -1)
missing=()
for f in bin/chorus include/chorus/common/version.h include/chorus/comm/group.h \
         include/chorus/parallel/data/ddp.h; do
  [ -e "$PREFIX/$f" ] || missing+=("$f")
done
for lib in common net rendezvous shm tcp mpi comm ps compress parallel train; do
  [ -n "$(find "$PREFIX" -name "libchorus_$lib.a")" ] || missing+=("libchorus_$lib.a")
done
[ -n "$config" ] || missing+=("lib/cmake/chorus/chorusConfig.cmake")
[ -n "$config" ] && for f in chorusConfigVersion.cmake chorusCommTargets.cmake chorusTorchTargets.cmake; do
  [ -e "$(dirname "$config")/$f" ] || missing+=("$f")
done
if [ ${#missing[@]} -eq 0 ]; then pass "the install tree has the CLI, the libraries and the CMake package"
else fail "the install tree lacks: ${missing[*]}"; fi
want_headers=$(cd "$SOURCE/src" && find chorus -name '*.h' | sort)
got_headers=$(cd "$PREFIX/include" 2>/dev/null && find chorus -name '*.h' | sort)
if [ -n "$want_headers" ] && [ "$want_headers" = "$got_headers" ]; then
  pass "every header of src/chorus is installed under include/chorus ($(echo "$want_headers" | wc -l))"
else
  fail "the installed headers differ from src/chorus/**.h (< source, > installed):"
  diff <(echo "$want_headers") <(echo "$got_headers") | head -20
fi
build_version=$("$BUILD/chorus" --version 2>&1)
installed_version=$("$PREFIX/bin/chorus" --version 2>&1)
if [[ "$installed_version" =~ ^chorus\ [0-9]+\.[0-9]+\.[0-9]+\ \(commit\ .+\)$ ]] &&
   [ "$installed_version" = "$build_version" ]; then
  pass "the installed chorus --version: $installed_version"
else
  fail "the installed chorus --version printed '$installed_version'; the build's prints '$build_version'"
fi

# 2. examples/ as a separate project against the installed package.
run_or_stop "configure examples/ against the install" \
  cmake -S "$SOURCE/examples" -B "$TMP/examples" "${GEN[@]}" -DCMAKE_PREFIX_PATH="$PREFIX"
found=$(sed -n 's/^chorus_DIR:PATH=//p' "$TMP/examples/CMakeCache.txt")
if [ -n "$config" ] && [ "$found" = "$(dirname "$config")" ]; then
  pass "examples/ found the installed package ($found)"
else
  fail "examples/ found chorus at '$found', not in the install prefix $PREFIX"
fi
run_or_stop "build examples/ddp_custom_model against the install" \
  cmake --build "$TMP/examples" --target ddp_custom_model -j 2
out=$TMP/ddp.out
timeout 120 "$PREFIX/bin/chorus" launch -n 2 "$TMP/examples/ddp_custom_model" >"$out" 2>&1
rc=$?
if [ $rc -eq 0 ] && grep -q '^\[rank 0\] epoch 0 loss [0-9.]*$' "$out" &&
   grep -q '^\[rank 0\] final loss [0-9.]*$' "$out"; then
  pass "ddp_custom_model built against the install trains on 2 ranks: $(grep 'final loss' "$out")"
else
  fail "ddp_custom_model built against the install, under the installed chorus launch -n 2: exit $rc"
  tail -20 "$out"
fi

# 3. Components and version checks, configure only.
mkdir -p "$TMP/comm_only"
cat >"$TMP/comm_only/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.22)
project(comm_only LANGUAGES CXX)
find_package(chorus 0.1 CONFIG REQUIRED COMPONENTS comm ps)
if(NOT TARGET chorus::comm OR NOT TARGET chorus::ps OR NOT TARGET chorus::mpi)
  message(FATAL_ERROR "COMPONENTS comm ps gave no chorus::comm, chorus::ps or chorus::mpi")
endif()
if(TARGET chorus::train OR TARGET torch OR DEFINED TORCH_LIBRARIES)
  message(FATAL_ERROR "COMPONENTS comm ps loaded the LibTorch layers")
endif()
find_package(chorus 999 CONFIG QUIET)
if(chorus_FOUND)
  message(FATAL_ERROR "find_package(chorus 999) accepted chorus ${chorus_VERSION}")
endif()
CMAKE
run_or_stop "find_package(chorus COMPONENTS comm ps) without LibTorch" \
  cmake -S "$TMP/comm_only" -B "$TMP/comm_only/build" "${GEN[@]}" -DCMAKE_PREFIX_PATH="$PREFIX"
pass "find_package(chorus 0.1 COMPONENTS comm ps) loads no LibTorch; chorus 999 is refused"

# 4. add_subdirectory of the source tree.
run_or_stop "configure tests/install/subproject (add_subdirectory of chorus)" \
  cmake -S "$SOURCE/tests/install/subproject" -B "$TMP/sub" "${GEN[@]}" -DCHORUS_SOURCE="$SOURCE"
run_or_stop "build version_consumer in the add_subdirectory project" \
  cmake --build "$TMP/sub" --target version_consumer -j 2
sub_version=$("$TMP/sub/version_consumer" 2>&1)
if [ "$sub_version" = "$build_version" ]; then
  pass "add_subdirectory: a program linking chorus::common prints '$sub_version'"
else
  fail "add_subdirectory: version_consumer printed '$sub_version', the build's chorus '$build_version'"
fi
if grep -q 'allreduce_test\|ddp_custom_model' "$TMP/sub/build.ninja" "$TMP/sub/Makefile" 2>/dev/null; then
  fail "add_subdirectory: chorus's tests or examples are part of the using project's build"
else
  pass "add_subdirectory: chorus's tests and examples are off"
fi

if [ $failures -ne 0 ]; then
  echo "install_test: $failures FAILED"
  exit 1
fi
echo "install_test: all passed"
