#!/usr/bin/env bash
# Installs the Debian packages mambacv builds against (Debian 12 or later). Run as root or with sudo available.
set -euo pipefail
# clang, libclang-rt-dev and libomp-dev (with its Archer tool): the sanitizer jobs (tools/sanitize.sh) and the
# libFuzzer targets (tests/fuzz); libcpp-httplib-dev: `mambacv serve`; wrk, curl: its load benchmark
# (tools/serve_bench.sh)
# pybind11-dev, python3-dev, python3-numpy, python3-pytest: the Python module (-DMAMBACV_PYTHON=ON) and its tests
pkgs=(cmake g++ make pkg-config libeigen3-dev nlohmann-json3-dev libgtest-dev libgmock-dev libopencv-dev zlib1g-dev libpng-dev
      clang libclang-rt-dev libomp-dev libcpp-httplib-dev wrk curl
      pybind11-dev python3-dev python3-numpy python3-pytest)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "mambacv: all build dependencies are installed"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
