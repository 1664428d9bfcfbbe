/* gguf_model.c - build a model description from a GGUF file: llama.*
 * hyper-parameters, tokenizer.ggml.* vocabulary, tensors borrowed from the map. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "gguf.h"
#include "model.h"

/* Make sure a message from another module (the tokenizer builds its messages
 * without the file name) names the file. */
static int name_file(qs_error *err, const char *path, int rc)
{
	if (err && !strstr(err->msg, path)) {
		char m[sizeof(err->msg)];
		snprintf(m, sizeof(m), "%s", err->msg);
		qs_err(err, rc, "%s: %s", path, m);
	}
	return rc;
}


static int str_is(gguf_str a, const char *b)
{
	size_t n = strlen(b);
	return a.len == n && memcmp(a.s, b, n) == 0;
}

/* Integer hyper-parameter arch.key; def < 0 means required. */
static int hp_int(const gguf_file *g, const char *arch, const char *key, int64_t def,
		  int *out, qs_error *err)
{
	char k[128];
	snprintf(k, sizeof(k), "%s.%s", arch, key);
	int64_t v = def;
	if (gguf_find_key(g, k) >= 0 || def < 0)
		if (gguf_get_i64(g, k, &v, err))
			return QS_EFORMAT;
	if (v < 0 || v > (1 << 30))
		return qs_err(err, QS_EFORMAT, "%s: key '%s' = %lld out of range", gguf_path(g), k,
			      (long long)v);
	*out = (int)v;
	return 0;
}

static int hp_float(const gguf_file *g, const char *arch, const char *key, double def,
		    float *out, qs_error *err)
{
	char k[128];
	snprintf(k, sizeof(k), "%s.%s", arch, key);
	double v = def;
	if (gguf_find_key(g, k) >= 0 || def < 0)
		if (gguf_get_f64(g, k, &v, err))
			return QS_EFORMAT;
	*out = (float)v;
	return 0;
}

static int load_vocab(gguf_file *g, model *m, qs_error *err)
{
	const char *path = gguf_path(g);
	gguf_str tm;
	if (gguf_get_str(g, "tokenizer.ggml.model", &tm, err))
		return QS_EFORMAT;
	char pr[192];
	if (!str_is(tm, "llama"))
		return qs_err(err, QS_EUNSUPP,
			      "%s: tokenizer.ggml.model '%s' not supported yet (only 'llama' sentencepiece)",
			      path, qs_printable(pr, sizeof(pr), tm.s, tm.len, 64));
	int ti = gguf_find_key(g, "tokenizer.ggml.tokens");
	if (ti < 0)
		return qs_err(err, QS_EFORMAT, "%s: missing key 'tokenizer.ggml.tokens'", path);
	if (gguf_kv_type(g, ti) != GGUF_ARRAY || gguf_arr_type(g, ti) != GGUF_STRING)
		return qs_err(err, QS_EFORMAT, "%s: tokenizer.ggml.tokens is not a string array", path);
	uint64_t n = gguf_arr_n(g, ti);
	if (n == 0 || n > (1 << 22))
		return qs_err(err, QS_EFORMAT, "%s: tokenizer.ggml.tokens has %llu entries", path,
			      (unsigned long long)n);
	int si = gguf_find_key(g, "tokenizer.ggml.scores");
	int yi = gguf_find_key(g, "tokenizer.ggml.token_type");
	if (si >= 0 && (gguf_kv_type(g, si) != GGUF_ARRAY || gguf_arr_n(g, si) != n ||
			gguf_arr_type(g, si) == GGUF_STRING))
		return qs_err(err, QS_EFORMAT, "%s: tokenizer.ggml.scores must be %llu numbers", path,
			      (unsigned long long)n);
	if (yi >= 0 && (gguf_kv_type(g, yi) != GGUF_ARRAY || gguf_arr_n(g, yi) != n ||
			gguf_arr_type(g, yi) == GGUF_STRING))
		return qs_err(err, QS_EFORMAT, "%s: tokenizer.ggml.token_type must be %llu integers",
			      path, (unsigned long long)n);
	tok_vocab *v = tok_new((int)n, err);
	if (!v)
		return name_file(err, path, err && err->code ? err->code : QS_ENOMEM);
	m->tok = v;
	for (uint64_t j = 0; j < n; j++) {
		gguf_str s = gguf_arr_str(g, ti, j);
		float score = si >= 0 ? (float)gguf_arr_f64(g, si, j) : 0.0f;
		int type = yi >= 0 ? (int)gguf_arr_i64(g, yi, j) : TOK_NORMAL;
		int rc = tok_set(v, (int)j, s.s, (size_t)s.len, score, type, err);
		if (rc)
			return name_file(err, path, rc);
	}
	int64_t bos = -1, eos = -1, unk = -1;
	int adp = 1;
	if (gguf_find_key(g, "tokenizer.ggml.bos_token_id") >= 0 &&
	    gguf_get_i64(g, "tokenizer.ggml.bos_token_id", &bos, err))
		return QS_EFORMAT;
	if (gguf_find_key(g, "tokenizer.ggml.eos_token_id") >= 0 &&
	    gguf_get_i64(g, "tokenizer.ggml.eos_token_id", &eos, err))
		return QS_EFORMAT;
	if (gguf_find_key(g, "tokenizer.ggml.unknown_token_id") >= 0 &&
	    gguf_get_i64(g, "tokenizer.ggml.unknown_token_id", &unk, err))
		return QS_EFORMAT;
	if (gguf_find_key(g, "tokenizer.ggml.add_space_prefix") >= 0 &&
	    gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &adp, err))
		return QS_EFORMAT;
	int64_t ids[3] = { bos, eos, unk };
	const char *nm[3] = { "bos_token_id", "eos_token_id", "unknown_token_id" };
	for (int i = 0; i < 3; i++)
		if (ids[i] < -1 || ids[i] >= (int64_t)n)
			return qs_err(err, QS_EFORMAT, "%s: tokenizer.ggml.%s = %lld out of range",
				      path, nm[i], (long long)ids[i]);
	int rc = tok_finish(v, (int)bos, (int)eos, (int)unk, adp, path, err);
	if (rc)
		return name_file(err, path, rc);
	/* the chat template, if any, for the chat's prompt format */
	gguf_str ct;
	if (gguf_find_key(g, "tokenizer.chat_template") >= 0) {
		if (gguf_get_str(g, "tokenizer.chat_template", &ct, err))
			return name_file(err, path, QS_EFORMAT);
		char *t = strndup(ct.s, (size_t)ct.len);
		if (!t)
			return qs_err(err, QS_ENOMEM, "%s: out of memory", path);
		if (model_keep_buffer(m, t, err)) /* frees t */
			return QS_ENOMEM;
		m->chat_template = t;
	}
	return 0;
}

int model_load_gguf(const char *path, model **out, qs_error *err)
{
	*out = NULL;
	gguf_file *g = NULL;
	model *m = NULL;
	int rc = gguf_open(path, &g, err);
	if (rc)
		return rc;
	if (!(m = model_alloc(path, "gguf", err))) {
		rc = QS_ENOMEM;
		goto fail;
	}
	gguf_str a;
	if ((rc = gguf_get_str(g, "general.architecture", &a, err)))
		goto fail;
	/* compare the whole string: "llama\0x" is not "llama" */
	static const char *const archs[] = { "llama", "mistral", "qwen2" };
	const char *arch = NULL;
	for (size_t i = 0; i < sizeof(archs) / sizeof(archs[0]); i++)
		if (str_is(a, archs[i]))
			arch = archs[i];
	model_config *c = &m->cfg;
	if (!arch) {
		char pr[192];
		rc = qs_err(err, QS_EUNSUPP, "%s: general.architecture '%s' not supported (llama, mistral, qwen2)",
			    path, qs_printable(pr, sizeof(pr), a.s, a.len, 64));
		goto fail;
	}
	snprintf(c->arch, sizeof(c->arch), "%s", arch);
	if (strcmp(arch, "qwen2") == 0) {
		c->rope_style = MODEL_ROPE_NEOX;
		c->attn_bias = 1;
	} else {
		c->rope_style = MODEL_ROPE_NORM;
	}
	if ((rc = hp_int(g, arch, "context_length", -1, &c->ctx, err)) ||
	    (rc = hp_int(g, arch, "embedding_length", -1, &c->dim, err)) ||
	    (rc = hp_int(g, arch, "block_count", -1, &c->n_layers, err)) ||
	    (rc = hp_int(g, arch, "feed_forward_length", -1, &c->hidden, err)) ||
	    (rc = hp_int(g, arch, "attention.head_count", -1, &c->n_heads, err)) ||
	    (rc = hp_int(g, arch, "attention.head_count_kv", c->n_heads, &c->n_kv_heads, err)) ||
	    (rc = hp_float(g, arch, "attention.layer_norm_rms_epsilon", -1, &c->eps, err)) ||
	    (rc = hp_float(g, arch, "rope.freq_base", 10000.0, &c->rope_theta, err)))
		goto fail;
	if (c->n_heads <= 0) {
		rc = qs_err(err, QS_EFORMAT, "%s: %s.attention.head_count is 0", path, arch);
		goto fail;
	}
	int kl = c->dim / c->n_heads, rd;
	if ((rc = hp_int(g, arch, "attention.key_length", kl, &c->head_dim, err)) ||
	    (rc = hp_int(g, arch, "rope.dimension_count", c->head_dim, &rd, err)))
		goto fail;
	if (rd != c->head_dim) {
		rc = qs_err(err, QS_EUNSUPP, "%s: %s.rope.dimension_count %d != head dim %d (partial rope) not supported",
			    path, arch, rd, c->head_dim);
		goto fail;
	}
	char sk[128];
	snprintf(sk, sizeof(sk), "%s.rope.scaling.type", arch);
	if (gguf_find_key(g, sk) >= 0) {
		gguf_str st;
		if ((rc = gguf_get_str(g, sk, &st, err)))
			goto fail;
		if (!str_is(st, "none")) {
			char pr[192];
			rc = qs_err(err, QS_EUNSUPP, "%s: %s '%s' not supported", path, sk,
				    qs_printable(pr, sizeof(pr), st.s, st.len, 64));
			goto fail;
		}
	}
	for (int i = 0; i < gguf_n_tensors(g); i++) {
		const gguf_tensor_info *t = gguf_tensor(g, i);
		char name[64], pr[192];
		snprintf(name, sizeof(name), "%.*s", (int)t->name.len, t->name.s);
		if (strcmp(name, "rope_freqs.weight") == 0)
			continue; /* precomputed frequencies; we compute our own */
		/* names come from the file: only printable ones reach model messages */
		qs_printable(pr, sizeof(pr), t->name.s, t->name.len, 64);
		if (strcmp(pr, name) != 0) {
			rc = qs_err(err, QS_EFORMAT, "%s: tensor '%s': name is not printable ascii",
				    path, pr);
			goto fail;
		}
		if (t->n_dims > 2) {
			rc = qs_err(err, QS_EFORMAT, "%s: tensor '%s' has %u dimensions", path, name,
				    t->n_dims);
			goto fail;
		}
		/* kernels read f32 as float and block formats as 2-byte fields */
		size_t want_align = t->type == 0 ? 4 : 2;
		if ((uintptr_t)t->data % want_align) {
			rc = qs_err(err, QS_EFORMAT,
				    "%s: tensor '%s': data not %zu-byte aligned (general.alignment %zu)",
				    path, name, want_align, gguf_alignment(g));
			goto fail;
		}
		if ((rc = model_add_tensor(m, path, name, t->type, (int)t->n_dims, t->ne, t->data,
					   t->nbytes, err)))
			goto fail;
	}
	const model_tensor *te = model_find(m, "token_embd.weight");
	if (!te) {
		rc = qs_err(err, QS_EFORMAT, "%s: missing tensor 'token_embd.weight'", path);
		goto fail;
	}
	if (te->ne[1] > (1 << 22)) {
		rc = qs_err(err, QS_EFORMAT, "%s: token_embd.weight has %lld rows, too many for a vocabulary",
			    path, (long long)te->ne[1]);
		goto fail;
	}
	c->vocab = (int)te->ne[1];
	char vk[128];
	snprintf(vk, sizeof(vk), "%s.vocab_size", arch);
	if (gguf_find_key(g, vk) >= 0) {
		int vs;
		if ((rc = hp_int(g, arch, "vocab_size", -1, &vs, err)))
			goto fail;
		if (vs != c->vocab) {
			rc = qs_err(err, QS_EFORMAT, "%s: %s = %d but token_embd has %d rows", path, vk,
				    vs, c->vocab);
			goto fail;
		}
	}
	c->tied = model_find(m, "output.weight") == NULL;
	if ((rc = load_vocab(g, m, err)) || (rc = model_finish(m, path, err)))
		goto fail;
	const void *data;
	size_t size;
	gguf_take_map(g, &data, &size);
	if ((rc = model_keep_map(m, data, size, err))) {
		munmap((void *)data, size); /* the model did not take it */
		goto fail;
	}
	gguf_close(g);
	*out = m;
	return 0;
fail:
	model_free(m);
	gguf_close(g);
	return rc;
}
