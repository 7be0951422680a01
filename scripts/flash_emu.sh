#!/usr/bin/env bash
# CPU emulation of the flash-attention kernels (tests/flash/flash_emu.cpp; g++ only, no GPU):
# builds build-flash/flash_emu and runs every case against a float64 reference (about a
# minute). Exit status 1 when a case fails.
#   scripts/flash_emu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build-flash
g++ -O2 -std=c++17 -Wall -Wextra -Werror -Wno-unknown-pragmas -Wno-clobbered -Iinclude -Isrc \
  tests/flash/flash_emu.cpp -o build-flash/flash_emu
./build-flash/flash_emu
