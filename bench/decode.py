#!/usr/bin/env python3
"""Batch-1 bf16 decode speed of ferric against the memory-bandwidth bound and
transformers, on a TinyLlama-shaped model with random weights.

The model (dim 2048, 22 layers, 32 heads, 4 KV heads, ffn 5632, vocab 32000: 1.1 B
parameters) is made by transformers in bf16 and saved with save_pretrained; ferric loads
the folder through examples/hf_logits.c (--bench: greedy, no end-of-sequence stop, best of
the runs after a warm-up). The bound is bytes read per token (every weight but the
embedding table, plus one embedding row) over the device-to-device copy bandwidth
measured here with torch (2 * bytes / time of a large copy). transformers runs greedy
generate with a static KV cache (torch.compile of the forward with --compile).

    python3 bench/decode.py [--build build] [--prompt 32] [--new 256] [--compile]

Prints one table. Exit 0 with "skipped" when torch, transformers or CUDA is missing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

try:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError as e:  # pragma: no cover
    print(f"skipped: {e}")
    sys.exit(0)

TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                 num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False)


def copy_bandwidth(nbytes=1 << 30, reps=20):
    """Bytes per second of a device-to-device copy, counting the read and the write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    secs = start.elapsed_time(end) / 1e3 / reps
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / secs


def hf_generate_speed(model, ids, n_new, repeat=3):
    """(prefill tok/s, decode tok/s) of greedy generate with a static cache."""
    x = torch.tensor([ids], device="cuda")
    gen = dict(do_sample=False, cache_implementation="static", eos_token_id=None,
               pad_token_id=0)

    def timed(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(x, max_new_tokens=n, min_new_tokens=n, **gen)
        torch.cuda.synchronize()
        assert out.shape[1] == len(ids) + n, out.shape
        return time.perf_counter() - t

    timed(n_new)  # warm-up (and compilation)
    best_p, best_d = 0.0, 0.0
    for _ in range(repeat):
        t1 = timed(1)
        tn = timed(n_new)
        best_p = max(best_p, len(ids) / t1)
        best_d = max(best_d, (n_new - 1) / max(tn - t1, 1e-9))
    return best_p, best_d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile transformers' forward")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' generate")
    ap.add_argument("--keep", metavar="DIR", help="save the model folder in DIR and keep it")
    ap.add_argument("--quick", action="store_true",
                    help="time only the default decoder (and --base), not the no-PDL, persistent "
                         "and op-by-op variants")
    ap.add_argument("--base", metavar="BUILD",
                    help="also time the decoder of another build (a change's baseline), "
                         "alternating with this one")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device for torch")
        return 0
    exe = os.path.join(a.build, "example_hf_logits")
    if not os.path.exists(exe):
        print(f"decode bench: {exe} is missing: build with -DFE_CUDA=ON first")
        return 1
    dev_name = torch.cuda.get_device_name(0)
    folder = a.keep or tempfile.mkdtemp(prefix="fe_decode_bench_")
    rows = []
    try:
        torch.manual_seed(0)
        cfg = LlamaConfig(**TINYLLAMA)
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
        n_params = sum(p.numel() for p in model.parameters())
        emb = model.model.embed_tokens.weight
        bytes_per_token = sum(p.numel() * p.element_size() for p in model.parameters()) \
            - emb.numel() * emb.element_size() + emb.shape[1] * emb.element_size()
        t = time.perf_counter()
        model.save_pretrained(folder, safe_serialization=True)
        save_s = time.perf_counter() - t
        bw = copy_bandwidth()
        bound = bw / bytes_per_token
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, cfg.vocab_size, (a.prompt,), generator=g).tolist()

        # ferric, in its own process (the torch model stays resident: plenty of memory):
        # the default path (the CUDA-graph decoder) and the op-by-op path for comparison
        wall = 0.0
        variants = [("ferric", {}, exe), ("ferric, no PDL", {"FE_DECODE_PDL": "0"}, exe),
                    ("ferric, persistent kernel", {"FE_DECODE_PERSIST": "1"}, exe),
                    ("ferric op-by-op", {"FE_DECODE": "generic"}, exe)]
        if a.quick:
            variants = variants[:1]
        if a.base:  # baseline and this build twice each, alternating (the card's clocks drift)
            base_exe = os.path.join(a.base, "example_hf_logits")
            variants[1:1] = [("ferric, base build", {}, base_exe), ("ferric (again)", {}, exe),
                             ("ferric, base build (again)", {}, base_exe)]
        for label, env, prog in variants:
            t = time.perf_counter()
            r = subprocess.run([prog, "--model", folder, "--ids", ",".join(map(str, ids)),
                                "--bench", str(a.new), "--repeat", str(a.repeat + 1), "--device",
                                "cuda", "--dtype", "bf16"], capture_output=True, text=True,
                               env={**os.environ, **env})
            wall += time.perf_counter() - t
            if r.returncode != 0:
                print(f"{label} failed: {r.stderr.strip()}")
                return 1
            fr = json.loads(r.stdout.strip().splitlines()[-1])
            if fr.get("graph_decode") and label == "ferric":
                label += " (CUDA-graph decoder)"
            rows.append((label, fr["prefill_tok_s"], fr["decode_tok_s"]))

        if not a.no_hf:
            if a.compile:
                model.forward = torch.compile(model.forward, mode="reduce-overhead",
                                              fullgraph=True)
            p, d = hf_generate_speed(model, ids, a.new, a.repeat)
            rows.append((f"transformers static{' +compile' if a.compile else ''}", p, d))
    finally:
        if not a.keep:
            shutil.rmtree(folder, ignore_errors=True)

    print(f"\n{dev_name}; torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model: TinyLlama shape, {n_params / 1e9:.3f} B parameters, bf16; "
          f"{bytes_per_token / 1e9:.3f} GB read per token; saved in {save_s:.1f} s; "
          f"ferric process {wall:.1f} s in all")
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s -> bound {bound:.0f} tokens/s; "
          f"prompt {a.prompt}, {a.new} new tokens, batch 1\n")
    print(f"{'engine':<30} {'prefill tok/s':>14} {'decode tok/s':>13} {'% of bound':>11}")
    print("-" * 71)
    print(f"{'bandwidth bound':<30} {'':>14} {bound:>13.1f} {100.0:>10.1f}%")
    for name, p, d in rows:
        print(f"{name:<30} {p:>14.1f} {d:>13.1f} {100 * d / bound:>10.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
