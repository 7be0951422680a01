#!/usr/bin/env bash
# Everything we run on a lent GPU machine, in stages, logging to $OUT (or ./gpu-out).
#   scripts/gpu_run.sh build test sanitize flash parity bench kernels hfparity decode
#                      trainbench decoder profile decprof memtrace hostdiag
#                      clocks flashncu ferbench gemmalgos rowprof flashprof base decab flashcmp flashvs rowab
#                      sanall probes wgflash flashwg wgsan
# Each stage keeps going after a failure of another; the summary at the end says what failed.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT="${OUT:-$PWD/gpu-out}"
LOGS=$(mktemp -d)   # every log; packed into $OUT/logs.tgz at the end
mkdir -p "$OUT"
JOBS=$(nproc)
declare -a SUMMARY=()
stage() { # name, command...
    local name=$1; shift
    local t0=$(date +%s)
    echo "=== $name"
    "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    SUMMARY+=("$name rc=$rc $(( $(date +%s) - t0 ))s")
    tail -n "${TAIL:-25}" "$LOGS/$name.log"
    return 0
}

# Run a command under an environment given as VAR=VALUE[,VAR=VALUE...] ("-" for none).
with_env() { # spec, command...
    local spec=$1; shift
    [ "$spec" = "-" ] && spec=""
    env $(echo "$spec" | tr ',' ' ') "$@"
}

do_build() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nvcc --version | tail -2
    gcc --version | head -1
    cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DFE_CUDA=ON -DFE_CUDA_ARCH=90 &&
        cmake --build build-gpu -j"$JOBS" -- -k 2>&1 | grep -E -B2 -A6 "error|warning:|Error " | head -80
    return "${PIPESTATUS[0]}"
}
do_test() {
    ctest --test-dir build-gpu --output-on-failure -j4 --timeout 300
    local rc=$?
    mkdir -p data; [ -s data/austen.txt ] || cp .shared/austen.txt data/
    build-gpu/ferric train --device cuda --steps 60 --eval-every 30 --run-dir /tmp/run-gpu || rc=1
    return $rc
}
do_sanitize() {
    local rc=0
    FE_CUDA_NO_CACHE=1 timeout 150 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 99 build-gpu/test_cuda_ops || rc=1
    FE_CUDA_NO_CACHE=1 timeout 120 compute-sanitizer --tool memcheck --error-exitcode 99 build-gpu/test_decoder decoder_matches || rc=1
    FE_CUDA_NO_CACHE=1 timeout 120 compute-sanitizer --tool memcheck --error-exitcode 99 build-gpu/test_decoder decoder_persistent || rc=1
    FE_CUDA_NO_CACHE=1 timeout 120 compute-sanitizer --tool memcheck --error-exitcode 99 build-gpu/test_fused_optim cuda || rc=1
    for part in softmax rmsnorm attention embedding cross_entropy; do
        timeout 40 compute-sanitizer --tool racecheck --error-exitcode 99 build-gpu/test_cuda_ops $part || rc=1
    done
    return $rc
}
do_flash() { OUT="$LOGS/flash" scripts/flash_check.sh; }
# the same through the experimental wgmma kernels at D 128 (FE_FLASH_WGMMA=1), PyTorch beside them
do_flashwg() { FE_FLASH_WGMMA=1 OUT="$LOGS/flashwg" timeout 400 scripts/flash_check.sh; }
do_probes() { timeout 200 scripts/gpu_probes.sh; }
do_wgflash() { timeout 300 scripts/gpu_probes.sh --bench; } # the probes, then the wgmma kernels timed
do_wgsan() { WG_SANITIZE=memcheck timeout 400 scripts/gpu_probes.sh; } # the wgmma check under memcheck
# compute-sanitizer memcheck and racecheck over every test program of build-gpu and over
# flash_check (its checks only), SANALL_JOBS runs at a time (default 4: with 8 on an H200 the
# decoder, fused-loss, fused-optimizer and flash runs did not finish in 300 s), each capped at
# SANALL_CAP seconds. SANALL_ONLY="tool:program[:case] ..." (program: flash_check or a test_*
# name; case: a test's name filter, or flash_check's --cases=A:B) runs just those, in that
# order. Each run's verdict (and a failed run's first report lines) goes to $OUT/sanall.txt as
# it ends, so a call cut short keeps what finished; the full logs go into logs.tgz. A program that never calls CUDA counts as passed
# ("terminated before first instrumented API call").
do_sanall() {
    local d="$LOGS/sanall" cap=${SANALL_CAP:-400} jobs=${SANALL_JOBS:-4} t n tool c e
    mkdir -p "$d"
    OUT="$LOGS/flash" scripts/flash_check.sh --build-only >/dev/null || return 1
    local runs=()
    if [ -n "${SANALL_ONLY:-}" ]; then
        runs=($SANALL_ONLY)
    else
        for t in build-flash/flash_check build-gpu/test_*; do
            [ -x "$t" ] && runs+=("memcheck:$(basename "$t")" "racecheck:$(basename "$t")")
        done
    fi
    for e in "${runs[@]}"; do
        IFS=: read -r tool n c <<<"$e"
        t=build-gpu/$n; [ "$n" = flash_check ] && t=build-flash/flash_check
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
        (f="$d/${tool}_$n${c:+_${c//[^A-Za-z0-9_]/_}}.log" s0=$SECONDS
         env FE_CUDA_NO_CACHE=1 timeout "$cap" compute-sanitizer --tool "$tool" \
             --report-api-errors no --error-exitcode 99 "$t" $c >"$f" 2>&1
         r=$?
         if [ $r != 0 ] && grep -q "terminated before first instrumented API call" "$f"; then
             v="no CUDA work"
         elif [ $r = 99 ] && [ "$tool" = racecheck ] && grep -q ", 0 failed" "$f" &&
             grep -q "Race reported" "$f" &&
             ! grep "Race reported" "$f" | grep -qv "access at nvjet_"; then
             # racecheck reports hazards inside cuBLASLt's own GEMM kernels (nvjet_*, whose
             # synchronisation we can neither see nor change): listed apart from ours
             v="hazards only inside cuBLASLt's kernels: $(grep "Race reported" "$f" |
                 sed 's/.*access at \(nvjet_[A-Za-z0-9_]*\).*/\1/' | sort -u | paste -sd' ')"
         else
             v="rc=$r $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$f" | tr -s ' =' ' ')"
             [ $r = 0 ] || v="$v FAILED; first lines: $(grep -m 12 '=========' "$f" | tr '\n' '|')"
         fi
         echo "$tool $n${c:+ $c}: $v ($(( SECONDS - s0 )) s)" >>"$OUT/sanall.txt") &
    done
    wait
    sort "$OUT/sanall.txt"
    ! grep -q FAILED "$OUT/sanall.txt"
}
do_parity() {
    python3 tests/parity/llama_parity.py --build build-gpu
}
do_bench() {
    python3 .shared/torch_llama_baseline.py --configs small --modes eager,compile 2>&1 || true
    for cfg in small; do
        build-gpu/ferric train --preset $cfg --synthetic --steps 13 --bench --device cuda
    done
}

do_kernels() { timeout 200 python3 bench/kernels.py --build build-gpu ${KERNELS_ONLY:+--only $KERNELS_ONLY}; }
do_hfparity() { timeout 200 python3 tests/parity/hf_parity.py --build build-gpu; }
do_decode() {
    local base=""
    [ -x build-base/example_hf_logits ] && base="--base build-base"
    timeout 300 python3 bench/decode.py --build build-gpu --keep /tmp/tinyllama-bf16 $base ${DECODE_ARGS:-}
}
# Baseline builds: each .shared/NAME.tgz (git archive --prefix=base/ of a commit a change is
# measured against; base.tgz -> build-base) built into build-NAME, side by side; the decode and
# decab stages then time them in the same call.
do_base() {
    local rc=0 t n
    for t in .shared/*.tgz; do
        n=$(basename "$t" .tgz)
        (rm -rf /tmp/fe-$n && mkdir -p /tmp/fe-$n && tar xzf "$t" -C /tmp/fe-$n &&
            cmake -S /tmp/fe-$n/base -B build-$n -DCMAKE_BUILD_TYPE=Release -DFE_CUDA=ON -DFE_CUDA_ARCH=90 >/dev/null &&
            cmake --build build-$n -j$(( JOBS / 2 )) --target ferric example_hf_logits test_decoder 2>&1 | grep -E "error|warning:" | head -20) &
    done
    wait
    for t in .shared/*.tgz; do [ -x build-$(basename "$t" .tgz)/example_hf_logits ] || rc=1; done
    return $rc
}
# Decode tok/s of build-gpu under each setting of DECAB_ENV (comma-separated VAR=VALUE lists,
# "-" for none) and of every baseline build (build-base, build-v*), alternating, twice; then each
# baseline's test_decoder (after the decode stage, which saves the model).
do_decab() {
    local run="--model /tmp/tinyllama-bf16 --ids $(seq -s, 1 32) --bench 256 --repeat 3 --device cuda --dtype bf16"
    for round in 1 2; do
        for v in ${DECAB_ENV:--}; do
            printf '%-50s ' "$v"; with_env "$v" build-gpu/example_hf_logits $run 2>/dev/null | tail -1
        done
        for b in build-base build-v*; do
            [ -x $b/example_hf_logits ] || continue
            printf '%-50s ' $b; $b/example_hf_logits $run 2>/dev/null | tail -1
        done
    done
    for b in build-base build-v*; do
        [ -x $b/test_decoder ] && echo "$b test_decoder: $(timeout 60 $b/test_decoder 2>&1 | tail -1)"
    done
    return 0
}
# Per-kernel times of the decoder's graph (after the decode stage saved its model).
do_decprof() {
    timeout 200 ncu --clock-control none --cache-control none --graph-profiling node --metrics gpu__time_duration.sum,dram__bytes_read.sum \
        --csv --launch-skip 1200 --launch-count 240 \
        build-gpu/example_hf_logits --model /tmp/tinyllama-bf16 --ids 1,2,3,4,5,6,7,8 \
        --bench 32 --repeat 1 --device cuda --dtype bf16 >"$LOGS/decprof.csv" 2>&1
    local rc=$?
    python3 bench/ncu_summary.py "$LOGS/decprof.csv"
    grep -c k_dec "$LOGS/decprof.csv"
    return $rc
}
do_ferbench() { timeout 300 bash bench/train_llama.sh --no-torch ${TRAINBENCH_ARGS:-}; }
do_trainbench() { timeout 500 bash bench/train_llama.sh ${TRAINBENCH_ARGS:-}; }
# What is live at the memory peak of a TinyLlama training step (FE_MEM_TRACE histogram).
do_memtrace() {
    FE_MEM_TRACE=1 timeout 200 build-gpu/ferric train --preset "${MEM_PRESET:-tinyllama}" --synthetic \
        --steps 4 --bench --device cuda
}
do_decoder() { timeout 150 build-gpu/test_decoder; }
# The persistent decode kernel's own barrier trace (FE_DECODE_TRACE=1), then ncu over one of its
# launches (after the decode stage saved its model).
do_decdiag() {
    local run="build-gpu/example_hf_logits --model /tmp/tinyllama-bf16 --ids 1,2,3,4,5,6,7,8 --bench 32 --repeat 1 --device cuda --dtype bf16"
    for v in ${DECDIAG_ENV:-FE_DECODE_SLOTS=0}; do
        echo "--- $v"
        env $v FE_DECODE_PERSIST=1 FE_DECODE_TRACE=1 timeout 60 $run 2>&1 | tail -10
    done
    timeout 200 ncu --clock-control none --graph-profiling node -k regex:k_dec_mega --launch-skip 20 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
        --metrics $(printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' long_scoreboard short_scoreboard barrier membar wait mio_throttle lg_throttle math_pipe_throttle not_selected selected no_instruction branch_resolving dispatch_stall sleeping misc | sed 's/,$//') \
        env FE_DECODE_PERSIST=1 $run 2>&1 | grep -v "^==PROF==" | tail -90
}
# Every cuBLASLt algorithm the heuristic offers for the benchmark's xWt shapes, timed beside
# cublasGemmEx and torch.matmul (bench/gemm_algos.c).
do_gemmalgos() {
    cc -O2 bench/gemm_algos.c -I/usr/local/cuda/include -L/usr/local/cuda/lib64 -lcublasLt -lcublas \
        -lcudart -o /tmp/gemm_algos || return 1
    local shapes=${GEMM_SHAPES:-16384,5632,2048 16384,2048,5632 16384,2048,2048 16384,768,2048}
    torch_mm $shapes  # before and after: the card's clocks drift with its power state
    /tmp/gemm_algos $shapes
    torch_mm $shapes
}
torch_mm() {
    python3 - "$@" <<'PY'
import sys, torch
for a in sys.argv[1:]:
    M, K, N = map(int, a.split(","))
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
    for _ in range(3): torch.matmul(x, w.t())
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); torch.matmul(x, w.t()); e.record(); torch.cuda.synchronize()
    n = max(20, min(2000, int(50 / s.elapsed_time(e))))  # ~50 ms a run, as gemm_algos
    ts = []
    for _ in range(5):
        s.record()
        for _ in range(n): torch.matmul(x, w.t())
        e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / n)
    ms = sorted(ts)[2]
    print(f"torch.matmul M={M} K={K} N={N}: {ms:.4f} ms {2*M*N*K/ms/1e9:.1f} TFLOP/s")
PY
}
# Each kernel of the RMSNorm and embedding backward alone (ncu, clocks left alone).
do_rowprof() {
    bash bench/build.sh build-gpu >/dev/null || return 1
    local k
    for k in rmsnorm_bwd embedding_bwd; do
        timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv \
            -k 'regex:k_emb|k_rmsnorm|k_colsum' --launch-skip 6 --launch-count 12 \
            build-gpu/bench_kernels --device cuda --only $k \
            >"$LOGS/rowprof_$k.csv" 2>&1
        python3 bench/ncu_summary.py "$LOGS/rowprof_$k.csv"
    done
}
# Host queueing time beside step time, a step at a time (FE_BENCH_SYNC): is the GPU waiting on the host?
do_hostdiag() {
    FE_BENCH_SYNC=1 timeout 200 build-gpu/ferric train --preset "${PROFILE_PRESET:-tinyllama}" --synthetic \
        --steps 8 --bench --device cuda
}
# SM clock and power while a TinyLlama bench runs: do the clocks hold under a training step's load?
do_clocks() {
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active \
        --format=csv,noheader -lms 100 >"$LOGS/clocks.csv" &
    local smi=$!
    timeout 200 build-gpu/ferric train --preset "${PROFILE_PRESET:-tinyllama}" --synthetic --steps 23 --bench --device cuda
    local rc=$?
    kill $smi
    awk -F', ' '{print $2, $4, $6}' "$LOGS/clocks.csv" | sort | uniq -c | sort -rn | head -25
    return $rc
}
# Nsight Compute's full report of one flash attention backward and forward launch of a TinyLlama step.
do_flashncu() {
    local k
    for k in fa_bwd_kernel fa_fwd_kernel; do
        timeout 200 ncu --set full -k "regex:$k" --launch-skip 3 --launch-count 1 --print-details all \
            build-gpu/ferric train --preset "${PROFILE_PRESET:-tinyllama}" --synthetic --steps 1 --bench --device cuda \
            | grep -v "^==PROF==" | grep -E -v "^\s*$" | cut -c1-150
    done
}
# Nsight Compute's warp-state, scheduler and memory sections for one timed T = 8192 (B 4, H 16,
# D 128, causal) launch of each flash kernel of `flash_check --bench` (3 warm-up and 30/30/10
# timed launches at T = 1024/2048/4096 come before: skip 80).
# (FLASHPROF_KERNELS: the kernel names, default the mma.sync ones; with FE_FLASH_WGMMA=1
# set, "wb_bwd_kernel wf_fwd_pipe_kernel" profiles the wgmma ones)
do_flashprof() {
    [ -x build-flash/flash_check ] || scripts/flash_check.sh --no-bench >/dev/null || return 1
    local k
    for k in ${FLASHPROF_KERNELS:-fa_bwd8_kernel fa_fwd_kernel}; do
        timeout 240 ncu --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
            --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis \
            --section MemoryWorkloadAnalysis --section SourceCounters --print-details all \
            -k "regex:$k" --launch-skip 80 --launch-count 1 build-flash/flash_check --bench \
            | grep -v "^==PROF==" | grep -E -v "^\s*$" | cut -c1-160
    done
}
# Nsight Compute on PyTorch's flash backward beside ours, one T = 8192 (B 4, H 16, D 128, causal)
# launch each: the kernels' names and times first, then the same sections for both main kernels
# (full reports in flashcmp_*.txt).
do_flashcmp() {
    [ -x build-flash/flash_check ] || scripts/flash_check.sh --no-bench >/dev/null || return 1
    cat >"$LOGS/torch_flash_bwd.py" <<'PY'
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
B, H, T, D = 4, 16, 8192, 128
q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
go = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
    for _ in range(2):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(out, (q, k, v), go)
torch.cuda.synchronize()
PY
    local secs="--section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis"
    local keys="Duration|Registers Per|Block Size|Grid Size|Shared Memory Per Block|Achieved Occupancy|Issue Slots Busy|Executed Ipc A|SM Busy|Warp Cycles Per Issued|No Eligible|Executed Instructions  |Compute \(SM\) Throughput|Memory Throughput|Stall|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth"
    timeout 120 ncu --metrics gpu__time_duration.sum -k regex:flash python3 "$LOGS/torch_flash_bwd.py" 2>&1 | grep -E "flash|duration" | cut -c1-150
    timeout 200 ncu $secs --print-details all -k regex:flash_bwd_dq_dk_dv --launch-skip 1 --launch-count 1 python3 "$LOGS/torch_flash_bwd.py" >"$LOGS/flashcmp_torch.txt" 2>&1
    timeout 200 ncu $secs --print-details all -k regex:fa_bwd8_kernel --launch-skip 80 --launch-count 1 build-flash/flash_check --bench >"$LOGS/flashcmp_ours.txt" 2>&1
    for f in torch ours; do echo "## $f stalls (cycles per issued instruction)"; grep -E "^ +Stall|smsp__average_warp|warp_latency" "$LOGS/flashcmp_$f.txt" | sed -E 's/ +/ /g' | cut -c1-110; done
    for f in torch ours; do echo "## $f"; grep -E "$keys" "$LOGS/flashcmp_$f.txt" | sed -E 's/ +/ /g' | cut -c1-120; done
}
# A/B of runtime variants of one build: ROWAB="NAME:ENV[,ENV...] ..." ("-" for none), each case
# of ROWAB_ONLY (bench_kernels --only patterns, space-separated) under each variant, alternating,
# twice; test_cuda_ops first under each variant.
do_rowab() {
    local rc=0 v n e o
    bench/build.sh build-gpu >/dev/null || return 1
    for v in $ROWAB; do
        n=${v%%:*}; e=${v#*:}
        with_env "$e" build-gpu/test_cuda_ops >"$LOGS/rowab_test_$n.log" 2>&1 || rc=1
        echo "$n: test_cuda_ops $(tail -n 1 "$LOGS/rowab_test_$n.log")"
    done
    for r in 1 2; do
        for v in $ROWAB; do
            n=${v%%:*}; e=${v#*:}
            for o in $ROWAB_ONLY; do
                with_env "$e" build-gpu/bench_kernels --only "$o" 2>&1 | grep KERNEL |
                    sed -E "s/^/$n r$r /; s/\"(bytes|gbps|dtype)\": [^,]*, //g"
            done
        done
    done
    return $rc
}
# Flash kernel variants side by side: flash_check built from this tree's flash_attention.cu
# ("tree") and from each .shared/fa_*.cu (e.g. `git show BRANCH:src/backends/cuda/flash_attention.cu
# > .shared/fa_NAME.cu`), each variant checked (with its backward kernels' spills), then all
# timed twice, alternating (flash_check --bench: every row).
do_flashvs() {
    local v f rc=0
    mkdir -p build-flash
    local names=(tree) srcs=(src/backends/cuda/flash_attention.cu)
    for f in .shared/fa_*.cu; do
        [ -e "$f" ] || continue
        v=$(basename "$f" .cu); names+=("$v"); srcs+=("$f")
    done
    for i in "${!names[@]}"; do
        nvcc -O3 -std=c++17 -arch=sm_90 -Iinclude -Isrc -Xptxas -v tests/flash/flash_check.cu \
            "${srcs[$i]}" -o "build-flash/fc_${names[$i]}" >"$LOGS/flashvs_build_${names[$i]}.log" 2>&1 &
    done
    wait
    for v in "${names[@]}"; do
        [ -x "build-flash/fc_$v" ] || { echo "$v: build failed"; tail -5 "$LOGS/flashvs_build_$v.log"; rc=1; continue; }
        grep -A1 "Function properties for .*fa_bwd" "$LOGS/flashvs_build_$v.log" |
            grep -o "fa_bwd[0-9a-zA-Z_]*\|[0-9]* bytes spill stores" | paste -sd' ' | sed "s/^/$v: /"
        "build-flash/fc_$v" >"$LOGS/flashvs_check_$v.log" || rc=1
        echo "$v: $(tail -n 1 "$LOGS/flashvs_check_$v.log")"
    done
    for r in 1 2; do
        for v in "${names[@]}"; do
            [ -x "build-flash/fc_$v" ] || continue
            echo "## $v round $r"
            "build-flash/fc_$v" --bench | grep "BENCH ours" | sed -E 's/fwd_ms=[0-9.]+ //; s/bwd_ms=[0-9.]+ //'
        done
    done
    return $rc
}
# Kernel times of training steps (ncu, clocks left alone), summed per kernel name.
do_profile() {
    local preset=${PROFILE_PRESET:-small}
    timeout 300 ncu --clock-control none --cache-control "${PROFILE_CACHE:-all}" --metrics gpu__time_duration.sum --csv \
        --launch-skip "${PROFILE_SKIP:-3000}" --launch-count "${PROFILE_COUNT:-2500}" \
        build-gpu/ferric train --preset "$preset" --synthetic --steps 8 --bench --device cuda \
        >"$LOGS/profile.csv" 2>"$LOGS/profile.err"
    local rc=$?
    python3 bench/ncu_summary.py "$LOGS/profile.csv"
    return $rc
}

for s in "$@"; do
    case "$s" in
    build) stage build do_build ;;
    test) stage test do_test ;;
    sanitize) stage sanitize do_sanitize ;;
    flash) stage flash do_flash ;;
    sanall) stage sanall do_sanall ;;
    probes) stage probes do_probes ;;
    parity) stage parity do_parity ;;
    bench) stage bench do_bench ;;
    kernels) stage kernels do_kernels ;;
    hfparity) stage hfparity do_hfparity ;;
    decode) stage decode do_decode ;;
    trainbench) stage trainbench do_trainbench ;;
    ferbench) stage ferbench do_ferbench ;;
    decoder) stage decoder do_decoder ;;
    decdiag) stage decdiag do_decdiag ;;
    base) stage base do_base ;;
    decab) stage decab do_decab ;;
    gemmalgos) stage gemmalgos do_gemmalgos ;;
    rowprof) stage rowprof do_rowprof ;;
    profile) stage profile do_profile ;;
    decprof) stage decprof do_decprof ;;
    memtrace) stage memtrace do_memtrace ;;
    hostdiag) stage hostdiag do_hostdiag ;;
    clocks) stage clocks do_clocks ;;
    flashncu) stage flashncu do_flashncu ;;
    flashprof) stage flashprof do_flashprof ;;
    flashcmp) stage flashcmp do_flashcmp ;;
    flashvs) stage flashvs do_flashvs ;;
    flashwg) stage flashwg do_flashwg ;;
    wgflash) stage wgflash do_wgflash ;;
    wgsan) stage wgsan do_wgsan ;;
    rowab) stage rowab do_rowab ;;
    *) echo "unknown stage $s" ;;
    esac
done
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.log"
tar czf "$OUT/logs.tgz" -C "$LOGS" .
