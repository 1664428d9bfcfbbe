/* eval.h - evaluation of a model: perplexity (llama.cpp's chunked protocol). */
#ifndef QS_EVAL_H
#define QS_EVAL_H

#include <stddef.h>

#include "error.h"
#include "model.h"

typedef struct eval_ppl_opts {
	int ctx;          /* chunk length (512) */
	int n_chunks;     /* 0: all whole chunks in the text */
	int batch;        /* chunks per forward batch (0: automatic) */
	/* called after every chunk with its index and the running perplexity;
	 * return nonzero to cancel */
	int (*on_chunk)(void *user, int chunk, int n_chunks, double running_ppl);
	void *user;
} eval_ppl_opts;

typedef struct eval_ppl_result {
	double ppl, ppl_stderr;
	double nll_mean;
	int chunks;
	long scored;      /* predicted tokens */
	long tokens;      /* tokens processed (chunks * ctx) */
	double seconds;
	double gflop;     /* floating-point work the protocol needs (see eval_flops) */
} eval_ppl_result;

/* Perplexity of tokens (BOS first) with llama.cpp's protocol: chunks of ctx
 * tokens, first token of each chunk replaced by BOS, the second half of each
 * chunk (targets at positions ctx/2 .. ctx-1) scored. */
int eval_ppl(const model *m, const int *tokens, size_t n_tokens, const eval_ppl_opts *o,
	     eval_ppl_result *r, qs_error *err);

/* A quantized (or otherwise changed) model against its original on the same
 * perplexity protocol: both perplexities, and the KL divergence of the
 * changed model's next-token distribution from the original's at every
 * scored position, with llama.cpp's statistics. */
typedef struct eval_cmp_result {
	eval_ppl_result base, test;   /* perplexity of each */
	long n;                       /* scored positions */
	double kld_mean, kld_stderr;  /* mean KL(P_base || P_test) in nats, and its s.e. */
	double kld_median, kld_p90, kld_p99, kld_max;
	double same_top_pct;          /* % positions where both argmax agree */
	double rms_dp;                /* RMS of p_test(target) - p_base(target), in % */
	double seconds;
} eval_cmp_result;

int eval_compare(const model *base, const model *test, const int *tokens, size_t n_tokens,
		 const eval_ppl_opts *o, eval_cmp_result *r, qs_error *err);

/* Incremental evaluation (sensitivity scans, the workbench's quick eval):
 * the first n_chunks chunks of a text on eval_compare's protocol, with the
 * base model's residual stream cached at the input of every layer and its
 * log-probabilities at the scored positions. A test model that computes the
 * same function as base in layers [0, from_layer) is evaluated by running
 * only layers from_layer.. and the head. Memory: n_layers x n_chunks x
 * (ctx - 1) x dim floats of hidden states plus n_chunks x ctx/2 x vocab
 * floats of log-probabilities (8 chunks of debdoc-19m: 50 + 67 MB). */
typedef struct eval_cache eval_cache;
eval_cache *eval_cache_new(const model *base, const int *tokens, size_t n_tokens, int n_chunks,
			   int ctx, qs_error *err);
void eval_cache_free(eval_cache *c);
/* The base model's perplexity on the cached chunks (r->base of every run). */
const eval_ppl_result *eval_cache_base(const eval_cache *c);
int eval_cache_chunks(const eval_cache *c);
/* Evaluate test (same configuration as base; layers < from_layer must
 * equal base's) against base: r as eval_compare fills it. from_layer may be
 * n_layers (only the head differs) or -1 (the token embeddings differ). */
int eval_cache_run(eval_cache *c, const model *test, int from_layer, eval_cmp_result *r,
		   qs_error *err);
/* Runs relative to the previous model, not only to base (the workbench
 * changing one tensor of a plan that quantizes every layer): after
 * eval_cache_keep (a second copy of the hidden states), every successful
 * run keeps its model's layer inputs, and eval_cache_run_last evaluates a
 * test model equal to the last run's model below from_layer (embeddings
 * included when from_layer >= 0) by running only layers from_layer.. . A
 * failed or cancelled run forgets the last one (eval_cache_has_last). */
int eval_cache_keep(eval_cache *c, qs_error *err);
int eval_cache_run_last(eval_cache *c, const model *test, int from_layer, eval_cmp_result *r,
			qs_error *err);
int eval_cache_has_last(const eval_cache *c);

/* FLOPs of a prefill of n_seq sequences of n_tok tokens with logits for the
 * last n_logits positions of each: linear layers for every token, causal
 * attention (QK^T and PV over t+1 keys for position t), output head. */
double eval_flops(const model_config *c, int n_seq, int n_tok, int n_logits);

#endif
