#!/usr/bin/env bash
# All-reduce across hosts: 2 netlab hosts x 2 ranks (tools/netlab: network namespaces with their
# own hostnames, joined by a bridge), each host's link shaped to 1 Gbit/s and then 100 Mbit/s.
# For each rate, REPEAT rounds; in each round, for each size, three runs alternate:
#   hier     chorus, mixed transport (shm inside a host, tcp between), --algo hier
#   ring     chorus, tcp transport for every pair, --algo ring (the flat ring)
#   openmpi  OpenMPI's MPI_Allreduce (bench/peers/mpi_allreduce.c; vader inside a host, tcp
#            between)
# all launched by `mpirun -H h0:2,h1:2` from host 0 with `netlab.sh rsh` as its rsh agent.
# float32 sum at 4 KiB (latency), 1, 16 and 64 MiB; every run checks its result exactly.
# Then (section "training") at 100 Mbit/s, TRAIN_REPEAT rounds of the Fashion-MNIST CNN of
# bench/compression (cnn.toml, the first TRAIN_LIMIT training samples, 5 epochs) on the same
# 2 x 2 ranks, alternating: dense, PowerSGD among all ranks (scope all) and between hosts only
# (compression.scope = inter-host), DGC likewise: the time each needs to reach dense's final
# accuracy.
# Then (section "ps") at 100 Mbit/s, PS_REPEAT rounds of the parameter-server job on the same
# CNN: 2 workers on host 0 and 2 servers on host 1 (ps.servers = 2, bsp), so every push and
# pull crosses the host link; the first PS_LIMIT samples, PS_EPOCHS epochs; pushes dense, then
# compressed by the workers (fp16, top-k 1%, DGC), alternating: throughput against dense.
# Writes bench/results/hosts.md (through bench/hosts/report.py); raw outputs stay in
# BUILD_DIR/bench-hosts/. Needs root (network namespaces), mpirun and a chorus built with MPI.
#
# usage: bash bench/hosts/run.sh [BUILD_DIR]      (default: build)
#   RATES="1gbit 100mbit"  REPEAT=3  SIZES="4K 1M 16M 64M"  OUT=bench/results/hosts.md
#   SECTIONS="allreduce training ps"  TRAIN_REPEAT=3  TRAIN_LIMIT=12800
#   PS_REPEAT=3  PS_LIMIT=6400  PS_EPOCHS=2
#   Sizes of 16 MiB and more run 3 timed calls after 1 warm-up (at 100 Mbit/s a 64 MiB flat
#   ring takes ~8 s per call); smaller ones time themselves (about 0.25 s of calls).
set -uo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build_arg=${1:-build}
build=$(cd "$src" && realpath -m "$build_arg")
rates=(${RATES:-1gbit 100mbit})
repeat=${REPEAT:-3}
sizes=(${SIZES:-4K 1M 16M 64M})
sections=" ${SECTIONS:-allreduce training ps} "
train_repeat=${TRAIN_REPEAT:-3}
train_limit=${TRAIN_LIMIT:-12800}
train_methods=(dense powersgd-all powersgd-inter dgc-all dgc-inter)
ps_repeat=${PS_REPEAT:-3}
ps_limit=${PS_LIMIT:-6400}
ps_epochs=${PS_EPOCHS:-2}
ps_methods=(dense fp16 topk dgc)
out=${OUT:-$src/bench/results/hosts.md}
raw=$build/bench-hosts
netlab=$src/tools/netlab/netlab.sh
lab=bh$$
export BENCH_TIMEOUT=${BENCH_TIMEOUT:-900}

[[ $(id -u) -eq 0 ]] || { echo "run.sh: needs root (network namespaces)" >&2; exit 2; }
command -v mpirun > /dev/null || { echo "run.sh: needs mpirun (apt install openmpi-bin)" >&2; exit 2; }
cmake --build "$build" --target chorus mpi_allreduce_bench || exit 2
ldd "$build/chorus" | grep -q libmpi || { echo "run.sh: $build/chorus was built without MPI" >&2; exit 2; }

rm -rf "$raw" && mkdir -p "$raw"
failed=()
source "$src/bench/common/run_lib.sh"
cleanup() { "$netlab" down "$lab" > /dev/null 2>&1; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_plm_rsh_agent="$netlab rsh"
export OMPI_MCA_oob_tcp_if_include=10.77.0.0/24 OMPI_MCA_btl_tcp_if_include=10.77.0.0/24
rel() { echo "${1#"$src"/}"; }
chorus=$(rel "$build/chorus")
mpibench=$(rel "$build/mpi_allreduce_bench")

cat /proc/loadavg | awk '{print "before: " $1 " " $2 " " $3}' > "$raw/loadavg.txt"
[[ $sections == *" allreduce "* ]] || rates=()
for rate in "${rates[@]}"; do
  "$netlab" up 2 --rate "$rate" --name "$lab" > /dev/null || { echo "run.sh: netlab up failed" >&2; exit 1; }
  mpirun=(tools/netlab/netlab.sh run "$lab" 0 -- mpirun -H "$lab-h0:2,$lab-h1:2" -n 4 -x CHORUS_TIMEOUT_MS=600000)
  for r in $(seq 1 "$repeat"); do
    for size in "${sizes[@]}"; do
      iters=()
      case $size in 4K|1M|4096|1048576) ;; *) iters=(--iters 3 --warmup 1) ;; esac
      bench_run "hier-$rate-$size-r$r" "${mpirun[@]}" "$chorus" bench collectives --transport mixed \
        --op allreduce --algo hier --min-bytes "$size" --max-bytes "$size" "${iters[@]}"
      bench_run "ring-$rate-$size-r$r" "${mpirun[@]}" "$chorus" bench collectives --transport tcp \
        --op allreduce --algo ring --min-bytes "$size" --max-bytes "$size" "${iters[@]}"
      bench_run "openmpi-$rate-$size-r$r" "${mpirun[@]}" --mca btl self,vader,tcp "$mpibench" \
        --min-bytes "$size" --max-bytes "$size" "${iters[@]}"
    done
  done
  "$netlab" down "$lab" > /dev/null
done

# The arguments of one training method.
method_args() {
  case $1 in
    dense) ;;
    powersgd-*) echo "--set compression.method=powersgd --set compression.rank=4" ;;
    dgc-*) echo "--set compression.method=dgc --set optim.momentum=0" ;;
  esac
  [[ $1 == *-inter ]] && echo "--set compression.scope=inter-host"
}
if [[ $sections == *" training "* ]]; then
  "$netlab" up 2 --rate 100mbit --name "$lab" > /dev/null || { echo "run.sh: netlab up failed" >&2; exit 1; }
  mpirun=(tools/netlab/netlab.sh run "$lab" 0 -- mpirun -H "$lab-h0:2,$lab-h1:2" -n 4)
  for r in $(seq 1 "$train_repeat"); do
    for m in "${train_methods[@]}"; do
      read -ra margs <<< "$(method_args "$m" | tr '\n' ' ')"
      bench_run "train-$m-r$r" "${mpirun[@]}" "$chorus" train bench/compression/cnn.toml \
        --set "data.limit_train=$train_limit" --set train.threads=1 --set output.progress=none \
        "${margs[@]}" --set "output.dir=$raw/train-$m-r$r"
    done
  done
  "$netlab" down "$lab" > /dev/null
else
  train_repeat=0
fi
# The settings of one parameter-server push method.
ps_args() {
  case $1 in
    dense) ;;
    fp16) echo "--set compression.method=fp16" ;;
    topk) echo "--set compression.method=topk --set compression.ratio=0.01" ;;
    dgc) echo "--set compression.method=dgc --set optim.momentum=0" ;;
  esac
}
if [[ $sections == *" ps "* ]]; then
  "$netlab" up 2 --rate 100mbit --name "$lab" > /dev/null || { echo "run.sh: netlab up failed" >&2; exit 1; }
  mpirun=(tools/netlab/netlab.sh run "$lab" 0 -- mpirun -H "$lab-h0:2,$lab-h1:2" -n 4)
  for r in $(seq 1 "$ps_repeat"); do
    for m in "${ps_methods[@]}"; do
      read -ra margs <<< "$(ps_args "$m" | tr '\n' ' ')"
      bench_run "ps-$m-r$r" "${mpirun[@]}" "$chorus" train bench/compression/cnn.toml --set ps.servers=2 \
        --set "data.limit_train=$ps_limit" --set "train.epochs=$ps_epochs" --set train.threads=1 \
        --set output.progress=none "${margs[@]}" --set "output.dir=$raw/ps-$m-r$r"
    done
  done
  "$netlab" down "$lab" > /dev/null
else
  ps_repeat=0
fi
cat /proc/loadavg | awk '{print "after: " $1 " " $2 " " $3}' >> "$raw/loadavg.txt"
python3 "$src/bench/hosts/report.py" --raw "$raw" --rates "${rates[@]}" --sizes "${sizes[@]}" --repeat "$repeat" \
  --train-repeat "$train_repeat" --train-methods "${train_methods[@]}" --train-limit "$train_limit" \
  --ps-repeat "$ps_repeat" --ps-methods "${ps_methods[@]}" --ps-limit "$ps_limit" --ps-epochs "$ps_epochs" \
  --command "bash bench/hosts/run.sh $build_arg" --out "$out"
echo "wrote $out"
[[ ${#failed[@]} -eq 0 ]] || { echo "run.sh: failed runs: ${failed[*]}" >&2; exit 1; }
