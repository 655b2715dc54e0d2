#!/usr/bin/env bash
# Installs whatever chorus needs that is missing. Idempotent: a second run installs nothing.
set -euo pipefail
# libopenblas0-openmp: Debian's LibTorch calls the system BLAS, and the default one is the
# reference BLAS (~7 GFLOP/s here); OpenBLAS is ~40x faster and, in its OpenMP build, obeys
# torch's thread count. It serves chorus and the PyTorch peer alike.
# fortunes: the text the GPT trains on (data.dataset = "fortunes", /usr/share/games/fortunes).
pkgs=(cmake ninja-build g++ clang libclang-rt-14-dev libtorch-dev libopenmpi-dev openmpi-bin
      libgtest-dev dataset-fashion-mnist python3-torch libopenblas0-openmp zlib1g-dev fortunes)
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
