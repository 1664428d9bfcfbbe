/* workbench.c - see workbench.h. */
#include "workbench.h"

#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../engine/calib.h"
#include "../engine/eval.h"
#include "../lua/policy.h"

#define WB_MIN_W 60
#define WB_MIN_H 10
#define WB_UNDO_MAX 256

typedef struct wb_spec {
	quant_spec s;
	int on;            /* quantized with s; 0: kept as stored */
} wb_spec;

typedef struct wb_row {
	const model_tensor *t;
	const char *kind;
	int layer;         /* block; -1 token_embd; n_layers output */
	double kurt;       /* weight kurtosis */
	const wb_tensor_eval *te; /* at the last evaluation (in ev), or NULL */
	wb_spec sp;
	int sel;
} wb_row;

enum { SORT_MODEL, SORT_PARAMS, SORT_BPW, SORT_KURT, SORT_SENS, SORT_N };
static const char *const sort_names[SORT_N] = { "model order", "params", "bits/weight",
						 "weight kurtosis", "sensitivity" };

enum { MODE_TABLE, MODE_HELP, MODE_FILTER, MODE_POLICY, MODE_HISTORY, MODE_POLICY_PATH };

#define WB_HISTORY 32

typedef struct wb_result {
	char what[96];     /* the plan, in short */
	double bpw, base_ppl, ppl, kld, same_top;
	int chunks;
} wb_result;

struct wb {
	const model *m;
	const sens_table *sens;
	wb_row *rows;
	int n;
	int *view;         /* (n) rows shown, in display order */
	int n_view;
	int cur, top;      /* cursor and first shown, as view positions */
	int anchor;        /* the row Space last selected (a model row), or -1: V selects to it */
	int sort, mode;
	char filter[128], input[128];
	regex_t re;
	int have_re;
	wb_spec *undo;     /* (WB_UNDO_MAX, n) snapshots */
	int n_undo, undo_pos; /* snapshots stored; the current state's index */
	int page;          /* rows per page at the last draw */
	int tab_y0;        /* screen row of the first table row at the last draw */
	char status[256];
	int dirty;         /* plan changed since wb_take_plan */
	unsigned version;  /* plan changes so far */
	int busy;          /* an evaluation is running */
	int have_eval;
	wb_eval ev;
	char ev_err[256];
	/* the detail pane */
	int detail;        /* shown */
	const calib_set *calib;
	int want_calib, calib_busy;
	char calib_err[256];
	int ws_row;        /* row whose weight statistics are in ws, or -1 */
	calib_stats ws;
	/* the policy picker */
	char **pol;        /* (n_pol) paths */
	int n_pol, pol_cur;
	char pol_err[512], pol_log[256];
	/* full evaluation and the results history */
	int want_chat;
	int want_full, cancel_full, full_running, full_done, full_total;
	double full_ppl;
	wb_result hist[WB_HISTORY];
	int n_hist;
};

/* The table screen's key bindings are the rows of `bindings` (after the
 * editing functions, below); wb_key dispatches from them, and the help
 * screen, the footer and the docs' key tables (`qscope tui --keys-markdown`)
 * are printed from them. */
static int keys_table(const wb_keydef **out);

const wb_keydef *wb_keys(int *n)
{
	const wb_keydef *k;
	*n = keys_table(&k);
	return k;
}

/* ------------------------------------------------------------ plan state */

static size_t row_params(const wb_row *r)
{
	return (size_t)r->t->ne[0] * (size_t)r->t->ne[1];
}

static size_t row_bytes(const wb_row *r)
{
	return r->sp.on ? quant_spec_bytes(&r->sp.s, (int)r->t->ne[1], (int)r->t->ne[0]) : r->t->nbytes;
}

static void snapshot(wb *w)
{
	/* drop the redo tail, make room, store the current state */
	w->n_undo = w->undo_pos + 1;
	if (w->n_undo == WB_UNDO_MAX) {
		memmove(w->undo, w->undo + w->n, sizeof(wb_spec) * (size_t)w->n * (WB_UNDO_MAX - 1));
		w->n_undo--;
	}
	for (int i = 0; i < w->n; i++)
		w->undo[(size_t)w->n_undo * w->n + i] = w->rows[i].sp;
	w->undo_pos = w->n_undo;
	w->n_undo++;
	w->dirty = 1;
	w->version++;
}

static void restore(wb *w, int pos)
{
	for (int i = 0; i < w->n; i++)
		w->rows[i].sp = w->undo[(size_t)pos * w->n + i];
	w->undo_pos = pos;
	w->dirty = 1;
	w->version++;
}

/* ------------------------------------------------------------ view */

static const sens_entry *row_sens(const wb *w, const wb_row *r)
{
	if (!w->sens || !r->sp.on)
		return NULL;
	char c[96];
	quant_spec_str(&r->sp.s, c, sizeof(c));
	return sens_find(w->sens, r->t->name, c);
}

static double sort_key(const wb *w, const wb_row *r)
{
	switch (w->sort) {
	case SORT_PARAMS: return (double)row_params(r);
	case SORT_BPW: return 8.0 * (double)row_bytes(r) / (double)row_params(r);
	case SORT_KURT: return r->kurt;
	case SORT_SENS: {
		const sens_entry *e = row_sens(w, r);
		return e ? e->kld : -1;
	}
	default: return 0;
	}
}

static const wb *g_sort_wb; /* qsort has no user pointer */

static int cmp_view(const void *a, const void *b)
{
	const wb *w = g_sort_wb;
	int i = *(const int *)a, j = *(const int *)b;
	double x = sort_key(w, &w->rows[i]), y = sort_key(w, &w->rows[j]);
	if (x != y)
		return x > y ? -1 : 1; /* largest first */
	return i - j;
}

static void rebuild_view(wb *w)
{
	int cur_row = w->n_view > 0 ? w->view[w->cur] : 0;
	w->n_view = 0;
	for (int i = 0; i < w->n; i++)
		if (!w->have_re || regexec(&w->re, w->rows[i].t->name, 0, NULL, 0) == 0)
			w->view[w->n_view++] = i;
	if (w->sort != SORT_MODEL) {
		g_sort_wb = w;
		qsort(w->view, (size_t)w->n_view, sizeof(int), cmp_view);
	}
	w->cur = 0;
	for (int k = 0; k < w->n_view; k++)
		if (w->view[k] == cur_row)
			w->cur = k;
	w->top = 0;
}

/* ------------------------------------------------------------ lifecycle */

wb *wb_new(const model *m, const sens_table *sens, qs_error *err)
{
	wb *w = calloc(1, sizeof(*w));
	if (!w) {
		qs_err(err, QS_ENOMEM, "workbench: out of memory");
		return NULL;
	}
	w->m = m;
	w->sens = sens;
	w->rows = calloc((size_t)m->n_tensors, sizeof(wb_row));
	w->view = calloc((size_t)m->n_tensors, sizeof(int));
	if (!w->rows || !w->view)
		goto nomem;
	/* block linears in model order, then token_embd and output */
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < m->n_tensors; i++) {
			const model_tensor *t = &m->tensors[i];
			const char *kind = quant_tensor_kind(t->name);
			if (!kind || t->n_dims != 2)
				continue;
			int edge = !strcmp(kind, "token_embd") || !strcmp(kind, "output");
			if (edge != pass || (!strcmp(kind, "output") && m->cfg.tied))
				continue;
			wb_row *r = &w->rows[w->n++];
			r->t = t;
			r->te = NULL;
			r->kind = kind;
			r->layer = !strcmp(kind, "token_embd") ? -1 : !strcmp(kind, "output") ? m->cfg.n_layers : 0;
			if (!edge)
				sscanf(t->name, "blk.%d.", &r->layer);
			calib_stats st;
			if (calib_weight_stats(t, 20.0f, 6.0f, &st, NULL) == 0) {
				r->kurt = st.kurtosis;
				calib_stats_release(&st);
			} else {
				r->kurt = NAN;
			}
		}
	w->undo = calloc((size_t)WB_UNDO_MAX * (size_t)(w->n ? w->n : 1), sizeof(wb_spec));
	if (!w->undo)
		goto nomem;
	w->undo_pos = -1;
	snapshot(w);
	w->dirty = 0; /* nothing to evaluate until the first change */
	w->anchor = -1;
	w->ws_row = -1;
	rebuild_view(w);
	return w;
nomem:
	wb_free(w);
	qs_err(err, QS_ENOMEM, "workbench: out of memory");
	return NULL;
}

void wb_free(wb *w)
{
	if (!w)
		return;
	if (w->have_re)
		regfree(&w->re);
	if (w->ws_row >= 0)
		calib_stats_release(&w->ws);
	for (int i = 0; i < w->n_pol; i++)
		free(w->pol[i]);
	free(w->pol);
	free(w->rows);
	free(w->view);
	free(w->undo);
	wb_eval_release(&w->ev);
	free(w);
}

int wb_set_plan(wb *w, const quant_plan *p, qs_error *err)
{
	for (int i = 0; i < w->n; i++) {
		const quant_spec *s = quant_plan_find(p, w->rows[i].t->name);
		if (s && quant_spec_check(s, w->rows[i].t->name, (int)w->rows[i].t->ne[1],
					  (int)w->rows[i].t->ne[0], err))
			return QS_EUSAGE;
	}
	for (int i = 0; i < w->n; i++) {
		const quant_spec *s = quant_plan_find(p, w->rows[i].t->name);
		w->rows[i].sp.on = s && s->method != QUANT_NONE;
		if (w->rows[i].sp.on)
			w->rows[i].sp.s = *s;
	}
	snapshot(w);
	return 0;
}

int wb_plan(const wb *w, quant_plan *out, qs_error *err)
{
	memset(out, 0, sizeof(*out));
	for (int i = 0; i < w->n; i++)
		if (w->rows[i].sp.on && quant_plan_add(out, w->rows[i].t->name, &w->rows[i].sp.s, err)) {
			quant_plan_release(out);
			return QS_ENOMEM;
		}
	return 0;
}

/* ------------------------------------------------------------ evaluation */

void wb_status(wb *w, const char *msg)
{
	snprintf(w->status, sizeof(w->status), "%s", msg);
}

unsigned wb_plan_version(const wb *w)
{
	return w->version;
}

int wb_dirty(const wb *w)
{
	return w->dirty;
}

int wb_take_plan(wb *w, quant_plan *out, qs_error *err)
{
	int rc = wb_plan(w, out, err);
	if (!rc)
		w->dirty = 0;
	return rc;
}

void wb_set_busy(wb *w, int busy)
{
	w->busy = busy;
}

void wb_eval_release(wb_eval *e)
{
	free(e->t);
	e->t = NULL;
	e->n_t = 0;
}

static int eval_copy(wb_eval *dst, const wb_eval *src)
{
	wb_tensor_eval *t = NULL;
	if (src->n_t) {
		t = malloc(sizeof(*t) * (size_t)src->n_t);
		if (!t)
			return -1;
		memcpy(t, src->t, sizeof(*t) * (size_t)src->n_t);
	}
	*dst = *src;
	dst->t = t;
	return 0;
}

void wb_set_eval(wb *w, const wb_eval *e, const char *err_msg)
{
	wb_eval copy;
	w->busy = 0;
	if (!err_msg && eval_copy(&copy, e))
		err_msg = "out of memory";
	if (err_msg) {
		snprintf(w->ev_err, sizeof(w->ev_err), "%s", err_msg);
		return;
	}
	w->ev_err[0] = 0;
	wb_eval_release(&w->ev);
	w->ev = copy;
	w->have_eval = 1;
	for (int i = 0; i < w->n; i++)
		w->rows[i].te = NULL;
	for (int k = 0; k < w->ev.n_t; k++) {
		const model_tensor *t = model_find(w->m, w->ev.t[k].name);
		for (int i = 0; t && i < w->n; i++)
			if (w->rows[i].t == t)
				w->rows[i].te = &w->ev.t[k];
	}
}

void wb_request_eval(wb *w)
{
	w->dirty = 1;
}

static void spec_of(const quant_plan *p, const char *name, char *buf, size_t cap)
{
	const quant_spec *s = p ? quant_plan_find(p, name) : NULL;
	if (s && s->method != QUANT_NONE)
		quant_spec_str(s, buf, cap);
	else
		snprintf(buf, cap, "none");
}

int wb_plan_diff(const model *m, const quant_plan *a, const quant_plan *b)
{
	int from = m->cfg.n_layers + 1;
	for (int k = 0; k < 2; k++) {
		const quant_plan *p = k ? b : a;
		for (int i = 0; i < p->n; i++) {
			char sa[128], sb[128];
			spec_of(a, p->e[i].name, sa, sizeof(sa));
			spec_of(b, p->e[i].name, sb, sizeof(sb));
			int l = quant_tensor_layer(m, p->e[i].name);
			if (strcmp(sa, sb) && l < from)
				from = l;
		}
	}
	return from;
}

/* Does any tensor of layer l use calibration in p (NULL: no)? Such a
 * tensor depends on the layers before it, and AWQ / SmoothQuant also
 * rescale their neighbours in the layer before those are quantized. */
static int layer_uses_calib(const model *m, const quant_plan *p, int l)
{
	for (int i = 0; p && i < p->n; i++)
		if (quant_tensor_layer(m, p->e[i].name) == l && quant_spec_needs_calib(&p->e[i].spec))
			return 1;
	return 0;
}

/* The per-tensor figures of tensor b (base) quantized as q. */
static void tensor_eval(const model_tensor *b, const model *qm, const quant_xtx *xtx,
			wb_tensor_eval *te)
{
	te->werr = te->oerr = te->max_abs = te->zero_frac = te->e_std = NAN;
	const model_tensor *qt = &qm->tensors[b - qm->base->tensors];
	float *wa = model_tensor_f32(b), *wq = model_tensor_f32_orig(qt);
	if (wa && wq) {
		const size_t n = (size_t)b->ne[0] * (size_t)b->ne[1];
		double num = 0, den = 0, mx = 0, se = 0;
		size_t nz = 0, to0 = 0;
		for (size_t j = 0; j < n; j++) {
			double d = (double)wa[j] - wq[j];
			num += d * d;
			se += d;
			den += (double)wa[j] * wa[j];
			mx = fmax(mx, fabs(d));
			nz += wa[j] != 0;
			to0 += wa[j] != 0 && wq[j] == 0;
			int qb = calib_hist_bin(wq[j]), eb = calib_hist_bin((float)d);
			int64_t *qc = qb >= 0 ? &te->qh.bin[qb] : qb == -1 ? &te->qh.zero : qb == -2 ? &te->qh.under
				    : qb == -3 ? &te->qh.over : &te->qh.nonfinite;
			int64_t *ec = eb >= 0 ? &te->eh.bin[eb] : eb == -1 ? &te->eh.zero : eb == -2 ? &te->eh.under
				    : eb == -3 ? &te->eh.over : &te->eh.nonfinite;
			(*qc)++;
			(*ec)++;
		}
		te->werr = den > 0 ? sqrt(num / den) : 0;
		te->max_abs = mx;
		te->zero_frac = nz ? (double)to0 / (double)nz : 0;
		double mean = se / (double)n, var = num / (double)n - mean * mean;
		te->e_std = var > 0 ? sqrt(var) : 0;
		if (xtx) /* from the same arrays: wq becomes W - Q here */
			te->oerr = quant_xtx_rel_err_f32(xtx, b->name, wa, wq);
	}
	free(wa);
	free(wq);
}

int wb_evaluate(const model *m, const quant_plan *p, const wb_eval_in *in, wb_eval *out,
		model **qm_out, qs_error *err)
{
	memset(out, 0, sizeof(*out));
	if (qm_out)
		*qm_out = NULL;
	const eval_ppl_result *b = eval_cache_base(in->ec);
	out->base_ppl = b->ppl;
	out->chunks = eval_cache_chunks(in->ec);
	out->ppl = b->ppl;
	out->same_top = 100;
	out->from_layer = m->cfg.n_layers + 1;
	if (p->n == 0)
		return 0; /* the unquantized model: nothing to run */
	if (quant_plan_needs_calib(p) && !in->calib)
		return qs_err(err, QS_EUSAGE, "the plan needs calibration data");
	if (!(out->t = calloc((size_t)p->n, sizeof(*out->t))))
		return qs_err(err, QS_ENOMEM, "out of memory");
	quant_opts qo = { .calib = in->calib, .n_calib = in->n_calib, .calib_len = in->calib_len,
			  .progress = in->cancel, .user = in->cancel_user };
	if (in->last_qm && in->last) { /* the layers before the first change come out the same */
		const int d = wb_plan_diff(m, p, in->last), L = m->cfg.n_layers;
		qo.reuse = in->last_qm;
		qo.reuse_layers = d < 0 ? 0 : d > L ? L : d;
	}
	model *qm = NULL;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int rc = quant_model(m, p, &qo, &qm, NULL, err);
	if (rc) {
		wb_eval_release(out);
		return rc;
	}
	/* where to start: the first quantized layer against the unquantized
	 * model's states, or the first change against the last plan's */
	int from = m->cfg.n_layers;
	for (int i = 0; i < p->n; i++) {
		int l = quant_tensor_layer(m, p->e[i].name);
		from = l < from ? l : from;
		const model_tensor *t = model_find(qm, p->e[i].name);
		out->bytes += model_tensor_bytes(t);
		out->params += (size_t)t->ne[0] * (size_t)t->ne[1];
		out->n_quantized++;
	}
	int from_last = in->last && eval_cache_has_last(in->ec) ? wb_plan_diff(m, p, in->last) : -2;
	if (from_last > m->cfg.n_layers)
		from_last = m->cfg.n_layers; /* the same plan: the head alone */
	if (qm->actq) { /* activation quantization: no shortcuts */
		from = from < 0 ? -1 : 0;
		from_last = -2;
	}
	/* each quantized matrix against the original; a tensor with the same
	 * spec as last time, below the first change (or not calibrated), came
	 * out the same: its figures are reused */
	const int first_change = from_last > -2 ? from_last : -1;
	for (int i = 0; i < p->n; i++) {
		wb_tensor_eval *te = &out->t[out->n_t++];
		snprintf(te->name, sizeof(te->name), "%s", p->e[i].name);
		quant_spec_str(&p->e[i].spec, te->spec, sizeof(te->spec));
		const wb_tensor_eval *old = NULL;
		for (int k = 0; in->last_res && k < in->last_res->n_t && !old; k++)
			if (!strcmp(in->last_res->t[k].name, te->name) &&
			    !strcmp(in->last_res->t[k].spec, te->spec))
				old = &in->last_res->t[k];
		const int l = quant_tensor_layer(m, te->name);
		if (old && (l < first_change || (!layer_uses_calib(m, p, l) &&
						 !layer_uses_calib(m, in->last, l))) &&
		    (!in->xtx || !isnan(old->oerr))) {
			*te = *old;
			continue;
		}
		tensor_eval(model_find(m, p->e[i].name), qm, in->xtx, te);
	}
	eval_cmp_result r;
	if (from_last > from) {
		out->from_layer = from_last;
		out->incremental = 1;
		rc = eval_cache_run_last(in->ec, qm, from_last, &r, err);
	} else {
		out->from_layer = from;
		rc = eval_cache_run(in->ec, qm, from, &r, err);
	}
	if (!rc) {
		out->ppl = r.test.ppl;
		out->kld = r.kld_mean;
		out->same_top = r.same_top_pct;
		clock_gettime(CLOCK_MONOTONIC, &t1); /* quantizing the plan and evaluating it */
		out->seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
	} else {
		wb_eval_release(out);
	}
	if (!rc && qm_out)
		*qm_out = qm;
	else
		model_free(qm);
	return rc;
}

/* ------------------------------------------------------------ calibration */

void wb_set_calib(wb *w, const calib_set *cs)
{
	w->calib = cs;
	w->calib_busy = 0;
	w->calib_err[0] = 0;
}

int wb_want_calib(wb *w)
{
	int r = w->want_calib;
	w->want_calib = 0;
	return r;
}

void wb_set_calib_busy(wb *w, int busy, const char *err_msg)
{
	w->calib_busy = busy;
	snprintf(w->calib_err, sizeof(w->calib_err), "%s", err_msg ? err_msg : "");
}

/* ------------------------------------------------------------ full evaluation */

int wb_want_full(wb *w)
{
	int r = w->want_full;
	w->want_full = 0;
	return r;
}

int wb_cancel_full(const wb *w)
{
	return w->cancel_full;
}

void wb_set_full_progress(wb *w, int running, int done, int total, double running_ppl)
{
	w->full_running = running;
	w->full_done = done;
	w->full_total = total;
	w->full_ppl = running_ppl;
	if (!running)
		w->cancel_full = 0;
}

/* "8 x gptq:int3g128 + 2 x q8_0" for the history */
static void plan_summary(const wb *w, char *buf, size_t cap)
{
	char specs[8][64];
	int counts[8] = { 0 }, n = 0, other = 0;
	for (int i = 0; i < w->n; i++) {
		if (!w->rows[i].sp.on)
			continue;
		char sp[64];
		quant_spec_str(&w->rows[i].sp.s, sp, sizeof(sp));
		int k = 0;
		while (k < n && strcmp(specs[k], sp))
			k++;
		if (k == n && n < 8)
			snprintf(specs[n++], sizeof(specs[0]), "%s", sp);
		if (k < n)
			counts[k]++;
		else
			other++;
	}
	size_t len = 0;
	buf[0] = 0;
	for (int k = 0; k < n && len + 1 < cap; k++)
		len += (size_t)snprintf(buf + len, cap - len, "%s%d x %s", k ? " + " : "", counts[k], specs[k]);
	if (other && len + 1 < cap)
		snprintf(buf + len, cap - len, " + %d more", other);
	if (!n)
		snprintf(buf, cap, "unquantized");
}

void wb_plan_desc(const wb *w, char *buf, size_t cap)
{
	plan_summary(w, buf, cap);
}

int wb_want_chat(wb *w)
{
	int r = w->want_chat;
	w->want_chat = 0;
	return r;
}

void wb_add_result(wb *w, const eval_cmp_result *r, const char *err_msg)
{
	w->full_running = 0;
	w->cancel_full = 0;
	if (err_msg) {
		snprintf(w->status, sizeof(w->status), "full evaluation: %s", err_msg);
		return;
	}
	if (w->n_hist == WB_HISTORY)
		memmove(w->hist, w->hist + 1, sizeof(w->hist[0]) * (WB_HISTORY - 1));
	else
		w->n_hist++;
	wb_result *h = &w->hist[w->n_hist - 1];
	plan_summary(w, h->what, sizeof(h->what));
	size_t qb = 0, qp = 0;
	for (int i = 0; i < w->n; i++)
		if (w->rows[i].sp.on) {
			qb += row_bytes(&w->rows[i]);
			qp += row_params(&w->rows[i]);
		}
	h->bpw = qp ? 8.0 * (double)qb / (double)qp : 16;
	h->base_ppl = r->base.ppl;
	h->ppl = r->test.ppl;
	h->kld = r->kld_mean;
	h->same_top = r->same_top_pct;
	h->chunks = r->test.chunks;
	snprintf(w->status, sizeof(w->status),
		 "full evaluation, %d chunks: ppl %.4f (unquantized %.4f), KLD %.5f, top %.1f%% (r: history)",
		 h->chunks, h->ppl, h->base_ppl, h->kld, h->same_top);
}

/* ------------------------------------------------------------ policies */

int wb_add_policy(wb *w, const char *path)
{
	char **n = realloc(w->pol, sizeof(char *) * (size_t)(w->n_pol + 1));
	if (!n)
		return -1;
	w->pol = n;
	if (!(w->pol[w->n_pol] = strdup(path)))
		return -1;
	w->n_pol++;
	return 0;
}

static void pol_log(void *user, const char *line)
{
	wb *w = user;
	snprintf(w->pol_log, sizeof(w->pol_log), "%s", line);
}

/* run the picked policy: its plan replaces the current one (undo restores
 * it); an error stays in the picker */
static void apply_policy(wb *w)
{
	if (w->pol_cur < 0 || w->pol_cur >= w->n_pol)
		return;
	const char *path = w->pol[w->pol_cur];
	pol_opts o = { .calib = w->calib, .sens = w->sens, .log = pol_log, .user = w };
	pol_result r;
	qs_error e = { 0 };
	w->pol_log[0] = 0;
	if (pol_run_file(w->m, path, &o, &r, &e) || wb_set_plan(w, &r.plan, &e)) {
		snprintf(w->pol_err, sizeof(w->pol_err), "%s", e.msg);
		pol_result_release(&r);
		return;
	}
	snprintf(w->status, sizeof(w->status), "policy %s: %d tensors%s%.150s", path, r.plan.n,
		 w->pol_log[0] ? "; " : "", w->pol_log);
	pol_result_release(&r);
	w->pol_err[0] = 0;
	w->mode = MODE_TABLE;
	if (w->sort != SORT_MODEL)
		rebuild_view(w);
}

/* ------------------------------------------------------------ editing */

typedef int (*edit_fn)(wb_spec *sp, const wb_row *r);

static quant_spec default_spec(void)
{
	quant_spec s;
	quant_spec_parse("int4g128", &s, NULL);
	return s;
}

/* make sp an INT spec (from int4g128 when it is not one) */
static void ensure_int(wb_spec *sp)
{
	if (!sp->on || sp->s.fmt.fmt != KN_QF_INT) {
		int m = sp->on ? sp->s.method : QUANT_RTN;
		sp->s = default_spec();
		sp->s.method = m == QUANT_NONE ? QUANT_RTN : m;
		sp->on = 1;
	}
}

static int ed_method(wb_spec *sp, const wb_row *r)
{
	(void)r;
	static const int order[] = { QUANT_RTN, QUANT_GPTQ, QUANT_AWQ, QUANT_HQQ };
	ensure_int(sp);
	int k = 0;
	for (int i = 0; i < 4; i++)
		if (order[i] == sp->s.method)
			k = (i + 1) % 4;
	quant_spec d = quant_spec_default(order[k], sp->s.fmt);
	sp->s = d;
	return 0;
}

static int ed_bits(wb_spec *sp, const wb_row *r)
{
	(void)r;
	ensure_int(sp);
	sp->s.fmt.bits = sp->s.fmt.bits >= 8 ? 2 : sp->s.fmt.bits + 1;
	if (sp->s.fmt.bits == 7)
		sp->s.fmt.bits = 8; /* int7 exists but nobody wants it */
	return 0;
}

static int ed_group(wb_spec *sp, const wb_row *r)
{
	static const int groups[] = { 32, 64, 128, 256, 0 };
	ensure_int(sp);
	int k = 0;
	for (int i = 0; i < 5; i++)
		if ((groups[i] ? groups[i] : KN_GROUP_ROW) == sp->s.fmt.group)
			k = i;
	for (int step = 1; step <= 5; step++) { /* the next group that fits the row */
		int g = groups[(k + step) % 5];
		quant_spec t = sp->s;
		t.fmt.group = g ? g : KN_GROUP_ROW;
		if (!quant_spec_check(&t, r->t->name, (int)r->t->ne[1], (int)r->t->ne[0], NULL)) {
			sp->s = t;
			return 0;
		}
	}
	return -1;
}

static int ed_sym(wb_spec *sp, const wb_row *r)
{
	(void)r;
	ensure_int(sp);
	sp->s.fmt.sym = !sp->s.fmt.sym;
	return 0;
}

static int ed_format(wb_spec *sp, const wb_row *r)
{
	(void)r;
	static const char *const fmts[] = { "q4_0", "q4_1", "q8_0", "nf4", "fp8", "int4g128" };
	char cur[96] = "";
	if (sp->on)
		quant_spec_str(&sp->s, cur, sizeof(cur));
	int k = 0;
	for (int i = 0; i < 6; i++)
		if (!strcmp(cur, fmts[i]))
			k = (i + 1) % 6;
	quant_spec_parse(fmts[k], &sp->s, NULL);
	sp->on = 1;
	return 0;
}

static int ed_keep(wb_spec *sp, const wb_row *r)
{
	(void)r;
	sp->on = 0;
	return 0;
}

/* Apply an edit to the selection (or the cursor row); rows whose result
 * does not fit them keep their spec and are counted in the status line. */
static void apply(wb *w, edit_fn fn, const char *what)
{
	int any_sel = 0, changed = 0, refused = 0;
	char why[200] = "";
	for (int i = 0; i < w->n; i++)
		any_sel |= w->rows[i].sel;
	for (int k = 0; k < w->n_view; k++) {
		wb_row *r = &w->rows[w->view[k]];
		if (any_sel ? !r->sel : k != w->cur)
			continue;
		wb_spec sp = r->sp;
		qs_error e = { 0 };
		int bad = fn(&sp, r) ? 1 : 0;
		if (!bad && sp.on &&
		    quant_spec_check(&sp.s, r->t->name, (int)r->t->ne[1], (int)r->t->ne[0], &e))
			bad = 2;
		if (bad) {
			if (!why[0])
				snprintf(why, sizeof(why), "%.190s", bad == 2 ? e.msg : "no value fits");
			refused++;
			continue;
		}
		r->sp = sp;
		changed++;
	}
	if (changed)
		snapshot(w);
	if (refused)
		snprintf(w->status, sizeof(w->status), "%s: %d changed, %d kept (%s)", what, changed,
			 refused, why);
	else
		snprintf(w->status, sizeof(w->status), "%s: %d tensor%s", what, changed,
			 changed == 1 ? "" : "s");
	if (w->sort != SORT_MODEL)
		rebuild_view(w);
}

static void set_filter(wb *w, const char *re)
{
	if (w->have_re)
		regfree(&w->re);
	w->have_re = 0;
	w->filter[0] = 0;
	if (*re) {
		int rc = regcomp(&w->re, re, REG_EXTENDED | REG_NOSUB);
		if (rc) {
			char msg[128];
			regerror(rc, &w->re, msg, sizeof(msg));
			snprintf(w->status, sizeof(w->status), "filter '%.60s': %s", re, msg);
		} else {
			w->have_re = 1;
			snprintf(w->filter, sizeof(w->filter), "%s", re);
		}
	}
	rebuild_view(w);
	if (w->have_re)
		snprintf(w->status, sizeof(w->status), "filter '%s': %d of %d tensors", w->filter,
			 w->n_view, w->n);
}

/* a one-line input: Backspace and printable ASCII */
static void line_edit(char *buf, size_t cap, int key)
{
	size_t n = strlen(buf);
	if (key == WB_KEY_BACKSPACE) {
		if (n)
			buf[n - 1] = 0;
	} else if (key >= 32 && key < 127 && n + 1 < cap) {
		buf[n] = (char)key;
		buf[n + 1] = 0;
	}
}

/* the mouse on the table: a click puts the cursor on the row, a click on
 * the cursor's row (un)selects it, the wheel moves three rows */
static int mouse_key(wb *w, int key)
{
	if (w->mode != MODE_TABLE || !w->n_view)
		return 0;
	if (key == WB_KEY_WHEEL_UP || key == WB_KEY_WHEEL_DOWN) {
		w->cur += key == WB_KEY_WHEEL_UP ? -3 : 3;
		w->cur = w->cur < 0 ? 0 : w->cur >= w->n_view ? w->n_view - 1 : w->cur;
		return WB_REDRAW;
	}
	const int k = w->top + (key - WB_KEY_CLICK - w->tab_y0);
	if (key - WB_KEY_CLICK < w->tab_y0 || k >= w->n_view || k >= w->top + w->page)
		return 0; /* not on a row */
	if (k == w->cur) {
		w->rows[w->view[k]].sel ^= 1;
		w->anchor = w->view[k];
	}
	w->cur = k;
	return WB_REDRAW;
}

/* ------------------------------------------------------------ key bindings */

static int page_rows(const wb *w) { return w->page > 1 ? w->page : 10; }
static int k_down(wb *w) { w->cur++; return 0; }
static int k_up(wb *w) { w->cur--; return 0; }
static int k_pgdn(wb *w) { w->cur += page_rows(w); return 0; }
static int k_pgup(wb *w) { w->cur -= page_rows(w); return 0; }
static int k_home(wb *w) { w->cur = 0; return 0; }
static int k_end(wb *w) { w->cur = w->n_view - 1; return 0; }
static int k_quit(wb *w) { (void)w; return WB_QUIT; }

static int k_select(wb *w)
{
	if (w->n_view) {
		w->rows[w->view[w->cur]].sel ^= 1;
		w->anchor = w->view[w->cur];
		w->cur++;
	}
	return 0;
}

static int k_range(wb *w)
{
	int from = -1;
	for (int k = 0; k < w->n_view; k++)
		if (w->view[k] == w->anchor)
			from = k;
	if (from < 0 || !w->n_view) {
		snprintf(w->status, sizeof(w->status), "V: select a first row with Space");
		return 0;
	}
	int a = from < w->cur ? from : w->cur, b = from < w->cur ? w->cur : from;
	for (int k = a; k <= b; k++)
		w->rows[w->view[k]].sel = 1;
	snprintf(w->status, sizeof(w->status), "selected rows %d to %d", a + 1, b + 1);
	return 0;
}

static int k_kind(wb *w)
{
	if (!w->n_view)
		return 0;
	const char *kind = w->rows[w->view[w->cur]].kind;
	int cnt = 0;
	for (int k = 0; k < w->n_view; k++)
		if (!strcmp(w->rows[w->view[k]].kind, kind)) {
			w->rows[w->view[k]].sel = 1;
			cnt++;
		}
	snprintf(w->status, sizeof(w->status), "selected %d %s", cnt, kind);
	return 0;
}

static int k_all(wb *w)
{
	for (int k = 0; k < w->n_view; k++)
		w->rows[w->view[k]].sel = 1;
	snprintf(w->status, sizeof(w->status), "selected %d tensors", w->n_view);
	return 0;
}

static int k_clear(wb *w)
{
	for (int i = 0; i < w->n; i++)
		w->rows[i].sel = 0;
	return 0;
}

static int k_method(wb *w) { apply(w, ed_method, "method"); return 0; }
static int k_bits(wb *w) { apply(w, ed_bits, "bits"); return 0; }
static int k_group(wb *w) { apply(w, ed_group, "group"); return 0; }
static int k_sym(wb *w) { apply(w, ed_sym, "symmetric"); return 0; }
static int k_format(wb *w) { apply(w, ed_format, "format"); return 0; }
static int k_keep(wb *w) { apply(w, ed_keep, "keep"); return 0; }

static int k_undo(wb *w)
{
	if (w->undo_pos > 0) {
		restore(w, w->undo_pos - 1);
		snprintf(w->status, sizeof(w->status), "undone");
	} else {
		snprintf(w->status, sizeof(w->status), "nothing to undo");
	}
	return 0;
}

static int k_redo(wb *w)
{
	if (w->undo_pos + 1 < w->n_undo) {
		restore(w, w->undo_pos + 1);
		snprintf(w->status, sizeof(w->status), "redone");
	} else {
		snprintf(w->status, sizeof(w->status), "nothing to redo");
	}
	return 0;
}

static int k_filter(wb *w) /* a new filter; Enter on an empty one shows every row */
{
	w->mode = MODE_FILTER;
	w->input[0] = 0;
	return 0;
}

static int k_sort(wb *w)
{
	w->sort = (w->sort + 1) % SORT_N;
	rebuild_view(w);
	snprintf(w->status, sizeof(w->status), "sorted by %s", sort_names[w->sort]);
	return 0;
}

static int k_detail(wb *w) { w->detail = !w->detail; return 0; }
static int k_help(wb *w) { w->mode = MODE_HELP; return 0; }
static int k_history(wb *w) { w->mode = MODE_HISTORY; return 0; }
static int k_chat(wb *w) { w->want_chat = 1; return 0; }

static int k_full(wb *w)
{
	if (w->full_running)
		snprintf(w->status, sizeof(w->status), "a full evaluation is running (Esc cancels)");
	else
		w->want_full = 1;
	return 0;
}

static int k_policy(wb *w)
{
	w->mode = MODE_POLICY;
	w->pol_err[0] = 0;
	return 0;
}

static int k_calib(wb *w)
{
	if (w->calib)
		snprintf(w->status, sizeof(w->status), "calibration statistics are loaded");
	else if (!w->calib_busy)
		w->want_calib = 1;
	return 0;
}

/* One action of the table screen. A row with join set is shown together
 * with the row before it ("j, Down / k, Up"), under that row's help; a row
 * without keys only documents keys handled before the table (the mouse, Esc
 * while a full evaluation runs). foot: the row's words in the footer. */
typedef struct wb_binding {
	int key[3];          /* key codes, 0-terminated */
	const char *label;   /* as shown: "j, Down" */
	const char *help;    /* NULL on a join row */
	const char *foot;    /* NULL: not in the footer */
	int (*act)(wb *w);   /* WB_QUIT or 0 */
} wb_binding;

#define JOIN NULL
static const wb_binding bindings[] = {
	{ { 'j', WB_KEY_DOWN }, "j, Down", "move the cursor", "j/k move", k_down },
	{ { 'k', WB_KEY_UP }, "k, Up", JOIN, NULL, k_up },
	{ { WB_KEY_PGDN }, "PgDn", "move a page, to the first / last row", NULL, k_pgdn },
	{ { WB_KEY_PGUP }, "PgUp", JOIN, NULL, k_pgup },
	{ { WB_KEY_HOME }, "Home", JOIN, NULL, k_home },
	{ { WB_KEY_END }, "End", JOIN, NULL, k_end },
	{ { ' ' }, "Space", "select or unselect the row (edits apply to the selection, else the row)",
	  "space select", k_select },
	{ { 0 }, "mouse", "click: cursor to the row; click on the cursor's row: (un)select it; wheel: move",
	  NULL, NULL },
	{ { 'V' }, "V", "select the range from the row Space last selected to the cursor", NULL, k_range },
	{ { 'a' }, "a", "select every row of the cursor row's kind (all ffn_down, ...)", NULL, k_kind },
	{ { 'A' }, "A", "select every shown row / clear the selection", NULL, k_all },
	{ { WB_KEY_ESC }, "Esc", JOIN, NULL, k_clear },
	{ { 'm' }, "m", "cycle the method: rtn, gptq, awq, hqq", "m b g s f x edit", k_method },
	{ { 'b' }, "b", "cycle the bits: 2 to 8", NULL, k_bits },
	{ { 'g' }, "g", "cycle the group: 32, 64, 128, 256, per channel (sizes that do not divide the row are skipped)",
	  NULL, k_group },
	{ { 's' }, "s", "toggle symmetric / asymmetric", NULL, k_sym },
	{ { 'f' }, "f", "cycle the format: q4_0, q4_1, q8_0, nf4, fp8, int4g128", NULL, k_format },
	{ { 'x' }, "x", "keep as stored (not quantized)", NULL, k_keep },
	{ { 'u' }, "u", "undo / redo", "u undo", k_undo },
	{ { WB_KEY_CTRL_R }, "Ctrl-R", JOIN, NULL, k_redo },
	{ { '/' }, "/", "filter rows by a regular expression (empty: all)", "/ filter", k_filter },
	{ { 'o' }, "o", "cycle the sort: model order, params, bits/weight, kurtosis, sensitivity", NULL, k_sort },
	{ { WB_KEY_ENTER }, "Enter", "show / hide the detail pane: histograms of the weights and inputs",
	  NULL, k_detail },
	{ { 'c' }, "c", "calibrate (input statistics for the detail pane; cached on disk)", NULL, k_calib },
	{ { 'p' }, "p", "apply a Lua policy (picker over the bundled policies, o there types any path; errors shown there)",
	  "p policy", k_policy },
	{ { 'C' }, "C", "chat: the original and the quantized model answer one prompt side by side",
	  "C chat", k_chat },
	{ { 'E' }, "E", "evaluate the plan on the whole text (progress bar) / cancel it", NULL, k_full },
	{ { 0 }, "Esc", JOIN, NULL, NULL },
	{ { 'r' }, "r", "the results history: every full evaluation of this session", NULL, k_history },
	{ { '?', WB_KEY_F1 }, "?, F1", "this help (any key returns)", "? help", k_help },
	{ { 'q', WB_KEY_CTRL_C }, "q, Ctrl-C", "quit (Ctrl-C also from the chat); the plan is saved after every change",
	  "q quit", k_quit },
};
#undef JOIN
enum { N_BINDINGS = sizeof(bindings) / sizeof(bindings[0]) };

static const wb_binding *binding_of(int key)
{
	for (int i = 0; i < N_BINDINGS; i++)
		for (int j = 0; j < 3 && bindings[i].key[j]; j++)
			if (bindings[i].key[j] == key)
				return &bindings[i];
	return NULL;
}

/* The help rows: each row with its join rows merged ("j, Down / k, Up"). */
static int keys_table(const wb_keydef **out)
{
	static wb_keydef rows[N_BINDINGS];
	static char labels[N_BINDINGS][64];
	static int n = -1;
	if (n < 0) {
		n = 0;
		for (int i = 0; i < N_BINDINGS; i++) {
			if (!bindings[i].help && n > 0) {
				size_t l = strlen(labels[n - 1]);
				snprintf(labels[n - 1] + l, sizeof(labels[0]) - l, " / %s", bindings[i].label);
				continue;
			}
			snprintf(labels[n], sizeof(labels[0]), "%s", bindings[i].label);
			rows[n] = (wb_keydef){ labels[n], bindings[i].help ? bindings[i].help : "" };
			n++;
		}
	}
	*out = rows;
	return n;
}

/* The footer: the foot words of the rows that have them. */
static const char *footer(void)
{
	static char buf[160];
	if (!buf[0]) {
		size_t o = 0;
		for (int i = 0; i < N_BINDINGS; i++)
			if (bindings[i].foot && o < sizeof(buf))
				o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s", o ? "  " : "",
						      bindings[i].foot);
	}
	return buf;
}

int wb_keys_markdown(FILE *f)
{
	const wb_keydef *k;
	int n = keys_table(&k);
	fprintf(f, "| keys | what |\n| --- | --- |\n");
	for (int i = 0; i < n; i++)
		fprintf(f, "| %s | %s |\n", k[i].keys, k[i].help);
	return n;
}

int wb_key(wb *w, int key)
{
	if (key == WB_KEY_RESIZE)
		return WB_REDRAW;
	if (key >= WB_KEY_CLICK || key == WB_KEY_WHEEL_UP || key == WB_KEY_WHEEL_DOWN)
		return mouse_key(w, key);
	if (w->mode == MODE_HELP || w->mode == MODE_HISTORY) {
		w->mode = MODE_TABLE;
		return WB_REDRAW;
	}
	if (key == WB_KEY_ESC && w->full_running) {
		w->cancel_full = 1;
		snprintf(w->status, sizeof(w->status), "full evaluation: cancelling...");
		return WB_REDRAW;
	}
	if (w->mode == MODE_POLICY_PATH) { /* typing a policy's path */
		size_t n = strlen(w->input);
		if (key == WB_KEY_ENTER) {
			w->mode = MODE_POLICY;
			if (n && !wb_add_policy(w, w->input)) {
				w->pol_cur = w->n_pol - 1;
				apply_policy(w);
			}
		} else if (key == WB_KEY_ESC) {
			w->mode = MODE_POLICY;
		} else {
			line_edit(w->input, sizeof(w->input), key);
		}
		return WB_REDRAW;
	}
	if (w->mode == MODE_POLICY) {
		if (key == 'o') {
			w->mode = MODE_POLICY_PATH;
			w->input[0] = 0;
			return WB_REDRAW;
		}
		if (key == WB_KEY_ESC || key == 'q')
			w->mode = MODE_TABLE;
		else if ((key == 'j' || key == WB_KEY_DOWN) && w->pol_cur + 1 < w->n_pol)
			w->pol_cur++;
		else if ((key == 'k' || key == WB_KEY_UP) && w->pol_cur > 0)
			w->pol_cur--;
		else if (key == WB_KEY_ENTER)
			apply_policy(w);
		return WB_REDRAW;
	}
	if (w->mode == MODE_FILTER) {
		if (key == WB_KEY_ENTER) {
			w->mode = MODE_TABLE;
			set_filter(w, w->input);
		} else if (key == WB_KEY_ESC) {
			w->mode = MODE_TABLE;
		} else {
			line_edit(w->input, sizeof(w->input), key);
		}
		return WB_REDRAW;
	}
	w->status[0] = 0;
	const wb_binding *bd = binding_of(key);
	if (!bd)
		return 0;
	if (bd->act(w) == WB_QUIT)
		return WB_QUIT;
	if (w->cur >= w->n_view)
		w->cur = w->n_view - 1;
	if (w->cur < 0)
		w->cur = 0;
	return WB_REDRAW;
}

/* ------------------------------------------------------------ drawing */

static int heat(double kld)
{
	/* log-spaced buckets: < 1e-4, < 1e-3, < 1e-2, < 3e-2, above */
	return kld < 1e-4 ? 0 : kld < 1e-3 ? 1 : kld < 1e-2 ? 2 : kld < 3e-2 ? 3 : 4;
}

static void draw_help(wb *w, tui_canvas *c)
{
	tui_put(c, 0, 0, 0, TUI_BOLD, "qscope workbench: keys (any key returns)");
	int n;
	const wb_keydef *k = wb_keys(&n);
	for (int i = 0; i < n && i + 2 < c->h; i++) {
		tui_put(c, i + 2, 2, 24, TUI_BOLD, k[i].keys);
		tui_put(c, i + 2, 28, 0, TUI_NORMAL, k[i].help);
	}
	(void)w;
}

/* the first and last non-empty bins of h, widened to [*lo, *hi] if those
 * are set (>= 0); 0 if h is empty */
static int hist_span(const calib_hist *h, int *lo, int *hi)
{
	int any = 0;
	for (int i = 0; i < CALIB_HIST_BINS; i++)
		if (h->bin[i]) {
			if (*lo < 0 || i < *lo)
				*lo = i;
			if (*hi < 0 || i > *hi)
				*hi = i;
			any = 1;
		}
	return any;
}

/* bins [lo, hi] of a histogram as one line of block characters, height by
 * log count; bins at or above `hot` (a value) in the hot colour. Returns
 * the columns used. */
static int draw_bins(tui_canvas *c, int y, int x, int maxw, const calib_hist *h, int lo, int hi,
		     double hot)
{
	static const char *const blocks[] = { " ", "\u2581", "\u2582", "\u2583", "\u2584",
					      "\u2585", "\u2586", "\u2587", "\u2588" };
	double mx = 0;
	for (int i = lo; i <= hi; i++)
		mx = fmax(mx, log1p((double)h->bin[i]));
	int n = 0;
	for (int i = lo; i <= hi && n < maxw; i++, n++) {
		int lv = h->bin[i] && mx > 0 ? 1 + (int)(7.0 * log1p((double)h->bin[i]) / mx) : 0;
		int attr = hot > 0 && calib_hist_edge(i + 1) > hot ? TUI_HEAT0 + 4 : TUI_NORMAL;
		tui_put(c, y, x + n, 1, attr, blocks[lv > 8 ? 8 : lv]);
	}
	return n;
}

/* the value axis under bins [lo, hi] drawn n columns wide */
static void draw_axis(tui_canvas *c, int y, int x, int n, int lo, int hi)
{
	tui_putf(c, y, x, 0, TUI_DIM, "%-8.0e", (double)calib_hist_edge(lo));
	if (n > 12)
		tui_putf(c, y, x + n - 6, 0, TUI_DIM, "%.0e", (double)calib_hist_edge(hi + 1));
}

/* a histogram from its first to its last non-empty bin, with its axis
 * below: two lines. Returns the columns used. */
static int draw_hist(tui_canvas *c, int y, int x, int maxw, const calib_hist *h, double hot)
{
	int lo = -1, hi = -1;
	if (!hist_span(h, &lo, &hi))
		return 0;
	int n = draw_bins(c, y, x, maxw, h, lo, hi, hot);
	draw_axis(c, y + 1, x, n, lo, hi);
	return n;
}

static const calib_stats *input_stats(const wb *w, const wb_row *r)
{
	if (!w->calib || !strcmp(r->kind, "token_embd"))
		return NULL;
	if (!strcmp(r->kind, "output"))
		return w->calib->head.n_sites ? &w->calib->head.site[0] : NULL;
	int site = !strcmp(r->kind, "attn_output") ? 1 : !strcmp(r->kind, "ffn_down") ? 3
		 : !strncmp(r->kind, "ffn_", 4) ? 2 : 0;
	if (r->layer < 0 || r->layer >= w->calib->n_layers)
		return NULL;
	const calib_layer_stats *ls = &w->calib->layers[r->layer];
	for (int i = 0; i < ls->n_sites; i++)
		if (ls->site[i].site == site)
			return &ls->site[i];
	return NULL;
}

static void draw_detail(wb *w, tui_canvas *c, int y0, int y1)
{
	if (!w->n_view)
		return;
	int ri = w->view[w->cur];
	const wb_row *r = &w->rows[ri];
	if (w->ws_row != ri) {
		if (w->ws_row >= 0)
			calib_stats_release(&w->ws);
		w->ws_row = calib_weight_stats(r->t, 20.0f, 6.0f, &w->ws, NULL) ? -1 : ri;
	}
	for (int x = 0; x < c->w; x++)
		tui_put(c, y0, x, 1, TUI_DIM, "\u2500");
	tui_putf(c, y0, 2, 0, TUI_BOLD, " %s ", r->t->name);
	int y = y0 + 1;
	const wb_tensor_eval *te = r->sp.on ? r->te : NULL;
	if (w->ws_row == ri && y + 2 <= y1) {
		/* |w| before and, once evaluated, |Q(w)| after quantization on
		 * one axis; then the error's own histogram */
		const calib_stats *s = &w->ws;
		tui_putf(c, y, 0, 0, TUI_NORMAL,
			 "weights  absmax %.4g  rms %.4g  kurtosis %.2f  >6 sigma %.3f%%  |w| histogram (log counts):",
			 s->absmax_all, s->rms_all, s->kurtosis, 100.0 * s->outlier_frac);
		int lo = -1, hi = -1, n = 0;
		hist_span(&s->hist, &lo, &hi);
		if (te && y + 5 <= y1)
			hist_span(&te->qh, &lo, &hi);
		else
			te = NULL;
		if (lo >= 0) {
			tui_put(c, y + 1, 0, 0, TUI_DIM, te ? " before" : "");
			n = draw_bins(c, y + 1, 9, c->w - 11, &s->hist, lo, hi, 6.0 * s->std);
			if (te) {
				tui_put(c, y + 2, 0, 0, TUI_DIM, " after");
				draw_bins(c, y + 2, 9, c->w - 11, &te->qh, lo, hi, 6.0 * s->std);
			}
			draw_axis(c, y + (te ? 3 : 2), 9, n, lo, hi);
		}
		y += te ? 4 : 3;
	}
	if (te && y + 2 <= y1) {
		char o[32] = "- (press c)";
		if (!isnan(te->oerr))
			snprintf(o, sizeof(o), "%.4f", te->oerr);
		tui_putf(c, y, 0, 0, TUI_NORMAL,
			 "%s  w.err %.4f  o.err %s  max |w-Q(w)| %.3g  std %.3g  zeroed %.1f%%  error histogram:",
			 te->spec, te->werr, o, te->max_abs, te->e_std, 100.0 * te->zero_frac);
		tui_put(c, y + 1, 0, 0, TUI_DIM, " error");
		draw_hist(c, y + 1, 9, c->w - 11, &te->eh, 0);
		y += 3;
	} else if (r->sp.on && y <= y1) {
		tui_put(c, y++, 0, 0, TUI_DIM,
			w->busy ? "quantized: evaluating..." : "quantized: no evaluation yet");
	}
	const calib_stats *in = input_stats(w, r);
	if (!in) {
		if (y <= y1)
			tui_put(c, y, 0, 0, TUI_DIM,
				w->calib_busy ? "inputs   calibrating..." :
				w->calib_err[0] ? w->calib_err :
				!strcmp(r->kind, "token_embd") ? "inputs   token ids (no activations)" :
				"inputs   press c to calibrate (debdoc-calib.txt, cached on disk)");
		return;
	}
	if (y + 2 <= y1) {
		tui_putf(c, y, 0, 0, TUI_NORMAL,
			 "inputs   absmax %.4g  rms %.4g  kurtosis %.1f  >6 sigma %.3f%%  outlier channels %d:",
			 in->absmax_all, in->rms_all, in->kurtosis, 100.0 * in->outlier_frac,
			 in->n_outlier_ch);
		draw_hist(c, y + 1, 2, c->w - 4, &in->hist, 6.0 * in->std);
		y += 3;
	}
	/* the channels with the largest absmax, as bars; outliers marked */
	int n = y1 - y + 1, cols = in->cols;
	if (n <= 0 || !in->absmax)
		return;
	int *top = malloc(sizeof(int) * (size_t)n);
	if (!top)
		return;
	int k = 0;
	for (int j = 0; j < cols; j++) { /* insertion into a short sorted list */
		int pos = k < n ? k++ : n;
		while (pos > 0 && in->absmax[top[pos - 1]] < in->absmax[j]) {
			if (pos < n)
				top[pos] = top[pos - 1];
			pos--;
		}
		if (pos < n)
			top[pos] = j;
	}
	double mx = in->absmax[top[0]] > 0 ? in->absmax[top[0]] : 1;
	int barw = c->w - 36 > 10 ? c->w - 36 : 10;
	for (int i = 0; i < k; i++) {
		int ch = top[i], outl = 0;
		for (int o = 0; o < in->n_outlier_ch; o++)
			outl |= in->outlier_ch[o] == ch;
		int len = (int)(barw * in->absmax[ch] / mx + 0.5);
		tui_putf(c, y + i, 0, 0, TUI_NORMAL, "  ch %4d %9.3f ", ch, (double)in->absmax[ch]);
		for (int b = 0; b < len; b++) /* after "  ch NNNN  absmax.xxx " (20 columns) */
			tui_put(c, y + i, 20 + b, 1, outl ? TUI_HEAT0 + 4 : TUI_NORMAL, "\u2588");
		if (outl)
			tui_put(c, y + i, 21 + len, 0, TUI_BOLD, "outlier");
		else
			tui_putf(c, y + i, 21 + len, 0, TUI_DIM, "%.1fx median",
				 in->absmax[ch] / fmax(in->median_absmax, 1e-30));
	}
	free(top);
}

void wb_draw(wb *w, tui_canvas *c)
{
	tui_canvas_clear(c);
	if (c->w < WB_MIN_W || c->h < WB_MIN_H) {
		tui_putf(c, 0, 0, 0, TUI_BOLD, "terminal too small: %dx%d, need %dx%d", c->w, c->h,
			 WB_MIN_W, WB_MIN_H);
		return;
	}
	if (w->mode == MODE_HELP) {
		draw_help(w, c);
		return;
	}
	if (w->mode == MODE_HISTORY) {
		tui_put(c, 0, 0, 0, TUI_BOLD, "results history: full evaluations of this session (any key returns)");
		tui_put(c, 2, 0, 0, TUI_BOLD, "  #  chunks   bpw      ppl   (unq.)      KLD   top %  plan");
		if (!w->n_hist)
			tui_put(c, 3, 2, 0, TUI_DIM, "none yet: E evaluates the current plan on the whole text");
		for (int i = 0; i < w->n_hist && i + 3 < c->h; i++) {
			const wb_result *h = &w->hist[i];
			tui_putf(c, i + 3, 0, 0, TUI_NORMAL, "%3d  %6d %5.3f %8.3f %8.3f %8.5f %6.1f  %s", i + 1,
				 h->chunks, h->bpw, h->ppl, h->base_ppl, h->kld, h->same_top, h->what);
		}
		return;
	}
	if (w->mode == MODE_POLICY || w->mode == MODE_POLICY_PATH) {
		tui_put(c, 0, 0, 0, TUI_BOLD, "apply a Lua policy: j/k choose, Enter apply, o another file, Esc back");
		if (w->mode == MODE_POLICY_PATH)
			tui_putf(c, c->h - 1, 0, 0, TUI_NORMAL, "policy file: %s", w->input);
		if (!w->n_pol)
			tui_put(c, 2, 2, 0, TUI_DIM, "no policies found (lua/policies/*.lua, or --policy FILE)");
		for (int i = 0; i < w->n_pol && i + 2 < c->h - 4; i++)
			tui_putf(c, i + 2, 0, 0, i == w->pol_cur ? TUI_REVERSE : TUI_NORMAL, "  %s",
				 w->pol[i]);
		if (w->pol_err[0]) {
			int y = w->n_pol + 3 < c->h - 3 ? w->n_pol + 3 : c->h - 3;
			tui_put(c, y, 0, 0, TUI_BOLD, "error:");
			tui_put(c, y, 7, 0, TUI_HEAT0 + 4, w->pol_err);
			if ((int)strlen(w->pol_err) > c->w - 7) /* the rest on the next line */
				tui_put(c, y + 1, 7, 0, TUI_HEAT0 + 4, w->pol_err + (c->w - 7));
			if (!w->calib)
				tui_put(c, y + 2, 7, 0, TUI_DIM,
					"(t.stats.input is nil until the workbench has calibrated: press Esc, then c)");
		}
		return;
	}
	const model *m = w->m;
	tui_putf(c, 0, 0, 0, TUI_BOLD, "qscope  %s  %d tensors  sort: %s%s%s", m->path, w->n,
		 sort_names[w->sort], w->have_re ? "  filter: " : "", w->have_re ? w->filter : "");
	/* columns: name 26, shape 10, params 8, spec 20, bpw 6, kurt 8, KLD */
	const int x_shape = 26, x_par = 37, x_spec = 46, x_bpw = 67, x_kurt = 73, x_err = 82,
		  x_oerr = 89, x_sens = 96;
	int y = 1;
	tui_put(c, y, 0, 0, TUI_BOLD, "tensor");
	tui_put(c, y, x_shape, 0, TUI_BOLD, "shape");
	tui_put(c, y, x_par, 0, TUI_BOLD, "params");
	tui_put(c, y, x_spec, 0, TUI_BOLD, "spec");
	tui_put(c, y, x_bpw, 0, TUI_BOLD, "bpw");
	if (c->w > x_kurt + 4)
		tui_put(c, y, x_kurt, 0, TUI_BOLD, "w.kurt");
	if (c->w > x_err + 4)
		tui_put(c, y, x_err, 0, TUI_BOLD, "w.err");
	if (c->w > x_oerr + 4)
		tui_put(c, y, x_oerr, 0, TUI_BOLD, "o.err");
	if (c->w > x_sens + 4)
		tui_put(c, y, x_sens, 0, TUI_BOLD, w->sens ? "KLD (scan)" : "KLD");
	int first = 2, last = c->h - 4; /* rows first..last; eval bar, footer and status below */
	int detail_y0 = -1;
	if (w->detail && c->h >= 20) { /* the lower part shows the cursor row's details */
		detail_y0 = first + (last - first) / 3 + 1;
		last = detail_y0 - 1;
	}
	w->page = last - first + 1;
	w->tab_y0 = first;
	if (w->cur < w->top)
		w->top = w->cur;
	if (w->cur >= w->top + w->page)
		w->top = w->cur - w->page + 1;
	for (int k = w->top; k < w->n_view && first + k - w->top <= last; k++) {
		const wb_row *r = &w->rows[w->view[k]];
		int yy = first + k - w->top;
		int attr = k == w->cur ? TUI_REVERSE : r->sel ? TUI_SELECTED : TUI_NORMAL;
		char spec[96] = "(stored)";
		if (r->sp.on)
			quant_spec_str(&r->sp.s, spec, sizeof(spec));
		tui_putf(c, yy, 0, x_shape - 1, attr, "%s%s", r->sel ? "*" : " ", r->t->name);
		tui_putf(c, yy, x_shape, 10, attr, "%lldx%lld", (long long)r->t->ne[1],
			 (long long)r->t->ne[0]);
		tui_putf(c, yy, x_par, 8, attr, "%8zu", row_params(r));
		tui_put(c, yy, x_spec, 20, attr, spec);
		tui_putf(c, yy, x_bpw, 6, attr, "%6.3f", 8.0 * (double)row_bytes(r) / (double)row_params(r));
		if (c->w > x_kurt + 4)
			tui_putf(c, yy, x_kurt, 8, attr, "%8.2f", r->kurt);
		if (c->w > x_err + 4) {
			if (r->sp.on && r->te && !isnan(r->te->werr))
				tui_putf(c, yy, x_err, 6, attr, "%6.4f", r->te->werr);
			else
				tui_put(c, yy, x_err, 6, attr, "     -");
		}
		if (c->w > x_oerr + 4) {
			if (r->sp.on && r->te && !isnan(r->te->oerr))
				tui_putf(c, yy, x_oerr, 6, attr, "%6.4f", r->te->oerr);
			else
				tui_put(c, yy, x_oerr, 6, attr, "     -");
		}
		const sens_entry *e = row_sens(w, r);
		if (c->w > x_sens + 4) {
			if (e)
				tui_putf(c, yy, x_sens, 10, k == w->cur ? attr : TUI_HEAT0 + heat(e->kld), "%.6f",
					 e->kld);
			else
				tui_put(c, yy, x_sens, 10, attr, "-");
		}
		if (attr != TUI_NORMAL) /* the cursor / selection band spans the row */
			for (int x = 0; x < c->w; x++) {
				tui_cell *cell = &c->cells[(size_t)yy * c->w + x];
				if (cell->attr == TUI_NORMAL)
					cell->attr = (unsigned char)attr;
			}
	}
	if (detail_y0 >= 0)
		draw_detail(w, c, detail_y0, c->h - 4);
	/* footer: the plan's exact size */
	size_t qb = 0, qp = 0, tb = 0, tp = 0;
	int nq = 0, nsel = 0;
	for (int i = 0; i < w->n; i++) {
		nsel += w->rows[i].sel;
		if (w->rows[i].sp.on) {
			nq++;
			qb += row_bytes(&w->rows[i]);
			qp += row_params(&w->rows[i]);
		}
	}
	quant_plan p;
	if (!wb_plan(w, &p, NULL)) {
		tb = quant_plan_bytes(m, &p, &tp);
		quant_plan_release(&p);
	}
	tui_putf(c, c->h - 2, 0, 0, TUI_BOLD,
		 "plan: %d quantized (%.3f bpw)  model %.3f MB, %.3f bpw  selected %d", nq,
		 qp ? 8.0 * (double)qb / (double)qp : 0.0, (double)tb / 1e6,
		 tp ? 8.0 * (double)tb / (double)tp : 0.0, nsel);
	/* the live evaluation, or the full one's progress */
	if (w->full_running) {
		int bw = c->w - 60 > 10 ? c->w - 60 : 10;
		int fill = w->full_total ? (int)((double)bw * w->full_done / w->full_total) : 0;
		tui_put(c, c->h - 3, 0, 0, TUI_BOLD, "full eval [");
		for (int b = 0; b < bw; b++)
			tui_put(c, c->h - 3, 11 + b, 1, TUI_BOLD, b < fill ? "\u2588" : "\u00b7");
		tui_putf(c, c->h - 3, 11 + bw, 0, TUI_BOLD, "] %d/%d chunks, ppl %.3f  Esc cancels",
			 w->full_done, w->full_total, w->full_ppl);
	} else if (w->ev_err[0])
		tui_putf(c, c->h - 3, 0, 0, TUI_BOLD, "eval: %s", w->ev_err);
	else if (w->have_eval) {
		char from[32] = "";
		const int L = w->m->cfg.n_layers, f = w->ev.from_layer;
		if (w->ev.n_quantized) { /* where the run started, and from which states */
			char where[16];
			if (f < 0 || f >= L)
				snprintf(where, sizeof(where), "%s", f < 0 ? "embd" : "head");
			else
				snprintf(where, sizeof(where), "blk %d", f);
			snprintf(from, sizeof(from), " from %s%s", where, w->ev.incremental ? " (incr.)" : "");
		}
		tui_putf(c, c->h - 3, 0, 0, TUI_BOLD,
			 "eval %d chunks: FP %.2f  now %.2f (%+.2f)  KLD %.4f  top %.1f%%  %.2f s%s%s",
			 w->ev.chunks, w->ev.base_ppl, w->ev.ppl, w->ev.ppl - w->ev.base_ppl, w->ev.kld,
			 w->ev.same_top, w->ev.seconds, from, w->busy ? "  (evaluating...)" : "");
	}
	else
		tui_put(c, c->h - 3, 0, 0, TUI_DIM,
			w->busy ? "eval: evaluating..." : "eval: change a spec to see its perplexity and KLD");
	if (w->mode == MODE_FILTER)
		tui_putf(c, c->h - 1, 0, 0, TUI_NORMAL, "/%s", w->input);
	else if (w->status[0])
		tui_put(c, c->h - 1, 0, 0, TUI_NORMAL, w->status);
	else
		tui_put(c, c->h - 1, 0, 0, TUI_DIM, footer());
}
