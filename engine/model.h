/* model.h - one description of a Llama-family model, whatever file it came
 * from: hyper-parameters, named tensors (data borrowed from the mmap'd file
 * unless a loader had to convert it) and the tokenizer.
 *
 * Tensor names are GGUF's: token_embd.weight, output_norm.weight,
 * output.weight, blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,
 * ffn_norm,ffn_gate,ffn_up,ffn_down}.weight and blk.N.attn_{q,k,v}.bias.
 * Shapes are GGUF's too: ne[0] is the row length (input features), ne[1] the
 * number of rows (output features); data is row-major. */
#ifndef QS_MODEL_H
#define QS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tokenizer.h"

enum model_rope_style {
	MODEL_ROPE_NORM = 0, /* adjacent pairs (x[2i], x[2i+1]): GGUF / Meta */
	MODEL_ROPE_NEOX = 1, /* rotate-half (x[i], x[i+d/2]): Hugging Face q/k rows */
};

typedef struct model_config {
	char arch[32];   /* "llama", "mistral", "qwen2" */
	int vocab;       /* n_vocab */
	int dim;         /* embedding length */
	int n_layers;
	int n_heads;
	int n_kv_heads;
	int head_dim;    /* usually dim / n_heads */
	int hidden;      /* feed-forward length */
	int ctx;         /* training context length */
	float eps;       /* RMSNorm epsilon */
	float rope_theta;
	int rope_style;  /* enum model_rope_style */
	int tied;        /* output head is token_embd */
	int attn_bias;   /* q/k/v have biases (qwen2) */
} model_config;

typedef struct model_tensor {
	char name[64];
	int type;          /* kn_type */
	int n_dims;        /* 1 or 2 */
	int64_t ne[2];     /* ne[0] = row length, ne[1] = rows (1 for vectors) */
	const void *data;  /* borrowed; lives as long as the model */
	size_t nbytes;
	const struct kn_qmatrix *q; /* quantized replacement (NULL: use data) */
	/* In a derived model, how AWQ / SmoothQuant rescaled the matrix before
	 * quantizing it (the inverse went into the norm or linear layer that
	 * feeds it): the matrix stored here approximates
	 * diag(1 / row_scale) W diag(col_scale) of the original W. NULL: 1. */
	const float *row_scale; /* (ne[1]) */
	const float *col_scale; /* (ne[0]) */
} model_tensor;

typedef struct model_layer {
	const model_tensor *attn_norm; /* (dim) */
	const model_tensor *wq;        /* (n_heads*head_dim rows, dim) */
	const model_tensor *wk;        /* (n_kv_heads*head_dim rows, dim) */
	const model_tensor *wv;        /* (n_kv_heads*head_dim rows, dim) */
	const model_tensor *wo;        /* (dim rows, n_heads*head_dim) */
	const model_tensor *bq, *bk, *bv; /* biases or NULL */
	const model_tensor *ffn_norm;  /* (dim) */
	const model_tensor *w_gate;    /* (hidden rows, dim) */
	const model_tensor *w_up;      /* (hidden rows, dim) */
	const model_tensor *w_down;    /* (dim rows, hidden) */
} model_layer;

typedef struct model_priv model_priv;

typedef struct model {
	char path[1024];
	const char *format;        /* "gguf", "hf", "llama2c" */
	model_config cfg;
	model_tensor *tensors;     /* (n_tensors) */
	int n_tensors;
	const model_tensor *tok_embd;  /* (vocab rows, dim) */
	const model_tensor *out_norm;  /* (dim) */
	const model_tensor *output;    /* (vocab rows, dim); == tok_embd when tied */
	model_layer *layers;       /* (n_layers) */
	tok_vocab *tok;            /* owned, or borrowed from base */
	const char *chat_template; /* the model's Jinja chat template (GGUF
				    * tokenizer.chat_template, HF tokenizer_config.json
				    * chat_template), or NULL; kept by the model */
	const struct model *base;  /* a quantized model borrows base's data */
	struct model_actq *actq;   /* simulated activation quantization, or NULL */
	model_priv *priv;
} model;

/* Simulated activation quantization of the four linear-input sites of each
 * layer (enum fwd_site order): bits 0 = off. */
typedef struct model_actq_site {
	int bits;
	int per_token;            /* 1: dynamic per token; 0: static scale */
	float scale;              /* static per-tensor scale */
	unsigned char *keep;      /* (cols) channels left in float, or NULL */
} model_actq_site;

typedef struct model_actq {
	model_actq_site *site;    /* (n_layers * 4), index layer * 4 + fwd_site */
} model_actq;

typedef struct model_open_opts {
	const char *tokenizer_path; /* llama2.c tokenizer.bin (-z); NULL: next to the model */
} model_open_opts;

/* Open a .gguf file, a Hugging Face folder, or a llama2.c .bin checkpoint
 * (a directory is a HF folder; a file starting with the GGUF magic is GGUF;
 * otherwise a .bin is llama2.c and anything else is read as GGUF). On success *out owns everything; free with
 * model_free. */
int model_open(const char *path, const model_open_opts *opts, model **out, qs_error *err);
void model_free(model *m);

/* A model that shares base's tensors, tokenizer and mappings (base must
 * outlive it); its tensor table and layers are its own, so a quantizer can
 * point tensors at quantized or rescaled replacements. */
model *model_derive(const model *base, qs_error *err);
/* Number of bytes the model's tensors occupy in their stored or quantized form. */
size_t model_bytes(const model *m);
size_t model_tensor_bytes(const model_tensor *t);

/* A malloc'd f32 copy (rows, cols) of a tensor's current weights (its
 * quantized replacement dequantized, if any); NULL when out of memory. */
float *model_tensor_f32(const model_tensor *t);
/* The same, mapped back to the original matrix's space: row_scale and
 * col_scale undone (diag(row_scale) M diag(1 / col_scale)), so it can be
 * compared with the base model's weights and inputs. */
float *model_tensor_f32_orig(const model_tensor *t);
/* Let the kernel drop the resident pages of a tensor whose data is mapped
 * from the model file (they are read again from the file if touched); no-op
 * for data in memory. Quantizers call it on layers they are done with, so
 * memory holds the layers being worked on, not the whole source model. */
void model_drop_pages(const model *m, const model_tensor *t);
const model_tensor *model_find(const model *m, const char *name);
size_t model_n_params(const model *m);

/* ---- for loaders (engine/gguf_model.c, engine/hf.c, engine/llama2c.c) ---- */
model *model_alloc(const char *path, const char *format, qs_error *err);
/* Keep a mapping (unmapped by model_free). */
int model_keep_map(model *m, const void *data, size_t size, qs_error *err);
/* Keep a malloc'd buffer (freed by model_free). */
int model_keep_buffer(model *m, void *buf, qs_error *err);
/* Keep a malloc'd quantized matrix (released and freed by model_free). */
int model_keep_qmatrix(model *m, struct kn_qmatrix *q, qs_error *err);
/* Add a tensor; the name must be new. data must stay valid for the model's
 * lifetime (mapped or kept). nbytes must equal the size implied by type and
 * shape. src names the file for messages. */
int model_add_tensor(model *m, const char *src, const char *name, int type, int n_dims,
		     const int64_t *ne, const void *data, size_t nbytes, qs_error *err);
/* After the loader filled cfg and tensors: check the config, bind layer
 * pointers and check every shape against the config. */
int model_finish(model *m, const char *src, qs_error *err);

int model_load_gguf(const char *path, model **out, qs_error *err);
int model_load_hf(const char *dir, model **out, qs_error *err);
int model_load_llama2c(const char *path, const char *tokenizer_path, model **out, qs_error *err);

#endif
