-- uniform.lua - the same spec for every linear layer of the blocks.
--
-- The simplest plan there is, and the baseline every mixed plan is measured
-- against. It does what `qscope quant --spec SPEC` does, written as a policy:
--
--   qscope quant --policy lua/policies/uniform.lua --dry-run
--   qscope quant --policy lua/policies/uniform.lua --set spec=gptq:int3g128,act_order
--   qscope quant --policy lua/policies/uniform.lua --set spec=q4_0 --set embeddings=true
--
-- How a policy works: this file runs once and returns a function. qscope then
-- calls that function once per quantizable tensor, block linears first (in
-- model order), then token_embd and output. Whatever it returns is the plan
-- for that tensor: a spec string such as "int4g128", a spec table, or nil to
-- keep the tensor as it is stored (FP16 for debdoc-19m).
--
-- Parameters (--set key=value, read here from the global table `args`):
--   spec        the spec for every tensor (default "int4g128": round to
--               nearest, 4 bits, one FP16 scale and zero point per 128
--               weights of a row = 4.25 bits per weight)
--   embeddings  true: also quantize token_embd and output (default false)

-- Values given with --set arrive already typed: "true" is a boolean, "8" a
-- number, anything else a string. tostring() keeps a number usable as a
-- spec-like string, so a mistyped `--set spec=8` fails in the spec parser
-- with a message naming the spec, not in Lua.
local spec = tostring(args.spec or "int4g128")
local embeddings = args.embeddings == true

-- qs.bits(spec) checks the spec once, before any tensor is seen (a typo stops
-- here with a clear message), and tells what it costs on a large matrix.
qs.log(string.format("uniform: %s, %.3f bits per weight", spec, qs.bits(spec) or 16))

-- The method is the part before ':' ("gptq:int4g128,act_order" -> "gptq"),
-- the format the part after it, up to the first option ("int4g128").
local method = spec:match("^(%a+):") or "rtn"
local format = spec:match("^%a+:([^,]+)") or spec:match("^[^,]+")

-- Not every method applies to the two edge tensors. qscope's quantizer folds
-- AWQ and SmoothQuant scales only inside the blocks, so it refuses them for
-- token_embd and output; GPTQ and outlier columns need the tensor's input
-- activations, which token_embd does not have (its input is token ids).
-- --dry-run does not catch this, the quantizer would stop at the end of its
-- work, so in those cases the edge tensors get the plain round-to-nearest
-- version of the same format.
local folds = { awq = true, smoothquant = true, sq = true }

return function(t, model)
  -- t.kind is "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
  -- "ffn_up", "ffn_down" for the block linears, "token_embd" or "output" for
  -- the two large matrices at the ends of the model. Those two are left alone
  -- by default, as `qscope quant --spec` does: the embedding table is a
  -- lookup, not a matrix product, and the output head produces every token's
  -- logits (llama.cpp's Q4_K_M gives it 6 bits, see llamacpp_q4_k_m.lua).
  if t.kind == "token_embd" or t.kind == "output" then
    if not embeddings then
      return nil
    end
    local needs_input = method == "gptq" or spec:find("outliers", 1, true)
    if folds[method] or (t.kind == "token_embd" and needs_input) then
      return format
    end
  end
  return spec
end
