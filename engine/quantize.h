/* quantize.h - quantize a whole model with a plan: calibration streamed layer
 * by layer (inputs of each layer come from the already-quantized layers
 * before it), true-sequential order inside a block (q/k/v, then o, then
 * gate/up, then down), AWQ/SmoothQuant scales folded into the previous
 * RMSNorm or linear layer, outlier columns, activation quantization. */
#ifndef QS_QUANTIZE_H
#define QS_QUANTIZE_H

#include "error.h"
#include "model.h"
#include "quant.h"

typedef struct quant_plan_entry {
	char name[64];      /* tensor name */
	quant_spec spec;
} quant_plan_entry;

typedef struct quant_plan {
	quant_plan_entry *e; /* (n) */
	int n;
} quant_plan;

/* Kind of a quantizable tensor: "attn_q" ... "ffn_down", "token_embd",
 * "output"; NULL for tensors that are never quantized (norms, biases). */
const char *quant_tensor_kind(const char *name);

/* The same spec for every linear weight of the blocks whose name matches
 * include (PCRE2, NULL: all) and not exclude (NULL: none). token_embd and
 * output are left unquantized unless include names them. Every entry is
 * checked with quant_spec_check. */
int quant_plan_uniform(const model *m, const quant_spec *s, const char *include,
		       const char *exclude, quant_plan *out, qs_error *err);
int quant_plan_add(quant_plan *p, const char *name, const quant_spec *s, qs_error *err);
void quant_plan_release(quant_plan *p);
const quant_spec *quant_plan_find(const quant_plan *p, const char *name);
/* Does the plan (one spec) need calibration data (GPTQ, AWQ, SmoothQuant,
 * outliers, static activation scales)? */
int quant_plan_needs_calib(const quant_plan *p);
int quant_spec_needs_calib(const quant_spec *s);
/* Where a tensor acts in the model's order: its block, -1 for token_embd,
 * n_layers for the output head (and anything outside the blocks). */
int quant_tensor_layer(const model *m, const char *name);
/* Exact bytes of the model's tensors under the plan, without quantizing. */
size_t quant_plan_bytes(const model *m, const quant_plan *p, size_t *params);

/* Quantize one weight matrix W (rows, cols, row-major f32) with spec s into
 * a new matrix (*out, caller releases with kn_qmatrix_release + free). RTN,
 * HQQ and the formats need nothing else; GPTQ needs H, the cols x cols
 * X^T X of its input over n rows; s->outlier_thresh uses x_absmax (cols,
 * the input's per-channel absmax; NULL: no outlier columns). AWQ and
 * SmoothQuant are refused (their scales fold into a norm that other tensors
 * share: they run over a whole model). gptq_seconds (may be NULL) is
 * increased by the time spent in GPTQ. name is for messages. */
int quant_tensor(const char *name, const float *W, int rows, int cols, const quant_spec *s,
		 const double *H, long n, const float *x_absmax, struct kn_qmatrix **out,
		 double *gptq_seconds, qs_error *err);

/* Recipes: a plan as JSON ({"qscope_recipe": 1, "model", "source", "bytes",
 * "bpw", "tensors": [{"name", "spec"}]}), written atomically. Loading checks
 * every tensor against m (it must exist, be quantizable and fit its spec)
 * and names the file, entry and field on error. */
int quant_plan_save(const char *path, const model *m, const quant_plan *p, const char *source,
		    qs_error *err);
int quant_plan_load(const char *path, const model *m, quant_plan *out, qs_error *err);

typedef struct quant_opts {
	const int *calib;    /* calibration tokens (n_calib, calib_len), BOS first */
	int n_calib, calib_len;
	int batch;           /* sequences per forward batch (8); 1 needs the least memory
			      * at the same speed, and changes results only by float
			      * rounding (which GPTQ's grid decisions amplify) */
	int awq_rows;        /* rows of each site's input kept for AWQ searches (65536:
			      * every row of the default 128 x 512 calibration, as the
			      * reference searches on all of it) */
	qs_progress_fn progress; /* (step, steps); nonzero cancels */
	void *user;
	/* Reuse (the workbench editing a plan): an earlier quant_model result
	 * from the same base, calibration tokens, batch and awq_rows, whose plan
	 * gave every tensor of layers < reuse_layers the same spec as this one.
	 * Those layers are copied from it instead of quantized again (what
	 * GPTQ, AWQ and SmoothQuant make of a layer depends only on the layers
	 * before it); the calibration only runs through them. Ignored when the
	 * plan simulates activation quantization. */
	const model *reuse;
	int reuse_layers;
} quant_opts;

typedef struct quant_report {
	double seconds;
	double seconds_calib;  /* forward passes over the calibration data */
	double calib_gflop;    /* their FLOPs: layers (partial for true-sequential
				* passes) and X^T X accumulation */
	double seconds_gptq;   /* inside quant_gptq */
	double gptq_gflop;     /* Hessian accumulation and GPTQ updates */
	size_t bytes, params;  /* of the whole quantized model */
	int n_quantized;
} quant_report;

/* Build *out, a model derived from base (base must outlive it) with every
 * planned tensor quantized. rep may be NULL. */
int quant_model(const model *base, const quant_plan *p, const quant_opts *o, model **out,
		quant_report *rep, qs_error *err);

/* Relative output error of every quantized matrix of qm on the calibration
 * inputs of base: ||(W - Q) X^T|| / ||W X^T||, computed exactly from X^T X of
 * each site's input (base model, full precision) as
 * sqrt(tr(dW H dW^T) / tr(W H W^T)). errs gets one entry per tensor of qm
 * (NaN where the tensor is not quantized or has no calibration site). */
typedef struct quant_layer_err {
	char name[64];
	double rel_err;
} quant_layer_err;

int quant_layer_errors(const model *base, const model *qm, const int *calib, int n_calib,
		       int calib_len, quant_layer_err **errs, int *n_errs, qs_error *err);

/* The same measure without running the model again: X^T X of every linear
 * site's input over a calibration sample of base (full precision), kept as
 * float, one cols x cols matrix per site (4 per layer, and the head's).
 * quant_xtx_bytes says how much that is; collecting is refused (QS_EUNSUPP)
 * above max_bytes. progress as calib_run's. */
typedef struct quant_xtx quant_xtx;
size_t quant_xtx_bytes(const model *base);
int quant_xtx_collect(const model *base, const int *calib, int n_calib, int calib_len,
		      size_t max_bytes, qs_progress_fn progress, void *puser, quant_xtx **out,
		      qs_error *err);
/* ||(W - Q) X^T|| / ||W X^T|| of tensor `name` of qm (derived from the base
 * the store was collected on; AWQ / SmoothQuant scales are undone), NaN if
 * it is not quantized in qm or has no site. Two sgemms of rows x cols x cols. */
double quant_xtx_rel_err(const quant_xtx *x, const model *qm, const char *name);
/* The same from weights the caller already has in f32: W the original, Q
 * the quantized matrix mapped back (model_tensor_f32_orig); Q is
 * overwritten with W - Q. NaN if name has no site. */
double quant_xtx_rel_err_f32(const quant_xtx *x, const char *name, const float *W, float *Q);
void quant_xtx_free(quant_xtx *x);

#endif
