#!/usr/bin/env bash
# Configures and builds uhmm.
#   scripts/build.sh [build-dir] [extra cmake args...]
# build-dir defaults to build/ (relative paths are taken from the repository
# root); the build type defaults to RelWithDebInfo and any -D given here wins.
# UHMM_BUILD_TARGET=name builds one target instead of everything.
# UHMM_GENERATOR=default configures a new tree with CMake's default generator.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

build_dir=build
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  build_dir=$1
  shift
fi

generator=()
# The generator is fixed when a build tree is first configured. Ninja when
# there is one, unless UHMM_GENERATOR=default asks for CMake's default (Unix
# Makefiles), which is what a plain `cmake -S . -B build` gets: CI's plain build
# uses it so that both generators stay working.
if [ ! -f "$build_dir/CMakeCache.txt" ] && [ "${UHMM_GENERATOR:-}" != default ] && command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi

cmake -S . -B "$build_dir" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_EXPORT_COMPILE_COMMANDS=ON "$@"

target=()
if [ -n "${UHMM_BUILD_TARGET:-}" ]; then
  target=(--target "$UHMM_BUILD_TARGET")
fi
cmake --build "$build_dir" --parallel "${UHMM_JOBS:-$(nproc)}" "${target[@]}"
