-- keep_ends.lua - more bits for the first and last blocks, fewer in between.
--
-- Not every layer is equally sensitive to rounding. A common heuristic is to
-- protect the ends of the model: the first block turns raw token embeddings
-- into the representation every later layer reads, the last block writes what
-- the output head turns into probabilities. llama.cpp's K-quant mixtures give
-- attn_v and ffn_down of the first and last eighth of the layers more bits (see
-- llamacpp_q4_k_m.lua). This policy is the heuristic with one knob: how many
-- blocks at each end. Whether it holds for a given model is a measurement,
-- not a rule: `qscope sensitivity` shows the cost of each tensor, and
-- budget.lua lets those measurements choose instead.
--
--   qscope quant --policy lua/policies/keep_ends.lua --dry-run
--   qscope quant --policy lua/policies/keep_ends.lua --set n=2 --set lo=gptq:int3g128 --kld
--
-- Parameters (--set key=value, seen as args.key):
--   n    blocks at each end that get the higher precision (default 1)
--   hi   their spec (default "q8_0": ggml's 8-bit blocks of 32, 8.5 bits per
--        weight; on debdoc-19m, q8_0 on every block linear costs a KL
--        divergence of 0.0005 nats, docs/QUALITY.md)
--   lo   the spec of every other block (default "gptq:int4g128": 4 bits with
--        GPTQ's error compensation, 4.25 bits per weight)
-- token_embd and output are kept as stored.

local n = args.n or 1
local hi = tostring(args.hi or "q8_0")
local lo = tostring(args.lo or "gptq:int4g128")

-- --set n=2 arrives as the integer 2; --set n=two as the string "two".
-- Check parameters once, at load time, so a mistake is reported once and
-- with this line number, not once per tensor.
if math.type(n) ~= "integer" or n < 0 then
  error("args.n must be a whole number of blocks >= 0, not " .. tostring(n))
end

return function(t, model)
  if t.kind == "token_embd" or t.kind == "output" then
    return nil
  end
  -- t.layer is the block index, 0 .. model.n_layers - 1. With n = 1 on an
  -- 8-block model, blocks 0 and 7 get `hi`.
  if t.layer < n or t.layer >= model.n_layers - n then
    return hi
  end
  return lo
end
