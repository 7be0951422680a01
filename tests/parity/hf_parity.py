#!/usr/bin/env python3
"""Parity of ferric's Hugging Face interop with transformers.LlamaForCausalLM.

For several Llama configs (GQA, tied embeddings, rope_theta 500000, llama3 RoPE scaling,
vocab 1000 with hidden 96, head_dim 64 and 128 so that the CUDA flash-attention path runs
in bf16), transformers builds a model with random weights and saves it with
save_pretrained(safe_serialization=True); ferric loads the folder through
examples/hf_logits.c and its logits are compared with transformers' (computed in f64):

    f32 on CPU and CUDA (full forward and KV-cache prefill)   rel. Frobenius < 1e-4
    bf16 on CPU and on CUDA (flash attention where head_dim
    is 64/128; also with FE_NO_FUSED_ATTENTION=1)              rel. Frobenius < 2e-2
    greedy 32 tokens with the KV cache, f32                    identical ids

and models saved by ferric (fe_llama_save_hf) load in transformers (no missing or
unexpected keys) with the same logits (f32 < 1e-4).

    python3 tests/parity/hf_parity.py [--build build] [--no-cuda] [--keep DIR]

Exit status 0 when everything agrees, 1 on a failure, 0 with "skipped" when torch or
transformers is missing.
"""
import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError as e:  # pragma: no cover
    print(f"skipped: {e}")
    sys.exit(0)

TOL_F32 = 1e-4
TOL_BF16 = 2e-2
SEQ = 40
GREEDY = 32

CONFIGS = [
    # name, LlamaConfig kwargs
    ("gqa-v1000-h96", dict(vocab_size=1000, hidden_size=96, intermediate_size=200,
                           num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2)),
    ("tied-theta500k", dict(vocab_size=1000, hidden_size=96, intermediate_size=160,
                            num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                            tie_word_embeddings=True, rope_theta=500000.0)),
    ("llama3-scaling", dict(vocab_size=1000, hidden_size=96, intermediate_size=200,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            rope_theta=500000.0, max_position_embeddings=256,
                            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                              high_freq_factor=4.0,
                                              original_max_position_embeddings=32))),
    ("hd64-gqa", dict(vocab_size=1000, hidden_size=256, intermediate_size=344,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)),
    ("hd64-h96-tied", dict(vocab_size=1000, hidden_size=96, intermediate_size=200,
                           num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
                           head_dim=64, tie_word_embeddings=True)),
    ("hd128-mqa-llama3", dict(vocab_size=1000, hidden_size=256, intermediate_size=300,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              rope_theta=500000.0,
                              rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                low_freq_factor=1.0, high_freq_factor=4.0,
                                                original_max_position_embeddings=16))),
]

# models made by ferric (examples/hf_logits --save-random) and read by transformers
FERRIC_SAVED = [
    ("ferric-gqa", ["--vocab", "1000", "--dim", "96", "--heads", "6", "--kv-heads", "2",
                    "--head-dim", "16", "--ffn", "200"]),
    ("ferric-tied-llama3", ["--vocab", "1000", "--dim", "96", "--heads", "4", "--kv-heads", "2",
                            "--head-dim", "24", "--ffn", "200", "--tied", "--llama3",
                            "--theta", "500000"]),
    ("ferric-hd64-bf16", ["--vocab", "1000", "--dim", "128", "--heads", "2", "--kv-heads", "1",
                          "--head-dim", "64", "--ffn", "200", "--dtype", "bf16"]),
]


def rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


class Runner:
    def __init__(self, exe):
        self.exe = exe

    def __call__(self, *args, env=None):
        r = subprocess.run([self.exe, *args], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"{os.path.basename(self.exe)} {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def logits(self, folder, ids, device, dtype, vocab, cached=False, env=None):
        out = os.path.join(folder, "ferric_logits.bin")
        args = ["--model", folder, "--ids", ",".join(map(str, ids)), "--out", out,
                "--device", device, "--dtype", dtype]
        if cached:
            args.append("--cached")
        self(*args, env=env)
        return np.fromfile(out, dtype="<f4").reshape(len(ids), vocab)

    def greedy(self, folder, ids, n, device, dtype):
        s = self("--model", folder, "--ids", ",".join(map(str, ids)), "--greedy", str(n),
                 "--device", device, "--dtype", dtype)
        return [int(x) for x in s.split()]


def random_model(kw, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(initializer_range=0.05, **kw)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1 so that a swapped norm weight shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


def torch_logits(model, ids, dtype=torch.float64):
    m = model.to(dtype)
    with torch.no_grad():
        out = m(torch.tensor([ids]), use_cache=False).logits[0]
    return out.to(torch.float64).numpy()


def torch_greedy(model, ids, n):
    """Greedy continuation in f32 recomputing the whole prefix; also the top-2 margin of
    each step (f64) so that a near-tie can be told apart from a real mismatch."""
    m32 = model.to(torch.float32)
    seq = list(ids)
    margins = []
    with torch.no_grad():
        for _ in range(n):
            row = m32(torch.tensor([seq]), use_cache=False).logits[0, -1]
            top = torch.topk(row.double(), 2).values
            margins.append(float(top[0] - top[1]))
            seq.append(int(row.argmax()))
    return seq[len(ids):], margins


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", default="build", help="the CMake build folder")
    ap.add_argument("--no-cuda", action="store_true", help="CPU checks only")
    ap.add_argument("--keep", help="keep the model folders under this folder")
    a = ap.parse_args()
    exe = os.path.join(a.build, "example_hf_logits")
    if not os.path.exists(exe):
        print(f"hf_parity: {exe} is missing: build the project first (cmake --build {a.build})")
        return 1
    run = Runner(exe)
    cuda = False
    if not a.no_cuda:
        ver = subprocess.run([os.path.join(a.build, "ferric"), "--version"], capture_output=True,
                             text=True).stdout
        cuda = "cuda" in ver
        if not cuda:
            print("hf_parity: ferric has no CUDA backend here: CPU checks only")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"cuda {'yes' if cuda else 'no'}")
    root = a.keep or tempfile.mkdtemp(prefix="fe_hf_parity_")
    os.makedirs(root, exist_ok=True)
    rows = []  # (config, check, value, tolerance, ok)

    def check(name, what, value, tol, ok=None):
        if ok is None:
            ok = value <= tol
        rows.append((name, what, value, tol, ok))

    def guarded(name, what, fn):
        try:
            fn()
        except Exception as e:  # a crash or an error exit is a failure with its message
            rows.append((name, what, str(e)[:200], None, False))

    rng = np.random.default_rng(0)
    for i, (name, kw) in enumerate(CONFIGS):
        folder = os.path.join(root, name)
        model = random_model(kw, seed=100 + i)
        model.save_pretrained(folder, safe_serialization=True)
        V = kw["vocab_size"]
        ids = [int(x) for x in rng.integers(0, V, SEQ)]
        ref = torch_logits(model, ids)
        devices = ["cpu"] + (["cuda"] if cuda else [])
        for dev in devices:
            guarded(name, f"f32 {dev}", lambda: check(
                name, f"f32 {dev}", rel(run.logits(folder, ids, dev, "f32", V), ref), TOL_F32))
            guarded(name, f"f32 {dev} kv-cache", lambda: check(
                name, f"f32 {dev} kv-cache",
                rel(run.logits(folder, ids, dev, "f32", V, cached=True), ref), TOL_F32))
        guarded(name, "bf16 cpu", lambda: check(
            name, "bf16 cpu", rel(run.logits(folder, ids, "cpu", "bf16", V), ref), TOL_BF16))
        # for scale: transformers' own bf16 error against its f64 logits (not checked)
        rows.append((name, "(transformers bf16 cpu)",
                     rel(torch_logits(copy.deepcopy(model), ids, torch.bfloat16), ref), None, True))
        if cuda:
            guarded(name, "bf16 cuda", lambda: check(
                name, "bf16 cuda", rel(run.logits(folder, ids, "cuda", "bf16", V), ref), TOL_BF16))
            guarded(name, "bf16 cuda kv-cache", lambda: check(
                name, "bf16 cuda kv-cache",
                rel(run.logits(folder, ids, "cuda", "bf16", V, cached=True), ref), TOL_BF16))
            env = dict(os.environ, FE_NO_FUSED_ATTENTION="1")
            guarded(name, "bf16 cuda no-flash", lambda: check(
                name, "bf16 cuda no-flash",
                rel(run.logits(folder, ids, "cuda", "bf16", V, env=env), ref), TOL_BF16))
        want, margins = torch_greedy(model, ids[:8], GREEDY)
        for dev in devices:
            def greedy_check(dev=dev):
                got = run.greedy(folder, ids[:8], GREEDY, dev, "f32")
                first = next((k for k in range(GREEDY) if got[k] != want[k]), None)
                if first is None:
                    check(name, f"greedy {GREEDY} f32 {dev}", 0, 0)
                else:  # a divergence at a near-tie is rounding, not a bug
                    tie = margins[first] < 1e-4
                    check(name, f"greedy {GREEDY} f32 {dev}",
                          f"differs at {first} (margin {margins[first]:.2e})", None, tie)
            guarded(name, f"greedy f32 {dev}", greedy_check)

    for j, (name, args) in enumerate(FERRIC_SAVED):
        folder = os.path.join(root, name)

        def saved_check(name=name, args=args, folder=folder, j=j):
            if os.path.exists(folder):
                shutil.rmtree(folder)
            run("--save-random", folder, "--seed", str(7 + j), *args)
            model, info = LlamaForCausalLM.from_pretrained(folder, output_loading_info=True)
            bad = {k: v for k, v in info.items() if v and k != "error_msgs"} or \
                ({"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {})
            check(name, "transformers loads it", "clean" if not bad else str(bad)[:120], None,
                  not bad)
            V = model.config.vocab_size
            ids = [int(x) for x in rng.integers(0, V, SEQ)]
            ref = torch_logits(model.eval(), ids)
            check(name, "f32 cpu vs transformers",
                  rel(run.logits(folder, ids, "cpu", "f32", V), ref), TOL_F32)
        guarded(name, "save -> transformers", saved_check)

    print()
    print(f"{'config':<20} {'check':<24} {'value':>12} {'tol':>8}  result")
    print("-" * 76)
    for name, what, value, tol, ok in rows:
        v = f"{value:.3e}" if isinstance(value, float) else str(value)
        t = f"{tol:.0e}" if isinstance(tol, float) else ""
        res = "ok" if ok else "FAIL"
        if what.startswith("("):
            res = "info"
        print(f"{name:<20} {what:<24} {v:>12} {t:>8}  {res}")
    n_bad = sum(1 for r in rows if not r[4])
    print(f"\n{len(rows) - n_bad} ok, {n_bad} failed")
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
