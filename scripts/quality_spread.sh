#!/usr/bin/env bash
# make quality-spread: how much of a calibrated method's WikiText-2 figure is
# the calibration sample. Each (spec, windows) pair is quantized with seeds
# SEEDS (default 0-7, any `qscope quant --seeds` list) and evaluated on the
# first CHUNKS chunks of WikiText-2 with KL divergence, by one
# `qscope quant --seeds` call per pair; a line per run goes to
# build/quality_spread.jsonl,
# then docs/QUALITY.md is rewritten with a spread section (the main table
# comes from build/quality.jsonl, written by `make quality`).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-models/debdoc-19m-f16.gguf}
shared=${QSCOPE_SHARED:-../shared}
chunks=${CHUNKS:-100}
seeds=${SEEDS:-0-7}
calib="$shared/data/debdoc-calib.txt"
out=build/quality_spread.jsonl
mkdir -p build docs
if [ ! -f build/quality.jsonl ]; then
	echo "quality-spread: build/quality.jsonl is missing; run 'make quality' first" >&2
	exit 1
fi

# spec|windows (bos: every window starts with BOS, qscope's default; raw: the
# windows as they are in the text, as the GPTQ reference code samples)
# RUNS="spec|windows ..." runs just those and keeps the other runs' lines
# from the last build/quality_spread.jsonl.
runs=(${RUNS:-gptq:int4g128|bos gptq:int3g128|bos gptq:int3g128,act_order|bos
	gptq:int3g128,act_order,static_groups|bos gptq:int3g128|raw gptq:int3g128,act_order|raw
	gptq:int3g128,mse|bos awq:int3g128,gptq|bos})
tmp=$out.tmp
: > "$tmp"
if [ -n "${RUNS:-}" ] && [ -f "$out" ]; then
	python3 -c 'import json,sys
redo = {tuple(r.split("|", 1)) for r in sys.argv[2:]}
for l in open(sys.argv[1]):
    j = json.loads(l)
    if (j["spec"], j["windows"]) not in redo: print(l, end="")' "$out" "${runs[@]}" > "$tmp"
fi
for run in "${runs[@]}"; do
	spec=${run%%|*}
	win=${run#*|}
	raw=()
	[ "$win" = raw ] && raw=(--calib-raw)
	echo "quality-spread: $spec $win seeds $seeds" >&2
	./qscope quant -m "$model" -f "$calib" --spec "$spec" "${raw[@]}" --seeds "$seeds" \
		--eval data/wikitext-2-test.txt --chunks "$chunks" --kld --json |
		python3 -c 'import json,sys
j = json.load(sys.stdin)
for r in j.get("runs") or [dict(j, seed=int(sys.argv[2]))]:  # one seed: a single run
    print(json.dumps({"spec": r["spec"], "windows": sys.argv[1], "seed": r["seed"],
                      "ppl": r["ppl"], "ppl_base": r["ppl_base"], "chunks": r["chunks"],
                      "kld_mean": r["kld_mean"], "same_top_pct": r["same_top_pct"],
                      "seconds_quant": r["seconds_quant"]}))' "$win" "$seeds" >> "$tmp"
done
mv "$tmp" "$out"
python3 scripts/quality_table.py build/quality.jsonl "$chunks" "$out" > docs/QUALITY.md.tmp
mv docs/QUALITY.md.tmp docs/QUALITY.md
echo "quality-spread: wrote docs/QUALITY.md" >&2
