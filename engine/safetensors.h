/* safetensors.h - read one .safetensors file.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON, then the
 * data region. The JSON is an object mapping tensor names to
 * {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
 * start of the data region) plus an optional "__metadata__" object of strings.
 *
 * st_open maps the file and checks everything before handing out a pointer:
 * header bounds, JSON syntax and duplicate keys, dtypes (F32, F16, BF16), shapes
 * (at most 4 non-negative integer dims, no overflow), offsets inside the data
 * region, size == elements * dtype size, no two tensors overlapping. Bytes of
 * the data region that no tensor covers are allowed. */
#ifndef QS_SAFETENSORS_H
#define QS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "mapfile.h"

#define ST_MAX_DIMS 4

typedef struct st_file st_file;

typedef struct st_tensor {
	const char *name;             /* borrowed, valid until st_close */
	int type;                     /* kn_type: KN_TYPE_F32, KN_TYPE_F16 or KN_TYPE_BF16 */
	int n_dims;                   /* 0 (scalar) .. ST_MAX_DIMS */
	int64_t shape[ST_MAX_DIMS];   /* PyTorch order: shape[n_dims-1] varies fastest;
					 a matrix is [rows, cols] */
	const void *data;             /* (nbytes) borrowed from the mapping; may be
					 unaligned if the writer did not pad the header */
	size_t nbytes;
} st_tensor;

/* Map and validate path. On success *out owns the mapping and the parsed
 * header; free with st_close. */
int st_open(const char *path, st_file **out, qs_error *err);
/* Unmap (unless the mapping was taken with st_take_map) and free; accepts NULL. */
void st_close(st_file *f);

/* The path given to st_open (borrowed). */
const char *st_path(const st_file *f);
/* Number of tensors (the "__metadata__" entry is not one). */
int st_count(const st_file *f);
/* Tensor i, 0 <= i < st_count, in header order; borrowed, valid until
 * st_close. NULL when i is out of range. */
const st_tensor *st_tensor_at(const st_file *f, int i);
/* Tensor called name, or NULL. */
const st_tensor *st_find(const st_file *f, const char *name);
/* Value of "__metadata__"[key], or NULL; borrowed, valid until st_close. */
const char *st_meta(const st_file *f, const char *key);

/* Hand the mapping over to the caller (who unmaps it with qs_map_close or
 * gives it to model_keep_map). Tensor data pointers stay valid as long as the
 * caller keeps the mapping; names and metadata stay valid until st_close,
 * which then no longer unmaps. Returns a zeroed map if already taken. */
qs_map st_take_map(st_file *f);

#endif
