#!/usr/bin/env python3
"""Attention TFLOP/s: our flash kernels beside PyTorch's scaled_dot_product_attention.

Times torch SDPA forward and backward with the flash backend and the cuDNN backend
(torch.nn.attention.sdpa_kernel), runs our `flash_check --bench` on the same shapes,
and prints both side by side. FLOP conventions: forward 4*B*H*T*S*D, halved when
causal; backward 2.5x forward.

    python3 bench/attention.py [--binary build-flash/flash_check] [--all] [--no-ours]
"""
import argparse
import re
import subprocess
import sys


def flops(B, H, T, D, causal):
    f = 4.0 * B * H * T * T * D * (0.5 if causal else 1.0)
    return f, 2.5 * f


def time_ms(fn, iters):
    import torch

    for _ in range(3):
        fn()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def torch_case(backend, B, H, T, D, causal, dtype):
    """(fwd_ms, bwd_ms) of torch SDPA under one backend, or None when it cannot run."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (B, H, T, D)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, generator=g).requires_grad_()
               for _ in range(3))
    go = torch.randn(shape, device="cuda", dtype=dtype, generator=g)
    iters = 10 if T >= 4096 else 30
    try:
        with sdpa_kernel([backend]):
            fwd = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), iters)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            bwd = time_ms(lambda: torch.autograd.grad(out, (q, k, v), go, retain_graph=True), iters)
    except RuntimeError as e:
        print(f"  {backend.name} T={T}: not available ({str(e).splitlines()[0][:80]})",
              file=sys.stderr)
        return None
    finally:
        torch.cuda.empty_cache()
    return fwd, bwd


def ours(binary, want_all):
    """{(D, T, causal): (fwd_tflops, bwd_tflops)} parsed from flash_check --bench."""
    cmd = [binary, "--bench"] + (["--all"] if want_all else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"{' '.join(cmd)} failed:\n{res.stdout}{res.stderr}", file=sys.stderr)
        return {}
    got = {}
    for line in res.stdout.splitlines():
        m = re.match(r"BENCH ours \S+ D=(\d+) B=\d+ H=\d+ T=(\d+) causal=(\d) .*"
                     r"fwd_tflops=([\d.]+) .*bwd_tflops=([\d.]+)", line)
        if m:
            got[(int(m[1]), int(m[2]), m[3] == "1")] = (float(m[4]), float(m[5]))
    return got


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="build-flash/flash_check")
    ap.add_argument("--all", action="store_true", help="also non-causal and D=64")
    ap.add_argument("--no-ours", action="store_true")
    args = ap.parse_args()

    import torch
    from torch.nn.attention import SDPBackend

    if not torch.cuda.is_available():
        print("SKIP: no CUDA device")
        return 0
    B, H = 4, 16
    configs = [(128, True)] + ([(128, False), (64, True), (64, False)] if args.all else [])
    mine = {} if args.no_ours else ours(args.binary, args.all)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16, B={B} H={H}")
    hdr = (f"{'D':>4} {'causal':>6} {'T':>5} | {'fwd ours':>8} {'flash':>6} {'cudnn':>6} | "
           f"{'bwd ours':>8} {'flash':>6} {'cudnn':>6}   (TFLOP/s)")
    rows = []
    for D, causal in configs:
        for T in (1024, 2048, 4096, 8192):
            ff, fb = flops(B, H, T, D, causal)
            cells = {}
            for name, be in (("flash", SDPBackend.FLASH_ATTENTION),
                             ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                r = torch_case(be, B, H, T, D, causal, torch.bfloat16)
                cells[name] = (ff / r[0] / 1e9, fb / r[1] / 1e9) if r else None
            o = mine.get((D, T, causal))

            def f(x, i):
                return f"{x[i]:6.1f}" if x else f"{'n/a':>6}"

            rows.append(f"{D:>4} {str(causal):>6} {T:>5} | {f(o, 0):>8} {f(cells['flash'], 0)} "
                        f"{f(cells['cudnn'], 0)} | {f(o, 1):>8} {f(cells['flash'], 1)} "
                        f"{f(cells['cudnn'], 1)}")
    print(hdr)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
