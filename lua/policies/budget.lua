-- budget.lua - the best mix of specs for a bits-per-weight budget, chosen from
-- measurements.
--
-- Mixed precision works because tensors are not equally sensitive. On
-- debdoc-19m, rounding one tensor alone to int3g128 costs between 0.00006
-- nats of KL divergence (blk.0.attn_k) and 0.045 (blk.0.ffn_down). Instead of
-- guessing which tensors matter (keep_ends.lua, llamacpp_q4_k_m.lua), this
-- policy measures:
--
--   1. the sensitivity scan (`qscope sensitivity`) quantizes one tensor at a
--      time with each candidate spec, the rest of the model unquantized, and
--      records what that costs: the KL divergence of the model's next-token
--      distribution from the original's (kld), the change of perplexity
--      (dppl), and the tensor's exact bytes;
--   2. qs.fit picks one candidate per tensor so that the summed cost is as
--      small as possible while the bytes stay within the budget. That is a
--      multiple-choice knapsack, solved exactly by dynamic programming.
--
-- Adding up one-tensor costs assumes the errors of different tensors do not
-- interact. That is an approximation; check the result with --kld. Measured
-- on debdoc-19m (WikiText-2, first 100 chunks; the scan used debdoc-val.txt):
-- the default GPTQ candidates fitted to 4.5 bits per weight give perplexity
-- 132.19 (KLD 0.0995), uniform int4 g32 (also 4.5 bpw) 139.18 with RTN and
-- 139.44 with GPTQ; int3g128, int4g128 and q8_0 fitted to 4.25 bpw (the size
-- of uniform int4g128) gave KLD 0.1736, uniform int4g128 0.1849.
--
--   qscope quant --policy lua/policies/budget.lua --dry-run          # scans first (cached)
--   qscope quant --policy lua/policies/budget.lua --set bpw=3.8 --kld
--   qscope sensitivity --candidates int3g128,int4g128,q8_0 -o sens.json
--   qscope quant --policy lua/policies/budget.lua --sens sens.json \
--       --set candidates=int3g128,int4g128,q8_0 --set bpw=4.5 --save-recipe mix.json
--
-- Without --sens, qs.fit asks qscope to scan the candidates it has no
-- measurement for, and caches the result (in $QSCOPE_CACHE): the default GPTQ
-- candidates over all 56 block linears of debdoc-19m took 5.5 minutes on 2
-- cores shared with other work (the 3 RTN candidates of `qscope sensitivity`
-- take about a minute, docs/BENCH.md). With --sens FILE, only the tensors in
-- that file are fitted;
-- the others are kept as stored.
--
-- Parameters:
--   bpw         budget in bits per weight over the fitted tensors (default
--               4.5); scales, zero points and act-order indices count
--   objective   "kld" (default) or "ppl" (the perplexity change; on a short
--               evaluation text it is noisier and can be negative)
--   candidates  comma-separated specs (default below). A piece that does not
--               start with a format is an option of the spec before it, so
--               "gptq:int3g128,act_order,q8_0" is two candidates. AWQ and
--               SmoothQuant cannot be candidates: their scales are shared by
--               several tensors, so they have no one-tensor cost to measure.

-- The candidates when --set candidates=... is not given.
local DEFAULT_CANDIDATES = "gptq:int3g128,gptq:int4g128,gptq:int5g128,gptq:int6g128"

local bpw = args.bpw or 4.5
local objective = args.objective or "kld"

-- Split the candidate list. Formats start with "int", "q" + digit, "nf4",
-- "fp" or "bf16", optionally after "method:".
local function starts_a_spec(piece)
  local f = piece:match("^%a+:(.*)$") or piece
  return f:match("^int%d") or f:match("^q%d") or f:match("^nf4") or f:match("^fp")
    or f:match("^bf16")
end

local candidates = {}
for piece in tostring(args.candidates or DEFAULT_CANDIDATES):gmatch("[^,%s]+") do
  if starts_a_spec(piece) or #candidates == 0 then
    candidates[#candidates + 1] = piece
  else
    candidates[#candidates] = candidates[#candidates] .. "," .. piece
  end
end

-- qs.fit runs once, when this file is loaded: the plan is a table from
-- tensor name to spec, the summary says what was achieved. It raises an
-- error (with this line number) when even the smallest candidates do not
-- fit the budget.
local plan, summary = qs.fit{
  budget_bpw = bpw,
  candidates = candidates,
  objective = objective,
}

-- summary.cost is the sum of the chosen candidates' measured costs: mean KLD
-- in nats, or perplexity change (dppl), each measured with one tensor
-- quantized at a time.
qs.log(string.format("budget: %d of %d bytes (%.3f bpw over %d weights), summed %s %.6f",
  summary.bytes, summary.budget_bytes, summary.bpw, summary.params,
  summary.objective == "ppl" and "dppl" or "kld", summary.cost))

-- How many tensors got each spec: the shape of the mix at a glance. The plan
-- holds canonical spellings ("rtn:int4g128" becomes "int4g128").
local count, specs = {}, {}
for _, spec in pairs(plan) do
  if not count[spec] then
    specs[#specs + 1] = spec
  end
  count[spec] = (count[spec] or 0) + 1
end
table.sort(specs, function(a, b) return qs.bits(a) < qs.bits(b) end)
for _, spec in ipairs(specs) do
  qs.log(string.format("budget: %3d tensors %s (%.3f bpw)", count[spec], spec, qs.bits(spec)))
end

return function(t, model)
  return plan[t.name] -- nil for tensors the scan did not measure: kept as stored
end
