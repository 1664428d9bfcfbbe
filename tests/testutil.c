#include "testutil.h"

#include "../engine/forward.h"
#include "../engine/gguf.h"
#include "../engine/model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

const char *tu_shared(const char *rel)
{
	static char buf[4][4096];
	static int k;
	const char *base = getenv("QSCOPE_SHARED");
	char *b = buf[k++ & 3];
	snprintf(b, sizeof(buf[0]), "%s/%s", base && *base ? base : "../shared", rel);
	return b;
}

static char tmpdir[256];

static void rm_tmpdir(void)
{
	if (tmpdir[0]) {
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
		if (system(cmd) != 0)
			fprintf(stderr, "warning: could not remove %s\n", tmpdir);
	}
}

const char *tu_tmpdir(void)
{
	if (!tmpdir[0]) {
		snprintf(tmpdir, sizeof(tmpdir), "/tmp/qscope-test-XXXXXX");
		if (!mkdtemp(tmpdir)) {
			perror("mkdtemp");
			exit(1);
		}
		atexit(rm_tmpdir);
	}
	return tmpdir;
}

char *tu_tmppath(const char *fmt, ...)
{
	static char buf[8][1024];
	static int k;
	char *b = buf[k++ & 7];
	int n = snprintf(b, sizeof(buf[0]), "%s/", tu_tmpdir());
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(b + n, sizeof(buf[0]) - (size_t)n, fmt, ap);
	va_end(ap);
	return b;
}

char *tu_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
		free(b);
		b = NULL;
	}
	fclose(f);
	if (b) {
		b[n] = 0;
		if (len)
			*len = (size_t)n;
	}
	return b;
}

int tu_write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	size_t w = len ? fwrite(data, 1, len, f) : 0; /* data may be NULL when empty */
	return (fclose(f) == 0 && w == len) ? 0 : -1;
}

int tu_asan(void)
{
	const char *e = getenv("QSCOPE_ASAN");
	return e && *e == '1';
}

int tu_run(const char *cmd, const char *err_path, char **out)
{
	size_t fl = strlen(cmd) + (err_path ? strlen(err_path) : 0) + 8;
	char *full = malloc(fl);
	if (!full)
		return -1;
	snprintf(full, fl, err_path ? "%s 2>%s" : "%s", cmd, err_path);
	FILE *p = popen(full, "r");
	free(full);
	if (!p)
		return -1;
	size_t cap = 1 << 16, n = 0, k;
	char *b = malloc(cap);
	while (b && (k = fread(b + n, 1, cap - n - 1, p)) > 0) {
		n += k;
		if (cap - n < 4096) {
			char *nb = realloc(b, cap *= 2);
			if (!nb)
				free(b);
			b = nb;
		}
	}
	if (b)
		b[n] = 0;
	int st = pclose(p);
	if (out)
		*out = b;
	else
		free(b);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

const char *tu_bin(void)
{
	const char *b = getenv("QSCOPE_BIN");
	return b && *b ? b : "build/qscope";
}

typedef struct tu_cap {
	float *x;
	int rows, cols, layer, site, bad;
} tu_cap;

static int tu_grab(void *user, int layer, int site, const float *x, int rows, int cols)
{
	tu_cap *c = user;
	if (layer != c->layer || site != c->site)
		return 0;
	float *n = realloc(c->x, sizeof(float) * (size_t)(c->rows + rows) * (size_t)cols);
	if (!n) {
		c->bad = 1;
		return 1;
	}
	c->x = n;
	memcpy(c->x + (size_t)c->rows * cols, x, sizeof(float) * (size_t)rows * (size_t)cols);
	c->rows += rows;
	c->cols = cols;
	return 0;
}

float *tu_capture_site(const struct model *m, const int *tokens, int n_seq, int len, int layer,
		       int site, int *rows, int *cols)
{
	qs_error err = { 0 };
	tu_cap c = { .layer = layer, .site = site };
	const int batch = n_seq < 4 ? n_seq : 4;
	fwd_ctx *f = fwd_new(m, batch, len, &err);
	if (!f)
		return NULL;
	fwd_set_capture(f, tu_grab, &c);
	for (int k = 0; k < n_seq && !c.bad; k += batch) {
		int nb = n_seq - k < batch ? n_seq - k : batch;
		if (fwd_prefill(f, tokens + (size_t)k * len, nb, len, len - 1, NULL, &err))
			c.bad = 1;
	}
	fwd_free(f);
	if (c.bad || c.rows != n_seq * len) {
		free(c.x);
		return NULL;
	}
	*rows = c.rows;
	*cols = c.cols;
	return c.x;
}

gguf_writer *tu_gguf_copy_meta(const char *path, gguf_file **g)
{
	qs_error err = { 0 };
	if (gguf_open(path, g, &err)) {
		fprintf(stderr, "tu_gguf_copy_meta: %s\n", err.msg);
		*g = NULL;
		return NULL;
	}
	gguf_writer *w = gguf_writer_new();
	for (int i = 0; w && i < gguf_n_kv(*g); i++)
		if (gguf_w_copy_kv(w, *g, i)) {
			gguf_writer_free(w);
			w = NULL;
		}
	return w;
}
