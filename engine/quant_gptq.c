/* quant_gptq.c - GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022) for one
 * weight matrix into an INT grid, following IST-DASLab's gptq.py/quant.py.
 *
 * The method, in the reference's terms (W is rows x cols, H cols x cols):
 *   H = 2 X^T X / n; dead inputs (H_ii = 0) get H_ii = 1 and W[:, i] = 0;
 *   optional act_order: columns by descending diag(H);
 *   H += damp * mean(diag H) * I;  Hinv = upper Cholesky factor of H^-1;
 *   for each block of `block` columns, for each column i in it:
 *       q = quant(w_i); err = (w_i - q) / Hinv_ii;
 *       w_j -= err * Hinv_ij for the later columns j of the block;
 *   then the lazy batch update of every later column in one sgemm:
 *       W[:, i2:] -= Err1 · Hinv[i1:i2, i2:].
 *
 * Where we differ from the reference, and why:
 *   - Hinv is computed without forming H^-1. If H = R R^T with R upper
 *     triangular, then H^-1 = (R^-1)^T R^-1 and U = R^-1 is the upper
 *     Cholesky factor of H^-1 (unique, positive diagonal), i.e. the same
 *     matrix as the reference's cholesky -> cholesky_inverse ->
 *     cholesky(upper) chain. R is the lower Cholesky factor of J H J (J
 *     reverses the index order; on a flat array that is reversing the
 *     array), reversed back. One dpotrf and one dtrtri in double: half the
 *     flops of dpotrf + dpotri + dpotrf and no explicit inverse.
 *   - If H + damp is not positive definite (singular H from too few
 *     calibration rows and damp 0, or rounding), the factorization is
 *     retried with ten times the dampening, up to GPTQ_DAMP_RETRIES times;
 *     the reference fails instead.
 *   - Group grids are found at the group's first column over the current,
 *     error-updated weights of the group's columns (the textbook algorithm).
 *     The reference reads W there, whose columns in the current block lack
 *     the feedback of the block's earlier columns when a group starts
 *     inside a block (group < block); with group 128 = block 128 the two
 *     agree. To keep the result independent of the block size, a block is
 *     ended early before a group that would start inside it and run past
 *     its end.
 *   - act_order with groups (without static_groups) follows the reference:
 *     groups are runs of gsize positions in the permuted order, so each
 *     column's group is recorded in q->g_idx (AutoGPTQ/GPTQModel's g_idx,
 *     counted in the storage as an int32 per column); static_groups keeps
 *     the original column groups with grids computed before the pass.
 *   - Outlier columns (q->out_cols, kept in FP16 by the format) are not
 *     quantized: they are processed last, after every quantized column, so
 *     they absorb as much of the error feedback as possible, their own
 *     "quantization" is the FP16 rounding, and their error-compensated
 *     values replace q->out_vals. Grids ignore them.
 *   - act_order sorts stably (ties keep the column order).
 *
 * Grids: kn_int_grid (the reference quantizer's min-max grid, FP16 scale).
 * Per channel / per tensor: found once from W before dead columns are
 * zeroed (as the reference's find_params(W) ahead of the pass). spec->mse:
 * the reference quantizer's MSE search, shrinking the range by p = 1 - i/100
 * for i < 80 and keeping the grid with the least sum |w - Q(w)|^2.4. */
#include "quant.h"

#include <cblas.h>
#include <lapacke.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/fp16.h"

#define GPTQ_MSE_GRID 100  /* quant.py: grid */
#define GPTQ_MSE_STEPS 80  /* quant.py: int(maxshrink * grid), maxshrink 0.8 */
#define GPTQ_MSE_NORM 2.4f /* quant.py: norm */
#define GPTQ_DAMP_RETRIES 3 /* damp x 10, x 100, x 1000: 0.01 -> 10 x mean diagonal */

/* sum |x - Q(x)|^norm over x[0..n) */
static double lp_err(const float *x, int n, float s, float z, int maxq)
{
	double e = 0;
	for (int k = 0; k < n; k++) {
		float d = fabsf(kn_int_dequant(kn_int_quant(x[k], s, z, maxq), s, z) - x[k]);
		if (d > 0)
			e += (double)powf(d, GPTQ_MSE_NORM);
	}
	return e;
}

/* Grid of n values: min-max, or the reference's MSE-optimal shrink. */
static void find_grid(const float *x, int n, int bits, int sym, int mse, float *scale,
		      float *zero)
{
	enum { CHUNKS = 64 }; /* a per-tensor grid: fixed chunks, summed in order */
	kn_int_grid(x, n, bits, sym, 1.0f, scale, zero);
	if (!mse)
		return;
	const int maxq = (1 << bits) - 1;
	double best = INFINITY;
	for (int i = 0; i < GPTQ_MSE_STEPS; i++) {
		float s, z, p = 1.0f - (float)i / GPTQ_MSE_GRID;
		kn_int_grid(x, n, bits, sym, p, &s, &z);
		double e = 0;
		if (n > 65536) {
			double part[CHUNKS];
			const int step = (n + CHUNKS - 1) / CHUNKS;
#pragma omp parallel for schedule(static)
			for (int k = 0; k < CHUNKS; k++) {
				const long a0 = (long)k * step;
				const int a = a0 < n ? (int)a0 : n, b = n - a < step ? n : a + step;
				part[k] = lp_err(x + a, b - a, s, z, maxq);
			}
			for (int k = 0; k < CHUNKS; k++)
				e += part[k];
		} else {
			e = lp_err(x, n, s, z, maxq);
		}
		if (e < best) {
			best = e;
			*scale = s;
			*zero = z;
		}
	}
}

struct diag_key {
	double d;
	int i;
};

static int cmp_diag_desc(const void *a, const void *b)
{
	const struct diag_key *x = a, *y = b;
	if (x->d != y->d)
		return x->d > y->d ? -1 : 1;
	return (x->i > y->i) - (x->i < y->i);
}

/* Reverse a flat array in place: (i, j) <-> (n-1-i, n-1-j) of an n x n matrix. */
static void flat_reverse(double *a, size_t len)
{
	for (size_t i = 0, j = len - 1; i < j; i++, j--) {
		double t = a[i];
		a[i] = a[j];
		a[j] = t;
	}
}

/* A (C x C, row-major) <- upper Cholesky factor U of Hs^-1, where
 * Hs = f * H[perm][perm] with dead diagonals set to 1, plus frac * mean(diag)
 * on the diagonal. The strict lower triangle of A is left as scratch.
 * Returns 0, or the LAPACK info (> 0: not positive definite at that column;
 * < 0: an argument or NaN problem). */
static int hinv_factor(double *A, const double *H, const int *perm, const unsigned char *dead,
		       int C, double f, double frac)
{
	/* A = J Hs J directly: A[i][j] = Hs[rp[i]][rp[j]] with rp[i] = perm[C-1-i] */
	double mean = 0;
	for (int i = 0; i < C; i++) {
		const int pi = perm[C - 1 - i];
		const double *hrow = H + (size_t)pi * C;
		double *arow = A + (size_t)i * C;
		for (int j = 0; j < C; j++)
			arow[j] = f * hrow[perm[C - 1 - j]];
		if (dead[pi])
			arow[i] = 1.0;
		mean += arow[i];
	}
	const double lambda = frac * mean / C;
	for (int i = 0; i < C; i++)
		A[(size_t)i * C + i] += lambda;
	/* Column-major calls on the row-major array (no transposed copies):
	 * col-major 'U' is row-major lower, so this leaves M (lower) with
	 * J Hs J = M M^T in the row-major lower triangle. */
	lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', C, A, C);
	if (info)
		return (int)info;
	/* R = J M J (row-major upper), Hs = R R^T */
	flat_reverse(A, (size_t)C * C);
	/* row-major upper is col-major lower: U = R^-1 in place */
	info = LAPACKE_dtrtri(LAPACK_COL_MAJOR, 'L', 'N', C, A, C);
	return (int)info;
}

/* Turn the C*C doubles at a into floats at the start of the same buffer.
 * Float k overlaps double k/2, already read; chunks go through a small
 * buffer so no byte is read through one type after it was written through
 * the other. */
static void doubles_to_floats_inplace(void *a, size_t len)
{
	enum { CH = 1024 };
	double dbuf[CH];
	float fbuf[CH];
	char *base = a;
	for (size_t k0 = 0; k0 < len; k0 += CH) {
		size_t m = len - k0 < CH ? len - k0 : CH;
		memcpy(dbuf, base + k0 * sizeof(double), m * sizeof(double));
		for (size_t k = 0; k < m; k++)
			fbuf[k] = (float)dbuf[k];
		memcpy(base + k0 * sizeof(float), fbuf, m * sizeof(float));
	}
}

static void fmt_str(const kn_qparams *p, char *buf, size_t cap)
{
	if (p->group == KN_GROUP_ROW)
		snprintf(buf, cap, "int%d per channel %s", p->bits, p->sym ? "sym" : "asym");
	else if (p->group == KN_GROUP_TENSOR)
		snprintf(buf, cap, "int%d per tensor %s", p->bits, p->sym ? "sym" : "asym");
	else
		snprintf(buf, cap, "int%d g%d %s", p->bits, p->group, p->sym ? "sym" : "asym");
}

struct gptq_ctx {
	kn_qmatrix *q;
	float *Wp;           /* (rows, cols) working weights, permuted columns */
	float *E;            /* (rows, block) scaled errors of the current block */
	const float *Hinv;   /* (cols, cols) upper factor, permuted order */
	const int *perm;     /* (cols) original column of each position */
	const int *gstart;   /* (nq) dynamic groups: first position of the group; or NULL */
	const int *gend;     /* (nq) one past its last position */
	int C, B, nq, bits, sym, mse;
};

/* Quantize row r over the positions [i1, i2) of one block, with the error
 * feedback inside the block; the row's scaled errors go to E. */
static void quant_block_row(const struct gptq_ctx *x, int r, int i1, int i2)
{
	kn_qmatrix *q = x->q;
	const int C = x->C, maxq = (1 << x->bits) - 1;
	const float zsym = (float)((maxq + 1) / 2);
	float *wr = x->Wp + (size_t)r * C, *er = x->E + (size_t)r * x->B;
	for (int k = i1; k < i2; k++) {
		const int c = x->perm[k];
		const float *h = x->Hinv + (size_t)k * C;
		const float w = wr[k];
		float qv;
		if (k >= x->nq) { /* outlier column: FP16 is its grid */
			kn_fp16 hv = kn_fp32_to_fp16_ref(w);
			q->out_vals[(size_t)r * q->n_out + (k - x->nq)] = hv;
			qv = kn_fp16_to_fp32_ref(hv);
		} else {
			const size_t gi = kn_qgroup(q, r, c);
			if (x->gstart && x->gstart[k] == k) {
				/* the group's positions are contiguous and all either
				 * inside this block or, if the group starts the block,
				 * fully updated by the lazy updates so far */
				float sc, zp;
				find_grid(wr + k, x->gend[k] - k, x->bits, x->sym, x->mse, &sc, &zp);
				q->scale[gi] = sc;
				if (q->zero)
					q->zero[gi] = zp;
			}
			const float sc = q->scale[gi], zp = q->zero ? q->zero[gi] : zsym;
			const int code = kn_int_quant(w, sc, zp, maxq);
			kn_qcode_set(q, r, c, (unsigned)code);
			qv = kn_int_dequant(code, sc, zp);
		}
		const float e = (w - qv) / h[k];
		er[k - i1] = e;
		for (int j = k + 1; j < i2; j++)
			wr[j] -= e * h[j];
	}
}

int quant_gptq(kn_qmatrix *q, const float *W, const double *H, long n, const quant_spec *s,
	       qs_error *err)
{
	char fs[64], fq[64];
	if (!q || !W || !H || !s)
		return qs_err(err, QS_EUSAGE, "gptq: missing matrix, weights, hessian or spec");
	if (q->p.fmt != KN_QF_INT)
		return qs_err(err, QS_EUNSUPP,
			      "gptq: only intB formats are supported (format %d given; ggml, nf4, "
			      "fp8 and 16-bit formats use rtn)",
			      q->p.fmt);
	if (s->fmt.fmt != q->p.fmt || s->fmt.bits != q->p.bits || s->fmt.group != q->p.group ||
	    s->fmt.sym != q->p.sym) {
		fmt_str(&s->fmt, fs, sizeof(fs));
		fmt_str(&q->p, fq, sizeof(fq));
		return qs_err(err, QS_EUSAGE, "gptq: spec format %s differs from the matrix's %s", fs,
			      fq);
	}
	const int R = q->rows, C = q->cols, bits = q->p.bits, sym = q->p.sym;
	if (R < 1 || C < 1 || bits < 2 || bits > 8 || !q->codes || !q->scale ||
	    (!sym && !q->zero) || q->gsize < 1 || q->n_groups < 1)
		return qs_err(err, QS_EUSAGE, "gptq: matrix %d x %d not allocated as int%d", R, C, bits);
	if (n < 1)
		return qs_err(err, QS_EUSAGE, "gptq: no calibration rows (n = %ld)", n);
	if (!(s->damp >= 0) || !isfinite(s->damp))
		return qs_err(err, QS_EUSAGE, "gptq: dampening %g must be a fraction >= 0",
			      (double)s->damp);
	if (s->block < 1)
		return qs_err(err, QS_EUSAGE, "gptq: block %d must be >= 1", s->block);
	if (q->n_out < 0 || q->n_out > C || (q->n_out && (!q->out_cols || !q->out_vals)))
		return qs_err(err, QS_EUSAGE, "gptq: bad outlier columns (%d)", q->n_out);
	for (int i = 0; i < q->n_out; i++)
		if (q->out_cols[i] < 0 || q->out_cols[i] >= C ||
		    (i && q->out_cols[i] <= q->out_cols[i - 1]))
			return qs_err(err, QS_EUSAGE,
				      "gptq: outlier column %d (index %d) out of range or order (cols %d)",
				      (int)q->out_cols[i], i, C);
	if (q->p.group == KN_GROUP_TENSOR && (size_t)R * C > INT_MAX)
		return qs_err(err, QS_EUNSUPP, "gptq: per-tensor grid over %d x %d values", R, C);
	for (size_t i = 0; i < (size_t)R * C; i++)
		if (!isfinite(W[i]))
			return qs_err(err, QS_EUSAGE, "gptq: weight (%zu, %zu) is not finite",
				      i / (size_t)C, i % (size_t)C);
	for (size_t i = 0; i < (size_t)C * C; i++)
		if (!isfinite(H[i]))
			return qs_err(err, QS_EUSAGE, "gptq: hessian entry (%zu, %zu) is not finite",
				      i / (size_t)C, i % (size_t)C);
	for (int i = 0; i < C; i++)
		if (H[(size_t)i * C + i] < 0)
			return qs_err(err, QS_EUSAGE, "gptq: hessian diagonal %d is negative (%g)", i,
				      H[(size_t)i * C + i]);

	const int B = s->block < C ? s->block : C;
	const int n_out = q->n_out, nq = C - n_out;
	const int grouped = q->p.group > 0;
	/* act_order + groups without static_groups: groups are runs of the
	 * processing order, recorded per column in q->g_idx (see the top) */
	const int static_groups = grouped && s->static_groups;
	const int dynamic = grouped && !static_groups;
	const int nth = omp_get_max_threads();
	int rc = 0;

	int *perm = malloc(sizeof(int) * (size_t)C);
	int *gstart = dynamic ? malloc(sizeof(int) * (size_t)C) : NULL;
	int *gend = dynamic ? malloc(sizeof(int) * (size_t)C) : NULL;
	unsigned char *dead = calloc((size_t)C, 1), *isout = calloc((size_t)C, 1);
	struct diag_key *keys = malloc(sizeof(*keys) * (size_t)C);
	float *scratch = malloc(sizeof(float) * (size_t)nth * C);
	float *Wp = NULL, *E = NULL; /* allocated after the factorization: lower peak */
	void *Hbuf = NULL;
	if (!perm || (dynamic && (!gstart || !gend)) || !dead || !isout || !keys || !scratch) {
		rc = qs_err(err, QS_ENOMEM, "gptq: out of memory for a %d x %d matrix", R, C);
		goto out;
	}
	for (int i = 0; i < n_out; i++)
		isout[q->out_cols[i]] = 1;
	const double f = 2.0 / (double)n;
	for (int i = 0; i < C; i++)
		dead[i] = H[(size_t)i * C + i] == 0;

	/* ---- grids fixed before the pass ---- */
	if (q->p.group == KN_GROUP_TENSOR) {
		float *all = n_out ? malloc(sizeof(float) * (size_t)R * C) : NULL;
		size_t m = 0; /* every non-outlier weight */
		if (n_out && !all) {
			rc = qs_err(err, QS_ENOMEM, "gptq: out of memory for a %d x %d matrix", R, C);
			goto out;
		}
		if (all)
			for (int r = 0; r < R; r++)
				for (int c = 0; c < C; c++)
					if (!isout[c])
						all[m++] = W[(size_t)r * C + c];
		float sc, zp;
		find_grid(all ? all : W, all ? (int)m : R * C, bits, sym, s->mse, &sc, &zp);
		free(all);
		q->scale[0] = sc;
		if (q->zero)
			q->zero[0] = zp;
	} else if (!dynamic) {
		/* per channel: from W as given; static groups: from W with the
		 * dead columns zeroed (the reference's order of operations) */
		const int gs = q->gsize;
#pragma omp parallel for schedule(static)
		for (int r = 0; r < R; r++) {
			float *buf = scratch + (size_t)omp_get_thread_num() * C;
			const float *wr = W + (size_t)r * C;
			for (int c0 = 0; c0 < C; c0 += gs) {
				int m = 0;
				for (int c = c0; c < c0 + gs; c++)
					if (!isout[c])
						buf[m++] = grouped && dead[c] ? 0.0f : wr[c];
				if (!m)
					continue; /* all outliers: the grid is unused */
				const size_t gi = kn_qgroup(q, r, c0);
				float sc, zp;
				find_grid(buf, m, bits, sym, s->mse, &sc, &zp);
				q->scale[gi] = sc;
				if (q->zero)
					q->zero[gi] = zp;
			}
		}
	}

	/* ---- processing order: quantized columns (act_order: by descending
	 * diag(H), stable), then the outlier columns in column order ---- */
	{
		int m = 0;
		for (int c = 0; c < C; c++)
			if (!isout[c]) {
				keys[m].d = dead[c] ? 1.0 : f * H[(size_t)c * C + c];
				keys[m].i = c;
				m++;
			}
		if (s->act_order)
			qsort(keys, (size_t)m, sizeof(*keys), cmp_diag_desc);
		for (int k = 0; k < m; k++)
			perm[k] = keys[k].i;
		for (int i = 0; i < n_out; i++)
			perm[nq + i] = q->out_cols[i];
	}
	free(q->g_idx);
	q->g_idx = NULL;
	if (dynamic && s->act_order) {
		/* groups of gsize consecutive positions in act order */
		if (!(q->g_idx = calloc((size_t)C, sizeof(int32_t)))) {
			rc = qs_err(err, QS_ENOMEM, "gptq: out of memory for a %d x %d matrix", R, C);
			goto out;
		}
		for (int k = 0; k < nq; k++) {
			q->g_idx[perm[k]] = k / q->gsize;
			gstart[k] = k / q->gsize * q->gsize;
		}
	} else if (dynamic) { /* groups are runs of original columns */
		for (int k = 0; k < nq; k++) {
			const int g = perm[k] / q->gsize;
			gstart[k] = k > 0 && perm[k - 1] / q->gsize == g ? gstart[k - 1] : k;
		}
	}
	if (dynamic) {
		for (int k = nq - 1; k >= 0; k--)
			gend[k] = k + 1 < nq && gstart[k + 1] == gstart[k] ? gend[k + 1] : k + 1;
	}

	/* ---- Hinv: upper Cholesky factor of (Hs + damp)^-1, double, then float ---- */
	size_t hlen = (size_t)C * C;
	Hbuf = malloc(sizeof(double) * hlen);
	if (!Hbuf) {
		rc = qs_err(err, QS_ENOMEM, "gptq: out of memory for a %d x %d hessian", C, C);
		goto out;
	}
	{
		double frac = s->damp;
		int info = 0;
		for (int t = 0; t <= GPTQ_DAMP_RETRIES; t++) {
			info = hinv_factor(Hbuf, H, perm, dead, C, f, frac);
			if (!info)
				break;
			if (t < GPTQ_DAMP_RETRIES)
				frac = (frac > 0 ? frac : 1e-3) * 10;
		}
		if (info) {
			rc = qs_err(err, QS_EUSAGE,
				    "gptq: hessian %d x %d is not positive definite even with dampening "
				    "%g x mean diagonal (lapack info %d after %d retries)",
				    C, C, frac, info, GPTQ_DAMP_RETRIES);
			goto out;
		}
	}
	doubles_to_floats_inplace(Hbuf, hlen);
	{
		void *shrunk = realloc(Hbuf, sizeof(float) * hlen);
		if (shrunk)
			Hbuf = shrunk;
	}
	const float *Hinv = Hbuf;
	Wp = malloc(sizeof(float) * (size_t)R * C);
	E = malloc(sizeof(float) * (size_t)R * B);
	if (!Wp || !E) {
		rc = qs_err(err, QS_ENOMEM, "gptq: out of memory for a %d x %d matrix", R, C);
		goto out;
	}

	/* ---- working weights: permuted columns, dead columns zeroed ---- */
#pragma omp parallel for schedule(static)
	for (int r = 0; r < R; r++) {
		const float *wr = W + (size_t)r * C;
		float *pr = Wp + (size_t)r * C;
		for (int k = 0; k < C; k++)
			pr[k] = dead[perm[k]] ? 0.0f : wr[perm[k]];
	}

	/* ---- the pass ---- */
	struct gptq_ctx x = {
		.q = q, .Wp = Wp, .E = E, .Hinv = Hinv, .perm = perm, .gstart = gstart,
		.gend = gend, .C = C, .B = B, .nq = nq, .bits = bits, .sym = sym, .mse = s->mse,
	};
	for (int i1 = 0, i2; i1 < C; i1 = i2) {
		i2 = i1 + B < C ? i1 + B : C;
		if (dynamic && i2 - 1 < nq) {
			/* end the block before a group that starts inside it and
			 * would run past its end */
			const int g0 = gstart[i2 - 1];
			if (g0 > i1 && gend[i2 - 1] > i2)
				i2 = g0;
		}
#pragma omp parallel for schedule(static) if ((long)R * (i2 - i1) > 4096)
		for (int r = 0; r < R; r++)
			quant_block_row(&x, r, i1, i2);
		if (i2 < C) /* W[:, i2:] -= Err1 · Hinv[i1:i2, i2:] */
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, C - i2, i2 - i1,
				    -1.0f, E, B, Hinv + (size_t)i1 * C + i2, C, 1.0f, Wp + i2, C);
	}

out:
	free(perm);
	free(gstart);
	free(gend);
	free(dead);
	free(isout);
	free(keys);
	free(Wp);
	free(E);
	free(scratch);
	free(Hbuf);
	return rc;
}
