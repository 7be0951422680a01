#!/usr/bin/env bash
# The GPU probes: programmatic dependent launch ordering (tests/pdl/pdl_probe.cu), Hopper's
# warpgroup MMA layouts (tests/wgmma/wgmma_probe.cu) and the experimental wgmma flash forward
# and backward against the library's (tests/wgmma/wg_flash_check.cu); the last two need the
# sm_90a target. Builds all three (ptxas's register and spill report of the wgmma kernels in the
# output), then runs them; --build-only stops after the build (.ci/run, on a machine without a
# GPU); --bench also times the wgmma kernels against the library's; WG_SANITIZE=memcheck (or
# racecheck) runs the wgmma check under compute-sanitizer instead. Says so and exits 0 when nvcc
# is missing. Exit status 1 when a build or a probe fails.
#   scripts/gpu_probes.sh [--build-only | --bench]
set -uo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "gpu_probes: skipped (nvcc not found)"; exit 0; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sm90a="-gencode arch=compute_90a,code=sm_90a"
nvcc -O2 -arch=sm_90 tests/pdl/pdl_probe.cu -o "$dir/pdl_probe" &&
  nvcc -O2 $sm90a -Isrc/backends/cuda/wgmma tests/wgmma/wgmma_probe.cu -o "$dir/wgmma_probe" &&
  nvcc -O3 -std=c++17 $sm90a -Iinclude -Isrc -Isrc/backends/cuda/wgmma -Xptxas -v \
    tests/wgmma/wg_flash_check.cu src/backends/cuda/flash_attention.cu \
    src/backends/cuda/wgmma/flash_wgmma.cu -o "$dir/wg_flash_check" >"$dir/ptxas.log" 2>&1 ||
  { cat "$dir/ptxas.log" 2>/dev/null; exit 1; }
grep -A2 "Function properties for _Z[0-9]*w[fb]_[fb]wd_" "$dir/ptxas.log" |
  grep -o "_Z[0-9]*w[fb]_[fb]wd_[A-Za-z0-9_]*\|[0-9]* bytes spill stores\|Used [0-9]* registers" |
  paste -sd' ' | sed -E 's/_Z[0-9]+(w[fb]_[fb]wd_)/\n\1/g'
echo
if [ "${1:-}" = --build-only ]; then
  echo "gpu_probes: built"
  exit 0
fi
rc=0
"$dir/pdl_probe" || rc=1
"$dir/wgmma_probe" || rc=1
if [ -n "${WG_SANITIZE:-}" ]; then # the wgmma check (not the timing) under compute-sanitizer
  compute-sanitizer --tool "$WG_SANITIZE" --error-exitcode 99 "$dir/wg_flash_check" || rc=1
else
  "$dir/wg_flash_check" ${1:+"$1"} || rc=1
fi
exit $rc
