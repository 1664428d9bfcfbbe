"""Format build/quality.jsonl (one `qscope quant --json` object per line) as
the markdown of docs/QUALITY.md. Usage: quality_table.py FILE CHUNKS"""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
chunks = sys.argv[2]
base = rows[0]["evals"]
print("# Quantization quality on debdoc-19m\n")
print("Written by `make quality` (`scripts/quality.sh`). Each row quantizes the 56 linear weights of")
print("the blocks (embeddings and output head stay FP16) with one spec, then evaluates with the")
print(f"perplexity protocol of `qscope ppl` on the first {chunks} chunks of 512 tokens of each text,")
print("and the KL divergence of the quantized model's next-token distribution from the")
print("unquantized model's at every scored position. Calibration (GPTQ, AWQ, SmoothQuant,")
print("outlier columns, static activation scales): 128 windows of 512 tokens of")
print("`debdoc-calib.txt`, seed 0, each starting with BOS.\n")
wt = base[0]["eval"].split("/")[-1]
dv = base[1]["eval"].split("/")[-1] if len(base) > 1 else ""
print(f"Unquantized: {wt} PPL {base[0]['ppl_base']:.3f}" + (f", {dv} PPL {base[1]['ppl_base']:.4f}" if dv else "") + ".\n")
print(f"| spec | method | bpw | {wt} PPL | Δ | KLD | same top | {dv} PPL | KLD | quantize s |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    e = r["evals"]
    a = e[0]
    b = e[1] if len(e) > 1 else None
    d = 100 * (a["ppl"] / a["ppl_base"] - 1)
    cells = [f"`{r['spec']}`", r["what"], f"{r['bpw_quantized']:.3f}", f"{a['ppl']:.3f}",
             f"{d:+.1f}%", f"{a['kld_mean']:.4f}", f"{a['same_top_pct']:.1f}%"]
    cells += [f"{b['ppl']:.4f}", f"{b['kld_mean']:.4f}"] if b else ["", ""]
    cells.append(f"{r['seconds_quant']:.1f}")
    print("| " + " | ".join(cells) + " |")
print("\nbpw counts every stored byte of the quantized tensors (codes, FP16 scales and zeros,")
print("GPTQ's per-column group index with act-order, FP16 outlier columns) per weight.")
print("The model as a whole adds 6.3M FP16 embedding and head weights.\n")
print("Reproduce: `make quality` (about 20 minutes on 2 cores); `CHUNKS=N make quality` for a")
print("quicker pass. The raw JSON lines are in `build/quality.jsonl`.")
