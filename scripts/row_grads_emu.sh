#!/usr/bin/env bash
# CPU emulation of the RMSNorm-backward and embedding-backward CUDA kernels (no GPU needed).
# Cuts their text out of src/backends/cuda/cuda_nn.cu by its section comments (unchanged but for
# `extern __shared__`, which becomes the emulator's dynamic shared memory), builds
# tests/cuda_emu/row_grads_emu.cpp with g++ against the host stand-ins in tests/cuda_emu/ and
# runs it: every check against a float64 reference (about a minute and a half). Exit status 1
# when a check fails.
#   scripts/row_grads_emu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
src=src/backends/cuda/cuda_nn.cu
mkdir -p build-emu
{
  awk '/^\/\* A barrier over the tpr threads of the calling/{p=1} /^\/\* Fast-math pieces/{p=0} p' $src
  awk '/^__device__ __forceinline__ void nn_wait_prev/{p=1} /^\/\* Launch k after the previous kernel/{p=0} p' $src
  awk '/^\/\* ---- RMSNorm backward on rows in registers/{p=1} /^\/\* Softmax \(LOG/{p=0} p' $src
  awk '/^__device__ __forceinline__ long long index_at/{p=1} p{print} p&&/^}/{exit}' $src
  awk '/^\/\* ---- embedding backward: deterministic/{p=1} /^static size_t emb_align/{p=0} p' $src
} | sed -E 's/extern __shared__ (float|int) ([a-z_]+)\[\];/\1 *\2 = (\1 *)emu::dsmem();/' \
  > build-emu/row_grads_kernels.inc
for k in k_rmsnorm_bwd_fast k_colsum_final_f k_emb_sort k_emb_rows; do
  grep -q "$k(" build-emu/row_grads_kernels.inc || { echo "$0: $k not found in $src" >&2; exit 2; }
done
g++ -O1 -std=c++17 -Wall -Wextra -Werror -Wno-unknown-pragmas -Itests/cuda_emu -Ibuild-emu \
  -Iinclude -Isrc tests/cuda_emu/row_grads_emu.cpp -o build-emu/row_grads_emu
./build-emu/row_grads_emu
