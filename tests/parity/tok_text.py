"""Deterministic mixed text for tokenizer parity tests.

documents(seed, target_bytes) returns a list of strings (no NUL characters) that together hold
at least target_bytes of UTF-8: English prose, source code, numbers, runs of white space
(spaces, tabs, newlines, CR/LF, exotic spaces), accented and combining-mark text, CJK, emoji
with modifiers and zero-width joiners, odd code points, text escapes that look like invalid
sequences, and strings that look like special or byte tokens ("<0x41>", "<|begin_of_text|>").
"""
import random

WORDS = (
    "the of and to in is was that for it with as his on be at by had are but from or have an "
    "they which one you were her all she there would their we him been has when who will more "
    "no if out so said what up its about into than them can only other new some could time "
    "these two may then do first any my now such like our over man me even most made after "
    "also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take three "
    "tokenizer gradient attention embedding transformer optimizer checkpoint throughput "
    "Mr Mrs Dr St Ave Inc Ltd USA NASA OpenAI HTTP JSON API GPU CPU"
).split()
CONTRACTIONS = ["don't", "it's", "I'm", "we're", "they've", "you'll", "she'd", "can't",
                "won't", "I'LL", "WE'RE", "It'S", "o'clock", "rock'n'roll", "'quoted'",
                "students'", "Ma'am", "y'all'd've", "\u2019s", "it\u2019s", "'\u017f", "'\u212a"]
PUNCT = [".", ",", "!", "?", ";", ":", "...", " -", " --", " \u2014", "\u2026", "!?", "?!"]
CODE = [
    "def f(x, y=2):\n    return x ** y  # power\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "if __name__ == \"__main__\":\n    main()\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\n",
    "const x = {a: 1, 'b': [2, 3], \"c\": null};\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;\n",
    "    \t  x = y != z && w || !v;\r\n",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }\n",
    "<div class=\"a\">&nbsp;&lt;tag&gt;</div>\n",
    "$ ls -la | grep '^d' >> out.txt 2>&1\n",
    "x=[i**2 for i in range(10) if i%2==0]\n",
    "        // deeply   indented    comment\n",
    "@decorator\nclass Foo(Bar):\n\tpass\n",
    "a\\b\\\\c /path/to/file.txt C:\\Windows\\System32\n",
]
SPACES = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\n\t",
          "     \n", "\u00a0", "\u3000", "\u2003", "\u180e", "\u0085", "\u2028", "\u200b",
          "\x0b", "\x0c", "\r", " \t \t ", "\n\n\n\n", " " * 17, "\t" * 9]
ACCENTED = ["caf\u00e9", "na\u00efve", "\u00c6r\u00f8sk\u00f8bing", "Stra\u00dfe", "fa\u00e7ade",
            "e\u0301t\u00e9", "n\u0303", "Z\u0351\u036b\u0343\u036a\u0302\u036b",
            "\u1e9e", "\u0130stanbul", "\u00e5\u00e4\u00f6", "\u0151\u0171",
            "\u03ba\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1", "\u043f\u0440\u0438\u0432\u0435\u0442",
            "\u0645\u0631\u062d\u0628\u0627", "\u05e9\u05dc\u05d5\u05dd", "\u0928\u092e\u0938\u094d\u0924\u0947",
            "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35", "\u10d2\u10d0\u10db\u10d0\u10e0\u10ef\u10dd\u10d1\u10d0"]
CJK = ["\u4f60\u597d\u4e16\u754c", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
       "\u3053\u3093\u306b\u3061\u306f", "\u30ab\u30bf\u30ab\u30ca", "\ud55c\uad6d\uc5b4",
       "\u6f22\u5b57\u3068\u4eee\u540d", "\u4e2d\u6587\uff0c\u6807\u70b9\u3002", "\uff21\uff22\uff23\uff11\uff12",
       "\U00020000\U0002a6d6", "\u3400\u4dbf"]
EMOJI = ["\U0001f600", "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469\u200d\U0001f467",
         "\U0001f1fa\U0001f1f8", "1\ufe0f\u20e3", "\u2764\ufe0f", "\U0001f3f3\ufe0f\u200d\U0001f308",
         "\U0001f9d1\u200d\U0001f4bb", "\u2615", "\U0001faf6\U0001f3fb"]
ODD = ["\u200d", "\u200c", "\ufeff", "\u00ad", "\u200e", "\u200f", "\ufe0f", "\ue000",
       "\U0010fffd", "\U0001d400\U0001d401", "\u1c89\u1c8a", "\ua7cb", "\U00011f02", "\U00010d40",
       "\u2126\u212b", "\ufb01", "\u0300", "\u2400", "\ufffd",
       "\u0007", "\u001b[0m", "\x7f", "\u00bd\u00b2\u2155", "\u0660\u0661\u0662", "\u2160\u2161"]
LOOKALIKES = ["\\ud800", "\\udfff", "\\xff\\xfe", "\\u0000", "<0x41>", "<0x0A>", "<0xZZ>",
              "<0x>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|endoftext|>",
              "<s>", "</s>", "<unk>", "<<s>>", "<|begin_of", "text|>", "<|reserved_special_token_5|>",
              "<|start_header_id|>user<|end_header_id|>", "\u2581", "\u2581\u2581x", "\u0120",
              "\u010a", "\ufffd\ufffd", "&#x41;", "%E2%82%AC"]


def _number(r):
    k = r.randrange(8)
    if k == 0:
        return str(r.randrange(10 ** r.randrange(1, 12)))
    if k == 1:
        return "%.*f" % (r.randrange(1, 6), r.uniform(-1e4, 1e4))
    if k == 2:
        return "{:,}".format(r.randrange(10 ** 9))
    if k == 3:
        return "%04d-%02d-%02d" % (r.randrange(1900, 2100), r.randrange(1, 13), r.randrange(1, 29))
    if k == 4:
        return "0x%x" % r.randrange(1 << 32)
    if k == 5:
        return "+1 (%03d) %03d-%04d" % (r.randrange(1000), r.randrange(1000), r.randrange(10000))
    if k == 6:
        return "%de%d" % (r.randrange(100), r.randrange(-30, 30))
    return "".join(r.choice("0123456789") for _ in range(r.randrange(1, 40)))


def _random_char(r):
    ranges = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff),
              (0x900, 0x97f), (0xe00, 0xe7f), (0x1100, 0x11ff), (0x2000, 0x206f), (0x2100, 0x23ff),
              (0x2500, 0x27bf), (0x3000, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3),
              (0xe000, 0xe0ff), (0xff00, 0xffef), (0x1f300, 0x1faff), (0x10000, 0x1014f),
              (0x1d400, 0x1d7ff), (0x20000, 0x2a6df), (0x1, 0x1f)]
    if r.random() < 0.25:  # any scalar value, assigned or not
        c = r.randrange(1, 0x110000 - 0x800)
        return chr(c + 0x800 if c >= 0xD800 else c)
    a, b = r.choice(ranges)
    c = r.randint(a, b)
    return chr(c) if c != 0 else " "


def _sentence(r):
    out = []
    for i in range(r.randrange(3, 18)):
        w = r.choice(WORDS) if r.random() < 0.85 else r.choice(CONTRACTIONS)
        if i == 0 or r.random() < 0.05:
            w = w[:1].upper() + w[1:]
        if r.random() < 0.03:
            w = w.upper()
        out.append(w)
        if r.random() < 0.08:
            out.append(r.choice(PUNCT).strip() or ",")
    s = " ".join(out)
    return s + r.choice([".", ".", ".", "!", "?", "...", ":"])


def _chunk(r):
    k = r.random()
    if k < 0.40:
        return _sentence(r) + r.choice([" ", " ", "  ", "\n", "\n\n"])
    if k < 0.52:
        return r.choice(CODE)
    if k < 0.60:
        return _number(r) + r.choice([" ", ", ", "\n", "", "%"])
    if k < 0.68:
        return r.choice(SPACES)
    if k < 0.74:
        return r.choice(ACCENTED) + r.choice([" ", "", ".", "\n"])
    if k < 0.80:
        return r.choice(CJK) + r.choice(["", " ", "\u3002", "\n"])
    if k < 0.85:
        return r.choice(EMOJI) + r.choice(["", " ", "  "])
    if k < 0.89:
        return r.choice(ODD)
    if k < 0.94:
        return r.choice(LOOKALIKES) + r.choice(["", " ", "\n"])
    return "".join(_random_char(r) for _ in range(r.randrange(1, 30)))


EDGE_DOCS = ["", " ", "  ", "\n", "\t", " \n \t\r\n", "a", "A" * 3000, "9" * 500, " " * 1000,
             "\n" * 300, "<s>", "<s><s>", " <s> ", "<|begin_of_text|>", "<|begin_of_text|>Hello",
             "\u2581", "\u2581\u2581 \u2581", "<0x41><0x42>", "\U0001f600" * 200, "\u0301\u0301",
             "x\u200dy", "'s'S's", "Hello\u00a0world", "\u180e\u180e x", "\u3000\u3000",
             "e\u0301" * 50, "ab" * 2000, "".join(chr(c) for c in range(1, 0x80)),
             "".join(chr(c) for c in range(0x80, 0x300)), "\r\r\n\n\r", "  hello", "hello  ",
             "\ufeffBOM at start", "end with space ", "\t\tindent\n\t\tindent"]


def documents(seed=1234, target_bytes=1 << 20):
    r = random.Random(seed)
    docs = list(EDGE_DOCS)
    total = sum(len(d.encode("utf-8")) for d in docs)
    while total < target_bytes:
        size = int(r.expovariate(1 / 500)) + 1
        parts, n = [], 0
        while n < size:
            c = _chunk(r)
            parts.append(c)
            n += len(c.encode("utf-8"))
        d = "".join(parts)
        if r.random() < 0.1:
            d = r.choice(SPACES) + d
        docs.append(d)
        total += len(d.encode("utf-8"))
    assert all("\0" not in d for d in docs)
    return docs


if __name__ == "__main__":
    ds = documents()
    print(len(ds), "documents,", sum(len(d.encode("utf-8")) for d in ds), "bytes")
