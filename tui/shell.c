/* shell.c - qscope shell: the workbench's operations as commands in a
 * readline REPL (tab completion, history in the XDG state folder), or run
 * from a file with --script for batch use. */
#include <errno.h>
#include <readline/history.h>
#include <readline/readline.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/calib.h"
#include "../engine/chat_tmpl.h"
#include "../engine/eval.h"
#include "../engine/forward.h"
#include "../engine/generate.h"
#include "../engine/quantize.h"
#include "../engine/sens.h"
#include "../lua/policy.h"
#include "commands.h"

static common co;
static const char *sh_script, *sh_template = "auto";
static int sh_tmpl = -1; /* enum chat_tmpl_kind; -1: the model's */

static const opt o_shell[] = {
	{ "-m", "--model", OPT_STR, &co.model, "MODEL", "model to load first (default " DEFAULT_MODEL ")" },
	{ NULL, "--script", OPT_STR, &sh_script, "FILE", "run the commands in FILE (one per line, # comments) and exit" },
	{ NULL, "--template", OPT_STR, &sh_template, "T", "chat's prompt format: auto (the model's chat template), none, llama2, chatml, llama3 (default auto)" },
	{ "-t", "--threads", OPT_INT, &co.threads, "N", "threads (default: all cores)" },
	{ NULL, NULL, 0, NULL, NULL, NULL },
};

const opt *shell_opts_table(void) { return o_shell; }

typedef struct repl {
	model *m, *qm;        /* qm: the plan quantized by `quant` */
	quant_plan plan;
	calib_set *calib;
	sens_table sens;
	int have_sens;
	int *calib_ids;       /* calibration windows for GPTQ/AWQ plans */
	int n_calib;
} repl;

typedef int (*repl_fn)(repl *r, int argc, char **argv);

typedef struct repl_cmd {
	const char *name, *args, *help;
	repl_fn fn;
} repl_cmd;

static const repl_cmd *repl_find(const char *name);

/* ------------------------------------------------------------ helpers */

static int need_model(repl *r)
{
	if (!r->m)
		fprintf(stderr, "no model loaded (load [MODEL])\n");
	return r->m ? 0 : 1;
}

static void drop_quantized(repl *r)
{
	model_free(r->qm);
	r->qm = NULL;
}

static int ensure_calib_ids(repl *r, int n)
{
	if (r->calib_ids && r->n_calib == n)
		return 0;
	free(r->calib_ids);
	r->calib_ids = NULL;
	qs_error err = { 0 };
	if (cli_sample_calib(r->m, n, &r->calib_ids, &err)) {
		fprintf(stderr, "calibration: %s\n", err.msg);
		return 1;
	}
	r->n_calib = n;
	return 0;
}

static int positive(const char *s, int dflt)
{
	if (!s)
		return dflt;
	char *end;
	long v = strtol(s, &end, 10);
	return *end || v < 1 || v > 100000 ? -1 : (int)v;
}

/* ------------------------------------------------------------ commands */

static int c_load(repl *r, int argc, char **argv)
{
	common c = co;
	c.model = argc > 1 ? argv[1] : co.model;
	model *m = NULL;
	if (cli_open_model(&c, &m))
		return 1;
	drop_quantized(r);
	quant_plan_release(&r->plan);
	calib_set_free(r->calib);
	r->calib = NULL;
	if (r->have_sens)
		sens_table_release(&r->sens);
	r->have_sens = 0;
	free(r->calib_ids);
	r->calib_ids = NULL;
	model_free(r->m);
	r->m = m;
	printf("loaded %s: %s, %d layers, %zu params, %.3f MB\n", m->path, m->cfg.arch,
	       m->cfg.n_layers, model_n_params(m), model_bytes(m) / 1e6);
	return 0;
}

static int c_calib(repl *r, int argc, char **argv)
{
	if (need_model(r))
		return 1;
	int n = positive(argc > 1 ? argv[1] : NULL, 128);
	if (n < 0) {
		fprintf(stderr, "calib: samples must be a positive integer\n");
		return 1;
	}
	const char *cf = cli_default_calib();
	calib_opts o;
	calib_opts_default(&o);
	o.n_samples = n;
	qs_error err = { 0 };
	calib_cache_info info;
	calib_set *s = NULL;
	double t0 = cli_now();
	int rc = cli_collect_calib_file(r->m, NULL, &o, NULL, NULL, &s, &info, &err);
	if (rc) {
		fprintf(stderr, "calib: %s\n", err.msg);
		return 1;
	}
	calib_set_free(r->calib);
	r->calib = s;
	printf("calibrated on %d x %d tokens of %s in %.1f s%s\n", n, o.seq_len, cf, cli_now() - t0,
	       info.hit ? " (from the cache)" : "");
	return 0;
}

static int c_stats(repl *r, int argc, char **argv)
{
	if (need_model(r))
		return 1;
	regex_t re;
	if (argc > 1 && regcomp(&re, argv[1], REG_EXTENDED | REG_NOSUB)) {
		fprintf(stderr, "stats: bad regular expression '%s'\n", argv[1]);
		return 1;
	}
	printf("%-26s %8s %8s %9s %9s %8s\n", "tensor", "w.absmax", "w.kurt", "in.absmax", "in.kurt",
	       "in.>6sig");
	for (int i = 0; i < r->m->n_tensors; i++) {
		const model_tensor *t = &r->m->tensors[i];
		const char *kind = quant_tensor_kind(t->name);
		if (!kind || t->n_dims != 2 || (argc > 1 && regexec(&re, t->name, 0, NULL, 0)))
			continue;
		calib_stats ws;
		if (calib_weight_stats(t, 20.0f, 6.0f, &ws, NULL))
			continue;
		printf("%-26s %8.4f %8.2f", t->name, ws.absmax_all, ws.kurtosis);
		calib_stats_release(&ws);
		const calib_stats *in = NULL;
		int l, site = !strcmp(kind, "attn_output") ? 1 : !strcmp(kind, "ffn_down") ? 3
			    : !strncmp(kind, "ffn_", 4) ? 2 : 0;
		if (r->calib && sscanf(t->name, "blk.%d.", &l) == 1 && l < r->calib->n_layers)
			for (int k = 0; k < r->calib->layers[l].n_sites; k++)
				if (r->calib->layers[l].site[k].site == site)
					in = &r->calib->layers[l].site[k];
		if (in)
			printf(" %9.3f %9.1f %7.3f%%\n", in->absmax_all, in->kurtosis, 100 * in->outlier_frac);
		else
			printf(" %9s %9s %8s\n", "-", "-", "-");
	}
	if (argc > 1)
		regfree(&re);
	if (!r->calib)
		printf("(input statistics after `calib`)\n");
	return 0;
}

static void print_plan(repl *r)
{
	size_t params = 0, bytes = quant_plan_bytes(r->m, &r->plan, &params), qb = 0, qp = 0;
	for (int i = 0; i < r->plan.n; i++) {
		const model_tensor *t = model_find(r->m, r->plan.e[i].name);
		char sp[128];
		quant_spec_str(&r->plan.e[i].spec, sp, sizeof(sp));
		size_t b = quant_spec_bytes(&r->plan.e[i].spec, (int)t->ne[1], (int)t->ne[0]);
		size_t n = (size_t)t->ne[0] * (size_t)t->ne[1];
		qb += b;
		qp += n;
		printf("%-26s %-26s %10zu %7.3f\n", t->name, sp, b, 8.0 * b / n);
	}
	printf("%d tensors quantized (%.3f bpw); model %.3f MB, %.3f bpw\n", r->plan.n,
	       qp ? 8.0 * qb / qp : 0.0, bytes / 1e6, params ? 8.0 * bytes / params : 0.0);
}

static int c_plan(repl *r, int argc, char **argv)
{
	if (need_model(r))
		return 1;
	if (argc == 1 || (argc == 2 && !strcmp(argv[1], "show"))) {
		print_plan(r);
		return 0;
	}
	if (argc == 2 && !strcmp(argv[1], "clear")) {
		quant_plan_release(&r->plan);
		drop_quantized(r);
		printf("plan cleared\n");
		return 0;
	}
	if (argc != 3) {
		fprintf(stderr, "plan: plan [show] | plan clear | plan REGEX SPEC (SPEC 'none' removes)\n");
		return 1;
	}
	qs_error err = { 0 };
	quant_spec s;
	if (quant_spec_parse(argv[2], &s, &err)) {
		fprintf(stderr, "plan: %s\n", err.msg);
		return 1;
	}
	quant_plan add = { 0 };
	if (quant_plan_uniform(r->m, &s, argv[1], NULL, &add, &err)) {
		fprintf(stderr, "plan: %s\n", err.msg);
		return 1;
	}
	/* merge: the new specs replace or remove the matching entries */
	quant_plan next = { 0 };
	int rc = 0;
	for (int i = 0; i < r->plan.n && !rc; i++)
		if (!quant_plan_find(&add, r->plan.e[i].name))
			rc = quant_plan_add(&next, r->plan.e[i].name, &r->plan.e[i].spec, &err);
	for (int i = 0; i < add.n && !rc; i++)
		if (add.e[i].spec.method != QUANT_NONE)
			rc = quant_plan_add(&next, add.e[i].name, &add.e[i].spec, &err);
	int n = add.n;
	quant_plan_release(&add);
	if (rc) {
		quant_plan_release(&next);
		fprintf(stderr, "plan: %s\n", err.msg);
		return 1;
	}
	quant_plan_release(&r->plan);
	r->plan = next;
	drop_quantized(r);
	printf("%d tensors set to %s; %d in the plan\n", n, argv[2], r->plan.n);
	return 0;
}

static int c_policy(repl *r, int argc, char **argv)
{
	if (need_model(r))
		return 1;
	if (argc < 2) {
		fprintf(stderr, "policy: policy FILE.lua [key=value ...]\n");
		return 1;
	}
	pol_opts o = { .args = (const char *const *)argv + 2, .n_args = argc - 2, .calib = r->calib,
		       .sens = r->have_sens ? &r->sens : NULL };
	pol_result res;
	qs_error err = { 0 };
	if (pol_run_file(r->m, argv[1], &o, &res, &err)) {
		fprintf(stderr, "policy: %s\n", err.msg);
		pol_result_release(&res);
		return 1;
	}
	quant_plan_release(&r->plan);
	r->plan = res.plan;
	drop_quantized(r);
	printf("policy %s: %d tensors in the plan\n", argv[1], r->plan.n);
	return 0;
}

static int c_sens(repl *r, int argc, char **argv)
{
	if (need_model(r))
		return 1;
	sens_table t;
	qs_error err = { 0 };
	if (argc == 2) { /* a file */
		if (sens_load(argv[1], r->m, &t, &err)) {
			fprintf(stderr, "sens: %s\n", err.msg);
			return 1;
		}
	} else if (argc == 3 && !strcmp(argv[1], "run")) {
		char list[1024];
		const char *cands[SENS_MAX_CANDS];
		snprintf(list, sizeof(list), "%s", argv[2]);
		int n = sens_cli_split(list, cands, SENS_MAX_CANDS);
		sens_cli c;
		sens_cli_defaults(&c);
		int hit;
		if (n < 1 || sens_cli_run(r->m, &c, cands, n, &t, &hit))
			return 1;
	} else {
		fprintf(stderr, "sens: sens FILE | sens run CANDIDATES (e.g. int4g128,int3g128,q8_0)\n");
		return 1;
	}
	if (r->have_sens)
		sens_table_release(&r->sens);
	r->sens = t;
	r->have_sens = 1;
	printf("sensitivity: %d tensors x %d candidates, base ppl %.4f\n", t.n / t.n_cands, t.n_cands,
	       t.base_ppl);
	return 0;
}

static int c_quant(repl *r, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	if (need_model(r))
		return 1;
	if (!r->plan.n) {
		fprintf(stderr, "quant: the plan is empty (plan REGEX SPEC, or policy FILE)\n");
		return 1;
	}
	if (quant_plan_needs_calib(&r->plan) && ensure_calib_ids(r, 128))
		return 1;
	quant_opts o = { .calib = r->calib_ids, .n_calib = r->n_calib, .calib_len = 512 };
	quant_report rep;
	qs_error err = { 0 };
	drop_quantized(r);
	if (quant_model(r->m, &r->plan, &o, &r->qm, &rep, &err)) {
		fprintf(stderr, "quant: %s\n", err.msg);
		return 1;
	}
	printf("quantized %d tensors in %.2f s: %.3f MB (%.3f bpw over the model)\n", rep.n_quantized,
	       rep.seconds, rep.bytes / 1e6, 8.0 * rep.bytes / rep.params);
	return 0;
}

static int compare(repl *r, int argc, char **argv, int kld)
{
	if (need_model(r))
		return 1;
	int chunks = positive(argc > 1 ? argv[1] : NULL, 8);
	if (chunks < 0) {
		fprintf(stderr, "%s: chunks must be a positive integer\n", argv[0]);
		return 1;
	}
	if (!r->qm && r->plan.n && c_quant(r, 1, argv))
		return 1;
	int *ids = NULL;
	size_t n;
	if (cli_tokenize_file(r->m, "data/wikitext-2-test.txt", &ids, &n))
		return 1;
	eval_ppl_opts o = { .ctx = 512, .n_chunks = chunks };
	eval_cmp_result res;
	qs_error err = { 0 };
	int rc = eval_compare(r->m, r->qm ? r->qm : r->m, ids, n, &o, &res, &err);
	free(ids);
	if (rc) {
		fprintf(stderr, "%s: %s\n", argv[0], err.msg);
		return 1;
	}
	printf("perplexity %.4f (unquantized %.4f, %+.2f%%) on %d chunks of wikitext-2-test\n",
	       res.test.ppl, res.base.ppl, 100 * (res.test.ppl / res.base.ppl - 1), res.test.chunks);
	if (kld)
		printf("KLD mean %.6f +/- %.6f, median %.6f, p99 %.6f, max %.4f; same top token %.2f%%\n",
		       res.kld_mean, res.kld_stderr, res.kld_median, res.kld_p99, res.kld_max,
		       res.same_top_pct);
	return 0;
}

static int c_ppl(repl *r, int argc, char **argv) { return compare(r, argc, argv, 0); }
static int c_kld(repl *r, int argc, char **argv) { return compare(r, argc, argv, 1); }

/* a chat template's end-of-turn ids end the answer */
typedef struct stops {
	int id[4], n;
} stops;

static int stop_at(void *user, int prev, int id)
{
	const stops *s = user;
	(void)prev;
	for (int i = 0; i < s->n; i++)
		if (id == s->id[i])
			return GEN_STOP;
	return 0;
}

static int c_chat(repl *r, int argc, char **argv)
{
	if (need_model(r))
		return 1;
	if (argc < 2) {
		fprintf(stderr, "chat: chat PROMPT (greedy, 48 tokens, original then quantized)\n");
		return 1;
	}
	char prompt[1024] = "";
	for (int i = 1; i < argc; i++)
		snprintf(prompt + strlen(prompt), sizeof(prompt) - strlen(prompt), "%s%s", i > 1 ? " " : "",
			 argv[i]);
	if (!r->qm && r->plan.n && c_quant(r, 1, argv))
		return 1;
	qs_error err = { 0 };
	int *ids = NULL;
	size_t n;
	/* the model's chat format (plain completion without one) */
	const int tmpl = sh_tmpl >= 0 ? sh_tmpl : chat_tmpl_detect(r->m->chat_template);
	stops st;
	st.n = chat_tmpl_stops(tmpl, r->m->tok, st.id, 4);
	if (chat_tmpl_prompt(tmpl, r->m->tok, prompt, &ids, &n, &err)) {
		fprintf(stderr, "chat: %s\n", err.msg);
		return 1;
	}
	int rc = 0;
	for (int k = 0; k < 2 && !rc; k++) {
		const model *m = k ? (r->qm ? r->qm : r->m) : r->m;
		int len = (int)n + 48;
		int *buf = malloc(sizeof(int) * (size_t)len);
		fwd_ctx *f = fwd_new(m, 1, len, &err);
		sample_opts so = { .temp = 0 };
		gen_result g;
		if (!buf || !f || (memcpy(buf, ids, sizeof(int) * n),
				   gen_run(f, m, buf, (int)n, 48, len, &so, stop_at, &st, &g, &err))) {
			fprintf(stderr, "chat: %s\n", err.msg);
			rc = 1;
		} else {
			printf("%s:\n%s", k ? "quantized" : "original", prompt);
			if (tmpl != CHAT_TMPL_NONE && g.n_gen && stop_at(&st, 0, buf[n + g.n_gen - 1]))
				g.n_gen--; /* the end-of-turn token is not shown */
			for (int i = (int)n; i < (int)n + g.n_gen; i++) {
				char piece[128];
				size_t pl = tok_decode(m->tok, buf[i - 1], buf[i], piece, sizeof(piece));
				fwrite(piece, 1, pl, stdout);
			}
			printf("\n(%.0f tokens/s)\n", g.decode_seconds > 0 ? g.n_gen / g.decode_seconds : 0);
		}
		fwd_free(f);
		free(buf);
	}
	free(ids);
	return rc;
}

static int c_save(repl *r, int argc, char **argv)
{
	if (need_model(r))
		return 1;
	if (argc != 2) {
		fprintf(stderr, "save: save FILE.json (the plan as a recipe)\n");
		return 1;
	}
	qs_error err = { 0 };
	if (quant_plan_save(argv[1], r->m, &r->plan, "qscope shell", &err)) {
		fprintf(stderr, "save: %s\n", err.msg);
		return 1;
	}
	printf("saved %d tensors to %s (apply with qscope quant --recipe %s)\n", r->plan.n, argv[1],
	       argv[1]);
	return 0;
}

static int c_help(repl *r, int argc, char **argv);

static const repl_cmd repl_cmds[] = {
	{ "load", "[MODEL]", "open a model (default: the bundled one)", c_load },
	{ "calib", "[SAMPLES]", "calibration statistics of every layer's inputs (cached on disk)", c_calib },
	{ "stats", "[REGEX]", "weight and input statistics per tensor", c_stats },
	{ "plan", "[show | clear | REGEX SPEC]", "show the plan, or set SPEC on the matching tensors", c_plan },
	{ "policy", "FILE.lua [key=value ...]", "replace the plan with a Lua policy's", c_policy },
	{ "sens", "FILE | run CANDIDATES", "load or run a sensitivity scan (policies see it)", c_sens },
	{ "quant", "", "quantize the model with the plan", c_quant },
	{ "ppl", "[CHUNKS]", "perplexity of the quantized model and the original (WikiText-2)", c_ppl },
	{ "kld", "[CHUNKS]", "the same with KL divergence statistics", c_kld },
	{ "chat", "PROMPT", "greedy answers of the original and the quantized model", c_chat },
	{ "save", "FILE.json", "save the plan as a recipe", c_save },
	{ "help", "[COMMAND]", "this list", c_help },
	{ "quit", "", "leave (also: exit, Ctrl-D)", NULL },
};

static const repl_cmd *repl_find(const char *name)
{
	for (size_t i = 0; i < sizeof(repl_cmds) / sizeof(repl_cmds[0]); i++)
		if (!strcmp(repl_cmds[i].name, name))
			return &repl_cmds[i];
	return NULL;
}

static int c_help(repl *r, int argc, char **argv)
{
	(void)r;
	for (size_t i = 0; i < sizeof(repl_cmds) / sizeof(repl_cmds[0]); i++) {
		if (argc > 1 && strcmp(argv[1], repl_cmds[i].name))
			continue;
		char left[64];
		snprintf(left, sizeof(left), "%s %s", repl_cmds[i].name, repl_cmds[i].args);
		printf("  %-36s %s\n", left, repl_cmds[i].help);
	}
	return 0;
}

/* ------------------------------------------------------------ the loop */

/* one line: split on blanks ("quoted words" kept whole), run; -1 to quit */
static int repl_line(repl *r, char *line)
{
	char *argv[64];
	int argc = 0;
	for (char *p = line; *p && argc < 63;) {
		while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
			p++;
		if (!*p || *p == '#')
			break;
		if (*p == '"') {
			argv[argc++] = ++p;
			while (*p && *p != '"')
				p++;
		} else {
			argv[argc++] = p;
			while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
				p++;
		}
		if (*p)
			*p++ = 0;
	}
	argv[argc] = NULL;
	if (!argc)
		return 0;
	if (!strcmp(argv[0], "quit") || !strcmp(argv[0], "exit"))
		return -1;
	const repl_cmd *c = repl_find(argv[0]);
	if (!c || !c->fn) {
		fprintf(stderr, "unknown command '%s' (help lists them)\n", argv[0]);
		return 1;
	}
	int rc = c->fn(r, argc, argv);
	fflush(stdout);
	return rc;
}

static char *cmd_generator(const char *text, int state)
{
	static size_t i, len;
	if (!state) {
		i = 0;
		len = strlen(text);
	}
	while (i < sizeof(repl_cmds) / sizeof(repl_cmds[0])) {
		const char *n = repl_cmds[i++].name;
		if (!strncmp(n, text, len))
			return strdup(n);
	}
	return NULL;
}

/* the first word completes to a command, later words to file names */
static char **repl_complete(const char *text, int start, int end)
{
	(void)end;
	if (start == 0) {
		rl_attempted_completion_over = 1;
		return rl_completion_matches(text, cmd_generator);
	}
	return NULL;
}

static void history_path(char *buf, size_t cap)
{
	const char *d = getenv("QSCOPE_STATE"), *x = getenv("XDG_STATE_HOME"), *h = getenv("HOME");
	if (d && *d)
		snprintf(buf, cap, "%s/history", d);
	else if (x && *x == '/')
		snprintf(buf, cap, "%s/qscope/history", x);
	else if (h && *h)
		snprintf(buf, cap, "%s/.local/state/qscope/history", h);
	else
		buf[0] = 0;
}

int cmd_shell(int argc, char **argv)
{
	int rc = cli_parse_opts("shell", argc, argv, o_shell);
	if (rc)
		return rc;
	qs_error terr = { 0 };
	if (chat_tmpl_parse(sh_template, &sh_tmpl, &terr)) {
		fprintf(stderr, "qscope shell: --template: %s\n", terr.msg);
		return EXIT_USAGE;
	}
	repl r;
	memset(&r, 0, sizeof(r));
	char *load[] = { "load", NULL };
	int errors = 0;
	if (c_load(&r, 1, load))
		return EXIT_INPUT;
	if (sh_script || !isatty(0)) { /* batch: echo each command, count failures */
		FILE *f = sh_script ? fopen(sh_script, "r") : stdin;
		if (!f) {
			fprintf(stderr, "qscope shell: %s: %s\n", sh_script, strerror(errno));
			rc = EXIT_INPUT;
			goto out;
		}
		char line[4096];
		int lineno = 0;
		while (fgets(line, sizeof(line), f)) {
			lineno++;
			char *p = line;
			while (*p == ' ' || *p == '\t')
				p++;
			if (!*p || *p == '\n' || *p == '#')
				continue;
			printf("qscope> %s%s", p, strchr(p, '\n') ? "" : "\n");
			fflush(stdout);
			int r2 = repl_line(&r, p);
			if (r2 < 0)
				break;
			if (r2) {
				fprintf(stderr, "%s:%d: the command failed\n", sh_script ? sh_script : "stdin", lineno);
				errors++;
			}
		}
		if (sh_script)
			fclose(f);
		rc = errors ? EXIT_INPUT : 0;
		goto out;
	}
	char hist[1024];
	history_path(hist, sizeof(hist));
	using_history();
	stifle_history(1000);
	if (hist[0])
		read_history(hist);
	rl_attempted_completion_function = repl_complete;
	printf("qscope shell: `help` lists the commands; Tab completes, history in %s\n",
	       hist[0] ? hist : "(none)");
	char *line;
	while ((line = readline("qscope> "))) {
		if (*line)
			add_history(line);
		int r2 = repl_line(&r, line);
		free(line);
		if (r2 < 0)
			break;
	}
	if (hist[0]) {
		qs_error err = { 0 };
		if (!calib_make_parents(hist, &err))
			write_history(hist);
	}
out:
	drop_quantized(&r);
	quant_plan_release(&r.plan);
	calib_set_free(r.calib);
	if (r.have_sens)
		sens_table_release(&r.sens);
	free(r.calib_ids);
	model_free(r.m);
	return rc;
}
