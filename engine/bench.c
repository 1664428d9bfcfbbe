#include "bench.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

double bench_median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp_d);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void summarize(double *v, int n, bench_stat *o)
{
	o->reps = n;
	o->median = bench_median(v, n);
	o->min = v[0];
	o->max = v[n - 1];
}

int bench_sgemm(int n, int reps, bench_stat *out)
{
	size_t nn = (size_t)n * n;
	float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float));
	float *c = malloc(nn * sizeof(float));
	double *v = malloc(sizeof(double) * (size_t)reps);
	if (!a || !b || !c || !v || reps < 1) {
		free(a); free(b); free(c); free(v);
		return -1;
	}
	for (size_t i = 0; i < nn; i++) {
		a[i] = (float)(i % 13) * 0.01f;
		b[i] = (float)(i % 7) * 0.02f;
	}
	/* warm-up: thread pool, page faults */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
	for (int r = 0; r < reps; r++) {
		double t = now_s();
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
		v[r] = 2.0 * n * (double)nn / (now_s() - t) * 1e-9;
	}
	summarize(v, reps, out);
	free(a); free(b); free(c); free(v);
	return 0;
}

int bench_copy(int mb, int reps, bench_stat *out)
{
	size_t n = (size_t)mb << 20;
	char *a = malloc(n), *b = malloc(n);
	double *v = malloc(sizeof(double) * (size_t)reps);
	if (!a || !b || !v || reps < 1) {
		free(a); free(b); free(v);
		return -1;
	}
	memset(a, 1, n);
	memset(b, 2, n);
	for (int r = 0; r < reps; r++) {
		char *dst = r % 2 ? a : b, *src = r % 2 ? b : a;
		double t = now_s();
		/* one slice per thread: the machine's bandwidth, not one core's */
#pragma omp parallel
		{
			int nt = omp_get_num_threads(), id = omp_get_thread_num();
			size_t lo = n / (size_t)nt * (size_t)id, hi = id == nt - 1 ? n : lo + n / (size_t)nt;
			memcpy(dst + lo, src + lo, hi - lo);
		}
		v[r] = 2.0 * (double)n / (now_s() - t) * 1e-9;
	}
	summarize(v, reps, out);
	free(a); free(b); free(v);
	return 0;
}
