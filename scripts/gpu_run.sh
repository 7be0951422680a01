#!/usr/bin/env bash
# Everything we run on a lent GPU machine, in stages, logging to $OUT (or ./gpu-out).
#   scripts/gpu_run.sh build test sanitize flash parity bench
# Each stage keeps going after a failure of another; the summary at the end says what failed.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
JOBS=$(nproc)
declare -a SUMMARY=()
stage() { # name, command...
    local name=$1; shift
    local t0=$(date +%s)
    echo "=== $name" | tee -a "$OUT/summary.log"
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    SUMMARY+=("$name rc=$rc $(( $(date +%s) - t0 ))s")
    tail -n 25 "$OUT/$name.log"
    return 0
}

do_build() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nvcc --version | tail -2
    cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DFE_CUDA=ON -DFE_CUDA_ARCH=90 &&
        cmake --build build-gpu -j"$JOBS"
}
do_test() { ctest --test-dir build-gpu --output-on-failure -j4; }
do_sanitize() {
    for tool in memcheck racecheck; do
        echo "--- compute-sanitizer $tool"
        compute-sanitizer --tool $tool --error-exitcode 9 build-gpu/test_cuda_ops || return 1
    done
}
do_flash() { [ -x scripts/flash_check.sh ] && scripts/flash_check.sh; }
do_parity() {
    python3 tests/parity/llama_parity.py --build build-gpu
}
do_bench() {
    python3 ../shared/bench/torch_llama_baseline.py --configs small --modes eager,compile 2>&1 || true
    for cfg in small; do
        build-gpu/ferric train --preset $cfg --synthetic --steps 13 --bench --device cuda
    done
}

for s in "$@"; do
    case "$s" in
    build) stage build do_build ;;
    test) stage test do_test ;;
    sanitize) stage sanitize do_sanitize ;;
    flash) stage flash do_flash ;;
    parity) stage parity do_parity ;;
    bench) stage bench do_bench ;;
    *) echo "unknown stage $s" ;;
    esac
done
printf '%s\n' "${SUMMARY[@]}" | tee -a "$OUT/summary.log"
