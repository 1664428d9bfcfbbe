/* qmatrix.h - a weight matrix stored in a quantized number format, with exact
 * storage accounting, dequantization and dot products.
 *
 * Formats (kn_qparams.fmt):
 *   KN_QF_INT   n-bit integers (bits 2..8), one scale per group of `group`
 *               consecutive elements of a row (group 0: the whole row, i.e.
 *               per output channel; group -1: one scale for the whole tensor).
 *               Asymmetric (sym 0): w = scale * (q - zero), q in [0, 2^b - 1],
 *               zero stored per group (an integer for min-max grids, any
 *               FP16 value for HQQ). Symmetric (sym 1): the same
 *               grid with zero fixed at 2^(b-1) (not stored). Scales and zeros
 *               are FP16 in storage (values held as float, already rounded).
 *   KN_QF_GGML  a ggml block type (KN_TYPE_Q8_0, Q4_0, Q4_1): bytes exactly as
 *               ggml stores them, quantized by the reference quantizers.
 *   KN_QF_NF4   4-bit NormalFloat (QLoRA): codebook of 16 values, absmax scale
 *               per block of `group` (default 64) elements; optional double
 *               quantization of the scales (dq: 8-bit, one fp32 scale and
 *               offset per 256 scales).
 *   KN_QF_FP8   FP8 E4M3 (finite, max 448) with one fp32 scale per row.
 *   KN_QF_F16, KN_QF_BF16  16-bit floats (a "format" for the plan).
 * Any format may keep some input columns in FP16 (outlier splitting à la
 * LLM.int8()): out_cols lists them, out_vals holds their weights; the codes
 * of those columns are ignored.
 *
 * Codes are packed LSB-first within each row; a row starts on a byte
 * boundary (code_stride bytes per row). Shapes: rows = output features,
 * cols = input features (a row of W is one output's weights). */
#ifndef KN_QMATRIX_H
#define KN_QMATRIX_H

#include <stddef.h>
#include <stdint.h>

enum kn_qfmt {
	KN_QF_NONE = 0, /* not quantized: keep the stored tensor */
	KN_QF_INT,
	KN_QF_GGML,
	KN_QF_NF4,
	KN_QF_FP8,
	KN_QF_F16,
	KN_QF_BF16,
};

#define KN_GROUP_ROW 0     /* one scale per row (per output channel) */
#define KN_GROUP_TENSOR -1 /* one scale for the whole tensor */

typedef struct kn_qparams {
	int fmt;       /* enum kn_qfmt */
	int bits;      /* INT: 2..8; NF4: 4; FP8: 8; F16/BF16: 16; GGML: from the type */
	int group;     /* INT/NF4: elements per scale, KN_GROUP_ROW or KN_GROUP_TENSOR */
	int sym;       /* INT: symmetric grid */
	int ggml_type; /* GGML: kn_type */
	int dq;        /* NF4: double-quantized scales */
} kn_qparams;

typedef struct kn_qmatrix {
	kn_qparams p;
	int rows, cols;
	int gsize;          /* elements per scale group within a row (cols for ROW) */
	int n_groups;       /* scale groups per row (1 for ROW; TENSOR: 1 for all) */
	uint8_t *codes;     /* (rows, code_stride) */
	size_t code_stride; /* bytes per row */
	float *scale;       /* INT/NF4: (rows, n_groups) or (1) for TENSOR; FP8: (rows) */
	float *zero;        /* INT asym: same shape as scale; NULL otherwise */
	int32_t *g_idx;     /* (cols) scale group of each column within its row, or
			     * NULL for consecutive runs of gsize (GPTQ's act-order
			     * groups follow the processing order: stored as int32
			     * per column, as GPTQ's g_idx) */
	int n_out;          /* outlier columns kept in FP16 */
	int32_t *out_cols;  /* (n_out), ascending */
	uint16_t *out_vals; /* (rows, n_out) fp16 */
} kn_qmatrix;

/* Check that p can store a rows x cols matrix; on failure returns -1 and
 * writes a reason ("group 100 does not divide the row length 384"). */
int kn_qparams_check(const kn_qparams *p, int rows, int cols, char *why, size_t cap);

/* Allocate storage (codes zeroed, scales 1, zeros 0). Returns 0 or -1. */
int kn_qmatrix_alloc(kn_qmatrix *q, const kn_qparams *p, int rows, int cols);
void kn_qmatrix_release(kn_qmatrix *q);
/* dst (uninitialised) <- a deep copy of src. Returns 0 or -1. */
int kn_qmatrix_copy(kn_qmatrix *dst, const kn_qmatrix *src);
/* Keep these columns in FP16 with values taken from w (rows, cols). */
int kn_qmatrix_set_outliers(kn_qmatrix *q, const int32_t *cols, int n, const float *w);

/* Exact bytes of storage: codes + scales + zeros + outliers (+ NF4 dq). */
size_t kn_qmatrix_bytes(const kn_qmatrix *q);
/* Bits per weight of a format for a rows x cols matrix without outliers
 * (the same accounting, without building the matrix). */
double kn_qparams_bpw(const kn_qparams *p, int rows, int cols);
size_t kn_qparams_bytes(const kn_qparams *p, int rows, int cols);

/* Integer codes (INT, NF4 indices, FP8 bytes). */
static inline unsigned kn_qcode_get(const kn_qmatrix *q, int r, int c)
{
	const int b = q->p.bits;
	const size_t bit = (size_t)c * (size_t)b;
	const uint8_t *p = q->codes + (size_t)r * q->code_stride + bit / 8;
	unsigned v = p[0] | ((bit % 8 + (size_t)b > 8) ? (unsigned)p[1] << 8 : 0u);
	return (v >> (bit % 8)) & ((1u << b) - 1);
}
static inline void kn_qcode_set(kn_qmatrix *q, int r, int c, unsigned v)
{
	const int b = q->p.bits;
	const size_t bit = (size_t)c * (size_t)b;
	uint8_t *p = q->codes + (size_t)r * q->code_stride + bit / 8;
	unsigned w = p[0] | ((bit % 8 + (size_t)b > 8) ? (unsigned)p[1] << 8 : 0u);
	unsigned mask = ((1u << b) - 1) << (bit % 8);
	w = (w & ~mask) | ((v << (bit % 8)) & mask);
	p[0] = (uint8_t)w;
	if (bit % 8 + (size_t)b > 8)
		p[1] = (uint8_t)(w >> 8);
}

/* Scale/zero index of element (r, c). */
static inline size_t kn_qgroup(const kn_qmatrix *q, int r, int c)
{
	if (q->p.group == KN_GROUP_TENSOR)
		return 0;
	if (q->g_idx)
		return (size_t)r * (size_t)q->n_groups + (size_t)q->g_idx[c];
	return (size_t)r * (size_t)q->n_groups + (size_t)(c / q->gsize);
}

/* ---- INT grids (shared by RTN, GPTQ, AWQ, HQQ) ----
 * Min-max grid of n values as the GPTQ reference quantizer builds it: the
 * range is widened to include 0; asymmetric: scale = (max - min) / maxq,
 * zero = round(-min / scale); symmetric: max = max(|min|, max), scale =
 * 2 max / maxq, zero = (maxq + 1) / 2. Degenerate ranges get scale 1.
 * clip in (0, 1] shrinks the range (1 = none). The scale is rounded to FP16
 * (its storage) before use. */
void kn_int_grid(const float *w, int n, int bits, int sym, float clip, float *scale,
		 float *zero);
/* q = clamp(round(w / scale + zero), 0, maxq); zero may be fractional (HQQ) */
static inline int kn_int_quant(float w, float scale, float zero, int maxq)
{
	float v = __builtin_roundf(w / scale + zero);
	return v < 0 ? 0 : v > (float)maxq ? maxq : (int)v;
}
static inline float kn_int_dequant(int q, float scale, float zero)
{
	return scale * ((float)q - zero);
}

/* Round-to-nearest quantization of a whole matrix w (rows, cols) into q
 * (allocated with the wanted params): INT with min-max grids (clip as
 * above; mse_grid != 0 searches the clip per group minimizing squared
 * error over 100 candidates down to 0.5, the reference RTN/GPTQ "mse"
 * option), GGML with the reference quantizers, NF4, FP8, F16, BF16. */
void kn_qmatrix_quantize_rtn(kn_qmatrix *q, const float *w, int mse_grid);

/* Dequantize rows [r0, r1) into dst ((r1 - r0), cols). */
void kn_qmatrix_dequant(const kn_qmatrix *q, int r0, int r1, float *dst);
/* dot(row r, x) */
float kn_qmatrix_dot(const kn_qmatrix *q, int r, const float *x);

/* NF4 codebook (bitsandbytes), 16 values in [-1, 1], ascending; and the
 * index of the nearest entry. FP8 E4M3 <-> float. */
extern const float kn_nf4_table[16];
int kn_nf4_index(float x);
float kn_fp8_e4m3_to_float(uint8_t v);
uint8_t kn_float_to_fp8_e4m3(float x); /* round to nearest even, saturating at 448 */

#endif
