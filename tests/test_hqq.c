/* test_hqq.c - HQQ (engine/quant_hqq.c).
 *
 * Heavy-tailed synthetic weights (Laplace and Student-t rows, at an LLM-like
 * scale and at unit scale) at 2, 3 and 4 bits, group 64: HQQ against min-max
 * RTN (kn_qmatrix_quantize_rtn) and against HQQ's own initial grid (built
 * here independently), in lp (p = 0.7, the solver's norm), L1 (its stopping
 * measure) and L2; hand-worked groups whose optimum is known; the stored
 * scales and zeros are FP16 values and the codes are the nearest points of
 * the stored grid (so kn_qmatrix_dequant gives exactly what was optimised);
 * constant, zero, tiny and far-from-zero groups; outlier columns; errors. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <cmocka.h>

#include "../engine/quant.h"
#include "../kernels/fp16.h"
#include "../kernels/types.h"
#include "testutil.h"

/* ------------------------------------------------------------ helpers */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1Dull;
}

/* uniform in (0, 1) */
static double urand(void)
{
	return ((double)(rnd() >> 11) + 0.5) / (double)(1ull << 53);
}

static double nrand(void)
{
	return sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand());
}

static double laplace(void)
{
	double u = urand() - 0.5;
	return u < 0 ? log(1.0 + 2.0 * u) : -log(1.0 - 2.0 * u);
}

/* Student-t with 3 degrees of freedom */
static double student3(void)
{
	double a = nrand(), b = nrand(), c = nrand();
	return nrand() / sqrt((a * a + b * b + c * c) / 3.0);
}

static float f16r(float x)
{
	return kn_fp16_to_fp32_ref(kn_fp32_to_fp16_ref(x));
}

static kn_qparams int_fmt(int bits, int group, int sym)
{
	kn_qparams p = { .fmt = KN_QF_INT, .bits = bits, .group = group, .sym = sym };
	return p;
}

typedef struct errs {
	double lp, l1, l2;
} errs;

static errs err_of(const float *w, const float *d, size_t n, const unsigned char *skip, int cols)
{
	errs e = { 0, 0, 0 };
	for (size_t i = 0; i < n; i++) {
		if (skip && skip[i % (size_t)cols])
			continue;
		double x = fabs((double)w[i] - (double)d[i]);
		e.lp += pow(x, 0.7);
		e.l1 += x;
		e.l2 += x * x;
	}
	return e;
}

/* Quantize w with HQQ (default spec) into a fresh matrix; returns 0 or the error. */
static int run_hqq(kn_qmatrix *q, const float *w, int rows, int cols, kn_qparams f)
{
	qs_error err;
	assert_int_equal(kn_qmatrix_alloc(q, &f, rows, cols), 0);
	quant_spec s = quant_spec_default(QUANT_HQQ, f);
	int rc = quant_hqq(q, w, &s, &err);
	if (rc)
		print_message("quant_hqq: %s\n", err.msg);
	return rc;
}

/* HQQ's initial grid (Quantizer.quantize: si = maxq / (max - min), z = -min si,
 * no widening to 0, no rounding of z) stored as FP16 and applied with nearest
 * codes: the starting point of the solver, computed independently here. */
static void init_grid_dequant(const float *w, int rows, int cols, int group, int bits, float *d)
{
	const int maxq = (1 << bits) - 1;
	for (int r = 0; r < rows; r++)
		for (int c0 = 0; c0 < cols; c0 += group) {
			const float *x = w + (size_t)r * cols + c0;
			float mn = x[0], mx = x[0];
			for (int i = 1; i < group; i++) {
				mn = fminf(mn, x[i]);
				mx = fmaxf(mx, x[i]);
			}
			float si = fminf((float)maxq / (mx - mn), 2e4f);
			float z0 = -mn * si;
			if (bits == 4) /* round_zero, as the reference config */
				z0 = nearbyintf(z0);
			float s = f16r(1.0f / si), z = f16r(z0);
			for (int i = 0; i < group; i++) {
				float v = nearbyintf(x[i] / s + z);
				v = fminf(fmaxf(v, 0.0f), (float)maxq);
				d[(size_t)r * cols + c0 + i] = s * (v - z);
			}
		}
}

/* ------------------------------------------- (1) heavy-tailed weights */

enum { HT_ROWS = 128, HT_COLS = 512, HT_GROUP = 64 };

static void fill_heavy(float *w, size_t n, int dist, double scale)
{
	for (size_t i = 0; i < n; i++) {
		double v = dist == 0 ? laplace() : student3();
		if (rnd() % 256 == 0) /* a few planted large weights */
			v *= 8.0;
		w[i] = (float)(v * scale);
	}
}

static void test_heavy_tailed(void **state)
{
	(void)state;
	const size_t n = (size_t)HT_ROWS * HT_COLS;
	float *w = malloc(sizeof(float) * n), *d = malloc(sizeof(float) * n);
	assert_non_null(w);
	assert_non_null(d);
	static const char *dname[] = { "laplace", "student-t3" };
	static const double scales[] = { 0.02, 1.0 };
	print_message("%-10s %5s %4s | %10s %10s %10s | %10s %10s %10s | %10s\n", "weights",
		      "scale", "bits", "lp rtn", "lp init", "lp hqq", "l2 rtn", "l2 init", "l2 hqq",
		      "l1 hqq/init");
	for (int dist = 0; dist < 2; dist++)
		for (int si = 0; si < 2; si++) {
			rng = 0x1234567ull + (uint64_t)(dist * 2 + si);
			fill_heavy(w, n, dist, scales[si]);
			for (int bits = 2; bits <= 4; bits++) {
				kn_qparams f = int_fmt(bits, HT_GROUP, 0);
				kn_qmatrix qr, qh;
				assert_int_equal(kn_qmatrix_alloc(&qr, &f, HT_ROWS, HT_COLS), 0);
				kn_qmatrix_quantize_rtn(&qr, w, 0);
				kn_qmatrix_dequant(&qr, 0, HT_ROWS, d);
				errs rtn = err_of(w, d, n, NULL, HT_COLS);
				init_grid_dequant(w, HT_ROWS, HT_COLS, HT_GROUP, bits, d);
				errs ini = err_of(w, d, n, NULL, HT_COLS);
				assert_int_equal(run_hqq(&qh, w, HT_ROWS, HT_COLS, f), 0);
				kn_qmatrix_dequant(&qh, 0, HT_ROWS, d);
				errs hqq = err_of(w, d, n, NULL, HT_COLS);
				print_message("%-10s %5.2f %4d | %10.4g %10.4g %10.4g | %10.4g %10.4g %10.4g | %10.4f\n",
					      dname[dist], scales[si], bits, rtn.lp, ini.lp, hqq.lp,
					      rtn.l2, ini.l2, hqq.l2, hqq.l1 / ini.l1);
				/* the solver keeps, per group, the best of its candidates
				 * by L1, the init among them (up to FP16 rounding), and
				 * it improves on its start in lp, its objective */
				assert_true(hqq.l1 <= ini.l1 * 1.001);
				assert_true(hqq.lp < 0.98 * ini.lp);
				/* against min-max RTN (integer zero, 0 on the grid): lp
				 * 2.5-6% lower at 3 and 4 bits (asserted: 1.5%); L2 7-9%
				 * lower at 4 bits, 4% lower at 3 bits at the LLM-like
				 * scale, about equal at unit scale */
				if (bits >= 3)
					assert_true(hqq.lp < 0.985 * rtn.lp);
				if (bits == 4)
					assert_true(hqq.l2 < 0.96 * rtn.l2);
				if (bits == 3 && si == 0)
					assert_true(hqq.l2 < 0.98 * rtn.l2);
				/* at 2 bits HQQ does not beat RTN: its start (no grid
				 * point at 0) is 18-21% worse in lp, and 20 steps win
				 * most of that back at the LLM-like scale (within 1%),
				 * less at unit scale (9-10% worse than RTN), where the
				 * fixed beta = 10 schedule moves slowly. Asserted only
				 * so that a regression shows. */
				if (bits == 2 && si == 0)
					assert_true(hqq.lp < 1.03 * rtn.lp && hqq.l2 < 1.05 * rtn.l2);
				kn_qmatrix_release(&qr);
				kn_qmatrix_release(&qh);
			}
		}
	free(w);
	free(d);
}

/* ------------------------------------------------- (2) worked groups */

/* 2 bits, one group of 16: the extremes 0 and 3 and seven each of 1.4 and
 * 2.4. The min-max grid is {0, 1, 2, 3} (scale 1, zero 0): L1 error
 * 14 * 0.4 = 5.6. HQQ keeps the scale and moves the zero; shifting the grid
 * by d in [0, 0.5] costs 2d + 14 |0.4 - d| (L1) or 2 d^p + 14 |0.4 - d|^p,
 * both least at d = 0.4, i.e. zero = -0.4 (w = 1 * (q + 0.4)), L1 0.8.
 * The solver approaches it from above: with its shrinkage the fixed point is
 * z = (14 (-0.4 + e_mid) + 2 e_ext) / 16, which near -0.4 has the middle
 * residuals (0.4 + z) below the threshold beta^(-1/1.3) (e_mid = 0) and the
 * extreme ones shrunk, so z ends a little above -0.4 (about -0.38). */
static void test_hand_zero(void **state)
{
	(void)state;
	float w[16] = { 0.0f, 3.0f };
	for (int i = 2; i < 16; i++)
		w[i] = i % 2 ? 1.4f : 2.4f;
	kn_qmatrix q;
	assert_int_equal(run_hqq(&q, w, 1, 16, int_fmt(2, 16, 0)), 0);
	float d[16];
	kn_qmatrix_dequant(&q, 0, 1, d);
	errs e = err_of(w, d, 16, NULL, 16);
	print_message("scale %g zero %g  L1 %g (min-max 5.6, optimum 0.8)\n", (double)q.scale[0],
		      (double)q.zero[0], e.l1);
	assert_true(q.scale[0] == 1.0f);
	assert_true(q.zero[0] < -0.35f && q.zero[0] >= -0.4f);
	assert_true(e.l1 < 1.1);
	/* codes: the extremes at 0 and 3, the middles at 1 and 2 */
	assert_int_equal(kn_qcode_get(&q, 0, 0), 0);
	assert_int_equal(kn_qcode_get(&q, 0, 1), 3);
	for (int i = 2; i < 16; i++)
		assert_int_equal(kn_qcode_get(&q, 0, i), i % 2 ? 1 : 2);
	kn_qmatrix_release(&q);
}

/* Symmetric 2 bits: zero fixed at 2, codes 0..3 give s * {-2, -1, 0, 1}.
 * The values {-1, -0.5, 0, 0.5} (four times) lie exactly on the grid of
 * s = 0.5. The GPTQ symmetric init has s = 2 * 1 / 3: -1 sits halfway
 * between -2s and -s (-1.5 rounds to even, -2), the others at +-s. Step 1
 * (beta 10, threshold 10^(-1/1.3) = 0.17): only -1's residual 1/3 is shrunk,
 * to 1/3 - 0.1 (1/3)^(-0.3), giving s = (2 (1 + e) + 0.5 + 0.5) / 6 = 0.565;
 * step 2: no residual reaches the threshold and s = (2 + 0.5 + 0.5) / 6 =
 * 0.5 exactly: error 0. */
static void test_hand_sym(void **state)
{
	(void)state;
	float w[16];
	for (int i = 0; i < 16; i++)
		w[i] = -1.0f + 0.5f * (float)(i % 4);
	kn_qmatrix q;
	assert_int_equal(run_hqq(&q, w, 1, 16, int_fmt(2, 16, 1)), 0);
	assert_null(q.zero);
	assert_true(q.scale[0] == 0.5f);
	float d[16];
	kn_qmatrix_dequant(&q, 0, 1, d);
	for (int i = 0; i < 16; i++) {
		assert_true(d[i] == w[i]);
		assert_int_equal(kn_qcode_get(&q, 0, i), i % 4);
	}
	kn_qmatrix_release(&q);
}

/* A group already on a grid stays exact (min-max init is the optimum). */
static void test_hand_exact(void **state)
{
	(void)state;
	float w[8] = { -0.75f, -0.5f, -0.25f, 0.0f, 0.25f, 0.5f, 0.75f, 1.0f };
	kn_qmatrix q;
	assert_int_equal(run_hqq(&q, w, 1, 8, int_fmt(3, 8, 0)), 0);
	float d[8];
	kn_qmatrix_dequant(&q, 0, 1, d);
	for (int i = 0; i < 8; i++)
		assert_true(d[i] == w[i]);
	assert_true(q.scale[0] == 0.25f && q.zero[0] == 3.0f);
	kn_qmatrix_release(&q);
}

/* ------------------------------------- (3) storage is what was solved */

/* Every stored scale/zero is an FP16 value; every dequantized weight is
 * scale * (code - zero) with the stored values, and the code is the nearest
 * point of that grid (no other code is closer). */
static void check_storage(const kn_qmatrix *q, const float *w)
{
	const int R = q->rows, C = q->cols, maxq = (1 << q->p.bits) - 1;
	float *d = malloc(sizeof(float) * (size_t)C);
	assert_non_null(d);
	size_t ns = q->p.group == KN_GROUP_TENSOR ? 1 : (size_t)R * q->n_groups;
	for (size_t i = 0; i < ns; i++) {
		assert_true(q->scale[i] > 0 && f16r(q->scale[i]) == q->scale[i]);
		if (q->zero)
			assert_true(isfinite(q->zero[i]) && f16r(q->zero[i]) == q->zero[i]);
	}
	for (int r = 0; r < R; r++) {
		kn_qmatrix_dequant(q, r, r + 1, d);
		for (int c = 0; c < C; c++) {
			size_t gi = kn_qgroup(q, r, c);
			float s = q->scale[gi], z = q->zero ? q->zero[gi] : (float)(1 << (q->p.bits - 1));
			int code = (int)kn_qcode_get(q, r, c);
			assert_true(d[c] == s * ((float)code - z));
			float x = w[(size_t)r * C + c], err = fabsf(x - d[c]);
			for (int k = 0; k <= maxq; k++)
				assert_true(fabsf(x - s * ((float)k - z)) >= err * (1 - 1e-6f) - 1e-12f);
		}
	}
	free(d);
}

static void test_storage(void **state)
{
	(void)state;
	enum { R = 24, C = 256 };
	float *w = malloc(sizeof(float) * R * C);
	assert_non_null(w);
	rng = 77;
	for (size_t i = 0; i < (size_t)R * C; i++)
		w[i] = (float)(0.03 * student3());
	static const int groups[] = { 32, 64, KN_GROUP_ROW, KN_GROUP_TENSOR };
	for (int gi = 0; gi < 4; gi++)
		for (int bits = 2; bits <= 8; bits++)
			for (int sym = 0; sym < 2; sym++) {
				kn_qparams f = int_fmt(bits, groups[gi], sym);
				kn_qmatrix q;
				assert_int_equal(run_hqq(&q, w, R, C, f), 0);
				check_storage(&q, w);
				kn_qmatrix_release(&q);
			}
	free(w);
}

/* The same result on one thread as on many (every group is solved alone). */
static void test_threads(void **state)
{
	(void)state;
#ifdef _OPENMP
	enum { R = 64, C = 256 };
	float *w = malloc(sizeof(float) * R * C);
	assert_non_null(w);
	rng = 5;
	for (size_t i = 0; i < (size_t)R * C; i++)
		w[i] = (float)(0.02 * laplace());
	kn_qparams f = int_fmt(3, 64, 0);
	kn_qmatrix a, b;
	int nt = omp_get_max_threads();
	omp_set_num_threads(1);
	assert_int_equal(run_hqq(&a, w, R, C, f), 0);
	omp_set_num_threads(nt > 1 ? nt : 4);
	assert_int_equal(run_hqq(&b, w, R, C, f), 0);
	omp_set_num_threads(nt);
	assert_memory_equal(a.codes, b.codes, a.code_stride * R);
	assert_memory_equal(a.scale, b.scale, sizeof(float) * R * a.n_groups);
	assert_memory_equal(a.zero, b.zero, sizeof(float) * R * a.n_groups);
	kn_qmatrix_release(&a);
	kn_qmatrix_release(&b);
	free(w);
#endif
}

/* ----------------------------------------- (4) degenerate groups, outliers */

/* Groups of 16 in one row: all zero; constant 0.3; constant -7.5; tiny
 * (1e-30) constant; one nonzero; 1000 plus tiny noise (min-max zero would be
 * -1000 / (1e-4 / 15), far outside FP16); denormal-sized noise; huge
 * constant 1e5 (beyond an FP16 scale: saturates, but finite). */
static void test_degenerate(void **state)
{
	(void)state;
	enum { G = 16, NG = 8, C = G * NG };
	float w[C];
	memset(w, 0, sizeof(w));
	rng = 3;
	for (int i = 0; i < G; i++) {
		w[1 * G + i] = 0.3f;
		w[2 * G + i] = -7.5f;
		w[3 * G + i] = 1e-30f;
		w[5 * G + i] = 1000.0f + 1e-4f * (float)urand();
		w[6 * G + i] = 1e-40f * (float)(urand() - 0.5);
		w[7 * G + i] = 1e5f;
	}
	w[4 * G + 5] = -2.0f;
	for (int bits = 2; bits <= 8; bits += 2)
		for (int sym = 0; sym < 2; sym++) {
			kn_qmatrix q;
			assert_int_equal(run_hqq(&q, w, 1, C, int_fmt(bits, G, sym)), 0);
			check_storage(&q, w);
			float d[C];
			kn_qmatrix_dequant(&q, 0, 1, d);
			for (int c = 0; c < C; c++)
				assert_true(isfinite(d[c]));
			for (int i = 0; i < G; i++) {
				assert_true(d[0 * G + i] == 0.0f);
				assert_true(d[1 * G + i] == f16r(0.3f));
				assert_true(d[2 * G + i] == -7.5f);
				assert_true(fabsf(d[3 * G + i]) <= 1e-30f);
				if (!sym) { /* the lone value is an extreme: exact up to fp16 */
					assert_true(fabsf(d[4 * G + i] - w[4 * G + i]) < 2e-3f);
					/* far from zero: within ~1.5 steps of 1000 / 1024 */
					assert_true(fabsf(d[5 * G + i] - w[5 * G + i]) < 1.5f);
				}
				assert_true(fabsf(d[6 * G + i]) < 1e-30f);
				assert_true(d[7 * G + i] > 6e4f);
			}
			kn_qmatrix_release(&q);
		}
}

/* Outlier columns are left out: changing their values changes nothing else,
 * and the other weights are quantized as well as without the outliers'
 * range (the same error as HQQ on a copy with those weights set to 0, which
 * lie inside every group's range here). */
static void test_outliers(void **state)
{
	(void)state;
	enum { R = 16, C = 128 };
	static const int32_t oc[] = { 3, 70, 71 };
	float *w = malloc(sizeof(float) * R * C), *w2 = malloc(sizeof(float) * R * C);
	float *d = malloc(sizeof(float) * R * C);
	assert_non_null(w);
	assert_non_null(w2);
	assert_non_null(d);
	rng = 11;
	for (size_t i = 0; i < (size_t)R * C; i++)
		w[i] = (float)(0.02 * laplace());
	memcpy(w2, w, sizeof(float) * R * C);
	for (int r = 0; r < R; r++)
		for (int k = 0; k < 3; k++) {
			w[(size_t)r * C + oc[k]] = 50.0f * (float)(k + 1);
			w2[(size_t)r * C + oc[k]] = -1e4f;
		}
	static const int groups[] = { 32, KN_GROUP_ROW, KN_GROUP_TENSOR };
	for (int g = 0; g < 3; g++) {
		kn_qparams f = int_fmt(3, groups[g], 0);
		kn_qmatrix a, b;
		qs_error err;
		quant_spec s = quant_spec_default(QUANT_HQQ, f);
		assert_int_equal(kn_qmatrix_alloc(&a, &f, R, C), 0);
		assert_int_equal(kn_qmatrix_alloc(&b, &f, R, C), 0);
		assert_int_equal(kn_qmatrix_set_outliers(&a, oc, 3, w), 0);
		assert_int_equal(kn_qmatrix_set_outliers(&b, oc, 3, w2), 0);
		assert_int_equal(quant_hqq(&a, w, &s, &err), 0);
		assert_int_equal(quant_hqq(&b, w2, &s, &err), 0);
		size_t ns = groups[g] == KN_GROUP_TENSOR ? 1 : (size_t)R * a.n_groups;
		assert_memory_equal(a.scale, b.scale, sizeof(float) * ns);
		assert_memory_equal(a.zero, b.zero, sizeof(float) * ns);
		for (int r = 0; r < R; r++)
			for (int c = 0; c < C; c++)
				if (c != 3 && c != 70 && c != 71)
					assert_int_equal(kn_qcode_get(&a, r, c), kn_qcode_get(&b, r, c));
		/* the scales reflect the ordinary weights, not the 50..150 outliers:
		 * 3 bits, |w| of a few 0.02 -> steps well below 0.1 */
		for (size_t i = 0; i < ns; i++)
			assert_true(a.scale[i] < 0.1f);
		/* and the dequantized matrix (outliers from fp16) is close */
		kn_qmatrix_dequant(&a, 0, R, d);
		for (int r = 0; r < R; r++)
			for (int k = 0; k < 3; k++)
				assert_true(d[(size_t)r * C + oc[k]] == 50.0f * (float)(k + 1));
		kn_qmatrix_release(&a);
		kn_qmatrix_release(&b);
	}
	free(w);
	free(w2);
	free(d);
}

/* ------------------------------------------------------- (5) errors */

static void test_errors(void **state)
{
	(void)state;
	enum { R = 4, C = 64 };
	float w[R * C];
	for (int i = 0; i < R * C; i++)
		w[i] = (float)(i % 7) - 3.0f;
	qs_error err;
	struct {
		kn_qparams p;
		const char *name;
	} bad[] = {
		{ { .fmt = KN_QF_NF4, .bits = 4, .group = 64 }, "nf4" },
		{ { .fmt = KN_QF_FP8, .bits = 8 }, "fp8" },
		{ { .fmt = KN_QF_GGML, .ggml_type = KN_TYPE_Q4_0, .bits = 4, .group = 32 }, "q4_0" },
		{ { .fmt = KN_QF_F16, .bits = 16 }, "fp16" },
		{ { .fmt = KN_QF_BF16, .bits = 16 }, "bf16" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		kn_qmatrix q;
		assert_int_equal(kn_qmatrix_alloc(&q, &bad[i].p, R, C), 0);
		quant_spec s = quant_spec_default(QUANT_HQQ, bad[i].p);
		memset(&err, 0, sizeof(err));
		assert_int_equal(quant_hqq(&q, w, &s, &err), QS_EUNSUPP);
		assert_int_equal(err.code, QS_EUNSUPP);
		assert_non_null(strstr(err.msg, "hqq"));
		assert_non_null(strstr(err.msg, bad[i].name));
		print_message("%s\n", err.msg);
		kn_qmatrix_release(&q);
	}

	kn_qparams f = int_fmt(4, 32, 0);
	kn_qmatrix q;
	assert_int_equal(kn_qmatrix_alloc(&q, &f, R, C), 0);
	quant_spec s = quant_spec_default(QUANT_HQQ, f);
	/* a spec that does not describe the storage */
	s.fmt.bits = 3;
	assert_int_equal(quant_hqq(&q, w, &s, &err), QS_EUSAGE);
	print_message("%s\n", err.msg);
	s = quant_spec_default(QUANT_HQQ, f);
	s.hqq_p = 0.0f;
	assert_int_equal(quant_hqq(&q, w, &s, &err), QS_EUSAGE);
	s.hqq_p = NAN;
	assert_int_equal(quant_hqq(&q, w, &s, &err), QS_EUSAGE);
	s = quant_spec_default(QUANT_HQQ, f);
	s.hqq_iters = 0;
	assert_int_equal(quant_hqq(&q, w, &s, &err), QS_EUSAGE);
	print_message("%s\n", err.msg);
	/* a non-finite weight is named */
	s = quant_spec_default(QUANT_HQQ, f);
	w[2 * C + 9] = NAN;
	assert_int_equal(quant_hqq(&q, w, &s, &err), QS_EUSAGE);
	assert_non_null(strstr(err.msg, "(2, 9)"));
	print_message("%s\n", err.msg);
	w[2 * C + 9] = INFINITY;
	assert_int_equal(quant_hqq(&q, w, &s, &err), QS_EUSAGE);
	/* ... unless it is in an outlier column */
	int32_t oc = 9;
	assert_int_equal(kn_qmatrix_set_outliers(&q, &oc, 1, w), 0);
	assert_int_equal(quant_hqq(&q, w, &s, &err), 0);
	assert_int_equal(quant_hqq(NULL, w, &s, &err), QS_EUSAGE);
	kn_qmatrix_release(&q);
}

/* Other norms: p = 0.5, p = 1 (plain soft thresholding) and p = 2 run, store
 * valid grids and improve on the solver's start in L1 (its stopping
 * measure); at 4 bits they also beat min-max RTN in L1. */
static void test_other_p(void **state)
{
	(void)state;
	enum { R = 32, C = 256, G = 64 };
	float *w = malloc(sizeof(float) * R * C), *d = malloc(sizeof(float) * R * C);
	assert_non_null(w);
	assert_non_null(d);
	rng = 99;
	fill_heavy(w, (size_t)R * C, 0, 0.02);
	for (int bits = 3; bits <= 4; bits++) {
		kn_qparams f = int_fmt(bits, G, 0);
		kn_qmatrix qr;
		assert_int_equal(kn_qmatrix_alloc(&qr, &f, R, C), 0);
		kn_qmatrix_quantize_rtn(&qr, w, 0);
		kn_qmatrix_dequant(&qr, 0, R, d);
		errs rtn = err_of(w, d, (size_t)R * C, NULL, C);
		init_grid_dequant(w, R, C, G, bits, d);
		errs ini = err_of(w, d, (size_t)R * C, NULL, C);
		static const float ps[] = { 0.5f, 1.0f, 2.0f };
		for (int i = 0; i < 3; i++) {
			kn_qmatrix q;
			qs_error err;
			assert_int_equal(kn_qmatrix_alloc(&q, &f, R, C), 0);
			quant_spec s = quant_spec_default(QUANT_HQQ, f);
			s.hqq_p = ps[i];
			assert_int_equal(quant_hqq(&q, w, &s, &err), 0);
			check_storage(&q, w);
			kn_qmatrix_dequant(&q, 0, R, d);
			errs e = err_of(w, d, (size_t)R * C, NULL, C);
			print_message("bits %d p %.1f: l1 %.4g (init %.4g, rtn %.4g)\n", bits,
				      (double)ps[i], e.l1, ini.l1, rtn.l1);
			assert_true(e.l1 <= ini.l1 * 1.001);
			if (bits == 4)
				assert_true(e.l1 < rtn.l1);
			kn_qmatrix_release(&q);
		}
		kn_qmatrix_release(&qr);
	}
	free(w);
	free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_heavy_tailed), cmocka_unit_test(test_hand_zero),
		cmocka_unit_test(test_hand_sym),     cmocka_unit_test(test_hand_exact),
		cmocka_unit_test(test_storage),      cmocka_unit_test(test_threads),
		cmocka_unit_test(test_degenerate),   cmocka_unit_test(test_outliers),
		cmocka_unit_test(test_errors),       cmocka_unit_test(test_other_p),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
