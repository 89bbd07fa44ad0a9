#!/usr/bin/env bash
# Installs what is missing, builds the demo and runs it; its exit code is ours.
#   scripts/demo.sh [demo args...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

"$root/scripts/setup.sh"
UHMM_BUILD_TARGET=uhmm-demo "$root/scripts/build.sh" build
exec "$root/build/samples/uhmm-demo" "$@"
