/* sens.c - the sensitivity scan (see sens.h) and its JSON file. */
#include "sens.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../kernels/qmatrix.h"
#include "calib.h"
#include "eval.h"
#include "forward.h"
#include "mapfile.h"
#include "quant.h"
#include "quantize.h"

#define SENS_FORMAT_VERSION 1

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void sens_opts_default(sens_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->chunks = 8;
	o->ctx = 512;
}

void sens_table_release(sens_table *t)
{
	if (!t)
		return;
	free(t->e);
	memset(t, 0, sizeof(*t));
}

/* canonical form of a candidate spec string, or "" when it does not parse */
static void canon(const char *s, char *buf, size_t cap)
{
	quant_spec sp;
	buf[0] = 0;
	if (!quant_spec_parse(s, &sp, NULL))
		quant_spec_str(&sp, buf, cap);
}

int sens_cand_index(const sens_table *t, const char *cand)
{
	char c[96];
	canon(cand, c, sizeof(c));
	for (int i = 0; i < t->n_cands; i++)
		if (!strcmp(t->cands[i], c[0] ? c : cand))
			return i;
	return -1;
}

const sens_entry *sens_find(const sens_table *t, const char *tensor, const char *cand)
{
	int ci = sens_cand_index(t, cand);
	if (ci < 0)
		return NULL;
	for (int i = 0; i < t->n; i++)
		if (t->e[i].cand == ci && !strcmp(t->e[i].tensor, tensor))
			return &t->e[i];
	return NULL;
}

static int needs_calib(const quant_spec *s)
{
	return s->method == QUANT_GPTQ || s->outlier_thresh > 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(a, b);
}

uint64_t sens_key(const model *m, const int *tokens, size_t n_tokens, const sens_opts *o)
{
	calib_opts co;
	calib_opts_default(&co);
	uint64_t h = calib_key(m, "", 0, &co); /* the model's part of the calibration key */
	h = calib_hash64("qscope sens", 11, h + SENS_FORMAT_VERSION);
	size_t need = (size_t)(o->chunks > 0 ? o->chunks : 0) * (size_t)(o->ctx > 0 ? o->ctx : 512);
	if (need == 0 || need > n_tokens)
		need = n_tokens;
	h = calib_hash64(tokens, sizeof(int) * need, h);
	const int64_t v[] = { o->chunks, o->ctx, o->n_cands };
	h = calib_hash64(v, sizeof(v), h);
	/* candidates in sorted canonical form: the same set in another order or
	 * spelling is the same scan */
	char cs[SENS_MAX_CANDS][96];
	int calib = 0, nc = o->n_cands < SENS_MAX_CANDS ? o->n_cands : SENS_MAX_CANDS;
	for (int i = 0; i < nc; i++) {
		quant_spec sp;
		canon(o->cands[i], cs[i], sizeof(cs[i]));
		if (!quant_spec_parse(o->cands[i], &sp, NULL) && needs_calib(&sp))
			calib = 1;
	}
	qsort(cs, (size_t)nc, sizeof(cs[0]), cmp_str);
	for (int i = 0; i < nc; i++)
		h = calib_hash64(cs[i], strlen(cs[i]) + 1, h);
	if (o->include)
		h = calib_hash64(o->include, strlen(o->include) + 1, h);
	if (calib && o->calib) {
		const int64_t cv[] = { o->n_calib, o->calib_len };
		h = calib_hash64(cv, sizeof(cv), h);
		h = calib_hash64(o->calib, sizeof(int) * (size_t)o->n_calib * o->calib_len, h);
	}
	return h;
}

/* ------------------------------------------------------------------ scan */

typedef struct scan {
	const model *base;
	model *m;                /* derived: one tensor at a time gets a q */
	eval_cache *ec;
	const sens_opts *o;
	quant_spec spec[SENS_MAX_CANDS];
	quant_plan list;         /* the tensors scanned, in model order */
	int *layer_of;           /* (list.n) layer of each, -1 token_embd, L output */
	sens_table *t;
	long done, total;
	qs_error *err;
} scan;

static int site_of_kind(const char *kind)
{
	if (!strcmp(kind, "attn_q") || !strcmp(kind, "attn_k") || !strcmp(kind, "attn_v"))
		return FWD_SITE_QKV;
	if (!strcmp(kind, "attn_output"))
		return FWD_SITE_ATTN_OUT;
	if (!strcmp(kind, "ffn_gate") || !strcmp(kind, "ffn_up"))
		return FWD_SITE_FFN_IN;
	if (!strcmp(kind, "ffn_down"))
		return FWD_SITE_FFN_DOWN;
	return -1;
}

/* Scan tensor i of the list with every candidate; st (may be NULL) holds
 * its input's statistics with X^T X. */
static int scan_tensor(scan *s, int i, const calib_stats *st)
{
	const char *name = s->list.e[i].name;
	const model_tensor *bt = model_find(s->base, name);
	model_tensor *t = (model_tensor *)model_find(s->m, name);
	const int rows = (int)bt->ne[1], cols = (int)bt->ne[0];
	const int L = s->base->cfg.n_layers;
	int from = s->layer_of[i] < 0 ? 0 : s->layer_of[i];
	float *W = model_tensor_f32(bt);
	if (!W)
		return qs_err(s->err, QS_ENOMEM, "sensitivity: out of memory for %s", name);
	int rc = 0;
	for (int c = 0; c < s->t->n_cands && !rc; c++) {
		const quant_spec *sp = &s->spec[c];
		if (needs_calib(sp) && (!st || !st->xtx)) {
			rc = qs_err(s->err, QS_EUSAGE,
				    "sensitivity: %s: candidate %s needs calibration inputs, which "
				    "this tensor does not have",
				    name, s->t->cands[c]);
			break;
		}
		kn_qmatrix *q = NULL;
		rc = quant_tensor(name, W, rows, cols, sp, st ? st->xtx : NULL, st ? (long)st->rows : 0,
				  st ? st->absmax : NULL, &q, NULL, s->err);
		if (rc)
			break;
		t->q = q;
		eval_cmp_result r;
		rc = eval_cache_run(s->ec, s->m, from > L ? L : from, &r, s->err);
		t->q = NULL;
		model_config part = s->base->cfg; /* the layers run: from.. (the head alone: none) */
		part.n_layers = L - (from > L ? L : from);
		s->t->gflop += eval_flops(&part, s->t->chunks, s->t->ctx - 1, s->t->ctx / 2) * 1e-9;
		sens_entry *e = &s->t->e[(size_t)i * s->t->n_cands + c];
		snprintf(e->tensor, sizeof(e->tensor), "%s", name);
		e->cand = c;
		e->params = (size_t)rows * cols;
		e->bytes = kn_qmatrix_bytes(q);
		kn_qmatrix_release(q);
		free(q);
		if (rc)
			break;
		e->ppl = r.test.ppl;
		e->dppl = r.test.ppl - r.base.ppl;
		e->kld = r.kld_mean;
		e->kld_stderr = r.kld_stderr;
		e->same_top_pct = r.same_top_pct;
		s->done++;
		if (s->o->progress && s->o->progress(s->o->user, s->done, s->total))
			rc = qs_err(s->err, QS_ECANCEL, "sensitivity: cancelled");
	}
	free(W);
	return rc;
}

/* Every listed tensor of layer l (-1: token_embd; L: output). */
static int scan_layer(scan *s, int l, const calib_layer_stats *ls)
{
	for (int i = 0; i < s->list.n; i++) {
		if (s->layer_of[i] != l)
			continue;
		const calib_stats *st = NULL;
		if (ls) {
			int site = l == s->base->cfg.n_layers ? FWD_SITE_OUTPUT
							       : site_of_kind(quant_tensor_kind(s->list.e[i].name));
			for (int k = 0; k < ls->n_sites; k++)
				if (ls->site[k].site == site)
					st = &ls->site[k];
		}
		int rc = scan_tensor(s, i, st);
		if (rc)
			return rc;
	}
	return 0;
}

static int on_layer(void *user, int layer, calib_layer_stats *st)
{
	scan *s = user;
	/* calib_run reports the output head as layer -1 */
	return scan_layer(s, layer < 0 ? s->base->cfg.n_layers : layer, st) ? 1 : 0;
}

int sens_scan(const model *base, const int *tokens, size_t n_tokens, const sens_opts *o,
	      sens_table *out, qs_error *err)
{
	memset(out, 0, sizeof(*out));
	if (o->n_cands < 1 || o->n_cands > SENS_MAX_CANDS)
		return qs_err(err, QS_EUSAGE, "sensitivity: %d candidates (1..%d allowed)", o->n_cands,
			      SENS_MAX_CANDS);
	qs_error serr = { 0 }; /* errors inside calib_run's callback land here */
	scan s = { .base = base, .o = o, .t = out, .err = &serr };
	int calib = 0, rc = 0;
	for (int c = 0; c < o->n_cands; c++) {
		qs_error e2;
		if (quant_spec_parse(o->cands[c], &s.spec[c], &e2))
			return qs_err(err, QS_EUSAGE, "sensitivity: candidate %d: %s", c + 1, e2.msg);
		if (s.spec[c].method == QUANT_AWQ || s.spec[c].method == QUANT_SMOOTHQUANT)
			return qs_err(err, QS_EUNSUPP,
				      "sensitivity: candidate '%s': %s scales fold into a norm shared "
				      "by several tensors, so it has no one-tensor sensitivity (scan its "
				      "format with rtn or gptq)",
				      o->cands[c], quant_method_name(s.spec[c].method));
		if (s.spec[c].act_bits)
			return qs_err(err, QS_EUNSUPP,
				      "sensitivity: candidate '%s': activation quantization is a "
				      "property of a site, not of one tensor",
				      o->cands[c]);
		quant_spec_str(&s.spec[c], out->cands[c], sizeof(out->cands[c]));
		for (int k = 0; k < c; k++)
			if (!strcmp(out->cands[k], out->cands[c]))
				return qs_err(err, QS_EUSAGE, "sensitivity: candidate '%s' given twice",
					      out->cands[c]);
		calib |= needs_calib(&s.spec[c]);
	}
	out->n_cands = o->n_cands;
	if (calib && (!o->calib || o->n_calib < 1 || o->calib_len < 2))
		return qs_err(err, QS_EUSAGE, "sensitivity: gptq and outlier candidates need calibration tokens");
	quant_spec fp;
	quant_spec_parse("fp16", &fp, NULL);
	if ((rc = quant_plan_uniform(base, &fp, o->include, NULL, &s.list, err)))
		return rc;
	if (s.list.n == 0) {
		quant_plan_release(&s.list);
		return qs_err(err, QS_EUSAGE, "sensitivity: no tensor matches '%s'",
			      o->include ? o->include : "");
	}
	/* every candidate must fit every tensor before any work starts */
	for (int i = 0; i < s.list.n; i++) {
		const model_tensor *t = model_find(base, s.list.e[i].name);
		for (int c = 0; c < o->n_cands; c++)
			if ((rc = quant_spec_check(&s.spec[c], t->name, (int)t->ne[1], (int)t->ne[0], err)))
				goto out;
		if (calib && !strcmp(t->name, "token_embd.weight")) {
			rc = qs_err(err, QS_EUNSUPP,
				    "sensitivity: token_embd.weight has no input activations for gptq; "
				    "leave it out of --include");
			goto out;
		}
	}
	double t0 = now_s();
	s.layer_of = malloc(sizeof(int) * (size_t)s.list.n);
	out->n = s.list.n * o->n_cands;
	out->e = calloc((size_t)out->n, sizeof(sens_entry));
	if (!s.layer_of || !out->e) {
		rc = qs_err(err, QS_ENOMEM, "sensitivity: out of memory");
		goto out;
	}
	for (int i = 0; i < s.list.n; i++)
		s.layer_of[i] = quant_tensor_layer(base, s.list.e[i].name);
	s.total = (long)out->n;
	if (!(s.m = model_derive(base, err))) {
		rc = err ? err->code : QS_ENOMEM;
		goto out;
	}
	if (!(s.ec = eval_cache_new(base, tokens, n_tokens, o->chunks, o->ctx, err))) {
		rc = err ? err->code : QS_ENOMEM;
		goto out;
	}
	out->chunks = eval_cache_chunks(s.ec);
	out->ctx = o->ctx > 0 ? o->ctx : 512;
	out->base_ppl = eval_cache_base(s.ec)->ppl;
	out->gflop = eval_cache_base(s.ec)->gflop;
	snprintf(out->model, sizeof(out->model), "%s", base->path);
	out->key = sens_key(base, tokens, n_tokens, o);
	if ((rc = scan_layer(&s, -1, NULL)))
		goto out;
	if (calib) {
		calib_opts co;
		calib_opts_default(&co);
		co.n_samples = o->n_calib;
		co.seq_len = o->calib_len;
		co.xtx = 1;
		rc = calib_run(base, o->calib, o->n_calib, o->calib_len, &co, on_layer, &s, NULL, NULL,
			       err);
	} else {
		for (int l = 0; l <= base->cfg.n_layers && !rc; l++)
			rc = scan_layer(&s, l, NULL);
	}
	out->seconds = now_s() - t0;
out:
	if (rc && serr.code) { /* the scan's own error, not calib_run's "cancelled" */
		rc = serr.code;
		if (err)
			*err = serr;
	}
	eval_cache_free(s.ec);
	model_free(s.m);
	free(s.layer_of);
	quant_plan_release(&s.list);
	if (rc)
		sens_table_release(out);
	return rc;
}

/* ------------------------------------------------------------------ JSON */

char *sens_dumps(const sens_table *t)
{
	char key[17];
	snprintf(key, sizeof(key), "%016llx", (unsigned long long)t->key);
	json_t *root = json_object(), *cands = json_array(), *ts = json_array();
	json_object_set_new(root, "qscope_sensitivity", json_integer(SENS_FORMAT_VERSION));
	json_object_set_new(root, "model", json_string(t->model));
	json_object_set_new(root, "eval", json_string(t->eval));
	json_object_set_new(root, "key", json_string(key));
	json_object_set_new(root, "chunks", json_integer(t->chunks));
	json_object_set_new(root, "ctx", json_integer(t->ctx));
	json_object_set_new(root, "base_ppl", json_real(t->base_ppl));
	json_object_set_new(root, "seconds", json_real(t->seconds));
	json_object_set_new(root, "gflop", json_real(t->gflop));
	for (int c = 0; c < t->n_cands; c++)
		json_array_append_new(cands, json_string(t->cands[c]));
	json_object_set_new(root, "candidates", cands);
	for (int i = 0; t->n_cands > 0 && i < t->n / t->n_cands; i++) {
		const sens_entry *e0 = &t->e[(size_t)i * t->n_cands];
		json_t *res = json_array();
		for (int c = 0; c < t->n_cands; c++) {
			const sens_entry *e = &e0[c];
			json_array_append_new(
				res, json_pack("{s:s, s:f, s:f, s:f, s:f, s:f, s:I}", "spec", t->cands[c],
					       "ppl", e->ppl, "dppl", e->dppl, "kld", e->kld,
					       "kld_stderr", e->kld_stderr, "same_top_pct",
					       e->same_top_pct, "bytes", (json_int_t)e->bytes));
		}
		json_array_append_new(ts, json_pack("{s:s, s:I, s:o}", "name", e0->tensor, "params",
						    (json_int_t)e0->params, "results", res));
	}
	json_object_set_new(root, "tensors", ts);
	char *text = json_dumps(root, JSON_INDENT(1) | JSON_REAL_PRECISION(10));
	json_decref(root);
	return text;
}

int sens_save(const char *path, const sens_table *t, qs_error *err)
{
	char *text = sens_dumps(t);
	if (!text)
		return qs_err(err, QS_ENOMEM, "sensitivity: out of memory");
	int rc = calib_make_parents(path, err);
	if (!rc) {
		size_t n = strlen(text);
		text[n] = '\n'; /* the terminating NUL becomes the file's final newline */
		rc = qs_write_atomic(path, text, n + 1, err);
	}
	free(text);
	return rc;
}

static int get_num(json_t *o, const char *k, double *v, const char *path, const char *where,
		   qs_error *err)
{
	json_t *x = json_object_get(o, k);
	if (!json_is_number(x) || !isfinite(json_number_value(x)))
		return qs_err(err, QS_EFORMAT, "%s: %s: field '%s' missing or not a finite number",
			      path, where, k);
	*v = json_number_value(x);
	return 0;
}

int sens_load(const char *path, const model *m, sens_table *out, qs_error *err)
{
	memset(out, 0, sizeof(*out));
	json_error_t je;
	json_t *root = json_load_file(path, 0, &je);
	if (!root)
		return qs_err(err, je.line < 0 ? QS_EIO : QS_EFORMAT, "%s:%d: %s", path, je.line, je.text);
	int rc = 0;
	double v;
	json_t *ver = json_object_get(root, "qscope_sensitivity");
	json_t *cands = json_object_get(root, "candidates"), *ts = json_object_get(root, "tensors");
	if (!json_is_object(root) || !json_is_integer(ver)) {
		rc = qs_err(err, QS_EFORMAT, "%s: not a qscope sensitivity file (field 'qscope_sensitivity')", path);
		goto fail;
	}
	if (json_integer_value(ver) != SENS_FORMAT_VERSION) {
		rc = qs_err(err, QS_EFORMAT, "%s: field 'qscope_sensitivity': version %lld, expected %d",
			    path, (long long)json_integer_value(ver), SENS_FORMAT_VERSION);
		goto fail;
	}
	if (!json_is_array(cands) || json_array_size(cands) < 1 ||
	    json_array_size(cands) > SENS_MAX_CANDS) {
		rc = qs_err(err, QS_EFORMAT, "%s: field 'candidates' must be an array of 1..%d specs",
			    path, SENS_MAX_CANDS);
		goto fail;
	}
	if (!json_is_array(ts)) {
		rc = qs_err(err, QS_EFORMAT, "%s: field 'tensors' must be an array", path);
		goto fail;
	}
	out->n_cands = (int)json_array_size(cands);
	for (int c = 0; c < out->n_cands; c++) {
		json_t *x = json_array_get(cands, (size_t)c);
		quant_spec sp;
		qs_error e2;
		if (!json_is_string(x) || quant_spec_parse(json_string_value(x), &sp, &e2)) {
			rc = qs_err(err, QS_EFORMAT, "%s: candidates[%d]: %s", path, c,
				    json_is_string(x) ? e2.msg : "not a string");
			goto fail;
		}
		quant_spec_str(&sp, out->cands[c], sizeof(out->cands[c]));
	}
	const char *s;
	if ((s = json_string_value(json_object_get(root, "model"))))
		snprintf(out->model, sizeof(out->model), "%s", s);
	if ((s = json_string_value(json_object_get(root, "eval"))))
		snprintf(out->eval, sizeof(out->eval), "%s", s);
	if ((s = json_string_value(json_object_get(root, "key"))))
		out->key = strtoull(s, NULL, 16);
	if ((rc = get_num(root, "base_ppl", &out->base_ppl, path, "header", err)))
		goto fail;
	if ((rc = get_num(root, "chunks", &v, path, "header", err)))
		goto fail;
	out->chunks = (int)v;
	if (!get_num(root, "ctx", &v, path, "header", NULL))
		out->ctx = (int)v;
	get_num(root, "seconds", &out->seconds, path, "header", NULL);
	get_num(root, "gflop", &out->gflop, path, "header", NULL);
	size_t nt = json_array_size(ts);
	if (nt > 100000) {
		rc = qs_err(err, QS_EFORMAT, "%s: field 'tensors': %zu entries", path, nt);
		goto fail;
	}
	out->n = (int)nt * out->n_cands;
	out->e = calloc(nt ? (size_t)out->n : 1, sizeof(sens_entry));
	if (!out->e) {
		rc = qs_err(err, QS_ENOMEM, "%s: out of memory", path);
		goto fail;
	}
	for (size_t i = 0; i < nt; i++) {
		json_t *tj = json_array_get(ts, i);
		const char *name = json_string_value(json_object_get(tj, "name"));
		json_t *res = json_object_get(tj, "results");
		char where[96];
		snprintf(where, sizeof(where), "tensors[%zu]", i);
		if (!name || strlen(name) >= sizeof(out->e[0].tensor)) {
			rc = qs_err(err, QS_EFORMAT, "%s: %s: field 'name' missing or too long", path, where);
			goto fail;
		}
		snprintf(where, sizeof(where), "tensor '%s'", name);
		const model_tensor *mt = m ? model_find(m, name) : NULL;
		if (m && !mt) {
			rc = qs_err(err, QS_EFORMAT, "%s: %s is not in the model %s", path, where, m->path);
			goto fail;
		}
		if (!get_num(tj, "params", &v, path, where, err) && mt &&
		    v != (double)mt->ne[0] * (double)mt->ne[1]) {
			rc = qs_err(err, QS_EFORMAT, "%s: %s: field 'params' %.0f, the model has %lld",
				    path, where, v, (long long)(mt->ne[0] * mt->ne[1]));
			goto fail;
		}
		double params = v;
		if (!json_is_array(res) || json_array_size(res) != (size_t)out->n_cands) {
			rc = qs_err(err, QS_EFORMAT, "%s: %s: field 'results' must have one entry per candidate (%d)",
				    path, where, out->n_cands);
			goto fail;
		}
		for (int c = 0; c < out->n_cands; c++) {
			json_t *r = json_array_get(res, (size_t)c);
			sens_entry *e = &out->e[i * (size_t)out->n_cands + (size_t)c];
			char w2[160];
			snprintf(w2, sizeof(w2), "%s results[%d]", where, c);
			const char *sp = json_string_value(json_object_get(r, "spec"));
			char cs[96];
			if (!sp || (canon(sp, cs, sizeof(cs)), strcmp(cs, out->cands[c]))) {
				rc = qs_err(err, QS_EFORMAT, "%s: %s: field 'spec' must be candidate '%s'",
					    path, w2, out->cands[c]);
				goto fail;
			}
			double b;
			if ((rc = get_num(r, "ppl", &e->ppl, path, w2, err)) ||
			    (rc = get_num(r, "dppl", &e->dppl, path, w2, err)) ||
			    (rc = get_num(r, "kld", &e->kld, path, w2, err)) ||
			    (rc = get_num(r, "bytes", &b, path, w2, err)))
				goto fail;
			if (b < 0 || b > 1e15) {
				rc = qs_err(err, QS_EFORMAT, "%s: %s: field 'bytes' out of range", path, w2);
				goto fail;
			}
			get_num(r, "kld_stderr", &e->kld_stderr, path, w2, NULL);
			get_num(r, "same_top_pct", &e->same_top_pct, path, w2, NULL);
			snprintf(e->tensor, sizeof(e->tensor), "%s", name);
			e->cand = c;
			e->bytes = (size_t)b;
			e->params = (size_t)params;
		}
	}
	json_decref(root);
	return 0;
fail:
	json_decref(root);
	sens_table_release(out);
	return rc;
}
