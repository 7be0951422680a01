#!/usr/bin/env bash
# Build the flash-attention check with nvcc alone, run it, then (unless --no-bench) the
# benchmarks: ours (flash_check --bench --all) and PyTorch's SDPA beside it
# (bench/attention.py, when torch is installed). With FE_FLASH_WGMMA=1 in the environment, the
# D 128 cases and rows go through the experimental wgmma kernels. Needs an sm_90 GPU (H100/H200).
# Logs go to $OUT when it is set, else to build-flash/. Exit status 1 when a check fails.
#   scripts/flash_check.sh [--no-bench] [--emu] [--build-only]
#     --emu  also run the CPU emulation of the kernels (g++ only, no GPU needed)
#     --build-only  build build-flash/flash_check and stop (gpu_run.sh's sanall runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
bench=1
emu=0
build_only=0
for a in "$@"; do
  case "$a" in
    --no-bench) bench=0 ;;
    --emu) emu=1 ;;
    --build-only) build_only=1 ;;
    *) echo "usage: $0 [--no-bench] [--emu] [--build-only]" >&2; exit 2 ;;
  esac
done
log=${OUT:-build-flash}
mkdir -p build-flash "$log"

if [ "$emu" = 1 ]; then
  scripts/flash_emu.sh 2>&1 | tee "$log/flash_emu.log"
fi

echo "== build (registers and spills per kernel in $log/flash_build.log)"
# the experimental wgmma kernels (sm_90a) apart, linked in: FE_FLASH_WGMMA=1 at run time takes them
nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -lineinfo -Iinclude -Isrc \
  -Xcompiler -Wall,-Wextra,-Werror -Xptxas -v -c src/backends/cuda/wgmma/flash_wgmma.cu \
  -o build-flash/flash_wgmma.o >"$log/flash_build.log" 2>&1 &&
nvcc -O3 -std=c++17 -arch=sm_90 -lineinfo -Iinclude -Isrc -Xcompiler -Wall,-Wextra,-Werror \
  -DFE_HAVE_WGMMA -Xptxas -v tests/flash/flash_check.cu src/backends/cuda/flash_attention.cu \
  build-flash/flash_wgmma.o -o build-flash/flash_check >>"$log/flash_build.log" 2>&1 ||
  { cat "$log/flash_build.log"; exit 1; }
awk -F"'" '/Compiling entry function/ {k = $2} /spill stores/ {sp = $0; sub(/^ */, "", sp)}
  /Used [0-9]+ registers/ && k ~ /fa_|wf_|wb_/ {match($0, /Used [0-9]+ registers/)
  printf "  %-48s %s, %s\n", k, substr($0, RSTART, RLENGTH), sp}' "$log/flash_build.log"
[ "$build_only" = 1 ] && exit 0

echo "== check"
rc=0
./build-flash/flash_check 2>&1 | tee "$log/flash_check.log" || rc=1

if [ "$bench" = 1 ]; then
  echo "== benchmark"
  ./build-flash/flash_check --bench --all 2>&1 | tee "$log/flash_bench.log"
  if python3 -c 'import torch' 2>/dev/null; then
    python3 bench/attention.py --binary build-flash/flash_check --all 2>&1 | tee "$log/attention_bench.log"
  else
    echo "torch not installed: PyTorch comparison skipped"
  fi
fi
exit $rc
