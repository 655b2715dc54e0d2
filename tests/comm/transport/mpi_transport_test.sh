#!/usr/bin/env bash
# Runs tests/programs/mpi_transport_check under `mpirun -n 2` and `-n 3`: the transport
# conformance suite on the mpi transport (the cases conformance_test runs on the others),
# nativeAllreduce for every dtype and op, and the store address exchange; then every
# collective over the mpi transport at 2, 3 and 4 ranks.
# Usage: bash mpi_transport_test.sh BUILD_DIR SOURCE_DIR
# Skipped (exit 77, which ctest reports as skipped) only when mpirun is not installed or the
# build has MPI turned off.
set -u
build=${1:?usage: mpi_transport_test.sh BUILD_DIR SOURCE_DIR}

if ! command -v mpirun > /dev/null 2>&1; then
  echo "SKIP: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev, then rebuild)"
  exit 77
fi
if grep -q '^CHORUS_WITH_MPI:BOOL=OFF' "$build/CMakeCache.txt" 2> /dev/null; then
  echo "SKIP: this build was configured with -DCHORUS_WITH_MPI=OFF"
  exit 77
fi

check=""
for candidate in "$build/tests/mpi_transport_check" "$build/mpi_transport_check" "$build/tests/programs/mpi_transport_check"; do
  if [[ -x $candidate ]]; then check=$candidate; break; fi
done
if [[ -z $check ]]; then
  echo "FAIL: mpi_transport_check is not built under $build (cmake --build $build --target mpi_transport_check)"
  exit 1
fi

# OpenMPI refuses to run as root unless told; containers often run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
status=0
for n in 2 3; do
  echo "== mpirun -n $n $check"
  timeout 280 mpirun -n "$n" --oversubscribe --mca btl self,vader "$check"
  rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "FAIL: mpi_transport_check with $n ranks exited with $rc$([[ $rc -eq 124 ]] && echo ' (timed out)')"
    status=1
  fi
done

# Every collective and algorithm over the mpi transport, checked against expected values by
# the same program the shm/tcp launch tests run (collective_check).
collective=$(dirname "$check")/collective_check
if [[ ! -x $collective ]]; then
  echo "FAIL: collective_check is not built next to $check"
  exit 1
fi
for n in 2 3 4; do
  echo "== CHORUS_TRANSPORT=mpi mpirun -n $n $collective"
  CHORUS_TRANSPORT=mpi timeout 280 mpirun -n "$n" --oversubscribe --mca btl self,vader -x CHORUS_TRANSPORT "$collective"
  rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "FAIL: collective_check over the mpi transport with $n ranks exited with $rc"
    status=1
  fi
done
exit $status
