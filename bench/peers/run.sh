#!/usr/bin/env bash
# The all-reduce comparison: chorus (shm and tcp transports, automatic algorithm) against
# OpenMPI's MPI_Allreduce and torch.distributed's Gloo, float32 sum, 4 KiB to 64 MiB, at 2
# and 4 ranks on this machine, all in one run. Writes bench/results/collectives.md (through
# bench/peers/report.py) and keeps the raw outputs in BUILD_DIR/bench-peers/.
#
# usage: bash bench/peers/run.sh [BUILD_DIR]        (default: build)
#   RANKS="2 4"  rank counts to run        REPEAT=3  runs of each, alternating (cells show the median and spread)
#   MIN_BYTES=4K MAX_BYTES=64M             OUT=bench/results/collectives.md
# Builds nothing but the `chorus` and `mpi_allreduce_bench` targets of an existing build dir.
# A part that cannot build or run (no mpirun, no torch) or fails is reported as such in the
# page; the others go on.
set -uo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build_arg=${1:-build}
build=$(cd "$src" && realpath -m "$build_arg")
ranks=(${RANKS:-2 4})
repeat=${REPEAT:-3}
min=${MIN_BYTES:-4K}
max=${MAX_BYTES:-64M}
out=${OUT:-$src/bench/results/collectives.md}
raw=$build/bench-peers

if [[ ! -f $build/build.ninja && ! -f $build/Makefile ]]; then
  echo "run.sh: $build is not a configured build dir; run: cmake -S $src -B $build -G Ninja" >&2
  exit 2
fi
have_chorus=0
cmake --build "$build" --target chorus && have_chorus=1
have_mpi=0
if command -v mpirun > /dev/null 2>&1 && cmake --build "$build" --target mpi_allreduce_bench; then
  have_mpi=1
fi

rm -rf "$raw"
mkdir -p "$raw"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
rel() { local p=$1; echo "${p#"$src"/}"; }

# run NAME CMD...: runs from the source dir, keeps stdout/stderr/exit status/command.
run() {
  local name=$1
  shift
  echo "$*" > "$raw/$name.cmd"
  echo "== $name: $*" >&2
  (cd "$src" && timeout 900 "$@") > "$raw/$name.out" 2> "$raw/$name.err"
  local rc=$?
  echo $rc > "$raw/$name.rc"
  [[ $rc -eq 0 ]] || echo "   $name exited with $rc (see $raw/$name.err)" >&2
}

# not_run NAME REASON: records a part that could not run here.
not_run() {
  echo "$2" > "$raw/$1.err"
  echo "$2" >&2
}

cat /proc/loadavg | awk '{print "before: " $1 " " $2 " " $3}' > "$raw/loadavg.txt"
chorus=$(rel "$build/chorus")
mpibench=$(rel "$build/mpi_allreduce_bench")
for n in "${ranks[@]}"; do
  for r in $(seq 1 "$repeat"); do
    for transport in shm tcp; do
      if [[ $have_chorus -eq 1 ]]; then
        run "chorus-$transport-$n-r$r" "$chorus" bench collectives --op allreduce --ranks "$n" \
          --transport "$transport" --algo auto --min-bytes "$min" --max-bytes "$max" --json
      else
        not_run "chorus-$transport-$n-r$r" "the chorus target did not build (cmake --build $build --target chorus)"
      fi
    done
    if [[ $have_mpi -eq 1 ]]; then
      run "openmpi-$n-r$r" mpirun -n "$n" --oversubscribe --mca btl self,vader "$mpibench" \
        --min-bytes "$min" --max-bytes "$max"
    else
      not_run "openmpi-$n-r$r" "mpirun or the mpi_allreduce_bench target is missing (install openmpi-bin libopenmpi-dev)"
    fi
    if /usr/bin/python3 -c 'import torch.distributed' > /dev/null 2>&1; then
      run "gloo-$n-r$r" /usr/bin/python3 bench/peers/gloo_allreduce.py --ranks "$n" --min-bytes "$min" --max-bytes "$max"
    else
      not_run "gloo-$n-r$r" "/usr/bin/python3 cannot import torch.distributed (install python3-torch)"
    fi
  done
done
cat /proc/loadavg | awk '{print "after: " $1 " " $2 " " $3}' >> "$raw/loadavg.txt"

command="bash bench/peers/run.sh $build_arg"
for v in RANKS REPEAT MIN_BYTES MAX_BYTES; do
  [[ -n ${!v:-} ]] && command="$v=\"${!v}\" $command"
done
py=/usr/bin/python3
[[ -x $py ]] || py=python3
"$py" "$src/bench/peers/report.py" --raw "$raw" --ranks "${ranks[@]}" --repeat "$repeat" \
  --command "$command" --out "$out"
