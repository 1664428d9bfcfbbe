/* cli.h - what every qscope subcommand shares: option tables (which also
 * generate --help), model opening, text reading, JSON and atomic output. */
#ifndef QS_CLI_H
#define QS_CLI_H

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

#include "../engine/model.h"

#define EXIT_USAGE 1
#define EXIT_INPUT 2
#define DEFAULT_MODEL "models/debdoc-19m-f16.gguf"

enum opt_kind { OPT_FLAG, OPT_INT, OPT_FLOAT, OPT_STR, OPT_LIST };

/* OPT_LIST: an option that may be given several times (dst is a cli_list) */
#define CLI_LIST_MAX 64
typedef struct cli_list {
	const char *v[CLI_LIST_MAX];
	int n;
} cli_list;

typedef struct opt {
	const char *shrt, *lng;
	enum opt_kind kind;
	void *dst;
	const char *arg, *help;
} opt;

typedef struct common {
	const char *model, *tokenizer, *file;
	int threads, json;
} common;

/* Print an option table as --help lines. */
void cli_print_opts(FILE *out, const opt *o);
/* Parse argv[1..] against opts (terminated by an entry with lng == NULL).
 * Returns 0, or prints a one-line error and returns EXIT_USAGE. */
int cli_parse_opts(const char *cmdname, int argc, char **argv, const opt *opts);
double cli_now(void);
/* The default calibration text: data/debdoc-calib.txt under $QSCOPE_SHARED
 * if set, else ../shared (the project's shared data). Static buffer. */
const char *cli_default_calib(void);
/* n_samples windows of 512 tokens of the default calibration text (seed 0,
 * BOS first), malloc'd into *out. */
int cli_sample_calib(const model *m, int n_samples, int **out, qs_error *err);
/* The same with any settings, from file (NULL: the default text); errors
 * name the file. */
struct calib_opts;
int cli_sample_calib_file(const model *m, const char *file, const struct calib_opts *o, int **out,
			 qs_error *err);
/* calib_collect on file (NULL: the default text) with the on-disk cache
 * when its directory is usable; errors name the file. */
struct calib_set;
struct calib_cache_info;
int cli_collect_calib_file(const model *m, const char *file, const struct calib_opts *o,
			   qs_progress_fn progress, void *puser, struct calib_set **out,
			   struct calib_cache_info *info, qs_error *err);
/* $QSCOPE_SHARED/data/FILE (../shared/data/FILE if unset) into buf. */
const char *cli_shared_data(const char *file, char *buf, size_t cap);
/* Set threads, open co->model (default DEFAULT_MODEL); prints errors. */
int cli_open_model(const common *co, model **m);
int cli_read_text(const char *path, char **buf, size_t *len);
/* Read and tokenize a text file with BOS first. */
int cli_tokenize_file(const model *m, const char *path, int **ids, size_t *n);
/* Print o (consumed) on stdout. */
int cli_dump_json(json_t *o);
/* Write a whole file via a temporary file and rename. */
int cli_write_atomic(const char *path, const void *data, size_t len);

#endif
