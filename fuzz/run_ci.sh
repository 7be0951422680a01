#!/bin/sh
# Build the fuzz targets and run each for SECONDS (default 30) on a copy of its seed corpus.
# Exits non-zero when a target crashes, leaks or times out (reproducers: build-fuzz/artifacts/).
# usage: fuzz/run_ci.sh [SECONDS]
set -u
SECONDS_EACH=${1:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build-fuzz
"$ROOT/fuzz/build.sh" "$OUT" || exit 2
rm -rf "$OUT/artifacts"
mkdir -p "$OUT/artifacts"
status=0
for target in safetensors json; do
    work=$(mktemp -d)
    cp "$ROOT/fuzz/corpus/$target/"* "$work/"
    echo "== fuzz_$target for ${SECONDS_EACH}s"
    "$OUT/fuzz_$target" "$work" -max_total_time="$SECONDS_EACH" -seed="${FUZZ_SEED:-1}" -max_len=8192 -timeout=10 \
        -rss_limit_mb=2048 -dict="$ROOT/fuzz/$target.dict" \
        -artifact_prefix="$OUT/artifacts/$target-" -print_final_stats=1 >"$OUT/$target.log" 2>&1
    rc=$?
    grep -E "^stat::number_of_executed_units|^SUMMARY|ERROR:" "$OUT/$target.log"
    if [ $rc -ne 0 ] || ls "$OUT/artifacts/$target-"* >/dev/null 2>&1; then
        echo "fuzz_$target: FAILED (exit $rc); log $OUT/$target.log, reproducers in $OUT/artifacts/"
        status=1
    else
        echo "fuzz_$target: ok"
    fi
    rm -rf "$work"
done
exit $status
