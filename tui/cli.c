/* cli.c - shared pieces of the qscope subcommands. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../engine/calib.h"
#include "../engine/forward.h"
#include "../engine/mapfile.h"

void cli_print_opts(FILE *out, const opt *o)
{
	for (; o && o->lng; o++) {
		char left[64];
		snprintf(left, sizeof(left), "%s%s%s %s", o->shrt ? o->shrt : "", o->shrt ? ", " : "",
			 o->lng, o->arg ? o->arg : "");
		fprintf(out, "  %-28s %s\n", left, o->help);
	}
}

int cli_parse_opts(const char *cmdname, int argc, char **argv, const opt *opts)
{
	for (int i = 1; i < argc; i++) {
		const opt *o = opts;
		for (; o->lng; o++)
			if ((o->shrt && strcmp(argv[i], o->shrt) == 0) || strcmp(argv[i], o->lng) == 0)
				break;
		if (!o->lng) {
			fprintf(stderr, "qscope %s: unknown option '%s' (see qscope %s --help)\n",
				cmdname, argv[i], cmdname);
			return EXIT_USAGE;
		}
		if (o->kind == OPT_FLAG) {
			*(int *)o->dst = 1;
			continue;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "qscope %s: option '%s' needs a value\n", cmdname, argv[i]);
			return EXIT_USAGE;
		}
		const char *v = argv[++i];
		char *end;
		errno = 0;
		if (o->kind == OPT_INT) {
			long x = strtol(v, &end, 10);
			if (*v == 0 || *end || errno || x < -2147483647L || x > 2147483647L) {
				fprintf(stderr, "qscope %s: %s: '%s' is not an integer\n", cmdname, o->lng, v);
				return EXIT_USAGE;
			}
			*(int *)o->dst = (int)x;
		} else if (o->kind == OPT_FLOAT) {
			double x = strtod(v, &end);
			if (*v == 0 || *end || errno || !isfinite(x)) {
				fprintf(stderr, "qscope %s: %s: '%s' is not a number\n", cmdname, o->lng, v);
				return EXIT_USAGE;
			}
			*(float *)o->dst = (float)x;
		} else if (o->kind == OPT_LIST) {
			cli_list *l = o->dst;
			if (l->n == CLI_LIST_MAX) {
				fprintf(stderr, "qscope %s: %s given more than %d times\n", cmdname, o->lng,
					CLI_LIST_MAX);
				return EXIT_USAGE;
			}
			l->v[l->n++] = v;
		} else {
			*(const char **)o->dst = v;
		}
	}
	return 0;
}

double cli_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int cli_open_model(const common *co, model **m)
{
	qs_error err = { 0 };
	model_open_opts mo = { .tokenizer_path = co->tokenizer };
	fwd_set_threads(co->threads);
	if (model_open(co->model ? co->model : DEFAULT_MODEL, &mo, m, &err)) {
		fprintf(stderr, "qscope: %s\n", err.msg);
		return EXIT_INPUT;
	}
	return 0;
}

int cli_read_text(const char *path, char **buf, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "qscope: %s: cannot open: %s\n", path, strerror(errno));
		return EXIT_INPUT;
	}
	size_t cap = 1 << 16, n = 0;
	char *b = malloc(cap);
	for (;;) {
		if (!b) {
			fclose(f);
			fprintf(stderr, "qscope: %s: out of memory\n", path);
			return EXIT_INPUT;
		}
		n += fread(b + n, 1, cap - n, f);
		if (n < cap)
			break;
		cap *= 2;
		char *nb = realloc(b, cap);
		if (!nb)
			free(b);
		b = nb;
	}
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		free(b);
		fprintf(stderr, "qscope: %s: read error\n", path);
		return EXIT_INPUT;
	}
	*buf = b;
	*len = n;
	return 0;
}

int cli_tokenize_file(const model *m, const char *path, int **ids, size_t *n)
{
	char *text;
	size_t len;
	int rc = cli_read_text(path, &text, &len);
	if (rc)
		return rc;
	qs_error err = { 0 };
	rc = tok_encode(m->tok, text, len, 1, ids, n, &err);
	free(text);
	if (rc) {
		fprintf(stderr, "qscope: %s: %s\n", path, err.msg);
		return EXIT_INPUT;
	}
	return 0;
}

int cli_dump_json(json_t *o)
{
	int rc = json_dumpf(o, stdout, JSON_INDENT(1) | JSON_REAL_PRECISION(10));
	putchar('\n');
	json_decref(o);
	return rc ? EXIT_INPUT : 0;
}

int cli_write_atomic(const char *path, const void *data, size_t len)
{
	qs_error err = { 0 };
	if (qs_write_atomic(path, data, len, &err)) {
		fprintf(stderr, "qscope: %s\n", err.msg);
		return EXIT_INPUT;
	}
	return 0;
}


const char *cli_shared_data(const char *file, char *buf, size_t cap)
{
	const char *sh = getenv("QSCOPE_SHARED");
	snprintf(buf, cap, "%s/data/%s", sh && *sh ? sh : "../shared", file);
	return buf;
}

const char *cli_default_calib(void)
{
	static char buf[4096];
	return cli_shared_data("debdoc-calib.txt", buf, sizeof(buf));
}

/* rc, with err's message prefixed by the file it is about (unless it already
 * names it, or the operation was cancelled) */
static int name_file(qs_error *err, int rc, const char *file)
{
	if (rc && rc != QS_ECANCEL && strncmp(err->msg, file, strlen(file)) != 0) {
		char msg[sizeof(err->msg)];
		snprintf(msg, sizeof(msg), "%s", err->msg);
		qs_err(err, rc, "%s: %.400s", file, msg);
	}
	return rc;
}

int cli_sample_calib_file(const model *m, const char *file, const calib_opts *o, int **out,
			 qs_error *err)
{
	char *text = NULL;
	size_t len;
	const char *cf = file ? file : cli_default_calib();
	if (cli_read_text(cf, &text, &len))
		return qs_err(err, QS_EIO, "%s: cannot read the calibration text", cf);
	int rc = calib_sample_text(m, text, len, o, out, NULL, err);
	free(text);
	return name_file(err, rc, cf);
}

int cli_collect_calib_file(const model *m, const char *file, const calib_opts *o,
			   qs_progress_fn progress, void *puser, calib_set **out,
			   calib_cache_info *info, qs_error *err)
{
	char *text = NULL, dir[1024];
	size_t len;
	const char *cf = file ? file : cli_default_calib();
	if (cli_read_text(cf, &text, &len))
		return qs_err(err, QS_EIO, "%s: cannot read the calibration text", cf);
	int rc = calib_collect(m, text, len, o, calib_cache_dir(dir, sizeof(dir), NULL) ? NULL : dir,
			       progress, puser, out, info, err);
	free(text);
	return name_file(err, rc, cf);
}

int cli_sample_calib(const model *m, int n_samples, int **out, qs_error *err)
{
	calib_opts o;
	calib_opts_default(&o);
	o.n_samples = n_samples;
	return cli_sample_calib_file(m, NULL, &o, out, err);
}
