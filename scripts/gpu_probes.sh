#!/usr/bin/env bash
# The GPU probes: programmatic dependent launch ordering (tests/pdl/pdl_probe.cu) and Hopper's
# warpgroup MMA layouts (tests/wgmma/wgmma_probe.cu, which needs the sm_90a target). Builds both,
# then runs them; --build-only stops after the build (.ci/run, on a machine without a GPU).
# Says so and exits 0 when nvcc is missing. Exit status 1 when a build or a probe fails.
#   scripts/gpu_probes.sh [--build-only]
set -uo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "gpu_probes: skipped (nvcc not found)"; exit 0; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
nvcc -O2 -arch=sm_90 tests/pdl/pdl_probe.cu -o "$dir/pdl_probe" &&
  nvcc -O2 -gencode arch=compute_90a,code=sm_90a tests/wgmma/wgmma_probe.cu -o "$dir/wgmma_probe" ||
  exit 1
if [ "${1:-}" = --build-only ]; then
  echo "gpu_probes: built"
  exit 0
fi
rc=0
"$dir/pdl_probe" || rc=1
"$dir/wgmma_probe" || rc=1
exit $rc
