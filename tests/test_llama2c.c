/* test_llama2c.c - llama2.c checkpoints: scripts/export-llama2c.py output
 * loaded by engine/llama2c.c and checked against an independent source, the
 * F16 GGUF of the same weights (parsed here, not with engine/gguf), plus a
 * synthetic layout check and a corruption matrix. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include <jansson.h>

#include "../engine/forward.h"
#include "../engine/model.h"
#include "../kernels/fp16.h"
#include "../kernels/types.h"
#include "testutil.h"

/* ---- paths ---- */

static char dir_sep[512], dir_tied[512], dir_syn[512];
static char sep_bin[600], sep_tok[600], tied_bin[600], tied_tok[600];

static const char *syn_path(const char *name)
{
	static char buf[4][700];
	static int k;
	char *b = buf[k++ & 3];
	snprintf(b, sizeof(buf[0]), "%s/%s", dir_syn, name);
	return b;
}

static int run_export(const char *out, const char *extra)
{
	char cmd[2048];
	snprintf(cmd, sizeof(cmd),
		 "/usr/bin/python3 scripts/export-llama2c.py --model '%s' %s '%s'",
		 tu_shared("models/debdoc-19m-hf"), extra, out);
	return system(cmd);
}

/* ---- a minimal GGUF reader, independent of engine/gguf ---- */

typedef struct gtensor {
	char name[64];
	uint32_t n_dims;
	uint64_t ne[4];
	uint32_t type;
	uint64_t offset;
} gtensor;

typedef struct gfile {
	unsigned char *buf;
	size_t size;
	gtensor *t;
	uint64_t n_t;
	size_t data; /* start of the data section */
	const unsigned char *scores; /* tokenizer.ggml.scores: f32 x n_scores */
	uint64_t n_scores;
	const unsigned char *tokens; /* tokenizer.ggml.tokens: n_tokens strings */
	uint64_t n_tokens;
} gfile;

typedef struct gcur {
	const unsigned char *p, *end;
} gcur;

static int g_take(gcur *c, void *dst, size_t n)
{
	if ((size_t)(c->end - c->p) < n)
		return -1;
	if (dst)
		memcpy(dst, c->p, n);
	c->p += n;
	return 0;
}

static int g_u32(gcur *c, uint32_t *v) { return g_take(c, v, 4); }
static int g_u64(gcur *c, uint64_t *v) { return g_take(c, v, 8); }

static int g_str(gcur *c, const char **s, uint64_t *len)
{
	if (g_u64(c, len) || *len > (uint64_t)(c->end - c->p))
		return -1;
	*s = (const char *)c->p;
	c->p += *len;
	return 0;
}

static int g_skip_value(gcur *c, uint32_t type, int depth)
{
	static const size_t fixed[13] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
	if (type > 12)
		return -1;
	if (type == 8) {
		const char *s;
		uint64_t n;
		return g_str(c, &s, &n);
	}
	if (type == 9) {
		uint32_t et;
		uint64_t n;
		if (depth > 2 || g_u32(c, &et) || g_u64(c, &n) || et > 12)
			return -1;
		if (et != 8 && et != 9) {
			if (n > (uint64_t)(c->end - c->p) / fixed[et])
				return -1;
			c->p += n * fixed[et];
			return 0;
		}
		for (uint64_t i = 0; i < n; i++)
			if (g_skip_value(c, et, depth + 1))
				return -1;
		return 0;
	}
	return g_take(c, NULL, fixed[type]);
}

static int gguf_read(const char *path, gfile *g)
{
	memset(g, 0, sizeof(*g));
	g->buf = (unsigned char *)tu_read_file(path, &g->size);
	if (!g->buf)
		return -1;
	gcur c = { g->buf, g->buf + g->size };
	char magic[4];
	uint32_t version, alignment = 32;
	uint64_t n_kv;
	if (g_take(&c, magic, 4) || memcmp(magic, "GGUF", 4) || g_u32(&c, &version) ||
	    version != 3 || g_u64(&c, &g->n_t) || g_u64(&c, &n_kv) || g->n_t > 100000)
		return -1;
	for (uint64_t i = 0; i < n_kv; i++) {
		const char *key;
		uint64_t klen;
		uint32_t type;
		if (g_str(&c, &key, &klen) || g_u32(&c, &type))
			return -1;
		if (type == 4 && klen == 17 && !memcmp(key, "general.alignment", 17)) {
			if (g_u32(&c, &alignment) || alignment == 0)
				return -1;
			continue;
		}
		if (type == 9 && klen == 21 && !memcmp(key, "tokenizer.ggml.scores", 21)) {
			uint32_t et;
			gcur save = c;
			if (g_u32(&c, &et) || g_u64(&c, &g->n_scores) || et != 6)
				return -1;
			g->scores = c.p;
			c = save;
		}
		if (type == 9 && klen == 21 && !memcmp(key, "tokenizer.ggml.tokens", 21)) {
			uint32_t et;
			gcur save = c;
			if (g_u32(&c, &et) || g_u64(&c, &g->n_tokens) || et != 8)
				return -1;
			g->tokens = c.p;
			c = save;
		}
		if (g_skip_value(&c, type, 0))
			return -1;
	}
	g->t = calloc(g->n_t ? g->n_t : 1, sizeof(*g->t));
	if (!g->t)
		return -1;
	for (uint64_t i = 0; i < g->n_t; i++) {
		gtensor *t = &g->t[i];
		const char *name;
		uint64_t len;
		if (g_str(&c, &name, &len) || len >= sizeof(t->name) || g_u32(&c, &t->n_dims) ||
		    t->n_dims < 1 || t->n_dims > 4)
			return -1;
		memcpy(t->name, name, len);
		for (uint32_t d = 0; d < t->n_dims; d++)
			if (g_u64(&c, &t->ne[d]))
				return -1;
		if (g_u32(&c, &t->type) || g_u64(&c, &t->offset))
			return -1;
	}
	size_t pos = (size_t)(c.p - g->buf);
	g->data = (pos + alignment - 1) / alignment * alignment;
	return g->data <= g->size ? 0 : -1;
}

static void gguf_free(gfile *g)
{
	free(g->buf);
	free(g->t);
}

/* Tensor `name` with its data pointer checked against the file size. */
static const gtensor *gguf_find(const gfile *g, const char *name, const void **data)
{
	for (uint64_t i = 0; i < g->n_t; i++) {
		const gtensor *t = &g->t[i];
		if (strcmp(t->name, name))
			continue;
		uint64_t n = 1;
		for (uint32_t d = 0; d < t->n_dims; d++)
			n *= t->ne[d];
		uint64_t bytes = n * (t->type == 1 ? 2 : t->type == 0 ? 4 : 0);
		if (!bytes || t->offset > g->size - g->data || bytes > g->size - g->data - t->offset)
			return NULL;
		*data = g->buf + g->data + t->offset;
		return t;
	}
	return NULL;
}

static gfile ref;

/* ---- group setup: export both variants and read the reference once ---- */

static int setup(void **state)
{
	(void)state;
	const char *tmp = tu_tmpdir();
	snprintf(dir_sep, sizeof(dir_sep), "%s/sep", tmp);
	snprintf(dir_tied, sizeof(dir_tied), "%s/tied", tmp);
	snprintf(dir_syn, sizeof(dir_syn), "%s/syn", tmp);
	if (mkdir(dir_sep, 0700) || mkdir(dir_tied, 0700) || mkdir(dir_syn, 0700))
		return -1;
	snprintf(sep_bin, sizeof(sep_bin), "%s/model.bin", dir_sep);
	snprintf(sep_tok, sizeof(sep_tok), "%s/tokenizer.bin", dir_sep);
	snprintf(tied_bin, sizeof(tied_bin), "%s/debdoc-tied.bin", dir_tied);
	snprintf(tied_tok, sizeof(tied_tok), "%s/tok-tied.bin", dir_tied);
	if (run_export(sep_bin, "") != 0) {
		fprintf(stderr, "export-llama2c.py failed (separate classifier)\n");
		return -1;
	}
	char extra[700];
	snprintf(extra, sizeof(extra), "--shared-classifier --tokenizer-out '%s'", tied_tok);
	if (run_export(tied_bin, extra) != 0) {
		fprintf(stderr, "export-llama2c.py failed (shared classifier)\n");
		return -1;
	}
	if (gguf_read(tu_shared("models/debdoc-19m-f16.gguf"), &ref) != 0) {
		fprintf(stderr, "cannot parse the reference gguf\n");
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	gguf_free(&ref);
	return 0;
}

/* ---- the exported files themselves ---- */

static void test_export_files(void **state)
{
	(void)state;
	size_t n;
	char *b = tu_read_file(sep_bin, &n);
	assert_non_null(b);
	int32_t h[7];
	memcpy(h, b, sizeof(h));
	assert_int_equal(h[0], 384);
	assert_int_equal(h[1], 1024);
	assert_int_equal(h[2], 8);
	assert_int_equal(h[3], 6);
	assert_int_equal(h[4], 2);
	assert_int_equal(h[5], -8192); /* separate classifier */
	assert_int_equal(h[6], 512);
	/* 18,880,896 parameters + freq_cis (512 x 32, twice) + header */
	assert_int_equal(n, 28 + 4 * (18880896 + 2 * 512 * 32));
	/* freq_cis_real at position 1, frequency 1 is cos(10000^(-2/64)) */
	size_t fc = 28 + 4 * (size_t)18880896 - 4 * 8192 * 384 /* wcls follows */;
	float re, im;
	memcpy(&re, b + fc + 4 * (32 + 1), 4);
	memcpy(&im, b + fc + 4 * (512 * 32 + 32 + 1), 4);
	assert_float_equal(re, cosf(powf(10000.0f, -2.0f / 64)), 1e-6);
	assert_float_equal(im, sinf(powf(10000.0f, -2.0f / 64)), 1e-6);
	free(b);

	/* tokenizer.bin: llama2.c's post-processing (BOS "\n<s>\n", U+2581 -> ' ') */
	b = tu_read_file(sep_tok, &n);
	assert_non_null(b);
	const char *p = b + 4, *end = b + n;
	int pieces = 0, bos_ok = 0, has_2581 = 0, has_space = 0;
	while (p + 8 <= end) {
		int32_t len;
		memcpy(&len, p + 4, 4);
		assert_true(len >= 0 && len <= end - p - 8);
		if (pieces == 1)
			bos_ok = len == 5 && !memcmp(p + 8, "\n<s>\n", 5);
		has_space |= len > 0 && p[8] == ' ';
		for (int i = 0; i + 2 < len; i++)
			has_2581 |= !memcmp(p + 8 + i, "\xe2\x96\x81", 3);
		p += 8 + len;
		pieces++;
	}
	assert_ptr_equal(p, end);
	assert_int_equal(pieces, 8192);
	assert_true(bos_ok);
	assert_true(has_space);
	assert_false(has_2581);
	free(b);
}

/* ---- the separate-classifier export against the F16 GGUF ---- */

/* Compare one tensor element-wise with the GGUF. The GGUF's F16 matrices
 * came from the same BF16 weights, and BF16's 8-bit mantissa fits in F16's
 * 10 bits, so wherever the value is in F16's normal range the two agree
 * exactly as floats; below it (F16 subnormals) rounding our float32 to F16
 * (nearest even) must give the GGUF's bits. F32 vectors match exactly.
 * *n_sub counts the elements that needed the rounding. */
static void compare_tensor(const model_tensor *t, size_t *n_sub)
{
	const void *gd;
	const gtensor *g = gguf_find(&ref, t->name, &gd);
	if (!g)
		fail_msg("reference gguf has no tensor '%s'", t->name);
	assert_int_equal(t->type, KN_TYPE_F32);
	assert_int_equal(g->ne[0], t->ne[0]);
	assert_int_equal(g->n_dims == 1 ? 1 : g->ne[1], t->ne[1]);
	size_t n = (size_t)t->ne[0] * (size_t)t->ne[1];
	const float *x = t->data;
	if (g->type == 0) {
		if (memcmp(x, gd, n * 4))
			fail_msg("'%s': f32 values differ from the gguf", t->name);
		return;
	}
	assert_int_equal(g->type, 1);
	const uint16_t *h = gd;
	for (size_t i = 0; i < n; i++) {
		float y = kn_fp16_to_fp32_ref(h[i]);
		if (x[i] == y)
			continue;
		uint16_t r = kn_fp32_to_fp16_ref(x[i]);
		if (fabsf(x[i]) >= 0x1p-14f || r != h[i])
			fail_msg("'%s'[%zu]: %.9g (f16 0x%04x), gguf has 0x%04x (%.9g)", t->name, i,
				 x[i], r, h[i], y);
		(*n_sub)++;
	}
}

static void test_load_separate(void **state)
{
	(void)state;
	model_open_opts opts = { .tokenizer_path = NULL }; /* next to the model */
	model *m = NULL;
	qs_error err = { 0 };
	int rc = model_open(sep_bin, &opts, &m, &err);
	if (rc)
		fail_msg("model_open: %s", err.msg);
	assert_string_equal(m->format, "llama2c");
	const model_config *c = &m->cfg;
	assert_string_equal(c->arch, "llama");
	assert_int_equal(c->dim, 384);
	assert_int_equal(c->hidden, 1024);
	assert_int_equal(c->n_layers, 8);
	assert_int_equal(c->n_heads, 6);
	assert_int_equal(c->n_kv_heads, 2);
	assert_int_equal(c->head_dim, 64);
	assert_int_equal(c->vocab, 8192);
	assert_int_equal(c->ctx, 512);
	assert_int_equal(c->tied, 0);
	assert_int_equal(c->attn_bias, 0);
	assert_int_equal(c->rope_style, MODEL_ROPE_NORM);
	assert_float_equal(c->eps, 1e-5f, 0);
	assert_float_equal(c->rope_theta, 10000.0f, 0);
	assert_int_equal(m->n_tensors, 3 + 9 * 8);
	assert_int_equal(model_n_params(m), 18880896);
	assert_ptr_not_equal(m->output, m->tok_embd);
	assert_ptr_equal(m->output, model_find(m, "output.weight"));
	assert_ptr_equal(m->layers[5].wk, model_find(m, "blk.5.attn_k.weight"));
	assert_int_equal(m->layers[7].w_down->ne[0], 1024);
	assert_int_equal(m->layers[7].w_down->ne[1], 384);

	/* every tensor, in particular the un-permuted q/k rows */
	size_t n_sub = 0;
	for (int i = 0; i < m->n_tensors; i++)
		compare_tensor(&m->tensors[i], &n_sub);
	/* a handful of tiny weights are F16 subnormals: the rounding path ran */
	assert_true(n_sub > 0 && n_sub < 18880896 / 100);

	/* The comparison can tell the two RoPE orders apart: reading the GGUF's
	 * q rows in Hugging Face's rotate-half order does not match. */
	const void *gd;
	const gtensor *gq = gguf_find(&ref, "blk.0.attn_q.weight", &gd);
	assert_non_null(gq);
	const float *q = m->layers[0].wq->data;
	int differ = 0;
	for (int r = 0; r < 64 && !differ; r++) {
		int hf = (r % 2) * 32 + r / 2; /* the HF row holding Meta row r */
		for (int k = 0; k < 384; k++)
			differ |= kn_fp32_to_fp16_ref(q[hf * 384 + k]) !=
				  ((const uint16_t *)gd)[r * 384 + k];
	}
	assert_true(differ);

	/* the tokenizer: pieces (llama2.c's ' ' and "\n<s>\n" undone by the
	 * loader) and scores match the GGUF's vocabulary */
	assert_non_null(m->tok);
	assert_int_equal(tok_n_vocab(m->tok), 8192);
	assert_int_equal(tok_bos(m->tok), 1);
	assert_int_equal(tok_eos(m->tok), 2);
	assert_int_equal(ref.n_scores, 8192);
	assert_int_equal(ref.n_tokens, 8192);
	gcur tc = { ref.tokens, ref.buf + ref.size };
	for (int i = 0; i < 8192; i++) {
		float s;
		memcpy(&s, ref.scores + 4 * (size_t)i, 4);
		if (tok_score(m->tok, i) != s)
			fail_msg("piece %d: score %g, gguf has %g", i, tok_score(m->tok, i), s);
		const char *gp = NULL, *mp;
		uint64_t glen = 0;
		size_t mlen;
		assert_int_equal(g_str(&tc, &gp, &glen), 0);
		mp = tok_piece(m->tok, i, &mlen);
		if (mlen != glen || memcmp(mp, gp, mlen))
			fail_msg("piece %d: '%.*s', gguf has '%.*s'", i, (int)mlen, mp, (int)glen, gp);
	}
	model_free(m);
}

/* ---- the shared-classifier export ---- */

/* The exported checkpoint runs: its logits on the first 64 WikiText-2 tokens
 * match the independent PyTorch reference (../shared/refs), through both the
 * prefill and the decode path, and its tokenizer.bin gives the reference ids. */
static void test_logits_vs_reference(void **state)
{
	(void)state;
	model_open_opts opts = { .tokenizer_path = sep_tok };
	model *m = NULL;
	qs_error err = { 0 };
	if (model_open(sep_bin, &opts, &m, &err))
		fail_msg("model_open: %s", err.msg);
	json_error_t je;
	json_t *refs = json_load_file(tu_shared("refs/debdoc-19m.json"), 0, &je);
	assert_non_null(refs);
	json_t *jids = json_object_get(json_object_get(refs, "logits64"), "input_ids");
	assert_int_equal(json_array_size(jids), 64);
	int ids[64];
	for (int i = 0; i < 64; i++)
		ids[i] = (int)json_integer_value(json_array_get(jids, (size_t)i));
	/* the llama2.c tokenizer.bin reproduces the reference ids */
	size_t tlen, n;
	char *text = tu_read_file(tu_shared("data/wikitext-2-test.txt"), &tlen);
	assert_non_null(text);
	int *enc;
	assert_int_equal(tok_encode(m->tok, text, tlen < 4096 ? tlen : 4096, 1, &enc, &n, &err), 0);
	assert_true(n > 64);
	for (int i = 0; i < 64; i++)
		assert_int_equal(enc[i], ids[i]);
	free(enc);
	free(text);
	size_t len;
	float *rl = (float *)tu_read_file(tu_shared("refs/debdoc-19m-logits64.f32"), &len);
	assert_int_equal(len, sizeof(float) * 64 * 8192);
	fwd_ctx *f = fwd_new(m, 1, 64, &err);
	assert_non_null(f);
	float *lg = malloc(sizeof(float) * 64 * 8192), *row = malloc(sizeof(float) * 8192);
	assert_int_equal(fwd_prefill(f, ids, 1, 64, 0, lg, &err), 0);
	double num = 0, den = 0, worst = 0;
	for (size_t i = 0; i < 64 * 8192; i++) {
		num += ((double)lg[i] - rl[i]) * ((double)lg[i] - rl[i]);
		den += (double)rl[i] * rl[i];
	}
	for (int p = 0; p < 64; p++) {
		assert_int_equal(fwd_decode(f, ids[p], p, row, &err), 0);
		double a = 0, b = 0;
		for (int j = 0; j < 8192; j++) {
			a += ((double)row[j] - rl[p * 8192 + j]) * ((double)row[j] - rl[p * 8192 + j]);
			b += (double)rl[p * 8192 + j] * rl[p * 8192 + j];
		}
		worst = sqrt(a / b) > worst ? sqrt(a / b) : worst;
	}
	print_message("llama2.c checkpoint: logits rel L2 %.3g (prefill), worst decode row %.3g\n",
		      sqrt(num / den), worst);
	assert_true(sqrt(num / den) < 1e-4);
	assert_true(worst < 1e-4);
	free(lg);
	free(row);
	free(rl);
	fwd_free(f);
	json_decref(refs);
	model_free(m);
}

static void test_load_tied(void **state)
{
	(void)state;
	model_open_opts opts = { .tokenizer_path = tied_tok };
	model *m = NULL;
	qs_error err = { 0 };
	int rc = model_open(tied_bin, &opts, &m, &err);
	if (rc)
		fail_msg("model_open: %s", err.msg);
	assert_int_equal(m->cfg.tied, 1);
	assert_int_equal(m->cfg.vocab, 8192);
	assert_null(model_find(m, "output.weight"));
	assert_ptr_equal(m->output, m->tok_embd);
	assert_int_equal(m->n_tensors, 2 + 9 * 8);
	size_t n_sub = 0;
	compare_tensor(m->tok_embd, &n_sub);
	compare_tensor(m->layers[3].wk, &n_sub);
	model_free(m);
}

/* ---- synthetic checkpoints: exact layout and corruption ---- */

enum { S_DIM = 8, S_HID = 12, S_LAYERS = 2, S_HEADS = 2, S_KV = 1, S_VOCAB = 8192, S_SEQ = 4 };

/* Element k of array a (in file order) of a synthetic checkpoint: exact in
 * float32, so every tensor's data pointer can be checked. */
static float syn_val(int a, size_t k) { return (float)(a * 65536 + (int)(k % 65536)); }

/* A small checkpoint of the S_* sizes (GQA: 2 heads, 1 kv head) filled with
 * syn_val. *out is malloc'd with 64 spare bytes; returns the file size. */
static size_t syn_build(unsigned char **out, int separate)
{
	const int hs = S_DIM / S_HEADS;
	const size_t counts[14] = {
		(size_t)S_VOCAB * S_DIM, (size_t)S_LAYERS * S_DIM,
		(size_t)S_LAYERS * S_DIM * S_DIM, (size_t)S_LAYERS * S_DIM * S_KV * hs,
		(size_t)S_LAYERS * S_DIM * S_KV * hs, (size_t)S_LAYERS * S_DIM * S_DIM,
		(size_t)S_LAYERS * S_DIM, (size_t)S_LAYERS * S_HID * S_DIM,
		(size_t)S_LAYERS * S_DIM * S_HID, (size_t)S_LAYERS * S_HID * S_DIM, S_DIM,
		(size_t)S_SEQ * hs / 2, (size_t)S_SEQ * hs / 2,
		separate ? (size_t)S_VOCAB * S_DIM : 0,
	};
	size_t total = 28;
	for (int a = 0; a < 14; a++)
		total += 4 * counts[a];
	unsigned char *b = malloc(total + 64);
	assert_non_null(b);
	int32_t h[7] = { S_DIM, S_HID, S_LAYERS, S_HEADS, S_KV,
			 separate ? -S_VOCAB : S_VOCAB, S_SEQ };
	memcpy(b, h, sizeof(h));
	size_t off = 28;
	for (int a = 0; a < 14; a++)
		for (size_t k = 0; k < counts[a]; k++, off += 4) {
			float v = syn_val(a, k);
			memcpy(b + off, &v, 4);
		}
	*out = b;
	return total;
}

static void syn_header(unsigned char *b, const int32_t h[7])
{
	memcpy(b, h, 7 * sizeof(int32_t));
}

static void test_synthetic_layout(void **state)
{
	(void)state;
	unsigned char *b;
	size_t n = syn_build(&b, 1);
	const char *path = syn_path("layout.bin");
	assert_int_equal(tu_write_file(path, b, n), 0);
	free(b);
	model_open_opts opts = { .tokenizer_path = sep_tok };
	model *m = NULL;
	qs_error err = { 0 };
	if (model_open(path, &opts, &m, &err))
		fail_msg("model_open: %s", err.msg);
	assert_int_equal(m->cfg.head_dim, 4);
	assert_int_equal(m->cfg.tied, 0);
	static const struct { const char *fmt; int array; int64_t ne0, ne1; } want[] = {
		{ "token_embd.weight", 0, S_DIM, S_VOCAB },
		{ "blk.%d.attn_norm.weight", 1, S_DIM, 1 },
		{ "blk.%d.attn_q.weight", 2, S_DIM, S_DIM },
		{ "blk.%d.attn_k.weight", 3, S_DIM, S_KV * 4 },
		{ "blk.%d.attn_v.weight", 4, S_DIM, S_KV * 4 },
		{ "blk.%d.attn_output.weight", 5, S_DIM, S_DIM },
		{ "blk.%d.ffn_norm.weight", 6, S_DIM, 1 },
		{ "blk.%d.ffn_gate.weight", 7, S_DIM, S_HID },
		{ "blk.%d.ffn_down.weight", 8, S_HID, S_DIM },
		{ "blk.%d.ffn_up.weight", 9, S_DIM, S_HID },
		{ "output_norm.weight", 10, S_DIM, 1 },
		{ "output.weight", 13, S_DIM, S_VOCAB },
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		int per_layer = strchr(want[i].fmt, '%') != NULL;
		for (int l = 0; l < (per_layer ? S_LAYERS : 1); l++) {
			char name[64];
			snprintf(name, sizeof(name), want[i].fmt, l);
			const model_tensor *t = model_find(m, name);
			if (!t)
				fail_msg("missing '%s'", name);
			assert_int_equal(t->type, KN_TYPE_F32);
			assert_int_equal(t->n_dims, want[i].ne1 == 1 ? 1 : 2);
			assert_int_equal(t->ne[0], want[i].ne0);
			assert_int_equal(t->ne[1], want[i].ne1);
			size_t ne = (size_t)(want[i].ne0 * want[i].ne1);
			const float *x = t->data;
			assert_float_equal(x[0], syn_val(want[i].array, (size_t)l * ne), 0);
			assert_float_equal(x[ne - 1], syn_val(want[i].array, (size_t)l * ne + ne - 1), 0);
		}
	}
	assert_int_equal(m->n_tensors, 3 + 9 * S_LAYERS);
	model_free(m);
}

/* Expect model_open to fail on path with a one-line message that names
 * `names` (the file) and contains `want`. */
static void expect_fail(const char *path, const char *tok, const char *names, const char *want)
{
	model_open_opts opts = { .tokenizer_path = tok };
	static model dummy;
	model *m = &dummy; /* must be reset to NULL */
	qs_error err = { 0 };
	int rc = model_open(path, &opts, &m, &err);
	if (rc >= 0)
		fail_msg("%s: loaded, expected an error containing '%s'", path, want);
	assert_null(m);
	assert_int_equal(err.code, rc);
	if (strchr(err.msg, '\n'))
		fail_msg("message has a newline: %s", err.msg);
	if (!strstr(err.msg, names) || !strstr(err.msg, want))
		fail_msg("message '%s' lacks '%s' or '%s'", err.msg, names, want);
}

/* Write a synthetic checkpoint with header h (NULL: unchanged), size adjusted
 * by delta bytes, and expect want. */
static void corrupt_case(const char *name, int separate, const int32_t *h, long delta,
			 const char *want)
{
	unsigned char *b;
	size_t n = syn_build(&b, separate);
	if (h)
		syn_header(b, h);
	memset(b + n, 0, 64);
	n = (size_t)((long)n + delta);
	const char *path = syn_path(name);
	assert_int_equal(tu_write_file(path, b, n), 0);
	free(b);
	expect_fail(path, sep_tok, name, want);
}

static void test_corrupt_size(void **state)
{
	(void)state;
	corrupt_case("trunc.bin", 1, NULL, -4, "needs");
	corrupt_case("trunc.bin", 1, NULL, -4, "separate classifier");
	corrupt_case("extra.bin", 0, NULL, 1, "needs");
	corrupt_case("extra.bin", 0, NULL, 1, "shared classifier");
	/* the wrong sign of vocab_size: the size fits the other layout */
	int32_t h[7] = { S_DIM, S_HID, S_LAYERS, S_HEADS, S_KV, S_VOCAB, S_SEQ };
	corrupt_case("sign.bin", 1, h, 0, "fits a separate classifier");
	/* a header-only file */
	unsigned char hdr[28];
	memcpy(hdr, h, sizeof(hdr));
	assert_int_equal(tu_write_file(syn_path("hdronly.bin"), hdr, sizeof(hdr)), 0);
	expect_fail(syn_path("hdronly.bin"), sep_tok, "hdronly.bin", "file is 28 bytes");
	/* shorter than the header, and empty */
	assert_int_equal(tu_write_file(syn_path("tiny.bin"), hdr, 27), 0);
	expect_fail(syn_path("tiny.bin"), sep_tok, "tiny.bin", "file is 27 bytes, too short");
	assert_int_equal(tu_write_file(syn_path("empty.bin"), "", 0), 0);
	expect_fail(syn_path("empty.bin"), sep_tok, "empty.bin", "too short");
	expect_fail(syn_path("nonexistent.bin"), sep_tok, "nonexistent.bin", "no such file");
}

static void test_corrupt_header(void **state)
{
	(void)state;
	static const struct {
		const char *file;
		int32_t h[7];
		const char *want;
	} cases[] = {
		{ "zero-dim.bin", { 0, 12, 2, 2, 1, 8192, 4 }, "dim = 0" },
		{ "neg-layers.bin", { 8, 12, -3, 2, 1, 8192, 4 }, "n_layers = -3" },
		{ "zero-hidden.bin", { 8, 0, 2, 2, 1, 8192, 4 }, "hidden_dim = 0" },
		{ "zero-heads.bin", { 8, 12, 2, 0, 1, 8192, 4 }, "n_heads = 0" },
		{ "neg-kv.bin", { 8, 12, 2, 2, -1, 8192, 4 }, "n_kv_heads = -1" },
		{ "zero-vocab.bin", { 8, 12, 2, 2, 1, 0, 4 }, "vocab_size = 0" },
		{ "min-vocab.bin", { 8, 12, 2, 2, 1, INT32_MIN, 4 }, "vocab_size = -2147483648" },
		{ "neg-seq.bin", { 8, 12, 2, 2, 1, 8192, -4 }, "seq_len = -4" },
		{ "heads.bin", { 8, 12, 2, 3, 1, 8192, 4 }, "dim 8 not a multiple of n_heads 3" },
		{ "kv.bin", { 12, 12, 2, 4, 3, 8192, 4 }, "n_heads 4 not a multiple of n_kv_heads 3" },
		{ "kv-more.bin", { 8, 12, 2, 2, 4, 8192, 4 }, "not a multiple of n_kv_heads 4" },
		{ "odd.bin", { 6, 12, 2, 2, 1, 8192, 4 }, "head size 3" },
		{ "overflow.bin", { 1 << 30, 1 << 30, 1 << 30, 1 << 28, 1 << 28, 8192, 4 }, "2^64" },
		{ "overflow-vocab.bin", { 1 << 30, 8, 1, 1 << 28, 1, -INT32_MAX, INT32_MAX }, "2^64" },
		{ "huge.bin", { 65536, 1 << 20, 1024, 1024, 1024, 1 << 22, 1 << 24 }, "needs" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		corrupt_case(cases[i].file, 1, cases[i].h, 0, cases[i].want);

	/* llama2.c's later versioned format */
	unsigned char v2[256] = { 0x32, 0x34, 0x6b, 0x61, 2, 0, 0, 0 };
	assert_int_equal(tu_write_file(syn_path("ak42.bin"), v2, sizeof(v2)), 0);
	expect_fail(syn_path("ak42.bin"), sep_tok, "ak42.bin", "version 2");
	model *m = NULL;
	qs_error err = { 0 };
	model_open_opts opts = { .tokenizer_path = sep_tok };
	assert_int_equal(model_open(syn_path("ak42.bin"), &opts, &m, &err), QS_EUNSUPP);
}

static void test_corrupt_tokenizer(void **state)
{
	(void)state;
	/* no tokenizer.bin next to the checkpoint, none given */
	unsigned char *b;
	size_t n = syn_build(&b, 0);
	char path[700];
	snprintf(path, sizeof(path), "%s", syn_path("notok.bin"));
	assert_int_equal(tu_write_file(path, b, n), 0);
	char want_tok[700];
	snprintf(want_tok, sizeof(want_tok), "%s/tokenizer.bin", dir_syn);
	expect_fail(path, NULL, want_tok, "-z");
	expect_fail(path, NULL, "notok.bin", "not found");
	/* a -z path that does not exist */
	expect_fail(path, syn_path("missing-tok.bin"), "missing-tok.bin", "-z");

	/* tokenizer files that do not fit the vocabulary: every one must fail
	 * naming the tokenizer file */
	size_t tn;
	char *tok = tu_read_file(sep_tok, &tn);
	assert_non_null(tok);
	/* fewer pieces than the model's 8192: cut after piece 8000 */
	const char *p = tok + 4;
	for (int i = 0; i < 8000; i++) {
		int32_t len;
		memcpy(&len, p + 4, 4);
		p += 8 + len;
	}
	assert_int_equal(tu_write_file(syn_path("tok-short.bin"), tok, (size_t)(p - tok)), 0);
	expect_fail(path, syn_path("tok-short.bin"), "tok-short.bin", "tok-short.bin");
	/* truncated inside a piece */
	assert_int_equal(tu_write_file(syn_path("tok-cut.bin"), tok, tn - 3), 0);
	expect_fail(path, syn_path("tok-cut.bin"), "tok-cut.bin", "tok-cut.bin");
	/* more pieces than the model's vocabulary: a model with vocab 8000 */
	int32_t h[7] = { S_DIM, S_HID, S_LAYERS, S_HEADS, S_KV, 8000, S_SEQ };
	syn_header(b, h);
	n -= (size_t)(8192 - 8000) * S_DIM * 4;
	assert_int_equal(tu_write_file(syn_path("vocab8000.bin"), b, n), 0);
	/* the message may come from the tokenizer loader or from model_finish */
	expect_fail(syn_path("vocab8000.bin"), sep_tok, "tokenizer", "8000");
	free(tok);
	free(b);

	/* positive control: the same checkpoint with the right tokenizer loads */
	model_open_opts opts = { .tokenizer_path = sep_tok };
	model *m = NULL;
	qs_error err = { 0 };
	if (model_open(path, &opts, &m, &err))
		fail_msg("model_open: %s", err.msg);
	assert_int_equal(m->cfg.tied, 1);
	assert_ptr_equal(m->output, m->tok_embd);
	model_free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_export_files),
		cmocka_unit_test(test_load_separate),
		cmocka_unit_test(test_logits_vs_reference),
		cmocka_unit_test(test_load_tied),
		cmocka_unit_test(test_synthetic_layout),
		cmocka_unit_test(test_corrupt_size),
		cmocka_unit_test(test_corrupt_header),
		cmocka_unit_test(test_corrupt_tokenizer),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
