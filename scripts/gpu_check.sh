#!/usr/bin/env bash
# Build ferric with the CUDA backend and run every GPU check on this machine:
#   1. configure + build (Release, CUDA on) in build-gpu/
#   2. ctest: all tests, CPU and CUDA
#   3. compute-sanitizer memcheck over build-gpu/test_cuda_ops (all cases)
#   4. compute-sanitizer racecheck over the cases whose kernels use shared memory
# Logs go to $OUT when set, else build-gpu/gpu-logs. Exits 0 only when every step passed.
# Budget: well under 8 minutes on one H100 with 16 cores (each sanitizer run is capped).
set -u
cd "$(dirname "$0")/.."
LOG=${OUT:-build-gpu/gpu-logs}
mkdir -p "$LOG"
JOBS=$(nproc 2>/dev/null || echo 8)
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
status=0
summary=""
T_START=$(date +%s)
DEADLINE=$((T_START + ${GPU_CHECK_BUDGET_S:-450})) # leave margin under the 8-minute budget

# seconds for the next capped step: min(cap, time left before the deadline)
left() {
    local cap=$1 rem=$((DEADLINE - $(date +%s)))
    [ $rem -lt $cap ] && echo $rem || echo $cap
}

# step NAME CMD...: run CMD with its output in $LOG/NAME.log; print the tail and timing
step() {
    local name=$1 t0 rc
    shift
    t0=$(date +%s)
    echo "== $name: $*"
    "$@" >"$LOG/$name.log" 2>&1
    rc=$?
    tail -n 25 "$LOG/$name.log"
    echo "== $name: exit $rc after $(($(date +%s) - t0)) s (log: $LOG/$name.log)"
    summary+=$(printf '%-28s %s (%ss)' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc")" \
        "$(($(date +%s) - t0))")$'\n'
    [ $rc -eq 0 ] || status=1
    return $rc
}

(nvidia-smi; nvcc --version) >"$LOG/machine.log" 2>&1
head -n 20 "$LOG/machine.log"

# -Wno-error=maybe-uninitialized: gcc's -O3 flags src/backends/cpu/cpu_nn.c (`count` in the
# cross-entropy kernels) as maybe-uninitialized; harmless here, fixed in the core separately.
if step configure cmake -S . -B build-gpu -DFE_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
    -DFE_CUDA_ARCH="${FE_CUDA_ARCH:-90}" -DCMAKE_C_FLAGS=-Wno-error=maybe-uninitialized &&
    step build cmake --build build-gpu -j "$JOBS"; then
    step ctest ctest --test-dir build-gpu --output-on-failure -j 4 --timeout 300
    if [ -x "$SAN" ] || command -v "$SAN" >/dev/null; then
        # poison mode is on inside the test; FE_CUDA_NO_CACHE=1 gives every tensor its own
        # exact-size cudaMalloc so that memcheck knows its true bounds
        step memcheck env FE_CUDA_NO_CACHE=1 timeout "$(left 240)" "$SAN" --tool memcheck \
            --error-exitcode 99 build-gpu/test_cuda_ops
        for part in reductions softmax rmsnorm cross_entropy embedding; do
            t=$(left 60)
            if [ "$t" -lt 10 ]; then
                summary+="racecheck_$part              SKIPPED (time budget spent)"$'\n'
                status=1
                continue
            fi
            step "racecheck_$part" timeout "$t" "$SAN" --tool racecheck --error-exitcode 99 \
                build-gpu/test_cuda_ops "$part"
        done
    else
        echo "compute-sanitizer not found: sanitizer steps skipped" | tee "$LOG/sanitizer.log"
        summary+="sanitizers                   SKIPPED (compute-sanitizer not found)"$'\n'
        status=1
    fi
fi

echo
echo "==== summary after $(($(date +%s) - T_START)) s (logs in $LOG)"
printf '%s' "$summary" | tee "$LOG/summary.txt"
exit $status
