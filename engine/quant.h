/* quant.h - quantization specs and plans, and the per-matrix methods.
 *
 * A spec says how one tensor is quantized: the method (how codes are chosen)
 * and the storage format (kn_qparams: number format, bits, granularity,
 * symmetric). A plan is one spec per tensor. The methods here work on one
 * matrix at a time and are pure functions of their inputs; engine/quantize.c
 * runs them over a model (calibration, true-sequential order, folding of
 * scales into norms) and builds the quantized model. */
#ifndef QS_QUANT_H
#define QS_QUANT_H

#include <stddef.h>

#include "../kernels/qmatrix.h"
#include "error.h"

enum quant_method {
	QUANT_NONE = 0,    /* keep the tensor as it is stored */
	QUANT_RTN,         /* round to nearest (min-max or MSE-optimal grid) */
	QUANT_GPTQ,        /* second-order error feedback (Frantar et al. 2022) */
	QUANT_AWQ,         /* activation-aware scaling + clipping (Lin et al. 2023) */
	QUANT_SMOOTHQUANT, /* migrate activation outliers into weights (Xiao et al. 2022) */
	QUANT_HQQ,         /* half-quadratic zero/scale optimisation (Badri & Shaji 2023) */
	QUANT_METHOD_COUNT,
};

typedef struct quant_spec {
	int method;           /* enum quant_method */
	kn_qparams fmt;       /* storage format */
	int mse;              /* RTN/GPTQ: MSE-optimal clipping search for the grids */
	/* GPTQ */
	int act_order;        /* process columns by descending diag(H) */
	int static_groups;    /* with act_order: grids fixed per group before the pass */
	float damp;           /* dampening, fraction of mean diag(H) (0.01) */
	int block;            /* lazy batch size (128) */
	/* AWQ / SmoothQuant */
	float alpha;          /* SmoothQuant migration strength (0.5); AWQ: < 0 = grid search */
	int awq_clip;         /* AWQ: search per-group clipping after scaling (1) */
	int awq_gptq;         /* AWQ: quantize the scaled weights with GPTQ (damp, block,
			       * act_order, static_groups, mse as for GPTQ) instead of RTN */
	/* HQQ */
	float hqq_p;          /* lp norm, p < 1 (0.7) */
	int hqq_iters;        /* solver iterations (20) */
	/* outlier splitting (LLM.int8()): input channels whose calibration
	 * absmax exceeds this keep their weight columns in FP16; 0 = off */
	float outlier_thresh;
	/* simulated activation quantization of this tensor's input; 0 = off */
	int act_bits;
	int act_per_token;    /* 1: dynamic per token; 0: static per tensor (calibrated) */
} quant_spec;

/* A spec with defaults for method m and format f. */
quant_spec quant_spec_default(int method, kn_qparams f);

/* Parse a spec string: [method:]format[options], e.g. "int4g128" (RTN,
 * asymmetric, group 128), "gptq:int3g128", "awq:int4g128", "int4g32sym",
 * "int8c" (per channel), "int8t" (per tensor), "q4_0", "q8_0", "q4_1", "nf4",
 * "nf4dq", "fp8", "fp16", "bf16", "none". Errors name the string and field. */
int quant_spec_parse(const char *s, quant_spec *out, qs_error *err);
/* The canonical string of a spec (round-trips through quant_spec_parse). */
void quant_spec_str(const quant_spec *s, char *buf, size_t cap);
/* Validate a spec for a rows x cols tensor; errors name the tensor and field,
 * e.g. "blk.3.ffn_down.weight: group 100 does not divide the row length 1024". */
int quant_spec_check(const quant_spec *s, const char *tensor, int rows, int cols, qs_error *err);
const char *quant_method_name(int m);
/* Bytes of a rows x cols tensor stored with spec s: the format's codes,
 * scales and zeros, plus GPTQ's per-column group index with act_order
 * (without static_groups). Outlier columns (s->outlier_thresh) depend on the
 * calibration data and are not included. 0 for QUANT_NONE. */
size_t quant_spec_bytes(const quant_spec *s, int rows, int cols);

/* ---- per-matrix methods (W is rows x cols, row-major f32; q allocated by
 * the caller with kn_qmatrix_alloc(&q, &spec->fmt, rows, cols)) ---- */

/* GPTQ. H is the cols x cols input second-moment sum X^T X over n rows of
 * calibration input (double, row-major); it is read, not modified. Columns
 * listed in q's outliers are left alone. progress may be NULL. */
int quant_gptq(kn_qmatrix *q, const float *W, const double *H, long n, const quant_spec *s,
	       qs_error *err);

/* HQQ: calibration-free optimisation of the zero points (and scales) of an
 * INT grid by a half-quadratic solver with an lp (p < 1) error norm. */
int quant_hqq(kn_qmatrix *q, const float *W, const quant_spec *s, qs_error *err);

/* AWQ scale search for the n_w matrices W[i] (rows[i] x cols) that read the
 * same input: X (n x cols) is a sample of that input. Finds per-input-channel
 * scales s = mean|x|^alpha (normalised), alpha on a 20-point grid in [0, 1),
 * minimizing sum_i || X W_i^T - (X / s) Q(W_i * s)^T ||^2 with the format of
 * spec (RTN). Writes s (cols) and the chosen alpha; the caller folds 1/s into
 * the producer of X and multiplies W by s. */
int quant_awq_scales(const float *X, long n, const float *const *W, const int *rows, int n_w,
		     int cols, const quant_spec *s, float *scales, float *alpha_out,
		     qs_error *err);
/* AWQ clipping search for one (already scaled) matrix: per group, the
 * clipping ratio in (0.5, 1] minimizing the output error on X; writes the
 * clipped weights into Wc (rows x cols). */
int quant_awq_clip(const float *X, long n, const float *W, int rows, int cols,
		   const quant_spec *s, float *Wc, qs_error *err);

/* SmoothQuant: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), with max|W_j|
 * over the rows of all n_w matrices reading the input. x_absmax (cols). */
void quant_smooth_scales(const float *x_absmax, const float *const *W, const int *rows,
			 int n_w, int cols, float alpha, float *scales);

/* Fake-quantize activations in place: n rows of cols values to `bits`-bit
 * symmetric integers, one scale per row (per_token) or the given static
 * scale (per tensor). Columns with keep[j] != 0 stay in float (outliers). */
void quant_act(float *x, long n, int cols, int bits, int per_token, float static_scale,
	       const unsigned char *keep);

#endif
