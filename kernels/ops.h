/* ops.h - the non-matmul pieces of a Llama block, on caller-owned buffers.
 * Each has a scalar definition; hot loops get AVX2/AVX-512 paths chosen at
 * run time and are tested against the scalar form. */
#ifndef KN_OPS_H
#define KN_OPS_H

#include <stddef.h>

/* y = x / sqrt(mean(x^2) + eps) * w, for one row of n. y may alias x. */
void kn_rmsnorm(float *y, const float *x, const float *w, int n, float eps);

/* Rotary embedding of one head vector (hd floats) at position pos, using a
 * table cs (hd/2 pairs of cos, sin for this position).
 * style 0: pairs (x[2i], x[2i+1]); style 1: pairs (x[i], x[i+hd/2]). */
void kn_rope(float *x, const float *cs /* (hd/2, 2) */, int hd, int style);

/* In place: x = softmax(x) over n entries. */
void kn_softmax(float *x, int n);

/* y[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i]; y may alias g. */
void kn_swiglu(float *y, const float *g, const float *u, size_t n);
void kn_swiglu_ref(float *y, const float *g, const float *u, size_t n);

/* exp of n floats, vectorised (max rel. error ~2e-7 over the float range). */
void kn_exp(float *y, const float *x, size_t n);
void kn_exp_ref(float *y, const float *x, size_t n);

/* log(sum(exp(x))) over n entries, computed stably. */
double kn_logsumexp(const float *x, int n);

float kn_dot_f32(const float *a, const float *b, int n);

/* y[r] = dot(row r of W, x) for rows [r0, r1) of a weight matrix of type
 * `type` (kn_type) with n columns; W points at row 0. */
void kn_matvec(int type, const void *W, const float *x, float *y, int n, int r0, int r1);

#endif
