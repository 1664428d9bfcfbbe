/* test_forward.c - the forward pass against the independent references in
 * ../shared/refs (PyTorch fp32 logits, greedy generations), and its two paths
 * (batched prefill, KV-cache decode) against each other. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/eval.h"
#include "../engine/forward.h"
#include "../engine/gguf.h"
#include "../engine/model.h"
#include "../engine/sample.h"
#include "../kernels/types.h"
#include "testutil.h"

#define NPOS 64

static json_t *refs;
static float *ref_logits; /* (64, 8192) */
static int ref_ids[NPOS];

static int setup(void **state)
{
	(void)state;
	json_error_t je;
	refs = json_load_file(tu_shared("refs/debdoc-19m.json"), 0, &je);
	if (!refs)
		return -1;
	json_t *ids = json_object_get(json_object_get(refs, "logits64"), "input_ids");
	if (json_array_size(ids) != NPOS)
		return -1;
	for (int i = 0; i < NPOS; i++)
		ref_ids[i] = (int)json_integer_value(json_array_get(ids, (size_t)i));
	size_t len;
	ref_logits = (float *)tu_read_file(tu_shared("refs/debdoc-19m-logits64.f32"), &len);
	if (!ref_logits || len != sizeof(float) * NPOS * 8192)
		return -1;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	json_decref(refs);
	free(ref_logits);
	return 0;
}

static double rel_l2(const float *a, const float *b, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		double d = (double)a[i] - b[i];
		num += d * d;
		den += (double)b[i] * b[i];
	}
	return sqrt(num / den);
}

static model *open_or_fail(const char *path)
{
	model *m = NULL;
	qs_error err = { 0 };
	int rc = model_open(path, NULL, &m, &err);
	if (rc)
		fail_msg("%s", err.msg);
	return m;
}

static void check_ref_logits(const char *path, double tol)
{
	model *m = open_or_fail(path);
	qs_error err = { 0 };
	fwd_ctx *f = fwd_new(m, 1, NPOS, &err);
	assert_non_null(f);
	float *lg = malloc(sizeof(float) * NPOS * 8192);
	assert_int_equal(fwd_prefill(f, ref_ids, 1, NPOS, 0, lg, &err), 0);
	double e = rel_l2(lg, ref_logits, (size_t)NPOS * 8192);
	print_message("%s: prefill logits rel L2 vs PyTorch = %.3g\n", path, e);
	assert_true(e < tol);
	/* decode path, one token at a time from position 0 */
	float *row = malloc(sizeof(float) * 8192);
	double worst = 0;
	for (int p = 0; p < NPOS; p++) {
		assert_int_equal(fwd_decode(f, ref_ids[p], p, row, &err), 0);
		double ep = rel_l2(row, ref_logits + (size_t)p * 8192, 8192);
		worst = ep > worst ? ep : worst;
	}
	print_message("%s: decode logits worst row rel L2 vs PyTorch = %.3g\n", path, worst);
	assert_true(worst < tol);
	free(row);
	free(lg);
	fwd_free(f);
	model_free(m);
}

static void test_gguf_logits(void **s)
{
	(void)s;
	check_ref_logits(tu_shared("models/debdoc-19m-f16.gguf"), 1e-4);
}

static void test_hf_logits(void **s)
{
	(void)s;
	check_ref_logits(tu_shared("models/debdoc-19m-hf"), 1e-4);
}

/* Two different sequences in one batch give the same logits as alone, and
 * logits_from selects the tail. */
static void test_batch_independent(void **s)
{
	(void)s;
	model *m = open_or_fail(tu_shared("models/debdoc-19m-f16.gguf"));
	qs_error err = { 0 };
	const int T = 40;
	int toks[2 * 40];
	for (int i = 0; i < T; i++) {
		toks[i] = ref_ids[i];
		toks[T + i] = ref_ids[NPOS - T + i];
	}
	toks[T] = 1;
	fwd_ctx *f = fwd_new(m, 2, T, &err);
	float *both = malloc(sizeof(float) * 2 * 10 * 8192);
	float *one = malloc(sizeof(float) * 10 * 8192);
	assert_int_equal(fwd_prefill(f, toks, 2, T, T - 10, both, &err), 0);
	for (int q = 0; q < 2; q++) {
		assert_int_equal(fwd_prefill(f, toks + q * T, 1, T, T - 10, one, &err), 0);
		assert_true(rel_l2(both + (size_t)q * 10 * 8192, one, 10 * 8192) < 1e-6);
	}
	/* the first sequence's tail equals the reference rows 30..39 */
	assert_true(rel_l2(both, ref_logits + (size_t)(T - 10) * 8192, 10 * 8192) < 1e-4);
	free(both);
	free(one);
	fwd_free(f);
	model_free(m);
}

/* Greedy continuations reproduce the three references token for token. */
static void test_greedy(void **s)
{
	(void)s;
	model *m = open_or_fail(tu_shared("models/debdoc-19m-f16.gguf"));
	qs_error err = { 0 };
	json_t *g = json_object_get(refs, "greedy");
	const char *prompt;
	json_t *v;
	int n_checked = 0;
	json_object_foreach(g, prompt, v) {
		json_t *ids = json_object_get(v, "ids");
		size_t n_ref = json_array_size(ids);
		int *p;
		size_t n;
		assert_int_equal(tok_encode(m->tok, prompt, strlen(prompt), 1, &p, &n, &err), 0);
		for (size_t i = 0; i < n; i++)
			assert_int_equal(p[i], json_integer_value(json_array_get(ids, i)));
		fwd_ctx *f = fwd_new(m, 1, 512, &err);
		float *lg = malloc(sizeof(float) * 8192);
		assert_int_equal(fwd_prefill(f, p, 1, (int)n, (int)n - 1, lg, &err), 0);
		for (size_t pos = n; pos < n_ref; pos++) {
			int next = sample_argmax(lg, 8192);
			if (next != json_integer_value(json_array_get(ids, pos)))
				fail_msg("'%s': token %zu is %d, reference %lld", prompt, pos, next,
					 (long long)json_integer_value(json_array_get(ids, pos)));
			assert_int_equal(fwd_decode(f, next, (int)pos, lg, &err), 0);
		}
		n_checked += (int)(n_ref - n);
		free(lg);
		free(p);
		fwd_free(f);
	}
	assert_int_equal(n_checked, 3 * 48);
	model_free(m);
}

/* Requantize the F16 GGUF to t (q8_0 / q4_0 / q4_1) with our writer; the
 * loaded model must agree with itself across prefill (dequant + sgemm) and
 * decode (packed matvec), and stay near the FP reference by a margin that
 * fits the format. */
static void check_quantized(int qtype, double tol_ref)
{
	qs_error err = { 0 };
	gguf_file *g;
	gguf_writer *w = tu_gguf_copy_meta(tu_shared("models/debdoc-19m-f16.gguf"), &g);
	assert_non_null(w);
	void **bufs = calloc((size_t)gguf_n_tensors(g), sizeof(void *));
	for (int i = 0; i < gguf_n_tensors(g); i++) {
		const gguf_tensor_info *t = gguf_tensor(g, i);
		char name[64];
		snprintf(name, sizeof(name), "%.*s", (int)t->name.len, t->name.s);
		if (t->n_dims == 2 && t->type == KN_TYPE_F16) {
			size_t n = (size_t)t->ne[0] * (size_t)t->ne[1];
			float *f32 = malloc(sizeof(float) * n);
			kn_fp16_to_fp32_row(t->data, f32, n);
			size_t nb = kn_row_size(qtype, (size_t)t->ne[0]) * (size_t)t->ne[1];
			bufs[i] = malloc(nb);
			kn_traits(qtype)->from_float(f32, bufs[i], n);
			free(f32);
			assert_int_equal(gguf_w_tensor(w, name, qtype, 2, t->ne, bufs[i], nb), 0);
		} else {
			assert_int_equal(gguf_w_tensor(w, name, t->type, t->n_dims, t->ne, t->data, t->nbytes), 0);
		}
	}
	char path[512];
	snprintf(path, sizeof(path), "%s/q%d.gguf", tu_tmpdir(), qtype);
	assert_int_equal(gguf_writer_write(w, path, &err), 0);
	gguf_writer_free(w);
	for (int i = 0; i < gguf_n_tensors(g); i++)
		free(bufs[i]);
	free(bufs);
	gguf_close(g);

	model *m = open_or_fail(path);
	assert_int_equal(m->layers[3].w_down->type, qtype);
	fwd_ctx *f = fwd_new(m, 1, NPOS, &err);
	float *lg = malloc(sizeof(float) * NPOS * 8192), *row = malloc(sizeof(float) * 8192);
	assert_int_equal(fwd_prefill(f, ref_ids, 1, NPOS, 0, lg, &err), 0);
	double e = rel_l2(lg, ref_logits, (size_t)NPOS * 8192), worst = 0;
	for (int p = 0; p < NPOS; p++) {
		assert_int_equal(fwd_decode(f, ref_ids[p], p, row, &err), 0);
		double ep = rel_l2(row, lg + (size_t)p * 8192, 8192);
		worst = ep > worst ? ep : worst;
	}
	print_message("%s: rel L2 vs fp32 reference %.3g; decode vs prefill worst row %.3g\n",
		      kn_traits(qtype)->name, e, worst);
	assert_true(e < tol_ref);
	assert_true(e > 1e-5); /* it really is quantized */
	assert_true(worst < 1e-5);
	free(lg);
	free(row);
	fwd_free(f);
	model_free(m);
}

static void test_q8_0(void **s) { (void)s; check_quantized(KN_TYPE_Q8_0, 0.02); }
static void test_q4_0(void **s) { (void)s; check_quantized(KN_TYPE_Q4_0, 0.15); }
static void test_q4_1(void **s) { (void)s; check_quantized(KN_TYPE_Q4_1, 0.15); }

/* First 100 WikiText-2 chunks: the reference's own figure for that subset. */
static void test_ppl_first_chunks(void **s)
{
	(void)s;
	model *m = open_or_fail(tu_shared("models/debdoc-19m-f16.gguf"));
	size_t len, n;
	char *text = tu_read_file(tu_shared("data/wikitext-2-test.txt"), &len);
	assert_non_null(text);
	int *ids;
	qs_error err = { 0 };
	assert_int_equal(tok_encode(m->tok, text, len, 1, &ids, &n, &err), 0);
	json_t *w = json_object_get(refs, "wikitext_2_test");
	assert_int_equal(n, json_integer_value(json_object_get(w, "tokens")));
	json_t *f100 = json_object_get(refs, "wikitext_2_test_first100");
	int chunks = (int)json_integer_value(json_object_get(f100, "chunks"));
	double want = json_real_value(json_object_get(f100, "ppl"));
	if (tu_asan())
		chunks = 8; /* the sanitizer build checks the path, not the figure */
	eval_ppl_opts o = { .ctx = 512, .n_chunks = chunks };
	eval_ppl_result r;
	assert_int_equal(eval_ppl(m, ids, n, &o, &r, &err), 0);
	assert_int_equal(r.chunks, chunks);
	assert_int_equal(r.scored, (long)chunks * 256);
	print_message("ppl over %d chunks: %.4f (reference %.4f)\n", chunks, r.ppl, want);
	if (!tu_asan())
		assert_true(fabs(r.ppl / want - 1) < 5e-4);
	free(ids);
	free(text);
	model_free(m);
}

/* Layer-at-a-time: embed, layers [0,3), [3,8), head == one prefill; and the
 * hidden state can be saved and restored between calls. */
static void test_layer_pieces(void **s)
{
	(void)s;
	model *m = open_or_fail(tu_shared("models/debdoc-19m-f16.gguf"));
	qs_error err = { 0 };
	fwd_ctx *f = fwd_new(m, 1, NPOS, &err);
	float *a = malloc(sizeof(float) * NPOS * 8192), *b = malloc(sizeof(float) * NPOS * 8192);
	float *saved = malloc(sizeof(float) * NPOS * 384);
	assert_int_equal(fwd_prefill(f, ref_ids, 1, NPOS, 0, a, &err), 0);
	assert_int_equal(fwd_embed(f, ref_ids, 1, NPOS, &err), 0);
	assert_int_equal(fwd_layers(f, 1, NPOS, 0, 3, &err), 0);
	memcpy(saved, fwd_hidden(f), sizeof(float) * NPOS * 384);
	memset(fwd_hidden(f), 0, sizeof(float) * NPOS * 384);
	memcpy(fwd_hidden(f), saved, sizeof(float) * NPOS * 384);
	assert_int_equal(fwd_layers(f, 1, NPOS, 3, 8, &err), 0);
	assert_int_equal(fwd_head(f, 1, NPOS, 0, b, &err), 0);
	assert_memory_equal(a, b, sizeof(float) * NPOS * 8192);
	assert_int_equal(fwd_layers(f, 1, NPOS, 5, 9, &err), QS_EUSAGE);
	/* a prefill-only context (one layer of KV cache) computes the same */
	fwd_ctx *p = fwd_new_flags(m, 1, NPOS, FWD_PREFILL_ONLY, &err);
	assert_non_null(p);
	assert_int_equal(fwd_prefill(p, ref_ids, 1, NPOS, 0, b, &err), 0);
	assert_memory_equal(a, b, sizeof(float) * NPOS * 8192);
	assert_int_equal(fwd_decode(p, ref_ids[0], 0, b, &err), QS_EUSAGE);
	fwd_free(p);
	free(a);
	free(b);
	free(saved);
	fwd_free(f);
	model_free(m);
}

/* The capture hook sees every linear layer's input with the right shape, in
 * order; the first one equals RMSNorm(embedding) computed here in double; a
 * nonzero return cancels the pass. */
typedef struct cap_log {
	int calls, cancel_at;
	int layer[64], site[64], rows[64], cols[64];
	double first_err;
	const model *m;
} cap_log;

static int on_capture(void *user, int layer, int site, const float *x, int rows, int cols)
{
	cap_log *c = user;
	if (c->calls < 64) {
		c->layer[c->calls] = layer;
		c->site[c->calls] = site;
		c->rows[c->calls] = rows;
		c->cols[c->calls] = cols;
	}
	if (c->calls == 0) {
		/* row 1 of sequence 0 is token ref_ids[1] */
		const model_tensor *e = c->m->tok_embd, *nw = c->m->layers[0].attn_norm;
		float emb[384], w[384];
		kn_traits(e->type)->to_float((const char *)e->data +
						     kn_row_size(e->type, 384) * (size_t)ref_ids[1],
					     emb, 384);
		kn_traits(nw->type)->to_float(nw->data, w, 384);
		double ss = 0, worst = 0;
		for (int i = 0; i < 384; i++)
			ss += (double)emb[i] * emb[i];
		double inv = 1 / sqrt(ss / 384 + 1e-5);
		for (int i = 0; i < 384; i++) {
			double d = fabs(x[384 + i] - emb[i] * inv * w[i]);
			worst = d > worst ? d : worst;
		}
		c->first_err = worst;
	}
	return ++c->calls == c->cancel_at;
}

static void test_capture_hook(void **s)
{
	(void)s;
	model *m = open_or_fail(tu_shared("models/debdoc-19m-f16.gguf"));
	qs_error err = { 0 };
	fwd_ctx *f = fwd_new(m, 2, 16, &err);
	cap_log c = { .m = m, .cancel_at = -1 };
	fwd_set_capture(f, on_capture, &c);
	int toks[32];
	for (int i = 0; i < 32; i++)
		toks[i] = ref_ids[i % 16];
	float *lg = malloc(sizeof(float) * 16 * 8192);
	assert_int_equal(fwd_prefill(f, toks, 2, 16, 12, lg, &err), 0);
	assert_int_equal(c.calls, 8 * 4 + 1);
	const int want_cols[4] = { 384, 384, 384, 1024 };
	for (int k = 0; k < 32; k++) {
		assert_int_equal(c.layer[k], k / 4);
		assert_int_equal(c.site[k], k % 4);
		assert_int_equal(c.rows[k], 32);
		assert_int_equal(c.cols[k], want_cols[k % 4]);
	}
	assert_int_equal(c.layer[32], -1);
	assert_int_equal(c.site[32], FWD_SITE_OUTPUT);
	assert_int_equal(c.rows[32], 2 * 4); /* only the positions with logits */
	assert_true(c.first_err < 1e-5);
	/* cancel in the middle */
	cap_log c2 = { .m = m, .cancel_at = 7 };
	fwd_set_capture(f, on_capture, &c2);
	assert_int_equal(fwd_prefill(f, toks, 2, 16, 12, lg, &err), QS_ECANCEL);
	assert_int_equal(c2.calls, 7);
	/* without the hook the context is still usable */
	fwd_set_capture(f, NULL, NULL);
	assert_int_equal(fwd_prefill(f, toks, 1, 16, 0, lg, &err), 0);
	free(lg);
	fwd_free(f);
	model_free(m);
}

/* Dropping a mapped tensor's pages loses nothing: they come back from the
 * file, and the logits are the same bit for bit. */
static void test_drop_pages(void **s)
{
	(void)s;
	model *m = open_or_fail(tu_shared("models/debdoc-19m-f16.gguf"));
	qs_error err = { 0 };
	fwd_ctx *f = fwd_new(m, 1, 16, &err);
	assert_non_null(f);
	float *a = malloc(sizeof(float) * 16 * 8192), *b = malloc(sizeof(float) * 16 * 8192);
	assert_int_equal(fwd_prefill(f, ref_ids, 1, 16, 0, a, &err), 0);
	const model_tensor *t = model_find(m, "blk.3.ffn_down.weight");
	void *copy = malloc(t->nbytes);
	memcpy(copy, t->data, t->nbytes);
	for (int i = 0; i < m->n_tensors; i++)
		model_drop_pages(m, &m->tensors[i]);
	assert_memory_equal(copy, t->data, t->nbytes);
	assert_int_equal(fwd_prefill(f, ref_ids, 1, 16, 0, b, &err), 0);
	assert_memory_equal(a, b, sizeof(float) * 16 * 8192);
	free(copy);
	free(a);
	free(b);
	fwd_free(f);
	model_free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_gguf_logits),
		cmocka_unit_test(test_hf_logits),
		cmocka_unit_test(test_batch_independent),
		cmocka_unit_test(test_capture_hook),
		cmocka_unit_test(test_layer_pieces),
		cmocka_unit_test(test_greedy),
		cmocka_unit_test(test_q8_0),
		cmocka_unit_test(test_q4_0),
		cmocka_unit_test(test_q4_1),
		cmocka_unit_test(test_ppl_first_chunks),
		cmocka_unit_test(test_drop_pages),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
