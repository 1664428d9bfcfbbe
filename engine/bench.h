/* bench.h - this machine's own limits, measured in the same run as the
 * workload they put in proportion: sgemm peak and memory-copy bandwidth. */
#ifndef QS_BENCH_H
#define QS_BENCH_H

typedef struct bench_stat {
	double median, min, max; /* of the repetitions */
	int reps;
} bench_stat;

/* GFLOP/s of a square n x n x n OpenBLAS sgemm (current thread count). */
int bench_sgemm(int n, int reps, bench_stat *out);
/* GB/s of memcpy between two buffers of mb MiB (bytes read + written). */
int bench_copy(int mb, int reps, bench_stat *out);
/* median of n doubles (sorts v) */
double bench_median(double *v, int n);

#endif
