#include "qmatrix.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "types.h"

const float kn_nf4_table[16] = {
	-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
	-0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
	0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
	0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

int kn_nf4_index(float x)
{
	/* nearest entry; midpoints between neighbours decide */
	int best = 0;
	float bd = fabsf(x - kn_nf4_table[0]);
	for (int i = 1; i < 16; i++) {
		float d = fabsf(x - kn_nf4_table[i]);
		if (d < bd) {
			bd = d;
			best = i;
		}
	}
	return best;
}

float kn_fp8_e4m3_to_float(uint8_t v)
{
	int s = v >> 7, e = (v >> 3) & 15, m = v & 7;
	float r;
	if (e == 15 && m == 7)
		return NAN;
	if (e == 0)
		r = ldexpf((float)m, -9); /* subnormal: m/8 * 2^-6 */
	else
		r = ldexpf(1.0f + (float)m / 8.0f, e - 7);
	return s ? -r : r;
}

uint8_t kn_float_to_fp8_e4m3(float x)
{
	static float pos[127]; /* codes 0..126: every finite non-negative value */
	static int init;
	if (!init) {
		for (int i = 0; i < 127; i++)
			pos[i] = kn_fp8_e4m3_to_float((uint8_t)i);
		init = 1;
	}
	if (isnan(x))
		return 0x7f;
	uint8_t sign = signbit(x) ? 0x80 : 0;
	float a = fabsf(x);
	if (a >= 448.0f)
		return sign | 126;
	int lo = 0, hi = 126; /* pos[lo] <= a < pos[hi] */
	while (hi - lo > 1) {
		int mid = (lo + hi) / 2;
		if (pos[mid] <= a)
			lo = mid;
		else
			hi = mid;
	}
	float dl = a - pos[lo], dh = pos[hi] - a;
	int c = dl < dh ? lo : dh < dl ? hi : (lo % 2 == 0 ? lo : hi); /* ties to even */
	return sign | (uint8_t)c;
}

static size_t code_stride(const kn_qparams *p, int cols)
{
	switch (p->fmt) {
	case KN_QF_INT:
	case KN_QF_NF4:
		return ((size_t)cols * (size_t)p->bits + 7) / 8;
	case KN_QF_FP8:
		return (size_t)cols;
	case KN_QF_F16:
	case KN_QF_BF16:
		return (size_t)cols * 2;
	case KN_QF_GGML:
		return kn_row_size(p->ggml_type, (size_t)cols);
	default:
		return 0;
	}
}

int kn_qparams_check(const kn_qparams *p, int rows, int cols, char *why, size_t cap)
{
	if (rows < 1 || cols < 1) {
		snprintf(why, cap, "empty matrix %d x %d", rows, cols);
		return -1;
	}
	switch (p->fmt) {
	case KN_QF_INT:
		if (p->bits < 2 || p->bits > 8) {
			snprintf(why, cap, "bits %d not in 2..8", p->bits);
			return -1;
		}
		__attribute__((fallthrough)); /* groups as NF4 */
	case KN_QF_NF4:
		if (p->fmt == KN_QF_NF4 && p->bits != 4) {
			snprintf(why, cap, "nf4 has 4 bits, not %d", p->bits);
			return -1;
		}
		if (p->group == KN_GROUP_TENSOR || p->group == KN_GROUP_ROW)
			return 0;
		if (p->group < 1 || cols % p->group) {
			snprintf(why, cap, "group %d does not divide the row length %d", p->group, cols);
			return -1;
		}
		return 0;
	case KN_QF_GGML: {
		const kn_type_traits *tr = kn_traits(p->ggml_type);
		if (!tr || (p->ggml_type != KN_TYPE_Q8_0 && p->ggml_type != KN_TYPE_Q4_0 &&
			    p->ggml_type != KN_TYPE_Q4_1)) {
			snprintf(why, cap, "ggml type %d is not q8_0, q4_0 or q4_1", p->ggml_type);
			return -1;
		}
		if ((size_t)cols % tr->block_size) {
			snprintf(why, cap, "row length %d not a multiple of the %s block %zu", cols,
				 tr->name, tr->block_size);
			return -1;
		}
		return 0;
	}
	case KN_QF_FP8:
	case KN_QF_F16:
	case KN_QF_BF16:
		return 0;
	default:
		snprintf(why, cap, "unknown format %d", p->fmt);
		return -1;
	}
}

static void shape_groups(const kn_qparams *p, int rows, int cols, int *gsize, int *n_groups,
			 size_t *n_scales)
{
	*gsize = cols;
	*n_groups = 1;
	*n_scales = 0;
	if (p->fmt == KN_QF_INT || p->fmt == KN_QF_NF4) {
		if (p->group == KN_GROUP_TENSOR) {
			*n_scales = 1;
		} else {
			*gsize = p->group == KN_GROUP_ROW ? cols : p->group;
			*n_groups = cols / *gsize;
			*n_scales = (size_t)rows * (size_t)*n_groups;
		}
	} else if (p->fmt == KN_QF_FP8) {
		*n_scales = (size_t)rows;
	}
}

int kn_qmatrix_alloc(kn_qmatrix *q, const kn_qparams *p, int rows, int cols)
{
	char why[128];
	memset(q, 0, sizeof(*q));
	if (kn_qparams_check(p, rows, cols, why, sizeof(why)))
		return -1;
	q->p = *p;
	if (p->fmt == KN_QF_FP8)
		q->p.bits = 8;
	else if (p->fmt == KN_QF_F16 || p->fmt == KN_QF_BF16)
		q->p.bits = 16;
	else if (p->fmt == KN_QF_NF4)
		q->p.bits = 4;
	q->rows = rows;
	q->cols = cols;
	size_t n_scales;
	shape_groups(&q->p, rows, cols, &q->gsize, &q->n_groups, &n_scales);
	q->code_stride = code_stride(&q->p, cols);
	q->codes = calloc((size_t)rows, q->code_stride + 1); /* +1: 2-byte code reads */
	if (n_scales) {
		q->scale = malloc(sizeof(float) * n_scales);
		if (q->scale)
			for (size_t i = 0; i < n_scales; i++)
				q->scale[i] = 1.0f;
		if (p->fmt == KN_QF_INT && !p->sym)
			q->zero = calloc(n_scales, sizeof(float));
	}
	if (!q->codes || (n_scales && !q->scale) || (p->fmt == KN_QF_INT && !p->sym && !q->zero)) {
		kn_qmatrix_release(q);
		return -1;
	}
	return 0;
}

int kn_qmatrix_copy(kn_qmatrix *dst, const kn_qmatrix *src)
{
	kn_qparams p = src->p;
	if (kn_qmatrix_alloc(dst, &p, src->rows, src->cols))
		return -1;
	size_t n_scales;
	int gs, ng;
	shape_groups(&dst->p, src->rows, src->cols, &gs, &ng, &n_scales);
	memcpy(dst->codes, src->codes, (size_t)src->rows * src->code_stride);
	if (n_scales && src->scale)
		memcpy(dst->scale, src->scale, sizeof(float) * n_scales);
	if (dst->zero && src->zero)
		memcpy(dst->zero, src->zero, sizeof(float) * n_scales);
	if (src->g_idx) {
		if (!(dst->g_idx = malloc(sizeof(int32_t) * (size_t)src->cols))) {
			kn_qmatrix_release(dst);
			return -1;
		}
		memcpy(dst->g_idx, src->g_idx, sizeof(int32_t) * (size_t)src->cols);
	}
	if (src->n_out) {
		dst->out_cols = malloc(sizeof(int32_t) * (size_t)src->n_out);
		dst->out_vals = malloc(sizeof(uint16_t) * (size_t)src->n_out * (size_t)src->rows);
		if (!dst->out_cols || !dst->out_vals) {
			kn_qmatrix_release(dst);
			return -1;
		}
		memcpy(dst->out_cols, src->out_cols, sizeof(int32_t) * (size_t)src->n_out);
		memcpy(dst->out_vals, src->out_vals, sizeof(uint16_t) * (size_t)src->n_out * (size_t)src->rows);
		dst->n_out = src->n_out;
	}
	return 0;
}

void kn_qmatrix_release(kn_qmatrix *q)
{
	free(q->codes);
	free(q->scale);
	free(q->zero);
	free(q->out_cols);
	free(q->out_vals);
	free(q->g_idx);
	memset(q, 0, sizeof(*q));
}

int kn_qmatrix_set_outliers(kn_qmatrix *q, const int32_t *cols, int n, const float *w)
{
	free(q->out_cols);
	free(q->out_vals);
	q->out_cols = NULL;
	q->out_vals = NULL;
	q->n_out = 0;
	if (n <= 0)
		return 0;
	q->out_cols = malloc(sizeof(int32_t) * (size_t)n);
	q->out_vals = malloc(sizeof(uint16_t) * (size_t)n * (size_t)q->rows);
	if (!q->out_cols || !q->out_vals)
		return -1;
	memcpy(q->out_cols, cols, sizeof(int32_t) * (size_t)n);
	for (int i = 1; i < n; i++) /* insertion sort: n is small */
		for (int j = i; j > 0 && q->out_cols[j - 1] > q->out_cols[j]; j--) {
			int32_t t = q->out_cols[j];
			q->out_cols[j] = q->out_cols[j - 1];
			q->out_cols[j - 1] = t;
		}
	q->n_out = n;
	for (int r = 0; r < q->rows; r++)
		for (int i = 0; i < n; i++)
			q->out_vals[(size_t)r * n + i] =
				kn_fp32_to_fp16_ref(w[(size_t)r * q->cols + q->out_cols[i]]);
	return 0;
}

static size_t scale_bytes(const kn_qparams *p, size_t n_scales)
{
	switch (p->fmt) {
	case KN_QF_INT:
		return n_scales * 2 * (p->sym ? 1 : 2); /* fp16 scales (+ fp16 zeros) */
	case KN_QF_NF4:
		if (p->dq) /* int8 per scale, fp32 scale per 256, fp32 offset */
			return n_scales + (n_scales + 255) / 256 * 4 + 4;
		return n_scales * 4; /* fp32 absmax, as bitsandbytes */
	case KN_QF_FP8:
		return n_scales * 4;
	default:
		return 0;
	}
}

size_t kn_qparams_bytes(const kn_qparams *p, int rows, int cols)
{
	int gs, ng;
	size_t ns;
	shape_groups(p, rows, cols, &gs, &ng, &ns);
	kn_qparams pp = *p;
	if (p->fmt == KN_QF_NF4)
		pp.bits = 4;
	return (size_t)rows * code_stride(&pp, cols) + scale_bytes(p, ns);
}

double kn_qparams_bpw(const kn_qparams *p, int rows, int cols)
{
	return 8.0 * (double)kn_qparams_bytes(p, rows, cols) / ((double)rows * cols);
}

size_t kn_qmatrix_bytes(const kn_qmatrix *q)
{
	size_t ns;
	int gs, ng;
	shape_groups(&q->p, q->rows, q->cols, &gs, &ng, &ns);
	return (size_t)q->rows * q->code_stride + scale_bytes(&q->p, ns) +
	       (size_t)q->n_out * 4 + (size_t)q->n_out * (size_t)q->rows * 2 +
	       (q->g_idx ? (size_t)q->cols * 4 : 0);
}

static float fp16_round(float x) { return kn_fp16_to_fp32_ref(kn_fp32_to_fp16_ref(x)); }

void kn_int_grid(const float *w, int n, int bits, int sym, float clip, float *scale, float *zero)
{
	const int maxq = (1 << bits) - 1;
	float mn = 0.0f, mx = 0.0f; /* the range always includes 0 */
	for (int i = 0; i < n; i++) {
		mn = w[i] < mn ? w[i] : mn;
		mx = w[i] > mx ? w[i] : mx;
	}
	mn *= clip;
	mx *= clip;
	if (sym) {
		float a = fmaxf(-mn, mx);
		mn = -a;
		mx = a;
	}
	if (mn == 0.0f && mx == 0.0f) {
		mn = -1.0f;
		mx = 1.0f;
	}
	float s = fp16_round((mx - mn) / (float)maxq);
	if (!(s > 0.0f) || !isfinite(s))
		s = s > 0.0f ? 65504.0f : 6.1035156e-05f; /* fp16 limits */
	*scale = s;
	*zero = sym ? (float)((maxq + 1) / 2) : roundf(-mn / s);
	if (*zero < 0)
		*zero = 0;
	if (*zero > (float)maxq)
		*zero = (float)maxq;
}

/* squared error of quantizing w[0..n) with (s, z) */
static double grid_err(const float *w, int n, float s, float z, int maxq)
{
	double e = 0;
	for (int i = 0; i < n; i++) {
		double d = (double)w[i] - kn_int_dequant(kn_int_quant(w[i], s, z, maxq), s, z);
		e += d * d;
	}
	return e;
}

/* Grid for n values: min-max, or the best clip of 100 down to 0.2 by MSE
 * (the GPTQ reference quantizer: grid 100, maxshrink 0.8; we use norm 2). */
static void best_grid(const float *w, int n, int bits, int sym, int mse, float *s, float *z)
{
	kn_int_grid(w, n, bits, sym, 1.0f, s, z);
	if (!mse)
		return;
	const int maxq = (1 << bits) - 1;
	double best = grid_err(w, n, *s, *z, maxq);
	for (int i = 1; i < 80; i++) {
		float cs, cz, clip = 1.0f - (float)i / 100.0f;
		kn_int_grid(w, n, bits, sym, clip, &cs, &cz);
		double e = grid_err(w, n, cs, cz, maxq);
		if (e < best) {
			best = e;
			*s = cs;
			*z = cz;
		}
	}
}

static void quant_int(kn_qmatrix *q, const float *w, int mse)
{
	const int maxq = (1 << q->p.bits) - 1, R = q->rows, C = q->cols;
	if (q->p.group == KN_GROUP_TENSOR) {
		float s, z;
		best_grid(w, R * C, q->p.bits, q->p.sym, mse, &s, &z); /* outliers included: rare */
		q->scale[0] = s;
		if (q->zero)
			q->zero[0] = z;
	}
	float *masked = NULL;
	if (q->n_out) {
		/* outlier columns are stored in FP16: keep them out of the grids */
		masked = malloc(sizeof(float) * (size_t)R * C);
		if (masked) {
			memcpy(masked, w, sizeof(float) * (size_t)R * C);
			for (int r = 0; r < R; r++)
				for (int i = 0; i < q->n_out; i++)
					masked[(size_t)r * C + q->out_cols[i]] = 0.0f;
		}
	}
	const float *gw = masked ? masked : w;
#pragma omp parallel for schedule(static) if ((long)R * C > 65536)
	for (int r = 0; r < R; r++) {
		const float *row = w + (size_t)r * C;
		for (int g = 0; g < q->n_groups; g++) {
			const int c0 = g * q->gsize;
			size_t gi = kn_qgroup(q, r, c0);
			float s, z;
			if (q->p.group != KN_GROUP_TENSOR) {
				best_grid(gw + (size_t)r * C + c0, q->gsize, q->p.bits, q->p.sym, mse, &s, &z);
				q->scale[gi] = s;
				if (q->zero)
					q->zero[gi] = z;
			}
			s = q->scale[gi];
			z = q->zero ? q->zero[gi] : (float)((maxq + 1) / 2);
			for (int c = c0; c < c0 + q->gsize; c++)
				kn_qcode_set(q, r, c, (unsigned)kn_int_quant(row[c], s, z, maxq));
		}
	}
	free(masked);
}

/* NF4: absmax per block; double quantization of the absmax values as in
 * QLoRA (offset by their mean, 8-bit code, fp32 scale per 256 blocks; we use
 * a linear symmetric int8 code where bitsandbytes uses its dynamic map). */
static void quant_nf4(kn_qmatrix *q, const float *w)
{
	const int R = q->rows, C = q->cols;
	size_t ns = q->p.group == KN_GROUP_TENSOR ? 1 : (size_t)R * q->n_groups;
	if (q->p.group == KN_GROUP_TENSOR) {
		float a = 0;
		for (size_t i = 0; i < (size_t)R * C; i++)
			a = fmaxf(a, fabsf(w[i]));
		q->scale[0] = a;
	} else {
		for (int r = 0; r < R; r++)
			for (int g = 0; g < q->n_groups; g++) {
				float a = 0;
				const float *x = w + (size_t)r * C + (size_t)g * q->gsize;
				for (int i = 0; i < q->gsize; i++)
					a = fmaxf(a, fabsf(x[i]));
				q->scale[(size_t)r * q->n_groups + g] = a;
			}
	}
	if (q->p.dq && ns > 1) {
		double mean = 0;
		for (size_t i = 0; i < ns; i++)
			mean += q->scale[i];
		mean /= (double)ns;
		for (size_t b = 0; b < ns; b += 256) {
			size_t e = b + 256 < ns ? b + 256 : ns;
			float a = 0;
			for (size_t i = b; i < e; i++)
				a = fmaxf(a, fabsf(q->scale[i] - (float)mean));
			float d = a / 127.0f;
			for (size_t i = b; i < e; i++) {
				float c = d > 0 ? roundf((q->scale[i] - (float)mean) / d) : 0;
				q->scale[i] = (float)mean + c * d;
			}
		}
	}
	for (int r = 0; r < R; r++)
		for (int c = 0; c < C; c++) {
			float a = q->scale[kn_qgroup(q, r, c)];
			float x = a > 0 ? w[(size_t)r * C + c] / a : 0.0f;
			kn_qcode_set(q, r, c, (unsigned)kn_nf4_index(x));
		}
}

static void quant_fp8(kn_qmatrix *q, const float *w)
{
	for (int r = 0; r < q->rows; r++) {
		const float *x = w + (size_t)r * q->cols;
		float a = 0;
		for (int c = 0; c < q->cols; c++)
			a = fmaxf(a, fabsf(x[c]));
		float s = a > 0 ? a / 448.0f : 1.0f;
		q->scale[r] = s;
		uint8_t *o = q->codes + (size_t)r * q->code_stride;
		for (int c = 0; c < q->cols; c++)
			o[c] = kn_float_to_fp8_e4m3(x[c] / s);
	}
}

void kn_qmatrix_quantize_rtn(kn_qmatrix *q, const float *w, int mse_grid)
{
	const kn_type_traits *tr;
	switch (q->p.fmt) {
	case KN_QF_INT:
		quant_int(q, w, mse_grid);
		break;
	case KN_QF_NF4:
		quant_nf4(q, w);
		break;
	case KN_QF_FP8:
		quant_fp8(q, w);
		break;
	case KN_QF_GGML:
		tr = kn_traits(q->p.ggml_type);
		for (int r = 0; r < q->rows; r++)
			tr->from_float(w + (size_t)r * q->cols, q->codes + (size_t)r * q->code_stride,
				       (size_t)q->cols);
		break;
	case KN_QF_F16:
		for (int r = 0; r < q->rows; r++)
			kn_fp32_to_fp16_row(w + (size_t)r * q->cols,
					    (kn_fp16 *)(q->codes + (size_t)r * q->code_stride),
					    (size_t)q->cols);
		break;
	case KN_QF_BF16:
		for (int r = 0; r < q->rows; r++) {
			kn_bf16 *o = (kn_bf16 *)(q->codes + (size_t)r * q->code_stride);
			for (int c = 0; c < q->cols; c++)
				o[c] = kn_fp32_to_bf16_ref(w[(size_t)r * q->cols + c]);
		}
		break;
	default:
		break;
	}
}

static void dequant_row(const kn_qmatrix *q, int r, float *y)
{
	const int C = q->cols;
	const uint8_t *row = q->codes + (size_t)r * q->code_stride;
	switch (q->p.fmt) {
	case KN_QF_INT: {
		const int maxq = (1 << q->p.bits) - 1;
		const float zs = (float)((maxq + 1) / 2);
		if (q->g_idx) {
			for (int c = 0; c < C; c++) {
				size_t gi = kn_qgroup(q, r, c);
				float z = q->zero ? q->zero[gi] : zs;
				y[c] = q->scale[gi] * ((float)kn_qcode_get(q, r, c) - z);
			}
			break;
		}
		for (int g = 0; g < q->n_groups; g++) {
			const int c0 = g * q->gsize;
			size_t gi = kn_qgroup(q, r, c0);
			const float s = q->scale[gi], z = q->zero ? q->zero[gi] : zs;
			if (q->p.bits == 4) {
				for (int c = c0; c < c0 + q->gsize; c++)
					y[c] = s * ((float)((row[c >> 1] >> ((c & 1) * 4)) & 15) - z);
			} else if (q->p.bits == 8) {
				for (int c = c0; c < c0 + q->gsize; c++)
					y[c] = s * ((float)row[c] - z);
			} else {
				for (int c = c0; c < c0 + q->gsize; c++)
					y[c] = s * ((float)kn_qcode_get(q, r, c) - z);
			}
		}
		break;
	}
	case KN_QF_NF4:
		for (int c = 0; c < C; c++)
			y[c] = kn_nf4_table[(row[c >> 1] >> ((c & 1) * 4)) & 15] *
			       q->scale[kn_qgroup(q, r, c)];
		break;
	case KN_QF_FP8:
		for (int c = 0; c < C; c++)
			y[c] = kn_fp8_e4m3_to_float(row[c]) * q->scale[r];
		break;
	case KN_QF_GGML:
		kn_traits(q->p.ggml_type)->to_float(row, y, (size_t)C);
		break;
	case KN_QF_F16:
		kn_fp16_to_fp32_row((const kn_fp16 *)row, y, (size_t)C);
		break;
	case KN_QF_BF16:
		kn_bf16_to_fp32_row((const kn_bf16 *)row, y, (size_t)C);
		break;
	default:
		memset(y, 0, sizeof(float) * (size_t)C);
		break;
	}
	for (int i = 0; i < q->n_out; i++)
		y[q->out_cols[i]] = kn_fp16_to_fp32_ref(q->out_vals[(size_t)r * q->n_out + i]);
}

void kn_qmatrix_dequant(const kn_qmatrix *q, int r0, int r1, float *dst)
{
#pragma omp parallel for schedule(static) if ((long)(r1 - r0) * q->cols > 65536)
	for (int r = r0; r < r1; r++)
		dequant_row(q, r, dst + (size_t)(r - r0) * q->cols);
}

/* Columns [c0, c0 + n) of row r; c0 and n multiples of 32 (or n reaching the
 * row end), which keeps GGML blocks whole. */
static void dequant_range(const kn_qmatrix *q, int r, int c0, int n, float *y)
{
	const uint8_t *row = q->codes + (size_t)r * q->code_stride;
	const int maxq = (1 << q->p.bits) - 1;
	switch (q->p.fmt) {
	case KN_QF_INT:
		for (int c = c0; c < c0 + n; c++) {
			size_t gi = kn_qgroup(q, r, c);
			float z = q->zero ? q->zero[gi] : (float)((maxq + 1) / 2);
			y[c - c0] = q->scale[gi] * ((float)kn_qcode_get(q, r, c) - z);
		}
		break;
	case KN_QF_NF4:
		for (int c = c0; c < c0 + n; c++)
			y[c - c0] = kn_nf4_table[kn_qcode_get(q, r, c)] * q->scale[kn_qgroup(q, r, c)];
		break;
	case KN_QF_FP8:
		for (int c = c0; c < c0 + n; c++)
			y[c - c0] = kn_fp8_e4m3_to_float(row[c]) * q->scale[r];
		break;
	case KN_QF_GGML: {
		const kn_type_traits *tr = kn_traits(q->p.ggml_type);
		tr->to_float(row + (size_t)c0 / tr->block_size * tr->type_size, y, (size_t)n);
		break;
	}
	case KN_QF_F16:
		kn_fp16_to_fp32_row((const kn_fp16 *)row + c0, y, (size_t)n);
		break;
	case KN_QF_BF16:
		kn_bf16_to_fp32_row((const kn_bf16 *)row + c0, y, (size_t)n);
		break;
	default:
		memset(y, 0, sizeof(float) * (size_t)n);
	}
	for (int i = 0; i < q->n_out; i++) {
		int c = q->out_cols[i];
		if (c >= c0 && c < c0 + n)
			y[c - c0] = kn_fp16_to_fp32_ref(q->out_vals[(size_t)r * q->n_out + i]);
	}
}

float kn_qmatrix_dot(const kn_qmatrix *q, int r, const float *x)
{
	float buf[256], s = 0.0f;
	for (int c0 = 0; c0 < q->cols; c0 += 256) {
		int n = q->cols - c0 < 256 ? q->cols - c0 : 256;
		dequant_range(q, r, c0, n, buf);
		for (int i = 0; i < n; i++)
			s += buf[i] * x[c0 + i];
	}
	return s;
}
