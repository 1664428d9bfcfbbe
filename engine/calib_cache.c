/* calib_cache.c - the on-disk cache of calibration statistics, its key and
 * hash.
 *
 * File layout (little-endian, version 1):
 *
 *   0   "QSCALIB\0"       magic
 *   8   u32 version       CALIB_CACHE_VERSION
 *   12  u32 header size   40
 *   16  u64 key           calib_key(model, text, settings)
 *   24  u64 payload bytes everything after the header
 *   32  u64 payload hash  calib_hash64(payload, bytes, 0)
 *   40  payload: u32 n_samples, u32 seq_len, u64 seed, f32 outlier_k,
 *       f32 sigma, u32 hist bins, u32 n_layers, i64 text tokens; then for
 *       each layer 0..n_layers-1 and the head (-1): i32 layer, u32 n_sites,
 *       and per site: i32 site, i64 rows, u32 cols, f64 mean, std, kurtosis,
 *       absmax_all, rms_all, median_absmax, i64 n_outlier_vals, u32
 *       outlier_exact, i64 zero, under, over, nonfinite, bin[64], u32
 *       n_outlier_ch, f32 absmax[cols], mean_abs[cols], rms[cols], u32
 *       outlier_ch[n_outlier_ch].
 *
 * X^T X is not cached: it is 8 bytes per entry (95 MB for debdoc's eight
 * layers), the stats command does not need it, and GPTQ needs it from the
 * quantized predecessors' outputs anyway, which no cache of the original
 * model can hold. */
#include "calib.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CALIB_CACHE_VERSION 1
#define HEADER_SIZE 40
#define MAX_CACHE_BYTES ((size_t)1 << 30)

static const char cache_magic[8] = { 'Q', 'S', 'C', 'A', 'L', 'I', 'B', 0 };

/* ---------------------------------------------------------------- hash */

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t rd64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static uint32_t rd32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t xround(uint64_t acc, uint64_t in)
{
	acc += in * P2;
	acc = rotl64(acc, 31);
	return acc * P1;
}

static uint64_t xmerge(uint64_t acc, uint64_t v)
{
	acc ^= xround(0, v);
	return acc * P1 + P4;
}

uint64_t calib_hash64(const void *data, size_t n, uint64_t seed)
{
	const unsigned char *p = data, *end = p + n;
	uint64_t h;
	if (n >= 32) {
		uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
		const unsigned char *lim = end - 32;
		do {
			v1 = xround(v1, rd64(p));
			v2 = xround(v2, rd64(p + 8));
			v3 = xround(v3, rd64(p + 16));
			v4 = xround(v4, rd64(p + 24));
			p += 32;
		} while (p <= lim);
		h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
		h = xmerge(h, v1);
		h = xmerge(h, v2);
		h = xmerge(h, v3);
		h = xmerge(h, v4);
	} else {
		h = seed + P5;
	}
	h += (uint64_t)n;
	for (; p + 8 <= end; p += 8) {
		h ^= xround(0, rd64(p));
		h = rotl64(h, 27) * P1 + P4;
	}
	if (p + 4 <= end) {
		h ^= (uint64_t)rd32(p) * P1;
		h = rotl64(h, 23) * P2 + P3;
		p += 4;
	}
	for (; p < end; p++) {
		h ^= (uint64_t)*p * P5;
		h = rotl64(h, 11) * P1;
	}
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}

static uint64_t hash_i64(uint64_t h, int64_t v)
{
	unsigned char b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (unsigned char)((uint64_t)v >> (8 * i));
	return calib_hash64(b, 8, h);
}

static uint64_t hash_f64(uint64_t h, double v)
{
	int64_t bits;
	memcpy(&bits, &v, sizeof(bits));
	return hash_i64(h, bits);
}

uint64_t calib_key(const model *m, const char *text, size_t len, const calib_opts *o)
{
	const model_config *c = &m->cfg;
	uint64_t h = calib_hash64("qscope calib", 12, CALIB_CACHE_VERSION);
	h = calib_hash64(c->arch, strnlen(c->arch, sizeof(c->arch)), h);
	const int64_t cfg[] = { c->vocab, c->dim, c->n_layers, c->n_heads, c->n_kv_heads,
				c->head_dim, c->hidden, c->ctx, c->rope_style, c->tied,
				c->attn_bias };
	for (size_t i = 0; i < sizeof(cfg) / sizeof(cfg[0]); i++)
		h = hash_i64(h, cfg[i]);
	h = hash_f64(h, c->eps);
	h = hash_f64(h, c->rope_theta);
	h = hash_i64(h, m->n_tensors);
	for (int i = 0; i < m->n_tensors; i++) {
		const model_tensor *t = &m->tensors[i];
		h = calib_hash64(t->name, strnlen(t->name, sizeof(t->name)), h);
		h = hash_i64(h, t->type);
		h = hash_i64(h, t->n_dims);
		h = hash_i64(h, t->ne[0]);
		h = hash_i64(h, t->ne[1]);
		h = calib_hash64(t->data, t->nbytes, h);
	}
	h = calib_hash64(text, len, h);
	h = hash_i64(h, o->n_samples);
	h = hash_i64(h, o->seq_len);
	h = hash_i64(h, (int64_t)o->seed);
	h = hash_f64(h, o->sigma);
	h = hash_i64(h, CALIB_HIST_BINS);
	h = hash_i64(h, CALIB_HIST_PER_DECADE);
	h = hash_f64(h, CALIB_HIST_LO);
	return hash_f64(h, CALIB_HIST_HI);
}

/* ---------------------------------------------------------------- paths */

int calib_cache_dir(char *buf, size_t cap, qs_error *err)
{
	const char *e = getenv("QSCOPE_CACHE");
	int n;
	if (e && *e) {
		n = snprintf(buf, cap, "%s", e);
	} else if ((e = getenv("XDG_CACHE_HOME")) && *e == '/') {
		n = snprintf(buf, cap, "%s/qscope", e);
	} else if ((e = getenv("HOME")) && *e) {
		n = snprintf(buf, cap, "%s/.cache/qscope", e);
	} else {
		return qs_err(err, QS_EUSAGE,
			      "calib cache: no QSCOPE_CACHE, XDG_CACHE_HOME or HOME to put it in");
	}
	if (n < 0 || (size_t)n >= cap)
		return qs_err(err, QS_EUSAGE, "calib cache: folder name too long");
	return 0;
}

int calib_cache_path(const char *dir, uint64_t key, char *buf, size_t cap, qs_error *err)
{
	int n = snprintf(buf, cap, "%s/calib-%016llx.bin", dir, (unsigned long long)key);
	if (n < 0 || (size_t)n >= cap)
		return qs_err(err, QS_EUSAGE, "calib cache: folder name too long");
	return 0;
}

int calib_make_parents(const char *path, qs_error *err)
{
	char d[1024];
	int n = snprintf(d, sizeof(d), "%s", path);
	if (n < 0 || (size_t)n >= sizeof(d))
		return qs_err(err, QS_EUSAGE, "calib cache: path too long");
	char *slash = strrchr(d, '/');
	if (!slash || slash == d)
		return 0;
	*slash = 0;
	for (char *p = d + 1; ; p++) {
		if (*p == '/' || *p == 0) {
			char c = *p;
			*p = 0;
			if (mkdir(d, 0755) != 0 && errno != EEXIST)
				return qs_err(err, QS_EIO, "calib cache: %s: cannot create: %s", d,
					      strerror(errno));
			*p = c;
			if (!c)
				break;
		}
	}
	return 0;
}

/* ---------------------------------------------------------------- writing */

typedef struct wbuf {
	unsigned char *p;
	size_t n, cap;
	int oom;
} wbuf;

static void put(wbuf *w, const void *src, size_t n)
{
	if (w->oom)
		return;
	if (w->n + n > w->cap) {
		size_t nc = w->cap ? w->cap : 4096;
		while (nc < w->n + n)
			nc *= 2;
		unsigned char *np = realloc(w->p, nc);
		if (!np) {
			w->oom = 1;
			return;
		}
		w->p = np;
		w->cap = nc;
	}
	memcpy(w->p + w->n, src, n);
	w->n += n;
}

static void put_u64(wbuf *w, uint64_t v)
{
	unsigned char b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (unsigned char)(v >> (8 * i));
	put(w, b, 8);
}

static void put_u32(wbuf *w, uint32_t v)
{
	unsigned char b[4];
	for (int i = 0; i < 4; i++)
		b[i] = (unsigned char)(v >> (8 * i));
	put(w, b, 4);
}

static void put_f64(wbuf *w, double v)
{
	uint64_t u;
	memcpy(&u, &v, 8);
	put_u64(w, u);
}

static void put_f32(wbuf *w, float v)
{
	uint32_t u;
	memcpy(&u, &v, 4);
	put_u32(w, u);
}

static void put_stats(wbuf *w, const calib_stats *s)
{
	put_u32(w, (uint32_t)s->site);
	put_u64(w, (uint64_t)s->rows);
	put_u32(w, (uint32_t)s->cols);
	put_f64(w, s->mean);
	put_f64(w, s->std);
	put_f64(w, s->kurtosis);
	put_f64(w, s->absmax_all);
	put_f64(w, s->rms_all);
	put_f64(w, s->median_absmax);
	put_u64(w, (uint64_t)s->n_outlier_vals);
	put_u32(w, (uint32_t)s->outlier_exact);
	put_u64(w, (uint64_t)s->hist.zero);
	put_u64(w, (uint64_t)s->hist.under);
	put_u64(w, (uint64_t)s->hist.over);
	put_u64(w, (uint64_t)s->hist.nonfinite);
	for (int i = 0; i < CALIB_HIST_BINS; i++)
		put_u64(w, (uint64_t)s->hist.bin[i]);
	put_u32(w, (uint32_t)s->n_outlier_ch);
	for (int j = 0; j < s->cols; j++)
		put_f32(w, s->absmax[j]);
	for (int j = 0; j < s->cols; j++)
		put_f32(w, s->mean_abs[j]);
	for (int j = 0; j < s->cols; j++)
		put_f32(w, s->rms[j]);
	for (int i = 0; i < s->n_outlier_ch; i++)
		put_u32(w, (uint32_t)s->outlier_ch[i]);
}

static void put_layer(wbuf *w, const calib_layer_stats *ls)
{
	put_u32(w, (uint32_t)ls->layer);
	put_u32(w, (uint32_t)ls->n_sites);
	for (int i = 0; i < ls->n_sites; i++)
		put_stats(w, &ls->site[i]);
}

int calib_cache_save(const char *path, const calib_set *s, qs_error *err)
{
	wbuf w = { 0 };
	int rc = 0;
	unsigned char hdr[HEADER_SIZE] = { 0 };
	put(&w, hdr, HEADER_SIZE); /* filled below */
	put_u32(&w, (uint32_t)s->opts.n_samples);
	put_u32(&w, (uint32_t)s->opts.seq_len);
	put_u64(&w, s->opts.seed);
	put_f32(&w, s->opts.outlier_k);
	put_f32(&w, s->opts.sigma);
	put_u32(&w, CALIB_HIST_BINS);
	put_u32(&w, (uint32_t)s->n_layers);
	put_u64(&w, (uint64_t)s->text_tokens);
	for (int l = 0; l < s->n_layers; l++)
		put_layer(&w, &s->layers[l]);
	put_layer(&w, &s->head);
	if (w.oom) {
		free(w.p);
		return qs_err(err, QS_ENOMEM, "calib cache: out of memory");
	}
	wbuf h = { 0 };
	put(&h, cache_magic, 8);
	put_u32(&h, CALIB_CACHE_VERSION);
	put_u32(&h, HEADER_SIZE);
	put_u64(&h, s->key);
	put_u64(&h, (uint64_t)(w.n - HEADER_SIZE));
	put_u64(&h, calib_hash64(w.p + HEADER_SIZE, w.n - HEADER_SIZE, 0));
	if (h.oom || h.n != HEADER_SIZE) {
		free(h.p);
		free(w.p);
		return qs_err(err, QS_ENOMEM, "calib cache: out of memory");
	}
	memcpy(w.p, h.p, HEADER_SIZE);
	free(h.p);

	char tmp[1100];
	FILE *f = NULL;
	if ((rc = calib_make_parents(path, err)))
		goto out;
	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp)) {
		rc = qs_err(err, QS_EUSAGE, "calib cache: path too long");
		goto out;
	}
	if (!(f = fopen(tmp, "wb"))) {
		rc = qs_err(err, QS_EIO, "calib cache: %s: cannot create: %s", tmp, strerror(errno));
		goto out;
	}
	int bad = fwrite(w.p, 1, w.n, f) != w.n;
	bad |= fflush(f) != 0;
	bad |= fsync(fileno(f)) != 0;
	bad |= fclose(f) != 0;
	if (bad || rename(tmp, path) != 0) {
		rc = qs_err(err, QS_EIO, "calib cache: %s: write failed: %s", path, strerror(errno));
		unlink(tmp);
	}
out:
	free(w.p);
	return rc;
}

/* ---------------------------------------------------------------- reading */

typedef struct rbuf {
	const unsigned char *p;
	size_t n, off;
	int bad;
} rbuf;

static const unsigned char *take(rbuf *r, size_t n)
{
	if (r->bad || n > r->n - r->off) {
		r->bad = 1;
		return NULL;
	}
	const unsigned char *p = r->p + r->off;
	r->off += n;
	return p;
}

static uint64_t get_u64(rbuf *r)
{
	const unsigned char *p = take(r, 8);
	return p ? rd64(p) : 0;
}

static uint32_t get_u32(rbuf *r)
{
	const unsigned char *p = take(r, 4);
	return p ? rd32(p) : 0;
}

static double get_f64(rbuf *r)
{
	uint64_t u = get_u64(r);
	double v;
	memcpy(&v, &u, 8);
	return v;
}

static float get_f32(rbuf *r)
{
	uint32_t u = get_u32(r);
	float v;
	memcpy(&v, &u, 4);
	return v;
}

static int get_floats(rbuf *r, float **dst, int n)
{
	*dst = malloc(sizeof(float) * (size_t)(n ? n : 1));
	if (!*dst)
		return -1;
	for (int j = 0; j < n; j++)
		(*dst)[j] = get_f32(r);
	return 0;
}

/* One site's record; checked against the expected layer/site/shape. */
static int get_stats(rbuf *r, calib_stats *s, int layer, int site, int cols, int64_t rows,
		     const calib_opts *o, const char *path, qs_error *err)
{
	memset(s, 0, sizeof(*s));
	s->layer = layer;
	if (layer < 0)
		snprintf(s->name, sizeof(s->name), "%s.in", calib_site_name(site));
	else
		snprintf(s->name, sizeof(s->name), "blk.%d.%s.in", layer, calib_site_name(site));
	s->site = (int)get_u32(r);
	s->rows = (int64_t)get_u64(r);
	s->cols = (int)get_u32(r);
	if (r->bad)
		return qs_err(err, QS_EFORMAT, "calib cache: %s: %s: truncated", path, s->name);
	if (s->site != site || s->cols != cols || s->rows != rows)
		return qs_err(err, QS_EFORMAT,
			      "calib cache: %s: %s: site %d, %lld x %d, expected site %d, %lld x %d",
			      path, s->name, s->site, (long long)s->rows, s->cols, site,
			      (long long)rows, cols);
	s->mean = get_f64(r);
	s->std = get_f64(r);
	s->kurtosis = get_f64(r);
	s->absmax_all = get_f64(r);
	s->rms_all = get_f64(r);
	s->median_absmax = get_f64(r);
	s->n_outlier_vals = (int64_t)get_u64(r);
	s->outlier_exact = (int)get_u32(r);
	s->hist.zero = (int64_t)get_u64(r);
	s->hist.under = (int64_t)get_u64(r);
	s->hist.over = (int64_t)get_u64(r);
	s->hist.nonfinite = (int64_t)get_u64(r);
	for (int i = 0; i < CALIB_HIST_BINS; i++)
		s->hist.bin[i] = (int64_t)get_u64(r);
	uint32_t no = get_u32(r);
	if (r->bad)
		return qs_err(err, QS_EFORMAT, "calib cache: %s: %s: truncated", path, s->name);
	const int64_t nv = rows * cols;
	int64_t hsum = 0;
	const int64_t special[4] = { s->hist.zero, s->hist.under, s->hist.over, s->hist.nonfinite };
	for (int i = 0; i < 4; i++) {
		if (special[i] < 0 || special[i] > nv)
			hsum = -1;
		if (hsum >= 0)
			hsum += special[i];
	}
	for (int i = 0; i < CALIB_HIST_BINS; i++) {
		if (s->hist.bin[i] < 0 || s->hist.bin[i] > nv)
			hsum = -1;
		if (hsum >= 0)
			hsum += s->hist.bin[i];
	}
	if (hsum != nv)
		return qs_err(err, QS_EFORMAT, "calib cache: %s: %s: histogram counts do not sum to %lld",
			      path, s->name, (long long)nv);
	if (s->n_outlier_vals < 0 || s->n_outlier_vals > nv || (s->outlier_exact & ~1) ||
	    no > (uint32_t)cols)
		return qs_err(err, QS_EFORMAT, "calib cache: %s: %s: bad outlier counts", path,
			      s->name);
	s->outlier_frac = (double)s->n_outlier_vals / (double)nv;
	s->outlier_k = o->outlier_k;
	s->sigma = o->sigma;
	s->n_outlier_ch = (int)no;
	if (get_floats(r, &s->absmax, cols) || get_floats(r, &s->mean_abs, cols) ||
	    get_floats(r, &s->rms, cols))
		return qs_err(err, QS_ENOMEM, "calib cache: out of memory");
	if (no) {
		if (!(s->outlier_ch = malloc(sizeof(int) * no)))
			return qs_err(err, QS_ENOMEM, "calib cache: out of memory");
		for (uint32_t i = 0; i < no; i++) {
			uint32_t c = get_u32(r);
			if (c >= (uint32_t)cols)
				return qs_err(err, QS_EFORMAT,
					      "calib cache: %s: %s: outlier channel %u of %d", path,
					      s->name, c, cols);
			s->outlier_ch[i] = (int)c;
		}
	}
	if (r->bad)
		return qs_err(err, QS_EFORMAT, "calib cache: %s: %s: truncated", path, s->name);
	return 0;
}

static int get_layer(rbuf *r, calib_layer_stats *ls, int layer, const model *m,
		     const calib_opts *o, const char *path, qs_error *err)
{
	int ly = (int)get_u32(r);
	uint32_t ns = get_u32(r);
	int want = layer < 0 ? 1 : CALIB_MAX_SITES;
	if (r->bad)
		return qs_err(err, QS_EFORMAT, "calib cache: %s: layer %d: truncated", path, layer);
	if (ly != layer || ns != (uint32_t)want)
		return qs_err(err, QS_EFORMAT,
			      "calib cache: %s: layer record %d with %u sites, expected %d with %d",
			      path, ly, ns, layer, want);
	ls->layer = layer;
	ls->n_sites = want;
	int64_t rows = (int64_t)o->n_samples * o->seq_len;
	for (int i = 0; i < want; i++) {
		int site = layer < 0 ? FWD_SITE_OUTPUT : i;
		int rc = get_stats(r, &ls->site[i], layer, site, calib_site_cols(&m->cfg, site), rows,
				   o, path, err);
		if (rc)
			return rc;
	}
	return 0;
}

int calib_cache_load(const char *path, const model *m, uint64_t key, calib_set **out,
		     qs_error *err)
{
	*out = NULL;
	FILE *f = fopen(path, "rb");
	if (!f) {
		if (errno == ENOENT)
			return 0;
		return qs_err(err, QS_EIO, "calib cache: %s: cannot open: %s", path, strerror(errno));
	}
	unsigned char *buf = NULL;
	calib_set *s = NULL;
	int rc = 0;
	long sz = -1;
	if (fseek(f, 0, SEEK_END) == 0)
		sz = ftell(f);
	if (sz < 0 || fseek(f, 0, SEEK_SET) != 0) {
		rc = qs_err(err, QS_EIO, "calib cache: %s: cannot read", path);
		goto fail;
	}
	if ((size_t)sz < HEADER_SIZE || (size_t)sz > MAX_CACHE_BYTES) {
		rc = qs_err(err, QS_EFORMAT, "calib cache: %s: size %ld is not a cache file", path,
			    sz);
		goto fail;
	}
	if (!(buf = malloc((size_t)sz))) {
		rc = qs_err(err, QS_ENOMEM, "calib cache: out of memory");
		goto fail;
	}
	if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
		rc = qs_err(err, QS_EIO, "calib cache: %s: read error", path);
		goto fail;
	}
	if (memcmp(buf, cache_magic, 8) != 0) {
		rc = qs_err(err, QS_EFORMAT, "calib cache: %s: bad magic", path);
		goto fail;
	}
	uint32_t ver = rd32(buf + 8), hs = rd32(buf + 12);
	if (ver != CALIB_CACHE_VERSION || hs != HEADER_SIZE) {
		rc = qs_err(err, QS_EFORMAT, "calib cache: %s: version %u (header %u), expected %d",
			    path, ver, hs, CALIB_CACHE_VERSION);
		goto fail;
	}
	if (rd64(buf + 16) != key) {
		rc = qs_err(err, QS_EFORMAT, "calib cache: %s: key %016llx, expected %016llx", path,
			    (unsigned long long)rd64(buf + 16), (unsigned long long)key);
		goto fail;
	}
	uint64_t plen = rd64(buf + 24);
	if (plen != (uint64_t)sz - HEADER_SIZE) {
		rc = qs_err(err, QS_EFORMAT, "calib cache: %s: payload size %llu, file has %ld", path,
			    (unsigned long long)plen, sz - HEADER_SIZE);
		goto fail;
	}
	if (calib_hash64(buf + HEADER_SIZE, (size_t)plen, 0) != rd64(buf + 32)) {
		rc = qs_err(err, QS_EFORMAT, "calib cache: %s: checksum mismatch", path);
		goto fail;
	}
	rbuf r = { buf + HEADER_SIZE, (size_t)plen, 0, 0 };
	if (!(s = calloc(1, sizeof(*s)))) {
		rc = qs_err(err, QS_ENOMEM, "calib cache: out of memory");
		goto fail;
	}
	calib_opts_default(&s->opts);
	s->opts.xtx = 0;
	s->opts.n_samples = (int)get_u32(&r);
	s->opts.seq_len = (int)get_u32(&r);
	s->opts.seed = get_u64(&r);
	s->opts.outlier_k = get_f32(&r);
	s->opts.sigma = get_f32(&r);
	uint32_t bins = get_u32(&r);
	uint32_t nl = get_u32(&r);
	s->text_tokens = (int64_t)get_u64(&r);
	s->key = key;
	if (r.bad || bins != CALIB_HIST_BINS || nl != (uint32_t)m->cfg.n_layers ||
	    s->opts.n_samples < 1 || s->opts.seq_len < 2 ||
	    (int64_t)s->opts.n_samples * s->opts.seq_len > ((int64_t)1 << 31)) {
		rc = qs_err(err, QS_EFORMAT, "calib cache: %s: bad settings record", path);
		goto fail;
	}
	s->n_layers = (int)nl;
	if (!(s->layers = calloc(nl ? nl : 1, sizeof(calib_layer_stats)))) {
		rc = qs_err(err, QS_ENOMEM, "calib cache: out of memory");
		goto fail;
	}
	for (int l = 0; l < s->n_layers; l++)
		if ((rc = get_layer(&r, &s->layers[l], l, m, &s->opts, path, err)))
			goto fail;
	if ((rc = get_layer(&r, &s->head, -1, m, &s->opts, path, err)))
		goto fail;
	if (r.off != r.n) {
		rc = qs_err(err, QS_EFORMAT, "calib cache: %s: %zu trailing bytes", path, r.n - r.off);
		goto fail;
	}
	free(buf);
	fclose(f);
	*out = s;
	return 1;
fail:
	calib_set_free(s);
	free(buf);
	fclose(f);
	return rc < 0 ? rc : QS_EFORMAT;
}
