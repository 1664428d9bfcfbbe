/* test_safetensors.c - the safetensors reader (engine/safetensors.c) and the
 * Hugging Face folder loader (engine/hf.c).
 *
 * (a) the shared demo folder: every shard parses, tensor data checked against
 *     offsets read by a tiny scanner here and against the F16 GGUF parsed by a
 *     tiny reader here;
 * (b) a corruption matrix built from a small synthetic file;
 * (c) folder-level errors and loads of small synthetic models. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../engine/model.h"
#include "../engine/safetensors.h"
#include "../engine/tokenizer.h"
#include "../kernels/fp16.h"
#include "../kernels/types.h"
#include "testutil.h"

#define HF_DIR "models/debdoc-19m-hf"

/* ---- small helpers ---- */

#define tpath tu_tmppath /* a path under the test's temp dir */

static void mkdir_p(const char *dir)
{
	if (mkdir(dir, 0755) != 0)
		assert_true(access(dir, F_OK) == 0);
}

/* Link a file of the shared HF folder into dir. */
static void link_shared(const char *dir, const char *file)
{
	char rel[512], abs_path[4096], dst[1024];
	snprintf(rel, sizeof(rel), "%s/%s", HF_DIR, file);
	assert_non_null(realpath(tu_shared(rel), abs_path));
	snprintf(dst, sizeof(dst), "%s/%s", dir, file);
	unlink(dst);
	assert_int_equal(symlink(abs_path, dst), 0);
}

static void write_text(const char *dir, const char *file, const char *text)
{
	char p[1024];
	snprintf(p, sizeof(p), "%s/%s", dir, file);
	assert_int_equal(tu_write_file(p, text, strlen(text)), 0);
}

/* An error: negative code, one line, names the file, says what. */
static void check_err(int rc, const qs_error *e, const char *file, const char *want)
{
	int ok = rc < 0 && e->code == rc && !strchr(e->msg, '\n') && strstr(e->msg, file) &&
		 strstr(e->msg, want);
	if (!ok)
		print_error("rc %d code %d msg '%s'\n  want it to name '%s' and say '%s'\n", rc,
			    e->code, e->msg, file, want);
	assert_true(ok);
}

static uint64_t rd64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* ---- a writer for synthetic safetensors files ---- */

struct tw {
	const char *name;
	const char *dtype; /* "F32", "F16", "BF16" */
	int nd;
	int64_t shape[4];
};

static size_t dtype_size(const char *d)
{
	return strcmp(d, "F32") == 0 ? 4 : 2;
}

/* Value k of a tensor whose name hashes to h: small and distinct. */
static float pattern(uint32_t h, size_t k)
{
	return (float)((int)((h + k * 2654435761u) % 2001u) - 1000) / 4096.0f;
}

static uint32_t hash(const char *s)
{
	uint32_t h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

/* Write n tensors, header padded to 8 bytes, data filled with pattern(). */
static void write_st(const char *path, const struct tw *t, int n)
{
	size_t cap = 4096 + (size_t)n * 256, hl = 0, off = 0;
	char *h = malloc(cap);
	assert_non_null(h);
	hl += (size_t)snprintf(h + hl, cap - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
	size_t *begin = calloc((size_t)n, sizeof(size_t)), *count = calloc((size_t)n, sizeof(size_t));
	assert_true(begin && count);
	for (int i = 0; i < n; i++) {
		count[i] = 1;
		hl += (size_t)snprintf(h + hl, cap - hl, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[",
				       t[i].name, t[i].dtype);
		for (int d = 0; d < t[i].nd; d++) {
			hl += (size_t)snprintf(h + hl, cap - hl, "%s%lld", d ? "," : "",
					       (long long)t[i].shape[d]);
			count[i] *= (size_t)t[i].shape[d];
		}
		begin[i] = off;
		off += count[i] * dtype_size(t[i].dtype);
		hl += (size_t)snprintf(h + hl, cap - hl, "],\"data_offsets\":[%zu,%zu]}", begin[i],
				       off);
	}
	hl += (size_t)snprintf(h + hl, cap - hl, "}");
	while (hl % 8)
		h[hl++] = ' ';
	size_t total = 8 + hl + off;
	unsigned char *buf = calloc(1, total);
	assert_non_null(buf);
	for (int i = 0; i < 8; i++)
		buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
	memcpy(buf + 8, h, hl);
	unsigned char *data = buf + 8 + hl;
	for (int i = 0; i < n; i++) {
		uint32_t hh = hash(t[i].name);
		for (size_t k = 0; k < count[i]; k++) {
			float v = pattern(hh, k);
			unsigned char *q = data + begin[i] + k * dtype_size(t[i].dtype);
			if (strcmp(t[i].dtype, "F32") == 0) {
				memcpy(q, &v, 4);
			} else {
				uint16_t b = strcmp(t[i].dtype, "F16") == 0 ? kn_fp32_to_fp16_ref(v)
									    : kn_fp32_to_bf16_ref(v);
				memcpy(q, &b, 2);
			}
		}
	}
	assert_int_equal(tu_write_file(path, buf, total), 0);
	free(buf);
	free(begin);
	free(count);
	free(h);
}

/* Raw file: 8-byte length hlen, header text, dlen bytes of data (0x11...). */
static void write_raw(const char *path, uint64_t hlen, const char *header, size_t dlen)
{
	size_t hl = strlen(header), total = 8 + hl + dlen;
	unsigned char *buf = malloc(total);
	assert_non_null(buf);
	for (int i = 0; i < 8; i++)
		buf[i] = (unsigned char)(hlen >> (8 * i));
	memcpy(buf + 8, header, hl);
	for (size_t i = 0; i < dlen; i++)
		buf[8 + hl + i] = (unsigned char)(0x11 + i);
	assert_int_equal(tu_write_file(path, buf, total), 0);
	free(buf);
}

/* ---- (a) the shared demo folder ---- */

/* Expected HF shape of a debdoc tensor name: rows, cols (rows 0: vector). */
static void debdoc_shape(const char *name, int64_t *rows, int64_t *cols)
{
	static const struct {
		const char *suffix;
		int64_t rows, cols;
	} tab[] = {
		{ "embed_tokens.weight", 8192, 384 },
		{ "lm_head.weight", 8192, 384 },
		{ "norm.weight", 0, 384 }, /* also input_layernorm, post_attention_layernorm */
		{ "q_proj.weight", 384, 384 },
		{ "k_proj.weight", 128, 384 },
		{ "v_proj.weight", 128, 384 },
		{ "o_proj.weight", 384, 384 },
		{ "gate_proj.weight", 1024, 384 },
		{ "up_proj.weight", 1024, 384 },
		{ "down_proj.weight", 384, 1024 },
	};
	size_t n = strlen(name);
	for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
		size_t s = strlen(tab[i].suffix);
		if (n >= s && strcmp(name + n - s, tab[i].suffix) == 0) {
			*rows = tab[i].rows;
			*cols = tab[i].cols;
			return;
		}
	}
	print_error("unexpected tensor '%s'\n", name);
	fail();
}

/* Independent of jansson: find "name": {... "data_offsets": [b, e] ...} in
 * the header text with string scanning. */
static int scan_offsets(const char *hdr, const char *name, uint64_t *b, uint64_t *e)
{
	char key[256];
	snprintf(key, sizeof(key), "\"%s\"", name);
	const char *p = strstr(hdr, key);
	if (!p)
		return -1;
	const char *close = strchr(p, '}');
	const char *d = strstr(p, "\"data_offsets\"");
	if (!d || !close || d > close)
		return -1;
	d = strchr(d, '[');
	if (!d)
		return -1;
	char *end;
	*b = strtoull(d + 1, &end, 10);
	while (*end == ' ' || *end == ',')
		end++;
	*e = strtoull(end, &end, 10);
	return 0;
}

static void test_real_shards(void **state)
{
	(void)state;
	static const int want_count[3] = { 4, 37, 34 };
	int total = 0;
	for (int s = 1; s <= 3; s++) {
		char rel[256], path[1024];
		snprintf(rel, sizeof(rel), HF_DIR "/model-%05d-of-00003.safetensors", s);
		snprintf(path, sizeof(path), "%s", tu_shared(rel));
		st_file *f = NULL;
		qs_error e = { 0 };
		int rc = st_open(path, &f, &e);
		if (rc)
			print_error("%s\n", e.msg);
		assert_int_equal(rc, 0);
		assert_int_equal(st_count(f), want_count[s - 1]);
		assert_string_equal(st_path(f), path);
		assert_non_null(st_meta(f, "format"));
		assert_string_equal(st_meta(f, "format"), "pt");
		assert_null(st_meta(f, "nope"));
		assert_null(st_tensor_at(f, -1));
		assert_null(st_tensor_at(f, st_count(f)));

		size_t len;
		unsigned char *raw = (unsigned char *)tu_read_file(path, &len);
		assert_non_null(raw);
		uint64_t hlen = rd64(raw);
		assert_true(hlen + 8 <= len);
		char *hdr = malloc(hlen + 1);
		memcpy(hdr, raw + 8, hlen);
		hdr[hlen] = 0;
		size_t covered = 0;
		for (int i = 0; i < st_count(f); i++) {
			const st_tensor *t = st_tensor_at(f, i);
			assert_ptr_equal(st_find(f, t->name), t);
			assert_int_equal(t->type, KN_TYPE_BF16);
			int64_t rows, cols;
			debdoc_shape(t->name, &rows, &cols);
			if (rows) {
				assert_int_equal(t->n_dims, 2);
				assert_int_equal(t->shape[0], rows);
				assert_int_equal(t->shape[1], cols);
			} else {
				assert_int_equal(t->n_dims, 1);
				assert_int_equal(t->shape[0], cols);
			}
			assert_int_equal(t->nbytes, (size_t)(rows ? rows : 1) * (size_t)cols * 2);
			uint64_t b = 0, en = 0;
			assert_int_equal(scan_offsets(hdr, t->name, &b, &en), 0);
			assert_int_equal(en - b, t->nbytes);
			assert_true(8 + hlen + en <= len);
			assert_memory_equal(t->data, raw + 8 + hlen + b, t->nbytes);
			covered += t->nbytes;
		}
		/* torch's writer packs tensors back to back */
		assert_int_equal(covered, len - 8 - hlen);
		total += st_count(f);
		free(hdr);
		free(raw);
		st_close(f);
	}
	assert_int_equal(total, 75);
}

/* ---- a tiny GGUF reader, just enough to find F16/F32 tensor data ---- */

struct gg {
	const unsigned char *p, *end;
	int bad;
};

static uint64_t gg_u(struct gg *g, int n)
{
	if (g->bad || g->end - g->p < n) {
		g->bad = 1;
		return 0;
	}
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | g->p[i];
	g->p += n;
	return v;
}

static void gg_skip(struct gg *g, uint64_t n)
{
	if (g->bad || (uint64_t)(g->end - g->p) < n)
		g->bad = 1;
	else
		g->p += n;
}

static void gg_skip_value(struct gg *g, uint32_t type)
{
	static const int size[] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
	if (type > 12) {
		g->bad = 1;
	} else if (type == 8) {
		gg_skip(g, gg_u(g, 8));
	} else if (type == 9) {
		uint32_t et = (uint32_t)gg_u(g, 4);
		uint64_t n = gg_u(g, 8);
		for (uint64_t i = 0; i < n && !g->bad; i++)
			gg_skip_value(g, et);
	} else {
		gg_skip(g, (uint64_t)size[type]);
	}
}

struct gg_tensor {
	char name[64];
	uint32_t type;
	uint64_t ne[4];
	uint32_t nd;
	const unsigned char *data;
};

/* Parse buf as GGUF v3; fills up to cap tensors, returns the count or -1. */
static int gg_parse(const unsigned char *buf, size_t len, struct gg_tensor *out, int cap)
{
	struct gg g = { buf, buf + len, 0 };
	if (len < 24 || memcmp(buf, "GGUF", 4))
		return -1;
	g.p += 4;
	if (gg_u(&g, 4) != 3)
		return -1;
	uint64_t nt = gg_u(&g, 8), nkv = gg_u(&g, 8), align = 32;
	for (uint64_t i = 0; i < nkv && !g.bad; i++) {
		uint64_t kl = gg_u(&g, 8);
		const unsigned char *k = g.p;
		gg_skip(&g, kl);
		uint32_t type = (uint32_t)gg_u(&g, 4);
		if (kl == 17 && !g.bad && memcmp(k, "general.alignment", 17) == 0 && type == 4)
			align = gg_u(&g, 4);
		else
			gg_skip_value(&g, type);
	}
	if (g.bad || nt > (uint64_t)cap)
		return -1;
	uint64_t offs[128];
	for (uint64_t i = 0; i < nt && !g.bad; i++) {
		uint64_t nl = gg_u(&g, 8);
		if (nl >= sizeof(out[i].name) || (uint64_t)(g.end - g.p) < nl)
			return -1;
		memcpy(out[i].name, g.p, nl);
		out[i].name[nl] = 0;
		g.p += nl;
		out[i].nd = (uint32_t)gg_u(&g, 4);
		if (out[i].nd > 4)
			return -1;
		for (uint32_t d = 0; d < out[i].nd; d++)
			out[i].ne[d] = gg_u(&g, 8);
		out[i].type = (uint32_t)gg_u(&g, 4);
		offs[i] = gg_u(&g, 8);
	}
	if (g.bad)
		return -1;
	size_t start = (size_t)(g.p - buf);
	start = (start + align - 1) / align * align;
	for (uint64_t i = 0; i < nt; i++) {
		if (start + offs[i] > len)
			return -1;
		out[i].data = buf + start + offs[i];
	}
	return (int)nt;
}

static const struct gg_tensor *gg_find(const struct gg_tensor *t, int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (strcmp(t[i].name, name) == 0)
			return &t[i];
	return NULL;
}

/* The BF16 HF weights and the F16 GGUF hold the same numbers for tensors whose
 * rows are not permuted (everything but attn_q/attn_k). */
static void test_real_vs_gguf(void **state)
{
	(void)state;
	size_t len;
	unsigned char *gbuf = (unsigned char *)tu_read_file(
		tu_shared("models/debdoc-19m-f16.gguf"), &len);
	assert_non_null(gbuf);
	static struct gg_tensor gt[128];
	int ng = gg_parse(gbuf, len, gt, 128);
	assert_int_equal(ng, 75);

	static const struct {
		int shard;
		const char *hf, *gguf;
	} pairs[] = {
		{ 1, "model.embed_tokens.weight", "token_embd.weight" },
		{ 1, "lm_head.weight", "output.weight" },
		{ 1, "model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight" },
		{ 2, "model.layers.3.mlp.down_proj.weight", "blk.3.ffn_down.weight" },
		{ 2, "model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight" },
		{ 3, "model.layers.7.mlp.gate_proj.weight", "blk.7.ffn_gate.weight" },
		{ 3, "model.norm.weight", "output_norm.weight" },
	};
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		char rel[256], path[1024];
		snprintf(rel, sizeof(rel), HF_DIR "/model-%05d-of-00003.safetensors", pairs[i].shard);
		snprintf(path, sizeof(path), "%s", tu_shared(rel));
		st_file *f = NULL;
		qs_error e = { 0 };
		assert_int_equal(st_open(path, &f, &e), 0);
		const st_tensor *t = st_find(f, pairs[i].hf);
		const struct gg_tensor *g = gg_find(gt, ng, pairs[i].gguf);
		if (!t || !g)
			print_error("%s / %s not found\n", pairs[i].hf, pairs[i].gguf);
		assert_true(t && g);
		/* GGUF ne[0] is the row length: HF shape reversed */
		assert_int_equal(g->nd, (uint32_t)t->n_dims);
		for (int d = 0; d < t->n_dims; d++)
			assert_int_equal(g->ne[d], (uint64_t)t->shape[t->n_dims - 1 - d]);
		assert_true(g->type == KN_TYPE_F16 || g->type == KN_TYPE_F32);
		size_t n = t->nbytes / 2, bad = 0;
		const uint16_t *hb = t->data;
		for (size_t k = 0; k < n; k++) {
			float a = kn_bf16_to_fp32_ref(hb[k]), b;
			if (g->type == KN_TYPE_F16) {
				uint16_t h;
				memcpy(&h, g->data + 2 * k, 2);
				b = kn_fp16_to_fp32_ref(h);
			} else {
				memcpy(&b, g->data + 4 * k, 4);
			}
			float d = a > b ? a - b : b - a, m = a > 0 ? a : -a;
			if (d > m / 1024 + 6e-8f)
				bad++;
		}
		if (bad)
			print_error("%s: %zu of %zu values differ from %s\n", pairs[i].hf, bad, n,
				    pairs[i].gguf);
		assert_int_equal(bad, 0);
		st_close(f);
	}
	free(gbuf);
}

/* ---- (b) synthetic files ---- */

/* The good synthetic header: a F32 [2,3] at [0,24], b BF16 [4] at [24,32]. */
#define GOOD_A "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}"
#define GOOD_B "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]}"
#define GOOD_META "\"__metadata__\":{\"format\":\"pt\"}"
#define GOOD "{" GOOD_META "," GOOD_A "," GOOD_B "}"

static void test_synthetic_ok(void **state)
{
	(void)state;
	qs_error e = { 0 };
	st_file *f = NULL;
	const char *p = tpath("ok.safetensors");
	write_raw(p, strlen(GOOD), GOOD, 32);
	assert_int_equal(st_open(p, &f, &e), 0);
	assert_int_equal(st_count(f), 2);
	const st_tensor *a = st_find(f, "a"), *b = st_find(f, "b");
	assert_true(a && b);
	assert_string_equal(a->name, "a");
	assert_int_equal(a->type, KN_TYPE_F32);
	assert_int_equal(a->n_dims, 2);
	assert_int_equal(a->shape[0], 2);
	assert_int_equal(a->shape[1], 3);
	assert_int_equal(a->nbytes, 24);
	assert_int_equal(b->type, KN_TYPE_BF16);
	assert_int_equal(b->n_dims, 1);
	assert_int_equal(b->nbytes, 8);
	assert_int_equal(((const unsigned char *)a->data)[0], 0x11);
	assert_int_equal(((const unsigned char *)b->data)[0], 0x11 + 24);
	assert_string_equal(st_meta(f, "format"), "pt");

	/* take the mapping: data outlives st_close */
	qs_map m = st_take_map(f);
	assert_non_null(m.data);
	assert_int_equal(m.size, 8 + strlen(GOOD) + 32);
	qs_map again = st_take_map(f);
	assert_null(again.data);
	const unsigned char *bd = b->data;
	st_close(f);
	assert_int_equal(bd[7], 0x11 + 31);
	qs_map_close(&m);
	st_close(NULL);

	/* accepted oddities: gaps and trailing bytes, empty and scalar tensors,
	 * F16, whitespace padding, no metadata, no tensors at all */
	static const struct {
		const char *header;
		size_t dlen;
		int count;
	} ok[] = {
		{ "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]}}  ", 40, 1 },
		{ "{\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
		  "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
		  "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[4,8]}}", 8, 3 },
		{ "{}", 0, 0 },
		{ "{" GOOD_META "}", 5, 0 },
		{ "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4],\"dtype\":\"F32\",\"extra\":1}}", 4, 1 },
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		p = tpath("ok%zu.safetensors", i);
		write_raw(p, strlen(ok[i].header), ok[i].header, ok[i].dlen);
		int rc = st_open(p, &f, &e);
		if (rc)
			print_error("case %zu: %s\n", i, e.msg);
		assert_int_equal(rc, 0);
		assert_int_equal(st_count(f), ok[i].count);
		st_close(f);
	}
	p = tpath("ok1.safetensors");
	assert_int_equal(st_open(p, &f, &e), 0);
	assert_int_equal(st_find(f, "z")->nbytes, 0);
	assert_int_equal(st_find(f, "s")->n_dims, 0);
	assert_int_equal(st_find(f, "s")->nbytes, 4);
	st_close(f);
}

struct bad_case {
	const char *what;   /* file name stem */
	const char *header; /* NULL: the good header */
	uint64_t hlen;      /* 0: strlen(header) */
	size_t dlen;        /* data bytes after the header */
	long trunc;         /* >= 0: cut the file to this many bytes */
	const char *want;   /* message substring */
};

#define ENTRY(body) "{" GOOD_META ",\"a\":" body "}"
#define T(dtype, shape, offs) \
	ENTRY("{\"dtype\":" dtype ",\"shape\":" shape ",\"data_offsets\":" offs "}")

static const struct bad_case bad_cases[] = {
	{ "empty", "", 0, 0, 0, "too short (0 bytes)" },
	{ "short", GOOD, 0, 32, 5, "too short (5 bytes)" },
	{ "absurd-hlen", GOOD, 1ull << 40, 32, -1, "header length 1099511627776 is absurd" },
	{ "hlen-past-end", GOOD, 100000, 32, -1, "header length 100000 past end of file" },
	{ "trunc-header", GOOD, 0, 32, 8 + 20, "past end of file (28 bytes)" },
	{ "hlen-short", GOOD, 10, 32, -1, "invalid json" },
	{ "bad-json", "{\"a\": {\"dtype\": ", 0, 32, -1, "invalid json" },
	{ "trailing-garbage", GOOD " x", 0, 32, -1, "invalid json" },
	{ "zero-hlen", "", 0, 32, -1, "invalid json" },
	{ "not-object", "[1,2,3]", 0, 32, -1, "header is not a json object" },
	{ "dup-key", "{" GOOD_A "," GOOD_A "}", 0, 32, -1, "duplicate" },
	{ "dup-inner-key",
	  ENTRY("{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"),
	  0, 32, -1, "duplicate" },
	{ "huge-int", T("\"F32\"", "[1]", "[0,99999999999999999999999]"), 0, 32, -1,
	  "invalid json" },
	{ "entry-not-object", ENTRY("[1]"), 0, 32, -1, "tensor 'a': entry is not an object" },
	{ "empty-name", "{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 32,
	  -1, "empty name" },
	{ "no-dtype", ENTRY("{\"shape\":[1],\"data_offsets\":[0,4]}"), 0, 32, -1,
	  "tensor 'a': missing dtype" },
	{ "dtype-number", T("7", "[1]", "[0,4]"), 0, 32, -1, "tensor 'a': dtype is not a string" },
	{ "dtype-i8", T("\"I8\"", "[4]", "[0,4]"), 0, 32, -1, "unsupported dtype 'I8'" },
	{ "dtype-f64", T("\"F64\"", "[1]", "[0,8]"), 0, 32, -1, "unsupported dtype 'F64'" },
	{ "dtype-lower", T("\"f32\"", "[1]", "[0,4]"), 0, 32, -1, "unsupported dtype 'f32'" },
	{ "no-shape", ENTRY("{\"dtype\":\"F32\",\"data_offsets\":[0,4]}"), 0, 32, -1,
	  "tensor 'a': missing shape" },
	{ "shape-string", T("\"F32\"", "\"2x3\"", "[0,24]"), 0, 32, -1, "shape is not an array" },
	{ "shape-real", T("\"F32\"", "[2.0,3]", "[0,24]"), 0, 32, -1, "shape[0] is not an integer" },
	{ "shape-str-dim", T("\"F32\"", "[2,\"3\"]", "[0,24]"), 0, 32, -1,
	  "shape[1] is not an integer" },
	{ "shape-null-dim", T("\"F32\"", "[2,null]", "[0,24]"), 0, 32, -1,
	  "shape[1] is not an integer" },
	{ "shape-negative", T("\"F32\"", "[-2,-3]", "[0,24]"), 0, 32, -1,
	  "shape[0] = -2 is negative" },
	{ "shape-5d", T("\"F32\"", "[1,1,1,2,3]", "[0,24]"), 0, 32, -1, "5 dims (max 4)" },
	{ "shape-overflow", T("\"F32\"", "[4294967296,4294967296,16]", "[0,24]"), 0, 32, -1,
	  "element count overflows" },
	{ "bytes-overflow", T("\"F32\"", "[2305843009213693952,4]", "[0,24]"), 0, 32, -1,
	  "byte size overflows" },
	{ "no-offsets", ENTRY("{\"dtype\":\"F32\",\"shape\":[1]}"), 0, 32, -1,
	  "missing data_offsets" },
	{ "offsets-object", T("\"F32\"", "[1]", "{\"b\":0}"), 0, 32, -1,
	  "data_offsets is not an array" },
	{ "offsets-arity-3", T("\"F32\"", "[1]", "[0,4,8]"), 0, 32, -1, "has 3 entries (want 2)" },
	{ "offsets-arity-1", T("\"F32\"", "[1]", "[4]"), 0, 32, -1, "has 1 entries (want 2)" },
	{ "offsets-negative", T("\"F32\"", "[1]", "[-4,0]"), 0, 32, -1,
	  "data_offsets[0] is not a non-negative integer" },
	{ "offsets-real", T("\"F32\"", "[1]", "[0,4.0]"), 0, 32, -1,
	  "data_offsets[1] is not a non-negative integer" },
	{ "offsets-reversed", T("\"F32\"", "[1]", "[8,4]"), 0, 32, -1,
	  "data_offsets begin 8 > end 4" },
	{ "offsets-past-end", T("\"F32\"", "[1]", "[99999996,100000000]"), 0, 32, -1,
	  "data_offsets end 100000000 past end of data (32)" },
	{ "trunc-data", GOOD, 0, 32, -2, "tensor 'b': data_offsets end 32 past end of data (31)" },
	{ "size-mismatch", T("\"F32\"", "[2,3]", "[0,20]"), 0, 32, -1,
	  "span 20 bytes, F32 shape needs 24" },
	{ "size-mismatch-bf16", T("\"BF16\"", "[2,3]", "[0,24]"), 0, 32, -1,
	  "span 24 bytes, BF16 shape needs 12" },
	{ "overlap", "{" GOOD_A ",\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[16,24]}}",
	  0, 32, -1, "tensors 'a' and 'b' overlap" },
	{ "overlap-same", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
	  "\"y\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8]}}", 0, 32, -1,
	  "overlap" },
	{ "meta-not-object", "{\"__metadata__\":[\"pt\"]," GOOD_A "}", 0, 32, -1,
	  "__metadata__ is not an object" },
	{ "meta-not-string", "{\"__metadata__\":{\"format\":\"pt\",\"n\":3}," GOOD_A "}", 0, 32,
	  -1, "__metadata__ 'n' is not a string" },
	{ "newline-name", "{\"a\\nb\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 0,
	  32, -1, "tensor 'a\\x0ab': unsupported dtype" },
};

static void test_corruption_matrix(void **state)
{
	(void)state;
	size_t n = sizeof(bad_cases) / sizeof(bad_cases[0]);
	assert_true(n >= 25);
	for (size_t i = 0; i < n; i++) {
		const struct bad_case *c = &bad_cases[i];
		char *p = tpath("bad-%s.safetensors", c->what);
		uint64_t hl = c->hlen ? c->hlen : strlen(c->header);
		write_raw(p, hl, c->header, c->dlen);
		if (c->trunc != -1) {
			size_t full = 8 + strlen(c->header) + c->dlen;
			size_t to = c->trunc >= 0 ? (size_t)c->trunc : full - 1;
			assert_int_equal(truncate(p, (off_t)to), 0);
		}
		st_file *f = (st_file *)&n; /* must be reset to NULL */
		qs_error e = { 0 };
		int rc = st_open(p, &f, &e);
		if (rc >= 0)
			print_error("case %s: accepted\n", c->what);
		check_err(rc, &e, p, c->want);
		assert_null(f);
	}

	/* not a file at all */
	st_file *f = NULL;
	qs_error e = { 0 };
	const char *p = tpath("does-not-exist.safetensors");
	check_err(st_open(p, &f, &e), &e, p, "cannot open");
	p = tu_tmpdir();
	check_err(st_open(p, &f, &e), &e, p, "not a regular file");
}

/* Every prefix of a good file is rejected cleanly (a crude fuzz). */
static void test_every_truncation(void **state)
{
	(void)state;
	const char *p = tpath("good-full.safetensors"), *q = tpath("good-cut.safetensors");
	write_raw(p, strlen(GOOD), GOOD, 32);
	size_t len;
	char *buf = tu_read_file(p, &len);
	assert_non_null(buf);
	for (size_t n = 0; n < len; n++) {
		assert_int_equal(tu_write_file(q, buf, n), 0);
		st_file *f = NULL;
		qs_error e = { 0 };
		int rc = st_open(q, &f, &e);
		assert_true(rc < 0);
		assert_null(f);
		assert_null(strchr(e.msg, '\n'));
		assert_non_null(strstr(e.msg, q));
	}
	/* and flipping any one header byte never crashes */
	for (size_t n = 0; n < len; n++) {
		char save = buf[n];
		buf[n] ^= 0x5a;
		assert_int_equal(tu_write_file(q, buf, len), 0);
		buf[n] = save;
		st_file *f = NULL;
		qs_error e = { 0 };
		if (st_open(q, &f, &e) == 0)
			st_close(f);
		else
			assert_null(strchr(e.msg, '\n'));
	}
	free(buf);
}

/* ---- (c) folders ---- */

/* A tiny llama: dim 8, 2 heads of 4, 1 kv head, ffn 16, 1 layer, the demo
 * vocabulary (8192) so the shared tokenizer.model fits. */
#define TINY_CFG                                                                            \
	"{\"model_type\":\"%s\",\"vocab_size\":8192,\"hidden_size\":8,"                     \
	"\"intermediate_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":2,"       \
	"\"num_key_value_heads\":1,\"max_position_embeddings\":64,\"rms_norm_eps\":1e-05,"  \
	"\"hidden_act\":\"silu\"%s}"

static const struct tw tiny_tensors[] = {
	{ "model.embed_tokens.weight", "BF16", 2, { 8192, 8 } },
	{ "lm_head.weight", "BF16", 2, { 8192, 8 } },
	{ "model.norm.weight", "BF16", 1, { 8 } },
	{ "model.layers.0.input_layernorm.weight", "F32", 1, { 8 } },
	{ "model.layers.0.self_attn.q_proj.weight", "BF16", 2, { 8, 8 } },
	{ "model.layers.0.self_attn.k_proj.weight", "BF16", 2, { 4, 8 } },
	{ "model.layers.0.self_attn.v_proj.weight", "BF16", 2, { 4, 8 } },
	{ "model.layers.0.self_attn.o_proj.weight", "BF16", 2, { 8, 8 } },
	{ "model.layers.0.post_attention_layernorm.weight", "F32", 1, { 8 } },
	{ "model.layers.0.mlp.gate_proj.weight", "F16", 2, { 16, 8 } },
	{ "model.layers.0.mlp.up_proj.weight", "BF16", 2, { 16, 8 } },
	{ "model.layers.0.mlp.down_proj.weight", "BF16", 2, { 8, 16 } },
	{ "model.layers.0.self_attn.rotary_emb.inv_freq", "F32", 1, { 2 } },
};
#define N_TINY ((int)(sizeof(tiny_tensors) / sizeof(tiny_tensors[0])))

static const struct tw qwen_biases[] = {
	{ "model.layers.0.self_attn.q_proj.bias", "BF16", 1, { 8 } },
	{ "model.layers.0.self_attn.k_proj.bias", "BF16", 1, { 4 } },
	{ "model.layers.0.self_attn.v_proj.bias", "BF16", 1, { 4 } },
};

/* A fresh folder name/ with config (model_type, extra fields) and tokenizer. */
static const char *tiny_dir(const char *name, const char *type, const char *extra)
{
	char *dir = tpath("%s", name);
	mkdir_p(dir);
	char cfg[2048];
	snprintf(cfg, sizeof(cfg), TINY_CFG, type, extra);
	write_text(dir, "config.json", cfg);
	link_shared(dir, "tokenizer.model");
	return dir;
}

/* Write the tiny tensors (minus skip, plus more) as dir/file. */
static void tiny_weights(const char *dir, const char *file, const char *skip,
			 const struct tw *more, int n_more)
{
	struct tw t[32];
	int n = 0;
	for (int i = 0; i < N_TINY; i++)
		if (!skip || strcmp(tiny_tensors[i].name, skip))
			t[n++] = tiny_tensors[i];
	for (int i = 0; i < n_more; i++)
		t[n++] = more[i];
	char p[1024];
	snprintf(p, sizeof(p), "%s/%s", dir, file);
	write_st(p, t, n);
}

static void expect_load_err(const char *dir, const char *file, const char *want)
{
	model *m = (model *)&want;
	qs_error e = { 0 };
	int rc = model_open(dir, NULL, &m, &e);
	check_err(rc, &e, file, want);
	assert_null(m);
}

static void test_folder_errors(void **state)
{
	(void)state;
	const char *d;

	/* config.json */
	d = tpath("no-config");
	mkdir_p(d);
	link_shared(d, "tokenizer.model");
	tiny_weights(d, "model.safetensors", NULL, NULL, 0);
	expect_load_err(d, "no-config/config.json", "cannot open");

	d = tiny_dir("bad-config", "llama", "");
	write_text(d, "config.json", "{\"model_type\": \"llama\",");
	expect_load_err(d, "bad-config/config.json", "invalid json");

	d = tiny_dir("array-config", "llama", "");
	write_text(d, "config.json", "[]");
	expect_load_err(d, "array-config/config.json", "not a json object");

	d = tiny_dir("dup-config", "llama", ",\"hidden_size\":8");
	expect_load_err(d, "dup-config/config.json", "duplicate");

	d = tiny_dir("gpt2", "gpt2", "");
	expect_load_err(d, "gpt2/config.json", "model_type 'gpt2' is not supported");

	d = tiny_dir("gpt-nl", "gpt\\n2", "");
	expect_load_err(d, "gpt-nl/config.json", "model_type 'gpt\\x0a2' is not supported");

	d = tpath("no-type");
	mkdir_p(d);
	write_text(d, "config.json", "{\"vocab_size\":8192}");
	expect_load_err(d, "no-type/config.json", "missing model_type");

	d = tiny_dir("rope-scaling", "llama", ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0}");
	expect_load_err(d, "rope-scaling/config.json", "rope_scaling is not supported");

	d = tiny_dir("gelu", "llama", ",\"hidden_act\":\"gelu\"");
	/* duplicate hidden_act: rejected as duplicate before anything else */
	expect_load_err(d, "gelu/config.json", "duplicate");
	write_text(d, "config.json",
		   "{\"model_type\":\"llama\",\"vocab_size\":8192,\"hidden_act\":\"gelu\"}");
	expect_load_err(d, "gelu/config.json", "hidden_act 'gelu' is not supported");

	write_text(d, "config.json", "{\"model_type\":\"llama\",\"hidden_act\":[\"silu\"]}");
	expect_load_err(d, "gelu/config.json", "hidden_act is not a string");

	d = tiny_dir("mlp-bias", "llama", ",\"mlp_bias\":true");
	expect_load_err(d, "mlp-bias/config.json", "mlp_bias is not supported");

	d = tiny_dir("qwen-swa", "qwen2", ",\"use_sliding_window\":true");
	expect_load_err(d, "qwen-swa/config.json", "use_sliding_window is not supported");

	d = tpath("no-hidden");
	mkdir_p(d);
	write_text(d, "config.json", "{\"model_type\":\"llama\",\"vocab_size\":8192}");
	expect_load_err(d, "no-hidden/config.json", "missing hidden_size");

	d = tpath("str-hidden");
	mkdir_p(d);
	write_text(d, "config.json",
		   "{\"model_type\":\"llama\",\"vocab_size\":8192,\"hidden_size\":\"8\"}");
	expect_load_err(d, "str-hidden/config.json", "hidden_size is not an integer");

	d = tpath("neg-vocab");
	mkdir_p(d);
	write_text(d, "config.json", "{\"model_type\":\"llama\",\"vocab_size\":-1}");
	expect_load_err(d, "neg-vocab/config.json", "vocab_size = -1 out of range");

	d = tiny_dir("str-theta", "llama", ",\"rope_theta\":\"1e4\"");
	expect_load_err(d, "str-theta/config.json", "rope_theta is not a number");

	d = tiny_dir("huge-theta", "llama", ",\"rope_theta\":1e300");
	expect_load_err(d, "huge-theta/config.json", "rope_theta = 1e+300 out of range");

	d = tiny_dir("str-tie", "llama", ",\"tie_word_embeddings\":1");
	expect_load_err(d, "str-tie/config.json", "tie_word_embeddings is not a boolean");

	/* tokenizer */
	d = tiny_dir("tok-json", "llama", "");
	tiny_weights(d, "model.safetensors", NULL, NULL, 0);
	unlink(tpath("tok-json/tokenizer.model"));
	write_text(d, "tokenizer.json", "{}");
	{
		model *m = NULL;
		qs_error e = { 0 };
		int rc = model_open(d, NULL, &m, &e);
		char want[1200];
		snprintf(want, sizeof(want),
			 "%s: tokenizer.json (byte-level BPE) is not supported yet; need "
			 "tokenizer.model", d);
		check_err(rc, &e, d, want);
		assert_string_equal(e.msg, want);
		assert_int_equal(rc, QS_EUNSUPP);
	}
	d = tiny_dir("no-tok", "llama", "");
	tiny_weights(d, "model.safetensors", NULL, NULL, 0);
	unlink(tpath("no-tok/tokenizer.model"));
	expect_load_err(d, "no-tok", "no tokenizer (need tokenizer.model)");

	/* weights */
	d = tiny_dir("no-weights", "llama", "");
	expect_load_err(d, "no-weights", "no model.safetensors or model.safetensors.index.json");
	write_text(d, "pytorch_model.bin", "PK");
	expect_load_err(d, "no-weights", "pytorch_model.bin is not supported");

	d = tiny_dir("bad-single", "llama", "");
	write_raw(tpath("bad-single/model.safetensors"), strlen(GOOD), GOOD, 31);
	expect_load_err(d, "bad-single/model.safetensors", "past end of data");

	d = tiny_dir("o-bias", "llama", ",\"attention_bias\":true");
	{
		static const struct tw ob = { "model.layers.0.self_attn.o_proj.bias", "BF16", 1, { 8 } };
		tiny_weights(d, "model.safetensors", NULL, &ob, 1);
	}
	expect_load_err(d, "o-bias/model.safetensors",
			"tensor 'model.layers.0.self_attn.o_proj.bias': this bias is not supported");

	d = tiny_dir("layer-range", "llama", "");
	{
		static const struct tw l5 = { "model.layers.5.mlp.up_proj.weight", "BF16", 2, { 16, 8 } };
		tiny_weights(d, "model.safetensors", NULL, &l5, 1);
	}
	expect_load_err(d, "layer-range/model.safetensors", "layer 5 out of range (1 layers)");

	d = tiny_dir("three-d", "llama", "");
	{
		static const struct tw n3 = { "model.norm.weight", "BF16", 3, { 2, 2, 2 } };
		tiny_weights(d, "model.safetensors", "model.norm.weight", &n3, 1);
	}
	expect_load_err(d, "three-d/model.safetensors",
			"tensor 'model.norm.weight': 3 dimensions (want 1 or 2)");

	/* sharded: index problems */
	d = tiny_dir("idx-missing-shard", "llama", "");
	write_text(d, "model.safetensors.index.json",
		   "{\"metadata\":{},\"weight_map\":{\"model.norm.weight\":"
		   "\"model-00001-of-00002.safetensors\"}}");
	expect_load_err(d, "idx-missing-shard/model-00001-of-00002.safetensors", "cannot open");

	d = tiny_dir("idx-dotdot", "llama", "");
	write_text(d, "model.safetensors.index.json",
		   "{\"weight_map\":{\"model.norm.weight\":\"../no-config/model.safetensors\"}}");
	expect_load_err(d, "idx-dotdot/model.safetensors.index.json",
			"bad shard file name '../no-config/model.safetensors'");

	d = tiny_dir("idx-dotdot2", "llama", "");
	write_text(d, "model.safetensors.index.json",
		   "{\"weight_map\":{\"model.norm.weight\":\"..\"}}");
	expect_load_err(d, "idx-dotdot2/model.safetensors.index.json", "bad shard file name");

	d = tiny_dir("idx-abs", "llama", "");
	write_text(d, "model.safetensors.index.json",
		   "{\"weight_map\":{\"model.norm.weight\":\"/etc/passwd\"}}");
	expect_load_err(d, "idx-abs/model.safetensors.index.json", "bad shard file name");

	d = tiny_dir("idx-nl", "llama", "");
	write_text(d, "model.safetensors.index.json",
		   "{\"weight_map\":{\"model.norm\\nweight\":\"a/\\nb\"}}");
	expect_load_err(d, "idx-nl/model.safetensors.index.json",
			"weight_map 'model.norm\\x0aweight': bad shard file name 'a/\\x0ab'");

	d = tiny_dir("idx-no-map", "llama", "");
	write_text(d, "model.safetensors.index.json", "{\"metadata\":{}}");
	expect_load_err(d, "idx-no-map/model.safetensors.index.json", "weight_map is missing");

	d = tiny_dir("idx-not-string", "llama", "");
	write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"model.norm.weight\":1}}");
	expect_load_err(d, "idx-not-string/model.safetensors.index.json",
			"weight_map 'model.norm.weight' is not a string");

	d = tiny_dir("idx-bad-json", "llama", "");
	write_text(d, "model.safetensors.index.json", "{\"weight_map\":{");
	expect_load_err(d, "idx-bad-json/model.safetensors.index.json", "invalid json");

	d = tiny_dir("idx-not-in-shard", "llama", "");
	tiny_weights(d, "a.safetensors", "model.norm.weight", NULL, 0);
	write_text(d, "model.safetensors.index.json",
		   "{\"weight_map\":{\"model.embed_tokens.weight\":\"a.safetensors\","
		   "\"model.norm.weight\":\"a.safetensors\"}}");
	expect_load_err(d, "idx-not-in-shard/a.safetensors",
			"tensor 'model.norm.weight' listed in");

	d = tiny_dir("idx-bad-shard", "llama", "");
	write_raw(tpath("idx-bad-shard/a.safetensors"), 1ull << 40, GOOD, 32);
	write_text(d, "model.safetensors.index.json",
		   "{\"weight_map\":{\"model.norm.weight\":\"a.safetensors\"}}");
	expect_load_err(d, "idx-bad-shard/a.safetensors", "is absurd");

	/* the real shards with a config that disagrees: caught by model_finish */
	{
		d = tpath("real-bad-ffn");
		mkdir_p(d);
		static const char *const files[] = {
			"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
			"model-00003-of-00003.safetensors", "model.safetensors.index.json",
			"tokenizer.model",
		};
		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
			link_shared(d, files[i]);
		size_t len;
		char *cfg = tu_read_file(tu_shared(HF_DIR "/config.json"), &len);
		assert_non_null(cfg);
		char *p = strstr(cfg, "\"intermediate_size\": 1024");
		assert_non_null(p);
		memcpy(p, "\"intermediate_size\": 1000", 25);
		write_text(d, "config.json", cfg);
		free(cfg);
		expect_load_err(d, "real-bad-ffn", "ffn_gate.weight': shape [384, 1024], config wants [384, 1000]");

		d = tiny_dir("qwen-no-bias", "qwen2", "");
		tiny_weights(d, "model.safetensors", NULL, NULL, 0);
		expect_load_err(d, "qwen-no-bias", "missing tensor 'blk.0.attn_q.bias'");

		d = tiny_dir("untied-no-head", "llama", "");
		tiny_weights(d, "model.safetensors", "lm_head.weight", NULL, 0);
		expect_load_err(d, "untied-no-head", "missing tensor 'output.weight'");
	}
}

/* ---- successful loads (need the tokenizer) ---- */

static float tensor_value(const model_tensor *t, size_t k)
{
	float v;
	uint16_t h;
	switch (t->type) {
	case KN_TYPE_F32:
		memcpy(&v, (const char *)t->data + 4 * k, 4);
		return v;
	case KN_TYPE_F16:
		memcpy(&h, (const char *)t->data + 2 * k, 2);
		return kn_fp16_to_fp32_ref(h);
	default:
		memcpy(&h, (const char *)t->data + 2 * k, 2);
		return kn_bf16_to_fp32_ref(h);
	}
}

/* Every tensor of m with an HF name in tw[] holds pattern() values. */
static void check_tiny_values(const model *m, const struct tw *t, int n)
{
	for (int i = 0; i < n; i++) {
		if (strstr(t[i].name, "inv_freq") || (m->cfg.tied && strstr(t[i].name, "lm_head")))
			continue;
		static const struct { const char *hf, *gguf; } nm[] = {
			{ "model.embed_tokens.weight", "token_embd.weight" },
			{ "lm_head.weight", "output.weight" },
			{ "model.norm.weight", "output_norm.weight" },
			{ "input_layernorm.weight", "blk.0.attn_norm.weight" },
			{ "q_proj.weight", "blk.0.attn_q.weight" },
			{ "k_proj.weight", "blk.0.attn_k.weight" },
			{ "v_proj.weight", "blk.0.attn_v.weight" },
			{ "o_proj.weight", "blk.0.attn_output.weight" },
			{ "q_proj.bias", "blk.0.attn_q.bias" },
			{ "k_proj.bias", "blk.0.attn_k.bias" },
			{ "v_proj.bias", "blk.0.attn_v.bias" },
			{ "post_attention_layernorm.weight", "blk.0.ffn_norm.weight" },
			{ "gate_proj.weight", "blk.0.ffn_gate.weight" },
			{ "up_proj.weight", "blk.0.ffn_up.weight" },
			{ "down_proj.weight", "blk.0.ffn_down.weight" },
		};
		const model_tensor *mt = NULL;
		for (size_t j = 0; j < sizeof(nm) / sizeof(nm[0]) && !mt; j++)
			if (strstr(t[i].name, nm[j].hf))
				mt = model_find(m, nm[j].gguf);
		if (!mt)
			print_error("%s not found\n", t[i].name);
		assert_non_null(mt);
		/* PyTorch [rows, cols] -> ne = {cols, rows} */
		assert_int_equal(mt->n_dims, t[i].nd);
		assert_int_equal(mt->ne[0], t[i].shape[t[i].nd - 1]);
		assert_int_equal(mt->ne[1], t[i].nd == 2 ? t[i].shape[0] : 1);
		int want_type = strcmp(t[i].dtype, "F32") == 0   ? KN_TYPE_F32
				: strcmp(t[i].dtype, "F16") == 0 ? KN_TYPE_F16
								 : KN_TYPE_BF16;
		assert_int_equal(mt->type, want_type);
		size_t cnt = (size_t)mt->ne[0] * (size_t)mt->ne[1];
		uint32_t h = hash(t[i].name);
		for (size_t k = 0; k < cnt; k += 1 + cnt / 97) {
			float w = pattern(h, k), g = tensor_value(mt, k);
			assert_true(w - g < 1e-2f && g - w < 1e-2f);
		}
	}
}

static void test_tiny_loads(void **state)
{
	(void)state;
	model *m = NULL;
	qs_error e = { 0 };

	/* single file, llama, untied; inv_freq skipped */
	const char *d = tiny_dir("tiny-single", "llama", "");
	tiny_weights(d, "model.safetensors", NULL, NULL, 0);
	int rc = model_open(d, NULL, &m, &e);
	if (rc)
		print_error("%s\n", e.msg);
	assert_int_equal(rc, 0);
	assert_string_equal(m->format, "hf");
	assert_string_equal(m->cfg.arch, "llama");
	assert_int_equal(m->n_tensors, N_TINY - 1);
	assert_int_equal(m->cfg.head_dim, 4);
	assert_int_equal(m->cfg.n_kv_heads, 1);
	assert_int_equal(m->cfg.rope_style, MODEL_ROPE_NEOX);
	assert_true(m->cfg.rope_theta == 10000.0f);
	assert_int_equal(m->cfg.tied, 0);
	assert_int_equal(m->cfg.attn_bias, 0);
	assert_ptr_not_equal(m->output, m->tok_embd);
	check_tiny_values(m, tiny_tensors, N_TINY);
	model_free(m);

	/* tied: lm_head absent; a stored lm_head is ignored */
	d = tiny_dir("tiny-tied", "mistral", ",\"tie_word_embeddings\":true,\"sliding_window\":32");
	tiny_weights(d, "model.safetensors", "lm_head.weight", NULL, 0);
	assert_int_equal(model_open(d, NULL, &m, &e), 0);
	assert_string_equal(m->cfg.arch, "mistral");
	assert_int_equal(m->cfg.tied, 1);
	assert_int_equal(m->cfg.ctx, 32);
	assert_ptr_equal(m->output, m->tok_embd);
	assert_null(model_find(m, "output.weight"));
	model_free(m);
	tiny_weights(d, "model.safetensors", NULL, NULL, 0);
	assert_int_equal(model_open(d, NULL, &m, &e), 0);
	assert_ptr_equal(m->output, m->tok_embd);
	model_free(m);

	/* qwen2 with biases, sharded over two files, explicit head_dim/theta */
	d = tiny_dir("tiny-qwen", "qwen2", ",\"head_dim\":4,\"rope_theta\":1000000.0");
	{
		struct tw a[8], b[16];
		int na = 0, nb = 0;
		for (int i = 0; i < N_TINY; i++) {
			if (i < 5)
				a[na++] = tiny_tensors[i];
			else
				b[nb++] = tiny_tensors[i];
		}
		for (int i = 0; i < 3; i++)
			b[nb++] = qwen_biases[i];
		write_st(tpath("tiny-qwen/s1.safetensors"), a, na);
		write_st(tpath("tiny-qwen/s2.safetensors"), b, nb);
		char idx[8192];
		size_t o = (size_t)snprintf(idx, sizeof(idx), "{\"metadata\":{},\"weight_map\":{");
		for (int i = 0; i < na; i++)
			o += (size_t)snprintf(idx + o, sizeof(idx) - o, "%s\"%s\":\"s1.safetensors\"",
					      i ? "," : "", a[i].name);
		for (int i = 0; i < nb; i++)
			o += (size_t)snprintf(idx + o, sizeof(idx) - o, ",\"%s\":\"s2.safetensors\"",
					      b[i].name);
		snprintf(idx + o, sizeof(idx) - o, "}}");
		write_text(d, "model.safetensors.index.json", idx);
		rc = model_open(d, NULL, &m, &e);
		if (rc)
			print_error("%s\n", e.msg);
		assert_int_equal(rc, 0);
		assert_string_equal(m->cfg.arch, "qwen2");
		assert_int_equal(m->cfg.attn_bias, 1);
		assert_true(m->cfg.rope_theta == 1000000.0f);
		assert_int_equal(m->n_tensors, N_TINY - 1 + 3);
		assert_non_null(m->layers[0].bq);
		check_tiny_values(m, a, na);
		check_tiny_values(m, b, nb);
		model_free(m);
	}

	/* an unpadded header leaves F32 data unaligned: the loader copies it */
	d = tiny_dir("tiny-unaligned", "llama", "");
	tiny_weights(d, "model.safetensors", NULL, NULL, 0);
	{
		size_t len;
		char *p = tpath("tiny-unaligned/model.safetensors");
		unsigned char *buf = (unsigned char *)tu_read_file(p, &len);
		assert_non_null(buf);
		uint64_t hl = rd64(buf);
		/* drop the 8-byte-alignment padding, then pad to an odd length */
		uint64_t nl = hl;
		while (nl > 0 && buf[8 + nl - 1] == ' ')
			nl--;
		uint64_t pad = nl % 2 ? 2 : 1;
		unsigned char *out = malloc(len + 2);
		assert_non_null(out);
		for (int i = 0; i < 8; i++)
			out[i] = (unsigned char)((nl + pad) >> (8 * i));
		memcpy(out + 8, buf + 8, nl);
		memset(out + 8 + nl, ' ', pad);
		nl += pad;
		memcpy(out + 8 + nl, buf + 8 + hl, len - 8 - hl);
		assert_int_equal(tu_write_file(p, out, 8 + nl + (len - 8 - hl)), 0);
		free(out);
		free(buf);
	}
	rc = model_open(d, NULL, &m, &e);
	if (rc)
		print_error("%s\n", e.msg);
	assert_int_equal(rc, 0);
	for (int i = 0; i < m->n_tensors; i++)
		assert_int_equal((uintptr_t)m->tensors[i].data % (m->tensors[i].type ? 2 : 4), 0);
	check_tiny_values(m, tiny_tensors, N_TINY);
	model_free(m);
}

static void test_real_folder(void **state)
{
	(void)state;
	model *m = NULL;
	qs_error e = { 0 };
	char dir[512];
	snprintf(dir, sizeof(dir), "%s", tu_shared(HF_DIR));
	int rc = model_open(dir, NULL, &m, &e);
	if (rc)
		print_error("%s\n", e.msg);
	assert_int_equal(rc, 0);
	assert_string_equal(m->format, "hf");
	assert_string_equal(m->cfg.arch, "llama");
	assert_int_equal(m->cfg.dim, 384);
	assert_int_equal(m->cfg.n_layers, 8);
	assert_int_equal(m->cfg.n_heads, 6);
	assert_int_equal(m->cfg.n_kv_heads, 2);
	assert_int_equal(m->cfg.head_dim, 64);
	assert_int_equal(m->cfg.hidden, 1024);
	assert_int_equal(m->cfg.vocab, 8192);
	assert_int_equal(m->cfg.ctx, 512);
	assert_true(m->cfg.eps == 1e-5f);
	assert_true(m->cfg.rope_theta == 10000.0f);
	assert_int_equal(m->cfg.rope_style, MODEL_ROPE_NEOX);
	assert_int_equal(m->cfg.tied, 0);
	assert_int_equal(m->cfg.attn_bias, 0);
	assert_int_equal(m->n_tensors, 75);
	assert_int_equal(model_n_params(m), 18880896);
	assert_ptr_not_equal(m->output, m->tok_embd);
	assert_int_equal(m->tok_embd->type, KN_TYPE_BF16);
	assert_int_equal(m->tok_embd->ne[0], 384);
	assert_int_equal(m->tok_embd->ne[1], 8192);
	assert_int_equal(m->layers[7].wk->ne[0], 384);
	assert_int_equal(m->layers[7].wk->ne[1], 128);
	assert_int_equal(m->layers[7].w_down->ne[0], 1024);
	assert_int_equal(m->layers[7].w_down->ne[1], 384);
	assert_null(m->layers[0].bq);
	assert_int_equal(tok_n_vocab(m->tok), 8192);
	model_free(m);
}

/* The HF folder and the GGUF describe one model: same config (but RoPE
 * style), same tensor names, shapes and values; attn_q/attn_k rows differ by
 * the permutation between rotate-half (HF) and adjacent pairs (GGUF). */
static void test_real_folder_vs_gguf_model(void **state)
{
	(void)state;
	model *h = NULL, *g = NULL;
	qs_error e = { 0 };
	char dir[512], gpath[512];
	snprintf(dir, sizeof(dir), "%s", tu_shared(HF_DIR));
	snprintf(gpath, sizeof(gpath), "%s", tu_shared("models/debdoc-19m-f16.gguf"));
	int rc = model_open(dir, NULL, &h, &e);
	if (!rc && (rc = model_open(gpath, NULL, &g, &e)))
		print_error("%s\n", e.msg);
	assert_int_equal(rc, 0);
	const model_config *a = &h->cfg, *b = &g->cfg;
	assert_int_equal(a->vocab, b->vocab);
	assert_int_equal(a->dim, b->dim);
	assert_int_equal(a->n_layers, b->n_layers);
	assert_int_equal(a->n_heads, b->n_heads);
	assert_int_equal(a->n_kv_heads, b->n_kv_heads);
	assert_int_equal(a->head_dim, b->head_dim);
	assert_int_equal(a->hidden, b->hidden);
	assert_int_equal(a->ctx, b->ctx);
	assert_true(a->eps == b->eps && a->rope_theta == b->rope_theta);
	assert_int_equal(a->tied, b->tied);
	assert_int_equal(a->attn_bias, b->attn_bias);
	assert_int_equal(a->rope_style, MODEL_ROPE_NEOX);
	assert_int_equal(b->rope_style, MODEL_ROPE_NORM);
	assert_int_equal(h->n_tensors, g->n_tensors);
	int hd = a->head_dim;
	for (int i = 0; i < g->n_tensors; i++) {
		const model_tensor *gt = &g->tensors[i], *ht = model_find(h, gt->name);
		if (!ht)
			print_error("%s missing from the hf model\n", gt->name);
		assert_non_null(ht);
		assert_int_equal(ht->n_dims, gt->n_dims);
		assert_int_equal(ht->ne[0], gt->ne[0]);
		assert_int_equal(ht->ne[1], gt->ne[1]);
		int qk = strstr(gt->name, "attn_q.") || strstr(gt->name, "attn_k.");
		int64_t cols = gt->ne[0], rows = gt->ne[1];
		size_t bad = 0;
		for (int64_t r = 0; r < rows; r++) {
			/* GGUF row (head, i, j) holds HF row (head, j, i) */
			int64_t hr = r;
			if (qk) {
				int64_t head = r / hd, k = r % hd;
				hr = head * hd + (k % 2) * (hd / 2) + k / 2;
			}
			for (int64_t c = 0; c < cols; c += 7) {
				float x = tensor_value(ht, (size_t)(hr * cols + c));
				float y = tensor_value(gt, (size_t)(r * cols + c));
				float d = x > y ? x - y : y - x, m = x > 0 ? x : -x;
				bad += d > m / 1024 + 6e-8f;
			}
		}
		if (bad)
			print_error("%s: %zu values differ\n", gt->name, bad);
		assert_int_equal(bad, 0);
	}
	model_free(h);
	model_free(g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_real_shards),
		cmocka_unit_test(test_real_vs_gguf),
		cmocka_unit_test(test_synthetic_ok),
		cmocka_unit_test(test_corruption_matrix),
		cmocka_unit_test(test_every_truncation),
		cmocka_unit_test(test_folder_errors),
		cmocka_unit_test(test_tiny_loads),
		cmocka_unit_test(test_real_folder),
		cmocka_unit_test(test_real_folder_vs_gguf_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
