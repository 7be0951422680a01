#!/usr/bin/env python3
"""Parity of `ferric tokenize` with Hugging Face `tokenizers`.

usage: tokenizer_parity.py FERRIC_BINARY [--data DIR] [--bytes N] [--seed S] [--only NAME]

For GPT-2 (encoder.json + vocab.bpe), Llama 3 and Mistral (tokenizer.json) it encodes about
1 MB of mixed text (tok_text.py), one document at a time, with `ferric tokenize -0` and with
tokenizers.Tokenizer, with and without the post-processor's special tokens, and compares the
ids document by document. It then decodes the reference ids with `ferric tokenize --decode`
and compares the text with the reference decode, and checks decode(encode(x)) == x wherever
the reference round-trips. Prints a summary; exits 1 on any mismatch, 0 with "skipped: ..."
when the `tokenizers` module or the tokenizer files are missing.
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tok_text  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data", "tokenizers"))


def hf_tokenizer(name, folder):
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    if name == "gpt2":
        tok = tokenizers.Tokenizer(models.BPE.from_file(os.path.join(folder, "encoder.json"),
                                                        os.path.join(folder, "vocab.bpe")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<|endoftext|>"])  # as GPT2TokenizerFast registers it
        return tok
    return tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))


def run_ferric(binary, folder, data, extra):
    cmd = [binary, "tokenize", "--tokenizer", folder, "-0"] + extra
    t0 = time.perf_counter()
    p = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), p.returncode,
                                                   p.stderr.decode(errors="replace")[:2000]))
    return p.stdout, dt


def parse_ids(out, ndocs):
    # the output is "ids\n...\n\n" per document: an empty document gives a lone "\n"
    docs, cur = [], []
    for line in out.decode().split("\n"):
        if line == "":
            docs.append(cur)
            cur = []
        else:
            cur.append(int(line))
    if cur:
        docs.append(cur)
    # the final "\n" of the last group leaves one extra empty entry
    if len(docs) == ndocs + 1 and not docs[-1]:
        docs.pop()
    return docs


def show_mismatch(tok, doc, want, got, label):
    i = next((k for k in range(min(len(want), len(got))) if want[k] != got[k]), min(len(want), len(got)))
    lo = max(0, i - 3)
    ctx_w = [(x, tok.id_to_token(x)) for x in want[lo:i + 4]]
    ctx_g = [(x, tok.id_to_token(x)) for x in got[lo:i + 4]]
    print("  %s mismatch at id %d (of %d reference, %d ferric); document %r" %
          (label, i, len(want), len(got), doc[:160] + ("..." if len(doc) > 160 else "")))
    print("    reference:", ctx_w)
    print("    ferric:   ", ctx_g)


def check(name, binary, folder, docs, show):
    tok = hf_tokenizer(name, folder)
    data = b"\0".join(d.encode("utf-8") for d in docs)
    nbytes = len(data) - (len(docs) - 1)
    res = {"name": name, "docs": len(docs), "bytes": nbytes, "mismatch": 0, "dec_mismatch": 0,
           "rt_checked": 0, "rt_fail": 0}
    for special in (True, False):
        label = "encode" if special else "encode(no special)"
        want = [e.ids for e in tok.encode_batch(docs, add_special_tokens=special)]
        out, dt = run_ferric(binary, folder, data, [] if special else ["--no-special"])
        got = parse_ids(out, len(docs))
        if special:
            res["ids"] = sum(len(w) for w in want)
            res["secs"] = dt
        if len(got) != len(docs):
            print("  %s: ferric returned %d documents for %d" % (name, len(got), len(docs)))
            res["mismatch"] += len(docs)
            continue
        shown = 0
        for d, w, g in zip(docs, want, got):
            if w != g:
                res["mismatch"] += 1
                if shown < show:
                    show_mismatch(tok, d, w, g, label)
                    shown += 1
    # decoding: the reference ids through ferric --decode vs the reference decode
    want_ids = [e.ids for e in tok.encode_batch(docs)]
    ids_text = "".join("".join("%d\n" % x for x in w) + "\n" for w in want_ids).encode()
    out, _ = run_ferric(binary, folder, ids_text, ["--decode"])
    got_text = out.decode("utf-8").split("\0")
    if got_text and got_text[-1] == "":
        got_text.pop()
    want_text = tok.decode_batch(want_ids)
    if len(got_text) != len(docs):
        print("  %s: ferric decoded %d documents for %d" % (name, len(got_text), len(docs)))
        res["dec_mismatch"] += len(docs)
    else:
        shown = 0
        for d, w, g in zip(docs, want_text, got_text):
            if w != g:
                res["dec_mismatch"] += 1
                if shown < show:
                    print("  decode mismatch for %r:\n    reference %r\n    ferric    %r" %
                          (d[:100], w[:200], g[:200]))
                    shown += 1
            if w == d:  # the reference round-trips this document: so must we
                res["rt_checked"] += 1
                if g != d:
                    res["rt_fail"] += 1
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ferric", help="path to the ferric binary")
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder with gpt2/ llama3/ mistral/")
    ap.add_argument("--bytes", type=int, default=1 << 20, help="bytes of text (default 1 MiB)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--only", help="just this tokenizer (gpt2, llama3 or mistral)")
    ap.add_argument("--show", type=int, default=5, help="mismatches to print per check")
    a = ap.parse_args()
    try:
        import tokenizers
    except ImportError:
        print("skipped: the Python module `tokenizers` is not installed (pip install tokenizers)")
        return 0
    if not os.path.isdir(a.data):
        print("skipped: no tokenizer files at %s" % a.data)
        return 0
    docs = tok_text.documents(a.seed, a.bytes)
    print("tokenizers %s; %d documents, %d bytes of text" %
          (tokenizers.__version__, len(docs), sum(len(d.encode("utf-8")) for d in docs)))
    bad = 0
    for name in ("gpt2", "llama3", "mistral"):
        if a.only and name != a.only:
            continue
        folder = os.path.join(a.data, name)
        if not os.path.isdir(folder):
            print("%-8s skipped: %s is missing" % (name, folder))
            continue
        r = check(name, a.ferric, folder, docs, a.show)
        print("%-8s %5d docs %8d ids  encode mismatches %d  decode mismatches %d  "
              "round trips %d/%d  (ferric encode %.2f s incl. load, %.1f MB/s)" %
              (name, r["docs"], r["ids"], r["mismatch"], r["dec_mismatch"],
               r["rt_checked"] - r["rt_fail"], r["rt_checked"], r["secs"],
               r["bytes"] / 1e6 / r["secs"]))
        bad += r["mismatch"] + r["dec_mismatch"] + r["rt_fail"]
    print("FAILED: %d mismatches" % bad if bad else "all match")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
