/* test_gguf.c - the GGUF reader and writer (engine/gguf.c) and the GGUF model
 * loader (engine/gguf_model.c).
 *
 * (a) the shared demo model: header, hyper-parameters, vocabulary, tensors,
 *     checked against a tiny independent scanner written here;
 * (b) writer round trips: every value type, every tensor type, a custom
 *     alignment; a byte-identical copy of the demo model; atomic writes;
 * (c) a corruption matrix (reader) and inconsistent models (loader);
 * (d) a deterministic mutation fuzz loop. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../engine/gguf.h"
#include "../engine/model.h"
#include "../kernels/fp16.h"
#include "../kernels/types.h"
#include "testutil.h"

#define DEMO "models/debdoc-19m-f16.gguf"

/* ------------------------------------------------------------ helpers */

#define tpath tu_tmppath /* a path under the test's temp dir */

/* An error: negative code, one line, names the file, says what. Returns 1 if ok
 * (and prints why not otherwise) so table-driven tests can report every case. */
static int err_ok(int rc, const qs_error *e, const char *file, const char *want, const char *what)
{
	int ok = rc < 0 && e->code == rc && e->msg[0] && !strchr(e->msg, '\n') &&
		 strstr(e->msg, file) && strstr(e->msg, want);
	if (!ok)
		print_error("%s: rc %d code %d msg '%s'\n  want it to name '%s' and say '%s'\n",
			    what, rc, e->code, e->msg, file, want);
	return ok;
}

static void check_err(int rc, const qs_error *e, const char *file, const char *want)
{
	assert_true(err_ok(rc, e, file, want, "error"));
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static int gs_eq(gguf_str s, const char *c)
{
	return s.len == strlen(c) && memcmp(s.s, c, s.len) == 0;
}

/* Number of directory entries in dir whose name contains sub. */
static int count_entries(const char *dir, const char *sub)
{
	DIR *d = opendir(dir);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (strstr(e->d_name, sub))
			n++;
	closedir(d);
	return n;
}

/* ------------------------------------------- an independent GGUF scanner
 * Walks a well-formed little-endian GGUF and records where every field is,
 * so tests can check the writer's layout and corrupt exact fields. It trusts
 * its input: only valid files written by the test go through it. */

#define MAXKV 64
#define MAXT 128

typedef struct lay {
	size_t size, hdr_end, data_start, alignment;
	uint32_t version;
	uint64_t n_t, n_kv;
	struct {
		size_t len_at, key_at, type_at, val_at, end; /* val_at: value, or array elem type */
		uint64_t keylen;
		uint32_t type;
	} kv[MAXKV];
	struct {
		size_t len_at, name_at, ndims_at, dims_at, type_at, off_at;
		uint32_t nd, type;
		uint64_t ne[4], off;
	} t[MAXT];
} lay;

static size_t vsize(uint32_t t)
{
	static const size_t s[13] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
	return t < 13 ? s[t] : 0;
}

static size_t skip_value(const unsigned char *b, size_t p, uint32_t type)
{
	if (type == GGUF_STRING)
		return p + 8 + get64(b + p);
	if (type != GGUF_ARRAY)
		return p + vsize(type);
	uint32_t et = get32(b + p);
	uint64_t n = get64(b + p + 4);
	p += 12;
	for (uint64_t j = 0; j < n; j++)
		p = skip_value(b, p, et);
	return p;
}

static void scan(const unsigned char *b, size_t size, lay *L)
{
	memset(L, 0, sizeof(*L));
	L->size = size;
	assert_memory_equal(b, "GGUF", 4);
	L->version = get32(b + 4);
	L->n_t = get64(b + 8);
	L->n_kv = get64(b + 16);
	assert_true(L->n_kv <= MAXKV && L->n_t <= MAXT);
	L->alignment = 32;
	size_t p = 24;
	for (uint64_t i = 0; i < L->n_kv; i++) {
		L->kv[i].len_at = p;
		L->kv[i].keylen = get64(b + p);
		L->kv[i].key_at = p + 8;
		p += 8 + L->kv[i].keylen;
		L->kv[i].type_at = p;
		L->kv[i].type = get32(b + p);
		L->kv[i].val_at = p + 4;
		p = skip_value(b, p + 4, L->kv[i].type);
		L->kv[i].end = p;
		if (L->kv[i].keylen == 17 && memcmp(b + L->kv[i].key_at, "general.alignment", 17) == 0)
			L->alignment = get32(b + L->kv[i].val_at);
	}
	for (uint64_t i = 0; i < L->n_t; i++) {
		L->t[i].len_at = p;
		L->t[i].name_at = p + 8;
		p += 8 + get64(b + p);
		L->t[i].ndims_at = p;
		L->t[i].nd = get32(b + p);
		p += 4;
		L->t[i].dims_at = p;
		for (uint32_t d = 0; d < L->t[i].nd; d++, p += 8)
			L->t[i].ne[d] = get64(b + p);
		L->t[i].type_at = p;
		L->t[i].type = get32(b + p);
		L->t[i].off_at = p + 4;
		L->t[i].off = get64(b + p + 4);
		p += 12;
	}
	L->hdr_end = p;
	L->data_start = (p + L->alignment - 1) / L->alignment * L->alignment;
}

/* ------------------------------------------------- (a) the demo model */

static const struct {
	const char *suffix;
	int type; /* kn_type */
	int64_t ne0, ne1; /* ne1 0: a vector */
} demo_shapes[] = {
	{ "token_embd.weight", KN_TYPE_F16, 384, 8192 },
	{ "attn_output.weight", KN_TYPE_F16, 384, 384 }, /* before output.weight */
	{ "output.weight", KN_TYPE_F16, 384, 8192 },
	{ "norm.weight", KN_TYPE_F32, 384, 0 }, /* output_norm, attn_norm, ffn_norm */
	{ "attn_q.weight", KN_TYPE_F16, 384, 384 },
	{ "attn_k.weight", KN_TYPE_F16, 384, 128 },
	{ "attn_v.weight", KN_TYPE_F16, 384, 128 },
	{ "ffn_gate.weight", KN_TYPE_F16, 384, 1024 },
	{ "ffn_up.weight", KN_TYPE_F16, 384, 1024 },
	{ "ffn_down.weight", KN_TYPE_F16, 1024, 384 },
};

static int has_suffix(const char *s, size_t n, const char *suf)
{
	size_t m = strlen(suf);
	return n >= m && memcmp(s + n - m, suf, m) == 0;
}

static void test_demo_header(void **state)
{
	(void)state;
	const char *path = tu_shared(DEMO);
	gguf_file *g = NULL;
	qs_error e = { 0 };
	int rc = gguf_open(path, &g, &e);
	if (rc)
		print_error("%s\n", e.msg);
	assert_int_equal(rc, 0);
	assert_int_equal(gguf_version(g), 3);
	assert_int_equal(gguf_alignment(g), 32);
	assert_int_equal(gguf_n_kv(g), 25);
	assert_int_equal(gguf_n_tensors(g), 75);
	assert_string_equal(gguf_path(g), path);

	gguf_str s;
	assert_int_equal(gguf_get_str(g, "general.architecture", &s, &e), 0);
	assert_true(gs_eq(s, "llama"));
	assert_int_equal(gguf_get_str(g, "general.name", &s, &e), 0);
	assert_true(gs_eq(s, "debdoc-19m"));
	assert_int_equal(gguf_get_str(g, "tokenizer.ggml.model", &s, &e), 0);
	assert_true(gs_eq(s, "llama"));

	static const struct { const char *key; int64_t v; } ints[] = {
		{ "llama.embedding_length", 384 }, { "llama.block_count", 8 },
		{ "llama.attention.head_count", 6 }, { "llama.attention.head_count_kv", 2 },
		{ "llama.feed_forward_length", 1024 }, { "llama.context_length", 512 },
		{ "llama.rope.dimension_count", 64 }, { "llama.vocab_size", 8192 },
		{ "general.alignment", 32 }, { "general.file_type", 1 },
		{ "tokenizer.ggml.bos_token_id", 1 }, { "tokenizer.ggml.eos_token_id", 2 },
		{ "tokenizer.ggml.unknown_token_id", 0 },
	};
	for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
		int64_t v = -1;
		assert_int_equal(gguf_get_i64(g, ints[i].key, &v, &e), 0);
		if (v != ints[i].v)
			print_error("%s = %lld, want %lld\n", ints[i].key, (long long)v, (long long)ints[i].v);
		assert_true(v == ints[i].v);
	}
	double d;
	assert_int_equal(gguf_get_f64(g, "llama.attention.layer_norm_rms_epsilon", &d, &e), 0);
	assert_true((float)d == 1e-5f);
	assert_int_equal(gguf_get_f64(g, "llama.rope.freq_base", &d, &e), 0);
	assert_true(d == 10000.0);
	int b = -1;
	assert_int_equal(gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, &e), 0);
	assert_int_equal(b, 1);
	assert_int_equal(gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b, &e), 0);
	assert_int_equal(b, 0);
	assert_int_equal(gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b, &e), 0);
	assert_int_equal(b, 1);

	/* vocabulary */
	int ti = gguf_find_key(g, "tokenizer.ggml.tokens");
	assert_true(ti >= 0);
	assert_int_equal(gguf_kv_type(g, ti), GGUF_ARRAY);
	assert_int_equal(gguf_arr_type(g, ti), GGUF_STRING);
	assert_int_equal(gguf_arr_n(g, ti), 8192);
	assert_true(gs_eq(gguf_arr_str(g, ti, 0), "<unk>"));
	assert_true(gs_eq(gguf_arr_str(g, ti, 1), "<s>"));
	assert_true(gs_eq(gguf_arr_str(g, ti, 2), "</s>"));
	assert_true(gs_eq(gguf_arr_str(g, ti, 3), "<0x00>"));
	assert_true(gs_eq(gguf_arr_str(g, ti, 3 + 255), "<0xFF>"));
	assert_int_equal(gguf_arr_str(g, ti, 8192).len, 0); /* out of range: empty */
	for (uint64_t j = 0; j < 8192; j++)
		assert_true(gguf_arr_str(g, ti, j).len > 0);
	int si = gguf_find_key(g, "tokenizer.ggml.scores");
	assert_true(si >= 0);
	assert_int_equal(gguf_arr_type(g, si), GGUF_FLOAT32);
	assert_int_equal(gguf_arr_n(g, si), 8192);
	int yi = gguf_find_key(g, "tokenizer.ggml.token_type");
	assert_true(yi >= 0);
	assert_int_equal(gguf_arr_type(g, yi), GGUF_INT32);
	assert_int_equal(gguf_arr_n(g, yi), 8192);
	assert_int_equal(gguf_arr_i64(g, yi, 0), 2); /* unknown */
	assert_int_equal(gguf_arr_i64(g, yi, 1), 3); /* control */
	assert_int_equal(gguf_arr_i64(g, yi, 2), 3);
	assert_int_equal(gguf_arr_i64(g, yi, 3), 6); /* byte */
	int normal = 0;
	for (uint64_t j = 0; j < 8192; j++) {
		int64_t t = gguf_arr_i64(g, yi, j);
		assert_true(t >= 1 && t <= 6);
		normal += t == 1;
		double sc = gguf_arr_f64(g, si, j);
		assert_true(isfinite(sc) && sc <= 0.0);
	}
	assert_int_equal(normal, 8192 - 3 - 256);
	assert_int_equal(gguf_find_key(g, "no.such.key"), -1);
	gguf_close(g);
}

static void test_demo_tensors(void **state)
{
	(void)state;
	const char *path = tu_shared(DEMO);
	size_t size;
	unsigned char *buf = (unsigned char *)tu_read_file(path, &size);
	assert_non_null(buf);
	lay *L = calloc(1, sizeof(*L));
	assert_non_null(L);
	scan(buf, size, L);

	gguf_file *g = NULL;
	qs_error e = { 0 };
	assert_int_equal(gguf_open(path, &g, &e), 0);
	assert_int_equal(gguf_n_tensors(g), (int)L->n_t);
	const unsigned char *base = NULL;
	size_t total = 0;
	for (int i = 0; i < gguf_n_tensors(g); i++) {
		const gguf_tensor_info *t = gguf_tensor(g, i);
		char name[80];
		snprintf(name, sizeof(name), "%.*s", (int)t->name.len, t->name.s);
		assert_memory_equal(t->name.s, buf + L->t[i].name_at, t->name.len);
		size_t k = 0;
		while (k < sizeof(demo_shapes) / sizeof(demo_shapes[0]) &&
		       !has_suffix(name, strlen(name), demo_shapes[k].suffix))
			k++;
		if (k == sizeof(demo_shapes) / sizeof(demo_shapes[0]))
			fail_msg("unexpected tensor %s", name);
		int vec = demo_shapes[k].ne1 == 0;
		assert_int_equal(t->type, demo_shapes[k].type);
		assert_int_equal(t->n_dims, vec ? 1 : 2);
		assert_int_equal(t->ne[0], demo_shapes[k].ne0);
		assert_int_equal(t->ne[1], vec ? 1 : demo_shapes[k].ne1);
		assert_int_equal(t->ne[2], 1);
		assert_int_equal(t->ne[3], 1);
		size_t want = (size_t)t->ne[0] * (size_t)t->ne[1] * (t->type == KN_TYPE_F32 ? 4 : 2);
		assert_int_equal(t->nbytes, want);
		assert_int_equal(t->offset, L->t[i].off);
		assert_int_equal(t->offset % 32, 0);
		/* data points at data_start + offset, the same bytes as the file */
		const unsigned char *d = t->data;
		if (i == 0)
			base = d - t->offset;
		assert_ptr_equal(d - t->offset, base);
		assert_true(L->data_start + t->offset + t->nbytes <= size);
		assert_memory_equal(d, buf + L->data_start + t->offset, t->nbytes);
		total += t->ne[0] * t->ne[1];
	}
	assert_int_equal(total, 18880896); /* parameters, as models/README.md says */
	/* a few values make sense as weights: finite, small */
	const gguf_tensor_info *te = gguf_tensor(g, 0);
	assert_true(gs_eq(te->name, "token_embd.weight"));
	float row[384];
	kn_fp16_to_fp32_row(te->data, row, 384);
	for (int j = 0; j < 384; j++)
		assert_true(isfinite(row[j]) && fabsf(row[j]) < 10.0f);
	gguf_close(g);
	free(L);
	free(buf);
}

static void test_open_errors(void **state)
{
	(void)state;
	gguf_file *g = (gguf_file *)1;
	qs_error e = { 0 };
	const char *p = tpath("does-not-exist.gguf");
	check_err(gguf_open(p, &g, &e), &e, p, "cannot open");
	assert_null(g);
	p = tu_tmpdir();
	check_err(gguf_open(p, &g, &e), &e, p, "not a regular file");
	p = tpath("empty.gguf");
	assert_int_equal(tu_write_file(p, "", 0), 0);
	check_err(gguf_open(p, &g, &e), &e, p, "bad magic");
	p = tpath("short.gguf");
	assert_int_equal(tu_write_file(p, "GG", 2), 0);
	check_err(gguf_open(p, &g, &e), &e, p, "bad magic");
	p = tpath("magic-only.gguf");
	assert_int_equal(tu_write_file(p, "GGUF", 4), 0);
	check_err(gguf_open(p, &g, &e), &e, p, "truncated at byte 4 reading version");
	/* a header and nothing else is a valid, empty file */
	unsigned char h[24] = "GGUF";
	put32(h + 4, 3);
	p = tpath("header-only.gguf");
	assert_int_equal(tu_write_file(p, h, sizeof(h)), 0);
	assert_int_equal(gguf_open(p, &g, &e), 0);
	assert_int_equal(gguf_n_kv(g), 0);
	assert_int_equal(gguf_n_tensors(g), 0);
	assert_int_equal(gguf_alignment(g), 32);
	gguf_close(g);
	gguf_close(NULL);
	/* version 2 is read too */
	put32(h + 4, 2);
	assert_int_equal(tu_write_file(p, h, sizeof(h)), 0);
	assert_int_equal(gguf_open(p, &g, &e), 0);
	assert_int_equal(gguf_version(g), 2);
	gguf_close(g);
}

/* ------------------------------------------------- (b) writer round trips */

static const int64_t ne_f32[] = { 12, 3 };
static const int64_t ne_f16[] = { 10 };
static const int64_t ne_bf16[] = { 4, 3, 2 };
static const int64_t ne_q8[] = { 64, 2 };
static const int64_t ne_q40[] = { 32, 1, 2, 2 };
static const int64_t ne_q41[] = { 96 };

typedef struct rt_data {
	float f32[36];
	kn_fp16 f16[10];
	kn_bf16 bf16[24];
	block_q8_0 q8[4];
	block_q4_0 q40[4];
	block_q4_1 q41[3];
} rt_data;

static void fill_rt(rt_data *d)
{
	float x[128];
	for (int i = 0; i < 128; i++)
		x[i] = sinf((float)i * 0.37f) * (1.0f + (float)(i % 7));
	memcpy(d->f32, x, sizeof(d->f32));
	for (int i = 0; i < 10; i++)
		d->f16[i] = kn_fp32_to_fp16_ref(x[i]);
	for (int i = 0; i < 24; i++)
		d->bf16[i] = kn_fp32_to_bf16_ref(x[i]);
	kn_quantize_row_q8_0_ref(x, d->q8, 128);
	kn_quantize_row_q4_0_ref(x, d->q40, 128);
	kn_quantize_row_q4_1_ref(x, d->q41, 96);
}

static void test_writer_roundtrip(void **state)
{
	(void)state;
	rt_data *rd = malloc(sizeof(*rd));
	assert_non_null(rd);
	fill_rt(rd);
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	uint8_t u8 = 250;
	int8_t i8 = -120;
	uint16_t u16 = 65000;
	int16_t i16 = -32000;
	uint64_t u64 = 0x0123456789abcdefull, u64big = 0xfedcba9876543210ull;
	int64_t i64 = -0x0123456789abcdefll;
	double f64 = -1.0 / 3.0;
	assert_int_equal(gguf_w_raw(w, "t.u8", GGUF_UINT8, &u8, 1), 0);
	assert_int_equal(gguf_w_raw(w, "t.i8", GGUF_INT8, &i8, 1), 0);
	assert_int_equal(gguf_w_raw(w, "t.u16", GGUF_UINT16, &u16, 2), 0);
	assert_int_equal(gguf_w_raw(w, "t.i16", GGUF_INT16, &i16, 2), 0);
	assert_int_equal(gguf_w_u32(w, "t.u32", 4000000000u), 0);
	assert_int_equal(gguf_w_i32(w, "t.i32", -2000000000), 0);
	assert_int_equal(gguf_w_f32(w, "t.f32", 0.15625f), 0);
	assert_int_equal(gguf_w_bool(w, "t.bool", 7), 0); /* any nonzero is true */
	assert_int_equal(gguf_w_bool(w, "t.false", 0), 0);
	assert_int_equal(gguf_w_str(w, "t.str", "h\xc3\xa9llo"), 0);
	assert_int_equal(gguf_w_str(w, "t.empty", ""), 0);
	assert_int_equal(gguf_w_raw(w, "t.u64", GGUF_UINT64, &u64, 8), 0);
	assert_int_equal(gguf_w_raw(w, "t.u64big", GGUF_UINT64, &u64big, 8), 0);
	assert_int_equal(gguf_w_raw(w, "t.i64", GGUF_INT64, &i64, 8), 0);
	assert_int_equal(gguf_w_raw(w, "t.f64", GGUF_FLOAT64, &f64, 8), 0);
	double nan = NAN;
	assert_int_equal(gguf_w_raw(w, "t.nan", GGUF_FLOAT64, &nan, 8), 0);
	assert_int_equal(gguf_w_u32(w, "general.alignment", 64), 0);

	/* arrays of every scalar type */
	const uint8_t a_u8[] = { 0, 1, 255 };
	const int8_t a_i8[] = { -128, 0, 127 };
	const uint16_t a_u16[] = { 1, 65535 };
	const int16_t a_i16[] = { -32768, 32767, 5 };
	const uint32_t a_u32[] = { 0, 4294967295u };
	const int32_t a_i32[] = { -2147483647 - 1, 2147483647, 3, 4 };
	const float a_f32[] = { 1.5f, -2.25f, 1e-30f };
	const uint8_t a_bool[] = { 1, 0, 1, 1 };
	const uint64_t a_u64[] = { 0, 1ull << 62 };
	const int64_t a_i64[] = { INT64_MIN, INT64_MAX, -1 };
	const double a_f64[] = { 3.25, -1e300 };
	struct { const char *key; uint32_t type; const void *d; uint64_t n; } arrs[] = {
		{ "a.u8", GGUF_UINT8, a_u8, 3 }, { "a.i8", GGUF_INT8, a_i8, 3 },
		{ "a.u16", GGUF_UINT16, a_u16, 2 }, { "a.i16", GGUF_INT16, a_i16, 3 },
		{ "a.u32", GGUF_UINT32, a_u32, 2 }, { "a.i32", GGUF_INT32, a_i32, 4 },
		{ "a.f32", GGUF_FLOAT32, a_f32, 3 }, { "a.bool", GGUF_BOOL, a_bool, 4 },
		{ "a.u64", GGUF_UINT64, a_u64, 2 }, { "a.i64", GGUF_INT64, a_i64, 3 },
		{ "a.f64", GGUF_FLOAT64, a_f64, 2 }, { "a.empty", GGUF_INT32, NULL, 0 },
	};
	size_t n_arrs = sizeof(arrs) / sizeof(arrs[0]);
	for (size_t i = 0; i < n_arrs; i++)
		assert_int_equal(gguf_w_arr(w, arrs[i].key, arrs[i].type, arrs[i].d, arrs[i].n), 0);
	const char *strs[] = { "alpha", "", "g\xc3\xa4mma", "with\nnewline" };
	size_t lens[] = { 5, 0, 6, 12 };
	assert_int_equal(gguf_w_arr_str(w, "a.str", strs, lens, 4), 0);
	assert_int_equal(gguf_w_arr_str(w, "a.str0", NULL, NULL, 0), 0);

	struct { const char *name; int type; uint32_t nd; const int64_t *ne; const void *d; size_t nb; } ts[] = {
		{ "w.f32", KN_TYPE_F32, 2, ne_f32, rd->f32, sizeof(rd->f32) },
		{ "w.f16", KN_TYPE_F16, 1, ne_f16, rd->f16, sizeof(rd->f16) },
		{ "w.bf16", KN_TYPE_BF16, 3, ne_bf16, rd->bf16, sizeof(rd->bf16) },
		{ "w.q8_0", KN_TYPE_Q8_0, 2, ne_q8, rd->q8, sizeof(rd->q8) },
		{ "w.q4_0", KN_TYPE_Q4_0, 4, ne_q40, rd->q40, sizeof(rd->q40) },
		{ "w.q4_1", KN_TYPE_Q4_1, 1, ne_q41, rd->q41, sizeof(rd->q41) },
	};
	size_t n_ts = sizeof(ts) / sizeof(ts[0]);
	for (size_t i = 0; i < n_ts; i++)
		assert_int_equal(gguf_w_tensor(w, ts[i].name, ts[i].type, ts[i].nd, ts[i].ne, ts[i].d,
					       ts[i].nb), 0);
	const char *path = tpath("roundtrip.gguf");
	qs_error e = { 0 };
	int rc = gguf_writer_write(w, path, &e);
	if (rc)
		print_error("%s\n", e.msg);
	assert_int_equal(rc, 0);
	gguf_writer_free(w);
	assert_int_equal(count_entries(tu_tmpdir(), ".tmp"), 0);

	/* the layout, read independently */
	size_t size;
	unsigned char *buf = (unsigned char *)tu_read_file(path, &size);
	assert_non_null(buf);
	lay *L = calloc(1, sizeof(*L));
	assert_non_null(L);
	scan(buf, size, L);
	assert_int_equal(L->version, 3);
	assert_int_equal(L->n_kv, 17 + n_arrs + 2);
	assert_int_equal(L->n_t, n_ts);
	assert_int_equal(L->alignment, 64);
	assert_int_equal(L->data_start % 64, 0);
	for (size_t i = L->hdr_end; i < L->data_start; i++)
		assert_int_equal(buf[i], 0); /* zero padding */
	uint64_t off = 0;
	for (size_t i = 0; i < n_ts; i++) {
		assert_int_equal(L->t[i].off, off);
		assert_memory_equal(buf + L->data_start + off, ts[i].d, ts[i].nb);
		for (size_t j = ts[i].nb; j < (ts[i].nb + 63) / 64 * 64; j++)
			assert_int_equal(buf[L->data_start + off + j], 0);
		off += (ts[i].nb + 63) / 64 * 64;
	}
	assert_int_equal(size, L->data_start + off);

	/* and through the reader */
	gguf_file *g = NULL;
	assert_int_equal(gguf_open(path, &g, &e), 0);
	assert_int_equal(gguf_version(g), 3);
	assert_int_equal(gguf_alignment(g), 64);
	assert_int_equal(gguf_n_kv(g), (int)L->n_kv);
	static const struct { const char *key; int type; int64_t v; } iv[] = {
		{ "t.u8", GGUF_UINT8, 250 }, { "t.i8", GGUF_INT8, -120 },
		{ "t.u16", GGUF_UINT16, 65000 }, { "t.i16", GGUF_INT16, -32000 },
		{ "t.u32", GGUF_UINT32, 4000000000ll }, { "t.i32", GGUF_INT32, -2000000000 },
		{ "t.u64", GGUF_UINT64, 0x0123456789abcdefll }, { "t.i64", GGUF_INT64, -0x0123456789abcdefll },
		{ "general.alignment", GGUF_UINT32, 64 },
	};
	for (size_t i = 0; i < sizeof(iv) / sizeof(iv[0]); i++) {
		int k = gguf_find_key(g, iv[i].key);
		assert_true(k >= 0);
		assert_true(gs_eq(gguf_key(g, k), iv[i].key));
		assert_int_equal(gguf_kv_type(g, k), iv[i].type);
		int64_t v;
		assert_int_equal(gguf_get_i64(g, iv[i].key, &v, &e), 0);
		assert_true(v == iv[i].v);
		double d;
		assert_int_equal(gguf_get_f64(g, iv[i].key, &d, &e), 0); /* integers are numbers */
		assert_true(d == (double)iv[i].v);
	}
	/* keys keep their order */
	assert_int_equal(gguf_find_key(g, "t.u8"), 0);
	assert_int_equal(gguf_find_key(g, "a.str0"), (int)L->n_kv - 1);
	int64_t v;
	double d;
	int bv;
	gguf_str s;
	check_err(gguf_get_i64(g, "t.u64big", &v, &e), &e, path, "'t.u64big' = 18364758544493064720 out of range");
	assert_int_equal(gguf_get_f64(g, "t.f32", &d, &e), 0);
	assert_true(d == 0.15625);
	assert_int_equal(gguf_get_f64(g, "t.f64", &d, &e), 0);
	assert_true(d == -1.0 / 3.0);
	check_err(gguf_get_f64(g, "t.nan", &d, &e), &e, path, "'t.nan' is not finite");
	check_err(gguf_get_i64(g, "t.f32", &v, &e), &e, path, "has type float32, want an integer");
	check_err(gguf_get_i64(g, "t.bool", &v, &e), &e, path, "has type bool, want an integer");
	check_err(gguf_get_i64(g, "t.str", &v, &e), &e, path, "has type string, want an integer");
	check_err(gguf_get_f64(g, "a.f32", &d, &e), &e, path, "has type array, want a number");
	assert_int_equal(gguf_get_bool(g, "t.bool", &bv, &e), 0);
	assert_int_equal(bv, 1);
	assert_int_equal(gguf_get_bool(g, "t.false", &bv, &e), 0);
	assert_int_equal(bv, 0);
	check_err(gguf_get_bool(g, "t.u8", &bv, &e), &e, path, "'t.u8' has type uint8, want bool");
	assert_int_equal(gguf_get_str(g, "t.str", &s, &e), 0);
	assert_true(gs_eq(s, "h\xc3\xa9llo"));
	assert_int_equal(gguf_get_str(g, "t.empty", &s, &e), 0);
	assert_int_equal(s.len, 0);
	check_err(gguf_get_str(g, "t.u32", &s, &e), &e, path, "has type uint32, want string");
	check_err(gguf_get_str(g, "t.nothere", &s, &e), &e, path, "missing key 't.nothere'");
	check_err(gguf_get_i64(g, "t.nothere", &v, &e), &e, path, "missing key 't.nothere'");

	for (size_t i = 0; i < n_arrs; i++) {
		int k = gguf_find_key(g, arrs[i].key);
		assert_true(k >= 0);
		assert_int_equal(gguf_kv_type(g, k), GGUF_ARRAY);
		assert_int_equal(gguf_arr_type(g, k), arrs[i].type);
		assert_int_equal(gguf_arr_n(g, k), arrs[i].n);
		for (uint64_t j = 0; j < arrs[i].n; j++) {
			double want_f = 0;
			int64_t want_i = 0;
			const void *p = (const char *)arrs[i].d + j * vsize(arrs[i].type);
			switch (arrs[i].type) {
			case GGUF_UINT8: want_i = *(const uint8_t *)p; break;
			case GGUF_INT8: want_i = *(const int8_t *)p; break;
			case GGUF_UINT16: want_i = *(const uint16_t *)p; break;
			case GGUF_INT16: want_i = *(const int16_t *)p; break;
			case GGUF_UINT32: want_i = *(const uint32_t *)p; break;
			case GGUF_INT32: want_i = *(const int32_t *)p; break;
			case GGUF_BOOL: want_i = *(const uint8_t *)p; break;
			case GGUF_UINT64: want_i = (int64_t)*(const uint64_t *)p; break;
			case GGUF_INT64: want_i = *(const int64_t *)p; break;
			case GGUF_FLOAT32: want_f = *(const float *)p; break;
			case GGUF_FLOAT64: want_f = *(const double *)p; break;
			}
			if (arrs[i].type == GGUF_FLOAT32 || arrs[i].type == GGUF_FLOAT64) {
				assert_true(gguf_arr_f64(g, k, j) == want_f);
			} else {
				assert_true(gguf_arr_i64(g, k, j) == want_i);
				assert_true(gguf_arr_f64(g, k, j) == (double)want_i);
			}
		}
		/* out of range and wrong-kind accesses read as 0 / empty */
		assert_true(gguf_arr_i64(g, k, arrs[i].n) == 0);
		assert_true(gguf_arr_f64(g, k, arrs[i].n) == 0);
		assert_int_equal(gguf_arr_str(g, k, 0).len, 0);
	}
	int k = gguf_find_key(g, "a.str");
	assert_int_equal(gguf_arr_type(g, k), GGUF_STRING);
	assert_int_equal(gguf_arr_n(g, k), 4);
	for (int j = 0; j < 4; j++) {
		gguf_str a = gguf_arr_str(g, k, (uint64_t)j);
		assert_int_equal(a.len, lens[j]);
		assert_memory_equal(a.s, strs[j], lens[j]);
	}
	assert_true(gguf_arr_i64(g, k, 0) == 0);
	k = gguf_find_key(g, "a.str0");
	assert_int_equal(gguf_arr_n(g, k), 0);

	assert_int_equal(gguf_n_tensors(g), (int)n_ts);
	for (size_t i = 0; i < n_ts; i++) {
		const gguf_tensor_info *t = gguf_tensor(g, (int)i);
		assert_true(gs_eq(t->name, ts[i].name));
		assert_int_equal(t->type, ts[i].type);
		assert_int_equal(t->n_dims, ts[i].nd);
		for (uint32_t dd = 0; dd < 4; dd++)
			assert_int_equal(t->ne[dd], dd < ts[i].nd ? ts[i].ne[dd] : 1);
		assert_int_equal(t->nbytes, ts[i].nb);
		assert_int_equal(t->offset % 64, 0);
		assert_int_equal((uintptr_t)t->data % 64, 0);
		assert_memory_equal(t->data, ts[i].d, ts[i].nb);
	}
	/* the dequantized tensors read back as what was written */
	const gguf_tensor_info *tq = gguf_tensor(g, 4);
	float y[128], y2[128];
	kn_traits(KN_TYPE_Q4_0)->to_float(tq->data, y, 128);
	kn_dequantize_row_q4_0(rd->q40, y2, 128);
	assert_memory_equal(y, y2, sizeof(y));
	gguf_close(g);
	free(L);
	free(buf);
	free(rd);
}

static void test_writer_refuses(void **state)
{
	(void)state;
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	uint64_t a64 = 64;
	float f = 0;
	assert_int_equal(gguf_w_u32(w, "k", 1), 0);
	assert_int_equal(gguf_w_u32(w, "k", 2), QS_EUSAGE);          /* duplicate */
	assert_int_equal(gguf_w_str(w, "k", "x"), QS_EUSAGE);        /* duplicate, other type */
	assert_int_equal(gguf_w_u32(w, "", 2), QS_EUSAGE);           /* empty key */
	assert_int_equal(gguf_w_u32(w, "general.alignment", 0), QS_EUSAGE);
	assert_int_equal(gguf_w_u32(w, "general.alignment", 48), QS_EUSAGE);
	assert_int_equal(gguf_w_u32(w, "general.alignment", 1u << 21), QS_EUSAGE);
	assert_int_equal(gguf_w_raw(w, "general.alignment", GGUF_UINT64, &a64, 8), QS_EUSAGE);
	assert_int_equal(gguf_w_raw(w, "x", 13, &a64, 8), QS_EUSAGE); /* unknown type */
	assert_int_equal(gguf_w_arr(w, "x", GGUF_STRING, NULL, 0), QS_EUSAGE);
	assert_int_equal(gguf_w_arr(w, "x", GGUF_ARRAY, NULL, 0), QS_EUSAGE);
	const uint8_t bad_bool[] = { 0, 2 };
	assert_int_equal(gguf_w_arr(w, "x", GGUF_BOOL, bad_bool, 2), QS_EUSAGE);
	assert_int_equal(gguf_w_arr(w, "x", GGUF_UINT32, NULL, UINT64_MAX / 2), QS_ENOMEM);

	int64_t ne[4] = { 32, 2, 1, 1 };
	float data[64] = { 0 };
	char longname[80];
	memset(longname, 'n', 64);
	longname[64] = 0;
	assert_int_equal(gguf_w_tensor(w, "t", KN_TYPE_F32, 2, ne, data, sizeof(data)), 0);
	assert_int_equal(gguf_w_tensor(w, "t", KN_TYPE_F32, 2, ne, data, sizeof(data)), QS_EUSAGE);
	assert_int_equal(gguf_w_tensor(w, "", KN_TYPE_F32, 2, ne, data, sizeof(data)), QS_EUSAGE);
	assert_int_equal(gguf_w_tensor(w, longname, KN_TYPE_F32, 2, ne, data, sizeof(data)), QS_EUSAGE);
	longname[63] = 0; /* 63 bytes is the longest name */
	assert_int_equal(gguf_w_tensor(w, longname, KN_TYPE_F32, 2, ne, data, sizeof(data)), 0);
	assert_int_equal(gguf_w_tensor(w, "u", KN_TYPE_F32, 2, ne, data, 4), QS_EUSAGE); /* size */
	assert_int_equal(gguf_w_tensor(w, "u", KN_TYPE_F32, 0, ne, data, 0), QS_EUSAGE);
	assert_int_equal(gguf_w_tensor(w, "u", KN_TYPE_F32, 5, ne, data, sizeof(data)), QS_EUSAGE);
	assert_int_equal(gguf_w_tensor(w, "u", 12, 2, ne, data, 144), QS_EUSAGE); /* q4_k */
	assert_int_equal(gguf_w_tensor(w, "u", 99, 2, ne, data, 144), QS_EUSAGE);
	int64_t ne0[2] = { 0, 2 }, neq[2] = { 48, 1 }, neneg[2] = { 32, -1 };
	assert_int_equal(gguf_w_tensor(w, "u", KN_TYPE_F32, 2, ne0, data, 0), QS_EUSAGE);
	assert_int_equal(gguf_w_tensor(w, "u", KN_TYPE_Q8_0, 2, neq, data, 51), QS_EUSAGE);
	assert_int_equal(gguf_w_tensor(w, "u", KN_TYPE_F32, 2, neneg, data, 128), QS_EUSAGE);
	(void)f;
	/* what was accepted still writes a valid file */
	const char *p = tpath("refuses.gguf");
	qs_error e = { 0 };
	assert_int_equal(gguf_writer_write(w, p, &e), 0);
	gguf_writer_free(w);
	gguf_writer_free(NULL);
	gguf_file *g = NULL;
	assert_int_equal(gguf_open(p, &g, &e), 0);
	assert_int_equal(gguf_n_kv(g), 1);
	assert_int_equal(gguf_n_tensors(g), 2);
	assert_int_equal(gguf_tensor(g, 1)->name.len, 63);
	gguf_close(g);
}

/* Copy every kv and tensor of the demo model: the file comes out identical. */
static void test_writer_copy_demo(void **state)
{
	(void)state;
	const char *src = tu_shared(DEMO);
	gguf_file *g = NULL;
	qs_error e = { 0 };
	assert_int_equal(gguf_open(src, &g, &e), 0);
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	for (int i = 0; i < gguf_n_kv(g); i++)
		assert_int_equal(gguf_w_copy_kv(w, g, i), 0);
	assert_int_equal(gguf_w_copy_kv(w, g, gguf_n_kv(g)), QS_EUSAGE);
	assert_int_equal(gguf_w_copy_kv(w, g, 0), QS_EUSAGE); /* already there */
	/* kvs only first: the kv section is byte-identical */
	const char *p1 = tpath("copy-kv.gguf");
	assert_int_equal(gguf_writer_write(w, p1, &e), 0);
	for (int i = 0; i < gguf_n_tensors(g); i++) {
		const gguf_tensor_info *t = gguf_tensor(g, i);
		char name[64];
		snprintf(name, sizeof(name), "%.*s", (int)t->name.len, t->name.s);
		assert_int_equal(gguf_w_tensor(w, name, t->type, t->n_dims, t->ne, t->data, t->nbytes), 0);
	}
	const char *p2 = tpath("copy-all.gguf");
	assert_int_equal(gguf_writer_write(w, p2, &e), 0);
	gguf_writer_free(w);

	size_t n0, n1, n2;
	unsigned char *b0 = (unsigned char *)tu_read_file(src, &n0);
	unsigned char *b1 = (unsigned char *)tu_read_file(p1, &n1);
	unsigned char *b2 = (unsigned char *)tu_read_file(p2, &n2);
	assert_true(b0 && b1 && b2);
	lay *L0 = calloc(1, sizeof(*L0)), *L1 = calloc(1, sizeof(*L1));
	assert_true(L0 && L1);
	scan(b0, n0, L0);
	scan(b1, n1, L1);
	assert_int_equal(L1->n_t, 0);
	assert_int_equal(L1->n_kv, L0->n_kv);
	size_t kv_end = L0->kv[L0->n_kv - 1].end;
	assert_int_equal(L1->kv[L1->n_kv - 1].end, kv_end);
	assert_memory_equal(b1 + 24, b0 + 24, kv_end - 24);
	/* and the whole model, tensors included, matches llama.cpp's file */
	assert_int_equal(n2, n0);
	assert_memory_equal(b2, b0, n0);

	gguf_file *g1 = NULL;
	assert_int_equal(gguf_open(p1, &g1, &e), 0);
	assert_int_equal(gguf_n_kv(g1), gguf_n_kv(g));
	for (int i = 0; i < gguf_n_kv(g); i++) {
		gguf_str a = gguf_key(g, i), b = gguf_key(g1, i);
		assert_int_equal(a.len, b.len);
		assert_memory_equal(a.s, b.s, a.len);
		assert_int_equal(gguf_kv_type(g1, i), gguf_kv_type(g, i));
	}
	gguf_close(g1);
	gguf_close(g);
	free(L0);
	free(L1);
	free(b0);
	free(b1);
	free(b2);
}

/* A small valid file used by the corruption matrix and the fuzz loop. */
static const float small_f32[16] = { 1, -2, 3, -4, 5, -6, 7, -8, 0.5f, 0.25f, 9, 10, 11, 12, 13, 14 };

static void write_small(const char *path, uint32_t alignment)
{
	static kn_fp16 f16[32];
	static block_q8_0 q8[2];
	static block_q4_0 q40[2];
	static block_q4_1 q41[1];
	static kn_bf16 bf16[16];
	float x[64];
	for (int i = 0; i < 64; i++)
		x[i] = (float)(i - 30) / 7.0f;
	for (int i = 0; i < 32; i++)
		f16[i] = kn_fp32_to_fp16_ref(x[i]);
	for (int i = 0; i < 16; i++)
		bf16[i] = kn_fp32_to_bf16_ref(x[i]);
	kn_quantize_row_q8_0_ref(x, q8, 64);
	kn_quantize_row_q4_0_ref(x, q40, 64);
	kn_quantize_row_q4_1_ref(x, q41, 32);
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	const char *strs[] = { "ab", "cde" };
	const size_t lens[] = { 2, 3 };
	const float fl[] = { 1, 2, 3 };
	assert_int_equal(gguf_w_str(w, "general.architecture", "llama"), 0);
	assert_int_equal(gguf_w_u32(w, "general.alignment", alignment), 0);
	assert_int_equal(gguf_w_u32(w, "test.u32", 7), 0);
	assert_int_equal(gguf_w_arr_str(w, "test.strs", strs, lens, 2), 0);
	assert_int_equal(gguf_w_arr(w, "test.f32s", GGUF_FLOAT32, fl, 3), 0);
	assert_int_equal(gguf_w_bool(w, "test.flag", 1), 0);
	uint64_t u64 = 1ull << 40;
	double f64 = 2.5;
	const int8_t i8s[] = { -1, 2, -3, 4, -5 };
	assert_int_equal(gguf_w_raw(w, "test.u64", GGUF_UINT64, &u64, 8), 0);
	assert_int_equal(gguf_w_arr(w, "test.i8s", GGUF_INT8, i8s, 5), 0);
	assert_int_equal(gguf_w_raw(w, "test.f64", GGUF_FLOAT64, &f64, 8), 0);
	const int64_t ne_a[] = { 8, 2 }, ne_b[] = { 32 }, ne_c[] = { 64 };
	assert_int_equal(gguf_w_tensor(w, "t.f32", KN_TYPE_F32, 2, ne_a, small_f32, sizeof(small_f32)), 0);
	assert_int_equal(gguf_w_tensor(w, "t.f16", KN_TYPE_F16, 1, ne_b, f16, sizeof(f16)), 0);
	assert_int_equal(gguf_w_tensor(w, "t.q8", KN_TYPE_Q8_0, 1, ne_c, q8, sizeof(q8)), 0);
	const int64_t ne_d[] = { 32, 2 }, ne_e[] = { 16 }, ne_f[] = { 32, 1, 1 };
	assert_int_equal(gguf_w_tensor(w, "t.q4_0", KN_TYPE_Q4_0, 2, ne_d, q40, sizeof(q40)), 0);
	assert_int_equal(gguf_w_tensor(w, "t.bf16", KN_TYPE_BF16, 1, ne_e, bf16, sizeof(bf16)), 0);
	assert_int_equal(gguf_w_tensor(w, "t.q4_1", KN_TYPE_Q4_1, 3, ne_f, q41, sizeof(q41)), 0);
	qs_error e = { 0 };
	assert_int_equal(gguf_writer_write(w, path, &e), 0);
	gguf_writer_free(w);
}

static void test_writer_atomic(void **state)
{
	(void)state;
	char dir[1024];
	snprintf(dir, sizeof(dir), "%s/atomic", tu_tmpdir());
	assert_int_equal(mkdir(dir, 0755), 0);
	char path[1100];
	snprintf(path, sizeof(path), "%s/out.gguf", dir);
	write_small(path, 32);
	assert_int_equal(count_entries(dir, ""), 3); /* ., .., out.gguf */
	size_t n1;
	char *b1 = tu_read_file(path, &n1);
	assert_non_null(b1);
	/* overwrite in place with different content */
	write_small(path, 64);
	size_t n2;
	char *b2 = tu_read_file(path, &n2);
	assert_non_null(b2);
	assert_true(n1 != n2 || memcmp(b1, b2, n1) != 0);
	assert_int_equal(count_entries(dir, ""), 3);

	/* a directory that does not exist: an error, nothing created */
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	assert_int_equal(gguf_w_u32(w, "k", 1), 0);
	char bad[1200];
	snprintf(bad, sizeof(bad), "%s/no-such-dir/x.gguf", dir);
	qs_error e = { 0 };
	check_err(gguf_writer_write(w, bad, &e), &e, bad, "cannot create");
	assert_int_equal(e.code, QS_EIO);
	snprintf(bad, sizeof(bad), "%s/no-such-dir", dir);
	assert_int_not_equal(access(bad, F_OK), 0);
	/* the target is a directory: rename fails, the temp file is removed */
	check_err(gguf_writer_write(w, dir, &e), &e, dir, "cannot rename into place");
	assert_int_equal(count_entries(tu_tmpdir(), ".tmp."), 0);
	assert_int_equal(count_entries(dir, ""), 3);
	/* a path too long for the temporary name */
	char *lng = malloc(1500);
	assert_non_null(lng);
	memset(lng, 'a', 1499);
	lng[1499] = 0;
	check_err(gguf_writer_write(w, lng, &e), &e, "aaaa", "path too long");
	free(lng);
	gguf_writer_free(w);

	/* a write that fails half way (file size limit): error, no temp file,
	 * the previous file intact */
	static float big[64 * 1024];
	w = gguf_writer_new();
	assert_non_null(w);
	int64_t ne[1] = { 64 * 1024 };
	assert_int_equal(gguf_w_tensor(w, "big", KN_TYPE_F32, 1, ne, big, sizeof(big)), 0);
	struct rlimit old, lim;
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 100000;
	void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	int rc = gguf_writer_write(w, path, &e);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, oldsig);
	check_err(rc, &e, path, "write failed");
	assert_int_equal(count_entries(dir, ""), 3);
	size_t n3;
	char *b3 = tu_read_file(path, &n3);
	assert_non_null(b3);
	assert_int_equal(n3, n2);
	assert_memory_equal(b3, b2, n2);
	gguf_writer_free(w);
	free(b1);
	free(b2);
	free(b3);
}

/* ---------------------------------------------- (c) corruption matrix */

typedef void (*mut_fn)(unsigned char *b, size_t *n, const lay *L);

/* Replace del bytes at pos with ins_len bytes of ins (0x78 'x' when NULL). */
static void splice(unsigned char *b, size_t *n, size_t pos, size_t del, const void *ins,
		   size_t ins_len)
{
	memmove(b + pos + ins_len, b + pos + del, *n - pos - del);
	if (ins)
		memcpy(b + pos, ins, ins_len);
	else
		memset(b + pos, 'x', ins_len);
	*n = *n - del + ins_len;
}

/* kv indices in write_small's file */
enum { K_ARCH, K_ALIGN, K_U32, K_STRS, K_F32S, K_FLAG };
/* tensor indices */
enum { T_F32, T_F16, T_Q8 };

#define MUT(fn) static void fn(unsigned char *b, size_t *n, const lay *L)
MUT(m_bad_magic) { (void)n; (void)L; b[0] = 'X'; }
MUT(m_version1) { (void)n; (void)L; put32(b + 4, 1); }
MUT(m_version4) { (void)n; (void)L; put32(b + 4, 4); }
MUT(m_big_endian) { (void)n; (void)L; put32(b + 4, 3u << 24); }
MUT(m_trunc_header) { (void)b; (void)L; *n = 12; }
/* Truncations: lower the counts to what is left so the cheap count check
 * passes and the parser meets the cut. */
static void counts(unsigned char *b, uint64_t n_t, uint64_t n_kv)
{
	put64(b + 8, n_t);
	put64(b + 16, n_kv);
}
MUT(m_trunc_kv_key) { counts(b, 0, 3); *n = L->kv[K_U32].key_at + 3; }
MUT(m_trunc_kv_type) { counts(b, 0, 3); *n = L->kv[K_U32].type_at + 2; }
MUT(m_trunc_kv_value) { counts(b, 0, 3); *n = L->kv[K_U32].val_at + 2; }
MUT(m_trunc_str_arr) { counts(b, 0, 4); *n = L->kv[K_STRS].val_at + 12 + 8 + 2 + 8 + 1; }
MUT(m_trunc_tensor_info) { (void)b; *n = L->t[T_F16].ndims_at + 2; }
MUT(m_trunc_tensor_dims) { (void)b; *n = L->t[T_F32].dims_at + 12; }
MUT(m_trunc_before_data) { (void)b; *n = L->hdr_end + 1; }
MUT(m_trunc_data) { (void)b; *n = L->data_start + L->t[T_Q8].off + 10; }
MUT(m_absurd_kv_count) { (void)n; (void)L; put64(b + 16, 1ull << 40); }
MUT(m_absurd_t_count) { (void)n; (void)L; put64(b + 8, UINT64_MAX); }
MUT(m_kv_count_big) { (void)n; (void)L; put64(b + 16, 1u << 25); }
MUT(m_huge_key_len) { (void)n; put64(b + L->kv[K_U32].len_at, 1ull << 63); }
MUT(m_key_nul) { (void)n; b[L->kv[K_U32].key_at + 4] = 0; }
MUT(m_empty_key) { (void)n; put64(b + L->kv[K_U32].len_at, 0); }
MUT(m_dup_key) { (void)n; memcpy(b + L->kv[K_FLAG].key_at, "test.strs", 9); }
MUT(m_unknown_vtype) { (void)n; put32(b + L->kv[K_U32].type_at, 13); }
MUT(m_vtype_huge) { (void)n; put32(b + L->kv[K_U32].type_at, 0xffffffffu); }
MUT(m_nested_array) { (void)n; put32(b + L->kv[K_F32S].val_at, GGUF_ARRAY); }
MUT(m_unknown_elem) { (void)n; put32(b + L->kv[K_F32S].val_at, 99); }
MUT(m_arr_overflow) { (void)n; put64(b + L->kv[K_F32S].val_at + 4, (1ull << 62) + 1); }
MUT(m_arr_past_end) { (void)n; put64(b + L->kv[K_F32S].val_at + 4, 1000000); }
MUT(m_str_arr_count) { (void)n; put64(b + L->kv[K_STRS].val_at + 4, 1ull << 60); }
MUT(m_str_arr_elem_len) { (void)n; put64(b + L->kv[K_STRS].val_at + 12, 1ull << 40); }
MUT(m_str_value_len) { (void)n; put64(b + L->kv[K_ARCH].val_at, UINT64_MAX); }
MUT(m_bool2) { (void)n; b[L->kv[K_FLAG].val_at] = 2; }
MUT(m_bool_arr2)
{
	/* turn test.f32s (3 x 4 bytes) into a bool array of 12, one of them 2 */
	(void)n;
	put32(b + L->kv[K_F32S].val_at, GGUF_BOOL);
	put64(b + L->kv[K_F32S].val_at + 4, 12);
	memset(b + L->kv[K_F32S].val_at + 12, 1, 12);
	b[L->kv[K_F32S].val_at + 12 + 5] = 2;
}
MUT(m_align_type) { (void)n; put32(b + L->kv[K_ALIGN].type_at, GGUF_INT32); }
MUT(m_align_zero) { (void)n; put32(b + L->kv[K_ALIGN].val_at, 0); }
MUT(m_align_npot) { (void)n; put32(b + L->kv[K_ALIGN].val_at, 48); }
MUT(m_align_huge) { (void)n; put32(b + L->kv[K_ALIGN].val_at, 1u << 31); }
MUT(m_align_mismatch) { (void)n; put32(b + L->kv[K_ALIGN].val_at, 256); }
MUT(m_key_newline)
{
	/* a key with a newline is legal, but messages about it stay one line */
	(void)n;
	b[L->kv[K_U32].key_at + 4] = '\n';
	put32(b + L->kv[K_U32].type_at, 77);
}
MUT(m_dup_tensor) { (void)n; memcpy(b + L->t[T_F16].name_at, "t.f32", 5); }
MUT(m_empty_name) { (void)n; put64(b + L->t[T_F16].len_at, 0); }
MUT(m_name_nul) { (void)n; b[L->t[T_F16].name_at + 1] = 0; }
MUT(m_name_too_long)
{
	put64(b + L->t[T_F16].len_at, 64);
	splice(b, n, L->t[T_F16].name_at, 0, NULL, 59);
}
MUT(m_name_newline)
{
	(void)n;
	b[L->t[T_F16].name_at + 1] = '\n';
	put32(b + L->t[T_F16].ndims_at, 9);
}
MUT(m_ndims0) { (void)n; put32(b + L->t[T_F16].ndims_at, 0); }
MUT(m_ndims5) { (void)n; put32(b + L->t[T_F16].ndims_at, 5); }
MUT(m_zero_dim) { (void)n; put64(b + L->t[T_F32].dims_at + 8, 0); }
MUT(m_dim_overflow)
{
	(void)n;
	put64(b + L->t[T_F32].dims_at, 1ull << 33);
	put64(b + L->t[T_F32].dims_at + 8, 1ull << 33);
}
MUT(m_dim_negative) { (void)n; put64(b + L->t[T_F32].dims_at, 1ull << 63); }
MUT(m_type_q4k) { (void)n; put32(b + L->t[T_F16].type_at, 12); }
MUT(m_type_huge) { (void)n; put32(b + L->t[T_F16].type_at, 0x80000001u); }
MUT(m_row_block) { (void)n; put64(b + L->t[T_Q8].dims_at, 48); }
MUT(m_misaligned) { (void)n; put64(b + L->t[T_F16].off_at, 65); }
MUT(m_offset_past_end) { (void)n; put64(b + L->t[T_F16].off_at, 1u << 20); }
MUT(m_offset_overflow) { (void)n; put64(b + L->t[T_Q8].off_at, UINT64_MAX - 31); }
MUT(m_overlap) { (void)n; put64(b + L->t[T_F16].off_at, 32); }
MUT(m_same_offset) { (void)n; put64(b + L->t[T_Q8].off_at, 0); }
MUT(m_size_past_end) { (void)n; put64(b + L->t[T_F32].dims_at + 8, 2000); }

static const struct {
	const char *name;
	mut_fn fn;
	const char *want;
} corrupt_cases[] = {
	{ "bad magic", m_bad_magic, "not a gguf file (bad magic)" },
	{ "version 1", m_version1, "gguf version 1 not supported" },
	{ "version 4", m_version4, "gguf version 4 not supported" },
	{ "big-endian", m_big_endian, "big-endian files are not supported" },
	{ "truncated header", m_trunc_header, "truncated at byte 8 reading tensor count" },
	{ "truncated kv key", m_trunc_kv_key, "key 2: string length 8 past end of file" },
	{ "truncated kv type", m_trunc_kv_type, "reading test.u32" },
	{ "truncated kv value", m_trunc_kv_value, "reading value of 'test.u32'" },
	{ "truncated string array", m_trunc_str_arr, "value of 'test.strs': string length 3 past end" },
	{ "truncated tensor info", m_trunc_tensor_info, "reading t.f16" },
	{ "truncated tensor dims", m_trunc_tensor_dims, "reading t.f32" },
	{ "truncated before data", m_trunc_before_data, "truncated: data section starts at" },
	{ "truncated data", m_trunc_data, "tensor 't.q8': data [128, +68) past end of data section" },
	{ "absurd kv count", m_absurd_kv_count, "kv count 1099511627776 is absurd" },
	{ "absurd tensor count", m_absurd_t_count, "tensor count 18446744073709551615 is absurd" },
	{ "kv count over cap", m_kv_count_big, "kv count 33554432 is absurd" },
	{ "huge key length", m_huge_key_len, "key 2: string length 9223372036854775808 past end" },
	{ "key with NUL", m_key_nul, "key 2 'test\\x00u32' contains NUL" },
	{ "empty key", m_empty_key, "key 2 is empty" },
	{ "duplicate key", m_dup_key, "duplicate key 'test.strs'" },
	{ "unknown value type", m_unknown_vtype, "key 'test.u32': unknown value type 13" },
	{ "value type 2^32-1", m_vtype_huge, "unknown value type 4294967295" },
	{ "nested array", m_nested_array, "key 'test.f32s': nested arrays are not supported" },
	{ "unknown element type", m_unknown_elem, "unknown array element type 99" },
	{ "array count overflow", m_arr_overflow, "array of 4611686018427387905 float32 past end" },
	{ "array past end", m_arr_past_end, "array of 1000000 float32 past end" },
	{ "string array count", m_str_arr_count, "array of 1152921504606846976 strings past end" },
	{ "string element length", m_str_arr_elem_len, "string length 1099511627776 past end" },
	{ "string value length", m_str_value_len, "string length 18446744073709551615 past end" },
	{ "bool value 2", m_bool2, "key 'test.flag': bool value 2" },
	{ "bool array value 2", m_bool_arr2, "key 'test.f32s': bool value 2 at index 5" },
	{ "alignment type", m_align_type, "general.alignment has type int32, want uint32" },
	{ "alignment zero", m_align_zero, "general.alignment 0 is not a power of two" },
	{ "alignment 48", m_align_npot, "general.alignment 48 is not a power of two" },
	{ "alignment 2^31", m_align_huge, "general.alignment 2147483648 is not a power of two <= 1 MiB" },
	{ "alignment vs offsets", m_align_mismatch, "tensor 't.f16': offset 64 not aligned to 256" },
	{ "key with newline", m_key_newline, "key 'test\\x0au32': unknown value type 77" },
	{ "duplicate tensor", m_dup_tensor, "duplicate tensor 't.f32'" },
	{ "empty tensor name", m_empty_name, "tensor 1: bad name ''" },
	{ "tensor name with NUL", m_name_nul, "tensor 1: bad name 't\\x00f16'" },
	{ "tensor name too long", m_name_too_long, "tensor 1: bad name 'xxxxxxxx" },
	{ "tensor name newline", m_name_newline, "tensor 't\\x0af16': n_dims 9" },
	{ "n_dims 0", m_ndims0, "tensor 't.f16': n_dims 0 (want 1..4)" },
	{ "n_dims 5", m_ndims5, "tensor 't.f16': n_dims 5 (want 1..4)" },
	{ "zero dimension", m_zero_dim, "tensor 't.f32': dimension 1 = 0 is absurd" },
	{ "dims product overflow", m_dim_overflow, "tensor 't.f32': dimension 1 = 8589934592 is absurd" },
	{ "dimension > INT64_MAX", m_dim_negative, "dimension 0 = 9223372036854775808 is absurd" },
	{ "type q4_k", m_type_q4k, "tensor 't.f16': tensor type 12 (q4_k) not supported" },
	{ "type 2^31+1", m_type_huge, "tensor type 2147483649 (unknown) not supported" },
	{ "row not a block multiple", m_row_block, "row length 48 not a multiple of the q8_0 block size 32" },
	{ "misaligned offset", m_misaligned, "tensor 't.f16': offset 65 not aligned to 32" },
	{ "offset past end", m_offset_past_end, "tensor 't.f16': data [1048576, +64) past end" },
	{ "offset+size overflow", m_offset_overflow, "data [18446744073709551584, +68) past end" },
	{ "overlapping tensors", m_overlap, "tensors 't.f32' and 't.f16' overlap" },
	{ "same offset", m_same_offset, "overlap" },
	{ "size past end", m_size_past_end, "tensor 't.f32': data [0, +64000) past end" },
};

static void test_corruption_matrix(void **state)
{
	(void)state;
	const char *base = tpath("small.gguf");
	write_small(base, 32);
	size_t n0;
	unsigned char *b0 = (unsigned char *)tu_read_file(base, &n0);
	assert_non_null(b0);
	lay *L = calloc(1, sizeof(*L));
	assert_non_null(L);
	scan(b0, n0, L);
	/* the layout the cases rely on */
	assert_int_equal(L->n_kv, 9);
	assert_int_equal(L->n_t, 6);
	assert_int_equal(L->t[T_F32].off, 0);
	assert_int_equal(L->t[T_F16].off, 64);
	assert_int_equal(L->t[T_Q8].off, 128);
	assert_true(L->data_start > L->hdr_end + 1);
	gguf_file *g = NULL;
	qs_error e = { 0 };
	assert_int_equal(gguf_open(base, &g, &e), 0);
	gguf_close(g);

	size_t n_cases = sizeof(corrupt_cases) / sizeof(corrupt_cases[0]);
	assert_true(n_cases >= 25);
	unsigned char *b = malloc(n0 + 4096);
	assert_non_null(b);
	int bad = 0;
	for (size_t i = 0; i < n_cases; i++) {
		memcpy(b, b0, n0);
		size_t n = n0;
		corrupt_cases[i].fn(b, &n, L);
		char *p = tpath("corrupt-%02zu.gguf", i);
		assert_int_equal(tu_write_file(p, b, n), 0);
		g = (gguf_file *)1;
		memset(&e, 0, sizeof(e));
		int rc = gguf_open(p, &g, &e);
		if (!err_ok(rc, &e, p, corrupt_cases[i].want, corrupt_cases[i].name) || g != NULL) {
			bad++;
			if (rc == 0)
				gguf_close(g);
		}
	}
	if (bad)
		fail_msg("%d of %zu corruption cases failed", bad, n_cases);
	free(b);
	free(L);
	free(b0);
}

/* ------------------------------------------------ (c) model-level cases */

enum mvar {
	MV_OK, MV_NO_ARCH, MV_ARCH_GPT2, MV_ARCH_NUL, MV_ARCH_NEWLINE, MV_NO_DIM, MV_HEADS0,
	MV_HEADS_KV, MV_Q_ROWS, MV_NO_FFN_UP, MV_TOK_GPT2, MV_TOK_COUNT, MV_SCORES_LEN,
	MV_TYPES_LEN, MV_VOCAB_KEY, MV_ROPE_DIM, MV_ROPE_SCALING, MV_DIM_STR, MV_3D,
	MV_BOS_RANGE, MV_MISALIGNED, MV_NO_TOKENS,
};

/* A tiny llama (dim 8, 1 layer, 2 heads, 1 kv head, ffn 16) with the demo's
 * 8192-piece vocabulary and tied output, varied by v. pad adds bytes to a
 * string kv (to move the data section). Returns the path. */
static const char *write_tiny(enum mvar v, int pad)
{
	static float *embd; /* (8192 rows, 8) */
	static float ones[64], mat[16 * 16];
	if (!embd) {
		embd = malloc(8192 * 8 * sizeof(float));
		assert_non_null(embd);
		for (int i = 0; i < 8192 * 8; i++)
			embd[i] = (float)((i * 37) % 101 - 50) / 500.0f;
		for (int i = 0; i < 64; i++)
			ones[i] = 1.0f;
		for (int i = 0; i < 256; i++)
			mat[i] = (float)((i * 13) % 17 - 8) / 64.0f;
	}
	gguf_file *demo = NULL;
	qs_error e = { 0 };
	assert_int_equal(gguf_open(tu_shared(DEMO), &demo, &e), 0);
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	if (v == MV_ARCH_GPT2)
		assert_int_equal(gguf_w_str(w, "general.architecture", "gpt2"), 0);
	else if (v == MV_ARCH_NUL)
		assert_int_equal(gguf_w_raw(w, "general.architecture", GGUF_STRING,
					    "\x07\0\0\0\0\0\0\0llama\0x", 15), 0);
	else if (v == MV_ARCH_NEWLINE)
		assert_int_equal(gguf_w_str(w, "general.architecture", "lla\nma"), 0);
	else if (v != MV_NO_ARCH)
		assert_int_equal(gguf_w_str(w, "general.architecture", "llama"), 0);
	if (v == MV_MISALIGNED)
		assert_int_equal(gguf_w_u32(w, "general.alignment", 1), 0);
	char padding[64];
	memset(padding, 'p', sizeof(padding));
	padding[pad] = 0;
	assert_int_equal(gguf_w_str(w, "general.name", padding), 0);
	assert_int_equal(gguf_w_u32(w, "llama.context_length", 64), 0);
	if (v == MV_DIM_STR)
		assert_int_equal(gguf_w_str(w, "llama.embedding_length", "8"), 0);
	else if (v != MV_NO_DIM)
		assert_int_equal(gguf_w_u32(w, "llama.embedding_length", 8), 0);
	assert_int_equal(gguf_w_u32(w, "llama.block_count", 1), 0);
	assert_int_equal(gguf_w_u32(w, "llama.feed_forward_length", 16), 0);
	assert_int_equal(gguf_w_u32(w, "llama.attention.head_count", v == MV_HEADS0 ? 0 : 2), 0);
	assert_int_equal(gguf_w_u32(w, "llama.attention.head_count_kv", v == MV_HEADS_KV ? 3 : 1), 0);
	assert_int_equal(gguf_w_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f), 0);
	assert_int_equal(gguf_w_f32(w, "llama.rope.freq_base", 10000.0f), 0);
	if (v == MV_VOCAB_KEY)
		assert_int_equal(gguf_w_u32(w, "llama.vocab_size", 8000), 0);
	if (v == MV_ROPE_DIM)
		assert_int_equal(gguf_w_u32(w, "llama.rope.dimension_count", 2), 0);
	if (v == MV_ROPE_SCALING)
		assert_int_equal(gguf_w_str(w, "llama.rope.scaling.type", "linear"), 0);
	for (int i = 0; i < gguf_n_kv(demo); i++) {
		gguf_str k = gguf_key(demo, i);
		if (k.len < 10 || memcmp(k.s, "tokenizer.", 10) != 0)
			continue;
		if (v == MV_TOK_GPT2 && gs_eq(k, "tokenizer.ggml.model")) {
			assert_int_equal(gguf_w_str(w, "tokenizer.ggml.model", "gpt2"), 0);
			continue;
		}
		if (v == MV_NO_TOKENS && gs_eq(k, "tokenizer.ggml.tokens"))
			continue;
		if (v == MV_SCORES_LEN && gs_eq(k, "tokenizer.ggml.scores")) {
			static float sc[8191];
			assert_int_equal(gguf_w_arr(w, "tokenizer.ggml.scores", GGUF_FLOAT32, sc, 8191), 0);
			continue;
		}
		if (v == MV_TYPES_LEN && gs_eq(k, "tokenizer.ggml.token_type")) {
			static int32_t ty[8193];
			for (int j = 0; j < 8193; j++)
				ty[j] = 1;
			assert_int_equal(gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_INT32, ty, 8193), 0);
			continue;
		}
		if (v == MV_BOS_RANGE && gs_eq(k, "tokenizer.ggml.bos_token_id")) {
			assert_int_equal(gguf_w_u32(w, "tokenizer.ggml.bos_token_id", 8192), 0);
			continue;
		}
		assert_int_equal(gguf_w_copy_kv(w, demo, i), 0);
	}
	const int64_t vocab_rows = v == MV_TOK_COUNT ? 8000 : 8192;
	const int64_t ne_embd[] = { 8, vocab_rows }, ne_vec[] = { 8 }, ne_q[] = { 8, v == MV_Q_ROWS ? 4 : 8 };
	const int64_t ne_kv[] = { 8, 4 }, ne_o[] = { 8, 8 }, ne_up[] = { 8, 16 }, ne_down[] = { 16, 8 };
	const int64_t ne_3d[] = { 8, 1, 1 };
	const size_t F = sizeof(float);
#define T(name, nd, ne, data)                                                               \
	assert_int_equal(gguf_w_tensor(w, name, KN_TYPE_F32, nd, ne, data,                   \
				       (size_t)(ne)[0] * (nd > 1 ? (size_t)(ne)[1] : 1) * F), 0)
	T("token_embd.weight", 2, ne_embd, embd);
	if (v == MV_3D)
		assert_int_equal(gguf_w_tensor(w, "output_norm.weight", KN_TYPE_F32, 3, ne_3d, ones, 8 * F), 0);
	else
		T("output_norm.weight", 1, ne_vec, ones);
	T("blk.0.attn_norm.weight", 1, ne_vec, ones);
	T("blk.0.attn_q.weight", 2, ne_q, mat);
	T("blk.0.attn_k.weight", 2, ne_kv, mat);
	T("blk.0.attn_v.weight", 2, ne_kv, mat);
	T("blk.0.attn_output.weight", 2, ne_o, mat);
	T("blk.0.ffn_norm.weight", 1, ne_vec, ones);
	T("blk.0.ffn_gate.weight", 2, ne_up, mat);
	if (v != MV_NO_FFN_UP)
		T("blk.0.ffn_up.weight", 2, ne_up, mat);
	T("blk.0.ffn_down.weight", 2, ne_down, mat);
#undef T
	const char *p = tpath("tiny-%d-%d.gguf", (int)v, pad);
	assert_int_equal(gguf_writer_write(w, p, &e), 0);
	gguf_writer_free(w);
	gguf_close(demo);
	return p;
}

static void test_model_demo(void **state)
{
	(void)state;
	model *m = NULL;
	qs_error e = { 0 };
	const char *path = tu_shared(DEMO);
	int rc = model_open(path, NULL, &m, &e);
	if (rc)
		print_error("%s\n", e.msg);
	assert_int_equal(rc, 0);
	const model_config *c = &m->cfg;
	assert_string_equal(m->format, "gguf");
	assert_string_equal(c->arch, "llama");
	assert_int_equal(c->vocab, 8192);
	assert_int_equal(c->dim, 384);
	assert_int_equal(c->n_layers, 8);
	assert_int_equal(c->n_heads, 6);
	assert_int_equal(c->n_kv_heads, 2);
	assert_int_equal(c->head_dim, 64);
	assert_int_equal(c->hidden, 1024);
	assert_int_equal(c->ctx, 512);
	assert_true(c->eps == 1e-5f);
	assert_true(c->rope_theta == 10000.0f);
	assert_int_equal(c->rope_style, MODEL_ROPE_NORM);
	assert_int_equal(c->tied, 0);
	assert_int_equal(m->n_tensors, 75);
	assert_int_equal(model_n_params(m), 18880896);
	assert_ptr_not_equal(m->output, m->tok_embd);
	assert_int_equal(m->layers[7].w_down->ne[0], 1024);
	assert_int_equal(m->layers[7].w_down->ne[1], 384);
	assert_null(m->layers[0].bq);
	assert_int_equal(tok_n_vocab(m->tok), 8192);
	assert_int_equal(tok_bos(m->tok), 1);
	assert_int_equal(tok_eos(m->tok), 2);
	size_t len;
	const char *piece = tok_piece(m->tok, 1, &len);
	assert_int_equal(len, 3);
	assert_memory_equal(piece, "<s>", 3);
	model_free(m);
}

static void test_model_tiny_ok(void **state)
{
	(void)state;
	const char *p = write_tiny(MV_OK, 0);
	model *m = NULL;
	qs_error e = { 0 };
	int rc = model_open(p, NULL, &m, &e);
	if (rc)
		print_error("%s\n", e.msg);
	assert_int_equal(rc, 0);
	assert_int_equal(m->cfg.dim, 8);
	assert_int_equal(m->cfg.head_dim, 4);
	assert_int_equal(m->cfg.n_kv_heads, 1);
	assert_int_equal(m->cfg.vocab, 8192);
	assert_int_equal(m->cfg.tied, 1);
	assert_ptr_equal(m->output, m->tok_embd);
	assert_int_equal(m->n_tensors, 11);
	model_free(m);
}

/* Cases rejected before the tokenizer is built. */
static const struct {
	enum mvar v;
	const char *want;
} model_early_cases[] = {
	{ MV_NO_ARCH, "missing key 'general.architecture'" },
	{ MV_ARCH_GPT2, "general.architecture 'gpt2' not supported" },
	{ MV_ARCH_NUL, "general.architecture 'llama\\x00x' not supported" },
	{ MV_ARCH_NEWLINE, "general.architecture 'lla\\x0ama' not supported" },
	{ MV_NO_DIM, "missing key 'llama.embedding_length'" },
	{ MV_DIM_STR, "key 'llama.embedding_length' has type string, want an integer" },
	{ MV_HEADS0, "llama.attention.head_count is 0" },
	{ MV_ROPE_DIM, "rope.dimension_count 2 != head dim 4" },
	{ MV_ROPE_SCALING, "llama.rope.scaling.type 'linear' not supported" },
	{ MV_3D, "tensor 'output_norm.weight' has 3 dimensions" },
	{ MV_VOCAB_KEY, "llama.vocab_size = 8000 but token_embd has 8192 rows" },
	{ MV_TOK_GPT2, "tokenizer.ggml.model 'gpt2' not supported yet" },
	{ MV_NO_TOKENS, "missing key 'tokenizer.ggml.tokens'" },
	{ MV_SCORES_LEN, "tokenizer.ggml.scores must be 8192 numbers" },
	{ MV_TYPES_LEN, "tokenizer.ggml.token_type must be 8192 integers" },
};

/* Cases that need a working tokenizer to get that far. */
static const struct {
	enum mvar v;
	const char *want;
} model_late_cases[] = {
	{ MV_BOS_RANGE, "tokenizer.ggml.bos_token_id = 8192 out of range" },
	{ MV_HEADS_KV, "attention.head_count 2 not a multiple of head_count_kv 3" },
	{ MV_Q_ROWS, "tensor 'blk.0.attn_q.weight': shape [8, 4], config wants [8, 8]" },
	{ MV_NO_FFN_UP, "missing tensor 'blk.0.ffn_up.weight'" },
	{ MV_TOK_COUNT, "tokenizer has 8192 pieces, model vocab is 8000" },
};

static void test_model_early_errors(void **state)
{
	(void)state;
	int bad = 0;
	for (size_t i = 0; i < sizeof(model_early_cases) / sizeof(model_early_cases[0]); i++) {
		const char *p = write_tiny(model_early_cases[i].v, 0);
		model *m = (model *)1;
		qs_error e = { 0 };
		int rc = model_open(p, NULL, &m, &e);
		if (!err_ok(rc, &e, p, model_early_cases[i].want, "model case") || m) {
			bad++;
			if (rc == 0)
				model_free(m);
		}
	}
	if (bad)
		fail_msg("%d model cases failed", bad);
}

static void test_model_late_errors(void **state)
{
	(void)state;
	/* is the tokenizer there yet? */
	model *m = NULL;
	qs_error e = { 0 };
	int rc = model_open(write_tiny(MV_OK, 0), NULL, &m, &e);
	model_free(m);
	int bad = 0;
	for (size_t i = 0; i < sizeof(model_late_cases) / sizeof(model_late_cases[0]); i++) {
		const char *p = write_tiny(model_late_cases[i].v, 0);
		m = (model *)1;
		rc = model_open(p, NULL, &m, &e);
		if (!err_ok(rc, &e, p, model_late_cases[i].want, "model case") || m) {
			bad++;
			if (rc == 0)
				model_free(m);
		}
	}
	if (bad)
		fail_msg("%d model cases failed", bad);
}

/* general.alignment 1 lets a float tensor start at an odd address. */
static void test_model_misaligned(void **state)
{
	(void)state;
	for (int pad = 0; pad < 4; pad++) {
		const char *p = write_tiny(MV_MISALIGNED, pad);
		size_t n;
		unsigned char *b = (unsigned char *)tu_read_file(p, &n);
		assert_non_null(b);
		lay *L = calloc(1, sizeof(*L));
		assert_non_null(L);
		scan(b, n, L);
		size_t ds = L->data_start;
		free(L);
		free(b);
		if (ds % 4 == 0)
			continue;
		model *m = (model *)1;
		qs_error e = { 0 };
		check_err(model_open(p, NULL, &m, &e), &e, p,
			  "tensor 'token_embd.weight': data not 4-byte aligned (general.alignment 1)");
		assert_null(m);
		return;
	}
	fail_msg("no padding gave a misaligned data section");
}

/* ------------------------------------------------------ (d) fuzz loop */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1Dull;
}

static uint64_t interesting(void)
{
	static const uint64_t v[] = {
		0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256,
		1023, 1024, 4096, 65535, 65536, 0x7fffffff, 0x80000000u, 0xffffffffu,
		0x100000000ull, 1ull << 48, (1ull << 48) + 1, 0x7fffffffffffffffull,
		0x8000000000000000ull, 0xffffffffffffffffull, 0xfffffffffffffff0ull,
	};
	uint64_t x = v[rnd() % (sizeof(v) / sizeof(v[0]))];
	return rnd() % 4 == 0 ? x + (rnd() % 5) - 2 : x;
}

/* Structural field positions of a scanned file (u32 or u64 fields). */
typedef struct field {
	size_t at;
	int size;
} field;

static size_t fields_of(const lay *L, field *f, size_t cap)
{
	size_t n = 0;
#define ADD(pos, sz)                                       \
	do {                                               \
		if (n < cap)                               \
			f[n++] = (field){ (pos), (sz) };   \
	} while (0)
	ADD(4, 4);
	ADD(8, 8);
	ADD(16, 8);
	for (uint64_t i = 0; i < L->n_kv; i++) {
		ADD(L->kv[i].len_at, 8);
		ADD(L->kv[i].type_at, 4);
		if (L->kv[i].type == GGUF_ARRAY) {
			ADD(L->kv[i].val_at, 4);
			ADD(L->kv[i].val_at + 4, 8);
		} else if (L->kv[i].type == GGUF_STRING) {
			ADD(L->kv[i].val_at, 8);
		} else {
			ADD(L->kv[i].val_at, (int)vsize(L->kv[i].type));
		}
	}
	for (uint64_t i = 0; i < L->n_t; i++) {
		ADD(L->t[i].len_at, 8);
		ADD(L->t[i].ndims_at, 4);
		for (uint32_t d = 0; d < L->t[i].nd; d++)
			ADD(L->t[i].dims_at + 8 * d, 8);
		ADD(L->t[i].type_at, 4);
		ADD(L->t[i].off_at, 8);
	}
#undef ADD
	return n;
}

/* Apply 1..3 random mutations to b (n bytes, capacity cap); structural:
 * mostly overwrite fields (for files whose bulk is a vocabulary). */
static void mutate(unsigned char *b, size_t *n, size_t cap, const field *f, size_t nf,
		   int structural)
{
	int k = 1 + (int)(rnd() % 3);
	while (k--) {
		unsigned op = (unsigned)(rnd() % 8);
		if (structural && rnd() % 4)
			op = 2 + (unsigned)(rnd() % 3);
		switch (op) {
		case 0: /* flip bits */
			if (*n)
				for (int j = 0; j < 1 + (int)(rnd() % 4); j++)
					b[rnd() % *n] ^= (unsigned char)(1u << (rnd() % 8));
			break;
		case 1: /* random byte */
			if (*n)
				b[rnd() % *n] = (unsigned char)rnd();
			break;
		case 2: /* structural field := interesting value */
		case 3: {
			const field *x = &f[rnd() % nf];
			uint64_t v = interesting();
			if (x->at + (size_t)x->size > *n)
				break;
			for (int j = 0; j < x->size; j++)
				b[x->at + (size_t)j] = (unsigned char)(v >> (8 * j));
			break;
		}
		case 4: /* structural field += small delta */
		{
			const field *x = &f[rnd() % nf];
			if (x->at + (size_t)x->size > *n)
				break;
			uint64_t v = x->size == 8 ? get64(b + x->at) : get32(b + x->at);
			v += (rnd() % 9) - 4;
			for (int j = 0; j < x->size; j++)
				b[x->at + (size_t)j] = (unsigned char)(v >> (8 * j));
			break;
		}
		case 5: /* truncate */
			if (*n)
				*n = rnd() % *n;
			break;
		case 6: { /* insert random bytes */
			size_t len = 1 + rnd() % 16, pos = *n ? rnd() % (*n + 1) : 0;
			if (*n + len > cap)
				break;
			memmove(b + pos + len, b + pos, *n - pos);
			for (size_t j = 0; j < len; j++)
				b[pos + j] = (unsigned char)rnd();
			*n += len;
			break;
		}
		case 7: { /* delete a range */
			if (!*n)
				break;
			size_t pos = rnd() % *n, len = 1 + rnd() % 16;
			if (pos + len > *n)
				len = *n - pos;
			memmove(b + pos, b + pos + len, *n - pos - len);
			*n -= len;
			break;
		}
		}
	}
}

/* Use everything a successfully opened file offers; ASan watches. */
static void exercise(gguf_file *g, const unsigned char *file, size_t n, int write_copy)
{
	qs_error e;
	gguf_writer *w = gguf_writer_new();
	assert_non_null(w);
	for (int i = 0; i < gguf_n_kv(g); i++) {
		gguf_str k = gguf_key(g, i);
		assert_true(k.len > 0 && !memchr(k.s, 0, k.len));
		char key[300];
		snprintf(key, sizeof(key), "%.*s", (int)(k.len < 299 ? k.len : 299), k.s);
		int64_t iv;
		double dv;
		int bv;
		gguf_str sv;
		int rcs[4] = { gguf_get_i64(g, key, &iv, &e), gguf_get_f64(g, key, &dv, &e),
			       gguf_get_bool(g, key, &bv, &e), gguf_get_str(g, key, &sv, &e) };
		for (int j = 0; j < 4; j++)
			if (rcs[j])
				assert_true(rcs[j] < 0 && !strchr(e.msg, '\n'));
		if (gguf_kv_type(g, i) == GGUF_ARRAY) {
			uint64_t an = gguf_arr_n(g, i);
			for (uint64_t j = 0; j < an && j < 64; j++) {
				volatile double x = gguf_arr_f64(g, i, j);
				volatile int64_t y = gguf_arr_i64(g, i, j);
				gguf_str s = gguf_arr_str(g, i, j);
				volatile unsigned char c = s.len ? (unsigned char)s.s[s.len - 1] : 0;
				(void)x;
				(void)y;
				(void)c;
			}
		}
		/* copying fails only on keys the file may legally repeat: none */
		assert_int_equal(gguf_w_copy_kv(w, g, i), 0);
	}
	/* tensor data lies inside the mapping and matches the file */
	const void *map;
	size_t size;
	gguf_take_map(g, &map, &size);
	assert_int_equal(size, n);
	for (int i = 0; i < gguf_n_tensors(g); i++) {
		const gguf_tensor_info *t = gguf_tensor(g, i);
		const unsigned char *d = t->data;
		assert_true(d >= (const unsigned char *)map);
		assert_true((size_t)(d - (const unsigned char *)map) <= size);
		assert_true(t->nbytes <= size - (size_t)(d - (const unsigned char *)map));
		assert_memory_equal(d, file + (d - (const unsigned char *)map), t->nbytes);
		assert_true(t->n_dims >= 1 && t->n_dims <= 4);
		assert_true(kn_traits(t->type) != NULL);
		assert_int_equal(t->nbytes, kn_row_size(t->type, (size_t)t->ne[0]) *
					    (size_t)(t->ne[1] * t->ne[2] * t->ne[3]));
	}
	if (write_copy) {
		for (int i = 0; i < gguf_n_tensors(g); i++) {
			const gguf_tensor_info *t = gguf_tensor(g, i);
			char name[64];
			snprintf(name, sizeof(name), "%.*s", (int)t->name.len, t->name.s);
			assert_int_equal(gguf_w_tensor(w, name, t->type, t->n_dims, t->ne, t->data,
						       t->nbytes), 0);
		}
		const char *p = tpath("fuzz-copy.gguf");
		assert_int_equal(gguf_writer_write(w, p, &e), 0);
		gguf_file *g2 = NULL;
		int rc = gguf_open(p, &g2, &e);
		if (rc)
			print_error("copy of a readable file does not read: %s\n", e.msg);
		assert_int_equal(rc, 0);
		assert_int_equal(gguf_n_kv(g2), gguf_n_kv(g));
		assert_int_equal(gguf_n_tensors(g2), gguf_n_tensors(g));
		gguf_close(g2);
	}
	munmap((void *)map, size);
	gguf_writer_free(w);
}

/* Mutate the file at seed_path iters times and open each result (gguf_open,
 * or model_open when use_model). Set QS_FUZZ_STATS=1 to print how many opened,
 * QS_FUZZ_MSGS=1 to print every rejection message (to see what is reached). */
static void fuzz_file(const char *seed_path, int iters, uint64_t seed, int use_model,
		      int *n_ok, int *n_err)
{
	size_t n0;
	unsigned char *b0 = (unsigned char *)tu_read_file(seed_path, &n0);
	assert_non_null(b0);
	lay *L = calloc(1, sizeof(*L));
	assert_non_null(L);
	scan(b0, n0, L);
	field f[512];
	size_t nf = fields_of(L, f, 512);
	size_t cap = n0 + 1024;
	unsigned char *b = malloc(cap);
	assert_non_null(b);
	rng_state = seed;
	const char *p = tpath("fuzz-%d.gguf", use_model);
	for (int it = 0; it < iters; it++) {
		memcpy(b, b0, n0);
		size_t n = n0;
		mutate(b, &n, cap, f, nf, use_model);
		/* a fresh inode each time: overwriting a file by truncation makes
		 * ext4 flush it on close, which costs milliseconds per iteration */
		unlink(p);
		assert_int_equal(tu_write_file(p, b, n), 0);
		qs_error e = { 0 };
		int rc;
		if (use_model) {
			model *m = NULL;
			rc = model_open(p, NULL, &m, &e);
			if (rc == 0) {
				assert_non_null(m);
				model_free(m);
			}
		} else {
			gguf_file *g = NULL;
			rc = gguf_open(p, &g, &e);
			if (rc == 0) {
				exercise(g, b, n, it % 50 == 0);
				gguf_close(g);
			}
		}
		if (rc && getenv("QS_FUZZ_MSGS"))
			fprintf(stderr, "MSG %s\n", e.msg + strlen(p));
		if (rc) {
			if (!(rc < 0 && e.code == rc && e.msg[0] && !strchr(e.msg, '\n') &&
			      strstr(e.msg, p)))
				fail_msg("iteration %d: rc %d bad message '%s'", it, rc, e.msg);
			++*n_err;
		} else {
			++*n_ok;
		}
	}
	free(b);
	free(L);
	free(b0);
}

static void test_fuzz_reader(void **state)
{
	(void)state;
	const char *base = tpath("fuzz-seed.gguf");
	write_small(base, 32);
	int ok = 0, err = 0;
	fuzz_file(base, 2000, 0x9e3779b97f4a7c15ull, 0, &ok, &err);
	if (getenv("QS_FUZZ_STATS"))
		print_message("reader fuzz: %d opened, %d rejected\n", ok, err);
	/* both outcomes happen, so the loop really explores */
	assert_true(ok > 20);
	assert_true(err > 200);
}

static void test_fuzz_model(void **state)
{
	(void)state;
	const char *base = write_tiny(MV_OK, 0);
	int ok = 0, err = 0;
	fuzz_file(base, 1000, 0x0123456789abcdefull, 1, &ok, &err);
	if (getenv("QS_FUZZ_STATS"))
		print_message("model fuzz: %d opened, %d rejected\n", ok, err);
	assert_true(err > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_demo_header),
		cmocka_unit_test(test_demo_tensors),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_writer_roundtrip),
		cmocka_unit_test(test_writer_refuses),
		cmocka_unit_test(test_writer_copy_demo),
		cmocka_unit_test(test_writer_atomic),
		cmocka_unit_test(test_corruption_matrix),
		cmocka_unit_test(test_model_demo),
		cmocka_unit_test(test_model_tiny_ok),
		cmocka_unit_test(test_model_early_errors),
		cmocka_unit_test(test_model_late_errors),
		cmocka_unit_test(test_model_misaligned),
		cmocka_unit_test(test_fuzz_reader),
		cmocka_unit_test(test_fuzz_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
