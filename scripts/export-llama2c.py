#!/usr/bin/python3
"""Export a Hugging Face Llama folder to a llama2.c checkpoint and tokenizer.bin.

Usage:
    /usr/bin/python3 scripts/export-llama2c.py [--model DIR] [--shared-classifier |
        --separate-classifier] [--tokenizer-out PATH | --no-tokenizer] OUT.bin

Reads DIR (default $QSCOPE_SHARED/models/debdoc-19m-hf, where QSCOPE_SHARED
defaults to ../shared from the project root): config.json, the
safetensors weights (a single model.safetensors or shards listed in
model.safetensors.index.json; BF16, F16 or F32) and tokenizer.model. Writes:

  OUT.bin        llama2.c's legacy (version 0) checkpoint, as read by run.c: a
                 header of 7 int32 (dim, hidden_dim, n_layers, n_heads,
                 n_kv_heads, vocab_size, seq_len; vocab_size is negative when
                 the classifier is stored separately) followed by float32
                 arrays: token_embedding_table, rms_att_weight, wq, wk, wv, wo,
                 rms_ffn_weight, w1 (gate), w2 (down), w3 (up),
                 rms_final_weight, freq_cis_real, freq_cis_imag (seq_len x
                 head_size/2, RoPE theta from config.json) and, when separate,
                 wcls. Every layer array is stacked over layers; matrices are
                 row-major (out_features rows of in_features).
  tokenizer.bin  llama2.c's tokenizer (next to OUT.bin unless --tokenizer-out):
                 int32 max_token_length, then per piece float32 score, int32
                 length and the bytes. Pieces are post-processed as llama2.c's
                 tokenizer.py does: U+2581 becomes ' ', BOS is "\\n<s>\\n" and
                 EOS "\\n</s>\\n".

Hugging Face stores the q and k projection rows of each head in rotate-half
order (transformers' convert_llama_weights_to_hf.py permutes Meta's rows);
llama2.c applies RoPE to adjacent pairs, so this script permutes them back:
row 2*i + j of a head comes from Hugging Face row j*head_size/2 + i.

The classifier: --separate-classifier (the default for an untied model such as
debdoc-19m) stores lm_head.weight as wcls; --shared-classifier (the default
for a tied model) stores none and run.c uses the embedding table, which for an
untied model changes its outputs (useful to test tied checkpoints).

Standard library only (plus the sentencepiece module for tokenizer.bin); each
output is written to a temporary file in the target directory and renamed, so
a failed export never leaves a partial file. Exits non-zero with a one-line
message on error.
"""

import argparse
import array
import json
import math
import os
import struct
import sys
import tempfile

# The shared data: $QSCOPE_SHARED, else ../shared from the project root (as the tests do).
SHARED = os.environ.get("QSCOPE_SHARED") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
DEFAULT_MODEL = os.path.normpath(os.path.join(SHARED, "models", "debdoc-19m-hf"))

DTYPE_SIZE = {"BF16": 2, "F16": 2, "F32": 4}


class ExportError(Exception):
    pass


class SafeTensors:
    """Tensors of a Hugging Face folder, read on demand as little-endian float32 bytes."""

    def __init__(self, folder):
        self.folder = folder
        self.where = {}  # name -> (file path, dtype, shape, start, end)
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index, "r", encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ExportError(f"{index}: no weight_map")
            shards = sorted(set(weight_map.values()))
        else:
            shards = ["model.safetensors"]
        for shard in shards:
            self._read_header(os.path.join(folder, shard))

    def _read_header(self, path):
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise ExportError(f"{path}: too short for a safetensors header")
                n = struct.unpack("<Q", head)[0]
                if n > size - 8:
                    raise ExportError(f"{path}: header length {n} past end of file ({size})")
                header = json.loads(f.read(n))
        except OSError as e:
            raise ExportError(f"{path}: {e.strerror}")
        except ValueError as e:
            raise ExportError(f"{path}: bad header json: {e}")
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype, shape = info.get("dtype"), info.get("shape")
            start, end = info.get("data_offsets", (0, -1))
            if dtype not in DTYPE_SIZE:
                raise ExportError(f"{path}: tensor '{name}': unsupported dtype {dtype}")
            count = math.prod(shape)
            if end - start != count * DTYPE_SIZE[dtype] or start < 0 or base + end > size:
                raise ExportError(f"{path}: tensor '{name}': bad data_offsets {start}..{end}")
            self.where[name] = (path, dtype, tuple(shape), base + start, base + end)

    def has(self, name):
        return name in self.where

    def shape(self, name):
        if name not in self.where:
            raise ExportError(f"{self.folder}: missing tensor '{name}'")
        return self.where[name][2]

    def f32(self, name, shape):
        """The tensor as little-endian float32 bytes; its shape must be `shape`."""
        if self.shape(name) != tuple(shape):
            raise ExportError(f"{self.folder}: tensor '{name}': shape {list(self.shape(name))},"
                              f" config wants {list(shape)}")
        path, dtype, _, start, end = self.where[name]
        with open(path, "rb") as f:
            f.seek(start)
            raw = f.read(end - start)
        if dtype == "F32":
            return raw
        if dtype == "F16":
            n = len(raw) // 2
            a = array.array("f", struct.unpack(f"<{n}e", raw))
            if sys.byteorder != "little":
                a.byteswap()
            return a.tobytes()
        # BF16 is the top half of a float32: bytes (lo, hi) -> (0, 0, lo, hi).
        out = bytearray(2 * len(raw))
        out[2::4] = raw[0::2]
        out[3::4] = raw[1::2]
        return bytes(out)


def unpermute_rows(data, n_heads, head_size, row_bytes):
    """Hugging Face rotate-half row order -> Meta/llama2.c adjacent-pair order.

    Inverse of convert_llama_weights_to_hf.py's permute: within each head,
    output row 2*i + j is input row j*head_size/2 + i."""
    half = head_size // 2
    rows = []
    for h in range(n_heads):
        base = h * head_size
        for r in range(head_size):
            src = base + (r % 2) * half + r // 2
            rows.append(data[src * row_bytes:(src + 1) * row_bytes])
    return b"".join(rows)


def freq_cis(seq_len, head_size, theta):
    """run.c's freq_cis_real and freq_cis_imag: cos/sin(pos * theta^(-2i/head_size))."""
    freqs = [1.0 / theta ** (i / head_size) for i in range(0, head_size, 2)]
    re = array.array("f", (math.cos(p * f) for p in range(seq_len) for f in freqs))
    im = array.array("f", (math.sin(p * f) for p in range(seq_len) for f in freqs))
    if sys.byteorder != "little":
        re.byteswap()
        im.byteswap()
    return re.tobytes(), im.tobytes()


def atomic_write(path, write):
    """Call write(file) on a temporary file next to path, then rename it to path."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise ExportError(f"{path}: cannot create: {e.strerror}")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_config(folder):
    path = os.path.join(folder, "config.json")
    try:
        with open(path, "r", encoding="utf-8") as f:
            c = json.load(f)
    except OSError as e:
        raise ExportError(f"{path}: {e.strerror}")
    except ValueError as e:
        raise ExportError(f"{path}: bad json: {e}")
    try:
        p = {
            "dim": int(c["hidden_size"]),
            "hidden_dim": int(c["intermediate_size"]),
            "n_layers": int(c["num_hidden_layers"]),
            "n_heads": int(c["num_attention_heads"]),
            "n_kv_heads": int(c.get("num_key_value_heads", c["num_attention_heads"])),
            "vocab_size": int(c["vocab_size"]),
            "seq_len": int(c["max_position_embeddings"]),
            "theta": float(c.get("rope_theta", 10000.0)),
            "tied": bool(c.get("tie_word_embeddings", False)),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{path}: missing or bad field {e}")
    if any(p[k] <= 0 for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads",
                                "vocab_size", "seq_len")):
        raise ExportError(f"{path}: sizes must be positive")
    if p["dim"] % p["n_heads"] or p["n_heads"] % p["n_kv_heads"]:
        raise ExportError(f"{path}: hidden_size {p['dim']}, {p['n_heads']} heads and "
                          f"{p['n_kv_heads']} kv heads do not divide evenly")
    p["head_size"] = p["dim"] // p["n_heads"]
    if c.get("head_dim", p["head_size"]) != p["head_size"]:
        raise ExportError(f"{path}: head_dim {c['head_dim']} != hidden_size / heads "
                          f"(llama2.c cannot store it)")
    if p["head_size"] % 2:
        raise ExportError(f"{path}: head size {p['head_size']} is odd")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise ExportError(f"{path}: biases are not representable in llama2.c checkpoints")
    return p


def write_checkpoint(out, st, p, shared):
    dim, hid, L = p["dim"], p["hidden_dim"], p["n_layers"]
    hs, nh, nkv, vocab = p["head_size"], p["n_heads"], p["n_kv_heads"], p["vocab_size"]
    kvd = nkv * hs
    has_head = st.has("lm_head.weight")

    def layer(fmt):
        return [fmt.format(i) for i in range(L)]

    def write(f):
        f.write(struct.pack("<7i", dim, hid, L, nh, nkv, vocab if shared else -vocab,
                            p["seq_len"]))
        f.write(st.f32("model.embed_tokens.weight", (vocab, dim)))
        for n in layer("model.layers.{}.input_layernorm.weight"):
            f.write(st.f32(n, (dim,)))
        for n in layer("model.layers.{}.self_attn.q_proj.weight"):
            f.write(unpermute_rows(st.f32(n, (dim, dim)), nh, hs, 4 * dim))
        for n in layer("model.layers.{}.self_attn.k_proj.weight"):
            f.write(unpermute_rows(st.f32(n, (kvd, dim)), nkv, hs, 4 * dim))
        for n in layer("model.layers.{}.self_attn.v_proj.weight"):
            f.write(st.f32(n, (kvd, dim)))
        for n in layer("model.layers.{}.self_attn.o_proj.weight"):
            f.write(st.f32(n, (dim, dim)))
        for n in layer("model.layers.{}.post_attention_layernorm.weight"):
            f.write(st.f32(n, (dim,)))
        for n in layer("model.layers.{}.mlp.gate_proj.weight"):
            f.write(st.f32(n, (hid, dim)))
        for n in layer("model.layers.{}.mlp.down_proj.weight"):
            f.write(st.f32(n, (dim, hid)))
        for n in layer("model.layers.{}.mlp.up_proj.weight"):
            f.write(st.f32(n, (hid, dim)))
        f.write(st.f32("model.norm.weight", (dim,)))
        re, im = freq_cis(p["seq_len"], hs, p["theta"])
        f.write(re)
        f.write(im)
        if not shared:
            head = "lm_head.weight" if has_head else "model.embed_tokens.weight"
            f.write(st.f32(head, (vocab, dim)))

    atomic_write(out, write)


def write_tokenizer(out, model_path, vocab):
    try:
        import sentencepiece
    except ImportError:
        raise ExportError("python3 sentencepiece module missing (apt-get install "
                          "python3-sentencepiece, or pass --no-tokenizer)")
    if not os.path.exists(model_path):
        raise ExportError(f"{model_path}: no such file")
    sp = sentencepiece.SentencePieceProcessor()
    if not sp.Load(model_path):
        raise ExportError(f"{model_path}: cannot load")
    n = sp.get_piece_size()
    if n != vocab:
        raise ExportError(f"{model_path}: {n} pieces, model vocab is {vocab}")
    pieces = []
    for i in range(n):
        t = sp.id_to_piece(i)
        if i == sp.bos_id():
            t = "\n<s>\n"
        elif i == sp.eos_id():
            t = "\n</s>\n"
        pieces.append((sp.get_score(i), t.replace("\u2581", " ").encode("utf-8")))
    max_len = max(len(b) for _, b in pieces)

    def write(f):
        f.write(struct.pack("<i", max_len))
        for score, b in pieces:
            f.write(struct.pack("<fi", score, len(b)))
            f.write(b)

    atomic_write(out, write)


def main(argv):
    ap = argparse.ArgumentParser(
        description="Export a Hugging Face Llama folder to a llama2.c checkpoint + tokenizer.bin.")
    ap.add_argument("out", help="checkpoint to write (e.g. model.bin)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face folder (default %(default)s)")
    cls = ap.add_mutually_exclusive_group()
    cls.add_argument("--shared-classifier", dest="shared", action="store_true", default=None,
                     help="store no wcls: the classifier is the embedding table")
    cls.add_argument("--separate-classifier", "--separate", dest="shared", action="store_false",
                     help="store lm_head.weight as wcls (negative vocab_size in the header)")
    tok = ap.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer-out", help="tokenizer.bin to write (default: next to OUT)")
    tok.add_argument("--no-tokenizer", action="store_true", help="do not write tokenizer.bin")
    args = ap.parse_args(argv)

    try:
        p = load_config(args.model)
        st = SafeTensors(args.model)
        shared = args.shared
        if shared is None:
            shared = p["tied"] or not st.has("lm_head.weight")
        write_checkpoint(args.out, st, p, shared)
        if not args.no_tokenizer:
            tok_out = args.tokenizer_out or os.path.join(
                os.path.dirname(os.path.abspath(args.out)), "tokenizer.bin")
            write_tokenizer(tok_out, os.path.join(args.model, "tokenizer.model"),
                            p["vocab_size"])
    except ExportError as e:
        print(f"export-llama2c: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"export-llama2c: {e.filename or args.out}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
