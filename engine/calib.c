/* calib.c - calibration sampling, streaming statistics, the layer-by-layer
 * calibration loop and weight statistics (the cache is in calib_cache.c).
 *
 * How the per-tensor numbers are computed:
 *  - mean, std, kurtosis: each block of rows given to calib_acc_add has its
 *    mean taken from exact per-channel sums (double); the block's central
 *    sums of (x - mean)^2,^3,^4 are then accumulated in double over the block
 *    and merged into the running moments with Pebay's pairwise formulas, so
 *    no sum of raw powers is ever differenced (no cancellation).
 *  - the fraction of |x| > sigma*std needs std before counting, and std is
 *    only known at the end. Every block stores the values above a keep
 *    threshold t = sigma*std_est/2 (std_est: the running estimate so far; t
 *    never decreases); at the end the stored values are counted against
 *    sigma*std. The count is exact when t <= sigma*std (std did not fall to
 *    less than half of an earlier estimate, or the stored tail never hit its
 *    cap of CALIB_TAIL_CAP values) and outlier_exact says so; otherwise it is
 *    a lower bound. Weights of up to 4M values are one block, hence exact;
 *    on debdoc every activation site comes out exact too (the first batch's
 *    4096 rows already pin std down).
 *  - X^T X: ssyrk of each block (<= 65536 rows) into a float scratch, added
 *    into a double accumulator. Float inside a block keeps BLAS speed; double
 *    across blocks keeps the sum from drifting with the number of tokens
 *    (128 x 512 = 65536 rows) before GPTQ inverts it. Memory: 12 bytes per
 *    entry, 12.6 MB for debdoc's 1024-wide ffn_down input, freed per layer. */
#include "calib.h"

#include <cblas.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kernels/types.h"

#define CALIB_TAIL_CAP ((size_t)1 << 22) /* stored tail values per accumulator */
#define CALIB_BLOCK_ROWS 65536            /* rows per internal block */

void calib_opts_default(calib_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->n_samples = 128;
	o->seq_len = 512;
	o->seed = 0;
	o->batch = 8;
	o->outlier_k = 20.0f;
	o->sigma = 6.0f;
	o->xtx = 1;
}

/* ---------------------------------------------------------------- sampling */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* uniform in [0, n) without modulo bias (rejection) */
static uint64_t uniform(uint64_t *s, uint64_t n)
{
	uint64_t lim = UINT64_MAX - UINT64_MAX % n;
	uint64_t r;
	do
		r = splitmix64(s);
	while (r >= lim);
	return r % n;
}

int calib_sample_ids(const int *ids, size_t n_ids, int bos, int n_seq, int seq_len,
		     uint64_t seed, int *tokens, size_t *starts, qs_error *err)
{
	if (n_seq < 1 || seq_len < 2)
		return qs_err(err, QS_EUSAGE, "calib: need at least 1 sequence of 2 tokens, got %d x %d",
			      n_seq, seq_len);
	if (n_ids < (size_t)seq_len)
		return qs_err(err, QS_EUSAGE,
			      "calib: the text has %zu tokens, a %d-token window needs at least %d",
			      n_ids, seq_len, seq_len);
	uint64_t st = seed;
	uint64_t span = (uint64_t)(n_ids - (size_t)seq_len) + 1;
	for (int s = 0; s < n_seq; s++) {
		size_t u = (size_t)uniform(&st, span);
		int *dst = tokens + (size_t)s * seq_len;
		memcpy(dst, ids + u, sizeof(int) * (size_t)seq_len);
		if (bos >= 0)
			dst[0] = bos;
		if (starts)
			starts[s] = u;
	}
	return 0;
}

int calib_sample_text(const model *m, const char *text, size_t len, const calib_opts *o,
		      int **tokens, size_t *n_text_tokens, qs_error *err)
{
	*tokens = NULL;
	int *ids = NULL;
	size_t n = 0, total;
	int rc = tok_encode(m->tok, text, len, 1, &ids, &n, err);
	if (rc)
		return rc;
	if (n_text_tokens)
		*n_text_tokens = n;
	if (o->n_samples < 1 || o->seq_len < 2 ||
	    __builtin_mul_overflow((size_t)o->n_samples, (size_t)o->seq_len, &total) ||
	    total > ((size_t)1 << 31)) {
		free(ids);
		return qs_err(err, QS_EUSAGE, "calib: bad sample size %d x %d", o->n_samples,
			      o->seq_len);
	}
	int *t = malloc(sizeof(int) * total);
	if (!t) {
		free(ids);
		return qs_err(err, QS_ENOMEM, "calib: out of memory for %zu tokens", total);
	}
	rc = calib_sample_ids(ids, n, o->raw_windows ? -1 : tok_bos(m->tok), o->n_samples, o->seq_len, o->seed, t, NULL,
			      err);
	free(ids);
	if (rc) {
		free(t);
		return rc;
	}
	*tokens = t;
	return 0;
}

/* ---------------------------------------------------------------- histogram */

/* float(10^(-4 + i/8)), i = 0..64 */
static const float hist_edge[CALIB_HIST_BINS + 1] = {
	9.99999975e-05f, 0.00013335215f, 0.00017782794f, 0.00023713737f, 0.000316227757f,
	0.000421696517f, 0.000562341302f, 0.000749894185f, 0.00100000005f, 0.00133352145f,
	0.00177827943f, 0.00237137382f, 0.00316227763f, 0.00421696482f, 0.00562341325f,
	0.00749894232f, 0.00999999978f, 0.013335214f, 0.0177827943f, 0.0237137377f,
	0.0316227749f, 0.0421696492f, 0.0562341325f, 0.0749894232f, 0.100000001f,
	0.133352146f, 0.177827939f, 0.237137377f, 0.316227764f, 0.421696514f,
	0.562341332f, 0.749894202f, 1.0f, 1.33352149f, 1.77827942f,
	2.37137365f, 3.1622777f, 4.2169652f, 5.62341309f, 7.4989419f,
	10.0f, 13.3352146f, 17.782795f, 23.7137375f, 31.622776f,
	42.169651f, 56.2341309f, 74.989418f, 100.0f, 133.352142f,
	177.827942f, 237.137375f, 316.227753f, 421.696503f, 562.341309f,
	749.894226f, 1000.0f, 1333.52148f, 1778.27942f, 2371.37378f,
	3162.27759f, 4216.96484f, 5623.41309f, 7498.94189f, 10000.0f,
};

float calib_hist_edge(int i)
{
	return i < 0 ? 0.0f : hist_edge[i > CALIB_HIST_BINS ? CALIB_HIST_BINS : i];
}

/* Slots of the hot loop's counters: bins 0..63, then these. */
enum { SLOT_ZERO = CALIB_HIST_BINS, SLOT_UNDER, SLOT_OVER, SLOT_NONFINITE, N_SLOTS };

/* The bin of |x| from its bits: the float's exponent and top 3 mantissa bits
 * (u >> 20) pick a range spanning a ratio <= 1.125, less than one bin (1.33),
 * so at most one edge falls inside it; the table holds the bin at the range's
 * start and the bits of that edge. One lookup and one compare, exact against
 * the edge table. Built once (pthread_once). */
typedef struct bin_entry {
	uint32_t split; /* bits of the edge inside the range, or UINT32_MAX */
	int32_t bin;    /* bin of the range's first float */
} bin_entry;

#define KEY_SHIFT 20
static uint32_t edge_lo_bits, edge_hi_bits, key0;
static bin_entry bin_tab[(255 << 3) + 8];
static pthread_once_t bin_once = PTHREAD_ONCE_INIT;

static uint32_t fbits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

static void bin_tab_init(void)
{
	edge_lo_bits = fbits(hist_edge[0]);
	edge_hi_bits = fbits(hist_edge[CALIB_HIST_BINS]);
	key0 = edge_lo_bits >> KEY_SHIFT;
	uint32_t key1 = (edge_hi_bits - 1) >> KEY_SHIFT;
	int b = 0;
	for (uint32_t k = key0; k <= key1; k++) {
		uint32_t lo = k << KEY_SHIFT, hi = (k + 1) << KEY_SHIFT;
		if (lo < edge_lo_bits)
			lo = edge_lo_bits;
		while (b + 1 <= CALIB_HIST_BINS && fbits(hist_edge[b + 1]) <= lo)
			b++;
		bin_entry *e = &bin_tab[k - key0];
		e->bin = b;
		e->split = b + 1 <= CALIB_HIST_BINS && fbits(hist_edge[b + 1]) < hi
				   ? fbits(hist_edge[b + 1]) : UINT32_MAX;
	}
}

static inline int hist_slot(float x)
{
	uint32_t u = fbits(x) & 0x7fffffffu;
	if (u - edge_lo_bits < edge_hi_bits - edge_lo_bits) {
		const bin_entry *e = &bin_tab[(u >> KEY_SHIFT) - key0];
		return e->bin + (u >= e->split);
	}
	if (u == 0)
		return SLOT_ZERO;
	if (u < edge_lo_bits)
		return SLOT_UNDER;
	return u < 0x7f800000u ? SLOT_OVER : SLOT_NONFINITE;
}

int calib_hist_bin(float x)
{
	pthread_once(&bin_once, bin_tab_init);
	int s = hist_slot(x);
	return s < CALIB_HIST_BINS ? s : -(s - CALIB_HIST_BINS + 1);
}

static void hist_from_slots(calib_hist *h, const int64_t *slot)
{
	for (int i = 0; i < CALIB_HIST_BINS; i++)
		h->bin[i] += slot[i];
	h->zero += slot[SLOT_ZERO];
	h->under += slot[SLOT_UNDER];
	h->over += slot[SLOT_OVER];
	h->nonfinite += slot[SLOT_NONFINITE];
}

/* ---------------------------------------------------------------- accumulator */

typedef struct tail_buf {
	float *v;  /* stored |x| > keep threshold */
	size_t n, cap;
	int64_t slot[N_SLOTS];
	double s2, s3, s4;
	double sum;
	int oom;
	char pad[64]; /* keep threads' hot fields off one cache line */
} tail_buf;

struct calib_acc {
	int cols, nt;
	float k, sigma;
	int64_t rows;
	float *absmax;          /* (cols) */
	double *sum_abs;        /* (cols) */
	double *sum_sq;         /* (cols) */
	double n, mean, m2, m3, m4; /* running central moments */
	double sumsq_all;       /* sum x^2 over everything (std estimate, rms_all) */
	float keep;             /* tail keep threshold (never decreases) */
	tail_buf *tb;           /* (nt) */
	calib_hist hist;
	double *xtx;            /* (cols, cols) upper triangle accumulated, or NULL */
	float *xtx_f;           /* (cols, cols) per-block ssyrk scratch */
};

int calib_acc_cols(const calib_acc *a) { return a->cols; }

void calib_stats_release(calib_stats *s)
{
	if (!s)
		return;
	free(s->absmax);
	free(s->mean_abs);
	free(s->rms);
	free(s->row_absmax);
	free(s->outlier_ch);
	free(s->xtx);
	memset(s, 0, sizeof(*s));
}

void calib_acc_free(calib_acc *a)
{
	if (!a)
		return;
	free(a->absmax);
	free(a->sum_abs);
	free(a->sum_sq);
	if (a->tb)
		for (int t = 0; t < a->nt; t++)
			free(a->tb[t].v);
	free(a->tb);
	free(a->xtx);
	free(a->xtx_f);
	free(a);
}

calib_acc *calib_acc_new(int cols, float outlier_k, float sigma, int want_xtx, qs_error *err)
{
	if (cols < 1 || cols > (1 << 20) || !(outlier_k > 0) || !(sigma > 0)) {
		qs_err(err, QS_EUSAGE, "calib: bad accumulator: %d channels, k %g, sigma %g", cols,
		       (double)outlier_k, (double)sigma);
		return NULL;
	}
	pthread_once(&bin_once, bin_tab_init);
	calib_acc *a = calloc(1, sizeof(*a));
	if (!a) {
		qs_err(err, QS_ENOMEM, "calib: out of memory");
		return NULL;
	}
	a->cols = cols;
	a->k = outlier_k;
	a->sigma = sigma;
	a->nt = omp_get_max_threads();
	if (a->nt < 1)
		a->nt = 1;
	a->absmax = calloc((size_t)cols, sizeof(float));
	a->sum_abs = calloc((size_t)cols, sizeof(double));
	a->sum_sq = calloc((size_t)cols, sizeof(double));
	a->tb = calloc((size_t)a->nt, sizeof(tail_buf));
	int bad = !a->absmax || !a->sum_abs || !a->sum_sq || !a->tb;
	if (want_xtx && !bad) {
		size_t cc = (size_t)cols * (size_t)cols;
		a->xtx = calloc(cc, sizeof(double));
		a->xtx_f = malloc(cc * sizeof(float));
		bad = !a->xtx || !a->xtx_f;
	}
	if (bad) {
		calib_acc_free(a);
		qs_err(err, QS_ENOMEM, "calib: out of memory for %d channels%s", cols,
		       want_xtx ? " with X^T X" : "");
		return NULL;
	}
	return a;
}

static size_t tail_total(const calib_acc *a)
{
	size_t n = 0;
	for (int t = 0; t < a->nt; t++)
		n += a->tb[t].n;
	return n;
}

static void tail_prune(calib_acc *a)
{
	for (int t = 0; t < a->nt; t++) {
		tail_buf *b = &a->tb[t];
		size_t o = 0;
		for (size_t i = 0; i < b->n; i++)
			if (b->v[i] > a->keep)
				b->v[o++] = b->v[i];
		b->n = o;
	}
}

/* Merge a block's (n, mean, M2, M3, M4) into the running moments (Pebay 2008). */
static void moments_merge(calib_acc *a, double nb, double mb, double M2b, double M3b, double M4b)
{
	double na = a->n;
	if (na == 0) {
		a->n = nb;
		a->mean = mb;
		a->m2 = M2b;
		a->m3 = M3b;
		a->m4 = M4b;
		return;
	}
	double n = na + nb, d = mb - a->mean, d2 = d * d;
	double M2a = a->m2, M3a = a->m3, M4a = a->m4;
	a->m4 = M4a + M4b + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n) +
		6.0 * d2 * (na * na * M2b + nb * nb * M2a) / (n * n) +
		4.0 * d * (na * M3b - nb * M3a) / n;
	a->m3 = M3a + M3b + d2 * d * na * nb * (na - nb) / (n * n) +
		3.0 * d * (na * M2b - nb * M2a) / n;
	a->m2 = M2a + M2b + d2 * na * nb / n;
	a->mean += d * nb / n;
	a->n = n;
}

static int acc_block(calib_acc *a, const float *x, int rows, qs_error *err)
{
	const int C = a->cols, nt = a->nt;
	const size_t nv = (size_t)rows * (size_t)C;
	const int par = nv >= 32768;
	/* per-channel: threads own column ranges */
#pragma omp parallel num_threads(nt) if (par)
	{
		int t = omp_get_thread_num(), T = omp_get_num_threads();
		int c0 = (int)((long)C * t / T), c1 = (int)((long)C * (t + 1) / T);
		float *amax = a->absmax;
		double *sa = a->sum_abs, *sq = a->sum_sq, s = 0;
		for (int r = 0; r < rows; r++) {
			const float *xr = x + (size_t)r * C;
#pragma omp simd reduction(+ : s)
			for (int j = c0; j < c1; j++) {
				float v = xr[j], av = fabsf(v);
				amax[j] = amax[j] > av ? amax[j] : av;
				sa[j] += av;
				sq[j] += (double)v * v;
				s += v;
			}
		}
		a->tb[t].sum = s;
	}
	double bsum = 0, sumsq = 0;
	for (int t = 0; t < nt; t++) {
		bsum += a->tb[t].sum;
		a->tb[t].sum = 0;
	}
	for (int j = 0; j < C; j++)
		sumsq += a->sum_sq[j];
	a->sumsq_all = sumsq;
	const double nb = (double)nv, bmean = bsum / nb;
	/* keep threshold from the running std estimate (including this block) */
	double ntot = a->n + nb, mtot = (a->mean * a->n + bsum) / ntot;
	double var_est = sumsq / ntot - mtot * mtot;
	float keep = (float)(0.5 * a->sigma * sqrt(var_est > 0 ? var_est : 0));
	if (keep > a->keep)
		a->keep = keep;
	const float kt = a->keep;
	/* per-tensor central sums, histogram, tail: threads own row ranges */
#pragma omp parallel num_threads(nt) if (par)
	{
		int t = omp_get_thread_num(), T = omp_get_num_threads();
		size_t v0 = nv * (size_t)t / (size_t)T, v1 = nv * (size_t)(t + 1) / (size_t)T;
		tail_buf *b = &a->tb[t];
		double s2 = 0, s3 = 0, s4 = 0;
		for (size_t i0 = v0; i0 < v1; i0 += 4096) {
			size_t i1 = i0 + 4096 < v1 ? i0 + 4096 : v1;
#pragma omp simd reduction(+ : s2, s3, s4)
			for (size_t i = i0; i < i1; i++) {
				double d = (double)x[i] - bmean, d2 = d * d;
				s2 += d2;
				s3 += d2 * d;
				s4 += d2 * d2;
			}
			for (size_t i = i0; i < i1; i++) {
				float av = fabsf(x[i]);
				b->slot[hist_slot(av)]++;
				if (av > kt && !b->oom) {
					if (b->n == b->cap) {
						size_t nc = b->cap ? 2 * b->cap : 1024;
						float *nvp = realloc(b->v, nc * sizeof(float));
						if (!nvp) {
							b->oom = 1;
							continue;
						}
						b->v = nvp;
						b->cap = nc;
					}
					b->v[b->n++] = av;
				}
			}
		}
		b->s2 = s2;
		b->s3 = s3;
		b->s4 = s4;
	}
	double M2 = 0, M3 = 0, M4 = 0;
	for (int t = 0; t < nt; t++) {
		tail_buf *b = &a->tb[t];
		if (b->oom)
			return qs_err(err, QS_ENOMEM, "calib: out of memory for outlier values");
		M2 += b->s2;
		M3 += b->s3;
		M4 += b->s4;
		b->s2 = b->s3 = b->s4 = 0; /* a region may run on fewer threads */
		hist_from_slots(&a->hist, b->slot);
		memset(b->slot, 0, sizeof(b->slot));
	}
	moments_merge(a, nb, bmean, M2, M3, M4);
	if (tail_total(a) > CALIB_TAIL_CAP) {
		double sd = sqrt(a->m2 / a->n);
		float k2 = (float)(0.9 * a->sigma * sd);
		if (k2 > a->keep)
			a->keep = k2;
		tail_prune(a);
		while (tail_total(a) > CALIB_TAIL_CAP / 2) {
			a->keep = a->keep > 0 ? a->keep * 1.25f : FLT_MIN;
			tail_prune(a);
		}
	}
	/* X^T X: upper triangle of this block in float, summed in double */
	if (a->xtx) {
		cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, C, rows, 1.0f, x, C, 0.0f,
			    a->xtx_f, C);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 8) if (par)
		for (int i = 0; i < C; i++) {
			double *d = a->xtx + (size_t)i * C;
			const float *s = a->xtx_f + (size_t)i * C;
#pragma omp simd
			for (int j = i; j < C; j++)
				d[j] += s[j];
		}
	}
	a->rows += rows;
	return 0;
}

int calib_acc_add(calib_acc *a, const float *x, int64_t rows, qs_error *err)
{
	if (rows < 0)
		return qs_err(err, QS_EUSAGE, "calib: %lld rows", (long long)rows);
	for (int64_t r = 0; r < rows; r += CALIB_BLOCK_ROWS) {
		int n = (int)(rows - r < CALIB_BLOCK_ROWS ? rows - r : CALIB_BLOCK_ROWS);
		int rc = acc_block(a, x + (size_t)r * a->cols, n, err);
		if (rc)
			return rc;
	}
	return 0;
}

typedef struct ch_val {
	float v;
	int i;
} ch_val;

static int cmp_ch_desc(const void *p, const void *q)
{
	const ch_val *a = p, *b = q;
	if (a->v != b->v)
		return a->v < b->v ? 1 : -1;
	return a->i - b->i;
}

static int cmp_float(const void *p, const void *q)
{
	float a = *(const float *)p, b = *(const float *)q;
	return (a > b) - (a < b);
}

int calib_stats_outlier_channels(calib_stats *s, float k, qs_error *err)
{
	const int C = s->cols;
	free(s->outlier_ch);
	s->outlier_ch = NULL;
	s->n_outlier_ch = 0;
	s->outlier_k = k;
	if (C < 1 || !s->absmax)
		return 0;
	float *sorted = malloc(sizeof(float) * (size_t)C);
	ch_val *cv = malloc(sizeof(ch_val) * (size_t)C);
	if (!sorted || !cv) {
		free(sorted);
		free(cv);
		return qs_err(err, QS_ENOMEM, "calib: out of memory");
	}
	memcpy(sorted, s->absmax, sizeof(float) * (size_t)C);
	qsort(sorted, (size_t)C, sizeof(float), cmp_float);
	double med = C % 2 ? sorted[C / 2] : 0.5 * ((double)sorted[C / 2 - 1] + sorted[C / 2]);
	s->median_absmax = med;
	double lim = (double)k * med;
	int no = 0;
	for (int j = 0; j < C; j++)
		if ((double)s->absmax[j] > lim)
			cv[no++] = (ch_val){ s->absmax[j], j };
	qsort(cv, (size_t)no, sizeof(ch_val), cmp_ch_desc);
	if (no && !(s->outlier_ch = malloc(sizeof(int) * (size_t)no))) {
		free(sorted);
		free(cv);
		return qs_err(err, QS_ENOMEM, "calib: out of memory");
	}
	for (int i = 0; i < no; i++)
		s->outlier_ch[i] = cv[i].i;
	s->n_outlier_ch = no;
	free(sorted);
	free(cv);
	return 0;
}

int calib_acc_finish(calib_acc *a, calib_stats *out, qs_error *err)
{
	const int C = a->cols;
	memset(out, 0, sizeof(*out));
	out->layer = -1;
	out->site = -1;
	out->rows = a->rows;
	out->cols = C;
	out->outlier_k = a->k;
	out->sigma = a->sigma;
	out->mean_abs = malloc(sizeof(float) * (size_t)C);
	out->rms = malloc(sizeof(float) * (size_t)C);
	if (!out->mean_abs || !out->rms) {
		calib_stats_release(out);
		return qs_err(err, QS_ENOMEM, "calib: out of memory");
	}
	double rn = a->rows > 0 ? 1.0 / (double)a->rows : 0.0;
	double amax_all = 0;
	for (int j = 0; j < C; j++) {
		out->mean_abs[j] = (float)(a->sum_abs[j] * rn);
		out->rms[j] = (float)sqrt(a->sum_sq[j] * rn);
		amax_all = a->absmax[j] > amax_all ? a->absmax[j] : amax_all;
	}
	out->absmax = a->absmax; /* moved */
	a->absmax = NULL;
	out->absmax_all = amax_all;
	out->hist = a->hist;
	double n = a->n;
	out->mean = n > 0 ? a->mean : 0;
	out->std = n > 0 ? sqrt(a->m2 / n) : 0;
	out->kurtosis = a->m2 > 0 ? n * a->m4 / (a->m2 * a->m2) : 0;
	out->rms_all = n > 0 ? sqrt(a->sumsq_all / n) : 0;
	/* outlier values against the final std */
	float thr = (float)(a->sigma * out->std);
	int64_t cnt = 0;
	for (int t = 0; t < a->nt; t++)
		for (size_t i = 0; i < a->tb[t].n; i++)
			cnt += a->tb[t].v[i] > thr;
	out->n_outlier_vals = cnt;
	out->outlier_frac = n > 0 ? (double)cnt / n : 0;
	out->outlier_exact = a->keep <= thr;
	int rc = calib_stats_outlier_channels(out, a->k, err);
	if (rc) {
		calib_stats_release(out);
		return rc;
	}
	if (a->xtx) {
		double *h = a->xtx;
		for (int i = 0; i < C; i++)
			for (int j = i + 1; j < C; j++)
				h[(size_t)j * C + i] = h[(size_t)i * C + j];
		out->xtx = h; /* moved */
		a->xtx = NULL;
	}
	return 0;
}

/* ---------------------------------------------------------------- weights */

int calib_weight_list(const model *m, const model_tensor **list, int cap)
{
	int n = 0;
#define PUT(t)                          \
	do {                            \
		if ((t) && n < cap)     \
			list[n] = (t);  \
		if (t)                  \
			n++;            \
	} while (0)
	for (int l = 0; l < m->cfg.n_layers; l++) {
		const model_layer *ly = &m->layers[l];
		PUT(ly->wq);
		PUT(ly->wk);
		PUT(ly->wv);
		PUT(ly->wo);
		PUT(ly->w_gate);
		PUT(ly->w_up);
		PUT(ly->w_down);
	}
	PUT(m->tok_embd);
	if (m->output != m->tok_embd)
		PUT(m->output);
#undef PUT
	return n;
}

static int layer_of_name(const char *name)
{
	int l;
	if (sscanf(name, "blk.%d.", &l) == 1 && l >= 0)
		return l;
	return -1;
}

int calib_weight_stats(const model_tensor *t, float outlier_k, float sigma, calib_stats *out,
		       qs_error *err)
{
	memset(out, 0, sizeof(*out));
	const kn_type_traits *tr = kn_traits(t->type);
	if (!tr || !tr->to_float)
		return qs_err(err, QS_EUNSUPP, "calib: tensor '%s': unsupported type %d", t->name,
			      t->type);
	if (t->n_dims != 2 || t->ne[0] < 1 || t->ne[1] < 1 || t->ne[0] > (1 << 20))
		return qs_err(err, QS_EUSAGE, "calib: tensor '%s' is not a matrix", t->name);
	const int C = (int)t->ne[0];
	const int64_t R = t->ne[1];
	const size_t rs = kn_row_size(t->type, (size_t)C);
	if (!rs || rs * (size_t)R > t->nbytes)
		return qs_err(err, QS_EFORMAT, "calib: tensor '%s': %zu bytes for %lld rows of %d",
			      t->name, t->nbytes, (long long)R, C);
	int64_t chunk = ((int64_t)1 << 22) / C;
	if (chunk < 1)
		chunk = 1;
	if (chunk > R)
		chunk = R;
	int rc = 0;
	calib_acc *a = calib_acc_new(C, outlier_k, sigma, 0, err);
	float *buf = malloc(sizeof(float) * (size_t)chunk * (size_t)C);
	float *ra = malloc(sizeof(float) * (size_t)R);
	if (!a || !buf || !ra) {
		rc = a ? qs_err(err, QS_ENOMEM, "calib: tensor '%s': out of memory", t->name)
		       : (err ? err->code : QS_ENOMEM);
		goto fail;
	}
	for (int64_t r0 = 0; r0 < R; r0 += chunk) {
		int64_t nr = R - r0 < chunk ? R - r0 : chunk;
		const unsigned char *src = (const unsigned char *)t->data + (size_t)r0 * rs;
#pragma omp parallel for schedule(static) if (nr * C > 65536)
		for (int64_t r = 0; r < nr; r++) {
			float *row = buf + (size_t)r * C, m = 0;
			tr->to_float(src + (size_t)r * rs, row, (size_t)C);
#pragma omp simd reduction(max : m)
			for (int j = 0; j < C; j++)
				m = fabsf(row[j]) > m ? fabsf(row[j]) : m;
			ra[r0 + r] = m;
		}
		if ((rc = calib_acc_add(a, buf, nr, err)))
			goto fail;
	}
	if ((rc = calib_acc_finish(a, out, err)))
		goto fail;
	out->row_absmax = ra;
	ra = NULL;
	snprintf(out->name, sizeof(out->name), "%s", t->name);
	out->layer = layer_of_name(t->name);
	out->site = -1;
fail:
	free(ra);
	free(buf);
	calib_acc_free(a);
	return rc;
}

/* ---------------------------------------------------------------- sites */

const char *calib_site_name(int site)
{
	static const char *const names[FWD_SITE_COUNT] = {
		[FWD_SITE_QKV] = "attn_qkv",
		[FWD_SITE_ATTN_OUT] = "attn_output",
		[FWD_SITE_FFN_IN] = "ffn_gate_up",
		[FWD_SITE_FFN_DOWN] = "ffn_down",
		[FWD_SITE_OUTPUT] = "output",
	};
	return site >= 0 && site < FWD_SITE_COUNT ? names[site] : "?";
}

int calib_site_cols(const model_config *c, int site)
{
	switch (site) {
	case FWD_SITE_QKV:
	case FWD_SITE_FFN_IN:
	case FWD_SITE_OUTPUT: return c->dim;
	case FWD_SITE_ATTN_OUT: return c->n_heads * c->head_dim;
	case FWD_SITE_FFN_DOWN: return c->hidden;
	default: return 0;
	}
}

static void site_name(char *buf, size_t cap, int layer, int site)
{
	if (layer < 0)
		snprintf(buf, cap, "%s.in", calib_site_name(site));
	else
		snprintf(buf, cap, "blk.%d.%s.in", layer, calib_site_name(site));
}

/* ---------------------------------------------------------------- streaming */

struct calib_stream {
	const model *m;
	fwd_ctx *f;
	int n_seq, seq_len, batch, dim, next, n_batches;
	float *hidden; /* (n_seq * seq_len, dim), or NULL when in the file */
	int fd;        /* the residual stream in an unlinked temporary file, or -1 */
	int broken;
};

static int stream_tmpfile(void)
{
	const char *d = getenv("TMPDIR");
	char path[1024];
	snprintf(path, sizeof(path), "%s/qscope-calib-XXXXXX", d && *d ? d : "/tmp");
	int fd = mkstemp(path);
	if (fd >= 0)
		unlink(path);
	return fd;
}

/* rows [r0, r0 + n) of the residual stream to or from buf */
static int stream_io(calib_stream *s, int write, size_t r0, size_t n, float *buf, qs_error *err)
{
	const size_t row = sizeof(float) * (size_t)s->dim;
	if (s->fd < 0) {
		float *h = s->hidden + r0 * s->dim;
		if (write)
			memcpy(h, buf, row * n);
		else
			memcpy(buf, h, row * n);
		return 0;
	}
	char *p = (char *)buf;
	size_t left = row * n;
	off_t off = (off_t)(r0 * row);
	while (left) {
		ssize_t k = write ? pwrite(s->fd, p, left, off) : pread(s->fd, p, left, off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return qs_err(err, QS_EIO, "calib: temporary file for the residual stream: %s",
				      k < 0 ? strerror(errno) : "short read");
		p += k;
		off += k;
		left -= (size_t)k;
	}
	return 0;
}

calib_stream *calib_stream_new(const model *m, const int *tokens, int n_seq, int seq_len,
			       int batch, qs_error *err)
{
	const model_config *c = &m->cfg;
	size_t rows, n;
	if (n_seq < 1 || seq_len < 1 || batch < 1 ||
	    __builtin_mul_overflow((size_t)n_seq, (size_t)seq_len, &rows) ||
	    __builtin_mul_overflow(rows, (size_t)c->dim, &n) || n > ((size_t)1 << 40)) {
		qs_err(err, QS_EUSAGE, "calib: bad stream %d x %d, batch %d", n_seq, seq_len, batch);
		return NULL;
	}
	if (c->ctx > 0 && seq_len > c->ctx) {
		qs_err(err, QS_EUSAGE, "calib: sequence length %d exceeds the model's context %d",
		       seq_len, c->ctx);
		return NULL;
	}
	if (batch > n_seq)
		batch = n_seq;
	calib_stream *s = calloc(1, sizeof(*s));
	if (!s) {
		qs_err(err, QS_ENOMEM, "calib: out of memory");
		return NULL;
	}
	s->fd = -1;
	s->m = m;
	s->n_seq = n_seq;
	s->seq_len = seq_len;
	s->batch = batch;
	s->dim = c->dim;
	s->n_batches = (n_seq + batch - 1) / batch;
	const char *mx = getenv("QSCOPE_CALIB_STREAM_MEM");
	size_t mem_max = mx && *mx ? (size_t)strtoull(mx, NULL, 10) : CALIB_STREAM_MEM_MAX;
	s->fd = sizeof(float) * n > mem_max ? stream_tmpfile() : -1;
	if (s->fd < 0 && !(s->hidden = malloc(sizeof(float) * n))) {
		qs_err(err, QS_ENOMEM, "calib: out of memory for the residual stream (%zu MB)",
		       sizeof(float) * n >> 20);
		goto fail;
	}
	if (!(s->f = fwd_new_flags(m, batch, seq_len, FWD_PREFILL_ONLY, err)))
		goto fail;
	for (int s0 = 0; s0 < n_seq; s0 += batch) {
		int nb = n_seq - s0 < batch ? n_seq - s0 : batch;
		if (fwd_embed(s->f, tokens + (size_t)s0 * seq_len, nb, seq_len, err) ||
		    stream_io(s, 1, (size_t)s0 * seq_len, (size_t)nb * seq_len, fwd_hidden(s->f), err))
			goto fail;
	}
	return s;
fail:
	calib_stream_free(s);
	return NULL;
}

void calib_stream_free(calib_stream *s)
{
	if (!s)
		return;
	fwd_free(s->f);
	free(s->hidden);
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}

int calib_stream_next(const calib_stream *s) { return s->next; }
int calib_stream_batches(const calib_stream *s) { return s->n_batches; }
fwd_ctx *calib_stream_fwd(calib_stream *s) { return s->f; }

int calib_stream_read(calib_stream *s, size_t row0, size_t n_rows, float *dst, qs_error *err)
{
	size_t rows = (size_t)s->n_seq * s->seq_len;
	if (row0 > rows || n_rows > rows - row0)
		return qs_err(err, QS_EUSAGE, "calib: rows [%zu, +%zu) outside the stream (%zu)", row0,
			      n_rows, rows);
	return stream_io(s, 0, row0, n_rows, dst, err);
}

int calib_stream_in_file(const calib_stream *s) { return s->fd >= 0; }

static int stream_pass(calib_stream *s, int layer, int commit, fwd_capture_fn cap, void *user,
		       qs_progress_fn progress, void *puser, qs_error *err)
{
	const size_t T = (size_t)s->seq_len;
	int rc = 0;
	fwd_set_capture(s->f, cap, user);
	for (int b = 0, s0 = 0; s0 < s->n_seq; b++, s0 += s->batch) {
		int nb = s->n_seq - s0 < s->batch ? s->n_seq - s0 : s->batch;
		if ((rc = stream_io(s, 0, (size_t)s0 * T, (size_t)nb * T, fwd_hidden(s->f), err)))
			break;
		rc = layer >= 0 ? fwd_layers(s->f, nb, s->seq_len, layer, layer + 1, err)
				: fwd_head(s->f, nb, s->seq_len, 0, NULL, err);
		if (rc)
			break;
		if (commit && (rc = stream_io(s, 1, (size_t)s0 * T, (size_t)nb * T, fwd_hidden(s->f), err)))
			break;
		if (progress && progress(puser, b + 1, s->n_batches)) {
			rc = qs_err(err, QS_ECANCEL, "calib: cancelled");
			break;
		}
	}
	fwd_set_capture(s->f, NULL, NULL);
	if (rc && commit)
		s->broken = 1;
	return rc;
}

int calib_stream_layer(calib_stream *s, int commit, fwd_capture_fn cap, void *user,
		       qs_progress_fn progress, void *puser, qs_error *err)
{
	if (s->broken)
		return qs_err(err, QS_EUSAGE, "calib: stream was interrupted; start a new one");
	if (s->next >= s->m->cfg.n_layers)
		return qs_err(err, QS_EUSAGE, "calib: all %d layers already run", s->m->cfg.n_layers);
	int rc = stream_pass(s, s->next, commit, cap, user, progress, puser, err);
	if (!rc && commit)
		s->next++;
	return rc;
}

int calib_stream_head(calib_stream *s, fwd_capture_fn cap, void *user, qs_progress_fn progress,
		      void *puser, qs_error *err)
{
	if (s->broken)
		return qs_err(err, QS_EUSAGE, "calib: stream was interrupted; start a new one");
	if (s->next != s->m->cfg.n_layers)
		return qs_err(err, QS_EUSAGE, "calib: the head needs all %d layers run first (at %d)",
			      s->m->cfg.n_layers, s->next);
	return stream_pass(s, -1, 0, cap, user, progress, puser, err);
}

/* ---------------------------------------------------------------- calib_run */

void calib_layer_release(calib_layer_stats *ls)
{
	if (!ls)
		return;
	for (int i = 0; i < CALIB_MAX_SITES; i++)
		calib_stats_release(&ls->site[i]);
	ls->n_sites = 0;
}

void calib_layer_take(calib_layer_stats *dst, calib_layer_stats *st)
{
	*dst = *st;
	memset(st->site, 0, sizeof(st->site));
	st->n_sites = 0;
}

typedef struct run_state {
	calib_acc *acc[CALIB_MAX_SITES];
	qs_error err;
	int failed;
	qs_progress_fn progress;
	void *puser;
	long base, total;
} run_state;

static int run_cap(void *u, int layer, int site, const float *x, int rows, int cols)
{
	run_state *st = u;
	int i = layer < 0 ? 0 : site;
	if (i < 0 || i >= CALIB_MAX_SITES || !st->acc[i] || calib_acc_cols(st->acc[i]) != cols) {
		qs_err(&st->err, QS_EFORMAT, "calib: layer %d: unexpected site %d (%d columns)",
		       layer, site, cols);
		st->failed = 1;
		return 1;
	}
	if (calib_acc_add(st->acc[i], x, rows, &st->err)) {
		st->failed = 1;
		return 1;
	}
	return 0;
}

static int run_progress(void *u, long done, long total)
{
	run_state *st = u;
	(void)total;
	return st->progress ? st->progress(st->puser, st->base + done, st->total) : 0;
}

int calib_run(const model *m, const int *tokens, int n_seq, int seq_len, const calib_opts *o,
	      calib_layer_fn on_layer, void *user, qs_progress_fn progress, void *puser,
	      qs_error *err)
{
	const model_config *c = &m->cfg;
	calib_opts def;
	if (!o) {
		calib_opts_default(&def);
		o = &def;
	}
	run_state st;
	memset(&st, 0, sizeof(st));
	st.progress = progress;
	st.puser = puser;
	calib_layer_stats ls;
	memset(&ls, 0, sizeof(ls));
	int rc = 0;
	calib_stream *s = calib_stream_new(m, tokens, n_seq, seq_len, o->batch > 0 ? o->batch : 8,
					   err);
	if (!s)
		return err ? err->code : QS_ENOMEM;
	const int nbat = calib_stream_batches(s);
	st.total = (long)(c->n_layers + 1) * nbat;
	for (int l = 0; l <= c->n_layers; l++) {
		int layer = l < c->n_layers ? l : -1;
		int ns = layer < 0 ? 1 : CALIB_MAX_SITES;
		for (int i = 0; i < ns; i++) {
			int site = layer < 0 ? FWD_SITE_OUTPUT : i;
			st.acc[i] = calib_acc_new(calib_site_cols(c, site), o->outlier_k, o->sigma,
						  o->xtx, err);
			if (!st.acc[i]) {
				rc = err ? err->code : QS_ENOMEM;
				goto done;
			}
		}
		st.base = (long)l * nbat;
		rc = layer >= 0 ? calib_stream_layer(s, 1, run_cap, &st, run_progress, &st, err)
				: calib_stream_head(s, run_cap, &st, run_progress, &st, err);
		if (rc) {
			if (st.failed) {
				if (err)
					*err = st.err;
				rc = st.err.code;
			} else if (rc == QS_ECANCEL) {
				qs_err(err, QS_ECANCEL, "calib: cancelled at layer %d", layer);
			}
			goto done;
		}
		ls.layer = layer;
		ls.n_sites = ns;
		for (int i = 0; i < ns; i++) {
			int site = layer < 0 ? FWD_SITE_OUTPUT : i;
			if ((rc = calib_acc_finish(st.acc[i], &ls.site[i], err)))
				goto done;
			calib_acc_free(st.acc[i]);
			st.acc[i] = NULL;
			ls.site[i].layer = layer;
			ls.site[i].site = site;
			site_name(ls.site[i].name, sizeof(ls.site[i].name), layer, site);
		}
		if (on_layer && on_layer(user, layer, &ls)) {
			rc = qs_err(err, QS_ECANCEL, "calib: cancelled after layer %d", layer);
			goto done;
		}
		calib_layer_release(&ls);
	}
done:
	calib_layer_release(&ls);
	for (int i = 0; i < CALIB_MAX_SITES; i++)
		calib_acc_free(st.acc[i]);
	calib_stream_free(s);
	return rc;
}

/* ---------------------------------------------------------------- calib_collect */

void calib_set_free(calib_set *s)
{
	if (!s)
		return;
	if (s->layers)
		for (int l = 0; l < s->n_layers; l++)
			calib_layer_release(&s->layers[l]);
	free(s->layers);
	calib_layer_release(&s->head);
	free(s);
}

static int collect_layer(void *user, int layer, calib_layer_stats *st)
{
	calib_set *s = user;
	if (layer < 0)
		calib_layer_take(&s->head, st);
	else if (layer < s->n_layers)
		calib_layer_take(&s->layers[layer], st);
	return 0;
}

int calib_collect(const model *m, const char *text, size_t len, const calib_opts *o,
		  const char *cache_dir, qs_progress_fn progress, void *puser, calib_set **out,
		  calib_cache_info *info, qs_error *err)
{
	calib_cache_info dummy;
	if (!info)
		info = &dummy;
	memset(info, 0, sizeof(*info));
	*out = NULL;
	calib_opts opts;
	if (o)
		opts = *o;
	else
		calib_opts_default(&opts);
	opts.xtx = 0;
	int *tokens = NULL;
	size_t n_text = 0;
	int rc = calib_sample_text(m, text, len, &opts, &tokens, &n_text, err);
	if (rc)
		return rc;
	uint64_t key = calib_key(m, text, len, &opts);
	if (cache_dir) {
		qs_error ce = { 0 };
		if (calib_cache_path(cache_dir, key, info->path, sizeof(info->path), &ce)) {
			snprintf(info->warning, sizeof(info->warning), "%s", ce.msg);
			info->path[0] = 0;
		} else {
			calib_set *c = NULL;
			int lr = calib_cache_load(info->path, m, key, &c, &ce);
			if (lr == 1 && c->opts.outlier_k != opts.outlier_k) {
				/* outlier channels derive from the cached absmax */
				c->opts.outlier_k = opts.outlier_k;
				for (int l = -1; l < c->n_layers && lr == 1; l++) {
					calib_layer_stats *ls = l < 0 ? &c->head : &c->layers[l];
					for (int i = 0; i < ls->n_sites && lr == 1; i++)
						if (calib_stats_outlier_channels(&ls->site[i],
										 opts.outlier_k, err))
							lr = -1;
				}
				if (lr != 1) {
					calib_set_free(c);
					free(tokens);
					return err ? err->code : QS_ENOMEM;
				}
			}
			if (lr == 1) {
				c->opts.batch = opts.batch;
				c->text_tokens = (int64_t)n_text;
				info->hit = 1;
				*out = c;
				free(tokens);
				return 0;
			}
			if (lr < 0)
				snprintf(info->warning, sizeof(info->warning), "%s (ignored, recomputing)",
					 ce.msg);
		}
	}
	calib_set *s = calloc(1, sizeof(*s));
	if (s)
		s->layers = calloc((size_t)m->cfg.n_layers, sizeof(calib_layer_stats));
	if (!s || !s->layers) {
		free(s);
		free(tokens);
		return qs_err(err, QS_ENOMEM, "calib: out of memory");
	}
	s->opts = opts;
	s->key = key;
	s->text_tokens = (int64_t)n_text;
	s->n_layers = m->cfg.n_layers;
	rc = calib_run(m, tokens, opts.n_samples, opts.seq_len, &opts, collect_layer, s, progress,
		       puser, err);
	free(tokens);
	if (rc) {
		calib_set_free(s);
		return rc;
	}
	if (cache_dir && info->path[0]) {
		qs_error ce = { 0 };
		if (calib_cache_save(info->path, s, &ce)) {
			size_t wl = strlen(info->warning);
			snprintf(info->warning + wl, sizeof(info->warning) - wl, "%s%s",
				 wl ? "; " : "", ce.msg);
		} else {
			info->saved = 1;
		}
	}
	*out = s;
	return 0;
}
