/* quant_awq.c - AWQ's activation-aware scale search and clipping search (Lin
 * et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM
 * Compression and Acceleration"; reference code mit-han-lab/llm-awq,
 * awq/quantize/auto_scale.py and auto_clip.py), and SmoothQuant's migration
 * scales (Xiao et al. 2022; mit-han-lab/smoothquant, smoothquant/smooth.py).
 *
 * Both searches judge a candidate by the squared error it causes in the
 * outputs of the quantized layers on a sample of their input X:
 *
 *     err(row r) = || X (w'_r - w_r) ||^2        (w_r: row r of W, length k)
 *
 * computed with BLAS in one of two equivalent ways, whichever costs fewer
 * flops for the shapes at hand:
 *   direct  E = D X^T (sgemm, rows x T), err_r = sum_t E[r,t]^2;
 *   Gram    G = X^T X once (ssyrk, k x k), M = D G (sgemm), err_r = <M_r, D_r>;
 * where D = W' - W. Working with D rather than subtracting two outputs keeps
 * the small differences accurate in float. The Gram form wins when the sample
 * has more tokens than the matrix has input columns (a small model with many
 * calibration tokens, or a clip group shorter than the 512 clip samples).
 *
 * Quantization inside the searches is the real quantizer of the spec's format
 * (kn_qmatrix_quantize_rtn + kn_qmatrix_dequant), so every storage format is
 * searched as it will be stored. Matrices are fake-quantized in blocks of rows
 * in parallel (OpenMP) when the format's scales do not span rows. */
#include "quant.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/types.h"

#define AWQ_N_GRID 20           /* alpha grid i / 20, i = 0..19 (auto_scale.py n_grid) */
#define AWQ_SCALE_TOKENS 4096   /* sample of X used to judge an alpha, see sample_rows */
#define AWQ_CLIP_GRID 20        /* auto_clip_layer n_grid */
#define AWQ_CLIP_SHRINKS 10     /* int(max_shrink * n_grid), max_shrink 0.5: 1.00 .. 0.55 */
#define AWQ_CLIP_TOKENS 512     /* auto_clip_layer n_sample_token */
#define FQ_ROWS 64              /* rows per block of the parallel fake-quantization */
#define TMP_FLOATS (1L << 22)   /* 16 MB scratch for products, processed in row chunks */
#define PAR_MIN 65536           /* elements below which a loop is not worth a thread team */

/* ------------------------------------------------------------------ helpers */

/* Every step-th row of X (n x cols), step = max(1, n / cap), as auto_clip_layer
 * samples its input (input_feat[:, 0::n_token // n_sample_token]): between cap
 * and 2 cap - 1 rows when n >= cap, all rows otherwise. Returns X itself when
 * step is 1 (*owned = 0), else a malloc'd copy (*owned = 1); NULL on OOM. */
static const float *sample_rows(const float *X, long n, int cols, long cap, long *T, int *owned)
{
	long step = n / cap > 1 ? n / cap : 1;
	*T = (n + step - 1) / step;
	*owned = 0;
	if (step == 1)
		return X;
	float *s = malloc(sizeof(float) * (size_t)*T * (size_t)cols);
	if (!s)
		return NULL;
	for (long t = 0; t < *T; t++)
		memcpy(s + (size_t)t * cols, X + (size_t)(t * step) * cols, sizeof(float) * (size_t)cols);
	*owned = 1;
	return s;
}

/* G (k x k, full symmetric) = Xs^T Xs over T rows of a k-column slice of Xs
 * whose rows are ldx floats apart. */
static void gram(const float *Xs, long T, int ldx, int k, float *G)
{
	cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, k, (int)T, 1.0f, Xs, ldx, 0.0f, G, k);
	for (int i = 0; i < k; i++)
		for (int j = 0; j < i; j++)
			G[(size_t)i * k + j] = G[(size_t)j * k + i];
}

/* How the output errors of one k-column slice are measured. */
typedef struct err_ctx {
	const float *Xs; /* (T, ldx): sampled input, slice starts here */
	long T;
	int ldx;
	int k;          /* columns in the slice */
	const float *G; /* (k, k) Gram of the slice, or NULL: direct products */
} err_ctx;

/* Direct products cost T k per row; the Gram form k^2 per row plus T k^2
 * once. evals = how many times the same slice is measured. */
static int use_gram(long T, int k, long rows, int evals)
{
	double direct = (double)T * k * (double)rows * evals;
	double g = (double)T * k * k + (double)k * k * (double)rows * evals;
	return g < direct;
}

/* Floats of scratch row_errors needs for up to `rows` rows (at most
 * TMP_FLOATS, or one row's worth if that is more). */
static size_t tmp_floats(const err_ctx *e, long rows)
{
	const long width = e->G ? e->k : e->T;
	const long chunk = TMP_FLOATS / width > 0 ? TMP_FLOATS / width : 1;
	return (size_t)(rows < chunk ? rows : chunk) * (size_t)width;
}

/* err[r] = || Xs d_r ||^2 for r < rows, d_r = D[r, 0..k) (rows ldd apart).
 * tmp holds tmp_floats(e, rows) floats. */
static void row_errors(const err_ctx *e, const float *D, int rows, int ldd, float *tmp,
		       double *err)
{
	const long width = e->G ? e->k : e->T;
	const int chunk = (int)(TMP_FLOATS / width > 0 ? TMP_FLOATS / width : 1);
	for (int r0 = 0; r0 < rows; r0 += chunk) {
		const int m = rows - r0 < chunk ? rows - r0 : chunk;
		const float *Dc = D + (size_t)r0 * ldd;
		if (e->G)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, e->k, e->k, 1.0f, Dc,
				    ldd, e->G, e->k, 0.0f, tmp, e->k);
		else
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, (int)e->T, e->k, 1.0f,
				    Dc, ldd, e->Xs, e->ldx, 0.0f, tmp, (int)e->T);
#pragma omp parallel for schedule(static) if ((long)m * width > PAR_MIN)
		for (int r = 0; r < m; r++) {
			const float *t = tmp + (size_t)r * width;
			double acc = 0;
			if (e->G) {
				const float *d = Dc + (size_t)r * ldd;
				for (int j = 0; j < e->k; j++)
					acc += (double)t[j] * d[j];
			} else {
				for (long j = 0; j < width; j++)
					acc += (double)t[j] * t[j];
			}
			err[r0 + r] = acc;
		}
	}
}

/* Whether a format's scales (and so its quantization) are shared across
 * rows: then the matrix is quantized whole, otherwise in row blocks. */
static int spans_rows(const kn_qparams *p)
{
	return ((p->fmt == KN_QF_INT || p->fmt == KN_QF_NF4) && p->group == KN_GROUP_TENSOR) ||
	       (p->fmt == KN_QF_NF4 && p->dq);
}

/* w (rows x cols) := dequant(quant(w)) with the round-to-nearest quantizer of
 * p. Returns 0 or -1 on allocation failure. */
static int fake_quant(const kn_qparams *p, int mse, float *w, int rows, int cols)
{
	if (spans_rows(p) || rows <= FQ_ROWS || (size_t)rows * cols <= PAR_MIN) {
		kn_qmatrix q;
		if (kn_qmatrix_alloc(&q, p, rows, cols))
			return -1;
		kn_qmatrix_quantize_rtn(&q, w, mse);
		kn_qmatrix_dequant(&q, 0, rows, w);
		kn_qmatrix_release(&q);
		return 0;
	}
	const int nb = (rows + FQ_ROWS - 1) / FQ_ROWS;
	int failed = 0;
#pragma omp parallel for schedule(dynamic) reduction(| : failed)
	for (int b = 0; b < nb; b++) {
		const int r0 = b * FQ_ROWS, m = rows - r0 < FQ_ROWS ? rows - r0 : FQ_ROWS;
		float *wb = w + (size_t)r0 * cols;
		kn_qmatrix q;
		if (kn_qmatrix_alloc(&q, p, m, cols)) {
			failed = 1;
			continue;
		}
		kn_qmatrix_quantize_rtn(&q, wb, mse);
		kn_qmatrix_dequant(&q, 0, m, wb);
		kn_qmatrix_release(&q);
	}
	return failed ? -1 : 0;
}

/* Index of the first non-finite value of a (n), or -1. */
static long find_nonfinite(const float *a, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(a[i]))
			return (long)i;
	return -1;
}

/* Shape and format checks shared by both AWQ searches. */
static int check_matrix(const float *W, int i, int rows, int cols, const quant_spec *s,
			qs_error *err)
{
	char why[160];
	if (!W)
		return qs_err(err, QS_EUSAGE, "awq: matrix %d is null", i);
	if (rows < 1 || cols < 1)
		return qs_err(err, QS_EUSAGE, "awq: matrix %d is empty (%d x %d)", i, rows, cols);
	if (s->fmt.fmt != KN_QF_NONE && kn_qparams_check(&s->fmt, rows, cols, why, sizeof(why)))
		return qs_err(err, QS_EUSAGE, "awq: matrix %d (%d x %d): %s", i, rows, cols, why);
	long bad = find_nonfinite(W, (size_t)rows * cols);
	if (bad >= 0)
		return qs_err(err, QS_EUSAGE, "awq: matrix %d has a non-finite weight at (%ld, %ld)",
			      i, bad / cols, bad % cols);
	return 0;
}

/* -------------------------------------------------------------- AWQ scales */

/* auto_scale.py: s = x_max^ratio clamped to >= 1e-4, then s / sqrt(max s *
 * min s) so the scales straddle 1. */
static void awq_candidate(const double *xmean, int cols, double ratio, float *s)
{
	double mx = 0, mn = INFINITY;
	for (int j = 0; j < cols; j++) {
		double v = pow(xmean[j], ratio);
		v = v < 1e-4 ? 1e-4 : v;
		mx = v > mx ? v : mx;
		mn = v < mn ? v : mn;
		s[j] = (float)v;
	}
	const double norm = sqrt(mx * mn);
	for (int j = 0; j < cols; j++)
		s[j] = (float)(s[j] / norm);
}

/* Sum over rows of || X (Q(W s)/s - W)^T ||^2 for one matrix; D is scratch
 * (rows x cols). Returns -1 on allocation failure. */
static int scaled_error(const err_ctx *e, const float *W, int rows, int cols, const float *sc,
			const quant_spec *s, float *D, float *tmp, double *errv, double *sum)
{
	const size_t nel = (size_t)rows * cols;
#pragma omp parallel for schedule(static) if (nel > PAR_MIN)
	for (int r = 0; r < rows; r++)
		for (int j = 0; j < cols; j++)
			D[(size_t)r * cols + j] = W[(size_t)r * cols + j] * sc[j];
	if (fake_quant(&s->fmt, s->mse, D, rows, cols))
		return -1;
#pragma omp parallel for schedule(static) if (nel > PAR_MIN)
	for (int r = 0; r < rows; r++)
		for (int j = 0; j < cols; j++)
			D[(size_t)r * cols + j] = D[(size_t)r * cols + j] / sc[j] -
						  W[(size_t)r * cols + j];
	row_errors(e, D, rows, cols, tmp, errv);
	double acc = 0;
	for (int r = 0; r < rows; r++)
		acc += errv[r];
	*sum = acc;
	return 0;
}

/* Departures from auto_scale.py's _search_module_scale, all deliberate:
 *  - the loss is the mean squared error of the concatenated outputs of the
 *    matrices that share the input (q/k/v; gate/up), not of the module
 *    around them: the reference runs the whole attention block for q/k/v and
 *    the whole MLP for gate/up (so softmax and SiLU*up shape its loss), which
 *    a per-matrix library call cannot see; for o_proj and down_proj the
 *    inspected module is the linear itself, and the two agree;
 *  - the loss is measured on every (n / 4096)-th row of X (all rows when n <
 *    8192), where the reference uses all calibration tokens; x_max uses all
 *    n rows as get_act_scale does;
 *  - ties keep the smaller ratio (the reference's strict '<' too); a grid
 *    with no finite loss is an error (the reference raises). */
int quant_awq_scales(const float *X, long n, const float *const *W, const int *rows, int n_w,
		     int cols, const quant_spec *s, float *scales, float *alpha_out,
		     qs_error *err)
{
	if (!X || !W || !rows || !s || !scales)
		return qs_err(err, QS_EUSAGE, "awq: null argument");
	if (n_w < 1)
		return qs_err(err, QS_EUSAGE, "awq: no matrices to scale (n_w %d)", n_w);
	if (n < 1 || cols < 1)
		return qs_err(err, QS_EUSAGE, "awq: empty input sample (%ld x %d)", n, cols);
	if (s->alpha >= 0 && !(s->alpha <= 1))
		return qs_err(err, QS_EUSAGE, "awq: alpha %g not in [0, 1]", (double)s->alpha);
	long rtot = 0;
	int rmax = 0;
	for (int i = 0; i < n_w; i++) {
		int rc = check_matrix(W[i], i, rows[i], cols, s, err);
		if (rc)
			return rc;
		rtot += rows[i];
		rmax = rows[i] > rmax ? rows[i] : rmax;
	}

	int rc = 0, owned = 0;
	double *xmean = NULL, *errv = NULL;
	float *cand = NULL, *best = NULL, *D = NULL, *tmp = NULL, *G = NULL;
	const float *Xs = NULL;
	long T = 0;
	float chosen = 0.0f;
	double best_loss = INFINITY;
	err_ctx e = {NULL, 0, cols, cols, NULL};

	/* get_act_scale: mean over all rows of |x| per channel */
	xmean = calloc((size_t)cols, sizeof(double));
	cand = malloc(sizeof(float) * (size_t)cols);
	best = malloc(sizeof(float) * (size_t)cols);
	if (!xmean || !cand || !best)
		goto oom;
	for (long t = 0; t < n; t++) {
		const float *x = X + (size_t)t * cols;
		for (int j = 0; j < cols; j++)
			xmean[j] += fabs((double)x[j]);
	}
	for (int j = 0; j < cols; j++) {
		xmean[j] /= (double)n;
		if (!isfinite(xmean[j])) {
			rc = qs_err(err, QS_EUSAGE, "awq: input channel %d has non-finite values", j);
			goto out;
		}
	}

	if (s->fmt.fmt == KN_QF_NONE) {
		/* nothing is quantized: nothing to protect */
		for (int j = 0; j < cols; j++)
			best[j] = 1.0f;
	} else if (s->alpha >= 0) {
		chosen = s->alpha;
		awq_candidate(xmean, cols, chosen, best);
	} else {
		Xs = sample_rows(X, n, cols, AWQ_SCALE_TOKENS, &T, &owned);
		errv = malloc(sizeof(double) * (size_t)rmax);
		D = malloc(sizeof(float) * (size_t)rmax * (size_t)cols);
		if (!Xs || !errv || !D)
			goto oom;
		e.Xs = Xs;
		e.T = T;
		if (use_gram(T, cols, rtot, AWQ_N_GRID)) {
			G = malloc(sizeof(float) * (size_t)cols * (size_t)cols);
			if (!G)
				goto oom;
			gram(Xs, T, cols, cols, G);
			e.G = G;
		}
		tmp = malloc(sizeof(float) * tmp_floats(&e, rmax));
		if (!tmp)
			goto oom;
		for (int i = 0; i < AWQ_N_GRID; i++) {
			/* the ratio as a float alpha, so that alpha_out given back as a
			 * fixed alpha reproduces these scales bit for bit */
			const double ratio = (float)i / AWQ_N_GRID;
			awq_candidate(xmean, cols, ratio, cand);
			double loss = 0;
			for (int m = 0; m < n_w; m++) {
				double sum;
				if (scaled_error(&e, W[m], rows[m], cols, cand, s, D, tmp, errv, &sum))
					goto oom;
				loss += sum;
			}
			loss /= (double)T * (double)rtot;
			if (loss < best_loss) {
				best_loss = loss;
				chosen = (float)ratio;
				memcpy(best, cand, sizeof(float) * (size_t)cols);
			}
		}
		if (!(best_loss < INFINITY)) {
			rc = qs_err(err, QS_EFORMAT,
				    "awq: no finite output error on the alpha grid (%ld x %d input)", n,
				    cols);
			goto out;
		}
	}
	memcpy(scales, best, sizeof(float) * (size_t)cols);
	if (alpha_out)
		*alpha_out = chosen;
	goto out;
oom:
	rc = qs_err(err, QS_ENOMEM, "awq: out of memory (%ld x %d input, %d matrices)", n, cols,
		    n_w);
out:
	if (owned)
		free((void *)Xs);
	free(xmean);
	free(errv);
	free(cand);
	free(best);
	free(D);
	free(tmp);
	free(G);
	return rc;
}

/* ---------------------------------------------------------------- AWQ clip */

/* The clip of shrink step i: max_val = org_max_val * (1 - i / n_grid), in
 * float as the reference computes it, so search and result agree exactly. */
static float clip_max(float amax, int i)
{
	return amax * (1.0f - (float)i / (float)AWQ_CLIP_GRID);
}

static float clampf(float w, float m)
{
	return w < -m ? -m : w > m ? m : w;
}

/* auto_clip_layer: for each output row and group, max_val = absmax of the
 * group; try max_val * (1 - i/20) for i = 0..9 (1.00 down to 0.55), clamp the
 * group to [-max_val, max_val] (both sides, also for asymmetric grids, as the
 * reference does), quantize, and keep the clip with the smallest squared error
 * of the group's contribution to the outputs on every (n / 512)-th row of X.
 * The group is the format's scale group: INT/NF4 group (a whole row for
 * per-channel), the ggml block, a row for FP8. A per-tensor grid has one
 * scale for everything, so there the clip is one choice for the whole matrix
 * judged by the total error (the reference has no per-tensor case). F16, BF16
 * and none have no range to fit: Wc = W. NF4 with double quantization couples
 * the groups' scales slightly; the search treats the groups as independent. */
int quant_awq_clip(const float *X, long n, const float *W, int rows, int cols,
		   const quant_spec *s, float *Wc, qs_error *err)
{
	if (!X || !s || !Wc)
		return qs_err(err, QS_EUSAGE, "awq: null argument");
	if (n < 1)
		return qs_err(err, QS_EUSAGE, "awq: empty input sample (%ld x %d)", n, cols);
	int rc = check_matrix(W, 0, rows, cols, s, err);
	if (rc)
		return rc;
	const kn_qparams *p = &s->fmt;
	const size_t nel = (size_t)rows * cols;
	if (p->fmt == KN_QF_NONE || p->fmt == KN_QF_F16 || p->fmt == KN_QF_BF16) {
		memmove(Wc, W, sizeof(float) * nel);
		return 0;
	}
	const int tensor = (p->fmt == KN_QF_INT || p->fmt == KN_QF_NF4) && p->group == KN_GROUP_TENSOR;
	int cg = cols; /* clip group: columns sharing a scale */
	if ((p->fmt == KN_QF_INT || p->fmt == KN_QF_NF4) && p->group > 0)
		cg = p->group;
	else if (p->fmt == KN_QF_GGML)
		cg = (int)kn_traits(p->ggml_type)->block_size;
	const int ng = cols / cg;
	const size_t nsel = (size_t)rows * ng;

	int owned = 0;
	long T = 0;
	const float *Xs = NULL;
	float *amax = NULL, *D = NULL, *tmp = NULL, *G = NULL;
	double *best = NULL, *errv = NULL;
	unsigned char *pick = NULL;
	int gram_mode = 0, pick_total = 0;
	float tmax = 0.0f;
	double best_total = INFINITY;

	for (long t = 0; t < n * cols; t++)
		if (!isfinite(X[t])) {
			rc = qs_err(err, QS_EUSAGE, "awq: input channel %ld has non-finite values",
				    t % cols);
			goto out;
		}
	Xs = sample_rows(X, n, cols, AWQ_CLIP_TOKENS, &T, &owned);
	amax = malloc(sizeof(float) * nsel);
	best = malloc(sizeof(double) * nsel);
	pick = calloc(nsel, 1);
	errv = malloc(sizeof(double) * (size_t)rows);
	D = malloc(sizeof(float) * nel);
	if (!Xs || !amax || !best || !pick || !errv || !D)
		goto oom;
	gram_mode = use_gram(T, cg, rows, AWQ_CLIP_SHRINKS);
	if (gram_mode) {
		G = malloc(sizeof(float) * (size_t)ng * (size_t)cg * (size_t)cg);
		if (!G)
			goto oom;
		for (int g = 0; g < ng; g++)
			gram(Xs + (size_t)g * cg, T, cols, cg, G + (size_t)g * cg * cg);
	}
	{
		const err_ctx e0 = {Xs, T, cols, cg, G};
		tmp = malloc(sizeof(float) * tmp_floats(&e0, rows));
		if (!tmp)
			goto oom;
	}

	/* org_max_val per (row, group); per tensor, one absmax for all */
	for (size_t i = 0; i < nsel; i++) {
		const float *w = W + i * cg;
		float a = 0.0f;
		for (int c = 0; c < cg; c++)
			a = fabsf(w[c]) > a ? fabsf(w[c]) : a;
		amax[i] = a;
		best[i] = INFINITY;
		tmax = a > tmax ? a : tmax;
	}
	if (tensor)
		for (size_t i = 0; i < nsel; i++)
			amax[i] = tmax;

	for (int is = 0; is < AWQ_CLIP_SHRINKS; is++) {
#pragma omp parallel for schedule(static) if (nel > PAR_MIN)
		for (size_t i = 0; i < nsel; i++) {
			const float m = clip_max(amax[i], is);
			for (int c = 0; c < cg; c++)
				D[i * cg + c] = clampf(W[i * cg + c], m);
		}
		if (fake_quant(p, s->mse, D, rows, cols))
			goto oom;
#pragma omp parallel for schedule(static) if (nel > PAR_MIN)
		for (size_t i = 0; i < nel; i++)
			D[i] -= W[i];
		double total = 0;
		for (int g = 0; g < ng; g++) {
			err_ctx e = {Xs + (size_t)g * cg, T, cols, cg,
				     gram_mode ? G + (size_t)g * cg * cg : NULL};
			row_errors(&e, D + (size_t)g * cg, rows, cols, tmp, errv);
			for (int r = 0; r < rows; r++) {
				const size_t i = (size_t)r * ng + g;
				total += errv[r];
				if (errv[r] < best[i]) {
					best[i] = errv[r];
					pick[i] = (unsigned char)is;
				}
			}
		}
		if (total < best_total) {
			best_total = total;
			pick_total = is;
		}
	}

	/* apply_clip: clamp W to the chosen +-max_val */
#pragma omp parallel for schedule(static) if (nel > PAR_MIN)
	for (size_t i = 0; i < nsel; i++) {
		const float m = clip_max(amax[i], tensor ? pick_total : pick[i]);
		for (int c = 0; c < cg; c++)
			Wc[i * cg + c] = clampf(W[i * cg + c], m);
	}
	goto out;
oom:
	rc = qs_err(err, QS_ENOMEM, "awq: out of memory clipping a %d x %d matrix", rows, cols);
out:
	if (owned)
		free((void *)Xs);
	free(amax);
	free(best);
	free(pick);
	free(errv);
	free(D);
	free(tmp);
	free(G);
	return rc;
}

/* ------------------------------------------------------------- SmoothQuant */

/* smooth_ln_fcs: w_max_j = max over the matrices and rows of |W[r, j]|,
 * clamped to >= 1e-5; s_j = x_absmax_j^alpha / w_max_j^(1 - alpha), clamped
 * to >= 1e-5. A channel whose statistics are not finite keeps s = 1 (no
 * smoothing); with no matrices (or bad arguments) every s is 1. */
void quant_smooth_scales(const float *x_absmax, const float *const *W, const int *rows,
			 int n_w, int cols, float alpha, float *scales)
{
	if (!scales || cols < 1)
		return;
	for (int j = 0; j < cols; j++)
		scales[j] = 1.0f;
	if (!x_absmax || !W || !rows || n_w < 1 || !isfinite(alpha))
		return;
	float *wmax = calloc((size_t)cols, sizeof(float));
	float *nan = calloc((size_t)cols, sizeof(float)); /* w * 0: NaN iff w not finite */
	if (!wmax || !nan)
		goto out;
	for (int i = 0; i < n_w; i++) {
		if (!W[i])
			continue;
		for (int r = 0; r < rows[i]; r++) {
			const float *w = W[i] + (size_t)r * cols;
			for (int j = 0; j < cols; j++) {
				const float a = fabsf(w[j]);
				wmax[j] = a > wmax[j] ? a : wmax[j];
				nan[j] += w[j] * 0.0f;
			}
		}
	}
	for (int j = 0; j < cols; j++) {
		const double wm = wmax[j] < 1e-5f ? 1e-5 : (double)wmax[j];
		double v = pow(fabs((double)x_absmax[j]), alpha) / pow(wm, 1.0 - alpha);
		v = v < 1e-5 ? 1e-5 : v;
		if (isfinite(v) && nan[j] == 0.0f && (float)v < INFINITY)
			scales[j] = (float)v;
	}
out:
	free(wmax);
	free(nan);
}
