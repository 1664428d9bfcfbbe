#!/usr/bin/env bash
# make quality: quantize the demo model with every method the field uses and
# write docs/QUALITY.md: perplexity on WikiText-2 and on in-domain debdoc-val
# (first CHUNKS chunks of 512 each), KL divergence against the unquantized
# model, bits per weight and time. Each row is one `qscope quant --json` run;
# the raw JSON lines are kept in build/quality.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-models/debdoc-19m-f16.gguf}
shared=${QSCOPE_SHARED:-../shared}
chunks=${CHUNKS:-100}
evals="data/wikitext-2-test.txt,$shared/data/debdoc-val.txt"
calib="$shared/data/debdoc-calib.txt"
out=build/quality.jsonl
mkdir -p build docs
# ONLY="spec spec ...": run just those rows and keep the others' lines from
# the last run (build/quality.jsonl), e.g. after adding a row
prev=build/quality.prev.jsonl
rm -f "$prev"
if [ -n "${ONLY:-}" ] && [ -f "$out" ]; then cp "$out" "$prev"; fi
: > "$out"

# spec | what it is
specs=(
	"fp16|FP16 (stored), the reference"
	"q8_0|ggml Q8_0, RTN"
	"fp8|FP8 E4M3, per-row scale"
	"int8c|int8 per channel, RTN"
	"int4g128|int4 g128 asym, RTN"
	"gptq:int4g128|int4 g128 asym, GPTQ"
	"gptq:int4g128,act_order|int4 g128 asym, GPTQ act-order"
	"awq:int4g128|int4 g128 asym, AWQ"
	"awq:int4g128,gptq|int4 g128 asym, AWQ then GPTQ"
	"hqq:int4g128|int4 g128 asym, HQQ"
	"int4g128,mse|int4 g128 asym, RTN + MSE clipping"
	"q4_0|ggml Q4_0 (= int4 g32 sym), RTN"
	"gptq:int4g32sym|int4 g32 sym, GPTQ"
	"awq:int4g32sym|int4 g32 sym, AWQ"
	"hqq:int4g32sym|int4 g32 sym, HQQ (scale only)"
	"nf4|NF4 block 64"
	"nf4dq|NF4 block 64, double-quantized scales"
	"int3g128|int3 g128 asym, RTN"
	"gptq:int3g128|int3 g128 asym, GPTQ"
	"gptq:int3g128,act_order|int3 g128 asym, GPTQ act-order"
	"gptq:int3g128,act_order,static_groups|int3 g128 asym, GPTQ act-order, static groups"
	"gptq:int3g128,mse|int3 g128 asym, GPTQ + MSE grids"
	"awq:int3g128|int3 g128 asym, AWQ"
	"awq:int3g128,gptq|int3 g128 asym, AWQ then GPTQ"
	"awq:int3g128,mse,gptq|int3 g128 asym, AWQ then GPTQ + MSE grids"
	"hqq:int3g128|int3 g128 asym, HQQ"
	"int2g64|int2 g64 asym, RTN"
	"gptq:int2g64|int2 g64 asym, GPTQ"
	"awq:int2g64|int2 g64 asym, AWQ"
	"hqq:int2g64|int2 g64 asym, HQQ"
	"int8c,act=8|W8A8 naive (int8 per channel, per-token int8 activations)"
	"smoothquant:int8c,act=8|W8A8 SmoothQuant a=0.5, per-token activations"
	"int8c,act=8,act_tensor|W8A8 naive, static per-tensor activations"
	"smoothquant:int8c,act=8,act_tensor|W8A8 SmoothQuant a=0.5, static per-tensor activations"
	"int4g128,outliers=6|int4 g128, LLM.int8()-style FP16 outlier columns (absmax > 6)"
)
for row in "${specs[@]}"; do
	spec=${row%%|*}
	if [ -f "$prev" ] && [[ " $ONLY " != *" $spec "* ]]; then
		line=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    if json.loads(l)["spec"] == sys.argv[2]: print(l, end="")' "$prev" "$spec")
		if [ -n "$line" ]; then
			echo "$line" >> "$out"
			continue
		fi
	fi
	echo "quality: $spec" >&2
	./qscope quant -m "$model" -f "$calib" --spec "$spec" --eval "$evals" --chunks "$chunks" \
		--kld --json | python3 -c 'import json,sys; j=json.load(sys.stdin); j["what"]=sys.argv[1]; print(json.dumps(j))' "${row#*|}" >> "$out"
done
python3 scripts/quality_table.py "$out" "$chunks" build/quality_spread.jsonl > docs/QUALITY.md.tmp
mv docs/QUALITY.md.tmp docs/QUALITY.md
rm -f "$prev"
echo "quality: wrote docs/QUALITY.md" >&2
