/* main.c - the qscope command line: a subcommand table that also generates
 * --help. Machine output (--json) goes to stdout, logs and progress to stderr.
 * Exit codes: 0 ok, 1 usage, 2 bad input or model. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../engine/chat_tmpl.h"
#include "../engine/eval.h"
#include "../engine/forward.h"
#include "../engine/generate.h"
#include "../engine/bench.h"
#include "../engine/model.h"
#include "../engine/sample.h"
#include "../kernels/types.h"
#include "cli.h"
#include "commands.h"

typedef struct cmd {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *usage;
	const char *summary;
	const opt *(*opts)(void); /* for --help */
} cmd;

static int want_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
			return 1;
	return 0;
}

static const cmd *find_cmd(const char *name);

static int cmd_help_for(const char *name)
{
	const cmd *c = find_cmd(name);
	printf("usage: qscope %s\n\n%s\n\noptions:\n", c->usage, c->summary);
	cli_print_opts(stdout, c->opts());
	return 0;
}

/* ------------------------------------------------------------ ppl */

static common ppl_co;
static int ppl_ctx = 512, ppl_chunks = 0, ppl_batch = 0;

static const opt *ppl_opts(void)
{
	static const opt o[] = {
		{ "-m", "--model", OPT_STR, &ppl_co.model, "MODEL", "a .gguf, a Hugging Face folder or a llama2.c .bin (default " DEFAULT_MODEL ")" },
		{ "-z", "--tokenizer", OPT_STR, &ppl_co.tokenizer, "FILE", "llama2.c tokenizer.bin (default: next to the model)" },
		{ "-f", "--file", OPT_STR, &ppl_co.file, "TEXT", "text to score (required)" },
		{ "-c", "--ctx", OPT_INT, &ppl_ctx, "N", "chunk length (default 512)" },
		{ NULL, "--chunks", OPT_INT, &ppl_chunks, "N", "score only the first N chunks (default: all)" },
		{ "-b", "--batch", OPT_INT, &ppl_batch, "N", "chunks per forward batch (default 8)" },
		{ "-t", "--threads", OPT_INT, &ppl_co.threads, "N", "threads (default: all cores)" },
		{ NULL, "--json", OPT_FLAG, &ppl_co.json, NULL, "print one JSON object on stdout" },
		{ NULL, NULL, 0, NULL, NULL, NULL },
	};
	return o;
}

static int ppl_on_chunk(void *user, int chunk, int n_chunks, double running)
{
	FILE *out = user;
	fprintf(out, "[%d]%.4f,", chunk + 1, running);
	if ((chunk + 1) % 16 == 0 || chunk + 1 == n_chunks)
		fputc('\n', out);
	fflush(out);
	return 0;
}

/* With plan flags (--method, --bits, --spec, --format, --kld, ...), ppl is
 * `quant` with -f as its evaluation text: rewrite the arguments for it. */
static int ppl_plan(int argc, char **argv)
{
	static const char *plan_flags[] = { "--method", "--bits", "--group", "--sym", "--asym",
					    "--format", "--spec", "--act-order", "--static-groups",
					    "--mse", "--damp", "--alpha", "--outliers", "--act-bits",
					    "--act-per", "--include", "--exclude", "--kld", "--calib",
					    "--dry-run", "--policy", "--recipe", "--set", "--sens",
					    "--save-recipe", NULL };
	int plan = 0, chunks = 0;
	for (int i = 1; i < argc; i++) {
		for (int k = 0; plan_flags[k]; k++)
			plan |= strcmp(argv[i], plan_flags[k]) == 0;
		chunks |= strcmp(argv[i], "--chunks") == 0;
	}
	if (!plan)
		return -1;
	char **av = calloc((size_t)argc + 4, sizeof(char *));
	if (!av)
		return EXIT_INPUT;
	int n = 0;
	av[n++] = "quant";
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-f") == 0 || strcmp(argv[i], "--file") == 0)
			av[n++] = "--eval";
		else if (strcmp(argv[i], "--calib") == 0)
			av[n++] = "-f";
		else
			av[n++] = argv[i];
	}
	if (!chunks) { /* ppl scores the whole text unless told otherwise */
		av[n++] = "--chunks";
		av[n++] = "0";
	}
	int rc = cmd_quant(n, av);
	free(av);
	return rc;
}

static int cmd_ppl(int argc, char **argv)
{
	int prc = ppl_plan(argc, argv);
	if (prc >= 0)
		return prc;
	int rc = cli_parse_opts("ppl", argc, argv, ppl_opts());
	if (rc)
		return rc;
	if (!ppl_co.file) {
		fprintf(stderr, "qscope ppl: -f TEXT is required\n");
		return EXIT_USAGE;
	}
	model *m;
	if ((rc = cli_open_model(&ppl_co, &m)))
		return rc;
	int *ids = NULL;
	size_t n = 0;
	if ((rc = cli_tokenize_file(m, ppl_co.file, &ids, &n)))
		goto out;
	FILE *log = ppl_co.json ? stderr : stdout;
	eval_ppl_opts o = { .ctx = ppl_ctx, .n_chunks = ppl_chunks, .batch = ppl_batch,
			    .on_chunk = ppl_on_chunk, .user = log };
	eval_ppl_result r;
	qs_error err = { 0 };
	fprintf(log, "perplexity: %s, %zu tokens, n_ctx=%d, %d threads\n", m->path, n, ppl_ctx,
		fwd_threads());
	if (eval_ppl(m, ids, n, &o, &r, &err)) {
		fprintf(stderr, "qscope ppl: %s\n", err.msg);
		rc = err.code == QS_EUSAGE ? EXIT_USAGE : EXIT_INPUT;
		goto out;
	}
	if (ppl_co.json) {
		json_t *j = json_pack("{s:f, s:f, s:I, s:I, s:i, s:i, s:f, s:f, s:f, s:s, s:s, s:i}",
				      "ppl", r.ppl, "ppl_stderr", r.ppl_stderr,
				      "tokens", (json_int_t)n, "scored", (json_int_t)r.scored,
				      "chunks", r.chunks, "ctx", ppl_ctx, "seconds", r.seconds,
				      "tokens_per_second", (double)r.tokens / r.seconds,
				      "gflops", r.gflop / r.seconds, "model", m->path,
				      "file", ppl_co.file, "threads", fwd_threads());
		rc = cli_dump_json(j);
	} else {
		printf("Final estimate: PPL = %.4f +/- %.5f\n", r.ppl, r.ppl_stderr);
		printf("perplexity: %d chunks, %ld tokens in %.2f s (%.0f tokens/s, %.1f GFLOP/s)\n",
		       r.chunks, r.tokens, r.seconds, (double)r.tokens / r.seconds,
		       r.gflop / r.seconds);
	}
out:
	free(ids);
	model_free(m);
	return rc;
}

/* ------------------------------------------------------------ generate */

static common gen_co;
static const char *gen_prompt, *gen_template = "none";
static int gen_n = 64, gen_topk = 40, gen_seed = 42;
static float gen_temp = 0.8f, gen_topp = 0.95f;

static const opt *gen_opts(void)
{
	static const opt o[] = {
		{ "-m", "--model", OPT_STR, &gen_co.model, "MODEL", "model (default " DEFAULT_MODEL ")" },
		{ "-z", "--tokenizer", OPT_STR, &gen_co.tokenizer, "FILE", "llama2.c tokenizer.bin" },
		{ "-p", "--prompt", OPT_STR, &gen_prompt, "TEXT", "prompt (required)" },
		{ "-n", "--n-predict", OPT_INT, &gen_n, "N", "tokens to generate (default 64)" },
		{ NULL, "--temp", OPT_FLOAT, &gen_temp, "T", "temperature; 0 = greedy (default 0.8)" },
		{ NULL, "--top-k", OPT_INT, &gen_topk, "K", "keep the K most likely tokens; 0 = off (default 40)" },
		{ NULL, "--top-p", OPT_FLOAT, &gen_topp, "P", "nucleus sampling mass; 1 = off (default 0.95)" },
		{ "-s", "--seed", OPT_INT, &gen_seed, "SEED", "sampling seed (default 42)" },
		{ NULL, "--template", OPT_STR, &gen_template, "T", "the prompt as one user turn in a chat format: auto (the model's chat template), llama2, chatml, llama3, none (plain completion; default)" },
		{ "-t", "--threads", OPT_INT, &gen_co.threads, "N", "threads (default: all cores)" },
		{ NULL, "--json", OPT_FLAG, &gen_co.json, NULL, "print {ids, text, ...} on stdout" },
		{ NULL, NULL, 0, NULL, NULL, NULL },
	};
	return o;
}

typedef struct gen_print {
	const model *m;
	int json;
	int stops[4], n_stops; /* the template's end-of-turn ids besides EOS */
} gen_print;

static int gen_on_token(void *user, int prev, int id)
{
	gen_print *g = user;
	for (int i = 0; i < g->n_stops; i++)
		if (id == g->stops[i])
			return GEN_STOP;
	if (!g->json) {
		char buf[256];
		tok_decode(g->m->tok, prev, id, buf, sizeof(buf));
		fputs(buf, stdout);
		fflush(stdout);
	}
	return 0;
}

static int cmd_generate(int argc, char **argv)
{
	int rc = cli_parse_opts("generate", argc, argv, gen_opts());
	if (rc)
		return rc;
	if (!gen_prompt) {
		fprintf(stderr, "qscope generate: -p PROMPT is required\n");
		return EXIT_USAGE;
	}
	if (gen_n < 0) {
		fprintf(stderr, "qscope generate: -n must be >= 0\n");
		return EXIT_USAGE;
	}
	model *m;
	if ((rc = cli_open_model(&gen_co, &m)))
		return rc;
	qs_error err = { 0 };
	int *ids = NULL, *all;
	size_t n = 0;
	fwd_ctx *f = NULL;
	char *text = NULL;
	int tmpl;
	if (chat_tmpl_parse(gen_template, &tmpl, &err)) {
		fprintf(stderr, "qscope generate: --template: %s\n", err.msg);
		rc = EXIT_USAGE;
		goto out;
	}
	if (tmpl < 0)
		tmpl = chat_tmpl_detect(m->chat_template);
	if (chat_tmpl_prompt(tmpl, m->tok, gen_prompt, &ids, &n, &err)) {
		fprintf(stderr, "qscope generate: %s\n", err.msg);
		rc = EXIT_INPUT;
		goto out;
	}
	int ctx = m->cfg.ctx;
	if ((int)n >= ctx) {
		fprintf(stderr, "qscope generate: prompt has %zu tokens, context is %d\n", n, ctx);
		rc = EXIT_USAGE;
		goto out;
	}
	if (!(all = realloc(ids, sizeof(int) * ((size_t)n + (size_t)gen_n + 1)))) {
		rc = EXIT_INPUT;
		goto out;
	}
	ids = all;
	if (!(f = fwd_new(m, 1, ctx, &err))) {
		fprintf(stderr, "qscope generate: %s\n", err.msg);
		rc = EXIT_INPUT;
		goto out;
	}
	char buf[256];
	if (!gen_co.json) {
		for (size_t i = 0; i < n; i++) {
			tok_decode(m->tok, i ? ids[i - 1] : -1, ids[i], buf, sizeof(buf));
			fputs(buf, stdout);
		}
		fflush(stdout);
	}
	sample_opts so = { gen_temp, gen_topk, gen_topp, (uint64_t)gen_seed };
	gen_print gp = { .m = m, .json = gen_co.json };
	int st[4], ns = chat_tmpl_stops(tmpl, m->tok, st, 4);
	for (int i = 0; i < ns; i++)
		if (st[i] != tok_eos(m->tok))
			gp.stops[gp.n_stops++] = st[i];
	gen_result r;
	if (gen_n > 0 && gen_run(f, m, ids, (int)n, gen_n, ctx, &so, gen_on_token, &gp, &r, &err)) {
		fprintf(stderr, "qscope generate: %s\n", err.msg);
		rc = EXIT_INPUT;
		goto out;
	}
	if (gen_n == 0)
		memset(&r, 0, sizeof(r));
	double tps = r.n_gen > 1 ? (r.n_gen - 1) / r.decode_seconds : 0.0;
	int n_all = (int)n + r.n_gen;
	if (gen_co.json) {
		json_t *jids = json_array();
		size_t tl = 0, cap = 64 + (size_t)n_all * 32;
		text = malloc(cap);
		for (int i = 0; i < n_all && text; i++) {
			json_array_append_new(jids, json_integer(ids[i]));
			size_t k = tok_decode(m->tok, i ? ids[i - 1] : -1, ids[i], buf, sizeof(buf));
			if (tl + k < cap) {
				memcpy(text + tl, buf, k);
				tl += k;
			}
		}
		json_t *o = json_object();
		json_object_set_new(o, "ids", jids);
		json_object_set_new(o, "text", json_stringn(text ? text : "", tl));
		json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)n));
		json_object_set_new(o, "generated", json_integer(r.n_gen));
		json_object_set_new(o, "prompt_seconds", json_real(r.prompt_seconds));
		json_object_set_new(o, "decode_tokens_per_second", json_real(tps));
		rc = cli_dump_json(o);
	} else {
		putchar('\n');
		fprintf(stderr, "generate: prompt %zu tokens in %.3f s, %d tokens at %.1f tokens/s\n", n,
			r.prompt_seconds, r.n_gen, tps);
	}
out:
	free(text);
	fwd_free(f);
	free(ids);
	model_free(m);
	return rc;
}

/* ------------------------------------------------------------ logits */

static common lg_co;
static int lg_n = 64;
static const char *lg_out;

static const opt *lg_opts(void)
{
	static const opt o[] = {
		{ "-m", "--model", OPT_STR, &lg_co.model, "MODEL", "model (default " DEFAULT_MODEL ")" },
		{ "-z", "--tokenizer", OPT_STR, &lg_co.tokenizer, "FILE", "llama2.c tokenizer.bin" },
		{ "-f", "--file", OPT_STR, &lg_co.file, "TEXT", "text (required); tokenized with BOS first" },
		{ "-n", "--n-tokens", OPT_INT, &lg_n, "N", "number of positions (default 64)" },
		{ "-o", "--output", OPT_STR, &lg_out, "OUT.f32", "output file: N x vocab float32 little-endian (required)" },
		{ "-t", "--threads", OPT_INT, &lg_co.threads, "N", "threads (default: all cores)" },
		{ NULL, NULL, 0, NULL, NULL, NULL },
	};
	return o;
}

static int cmd_logits(int argc, char **argv)
{
	int rc = cli_parse_opts("logits", argc, argv, lg_opts());
	if (rc)
		return rc;
	if (!lg_co.file || !lg_out || lg_n < 1) {
		fprintf(stderr, "qscope logits: -f TEXT, -o OUT.f32 and -n N >= 1 are required\n");
		return EXIT_USAGE;
	}
	model *m;
	if ((rc = cli_open_model(&lg_co, &m)))
		return rc;
	int *ids = NULL;
	size_t n = 0;
	float *logits = NULL;
	fwd_ctx *f = NULL;
	qs_error err = { 0 };
	if ((rc = cli_tokenize_file(m, lg_co.file, &ids, &n)))
		goto out;
	if ((size_t)lg_n > n || lg_n > m->cfg.ctx) {
		fprintf(stderr, "qscope logits: -n %d: the text has %zu tokens, context is %d\n", lg_n,
			n, m->cfg.ctx);
		rc = EXIT_USAGE;
		goto out;
	}
	f = fwd_new(m, 1, lg_n, &err);
	logits = malloc(sizeof(float) * (size_t)lg_n * m->cfg.vocab);
	if (!f || !logits || fwd_prefill(f, ids, 1, lg_n, 0, logits, &err)) {
		fprintf(stderr, "qscope logits: %s\n", err.msg[0] ? err.msg : "out of memory");
		rc = EXIT_INPUT;
		goto out;
	}
	rc = cli_write_atomic(lg_out, logits, sizeof(float) * (size_t)lg_n * m->cfg.vocab);
	if (!rc)
		fprintf(stderr, "logits: wrote %d x %d float32 to %s\n", lg_n, m->cfg.vocab, lg_out);
out:
	free(logits);
	fwd_free(f);
	free(ids);
	model_free(m);
	return rc;
}

/* ------------------------------------------------------------ info */

static common info_co;

static const opt *info_opts(void)
{
	static const opt o[] = {
		{ "-m", "--model", OPT_STR, &info_co.model, "MODEL", "model (default " DEFAULT_MODEL ")" },
		{ "-z", "--tokenizer", OPT_STR, &info_co.tokenizer, "FILE", "llama2.c tokenizer.bin" },
		{ NULL, "--json", OPT_FLAG, &info_co.json, NULL, "print one JSON object on stdout" },
		{ NULL, NULL, 0, NULL, NULL, NULL },
	};
	return o;
}

static int cmd_info(int argc, char **argv)
{
	int rc = cli_parse_opts("info", argc, argv, info_opts());
	if (rc)
		return rc;
	model *m;
	if ((rc = cli_open_model(&info_co, &m)))
		return rc;
	const model_config *c = &m->cfg;
	size_t bytes = 0;
	for (int i = 0; i < m->n_tensors; i++)
		bytes += m->tensors[i].nbytes;
	const char *rope = c->rope_style == MODEL_ROPE_NEOX ? "neox (rotate-half)" : "normal (adjacent pairs)";
	if (info_co.json) {
		json_t *ts = json_array();
		for (int i = 0; i < m->n_tensors; i++) {
			const model_tensor *t = &m->tensors[i];
			json_array_append_new(ts, json_pack("{s:s, s:s, s:[I,I], s:I}", "name", t->name,
							    "type", kn_traits(t->type)->name,
							    "shape", (json_int_t)t->ne[0],
							    (json_int_t)t->ne[1], "bytes",
							    (json_int_t)t->nbytes));
		}
		json_t *o = json_pack(
			"{s:s, s:s, s:s, s:{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:s, s:b, s:b}, s:I, s:I, s:{s:s, s:i, s:i, s:i}, s:o}",
			"path", m->path, "format", m->format, "arch", c->arch, "config", "vocab",
			c->vocab, "dim", c->dim, "n_layers", c->n_layers, "n_heads", c->n_heads,
			"n_kv_heads", c->n_kv_heads, "head_dim", c->head_dim, "hidden", c->hidden,
			"ctx", c->ctx, "eps", (double)c->eps, "rope_theta", (double)c->rope_theta,
			"rope", c->rope_style == MODEL_ROPE_NEOX ? "neox" : "normal", "tied", c->tied,
			"attn_bias", c->attn_bias, "params", (json_int_t)model_n_params(m), "bytes",
			(json_int_t)bytes, "tokenizer", "type", "sentencepiece-bpe", "n_vocab",
			tok_n_vocab(m->tok), "bos", tok_bos(m->tok), "eos", tok_eos(m->tok),
			"tensors", ts);
		rc = cli_dump_json(o);
	} else {
		printf("model      %s (%s)\n", m->path, m->format);
		printf("arch       %s: dim %d, %d layers, %d heads (%d kv, head dim %d), ffn %d, vocab %d, ctx %d\n",
		       c->arch, c->dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->hidden,
		       c->vocab, c->ctx);
		printf("norm/rope  rms eps %g, rope theta %g, %s%s%s\n", (double)c->eps,
		       (double)c->rope_theta, rope, c->tied ? ", tied output head" : ", untied output head",
		       c->attn_bias ? ", q/k/v bias" : "");
		printf("params     %zu (%.2f MB stored, %.2f bits per weight)\n", model_n_params(m),
		       bytes / 1e6, 8.0 * bytes / (double)model_n_params(m));
		printf("tokenizer  sentencepiece bpe, %d pieces, bos %d, eos %d\n", tok_n_vocab(m->tok),
		       tok_bos(m->tok), tok_eos(m->tok));
		printf("\n%-28s %-6s %14s %12s\n", "tensor", "type", "shape", "bytes");
		for (int i = 0; i < m->n_tensors; i++) {
			const model_tensor *t = &m->tensors[i];
			char shape[40];
			snprintf(shape, sizeof(shape), "%lld x %lld", (long long)t->ne[1],
				 (long long)t->ne[0]);
			printf("%-28s %-6s %14s %12zu\n", t->name, kn_traits(t->type)->name,
			       t->n_dims == 1 ? shape + 4 : shape, t->nbytes);
		}
	}
	model_free(m);
	return rc;
}

/* ------------------------------------------------------------ bench */

static common bn_co;
static const char *bn_out;
static int bn_chunks = 0, bn_decode = 128, bn_reps = 5;

static const opt *bn_opts(void)
{
	static const opt o[] = {
		{ "-m", "--model", OPT_STR, &bn_co.model, "MODEL", "model (default " DEFAULT_MODEL ")" },
		{ "-f", "--file", OPT_STR, &bn_co.file, "TEXT", "perplexity text (default data/wikitext-2-test.txt)" },
		{ NULL, "--chunks", OPT_INT, &bn_chunks, "N", "perplexity chunks (default: all)" },
		{ "-n", "--decode", OPT_INT, &bn_decode, "N", "tokens per decode run (default 128)" },
		{ "-r", "--reps", OPT_INT, &bn_reps, "N", "repetitions of the short measurements (default 5)" },
		{ "-t", "--threads", OPT_INT, &bn_co.threads, "N", "threads (default: all cores)" },
		{ "-o", "--output", OPT_STR, &bn_out, "FILE", "write the markdown table to FILE (atomically)" },
		{ NULL, NULL, 0, NULL, NULL, NULL },
	};
	return o;
}

static int bench_on_chunk(void *user, int chunk, int n_chunks, double running)
{
	(void)user;
	if ((chunk + 1) % 64 == 0 || chunk + 1 == n_chunks)
		fprintf(stderr, "bench: ppl chunk %d/%d, running ppl %.4f\n", chunk + 1, n_chunks, running);
	return 0;
}

static int cmd_bench(int argc, char **argv)
{
	int rc = cli_parse_opts("bench", argc, argv, bn_opts());
	if (rc)
		return rc;
	if (bn_reps < 1 || bn_decode < 2) {
		fprintf(stderr, "qscope bench: --reps >= 1 and --decode >= 2 required\n");
		return EXIT_USAGE;
	}
	const char *file = bn_co.file ? bn_co.file : "data/wikitext-2-test.txt";
	model *m;
	if ((rc = cli_open_model(&bn_co, &m)))
		return rc;
	int *ids = NULL, *gids = NULL;
	size_t n = 0;
	fwd_ctx *f = NULL;
	char *md = NULL;
	double *v = calloc((size_t)bn_reps * 2, sizeof(double));
	qs_error err = { 0 };
	if ((rc = cli_tokenize_file(m, file, &ids, &n)))
		goto out;
	bench_stat peak0, peak1, copy;
	fprintf(stderr, "bench: sgemm peak and copy bandwidth (%d threads)\n", fwd_threads());
	if (!v || bench_sgemm(2048, bn_reps, &peak0) || bench_copy(256, bn_reps, &copy)) {
		fprintf(stderr, "qscope bench: out of memory\n");
		rc = EXIT_INPUT;
		goto out;
	}
	eval_ppl_opts po = { .ctx = 512, .n_chunks = bn_chunks, .on_chunk = bench_on_chunk };
	eval_ppl_result pr;
	if (eval_ppl(m, ids, n, &po, &pr, &err)) {
		fprintf(stderr, "qscope bench: %s\n", err.msg);
		rc = EXIT_INPUT;
		goto out;
	}
	bench_sgemm(2048, bn_reps, &peak1);
	double peak = 0.5 * (peak0.median + peak1.median);
	/* prompt processing (one 512-token sequence) and decode, median of reps */
	int ctx = m->cfg.ctx, np = ctx < 512 ? ctx : 512;
	int nd = bn_decode < ctx - 8 ? bn_decode : ctx - 8;
	gids = malloc(sizeof(int) * (size_t)ctx);
	f = fwd_new(m, 1, ctx, &err);
	if (!gids || !f || n < (size_t)np) {
		fprintf(stderr, "qscope bench: %s\n", f ? "text too short or out of memory" : err.msg);
		rc = EXIT_INPUT;
		goto out;
	}
	for (int r = 0; r < bn_reps; r++) {
		double t = cli_now();
		if (fwd_prefill(f, ids, 1, np, np - 1, NULL, &err))
			break;
		v[r] = np / (cli_now() - t);
	}
	double pp_tps = bench_median(v, bn_reps);
	sample_opts so = { 0, 0, 1, 1 };
	for (int r = 0; r < bn_reps; r++) {
		gen_result gr;
		gids[0] = ids[0];
		if (gen_run(f, m, gids, 1, nd, ctx, &so, NULL, NULL, &gr, &err)) {
			fprintf(stderr, "qscope bench: %s\n", err.msg);
			rc = EXIT_INPUT;
			goto out;
		}
		v[r] = (gr.n_gen - 1) / gr.decode_seconds;
	}
	double dec_tps = bench_median(v, bn_reps);
	size_t wbytes = 0;
	for (int i = 0; i < m->n_tensors; i++)
		if (&m->tensors[i] != m->tok_embd || m->cfg.tied)
			wbytes += m->tensors[i].nbytes;
	double ppl_gflops = pr.gflop / pr.seconds;
	size_t cap = 8192;
	md = malloc(cap);
	if (!md) {
		rc = EXIT_INPUT;
		goto out;
	}
	snprintf(md, cap,
		 "# qscope benchmarks\n\n"
		 "Written by `make bench` (`qscope bench`). Each figure is set against this machine's own\n"
		 "limits measured in the same run: the sgemm peak (OpenBLAS, 2048^3, median of %d before\n"
		 "and %d after the perplexity run) and a %d-thread memcpy bandwidth (256 MiB, median of %d).\n\n"
		 "| what | value |\n| --- | --- |\n"
		 "| model | `%s` (%s, %zu params) |\n"
		 "| threads | %d |\n"
		 "| sgemm peak, before / after | %.1f / %.1f GFLOP/s (min %.1f, max %.1f) |\n"
		 "| copy bandwidth | %.1f GB/s |\n"
		 "| perplexity text | `%s`, %d chunks of 512, %ld scored tokens |\n"
		 "| perplexity | %.4f +/- %.5f |\n"
		 "| perplexity time | %.2f s (%.0f tokens/s) |\n"
		 "| perplexity FLOPs (needed by the protocol) | %.1f GFLOP |\n"
		 "| **perplexity throughput** | **%.1f GFLOP/s = %.0f%% of the sgemm peak** |\n"
		 "| prompt processing, 1 x %d tokens | %.0f tokens/s (median of %d) |\n"
		 "| decode, %d tokens after BOS, greedy | %.1f tokens/s (median of %d) |\n"
		 "| decode weight traffic | %.1f MB/token = %.1f GB/s = %.0f%% of copy bandwidth |\n\n"
		 "FLOPs counted: per token and layer 2*(dim*(q+k+v) + q*dim + 3*dim*ffn); causal attention\n"
		 "4*heads*head_dim per (query, key<=query) pair; the output head only where the protocol\n"
		 "scores (the second half of each chunk). Reproduce with `make bench` (or\n"
		 "`./qscope bench -o docs/BENCH.md`); the machine is shared, so compare ratios, not seconds.\n",
		 bn_reps, bn_reps, fwd_threads(), bn_reps, m->path, m->format, model_n_params(m),
		 fwd_threads(), peak0.median, peak1.median,
		 peak0.min < peak1.min ? peak0.min : peak1.min,
		 peak0.max > peak1.max ? peak0.max : peak1.max, copy.median, file, pr.chunks,
		 pr.scored, pr.ppl, pr.ppl_stderr, pr.seconds, (double)pr.tokens / pr.seconds, pr.gflop,
		 ppl_gflops, 100.0 * ppl_gflops / peak, np, pp_tps, bn_reps, nd, dec_tps, bn_reps,
		 wbytes / 1e6, dec_tps * wbytes / 1e9, 100.0 * dec_tps * wbytes / 1e9 / copy.median);
	fputs(md, stdout);
	if (bn_out)
		rc = cli_write_atomic(bn_out, md, strlen(md));
out:
	free(md);
	free(v);
	free(gids);
	fwd_free(f);
	free(ids);
	model_free(m);
	return rc;
}

/* ------------------------------------------------------------ table */

static const cmd cmds[] = {
	{ "ppl", cmd_ppl, "ppl -m MODEL -f TEXT [-c 512] [--chunks N] [-t N] [--json]\n"
	  "       [plan flags of quant: --method M --bits B --group G ... | --policy FILE.lua\n"
	  "        [--set K=V] | --recipe FILE; --kld [--calib CALIB]]",
	  "Perplexity with llama.cpp's protocol: the text tokenized once with BOS, chunks of\n"
	  "c tokens each starting with BOS, the second half of each chunk scored. With plan\n"
	  "flags the model is quantized first (as qscope quant, -f being the evaluation text\n"
	  "and --calib the calibration text) and compared with the unquantized model.",
	  ppl_opts },
	{ "generate", cmd_generate,
	  "generate -m MODEL -p PROMPT [-n N] [--temp T] [--top-k K] [--top-p P] [-s SEED] [--template T] [--json]",
	  "Continue a prompt (prefill with sgemm, then token-by-token decode with a KV cache).",
	  gen_opts },
	{ "logits", cmd_logits, "logits -m MODEL -f TEXT -n N -o OUT.f32",
	  "Write the logits of the first N positions of the tokenized text (BOS first).", lg_opts },
	{ "stats", cmd_stats, "stats -m MODEL [-f CALIB] [--json] [--plot]",
	  "Calibration statistics of every linear layer's input and weights: per-channel absmax,\n"
	  "RMS, kurtosis, outlier channels, histograms.",
	  stats_opts },
	{ "quant", cmd_quant,
	  "quant -m MODEL [-f CALIB] --method M --bits B [--group G] [--sym|--asym] [--act-order]\n"
	  "       [--alpha A] [--format F] [--act-bits B] [--act-per token|tensor] [--include RE]\n"
	  "       [--exclude RE] [--eval TEXT] [--chunks N] [--kld] [--seeds LIST] [--json] [--dry-run]\n"
	  "       | --policy FILE.lua [--set K=V ...] [--sens FILE] | --recipe FILE  [--save-recipe FILE]",
	  "Quantize every matched tensor with one spec, or each tensor with the spec a Lua policy\n"
	  "chooses (docs/LUA.md), then report size (bytes, bits per weight) and quality\n"
	  "(perplexity against the unquantized model, KL divergence).",
	  quant_opts_table },
	{ "sensitivity", cmd_sens,
	  "sensitivity -m MODEL [-f EVAL] [--chunks 8] [--candidates int4g128,int3g128,q8_0]\n"
	  "       [--include RE] [--json] [-o sens.json]",
	  "Quantize one tensor at a time with each candidate spec and measure the perplexity\n"
	  "change and KL divergence on a quick evaluation set (only the layers after the tensor\n"
	  "are recomputed). Cached; Lua policies see the results as t.sens.",
	  sens_opts_table },
	{ "tui", cmd_tui, "tui [-m MODEL] [--sens FILE] [--recipe FILE]   (also: qscope with no command)",
	  "The workbench: the layer table (shape, spec, bits per weight, weight kurtosis, weight\n"
	  "and output error, measured sensitivity), plan editing on a selection with undo (keys\n"
	  "or mouse), the plan's exact size, a live evaluation that reruns only the layers from\n"
	  "the first change, histograms before and after quantization, Lua policies, and a chat\n"
	  "with the original and the quantized model (in the model's chat template, if any).\n"
	  "Keys: ? in the workbench. Headless for scripts and tests: QSCOPE_HEADLESS=80x24\n"
	  "with --keys SCRIPT prints the final screen.",
	  tui_opts_table },
	{ "demo", cmd_demo, "demo [-m MODEL]",
	  "A narrated tour of the workbench on the bundled model: the unquantized baseline, RTN\n"
	  "int3 and its damage, the outlier channels behind it, GPTQ and AWQ winning part of it\n"
	  "back, a Lua budget policy, then chat side by side. Tab steps, P plays/pauses, every\n"
	  "workbench key works in between; headless (QSCOPE_HEADLESS=WxH) prints each step.",
	  tui_opts_table },
	{ "shell", cmd_shell, "shell [-m MODEL] [--script FILE] [--template T]",
	  "A readline REPL with the workbench's operations as commands: load, calib, stats,\n"
	  "plan, policy, sens, quant, ppl, kld, chat, save, help. Tab completes commands,\n"
	  "history is kept in the XDG state folder; --script FILE (or a pipe) runs a batch.",
	  shell_opts_table },
	{ "bench", cmd_bench, "bench [-m MODEL] [-f TEXT] [--chunks N] [-o docs/BENCH.md]",
	  "Measure perplexity throughput and decode speed against this machine's sgemm peak and\n"
	  "copy bandwidth, measured in the same run; writes a markdown table.",
	  bn_opts },
	{ "info", cmd_info, "info -m MODEL [--json]",
	  "Architecture, shapes, tensors with dtype and bytes, tokenizer.", info_opts },
};

static const cmd *find_cmd(const char *name)
{
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmds[i].name, name) == 0)
			return &cmds[i];
	return NULL;
}

static void usage(FILE *out)
{
	fprintf(out, "usage: qscope COMMAND [options]   (qscope COMMAND --help for its options)\n\n"
		     "qscope - a workbench for post-training quantization of Llama-family models.\n"
		     "MODEL is a .gguf file, a Hugging Face folder (config.json, safetensors,\n"
		     "tokenizer.model) or a llama2.c .bin checkpoint (with -z tokenizer.bin).\n\n"
		     "commands:\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		const char *s = cmds[i].summary, *nl = strchr(s, '\n');
		fprintf(out, "  %-10s %.*s\n", cmds[i].name, (int)(nl ? nl - s : (long)strlen(s)), s);
	}
	fprintf(out, "\nexit codes: 0 ok, 1 usage, 2 bad input or model\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		/* no command: the workbench on the default model, on a terminal */
		if (isatty(0) && isatty(1)) {
			char *av[] = { "tui", NULL };
			return cmd_tui(1, av);
		}
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		if (argc > 2 && find_cmd(argv[2]))
			return cmd_help_for(argv[2]);
		usage(stdout);
		return 0;
	}
	const cmd *c = find_cmd(argv[1]);
	if (!c) {
		fprintf(stderr, "qscope: unknown command '%s'\n", argv[1]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (want_help(argc - 1, argv + 1))
		return cmd_help_for(c->name);
	return c->run(argc - 1, argv + 1);
}
