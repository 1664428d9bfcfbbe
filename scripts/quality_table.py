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
by = {r["spec"]: r for r in rows}


def ppl(spec, i=0):
    return by[spec]["evals"][i]["ppl"] if spec in by else None


def kld(spec, i=0):
    return by[spec]["evals"][i]["kld_mean"] if spec in by else None


print("\n## What each method recovers\n")
print("Share of round-to-nearest's perplexity increase that a method wins back,")
print("(PPL_rtn - PPL_method) / (PPL_rtn - PPL_fp16), on both texts, and the KL divergence,")
print("which is the steadier figure on a model this small (it uses every scored token's whole")
print("distribution, not just the probability of the one observed token).\n")
print(f"| method | vs | {wt} recovered | {dv} recovered | KLD method / RTN |")
print("| --- | --- | ---: | ---: | ---: |")
pairs = [("gptq:int4g128", "int4g128"), ("gptq:int4g128,act_order", "int4g128"),
         ("awq:int4g128", "int4g128"), ("awq:int4g128,gptq", "int4g128"), ("hqq:int4g128", "int4g128"),
         ("int4g128,mse", "int4g128"),
         ("gptq:int3g128", "int3g128"), ("gptq:int3g128,act_order", "int3g128"),
         ("gptq:int3g128,act_order,static_groups", "int3g128"), ("gptq:int3g128,mse", "int3g128"),
         ("awq:int3g128", "int3g128"), ("awq:int3g128,gptq", "int3g128"),
         ("awq:int3g128,mse,gptq", "int3g128"), ("hqq:int3g128", "int3g128"),
         ("gptq:int2g64", "int2g64"), ("awq:int2g64", "int2g64"), ("hqq:int2g64", "int2g64"),
         ("smoothquant:int8c,act=8", "int8c,act=8"),
         ("smoothquant:int8c,act=8,act_tensor", "int8c,act=8,act_tensor")]
for m, r in pairs:
    if m not in by or r not in by:
        continue
    cells = [f"`{m}`", f"`{r}`"]
    for i in range(min(2, len(base))):
        b = base[i]["ppl_base"]
        cells.append(f"{100 * (ppl(r, i) - ppl(m, i)) / (ppl(r, i) - b):.0f}%")
    cells.append(f"{kld(m) / kld(r):.2f}")
    print("| " + " | ".join(cells) + " |")
print("\nFor comparison, the reference GPTQ implementation (IST-DASLab) on the same setup")
print("(WikiText-2, first 100 chunks, int g128 asym, 128 x 512 calibration tokens) recovers 40% at")
print("int4 (RTN 145.27 -> 138.97), 34% at int3 (225.22 -> 192.66) and 50% at int3 with act-order")
print("(177.17). On this 19M-parameter model a WikiText-2 figure moves by a few percent with the")
print("calibration sample alone: GPTQ int3 g128 with seeds 0, 1, 2 gives 194.5, 195.3, 190.6.")
print("The windows matter for act-order: the rows above start every calibration window with BOS")
print("(as the perplexity protocol starts every chunk); with the windows as they are in the text")
print("(`--calib-raw`, how the reference samples) GPTQ int3 g128 gives 198.8, 198.7, 200.4, 198.3 for")
print("seeds 0-3 and act-order 190.2, 190.8, 194.5, 188.2, so act-order then helps by 6-10 points;")
print("with BOS-first windows it does not. The reference's 177.17 is not reached either way.")

def rec(m, r, i=0):
    b = base[i]["ppl_base"]
    return 100 * (ppl(r, i) - ppl(m, i)) / (ppl(r, i) - b)


steps = [("gptq:int3g128", "GPTQ"), ("gptq:int3g128,act_order,static_groups", "GPTQ with act-order and static groups"),
         ("gptq:int3g128,mse", "GPTQ with MSE-optimal grids"), ("awq:int3g128,gptq", "AWQ then GPTQ"),
         ("awq:int3g128,mse,gptq", "AWQ then GPTQ with MSE grids")]
if all(m in by for m, _ in steps) and "int3g128" in by:
    print("\n## Beyond the reference: what each known improvement adds at int3 g128\n")
    print("| method | " + " | ".join(f"{e['eval'].split('/')[-1]} PPL | recovered" for e in base[:2]) + " | KLD |")
    print("| --- | " + " | ".join("---: | ---:" for _ in base[:2]) + " | ---: |")
    for m, what in steps:
        cells = [what]
        for i in range(min(2, len(base))):
            cells += [f"{ppl(m, i):.2f}", f"{rec(m, 'int3g128', i):.0f}%"]
        cells.append(f"{kld(m):.4f}")
        print("| " + " | ".join(cells) + " |")
    print("\nMSE-optimal grids are the largest single gain; AWQ's scaling before GPTQ adds to plain")
    print("GPTQ but little on top of MSE grids (both shrink the damage of the few large channels).")
    print("Act-order lowers the layers' own output error on the calibration text (`qscope quant")
    print("--layer-errors`: the mean over the 56 matrices goes from 0.1413 to 0.1371, lower for every")
    print("one) and helps in-domain (debdoc-val), but on WikiText-2 it helps only with static groups:")
    print("it orders the columns by the calibration text's activations, whose largest channels are")
    print("not WikiText-2's.")

print("\nbpw counts every stored byte of the quantized tensors (codes, FP16 scales and zeros,")
print("GPTQ's per-column group index with act-order, FP16 outlier columns) per weight.")
print("The model as a whole adds 6.3M FP16 embedding and head weights.\n")
print("Reproduce: `make quality` (about 50 minutes on 2 cores); `CHUNKS=N make quality` for a")
print("quicker pass; `ONLY='spec spec' make quality` reruns those rows and keeps the others from")
print("the last run. The raw JSON lines are in `build/quality.jsonl`.")
