/* sens.h - sensitivity scan: for each quantizable tensor and each candidate
 * spec, quantize only that tensor and measure what it costs on a quick
 * evaluation set (perplexity change and KL divergence against the
 * unquantized model, llama.cpp's protocol on the first few chunks).
 *
 * The unquantized model's hidden states are cached at every layer boundary
 * (eval_cache), so a tensor of layer l recomputes only layers l.. and the
 * head. GPTQ candidates get their Hessian from one calibration pass over the
 * unquantized model (each tensor is quantized alone, so its input is the
 * unquantized model's). AWQ and SmoothQuant fold scales into norms that
 * several tensors share, so a one-tensor scan of them is not defined: they
 * are refused. */
#ifndef QS_SENS_H
#define QS_SENS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model.h"

#define SENS_MAX_CANDS 16

typedef struct sens_entry {
	char tensor[64];
	int cand;              /* index into sens_table.cands */
	double ppl;            /* perplexity with only this tensor quantized */
	double dppl;           /* ppl - base_ppl */
	double kld;            /* mean KL(P_base || P_quant) over the scored tokens */
	double kld_stderr;
	double same_top_pct;
	size_t bytes;          /* exact bytes of the tensor in the candidate's format */
	size_t params;
} sens_entry;

typedef struct sens_table {
	char model[1024];      /* path of the model scanned */
	char eval[1024];       /* evaluation text */
	uint64_t key;          /* sens_key of model, text and settings */
	int chunks, ctx;
	double base_ppl;
	int n_cands;
	char cands[SENS_MAX_CANDS][96]; /* canonical spec strings (quant_spec_str) */
	sens_entry *e;         /* (n) tensor-major: n_tensors x n_cands */
	int n;
	double seconds;
	double gflop;          /* forward FLOPs of the scan (base pass and every partial run) */
} sens_table;

typedef struct sens_opts {
	int chunks;            /* evaluation chunks (8) */
	int ctx;               /* chunk length (512) */
	const char *const *cands; /* candidate spec strings */
	int n_cands;
	const char *include;   /* PCRE2 over tensor names (NULL: every block linear) */
	/* GPTQ candidates: calibration tokens (n_calib, calib_len), BOS first */
	const int *calib;
	int n_calib, calib_len;
	qs_progress_fn progress; /* (tensor-candidate pairs done, total) */
	void *user;
} sens_opts;

void sens_opts_default(sens_opts *o);
/* Scan base on the evaluation tokens (BOS first). *out is caller-released
 * with sens_table_release. */
int sens_scan(const model *base, const int *tokens, size_t n_tokens, const sens_opts *o,
	      sens_table *out, qs_error *err);
void sens_table_release(sens_table *t);
/* The entry of (tensor, candidate spec string), or NULL. The spec is
 * compared in canonical form, so "gptq:int4g128" finds "gptq:int4g128". */
const sens_entry *sens_find(const sens_table *t, const char *tensor, const char *cand);
/* Index of a candidate spec string in t->cands (canonical comparison), or -1. */
int sens_cand_index(const sens_table *t, const char *cand);
/* The cache key: the model's tensors (calib_key's model part), the
 * evaluation tokens, chunks, ctx, the canonical candidates, and the
 * calibration tokens when a candidate uses them. */
uint64_t sens_key(const model *m, const int *tokens, size_t n_tokens, const sens_opts *o);
/* JSON (the format `qscope sensitivity -o` writes). Save is atomic. Load
 * checks every field and names the file and field on error; with m given,
 * every tensor must exist in m with the recorded shape. */
char *sens_dumps(const sens_table *t); /* the JSON text, malloc'd; NULL: no memory */
int sens_save(const char *path, const sens_table *t, qs_error *err);
int sens_load(const char *path, const model *m, sens_table *out, qs_error *err);

#endif
