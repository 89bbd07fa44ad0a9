#!/usr/bin/env bash
# Installs the Debian 12 packages uhmm builds and tests with, and only those that
# are missing, so a second run does nothing. Needs root only when something is
# missing. Everything comes from the Debian archive; nothing else is downloaded.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libfmt-dev libspdlog-dev libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev nlohmann-json3-dev libdrm-dev clang-format
  gnuplot-nox jq  # scripts/plot-bench.sh
  libcap2-bin  # setcap: secure_environment_test runs a program with a file capability
  # The HIP plugin: hipcc (clang-15) and the HIP runtime, from Debian's ROCm
  # 5.2. About 66 MB to download, 350 MB installed, ~35 s on a fresh machine.
  hipcc libamdhip64-dev
)

installed() {
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

if ! command -v dpkg >/dev/null 2>&1; then
  echo "setup.sh: this is not a Debian-based system (no dpkg)." >&2
  echo "setup.sh: install the equivalents of these by hand: ${packages[*]}" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done

# The CUDA plugin needs nvcc, which Debian 12 does not package in a usable
# version: it is taken from /usr/local/cuda (or CUDACXX) when there.
if [ ! -x /usr/local/cuda/bin/nvcc ] && [ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null 2>&1; then
  echo "setup.sh: note: no nvcc (/usr/local/cuda/bin/nvcc or CUDACXX): the CUDA plugin will not be built" >&2
fi

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup.sh: all ${#packages[@]} packages are installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: missing packages: ${missing[*]}" >&2
  echo "setup.sh: installing them needs root; run this script as root, or:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
