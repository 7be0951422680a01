#!/usr/bin/env python3
"""Parity of ferric's safetensors reader and writer with the Python `safetensors` package.

1. Python writes files (every dtype numpy can hold, plus BF16 written byte by byte, and a
   sharded folder); `ferric info --json` must list the same names, dtypes, shapes and
   offsets, and `ferric info --dump` must print the same values.
2. ferric writes a file (through libferric via ctypes); Python's safetensors must load the
   same values and metadata.
3. ferric rewrites a Llama config.json; transformers' LlamaConfig reads it back (when
   transformers is installed; otherwise the fields are checked by hand).

usage: python3 tests/parity/safetensors_check.py [--build build]
Skips (exit 0) with a message when numpy or safetensors is missing.
"""
import argparse
import ctypes
import json
import os
import struct
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file
except ImportError as e:  # pragma: no cover
    print(f"SKIP: safetensors parity needs numpy and safetensors ({e})")
    sys.exit(0)

FAILS = []


def check(cond, what):
    if not cond:
        FAILS.append(what)
        print(f"  FAIL: {what}")


def random_arrays(rng):
    shapes = [(3, 5), (7,), (2, 3, 4), (), (0, 4)]
    out = {}
    dts = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    for i, (name, dt) in enumerate(dts.items()):
        for j, shape in enumerate(shapes[: 2 + (i % 3)]):
            if dt == np.bool_:
                a = rng.random(shape) < 0.5
            elif np.issubdtype(dt, np.integer):
                info = np.iinfo(dt)
                a = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
            else:
                a = (rng.standard_normal(shape) * 10).astype(dt)
            out[f"layer{j}.{name.lower()}"] = np.ascontiguousarray(np.asarray(a, dtype=dt))
    return out


def ferric_json(ferric, path):
    r = subprocess.run([ferric, "info", path, "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ferric info {path} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def ferric_dump(ferric, path, name):
    r = subprocess.run([ferric, "info", path, "--dump", name], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ferric info --dump {name} failed: {r.stderr.strip()}")
    return r.stdout.split()


def header_of(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def bf16_bits(x):
    """float32 array -> bf16 bit patterns (round to nearest even)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = u + 0x7FFF + ((u >> 16) & 1)
    return (u >> 16).astype(np.uint16)


def write_bf16_file(path, tensors):
    """A safetensors file of BF16 tensors, laid out by hand like the reference does."""
    header, off, blobs = {}, 0, []
    for name, bits in tensors.items():
        b = bits.astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(bits.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def python_writes_ferric_reads(ferric, tmp, rng):
    print("python writes, ferric reads")
    arrays = random_arrays(rng)
    path = os.path.join(tmp, "py.safetensors")
    save_file(arrays, path, metadata={"source": "numpy", "n": str(len(arrays))})
    info = ferric_json(ferric, path)
    listed = {t["name"]: t for t in info["tensors"]}
    check(set(listed) == set(arrays), "ferric lists the same tensor names")
    check(info["metadata"] == {"source": "numpy", "n": str(len(arrays))}, "metadata listed")
    check(info["num_parameters"] == sum(a.size for a in arrays.values()), "parameter count")
    header, data_start = header_of(path)
    with safe_open(path, framework="numpy") as f:
        for name in f.keys():
            sl = f.get_slice(name)
            t = listed.get(name, {})
            check(t.get("dtype") == sl.get_dtype(), f"{name}: dtype {t.get('dtype')} vs {sl.get_dtype()}")
            check(t.get("shape") == list(sl.get_shape()), f"{name}: shape")
            check(t.get("offset") == header[name]["data_offsets"][0], f"{name}: offset")
    for name, a in arrays.items():
        vals = ferric_dump(ferric, path, name)
        flat = a.reshape(-1)
        check(len(vals) == flat.size, f"{name}: {len(vals)} values dumped, {flat.size} expected")
        if a.dtype.kind == "f":
            got = np.array([float(v) for v in vals], dtype=np.float64)
            check(np.array_equal(got, flat.astype(np.float64)), f"{name}: float values equal")
        else:
            got = np.array([int(v) for v in vals], dtype=np.int64)
            check(np.array_equal(got, flat.astype(np.int64)), f"{name}: integer values equal")

    # BF16, which numpy cannot hold
    x = (rng.standard_normal((4, 6)) * 3).astype(np.float32)
    bits = bf16_bits(x)
    bpath = os.path.join(tmp, "bf16.safetensors")
    write_bf16_file(bpath, {"w": bits})
    vals = np.array([float(v) for v in ferric_dump(ferric, bpath, "w")])
    expect = (bits.astype(np.uint32) << 16).view(np.float32).reshape(-1).astype(np.float64)
    check(np.array_equal(vals, expect), "BF16 values equal")

    # a sharded folder
    shard_dir = os.path.join(tmp, "sharded")
    os.makedirs(shard_dir)
    names = sorted(arrays)
    half = len(names) // 2
    wm = {}
    for k, part in enumerate([names[:half], names[half:]]):
        fn = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({n: arrays[n] for n in part}, os.path.join(shard_dir, fn))
        wm.update({n: fn for n in part})
    with open(os.path.join(shard_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f)
    sinfo = ferric_json(ferric, shard_dir)
    check(len(sinfo["files"]) == 2, "two shard files")
    check(sorted(t["name"] for t in sinfo["tensors"]) == names, "all sharded tensors listed")
    n0 = names[-1]
    got = ferric_dump(ferric, shard_dir, n0)
    check(len(got) == arrays[n0].size, "dump from the second shard")


class Device(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("index", ctypes.c_int)]


class NamedTensor(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("tensor", ctypes.c_void_p)]


class KV(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("value", ctypes.c_char_p)]


FE_DTYPES = {"F32": 0, "F64": 1, "F16": 2, "BF16": 3, "I32": 4, "I64": 5, "U8": 6, "I8": 7}
NP_OF = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I32": np.int32,
         "I64": np.int64, "U8": np.uint8, "I8": np.int8}


def ferric_writes_python_reads(lib, tmp, rng):
    print("ferric writes, python reads")
    lib.fe_from_data.restype = ctypes.c_void_p
    lib.fe_from_data.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int64),
                                 ctypes.c_int, Device]
    lib.fe_safetensors_save.argtypes = [ctypes.c_char_p, ctypes.POINTER(NamedTensor), ctypes.c_int64,
                                        ctypes.POINTER(KV), ctypes.c_int64]
    lib.fe_safetensors_save.restype = ctypes.c_int
    lib.fe_last_error.restype = ctypes.c_char_p
    lib.fe_free.argtypes = [ctypes.c_void_p]
    src, handles = {}, []
    for dt, code in FE_DTYPES.items():
        shape = (2, 3 + code)
        if dt == "BF16":
            a = bf16_bits((rng.standard_normal(shape) * 5).astype(np.float32))
        elif dt in ("F32", "F64", "F16"):
            a = (rng.standard_normal(shape) * 5).astype(NP_OF[dt])
        else:
            info = np.iinfo(NP_OF[dt])
            a = rng.integers(info.min, info.max, size=shape, dtype=NP_OF[dt], endpoint=True)
        a = np.ascontiguousarray(a)
        sh = (ctypes.c_int64 * 2)(*shape)
        t = lib.fe_from_data(a.ctypes.data, 2, sh, code, Device(0, 0))
        check(t is not None, f"fe_from_data {dt}: {lib.fe_last_error()}")
        src[f"t.{dt.lower()}"] = (dt, a)
        handles.append((f"t.{dt.lower()}".encode(), t))
    arr = (NamedTensor * len(handles))(*[NamedTensor(n, t) for n, t in handles])
    meta = (KV * 1)(KV(b"writer", b"ferric"))
    path = os.path.join(tmp, "fe.safetensors")
    rc = lib.fe_safetensors_save(path.encode(), arr, len(handles), meta, 1)
    check(rc == 0, f"fe_safetensors_save: {lib.fe_last_error()}")
    for _, t in handles:
        lib.fe_free(t)
    if rc != 0:
        return
    with safe_open(path, framework="numpy") as f:
        check(f.metadata() == {"writer": "ferric"}, "metadata read by python")
        keys = set(f.keys())
    check(keys == set(src), "python sees every tensor")
    # BF16 cannot load into numpy: read it from the raw bytes, the rest through safe_open
    header, data_start = header_of(path)
    with open(path, "rb") as fh:
        blob = fh.read()
    with safe_open(path, framework="numpy") as f:
        for name, (dt, a) in src.items():
            check(header[name]["dtype"] == dt, f"{name}: dtype in header")
            if dt == "BF16":
                b, e = header[name]["data_offsets"]
                got = np.frombuffer(blob[data_start + b:data_start + e], dtype="<u2").reshape(a.shape)
            else:
                got = f.get_tensor(name)
            check(got.shape == a.shape, f"{name}: shape")
            check(got.tobytes() == a.tobytes(), f"{name}: bytes equal")


def config_round_trip(lib, tmp):
    print("config.json round trip")
    src = os.path.join(tmp, "cfg_in")
    dst = os.path.join(tmp, "cfg_out")
    os.makedirs(src)
    os.makedirs(dst)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
           "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
           "num_attention_heads": 8, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
           "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
           "bos_token_id": 1, "eos_token_id": [2, 3], "max_position_embeddings": 4096,
           "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}}
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump(cfg, f)
    buf = ctypes.create_string_buffer(4096)  # larger than fe_llama_config
    lib.fe_llama_config_load.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    lib.fe_llama_config_save.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    check(lib.fe_llama_config_load(src.encode(), buf) == 0, f"config load: {lib.fe_last_error()}")
    out = os.path.join(dst, "config.json")
    check(lib.fe_llama_config_save(out.encode(), buf) == 0, f"config save: {lib.fe_last_error()}")
    with open(out) as f:
        written = json.load(f)
    for k, v in cfg.items():
        check(written.get(k) == v, f"config field {k}: {written.get(k)!r} vs {v!r}")
    try:
        from transformers import LlamaConfig
    except Exception as e:  # transformers missing, or torch broken
        print(f"  (transformers not usable here: {type(e).__name__}; fields checked by hand)")
        return
    c = LlamaConfig.from_pretrained(dst)
    check(c.num_key_value_heads == 2 and c.head_dim == 64, "transformers reads kv heads / head_dim")
    check(c.rope_scaling["rope_type"] == "llama3" and c.rope_scaling["factor"] == 8.0,
          "transformers reads rope_scaling")
    check(c.tie_word_embeddings is True and c.eos_token_id == [2, 3], "transformers reads tie / eos")


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--build", default=os.path.join(here, "..", "..", "build"))
    args = ap.parse_args()
    ferric = os.path.join(args.build, "ferric")
    lib_path = os.path.join(args.build, "libferric.so")
    if not os.path.exists(ferric) or not os.path.exists(lib_path):
        print(f"SKIP: build {args.build} has no ferric / libferric.so")
        return 0
    r = subprocess.run([ferric, "info", "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        print("FAIL: this ferric has no 'info' command")
        return 1
    lib = ctypes.CDLL(lib_path)
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        python_writes_ferric_reads(ferric, tmp, rng)
        ferric_writes_python_reads(lib, tmp, rng)
        config_round_trip(lib, tmp)
    if FAILS:
        print(f"{len(FAILS)} checks failed")
        return 1
    print("all safetensors parity checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
