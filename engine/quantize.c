#include "quantize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "../kernels/qmatrix.h"
#include "../kernels/types.h"
#include "calib.h"
#include "mapfile.h"
#include "forward.h"

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ plans */

const char *quant_tensor_kind(const char *name)
{
	static const char *kinds[] = { "attn_q", "attn_k", "attn_v", "attn_output",
				       "ffn_gate", "ffn_up", "ffn_down" };
	if (strcmp(name, "token_embd.weight") == 0)
		return "token_embd";
	if (strcmp(name, "output.weight") == 0)
		return "output";
	int l, n = 0;
	if (sscanf(name, "blk.%d.%n", &l, &n) != 1 || n == 0)
		return NULL;
	const char *rest = name + n;
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		size_t k = strlen(kinds[i]);
		if (strncmp(rest, kinds[i], k) == 0 && strcmp(rest + k, ".weight") == 0)
			return kinds[i];
	}
	return NULL;
}

int quant_plan_add(quant_plan *p, const char *name, const quant_spec *s, qs_error *err)
{
	if (strlen(name) >= sizeof(p->e[0].name))
		return qs_err(err, QS_EUSAGE, "plan: tensor name '%.40s...' too long", name);
	for (int i = 0; i < p->n; i++)
		if (strcmp(p->e[i].name, name) == 0) {
			p->e[i].spec = *s;
			return 0;
		}
	quant_plan_entry *e = realloc(p->e, sizeof(*e) * (size_t)(p->n + 1));
	if (!e)
		return qs_err(err, QS_ENOMEM, "plan: out of memory");
	p->e = e;
	snprintf(e[p->n].name, sizeof(e[p->n].name), "%s", name);
	e[p->n].spec = *s;
	p->n++;
	return 0;
}

void quant_plan_release(quant_plan *p)
{
	free(p->e);
	p->e = NULL;
	p->n = 0;
}

const quant_spec *quant_plan_find(const quant_plan *p, const char *name)
{
	for (int i = 0; i < p->n; i++)
		if (strcmp(p->e[i].name, name) == 0)
			return p->e[i].spec.method == QUANT_NONE ? NULL : &p->e[i].spec;
	return NULL;
}

static pcre2_code *compile_re(const char *re, const char *what, qs_error *err)
{
	int ec;
	PCRE2_SIZE off;
	pcre2_code *c = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED, 0, &ec, &off, NULL);
	if (!c) {
		PCRE2_UCHAR msg[160];
		pcre2_get_error_message(ec, msg, sizeof(msg));
		qs_err(err, QS_EUSAGE, "%s regex '%s': %s at offset %zu", what, re, (char *)msg,
		       (size_t)off);
	}
	return c;
}

static int re_match(pcre2_code *c, const char *s)
{
	pcre2_match_data *md = pcre2_match_data_create_from_pattern(c, NULL);
	int rc = md ? pcre2_match(c, (PCRE2_SPTR)s, strlen(s), 0, 0, md, NULL) : -1;
	pcre2_match_data_free(md);
	return rc >= 0;
}

int quant_plan_uniform(const model *m, const quant_spec *s, const char *include,
		       const char *exclude, quant_plan *out, qs_error *err)
{
	memset(out, 0, sizeof(*out));
	pcre2_code *inc = NULL, *exc = NULL;
	int rc = 0;
	if (include && !(inc = compile_re(include, "--include", err)))
		return QS_EUSAGE;
	if (exclude && !(exc = compile_re(exclude, "--exclude", err))) {
		pcre2_code_free(inc);
		return QS_EUSAGE;
	}
	for (int i = 0; i < m->n_tensors && !rc; i++) {
		const model_tensor *t = &m->tensors[i];
		const char *kind = quant_tensor_kind(t->name);
		if (!kind || (m->cfg.tied && t == m->output && t != m->tok_embd))
			continue;
		int edge = strcmp(kind, "token_embd") == 0 || strcmp(kind, "output") == 0;
		if (inc ? !re_match(inc, t->name) : edge)
			continue;
		if (exc && re_match(exc, t->name))
			continue;
		if (!(rc = quant_spec_check(s, t->name, (int)t->ne[1], (int)t->ne[0], err)))
			rc = quant_plan_add(out, t->name, s, err);
	}
	pcre2_code_free(inc);
	pcre2_code_free(exc);
	if (rc)
		quant_plan_release(out);
	return rc;
}

int quant_spec_needs_calib(const quant_spec *s)
{
	return s->method != QUANT_NONE && (s->method == QUANT_GPTQ || s->method == QUANT_AWQ || s->method == QUANT_SMOOTHQUANT ||
	       s->outlier_thresh > 0 || (s->act_bits && !s->act_per_token));
}

int quant_tensor_layer(const model *m, const char *name)
{
	int l;
	if (sscanf(name, "blk.%d.", &l) == 1)
		return l;
	return strncmp(name, "token_embd", 10) ? m->cfg.n_layers : -1;
}

int quant_plan_needs_calib(const quant_plan *p)
{
	for (int i = 0; i < p->n; i++)
		if (quant_spec_needs_calib(&p->e[i].spec))
			return 1;
	return 0;
}

size_t quant_plan_bytes(const model *m, const quant_plan *p, size_t *params)
{
	size_t b = 0, n = 0;
	for (int i = 0; i < m->n_tensors; i++) {
		const model_tensor *t = &m->tensors[i];
		const quant_spec *s = quant_plan_find(p, t->name);
		b += s && s->method != QUANT_NONE ? quant_spec_bytes(s, (int)t->ne[1], (int)t->ne[0])
						  : t->nbytes;
		n += (size_t)t->ne[0] * (size_t)t->ne[1];
	}
	if (params)
		*params = n;
	return b;
}

/* ------------------------------------------------------------------ model work */

enum { M_Q, M_K, M_V, M_O, M_GATE, M_UP, M_DOWN, N_MATS };
static const int site_of[N_MATS] = { FWD_SITE_QKV, FWD_SITE_QKV, FWD_SITE_QKV,
				     FWD_SITE_ATTN_OUT, FWD_SITE_FFN_IN, FWD_SITE_FFN_IN,
				     FWD_SITE_FFN_DOWN };

typedef struct qctx {
	model *m;                 /* the derived model being built */
	const model *base;
	const quant_plan *plan;
	const quant_opts *o;
	calib_stream *st;
	int stream_until;         /* layers below it pass their output on to a layer
				   * (or the head) that needs calibration */
	int reuse_n;              /* layers copied from quant_opts.reuse */
	quant_report *rep;
	qs_error *err;
	/* per layer */
	int layer;
	model_tensor *mt[N_MATS];
	const quant_spec *sp[N_MATS];
	float *W[N_MATS];         /* working f32 copies (rows, cols) or NULL */
	int modified[N_MATS];     /* W differs from the stored weights (scaled) */
	/* capture state */
	int cap_site;             /* site to collect, or -1 for all */
	calib_acc *acc[4];
	float *xs[4];             /* AWQ row samples (awq_rows, cols) */
	long xs_n[4], xs_seen[4];
	long xs_stride, xs_cap;   /* keep every xs_stride-th row, at most xs_cap */
	float *act_absmax[4];     /* static activation scales: running absmax */
} qctx;

static model_tensor *mut(model *m, const model_tensor *t)
{
	return t ? &m->tensors[t - m->tensors] : NULL;
}

static int ensure_W(qctx *c, int i)
{
	if (!c->W[i] && !(c->W[i] = model_tensor_f32(c->mt[i])))
		return qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
	return 0;
}

/* Make the forward pass see W[i] (scaled f32 weights) for tensor i. */
static void expose_f32(qctx *c, int i)
{
	model_tensor *t = c->mt[i];
	t->type = KN_TYPE_F32;
	t->data = c->W[i];
	t->nbytes = sizeof(float) * (size_t)t->ne[0] * (size_t)t->ne[1];
	t->q = NULL;
}

/* Record on t that its rows (rows != 0) or columns were multiplied by s:
 * the product with any earlier record, in an owned buffer. */
static int record_scale(qctx *c, model_tensor *t, int rows, const float *s)
{
	const int n = (int)(rows ? t->ne[1] : t->ne[0]);
	const float *old = rows ? t->row_scale : t->col_scale;
	float *v = malloc(sizeof(float) * (size_t)n);
	if (!v)
		return qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
	for (int j = 0; j < n; j++)
		v[j] = (old ? old[j] : 1.0f) * s[j];
	if (model_keep_buffer(c->m, v, c->err))
		return QS_ENOMEM;
	if (rows)
		t->row_scale = v;
	else
		t->col_scale = v;
	return 0;
}

/* Replace a norm vector with an owned f32 copy divided by s. */
static int fold_norm(qctx *c, const model_tensor *norm, const float *s)
{
	model_tensor *t = mut(c->m, norm);
	int n = (int)t->ne[0];
	float *v = malloc(sizeof(float) * (size_t)n);
	if (!v)
		return qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
	kn_traits(t->type)->to_float(t->data, v, (size_t)n);
	for (int j = 0; j < n; j++)
		v[j] /= s[j];
	if (model_keep_buffer(c->m, v, c->err))
		return QS_ENOMEM;
	t->type = KN_TYPE_F32;
	t->data = v;
	t->nbytes = sizeof(float) * (size_t)n;
	return 0;
}

static int on_capture(void *user, int layer, int site, const float *x, int rows, int cols)
{
	qctx *c = user;
	if (layer != c->layer || site < 0 || site > 3)
		return 0;
	if (c->cap_site >= 0 && site != c->cap_site)
		return 0;
	if (c->acc[site] && calib_acc_add(c->acc[site], x, rows, c->err))
		return 1;
	if (c->xs[site]) {
		for (int r = 0; r < rows; r++, c->xs_seen[site]++)
			if (c->xs_seen[site] % c->xs_stride == 0 && c->xs_n[site] < c->xs_cap)
				memcpy(c->xs[site] + (size_t)c->xs_n[site]++ * cols,
				       x + (size_t)r * cols, sizeof(float) * (size_t)cols);
	}
	if (c->act_absmax[site]) {
		float a = *c->act_absmax[site];
		for (size_t i = 0; i < (size_t)rows * cols; i++)
			a = fmaxf(a, fabsf(x[i]));
		*c->act_absmax[site] = a;
	}
	return 0;
}

/* FLOPs of one layer over the calibration tokens, up to and including the
 * input of `stop` (-1: the whole layer), plus X^T X of the collected sites. */
static double layer_flops(const qctx *c, int stop, int xtx_cols)
{
	const model_config *k = &c->m->cfg;
	double T = (double)c->o->calib_len, n = (double)c->o->n_calib * T;
	double D = k->dim, qd = (double)k->n_heads * k->head_dim, kvd = (double)k->n_kv_heads * k->head_dim;
	double H = k->hidden;
	double part[4] = {
		0,                                                       /* qkv input: a norm */
		2 * n * D * (qd + 2 * kvd) + 4.0 * k->n_heads * k->head_dim * n * (T + 1) / 2, /* qkv, attention */
		2 * n * qd * D,                                          /* o */
		2 * n * D * 2 * H,                                       /* gate, up */
	};
	double f = 0;
	int last = stop < 0 ? 3 : stop;
	for (int s = 0; s <= last; s++)
		f += part[s];
	if (stop < 0)
		f += 2 * n * H * D; /* down */
	return (f + n * (double)xtx_cols * xtx_cols) * 1e-9;
}

static int run_layer(qctx *c, int commit)
{
	double t0 = now_s();
	int rc = calib_stream_layer(c->st, commit, on_capture, c, NULL, NULL, c->err);
	c->rep->seconds_calib += now_s() - t0;
	return rc;
}

static void free_capture(qctx *c)
{
	for (int s = 0; s < 4; s++) {
		calib_acc_free(c->acc[s]);
		c->acc[s] = NULL;
		free(c->xs[s]);
		c->xs[s] = NULL;
		c->xs_n[s] = c->xs_seen[s] = 0;
	}
}

static int site_cols(const model_config *cfg, int site)
{
	return calib_site_cols(cfg, site);
}

int quant_tensor(const char *name, const float *W, int rows, int cols, const quant_spec *s,
		 const double *H, long n, const float *x_absmax, kn_qmatrix **out,
		 double *gptq_seconds, qs_error *err)
{
	*out = NULL;
	if (s->method == QUANT_AWQ || s->method == QUANT_SMOOTHQUANT)
		return qs_err(err, QS_EUNSUPP,
			      "%s: %s scales fold into the norm shared with other tensors; it runs "
			      "over a whole model (quant_model), not one tensor",
			      name, quant_method_name(s->method));
	if (quant_spec_check(s, name, rows, cols, err))
		return QS_EUSAGE;
	kn_qmatrix *q = calloc(1, sizeof(*q));
	if (!q || kn_qmatrix_alloc(q, &s->fmt, rows, cols)) {
		free(q);
		return qs_err(err, QS_ENOMEM, "%s: cannot allocate the quantized matrix", name);
	}
	int rc = 0;
	if (s->outlier_thresh > 0 && x_absmax) {
		int32_t *oc = malloc(sizeof(int32_t) * (size_t)cols);
		int k = 0;
		for (int j = 0; oc && j < cols; j++)
			if (x_absmax[j] > s->outlier_thresh)
				oc[k++] = j;
		if (!oc || kn_qmatrix_set_outliers(q, oc, k, W))
			rc = qs_err(err, QS_ENOMEM, "quantize: out of memory");
		free(oc);
	}
	if (!rc) {
		switch (s->method) {
		case QUANT_GPTQ: {
			if (!H) {
				rc = qs_err(err, QS_EUSAGE, "%s: gptq needs calibration data", name);
				break;
			}
			double t0 = now_s();
			rc = quant_gptq(q, W, H, n, s, err);
			if (gptq_seconds)
				*gptq_seconds += now_s() - t0;
			break;
		}
		case QUANT_HQQ:
			rc = quant_hqq(q, W, s, err);
			break;
		default: /* RTN, and AWQ/SmoothQuant after scaling */
			kn_qmatrix_quantize_rtn(q, W, s->mse);
			break;
		}
	}
	if (rc) {
		kn_qmatrix_release(q);
		free(q);
		return rc;
	}
	*out = q;
	return 0;
}

/* Quantize matrix i from W (rows, cols) with its spec; stats (may be NULL)
 * give H and channel absmax of its input. AWQ/SmoothQuant arrive here
 * already scaled and are rounded to nearest. */
static int quantize_one(qctx *c, model_tensor *t, const quant_spec *s, const float *W,
			const calib_stats *stats)
{
	int rows = (int)t->ne[1], cols = (int)t->ne[0];
	quant_spec rs = *s;
	if (rs.method == QUANT_AWQ && rs.awq_gptq) { /* AWQ's scaling, then GPTQ on X/s */
		rs.method = QUANT_GPTQ;
		rs.awq_gptq = 0;
	} else if (rs.method == QUANT_AWQ || rs.method == QUANT_SMOOTHQUANT)
		rs.method = QUANT_RTN;
	kn_qmatrix *q;
	int rc = quant_tensor(t->name, W, rows, cols, &rs, stats ? stats->xtx : NULL,
			      stats ? (long)stats->rows : 0, stats ? stats->absmax : NULL, &q,
			      &c->rep->seconds_gptq, c->err);
	if (rc)
		return rc;
	if (rs.method == QUANT_GPTQ)
		c->rep->gptq_gflop += (2.0 * rows * (double)cols * cols + 1.0 * cols * (double)cols * cols) * 1e-9;
	if ((rc = model_keep_qmatrix(c->m, q, c->err)))
		return rc;
	/* the stored tensor stays described as it was in the file; q overrides it */
	const model_tensor *bt = &c->base->tensors[t - c->m->tensors];
	t->type = bt->type;
	t->data = bt->data;
	t->nbytes = bt->nbytes;
	t->q = q;
	c->rep->n_quantized++;
	return 0;
}

/* Matrices i at `site` with a spec */
static int site_mats(int site, int *idx)
{
	int n = 0;
	for (int i = 0; i < N_MATS; i++)
		if (site_of[i] == site)
			idx[n++] = i;
	return n;
}

/* AWQ / SmoothQuant scales for every site of the layer, from one pass over
 * the layer's full-precision input; folded, then weights kept as f32. */
static int scale_layer(qctx *c)
{
	const model_config *cfg = &c->m->cfg;
	int rc = 0;
	long total = (long)c->o->n_calib * c->o->calib_len;
	c->xs_stride = total / c->o->awq_rows + (total % c->o->awq_rows ? 1 : 0);
	if (c->xs_stride < 1)
		c->xs_stride = 1;
	c->xs_cap = (total + c->xs_stride - 1) / c->xs_stride;
	if (c->xs_cap > c->o->awq_rows)
		c->xs_cap = c->o->awq_rows;
	int want[4] = { 0 };
	for (int i = 0; i < N_MATS; i++)
		if (c->sp[i] && (c->sp[i]->method == QUANT_AWQ || c->sp[i]->method == QUANT_SMOOTHQUANT))
			want[site_of[i]] = 1;
	/* o_proj scales fold into v_proj rows only without GQA (as the AWQ
	 * reference); down_proj scales fold into up_proj rows */
	if (cfg->n_heads != cfg->n_kv_heads)
		want[FWD_SITE_ATTN_OUT] = 0;
	if (!(want[0] | want[1] | want[2] | want[3]))
		return 0;
	for (int s = 0; s < 4 && !rc; s++) {
		if (!want[s])
			continue;
		int cols = site_cols(cfg, s);
		if (!(c->acc[s] = calib_acc_new(cols, 20.0f, 6.0f, 0, c->err)))
			rc = QS_ENOMEM;
		else if (!(c->xs[s] = malloc(sizeof(float) * (size_t)c->xs_cap * cols)))
			rc = qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
	}
	c->cap_site = -1;
	if (!rc) {
		rc = run_layer(c, 0);
		c->rep->calib_gflop += layer_flops(c, -1, 0);
	}
	for (int s = 0; s < 4 && !rc; s++) {
		if (!want[s])
			continue;
		calib_stats st;
		memset(&st, 0, sizeof(st));
		if ((rc = calib_acc_finish(c->acc[s], &st, c->err)))
			break;
		int idx[3], n = site_mats(s, idx), cols = site_cols(cfg, s);
		const float *Ws[3];
		int rows[3], n_w = 0;
		const quant_spec *spec = NULL;
		for (int k = 0; k < n && !rc; k++) {
			int i = idx[k];
			if (c->sp[i] && (c->sp[i]->method == QUANT_AWQ || c->sp[i]->method == QUANT_SMOOTHQUANT))
				spec = spec ? spec : c->sp[i];
			if ((rc = ensure_W(c, i)))
				break;
			Ws[n_w] = c->W[i];
			rows[n_w++] = (int)c->mt[i]->ne[1];
		}
		float *scales = malloc(sizeof(float) * (size_t)cols), alpha = 0;
		if (!rc && !scales)
			rc = qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
		if (!rc) {
			if (spec->method == QUANT_AWQ)
				rc = quant_awq_scales(c->xs[s], c->xs_n[s], Ws, rows, n_w, cols, spec,
						      scales, &alpha, c->err);
			else
				quant_smooth_scales(st.absmax, Ws, rows, n_w, cols, spec->alpha, scales);
		}
		for (int j = 0; !rc && j < cols; j++)
			if (!(scales[j] > 0) || !isfinite(scales[j]))
				scales[j] = 1.0f;
		/* fold 1/s into the producer of the input */
		if (!rc) {
			const model_layer *L = &c->m->layers[c->layer];
			if (s == FWD_SITE_QKV)
				rc = fold_norm(c, L->attn_norm, scales);
			else if (s == FWD_SITE_FFN_IN)
				rc = fold_norm(c, L->ffn_norm, scales);
			else {
				int prev = s == FWD_SITE_ATTN_OUT ? M_V : M_UP;
				if (!(rc = ensure_W(c, prev))) {
					float *P = c->W[prev];
					int pc = (int)c->mt[prev]->ne[0];
					float *inv = malloc(sizeof(float) * (size_t)cols);
					for (int r = 0; r < cols; r++)
						for (int j = 0; j < pc; j++)
							P[(size_t)r * pc + j] /= scales[r];
					c->modified[prev] = 1;
					expose_f32(c, prev);
					if (!inv)
						rc = qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
					for (int r = 0; inv && r < cols; r++)
						inv[r] = 1.0f / scales[r];
					if (inv)
						rc = record_scale(c, c->mt[prev], 1, inv);
					free(inv);
				}
			}
		}
		/* scale the consumers' columns, and the sampled inputs */
		for (int k = 0; k < n && !rc; k++) {
			int i = idx[k];
			float *W = c->W[i];
			int R = (int)c->mt[i]->ne[1];
			for (int r = 0; r < R; r++)
				for (int j = 0; j < cols; j++)
					W[(size_t)r * cols + j] *= scales[j];
			c->modified[i] = 1;
			rc = record_scale(c, c->mt[i], 0, scales);
		}
		for (long r = 0; !rc && r < c->xs_n[s]; r++)
			for (int j = 0; j < cols; j++)
				c->xs[s][(size_t)r * cols + j] /= scales[j];
		/* AWQ clipping search, skipping q and k as the reference does */
		for (int k = 0; k < n && !rc; k++) {
			int i = idx[k];
			if (!c->sp[i] || c->sp[i]->method != QUANT_AWQ || !c->sp[i]->awq_clip ||
			    i == M_Q || i == M_K)
				continue;
			int R = (int)c->mt[i]->ne[1];
			float *Wc = malloc(sizeof(float) * (size_t)R * cols);
			if (!Wc) {
				rc = qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
				break;
			}
			rc = quant_awq_clip(c->xs[s], c->xs_n[s], c->W[i], R, cols, c->sp[i], Wc,
					    c->err);
			if (!rc) {
				free(c->W[i]);
				c->W[i] = Wc;
			} else {
				free(Wc);
			}
		}
		for (int k = 0; k < n && !rc; k++)
			expose_f32(c, idx[k]);
		free(scales);
		calib_stats_release(&st);
	}
	free_capture(c);
	if (!rc)
		fwd_reload(calib_stream_fwd(c->st));
	return rc;
}

static int quantize_site(qctx *c, int site)
{
	const model_config *cfg = &c->m->cfg;
	int idx[3], n = site_mats(site, idx), rc = 0, need = 0, xtx = 0;
	for (int k = 0; k < n; k++) {
		const quant_spec *s = c->sp[idx[k]];
		if (!s)
			continue;
		need |= s->method == QUANT_GPTQ || s->awq_gptq || s->outlier_thresh > 0;
		xtx |= s->method == QUANT_GPTQ || s->awq_gptq;
	}
	calib_stats st;
	memset(&st, 0, sizeof(st));
	if (need && c->st) {
		if (!(c->acc[site] = calib_acc_new(site_cols(cfg, site), 20.0f, 6.0f, xtx, c->err)))
			return QS_ENOMEM;
		c->cap_site = site;
		fwd_set_stop(calib_stream_fwd(c->st), site); /* the rest of the layer is not needed */
		rc = run_layer(c, 0);
		c->rep->calib_gflop += layer_flops(c, site, xtx ? site_cols(cfg, site) : 0);
		fwd_set_stop(calib_stream_fwd(c->st), -1);
		if (!rc)
			rc = calib_acc_finish(c->acc[site], &st, c->err);
		free_capture(c);
		if (rc)
			return rc;
	}
	for (int k = 0; k < n && !rc; k++) {
		int i = idx[k];
		if (!c->sp[i]) {
			if (c->modified[i]) { /* scaled but kept in f32: the model owns W */
				if (!(rc = model_keep_buffer(c->m, c->W[i], c->err)))
					c->W[i] = NULL;
			}
			continue;
		}
		if ((rc = ensure_W(c, i)))
			break;
		rc = quantize_one(c, c->mt[i], c->sp[i], c->W[i], need ? &st : NULL);
		free(c->W[i]);
		c->W[i] = NULL;
	}
	calib_stats_release(&st);
	return rc;
}

/* activation quantization of the layer's sites: per-token before the commit
 * pass, static scales measured during it */
static int setup_actq(qctx *c, int *static_sites)
{
	model *m = c->m;
	*static_sites = 0;
	for (int i = 0; i < N_MATS; i++) {
		const quant_spec *s = c->sp[i];
		if (!s || !s->act_bits)
			continue;
		if (!m->actq) {
			model_actq *aq = calloc(1, sizeof(*aq));
			model_actq_site *sites = calloc((size_t)m->cfg.n_layers * 4, sizeof(*sites));
			if (!aq || !sites || model_keep_buffer(m, aq, c->err) ||
			    model_keep_buffer(m, sites, c->err)) {
				if (!aq)
					free(sites);
				return qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
			}
			aq->site = sites;
			m->actq = aq;
		}
		model_actq_site *as = &m->actq->site[c->layer * 4 + site_of[i]];
		as->per_token = s->act_per_token;
		if (s->act_per_token)
			as->bits = s->act_bits;
		else
			*static_sites |= 1 << site_of[i];
		/* outlier channels stay in float on the activation side too */
		if (s->outlier_thresh > 0 && c->mt[i]->q && c->mt[i]->q->n_out && !as->keep) {
			int cols = (int)c->mt[i]->ne[0];
			unsigned char *keep = calloc((size_t)cols, 1);
			if (!keep || model_keep_buffer(m, keep, c->err))
				return qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
			for (int k = 0; k < c->mt[i]->q->n_out; k++)
				keep[c->mt[i]->q->out_cols[k]] = 1;
			as->keep = keep;
		}
	}
	return 0;
}

static int do_layer(qctx *c, int l)
{
	model *m = c->m;
	const model_layer *L = &m->layers[l];
	const model_tensor *ts[N_MATS] = { L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down };
	c->layer = l;
	for (int i = 0; i < N_MATS; i++) {
		c->mt[i] = mut(m, ts[i]);
		c->sp[i] = quant_plan_find(c->plan, ts[i]->name);
		c->W[i] = NULL;
		c->modified[i] = 0;
	}
	int rc = 0;
	if (c->st)
		rc = scale_layer(c);
	for (int s = 0; s < 4 && !rc; s++)
		rc = quantize_site(c, s);
	int static_sites = 0;
	if (!rc)
		rc = setup_actq(c, &static_sites);
	float amax[4] = { 0 };
	for (int s = 0; s < 4; s++)
		c->act_absmax[s] = static_sites & (1 << s) ? &amax[s] : NULL;
	if (!rc && c->st && (l < c->stream_until || static_sites)) {
		c->cap_site = -1;
		rc = run_layer(c, 1);
		c->rep->calib_gflop += layer_flops(c, -1, 0);
	}
	for (int s = 0; s < 4 && !rc; s++) {
		if (!(static_sites & (1 << s)))
			continue;
		model_actq_site *as = &m->actq->site[l * 4 + s];
		int bits = 0;
		for (int i = 0; i < N_MATS; i++)
			if (site_of[i] == s && c->sp[i] && c->sp[i]->act_bits)
				bits = c->sp[i]->act_bits;
		as->bits = bits;
		as->scale = amax[s] > 0 ? amax[s] / (float)((1 << (bits - 1)) - 1) : 1.0f;
	}
	for (int s = 0; s < 4; s++)
		c->act_absmax[s] = NULL;
	for (int i = 0; i < N_MATS; i++) {
		free(c->W[i]);
		c->W[i] = NULL;
		/* the calibration has moved past this layer: its source weights
		 * need not stay resident (memory scales with a layer, not the model) */
		if (!rc && c->st)
			model_drop_pages(c->base, &c->base->tensors[c->mt[i] - c->m->tensors]);
	}
	return rc;
}

/* tensor idx of c->m takes reuse's state (quantized matrix, folded norm
 * or rescaled weights, recorded scales), deep-copied */
static int copy_tensor(qctx *c, int idx)
{
	const model_tensor *rt = &c->o->reuse->tensors[idx], *bt = &c->base->tensors[idx];
	model_tensor *t = &c->m->tensors[idx];
	if (rt->q) {
		kn_qmatrix *q = malloc(sizeof(*q));
		if (!q || kn_qmatrix_copy(q, rt->q)) {
			free(q);
			return qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
		}
		if (model_keep_qmatrix(c->m, q, c->err)) /* releases q */
			return QS_ENOMEM;
		t->type = bt->type;
		t->data = bt->data;
		t->nbytes = bt->nbytes;
		t->q = q;
		c->rep->n_quantized++;
	} else if (rt->data != bt->data) { /* an f32 buffer reuse owns */
		void *d = malloc(rt->nbytes);
		if (!d)
			return qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
		memcpy(d, rt->data, rt->nbytes);
		if (model_keep_buffer(c->m, d, c->err)) /* frees d */
			return QS_ENOMEM;
		t->type = rt->type;
		t->data = d;
		t->nbytes = rt->nbytes;
		t->q = NULL;
	}
	/* t is fresh (no scales yet), so recording the reused scales copies them */
	int rc = 0;
	if (rt->row_scale)
		rc = record_scale(c, t, 1, rt->row_scale);
	if (!rc && rt->col_scale)
		rc = record_scale(c, t, 0, rt->col_scale);
	return rc;
}

/* layer l as quant_opts.reuse made it; the calibration passes through it */
static int copy_layer(qctx *c, int l)
{
	const model_layer *L = &c->base->layers[l];
	const model_tensor *ts[] = { L->attn_norm, L->wq, L->wk, L->wv, L->wo, L->bq, L->bk, L->bv,
				     L->ffn_norm, L->w_gate, L->w_up, L->w_down };
	int rc = 0;
	for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]) && !rc; i++)
		if (ts[i])
			rc = copy_tensor(c, (int)(ts[i] - c->base->tensors));
	/* only if a layer after the copied ones (or the head) needs the stream */
	if (!rc && c->st && l < c->stream_until && c->stream_until >= c->reuse_n) {
		fwd_reload(calib_stream_fwd(c->st)); /* the norms may be folded ones */
		c->layer = l;
		c->cap_site = -1;
		rc = run_layer(c, 1);
		c->rep->calib_gflop += layer_flops(c, -1, 0);
	}
	return rc;
}

static int on_capture_head_shim(void *user, int layer, int site, const float *x, int rows,
				int cols)
{
	qctx *c = user;
	(void)cols;
	if (layer != -1 || site != FWD_SITE_OUTPUT || !c->acc[0])
		return 0;
	return calib_acc_add(c->acc[0], x, rows, c->err) != 0;
}

/* token_embd / output: calibration-free methods, or GPTQ on the head input */
static int do_edge(qctx *c, const model_tensor *bt, int site_output)
{
	const quant_spec *s = quant_plan_find(c->plan, bt->name);
	if (!s)
		return 0;
	model_tensor *t = &c->m->tensors[bt - c->base->tensors]; /* bt is base's */
	if (s->method == QUANT_AWQ || s->method == QUANT_SMOOTHQUANT || (!site_output && s->method == QUANT_GPTQ) ||
	    (!site_output && s->outlier_thresh > 0))
		return qs_err(c->err, QS_EUSAGE, "%s: method %s is not supported for this tensor",
			      t->name, quant_method_name(s->method));
	calib_stats st;
	memset(&st, 0, sizeof(st));
	int rc = 0;
	if (site_output && (s->method == QUANT_GPTQ || s->outlier_thresh > 0)) {
		if (!c->st)
			return qs_err(c->err, QS_EUSAGE, "%s: needs calibration data", t->name);
		c->acc[0] = calib_acc_new(c->m->cfg.dim, 20.0f, 6.0f, s->method == QUANT_GPTQ, c->err);
		if (!c->acc[0])
			return QS_ENOMEM;
		c->layer = -1;
		double t0 = now_s();
		rc = calib_stream_head(c->st, on_capture_head_shim, c, NULL, NULL, c->err);
		c->rep->seconds_calib += now_s() - t0;
		if (!rc)
			rc = calib_acc_finish(c->acc[0], &st, c->err);
		free_capture(c);
		if (rc)
			return rc;
	}
	float *W = model_tensor_f32(t);
	if (!W)
		rc = qs_err(c->err, QS_ENOMEM, "quantize: out of memory");
	else
		rc = quantize_one(c, t, s, W, site_output ? &st : NULL);
	free(W);
	calib_stats_release(&st);
	return rc;
}

int quant_model(const model *base, const quant_plan *p, const quant_opts *o, model **out,
		quant_report *rep, qs_error *err)
{
	quant_report local;
	quant_opts oo = *o;
	if (!rep)
		rep = &local;
	memset(rep, 0, sizeof(*rep));
	*out = NULL;
	if (oo.batch <= 0)
		oo.batch = 8;
	if (oo.awq_rows <= 0)
		oo.awq_rows = 65536;
	for (int i = 0; i < p->n; i++) {
		const model_tensor *t = model_find(base, p->e[i].name);
		if (!t)
			return qs_err(err, QS_EUSAGE, "plan: no tensor '%s' in %s", p->e[i].name,
				      base->path);
		if (!quant_tensor_kind(t->name))
			return qs_err(err, QS_EUSAGE, "plan: tensor '%s' is not quantizable (norms and biases stay in float)",
				      t->name);
		int rc = quant_spec_check(&p->e[i].spec, t->name, (int)t->ne[1], (int)t->ne[0], err);
		if (rc)
			return rc;
	}
	int calib = quant_plan_needs_calib(p);
	if (calib && (!oo.calib || oo.n_calib < 1 || oo.calib_len < 2))
		return qs_err(err, QS_EUSAGE, "quantize: the plan needs calibration data (gptq, awq, smoothquant, outliers or static activation scales)");
	double t0 = now_s();
	qctx c;
	memset(&c, 0, sizeof(c));
	c.base = base;
	c.plan = p;
	c.o = &oo;
	c.rep = rep;
	c.err = err;
	c.cap_site = -1;
	int rc = 0;
	if (!(c.m = model_derive(base, err)))
		return QS_ENOMEM;
	if (calib) {
		double tc = now_s();
		c.st = calib_stream_new(c.m, oo.calib, oo.n_calib, oo.calib_len,
					oo.batch < oo.n_calib ? oo.batch : oo.n_calib, err);
		rep->seconds_calib += now_s() - tc;
		if (!c.st)
			rc = err && err->code ? err->code : QS_ENOMEM;
	}
	const int L = base->cfg.n_layers;
	/* the calibration stream goes as far as the last layer (or the head)
	 * with a tensor that needs it */
	for (int i = 0; i < p->n; i++) {
		const int l = quant_tensor_layer(base, p->e[i].name);
		if (quant_spec_needs_calib(&p->e[i].spec) && l > c.stream_until)
			c.stream_until = l;
	}
	int reuse_n = 0;
	if (oo.reuse && oo.reuse->base == base && !oo.reuse->actq) {
		reuse_n = oo.reuse_layers < L ? oo.reuse_layers : L;
		for (int i = 0; i < p->n; i++)
			if (p->e[i].spec.act_bits)
				reuse_n = 0;
	}
	c.reuse_n = reuse_n;
	for (int l = 0; l < L && !rc; l++) {
		rc = l < reuse_n ? copy_layer(&c, l) : do_layer(&c, l);
		if (!rc && oo.progress && oo.progress(oo.user, l + 1, L + 1))
			rc = qs_err(err, QS_ECANCEL, "quantize: cancelled");
	}
	if (!rc && !base->cfg.tied)
		rc = do_edge(&c, base->output, 1);
	if (!rc)
		rc = do_edge(&c, base->tok_embd, 0);
	if (!rc && oo.progress && oo.progress(oo.user, L + 1, L + 1))
		rc = qs_err(err, QS_ECANCEL, "quantize: cancelled");
	calib_stream_free(c.st);
	free_capture(&c);
	if (rc) {
		model_free(c.m);
		return rc;
	}
	rep->bytes = model_bytes(c.m);
	rep->params = model_n_params(c.m);
	rep->seconds = now_s() - t0;
	*out = c.m;
	return 0;
}

/* ------------------------------------------------------------ layer errors */

typedef struct lerr_ctx {
	const model *base, *qm;
	quant_layer_err *e;
	qs_error *err;
} lerr_ctx;

/* sqrt(tr(dW H dW^T) / tr(W H W^T)) with dW = W - Q, W and Q (R x C,
 * Q overwritten with dW); NaN when out of memory or W H W^T is 0 */
static double rel_err_f32(const float *W, float *Q, int R, int C, const float *H)
{
	float *M = malloc(sizeof(float) * (size_t)R * C);
	if (!M)
		return NAN;
	double den = 0, num = 0;
	/* M = W H; den = sum(M .* W) */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, C, C, 1.0f, W, C, H, C, 0.0f, M, C);
	for (size_t i = 0; i < (size_t)R * C; i++)
		den += (double)M[i] * W[i];
	for (size_t i = 0; i < (size_t)R * C; i++)
		Q[i] = W[i] - Q[i];
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, C, C, 1.0f, Q, C, H, C, 0.0f, M, C);
	for (size_t i = 0; i < (size_t)R * C; i++)
		num += (double)M[i] * Q[i];
	free(M);
	return den > 0 && num >= 0 ? sqrt(num / den) : NAN;
}

/* the same for base tensor b and its quantized twin t (mapped back through
 * any AWQ / SmoothQuant scales), H the second moment of b's input */
static double rel_err_h(const model_tensor *b, const model_tensor *t, const float *H)
{
	float *W = model_tensor_f32(b), *Q = model_tensor_f32_orig(t);
	double e = W && Q ? rel_err_f32(W, Q, (int)b->ne[1], (int)b->ne[0], H) : NAN;
	free(W);
	free(Q);
	return e;
}

/* The base tensors reading a site's input (up to 3; the rest NULL). */
static void site_tensors(const model *m, int layer, int site, const model_tensor *bt[3])
{
	bt[0] = bt[1] = bt[2] = NULL;
	if (layer < 0) {
		bt[0] = m->output;
		return;
	}
	const model_layer *L = &m->layers[layer];
	const model_tensor *sites[4][3] = { { L->wq, L->wk, L->wv }, { L->wo },
					    { L->w_gate, L->w_up }, { L->w_down } };
	if (site >= 0 && site < 4)
		memcpy(bt, sites[site], sizeof(sites[0]));
}

static float *xtx_to_float(const double *xtx, int C)
{
	float *h = malloc(sizeof(float) * (size_t)C * C);
	for (size_t i = 0; h && i < (size_t)C * C; i++)
		h[i] = (float)xtx[i];
	return h;
}

static int lerr_on_layer(void *user, int layer, calib_layer_stats *st)
{
	lerr_ctx *c = user;
	for (int k = 0; k < st->n_sites; k++) {
		const calib_stats *cs = &st->site[k];
		if (!cs->xtx)
			continue;
		const model_tensor *bt[3];
		site_tensors(c->base, layer, cs->site, bt);
		float *H = xtx_to_float(cs->xtx, cs->cols);
		if (!H)
			return qs_err(c->err, QS_ENOMEM, "layer errors: out of memory");
		for (int i = 0; i < 3 && bt[i]; i++) {
			int idx = (int)(bt[i] - c->base->tensors);
			const model_tensor *qt = &c->qm->tensors[idx];
			if (qt->q)
				c->e[idx].rel_err = rel_err_h(bt[i], qt, H);
		}
		free(H);
	}
	return 0;
}

/* ------------------------------------------------------------ X^T X store */

struct quant_xtx {
	const model *base;
	int n_layers;
	float *(*h)[4];  /* (n_layers) x site: cols x cols, or NULL */
	float *head;     /* the output head's input */
	int head_cols;
	qs_error *err;   /* during collection */
};

size_t quant_xtx_bytes(const model *base)
{
	const model_config *cf = &base->cfg;
	size_t b = 0;
	for (int s = 0; s < 4; s++) {
		size_t c = (size_t)calib_site_cols(cf, s);
		b += c * c;
	}
	b *= (size_t)cf->n_layers;
	b += (size_t)cf->dim * cf->dim;
	return b * sizeof(float);
}

static int xtx_on_layer(void *user, int layer, calib_layer_stats *st)
{
	quant_xtx *x = user;
	for (int k = 0; k < st->n_sites; k++) {
		const calib_stats *cs = &st->site[k];
		if (!cs->xtx)
			continue;
		float *H = xtx_to_float(cs->xtx, cs->cols);
		if (!H)
			return qs_err(x->err, QS_ENOMEM, "output errors: out of memory");
		if (layer < 0) {
			x->head = H;
			x->head_cols = cs->cols;
		} else {
			x->h[layer][cs->site] = H;
		}
	}
	return 0;
}

void quant_xtx_free(quant_xtx *x)
{
	if (!x)
		return;
	for (int l = 0; x->h && l < x->n_layers; l++)
		for (int s = 0; s < 4; s++)
			free(x->h[l][s]);
	free(x->h);
	free(x->head);
	free(x);
}

int quant_xtx_collect(const model *base, const int *calib, int n_calib, int calib_len,
		      size_t max_bytes, qs_progress_fn progress, void *puser, quant_xtx **out,
		      qs_error *err)
{
	*out = NULL;
	const size_t need = quant_xtx_bytes(base);
	if (need > max_bytes)
		return qs_err(err, QS_EUNSUPP,
			      "output errors: X^T X of every input needs %.0f MiB, over the %.0f MiB allowed",
			      (double)need / 1048576.0, (double)max_bytes / 1048576.0);
	quant_xtx *x = calloc(1, sizeof(*x));
	if (x) {
		x->base = base;
		x->n_layers = base->cfg.n_layers;
		x->h = calloc((size_t)(x->n_layers ? x->n_layers : 1), sizeof(*x->h));
		x->err = err;
	}
	if (!x || !x->h) {
		quant_xtx_free(x);
		return qs_err(err, QS_ENOMEM, "output errors: out of memory");
	}
	calib_opts o;
	calib_opts_default(&o);
	o.n_samples = n_calib;
	o.seq_len = calib_len;
	o.xtx = 1;
	int rc = calib_run(base, calib, n_calib, calib_len, &o, xtx_on_layer, x, progress, puser, err);
	x->err = NULL;
	if (rc) {
		quant_xtx_free(x);
		return rc;
	}
	*out = x;
	return 0;
}

/* X^T X of the input of base tensor bt, or NULL */
static const float *xtx_of(const quant_xtx *x, const model_tensor *bt)
{
	const model *b = x->base;
	if (bt == b->output)
		return x->head;
	for (int l = 0; l < x->n_layers; l++)
		for (int s = 0; s < 4; s++) {
			const model_tensor *st[3];
			site_tensors(b, l, s, st);
			for (int i = 0; i < 3; i++)
				if (st[i] == bt)
					return x->h[l][s];
		}
	return NULL;
}

double quant_xtx_rel_err(const quant_xtx *x, const model *qm, const char *name)
{
	if (!x || !qm || qm->base != x->base)
		return NAN;
	const model_tensor *qt = model_find(qm, name);
	if (!qt || !qt->q)
		return NAN;
	const model_tensor *bt = &x->base->tensors[qt - qm->tensors];
	const float *H = xtx_of(x, bt);
	return H ? rel_err_h(bt, qt, H) : NAN;
}

double quant_xtx_rel_err_f32(const quant_xtx *x, const char *name, const float *W, float *Q)
{
	const model_tensor *bt = x ? model_find(x->base, name) : NULL;
	const float *H = bt ? xtx_of(x, bt) : NULL;
	return H ? rel_err_f32(W, Q, (int)bt->ne[1], (int)bt->ne[0], H) : NAN;
}

int quant_layer_errors(const model *base, const model *qm, const int *calib, int n_calib,
		       int calib_len, quant_layer_err **errs, int *n_errs, qs_error *err)
{
	*errs = NULL;
	*n_errs = 0;
	if (qm->base != base || qm->n_tensors != base->n_tensors)
		return qs_err(err, QS_EUSAGE, "layer errors: the quantized model is not derived from this base");
	quant_layer_err *e = calloc((size_t)base->n_tensors, sizeof(*e));
	if (!e)
		return qs_err(err, QS_ENOMEM, "layer errors: out of memory");
	for (int i = 0; i < base->n_tensors; i++) {
		snprintf(e[i].name, sizeof(e[i].name), "%s", base->tensors[i].name);
		e[i].rel_err = NAN;
	}
	calib_opts o;
	calib_opts_default(&o);
	o.n_samples = n_calib;
	o.seq_len = calib_len;
	o.xtx = 1;
	lerr_ctx c = { base, qm, e, err };
	int rc = calib_run(base, calib, n_calib, calib_len, &o, lerr_on_layer, &c, NULL, NULL, err);
	if (rc) {
		free(e);
		return rc;
	}
	*errs = e;
	*n_errs = base->n_tensors;
	return 0;
}

/* ------------------------------------------------------------------ recipes */

int quant_plan_save(const char *path, const model *m, const quant_plan *p, const char *source,
		    qs_error *err)
{
	size_t params = 0, bytes = quant_plan_bytes(m, p, &params);
	json_t *root = json_object(), *ts = json_array();
	json_object_set_new(root, "qscope_recipe", json_integer(1));
	json_object_set_new(root, "model", json_string(m->path));
	if (source)
		json_object_set_new(root, "source", json_string(source));
	json_object_set_new(root, "bytes", json_integer((json_int_t)bytes));
	json_object_set_new(root, "bpw", json_real(params ? 8.0 * (double)bytes / (double)params : 0));
	for (int i = 0; i < p->n; i++) {
		char sp[128];
		quant_spec_str(&p->e[i].spec, sp, sizeof(sp));
		json_array_append_new(ts, json_pack("{s:s, s:s}", "name", p->e[i].name, "spec", sp));
	}
	json_object_set_new(root, "tensors", ts);
	char *text = json_dumps(root, JSON_INDENT(1));
	json_decref(root);
	if (!text)
		return qs_err(err, QS_ENOMEM, "recipe: out of memory");
	int rc = qs_write_atomic(path, text, strlen(text), err);
	free(text);
	return rc;
}

int quant_plan_load(const char *path, const model *m, quant_plan *out, qs_error *err)
{
	memset(out, 0, sizeof(*out));
	json_error_t je;
	json_t *root = json_load_file(path, 0, &je);
	if (!root)
		return qs_err(err, je.line < 0 ? QS_EIO : QS_EFORMAT, "%s:%d: %s", path, je.line, je.text);
	int rc = 0;
	json_t *ver = json_object_get(root, "qscope_recipe"), *ts = json_object_get(root, "tensors");
	if (!json_is_integer(ver) || json_integer_value(ver) != 1) {
		rc = qs_err(err, QS_EFORMAT, "%s: field 'qscope_recipe' missing or not version 1", path);
		goto out;
	}
	if (!json_is_array(ts)) {
		rc = qs_err(err, QS_EFORMAT, "%s: field 'tensors' must be an array", path);
		goto out;
	}
	for (size_t i = 0; i < json_array_size(ts) && !rc; i++) {
		json_t *e = json_array_get(ts, i);
		const char *name = json_string_value(json_object_get(e, "name"));
		const char *spec = json_string_value(json_object_get(e, "spec"));
		if (!name || !spec) {
			rc = qs_err(err, QS_EFORMAT, "%s: tensors[%zu]: fields 'name' and 'spec' must be strings",
				    path, i);
			break;
		}
		const model_tensor *t = model_find(m, name);
		if (!t || !quant_tensor_kind(name)) {
			char pb[160];
			rc = qs_err(err, QS_EFORMAT, "%s: tensors[%zu]: '%s' is not a quantizable tensor of %s",
				    path, i, qs_printz(pb, sizeof(pb), name), m->path);
			break;
		}
		quant_spec s;
		qs_error e2;
		if (quant_spec_parse(spec, &s, &e2)) {
			rc = qs_err(err, QS_EFORMAT, "%s: tensors[%zu] (%s): %s", path, i, name, e2.msg);
			break;
		}
		if (quant_spec_check(&s, name, (int)t->ne[1], (int)t->ne[0], &e2)) {
			rc = qs_err(err, QS_EFORMAT, "%s: %s", path, e2.msg);
			break;
		}
		if (quant_plan_find(out, name)) {
			rc = qs_err(err, QS_EFORMAT, "%s: tensors[%zu]: '%s' listed twice", path, i, name);
			break;
		}
		rc = quant_plan_add(out, name, &s, err);
	}
out:
	json_decref(root);
	if (rc)
		quant_plan_release(out);
	return rc;
}
