#!/usr/bin/env bash
# Installs whatever chorus needs that is missing. Idempotent: a second run installs nothing.
set -euo pipefail
pkgs=(cmake ninja-build g++ clang libclang-rt-14-dev libtorch-dev libopenmpi-dev openmpi-bin
      libgtest-dev dataset-fashion-mnist python3-torch)
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
