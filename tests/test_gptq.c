/* test_gptq.c - GPTQ (engine/quant_gptq.c) against a slow textbook reference
 * written here in double precision: the OBQ recurrence one column at a time
 * with an explicit inverse Hessian (Gauss-Jordan) that is shrunk after every
 * column, no Cholesky factor and no lazy batching, with the same grid rules.
 * Then: output error against RTN on correlated inputs, act_order on a skewed
 * Hessian, dead and singular Hessians, invalid inputs, and a timing print. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../engine/quant.h"
#include "../kernels/fp16.h"
#include "../kernels/types.h"
#include "testutil.h"

static uint64_t rng;
/* each test starts from its own seed, so its data does not depend on the others */
static void seed(uint64_t s)
{
	const char *e = getenv("GPTQ_TEST_SEED"); /* for trying other data */
	rng = (s ^ (e ? strtoull(e, NULL, 0) : 0)) * 0x9e3779b97f4a7c15ull | 1;
}
static double urand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return ((double)(rng >> 11) + 0.5) / 9007199254740992.0;
}
static double grand(void)
{
	return sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand());
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* X (n x C) = Z A with A = I + mix * G / sqrt(C), then column j scaled by
 * colscale[j] (NULL: 1). Returns H = X^T X (double, C x C). */
static double *make_hessian(long n, int C, double mix, const double *colscale, float **xout)
{
	double *A = malloc(sizeof(double) * C * C), *H = calloc((size_t)C * C, sizeof(double));
	double *X = calloc((size_t)n * C, sizeof(double)), *z = malloc(sizeof(double) * C);
	for (int i = 0; i < C; i++)
		for (int j = 0; j < C; j++)
			A[i * C + j] = (i == j) + mix * grand() / sqrt((double)C);
	for (long t = 0; t < n; t++) {
		for (int i = 0; i < C; i++)
			z[i] = grand();
		for (int j = 0; j < C; j++) {
			double v = 0;
			for (int i = 0; i < C; i++)
				v += z[i] * A[i * C + j];
			X[t * C + j] = v * (colscale ? colscale[j] : 1.0);
		}
	}
	cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, C, (int)n, 1.0, X, C, 0.0, H, C);
	for (int i = 0; i < C; i++)
		for (int j = 0; j < i; j++)
			H[i * C + j] = H[j * C + i];
	if (xout) {
		*xout = malloc(sizeof(float) * n * C);
		for (long k = 0; k < n * C; k++)
			(*xout)[k] = (float)X[k];
	}
	free(A);
	free(X);
	free(z);
	return H;
}

static float *make_weights(int R, int C, double sd)
{
	float *W = malloc(sizeof(float) * R * C);
	for (int i = 0; i < R * C; i++)
		W[i] = (float)(sd * grand());
	return W;
}

/* ---- the reference ---- */

/* The reference quantizer's MSE search (quant.py: grid 100, maxshrink 0.8,
 * norm 2.4), written independently. */
static void ref_grid(const float *x, int n, int bits, int sym, int mse, float *s, float *z)
{
	kn_int_grid(x, n, bits, sym, 1.0f, s, z);
	if (!mse)
		return;
	const int maxq = (1 << bits) - 1;
	double best = INFINITY;
	for (int i = 0; i < 80; i++) {
		float cs, cz;
		kn_int_grid(x, n, bits, sym, 1.0f - (float)i / 100.0f, &cs, &cz);
		double e = 0;
		for (int k = 0; k < n; k++)
			e += pow(fabs((double)kn_int_dequant(kn_int_quant(x[k], cs, cz, maxq), cs, cz) -
				      x[k]),
				 2.4);
		if (e < best) {
			best = e;
			*s = cs;
			*z = cz;
		}
	}
}

/* Gauss-Jordan inverse of an SPD matrix (no pivoting needed). */
static void invert(double *a, int n)
{
	for (int k = 0; k < n; k++) {
		double p = a[k * n + k];
		for (int j = 0; j < n; j++)
			a[k * n + j] /= p;
		a[k * n + k] = 1.0 / p;
		for (int i = 0; i < n; i++) {
			if (i == k)
				continue;
			double m = a[i * n + k];
			a[i * n + k] = 0;
			for (int j = 0; j < n; j++)
				a[i * n + j] -= m * a[k * n + j];
		}
	}
}

/* Textbook GPTQ/OBQ in double: q must be allocated (and outliers set) like
 * the one given to quant_gptq. */
static void ref_gptq(kn_qmatrix *q, const float *W, const double *H, long n, const quant_spec *s)
{
	const int R = q->rows, C = q->cols, bits = q->p.bits, sym = q->p.sym;
	const int maxq = (1 << bits) - 1, gs = q->gsize;
	const int grouped = q->p.group > 0;
	const int statg = grouped && s->static_groups;
	/* act_order without static groups: groups are runs of gs positions in
	 * the processing order (GPTQ's g_idx) */
	const int permg = grouped && !statg && s->act_order;
	const double f = 2.0 / (double)n;
	unsigned char *isout = calloc(C, 1), *dead = calloc(C, 1);
	double *Wd = malloc(sizeof(double) * R * C), *Hi = malloc(sizeof(double) * C * C);
	float *buf = malloc(sizeof(float) * R * C);
	int *order = malloc(sizeof(int) * C);
	unsigned char *have = calloc((size_t)R * q->n_groups, 1);
	for (int i = 0; i < q->n_out; i++)
		isout[q->out_cols[i]] = 1;
	for (int c = 0; c < C; c++)
		dead[c] = H[c * C + c] == 0;
	for (int i = 0; i < R * C; i++)
		Wd[i] = W[i];
	/* grids fixed up front */
	if (q->p.group == KN_GROUP_TENSOR) {
		int m = 0;
		for (int i = 0; i < R * C; i++)
			if (!isout[i % C])
				buf[m++] = W[i];
		ref_grid(buf, m, bits, sym, s->mse, &q->scale[0], q->zero ? &q->zero[0] : &(float){ 0 });
	} else if (!grouped || statg) {
		for (int r = 0; r < R; r++)
			for (int c0 = 0; c0 < C; c0 += gs) {
				int m = 0;
				for (int c = c0; c < c0 + gs; c++)
					if (!isout[c])
						buf[m++] = statg && dead[c] ? 0.0f : W[r * C + c];
				float sc, zp;
				if (!m)
					continue;
				ref_grid(buf, m, bits, sym, s->mse, &sc, &zp);
				q->scale[kn_qgroup(q, r, c0)] = sc;
				if (q->zero)
					q->zero[kn_qgroup(q, r, c0)] = zp;
			}
	}
	for (int r = 0; r < R; r++)
		for (int c = 0; c < C; c++)
			if (dead[c])
				Wd[r * C + c] = 0;
	/* order: quantized columns (act_order: descending diagonal, stable), then outliers */
	int m = 0;
	for (int c = 0; c < C; c++)
		if (!isout[c])
			order[m++] = c;
	if (s->act_order) /* insertion sort: stable */
		for (int i = 1; i < m; i++)
			for (int j = i; j > 0; j--) {
				double a = dead[order[j - 1]] ? 1.0 : f * H[order[j - 1] * (C + 1)];
				double b = dead[order[j]] ? 1.0 : f * H[order[j] * (C + 1)];
				if (!(b > a))
					break;
				int t = order[j];
				order[j] = order[j - 1];
				order[j - 1] = t;
			}
	const int nq = m;
	if (permg) {
		free(q->g_idx);
		q->g_idx = calloc((size_t)C, sizeof(int32_t));
		for (int k = 0; k < nq; k++)
			q->g_idx[order[k]] = k / gs;
	}
	for (int c = 0; c < C; c++)
		if (isout[c])
			order[m++] = c;
	double mean = 0;
	for (int i = 0; i < C; i++) {
		for (int j = 0; j < C; j++)
			Hi[i * C + j] = f * H[order[i] * C + order[j]];
		if (dead[order[i]])
			Hi[i * C + i] = 1;
		mean += Hi[i * C + i] / C;
	}
	for (int i = 0; i < C; i++)
		Hi[i * C + i] += s->damp * mean;
	invert(Hi, C);
	for (int k = 0; k < C; k++) {
		const int c = order[k], oi = isout[c] ? k - (C - q->n_out) : -1;
		const double d = Hi[k * C + k];
		for (int r = 0; r < R; r++) {
			double w = Wd[r * C + c], qv;
			if (oi >= 0) {
				uint16_t h = kn_fp32_to_fp16_ref((float)w);
				q->out_vals[r * q->n_out + oi] = h;
				qv = kn_fp16_to_fp32_ref(h);
			} else {
				size_t gi = kn_qgroup(q, r, c);
				if (grouped && !statg && !have[gi]) { /* group's first column */
					int mm = 0;
					if (permg)
						for (int kk = k; kk < k + gs && kk < nq; kk++)
							buf[mm++] = (float)Wd[r * C + order[kk]];
					else
						for (int cc = c / gs * gs; cc < (c / gs + 1) * gs; cc++)
							if (!isout[cc])
								buf[mm++] = (float)Wd[r * C + cc];
					float sc, zp;
					ref_grid(buf, mm, bits, sym, s->mse, &sc, &zp);
					q->scale[gi] = sc;
					if (q->zero)
						q->zero[gi] = zp;
					have[gi] = 1;
				}
				float sc = q->scale[gi], zp = q->zero ? q->zero[gi] : (float)((maxq + 1) / 2);
				int code = kn_int_quant((float)w, sc, zp, maxq);
				kn_qcode_set(q, r, c, (unsigned)code);
				qv = kn_int_dequant(code, sc, zp);
			}
			double e = (w - qv) / d;
			for (int j = k + 1; j < C; j++)
				Wd[r * C + order[j]] -= e * Hi[k * C + j];
		}
		/* remove column k from the inverse (OBS) */
		for (int i = k + 1; i < C; i++) {
			double a = Hi[i * C + k] / d;
			for (int j = k + 1; j < C; j++)
				Hi[i * C + j] -= a * Hi[k * C + j];
		}
	}
	free(isout);
	free(dead);
	free(Wd);
	free(Hi);
	free(buf);
	free(order);
	free(have);
}

/* ||(W - What) X^T||^2 = sum_r e_r H e_r^T */
static double out_err(const kn_qmatrix *q, const float *W, const double *H)
{
	const int R = q->rows, C = q->cols;
	float *d = malloc(sizeof(float) * R * C);
	double *e = malloc(sizeof(double) * C), tot = 0;
	kn_qmatrix_dequant(q, 0, R, d);
	for (int r = 0; r < R; r++) {
		for (int c = 0; c < C; c++)
			e[c] = (double)W[r * C + c] - d[r * C + c];
		for (int i = 0; i < C; i++) {
			double v = 0;
			for (int j = 0; j < C; j++)
				v += H[i * C + j] * e[j];
			tot += e[i] * v;
		}
	}
	free(d);
	free(e);
	return tot;
}

static kn_qparams intp(int bits, int group, int sym)
{
	kn_qparams p = { .fmt = KN_QF_INT, .bits = bits, .group = group, .sym = sym };
	return p;
}

struct cfg {
	int bits, sym, group, act, stat, mse, block, n_out;
};

static void cfg_str(const struct cfg *c, char *b, size_t cap)
{
	snprintf(b, cap, "int%d %s %s%s%s%s block %d%s", c->bits,
		 c->group == KN_GROUP_ROW ? "chan" : c->group == KN_GROUP_TENSOR ? "tensor" : "g16",
		 c->sym ? "sym" : "asym", c->act ? " act" : "", c->stat ? " static" : "",
		 c->mse ? " mse" : "", c->block, c->n_out ? " outliers" : "");
}

/* (1) identical to the textbook recurrence */
static void test_matches_reference(void **st)
{
	(void)st;
	seed(1);
	enum { R = 24, C = 64, N = 256 };
	double cs[C];
	for (int j = 0; j < C; j++)
		cs[j] = exp(1.5 * grand()); /* skewed diagonal so act_order matters */
	double *H = make_hessian(N, C, 1.5, cs, NULL);
	H[5 * C + 5] = 0; /* one dead column */
	for (int j = 0; j < C; j++)
		H[5 * C + j] = H[j * C + 5] = 0;
	float *W = make_weights(R, C, 0.05);
	struct cfg cfgs[64];
	int nc = 0;
	static const int blocks[] = { 8, 24, 128, 5 };
	for (int bits = 2; bits <= 4; bits++)
		for (int sym = 0; sym < 2; sym++)
			for (int gi = 0; gi < 2; gi++)
				for (int act = 0; act < 2; act++) {
					const int blk = blocks[(nc + nc / 4) % 4];
					cfgs[nc++] = (struct cfg){ bits, sym, gi ? KN_GROUP_ROW : 16, act, 0, 0,
								   blk, 0 };
				}
	cfgs[nc++] = (struct cfg){ 3, 0, KN_GROUP_TENSOR, 0, 0, 0, 16, 0 };
	cfgs[nc++] = (struct cfg){ 3, 1, KN_GROUP_TENSOR, 1, 0, 0, 16, 0 };
	cfgs[nc++] = (struct cfg){ 3, 0, 16, 0, 1, 0, 24, 0 };
	cfgs[nc++] = (struct cfg){ 4, 0, 16, 0, 0, 1, 24, 0 };
	cfgs[nc++] = (struct cfg){ 3, 1, KN_GROUP_ROW, 1, 0, 1, 8, 0 };
	cfgs[nc++] = (struct cfg){ 3, 0, 16, 0, 0, 0, 24, 3 };
	cfgs[nc++] = (struct cfg){ 4, 1, 16, 1, 0, 0, 8, 3 };
	cfgs[nc++] = (struct cfg){ 2, 0, KN_GROUP_ROW, 0, 0, 0, 128, 3 };
	cfgs[nc++] = (struct cfg){ 3, 0, KN_GROUP_TENSOR, 1, 0, 1, 24, 3 };
	long total = 0, diff = 0, big = 0, sdiff = 0;
	for (int k = 0; k < nc; k++) {
		const struct cfg *c = &cfgs[k];
		quant_spec s = quant_spec_default(QUANT_GPTQ, intp(c->bits, c->group, c->sym));
		s.act_order = c->act;
		s.static_groups = c->stat;
		s.mse = c->mse;
		s.block = c->block;
		kn_qmatrix a, b;
		assert_int_equal(kn_qmatrix_alloc(&a, &s.fmt, R, C), 0);
		assert_int_equal(kn_qmatrix_alloc(&b, &s.fmt, R, C), 0);
		if (c->n_out) {
			const int32_t oc[3] = { 9, 17, 40 };
			assert_int_equal(kn_qmatrix_set_outliers(&a, oc, 3, W), 0);
			assert_int_equal(kn_qmatrix_set_outliers(&b, oc, 3, W), 0);
		}
		qs_error err = { 0 };
		int rc = quant_gptq(&a, W, H, N, &s, &err);
		if (rc)
			print_message("%s\n", err.msg);
		assert_int_equal(rc, 0);
		ref_gptq(&b, W, H, N, &s);
		long d = 0, dbig = 0, ds = 0;
		for (int r = 0; r < R; r++)
			for (int cc = 0; cc < C; cc++) {
				int x = (int)kn_qcode_get(&a, r, cc), y = (int)kn_qcode_get(&b, r, cc);
				d += x != y;
				dbig += abs(x - y) > 1;
			}
		size_t ns = c->group == KN_GROUP_TENSOR ? 1 : (size_t)R * a.n_groups;
		for (size_t i = 0; i < ns; i++)
			ds += a.scale[i] != b.scale[i] || (a.zero && a.zero[i] != b.zero[i]);
		for (int i = 0; i < R * c->n_out; i++) {
			float x = kn_fp16_to_fp32_ref(a.out_vals[i]), y = kn_fp16_to_fp32_ref(b.out_vals[i]);
			assert_true(fabsf(x - y) <= 1e-3f * fabsf(y) + 1e-6f);
		}
		char name[96];
		cfg_str(c, name, sizeof(name));
		if (d || ds)
			print_message("  %-40s %ld of %d codes differ, %ld grids\n", name, d, R * C, ds);
		total += R * C;
		diff += d;
		big += dbig;
		sdiff += ds;
		kn_qmatrix_release(&a);
		kn_qmatrix_release(&b);
	}
	print_message("reference: %d configs, %ld of %ld codes differ (%ld by more than 1), "
		      "%ld grids differ\n",
		      nc, diff, total, big, sdiff);
	/* a per-tensor MSE grid over more than 65536 values (the chunked search) */
	{
		enum { R2 = 512 };
		float *W2 = make_weights(R2, C, 0.05);
		quant_spec s = quant_spec_default(QUANT_GPTQ, intp(3, KN_GROUP_TENSOR, 0));
		s.mse = 1;
		kn_qmatrix a;
		qs_error err = { 0 };
		assert_int_equal(kn_qmatrix_alloc(&a, &s.fmt, R2, C), 0);
		assert_int_equal(quant_gptq(&a, W2, H, N, &s, &err), 0);
		float sc, zp, s1, z1;
		ref_grid(W2, R2 * C, 3, 0, 1, &sc, &zp);
		kn_int_grid(W2, R2 * C, 3, 0, 1.0f, &s1, &z1);
		print_message("per-tensor mse grid: scale %g zero %g (reference %g %g, min-max %g %g)\n",
			      (double)a.scale[0], (double)a.zero[0], (double)sc, (double)zp, (double)s1,
			      (double)z1);
		assert_true(a.scale[0] == sc && a.zero[0] == zp);
		assert_true(sc < s1);
		kn_qmatrix_release(&a);
		free(W2);
	}
	/* float (ours) vs double (reference) rounding can flip a code at a
	 * rounding tie, and the flip feeds forward; over twenty seeds (GPTQ_TEST_SEED)
	 * none did, and one grid differed by such a tie without changing a code. */
	assert_true(diff <= total / 1000);
	free(H);
	free(W);
}

/* (2) output error against RTN on correlated inputs; act_order on a skewed diagonal */
static double run_err(const float *W, const double *H, long n, int R, int C, quant_spec *s,
		      int rtn)
{
	kn_qmatrix q;
	qs_error err = { 0 };
	assert_int_equal(kn_qmatrix_alloc(&q, &s->fmt, R, C), 0);
	if (rtn)
		kn_qmatrix_quantize_rtn(&q, W, s->mse);
	else
		assert_int_equal(quant_gptq(&q, W, H, n, s, &err), 0);
	double e = out_err(&q, W, H);
	kn_qmatrix_release(&q);
	return sqrt(e);
}

static void test_beats_rtn(void **st)
{
	(void)st;
	seed(2);
	enum { R = 128, C = 256, N = 2048 };
	double cs[C];
	for (int j = 0; j < C; j++)
		cs[j] = j % 37 == 3 ? 8.0 : 1.0; /* a few high-variance channels */
	double *H = make_hessian(N, C, 2.0, cs, NULL);
	float *W = make_weights(R, C, 0.02);
	static const struct { int bits, group, sym; } fm[] = {
		{ 4, 128, 0 }, { 3, 128, 0 }, { 4, KN_GROUP_ROW, 1 }, { 3, KN_GROUP_ROW, 1 },
	};
	for (size_t i = 0; i < sizeof(fm) / sizeof(fm[0]); i++) {
		quant_spec s = quant_spec_default(QUANT_GPTQ, intp(fm[i].bits, fm[i].group, fm[i].sym));
		double rtn = run_err(W, H, N, R, C, &s, 1);
		double g = run_err(W, H, N, R, C, &s, 0);
		s.act_order = 1;
		double ga = run_err(W, H, N, R, C, &s, 0);
		print_message("correlated int%d %s: ||(W-Q)X^T|| rtn %.4g gptq %.4g (%.2f x) "
			      "act_order %.4g\n",
			      fm[i].bits, fm[i].group > 0 ? "g128 asym" : "chan sym", rtn, g, g / rtn,
			      ga);
		assert_true(g < 0.8 * rtn);
		assert_true(ga < 0.8 * rtn);
	}
	free(H);

	/* skewed diag(H): channel variances spread over three decades */
	for (int j = 0; j < C; j++)
		cs[j] = exp(1.2 * grand());
	H = make_hessian(N, C, 1.0, cs, NULL);
	static const struct { int bits, group; } fa[] = {
		{ 3, KN_GROUP_ROW }, { 4, KN_GROUP_ROW }, { 3, 128 }, { 3, 32 },
	};
	for (size_t i = 0; i < sizeof(fa) / sizeof(fa[0]); i++) {
		quant_spec s = quant_spec_default(QUANT_GPTQ, intp(fa[i].bits, fa[i].group, 0));
		double rtn = run_err(W, H, N, R, C, &s, 1);
		double g = run_err(W, H, N, R, C, &s, 0);
		s.act_order = 1;
		double ga = run_err(W, H, N, R, C, &s, 0);
		s.act_order = 0;
		s.static_groups = 1;
		double gs = run_err(W, H, N, R, C, &s, 0);
		s.static_groups = 0;
		s.mse = 1;
		double gm = run_err(W, H, N, R, C, &s, 0);
		print_message("skewed int%d g%d: rtn %.4g gptq %.4g act_order %.4g (%.2f x) "
			      "static %.4g mse %.4g\n",
			      fa[i].bits, fa[i].group, rtn, g, ga, ga / g, gs, gm);
		assert_true(g < rtn);
		assert_true(ga < 0.9 * g);
	}
	free(H);
	free(W);
}

/* outlier columns: kept exact, and processing them last lets them absorb error */
static void test_outliers(void **st)
{
	(void)st;
	seed(3);
	enum { R = 64, C = 128, N = 1024 };
	double *H = make_hessian(N, C, 2.0, NULL, NULL);
	float *W = make_weights(R, C, 0.02);
	const int32_t oc[4] = { 3, 50, 51, 127 };
	quant_spec s = quant_spec_default(QUANT_GPTQ, intp(3, 32, 0));
	kn_qmatrix q;
	qs_error err = { 0 };
	assert_int_equal(kn_qmatrix_alloc(&q, &s.fmt, R, C), 0);
	assert_int_equal(kn_qmatrix_set_outliers(&q, oc, 4, W), 0);
	double e_plain = out_err(&q, W, H); /* codes all 0: just a sanity baseline */
	assert_int_equal(quant_gptq(&q, W, H, N, &s, &err), 0);
	double e_gptq = out_err(&q, W, H);
	/* the same matrix with the original FP16 outlier values put back */
	kn_qmatrix_set_outliers(&q, oc, 4, W);
	double e_orig = out_err(&q, W, H);
	print_message("outliers: error with compensated fp16 columns %.4g, with the original "
		      "ones %.4g\n",
		      sqrt(e_gptq), sqrt(e_orig));
	assert_true(e_gptq < e_orig);
	assert_true(e_gptq < e_plain);
	kn_qmatrix_release(&q);
	free(H);
	free(W);
}

/* (3) dead columns, singular and indefinite Hessians */
static void test_dead_singular(void **st)
{
	(void)st;
	seed(4);
	enum { R = 16, C = 48, N = 20 }; /* N < C: X^T X has rank 20 */
	float *X = NULL;
	double *H = make_hessian(N, C, 1.0, NULL, &X);
	const int deadc[] = { 0, 7, 8, 47 };
	for (size_t k = 0; k < 4; k++)
		for (int j = 0; j < C; j++)
			H[deadc[k] * C + j] = H[j * C + deadc[k]] = 0;
	float *W = make_weights(R, C, 1.0);
	float *d = malloc(sizeof(float) * R * C);
	for (int damp0 = 0; damp0 < 2; damp0++)
		for (int gi = 0; gi < 3; gi++) {
			int group = gi == 0 ? 16 : gi == 1 ? KN_GROUP_ROW : KN_GROUP_TENSOR;
			quant_spec s = quant_spec_default(QUANT_GPTQ, intp(4, group, gi == 2));
			s.act_order = gi == 1;
			if (damp0)
				s.damp = 0; /* singular: needs the retry with more dampening */
			kn_qmatrix q;
			qs_error err = { 0 };
			assert_int_equal(kn_qmatrix_alloc(&q, &s.fmt, R, C), 0);
			int rc = quant_gptq(&q, W, H, N, &s, &err);
			if (rc)
				print_message("%s\n", err.msg);
			assert_int_equal(rc, 0);
			kn_qmatrix_dequant(&q, 0, R, d);
			for (int i = 0; i < R * C; i++)
				assert_true(isfinite(d[i]));
			for (int r = 0; r < R; r++)
				for (size_t k = 0; k < 4; k++)
					assert_true(d[r * C + deadc[k]] == 0.0f);
			kn_qmatrix_release(&q);
		}
	/* all dead: every weight becomes 0 */
	double *Z = calloc((size_t)C * C, sizeof(double));
	quant_spec s = quant_spec_default(QUANT_GPTQ, intp(3, 16, 0));
	kn_qmatrix q;
	qs_error err = { 0 };
	assert_int_equal(kn_qmatrix_alloc(&q, &s.fmt, R, C), 0);
	assert_int_equal(quant_gptq(&q, W, Z, N, &s, &err), 0);
	kn_qmatrix_dequant(&q, 0, R, d);
	for (int i = 0; i < R * C; i++)
		assert_true(d[i] == 0.0f);
	/* indefinite: no dampening makes it positive definite */
	for (int i = 0; i < C; i++)
		for (int j = 0; j < C; j++)
			Z[i * C + j] = i == j ? 1.0 : -1.0;
	int rc = quant_gptq(&q, W, Z, N, &s, &err);
	print_message("indefinite: %s\n", err.msg);
	assert_int_equal(rc, QS_EUSAGE);
	assert_non_null(strstr(err.msg, "not positive definite"));
	kn_qmatrix_release(&q);
	free(Z);
	free(H);
	free(X);
	free(W);
	free(d);
}

/* (4) invalid inputs */
static void test_invalid(void **st)
{
	(void)st;
	seed(5);
	enum { R = 8, C = 64 };
	double *H = make_hessian(100, C, 1.0, NULL, NULL);
	float *W = make_weights(R, C, 1.0);
	qs_error err = { 0 };
	kn_qmatrix q;
	static const kn_qparams other[] = {
		{ .fmt = KN_QF_NF4, .bits = 4, .group = 64 },
		{ .fmt = KN_QF_FP8, .bits = 8 },
		{ .fmt = KN_QF_F16, .bits = 16 },
		{ .fmt = KN_QF_GGML, .bits = 4, .group = 32, .ggml_type = KN_TYPE_Q4_0 },
	};
	for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
		quant_spec s = quant_spec_default(QUANT_GPTQ, other[i]);
		assert_int_equal(kn_qmatrix_alloc(&q, &other[i], R, C), 0);
		memset(&err, 0, sizeof(err));
		assert_int_equal(quant_gptq(&q, W, H, 100, &s, &err), QS_EUNSUPP);
		assert_int_equal(err.code, QS_EUNSUPP);
		assert_non_null(strstr(err.msg, "gptq: only intB"));
		kn_qmatrix_release(&q);
	}
	print_message("unsupported: %s\n", err.msg);
	quant_spec s = quant_spec_default(QUANT_GPTQ, intp(4, 32, 0));
	assert_int_equal(kn_qmatrix_alloc(&q, &s.fmt, R, C), 0);
	assert_int_equal(quant_gptq(&q, W, NULL, 100, &s, &err), QS_EUSAGE);
	assert_int_equal(quant_gptq(&q, W, H, 0, &s, &err), QS_EUSAGE);
	quant_spec b = s;
	b.block = 0;
	assert_int_equal(quant_gptq(&q, W, H, 100, &b, &err), QS_EUSAGE);
	b = s;
	b.damp = -0.1f;
	assert_int_equal(quant_gptq(&q, W, H, 100, &b, &err), QS_EUSAGE);
	b = s;
	b.fmt.bits = 3;
	assert_int_equal(quant_gptq(&q, W, H, 100, &b, &err), QS_EUSAGE);
	print_message("mismatch: %s\n", err.msg);
	H[3 * C + 5] = NAN;
	assert_int_equal(quant_gptq(&q, W, H, 100, &s, &err), QS_EUSAGE);
	print_message("nan: %s\n", err.msg);
	H[3 * C + 5] = 0;
	W[9] = INFINITY;
	assert_int_equal(quant_gptq(&q, W, H, 100, &s, &err), QS_EUSAGE);
	print_message("inf: %s\n", err.msg);
	kn_qmatrix_release(&q);
	free(H);
	free(W);
}

/* (5) timing: 1024 x 1024, H from 65536 rows (fewer under the sanitizers) */
static void test_timing(void **st)
{
	(void)st;
	seed(6);
	const int R = 1024, C = 1024, CH = 4096;
	const long N = tu_asan() ? 8192 : 65536;
	float *X = malloc(sizeof(float) * CH * C), *Hf = calloc((size_t)C * C, sizeof(float));
	double *H = malloc(sizeof(double) * C * C);
	double t0 = now();
	for (long done = 0; done < N; done += CH) {
		for (int i = 0; i < CH * C; i++) { /* correlated neighbours, varying scales */
			rng ^= rng << 13;
			rng ^= rng >> 7;
			rng ^= rng << 17;
			X[i] = (float)(int32_t)(rng >> 32) * 4.6566e-10f;
		}
		for (int t = 0; t < CH; t++)
			for (int j = 1; j < C; j++)
				X[t * C + j] = 0.6f * X[t * C + j - 1] + X[t * C + j] * (1 + (j % 13 == 0) * 4);
		cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, C, CH, 1.0f, X, C, 1.0f, Hf, C);
	}
	for (int i = 0; i < C; i++)
		for (int j = 0; j < C; j++)
			H[i * C + j] = i <= j ? Hf[i * C + j] : Hf[j * C + i];
	double t_h = now() - t0;
	float *W = make_weights(R, C, 0.02);
	quant_spec s = quant_spec_default(QUANT_GPTQ, intp(4, 128, 0));
	kn_qmatrix q;
	qs_error err = { 0 };
	assert_int_equal(kn_qmatrix_alloc(&q, &s.fmt, R, C), 0);
	t0 = now();
	assert_int_equal(quant_gptq(&q, W, H, N, &s, &err), 0);
	double t_q = now() - t0;
	s.act_order = 1;
	t0 = now();
	assert_int_equal(quant_gptq(&q, W, H, N, &s, &err), 0);
	double t_qa = now() - t0;
	/* the same lazy updates alone (sgemm shapes of the pass) */
	double flops = 0;
	float *Wt = make_weights(R, C, 0.02), *E = make_weights(R, s.block, 0.01);
	float *U = make_weights(C, C, 0.01);
	t0 = now();
	for (int i1 = 0; i1 < C; i1 += s.block) {
		int i2 = i1 + s.block;
		if (i2 < C) {
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, C - i2, i2 - i1, -1.0f,
				    E, s.block, U + (size_t)i1 * C + i2, C, 1.0f, Wt + i2, C);
			flops += 2.0 * R * (double)(i2 - i1) * (C - i2);
		}
	}
	double t_g = now() - t0;
	/* and the factorization alone (what quant_gptq does: dpotrf + dtrtri) */
	double *A = malloc(sizeof(double) * C * C);
	for (int i = 0; i < C * C; i++)
		A[i] = H[i] + (i % (C + 1) == 0 ? 0.01 * H[0] : 0.0);
	t0 = now();
	assert_int_equal(LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', C, A, C), 0);
	assert_int_equal(LAPACKE_dtrtri(LAPACK_COL_MAJOR, 'L', 'N', C, A, C), 0);
	double t_f = now() - t0;
	free(A);
	print_message("timing: H from %ld x %d rows in %.2f s (ssyrk, %.1f GFLOP/s)\n", N, C, t_h,
		      (double)N * C * C / t_h * 1e-9);
	print_message("timing: gptq int4 g128 %d x %d in %.3f s (act_order %.3f s); lazy updates "
		      "%.2f GFLOP: %.1f GFLOP/s over the whole call, %.1f GFLOP/s as bare sgemm "
		      "(%.3f s)\n",
		      R, C, t_q, t_qa, flops * 1e-9, flops / t_q * 1e-9, flops / t_g * 1e-9, t_g);
	print_message("timing: hessian factorization alone (dpotrf + dtrtri, %d x %d double) "
		      "%.3f s\n",
		      C, C, t_f);
	kn_qmatrix_release(&q);
	free(X);
	free(Hf);
	free(H);
	free(W);
	free(Wt);
	free(E);
	free(U);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_matches_reference),
		cmocka_unit_test(test_beats_rtn),
		cmocka_unit_test(test_outliers),
		cmocka_unit_test(test_dead_singular),
		cmocka_unit_test(test_invalid),
		cmocka_unit_test(test_timing),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
