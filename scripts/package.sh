#!/usr/bin/env bash
# Builds uhmm's Debian packages, or runs the install tests against an installed uhmm.
#   scripts/package.sh [build-dir] [extra cmake args...]
#       configures build-dir (default build-pkg/) for /usr, builds the library, the GPU
#       plugins that can be built (UHMM_CUDA/UHMM_HIP AUTO) and uhmm-info, no tests,
#       samples or benchmarks, and writes the packages to build-dir/packages/:
#       libuhmm0, libuhmm-dev, uhmm-tools and uhmm-backend-<gpu> (see cmake/uhmm_package.cmake).
#       Install them with: apt-get install ./build-pkg/packages/*.deb
#   scripts/package.sh --test-installed [prefix]
#       builds tests/install/'s consumers (C++ and C) against the uhmm installed under prefix
#       (default /usr, where the packages put it) with find_package and with pkg-config, and
#       runs them.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

test_installed() {
  local prefix=${1:-/usr} config libdir work step
  config=$(find "$prefix"/lib* -path '*/cmake/uhmm/uhmmConfig.cmake' -print -quit 2>/dev/null || true)
  if [ -z "$config" ]; then
    echo "package.sh: no uhmm installed under $prefix (no lib*/cmake/uhmm/uhmmConfig.cmake)" >&2
    exit 1
  fi
  libdir=${config#"$prefix"/}
  libdir=${libdir%/cmake/uhmm/uhmmConfig.cmake}
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  for step in find_package pkg_config; do
    echo "==== package.sh: install test $step against $prefix ($libdir) ===="
    cmake -DSTEP="$step" -DPREFIX="$prefix" -DLIBDIR="$libdir" -DINCLUDEDIR=include -DWORK_DIR="$work" \
      -DCONSUMER_DIR="$root/tests/install" -DCONFIG=RelWithDebInfo -DCXX="$(command -v c++)" -DCC="$(command -v cc)" \
      -DGENERATOR="Unix Makefiles" -DPKG_CONFIG="$(command -v pkg-config)" \
      -P "$root/tests/install/run_install_test.cmake"
  done
  if command -v uhmm-info >/dev/null 2>&1; then
    echo "==== package.sh: $(command -v uhmm-info) ===="
    uhmm-info
  fi
  echo "package.sh: the installed uhmm passes the install tests"
}

if [ "${1:-}" = "--test-installed" ]; then
  shift
  test_installed "$@"
  exit 0
fi

build_dir=build-pkg
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  build_dir=$1
  shift
fi
"$root/scripts/build.sh" "$build_dir" -DCMAKE_INSTALL_PREFIX=/usr -DUHMM_BUILD_TESTS=OFF \
  -DUHMM_BUILD_SAMPLES=OFF -DUHMM_BUILD_BENCH=OFF -DUHMM_BUILD_TOOLS=ON "$@"
rm -f "$build_dir"/packages/*.deb
(cd "$build_dir" && cpack -G DEB)
for deb in "$build_dir"/packages/*.deb; do
  echo "==== $deb"
  dpkg-deb -f "$deb" Package Version Depends Suggests
done
