#!/usr/bin/env bash
# Installs the Debian packages gdr2 needs, only those that are missing (Debian 12, as root).
# Each package and why:
#   cmake g++ make pkg-config  build
#   libeigen3-dev         the reference (Eigen 3.4, incl. unsupported AutoDiff)
#   libboost-dev          Boost.Multiprecision (cpp_bin_float_50/100, mpfr_float)
#   libmpfr-dev libgmp-dev mpfr_float backend
#   libgtest-dev libgmock-dev googletest  unit tests
#   librapidcheck-dev     property-based tests and shrinking
#   libcli11-dev          gdr2-verify / gdr2-bench argument parsing
#   nlohmann-json3-dev    JSON reports and safetensors headers
#   gnuplot-nox           plots of the teaching example (docs/)
#   python3-numpy         runs verify/ports/numpy_port.py in the tests (the port protocol from Python)
set -euo pipefail
packages=(cmake g++ make pkg-config libeigen3-dev libboost-dev libmpfr-dev libgmp-dev
          libgtest-dev libgmock-dev googletest librapidcheck-dev libcli11-dev nlohmann-json3-dev
          gnuplot-nox python3 python3-numpy)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} Debian packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
