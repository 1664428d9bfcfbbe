#include "eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels/ops.h"
#include "forward.h"

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

double eval_flops(const model_config *c, int n_seq, int n_tok, int n_logits)
{
	double D = c->dim, hd = c->head_dim, qd = (double)c->n_heads * hd;
	double kvd = (double)c->n_kv_heads * hd, H = c->hidden;
	double lin = 2.0 * (D * (qd + 2 * kvd) + qd * D + 3.0 * D * H); /* per token per layer */
	double pairs = (double)n_tok * (n_tok + 1) / 2.0;                /* causal (q, k) pairs */
	double attn = 2.0 * 2.0 * c->n_heads * hd * pairs;              /* QK^T and PV */
	double per_seq = c->n_layers * (lin * n_tok + attn) + 2.0 * D * c->vocab * n_logits;
	return per_seq * n_seq;
}

int eval_ppl(const model *m, const int *tokens, size_t n_tokens, const eval_ppl_opts *o,
	     eval_ppl_result *r, qs_error *err)
{
	const int ctx = o && o->ctx > 0 ? o->ctx : 512;
	const int V = m->cfg.vocab;
	const int bos = tok_bos(m->tok);
	if (ctx < 4 || ctx % 2)
		return qs_err(err, QS_EUSAGE, "ppl: context %d must be even and >= 4", ctx);
	if (bos < 0)
		return qs_err(err, QS_EUSAGE, "ppl: the tokenizer has no BOS token");
	int avail = (int)(n_tokens / (size_t)ctx);
	int n_chunks = o && o->n_chunks > 0 && o->n_chunks < avail ? o->n_chunks : avail;
	if (n_chunks < 1)
		return qs_err(err, QS_EUSAGE, "ppl: the text has %zu tokens, need at least %d (one chunk)",
			      n_tokens, ctx);
	int batch = o && o->batch > 0 ? o->batch : (ctx <= 512 ? 8 : 4096 / ctx + 1);
	if (batch > n_chunks)
		batch = n_chunks;
	const int first = ctx / 2 - 1;  /* logits at positions first..ctx-2 */
	const int per = ctx - 1 - first; /* = ctx/2 targets at positions ctx/2..ctx-1 */
	fwd_ctx *f = fwd_new(m, batch, ctx, err);
	int *toks = malloc(sizeof(int) * (size_t)batch * ctx);
	float *logits = malloc(sizeof(float) * (size_t)batch * per * V);
	int rc = 0;
	if (!f || !toks || !logits) {
		rc = f ? qs_err(err, QS_ENOMEM, "ppl: out of memory") : (err ? err->code : QS_ENOMEM);
		goto done;
	}
	double t0 = now_s(), nll = 0, nll2 = 0;
	long count = 0;
	for (int c0 = 0; c0 < n_chunks; c0 += batch) {
		int nb = n_chunks - c0 < batch ? n_chunks - c0 : batch;
		for (int b = 0; b < nb; b++) {
			const int *src = tokens + (size_t)(c0 + b) * ctx;
			for (int j = 0; j < ctx; j++)
				toks[b * ctx + j] = src[j];
			toks[b * ctx] = bos;
		}
		/* the last token of a chunk is only a target: run ctx - 1 positions */
		for (int b = 1; b < nb; b++)
			memmove(toks + b * (ctx - 1), toks + b * ctx, sizeof(int) * (size_t)(ctx - 1));
		if ((rc = fwd_prefill(f, toks, nb, ctx - 1, first, logits, err)))
			goto done;
		for (int b = 0; b < nb; b++) {
			const int *src = tokens + (size_t)(c0 + b) * ctx;
			double cs = 0, cs2 = 0;
#pragma omp parallel for reduction(+ : cs, cs2) schedule(static)
			for (int j = 0; j < per; j++) {
				const float *row = logits + ((size_t)b * per + j) * V;
				double v = kn_logsumexp(row, V) - row[src[first + j + 1]];
				cs += v;
				cs2 += v * v;
			}
			nll += cs;
			nll2 += cs2;
			count += per;
			if (o && o->on_chunk &&
			    o->on_chunk(o->user, c0 + b, n_chunks, exp(nll / (double)count))) {
				rc = qs_err(err, QS_ECANCEL, "ppl: cancelled");
				goto done;
			}
		}
	}
	double mean = nll / (double)count, var = nll2 / (double)count - mean * mean;
	r->nll_mean = mean;
	r->ppl = exp(mean);
	r->ppl_stderr = var > 0 && count > 1 ? r->ppl * sqrt(var / (double)(count - 1)) : 0;
	r->chunks = n_chunks;
	r->scored = count;
	r->tokens = (long)n_chunks * ctx;
	r->seconds = now_s() - t0;
	r->gflop = eval_flops(&m->cfg, n_chunks, ctx - 1, per) * 1e-9;
done:
	fwd_free(f);
	free(toks);
	free(logits);
	return rc;
}
