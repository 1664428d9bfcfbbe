#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../kernels/qmatrix.h"
#include "../kernels/types.h"

struct model_priv {
	struct { const void *data; size_t size; } *maps;
	int n_maps, cap_maps;
	void **bufs;
	int n_bufs, cap_bufs;
	struct kn_qmatrix **qms;
	int n_qms, cap_qms;
	int cap_tensors;
};

model *model_alloc(const char *path, const char *format, qs_error *err)
{
	model *m = calloc(1, sizeof(*m));
	if (!m || !(m->priv = calloc(1, sizeof(*m->priv)))) {
		free(m);
		qs_err(err, QS_ENOMEM, "%s: out of memory", path);
		return NULL;
	}
	snprintf(m->path, sizeof(m->path), "%s", path);
	m->format = format;
	return m;
}

int model_keep_map(model *m, const void *data, size_t size, qs_error *err)
{
	model_priv *p = m->priv;
	if (p->n_maps == p->cap_maps) {
		int cap = p->cap_maps ? 2 * p->cap_maps : 4;
		void *n = realloc(p->maps, (size_t)cap * sizeof(*p->maps));
		if (!n)
			return qs_err(err, QS_ENOMEM, "%s: out of memory", m->path);
		p->maps = n;
		p->cap_maps = cap;
	}
	p->maps[p->n_maps].data = data;
	p->maps[p->n_maps].size = size;
	p->n_maps++;
	return 0;
}

int model_keep_buffer(model *m, void *buf, qs_error *err)
{
	model_priv *p = m->priv;
	if (p->n_bufs == p->cap_bufs) {
		int cap = p->cap_bufs ? 2 * p->cap_bufs : 8;
		void *n = realloc(p->bufs, (size_t)cap * sizeof(*p->bufs));
		if (!n) {
			free(buf);
			return qs_err(err, QS_ENOMEM, "%s: out of memory", m->path);
		}
		p->bufs = n;
		p->cap_bufs = cap;
	}
	p->bufs[p->n_bufs++] = buf;
	return 0;
}

int model_keep_qmatrix(model *m, struct kn_qmatrix *q, qs_error *err)
{
	model_priv *p = m->priv;
	if (p->n_qms == p->cap_qms) {
		int cap = p->cap_qms ? 2 * p->cap_qms : 32;
		void *n = realloc(p->qms, (size_t)cap * sizeof(*p->qms));
		if (!n) {
			kn_qmatrix_release(q);
			free(q);
			return qs_err(err, QS_ENOMEM, "%s: out of memory", m->path);
		}
		p->qms = n;
		p->cap_qms = cap;
	}
	p->qms[p->n_qms++] = q;
	return 0;
}

const model_tensor *model_find(const model *m, const char *name)
{
	for (int i = 0; i < m->n_tensors; i++)
		if (strcmp(m->tensors[i].name, name) == 0)
			return &m->tensors[i];
	return NULL;
}

int model_add_tensor(model *m, const char *src, const char *name, int type, int n_dims,
		     const int64_t *ne, const void *data, size_t nbytes, qs_error *err)
{
	if (strlen(name) >= sizeof(m->tensors[0].name))
		return qs_err(err, QS_EFORMAT, "%s: tensor name '%.80s...' too long", src, name);
	if (model_find(m, name))
		return qs_err(err, QS_EFORMAT, "%s: duplicate tensor '%s'", src, name);
	const kn_type_traits *tr = kn_traits(type);
	if (!tr)
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': unsupported type %d", src, name, type);
	if (n_dims < 1 || n_dims > 2)
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': %d dimensions (want 1 or 2)",
			      src, name, n_dims);
	int64_t e0 = ne[0], e1 = n_dims > 1 ? ne[1] : 1;
	if (e0 <= 0 || e1 <= 0)
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': bad shape", src, name);
	if ((size_t)e0 % tr->block_size)
		return qs_err(err, QS_EFORMAT,
			      "%s: tensor '%s': row length %lld not a multiple of %s block %zu",
			      src, name, (long long)e0, tr->name, tr->block_size);
	size_t row = kn_row_size(type, (size_t)e0), want;
	if (__builtin_mul_overflow(row, (size_t)e1, &want))
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': size overflows", src, name);
	if (want != nbytes)
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': %zu bytes, shape needs %zu",
			      src, name, nbytes, want);
	model_priv *p = m->priv;
	if (m->n_tensors == p->cap_tensors) {
		int cap = p->cap_tensors ? 2 * p->cap_tensors : 64;
		void *n = realloc(m->tensors, (size_t)cap * sizeof(*m->tensors));
		if (!n)
			return qs_err(err, QS_ENOMEM, "%s: out of memory", src);
		m->tensors = n;
		p->cap_tensors = cap;
	}
	model_tensor *t = &m->tensors[m->n_tensors++];
	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->type = type;
	t->n_dims = n_dims;
	t->ne[0] = e0;
	t->ne[1] = e1;
	t->data = data;
	t->nbytes = nbytes;
	return 0;
}

/* Look up a tensor and check its shape: rows x cols (rows == 0: a vector). */
static int bind(model *m, const char *src, const char *name, int64_t rows, int64_t cols,
		int optional, const model_tensor **out, qs_error *err)
{
	const model_tensor *t = model_find(m, name);
	*out = t;
	if (!t) {
		if (optional)
			return 0;
		return qs_err(err, QS_EFORMAT, "%s: missing tensor '%s'", src, name);
	}
	int64_t want_rows = rows ? rows : 1;
	if (t->ne[0] != cols || t->ne[1] != want_rows || (rows == 0 && t->n_dims != 1))
		return qs_err(err, QS_EFORMAT,
			      "%s: tensor '%s': shape [%lld, %lld], config wants [%lld, %lld]",
			      src, name, (long long)t->ne[0], (long long)t->ne[1],
			      (long long)cols, (long long)want_rows);
	if (rows == 0 && t->type != 0 && t->type != 1 && t->type != 30)
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': vectors must be f32/f16/bf16",
			      src, name);
	return 0;
}

int model_finish(model *m, const char *src, qs_error *err)
{
	model_config *c = &m->cfg;
	struct { const char *name; int v, lo, hi; } lim[] = {
		{ "vocab_size", c->vocab, 1, 1 << 22 },
		{ "embedding_length", c->dim, 1, 1 << 16 },
		{ "block_count", c->n_layers, 1, 1024 },
		{ "attention.head_count", c->n_heads, 1, 1024 },
		{ "attention.head_count_kv", c->n_kv_heads, 1, 1024 },
		{ "head_dim", c->head_dim, 2, 1024 },
		{ "feed_forward_length", c->hidden, 1, 1 << 20 },
		{ "context_length", c->ctx, 1, 1 << 24 },
	};
	for (size_t i = 0; i < sizeof(lim) / sizeof(lim[0]); i++)
		if (lim[i].v < lim[i].lo || lim[i].v > lim[i].hi)
			return qs_err(err, QS_EFORMAT, "%s: %s = %d out of range [%d, %d]", src,
				      lim[i].name, lim[i].v, lim[i].lo, lim[i].hi);
	if (c->n_heads % c->n_kv_heads)
		return qs_err(err, QS_EFORMAT,
			      "%s: attention.head_count %d not a multiple of head_count_kv %d",
			      src, c->n_heads, c->n_kv_heads);
	if (c->head_dim % 2)
		return qs_err(err, QS_EFORMAT, "%s: head_dim %d is odd", src, c->head_dim);
	if (!(c->eps > 0 && c->eps < 1))
		return qs_err(err, QS_EFORMAT, "%s: rms_norm_eps %g out of range", src, c->eps);
	if (!(c->rope_theta > 0 && c->rope_theta < 1e12f))
		return qs_err(err, QS_EFORMAT, "%s: rope_theta %g out of range", src, c->rope_theta);

	int64_t dim = c->dim, qd = (int64_t)c->n_heads * c->head_dim;
	int64_t kvd = (int64_t)c->n_kv_heads * c->head_dim, hid = c->hidden;
	int rc;
	if ((rc = bind(m, src, "token_embd.weight", c->vocab, dim, 0, &m->tok_embd, err)) ||
	    (rc = bind(m, src, "output_norm.weight", 0, dim, 0, &m->out_norm, err)) ||
	    (rc = bind(m, src, "output.weight", c->vocab, dim, c->tied, &m->output, err)))
		return rc;
	if (!m->output) {
		m->output = m->tok_embd;
		c->tied = 1;
	}
	m->layers = calloc((size_t)c->n_layers, sizeof(*m->layers));
	if (!m->layers)
		return qs_err(err, QS_ENOMEM, "%s: out of memory", src);
	for (int l = 0; l < c->n_layers; l++) {
		model_layer *L = &m->layers[l];
		char n[64];
#define B(field, nm, rows, cols, opt)                                          \
	snprintf(n, sizeof(n), "blk.%d." nm, l);                                   \
	if ((rc = bind(m, src, n, rows, cols, opt, &L->field, err)))               \
		return rc;
		B(attn_norm, "attn_norm.weight", 0, dim, 0)
		B(wq, "attn_q.weight", qd, dim, 0)
		B(wk, "attn_k.weight", kvd, dim, 0)
		B(wv, "attn_v.weight", kvd, dim, 0)
		B(wo, "attn_output.weight", dim, qd, 0)
		B(bq, "attn_q.bias", 0, qd, !c->attn_bias)
		B(bk, "attn_k.bias", 0, kvd, !c->attn_bias)
		B(bv, "attn_v.bias", 0, kvd, !c->attn_bias)
		B(ffn_norm, "ffn_norm.weight", 0, dim, 0)
		B(w_gate, "ffn_gate.weight", hid, dim, 0)
		B(w_up, "ffn_up.weight", hid, dim, 0)
		B(w_down, "ffn_down.weight", dim, hid, 0)
#undef B
	}
	if (!m->tok)
		return qs_err(err, QS_EFORMAT, "%s: no tokenizer", src);
	if (tok_n_vocab(m->tok) != c->vocab)
		return qs_err(err, QS_EFORMAT, "%s: tokenizer has %d pieces, model vocab is %d",
			      src, tok_n_vocab(m->tok), c->vocab);
	return 0;
}

size_t model_n_params(const model *m)
{
	size_t n = 0;
	for (int i = 0; i < m->n_tensors; i++)
		n += (size_t)m->tensors[i].ne[0] * (size_t)m->tensors[i].ne[1];
	return n;
}

void model_free(model *m)
{
	if (!m)
		return;
	model_priv *p = m->priv;
	if (p) {
		for (int i = 0; i < p->n_maps; i++)
			if (p->maps[i].data)
				munmap((void *)p->maps[i].data, p->maps[i].size);
		for (int i = 0; i < p->n_bufs; i++)
			free(p->bufs[i]);
		for (int i = 0; i < p->n_qms; i++) {
			kn_qmatrix_release(p->qms[i]);
			free(p->qms[i]);
		}
		free(p->qms);
		free(p->maps);
		free(p->bufs);
		free(p);
	}
	if (!m->base)
		tok_free(m->tok);
	free(m->tensors);
	free(m->layers);
	free(m);
}

static int has_suffix(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && strcmp(s + a - b, suf) == 0;
}

int model_open(const char *path, const model_open_opts *opts, model **out, qs_error *err)
{
	struct stat st;
	*out = NULL;
	if (stat(path, &st) != 0)
		return qs_err(err, QS_EIO, "%s: no such file or directory", path);
	if (S_ISDIR(st.st_mode))
		return model_load_hf(path, out, err);
	/* the GGUF magic wins over the file name */
	char magic[4] = { 0 };
	FILE *f = fopen(path, "rb");
	if (f) {
		if (fread(magic, 1, 4, f) != 4)
			memset(magic, 0, 4);
		fclose(f);
	}
	if (memcmp(magic, "GGUF", 4) != 0 && has_suffix(path, ".bin"))
		return model_load_llama2c(path, opts ? opts->tokenizer_path : NULL, out, err);
	return model_load_gguf(path, out, err);
}

model *model_derive(const model *base, qs_error *err)
{
	model *m = model_alloc(base->path, base->format, err);
	if (!m)
		return NULL;
	m->cfg = base->cfg;
	m->base = base;
	m->tok = base->tok;
	m->chat_template = base->chat_template;
	m->tensors = malloc(sizeof(model_tensor) * (size_t)(base->n_tensors ? base->n_tensors : 1));
	m->layers = malloc(sizeof(model_layer) * (size_t)base->cfg.n_layers);
	if (!m->tensors || !m->layers) {
		model_free(m);
		qs_err(err, QS_ENOMEM, "%s: out of memory", base->path);
		return NULL;
	}
	memcpy(m->tensors, base->tensors, sizeof(model_tensor) * (size_t)base->n_tensors);
	m->n_tensors = base->n_tensors;
	m->priv->cap_tensors = base->n_tensors;
	/* re-point the layer and head pointers into our own table */
#define REBIND(p) ((p) ? &m->tensors[(p) - base->tensors] : NULL)
	m->tok_embd = REBIND(base->tok_embd);
	m->out_norm = REBIND(base->out_norm);
	m->output = REBIND(base->output);
	for (int l = 0; l < base->cfg.n_layers; l++) {
		const model_layer *b = &base->layers[l];
		model_layer *L = &m->layers[l];
		L->attn_norm = REBIND(b->attn_norm);
		L->wq = REBIND(b->wq);
		L->wk = REBIND(b->wk);
		L->wv = REBIND(b->wv);
		L->wo = REBIND(b->wo);
		L->bq = REBIND(b->bq);
		L->bk = REBIND(b->bk);
		L->bv = REBIND(b->bv);
		L->ffn_norm = REBIND(b->ffn_norm);
		L->w_gate = REBIND(b->w_gate);
		L->w_up = REBIND(b->w_up);
		L->w_down = REBIND(b->w_down);
	}
#undef REBIND
	return m;
}

size_t model_tensor_bytes(const model_tensor *t)
{
	return t->q ? kn_qmatrix_bytes(t->q) : t->nbytes;
}

size_t model_bytes(const model *m)
{
	size_t n = 0;
	for (int i = 0; i < m->n_tensors; i++)
		n += model_tensor_bytes(&m->tensors[i]);
	return n;
}

float *model_tensor_f32(const model_tensor *t)
{
	size_t rows = (size_t)t->ne[1], cols = (size_t)t->ne[0];
	float *w = malloc(sizeof(float) * rows * cols);
	if (!w)
		return NULL;
	if (t->q) {
		kn_qmatrix_dequant(t->q, 0, (int)rows, w);
		return w;
	}
	const kn_type_traits *tr = kn_traits(t->type);
	size_t rs = kn_row_size(t->type, cols);
#pragma omp parallel for schedule(static)
	for (size_t r = 0; r < rows; r++)
		tr->to_float((const char *)t->data + r * rs, w + r * cols, cols);
	return w;
}

float *model_tensor_f32_orig(const model_tensor *t)
{
	float *w = model_tensor_f32(t);
	if (!w || (!t->row_scale && !t->col_scale))
		return w;
	const size_t rows = (size_t)t->ne[1], cols = (size_t)t->ne[0];
	for (size_t r = 0; r < rows; r++) {
		const float rs = t->row_scale ? t->row_scale[r] : 1.0f;
		float *wr = w + r * cols;
		for (size_t j = 0; j < cols; j++)
			wr[j] = t->col_scale ? rs * wr[j] / t->col_scale[j] : rs * wr[j];
	}
	return w;
}

void model_drop_pages(const model *m, const model_tensor *t)
{
	while (m->base) /* a derived model's data is its base's */
		m = m->base;
	const char *d = t->data;
	const model_priv *p = m->priv;
	for (int i = 0; d && i < p->n_maps; i++) {
		const char *b = p->maps[i].data;
		if (d < b || d + t->nbytes > b + p->maps[i].size)
			continue;
		/* only whole pages inside the tensor: neighbours stay resident */
		const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
		uintptr_t lo = ((uintptr_t)d + pg - 1) & ~(pg - 1), hi = ((uintptr_t)d + t->nbytes) & ~(pg - 1);
		if (hi > lo)
			madvise((void *)lo, hi - lo, MADV_DONTNEED);
		return;
	}
}
