#!/usr/bin/env bash
# Llama training throughput: ferric beside PyTorch eager and torch.compile on the same GPU.
#
# Runs .shared/torch_llama_baseline.py (small and tinyllama, eager and compile) and
# `ferric train --synthetic --bench` on the same shapes (tinyllama with gradient
# checkpointing off and on), then prints one table: tokens/s, MFU (vs 989 TFLOP/s, the
# FLOP convention of the baseline script), peak GiB, and ferric / torch.compile.
#
# usage: bench/train_llama.sh [--ferric BIN] [--torch SCRIPT] [--steps N] [--configs small,tinyllama]
#                             [--no-torch] [--out DIR]
#   --ferric BIN    ferric built with CUDA (default build-gpu/ferric)
#   --torch SCRIPT  the PyTorch baseline (default .shared/torch_llama_baseline.py,
#                   else ../shared/bench/torch_llama_baseline.py)
#   --steps N       ferric optimizer steps (default 13: 3 warm-up + 10 timed)
#   --no-torch      skip PyTorch (the torch columns stay empty)
#   --out DIR       where the raw logs go (default bench/out/train_llama-<date>)
set -uo pipefail

ferric=build-gpu/ferric
torch_script=""
steps=13
configs=small,tinyllama
run_torch=1
out=""
while [ $# -gt 0 ]; do
    case "$1" in
    --ferric) ferric="$2"; shift 2 ;;
    --torch) torch_script="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --configs) configs="$2"; shift 2 ;;
    --no-torch) run_torch=0; shift ;;
    --out) out="$2"; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "train_llama: unknown option '$1'" >&2; exit 2 ;;
    esac
done
if [ -z "$torch_script" ]; then
    for c in .shared/torch_llama_baseline.py ../shared/bench/torch_llama_baseline.py; do
        [ -f "$c" ] && torch_script="$c" && break
    done
fi
[ -x "$ferric" ] || { echo "train_llama: $ferric not found (build with -DFE_CUDA=ON into build-gpu/)" >&2; exit 2; }
[ -n "$out" ] || out="bench/out/train_llama-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
log="$out/results.log"
: >"$log"

# PyTorch: CEIL and TRAIN lines (one per config and mode), FAIL on error
if [ "$run_torch" = 1 ]; then
    if [ -n "$torch_script" ]; then
        echo "== torch: $torch_script --configs $configs --modes eager,compile" >&2
        python3 "$torch_script" --configs "$configs" --modes eager,compile 2>"$out/torch.err" | tee -a "$log" >&2
    else
        echo "train_llama: no torch_llama_baseline.py found; torch columns stay empty" >&2
    fi
fi

# ferric: one TRAIN line per run; a failed run becomes a FAIL line
run_ferric() { # config, grad-checkpointing (0/1)
    local cfg="$1" gc="$2" extra="" tag="$1"
    [ "$gc" = 1 ] && extra="--grad-checkpointing" && tag="$1-gc"
    echo "== ferric train --preset $cfg --synthetic --steps $steps --bench --device cuda $extra" >&2
    if "$ferric" train --preset "$cfg" --synthetic --steps "$steps" --bench --device cuda $extra \
        >"$out/ferric-$tag.out" 2>"$out/ferric-$tag.err"; then
        grep '^TRAIN ' "$out/ferric-$tag.out" | tee -a "$log" >&2
    else
        local why
        why=$(tail -n 1 "$out/ferric-$tag.err" | tr '"' "'")
        echo "FAIL ferric $tag $why" | tee -a "$log" >&2
    fi
}
IFS=, read -r -a cfgs <<<"$configs"
for cfg in "${cfgs[@]}"; do
    run_ferric "$cfg" 0
    [ "$cfg" = tinyllama ] && run_ferric "$cfg" 1
done

# the table
python3 - "$log" <<'EOF'
import json, sys
torch, ours, ceil, fails = {}, {}, None, []
for line in open(sys.argv[1]):
    kind, _, rest = line.strip().partition(" ")
    if kind == "CEIL":
        ceil = json.loads(rest)
    elif kind == "TRAIN":
        r = json.loads(rest)
        if r.get("framework") == "ferric":
            ours[(r["config"], bool(r.get("grad_checkpointing")))] = r
        else:
            torch[(r["config"], r["mode"])] = r
    elif kind == "FAIL":
        fails.append(rest)

def cell(r, k, fmt):
    return format(r[k], fmt) if r and k in r else "-"

rows = []
for (cfg, mode), r in torch.items():
    rows.append((cfg, "torch " + mode, r))
for (cfg, gc), r in ours.items():
    rows.append((cfg, "ferric " + r.get("precision", "") + (" +gc" if gc else ""), r))
rows.sort(key=lambda x: (x[0], not x[1].startswith("torch"), x[1]))
if ceil:
    print(f"device: {ceil['device']}  copy {ceil['copy_TBps']} TB/s  bf16 GEMM {ceil['bf16_gemm_TFLOPs']} TFLOP/s  torch {ceil['torch']}")
print(f"{'config':<10} {'run':<22} {'step ms':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU %':>6} {'peak GiB':>9} {'vs compile':>10}")
for cfg, name, r in rows:
    ref = torch.get((cfg, "compile"))
    ratio = f"{r['tok_s'] / ref['tok_s']:.2f}x" if ref and r.get("tok_s") else "-"
    print(f"{cfg:<10} {name:<22} {cell(r,'step_ms','.1f'):>9} {cell(r,'tok_s','.0f'):>10} {cell(r,'tflops','.1f'):>8} "
          f"{cell(r,'mfu_989','.1f'):>6} {cell(r,'peak_GiB','.2f'):>9} {ratio:>10}")
for f in fails:
    print("failed:", f)
EOF
echo "raw logs: $out" >&2
