#!/bin/sh
# Build bench/kernels against a compiled ferric (default: build-gpu/, made by
#   cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DFE_CUDA=ON && cmake --build build-gpu -j).
# Usage: bench/build.sh [BUILD_DIR]   -> writes BUILD_DIR/bench_kernels
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build-gpu}
case $build in /*) ;; *) build=$root/$build ;; esac
if [ ! -e "$build/libferric.so" ]; then
    echo "bench/build.sh: $build/libferric.so not found; build ferric there first" >&2
    exit 1
fi
${CC:-cc} -O2 -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
    "$root/bench/kernels.c" -I"$root/include" -I"$root/src" \
    -L"$build" -lferric -Wl,-rpath,"$build" -lm -o "$build/bench_kernels"
echo "$build/bench_kernels"
