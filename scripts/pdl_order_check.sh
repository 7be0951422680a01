#!/usr/bin/env bash
# Check, in the SASS, that the kernels launched as programmatic dependents (nn_launch_dep in
# src/backends/cuda/cuda_nn.cu) issue no global memory access before their griddepcontrol.wait
# (ACQBULK). ptxas moved a non-coherent load above the wait once (see nn_wait_prev there).
# Needs nvcc and cuobjdump (with nvdisasm); says so and exits 0 when they are missing.
#   scripts/pdl_order_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for t in nvcc cuobjdump; do
  command -v $t >/dev/null || { echo "pdl_order_check: skipped ($t not found)"; exit 0; }
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
nvcc -O3 -std=c++17 -arch=sm_90 -Iinclude -Isrc -cubin src/backends/cuda/cuda_nn.cu -o "$out/nn.cubin"
cuobjdump -sass "$out/nn.cubin" >"$out/nn.sass" || { echo "pdl_order_check: skipped (cuobjdump failed)"; exit 0; }
# per function: the memory instructions before the first ACQBULK
awk '
  /Function : / { fn = $3; seen = 0; bad = ""; next }
  fn != "" && /ACQBULK/ && !seen { seen = 1; n++
                                   if (bad != "") { print "FAIL " fn ":" bad; fails++ } else print "ok   " fn }
  fn != "" && !seen && /(LDG|STG|ATOMG|REDG|LD\.E|ST\.E|ATOM\.E|RED\.E)/ { sub(/^ *\/\*[0-9a-f]+\*\/ */, ""); sub(/ *;.*/, ""); bad = bad " [" $0 "]" }
  END { printf "%d kernels wait for the kernel before them; %d touch memory first\n", n, fails; exit fails > 0 }
' "$out/nn.sass"
