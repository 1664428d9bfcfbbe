"""Format build/quality.jsonl (one `qscope quant --json` object per line) as
the markdown of docs/QUALITY.md. Usage: quality_table.py FILE CHUNKS"""
import json
import statistics
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
spread = []
if len(sys.argv) > 3:
    try:
        spread = [json.loads(l) for l in open(sys.argv[3]) if l.strip()]
    except FileNotFoundError:
        spread = []
REF = {"gptq:int4g128": 138.97, "gptq:int3g128": 192.66, "gptq:int3g128,act_order": 177.17}
REF_RTN = {"int4g128": 145.27, "int3g128": 225.22}
print("\nFor comparison, the reference GPTQ implementation (IST-DASLab) on the same setup")
print("(WikiText-2, first 100 chunks, int g128 asym, 128 x 512 calibration tokens) recovers 40% at")
print("int4 (RTN 145.27 -> 138.97), 34% at int3 (225.22 -> 192.66) and 50% at int3 with act-order")
print("(177.17). Its round-to-nearest figures differ from ours (145.50, 225.30) because it keeps")
print("FP32 scales and rounds w/s half to even before adding the zero point, where we store FP16")
print("scales and round w/s + z half away from zero: with those two lines changed (`kn_int_grid`,")
print("`kn_int_quant` in `kernels/`), our RTN gives 145.266 and 225.225, its figures to the last printed digit. A change")
print("that small moves PPL by 0.3-0.5 here, and a calibrated method's figure moves by several")
print("points with the calibration sample" + (" (next section)." if spread else "."))

if spread:
    print("\n## How much of a figure is the calibration sample\n")
    print("`make quality-spread` (`scripts/quality_spread.sh`) quantizes each configuration with")
    print("calibration seeds " + ", ".join(sorted({str(r["seed"]) for r in spread}, key=int)) +
          " (each seed draws other 128 windows of the same text) and evaluates WikiText-2,")
    print(f"first {spread[0]['chunks']} chunks. Windows: `bos` starts every window with BOS, as")
    print("the rows above and as the perplexity protocol starts every chunk; `raw` takes them as")
    print("they are in the text (`--calib-raw`), as the reference code samples. Recovered is the")
    print("median's share of the RTN increase; the last column counts the seeds at or below the")
    has_kld = all("kld_mean" in r for r in spread)
    print("reference's figure." + (" KLD is the mean KL divergence from the unquantized model on the"
          "\nsame chunks, median over the seeds (min - max)." if has_kld else "") + "\n")
    print("| method | windows | median PPL | min - max | mean +- sd | recovered | reference | seeds <= reference |"
          + (" median KLD (min - max) |" if has_kld else ""))
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if has_kld else ""))
    keys = []
    for r in spread:
        k = (r["spec"], r["windows"])
        if k not in keys:
            keys.append(k)
    for spec, win in keys:
        v = [r["ppl"] for r in spread if (r["spec"], r["windows"]) == (spec, win)]
        b = spread[0]["ppl_base"]
        rtn = spec.split(":", 1)[-1].split(",")[0]
        med = statistics.median(v)
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        rec_s = f"{100 * (ppl(rtn) - med) / (ppl(rtn) - b):.0f}%" if rtn in by else ""
        ref = REF.get(spec)
        if ref is not None:
            ref_s = f"{ref:.2f} ({100 * (REF_RTN[rtn] - ref) / (REF_RTN[rtn] - b):.0f}%)"
            n_le = f"{sum(x <= ref for x in v)} of {len(v)}"
        else:
            ref_s, n_le = "", ""
        kl = ""
        if has_kld:
            k = [r["kld_mean"] for r in spread if (r["spec"], r["windows"]) == (spec, win)]
            kl = f" {statistics.median(k):.4f} ({min(k):.4f} - {max(k):.4f}) |"
        print(f"| `{spec}` | {win} | {med:.2f} | {min(v):.2f} - {max(v):.2f} | {statistics.mean(v):.2f} +- {sd:.2f} "
              f"| {rec_s} | {ref_s} | {n_le} |" + kl)

def rec(m, r, i=0):
    b = base[i]["ppl_base"]
    return 100 * (ppl(r, i) - ppl(m, i)) / (ppl(r, i) - b)


steps = [("gptq:int3g128", "GPTQ"), ("gptq:int3g128,act_order,static_groups", "GPTQ with act-order and static groups"),
         ("gptq:int3g128,mse", "GPTQ with MSE-optimal grids"), ("awq:int3g128,gptq", "AWQ then GPTQ"),
         ("awq:int3g128,mse,gptq", "AWQ then GPTQ with MSE grids")]


def seeds_median(spec):
    v = [r["ppl"] for r in spread if r["spec"] == spec and r["windows"] == "bos"]
    return (statistics.median(v), len(v)) if len(v) > 1 else None


if all(m in by for m, _ in steps) and "int3g128" in by:
    med = any(seeds_median(m) for m, _ in steps)
    print("\n## Beyond the reference: what each known improvement adds at int3 g128\n")
    print("| method | " + " | ".join(f"{e['eval'].split('/')[-1]} PPL | recovered" for e in base[:2]) + " | KLD |" +
          (" median of seeds | recovered |" if med else ""))
    print("| --- | " + " | ".join("---: | ---:" for _ in base[:2]) + " | ---: |" + (" ---: | ---: |" if med else ""))
    for m, what in steps:
        cells = [what]
        for i in range(min(2, len(base))):
            cells += [f"{ppl(m, i):.2f}", f"{rec(m, 'int3g128', i):.0f}%"]
        cells.append(f"{kld(m):.4f}")
        if med:
            sm = seeds_median(m)
            b = base[0]["ppl_base"]
            cells += [f"{sm[0]:.2f} ({sm[1]} seeds)", f"{100 * (ppl('int3g128') - sm[0]) / (ppl('int3g128') - b):.0f}%"] if sm else ["", ""]
        print("| " + " | ".join(cells) + " |")
    print("\nThe first columns are seed 0, as in the main table" + (
          "; the last two are the WikiText-2 median over the calibration seeds of the section above." if med else "."))
    mg, ma = seeds_median("gptq:int3g128"), seeds_median("awq:int3g128,gptq")
    mm = seeds_median("gptq:int3g128,mse")
    if mg and ma and mm:
        print(f"MSE-optimal grids are the largest single gain (median {mm[0]:.2f} against {mg[0]:.2f}, far")
        print(f"outside the seed spread). AWQ's scaling before GPTQ adds less (median {ma[0]:.2f}, within")
        print("about one standard deviation of plain GPTQ's seeds) and little on top of MSE grids; both")
        print("shrink the damage of the few large channels. Act-order lowers the layers' own output error on the calibration")
    else:
        print("MSE-optimal grids are the largest single gain; AWQ's scaling before GPTQ adds to plain")
        print("GPTQ but little on top of MSE grids (both shrink the damage of the few large channels).")
        print("Act-order lowers the layers' own output error on the calibration")
    print("text (`qscope quant --layer-errors`: the mean over the 56 matrices goes from 0.1413 to")
    print("0.1371, lower for every one) and helps in-domain (debdoc-val), but its WikiText-2 figure")
    print("depends on the calibration windows.", end="")

    def by_seed(spec, win):
        return {r["seed"]: r["ppl"] for r in spread if r["spec"] == spec and r["windows"] == win}

    plain_b, plain_r = by_seed("gptq:int3g128", "bos"), by_seed("gptq:int3g128", "raw")
    act_b, stat_b = by_seed("gptq:int3g128,act_order", "bos"), by_seed("gptq:int3g128,act_order,static_groups", "bos")
    act_r = by_seed("gptq:int3g128,act_order", "raw")
    if plain_b and act_b and stat_b and plain_r and act_r:
        mp, ma, ms = (statistics.median(d.values()) for d in (plain_b, act_b, stat_b))
        common = sorted(set(plain_r) & set(act_r))
        wins = sum(act_r[k] < plain_r[k] for k in common)
        rank = 1 + sum(v < stat_b.get(0, float("inf")) for v in stat_b.values())
        print(f" With BOS-first windows the medians over {len(plain_b)} seeds are")
        print(f"{mp:.2f} for plain GPTQ, {ma:.2f} with act-order and {ms:.2f} with act-order and static")
        print(f"groups (whose seed-0 figure in the table above ranks {rank} of {len(stat_b)});")
        print(f"with raw windows act-order beats plain GPTQ for {wins} of {len(common)} seeds, with the same")
        print("windows (spread table).", end="")
        kb = {(r["spec"], r["seed"]): r["kld_mean"] for r in spread if r["windows"] == "bos" and "kld_mean" in r}
        ks = sorted(k for (sp, k) in kb if sp == "gptq:int3g128" and ("gptq:int3g128,act_order", k) in kb)
        if ks:
            kw = sum(kb[("gptq:int3g128,act_order", k)] < kb[("gptq:int3g128", k)] for k in ks)
            kp = statistics.median(kb[("gptq:int3g128", k)] for k in ks)
            ka = statistics.median(kb[("gptq:int3g128,act_order", k)] for k in ks)
            span = max(plain_b.values()) - min(plain_b.values())
            print(f" By KL divergence on the same chunks, act-order with BOS-first windows is closer to the")
            print(f"unquantized model than plain GPTQ for {kw} of {len(ks)} seeds (median {ka:.4f} against {kp:.4f}).")
            print(f"Compare methods on KLD or on medians: the seed alone moves plain GPTQ's WikiText-2")
            print(f"perplexity by {span:.0f} points (`qscope quant --seeds`, docs/QUANT.md).")
        else:
            print()
    else:
        print(" `make quality-spread` measures how much.")

print("\nbpw counts every stored byte of the quantized tensors (codes, FP16 scales and zeros,")
print("GPTQ's per-column group index with act-order, FP16 outlier columns) per weight.")
print("The model as a whole adds 6.3M FP16 embedding and head weights.\n")
print("Reproduce: `make quality` (about 50 minutes on 2 cores); `CHUNKS=N make quality` for a")
print("quicker pass; `ONLY='spec spec' make quality` reruns those rows and keeps the others from")
print("the last run. The raw JSON lines are in `build/quality.jsonl`; `make quality-spread`")
print("(about 50 minutes) adds the seed spread from `build/quality_spread.jsonl`.")
