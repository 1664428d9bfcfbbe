/* llama2c.c - llama2.c checkpoints (Karpathy's run.c, legacy "version 0").
 *
 * The file is a header of 7 little-endian int32 followed by float32 arrays,
 * each stacked over layers where it is per layer, matrices row-major with one
 * row per output feature (run.c's matmul(xout, x, w, n, d) computes the
 * (d, n) matrix w times x):
 *
 *   int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 *         vocab_size (negative: a separate classifier wcls is stored at the end),
 *         seq_len
 *   token_embedding_table  (vocab, dim)
 *   rms_att_weight         (n_layers, dim)
 *   wq                     (n_layers, n_heads * head_size rows, dim)
 *   wk                     (n_layers, n_kv_heads * head_size rows, dim)
 *   wv                     (n_layers, n_kv_heads * head_size rows, dim)
 *   wo                     (n_layers, dim rows, n_heads * head_size)
 *   rms_ffn_weight         (n_layers, dim)
 *   w1 (gate)              (n_layers, hidden_dim rows, dim)
 *   w2 (down)              (n_layers, dim rows, hidden_dim)
 *   w3 (up)                (n_layers, hidden_dim rows, dim)
 *   rms_final_weight       (dim)
 *   freq_cis_real          (seq_len, head_size / 2)   unused: RoPE is recomputed
 *   freq_cis_imag          (seq_len, head_size / 2)   unused
 *   wcls                   (vocab, dim)               only when vocab_size < 0
 *
 * Since every array is float32 and laid out the way GGUF lays out tensors,
 * the tensors point straight into the mapping; nothing is copied. q/k rows
 * are in Meta's adjacent-pair RoPE order. The file carries no epsilon or
 * theta: run.c's constants (1e-5, 10000) apply. The vocabulary comes from a
 * separate tokenizer.bin. */
#include "model.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../kernels/types.h"
#include "mapfile.h"

#define L2C_HEADER_BYTES (7 * 4)
#define L2C_MAGIC_V1 0x616b3432u /* "ak42": llama2.c's later versioned formats */

/* Sizes an array's shape is made of. */
enum l2c_dim { D_ONE, D_DIM, D_QDIM, D_KVDIM, D_HIDDEN, D_VOCAB, D_SEQ, D_HALF, D_COUNT };

/* The arrays in file order. name: GGUF tensor name ("%d": the layer), or NULL
 * for arrays we skip. rows == D_ONE marks a vector. */
static const struct l2c_array {
	const char *name;
	int per_layer;
	enum l2c_dim rows, cols;
	int separate_only; /* present only when vocab_size < 0 */
} l2c_arrays[] = {
	{ "token_embd.weight", 0, D_VOCAB, D_DIM, 0 },
	{ "blk.%d.attn_norm.weight", 1, D_ONE, D_DIM, 0 },
	{ "blk.%d.attn_q.weight", 1, D_QDIM, D_DIM, 0 },
	{ "blk.%d.attn_k.weight", 1, D_KVDIM, D_DIM, 0 },
	{ "blk.%d.attn_v.weight", 1, D_KVDIM, D_DIM, 0 },
	{ "blk.%d.attn_output.weight", 1, D_DIM, D_QDIM, 0 },
	{ "blk.%d.ffn_norm.weight", 1, D_ONE, D_DIM, 0 },
	{ "blk.%d.ffn_gate.weight", 1, D_HIDDEN, D_DIM, 0 },
	{ "blk.%d.ffn_down.weight", 1, D_DIM, D_HIDDEN, 0 },
	{ "blk.%d.ffn_up.weight", 1, D_HIDDEN, D_DIM, 0 },
	{ "output_norm.weight", 0, D_ONE, D_DIM, 0 },
	{ NULL /* freq_cis_real */, 0, D_SEQ, D_HALF, 0 },
	{ NULL /* freq_cis_imag */, 0, D_SEQ, D_HALF, 0 },
	{ "output.weight", 0, D_VOCAB, D_DIM, 1 },
};
#define L2C_N_ARRAYS (sizeof(l2c_arrays) / sizeof(l2c_arrays[0]))

typedef struct l2c_header {
	int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
} l2c_header;

static int32_t rd_i32(const unsigned char *p)
{
	uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
		     (uint32_t)p[3] << 24;
	int32_t r;
	memcpy(&r, &v, sizeof(r));
	return r;
}

/* Check the header fields on their own. */
static int check_header(const char *path, const l2c_header *h, qs_error *err)
{
	const struct { const char *name; int32_t v; } f[] = {
		{ "dim", h->dim }, { "hidden_dim", h->hidden_dim }, { "n_layers", h->n_layers },
		{ "n_heads", h->n_heads }, { "n_kv_heads", h->n_kv_heads },
		{ "vocab_size", h->vocab_size }, { "seq_len", h->seq_len },
	};
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		/* vocab_size's sign is the classifier flag; INT32_MIN has no magnitude */
		int bad = f[i].v == 0 || f[i].v == INT32_MIN ||
			  (f[i].v < 0 && strcmp(f[i].name, "vocab_size") != 0);
		if (bad)
			return qs_err(err, QS_EFORMAT,
				      "%s: header field %s = %d, must be positive (not a llama2.c "
				      "checkpoint?)", path, f[i].name, (int)f[i].v);
	}
	if (h->dim % h->n_heads)
		return qs_err(err, QS_EFORMAT, "%s: header dim %d not a multiple of n_heads %d",
			      path, (int)h->dim, (int)h->n_heads);
	if (h->n_heads % h->n_kv_heads)
		return qs_err(err, QS_EFORMAT,
			      "%s: header n_heads %d not a multiple of n_kv_heads %d", path,
			      (int)h->n_heads, (int)h->n_kv_heads);
	if ((h->dim / h->n_heads) % 2)
		return qs_err(err, QS_EFORMAT,
			      "%s: header head size %d (dim %d / n_heads %d) is odd", path,
			      (int)(h->dim / h->n_heads), (int)h->dim, (int)h->n_heads);
	return 0;
}

/* Byte offset of every array (offs[L2C_N_ARRAYS] = end of data) for the given
 * classifier layout; returns nonzero when the arithmetic overflows. */
static int layout(const size_t *d, int separate, size_t n_layers, size_t *offs)
{
	size_t off = L2C_HEADER_BYTES;
	for (size_t i = 0; i < L2C_N_ARRAYS; i++) {
		const struct l2c_array *a = &l2c_arrays[i];
		offs[i] = off;
		if (a->separate_only && !separate)
			continue;
		size_t n;
		if (__builtin_mul_overflow(d[a->rows], d[a->cols], &n) ||
		    __builtin_mul_overflow(n, a->per_layer ? n_layers : 1, &n) ||
		    __builtin_mul_overflow(n, sizeof(float), &n) ||
		    __builtin_add_overflow(off, n, &off))
			return -1;
	}
	offs[L2C_N_ARRAYS] = off;
	return 0;
}

/* tokenizer.bin in the checkpoint's directory; nonzero if it does not fit. */
static int default_tokenizer_path(const char *path, char *buf, size_t cap)
{
	const char *slash = strrchr(path, '/');
	int n = slash ? snprintf(buf, cap, "%.*s/tokenizer.bin", (int)(slash - path), path)
		      : snprintf(buf, cap, "tokenizer.bin");
	return n < 0 || (size_t)n >= cap;
}

int model_load_llama2c(const char *path, const char *tokenizer_path, model **out, qs_error *err)
{
	qs_map map = { 0 };
	model *m = NULL;
	int rc;
	*out = NULL;

	if ((rc = qs_map_open(&map, path, err)))
		return rc;
	if (map.size >= 4 && (uint32_t)rd_i32(map.data) == L2C_MAGIC_V1) {
		rc = qs_err(err, QS_EUNSUPP,
			    "%s: llama2.c version %d checkpoint (magic ak42) not supported; "
			    "export it with --version 0", path,
			    map.size >= 8 ? (int)rd_i32(map.data + 4) : -1);
		goto fail;
	}
	if (map.size < L2C_HEADER_BYTES) {
		rc = qs_err(err, QS_EFORMAT,
			    "%s: file is %zu bytes, too short for the %d-byte llama2.c header",
			    path, map.size, L2C_HEADER_BYTES);
		goto fail;
	}
	l2c_header h;
	int32_t *hf[] = { &h.dim, &h.hidden_dim, &h.n_layers, &h.n_heads, &h.n_kv_heads,
			  &h.vocab_size, &h.seq_len };
	for (int i = 0; i < 7; i++)
		*hf[i] = rd_i32(map.data + 4 * i);
	if ((rc = check_header(path, &h, err)))
		goto fail;

	int separate = h.vocab_size < 0;
	int vocab = separate ? -h.vocab_size : h.vocab_size;
	int head_size = h.dim / h.n_heads;
	size_t d[D_COUNT];
	d[D_ONE] = 1;
	d[D_DIM] = (size_t)h.dim;
	d[D_QDIM] = (size_t)h.n_heads * (size_t)head_size;
	d[D_KVDIM] = (size_t)h.n_kv_heads * (size_t)head_size;
	d[D_HIDDEN] = (size_t)h.hidden_dim;
	d[D_VOCAB] = (size_t)vocab;
	d[D_SEQ] = (size_t)h.seq_len;
	d[D_HALF] = (size_t)head_size / 2;

	size_t offs[L2C_N_ARRAYS + 1], other[L2C_N_ARRAYS + 1];
	if (layout(d, separate, (size_t)h.n_layers, offs)) {
		rc = qs_err(err, QS_EFORMAT,
			    "%s: header (dim %d, hidden_dim %d, %d layers, vocab %d) describes "
			    "more than 2^64 bytes", path, (int)h.dim, (int)h.hidden_dim,
			    (int)h.n_layers, vocab);
		goto fail;
	}
	if (offs[L2C_N_ARRAYS] != map.size) {
		/* A size that fits the other classifier layout is worth a hint. */
		int fits_other = !layout(d, !separate, (size_t)h.n_layers, other) &&
				 other[L2C_N_ARRAYS] == map.size;
		rc = qs_err(err, QS_EFORMAT,
			    "%s: file is %zu bytes, header (dim %d, %d layers, vocab %d, %s "
			    "classifier) needs %zu%s", path, map.size, (int)h.dim,
			    (int)h.n_layers, vocab, separate ? "separate" : "shared",
			    offs[L2C_N_ARRAYS],
			    fits_other ? separate ? " (the size fits a shared classifier)"
						  : " (the size fits a separate classifier)"
				       : "");
		goto fail;
	}

	if (!(m = model_alloc(path, "llama2c", err))) {
		rc = err ? err->code : QS_ENOMEM;
		goto fail;
	}
	const unsigned char *base = map.data;
	if ((rc = model_keep_map(m, map.data, map.size, err)))
		goto fail;
	map.data = NULL; /* the model unmaps it now */
	map.size = 0;

	model_config *c = &m->cfg;
	snprintf(c->arch, sizeof(c->arch), "llama");
	c->vocab = vocab;
	c->dim = h.dim;
	c->n_layers = h.n_layers;
	c->n_heads = h.n_heads;
	c->n_kv_heads = h.n_kv_heads;
	c->head_dim = head_size;
	c->hidden = h.hidden_dim;
	c->ctx = h.seq_len;
	c->eps = 1e-5f;          /* run.c's rmsnorm */
	c->rope_theta = 10000.0f; /* run.c's RoPE */
	c->rope_style = MODEL_ROPE_NORM;
	c->tied = !separate;
	c->attn_bias = 0;

	for (size_t i = 0; i < L2C_N_ARRAYS; i++) {
		const struct l2c_array *a = &l2c_arrays[i];
		if (!a->name || (a->separate_only && !separate))
			continue;
		int64_t ne[2] = { (int64_t)d[a->cols], (int64_t)d[a->rows] };
		size_t nbytes = d[a->rows] * d[a->cols] * sizeof(float);
		int n_layers = a->per_layer ? h.n_layers : 1;
		for (int l = 0; l < n_layers; l++) {
			char name[64];
			snprintf(name, sizeof(name), a->name, l);
			const void *data = base + offs[i] + (size_t)l * nbytes;
			if ((rc = model_add_tensor(m, path, name, KN_TYPE_F32,
						   a->rows == D_ONE ? 1 : 2, ne, data, nbytes, err)))
				goto fail;
		}
	}

	char tokbuf[4096];
	if (!tokenizer_path) {
		if (default_tokenizer_path(path, tokbuf, sizeof(tokbuf))) {
			rc = qs_err(err, QS_EUSAGE, "%s: path too long to find tokenizer.bin "
				    "next to it; give its path with -z", path);
			goto fail;
		}
		tokenizer_path = tokbuf;
	}
	struct stat st;
	if (stat(tokenizer_path, &st) != 0) {
		rc = qs_err(err, QS_EIO, "%s: tokenizer for %s %s; give its path with -z",
			    tokenizer_path, path, errno == ENOENT ? "not found" : "unreadable");
		goto fail;
	}
	if ((rc = tok_load_llama2c(tokenizer_path, vocab, &m->tok, err)))
		goto fail;
	if ((rc = model_finish(m, path, err)))
		goto fail;
	*out = m;
	return 0;

fail:
	qs_map_close(&map);
	model_free(m);
	return rc;
}
