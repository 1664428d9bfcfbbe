/* test_shell.c - qscope shell in batch mode (--script and a pipe): its
 * answers against the reference greedy continuation and against qscope
 * quant on the recipe it saves. */
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

#include "testutil.h"

static const char *bin;

static int setup(void **state)
{
	(void)state;
	bin = tu_bin();
	setenv("QSCOPE_STATE", tu_tmppath("state"), 1);
	return 0;
}

static double after(const char *s, const char *key)
{
	const char *p = strstr(s, key);
	if (!p)
		fail_msg("no '%s' in:\n%s", key, s);
	return strtod(p + strlen(key), NULL);
}

static void test_script(void **s)
{
	(void)s;
	char script[512], recipe[512], cmd[2048], *out = NULL;
	snprintf(script, sizeof(script), "%s", tu_tmppath("s.txt"));
	snprintf(recipe, sizeof(recipe), "%s", tu_tmppath("plan.json"));
	char body[1024];
	snprintf(body, sizeof(body),
		 "# int3 on ffn_down, q8_0 on block 0\n"
		 "plan ffn_down int3g128\n"
		 "plan blk\\.0\\. q8_0\n"
		 "kld 2\n"
		 "chat The quick brown fox\n"
		 "save %s\n", recipe);
	tu_write_file(script, body, strlen(body));
	snprintf(cmd, sizeof(cmd), "%s shell -m %s --script %s", bin,
		 tu_shared("models/debdoc-19m-f16.gguf"), script);
	assert_int_equal(tu_run(cmd, tu_tmppath("sh.err"), &out), 0);
	assert_non_null(strstr(out, "8 tensors set to int3g128; 8 in the plan"));
	assert_non_null(strstr(out, "7 tensors set to q8_0; 14 in the plan"));
	/* the original's greedy answer is the reference's, token for token */
	json_error_t je;
	json_t *refs = json_load_file(tu_shared("refs/debdoc-19m.json"), 0, &je);
	assert_non_null(refs);
	const char *want = json_string_value(json_object_get(
		json_object_get(json_object_get(refs, "greedy"), "The quick brown fox"), "text"));
	assert_non_null(want);
	if (!strstr(out, want))
		fail_msg("reference greedy text not in the shell's answer:\n%s", out);
	json_decref(refs);
	double ppl = after(out, "perplexity "), kld = after(out, "KLD mean ");
	free(out);
	/* the saved recipe, evaluated by qscope quant, gives the same figures */
	snprintf(cmd, sizeof(cmd), "%s quant -m %s --recipe %s --chunks 2 --kld --json", bin,
		 tu_shared("models/debdoc-19m-f16.gguf"), recipe);
	assert_int_equal(tu_run(cmd, tu_tmppath("q.err"), &out), 0);
	json_t *j = json_loads(out, 0, &je);
	assert_non_null(j);
	double qppl = json_number_value(json_object_get(j, "ppl"));
	double qkld = json_number_value(json_object_get(j, "kld_mean"));
	print_message("shell: ppl %.4f kld %.6f; quant --recipe: %.4f %.6f\n", ppl, kld, qppl, qkld);
	assert_true(fabs(ppl - qppl) < 6e-5 && fabs(kld - qkld) < 6e-7);
	assert_int_equal((int)json_integer_value(json_object_get(j, "tensors")), 14);
	json_decref(j);
	free(out);
}

/* chat with a template: the original's greedy answer is what `qscope
 * generate --template llama2 --temp 0` continues the same prompt with */
static void test_chat_template(void **s)
{
	(void)s;
	char cmd[2048], *out = NULL, *gen = NULL;
	snprintf(cmd, sizeof(cmd), "printf 'chat What is dpkg?\\n' | %s shell -m %s --template llama2", bin,
		 tu_shared("models/debdoc-19m-f16.gguf"));
	assert_int_equal(tu_run(cmd, tu_tmppath("sh.err"), &out), 0);
	snprintf(cmd, sizeof(cmd), "%s generate -m %s -p 'What is dpkg?' --template llama2 --temp 0 -n 48",
		 bin, tu_shared("models/debdoc-19m-f16.gguf"));
	assert_int_equal(tu_run(cmd, tu_tmppath("gen.err"), &gen), 0);
	const char *cont = strstr(gen, "[/INST]");
	assert_non_null(cont);
	cont += strlen("[/INST]");
	char want[64];
	snprintf(want, sizeof(want), "%.*s", (int)strcspn(cont + strspn(cont, " \n"), "\n"),
		 cont + strspn(cont, " \n"));
	assert_true(strlen(want) > 10);
	const char *orig = strstr(out, "original:");
	assert_non_null(orig);
	if (!strstr(orig, want))
		fail_msg("'%s' (generate --template llama2) not in the shell's answer:\n%s", want, out);
	free(out);
	free(gen);
	snprintf(cmd, sizeof(cmd), "%s shell -m %s --template vicuna < /dev/null", bin,
		 tu_shared("models/debdoc-19m-f16.gguf"));
	assert_int_equal(tu_run(cmd, tu_tmppath("sh.err"), NULL), 1);
}

static void test_errors_and_pipe(void **s)
{
	(void)s;
	char cmd[2048], *out = NULL, *err;
	/* a failing command names the script line; the batch goes on and exits 2 */
	char script[512];
	snprintf(script, sizeof(script), "%s", tu_tmppath("bad.txt"));
	const char *body = "plan\nbogus\nplan ffn_down int9g128\npolicy /nonexistent.lua\nhelp plan\n";
	tu_write_file(script, body, strlen(body));
	snprintf(cmd, sizeof(cmd), "%s shell --script %s", bin, script);
	assert_int_equal(tu_run(cmd, tu_tmppath("bad.err"), &out), 2);
	err = tu_read_file(tu_tmppath("bad.err"), NULL);
	assert_non_null(strstr(err, "unknown command 'bogus'"));
	assert_non_null(strstr(err, "bad.txt:2: the command failed"));
	assert_non_null(strstr(err, "bad.txt:3: the command failed"));
	assert_non_null(strstr(err, "/nonexistent.lua"));
	assert_non_null(strstr(out, "plan [show | clear | REGEX SPEC]")); /* help ran after them */
	free(err);
	free(out);
	/* commands from a pipe; quit ends the batch */
	snprintf(cmd, sizeof(cmd), "printf 'plan attn_v q4_0\\nquit\\nplan attn_q q8_0\\n' | %s shell", bin);
	assert_int_equal(tu_run(cmd, NULL, &out), 0);
	assert_non_null(strstr(out, "8 tensors set to q4_0"));
	assert_null(strstr(out, "q8_0"));
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_script),
		cmocka_unit_test(test_chat_template),
		cmocka_unit_test(test_errors_and_pipe),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
