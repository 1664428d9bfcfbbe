/* test_sens.c - incremental evaluation (eval_cache) and the sensitivity scan,
 * each held to an independent path: eval_compare runs both models from the
 * tokens, and quant_model builds the one-tensor models the scan measures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/calib.h"
#include "../engine/eval.h"
#include "../engine/quant.h"
#include "../engine/quantize.h"
#include "../engine/sens.h"
#include "testutil.h"

#define CTX 128

static model *base;
static int *ids;
static size_t n_ids;

static int setup(void **state)
{
	(void)state;
	qs_error err = { 0 };
	if (model_open(tu_shared("models/debdoc-19m-f16.gguf"), NULL, &base, &err))
		return -1;
	size_t len;
	char *text = tu_read_file(tu_shared("data/wikitext-2-test.txt"), &len);
	if (!text)
		return -1;
	len = len > 60000 ? 60000 : len;
	int rc = tok_encode(base->tok, text, len, 1, &ids, &n_ids, &err);
	free(text);
	return rc;
}

static int teardown(void **state)
{
	(void)state;
	free(ids);
	model_free(base);
	return 0;
}

static int n_chunks(void)
{
	return tu_asan() ? 2 : 4;
}

/* base with tensor `name` alone quantized by quant_model (the full driver) */
static model *one_tensor(const char *name, const char *spec, const int *calib, int n_calib,
			 int calib_len)
{
	qs_error err = { 0 };
	quant_spec sp;
	quant_plan plan = { 0 };
	model *qm = NULL;
	if (quant_spec_parse(spec, &sp, &err) || quant_plan_add(&plan, name, &sp, &err))
		fail_msg("%s: %s", spec, err.msg);
	quant_opts o = { .calib = calib, .n_calib = n_calib, .calib_len = calib_len, .batch = 4 };
	if (quant_model(base, &plan, &o, &qm, NULL, &err))
		fail_msg("%s %s: %s", name, spec, err.msg);
	quant_plan_release(&plan);
	return qm;
}

static void assert_close(double a, double b, double rel, const char *what)
{
	if (!(fabs(a - b) <= rel * fmax(fabs(a), fabs(b)) + 1e-12))
		fail_msg("%s: %.9g vs %.9g (rel %.2g allowed)", what, a, b, rel);
}

/* The unquantized model against itself from every layer: KLD 0, all tops
 * agree, and the cached base perplexity is eval_ppl's on the same chunks. */
static void test_cache_base(void **s)
{
	(void)s;
	qs_error err = { 0 };
	eval_cache *c = eval_cache_new(base, ids, n_ids, n_chunks(), CTX, &err);
	assert_non_null(c);
	assert_int_equal(eval_cache_chunks(c), n_chunks());
	eval_ppl_opts o = { .ctx = CTX, .n_chunks = n_chunks() };
	eval_ppl_result pr;
	assert_int_equal(eval_ppl(base, ids, n_ids, &o, &pr, &err), 0);
	assert_close(eval_cache_base(c)->ppl, pr.ppl, 1e-5, "cached base ppl vs eval_ppl");
	for (int l = 0; l <= base->cfg.n_layers; l += 4) {
		eval_cmp_result r;
		assert_int_equal(eval_cache_run(c, base, l, &r, &err), 0);
		assert_true(r.kld_mean < 1e-9);
		assert_true(r.same_top_pct == 100.0);
		assert_close(r.test.ppl, pr.ppl, 1e-5, "base from a cached layer");
		assert_int_equal(r.n, (long)n_chunks() * CTX / 2);
	}
	eval_cmp_result r;
	assert_int_equal(eval_cache_run(c, base, base->cfg.n_layers + 1, &r, &err), QS_EUSAGE);
	eval_cache_free(c);
}

/* A model with one quantized tensor, run from its layer, equals
 * eval_compare's full run of both models. */
static void test_cache_matches_compare(void **s)
{
	(void)s;
	const struct {
		const char *name;
		int from;
	} cases[] = { { "blk.5.ffn_down.weight", 5 }, { "blk.0.attn_q.weight", 0 },
		      { "output.weight", 8 } };
	qs_error err = { 0 };
	eval_cache *c = eval_cache_new(base, ids, n_ids, n_chunks(), CTX, &err);
	assert_non_null(c);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (!model_find(base, cases[i].name))
			continue; /* a tied output head */
		model *qm = one_tensor(cases[i].name, "int3g128", NULL, 0, 0);
		eval_cmp_result a, b;
		eval_ppl_opts o = { .ctx = CTX, .n_chunks = n_chunks() };
		assert_int_equal(eval_cache_run(c, qm, cases[i].from, &a, &err), 0);
		assert_int_equal(eval_compare(base, qm, ids, n_ids, &o, &b, &err), 0);
		print_message("%s: ppl %.4f (cache) %.4f (compare), kld %.6f %.6f\n", cases[i].name,
			      a.test.ppl, b.test.ppl, a.kld_mean, b.kld_mean);
		assert_true(b.kld_mean > 1e-5); /* int3 does change the output */
		assert_close(a.test.ppl, b.test.ppl, 1e-5, "ppl");
		assert_close(a.kld_mean, b.kld_mean, 1e-3, "kld");
		assert_close(a.same_top_pct, b.same_top_pct, 1e-2, "same top");
		assert_close(a.base.ppl, b.base.ppl, 1e-5, "base ppl");
		model_free(qm);
	}
	eval_cache_free(c);
}

/* base with each "name=spec" of list quantized (RTN-type specs) */
static model *plan_model(const char *const *list, int n)
{
	qs_error err = { 0 };
	quant_plan plan = { 0 };
	model *qm = NULL;
	for (int i = 0; i < n; i++) {
		char name[64];
		const char *eq = strchr(list[i], '=');
		quant_spec sp;
		snprintf(name, sizeof(name), "%.*s", (int)(eq - list[i]), list[i]);
		if (quant_spec_parse(eq + 1, &sp, &err) || quant_plan_add(&plan, name, &sp, &err))
			fail_msg("%s: %s", list[i], err.msg);
	}
	quant_opts o = { 0 };
	if (quant_model(base, &plan, &o, &qm, NULL, &err))
		fail_msg("%s", err.msg);
	quant_plan_release(&plan);
	return qm;
}

/* The workbench's path: after a kept run, a model that differs from the
 * last one only from layer l on is evaluated from l on the last model's
 * states, and must give what a from-scratch eval_compare gives. Quantized
 * embeddings (from -1) are not skipped. */
static void test_cache_incremental(void **s)
{
	(void)s;
	qs_error err = { 0 };
	eval_cache *c = eval_cache_new(base, ids, n_ids, n_chunks(), CTX, &err);
	assert_non_null(c);
	eval_cmp_result a, b;
	assert_int_equal(eval_cache_keep(c, &err), 0);
	assert_false(eval_cache_has_last(c));
	assert_int_equal(eval_cache_run_last(c, base, 3, &a, &err), QS_EUSAGE);
	const char *p1[] = { "blk.2.attn_v.weight=int3g128", "blk.6.ffn_up.weight=int3g128" };
	const char *p2[] = { "blk.2.attn_v.weight=int3g128", "blk.6.ffn_up.weight=int3g128",
			     "blk.7.ffn_down.weight=int2g64" };
	const char *p3[] = { "blk.2.attn_v.weight=int3g128", "blk.4.attn_q.weight=int2g64",
			     "blk.6.ffn_up.weight=int3g128", "blk.7.ffn_down.weight=int2g64" };
	const char *p4[] = { "token_embd.weight=int3g128", "blk.2.attn_v.weight=int3g128",
			     "blk.4.attn_q.weight=int2g64", "blk.6.ffn_up.weight=int3g128",
			     "blk.7.ffn_down.weight=int2g64" };
	const char *p5[] = { "token_embd.weight=int3g128", "blk.2.attn_v.weight=int3g128",
			     "blk.4.attn_q.weight=int2g64", "blk.6.ffn_up.weight=int3g128" };
	const struct {
		const char *const *list;
		int n, from, since_last;
	} steps[] = { { p1, 2, 2, 0 }, { p2, 3, 7, 1 }, { p3, 4, 4, 1 }, { p4, 5, -1, 1 },
		      { p5, 4, 7, 1 } };
	eval_ppl_opts o = { .ctx = CTX, .n_chunks = n_chunks() };
	double prev_ppl = 0;
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		model *qm = plan_model(steps[i].list, steps[i].n);
		assert_int_equal(steps[i].since_last ? eval_cache_run_last(c, qm, steps[i].from, &a, &err)
						     : eval_cache_run(c, qm, steps[i].from, &a, &err), 0);
		assert_true(eval_cache_has_last(c));
		assert_int_equal(eval_compare(base, qm, ids, n_ids, &o, &b, &err), 0);
		print_message("step %zu from %d: ppl %.4f (incremental) %.4f (compare)\n", i,
			      steps[i].from, a.test.ppl, b.test.ppl);
		assert_close(a.test.ppl, b.test.ppl, 1e-5, "ppl");
		assert_close(a.kld_mean, b.kld_mean, 1e-3, "kld");
		assert_true(a.test.ppl != prev_ppl); /* every step changed the model */
		prev_ppl = a.test.ppl;
		if (i == 3) {
			/* claiming the embeddings are base's would be wrong */
			assert_int_equal(eval_cache_run(c, qm, 0, &a, &err), 0);
			assert_true(fabs(a.test.ppl - b.test.ppl) > 1e-3 * b.test.ppl);
			assert_int_equal(eval_cache_run_last(c, qm, -1, &a, &err), 0);
		}
		model_free(qm);
	}
	eval_cache_free(c);
}

static int count_progress(void *user, long done, long total)
{
	long *n = user;
	(*n)++;
	return done == total ? 0 : 0;
}

static int cancel_progress(void *user, long done, long total)
{
	(void)user;
	(void)total;
	return done >= 2;
}

/* Each scan entry equals an independent evaluation of base with that one
 * tensor quantized by quant_model (GPTQ included: its Hessian comes from
 * the same calibration tokens). */
static void test_scan_entries(void **s)
{
	(void)s;
	const int n_cal = 4, cal_len = 128;
	int *calib = malloc(sizeof(int) * n_cal * cal_len);
	qs_error err = { 0 };
	assert_int_equal(calib_sample_ids(ids, n_ids, 1, n_cal, cal_len, 7, calib, NULL, &err), 0);
	const char *cands[] = { "int3g128", "gptq:int3g128", "q8_0" };
	sens_opts o;
	sens_opts_default(&o);
	o.chunks = n_chunks();
	o.ctx = CTX;
	o.cands = cands;
	o.n_cands = 3;
	o.include = "^blk\\.(2\\.attn_v|6\\.ffn_up)\\.weight$";
	o.calib = calib;
	o.n_calib = n_cal;
	o.calib_len = cal_len;
	long calls = 0;
	o.progress = count_progress;
	o.user = &calls;
	sens_table t;
	assert_int_equal(sens_scan(base, ids, n_ids, &o, &t, &err), 0);
	assert_int_equal(t.n, 6);
	assert_int_equal(calls, 6);
	assert_int_equal(t.n_cands, 3);
	eval_ppl_opts eo = { .ctx = CTX, .n_chunks = n_chunks() };
	const char *names[] = { "blk.2.attn_v.weight", "blk.6.ffn_up.weight" };
	for (int i = 0; i < 2; i++)
		for (int c = 0; c < 3; c++) {
			const sens_entry *e = sens_find(&t, names[i], cands[c]);
			assert_non_null(e);
			model *qm = one_tensor(names[i], cands[c], calib, n_cal, cal_len);
			eval_cmp_result r;
			assert_int_equal(eval_compare(base, qm, ids, n_ids, &eo, &r, &err), 0);
			print_message("%s %s: dppl %.5f vs %.5f, kld %.6f vs %.6f\n", names[i], cands[c],
				      e->dppl, r.test.ppl - r.base.ppl, e->kld, r.kld_mean);
			assert_close(e->ppl, r.test.ppl, 1e-4, "scan ppl");
			assert_close(e->kld, r.kld_mean, 2e-2, "scan kld");
			const model_tensor *qt = model_find(qm, names[i]);
			assert_int_equal(e->bytes, model_tensor_bytes(qt));
			assert_int_equal(e->params, (size_t)(qt->ne[0] * qt->ne[1]));
			model_free(qm);
		}
	/* q8_0 hurts less than int3 on both */
	for (int i = 0; i < 2; i++)
		assert_true(sens_find(&t, names[i], "q8_0")->kld < sens_find(&t, names[i], "int3g128")->kld);

	/* the JSON file round-trips, and the model check catches a foreign tensor */
	char *path = tu_tmppath("sens.json");
	assert_int_equal(sens_save(path, &t, &err), 0);
	sens_table u;
	assert_int_equal(sens_load(path, base, &u, &err), 0);
	assert_int_equal(u.n, t.n);
	assert_int_equal(u.n_cands, t.n_cands);
	for (int i = 0; i < t.n; i++) {
		assert_string_equal(u.e[i].tensor, t.e[i].tensor);
		assert_int_equal(u.e[i].bytes, t.e[i].bytes);
		assert_close(u.e[i].kld, t.e[i].kld, 1e-9, "kld after load");
		assert_close(u.e[i].dppl, t.e[i].dppl, 1e-8, "dppl after load");
	}
	sens_table_release(&u);
	size_t len;
	char *text = tu_read_file(path, &len);
	assert_non_null(text);
	char *p = strstr(text, "blk.2.attn_v.weight");
	assert_non_null(p);
	memcpy(p, "blk.9", 5); /* debdoc has 8 blocks */
	char *bad = tu_tmppath("bad.json");
	tu_write_file(bad, text, len);
	assert_int_equal(sens_load(bad, base, &u, &err), QS_EFORMAT);
	assert_non_null(strstr(err.msg, "blk.9.attn_v.weight"));
	assert_non_null(strstr(err.msg, "bad.json"));
	/* no model check: loads */
	assert_int_equal(sens_load(bad, NULL, &u, &err), 0);
	sens_table_release(&u);
	free(text);
	sens_table_release(&t);

	/* cancelling stops the scan */
	o.progress = cancel_progress;
	assert_int_equal(sens_scan(base, ids, n_ids, &o, &t, &err), QS_ECANCEL);
	free(calib);
}

static void test_scan_refuses(void **s)
{
	(void)s;
	qs_error err = { 0 };
	sens_table t;
	sens_opts o;
	sens_opts_default(&o);
	o.chunks = 1;
	o.ctx = CTX;
	o.include = "^blk\\.0\\.attn_q";
	const char *awq[] = { "awq:int4g128" };
	o.cands = awq;
	o.n_cands = 1;
	assert_int_equal(sens_scan(base, ids, n_ids, &o, &t, &err), QS_EUNSUPP);
	assert_non_null(strstr(err.msg, "awq"));
	const char *dup[] = { "int4g128", "rtn:int4g128" };
	o.cands = dup;
	o.n_cands = 2;
	assert_int_equal(sens_scan(base, ids, n_ids, &o, &t, &err), QS_EUSAGE);
	assert_non_null(strstr(err.msg, "twice"));
	const char *gptq[] = { "gptq:int4g128" };
	o.cands = gptq;
	o.n_cands = 1;
	assert_int_equal(sens_scan(base, ids, n_ids, &o, &t, &err), QS_EUSAGE); /* no calibration */
	assert_non_null(strstr(err.msg, "calibration"));
	const char *badg[] = { "int4g100" };
	o.cands = badg;
	assert_int_equal(sens_scan(base, ids, n_ids, &o, &t, &err), QS_EUSAGE);
	assert_non_null(strstr(err.msg, "blk.0.attn_q.weight"));
	o.cands = dup;
	o.n_cands = 1;
	o.include = "^nothing$";
	assert_int_equal(sens_scan(base, ids, n_ids, &o, &t, &err), QS_EUSAGE);
}

/* sens_key changes with what changes the results, not with how they are
 * spelled */
static void test_key(void **s)
{
	(void)s;
	sens_opts a, b;
	sens_opts_default(&a);
	const char *c1[] = { "int4g128", "q8_0" }, *c2[] = { "rtn:int4g128", "q8_0" },
		   *c3[] = { "int3g128", "q8_0" };
	a.cands = c1;
	a.n_cands = 2;
	b = a;
	b.cands = c2;
	assert_true(sens_key(base, ids, n_ids, &a) == sens_key(base, ids, n_ids, &b));
	b.cands = c3;
	assert_true(sens_key(base, ids, n_ids, &a) != sens_key(base, ids, n_ids, &b));
	b = a;
	b.chunks = 4;
	assert_true(sens_key(base, ids, n_ids, &a) != sens_key(base, ids, n_ids, &b));
	assert_true(sens_key(base, ids, n_ids, &a) != sens_key(base, ids + 1, n_ids - 1, &a));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_key),
		cmocka_unit_test(test_cache_base),
		cmocka_unit_test(test_cache_matches_compare),
		cmocka_unit_test(test_cache_incremental),
		cmocka_unit_test(test_scan_refuses),
		cmocka_unit_test(test_scan_entries),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
