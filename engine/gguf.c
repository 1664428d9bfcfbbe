#include "gguf.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../kernels/types.h"
#include "mapfile.h"

typedef struct kv {
	gguf_str key;
	uint32_t type;
	const unsigned char *val; /* value bytes (for arrays: first element) */
	uint32_t arr_type;
	uint64_t arr_n;
	gguf_str *strs;           /* string arrays: parsed elements */
} kv;

struct gguf_file {
	char path[1024];
	qs_map map;
	uint32_t version;
	size_t alignment;
	kv *kvs;
	int n_kv;
	gguf_tensor_info *tensors;
	int n_tensors;
};

static const size_t scalar_size[GGUF_VTYPE_COUNT] = {
	[GGUF_UINT8] = 1, [GGUF_INT8] = 1, [GGUF_UINT16] = 2, [GGUF_INT16] = 2,
	[GGUF_UINT32] = 4, [GGUF_INT32] = 4, [GGUF_FLOAT32] = 4, [GGUF_BOOL] = 1,
	[GGUF_UINT64] = 8, [GGUF_INT64] = 8, [GGUF_FLOAT64] = 8,
};

static const char *vtype_name(uint32_t t)
{
	static const char *n[GGUF_VTYPE_COUNT] = {
		"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
		"bool", "string", "array", "uint64", "int64", "float64",
	};
	return t < GGUF_VTYPE_COUNT ? n[t] : "unknown";
}

/* ggml type names, for messages about types we do not load */
static const char *ggml_type_name(uint32_t t)
{
	static const char *n[] = {
		"f32", "f16", "q4_0", "q4_1", "q4_2", "q4_3", "q5_0", "q5_1", "q8_0", "q8_1",
		"q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_k", "iq2_xxs", "iq2_xs", "iq3_xxs",
		"iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "i8", "i16", "i32", "i64", "f64",
		"iq1_m", "bf16", "q4_0_4_4", "q4_0_4_8", "q4_0_8_8", "tq1_0", "tq2_0",
		"iq4_nl_4_4", "iq4_nl_4_8", "iq4_nl_8_8", "mxfp4", "nvfp4", "q1_0",
	};
	return t < sizeof(n) / sizeof(n[0]) ? n[t] : "unknown";
}

typedef struct cur {
	const unsigned char *p, *end, *base;
	const char *path;
	qs_error *err;
} cur;

static int need(cur *c, uint64_t n, const char *what)
{
	if ((uint64_t)(c->end - c->p) < n)
		return qs_err(c->err, QS_EFORMAT, "%s: truncated at byte %zu reading %s", c->path,
			      (size_t)(c->p - c->base), what);
	return 0;
}

static uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int get_u32(cur *c, uint32_t *v, const char *what)
{
	if (need(c, 4, what))
		return QS_EFORMAT;
	*v = rd32(c->p);
	c->p += 4;
	return 0;
}

static int get_u64(cur *c, uint64_t *v, const char *what)
{
	if (need(c, 8, what))
		return QS_EFORMAT;
	*v = rd64(c->p);
	c->p += 8;
	return 0;
}

static int get_str(cur *c, gguf_str *s, const char *what)
{
	uint64_t n;
	if (get_u64(c, &n, what))
		return QS_EFORMAT;
	if ((uint64_t)(c->end - c->p) < n)
		return qs_err(c->err, QS_EFORMAT, "%s: %s: string length %llu past end of file",
			      c->path, what, (unsigned long long)n);
	s->s = (const char *)c->p;
	s->len = n;
	c->p += n;
	return 0;
}


static int str_eq(gguf_str a, const char *b)
{
	size_t n = strlen(b);
	return a.len == n && memcmp(a.s, b, n) == 0;
}

static int str_eq2(gguf_str a, gguf_str b)
{
	return a.len == b.len && memcmp(a.s, b.s, a.len) == 0;
}

/* Parse a value of type k->type at the cursor into k; key is printable. */
static int parse_value(cur *c, kv *k, const char *key)
{
	char what[160];
	snprintf(what, sizeof(what), "value of '%s'", key);
	if (k->type >= GGUF_VTYPE_COUNT)
		return qs_err(c->err, QS_EFORMAT, "%s: key '%s': unknown value type %u", c->path,
			      key, k->type);
	k->val = c->p;
	if (k->type == GGUF_STRING) {
		gguf_str s;
		return get_str(c, &s, what);
	}
	if (k->type != GGUF_ARRAY) {
		if (need(c, scalar_size[k->type], what))
			return QS_EFORMAT;
		if (k->type == GGUF_BOOL && *c->p > 1)
			return qs_err(c->err, QS_EFORMAT, "%s: key '%s': bool value %u", c->path, key,
				      *c->p);
		c->p += scalar_size[k->type];
		return 0;
	}
	if (get_u32(c, &k->arr_type, what) || get_u64(c, &k->arr_n, what))
		return QS_EFORMAT;
	if (k->arr_type == GGUF_ARRAY)
		return qs_err(c->err, QS_EFORMAT, "%s: key '%s': nested arrays are not supported",
			      c->path, key);
	if (k->arr_type >= GGUF_VTYPE_COUNT)
		return qs_err(c->err, QS_EFORMAT, "%s: key '%s': unknown array element type %u",
			      c->path, key, k->arr_type);
	k->val = c->p;
	if (k->arr_type != GGUF_STRING) {
		uint64_t bytes;
		if (__builtin_mul_overflow(k->arr_n, (uint64_t)scalar_size[k->arr_type], &bytes) ||
		    bytes > (uint64_t)(c->end - c->p))
			return qs_err(c->err, QS_EFORMAT,
				      "%s: key '%s': array of %llu %s past end of file", c->path,
				      key, (unsigned long long)k->arr_n, vtype_name(k->arr_type));
		if (k->arr_type == GGUF_BOOL)
			for (uint64_t j = 0; j < k->arr_n; j++)
				if (c->p[j] > 1)
					return qs_err(c->err, QS_EFORMAT,
						      "%s: key '%s': bool value %u at index %llu",
						      c->path, key, c->p[j], (unsigned long long)j);
		c->p += bytes;
		return 0;
	}
	/* each string needs at least 8 bytes: bound the count before allocating */
	if (k->arr_n > (uint64_t)(c->end - c->p) / 8)
		return qs_err(c->err, QS_EFORMAT, "%s: key '%s': array of %llu strings past end of file",
			      c->path, key, (unsigned long long)k->arr_n);
	k->strs = malloc((size_t)(k->arr_n ? k->arr_n : 1) * sizeof(gguf_str));
	if (!k->strs)
		return qs_err(c->err, QS_ENOMEM, "%s: key '%s': out of memory", c->path, key);
	for (uint64_t j = 0; j < k->arr_n; j++)
		if (get_str(c, &k->strs[j], what))
			return QS_EFORMAT;
	return 0;
}

static int cmp_off(const void *a, const void *b)
{
	const gguf_tensor_info *x = *(const gguf_tensor_info *const *)a;
	const gguf_tensor_info *y = *(const gguf_tensor_info *const *)b;
	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int cmp_str(const void *a, const void *b)
{
	const gguf_str *x = *(const gguf_str *const *)a, *y = *(const gguf_str *const *)b;
	size_t n = x->len < y->len ? (size_t)x->len : (size_t)y->len;
	int c = memcmp(x->s, y->s, n);
	if (c)
		return c;
	return x->len < y->len ? -1 : x->len > y->len;
}

/* First duplicate among n strings at base + i*stride, or NULL; each element
 * starts with its gguf_str (kv.key, gguf_tensor_info.name).
 * Sorting keeps this O(n log n): a hostile file may hold millions of keys. */
static const gguf_str *find_dup(const void *base, size_t stride, size_t n, int *nomem)
{
	*nomem = 0;
	if (n < 2)
		return NULL;
	const gguf_str **v = malloc(n * sizeof(*v));
	if (!v) {
		*nomem = 1;
		return NULL;
	}
	for (size_t i = 0; i < n; i++)
		v[i] = (const gguf_str *)((const char *)base + i * stride);
	qsort(v, n, sizeof(*v), cmp_str);
	const gguf_str *dup = NULL;
	for (size_t i = 1; i < n && !dup; i++)
		if (str_eq2(*v[i - 1], *v[i]))
			dup = v[i];
	free(v);
	return dup;
}

static int parse(gguf_file *g, qs_error *err)
{
	cur c = { g->map.data, g->map.data + g->map.size, g->map.data, g->path, err };
	char pr[128];
	if (g->map.size < 4 || memcmp(g->map.data, GGUF_MAGIC, 4) != 0)
		return qs_err(err, QS_EFORMAT, "%s: not a gguf file (bad magic)", g->path);
	c.p += 4;
	if (get_u32(&c, &g->version, "version"))
		return QS_EFORMAT;
	if (g->version != 2 && g->version != 3)
		return qs_err(err, QS_EFORMAT, "%s: gguf version %u not supported (need 2 or 3%s)",
			      g->path, g->version,
			      (g->version >> 16) ? "; big-endian files are not supported" : "");
	uint64_t n_tensors, n_kv;
	if (get_u64(&c, &n_tensors, "tensor count") || get_u64(&c, &n_kv, "kv count"))
		return QS_EFORMAT;
	size_t rest = (size_t)(c.end - c.p);
	/* a kv takes at least 8+1+4+1 bytes, a tensor info at least 8+1+4+8+4+8 */
	if (n_kv > rest / 14 || n_kv > (1u << 24))
		return qs_err(err, QS_EFORMAT, "%s: kv count %llu is absurd for a %zu-byte file",
			      g->path, (unsigned long long)n_kv, g->map.size);
	if (n_tensors > rest / 33 || n_tensors > (1u << 24))
		return qs_err(err, QS_EFORMAT, "%s: tensor count %llu is absurd for a %zu-byte file",
			      g->path, (unsigned long long)n_tensors, g->map.size);
	g->kvs = calloc((size_t)n_kv + 1, sizeof(kv));
	g->tensors = calloc((size_t)n_tensors + 1, sizeof(gguf_tensor_info));
	if (!g->kvs || !g->tensors)
		return qs_err(err, QS_ENOMEM, "%s: out of memory", g->path);

	g->alignment = GGUF_DEFAULT_ALIGNMENT;
	for (uint64_t i = 0; i < n_kv; i++) {
		kv *k = &g->kvs[i];
		char what[64];
		snprintf(what, sizeof(what), "key %llu", (unsigned long long)i);
		if (get_str(&c, &k->key, what))
			return QS_EFORMAT;
		qs_printable(pr, sizeof(pr), k->key.s, k->key.len, 100);
		if (k->key.len == 0)
			return qs_err(err, QS_EFORMAT, "%s: key %llu is empty", g->path,
				      (unsigned long long)i);
		if (memchr(k->key.s, 0, k->key.len))
			return qs_err(err, QS_EFORMAT, "%s: key %llu '%s' contains NUL", g->path,
				      (unsigned long long)i, pr);
		if (get_u32(&c, &k->type, pr))
			return QS_EFORMAT;
		g->n_kv = (int)i + 1; /* so gguf_close frees string arrays */
		if (parse_value(&c, k, pr))
			return QS_EFORMAT;
		if (str_eq(k->key, "general.alignment")) {
			if (k->type != GGUF_UINT32)
				return qs_err(err, QS_EFORMAT, "%s: general.alignment has type %s, want uint32",
					      g->path, vtype_name(k->type));
			uint32_t a = rd32(k->val);
			if (a == 0 || (a & (a - 1)) || a > (1u << 20))
				return qs_err(err, QS_EFORMAT,
					      "%s: general.alignment %u is not a power of two <= 1 MiB",
					      g->path, a);
			g->alignment = a;
		}
	}
	g->n_kv = (int)n_kv;
	int nomem;
	const gguf_str *dup = find_dup(g->kvs, sizeof(kv), (size_t)n_kv, &nomem);
	if (nomem)
		return qs_err(err, QS_ENOMEM, "%s: out of memory", g->path);
	if (dup)
		return qs_err(err, QS_EFORMAT, "%s: duplicate key '%s'", g->path,
			      qs_printable(pr, sizeof(pr), dup->s, dup->len, 100));

	for (uint64_t i = 0; i < n_tensors; i++) {
		gguf_tensor_info *t = &g->tensors[i];
		char what[64];
		snprintf(what, sizeof(what), "tensor info %llu", (unsigned long long)i);
		if (get_str(&c, &t->name, what))
			return QS_EFORMAT;
		const char *name = qs_printable(pr, sizeof(pr), t->name.s, t->name.len, 100);
		if (t->name.len == 0 || t->name.len >= 64 || memchr(t->name.s, 0, t->name.len))
			return qs_err(err, QS_EFORMAT,
				      "%s: tensor %llu: bad name '%s' (empty, NUL or >= 64 bytes)",
				      g->path, (unsigned long long)i, name);
		if (get_u32(&c, &t->n_dims, name))
			return QS_EFORMAT;
		if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
			return qs_err(err, QS_EFORMAT, "%s: tensor '%s': n_dims %u (want 1..4)", g->path,
				      name, t->n_dims);
		uint64_t nel = 1;
		for (int d = 0; d < GGUF_MAX_DIMS; d++)
			t->ne[d] = 1;
		for (uint32_t d = 0; d < t->n_dims; d++) {
			uint64_t v;
			if (get_u64(&c, &v, name))
				return QS_EFORMAT;
			if (v == 0 || v > INT64_MAX || __builtin_mul_overflow(nel, v, &nel) ||
			    nel > ((uint64_t)1 << 48))
				return qs_err(err, QS_EFORMAT, "%s: tensor '%s': dimension %u = %llu is absurd",
					      g->path, name, d, (unsigned long long)v);
			t->ne[d] = (int64_t)v;
		}
		uint32_t type;
		if (get_u32(&c, &type, name) || get_u64(&c, &t->offset, name))
			return QS_EFORMAT;
		t->type = type < KN_TYPE_COUNT ? (int)type : -1;
		const kn_type_traits *tr = kn_traits(t->type);
		if (!tr)
			return qs_err(err, QS_EFORMAT, "%s: tensor '%s': tensor type %u (%s) not supported",
				      g->path, name, type, ggml_type_name(type));
		if ((uint64_t)t->ne[0] % tr->block_size)
			return qs_err(err, QS_EFORMAT,
				      "%s: tensor '%s': row length %lld not a multiple of the %s block size %zu",
				      g->path, name, (long long)t->ne[0], tr->name, tr->block_size);
		uint64_t bytes = nel / tr->block_size * tr->type_size;
		t->nbytes = (size_t)bytes;
		if (t->offset % g->alignment)
			return qs_err(err, QS_EFORMAT, "%s: tensor '%s': offset %llu not aligned to %zu",
				      g->path, name, (unsigned long long)t->offset, g->alignment);
	}
	g->n_tensors = (int)n_tensors;
	dup = find_dup(g->tensors, sizeof(gguf_tensor_info), (size_t)n_tensors, &nomem);
	if (nomem)
		return qs_err(err, QS_ENOMEM, "%s: out of memory", g->path);
	if (dup)
		return qs_err(err, QS_EFORMAT, "%s: duplicate tensor '%s'", g->path,
			      qs_printable(pr, sizeof(pr), dup->s, dup->len, 100));

	/* data section starts at the next multiple of the alignment */
	size_t hdr = (size_t)(c.p - g->map.data);
	size_t data_start = (hdr + g->alignment - 1) / g->alignment * g->alignment;
	if (n_tensors && data_start > g->map.size)
		return qs_err(err, QS_EFORMAT, "%s: truncated: data section starts at %zu, file is %zu bytes",
			      g->path, data_start, g->map.size);
	size_t avail = g->map.size > data_start ? g->map.size - data_start : 0;
	for (int i = 0; i < g->n_tensors; i++) {
		gguf_tensor_info *t = &g->tensors[i];
		uint64_t end;
		if (__builtin_add_overflow(t->offset, (uint64_t)t->nbytes, &end) || end > avail)
			return qs_err(err, QS_EFORMAT,
				      "%s: tensor '%s': data [%llu, +%zu) past end of data section (%zu bytes)",
				      g->path, qs_printable(pr, sizeof(pr), t->name.s, t->name.len, 100),
				      (unsigned long long)t->offset, t->nbytes, avail);
		t->data = g->map.data + data_start + t->offset;
	}
	/* overlapping tensors: sort by offset and compare neighbours */
	if (g->n_tensors > 1) {
		const gguf_tensor_info **s = malloc((size_t)g->n_tensors * sizeof(*s));
		if (!s)
			return qs_err(err, QS_ENOMEM, "%s: out of memory", g->path);
		for (int i = 0; i < g->n_tensors; i++)
			s[i] = &g->tensors[i];
		qsort(s, (size_t)g->n_tensors, sizeof(*s), cmp_off);
		for (int i = 1; i < g->n_tensors; i++)
			if (s[i - 1]->offset + s[i - 1]->nbytes > s[i]->offset) {
				char pr2[128];
				int rc = qs_err(err, QS_EFORMAT, "%s: tensors '%s' and '%s' overlap",
						g->path,
						qs_printable(pr, sizeof(pr), s[i - 1]->name.s, s[i - 1]->name.len, 100),
						qs_printable(pr2, sizeof(pr2), s[i]->name.s, s[i]->name.len, 100));
				free(s);
				return rc;
			}
		free(s);
	}
	return 0;
}

int gguf_open(const char *path, gguf_file **out, qs_error *err)
{
	*out = NULL;
	gguf_file *g = calloc(1, sizeof(*g));
	if (!g)
		return qs_err(err, QS_ENOMEM, "%s: out of memory", path);
	snprintf(g->path, sizeof(g->path), "%s", path);
	int rc = qs_map_open(&g->map, path, err);
	if (rc == 0)
		rc = parse(g, err);
	if (rc) {
		gguf_close(g);
		return rc;
	}
	*out = g;
	return 0;
}

void gguf_close(gguf_file *g)
{
	if (!g)
		return;
	for (int i = 0; i < g->n_kv; i++)
		free(g->kvs[i].strs);
	free(g->kvs);
	free(g->tensors);
	qs_map_close(&g->map);
	free(g);
}

void gguf_take_map(gguf_file *g, const void **data, size_t *size)
{
	*data = g->map.data;
	*size = g->map.size;
	g->map.data = NULL;
	g->map.size = 0;
}

uint32_t gguf_version(const gguf_file *g) { return g->version; }
size_t gguf_alignment(const gguf_file *g) { return g->alignment; }
const char *gguf_path(const gguf_file *g) { return g->path; }
int gguf_n_kv(const gguf_file *g) { return g->n_kv; }
gguf_str gguf_key(const gguf_file *g, int i) { return g->kvs[i].key; }
int gguf_kv_type(const gguf_file *g, int i) { return (int)g->kvs[i].type; }
int gguf_arr_type(const gguf_file *g, int i) { return (int)g->kvs[i].arr_type; }
uint64_t gguf_arr_n(const gguf_file *g, int i) { return g->kvs[i].arr_n; }
int gguf_n_tensors(const gguf_file *g) { return g->n_tensors; }
const gguf_tensor_info *gguf_tensor(const gguf_file *g, int i) { return &g->tensors[i]; }

int gguf_find_key(const gguf_file *g, const char *key)
{
	for (int i = 0; i < g->n_kv; i++)
		if (str_eq(g->kvs[i].key, key))
			return i;
	return -1;
}

/* Read a scalar of numeric type t at p as int64 (ok=0 if it does not fit) or double. */
static int scalar_i64(uint32_t t, const unsigned char *p, int64_t *v)
{
	switch (t) {
	case GGUF_UINT8: *v = *p; return 1;
	case GGUF_INT8: *v = (int8_t)*p; return 1;
	case GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); *v = x; return 1; }
	case GGUF_INT16: { int16_t x; memcpy(&x, p, 2); *v = x; return 1; }
	case GGUF_UINT32: *v = rd32(p); return 1;
	case GGUF_INT32: *v = (int32_t)rd32(p); return 1;
	case GGUF_UINT64: { uint64_t x = rd64(p); if (x > INT64_MAX) return 0; *v = (int64_t)x; return 1; }
	case GGUF_INT64: *v = (int64_t)rd64(p); return 1;
	case GGUF_BOOL: *v = *p; return 1;
	default: return 0;
	}
}

static int scalar_f64(uint32_t t, const unsigned char *p, double *v)
{
	if (t == GGUF_FLOAT32) { float f; memcpy(&f, p, 4); *v = f; return 1; }
	if (t == GGUF_FLOAT64) { memcpy(v, p, 8); return 1; }
	int64_t i;
	if (scalar_i64(t, p, &i)) { *v = (double)i; return 1; }
	return 0;
}

static int lookup(const gguf_file *g, const char *key, const kv **k, qs_error *err)
{
	int i = gguf_find_key(g, key);
	if (i < 0)
		return qs_err(err, QS_EFORMAT, "%s: missing key '%s'", g->path, key);
	*k = &g->kvs[i];
	return 0;
}

int gguf_get_i64(const gguf_file *g, const char *key, int64_t *v, qs_error *err)
{
	const kv *k = NULL;
	if (lookup(g, key, &k, err))
		return QS_EFORMAT;
	if (k->type == GGUF_BOOL || k->type >= GGUF_VTYPE_COUNT || !scalar_size[k->type] ||
	    k->type == GGUF_FLOAT32 || k->type == GGUF_FLOAT64)
		return qs_err(err, QS_EFORMAT, "%s: key '%s' has type %s, want an integer", g->path,
			      key, vtype_name(k->type));
	if (!scalar_i64(k->type, k->val, v))
		return qs_err(err, QS_EFORMAT, "%s: key '%s' = %llu out of range", g->path, key,
			      (unsigned long long)rd64(k->val));
	return 0;
}

int gguf_get_f64(const gguf_file *g, const char *key, double *v, qs_error *err)
{
	const kv *k = NULL;
	if (lookup(g, key, &k, err))
		return QS_EFORMAT;
	if (k->type == GGUF_BOOL || k->type >= GGUF_VTYPE_COUNT || !scalar_f64(k->type, k->val, v))
		return qs_err(err, QS_EFORMAT, "%s: key '%s' has type %s, want a number", g->path,
			      key, vtype_name(k->type));
	if (!isfinite(*v))
		return qs_err(err, QS_EFORMAT, "%s: key '%s' is not finite", g->path, key);
	return 0;
}

int gguf_get_bool(const gguf_file *g, const char *key, int *v, qs_error *err)
{
	const kv *k = NULL;
	if (lookup(g, key, &k, err))
		return QS_EFORMAT;
	if (k->type != GGUF_BOOL)
		return qs_err(err, QS_EFORMAT, "%s: key '%s' has type %s, want bool", g->path, key,
			      vtype_name(k->type));
	*v = *k->val;
	return 0;
}

int gguf_get_str(const gguf_file *g, const char *key, gguf_str *v, qs_error *err)
{
	const kv *k = NULL;
	if (lookup(g, key, &k, err))
		return QS_EFORMAT;
	if (k->type != GGUF_STRING)
		return qs_err(err, QS_EFORMAT, "%s: key '%s' has type %s, want string", g->path, key,
			      vtype_name(k->type));
	v->len = rd64(k->val);
	v->s = (const char *)k->val + 8;
	return 0;
}

double gguf_arr_f64(const gguf_file *g, int i, uint64_t j)
{
	const kv *k = &g->kvs[i];
	double v = 0;
	if (k->type == GGUF_ARRAY && j < k->arr_n && k->arr_type != GGUF_STRING)
		scalar_f64(k->arr_type, k->val + j * scalar_size[k->arr_type], &v);
	return v;
}

int64_t gguf_arr_i64(const gguf_file *g, int i, uint64_t j)
{
	const kv *k = &g->kvs[i];
	int64_t v = 0;
	if (k->type == GGUF_ARRAY && j < k->arr_n && k->arr_type != GGUF_STRING)
		scalar_i64(k->arr_type, k->val + j * scalar_size[k->arr_type], &v);
	return v;
}

gguf_str gguf_arr_str(const gguf_file *g, int i, uint64_t j)
{
	const kv *k = &g->kvs[i];
	gguf_str s = { "", 0 };
	if (k->strs && j < k->arr_n)
		s = k->strs[j];
	return s;
}

/* ------------------------------------------------------------------ writer */

typedef struct wkv {
	char *key;
	uint32_t type;
	unsigned char *val; /* encoded value bytes (for arrays: elem type, n, elems) */
	size_t len;
} wkv;

typedef struct wtensor {
	char *name;
	int type;
	uint32_t n_dims;
	int64_t ne[GGUF_MAX_DIMS];
	const void *data;
	size_t nbytes;
} wtensor;

struct gguf_writer {
	wkv *kvs;
	int n_kv, cap_kv;
	wtensor *ts;
	int n_t, cap_t;
	size_t alignment;
};

gguf_writer *gguf_writer_new(void)
{
	gguf_writer *w = calloc(1, sizeof(*w));
	if (w)
		w->alignment = GGUF_DEFAULT_ALIGNMENT;
	return w;
}

void gguf_writer_free(gguf_writer *w)
{
	if (!w)
		return;
	for (int i = 0; i < w->n_kv; i++) {
		free(w->kvs[i].key);
		free(w->kvs[i].val);
	}
	for (int i = 0; i < w->n_t; i++)
		free(w->ts[i].name);
	free(w->kvs);
	free(w->ts);
	free(w);
}

/* Add a kv whose key is klen bytes (no NUL inside). The writer refuses what
 * the reader would reject: an empty or duplicate key, a general.alignment
 * that is not a uint32 power of two <= 1 MiB. */
static int add_kv(gguf_writer *w, const char *key, size_t klen, uint32_t type, const void *val,
		  size_t len)
{
	if (klen == 0 || memchr(key, 0, klen) || type >= GGUF_VTYPE_COUNT)
		return QS_EUSAGE;
	for (int i = 0; i < w->n_kv; i++)
		if (strlen(w->kvs[i].key) == klen && memcmp(w->kvs[i].key, key, klen) == 0)
			return QS_EUSAGE;
	int is_align = klen == 17 && memcmp(key, "general.alignment", 17) == 0;
	uint32_t a = 0;
	if (is_align) {
		if (type != GGUF_UINT32 || len != 4)
			return QS_EUSAGE;
		a = rd32(val);
		if (a == 0 || (a & (a - 1)) || a > (1u << 20))
			return QS_EUSAGE;
	}
	if (w->n_kv == w->cap_kv) {
		if (w->cap_kv > INT32_MAX / 2)
			return QS_ENOMEM;
		int cap = w->cap_kv ? 2 * w->cap_kv : 32;
		void *n = realloc(w->kvs, (size_t)cap * sizeof(*w->kvs));
		if (!n)
			return QS_ENOMEM;
		w->kvs = n;
		w->cap_kv = cap;
	}
	wkv *k = &w->kvs[w->n_kv];
	k->key = malloc(klen + 1);
	k->val = malloc(len ? len : 1);
	if (!k->key || !k->val) {
		free(k->key);
		free(k->val);
		return QS_ENOMEM;
	}
	memcpy(k->key, key, klen);
	k->key[klen] = 0;
	if (len)
		memcpy(k->val, val, len);
	k->len = len;
	k->type = type;
	w->n_kv++;
	if (is_align)
		w->alignment = a;
	return 0;
}

int gguf_w_raw(gguf_writer *w, const char *key, uint32_t type, const void *val, size_t len)
{
	return add_kv(w, key, strlen(key), type, val, len);
}

int gguf_w_u32(gguf_writer *w, const char *key, uint32_t v) { return gguf_w_raw(w, key, GGUF_UINT32, &v, 4); }
int gguf_w_i32(gguf_writer *w, const char *key, int32_t v) { return gguf_w_raw(w, key, GGUF_INT32, &v, 4); }
int gguf_w_f32(gguf_writer *w, const char *key, float v) { return gguf_w_raw(w, key, GGUF_FLOAT32, &v, 4); }
int gguf_w_bool(gguf_writer *w, const char *key, int v) { unsigned char b = v != 0; return gguf_w_raw(w, key, GGUF_BOOL, &b, 1); }

int gguf_w_str(gguf_writer *w, const char *key, const char *v)
{
	uint64_t n = strlen(v);
	unsigned char *b = malloc(8 + n);
	if (!b)
		return QS_ENOMEM;
	memcpy(b, &n, 8);
	memcpy(b + 8, v, n);
	int rc = gguf_w_raw(w, key, GGUF_STRING, b, 8 + n);
	free(b);
	return rc;
}

int gguf_w_arr(gguf_writer *w, const char *key, uint32_t elem_type, const void *data, uint64_t n)
{
	if (elem_type >= GGUF_VTYPE_COUNT || !scalar_size[elem_type])
		return QS_EUSAGE;
	size_t bytes, total;
	if (n > SIZE_MAX || __builtin_mul_overflow((size_t)n, scalar_size[elem_type], &bytes) ||
	    __builtin_add_overflow(bytes, (size_t)12, &total))
		return QS_ENOMEM;
	if (elem_type == GGUF_BOOL)
		for (size_t j = 0; j < bytes; j++)
			if (((const unsigned char *)data)[j] > 1)
				return QS_EUSAGE;
	unsigned char *b = malloc(total);
	if (!b)
		return QS_ENOMEM;
	memcpy(b, &elem_type, 4);
	memcpy(b + 4, &n, 8);
	if (bytes)
		memcpy(b + 12, data, bytes);
	int rc = gguf_w_raw(w, key, GGUF_ARRAY, b, total);
	free(b);
	return rc;
}

int gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *strs, const size_t *lens,
		   uint64_t n)
{
	size_t bytes = 12;
	if (n > SIZE_MAX / 8)
		return QS_ENOMEM;
	for (uint64_t j = 0; j < n; j++)
		if (__builtin_add_overflow(bytes, (size_t)8, &bytes) ||
		    __builtin_add_overflow(bytes, lens[j], &bytes))
			return QS_ENOMEM;
	unsigned char *b = malloc(bytes), *p = b;
	if (!b)
		return QS_ENOMEM;
	uint32_t t = GGUF_STRING;
	memcpy(p, &t, 4);
	memcpy(p + 4, &n, 8);
	p += 12;
	for (uint64_t j = 0; j < n; j++) {
		uint64_t l = lens[j];
		memcpy(p, &l, 8);
		if (l)
			memcpy(p + 8, strs[j], lens[j]);
		p += 8 + lens[j];
	}
	int rc = gguf_w_raw(w, key, GGUF_ARRAY, b, bytes);
	free(b);
	return rc;
}

int gguf_w_copy_kv(gguf_writer *w, const gguf_file *g, int i)
{
	if (i < 0 || i >= g->n_kv)
		return QS_EUSAGE;
	const kv *k = &g->kvs[i];
	const unsigned char *start = k->val, *end;
	if (k->type == GGUF_STRING) {
		end = start + 8 + rd64(start);
	} else if (k->type == GGUF_ARRAY) {
		start = k->val - 12;
		if (k->arr_type == GGUF_STRING)
			end = k->arr_n ? (const unsigned char *)k->strs[k->arr_n - 1].s +
						 k->strs[k->arr_n - 1].len
				       : k->val;
		else
			end = k->val + k->arr_n * scalar_size[k->arr_type];
	} else {
		end = start + scalar_size[k->type];
	}
	/* the key is copied whole: keys have no NUL (checked when parsing) */
	return add_kv(w, k->key.s, (size_t)k->key.len, k->type, start, (size_t)(end - start));
}

int gguf_w_tensor(gguf_writer *w, const char *name, int type, uint32_t n_dims, const int64_t *ne,
		  const void *data, size_t nbytes)
{
	/* refuse what the reader would reject: bad name, type, shape or size */
	size_t nl = strlen(name);
	const kn_type_traits *tr = kn_traits(type);
	if (nl == 0 || nl >= 64 || !tr || n_dims < 1 || n_dims > GGUF_MAX_DIMS)
		return QS_EUSAGE;
	uint64_t nel = 1;
	for (uint32_t d = 0; d < n_dims; d++)
		if (ne[d] <= 0 || __builtin_mul_overflow(nel, (uint64_t)ne[d], &nel) ||
		    nel > ((uint64_t)1 << 48))
			return QS_EUSAGE;
	if ((uint64_t)ne[0] % tr->block_size || nel / tr->block_size * tr->type_size != nbytes ||
	    (nbytes && !data))
		return QS_EUSAGE;
	for (int i = 0; i < w->n_t; i++)
		if (strcmp(w->ts[i].name, name) == 0)
			return QS_EUSAGE;
	if (w->n_t == w->cap_t) {
		if (w->cap_t > INT32_MAX / 2)
			return QS_ENOMEM;
		int cap = w->cap_t ? 2 * w->cap_t : 64;
		void *n = realloc(w->ts, (size_t)cap * sizeof(*w->ts));
		if (!n)
			return QS_ENOMEM;
		w->ts = n;
		w->cap_t = cap;
	}
	wtensor *t = &w->ts[w->n_t];
	t->name = strdup(name);
	if (!t->name)
		return QS_ENOMEM;
	t->type = type;
	t->n_dims = n_dims;
	for (int d = 0; d < GGUF_MAX_DIMS; d++)
		t->ne[d] = d < (int)n_dims ? ne[d] : 1;
	t->data = data;
	t->nbytes = nbytes;
	w->n_t++;
	return 0;
}

static int wr(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n ? 0 : -1; }

static int pad(FILE *f, size_t *pos, size_t align)
{
	static const unsigned char zeros[64];
	size_t n = (align - *pos % align) % align;
	while (n) {
		size_t k = n < sizeof(zeros) ? n : sizeof(zeros);
		if (wr(f, zeros, k))
			return -1;
		n -= k;
		*pos += k;
	}
	return 0;
}

int gguf_writer_write(gguf_writer *w, const char *path, qs_error *err)
{
	/* a temporary name next to path, unique within this process too */
	static unsigned long counter;
	unsigned long serial = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
	char tmp[1200];
	int tl = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld.%lu", path, (long)getpid(), serial);
	if (tl < 0 || (size_t)tl >= sizeof(tmp))
		return qs_err(err, QS_EUSAGE, "%.200s...: path too long", path);
	FILE *f = fopen(tmp, "wbx");
	if (!f)
		return qs_err(err, QS_EIO, "%s: cannot create temporary file: %s", path,
			      strerror(errno));
	size_t pos = 0;
	int bad = 0;
	uint32_t version = 3;
	uint64_t nt = (uint64_t)w->n_t, nkv = (uint64_t)w->n_kv;
	bad |= wr(f, GGUF_MAGIC, 4) | wr(f, &version, 4) | wr(f, &nt, 8) | wr(f, &nkv, 8);
	pos += 24;
	for (int i = 0; i < w->n_kv && !bad; i++) {
		uint64_t kl = strlen(w->kvs[i].key);
		bad |= wr(f, &kl, 8) | wr(f, w->kvs[i].key, kl) | wr(f, &w->kvs[i].type, 4) |
		       wr(f, w->kvs[i].val, w->kvs[i].len);
		pos += 12 + kl + w->kvs[i].len;
	}
	uint64_t off = 0;
	for (int i = 0; i < w->n_t && !bad; i++) {
		wtensor *t = &w->ts[i];
		uint64_t nl = strlen(t->name);
		uint32_t type = (uint32_t)t->type;
		bad |= wr(f, &nl, 8) | wr(f, t->name, nl) | wr(f, &t->n_dims, 4);
		for (uint32_t d = 0; d < t->n_dims; d++)
			bad |= wr(f, &t->ne[d], 8);
		bad |= wr(f, &type, 4) | wr(f, &off, 8);
		pos += 8 + nl + 4 + 8 * t->n_dims + 12;
		off += (t->nbytes + w->alignment - 1) / w->alignment * w->alignment;
	}
	if (!bad)
		bad |= pad(f, &pos, w->alignment);
	for (int i = 0; i < w->n_t && !bad; i++) {
		bad |= wr(f, w->ts[i].data, w->ts[i].nbytes);
		pos += w->ts[i].nbytes;
		bad |= pad(f, &pos, w->alignment);
	}
	int e = bad ? errno : 0;
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		if (!bad)
			e = errno;
		bad = 1;
	}
	if (fclose(f) != 0) {
		if (!bad)
			e = errno;
		bad = 1;
	}
	if (bad) {
		unlink(tmp);
		return qs_err(err, QS_EIO, "%s: write failed: %s", path,
			      e ? strerror(e) : "short write");
	}
	if (rename(tmp, path) != 0) {
		e = errno;
		unlink(tmp);
		return qs_err(err, QS_EIO, "%s: cannot rename into place: %s", path, strerror(e));
	}
	return 0;
}
