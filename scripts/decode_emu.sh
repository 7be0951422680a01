#!/usr/bin/env bash
# CPU emulation of the decoder's matrix-vector and attention kernels (k_dec_gemv, k_dec_attn;
# no GPU needed). Cuts their text out of src/backends/cuda/cuda_decode.cu (from the enums to
# the host side, unchanged), builds tests/cuda_emu/decode_emu.cpp with g++ against the host
# stand-ins in tests/cuda_emu/ and runs it: every matrix-vector mode (QKV with RoPE and the
# cache writes, SiLU gate, residual, plain) against a float64 reference, on f32 and bf16
# weights, one, two and four warps per row pair, and grids small enough that every warp takes
# many pairs; attention against float64 attention. Then the emulator's own self-test of its
# cooperative launch, grid barrier and cp.async (tests/cuda_emu/coop_emu_selftest.cpp), and the
# persistent kernel (k_dec_mega) as a cooperative grid against a float64 token step
# (tests/cuda_emu/decode_mega_emu.cpp). Exit status 1 when a check fails.
#   scripts/decode_emu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
src=src/backends/cuda/cuda_decode.cu
mkdir -p build-emu
awk '/^enum \{ DEC_THREADS/{p=1} /^\/\* ---- host side/{p=0} p' $src \
  > build-emu/decode_kernels.inc
grep -q "k_dec_gemv(" build-emu/decode_kernels.inc || { echo "$0: k_dec_gemv not found in $src" >&2; exit 2; }
g++ -O1 -std=c++17 -Wall -Wextra -Werror -Wno-unknown-pragmas -Itests/cuda_emu -Ibuild-emu \
  -Iinclude -Isrc tests/cuda_emu/decode_emu.cpp -o build-emu/decode_emu
./build-emu/decode_emu
g++ -O1 -std=c++17 -Wall -Wextra -Werror -Wno-unknown-pragmas -Itests/cuda_emu -Iinclude -Isrc \
  tests/cuda_emu/coop_emu_selftest.cpp -o build-emu/coop_emu_selftest
./build-emu/coop_emu_selftest
g++ -O1 -std=c++17 -Wall -Wextra -Werror -Wno-unknown-pragmas -Itests/cuda_emu -Ibuild-emu \
  -Iinclude -Isrc tests/cuda_emu/decode_mega_emu.cpp -o build-emu/decode_mega_emu
./build-emu/decode_mega_emu
