/* gguf.h - GGUF v2/v3 reader and writer.
 *
 * The reader maps the file, validates every count, size and offset before
 * touching memory, and exposes key/values and tensor infos. Returned pointers
 * borrow from the mapping and stay valid until gguf_close (or until the
 * mapping is handed to a model with gguf_take_map). */
#ifndef QS_GGUF_H
#define QS_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

enum gguf_vtype {
	GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3,
	GGUF_UINT32 = 4, GGUF_INT32 = 5, GGUF_FLOAT32 = 6, GGUF_BOOL = 7,
	GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_UINT64 = 10, GGUF_INT64 = 11,
	GGUF_FLOAT64 = 12, GGUF_VTYPE_COUNT = 13,
};

typedef struct gguf_file gguf_file;

typedef struct gguf_str {
	const char *s; /* not NUL-terminated; borrowed */
	uint64_t len;
} gguf_str;

typedef struct gguf_tensor_info {
	gguf_str name;
	uint32_t n_dims;
	int64_t ne[GGUF_MAX_DIMS]; /* ne[0] = row length; unused dims are 1 */
	int type;                  /* kn_type (ggml numbering) */
	uint64_t offset;           /* relative to the data section */
	const void *data;          /* borrowed pointer into the mapping */
	size_t nbytes;
} gguf_tensor_info;

int gguf_open(const char *path, gguf_file **out, qs_error *err);
void gguf_close(gguf_file *g);
/* Transfer ownership of the mapping (e.g. to a model); gguf_close will then not
 * unmap it. */
void gguf_take_map(gguf_file *g, const void **data, size_t *size);

uint32_t gguf_version(const gguf_file *g);
size_t gguf_alignment(const gguf_file *g);
const char *gguf_path(const gguf_file *g);

int gguf_n_kv(const gguf_file *g);
int gguf_find_key(const gguf_file *g, const char *key); /* -1 if absent */
gguf_str gguf_key(const gguf_file *g, int i);
int gguf_kv_type(const gguf_file *g, int i);
/* For arrays: element type and count. */
int gguf_arr_type(const gguf_file *g, int i);
uint64_t gguf_arr_n(const gguf_file *g, int i);

/* Typed getters by key. They return 0 and set *v, or fill err naming the file
 * and key: missing (unless a default is used by the caller), wrong type, or
 * value out of range. Integer getters accept any integer type whose value
 * fits; float getters accept f32/f64. */
int gguf_get_i64(const gguf_file *g, const char *key, int64_t *v, qs_error *err);
int gguf_get_f64(const gguf_file *g, const char *key, double *v, qs_error *err);
int gguf_get_bool(const gguf_file *g, const char *key, int *v, qs_error *err);
int gguf_get_str(const gguf_file *g, const char *key, gguf_str *v, qs_error *err);
/* Element j of a numeric array kv i as double / int64; string array element. */
double gguf_arr_f64(const gguf_file *g, int i, uint64_t j);
int64_t gguf_arr_i64(const gguf_file *g, int i, uint64_t j);
gguf_str gguf_arr_str(const gguf_file *g, int i, uint64_t j);

int gguf_n_tensors(const gguf_file *g);
const gguf_tensor_info *gguf_tensor(const gguf_file *g, int i);

/* ---- writer: builds a GGUF v3 file in memory-light fashion, writes it
 * atomically (temporary file + rename). ---- */
typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w);
/* Scalars: type is one of the scalar GGUF_* types; value given as the union. */
int gguf_w_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_w_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_w_f32(gguf_writer *w, const char *key, float v);
int gguf_w_bool(gguf_writer *w, const char *key, int v);
int gguf_w_str(gguf_writer *w, const char *key, const char *v);
/* Raw kv: any type, value bytes already encoded (for tests and copying). */
int gguf_w_raw(gguf_writer *w, const char *key, uint32_t type, const void *val, size_t len);
/* Arrays of scalars (elem_type scalar, n elements of natural size) or strings. */
int gguf_w_arr(gguf_writer *w, const char *key, uint32_t elem_type, const void *data, uint64_t n);
int gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *strs,
		   const size_t *lens, uint64_t n);
/* Copy a kv from an open file. */
int gguf_w_copy_kv(gguf_writer *w, const gguf_file *g, int i);
/* A tensor: data is copied at write time from the pointer (must stay valid
 * until gguf_writer_write). ne[0] is the row length. */
int gguf_w_tensor(gguf_writer *w, const char *name, int type, uint32_t n_dims,
		  const int64_t *ne, const void *data, size_t nbytes);
int gguf_writer_write(gguf_writer *w, const char *path, qs_error *err);

#endif
