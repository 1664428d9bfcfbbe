/* test_awq.c - AWQ's scale and clip searches and SmoothQuant's scales
 * (engine/quant_awq.c) on synthetic layers, judged by output errors the test
 * computes itself in double precision (naive loops, no BLAS), so the BLAS
 * Gram/direct shortcuts of the library are checked against plain arithmetic. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/quant.h"
#include "../kernels/qmatrix.h"
#include "../kernels/types.h"
#include "testutil.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double urand(void) /* (0, 1) */
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return ((double)(rng >> 11) + 0.5) / 9007199254740992.0;
}
static double nrand(void)
{
	return sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand());
}
/* Student t with 3 degrees of freedom: heavy tails */
static double trand(void)
{
	double a = nrand(), b = nrand(), c = nrand();
	return nrand() / sqrt((a * a + b * b + c * c) / 3.0);
}

static kn_qparams intq(int bits, int group, int sym)
{
	kn_qparams p = {KN_QF_INT, bits, group, sym, 0, 0};
	return p;
}

static quant_spec awq_spec(kn_qparams f)
{
	quant_spec s = quant_spec_default(QUANT_AWQ, f);
	s.alpha = -1.0f;
	return s;
}

/* out = dequant(quant_rtn(w)) with format p */
static void fq(const kn_qparams *p, const float *w, int rows, int cols, float *out)
{
	kn_qmatrix q;
	assert_int_equal(kn_qmatrix_alloc(&q, p, rows, cols), 0);
	kn_qmatrix_quantize_rtn(&q, w, 0);
	kn_qmatrix_dequant(&q, 0, rows, out);
	kn_qmatrix_release(&q);
}

/* sum over rows t of X (step apart, first n of them) and output rows r of
 * (x_t . (a_r - b_r))^2 over columns [c0, c0 + k) */
static double out_err(const float *X, long n, long step, int cols, const float *a,
		      const float *b, int rows, int c0, int k)
{
	double *d = malloc(sizeof(double) * (size_t)rows * k), e = 0;
	for (int r = 0; r < rows; r++)
		for (int c = 0; c < k; c++)
			d[(size_t)r * k + c] =
				(double)a[(size_t)r * cols + c0 + c] - b[(size_t)r * cols + c0 + c];
	for (long t = 0; t < n; t += step) {
		const float *x = X + (size_t)t * cols + c0;
		for (int r = 0; r < rows; r++) {
			double y = 0;
			for (int c = 0; c < k; c++)
				y += x[c] * d[(size_t)r * k + c];
			e += y * y;
		}
	}
	free(d);
	return e;
}

/* X (n x cols): N(0, 1) times a channel scale in [0.5, 1.5], except the
 * planted channels, scaled by big[i] */
static float *make_x(long n, int cols, const int *planted, const float *big, int n_planted)
{
	float *c = malloc(sizeof(float) * cols), *X = malloc(sizeof(float) * (size_t)n * cols);
	for (int j = 0; j < cols; j++)
		c[j] = (float)(0.5 + urand());
	for (int i = 0; i < n_planted; i++)
		c[planted[i]] = big[i];
	for (long t = 0; t < n; t++)
		for (int j = 0; j < cols; j++)
			X[(size_t)t * cols + j] = (float)nrand() * c[j];
	free(c);
	return X;
}

static float *make_w(int rows, int cols, int heavy)
{
	float *W = malloc(sizeof(float) * (size_t)rows * cols);
	for (size_t i = 0; i < (size_t)rows * cols; i++)
		W[i] = (float)((heavy ? trand() : nrand()) * 0.05);
	return W;
}

/* AWQ output error of matrix W with scales s: Q(W s)/s against W, on every
 * step-th row of X */
static double awq_err(const kn_qparams *p, const float *X, long n, long step, const float *W,
		      int rows, int cols, const float *s)
{
	float *ws = calloc((size_t)rows * cols, sizeof(float));
	float *q = malloc(sizeof(float) * (size_t)rows * cols);
	for (int r = 0; r < rows; r++)
		for (int c = 0; c < cols; c++)
			ws[(size_t)r * cols + c] = W[(size_t)r * cols + c] * s[c];
	fq(p, ws, rows, cols, q);
	for (int r = 0; r < rows; r++)
		for (int c = 0; c < cols; c++)
			q[(size_t)r * cols + c] /= s[c];
	double e = out_err(X, n, step, cols, q, W, rows, 0, cols);
	free(ws);
	free(q);
	return e;
}

/* ---------------------------------------------------------------- SmoothQuant */

static void test_smooth_hand(void **st)
{
	(void)st;
	/* x_absmax = (4, 0, 9); two matrices reading the input, column absmax
	 * over both = (1, 4, 0 -> clamped to 1e-5) */
	const float xa[3] = {4, 0, 9};
	const float w1[6] = {1, -2, 0, -0.5f, 1, 0};
	const float w2[3] = {0.25f, -4, 0};
	const float *W[2] = {w1, w2};
	const int rows[2] = {2, 1};
	float s[3];

	/* alpha 0.5: s = sqrt(x) / sqrt(w) = 2/1, 0 -> clamp 1e-5, 3/sqrt(1e-5) */
	quant_smooth_scales(xa, W, rows, 2, 3, 0.5f, s);
	assert_float_equal(s[0], 2.0f, 1e-6);
	assert_float_equal(s[1], 1e-5f, 1e-11);
	assert_float_equal(s[2], 948.683298f, 1e-3);
	/* alpha 1: s = x (w^0 = 1); the zero channel clamps */
	quant_smooth_scales(xa, W, rows, 2, 3, 1.0f, s);
	assert_float_equal(s[0], 4.0f, 1e-6);
	assert_float_equal(s[1], 1e-5f, 1e-11);
	assert_float_equal(s[2], 9.0f, 1e-6);
	/* alpha 0: s = 1 / w (x^0 = 1, also for x = 0 as in torch) */
	quant_smooth_scales(xa, W, rows, 2, 3, 0.0f, s);
	assert_float_equal(s[0], 1.0f, 1e-6);
	assert_float_equal(s[1], 0.25f, 1e-7);
	assert_float_equal(s[2], 1e5f, 1.0);
	/* alpha 0.75: 4^0.75 / 1^0.25 = 2.8284271; 9^0.75 / (1e-5)^0.25 =
	 * 5.1961524 / 0.0562341 = 92.402111 */
	quant_smooth_scales(xa, W, rows, 2, 3, 0.75f, s);
	assert_float_equal(s[0], 2.8284271f, 1e-5);
	assert_float_equal(s[2], 92.402111f, 1e-3);
	/* only the first matrix: column absmax (1, 2, 1e-5) */
	quant_smooth_scales(xa, W, rows, 1, 3, 0.5f, s);
	assert_float_equal(s[0], 2.0f, 1e-6);
	assert_float_equal(s[1], 1e-5f, 1e-11);

	/* non-finite statistics leave the channel alone; no matrices: all 1 */
	const float xb[3] = {4, NAN, INFINITY};
	quant_smooth_scales(xb, W, rows, 2, 3, 0.5f, s);
	assert_float_equal(s[0], 2.0f, 1e-6);
	assert_true(s[1] == 1.0f && s[2] == 1.0f);
	const float w3[3] = {NAN, 1, 1};
	const float *W3[1] = {w3};
	const int r3[1] = {1};
	quant_smooth_scales(xa, W3, r3, 1, 3, 0.5f, s);
	assert_true(s[0] == 1.0f);
	assert_float_equal(s[2], 3.0f, 1e-6);
	quant_smooth_scales(xa, W, rows, 0, 3, 0.5f, s);
	assert_true(s[0] == 1.0f && s[1] == 1.0f && s[2] == 1.0f);
}

/* --------------------------------------------------------------- AWQ scales */

static void test_awq_outliers(void **st)
{
	(void)st;
	enum { COLS = 256, N = 1024, R1 = 128, R2 = 64, NP = 4 };
	const int planted[NP] = {7, 50, 131, 200};
	const float big[NP] = {20, 30, 40, 50};
	float *X = make_x(N, COLS, planted, big, NP);
	float *w1 = make_w(R1, COLS, 0), *w2 = make_w(R2, COLS, 0);
	const float *W[2] = {w1, w2};
	const int rows[2] = {R1, R2};
	const kn_qparams f = intq(3, 64, 0);
	quant_spec sp = awq_spec(f);
	float s[COLS], ones[COLS], alpha = -1;
	qs_error err = {0};

	assert_int_equal(quant_awq_scales(X, N, W, rows, 2, COLS, &sp, s, &alpha, &err), 0);
	for (int j = 0; j < COLS; j++)
		ones[j] = 1.0f;
	double rtn = awq_err(&f, X, N, 1, w1, R1, COLS, ones) + awq_err(&f, X, N, 1, w2, R2, COLS, ones);
	double awq = awq_err(&f, X, N, 1, w1, R1, COLS, s) + awq_err(&f, X, N, 1, w2, R2, COLS, s);
	print_message("int3 g64 asym, planted outliers 20-50x: output error RTN %.4g, AWQ %.4g "
		      "(%.1f%%), alpha %.2f\n",
		      rtn, awq, 100.0 * awq / rtn, (double)alpha);
	assert_true(awq < 0.7 * rtn);
	assert_true(alpha > 0.0f && alpha < 1.0f);

	/* the planted channels get the largest scales */
	float smin_planted = INFINITY, smax_other = 0;
	for (int j = 0; j < COLS; j++) {
		int p = 0;
		for (int i = 0; i < NP; i++)
			p |= planted[i] == j;
		assert_true(isfinite(s[j]) && s[j] > 0);
		if (p)
			smin_planted = fminf(smin_planted, s[j]);
		else
			smax_other = fmaxf(smax_other, s[j]);
	}
	print_message("scales: smallest planted %.3f, largest other %.3f\n", (double)smin_planted,
		      (double)smax_other);
	assert_true(smin_planted > 2.0f * smax_other);

	/* a fixed alpha is honoured: s = mean|x|^a normalised, no search */
	double mean[COLS] = {0}, mx = 0, mn = INFINITY;
	for (long t = 0; t < N; t++)
		for (int j = 0; j < COLS; j++)
			mean[j] += fabs((double)X[(size_t)t * COLS + j]) / N;
	for (int j = 0; j < COLS; j++) {
		double v = fmax(pow(mean[j], 0.5), 1e-4);
		mx = fmax(mx, v);
		mn = fmin(mn, v);
	}
	sp.alpha = 0.5f;
	assert_int_equal(quant_awq_scales(X, N, W, rows, 2, COLS, &sp, s, &alpha, &err), 0);
	assert_true(alpha == 0.5f);
	for (int j = 0; j < COLS; j++)
		assert_float_equal(s[j], fmax(pow(mean[j], 0.5), 1e-4) / sqrt(mx * mn), 1e-5 * s[j]);
	sp.alpha = 0.0f;
	assert_int_equal(quant_awq_scales(X, N, W, rows, 2, COLS, &sp, s, NULL, &err), 0);
	for (int j = 0; j < COLS; j++)
		assert_true(s[j] == 1.0f);

	free(X);
	free(w1);
	free(w2);
}

/* The chosen alpha minimises the output error over the 20-point grid, as the
 * test measures it: with many samples (the Gram path), with few (direct
 * products), and with n >= 8192 rows, where the library judges on every
 * (n / 4096)-th row (x_max still from all rows). */
static void search_is_argmin(long n, int cols, kn_qparams f, const char *what)
{
	enum { R1 = 64, R2 = 32 };
	const int planted[2] = {3, 40};
	const float big[2] = {25, 40};
	const long step = n / 4096 > 1 ? n / 4096 : 1;
	float *X = make_x(n, cols, planted, big, 2);
	float *w1 = make_w(R1, cols, 1), *w2 = make_w(R2, cols, 0);
	const float *W[2] = {w1, w2};
	const int rows[2] = {R1, R2};
	quant_spec sp = awq_spec(f);
	float *s = malloc(sizeof(float) * cols), *si = malloc(sizeof(float) * cols), alpha = -1;
	qs_error err = {0};
	assert_int_equal(quant_awq_scales(X, n, W, rows, 2, cols, &sp, s, &alpha, &err), 0);

	double loss[20], lmin = INFINITY;
	int imin = -1;
	for (int i = 0; i < 20; i++) {
		float a;
		sp.alpha = (float)i / 20.0f;
		assert_int_equal(quant_awq_scales(X, n, W, rows, 2, cols, &sp, si, &a, &err), 0);
		loss[i] = awq_err(&f, X, n, step, w1, R1, cols, si) +
			  awq_err(&f, X, n, step, w2, R2, cols, si);
		if (loss[i] < lmin) {
			lmin = loss[i];
			imin = i;
		}
	}
	int ic = (int)lroundf(alpha * 20.0f);
	assert_true(ic >= 0 && ic < 20 && fabsf(alpha - (float)ic / 20.0f) < 1e-6f);
	print_message("%s (n %ld): chosen alpha %.2f loss %.6g, test's argmin %.2f loss %.6g\n",
		      what, n, (double)alpha, loss[ic], imin / 20.0, lmin);
	assert_true(loss[ic] <= lmin * (1 + 1e-4));
	/* the returned scales are those of the chosen alpha */
	sp.alpha = alpha;
	assert_int_equal(quant_awq_scales(X, n, W, rows, 2, cols, &sp, si, NULL, &err), 0);
	assert_memory_equal(s, si, sizeof(float) * cols);
	free(s);
	free(si);
	free(X);
	free(w1);
	free(w2);
}

static void test_awq_search_argmin(void **st)
{
	(void)st;
	search_is_argmin(512, 128, intq(4, 32, 1), "int4 g32 sym, gram");
	search_is_argmin(64, 128, intq(3, 64, 0), "int3 g64 asym, direct");
	kn_qparams q40 = {KN_QF_GGML, 4, 0, 1, KN_TYPE_Q4_0, 0};
	search_is_argmin(300, 128, q40, "q4_0, gram");
	search_is_argmin(8200, 64, intq(3, 32, 0), "int3 g32, subsampled");
}

/* ----------------------------------------------------------------- AWQ clip */

/* Run the clip and check, per (row, group) on the sampled rows, that the
 * clipped weights quantize to an output error no larger than the unclipped
 * ones; that Wc is W clamped to +-ratio * absmax with a ratio on the grid;
 * returns the totals. */
static void clip_check(const float *X, long n, const float *W, int rows, int cols,
		       kn_qparams f, int per_group, double *e_none, double *e_clip)
{
	quant_spec sp = awq_spec(f);
	qs_error err = {0};
	float *Wc = malloc(sizeof(float) * (size_t)rows * cols);
	float *q0 = malloc(sizeof(float) * (size_t)rows * cols);
	float *q1 = malloc(sizeof(float) * (size_t)rows * cols);
	assert_int_equal(quant_awq_clip(X, n, W, rows, cols, &sp, Wc, &err), 0);
	fq(&f, W, rows, cols, q0);
	fq(&f, Wc, rows, cols, q1);
	const long step = n / 512 > 1 ? n / 512 : 1; /* auto_clip_layer's sampling */
	int gs = cols;
	if ((f.fmt == KN_QF_INT || f.fmt == KN_QF_NF4) && f.group > 0)
		gs = f.group;
	if (f.fmt == KN_QF_GGML)
		gs = 32;
	/* per tensor, the clip is relative to the tensor's absmax */
	float tmax = 0;
	for (size_t i = 0; i < (size_t)rows * cols; i++)
		tmax = fmaxf(tmax, fabsf(W[i]));
	const int tensor = (f.fmt == KN_QF_INT || f.fmt == KN_QF_NF4) && f.group == KN_GROUP_TENSOR;
	*e_none = *e_clip = 0;
	for (int r = 0; r < rows; r++)
		for (int c0 = 0; c0 < cols; c0 += gs) {
			const float *w = W + (size_t)r * cols + c0, *wc = Wc + (size_t)r * cols + c0;
			float amax = 0, m = 0;
			for (int c = 0; c < gs; c++) {
				amax = fmaxf(amax, fabsf(w[c]));
				m = fmaxf(m, fabsf(wc[c]));
			}
			if (tensor) {
				amax = tmax;
				m = 0;
				for (size_t i = 0; i < (size_t)rows * cols; i++)
					m = fmaxf(m, fabsf(Wc[i]));
			}
			for (int c = 0; c < gs; c++)
				assert_true(wc[c] == fminf(fmaxf(w[c], -m), m));
			if (amax > 0) {
				double ratio = m / amax;
				assert_true(ratio > 0.5 && ratio <= 1.0);
				assert_true(fabs(ratio * 20 - round(ratio * 20)) < 1e-4);
			}
			double e0 = out_err(X, n, step, cols, q0 + (size_t)r * cols, W + (size_t)r * cols,
					    1, c0, gs);
			double e1 = out_err(X, n, step, cols, q1 + (size_t)r * cols, W + (size_t)r * cols,
					    1, c0, gs);
			if (per_group)
				assert_true(e1 <= e0 * (1 + 1e-4) + 1e-12);
			*e_none += e0;
			*e_clip += e1;
		}
	assert_true(*e_clip <= *e_none * (1 + 1e-4) + 1e-12);
	free(Wc);
	free(q0);
	free(q1);
}

static void test_awq_clip(void **st)
{
	(void)st;
	enum { COLS = 256, ROWS = 96 };
	const int planted[2] = {11, 170};
	const float big[2] = {10, 20};
	float *W = make_w(ROWS, COLS, 1);
	double e0, e1;

	/* 2048 rows: every 4th sampled; group 64 < 512 samples: Gram path */
	float *X = make_x(2048, COLS, planted, big, 2);
	clip_check(X, 2048, W, ROWS, COLS, intq(3, 64, 0), 1, &e0, &e1);
	print_message("clip int3 g64 asym, t3 weights: sampled output error %.4g -> %.4g (%.1f%%)\n",
		      e0, e1, 100 * e1 / e0);
	assert_true(e1 < 0.97 * e0);
	clip_check(X, 2048, W, ROWS, COLS, intq(4, 128, 1), 1, &e0, &e1);
	print_message("clip int4 g128 sym: %.4g -> %.4g (%.1f%%)\n", e0, e1, 100 * e1 / e0);
	assert_true(e1 < e0);
	free(X);

	/* 200 rows, per-row grid: a 256-column group is longer than the 200
	 * samples, so the library takes direct products */
	X = make_x(200, COLS, planted, big, 2);
	clip_check(X, 200, W, ROWS, COLS, intq(4, KN_GROUP_ROW, 0), 1, &e0, &e1);
	print_message("clip int4 per-row asym (direct): %.4g -> %.4g (%.1f%%)\n", e0, e1,
		      100 * e1 / e0);
	assert_true(e1 < e0);
	free(X);
	free(W);
}

/* every storage format goes through both searches */
static void test_awq_formats(void **st)
{
	(void)st;
	enum { COLS = 128, ROWS = 96, N = 256 };
	const int planted[1] = {5};
	const float big[1] = {30};
	float *X = make_x(N, COLS, planted, big, 1);
	float *W = make_w(ROWS, COLS, 1);
	const float *Wp[1] = {W};
	const int rows[1] = {ROWS};
	const struct {
		const char *name;
		kn_qparams f;
		int clip_total_ok; /* total clip error can only fall */
	} fm[] = {
		{"int4 g32 sym", {KN_QF_INT, 4, 32, 1, 0, 0}, 1},
		{"int8 per-row", {KN_QF_INT, 8, KN_GROUP_ROW, 0, 0, 0}, 1},
		{"int4 per-tensor", {KN_QF_INT, 4, KN_GROUP_TENSOR, 0, 0, 0}, 1},
		{"q4_0", {KN_QF_GGML, 4, 0, 1, KN_TYPE_Q4_0, 0}, 1},
		{"q4_1", {KN_QF_GGML, 4, 0, 0, KN_TYPE_Q4_1, 0}, 1},
		{"q8_0", {KN_QF_GGML, 8, 0, 1, KN_TYPE_Q8_0, 0}, 1},
		{"nf4", {KN_QF_NF4, 4, 64, 1, 0, 0}, 1},
		{"nf4 dq", {KN_QF_NF4, 4, 64, 1, 0, 1}, 0},
		{"fp8", {KN_QF_FP8, 8, 0, 1, 0, 0}, 1},
		{"f16", {KN_QF_F16, 16, 0, 1, 0, 0}, 1},
	};
	for (size_t k = 0; k < sizeof(fm) / sizeof(fm[0]); k++) {
		quant_spec sp = awq_spec(fm[k].f);
		qs_error err = {0};
		float s[COLS], alpha = -1;
		assert_int_equal(quant_awq_scales(X, N, Wp, rows, 1, COLS, &sp, s, &alpha, &err), 0);
		for (int j = 0; j < COLS; j++)
			assert_true(isfinite(s[j]) && s[j] > 0);
		float *Wc = malloc(sizeof(float) * ROWS * COLS);
		assert_int_equal(quant_awq_clip(X, N, W, ROWS, COLS, &sp, Wc, &err), 0);
		for (int i = 0; i < ROWS * COLS; i++)
			assert_true(isfinite(Wc[i]) && fabsf(Wc[i]) <= fabsf(W[i]));
		if (fm[k].f.fmt == KN_QF_F16)
			assert_memory_equal(Wc, W, sizeof(float) * ROWS * COLS);
		free(Wc);
		if (fm[k].clip_total_ok && fm[k].f.fmt != KN_QF_F16) {
			double e0, e1;
			clip_check(X, N, W, ROWS, COLS, fm[k].f,
				   fm[k].f.group != KN_GROUP_TENSOR, &e0, &e1);
			print_message("%-16s alpha %.2f, clip %.4g -> %.4g\n", fm[k].name,
				      (double)alpha, e0, e1);
		}
	}
	free(X);
	free(W);
}

/* ------------------------------------------------------------- degenerate */

static void test_awq_degenerate(void **st)
{
	(void)st;
	enum { COLS = 64, ROWS = 32 };
	float X[3 * COLS], s[COLS], alpha = -1;
	for (int t = 0; t < 3; t++)
		for (int j = 0; j < COLS; j++)
			X[t * COLS + j] = j == 9 ? 0.0f : (float)nrand(); /* channel 9 is dead */
	float *W = make_w(ROWS, COLS, 1);
	for (int c = 0; c < 32; c++)
		W[5 * COLS + c] = 0.0f; /* an all-zero group */
	const float *Wp[1] = {W};
	const int rows[1] = {ROWS};
	quant_spec sp = awq_spec(intq(4, 32, 0));
	qs_error err = {0};
	float *Wc = malloc(sizeof(float) * ROWS * COLS);

	for (long n = 1; n <= 3; n++) {
		assert_int_equal(quant_awq_scales(X, n, Wp, rows, 1, COLS, &sp, s, &alpha, &err), 0);
		for (int j = 0; j < COLS; j++)
			assert_true(isfinite(s[j]) && s[j] > 0);
		assert_true(alpha >= 0 && alpha < 1);
		assert_int_equal(quant_awq_clip(X, n, W, ROWS, COLS, &sp, Wc, &err), 0);
		for (int i = 0; i < ROWS * COLS; i++)
			assert_true(isfinite(Wc[i]));
		for (int c = 0; c < 32; c++)
			assert_true(Wc[5 * COLS + c] == 0.0f);
	}
	/* zero input: every candidate is exact, the first (alpha 0, s = 1) wins
	 * and no clip beats no clip */
	memset(X, 0, sizeof(X));
	assert_int_equal(quant_awq_scales(X, 3, Wp, rows, 1, COLS, &sp, s, &alpha, &err), 0);
	assert_true(alpha == 0.0f);
	for (int j = 0; j < COLS; j++)
		assert_true(s[j] == 1.0f);
	sp.alpha = 0.7f; /* fixed alpha on dead channels: clamped, finite */
	assert_int_equal(quant_awq_scales(X, 3, Wp, rows, 1, COLS, &sp, s, &alpha, &err), 0);
	for (int j = 0; j < COLS; j++)
		assert_true(isfinite(s[j]) && s[j] > 0);
	assert_int_equal(quant_awq_clip(X, 3, W, ROWS, COLS, &sp, Wc, &err), 0);
	assert_memory_equal(Wc, W, sizeof(float) * ROWS * COLS);
	/* in place is allowed */
	memcpy(Wc, W, sizeof(float) * ROWS * COLS);
	assert_int_equal(quant_awq_clip(X, 3, Wc, ROWS, COLS, &sp, Wc, &err), 0);
	free(Wc);
	free(W);
}

/* ---------------------------------------------------------------- invalid */

static void test_awq_invalid(void **st)
{
	(void)st;
	enum { COLS = 64, ROWS = 8, N = 16 };
	float X[N * COLS], W[ROWS * COLS], Wc[ROWS * COLS], s[COLS], alpha = 42;
	for (int i = 0; i < N * COLS; i++)
		X[i] = (float)nrand();
	for (int i = 0; i < ROWS * COLS; i++)
		W[i] = (float)nrand();
	const float *Wp[2] = {W, W};
	int rows[2] = {ROWS, ROWS};
	quant_spec sp = awq_spec(intq(4, 48, 0)); /* 48 does not divide 64 */
	qs_error err = {0};
	for (int j = 0; j < COLS; j++)
		s[j] = 7.0f;

#define EXPECT(call, code, needle)                                      \
	do {                                                            \
		err.msg[0] = 0;                                         \
		assert_int_equal((call), (code));                       \
		print_message("  %s\n", err.msg);                       \
		assert_non_null(strstr(err.msg, needle));               \
		assert_null(strchr(err.msg, '\n'));                     \
	} while (0)

	EXPECT(quant_awq_scales(X, N, Wp, rows, 2, COLS, &sp, s, &alpha, &err), QS_EUSAGE,
	       "group 48 does not divide");
	EXPECT(quant_awq_clip(X, N, W, ROWS, COLS, &sp, Wc, &err), QS_EUSAGE,
	       "group 48 does not divide");
	sp = awq_spec(intq(4, 32, 0));
	EXPECT(quant_awq_scales(X, N, Wp, rows, 0, COLS, &sp, s, &alpha, &err), QS_EUSAGE,
	       "no matrices");
	EXPECT(quant_awq_scales(X, 0, Wp, rows, 2, COLS, &sp, s, &alpha, &err), QS_EUSAGE,
	       "empty input");
	EXPECT(quant_awq_clip(X, 0, W, ROWS, COLS, &sp, Wc, &err), QS_EUSAGE, "empty input");
	rows[1] = 0;
	EXPECT(quant_awq_scales(X, N, Wp, rows, 2, COLS, &sp, s, &alpha, &err), QS_EUSAGE,
	       "matrix 1 is empty");
	rows[1] = ROWS;
	Wp[1] = NULL;
	EXPECT(quant_awq_scales(X, N, Wp, rows, 2, COLS, &sp, s, &alpha, &err), QS_EUSAGE,
	       "matrix 1 is null");
	Wp[1] = W;
	EXPECT(quant_awq_scales(X, N, Wp, rows, 2, COLS, &sp, NULL, &alpha, &err), QS_EUSAGE,
	       "null");
	sp.alpha = 1.5f;
	EXPECT(quant_awq_scales(X, N, Wp, rows, 2, COLS, &sp, s, &alpha, &err), QS_EUSAGE,
	       "alpha 1.5");
	sp.alpha = -1;
	X[3 * COLS + 17] = NAN;
	EXPECT(quant_awq_scales(X, N, Wp, rows, 2, COLS, &sp, s, &alpha, &err), QS_EUSAGE,
	       "channel 17");
	EXPECT(quant_awq_clip(X, N, W, ROWS, COLS, &sp, Wc, &err), QS_EUSAGE, "channel 17");
	X[3 * COLS + 17] = 0;
	W[2 * COLS + 5] = INFINITY;
	EXPECT(quant_awq_scales(X, N, Wp, rows, 2, COLS, &sp, s, &alpha, &err), QS_EUSAGE,
	       "(2, 5)");
	EXPECT(quant_awq_clip(X, N, W, ROWS, COLS, &sp, Wc, &err), QS_EUSAGE, "(2, 5)");
#undef EXPECT
	/* failures leave the outputs alone */
	for (int j = 0; j < COLS; j++)
		assert_true(s[j] == 7.0f);
	assert_true(alpha == 42.0f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_smooth_hand),
		cmocka_unit_test(test_awq_outliers),
		cmocka_unit_test(test_awq_search_argmin),
		cmocka_unit_test(test_awq_clip),
		cmocka_unit_test(test_awq_formats),
		cmocka_unit_test(test_awq_degenerate),
		cmocka_unit_test(test_awq_invalid),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
