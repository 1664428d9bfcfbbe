/* cmd_quant.c - qscope quant: quantize with a uniform plan, then measure
 * size and quality against the unquantized model. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/bench.h"
#include "../engine/calib.h"
#include "../engine/eval.h"
#include "../engine/forward.h"
#include "../engine/quantize.h"
#include "../engine/sens.h"
#include "../lua/policy.h"
#include "commands.h"

static common co;
static const char *q_method = "rtn", *q_format, *q_spec, *q_include, *q_exclude, *q_eval;
static const char *q_act_per = "token";
static int q_bits = 4, q_group = 128, q_sym, q_asym, q_act_order, q_static, q_mse, q_act_bits;
static int q_chunks = 100, q_kld, q_dry, q_samples = 128, q_seq = 512, q_seed, q_ctx = 512, q_bos, q_noeval, q_lerr, q_awq_rows = 65536, q_batch = 8;
static float q_alpha = -1, q_damp = 0.01f, q_outliers;
static const char *q_policy, *q_recipe, *q_save_recipe, *q_sens, *q_seeds;
static cli_list q_set;

static const opt o_quant[] = {
	{ "-m", "--model", OPT_STR, &co.model, "MODEL", "model (default " DEFAULT_MODEL ")" },
	{ "-z", "--tokenizer", OPT_STR, &co.tokenizer, "FILE", "llama2.c tokenizer.bin" },
	{ "-f", "--file", OPT_STR, &co.file, "CALIB", "calibration text (default $QSCOPE_SHARED/data/debdoc-calib.txt, ../shared if unset)" },
	{ NULL, "--method", OPT_STR, &q_method, "M", "rtn, gptq, awq, smoothquant, hqq (default rtn)" },
	{ NULL, "--bits", OPT_INT, &q_bits, "B", "integer bits 2..8 (default 4)" },
	{ NULL, "--group", OPT_INT, &q_group, "G", "group size along the row; 0 = per channel, -1 = per tensor (default 128)" },
	{ NULL, "--sym", OPT_FLAG, &q_sym, NULL, "symmetric grid (zero point fixed)" },
	{ NULL, "--asym", OPT_FLAG, &q_asym, NULL, "asymmetric grid with a zero point (default)" },
	{ NULL, "--format", OPT_STR, &q_format, "F", "instead of --bits/--group: q4_0, q4_1, q8_0, nf4, nf4dq, fp8, fp16, bf16, intBgN[sym]" },
	{ NULL, "--spec", OPT_STR, &q_spec, "SPEC", "a whole spec string, e.g. gptq:int3g128,act_order (see docs/QUANT.md)" },
	{ NULL, "--act-order", OPT_FLAG, &q_act_order, NULL, "gptq: columns by descending Hessian diagonal" },
	{ NULL, "--static-groups", OPT_FLAG, &q_static, NULL, "gptq: group grids fixed before the pass" },
	{ NULL, "--mse", OPT_FLAG, &q_mse, NULL, "rtn/gptq: MSE-optimal clipping of each grid" },
	{ NULL, "--damp", OPT_FLOAT, &q_damp, "D", "gptq dampening, fraction of mean diag(H) (default 0.01)" },
	{ NULL, "--alpha", OPT_FLOAT, &q_alpha, "A", "smoothquant strength (0.5); awq: fixed alpha instead of the grid search" },
	{ NULL, "--outliers", OPT_FLOAT, &q_outliers, "T", "keep input channels with calibration absmax > T in FP16 (LLM.int8(): 6)" },
	{ NULL, "--act-bits", OPT_INT, &q_act_bits, "B", "simulate B-bit activations at every linear input (0 = off)" },
	{ NULL, "--act-per", OPT_STR, &q_act_per, "token|tensor", "activation scales per token (dynamic) or per tensor (static)" },
	{ NULL, "--policy", OPT_STR, &q_policy, "FILE.lua", "choose each tensor's spec with a Lua policy (see docs/LUA.md)" },
	{ NULL, "--set", OPT_LIST, &q_set, "KEY=VALUE", "a policy parameter, seen as args.KEY (repeatable)" },
	{ NULL, "--sens", OPT_STR, &q_sens, "FILE", "sensitivity results for the policy (qscope sensitivity -o); default: scanned on demand, cached" },
	{ NULL, "--recipe", OPT_STR, &q_recipe, "FILE", "apply a saved plan (JSON recipe) instead of a spec or policy" },
	{ NULL, "--save-recipe", OPT_STR, &q_save_recipe, "FILE", "write the resolved plan as a JSON recipe (atomically)" },
	{ NULL, "--include", OPT_STR, &q_include, "REGEX", "quantize tensors whose name matches (default: all block linears)" },
	{ NULL, "--exclude", OPT_STR, &q_exclude, "REGEX", "leave matching tensors unquantized" },
	{ NULL, "--eval", OPT_STR, &q_eval, "TEXT", "evaluation text (default data/wikitext-2-test.txt)" },
	{ NULL, "--chunks", OPT_INT, &q_chunks, "N", "evaluation chunks of 512 (default 100; 0 = all)" },
	{ "-c", "--ctx", OPT_INT, &q_ctx, "N", "evaluation chunk length (default 512)" },
	{ NULL, "--kld", OPT_FLAG, &q_kld, NULL, "KL divergence against the unquantized model (llama.cpp's statistics)" },
	{ NULL, "--samples", OPT_INT, &q_samples, "N", "calibration sequences (default 128)" },
	{ NULL, "--seq-len", OPT_INT, &q_seq, "L", "calibration sequence length (default 512)" },
	{ NULL, "--calib-raw", OPT_FLAG, &q_bos, NULL, "calibration windows as they are in the text (default: first token replaced by BOS)" },
	{ NULL, "--seed", OPT_INT, &q_seed, "S", "calibration sampling seed (default 0)" },
	{ NULL, "--seeds", OPT_STR, &q_seeds, "LIST", "quantize once per calibration seed (e.g. 0-7 or 1,4,9) and report each run and the median, min-max and sd of every figure" },
	{ "-t", "--threads", OPT_INT, &co.threads, "N", "threads (default: all cores)" },
	{ "-b", "--batch", OPT_INT, &q_batch, "N", "calibration sequences per forward batch (default 8; 1 needs the least memory at the same speed, docs/BENCH.md)" },
	{ NULL, "--awq-rows", OPT_INT, &q_awq_rows, "N", "calibration rows of each input AWQ searches on (default 65536: all of 128 x 512)" },
	{ NULL, "--layer-errors", OPT_FLAG, &q_lerr, NULL, "per tensor ||WX - QX|| / ||WX|| on the calibration inputs" },
	{ NULL, "--no-eval", OPT_FLAG, &q_noeval, NULL, "quantize and report size and time only" },
	{ NULL, "--dry-run", OPT_FLAG, &q_dry, NULL, "print the per-tensor plan with bytes and bpw; do not quantize" },
	{ NULL, "--json", OPT_FLAG, &co.json, NULL, "print one JSON object on stdout" },
	{ NULL, NULL, 0, NULL, NULL, NULL },
};

const opt *quant_opts_table(void) { return o_quant; }

static int build_spec(quant_spec *s, qs_error *err)
{
	char buf[256], fmt[64];
	if (q_spec)
		return quant_spec_parse(q_spec, s, err);
	if (q_format)
		snprintf(fmt, sizeof(fmt), "%s", q_format);
	else if (q_group == 0)
		snprintf(fmt, sizeof(fmt), "int%dc%s", q_bits, q_sym ? "sym" : "");
	else if (q_group < 0)
		snprintf(fmt, sizeof(fmt), "int%dt%s", q_bits, q_sym ? "sym" : "");
	else
		snprintf(fmt, sizeof(fmt), "int%dg%d%s", q_bits, q_group, q_sym ? "sym" : "");
	int n = snprintf(buf, sizeof(buf), "%s:%s", q_method, fmt);
#define ADD(cond, ...)                                                                       \
	if ((cond) && n > 0 && (size_t)n < sizeof(buf))                                          \
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, __VA_ARGS__);
	ADD(q_act_order, ",act_order")
	ADD(q_static, ",static_groups")
	ADD(q_mse, ",mse")
	ADD(q_damp != 0.01f, ",damp=%g", (double)q_damp)
	ADD(q_alpha >= 0, ",alpha=%g", (double)q_alpha)
	ADD(q_outliers > 0, ",outliers=%g", (double)q_outliers)
	ADD(q_act_bits, ",act=%d", q_act_bits)
	ADD(q_act_bits && strcmp(q_act_per, "tensor") == 0, ",act_tensor")
#undef ADD
	if (strcmp(q_act_per, "token") != 0 && strcmp(q_act_per, "tensor") != 0)
		return qs_err(err, QS_EUSAGE, "--act-per must be token or tensor, not '%s'", q_act_per);
	return quant_spec_parse(buf, s, err);
}


/* progress on stderr: one updating line on a terminal, plain lines otherwise */
static void progress_line(const char *what, long done, long total, double v)
{
	static int tty = -1;
	if (tty < 0)
		tty = isatty(2);
	if (!tty && done != total && done % 10)
		return;
	fprintf(stderr, tty ? "\r%s %ld/%ld" : "%s %ld/%ld", what, done, total);
	if (v > 0)
		fprintf(stderr, ", running ppl %.4f", v);
	if (!tty || done == total)
		fputc('\n', stderr);
}

static int print_progress(void *user, long done, long total)
{
	(void)user;
	progress_line("quant: layer", done, total, 0);
	return 0;
}

static int on_chunk(void *user, int chunk, int n, double running)
{
	(void)user;
	progress_line("eval: chunk", chunk + 1, n, running);
	return 0;
}

static void dry_run(const model *m, const quant_plan *p)
{
	size_t tb = 0, tp = 0;
	printf("%-28s %-24s %12s %12s %7s\n", "tensor", "spec", "params", "bytes", "bpw");
	for (int i = 0; i < m->n_tensors; i++) {
		const model_tensor *t = &m->tensors[i];
		const quant_spec *s = quant_plan_find(p, t->name);
		size_t n = (size_t)t->ne[0] * (size_t)t->ne[1];
		size_t b = s && s->method != QUANT_NONE ? quant_spec_bytes(s, (int)t->ne[1], (int)t->ne[0])
							: t->nbytes;
		char sp[128] = "(stored)";
		if (s)
			quant_spec_str(s, sp, sizeof(sp));
		tb += b;
		tp += n;
		if (s || !co.json)
			printf("%-28s %-24s %12zu %12zu %7.3f\n", t->name, sp, n, b, 8.0 * b / n);
	}
	printf("%-28s %-24s %12zu %12zu %7.3f\n", "total", "", tp, tb, 8.0 * tb / tp);
}

/* ---- the policy's host: calibration statistics and sensitivity on demand */

typedef struct host {
	const model *m;
	calib_set *calib;
	sens_table sens;
	int have_sens;
} host;

static int host_calib(void *user, const calib_set **out, qs_error *err)
{
	host *h = user;
	if (!h->calib) {
		calib_opts o;
		calib_opts_default(&o);
		o.n_samples = q_samples;
		o.seq_len = q_seq;
		o.seed = (uint64_t)q_seed;
		o.raw_windows = q_bos;
		calib_cache_info info;
		int rc = cli_collect_calib_file(h->m, co.file, &o, NULL, NULL, &h->calib, &info, err);
		if (rc)
			return rc;
		if (info.warning[0])
			fprintf(stderr, "qscope quant: warning: %s\n", info.warning);
	}
	*out = h->calib;
	return 0;
}

static int host_sens(void *user, const char *const *cands, int n, const sens_table **out,
		     qs_error *err)
{
	host *h = user;
	sens_cli c;
	sens_cli_defaults(&c);
	c.quiet = co.json;
	c.calib = co.file;
	int hit;
	sens_table t;
	if (sens_cli_run(h->m, &c, cands, n, &t, &hit))
		return qs_err(err, QS_EUSAGE, "see the message above");
	if (h->have_sens)
		sens_table_release(&h->sens);
	h->sens = t;
	h->have_sens = 1;
	*out = &h->sens;
	return 0;
}

static void host_log(void *user, const char *line)
{
	(void)user;
	fprintf(stderr, "policy: %s\n", line);
}

/* The plan from --policy, --recipe or the uniform spec. */
static int make_plan(const model *m, const quant_spec *spec, host *h, quant_plan *plan, char *what,
		     size_t cap)
{
	qs_error err = { 0 };
	if (q_policy && q_recipe) {
		fprintf(stderr, "qscope quant: --policy and --recipe exclude each other\n");
		return EXIT_USAGE;
	}
	if ((q_policy || q_recipe) &&
	    (q_spec || q_format || q_include || q_exclude || strcmp(q_method, "rtn") || q_bits != 4 ||
	     q_group != 128 || q_sym || q_asym || q_act_order || q_static || q_mse || q_outliers > 0 ||
	     q_act_bits || q_alpha >= 0 || q_damp != 0.01f)) {
		fprintf(stderr, "qscope quant: --%s chooses every tensor's spec; drop --spec, --method, "
			"--bits, --group, --format, --include, --exclude and the method options\n",
			q_policy ? "policy" : "recipe");
		return EXIT_USAGE;
	}
	if (q_sens && !q_policy) {
		fprintf(stderr, "qscope quant: --sens is read by a policy: it needs --policy\n");
		return EXIT_USAGE;
	}
	if (q_policy) {
		pol_opts po = { .args = q_set.v, .n_args = q_set.n, .get_calib = host_calib,
				.get_sens = host_sens, .log = host_log, .user = h };
		if (q_sens) {
			if (sens_load(q_sens, m, &h->sens, &err)) {
				fprintf(stderr, "qscope quant: %s\n", err.msg);
				return EXIT_INPUT;
			}
			h->have_sens = 1;
			po.sens = &h->sens;
		}
		pol_result r;
		if (pol_run_file(m, q_policy, &po, &r, &err)) {
			fprintf(stderr, "qscope quant: %s\n", err.msg);
			if (r.trace[0] && getenv("QSCOPE_TRACE"))
				fprintf(stderr, "%s\n", r.trace);
			pol_result_release(&r);
			return err.code == QS_EIO ? EXIT_INPUT : EXIT_USAGE;
		}
		*plan = r.plan;
		int n = snprintf(what, cap, "policy %s", q_policy);
		for (int i = 0; i < q_set.n && n > 0 && (size_t)n < cap; i++)
			n += snprintf(what + n, cap - (size_t)n, " --set %s", q_set.v[i]);
		return 0;
	}
	if (q_set.n) {
		fprintf(stderr, "qscope quant: --set needs --policy\n");
		return EXIT_USAGE;
	}
	if (q_recipe) {
		if (quant_plan_load(q_recipe, m, plan, &err)) {
			fprintf(stderr, "qscope quant: %s\n", err.msg);
			return EXIT_INPUT;
		}
		snprintf(what, cap, "recipe %s", q_recipe);
		return 0;
	}
	if (quant_plan_uniform(m, spec, q_include, q_exclude, plan, &err)) {
		fprintf(stderr, "qscope quant: %s\n", err.msg);
		return EXIT_USAGE;
	}
	quant_spec_str(spec, what, cap);
	return 0;
}

/* ---- one quantization and its evaluation */

#define MAX_SEEDS 64

typedef struct seed_list {
	int v[MAX_SEEDS];
	int n;
} seed_list;

/* "0-7", "1,4,9", "0-3,8": distinct seeds in the order given */
static int parse_seeds(const char *arg, seed_list *out, qs_error *err)
{
	out->n = 0;
	const char *p = arg;
	while (*p) {
		char *e;
		long a = strtol(p, &e, 10), b;
		if (e == p || a < 0 || a > INT_MAX)
			return qs_err(err, QS_EUSAGE, "--seeds '%s': expected seeds like 0-7 or 1,4,9", arg);
		b = a;
		if (*e == '-') {
			p = e + 1;
			b = strtol(p, &e, 10);
			if (e == p || b < a || b > INT_MAX)
				return qs_err(err, QS_EUSAGE, "--seeds '%s': a range needs its end at or after its start", arg);
		}
		for (long v = a; v <= b; v++) {
			for (int i = 0; i < out->n; i++)
				if (out->v[i] == v)
					return qs_err(err, QS_EUSAGE, "--seeds '%s': seed %ld is listed twice", arg, v);
			if (out->n == MAX_SEEDS)
				return qs_err(err, QS_EUSAGE, "--seeds '%s': at most %d seeds", arg, MAX_SEEDS);
			out->v[out->n++] = (int)v;
		}
		if (*e == ',' && e[1])
			e++;
		else if (*e)
			return qs_err(err, QS_EUSAGE, "--seeds '%s': expected seeds like 0-7 or 1,4,9", arg);
		p = e;
	}
	if (!out->n)
		return qs_err(err, QS_EUSAGE, "--seeds: no seed given");
	return 0;
}

/* Quantize m with plan, calibrating (when the plan or --layer-errors needs
 * it) on windows drawn with seed; *calib keeps the windows. Prints its
 * error; returns 0 or an exit code. */
static int quantize_seed(const model *m, const quant_plan *plan, int seed, int progress,
			 int **calib, model **qm, quant_report *rep)
{
	qs_error err = { 0 };
	quant_opts qo = { .progress = progress ? print_progress : NULL, .awq_rows = q_awq_rows,
			  .batch = q_batch };
	*calib = NULL;
	if (quant_plan_needs_calib(plan) || q_lerr) {
		calib_opts copts;
		calib_opts_default(&copts);
		copts.n_samples = q_samples;
		copts.seq_len = q_seq;
		copts.seed = (uint64_t)seed;
		copts.raw_windows = q_bos;
		if (cli_sample_calib_file(m, co.file, &copts, calib, &err)) {
			fprintf(stderr, "qscope quant: %s\n", err.msg);
			return EXIT_INPUT;
		}
		qo.calib = *calib;
		qo.n_calib = q_samples;
		qo.calib_len = q_seq;
	}
	if (quant_model(m, plan, &qo, qm, rep, &err)) {
		fprintf(stderr, "qscope quant: %s\n", err.msg);
		return err.code == QS_EUSAGE ? EXIT_USAGE : EXIT_INPUT;
	}
	return 0;
}

/* The sizes and times of a quantization as JSON (without the evaluation) */
static json_t *size_json(const model *m, const model *qm, const quant_plan *plan, const char *sp,
			 const quant_report *rep, size_t *qparams, double *bpw_q)
{
	size_t qb = 0, qp = 0;
	for (int i = 0; i < plan->n; i++) {
		const model_tensor *t = model_find(qm, plan->e[i].name);
		qb += model_tensor_bytes(t);
		qp += (size_t)t->ne[0] * (size_t)t->ne[1];
	}
	*qparams = qp;
	*bpw_q = 8.0 * (double)qb / (double)qp;
	double bpw = 8.0 * (double)rep->bytes / (double)rep->params;
	json_t *j = json_pack("{s:s, s:s, s:i, s:I, s:I, s:f, s:f, s:I, s:f, s:f, s:i}", "model",
			      m->path, "spec", sp, "tensors", plan->n, "bytes", (json_int_t)rep->bytes,
			      "bytes_base", (json_int_t)model_bytes(m), "bpw", bpw, "bpw_quantized",
			      *bpw_q, "params_quantized", (json_int_t)qp, "seconds_quant",
			      rep->seconds, "seconds_calib", rep->seconds_calib, "ctx", q_ctx);
	if (rep->seconds_calib > 0)
		json_object_set_new(j, "calib_gflops", json_real(rep->calib_gflop / rep->seconds_calib));
	if (rep->seconds_gptq > 0) {
		json_object_set_new(j, "seconds_gptq", json_real(rep->seconds_gptq));
		json_object_set_new(j, "gptq_gflops", json_real(rep->gptq_gflop / rep->seconds_gptq));
	}
	return j;
}

/* Evaluate qm against m on every text of --eval (comma-separated): an
 * "evals" array in j, the first text's figures also at j's top level.
 * print: the human-readable lines and per-chunk progress. Prints its
 * error; returns 0 or an exit code. */
static int eval_texts(const model *m, const model *qm, int print, json_t *j)
{
	qs_error err = { 0 };
	int rc = 0;
	int *ids = NULL;
	json_t *evals = json_array();
	char evl[4096];
	snprintf(evl, sizeof(evl), "%s", q_noeval ? "" : q_eval ? q_eval : "data/wikitext-2-test.txt");
	for (char *save = NULL, *ef = strtok_r(evl, ",", &save); ef; ef = strtok_r(NULL, ",", &save)) {
		size_t n;
		free(ids);
		ids = NULL;
		if ((rc = cli_tokenize_file(m, ef, &ids, &n)))
			break;
		eval_ppl_opts eo = { .ctx = q_ctx, .n_chunks = q_chunks,
				     .on_chunk = co.json ? NULL : on_chunk };
		eval_cmp_result cr;
		double te = cli_now();
		if (eval_compare(m, qm, ids, n, &eo, &cr, &err)) {
			fprintf(stderr, "qscope quant: %s\n", err.msg);
			rc = EXIT_INPUT;
			break;
		}
		te = cli_now() - te;
		json_t *e = json_pack("{s:s, s:f, s:f, s:f, s:f, s:i, s:f}", "eval", ef, "ppl", cr.test.ppl,
				      "ppl_stderr", cr.test.ppl_stderr, "ppl_base", cr.base.ppl,
				      "ppl_base_stderr", cr.base.ppl_stderr, "chunks", cr.test.chunks,
				      "seconds_eval", te);
		if (q_kld) {
			json_object_set_new(e, "kld_mean", json_real(cr.kld_mean));
			json_object_set_new(e, "kld_stderr", json_real(cr.kld_stderr));
			json_object_set_new(e, "kld_median", json_real(cr.kld_median));
			json_object_set_new(e, "kld_p90", json_real(cr.kld_p90));
			json_object_set_new(e, "kld_p99", json_real(cr.kld_p99));
			json_object_set_new(e, "kld_max", json_real(cr.kld_max));
			json_object_set_new(e, "same_top_pct", json_real(cr.same_top_pct));
			json_object_set_new(e, "rms_dp_pct", json_real(cr.rms_dp));
		}
		if (json_array_size(evals) == 0) /* the first text's figures at the top level */
			json_object_update(j, e);
		json_array_append_new(evals, e);
		if (print) {
			printf("perplexity     %.4f +/- %.4f (unquantized %.4f +/- %.4f, %+.2f%%) on %s, %d chunks, %.1f s\n",
			       cr.test.ppl, cr.test.ppl_stderr, cr.base.ppl, cr.base.ppl_stderr,
			       100.0 * (cr.test.ppl / cr.base.ppl - 1), ef, cr.test.chunks, te);
			if (q_kld) {
				printf("KLD            mean %.6f +/- %.6f, median %.6f, p90 %.6f, p99 %.6f, max %.4f\n",
				       cr.kld_mean, cr.kld_stderr, cr.kld_median, cr.kld_p90, cr.kld_p99,
				       cr.kld_max);
				printf("same top token %.2f%%, RMS delta p %.3f%%\n", cr.same_top_pct, cr.rms_dp);
			}
		}
	}
	json_object_set_new(j, "evals", evals);
	free(ids);
	return rc;
}

/* --layer-errors: per tensor relative output error on the calibration
 * windows, into j ("layers") and as a table unless --json */
static int layer_errors(const model *m, const model *qm, const int *calib, json_t *j)
{
	qs_error err = { 0 };
	quant_layer_err *le;
	int nle;
	if (quant_layer_errors(m, qm, calib, q_samples, q_seq, &le, &nle, &err)) {
		fprintf(stderr, "qscope quant: %s\n", err.msg);
		return EXIT_INPUT;
	}
	json_t *ja = json_array();
	if (!co.json)
		printf("%-28s %10s %12s %8s\n", "tensor", "bpw", "bytes", "rel err");
	for (int i = 0; i < nle; i++) {
		const model_tensor *t = &qm->tensors[i];
		if (!t->q)
			continue;
		size_t b = model_tensor_bytes(t);
		double bw = 8.0 * (double)b / ((double)t->ne[0] * (double)t->ne[1]);
		json_array_append_new(ja, json_pack("{s:s, s:f, s:I, s:f}", "name", le[i].name, "bpw",
						    bw, "bytes", (json_int_t)b, "rel_err",
						    isnan(le[i].rel_err) ? -1.0 : le[i].rel_err));
		if (!co.json)
			printf("%-28s %10.3f %12zu %8.4f\n", le[i].name, bw, b, le[i].rel_err);
	}
	json_object_set_new(j, "layers", ja);
	free(le);
	return 0;
}

static int run_once(const model *m, const quant_plan *plan, const char *sp, int seed)
{
	int *calib = NULL;
	model *qm = NULL;
	quant_report rep;
	int rc = quantize_seed(m, plan, seed, !co.json, &calib, &qm, &rep);
	if (rc)
		goto out;
	size_t qp;
	double bpw_q;
	json_t *j = size_json(m, qm, plan, sp, &rep, &qp, &bpw_q);
	if (q_lerr && (rc = layer_errors(m, qm, calib, j))) {
		json_decref(j);
		goto out;
	}
	if (!co.json) {
		printf("spec           %s on %d tensors\n", sp, plan->n);
		printf("size           %.3f MB -> %.3f MB: %.3f bits per weight over the model, %.3f over the %zu quantized weights\n",
		       model_bytes(m) / 1e6, rep.bytes / 1e6,
		       8.0 * (double)rep.bytes / (double)rep.params, bpw_q, qp);
		printf("time           quantize %.2f s (calibration passes %.2f s)\n", rep.seconds,
		       rep.seconds_calib);
	}
	rc = eval_texts(m, qm, !co.json, j);
	if (!rc && co.json)
		rc = cli_dump_json(j);
	else
		json_decref(j);
out:
	free(calib);
	model_free(qm);
	return rc;
}

/* median (the mean of the middle two for an even count), min, max and the
 * sample standard deviation of v[0..n) (n >= 1); v is sorted in place */
static void spread(double *v, int n, double *med, double *lo, double *hi, double *sd)
{
	*med = bench_median(v, n); /* sorts v */
	*lo = v[0];
	*hi = v[n - 1];
	double mean = 0, ss = 0;
	for (int i = 0; i < n; i++)
		mean += v[i] / n;
	for (int i = 0; i < n; i++)
		ss += (v[i] - mean) * (v[i] - mean);
	*sd = n > 1 ? sqrt(ss / (n - 1)) : 0.0;
}

/* key over the runs' k-th evaluations: in e, key as the median and
 * key_min, key_max, key_sd */
static void summarize(json_t *runs, int k, const char *key, json_t *e)
{
	double v[MAX_SEEDS], med, lo, hi, sd;
	int n = 0;
	size_t i;
	json_t *r;
	json_array_foreach(runs, i, r) {
		json_t *x = json_object_get(json_array_get(json_object_get(r, "evals"), (size_t)k), key);
		if (x && n < MAX_SEEDS)
			v[n++] = json_number_value(x);
	}
	if (!n)
		return;
	spread(v, n, &med, &lo, &hi, &sd);
	char name[64];
	json_object_set_new(e, key, json_real(med));
	snprintf(name, sizeof(name), "%s_min", key);
	json_object_set_new(e, name, json_real(lo));
	snprintf(name, sizeof(name), "%s_max", key);
	json_object_set_new(e, name, json_real(hi));
	snprintf(name, sizeof(name), "%s_sd", key);
	json_object_set_new(e, name, json_real(sd));
}

/* --seeds: one quantization per calibration seed, each evaluated; every
 * figure reported per seed and as median, min-max and sd over the seeds */
static int run_seeds(const model *m, const quant_plan *plan, const char *sp, const seed_list *s)
{
	int rc = 0;
	json_t *runs = json_array(), *j = NULL;
	for (int k = 0; k < s->n && !rc; k++) {
		int *calib = NULL;
		model *qm = NULL;
		quant_report rep;
		if (!co.json)
			fprintf(stderr, "seed %d (%d of %d)\n", s->v[k], k + 1, s->n);
		rc = quantize_seed(m, plan, s->v[k], !co.json, &calib, &qm, &rep);
		if (!rc) {
			size_t qp;
			double bpw_q;
			json_t *r = size_json(m, qm, plan, sp, &rep, &qp, &bpw_q);
			json_object_set_new(r, "seed", json_integer(s->v[k]));
			if (!(rc = eval_texts(m, qm, 0, r))) {
				if (!j) { /* sizes do not depend on the seed */
					j = json_object();
					const char *keep[] = { "model", "spec", "tensors", "bytes",
							       "bytes_base", "bpw", "bpw_quantized",
							       "params_quantized", "ctx" };
					for (size_t q = 0; q < sizeof(keep) / sizeof(keep[0]); q++)
						json_object_set(j, keep[q], json_object_get(r, keep[q]));
					if (!co.json) {
						printf("spec           %s on %d tensors, calibration seeds %s\n", sp, plan->n, q_seeds);
						printf("size           %.3f MB -> %.3f MB: %.3f bits per weight over the model, %.3f over the %zu quantized weights\n",
						       model_bytes(m) / 1e6, rep.bytes / 1e6,
						       8.0 * (double)rep.bytes / (double)rep.params, bpw_q, qp);
						printf("%-8s %10s", "seed", "quant s");
						json_t *e;
						size_t i;
						json_array_foreach(json_object_get(r, "evals"), i, e) {
							char h[32];
							snprintf(h, sizeof(h), "ppl text %zu", i + 1);
							printf("  %12s", h);
							if (q_kld)
								printf(" %10s %8s", "KLD", "same top");
						}
						printf("\n");
					}
				}
				if (!co.json) {
					printf("%-8d %10.2f", s->v[k], rep.seconds);
					json_t *e;
					size_t i;
					json_array_foreach(json_object_get(r, "evals"), i, e) {
						printf("  %12.4f", json_number_value(json_object_get(e, "ppl")));
						if (q_kld)
							printf(" %10.6f %7.2f%%",
							       json_number_value(json_object_get(e, "kld_mean")),
							       json_number_value(json_object_get(e, "same_top_pct")));
					}
					printf("\n");
					fflush(stdout);
				}
				json_array_append_new(runs, r);
			} else {
				json_decref(r);
			}
		}
		free(calib);
		model_free(qm);
	}
	if (rc || !j) {
		json_decref(runs);
		json_decref(j);
		return rc;
	}
	/* the summary: per evaluation text, each figure's median and spread */
	json_t *seeds = json_array(), *evals = json_array(), *e0;
	for (int k = 0; k < s->n; k++)
		json_array_append_new(seeds, json_integer(s->v[k]));
	size_t ti;
	json_array_foreach(json_object_get(json_array_get(runs, 0), "evals"), ti, e0) {
		json_t *e = json_pack("{s:O, s:O, s:O, s:O, s:s}", "eval", json_object_get(e0, "eval"),
				      "chunks", json_object_get(e0, "chunks"), "ppl_base",
				      json_object_get(e0, "ppl_base"), "ppl_base_stderr",
				      json_object_get(e0, "ppl_base_stderr"), "stat", "median over seeds");
		summarize(runs, (int)ti, "ppl", e);
		if (q_kld) {
			summarize(runs, (int)ti, "kld_mean", e);
			summarize(runs, (int)ti, "same_top_pct", e);
		}
		if (ti == 0)
			json_object_update(j, e);
		json_array_append_new(evals, e);
	}
	if (!co.json) { /* the summary rows under the seeds' columns */
		const char *rows[] = { "median", "min", "max", "sd" }, *suf[] = { "", "_min", "_max", "_sd" };
		for (int r = 0; r < 4; r++) {
			printf("%-8s %10s", rows[r], "");
			json_t *e;
			size_t i;
			json_array_foreach(evals, i, e) {
				char k[3][40];
				snprintf(k[0], sizeof(k[0]), "ppl%s", suf[r]);
				snprintf(k[1], sizeof(k[1]), "kld_mean%s", suf[r]);
				snprintf(k[2], sizeof(k[2]), "same_top_pct%s", suf[r]);
				printf("  %12.4f", json_number_value(json_object_get(e, k[0])));
				if (q_kld)
					printf(" %10.6f %7.2f%%", json_number_value(json_object_get(e, k[1])),
					       json_number_value(json_object_get(e, k[2])));
			}
			printf("\n");
		}
		json_t *e;
		size_t i;
		json_array_foreach(evals, i, e)
			printf("text %zu         %s, %d chunks, unquantized perplexity %.4f\n", i + 1,
			       json_string_value(json_object_get(e, "eval")),
			       (int)json_integer_value(json_object_get(e, "chunks")),
			       json_number_value(json_object_get(e, "ppl_base")));
	}
	json_object_set_new(j, "seeds", seeds);
	json_object_set_new(j, "evals", evals);
	json_object_set_new(j, "runs", runs);
	double sq[MAX_SEEDS], lo, hi, sd, med;
	for (int k = 0; k < s->n; k++)
		sq[k] = json_number_value(json_object_get(json_array_get(runs, (size_t)k), "seconds_quant"));
	spread(sq, s->n, &med, &lo, &hi, &sd);
	json_object_set_new(j, "seconds_quant", json_real(med));
	if (co.json)
		return cli_dump_json(j);
	json_decref(j);
	return 0;
}

int cmd_quant(int argc, char **argv)
{
	int rc = cli_parse_opts("quant", argc, argv, o_quant);
	if (rc)
		return rc;
	if (q_sym && q_asym) {
		fprintf(stderr, "qscope quant: --sym and --asym exclude each other\n");
		return EXIT_USAGE;
	}
	qs_error err = { 0 };
	quant_spec spec;
	if (build_spec(&spec, &err)) {
		fprintf(stderr, "qscope quant: %s\n", err.msg);
		return EXIT_USAGE;
	}
	seed_list seeds = { .n = 0 };
	if (q_seeds) {
		const char *clash = q_dry ? "--dry-run" : q_noeval ? "--no-eval" : q_lerr ? "--layer-errors" : NULL;
		if (clash) {
			fprintf(stderr, "qscope quant: --seeds compares evaluations over seeds; drop %s\n", clash);
			return EXIT_USAGE;
		}
		if (parse_seeds(q_seeds, &seeds, &err)) {
			fprintf(stderr, "qscope quant: %s\n", err.msg);
			return EXIT_USAGE;
		}
	}
	model *m = NULL;
	quant_plan plan = { 0 };
	host h = { 0 };
	if ((rc = cli_open_model(&co, &m)))
		return rc;
	h.m = m;
	char sp[1200];
	if ((rc = make_plan(m, &spec, &h, &plan, sp, sizeof(sp))))
		goto out;
	if (plan.n == 0) {
		fprintf(stderr, "qscope quant: no tensor to quantize (%s)\n", sp);
		rc = EXIT_USAGE;
		goto out;
	}
	if (q_save_recipe && quant_plan_save(q_save_recipe, m, &plan, sp, &err)) {
		fprintf(stderr, "qscope quant: %s\n", err.msg);
		rc = EXIT_INPUT;
		goto out;
	}
	if (q_dry) {
		dry_run(m, &plan);
		goto out;
	}
	if (seeds.n && !quant_plan_needs_calib(&plan)) {
		fprintf(stderr, "qscope quant: --seeds: %s uses no calibration data, so every seed gives the same model\n", sp);
		rc = EXIT_USAGE;
		goto out;
	}
	if (seeds.n > 1)
		rc = run_seeds(m, &plan, sp, &seeds);
	else
		rc = run_once(m, &plan, sp, seeds.n ? seeds.v[0] : q_seed);
out:
	if (h.have_sens)
		sens_table_release(&h.sens);
	calib_set_free(h.calib);
	quant_plan_release(&plan);
	model_free(m);
	return rc;
}
