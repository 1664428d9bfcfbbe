/* commands.h - subcommands that live in their own files (tui/cmd_*.c); the
 * table in main.c lists them with their usage and summary. */
#ifndef QS_COMMANDS_H
#define QS_COMMANDS_H

#include "../engine/sens.h"
#include "cli.h"

int cmd_stats(int argc, char **argv);
const opt *stats_opts(void);

int cmd_quant(int argc, char **argv);
const opt *quant_opts_table(void);

int cmd_shell(int argc, char **argv);
const opt *shell_opts_table(void);

int cmd_tui(int argc, char **argv);
int cmd_demo(int argc, char **argv);
const opt *tui_opts_table(void);

int cmd_sens(int argc, char **argv);
const opt *sens_opts_table(void);

/* A scan with the on-disk cache, shared by `sensitivity` and the policies'
 * qs.fit (which scans the candidates it is missing). */
typedef struct sens_cli {
	const char *eval;     /* evaluation text (NULL: debdoc-val.txt) */
	int chunks, ctx;
	const char *include;  /* tensors (NULL: every block linear) */
	const char *calib;    /* calibration text for gptq candidates (NULL: default) */
	int samples, seq_len, seed;
	int cache;            /* read and write the cache */
	int quiet;            /* no progress on stderr */
	int spread;           /* chunks spread evenly over the text (1) */
} sens_cli;
void sens_cli_defaults(sens_cli *c);
/* Prints its errors; returns 0 or an exit code. *out is caller-released. */
int sens_cli_run(const model *m, const sens_cli *c, const char *const *cands, int n_cands,
		 struct sens_table *out, int *cache_hit);
/* Split a comma list in place into at most cap pointers; -1 if more. */
int sens_cli_split(char *list, const char **v, int cap);

#endif
