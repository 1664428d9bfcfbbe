/* forward.h - the Llama forward pass.
 *
 * Prefill runs whole chunks of one or more independent sequences at once: each
 * weight matrix is dequantized into a scratch buffer and multiplied with
 * OpenBLAS sgemm over every token of the batch. Decode runs one token of
 * sequence 0 with packed-weight matvec kernels and the KV cache that prefill
 * filled. Both compute the same function (tests hold them to each other). */
#ifndef QS_FORWARD_H
#define QS_FORWARD_H

#include "error.h"
#include "model.h"

typedef struct fwd_ctx fwd_ctx;

/* Where a capture hook sees the input of a linear layer. */
enum fwd_site {
	FWD_SITE_QKV = 0,  /* normed input of attn_q/attn_k/attn_v: (n, dim) */
	FWD_SITE_ATTN_OUT, /* input of attn_output: (n, n_heads*head_dim) */
	FWD_SITE_FFN_IN,   /* normed input of ffn_gate/ffn_up: (n, dim) */
	FWD_SITE_FFN_DOWN, /* input of ffn_down: (n, hidden) */
	FWD_SITE_OUTPUT,   /* normed input of the output head: (n, dim) */
	FWD_SITE_COUNT,
};

/* Called during prefill with the activation matrix x (n_rows, n_cols),
 * row-major, borrowed for the duration of the call. layer is -1 for the
 * output head. Returning nonzero cancels the pass (QS_ECANCEL). */
typedef int (*fwd_capture_fn)(void *user, int layer, int site, const float *x, int n_rows,
			      int n_cols);

/* A context for up to max_seqs sequences of up to max_len tokens each. */
fwd_ctx *fwd_new(const model *m, int max_seqs, int max_len, qs_error *err);

/* Flags of fwd_new_flags. FWD_PREFILL_ONLY: keep the KV cache of one layer
 * only (enough for prefill, perplexity and calibration: memory independent
 * of depth); fwd_decode then refuses. */
enum { FWD_PREFILL_ONLY = 1 };
fwd_ctx *fwd_new_flags(const model *m, int max_seqs, int max_len, int flags, qs_error *err);
void fwd_free(fwd_ctx *f);

/* Re-read the model's norm weights and biases (cached as f32 at fwd_new)
 * after a quantizer replaced them. Matrices are read at every call. */
void fwd_reload(fwd_ctx *f);

/* Run the context on another model with the same configuration (e.g. a
 * quantized model derived from the one it was made for): its norms are
 * read, its matrices are read at every call. */
int fwd_set_model(fwd_ctx *f, const model *m, qs_error *err);
void fwd_set_capture(fwd_ctx *f, fwd_capture_fn fn, void *user);
/* Make fwd_layers return right after capturing `site` (enum fwd_site) of the
 * first layer it runs, leaving the residual stream unchanged: a pass that
 * only collects one sub-layer's input (GPTQ's true-sequential order). -1
 * (the default) runs every layer to the end. */
void fwd_set_stop(fwd_ctx *f, int site);

/* Threads for OpenMP loops and OpenBLAS (0: $QSCOPE_THREADS, else all cores). */
void fwd_set_threads(int n);
int fwd_threads(void);

/* Run n_seq sequences of n_tok tokens each (tokens row-major (n_seq, n_tok)),
 * positions 0..n_tok-1, filling the KV cache of each sequence slot. If logits
 * is non-NULL it receives, for each sequence, the logits of positions
 * logits_from..n_tok-1: (n_seq, n_tok - logits_from, vocab). */
int fwd_prefill(fwd_ctx *f, const int *tokens, int n_seq, int n_tok, int logits_from,
		float *logits, qs_error *err);

/* The same pass in pieces, for layer-at-a-time work (calibration, GPTQ,
 * sensitivity): fwd_embed fills the residual stream from tokens, fwd_layers
 * runs layers [l0, l1) on it in place (filling those layers' KV cache and
 * calling the capture hook), fwd_head applies the final norm and output head.
 * fwd_hidden is the residual stream: (n_seq * n_tok, dim), row-major, valid
 * for the batch last run; callers may read or replace it between calls. */
int fwd_embed(fwd_ctx *f, const int *tokens, int n_seq, int n_tok, qs_error *err);
int fwd_layers(fwd_ctx *f, int n_seq, int n_tok, int l0, int l1, qs_error *err);
int fwd_head(fwd_ctx *f, int n_seq, int n_tok, int logits_from, float *logits, qs_error *err);
float *fwd_hidden(fwd_ctx *f);

/* One token of sequence 0 at position pos (the cache must hold positions
 * 0..pos-1): logits (vocab). */
int fwd_decode(fwd_ctx *f, int token, int pos, float *logits, qs_error *err);

#endif
