#include "eval.h"

#include <math.h>
#include <omp.h>
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
	fwd_ctx *f = fwd_new_flags(m, batch, ctx, FWD_PREFILL_ONLY, err);
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

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(const double *sorted, long n, double p)
{
	if (n <= 0)
		return 0;
	double k = p * (double)(n - 1);
	long i = (long)k;
	double f = k - (double)i;
	return i + 1 < n ? sorted[i] * (1 - f) + sorted[i + 1] * f : sorted[n - 1];
}

/* KL(P || Q) over logits a (P) and b (Q), plus the probabilities of target
 * and whether the argmaxes agree. */
static double kl_row(const float *a, const float *b, int V, int target, double *pa_t,
		     double *pb_t, int *same, float *scr)
{
	double la = kn_logsumexp(a, V), lb = kn_logsumexp(b, V), kl = 0;
	const float fla = (float)la, flb = (float)lb;
	int ia = 0, ib = 0;
	for (int i = 0; i < V; i++)
		scr[i] = a[i] - fla;
	kn_exp(scr + V, scr, (size_t)V); /* p_a */
	for (int i = 0; i < V; i++) {
		kl += (double)(scr[V + i] * (scr[i] - (b[i] - flb)));
		if (a[i] > a[ia])
			ia = i;
		if (b[i] > b[ib])
			ib = i;
	}
	*pa_t = exp(a[target] - la);
	*pb_t = exp(b[target] - lb);
	*same = ia == ib;
	return kl > 0 ? kl : 0; /* rounding can give -1e-9 */
}

int eval_compare(const model *base, const model *test, const int *tokens, size_t n_tokens,
		 const eval_ppl_opts *o, eval_cmp_result *r, qs_error *err)
{
	const int ctx = o && o->ctx > 0 ? o->ctx : 512;
	const int V = base->cfg.vocab, bos = tok_bos(base->tok);
	memset(r, 0, sizeof(*r));
	if (test->cfg.vocab != V)
		return qs_err(err, QS_EUSAGE, "kld: vocabularies differ (%d vs %d)", V, test->cfg.vocab);
	if (ctx < 4 || ctx % 2 || bos < 0)
		return qs_err(err, QS_EUSAGE, "kld: context %d must be even and >= 4, with a BOS token", ctx);
	int avail = (int)(n_tokens / (size_t)ctx);
	int n_chunks = o && o->n_chunks > 0 && o->n_chunks < avail ? o->n_chunks : avail;
	if (n_chunks < 1)
		return qs_err(err, QS_EUSAGE, "kld: the text has %zu tokens, need at least %d", n_tokens, ctx);
	int batch = o && o->batch > 0 ? o->batch : 8;
	if (batch > n_chunks)
		batch = n_chunks;
	const int first = ctx / 2 - 1, per = ctx - 1 - first;
	fwd_ctx *fa = fwd_new_flags(base, batch, ctx - 1, FWD_PREFILL_ONLY, err), *fb = NULL;
	if (fa)
		fb = fwd_new_flags(test, batch, ctx - 1, FWD_PREFILL_ONLY, err);
	int *toks = malloc(sizeof(int) * (size_t)batch * ctx);
	float *la = malloc(sizeof(float) * (size_t)batch * per * V);
	float *lb = malloc(sizeof(float) * (size_t)batch * per * V);
	long total = (long)n_chunks * per;
	double *kl = malloc(sizeof(double) * (size_t)total);
	float *scr = malloc(sizeof(float) * 2 * (size_t)V * (size_t)omp_get_max_threads());
	int rc = 0;
	if (!fa || !fb || !toks || !la || !lb || !kl || !scr) {
		rc = fa && fb ? qs_err(err, QS_ENOMEM, "kld: out of memory") : (err ? err->code : QS_ENOMEM);
		goto done;
	}
	double t0 = now_s(), nll_a = 0, nll2_a = 0, nll_b = 0, nll2_b = 0, dp2 = 0;
	long same = 0, k = 0;
	for (int c0 = 0; c0 < n_chunks; c0 += batch) {
		int nb = n_chunks - c0 < batch ? n_chunks - c0 : batch;
		for (int b = 0; b < nb; b++) {
			memcpy(toks + b * (ctx - 1), tokens + (size_t)(c0 + b) * ctx,
			       sizeof(int) * (size_t)(ctx - 1));
			toks[b * (ctx - 1)] = bos;
		}
		if ((rc = fwd_prefill(fa, toks, nb, ctx - 1, first, la, err)) ||
		    (rc = fwd_prefill(fb, toks, nb, ctx - 1, first, lb, err)))
			goto done;
		for (int b = 0; b < nb; b++) {
			const int *src = tokens + (size_t)(c0 + b) * ctx;
			double s_a = 0, s2_a = 0, s_b = 0, s2_b = 0, sdp = 0;
			long s_same = 0;
#pragma omp parallel for reduction(+ : s_a, s2_a, s_b, s2_b, sdp, s_same) schedule(static)
			for (int j = 0; j < per; j++) {
				const float *ra = la + ((size_t)b * per + j) * V;
				const float *rb = lb + ((size_t)b * per + j) * V;
				int tgt = src[first + j + 1], sm;
				double pa, pb;
				kl[k + (long)b * per + j] = kl_row(ra, rb, V, tgt, &pa, &pb, &sm,
								   scr + 2 * (size_t)V * omp_get_thread_num());
				double va = -log(pa), vb = -log(pb);
				s_a += va;
				s2_a += va * va;
				s_b += vb;
				s2_b += vb * vb;
				sdp += (pb - pa) * (pb - pa);
				s_same += sm;
			}
			nll_a += s_a;
			nll2_a += s2_a;
			nll_b += s_b;
			nll2_b += s2_b;
			dp2 += sdp;
			same += s_same;
		}
		k += (long)nb * per;
		if (o && o->on_chunk && o->on_chunk(o->user, c0 + nb - 1, n_chunks, exp(nll_b / (double)k))) {
			rc = qs_err(err, QS_ECANCEL, "kld: cancelled");
			goto done;
		}
	}
	double n = (double)total;
	eval_ppl_result *pr[2] = { &r->base, &r->test };
	double sums[2][2] = { { nll_a, nll2_a }, { nll_b, nll2_b } };
	for (int i = 0; i < 2; i++) {
		double mean = sums[i][0] / n, var = sums[i][1] / n - mean * mean;
		pr[i]->nll_mean = mean;
		pr[i]->ppl = exp(mean);
		pr[i]->ppl_stderr = var > 0 && total > 1 ? pr[i]->ppl * sqrt(var / (n - 1)) : 0;
		pr[i]->chunks = n_chunks;
		pr[i]->scored = total;
		pr[i]->tokens = (long)n_chunks * ctx;
	}
	double ks = 0, ks2 = 0;
	for (long i = 0; i < total; i++) {
		ks += kl[i];
		ks2 += kl[i] * kl[i];
	}
	r->n = total;
	r->kld_mean = ks / n;
	double kv = ks2 / n - r->kld_mean * r->kld_mean;
	r->kld_stderr = kv > 0 && total > 1 ? sqrt(kv / (n - 1)) : 0;
	qsort(kl, (size_t)total, sizeof(double), cmp_double);
	r->kld_median = pct(kl, total, 0.5);
	r->kld_p90 = pct(kl, total, 0.9);
	r->kld_p99 = pct(kl, total, 0.99);
	r->kld_max = kl[total - 1];
	r->same_top_pct = 100.0 * (double)same / n;
	r->rms_dp = 100.0 * sqrt(dp2 / n);
	r->seconds = now_s() - t0;
	r->base.seconds = r->test.seconds = r->seconds / 2;
done:
	fwd_free(fa);
	fwd_free(fb);
	free(toks);
	free(la);
	free(lb);
	free(kl);
	free(scr);
	return rc;
}
