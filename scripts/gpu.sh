#!/usr/bin/env bash
# On a machine with an NVIDIA or AMD GPU: builds the plain configuration with
# the GPU plugins, then runs uhmm-info, the GPU tests (the backend conformance
# suite, backend selection, kernels, launch_device), uhmm-bench and the
# nvcc/hipcc-built launch_device sample on the GPU backend, and writes every
# log and result into one folder.
#   scripts/gpu.sh [out-dir]      default: gpu-results/<UTC time>/
# UHMM_BACKEND picks the backend for the bench (default: what auto selects).
# Exits non-zero if the build or a test fails; on a machine without a GPU the
# GPU cases are skipped (each says why) and the bench runs on the cpu backend.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${1:-$root/gpu-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=build-gpu
echo "gpu.sh: results in $out"

status=0
{
  nvidia-smi 2>&1 || true
  rocm-smi 2>&1 || true
  uname -a
} >"$out/machine.txt"

"$root/scripts/build.sh" "$build" -DUHMM_CUDA=AUTO -DUHMM_HIP=AUTO >"$out/build.log" 2>&1 || {
  echo "gpu.sh: build failed, see $out/build.log" >&2
  exit 1
}
grep -E "^-- uhmm:" "$out/build.log" | tee "$out/plugins.txt" || true

"$build/tools/uhmm-info" >"$out/uhmm-info.txt" 2>&1 || status=1
"$build/tools/uhmm-info" --json >"$out/uhmm-info.json" 2>/dev/null || status=1
cat "$out/uhmm-info.txt"
backend=${UHMM_BACKEND:-$(sed -n 's/.*"auto_selects": "\([a-z]*\)".*/\1/p' "$out/uhmm-info.json")}
echo "gpu.sh: backend for the bench: ${backend:-cpu}"

ctest --test-dir "$build" -R 'BackendConformance|BackendSelection|Kernels|LaunchDevice|uhmm_info' --output-on-failure \
  --output-junit "$out/gpu-tests.xml" >"$out/gpu-tests.log" 2>&1 || status=1
grep -E "tests passed|Skipped|Failed" "$out/gpu-tests.log" | tail -40 || true

UHMM_BACKEND=${backend:-cpu} "$build/tools/uhmm-info" --open >"$out/open-context.txt" 2>&1 || status=1
# On a GPU, --gpu adds the vendor's managed memory (malloc-managed + prefetch) on the same device.
gpu_flag=()
[ "${backend:-cpu}" != cpu ] && gpu_flag=(--gpu)
UHMM_BACKEND=${backend:-cpu} "$build/bench/uhmm-bench" "${gpu_flag[@]}" --json "$out/bench.json" >"$out/bench.txt" 2>&1 ||
  status=1
tail -20 "$out/bench.txt"

# The launch_device sample built by nvcc / hipcc runs on its vendor's backend.
for vendor in cuda hip; do
  sample="$build/samples/uhmm-vector-add-$vendor"
  [ -x "$sample" ] || continue
  if [ "${backend:-cpu}" = "$vendor" ]; then
    UHMM_BACKEND=$vendor "$sample" --elements 16777216 --rounds 3 >"$out/vector-add-$vendor.txt" 2>&1 || status=1
    tail -3 "$out/vector-add-$vendor.txt"
  else
    echo "gpu.sh: uhmm-vector-add-$vendor built, not run (the backend here is ${backend:-cpu})" |
      tee "$out/vector-add-$vendor.txt"
  fi
done

echo "gpu.sh: $([ "$status" -eq 0 ] && echo ok || echo FAILED), results in $out"
exit "$status"
