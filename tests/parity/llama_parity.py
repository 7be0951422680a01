#!/usr/bin/env python3
"""Parity of ferric's Llama with PyTorch and Hugging Face transformers.

examples/llama_dump.c writes a tiny model (weights, a batch, logits, loss and every
gradient) as raw little-endian files plus manifest.json. This script loads them,
rebuilds the same model (1) in plain PyTorch, written here from the Llama equations,
and (2) through transformers.LlamaForCausalLM when transformers is installed, runs
forward and backward on the same batch, and compares logits, loss and gradients.

    build/example_llama_dump /tmp/llama_dump [--tied] [--llama3-scaling]
    python3 tests/parity/llama_parity.py /tmp/llama_dump

With --build DIR the script runs the dump program itself for the three variants
(plain, tied embeddings, Llama 3 RoPE scaling). Exit status 0 when everything agrees
within tolerance, 1 otherwise, 77 when torch is missing.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover
    print(f"skipped: {e}")
    sys.exit(77)

# ferric computes in f32; the references run in f64 and in f32.
TOL_F64_REF = 2e-5  # max |ferric - ref| / max |ref| per tensor
TOL_F32_REF = 2e-5


def load(folder):
    with open(os.path.join(folder, "manifest.json")) as f:
        man = json.load(f)

    def raw(name, dtype, shape):
        a = np.fromfile(os.path.join(folder, name), dtype=np.dtype(dtype).newbyteorder("<"))
        return torch.from_numpy(a.astype(dtype).reshape(shape))

    bshape = man["batch_shape"]
    V = man["config"]["vocab_size"]
    data = {
        "tokens": raw(man["tokens"], np.int32, bshape).long(),
        "targets": raw(man["targets"], np.int32, bshape).long(),
        "logits": raw(man["logits"], np.float32, bshape + [V]),
        "inv_freq": raw(man["inv_freq"], np.float32, [-1]),
        "params": {},
        "grads": {},
    }
    for p in man["params"]:
        data["params"][p["name"]] = raw(p["file"], np.float32, p["shape"])
        if p["grad_file"]:
            data["grads"][p["name"]] = raw(p["grad_file"], np.float32, p["shape"])
    return man, data


# ---- (1) Llama written out in PyTorch ----------------------------------------------------


def inv_freq_ref(cfg):
    """RoPE frequencies in f32, following transformers' default and llama3 rules."""
    D, base = cfg["head_dim"], cfg["rope_theta"]
    inv = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    rs = cfg.get("rope_scaling")
    if not rs:
        return inv
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    lo_wl, hi_wl = old / lo, old / hi
    wl = 2 * math.pi / inv
    scaled = torch.where(wl > lo_wl, inv / factor, inv)
    smooth = (old / wl - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wl < hi_wl) * ~(wl > lo_wl)
    return torch.where(medium, smoothed, scaled)


def rmsnorm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, inv_freq):  # x (B, H, T, D), rotate-half layout
    T = x.shape[2]
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq.float()[None, :]  # (T, D/2)
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos + rot * sin


def forward_ref(cfg, W, tokens, inv_freq):
    B, T = tokens.shape
    H, Hkv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    h = W["model.embed_tokens.weight"][tokens]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for l in range(cfg["num_hidden_layers"]):
        P = lambda n: W[f"model.layers.{l}.{n}"]  # noqa: E731
        x = rmsnorm(h, P("input_layernorm.weight"), eps)
        q = (x @ P("self_attn.q_proj.weight").T).view(B, T, H, D).transpose(1, 2)
        k = (x @ P("self_attn.k_proj.weight").T).view(B, T, Hkv, D).transpose(1, 2)
        v = (x @ P("self_attn.v_proj.weight").T).view(B, T, Hkv, D).transpose(1, 2)
        q, k = rope(q, inv_freq), rope(k, inv_freq)
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        a = s.masked_fill(mask, float("-inf")).softmax(-1) @ v
        a = a.transpose(1, 2).reshape(B, T, H * D) @ P("self_attn.o_proj.weight").T
        h = h + a
        x = rmsnorm(h, P("post_attention_layernorm.weight"), eps)
        g = F.silu(x @ P("mlp.gate_proj.weight").T) * (x @ P("mlp.up_proj.weight").T)
        h = h + g @ P("mlp.down_proj.weight").T
    x = rmsnorm(h, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return x @ head.T


def loss_of(logits, targets):
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)


def run_ref(man, data, dtype):
    W = {n: t.to(dtype).clone().requires_grad_(True) for n, t in data["params"].items()}
    logits = forward_ref(man["config"], W, data["tokens"], inv_freq_ref(man["config"]))
    loss = loss_of(logits, data["targets"])
    loss.backward()
    return logits.detach(), loss.item(), {n: w.grad for n, w in W.items()}


# ---- (2) transformers ---------------------------------------------------------------------


def run_hf(man, data, dtype):
    try:
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    c = man["config"]
    kw = dict(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
        head_dim=c["head_dim"], max_position_embeddings=max(c["max_position_embeddings"], 512),
        rms_norm_eps=c["rms_norm_eps"], tie_word_embeddings=c["tie_word_embeddings"],
        attention_bias=False, mlp_bias=False, hidden_act="silu",
    )
    rope = {"rope_type": "default", "rope_theta": c["rope_theta"]}
    if c.get("rope_scaling"):
        rope = dict(c["rope_scaling"], rope_theta=c["rope_theta"])
    major = int(transformers.__version__.split(".")[0])
    if major >= 5:  # rope settings moved into rope_parameters
        cfg = LlamaConfig(rope_parameters=rope, **kw)
    else:
        cfg = LlamaConfig(rope_theta=c["rope_theta"],
                          rope_scaling=dict(c["rope_scaling"]) if c.get("rope_scaling") else None, **kw)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).to(dtype)
    sd = model.state_dict()
    with torch.no_grad():
        for n, t in data["params"].items():
            if n not in sd:
                raise KeyError(f"transformers has no parameter {n}")
            sd[n].copy_(t.to(dtype))
    named = dict(model.named_parameters())
    missing = set(named) - set(data["params"])
    if missing:
        raise KeyError(f"ferric has no parameters {sorted(missing)}")
    inv = model.model.rotary_emb.inv_freq
    logits = model(input_ids=data["tokens"]).logits
    loss = loss_of(logits, data["targets"])
    loss.backward()
    return logits.detach(), loss.item(), {n: p.grad for n, p in named.items()}, inv.detach()


# ---- comparison ------------------------------------------------------------------------------


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def compare(label, man, data, res, tol):
    logits, loss, grads = res[:3]
    worst, ok = 0.0, True
    rows = [("logits", rel(data["logits"], logits))]
    rows.append(("loss", abs(man["loss"] - loss) / abs(loss)))
    for n, g in grads.items():
        if n not in data["grads"]:
            print(f"  {label}: no ferric gradient for {n}")
            ok = False
            continue
        rows.append((n + ".grad", rel(data["grads"][n], g)))
    for name, e in rows:
        worst = max(worst, e)
        if not e <= tol:
            print(f"  {label}: {name} relative error {e:.3e} > {tol:.0e}")
            ok = False
    print(f"  {label:<22} loss ferric {man['loss']:.8f} ref {loss:.8f}  worst rel err {worst:.2e} "
          f"over {len(rows)} tensors  {'ok' if ok else 'FAIL'}")
    return ok


def check_folder(folder):
    man, data = load(folder)
    print(f"{folder}: tied={man['config']['tie_word_embeddings']} "
          f"rope_scaling={bool(man['config'].get('rope_scaling'))}")
    ok = True
    inv_ref = inv_freq_ref(man["config"])
    if not torch.equal(inv_ref, data["inv_freq"]):
        print(f"  inv_freq differs from the f32 reference: {data['inv_freq']} vs {inv_ref}")
        ok = False
    ok &= compare("torch f64", man, data, run_ref(man, data, torch.float64), TOL_F64_REF)
    ok &= compare("torch f32", man, data, run_ref(man, data, torch.float32), TOL_F32_REF)
    hf = run_hf(man, data, torch.float32)
    if hf is None:
        print("  transformers not installed: skipped the LlamaForCausalLM comparison")
    else:
        if not torch.equal(hf[3].float(), data["inv_freq"]):
            print(f"  inv_freq differs from transformers: {data['inv_freq']} vs {hf[3]}")
            ok = False
        else:
            print("  inv_freq bit-identical to transformers")
        ok &= compare("transformers f32", man, data, hf, TOL_F32_REF)
        ok &= compare("transformers f64", man, data, run_hf(man, data, torch.float64), TOL_F64_REF)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="*", help="folders written by example_llama_dump")
    ap.add_argument("--build", help="build folder holding example_llama_dump: dump and check "
                                    "the plain, tied and llama3-scaled variants")
    a = ap.parse_args()
    torch.manual_seed(0)
    folders = list(a.folders)
    tmp = None
    if a.build:
        tmp = tempfile.mkdtemp(prefix="ferric_parity_")
        exe = os.path.join(a.build, "example_llama_dump")
        for i, flags in enumerate([[], ["--tied"], ["--llama3-scaling"]]):
            out = os.path.join(tmp, f"v{i}")
            subprocess.run([exe, out, "--seed", str(11 + i)] + flags, check=True)
            folders.append(out)
    if not folders:
        ap.error("give dump folders or --build")
    ok = all([check_folder(f) for f in folders])
    print("PARITY OK" if ok else "PARITY FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
