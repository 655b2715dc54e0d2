#!/usr/bin/env bash
# Installs whatever chorus needs that is missing. Idempotent: a second run installs nothing.
set -euo pipefail
# libopenblas0-openmp: Debian's LibTorch calls the system BLAS, and the default one is the
# reference BLAS (~7 GFLOP/s here); OpenBLAS is ~40x faster and, in its OpenMP build, obeys
# torch's thread count. It serves chorus and the PyTorch peer alike.
# lld: links in about a third of GNU ld's time (CMakeLists.txt uses it when it is there).
# fortunes: the text the GPT trains on (data.dataset = "fortunes", /usr/share/games/fortunes).
# python3-yaml: tests/tools/k8s_test.sh reads the Kubernetes manifest (python3-torch needs it too).
# slurm-wlm, munge: a real Slurm cluster on netlab's hosts (tools/netlab/slurm.sh,
# tests/tools/slurm_test.sh), which starts its own daemons with a private configuration.
pkgs=(cmake ninja-build g++ clang lld libclang-rt-14-dev libtorch-dev libopenmpi-dev openmpi-bin
      libgtest-dev dataset-fashion-mnist python3-torch libopenblas0-openmp zlib1g-dev fortunes
      slurm-wlm munge python3-yaml)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "bootstrap: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

# The packages enable munge, slurmd and slurmctld as system services with the machine's
# /etc/munge and /etc/slurm, and start them where an init system runs. chorus needs none of
# them: stop and disable the ones installed just now (a machine's existing Slurm is left alone).
services=()
for p in "${missing[@]}"; do
  case $p in
    munge) services+=(munge) ;;
    slurm-wlm) services+=(slurmd slurmctld) ;;
  esac
done
if [ ${#services[@]} -gt 0 ]; then
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now "${services[@]}" >/dev/null 2>&1 || true
  else
    for s in "${services[@]}"; do
      $SUDO service "$s" stop >/dev/null 2>&1 || true
      $SUDO update-rc.d "$s" disable >/dev/null 2>&1 || true
    done
  fi
  echo "bootstrap: installed ${services[*]} but left them stopped and disabled (netlab's Slurm runs its own)"
fi
