/* test_kernels_ops.c - the SIMD paths of kernels/ops.c against their scalar
 * definitions and against independent math (double precision). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "../kernels/types.h"

static uint64_t rng = 88172645463325252ull;
static float frand(float lo, float hi)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return lo + (hi - lo) * (float)(rng >> 40) / 16777216.0f;
}

static void test_exp(void **s)
{
	(void)s;
	enum { N = 100003 };
	float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
	for (int i = 0; i < N; i++)
		x[i] = frand(-87.0f, 88.0f);
	x[0] = 0.0f;
	x[1] = -200.0f; /* underflows to 0 */
	x[2] = 88.7f;
	for (size_t n = 0; n < 40; n++) /* every tail length */
		kn_exp(y, x, n);
	kn_exp(y, x, N);
	double worst = 0;
	for (int i = 0; i < N; i++) {
		double e = exp((double)x[i]);
		if (e < 1e-37)
			continue; /* float denormal range */
		double rel = fabs(y[i] - e) / e;
		worst = rel > worst ? rel : worst;
	}
	print_message("kn_exp worst relative error %.3g\n", worst);
	assert_true(worst < 5e-7);
	assert_true(y[0] == 1.0f);
	assert_true(y[1] >= 0.0f && y[1] < 1e-37f);
	free(x);
	free(y);
}

static void test_softmax_logsumexp(void **s)
{
	(void)s;
	for (int n = 1; n < 300; n += 7) {
		float x[300], y[300];
		for (int i = 0; i < n; i++)
			x[i] = frand(-30, 30);
		memcpy(y, x, sizeof(x));
		kn_softmax(y, n);
		double mx = -1e30, sum = 0;
		for (int i = 0; i < n; i++)
			mx = x[i] > mx ? x[i] : mx;
		for (int i = 0; i < n; i++)
			sum += exp((double)x[i] - mx);
		double lse = mx + log(sum), tot = 0;
		for (int i = 0; i < n; i++) {
			double p = exp((double)x[i] - mx) / sum;
			assert_true(fabs(y[i] - p) < 1e-6 + 1e-5 * p);
			tot += y[i];
		}
		assert_true(fabs(tot - 1) < 1e-5);
		assert_true(fabs(kn_logsumexp(x, n) - lse) < 1e-5 * fabs(lse) + 1e-5);
	}
}

static void test_swiglu(void **s)
{
	(void)s;
	enum { N = 1037 };
	float g[N], u[N], y[N], r[N];
	for (int i = 0; i < N; i++) {
		g[i] = frand(-20, 20);
		u[i] = frand(-3, 3);
	}
	kn_swiglu(y, g, u, N);
	kn_swiglu_ref(r, g, u, N);
	for (int i = 0; i < N; i++) {
		double want = g[i] / (1 + exp(-(double)g[i])) * u[i];
		assert_true(fabs(y[i] - want) < 1e-5 * (fabs(want) + 1e-3));
		assert_true(fabs(r[i] - want) < 1e-5 * (fabs(want) + 1e-3));
	}
	memcpy(y, g, sizeof(g)); /* in place */
	kn_swiglu(y, y, u, N);
	for (int i = 0; i < N; i++)
		assert_true(fabs(y[i] - r[i]) <= 1e-6 * (fabs(r[i]) + 1e-3));
}

static void test_rmsnorm(void **s)
{
	(void)s;
	float x[384], w[384], y[384];
	double ss = 0;
	for (int i = 0; i < 384; i++) {
		x[i] = frand(-4, 4);
		w[i] = frand(0.5f, 1.5f);
		ss += (double)x[i] * x[i];
	}
	kn_rmsnorm(y, x, w, 384, 1e-5f);
	double inv = 1 / sqrt(ss / 384 + 1e-5);
	for (int i = 0; i < 384; i++)
		assert_true(fabs(y[i] - x[i] * inv * w[i]) < 1e-5);
}

/* A head vector in rotate-half order, rotated with style 1, equals the same
 * vector in adjacent-pair order rotated with style 0, then permuted back;
 * and both equal the complex rotation computed in double. */
static void test_rope_styles(void **s)
{
	(void)s;
	enum { HD = 64 };
	float cs[HD], a[HD], b[HD];
	const int pos = 37;
	for (int i = 0; i < HD / 2; i++) {
		double ang = pos * pow(10000.0, -2.0 * i / HD);
		cs[2 * i] = (float)cos(ang);
		cs[2 * i + 1] = (float)sin(ang);
	}
	float re[HD / 2], im[HD / 2];
	for (int i = 0; i < HD / 2; i++) {
		re[i] = frand(-1, 1);
		im[i] = frand(-1, 1);
		a[2 * i] = re[i];
		a[2 * i + 1] = im[i];
		b[i] = re[i];
		b[i + HD / 2] = im[i];
	}
	kn_rope(a, cs, HD, 0);
	kn_rope(b, cs, HD, 1);
	for (int i = 0; i < HD / 2; i++) {
		double ang = pos * pow(10000.0, -2.0 * i / HD);
		double wr = re[i] * cos(ang) - im[i] * sin(ang), wi = re[i] * sin(ang) + im[i] * cos(ang);
		assert_true(fabs(a[2 * i] - wr) < 1e-6 && fabs(a[2 * i + 1] - wi) < 1e-6);
		assert_true(a[2 * i] == b[i] && a[2 * i + 1] == b[i + HD / 2]);
	}
}

/* kn_matvec on every type equals dequantize + double dot. */
static void test_matvec_types(void **s)
{
	(void)s;
	const int types[] = { KN_TYPE_F32, KN_TYPE_F16, KN_TYPE_BF16, KN_TYPE_Q8_0, KN_TYPE_Q4_0,
			      KN_TYPE_Q4_1 };
	const int rows = 13, cols = 320;
	float *w = malloc(sizeof(float) * rows * cols), *x = malloc(sizeof(float) * cols);
	float *deq = malloc(sizeof(float) * cols), y[13];
	for (int i = 0; i < rows * cols; i++)
		w[i] = frand(-1, 1);
	for (int i = 0; i < cols; i++)
		x[i] = frand(-2, 2);
	for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
		const kn_type_traits *tr = kn_traits(types[t]);
		size_t rs = kn_row_size(types[t], (size_t)cols);
		unsigned char *q = malloc(rs * rows);
		for (int r = 0; r < rows; r++)
			tr->from_float(w + r * cols, q + r * rs, (size_t)cols);
		memset(y, 0, sizeof(y));
		kn_matvec(types[t], q, x, y, cols, 2, rows); /* rows [2, rows) */
		assert_true(y[0] == 0.0f && y[1] == 0.0f);
		for (int r = 2; r < rows; r++) {
			tr->to_float(q + r * rs, deq, (size_t)cols);
			double want = 0;
			for (int i = 0; i < cols; i++)
				want += (double)deq[i] * x[i];
			assert_true(fabs(y[r] - want) < 1e-4 * (1 + fabs(want)));
		}
		free(q);
	}
	free(w);
	free(x);
	free(deq);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exp),
		cmocka_unit_test(test_softmax_logsumexp),
		cmocka_unit_test(test_swiglu),
		cmocka_unit_test(test_rmsnorm),
		cmocka_unit_test(test_rope_styles),
		cmocka_unit_test(test_matvec_types),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
