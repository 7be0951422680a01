#!/usr/bin/env bash
# CPU emulation (g++ only, no GPU, seconds) through the host stand-in for Hopper's warpgroup MMA
# (tests/cuda_emu/wgmma_emu.h): the wgmma probe's cases (tests/wgmma/wgmma_emu.cpp: the
# emulator must read descriptors and fragments as an H200 did), then the experimental wgmma
# flash forward against float64 attention (tests/wgmma/wg_flash_emu.cpp). Exit status 1 when
# either fails.
#   scripts/wgmma_emu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build-emu
flags="-O1 -std=c++17 -Wall -Wextra -Werror -Wno-unknown-pragmas -Itests/cuda_emu -Itests/wgmma
  -Isrc/backends/cuda/wgmma"
g++ $flags tests/wgmma/wgmma_emu.cpp -o build-emu/wgmma_emu
g++ $flags tests/wgmma/wg_flash_emu.cpp -o build-emu/wg_flash_emu
./build-emu/wgmma_emu
./build-emu/wg_flash_emu
