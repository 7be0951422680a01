#!/bin/sh
# Build the libFuzzer targets against the library sources with clang (ASan + UBSan).
# usage: fuzz/build.sh [OUT_DIR]   (default: build-fuzz)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/build-fuzz}
CC=${CC:-clang}
mkdir -p "$OUT"
FLAGS="-g -O1 -std=gnu11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
FLAGS="$FLAGS -fno-omit-frame-pointer -Wno-unknown-pragmas -I$ROOT/include -I$ROOT/src $(pkg-config --cflags libcjson)"
LIB_SRC=$(ls "$ROOT"/src/core/*.c "$ROOT"/src/ops/*.c "$ROOT"/src/autograd/*.c \
              "$ROOT"/src/backends/cpu/*.c "$ROOT"/src/io/*.c)
# the library once, as objects without the fuzzer main
OBJ="$OUT/obj"
mkdir -p "$OBJ"
for src in $LIB_SRC; do
    o="$OBJ/$(echo "${src#$ROOT/}" | tr / _).o"
    $CC $(echo "$FLAGS" | sed 's/-fsanitize=fuzzer,/-fsanitize=fuzzer-no-link,/') -c "$src" -o "$o"
done
for target in safetensors json; do
    $CC $FLAGS "$ROOT/fuzz/fuzz_$target.c" "$OBJ"/*.o -o "$OUT/fuzz_$target" \
        $(pkg-config --libs libcjson) -lm
    echo "built $OUT/fuzz_$target"
done
