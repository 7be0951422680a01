#!/usr/bin/env bash
# CPU emulation of the wgmma probe's cases (tests/wgmma/wgmma_emu.cpp, through the host stand-in
# for Hopper's warpgroup MMA in tests/cuda_emu/wgmma_emu.h; g++ only, no GPU, seconds): the
# emulator must read descriptors and fragments as an H200 did. Exit status 1 when it does not.
#   scripts/wgmma_emu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build-emu
g++ -O1 -std=c++17 -Wall -Wextra -Werror -Wno-unknown-pragmas -Itests/cuda_emu -Itests/wgmma \
  tests/wgmma/wgmma_emu.cpp -o build-emu/wgmma_emu
./build-emu/wgmma_emu
