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

/* The statistics of a comparison from its per-position sums: kl (total,
 * sorted here), NLL sums and squares of base (a) and test (b). */
static void finish_cmp(eval_cmp_result *r, double *kl, long total, int n_chunks, int ctx,
		       double nll_a, double nll2_a, double nll_b, double nll2_b, long same,
		       double dp2)
{
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
	finish_cmp(r, kl, total, n_chunks, ctx, nll_a, nll2_a, nll_b, nll2_b, same, dp2);
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

/* ------------------------------------------------------------ incremental */

struct eval_cache {
	const model *base;
	fwd_ctx *f;              /* made for base; pointed at the test model per run */
	int ctx, n_chunks, batch, first, per, L, D, V;
	int *toks;               /* (n_chunks, ctx - 1) inputs, BOS first */
	int *tgt;                /* (n_chunks, per) targets */
	float *hid;              /* (L, n_chunks * (ctx - 1), dim) input of each layer */
	float *hid2;             /* the same for the last kept run's model, or NULL */
	int last_ok;             /* hid2 holds the last run's states */
	int last_from;           /* ... for layers > last_from; base's at and below */
	float *lp;               /* (n_chunks * per, V) base log-probabilities */
	float *logits;           /* (batch * per, V) scratch */
	float *scr;              /* (threads, V) scratch */
	eval_ppl_result base_r;
	double nll, nll2;        /* base: sums of -log p(target) and its square */
};

void eval_cache_free(eval_cache *c)
{
	if (!c)
		return;
	fwd_free(c->f);
	free(c->toks);
	free(c->tgt);
	free(c->hid);
	free(c->hid2);
	free(c->lp);
	free(c->logits);
	free(c->scr);
	free(c);
}

const eval_ppl_result *eval_cache_base(const eval_cache *c)
{
	return &c->base_r;
}

int eval_cache_chunks(const eval_cache *c)
{
	return c->n_chunks;
}

static float *hid_in(const eval_cache *c, float *h, int l, int c0)
{
	return h + ((size_t)l * c->n_chunks + (size_t)c0) * (size_t)(c->ctx - 1) * c->D;
}

static float *hid_at(const eval_cache *c, int l, int c0)
{
	return hid_in(c, c->hid, l, c0);
}

int eval_cache_keep(eval_cache *c, qs_error *err)
{
	if (!c->hid2 &&
	    !(c->hid2 = malloc(sizeof(float) * (size_t)c->L * c->n_chunks * (size_t)(c->ctx - 1) * c->D)))
		return qs_err(err, QS_ENOMEM, "eval: out of memory for a second copy of the cached states");
	c->last_ok = 0;
	return 0;
}

eval_cache *eval_cache_new(const model *base, const int *tokens, size_t n_tokens, int n_chunks,
			   int ctx, qs_error *err)
{
	const int bos = tok_bos(base->tok);
	if (ctx <= 0)
		ctx = 512;
	if (ctx < 4 || ctx % 2 || bos < 0) {
		qs_err(err, QS_EUSAGE, "eval: context %d must be even and >= 4, with a BOS token", ctx);
		return NULL;
	}
	int avail = (int)(n_tokens / (size_t)ctx);
	if (n_chunks <= 0 || n_chunks > avail)
		n_chunks = avail;
	if (n_chunks < 1) {
		qs_err(err, QS_EUSAGE, "eval: the text has %zu tokens, need at least %d", n_tokens, ctx);
		return NULL;
	}
	eval_cache *c = calloc(1, sizeof(*c));
	if (!c) {
		qs_err(err, QS_ENOMEM, "eval: out of memory");
		return NULL;
	}
	c->base = base;
	c->ctx = ctx;
	c->n_chunks = n_chunks;
	c->batch = n_chunks < 8 ? n_chunks : 8;
	c->first = ctx / 2 - 1;
	c->per = ctx - 1 - c->first;
	c->L = base->cfg.n_layers;
	c->D = base->cfg.dim;
	c->V = base->cfg.vocab;
	const size_t T = (size_t)ctx - 1, V = (size_t)c->V;
	c->f = fwd_new_flags(base, c->batch, ctx - 1, FWD_PREFILL_ONLY, err);
	if (!c->f)
		goto fail_quiet;
	c->toks = malloc(sizeof(int) * (size_t)n_chunks * T);
	c->tgt = malloc(sizeof(int) * (size_t)n_chunks * c->per);
	c->hid = malloc(sizeof(float) * (size_t)c->L * n_chunks * T * c->D);
	c->lp = malloc(sizeof(float) * (size_t)n_chunks * c->per * V);
	c->logits = malloc(sizeof(float) * (size_t)c->batch * c->per * V);
	c->scr = malloc(sizeof(float) * V * (size_t)omp_get_max_threads());
	if (!c->toks || !c->tgt || !c->hid || !c->lp || !c->logits || !c->scr) {
		qs_err(err, QS_ENOMEM, "eval: out of memory for %d cached chunks", n_chunks);
		goto fail_quiet;
	}
	for (int k = 0; k < n_chunks; k++) {
		const int *src = tokens + (size_t)k * ctx;
		memcpy(c->toks + (size_t)k * T, src, sizeof(int) * T);
		c->toks[(size_t)k * T] = bos;
		memcpy(c->tgt + (size_t)k * c->per, src + c->first + 1, sizeof(int) * (size_t)c->per);
	}
	double t0 = now_s(), nll = 0, nll2 = 0;
	for (int c0 = 0; c0 < n_chunks; c0 += c->batch) {
		int nb = n_chunks - c0 < c->batch ? n_chunks - c0 : c->batch;
		if (fwd_embed(c->f, c->toks + (size_t)c0 * T, nb, (int)T, err))
			goto fail_quiet;
		for (int l = 0; l < c->L; l++) {
			memcpy(hid_at(c, l, c0), fwd_hidden(c->f), sizeof(float) * nb * T * c->D);
			if (fwd_layers(c->f, nb, (int)T, l, l + 1, err))
				goto fail_quiet;
		}
		if (fwd_head(c->f, nb, (int)T, c->first, c->lp + (size_t)c0 * c->per * V, err))
			goto fail_quiet;
		long rows = (long)nb * c->per;
		float *lp0 = c->lp + (size_t)c0 * c->per * V;
		const int *tg = c->tgt + (size_t)c0 * c->per;
#pragma omp parallel for reduction(+ : nll, nll2) schedule(static)
		for (long i = 0; i < rows; i++) {
			float *row = lp0 + (size_t)i * V;
			float lse = (float)kn_logsumexp(row, c->V);
			for (size_t j = 0; j < V; j++)
				row[j] -= lse;
			double v = -(double)row[tg[i]];
			nll += v;
			nll2 += v * v;
		}
	}
	long n = (long)n_chunks * c->per;
	c->nll = nll;
	c->nll2 = nll2;
	double mean = nll / (double)n, var = nll2 / (double)n - mean * mean;
	c->base_r.nll_mean = mean;
	c->base_r.ppl = exp(mean);
	c->base_r.ppl_stderr = var > 0 && n > 1 ? c->base_r.ppl * sqrt(var / (double)(n - 1)) : 0;
	c->base_r.chunks = n_chunks;
	c->base_r.scored = n;
	c->base_r.tokens = (long)n_chunks * ctx;
	c->base_r.seconds = now_s() - t0;
	c->base_r.gflop = eval_flops(&base->cfg, n_chunks, ctx - 1, c->per) * 1e-9;
	return c;
fail_quiet:
	eval_cache_free(c);
	return NULL;
}

/* from_layer -1: the embeddings differ too. since_last: test equals the
 * last kept run's model below from_layer (else: equals base there). */
static int cache_run(eval_cache *c, const model *test, int from_layer, int since_last,
		     eval_cmp_result *r, qs_error *err)
{
	memset(r, 0, sizeof(*r));
	if (from_layer < -1 || from_layer > c->L)
		return qs_err(err, QS_EUSAGE, "eval: layer %d out of range -1..%d", from_layer, c->L);
	if (since_last && !c->last_ok)
		return qs_err(err, QS_EUSAGE, "eval: no kept run to continue from");
	int rc = fwd_set_model(c->f, test, err);
	if (rc)
		return rc;
	const size_t T = (size_t)c->ctx - 1, V = (size_t)c->V;
	/* the layer to start at (the head alone reruns the last layer) and
	 * where its input comes from */
	const int start = from_layer < 0 ? 0 : from_layer < c->L ? from_layer : c->L - 1;
	float *src = since_last && start > c->last_from ? c->hid2 : c->hid;
	c->last_ok = 0; /* hid2 is being rewritten */
	long total = (long)c->n_chunks * c->per;
	double *kl = malloc(sizeof(double) * (size_t)total);
	if (!kl) {
		fwd_set_model(c->f, c->base, NULL);
		return qs_err(err, QS_ENOMEM, "eval: out of memory");
	}
	double t0 = now_s(), nll_b = 0, nll2_b = 0, dp2 = 0;
	long same = 0;
	for (int c0 = 0; c0 < c->n_chunks; c0 += c->batch) {
		int nb = c->n_chunks - c0 < c->batch ? c->n_chunks - c0 : c->batch;
		const size_t bytes = sizeof(float) * nb * T * c->D;
		if (from_layer < 0)
			rc = fwd_embed(c->f, c->toks + (size_t)c0 * T, nb, (int)T, err);
		else
			memcpy(fwd_hidden(c->f), hid_in(c, src, start, c0), bytes);
		for (int l = start; !rc && l < c->L; l++) {
			if (c->hid2 && (l > start || from_layer < 0)) /* keep the test model's states */
				memcpy(hid_in(c, c->hid2, l, c0), fwd_hidden(c->f), bytes);
			rc = fwd_layers(c->f, nb, (int)T, l, l + 1, err);
		}
		if (rc || (rc = fwd_head(c->f, nb, (int)T, c->first, c->logits, err)))
			break;
		long rows = (long)nb * c->per;
		const float *lp0 = c->lp + (size_t)c0 * c->per * V;
		const int *tg = c->tgt + (size_t)c0 * c->per;
		double *klo = kl + (long)c0 * c->per;
#pragma omp parallel for reduction(+ : nll_b, nll2_b, dp2, same) schedule(static)
		for (long i = 0; i < rows; i++) {
			const float *a = lp0 + (size_t)i * V, *b = c->logits + (size_t)i * V;
			float *pa = c->scr + V * (size_t)omp_get_thread_num();
			float lb = (float)kn_logsumexp(b, c->V);
			kn_exp(pa, a, V);
			double s = 0;
			size_t ia = 0, ib = 0;
			for (size_t j = 0; j < V; j++) {
				s += (double)(pa[j] * (a[j] - (b[j] - lb)));
				if (a[j] > a[ia])
					ia = j;
				if (b[j] > b[ib])
					ib = j;
			}
			klo[i] = s > 0 ? s : 0;
			double v = (double)lb - b[tg[i]];
			nll_b += v;
			nll2_b += v * v;
			double d = exp(-v) - exp((double)a[tg[i]]);
			dp2 += d * d;
			same += ia == ib;
		}
	}
	if (!rc) {
		finish_cmp(r, kl, total, c->n_chunks, c->ctx, c->nll, c->nll2, nll_b, nll2_b, same,
			   dp2);
		r->base = c->base_r;
		r->seconds = now_s() - t0;
		r->test.seconds = r->seconds;
		if (c->hid2) {
			/* below last_from the model is base's; above, hid2 has it */
			int lf = since_last && c->last_from < from_layer ? c->last_from : from_layer;
			c->last_from = lf < start ? lf : start;
			c->last_ok = 1;
		}
	}
	free(kl);
	fwd_set_model(c->f, c->base, NULL);
	return rc;
}

int eval_cache_run(eval_cache *c, const model *test, int from_layer, eval_cmp_result *r,
		   qs_error *err)
{
	return cache_run(c, test, from_layer, 0, r, err);
}

int eval_cache_run_last(eval_cache *c, const model *test, int from_layer, eval_cmp_result *r,
			qs_error *err)
{
	return cache_run(c, test, from_layer, 1, r, err);
}

int eval_cache_has_last(const eval_cache *c)
{
	return c->last_ok;
}
