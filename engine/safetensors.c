#include "safetensors.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/types.h"

/* safetensors' own reader refuses headers above 100 MB. */
#define ST_MAX_HEADER 100000000ull

struct st_file {
	char *path;
	qs_map map;
	json_t *root;       /* owns the name and metadata strings */
	json_t *meta;       /* borrowed from root, or NULL */
	st_tensor *t;       /* (n) */
	int n;
};

static const struct st_dtype {
	const char *name;
	int type;
	size_t size;
} st_dtypes[] = {
	{ "F32", KN_TYPE_F32, 4 },
	{ "F16", KN_TYPE_F16, 2 },
	{ "BF16", KN_TYPE_BF16, 2 },
};


static const struct st_dtype *find_dtype(const char *s)
{
	for (size_t i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++)
		if (strcmp(st_dtypes[i].name, s) == 0)
			return &st_dtypes[i];
	return NULL;
}

/* Fill t from one header entry; data_size bounds the offsets. begin is
 * returned for the overlap check. */
static int parse_entry(const char *path, const char *name, json_t *e, const unsigned char *base,
		       size_t data_size, st_tensor *t, size_t *begin, qs_error *err)
{
	char nm[112], tmp[64];
	qs_printz(nm, sizeof(nm), name);
	if (!*name)
		return qs_err(err, QS_EFORMAT, "%s: tensor with an empty name", path);
	if (!json_is_object(e))
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': entry is not an object", path, nm);

	json_t *dt = json_object_get(e, "dtype");
	if (!dt)
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': missing dtype", path, nm);
	if (!json_is_string(dt))
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': dtype is not a string", path, nm);
	const struct st_dtype *d = find_dtype(json_string_value(dt));
	if (!d)
		return qs_err(err, QS_EUNSUPP,
			      "%s: tensor '%s': unsupported dtype '%s' (want F32, F16 or BF16)",
			      path, nm, qs_printz(tmp, sizeof(tmp), json_string_value(dt)));

	json_t *sh = json_object_get(e, "shape");
	if (!sh)
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': missing shape", path, nm);
	if (!json_is_array(sh))
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': shape is not an array", path, nm);
	size_t nd = json_array_size(sh);
	if (nd > ST_MAX_DIMS)
		return qs_err(err, QS_EUNSUPP, "%s: tensor '%s': shape has %zu dims (max %d)",
			      path, nm, nd, ST_MAX_DIMS);
	size_t count = 1;
	for (size_t i = 0; i < nd; i++) {
		json_t *v = json_array_get(sh, i);
		if (!json_is_integer(v))
			return qs_err(err, QS_EFORMAT, "%s: tensor '%s': shape[%zu] is not an integer",
				      path, nm, i);
		json_int_t x = json_integer_value(v);
		if (x < 0)
			return qs_err(err, QS_EFORMAT, "%s: tensor '%s': shape[%zu] = %lld is negative",
				      path, nm, i, (long long)x);
		if ((unsigned long long)x > SIZE_MAX ||
		    __builtin_mul_overflow(count, (size_t)x, &count))
			return qs_err(err, QS_EFORMAT, "%s: tensor '%s': shape element count overflows",
				      path, nm);
		t->shape[i] = x;
	}
	size_t nbytes;
	if (__builtin_mul_overflow(count, d->size, &nbytes))
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': shape byte size overflows", path, nm);

	json_t *off = json_object_get(e, "data_offsets");
	if (!off)
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': missing data_offsets", path, nm);
	if (!json_is_array(off))
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': data_offsets is not an array",
			      path, nm);
	if (json_array_size(off) != 2)
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': data_offsets has %zu entries (want 2)",
			      path, nm, json_array_size(off));
	json_int_t be[2];
	for (int i = 0; i < 2; i++) {
		json_t *v = json_array_get(off, (size_t)i);
		if (!json_is_integer(v) || json_integer_value(v) < 0)
			return qs_err(err, QS_EFORMAT,
				      "%s: tensor '%s': data_offsets[%d] is not a non-negative integer",
				      path, nm, i);
		be[i] = json_integer_value(v);
	}
	if (be[0] > be[1])
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': data_offsets begin %lld > end %lld",
			      path, nm, (long long)be[0], (long long)be[1]);
	if ((unsigned long long)be[1] > data_size)
		return qs_err(err, QS_EFORMAT,
			      "%s: tensor '%s': data_offsets end %lld past end of data (%zu)",
			      path, nm, (long long)be[1], data_size);
	size_t span = (size_t)(be[1] - be[0]);
	if (span != nbytes)
		return qs_err(err, QS_EFORMAT,
			      "%s: tensor '%s': data_offsets span %zu bytes, %s shape needs %zu",
			      path, nm, span, d->name, nbytes);
	t->name = name;
	t->type = d->type;
	t->n_dims = (int)nd;
	t->data = base + be[0];
	t->nbytes = nbytes;
	*begin = (size_t)be[0];
	return 0;
}

struct span {
	size_t begin, end;
	int idx;
};

static int span_cmp(const void *a, const void *b)
{
	const struct span *x = a, *y = b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return 0;
}

/* Parse the header of the mapped file f->map. */
static int parse(st_file *f, qs_error *err)
{
	const char *path = f->path;
	const unsigned char *p = f->map.data;
	size_t size = f->map.size;
	char tmp[160];
	if (size < 8)
		return qs_err(err, QS_EFORMAT, "%s: file too short (%zu bytes) for the header length",
			      path, size);
	unsigned long long hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | p[i];
	if (hlen > ST_MAX_HEADER)
		return qs_err(err, QS_EFORMAT, "%s: header length %llu is absurd (limit %llu)", path,
			      hlen, ST_MAX_HEADER);
	if (hlen > size - 8)
		return qs_err(err, QS_EFORMAT, "%s: header length %llu past end of file (%zu bytes)",
			      path, hlen, size);
	const unsigned char *base = p + 8 + hlen;
	size_t data_size = size - 8 - (size_t)hlen;

	json_error_t je;
	f->root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
	if (!f->root)
		return qs_err(err, QS_EFORMAT, "%s: header: invalid json: %s (column %d)", path,
			      qs_printz(tmp, sizeof(tmp), je.text), je.column);
	if (!json_is_object(f->root))
		return qs_err(err, QS_EFORMAT, "%s: header is not a json object", path);

	size_t n = json_object_size(f->root);
	f->meta = json_object_get(f->root, "__metadata__");
	if (f->meta) {
		n--;
		if (!json_is_object(f->meta))
			return qs_err(err, QS_EFORMAT, "%s: __metadata__ is not an object", path);
		const char *k;
		json_t *v;
		json_object_foreach(f->meta, k, v) {
			if (!json_is_string(v))
				return qs_err(err, QS_EFORMAT, "%s: __metadata__ '%s' is not a string",
					      path, qs_printz(tmp, sizeof(tmp), k));
		}
	}
	if (n > (size_t)1 << 24)
		return qs_err(err, QS_EFORMAT, "%s: %zu tensors is absurd", path, n);
	f->t = calloc(n ? n : 1, sizeof(*f->t));
	struct span *sp = calloc(n ? n : 1, sizeof(*sp));
	if (!f->t || !sp) {
		free(sp);
		return qs_err(err, QS_ENOMEM, "%s: out of memory", path);
	}

	int rc = 0;
	const char *k;
	json_t *v;
	json_object_foreach(f->root, k, v) {
		if (v == f->meta)
			continue;
		st_tensor *t = &f->t[f->n];
		size_t begin = 0;
		if ((rc = parse_entry(path, k, v, base, data_size, t, &begin, err)))
			goto out;
		sp[f->n].begin = begin;
		sp[f->n].end = begin + t->nbytes;
		sp[f->n].idx = f->n;
		f->n++;
	}

	/* No two tensors may share a byte; empty tensors share nothing. */
	qsort(sp, (size_t)f->n, sizeof(*sp), span_cmp);
	int prev = -1;
	for (int i = 0; i < f->n; i++) {
		if (sp[i].begin == sp[i].end)
			continue;
		if (prev >= 0 && sp[i].begin < sp[prev].end) {
			char a[112];
			rc = qs_err(err, QS_EFORMAT,
				    "%s: tensors '%s' and '%s' overlap (data_offsets %zu < %zu)", path,
				    qs_printz(a, sizeof(a), f->t[sp[prev].idx].name),
				    qs_printz(tmp, sizeof(tmp), f->t[sp[i].idx].name), sp[i].begin,
				    sp[prev].end);
			goto out;
		}
		prev = i;
	}
out:
	free(sp);
	return rc;
}

int st_open(const char *path, st_file **out, qs_error *err)
{
	*out = NULL;
	st_file *f = calloc(1, sizeof(*f));
	if (!f || !(f->path = strdup(path))) {
		free(f);
		return qs_err(err, QS_ENOMEM, "%s: out of memory", path);
	}
	int rc = qs_map_open(&f->map, path, err);
	if (!rc)
		rc = parse(f, err);
	if (rc) {
		st_close(f);
		return rc;
	}
	*out = f;
	return 0;
}

void st_close(st_file *f)
{
	if (!f)
		return;
	qs_map_close(&f->map);
	json_decref(f->root);
	free(f->t);
	free(f->path);
	free(f);
}

const char *st_path(const st_file *f)
{
	return f->path;
}

int st_count(const st_file *f)
{
	return f->n;
}

const st_tensor *st_tensor_at(const st_file *f, int i)
{
	return i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const st_tensor *st_find(const st_file *f, const char *name)
{
	for (int i = 0; i < f->n; i++)
		if (strcmp(f->t[i].name, name) == 0)
			return &f->t[i];
	return NULL;
}

const char *st_meta(const st_file *f, const char *key)
{
	return f->meta ? json_string_value(json_object_get(f->meta, key)) : NULL;
}

qs_map st_take_map(st_file *f)
{
	qs_map m = f->map;
	f->map.data = NULL;
	f->map.size = 0;
	return m;
}
