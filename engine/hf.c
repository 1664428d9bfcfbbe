/* hf.c - load a Hugging Face model folder: config.json, model.safetensors or
 * a sharded model.safetensors.index.json, and a SentencePiece
 * tokenizer.model. Tensors are renamed to GGUF's names and borrowed from the
 * mappings, which the model keeps. q/k rows stay in HF's rotate-half order
 * (cfg.rope_style = MODEL_ROPE_NEOX). */
#include "model.h"

#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../kernels/types.h"
#include "mapfile.h"
#include "safetensors.h"

#define HF_PATH_MAX 4096

static int join(char *buf, const char *dir, const char *file, qs_error *err)
{
	int n = snprintf(buf, HF_PATH_MAX, "%s/%s", dir, file);
	if (n < 0 || n >= HF_PATH_MAX)
		return qs_err(err, QS_EUSAGE, "%s: path too long", dir);
	return 0;
}


static int exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/* Parse a whole JSON file (duplicate keys rejected, plus jansson's decoding
 * flags) that must be an object. */
static int load_json_flags(const char *path, size_t flags, json_t **out, qs_error *err)
{
	qs_map map;
	*out = NULL;
	int rc = qs_map_open(&map, path, err);
	if (rc)
		return rc;
	json_error_t je;
	json_t *j = json_loadb(map.data ? (const char *)map.data : "", map.size,
			       JSON_REJECT_DUPLICATES | flags, &je);
	qs_map_close(&map);
	if (!j) {
		char t[160];
		return qs_err(err, QS_EFORMAT, "%s: invalid json: %s (line %d, column %d)", path,
			      qs_printz(t, sizeof(t), je.text), je.line, je.column);
	}
	if (!json_is_object(j)) {
		json_decref(j);
		return qs_err(err, QS_EFORMAT, "%s: not a json object", path);
	}
	*out = j;
	return 0;
}

static int load_json(const char *path, json_t **out, qs_error *err)
{
	return load_json_flags(path, 0, out, err);
}

/* ---- config.json ---- */

/* Integer field: absent -> *out = def (def < 0: required). null counts as
 * absent (transformers writes "head_dim": null). */
static int cfg_int(const char *src, json_t *c, const char *key, int def, int *out, qs_error *err)
{
	json_t *v = json_object_get(c, key);
	if (!v || json_is_null(v)) {
		if (def < 0)
			return qs_err(err, QS_EFORMAT, "%s: missing %s", src, key);
		*out = def;
		return 0;
	}
	if (!json_is_integer(v))
		return qs_err(err, QS_EFORMAT, "%s: %s is not an integer", src, key);
	json_int_t x = json_integer_value(v);
	if (x < 1 || x > INT_MAX)
		return qs_err(err, QS_EFORMAT, "%s: %s = %lld out of range", src, key, (long long)x);
	*out = (int)x;
	return 0;
}

static int cfg_num(const char *src, json_t *c, const char *key, double def, int required,
		   float *out, qs_error *err)
{
	json_t *v = json_object_get(c, key);
	if (!v || json_is_null(v)) {
		if (required)
			return qs_err(err, QS_EFORMAT, "%s: missing %s", src, key);
		*out = (float)def;
		return 0;
	}
	if (!json_is_number(v))
		return qs_err(err, QS_EFORMAT, "%s: %s is not a number", src, key);
	double x = json_number_value(v);
	if (!(x >= -FLT_MAX && x <= FLT_MAX))
		return qs_err(err, QS_EFORMAT, "%s: %s = %g out of range", src, key, x);
	*out = (float)x;
	return 0;
}

static int cfg_bool(const char *src, json_t *c, const char *key, int def, int *out, qs_error *err)
{
	json_t *v = json_object_get(c, key);
	if (!v || json_is_null(v)) {
		*out = def;
		return 0;
	}
	if (!json_is_boolean(v))
		return qs_err(err, QS_EFORMAT, "%s: %s is not a boolean", src, key);
	*out = json_is_true(v);
	return 0;
}

static int load_config(const char *dir, model_config *cfg, qs_error *err)
{
	char path[HF_PATH_MAX], t[64];
	json_t *c = NULL;
	int rc;
	if ((rc = join(path, dir, "config.json", err)) || (rc = load_json(path, &c, err)))
		return rc;

	static const char *const archs[] = { "llama", "mistral", "qwen2" };
	json_t *mt = json_object_get(c, "model_type");
	const char *arch = json_string_value(mt);
	size_t a = 0;
	while (arch && a < sizeof(archs) / sizeof(archs[0]) && strcmp(arch, archs[a]))
		a++;
	if (!mt) {
		rc = qs_err(err, QS_EFORMAT, "%s: missing model_type", path);
		goto out;
	}
	if (!arch) {
		rc = qs_err(err, QS_EFORMAT, "%s: model_type is not a string", path);
		goto out;
	}
	if (a == sizeof(archs) / sizeof(archs[0])) {
		rc = qs_err(err, QS_EUNSUPP,
			    "%s: model_type '%s' is not supported (want llama, mistral or qwen2)",
			    path, qs_printz(t, sizeof(t), arch));
		goto out;
	}
	snprintf(cfg->arch, sizeof(cfg->arch), "%s", archs[a]);
	int qwen2 = strcmp(archs[a], "qwen2") == 0;

	json_t *act = json_object_get(c, "hidden_act");
	if (act && !json_is_string(act)) {
		rc = qs_err(err, QS_EFORMAT, "%s: hidden_act is not a string", path);
		goto out;
	}
	if (act && strcmp(json_string_value(act), "silu")) {
		rc = qs_err(err, QS_EUNSUPP, "%s: hidden_act '%s' is not supported (want silu)",
			    path, qs_printz(t, sizeof(t), json_string_value(act)));
		goto out;
	}
	json_t *rs = json_object_get(c, "rope_scaling");
	if (rs && !json_is_null(rs)) {
		rc = qs_err(err, QS_EUNSUPP, "%s: rope_scaling is not supported", path);
		goto out;
	}
	int mlp_bias = 0, sliding = 0;
	if ((rc = cfg_bool(path, c, "mlp_bias", 0, &mlp_bias, err)) ||
	    (rc = cfg_bool(path, c, "use_sliding_window", 0, &sliding, err)))
		goto out;
	if (mlp_bias) {
		rc = qs_err(err, QS_EUNSUPP, "%s: mlp_bias is not supported", path);
		goto out;
	}
	if (qwen2 && sliding) {
		rc = qs_err(err, QS_EUNSUPP, "%s: use_sliding_window is not supported", path);
		goto out;
	}

	if ((rc = cfg_int(path, c, "vocab_size", -1, &cfg->vocab, err)) ||
	    (rc = cfg_int(path, c, "hidden_size", -1, &cfg->dim, err)) ||
	    (rc = cfg_int(path, c, "intermediate_size", -1, &cfg->hidden, err)) ||
	    (rc = cfg_int(path, c, "num_hidden_layers", -1, &cfg->n_layers, err)) ||
	    (rc = cfg_int(path, c, "num_attention_heads", -1, &cfg->n_heads, err)) ||
	    (rc = cfg_int(path, c, "num_key_value_heads", cfg->n_heads, &cfg->n_kv_heads, err)) ||
	    (rc = cfg_int(path, c, "head_dim", cfg->dim / cfg->n_heads, &cfg->head_dim, err)) ||
	    (rc = cfg_int(path, c, "max_position_embeddings", -1, &cfg->ctx, err)) ||
	    (rc = cfg_num(path, c, "rms_norm_eps", 0, 1, &cfg->eps, err)) ||
	    (rc = cfg_num(path, c, "rope_theta", 10000.0, 0, &cfg->rope_theta, err)) ||
	    (rc = cfg_bool(path, c, "tie_word_embeddings", 0, &cfg->tied, err)))
		goto out;
	if (qwen2)
		cfg->attn_bias = 1;
	else if ((rc = cfg_bool(path, c, "attention_bias", 0, &cfg->attn_bias, err)))
		goto out;
	/* Mistral's sliding window: full attention is exact up to the window. */
	int window = 0;
	if (!qwen2 && (rc = cfg_int(path, c, "sliding_window", 0, &window, err)))
		goto out;
	if (window > 0 && window < cfg->ctx)
		cfg->ctx = window;
	cfg->rope_style = MODEL_ROPE_NEOX;
out:
	json_decref(c);
	return rc;
}

/* ---- tensor names ---- */

static const struct {
	const char *hf, *gguf;
} global_names[] = {
	{ "model.embed_tokens.weight", "token_embd.weight" },
	{ "model.norm.weight", "output_norm.weight" },
	{ "lm_head.weight", "output.weight" },
};

/* Suffixes after "model.layers.N."; gguf NULL: known but not supported. */
static const struct {
	const char *hf, *gguf;
} layer_names[] = {
	{ "input_layernorm.weight", "attn_norm.weight" },
	{ "self_attn.q_proj.weight", "attn_q.weight" },
	{ "self_attn.k_proj.weight", "attn_k.weight" },
	{ "self_attn.v_proj.weight", "attn_v.weight" },
	{ "self_attn.q_proj.bias", "attn_q.bias" },
	{ "self_attn.k_proj.bias", "attn_k.bias" },
	{ "self_attn.v_proj.bias", "attn_v.bias" },
	{ "self_attn.o_proj.weight", "attn_output.weight" },
	{ "post_attention_layernorm.weight", "ffn_norm.weight" },
	{ "mlp.gate_proj.weight", "ffn_gate.weight" },
	{ "mlp.up_proj.weight", "ffn_up.weight" },
	{ "mlp.down_proj.weight", "ffn_down.weight" },
	{ "self_attn.o_proj.bias", NULL },
	{ "mlp.gate_proj.bias", NULL },
	{ "mlp.up_proj.bias", NULL },
	{ "mlp.down_proj.bias", NULL },
};

/* GGUF name of HF tensor hf into out: 1 mapped, 0 unknown (skip), negative
 * on error (a bias we cannot use, a layer out of range). */
static int map_name(const char *src, const char *hf, const model_config *cfg, char *out,
		    size_t cap, qs_error *err)
{
	for (size_t i = 0; i < sizeof(global_names) / sizeof(global_names[0]); i++)
		if (strcmp(hf, global_names[i].hf) == 0) {
			snprintf(out, cap, "%s", global_names[i].gguf);
			return 1;
		}
	static const char pre[] = "model.layers.";
	if (strncmp(hf, pre, sizeof(pre) - 1))
		return 0;
	const char *p = hf + sizeof(pre) - 1;
	long layer = 0;
	int nd = 0;
	for (; *p >= '0' && *p <= '9' && nd < 8; p++, nd++)
		layer = layer * 10 + (*p - '0');
	if (nd == 0 || nd == 8 || *p != '.' || (nd > 1 && hf[sizeof(pre) - 1] == '0'))
		return 0;
	p++;
	for (size_t i = 0; i < sizeof(layer_names) / sizeof(layer_names[0]); i++) {
		if (strcmp(p, layer_names[i].hf))
			continue;
		if (layer >= cfg->n_layers)
			return qs_err(err, QS_EFORMAT,
				      "%s: tensor '%s': layer %ld out of range (%d layers)", src, hf,
				      layer, cfg->n_layers);
		if (!layer_names[i].gguf)
			return qs_err(err, QS_EUNSUPP, "%s: tensor '%s': this bias is not supported",
				      src, hf);
		snprintf(out, cap, "blk.%ld.%s", layer, layer_names[i].gguf);
		return 1;
	}
	return 0;
}

/* Add one safetensors tensor to m under its GGUF name (or skip it). */
static int add_tensor(model *m, const char *src, const st_tensor *t, qs_error *err)
{
	char name[64];
	int rc = map_name(src, t->name, &m->cfg, name, sizeof(name), err);
	if (rc <= 0)
		return rc;
	/* A tied head is token_embd; a stored copy of it is not used. */
	if (m->cfg.tied && strcmp(name, "output.weight") == 0)
		return 0;
	if (t->n_dims < 1 || t->n_dims > 2)
		return qs_err(err, QS_EFORMAT, "%s: tensor '%s': %d dimensions (want 1 or 2)", src,
			      t->name, t->n_dims);
	int64_t ne[2] = { t->shape[t->n_dims - 1], t->n_dims == 2 ? t->shape[0] : 1 };
	const void *data = t->data;
	/* Writers that do not pad the header leave data unaligned: copy it. */
	size_t align = t->type == KN_TYPE_F32 ? 4 : 2;
	if ((uintptr_t)data % align) {
		void *buf = malloc(t->nbytes ? t->nbytes : 1);
		if (!buf)
			return qs_err(err, QS_ENOMEM, "%s: out of memory", src);
		memcpy(buf, data, t->nbytes);
		if ((rc = model_keep_buffer(m, buf, err)))
			return rc;
		data = buf;
	}
	return model_add_tensor(m, src, name, t->type, t->n_dims, ne, data, t->nbytes, err);
}

/* Open a shard and hand its mapping to the model. */
static int open_shard(model *m, const char *path, st_file **out, qs_error *err)
{
	int rc = st_open(path, out, err);
	if (rc)
		return rc;
	qs_map map = st_take_map(*out);
	if ((rc = model_keep_map(m, map.data, map.size, err)))
		qs_map_close(&map);
	return rc;
}

static int load_single(model *m, const char *dir, qs_error *err)
{
	char path[HF_PATH_MAX];
	st_file *f = NULL;
	int rc;
	if ((rc = join(path, dir, "model.safetensors", err)) || (rc = open_shard(m, path, &f, err)))
		return rc;
	for (int i = 0; i < st_count(f) && !rc; i++)
		rc = add_tensor(m, path, st_tensor_at(f, i), err);
	st_close(f);
	return rc;
}

static int load_sharded(model *m, const char *dir, const char *index, qs_error *err)
{
	json_t *j = NULL;
	struct shard {
		const char *name; /* borrowed from j */
		st_file *f;
	} *sh = NULL;
	size_t n_sh = 0;
	int rc = load_json(index, &j, err);
	if (rc)
		return rc;
	json_t *wm = json_object_get(j, "weight_map");
	if (!json_is_object(wm)) {
		rc = qs_err(err, QS_EFORMAT, "%s: weight_map %s", index,
			    wm ? "is not an object" : "is missing");
		goto out;
	}
	if (json_object_size(wm) == 0) {
		rc = qs_err(err, QS_EFORMAT, "%s: weight_map is empty", index);
		goto out;
	}
	sh = calloc(json_object_size(wm), sizeof(*sh));
	if (!sh) {
		rc = qs_err(err, QS_ENOMEM, "%s: out of memory", index);
		goto out;
	}
	const char *key;
	json_t *v;
	char k[112], fn[112];
	json_object_foreach(wm, key, v) {
		const char *file = json_string_value(v);
		qs_printz(k, sizeof(k), key);
		if (!file) {
			rc = qs_err(err, QS_EFORMAT, "%s: weight_map '%s' is not a string", index, k);
			goto out;
		}
		size_t s = 0;
		while (s < n_sh && strcmp(sh[s].name, file))
			s++;
		char path[HF_PATH_MAX];
		if (s == n_sh) {
			if (!*file || strchr(file, '/') || strstr(file, "..")) {
				rc = qs_err(err, QS_EFORMAT,
					    "%s: weight_map '%s': bad shard file name '%s'", index, k,
					    qs_printz(fn, sizeof(fn), file));
				goto out;
			}
			sh[n_sh].name = file;
			if ((rc = join(path, dir, file, err)) ||
			    (rc = open_shard(m, path, &sh[n_sh].f, err)))
				goto out;
			n_sh++;
		}
		const st_tensor *t = st_find(sh[s].f, key);
		if (!t) {
			rc = qs_err(err, QS_EFORMAT, "%s: tensor '%s' listed in %s is missing",
				    st_path(sh[s].f), k, index);
			goto out;
		}
		if ((rc = add_tensor(m, st_path(sh[s].f), t, err)))
			goto out;
	}
out:
	for (size_t i = 0; sh && i < n_sh; i++)
		st_close(sh[i].f);
	free(sh);
	json_decref(j);
	return rc;
}

/* tokenizer_config.json's chat_template (a string, or a list of
 * {name, template} of which "default" is taken), if the file has one */
static int load_chat_template(model *m, const char *dir, qs_error *err)
{
	char path[HF_PATH_MAX];
	int rc = join(path, dir, "tokenizer_config.json", err);
	if (rc || !exists(path))
		return rc;
	json_t *j;
	/* integers as reals: tokenizer configs carry model_max_length values
	 * such as 1e30 that do not fit a 64-bit integer */
	if ((rc = load_json_flags(path, JSON_DECODE_INT_AS_REAL, &j, err)))
		return rc;
	json_t *ct = json_object_get(j, "chat_template");
	const char *t = json_string_value(ct);
	for (size_t i = 0; !t && json_is_array(ct) && i < json_array_size(ct); i++) {
		json_t *e = json_array_get(ct, i);
		const char *name = json_string_value(json_object_get(e, "name"));
		if (name && !strcmp(name, "default"))
			t = json_string_value(json_object_get(e, "template"));
	}
	if (ct && !json_is_null(ct) && !t) {
		json_decref(j);
		return qs_err(err, QS_EFORMAT,
			      "%s: chat_template must be a string or a list of {name, template} with a \"default\"",
			      path);
	}
	char *copy = t ? strdup(t) : NULL;
	json_decref(j);
	if (t && !copy)
		return qs_err(err, QS_ENOMEM, "%s: out of memory", path);
	if (copy && model_keep_buffer(m, copy, err)) /* frees copy */
		return QS_ENOMEM;
	m->chat_template = copy;
	return 0;
}

int model_load_hf(const char *dir, model **out, qs_error *err)
{
	char path[HF_PATH_MAX], tok[HF_PATH_MAX];
	*out = NULL;
	model *m = model_alloc(dir, "hf", err);
	if (!m)
		return QS_ENOMEM;
	int rc = load_config(dir, &m->cfg, err);
	if (rc)
		goto fail;

	/* Check for a usable tokenizer before mapping gigabytes of weights. */
	if ((rc = join(tok, dir, "tokenizer.model", err)))
		goto fail;
	if (!exists(tok)) {
		if ((rc = join(path, dir, "tokenizer.json", err)))
			goto fail;
		if (exists(path))
			rc = qs_err(err, QS_EUNSUPP,
				    "%s: tokenizer.json (byte-level BPE) is not supported yet; need "
				    "tokenizer.model", dir);
		else
			rc = qs_err(err, QS_EFORMAT, "%s: no tokenizer (need tokenizer.model)", dir);
		goto fail;
	}

	if ((rc = join(path, dir, "model.safetensors.index.json", err)))
		goto fail;
	if (exists(path)) {
		rc = load_sharded(m, dir, path, err);
	} else {
		if ((rc = join(path, dir, "model.safetensors", err)))
			goto fail;
		if (exists(path)) {
			rc = load_single(m, dir, err);
		} else {
			if ((rc = join(path, dir, "pytorch_model.bin", err)))
				goto fail;
			rc = qs_err(err, QS_EFORMAT, exists(path)
					    ? "%s: pytorch_model.bin is not supported; need safetensors"
					    : "%s: no model.safetensors or model.safetensors.index.json",
				    dir);
		}
	}
	if (rc || (rc = tok_load_spm(tok, &m->tok, err)) || (rc = load_chat_template(m, dir, err)) ||
	    (rc = model_finish(m, dir, err)))
		goto fail;
	*out = m;
	return 0;
fail:
	model_free(m);
	return rc;
}
