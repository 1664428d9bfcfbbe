/* cmd_sens.c - qscope sensitivity: quantize one tensor at a time with each
 * candidate spec and measure dPPL and KLD on a quick evaluation set; the
 * results are cached (and are what Lua policies see as t.sens). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/calib.h"
#include "../engine/quant.h"
#include "../engine/sens.h"
#include "commands.h"

#define DEFAULT_CANDS "int4g128,int3g128,q8_0"

static common co;
static const char *s_cands = DEFAULT_CANDS, *s_include, *s_out, *s_calib;
static int s_chunks = 8, s_ctx = 512, s_nocache, s_samples = 128, s_seq = 512, s_seed, s_first;

static const opt o_sens[] = {
	{ "-m", "--model", OPT_STR, &co.model, "MODEL", "model (default " DEFAULT_MODEL ")" },
	{ "-z", "--tokenizer", OPT_STR, &co.tokenizer, "FILE", "llama2.c tokenizer.bin" },
	{ "-f", "--file", OPT_STR, &co.file, "EVAL", "evaluation text (default $QSCOPE_SHARED/data/debdoc-val.txt, ../shared if unset)" },
	{ NULL, "--chunks", OPT_INT, &s_chunks, "N", "evaluation chunks (default 8)" },
	{ "-c", "--ctx", OPT_INT, &s_ctx, "N", "chunk length (default 512)" },
	{ NULL, "--first", OPT_FLAG, &s_first, NULL, "the text's first chunks (default: chunks spread evenly over the text)" },
	{ NULL, "--candidates", OPT_STR, &s_cands, "LIST", "comma-separated specs (default " DEFAULT_CANDS "); rtn, hqq, gptq and the formats" },
	{ NULL, "--include", OPT_STR, &s_include, "REGEX", "tensors to scan (default: every block linear)" },
	{ NULL, "--calib", OPT_STR, &s_calib, "CALIB", "calibration text for gptq candidates (default debdoc-calib.txt)" },
	{ NULL, "--samples", OPT_INT, &s_samples, "N", "calibration sequences (default 128)" },
	{ NULL, "--seq-len", OPT_INT, &s_seq, "L", "calibration sequence length (default 512)" },
	{ NULL, "--seed", OPT_INT, &s_seed, "S", "calibration sampling seed (default 0)" },
	{ "-o", "--output", OPT_STR, &s_out, "FILE", "also write the results as JSON to FILE (atomically)" },
	{ NULL, "--no-cache", OPT_FLAG, &s_nocache, NULL, "neither read nor write the cache" },
	{ "-t", "--threads", OPT_INT, &co.threads, "N", "threads (default: all cores)" },
	{ NULL, "--json", OPT_FLAG, &co.json, NULL, "print the results as JSON on stdout" },
	{ NULL, NULL, 0, NULL, NULL, NULL },
};

const opt *sens_opts_table(void) { return o_sens; }

static int sens_progress(void *user, long done, long total)
{
	(void)user;
	static int tty = -1;
	if (tty < 0)
		tty = isatty(2);
	if (tty)
		fprintf(stderr, "\rsensitivity: %ld/%ld", done, total);
	else if (done == total || done % 24 == 0)
		fprintf(stderr, "sensitivity: %ld/%ld\n", done, total);
	if (tty && done == total)
		fputc('\n', stderr);
	return 0;
}

void sens_cli_defaults(sens_cli *c)
{
	memset(c, 0, sizeof(*c));
	c->chunks = 8;
	c->ctx = 512;
	c->samples = 128;
	c->seq_len = 512;
	c->cache = 1;
	c->spread = 1;
}

int sens_cli_run(const model *m, const sens_cli *c, const char *const *cands, int n_cands,
		 sens_table *out, int *cache_hit)
{
	char evbuf[4096], dir[1024], path[1200];
	const char *ev = c->eval ? c->eval : cli_shared_data("debdoc-val.txt", evbuf, sizeof(evbuf));
	int *ids = NULL, *calib = NULL, rc = 0;
	size_t n_ids = 0;
	qs_error err = { 0 };
	*cache_hit = 0;
	if ((rc = cli_tokenize_file(m, ev, &ids, &n_ids)))
		return rc;
	/* the chunks spread evenly over the text, not its first pages: a quick
	 * set should look like the whole text (debdoc-val's first 8 chunks have
	 * perplexity 1.5, the text as a whole about 9) */
	int ctx = c->ctx > 0 ? c->ctx : 512, avail = (int)(n_ids / (size_t)ctx);
	if (c->spread && c->chunks > 0 && c->chunks < avail) {
		for (int k = 0; k < c->chunks; k++)
			memmove(ids + (size_t)k * ctx, ids + (size_t)k * avail / c->chunks * ctx,
				sizeof(int) * (size_t)ctx);
		n_ids = (size_t)c->chunks * ctx;
	}
	sens_opts so;
	sens_opts_default(&so);
	so.chunks = c->chunks;
	so.ctx = c->ctx;
	so.cands = cands;
	so.n_cands = n_cands;
	so.include = c->include;
	so.progress = c->quiet ? NULL : sens_progress;
	int need_calib = 0;
	for (int i = 0; i < n_cands; i++) {
		quant_spec sp;
		if (quant_spec_parse(cands[i], &sp, &err)) {
			fprintf(stderr, "qscope sensitivity: candidate '%s': %s\n", cands[i], err.msg);
			rc = EXIT_USAGE;
			goto out;
		}
		need_calib |= sp.method == QUANT_GPTQ || sp.outlier_thresh > 0;
	}
	if (need_calib) {
		calib_opts copts;
		calib_opts_default(&copts);
		copts.n_samples = c->samples;
		copts.seq_len = c->seq_len;
		copts.seed = (uint64_t)c->seed;
		if (cli_sample_calib_file(m, c->calib, &copts, &calib, &err)) {
			fprintf(stderr, "qscope sensitivity: %s\n", err.msg);
			rc = EXIT_INPUT;
			goto out;
		}
		so.calib = calib;
		so.n_calib = c->samples;
		so.calib_len = c->seq_len;
	}
	path[0] = 0;
	if (c->cache && !calib_cache_dir(dir, sizeof(dir), NULL))
		snprintf(path, sizeof(path), "%s/sens-%016llx.json", dir,
			 (unsigned long long)sens_key(m, ids, n_ids, &so));
	if (path[0] && access(path, R_OK) == 0) {
		if (!sens_load(path, m, out, &err)) {
			*cache_hit = 1;
			if (!c->quiet)
				fprintf(stderr, "sensitivity: cached %s\n", path);
			goto out;
		}
		fprintf(stderr, "qscope sensitivity: warning: ignoring the cache: %s\n", err.msg);
	}
	if (sens_scan(m, ids, n_ids, &so, out, &err)) {
		fprintf(stderr, "qscope sensitivity: %s\n", err.msg);
		rc = err.code == QS_EUSAGE || err.code == QS_EUNSUPP ? EXIT_USAGE : EXIT_INPUT;
		goto out;
	}
	snprintf(out->eval, sizeof(out->eval), "%s%s", ev, c->spread && c->chunks < avail ? " (chunks spread over the text)" : "");
	if (path[0] && sens_save(path, out, &err))
		fprintf(stderr, "qscope sensitivity: warning: cache not written: %s\n", err.msg);
out:
	free(ids);
	free(calib);
	return rc;
}

/* Split a comma list of specs in place into at most cap pointers. A piece
 * that is not a spec by itself ("act_order", "damp=0.02") is an option of
 * the spec before it and stays joined to it. */
int sens_cli_split(char *list, const char **v, int cap)
{
	int n = 0;
	char *p = list;
	while (*p) {
		char *start = p, *end = strchr(p, ',');
		char *next = end ? end + 1 : p + strlen(p);
		if (end)
			*end = 0;
		while (*p == ' ')
			p++;
		quant_spec sp;
		if (*p && (n == 0 || !quant_spec_parse(p, &sp, NULL))) {
			if (n == cap)
				return -1;
			v[n++] = p;
		} else if (*p) {
			start[-1] = ','; /* an option of the previous spec: rejoin */
		}
		p = next;
	}
	return n;
}

static void print_table(const sens_table *t)
{
	printf("%-26s %10s", "tensor", "params");
	for (int c = 0; c < t->n_cands; c++)
		printf("  %22s", t->cands[c]);
	printf("\n%-26s %10s", "", "");
	for (int c = 0; c < t->n_cands; c++)
		printf("  %9s %12s", "dPPL", "KLD");
	printf("\n");
	int nt = t->n / t->n_cands;
	for (int i = 0; i < nt; i++) {
		const sens_entry *e = &t->e[(size_t)i * t->n_cands];
		printf("%-26s %10zu", e->tensor, e->params);
		for (int c = 0; c < t->n_cands; c++)
			printf("  %+9.4f %12.6f", e[c].dppl, e[c].kld);
		printf("\n");
	}
	printf("base perplexity %.4f on %d chunks of %d (%s); %d tensors x %d candidates",
	       t->base_ppl, t->chunks, t->ctx, t->eval[0] ? t->eval : "?", nt, t->n_cands);
	if (t->seconds > 0)
		printf(" in %.1f s", t->seconds);
	printf("\n");
}

int cmd_sens(int argc, char **argv)
{
	int rc = cli_parse_opts("sensitivity", argc, argv, o_sens);
	if (rc)
		return rc;
	char list[4096];
	const char *cands[SENS_MAX_CANDS];
	snprintf(list, sizeof(list), "%s", s_cands);
	int n = sens_cli_split(list, cands, SENS_MAX_CANDS);
	if (n < 1) {
		fprintf(stderr, "qscope sensitivity: --candidates needs 1..%d comma-separated specs\n",
			SENS_MAX_CANDS);
		return EXIT_USAGE;
	}
	sens_cli c;
	sens_cli_defaults(&c);
	c.eval = co.file;
	c.chunks = s_chunks;
	c.ctx = s_ctx;
	c.include = s_include;
	c.calib = s_calib;
	c.samples = s_samples;
	c.seq_len = s_seq;
	c.seed = s_seed;
	c.cache = !s_nocache;
	c.quiet = 0;
	c.spread = !s_first;
	model *m = NULL;
	if ((rc = cli_open_model(&co, &m)))
		return rc;
	sens_table t;
	int hit;
	double t0 = cli_now();
	if ((rc = sens_cli_run(m, &c, cands, n, &t, &hit)))
		goto out;
	qs_error err;
	if (s_out && sens_save(s_out, &t, &err)) {
		fprintf(stderr, "qscope sensitivity: %s\n", err.msg);
		rc = EXIT_INPUT;
	} else if (co.json) {
		char *text = sens_dumps(&t);
		if (text)
			printf("%s\n", text);
		free(text);
	} else {
		print_table(&t);
		if (hit)
			printf("(from the cache; measured in %.1f s, loaded in %.2f s)\n", t.seconds,
			       cli_now() - t0);
	}
	sens_table_release(&t);
out:
	model_free(m);
	return rc;
}
