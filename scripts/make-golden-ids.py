#!/usr/bin/python3
"""make-golden-ids.py - reference token ids for tests/test_tokenizer.c.

Run from the project root with Debian's python3-sentencepiece (0.1.97), i.e.
/usr/bin/python3, not a pyenv python on PATH:

    /usr/bin/python3 scripts/make-golden-ids.py            # writes tests/golden/
    /usr/bin/python3 scripts/make-golden-ids.py --c-cases  # prints C tables

Without options it encodes each text in ../shared/data as ONE string (the
whole file's bytes), with BOS in front, using
../shared/models/debdoc-19m-hf/tokenizer.model, and writes

    tests/golden/<name>.ids    the ids as little-endian uint16 (vocab is 8192)
    tests/golden/ids.txt       per file: source size and sha256, number of
                               ids, sha256 of the ids as little-endian uint32,
                               and the first 32 ids

--c-cases prints the expected ids of the hand-written edge cases embedded in
tests/test_tokenizer.c: short texts (spaces, newlines, non-ASCII, invalid
UTF-8, ...) encoded with BOS by the model itself and by variants of it whose
protobuf this script rewrites (some pieces UNUSED or USER_DEFINED, byte
pieces turned into control pieces with byte_fallback off, and one piece
respelled so that it contains U+2581 after a letter). The test builds the
same variants with tok_new/tok_set; keep VARIANTS and EDGE_TEXTS in step
with it.
"""
import argparse
import array
import hashlib
import os
import struct
import sys

import sentencepiece as spm

DATA = ["wikitext-2-test", "debdoc-val", "debdoc-calib"]
MODEL = "models/debdoc-19m-hf/tokenizer.model"

# Edge cases, as bytes. Mirrored in tests/test_tokenizer.c (edge_texts).
EDGE_TEXTS = [
    b"",
    b" ",
    b"   ",
    b"a  b",
    b"hello world",
    b"Hello, World!",
    b"  leading spaces",
    b"trailing spaces  ",
    b"\n",
    b"line one\nline two\r\n\ttabbed\n\n",
    "café".encode(),
    "naïve façade".encode(),
    "😀".encode(),
    "emoji 👍🏽 family 👨\u200d👩\u200d👧".encode(),
    "日本語のテキスト".encode(),
    "中文 和 English".encode(),
    "\u2581 already escaped \u2581\u2581".encode(),
    b"\xff",
    b"a\xffb",
    b"\xc3",
    b"\xc3(",
    b"\xef\xbf\xbd",
    b"\x00",
    b"nul\x00inside",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\xaf",
    b"\xe2\x82",
    b"the theory there then",
    b"1234567890 3.14159",
    b"<s> </s> <unk> <0x41>",
    b"internationalization counterrevolutionaries",
    b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    b"er er err inner interest in in",
    b"winner tinier thinner the",
    b"in",
]

# name -> (list of (id, new type or None, new text or None, new score or None),
#          byte_fallback)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
VARIANTS = {
    "base": ([], True),
    "unused": ([(261, UNUSED, None, None), (265, UNUSED, None, None),
                (266, UNUSED, None, None)], True),
    "userdef": ([(266, USER_DEFINED, None, None), (274, USER_DEFINED, None, None)],
                True),
    "nobytes": ([(i, CONTROL, None, None) for i in range(3, 259)], False),
    "crossspace": ([(8000, None, "e\u2581t".encode(), 0.5)], True),
}


# ---- a minimal protobuf reader/writer (google.protobuf is not installed) ----

def varint(b, i):
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def fields(b):
    i = 0
    while i < len(b):
        start = i
        k, i = varint(b, i)
        num, wire = k >> 3, k & 7
        if wire == 0:
            v, i = varint(b, i)
        elif wire == 2:
            n, i = varint(b, i)
            v = b[i:i + n]
            i += n
        elif wire == 5:
            v = b[i:i + 4]
            i += 4
        elif wire == 1:
            v = b[i:i + 8]
            i += 8
        else:
            raise ValueError("wire type %d" % wire)
        yield num, wire, v, b[start:i]


def put_varint(x):
    x &= (1 << 64) - 1
    out = bytearray()
    while True:
        c = x & 0x7F
        x >>= 7
        if x:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)


def put_len(num, payload):
    return put_varint(num << 3 | 2) + put_varint(len(payload)) + payload


def variant_proto(model_bytes, changes, byte_fallback):
    """The model with some pieces changed, byte_fallback set."""
    change = {i: (t, txt, sc) for i, t, txt, sc in changes}
    out = bytearray()
    idx = 0
    for num, wire, v, raw in fields(model_bytes):
        if num == 1 and wire == 2:
            if idx in change:
                t, txt, sc = change[idx]
                d = {f: val for f, _, val, _ in fields(v)}
                text = txt if txt is not None else d[1]
                score = struct.unpack("<f", d[2])[0] if 2 in d else 0.0
                if sc is not None:
                    score = sc
                typ = t if t is not None else d.get(3, NORMAL)
                piece = (put_len(1, text) + put_varint(2 << 3 | 5) +
                         struct.pack("<f", score) + put_varint(3 << 3 | 0) +
                         put_varint(typ))
                out += put_len(1, piece)
            else:
                out += raw
            idx += 1
        elif num == 2 and wire == 2:
            # trainer_spec: last value wins, so append byte_fallback (35)
            out += put_len(2, v + put_varint(35 << 3 | 0) + put_varint(int(byte_fallback)))
        else:
            out += raw
    return bytes(out)


def write_goldens(shared, outdir):
    sp = spm.SentencePieceProcessor(model_file=os.path.join(shared, MODEL))
    os.makedirs(outdir, exist_ok=True)
    lines = ["# name source_bytes source_sha256 n_ids ids_u32le_sha256 first_32_ids",
             "# made by scripts/make-golden-ids.py with sentencepiece %s" % spm.__version__]
    for name in DATA:
        raw = open(os.path.join(shared, "data", name + ".txt"), "rb").read()
        ids = sp.encode(raw, add_bos=True)
        assert max(ids) < 65536
        open(os.path.join(outdir, name + ".ids"), "wb").write(
            array.array("H", ids).tobytes() if sys.byteorder == "little"
            else struct.pack("<%dH" % len(ids), *ids))
        u32 = struct.pack("<%dI" % len(ids), *ids)
        lines.append("%s %d %s %d %s %s" % (
            name, len(raw), hashlib.sha256(raw).hexdigest(), len(ids),
            hashlib.sha256(u32).hexdigest(), ",".join(map(str, ids[:32]))))
        print("%s: %d ids" % (name, len(ids)), file=sys.stderr)
    open(os.path.join(outdir, "ids.txt"), "w").write("\n".join(lines) + "\n")


def c_string(b):
    """A C string literal for bytes b: printable ASCII as is, others octal."""
    out = '"'
    for c in b:
        if c in (0x22, 0x5C, 0x3F):  # '"', backslash, '?' (no trigraphs)
            out += "\\" + chr(c)
        elif 0x20 <= c < 0x7F:
            out += chr(c)
        else:
            out += "\\%03o" % c
    return out + '"'


def c_comment(b):
    return repr(b.decode("utf-8", "backslashreplace")).replace("*/", "*\\/")


def print_c_cases(shared):
    model = open(os.path.join(shared, MODEL), "rb").read()
    width = 48
    print("/* BEGIN generated by scripts/make-golden-ids.py --c-cases")
    print(" * (python3-sentencepiece %s): the edge texts, and BOS + their ids" % spm.__version__)
    print(" * for each vocabulary variant, -1 terminated. */")
    print("static const struct edge_text {\n\tconst char *s;\n\tsize_t len;\n} edge_texts[] = {")
    for t in EDGE_TEXTS:
        print("\t{%s, %d}," % (c_string(t), len(t)))
    print("};")
    print("#define N_EDGE %d" % len(EDGE_TEXTS))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(shared, MODEL))
    print("/* sentencepiece's decode of the ids: the text, with U+FFFD for each byte")
    print(" * that is not valid UTF-8 */")
    print("static const struct edge_text edge_decoded[N_EDGE] = {")
    for t in EDGE_TEXTS:
        d = sp.decode(sp.encode(t)).encode("utf-8")
        print("\t{%s, %d}," % (c_string(d), len(d)))
    print("};")
    for vname, (changes, bf) in VARIANTS.items():
        sp = spm.SentencePieceProcessor(model_proto=variant_proto(model, changes, bf))
        print("static const int expect_%s[N_EDGE][%d] = {" % (vname, width))
        for t in EDGE_TEXTS:
            ids = sp.encode(t, add_bos=True)
            assert len(ids) < width, (t, len(ids))
            print("\t{%s, -1}, /* %s */" % (", ".join(map(str, ids)), c_comment(t)))
        print("};")
    print("/* END generated */")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.environ.get("QSCOPE_SHARED", "../shared"))
    ap.add_argument("--out", default="tests/golden")
    ap.add_argument("--c-cases", action="store_true")
    a = ap.parse_args()
    if a.c_cases:
        print_c_cases(a.shared)
    else:
        write_goldens(a.shared, a.out)


if __name__ == "__main__":
    main()
