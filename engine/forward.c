#include "forward.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "../kernels/qmatrix.h"
#include "quant.h"
#include "../kernels/types.h"

#define QBLOCK 128 /* query rows per attention block in prefill */

struct fwd_ctx {
	const model *m;
	model_config c;
	int max_seqs, max_len;
	int qd, kvd, qkv_w;     /* n_heads*hd, n_kv_heads*hd, qd + 2*kvd */
	float *rope;            /* (max_len, hd/2, 2) cos, sin */
	float *attn_norm;       /* (n_layers, dim) */
	float *ffn_norm;        /* (n_layers, dim) */
	float *out_norm;        /* (dim) */
	float *bias;            /* (n_layers, qkv_w) or NULL */
	float *x;               /* (N, dim) residual stream, N = max_seqs*max_len */
	float *xn;              /* (N, dim) normed */
	float *qkv;             /* (N, qkv_w) */
	float *att;             /* (N, qd) */
	float *gu;              /* (N, 2*hidden) gate | up */
	float *h;               /* (N, hidden) silu(gate) * up */
	float *kc, *vc;         /* (n_layers, max_seqs, max_len, kvd) */
	float *w;               /* dequantized weight scratch */
	size_t w_cap;           /* its floats */
	float *scores;          /* (n_threads, QBLOCK, max_len) */
	int n_score_threads;
	float *dec;             /* decode scratch */
	fwd_capture_fn cap;
	void *cap_user;
	int stop_site;          /* fwd_layers returns after capturing this site (-1: never) */
	int kv_layers;          /* layers with their own KV cache: n_layers, or 1
				 * for prefill-only contexts (no decode follows) */
};

static int g_threads;

void fwd_set_threads(int n)
{
	if (n <= 0) {
		const char *e = getenv("QSCOPE_THREADS");
		n = e ? atoi(e) : 0;
	}
	if (n <= 0 || n > 4096)
		n = omp_get_num_procs();
	g_threads = n;
	omp_set_num_threads(n);
	openblas_set_num_threads(n);
}

int fwd_threads(void)
{
	if (g_threads <= 0)
		fwd_set_threads(0);
	return g_threads;
}

/* Convert a whole tensor to f32 (rows in parallel). */
static void to_f32(const model_tensor *t, float *dst)
{
	if (t->q) {
		kn_qmatrix_dequant(t->q, 0, t->q->rows, dst);
		return;
	}
	const kn_type_traits *tr = kn_traits(t->type);
	size_t rs = kn_row_size(t->type, (size_t)t->ne[0]);
	const unsigned char *src = t->data;
	long rows = (long)t->ne[1];
	size_t n = (size_t)t->ne[0];
#pragma omp parallel for schedule(static) if (rows * (long)n > 65536)
	for (long r = 0; r < rows; r++)
		tr->to_float(src + (size_t)r * rs, dst + (size_t)r * n, n);
}

static void *xalloc(size_t n, int *bad)
{
	void *p = NULL;
	if (posix_memalign(&p, 64, n ? n : 64) != 0) {
		*bad = 1;
		return NULL;
	}
	return p;
}

fwd_ctx *fwd_new(const model *m, int max_seqs, int max_len, qs_error *err)
{
	return fwd_new_flags(m, max_seqs, max_len, 0, err);
}

fwd_ctx *fwd_new_flags(const model *m, int max_seqs, int max_len, int flags, qs_error *err)
{
	const model_config *c = &m->cfg;
	if (max_seqs < 1 || max_len < 1 || max_seqs > 4096 || max_len > (1 << 20)) {
		qs_err(err, QS_EUSAGE, "forward: bad batch %d x %d", max_seqs, max_len);
		return NULL;
	}
	fwd_ctx *f = calloc(1, sizeof(*f));
	if (!f) {
		qs_err(err, QS_ENOMEM, "forward: out of memory");
		return NULL;
	}
	fwd_threads();
	f->m = m;
	f->c = *c;
	f->max_seqs = max_seqs;
	f->max_len = max_len;
	int hd = c->head_dim, L = c->n_layers, D = c->dim, H = c->hidden;
	f->qd = c->n_heads * hd;
	f->kvd = c->n_kv_heads * hd;
	f->qkv_w = f->qd + 2 * f->kvd;
	size_t N = (size_t)max_seqs * (size_t)max_len;
	/* layer matrices only: the output head's (vocab x dim) is made on the
	 * first fwd_head that asks for logits (calibration never does) */
	size_t wmax = (size_t)f->qkv_w * D;
	size_t cand[] = { (size_t)2 * H * D, (size_t)D * H, (size_t)D * f->qd };
	for (size_t i = 0; i < sizeof(cand) / sizeof(cand[0]); i++)
		wmax = cand[i] > wmax ? cand[i] : wmax;
	int bad = 0;
	f->n_score_threads = omp_get_max_threads();
	f->rope = xalloc(sizeof(float) * (size_t)max_len * hd, &bad);
	f->attn_norm = xalloc(sizeof(float) * (size_t)L * D, &bad);
	f->ffn_norm = xalloc(sizeof(float) * (size_t)L * D, &bad);
	f->out_norm = xalloc(sizeof(float) * D, &bad);
	f->x = xalloc(sizeof(float) * N * D, &bad);
	f->xn = xalloc(sizeof(float) * N * D, &bad);
	f->qkv = xalloc(sizeof(float) * N * f->qkv_w, &bad);
	f->att = xalloc(sizeof(float) * N * f->qd, &bad);
	f->gu = xalloc(sizeof(float) * N * 2 * H, &bad);
	f->h = xalloc(sizeof(float) * N * H, &bad);
	f->kv_layers = flags & FWD_PREFILL_ONLY ? 1 : L;
	f->kc = xalloc(sizeof(float) * f->kv_layers * N * f->kvd, &bad);
	f->vc = xalloc(sizeof(float) * f->kv_layers * N * f->kvd, &bad);
	f->w = xalloc(sizeof(float) * wmax, &bad);
	f->w_cap = wmax;
	f->scores = xalloc(sizeof(float) * f->n_score_threads * QBLOCK * max_len, &bad);
	f->dec = xalloc(sizeof(float) * (size_t)(8 * D + 2 * f->qkv_w + 3 * H + c->vocab +
						 c->n_heads * (size_t)max_len), &bad);
	if (c->attn_bias)
		f->bias = xalloc(sizeof(float) * L * f->qkv_w, &bad);
	if (bad) {
		fwd_free(f);
		qs_err(err, QS_ENOMEM, "forward: out of memory for a %d x %d batch", max_seqs, max_len);
		return NULL;
	}
	/* rope table: theta^(-2i/hd) computed as PyTorch does, in float32 */
	for (int p = 0; p < max_len; p++)
		for (int i = 0; i < hd / 2; i++) {
			float inv = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)hd);
			float a = (float)p * inv;
			f->rope[((size_t)p * (hd / 2) + i) * 2] = cosf(a);
			f->rope[((size_t)p * (hd / 2) + i) * 2 + 1] = sinf(a);
		}
	f->stop_site = -1;
	fwd_reload(f);
	return f;
}

void fwd_reload(fwd_ctx *f)
{
	const model *m = f->m;
	const model_config *c = &f->c;
	const int D = c->dim, L = c->n_layers;
	for (int l = 0; l < L; l++) {
		to_f32(m->layers[l].attn_norm, f->attn_norm + (size_t)l * D);
		to_f32(m->layers[l].ffn_norm, f->ffn_norm + (size_t)l * D);
		if (f->bias) {
			float *b = f->bias + (size_t)l * f->qkv_w;
			to_f32(m->layers[l].bq, b);
			to_f32(m->layers[l].bk, b + f->qd);
			to_f32(m->layers[l].bv, b + f->qd + f->kvd);
		}
	}
	to_f32(m->out_norm, f->out_norm);
}

int fwd_set_model(fwd_ctx *f, const model *m, qs_error *err)
{
	const model_config *a = &f->c, *b = &m->cfg;
	if (a->vocab != b->vocab || a->dim != b->dim || a->n_layers != b->n_layers ||
	    a->n_heads != b->n_heads || a->n_kv_heads != b->n_kv_heads ||
	    a->head_dim != b->head_dim || a->hidden != b->hidden || a->rope_style != b->rope_style ||
	    a->rope_theta != b->rope_theta || a->eps != b->eps || a->attn_bias != b->attn_bias)
		return qs_err(err, QS_EUSAGE, "forward: model %s has another configuration", m->path);
	f->m = m;
	fwd_reload(f);
	return 0;
}

void fwd_free(fwd_ctx *f)
{
	if (!f)
		return;
	free(f->rope);
	free(f->attn_norm);
	free(f->ffn_norm);
	free(f->out_norm);
	free(f->bias);
	free(f->x);
	free(f->xn);
	free(f->qkv);
	free(f->att);
	free(f->gu);
	free(f->h);
	free(f->kc);
	free(f->vc);
	free(f->w);
	free(f->scores);
	free(f->dec);
	free(f);
}

void fwd_set_stop(fwd_ctx *f, int site) { f->stop_site = site; }

void fwd_set_capture(fwd_ctx *f, fwd_capture_fn fn, void *user)
{
	f->cap = fn;
	f->cap_user = user;
}

/* Show x to the capture hook, then apply the model's simulated activation
 * quantization for this site (if any) in place. */
static int capture(fwd_ctx *f, int layer, int site, float *x, int rows, int cols,
		   qs_error *err)
{
	if (f->cap && f->cap(f->cap_user, layer, site, x, rows, cols))
		return qs_err(err, QS_ECANCEL, "cancelled");
	const model_actq *aq = f->m->actq;
	if (aq && layer >= 0 && site < 4) {
		const model_actq_site *s = &aq->site[layer * 4 + site];
		if (s->bits)
			quant_act(x, rows, cols, s->bits, s->per_token, s->scale, s->keep);
	}
	return 0;
}

static void embed_row(const model_tensor *t, int tok, float *dst)
{
	if (t->q) {
		kn_qmatrix_dequant(t->q, tok, tok + 1, dst);
		return;
	}
	const kn_type_traits *tr = kn_traits(t->type);
	size_t rs = kn_row_size(t->type, (size_t)t->ne[0]);
	tr->to_float((const unsigned char *)t->data + (size_t)tok * rs, dst, (size_t)t->ne[0]);
}

/* Y (n, out) = X (n, in) . W^T with W (out, in) already f32 in f->w. */
static void gemm(int n, int out, int in, const float *X, const float *W, float *Y)
{
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, X, in, W, in, 0.0f,
		    Y, out);
}

static void rmsnorm_rows(float *y, const float *x, const float *w, long rows, int n, float eps)
{
#pragma omp parallel for schedule(static)
	for (long r = 0; r < rows; r++)
		kn_rmsnorm(y + r * n, x + r * n, w, n, eps);
}

static int check_batch(const fwd_ctx *f, int n_seq, int n_tok, qs_error *err)
{
	if (n_seq < 1 || n_seq > f->max_seqs || n_tok < 1 || n_tok > f->max_len)
		return qs_err(err, QS_EUSAGE, "forward: batch %d x %d exceeds %d x %d", n_seq, n_tok,
			      f->max_seqs, f->max_len);
	return 0;
}

int fwd_embed(fwd_ctx *f, const int *tokens, int n_seq, int n_tok, qs_error *err)
{
	const int D = f->c.dim, V = f->c.vocab;
	int rc = check_batch(f, n_seq, n_tok, err);
	if (rc)
		return rc;
	const long N = (long)n_seq * n_tok;
	for (long i = 0; i < N; i++)
		if (tokens[i] < 0 || tokens[i] >= V)
			return qs_err(err, QS_EUSAGE, "forward: token id %d out of range [0, %d)",
				      tokens[i], V);
#pragma omp parallel for schedule(static)
	for (long i = 0; i < N; i++)
		embed_row(f->m->tok_embd, tokens[i], f->x + i * D);
	return 0;
}

float *fwd_hidden(fwd_ctx *f) { return f->x; }

int fwd_prefill(fwd_ctx *f, const int *tokens, int n_seq, int n_tok, int logits_from,
		float *logits, qs_error *err)
{
	int rc;
	if ((rc = fwd_embed(f, tokens, n_seq, n_tok, err)) ||
	    (rc = fwd_layers(f, n_seq, n_tok, 0, f->c.n_layers, err)))
		return rc;
	return fwd_head(f, n_seq, n_tok, logits_from, logits, err);
}

int fwd_layers(fwd_ctx *f, int n_seq, int n_tok, int l0, int l1, qs_error *err)
{
	const model *m = f->m;
	const model_config *c = &f->c;
	int rc0 = check_batch(f, n_seq, n_tok, err);
	if (rc0)
		return rc0;
	if (l0 < 0 || l1 > c->n_layers || l0 > l1)
		return qs_err(err, QS_EUSAGE, "forward: layers [%d, %d) outside [0, %d)", l0, l1,
			      c->n_layers);
	const int D = c->dim, H = c->hidden, hd = c->head_dim;
	const int qd = f->qd, kvd = f->kvd, qw = f->qkv_w;
	const int grp = c->n_heads / c->n_kv_heads;
	const long N = (long)n_seq * n_tok;
	const float scale = 1.0f / sqrtf((float)hd);
	const int nqb = (n_tok + QBLOCK - 1) / QBLOCK;
	for (int l = l0; l < l1; l++) {
		const model_layer *ly = &m->layers[l];
		int rc;
		/* attention */
		rmsnorm_rows(f->xn, f->x, f->attn_norm + (size_t)l * D, N, D, c->eps);
		if ((rc = capture(f, l, FWD_SITE_QKV, f->xn, (int)N, D, err)))
			return rc;
		if (f->stop_site == FWD_SITE_QKV)
			return 0;
		to_f32(ly->wq, f->w);
		to_f32(ly->wk, f->w + (size_t)qd * D);
		to_f32(ly->wv, f->w + (size_t)(qd + kvd) * D);
		gemm((int)N, qw, D, f->xn, f->w, f->qkv);
		const size_t kl = f->kv_layers == 1 ? 0 : (size_t)l;
		float *kc = f->kc + kl * f->max_seqs * f->max_len * kvd;
		float *vc = f->vc + kl * f->max_seqs * f->max_len * kvd;
		const float *bias = f->bias ? f->bias + (size_t)l * qw : NULL;
#pragma omp parallel for schedule(static)
		for (long i = 0; i < N; i++) {
			float *row = f->qkv + i * qw;
			int s = (int)(i / n_tok), p = (int)(i % n_tok);
			if (bias)
				for (int j = 0; j < qw; j++)
					row[j] += bias[j];
			const float *cs = f->rope + (size_t)p * hd;
			for (int h = 0; h < c->n_heads; h++)
				kn_rope(row + h * hd, cs, hd, c->rope_style);
			for (int h = 0; h < c->n_kv_heads; h++)
				kn_rope(row + qd + h * hd, cs, hd, c->rope_style);
			size_t ci = ((size_t)s * f->max_len + p) * kvd;
			memcpy(kc + ci, row + qd, sizeof(float) * kvd);
			memcpy(vc + ci, row + qd + kvd, sizeof(float) * kvd);
		}
		const int n_items = n_seq * c->n_heads * nqb;
#pragma omp parallel for schedule(dynamic, 1)
		for (int it = 0; it < n_items; it++) {
			/* largest query blocks first for balance */
			int qb = nqb - 1 - it % nqb, h = (it / nqb) % c->n_heads, s = it / nqb / c->n_heads;
			int q0 = qb * QBLOCK, q1 = q0 + QBLOCK < n_tok ? q0 + QBLOCK : n_tok;
			int nq = q1 - q0, nk = q1;
			int kh = h / grp;
			float *S = f->scores + (size_t)omp_get_thread_num() * QBLOCK * f->max_len;
			const float *Q = f->qkv + ((long)s * n_tok + q0) * qw + h * hd;
			const float *K = kc + (size_t)s * f->max_len * kvd + kh * hd;
			const float *Vv = vc + (size_t)s * f->max_len * kvd + kh * hd;
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hd, scale, Q, qw,
				    K, kvd, 0.0f, S, nk);
			for (int i = 0; i < nq; i++) {
				float *srow = S + (size_t)i * nk;
				int len = q0 + i + 1;
				kn_softmax(srow, len);
				memset(srow + len, 0, sizeof(float) * (size_t)(nk - len));
			}
			float *O = f->att + ((long)s * n_tok + q0) * qd + h * hd;
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, nk, 1.0f, S, nk,
				    Vv, kvd, 0.0f, O, qd);
		}
		if ((rc = capture(f, l, FWD_SITE_ATTN_OUT, f->att, (int)N, qd, err)))
			return rc;
		if (f->stop_site == FWD_SITE_ATTN_OUT)
			return 0;
		to_f32(ly->wo, f->w);
		/* x += att . Wo^T */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, D, qd, 1.0f, f->att, qd,
			    f->w, qd, 1.0f, f->x, D);
		/* feed-forward */
		rmsnorm_rows(f->xn, f->x, f->ffn_norm + (size_t)l * D, N, D, c->eps);
		if ((rc = capture(f, l, FWD_SITE_FFN_IN, f->xn, (int)N, D, err)))
			return rc;
		if (f->stop_site == FWD_SITE_FFN_IN)
			return 0;
		to_f32(ly->w_gate, f->w);
		to_f32(ly->w_up, f->w + (size_t)H * D);
		gemm((int)N, 2 * H, D, f->xn, f->w, f->gu);
#pragma omp parallel for schedule(static)
		for (long i = 0; i < N; i++)
			kn_swiglu(f->h + i * H, f->gu + i * 2 * H, f->gu + i * 2 * H + H, (size_t)H);
		if ((rc = capture(f, l, FWD_SITE_FFN_DOWN, f->h, (int)N, H, err)))
			return rc;
		if (f->stop_site == FWD_SITE_FFN_DOWN)
			return 0;
		to_f32(ly->w_down, f->w);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, D, H, 1.0f, f->h, H,
			    f->w, H, 1.0f, f->x, D);
	}
	return 0;
}

int fwd_head(fwd_ctx *f, int n_seq, int n_tok, int logits_from, float *logits, qs_error *err)
{
	const model_config *c = &f->c;
	const int D = c->dim, V = c->vocab;
	int rc = check_batch(f, n_seq, n_tok, err);
	if (rc)
		return rc;
	if (logits_from < 0 || logits_from >= n_tok)
		return qs_err(err, QS_EUSAGE, "forward: logits from position %d of %d", logits_from,
			      n_tok);
	/* output head on the requested positions only */
	const int per = n_tok - logits_from;
	const long R = (long)n_seq * per;
#pragma omp parallel for schedule(static)
	for (long r = 0; r < R; r++) {
		long src = (r / per) * n_tok + logits_from + r % per;
		kn_rmsnorm(f->xn + r * D, f->x + src * D, f->out_norm, D, c->eps);
	}
	if ((rc = capture(f, -1, FWD_SITE_OUTPUT, f->xn, (int)R, D, err)))
		return rc;
	if (logits) {
		size_t need = (size_t)V * D;
		if (need > f->w_cap) {
			float *w = realloc(f->w, sizeof(float) * need);
			if (!w)
				return qs_err(err, QS_ENOMEM, "forward: out of memory for the output head");
			f->w = w;
			f->w_cap = need;
		}
		to_f32(f->m->output, f->w);
		gemm((int)R, V, D, f->xn, f->w, logits);
	}
	return 0;
}

/* y (rows) = W x, rows split across threads */
static void matvec(const model_tensor *t, const float *x, float *y)
{
	int rows = (int)t->ne[1], n = (int)t->ne[0];
	if (t->q) {
#pragma omp parallel for schedule(static) if ((long)rows * n > 32768)
		for (int r = 0; r < rows; r++)
			y[r] = kn_qmatrix_dot(t->q, r, x);
		return;
	}
	int nt = omp_get_max_threads();
	int chunk = (rows + nt * 4 - 1) / (nt * 4);
	if (chunk < 16)
		chunk = 16;
#pragma omp parallel for schedule(dynamic, 1) if ((long)rows * n > 32768)
	for (int r0 = 0; r0 < rows; r0 += chunk) {
		int r1 = r0 + chunk < rows ? r0 + chunk : rows;
		kn_matvec(t->type, t->data, x, y, n, r0, r1);
	}
}

static void act_quant_row(const fwd_ctx *f, int layer, int site, float *x, int cols)
{
	const model_actq *aq = f->m->actq;
	if (!aq)
		return;
	const model_actq_site *s = &aq->site[layer * 4 + site];
	if (s->bits)
		quant_act(x, 1, cols, s->bits, s->per_token, s->scale, s->keep);
}

int fwd_decode(fwd_ctx *f, int token, int pos, float *logits, qs_error *err)
{
	const model *m = f->m;
	const model_config *c = &f->c;
	if (pos < 0 || pos >= f->max_len)
		return qs_err(err, QS_EUSAGE, "forward: position %d outside the context (%d)", pos,
			      f->max_len);
	if (token < 0 || token >= c->vocab)
		return qs_err(err, QS_EUSAGE, "forward: token id %d out of range", token);
	if (f->kv_layers != c->n_layers)
		return qs_err(err, QS_EUSAGE, "forward: this context was made for prefill only");
	const int D = c->dim, H = c->hidden, hd = c->head_dim, L = c->n_layers;
	const int qd = f->qd, kvd = f->kvd, grp = c->n_heads / c->n_kv_heads;
	float *x = f->dec, *xn = x + D, *q = xn + D, *k = q + qd, *v = k + kvd;
	float *att = v + kvd, *o = att + qd, *g = o + D, *u = g + H, *sc = u + H;
	embed_row(m->tok_embd, token, x);
	const float scale = 1.0f / sqrtf((float)hd);
	const float *cs = f->rope + (size_t)pos * hd;
	for (int l = 0; l < L; l++) {
		const model_layer *ly = &m->layers[l];
		kn_rmsnorm(xn, x, f->attn_norm + (size_t)l * D, D, c->eps);
		act_quant_row(f, l, FWD_SITE_QKV, xn, D);
		matvec(ly->wq, xn, q);
		matvec(ly->wk, xn, k);
		matvec(ly->wv, xn, v);
		if (f->bias) {
			const float *b = f->bias + (size_t)l * f->qkv_w;
			for (int j = 0; j < qd; j++) q[j] += b[j];
			for (int j = 0; j < kvd; j++) k[j] += b[qd + j];
			for (int j = 0; j < kvd; j++) v[j] += b[qd + kvd + j];
		}
		for (int h = 0; h < c->n_heads; h++)
			kn_rope(q + h * hd, cs, hd, c->rope_style);
		for (int h = 0; h < c->n_kv_heads; h++)
			kn_rope(k + h * hd, cs, hd, c->rope_style);
		float *kc = f->kc + (size_t)l * f->max_seqs * f->max_len * kvd;
		float *vc = f->vc + (size_t)l * f->max_seqs * f->max_len * kvd;
		memcpy(kc + (size_t)pos * kvd, k, sizeof(float) * kvd);
		memcpy(vc + (size_t)pos * kvd, v, sizeof(float) * kvd);
		for (int h = 0; h < c->n_heads; h++) {
			int kh = h / grp;
			float *s = sc + (size_t)h * f->max_len;
			for (int t = 0; t <= pos; t++)
				s[t] = kn_dot_f32(q + h * hd, kc + (size_t)t * kvd + kh * hd, hd) * scale;
			kn_softmax(s, pos + 1);
			float *oh = att + h * hd;
			memset(oh, 0, sizeof(float) * hd);
			for (int t = 0; t <= pos; t++) {
				const float *vr = vc + (size_t)t * kvd + kh * hd;
				for (int j = 0; j < hd; j++)
					oh[j] += s[t] * vr[j];
			}
		}
		act_quant_row(f, l, FWD_SITE_ATTN_OUT, att, qd);
		matvec(ly->wo, att, o);
		for (int j = 0; j < D; j++)
			x[j] += o[j];
		kn_rmsnorm(xn, x, f->ffn_norm + (size_t)l * D, D, c->eps);
		act_quant_row(f, l, FWD_SITE_FFN_IN, xn, D);
		matvec(ly->w_gate, xn, g);
		matvec(ly->w_up, xn, u);
		kn_swiglu(g, g, u, (size_t)H);
		act_quant_row(f, l, FWD_SITE_FFN_DOWN, g, H);
		matvec(ly->w_down, g, o);
		for (int j = 0; j < D; j++)
			x[j] += o[j];
	}
	kn_rmsnorm(xn, x, f->out_norm, D, c->eps);
	matvec(m->output, xn, logits);
	return 0;
}
