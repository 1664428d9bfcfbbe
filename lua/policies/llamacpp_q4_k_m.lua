-- llamacpp_q4_k_m.lua - llama.cpp's Q4_K_M mixture, in qscope's formats.
--
-- "Q4_K_M" is not one format but a rule choosing a format per tensor: most
-- weights get Q4_K, while some attn_v and ffn_down matrices and the output
-- head get Q6_K. The rule lives in llama_tensor_get_type() in llama.cpp's
-- src/llama-quant.cpp. For a Llama model with separate q/k/v matrices it
-- comes down to:
--
--   output.weight         Q6_K
--   attn_v, ffn_down      Q6_K in the layers where use_more_bits() is true,
--                         Q4_K elsewhere
--   everything else       Q4_K (token_embd included)
--
-- (The function has more cases, for 70B models, mixtures of experts, Falcon
-- and fused attn_qkv matrices; none applies to a dense Llama like debdoc.)
--
-- use_more_bits(i, n) picks the first eighth of the layers, the last
-- eighth, and every third layer in between (integer division throughout):
--
--   i < n/8  or  i >= 7n/8  or  (i - n/8) % 3 == 2
--
-- On debdoc-19m (8 layers) that is layers 0, 3, 6 and 7.
--
-- Formats. qscope has no K-quant blocks yet, so each ggml type is replaced by
-- the qscope integer format with (nearly) the same bits per weight:
--
--   ggml   what it stores (per super-block of 256)      bpw     qscope        bpw
--   Q4_K   4-bit codes, 8 sub-blocks of 32 with 6-bit     4.5     int4g64       4.5
--          scale and min, FP16 super scale and min                (FP16 scale + zero per 64)
--   Q5_K   the same with 5-bit codes                     5.5     int5g64       5.5
--          (not used by this rule on separate q/k/v)
--   Q6_K   6-bit codes, 16 sub-blocks of 16 with          6.5625  int6g32sym    6.5
--          8-bit scales, FP16 super scale (symmetric)             (FP16 scale per 32)
--
-- The bits match; the grids do not. A K-quant spends its scale bits on small
-- sub-blocks (32 or 16 weights) by quantizing the scales themselves; qscope's
-- formats keep full FP16 scales on larger groups. So this policy reproduces
-- the *allocation* of bits across tensors, not llama.cpp's numbers.
--
-- One more difference worth knowing: llama.cpp needs rows that are a multiple
-- of 256 for K-quants and otherwise falls back (Q4_K -> Q5_0, Q5_K -> Q5_1,
-- Q6_K -> Q8_0; the output head -> Q8_0). debdoc-19m's rows are 384 long
-- except ffn_down's (1024), so the real llama.cpp would store most of this
-- model in Q5_0 and Q8_0. --set fallback=true imitates that with
-- Q5_0 -> "int5g32sym" (5.5 bpw), Q5_1 -> "int5g32" (6 bpw) and Q8_0 -> "q8_0".
--
--   qscope quant --policy lua/policies/llamacpp_q4_k_m.lua --dry-run
--   qscope quant --policy lua/policies/llamacpp_q4_k_m.lua --kld
--   qscope quant --policy lua/policies/llamacpp_q4_k_m.lua --set fallback=true --dry-run
--
-- Parameters:
--   embeddings  true: quantize token_embd too (Q4_K, or Q6_K when it is tied
--               to the output head, as llama.cpp does); default: kept as stored
--   fallback    true: apply llama.cpp's fallback for rows that are not a
--               multiple of 256 (default false)

local QSCOPE = {
  Q4_K = "int4g64",
  Q5_K = "int5g64",
  Q6_K = "int6g32sym",
  -- fallbacks
  Q5_0 = "int5g32sym",
  Q5_1 = "int5g32",
  Q8_0 = "q8_0",
}
local FALLBACK = { Q4_K = "Q5_0", Q5_K = "Q5_1", Q6_K = "Q8_0" }
local QK_K = 256 -- weights per K-quant super-block

local function use_more_bits(i, n)
  return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2
end

-- The ggml type llama.cpp's Q4_K_M rule gives tensor t (nil: keep it).
local function ggml_type(t, model)
  -- llama.cpp counts attn_v and ffn_down tensors in file order; in a dense
  -- model the count is the layer index and the total is model.n_layers.
  local n = model.n_layers
  if t.kind == "output" then
    return "Q6_K"
  elseif t.kind == "token_embd" then
    if not args.embeddings then
      return nil
    end
    -- a tied embedding is also the output head, and is treated as one
    return model.tied and "Q6_K" or "Q4_K"
  elseif (t.kind == "attn_v" or t.kind == "ffn_down") and use_more_bits(t.layer, n) then
    return "Q6_K"
  end
  return "Q4_K"
end

return function(t, model)
  local ty = ggml_type(t, model)
  if ty == nil then
    return nil
  end
  -- t.cols is the row length (the input dimension): what a block must divide
  if args.fallback and t.cols % QK_K ~= 0 then
    ty = (t.kind == "output" or t.kind == "token_embd" and model.tied) and "Q8_0" or FALLBACK[ty]
  end
  return QSCOPE[ty]
end
