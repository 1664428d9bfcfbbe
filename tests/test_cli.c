/* test_cli.c - the qscope binary end to end, against ../shared/refs:
 * full WikiText-2 perplexity from the GGUF and the HF folder, logits files,
 * greedy generations, exit codes, --json shapes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil.h"

static json_t *refs;
static const char *bin;

static int setup(void **state)
{
	(void)state;
	bin = tu_bin();
	json_error_t je;
	refs = json_load_file(tu_shared("refs/debdoc-19m.json"), 0, &je);
	return refs ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	json_decref(refs);
	return 0;
}

/* Run a shell command; capture stdout (malloc'd) and return the exit code. */
static int run(const char *cmd, char **out)
{
	char ep[512];
	snprintf(ep, sizeof(ep), "%s/stderr.txt", tu_tmpdir());
	int rc = tu_run(cmd, ep, out);
	assert_true(rc != -1 || !out || *out);
	return rc;
}

static char *last_stderr(void)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/stderr.txt", tu_tmpdir());
	return tu_read_file(path, NULL);
}

static void check_full_ppl(const char *model)
{
	char cmd[2048], *out;
	json_t *w = json_object_get(refs, "wikitext_2_test");
	double want = json_real_value(json_object_get(w, "ppl"));
	int want_chunks = (int)json_integer_value(json_object_get(w, "chunks"));
	const char *chunks = tu_asan() ? "--chunks 3" : "";
	snprintf(cmd, sizeof(cmd), "%s ppl -m %s -f %s %s --json", bin, model,
		 tu_shared("data/wikitext-2-test.txt"), chunks);
	assert_int_equal(run(cmd, &out), 0);
	json_error_t je;
	json_t *j = json_loads(out, 0, &je);
	assert_non_null(j);
	double ppl = json_real_value(json_object_get(j, "ppl"));
	print_message("%s: ppl %.4f over %lld chunks in %.1f s (reference %.4f)\n", model, ppl,
		      (long long)json_integer_value(json_object_get(j, "chunks")),
		      json_real_value(json_object_get(j, "seconds")), want);
	assert_int_equal(json_integer_value(json_object_get(j, "tokens")),
			 json_integer_value(json_object_get(w, "tokens")));
	assert_true(json_real_value(json_object_get(j, "ppl_stderr")) > 0);
	assert_true(json_real_value(json_object_get(j, "tokens_per_second")) > 0);
	if (!tu_asan()) {
		assert_int_equal(json_integer_value(json_object_get(j, "chunks")), want_chunks);
		assert_int_equal(json_integer_value(json_object_get(j, "scored")),
				 json_integer_value(json_object_get(w, "scored")));
		assert_true(fabs(ppl / want - 1) < 5e-4);
	}
	json_decref(j);
	free(out);
}

static void test_ppl_gguf(void **s) { (void)s; check_full_ppl(tu_shared("models/debdoc-19m-f16.gguf")); }
static void test_ppl_hf(void **s) { (void)s; check_full_ppl(tu_shared("models/debdoc-19m-hf")); }

static void check_logits(const char *model)
{
	char cmd[2048], path[512];
	snprintf(path, sizeof(path), "%s/logits.f32", tu_tmpdir());
	snprintf(cmd, sizeof(cmd), "%s logits -m %s -f %s -n 64 -o %s", bin, model,
		 tu_shared("data/wikitext-2-test.txt"), path);
	assert_int_equal(run(cmd, NULL), 0);
	size_t n1, n2;
	float *a = (float *)tu_read_file(path, &n1);
	float *b = (float *)tu_read_file(tu_shared("refs/debdoc-19m-logits64.f32"), &n2);
	assert_non_null(a);
	assert_int_equal(n1, n2);
	double num = 0, den = 0;
	for (size_t i = 0; i < n1 / 4; i++) {
		num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		den += (double)b[i] * b[i];
	}
	print_message("%s: logits rel L2 %.3g\n", model, sqrt(num / den));
	assert_true(sqrt(num / den) < 1e-4);
	free(a);
	free(b);
}

static void test_logits_gguf(void **s) { (void)s; check_logits(tu_shared("models/debdoc-19m-f16.gguf")); }
static void test_logits_hf(void **s) { (void)s; check_logits(tu_shared("models/debdoc-19m-hf")); }

static void test_generate_greedy(void **s)
{
	(void)s;
	const char *prompt;
	json_t *v;
	json_object_foreach(json_object_get(refs, "greedy"), prompt, v) {
		char cmd[2048], *out;
		snprintf(cmd, sizeof(cmd), "%s generate -m %s -p '%s' -n 48 --temp 0 --json", bin,
			 tu_shared("models/debdoc-19m-f16.gguf"), prompt);
		assert_int_equal(run(cmd, &out), 0);
		json_error_t je;
		json_t *j = json_loads(out, 0, &je);
		assert_non_null(j);
		assert_true(json_equal(json_object_get(j, "ids"), json_object_get(v, "ids")));
		assert_string_equal(json_string_value(json_object_get(j, "text")),
				    json_string_value(json_object_get(v, "text")));
		json_decref(j);
		free(out);
	}
}

/* Exit codes: 1 usage, 2 bad input; one-line messages naming the file. */
static void test_errors(void **s)
{
	(void)s;
	char cmd[2048], *err;
	snprintf(cmd, sizeof(cmd), "%s", bin);
	assert_int_equal(run(cmd, NULL), 1);
	snprintf(cmd, sizeof(cmd), "%s frobnicate", bin);
	assert_int_equal(run(cmd, NULL), 1);
	snprintf(cmd, sizeof(cmd), "%s ppl -m %s", bin, tu_shared("models/debdoc-19m-f16.gguf"));
	assert_int_equal(run(cmd, NULL), 1);
	snprintf(cmd, sizeof(cmd), "%s ppl -c abc -f x", bin);
	assert_int_equal(run(cmd, NULL), 1);
	snprintf(cmd, sizeof(cmd), "%s info -m %s/nope.gguf", bin, tu_tmpdir());
	assert_int_equal(run(cmd, NULL), 2);
	err = last_stderr();
	assert_non_null(strstr(err, "nope.gguf"));
	free(err);
	char bad[512];
	snprintf(bad, sizeof(bad), "%s/bad.gguf", tu_tmpdir());
	tu_write_file(bad, "GGUF\x09\0\0\0", 8);
	snprintf(cmd, sizeof(cmd), "%s info -m %s", bin, bad);
	assert_int_equal(run(cmd, NULL), 2);
	err = last_stderr();
	assert_non_null(strstr(err, "bad.gguf: gguf version 9 not supported"));
	assert_int_equal(strchr(err, '\n') - err, (long)strlen(err) - 1); /* one line */
	free(err);
	snprintf(cmd, sizeof(cmd), "%s ppl -m %s -f %s/missing.txt", bin,
		 tu_shared("models/debdoc-19m-f16.gguf"), tu_tmpdir());
	assert_int_equal(run(cmd, NULL), 2);
	snprintf(cmd, sizeof(cmd), "%s --help", bin);
	assert_int_equal(run(cmd, NULL), 0);
	snprintf(cmd, sizeof(cmd), "%s ppl --help", bin);
	assert_int_equal(run(cmd, NULL), 0);
}

static void test_info_json(void **s)
{
	(void)s;
	char cmd[2048], *out;
	snprintf(cmd, sizeof(cmd), "%s info -m %s --json", bin, tu_shared("models/debdoc-19m-hf"));
	assert_int_equal(run(cmd, &out), 0);
	json_error_t je;
	json_t *j = json_loads(out, 0, &je);
	assert_non_null(j);
	json_t *c = json_object_get(j, "config"), *rc = json_object_get(refs, "config");
	const char *keys[] = { "vocab", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden", "ctx" };
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		assert_int_equal(json_integer_value(json_object_get(c, keys[i])),
				 json_integer_value(json_object_get(rc, keys[i])));
	assert_int_equal(json_integer_value(json_object_get(j, "params")),
			 json_integer_value(json_object_get(refs, "params")));
	assert_string_equal(json_string_value(json_object_get(c, "rope")), "neox");
	json_decref(j);
	free(out);
}

static json_t *quant_json(const char *args)
{
	char cmd[4096], *out;
	snprintf(cmd, sizeof(cmd), "%s quant -m %s -f %s --eval %s --json %s", bin,
		 tu_shared("models/debdoc-19m-f16.gguf"), tu_shared("data/debdoc-calib.txt"),
		 tu_shared("data/wikitext-2-test.txt"), args);
	int rc = run(cmd, &out);
	if (rc != 0) {
		char *e = last_stderr();
		fail_msg("quant %s: exit %d: %s", args, rc, e ? e : "");
	}
	json_error_t je;
	json_t *j = json_loads(out, 0, &je);
	assert_non_null(j);
	free(out);
	return j;
}

static double jnum(json_t *j, const char *k)
{
	json_t *v = json_object_get(j, k);
	assert_non_null(v);
	return json_number_value(v);
}

/* The methods that use calibration beat plain rounding on the real model
 * (small calibration and few chunks keep it quick; the full-size figures
 * are in docs/QUALITY.md): GPTQ and AWQ against RTN at 3 bits, SmoothQuant
 * against naive W8A8 with static activation scales. */
static void test_quant_methods(void **s)
{
	(void)s;
	if (tu_asan()) /* the sanitizer build runs the same code in test_quant */
		skip();
	const char *common = "--samples 16 --seq-len 256 --chunks 6";
	char a[256];
	snprintf(a, sizeof(a), "--spec int3g128 %s", common);
	json_t *rtn = quant_json(a);
	snprintf(a, sizeof(a), "--spec gptq:int3g128 %s", common);
	json_t *gptq = quant_json(a);
	snprintf(a, sizeof(a), "--spec awq:int3g128 %s", common);
	json_t *awq = quant_json(a);
	snprintf(a, sizeof(a), "--spec int8c,act=8,act_tensor %s", common);
	json_t *naive = quant_json(a);
	snprintf(a, sizeof(a), "--spec smoothquant:int8c,act=8,act_tensor %s", common);
	json_t *sq = quant_json(a);
	print_message("int3 g128: base %.2f rtn %.2f gptq %.2f awq %.2f; w8a8 static: naive %.2f smoothquant %.2f\n",
		      jnum(rtn, "ppl_base"), jnum(rtn, "ppl"), jnum(gptq, "ppl"), jnum(awq, "ppl"),
		      jnum(naive, "ppl"), jnum(sq, "ppl"));
	assert_true(jnum(gptq, "ppl") < jnum(rtn, "ppl"));
	assert_true(jnum(awq, "ppl") < jnum(rtn, "ppl"));
	assert_true(jnum(sq, "ppl") < jnum(naive, "ppl"));
	assert_true(jnum(rtn, "ppl") > jnum(rtn, "ppl_base"));
	/* same evaluation text and chunks: the same unquantized figure */
	assert_true(jnum(rtn, "ppl_base") == jnum(gptq, "ppl_base"));
	assert_true(fabs(jnum(rtn, "bpw_quantized") - (3 + 32.0 / 128)) < 1e-9);
	json_decref(rtn);
	json_decref(gptq);
	json_decref(awq);
	json_decref(naive);
	json_decref(sq);
}

/* --seeds: each seed's run equals the single run with --seed (the same
 * windows, the same quantizer), and the summary is the median, range and
 * sample sd of those runs, computed here from the single runs */
static void test_quant_seeds(void **s)
{
	(void)s;
	const char *common = "--spec gptq:int3g128 --samples 4 --seq-len 128 --chunks 2 --kld";
	char a[256];
	snprintf(a, sizeof(a), "%s --seeds 0-2", common);
	json_t *all = quant_json(a);
	double ppl[3], kld[3];
	for (int k = 0; k < 3; k++) {
		snprintf(a, sizeof(a), "%s --seed %d", common, k);
		json_t *one = quant_json(a);
		json_t *r = json_array_get(json_object_get(all, "runs"), (size_t)k);
		assert_non_null(r);
		assert_int_equal(json_integer_value(json_object_get(r, "seed")), k);
		ppl[k] = jnum(one, "ppl");
		kld[k] = jnum(one, "kld_mean");
		assert_true(jnum(r, "ppl") == ppl[k]);
		assert_true(jnum(r, "kld_mean") == kld[k]);
		assert_true(jnum(all, "ppl_base") == jnum(one, "ppl_base"));
		assert_true(jnum(all, "bytes") == jnum(one, "bytes"));
		json_decref(one);
	}
	/* the seeds draw different windows, so the models differ */
	assert_true(ppl[0] != ppl[1] || ppl[1] != ppl[2]);
	double lo = ppl[0], hi = ppl[0], mean = (ppl[0] + ppl[1] + ppl[2]) / 3, ss = 0;
	for (int k = 0; k < 3; k++) {
		lo = ppl[k] < lo ? ppl[k] : lo;
		hi = ppl[k] > hi ? ppl[k] : hi;
		ss += (ppl[k] - mean) * (ppl[k] - mean);
	}
	const double med = ppl[0] + ppl[1] + ppl[2] - lo - hi;
	assert_true(fabs(jnum(all, "ppl") - med) < 1e-9 * med);
	assert_true(fabs(jnum(all, "ppl_min") - lo) < 1e-9 * lo);
	assert_true(fabs(jnum(all, "ppl_max") - hi) < 1e-9 * hi);
	assert_true(fabs(jnum(all, "ppl_sd") - sqrt(ss / 2)) < 1e-9 * hi);
	const double kmed = kld[0] + kld[1] + kld[2] - fmin(kld[0], fmin(kld[1], kld[2])) -
			    fmax(kld[0], fmax(kld[1], kld[2]));
	assert_true(fabs(jnum(all, "kld_mean") - kmed) < 1e-9 * kmed);
	json_decref(all);
	/* a plan without calibration, and a bad list, are usage errors */
	char cmd[4096], *err;
	snprintf(cmd, sizeof(cmd), "%s quant -m %s --bits 3 --seeds 0-3", bin,
		 tu_shared("models/debdoc-19m-f16.gguf"));
	assert_int_equal(run(cmd, NULL), 1);
	err = last_stderr();
	assert_non_null(strstr(err, "uses no calibration data"));
	free(err);
	snprintf(cmd, sizeof(cmd), "%s quant --spec gptq:int3g128 --seeds 3-1", bin);
	assert_int_equal(run(cmd, NULL), 1);
	err = last_stderr();
	assert_non_null(strstr(err, "--seeds '3-1'"));
	free(err);
}

static void test_quant_cli(void **s)
{
	(void)s;
	char cmd[4096], *out, *err;
	/* dry run: the per-tensor plan and totals */
	snprintf(cmd, sizeof(cmd), "%s quant -m %s --bits 4 --group 32 --sym --dry-run", bin,
		 tu_shared("models/debdoc-19m-f16.gguf"));
	assert_int_equal(run(cmd, &out), 0);
	assert_non_null(strstr(out, "blk.7.ffn_down.weight"));
	assert_non_null(strstr(out, "int4g32sym"));
	assert_non_null(strstr(out, "4.500")); /* 4 bits + fp16 scale per 32 */
	free(out);
	/* bad specs are usage errors naming the field */
	snprintf(cmd, sizeof(cmd), "%s quant --bits 4 --group 100 --dry-run", bin);
	assert_int_equal(run(cmd, NULL), 1);
	err = last_stderr();
	assert_non_null(strstr(err, "group 100 does not divide the row length 384"));
	free(err);
	snprintf(cmd, sizeof(cmd), "%s quant --bits 9 --dry-run", bin);
	assert_int_equal(run(cmd, NULL), 1);
	snprintf(cmd, sizeof(cmd), "%s quant --method frob --dry-run", bin);
	assert_int_equal(run(cmd, NULL), 1);
	err = last_stderr();
	assert_non_null(strstr(err, "unknown method 'frob'"));
	free(err);
	snprintf(cmd, sizeof(cmd), "%s quant --spec gptq:int4g128 --samples 4 --seq-len 64 -f %s/missing.txt",
		 bin, tu_tmpdir());
	assert_int_equal(run(cmd, NULL), 2);
	/* ppl with plan flags = quant on that text */
	snprintf(cmd, sizeof(cmd), "%s ppl -m %s -f %s --bits 8 --group 128 --chunks 2 --kld --json", bin,
		 tu_shared("models/debdoc-19m-f16.gguf"), tu_shared("data/wikitext-2-test.txt"));
	assert_int_equal(run(cmd, &out), 0);
	json_error_t je;
	json_t *j = json_loads(out, 0, &je);
	assert_non_null(j);
	assert_true(jnum(j, "kld_mean") > 0 && jnum(j, "kld_mean") < 0.01);
	assert_true(jnum(j, "same_top_pct") > 90);
	assert_int_equal((int)jnum(j, "chunks"), 2);
	json_decref(j);
	free(out);
}

/* Lua policies and recipes from the command line; the sensitivity scan */
static void test_policy_cli(void **s)
{
	(void)s;
	char cmd[4096], *out, *out2, *err;
	const char *model = tu_shared("models/debdoc-19m-f16.gguf");
	char recipe[512];
	snprintf(recipe, sizeof(recipe), "%s", tu_tmppath("recipe.json"));
	snprintf(cmd, sizeof(cmd),
		 "%s quant -m %s --policy lua/policies/uniform.lua --set spec=int4g32sym --dry-run "
		 "--save-recipe %s", bin, model, recipe);
	assert_int_equal(run(cmd, &out), 0);
	assert_non_null(strstr(out, "blk.7.ffn_down.weight"));
	assert_non_null(strstr(out, "int4g32sym"));
	json_error_t je;
	json_t *r = json_load_file(recipe, 0, &je);
	assert_non_null(r);
	assert_int_equal(json_array_size(json_object_get(r, "tensors")), 56);
	assert_non_null(strstr(json_string_value(json_object_get(r, "source")), "--set spec=int4g32sym"));
	json_decref(r);
	/* the recipe gives the same plan */
	snprintf(cmd, sizeof(cmd), "%s quant -m %s --recipe %s --dry-run", bin, model, recipe);
	assert_int_equal(run(cmd, &out2), 0);
	assert_string_equal(out, out2);
	free(out);
	free(out2);
	/* a policy chooses the specs: uniform flags with it are a usage error */
	snprintf(cmd, sizeof(cmd), "%s quant -m %s --policy lua/policies/uniform.lua --spec q4_0 --dry-run",
		 bin, model);
	assert_int_equal(run(cmd, NULL), 1);
	err = last_stderr();
	assert_non_null(strstr(err, "--policy chooses every tensor's spec"));
	free(err);
	/* a syntax error names the file and line */
	char bad[512];
	snprintf(bad, sizeof(bad), "%s", tu_tmppath("bad.lua"));
	const char *src = "-- a policy\nreturn function(t) return = 4 end\n";
	tu_write_file(bad, src, strlen(src));
	snprintf(cmd, sizeof(cmd), "%s quant -m %s --policy %s --dry-run", bin, model, bad);
	assert_int_equal(run(cmd, NULL), 1);
	err = last_stderr();
	assert_non_null(strstr(err, "bad.lua:2:"));
	free(err);
	/* ppl with a policy: RTN only, quick; the quantized model is worse than the base */
	snprintf(cmd, sizeof(cmd),
		 "%s ppl -m %s -f %s --policy lua/policies/keep_ends.lua --set lo=int3g128 --set hi=q8_0 "
		 "--chunks 1 --json", bin, model, tu_shared("data/wikitext-2-test.txt"));
	assert_int_equal(run(cmd, &out), 0);
	json_t *j = json_loads(out, 0, &je);
	assert_non_null(j);
	assert_true(jnum(j, "ppl") > jnum(j, "ppl_base"));
	json_decref(j);
	free(out);
	/* sensitivity of one tensor: 2 bits hurt more than 8 */
	snprintf(cmd, sizeof(cmd),
		 "%s sensitivity -m %s -f %s --include '^blk\\.0\\.attn_v' --candidates q8_0,int2g128 "
		 "--chunks 1 --no-cache --json", bin, model, tu_shared("data/wikitext-2-test.txt"));
	assert_int_equal(run(cmd, &out), 0);
	j = json_loads(out, 0, &je);
	assert_non_null(j);
	json_t *ts = json_object_get(j, "tensors");
	assert_int_equal(json_array_size(ts), 1);
	json_t *res = json_object_get(json_array_get(ts, 0), "results");
	assert_int_equal(json_array_size(res), 2);
	assert_true(jnum(json_array_get(res, 1), "kld") > 10 * jnum(json_array_get(res, 0), "kld"));
	assert_true(jnum(j, "base_ppl") > 1);
	json_decref(j);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_info_json),
		cmocka_unit_test(test_logits_gguf),
		cmocka_unit_test(test_logits_hf),
		cmocka_unit_test(test_generate_greedy),
		cmocka_unit_test(test_quant_cli),
		cmocka_unit_test(test_policy_cli),
		cmocka_unit_test(test_quant_methods),
		cmocka_unit_test(test_quant_seeds),
		cmocka_unit_test(test_ppl_gguf),
		cmocka_unit_test(test_ppl_hf),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
