/* test_tui.c - the workbench driven headless (QSCOPE_HEADLESS=WxH with a key
 * script, the screen printed as text) and once in a real terminal through
 * tmux. The expected sizes come from the formats' definitions, not from
 * the program's output. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include "../engine/calib.h"
#include "../engine/forward.h"
#include "../engine/model.h"
#include "../kernels/fp16.h"
#include "../kernels/types.h"
#include "testutil.h"

static const char *bin;
static model *m;

static int setup(void **state)
{
	(void)state;
	bin = tu_bin();
	setenv("QSCOPE_STATE", tu_tmppath("state"), 1); /* sessions of these runs stay here */
	qs_error err = { 0 };
	return model_open(tu_shared("models/debdoc-19m-f16.gguf"), NULL, &m, &err);
}

static int teardown(void **state)
{
	(void)state;
	model_free(m);
	return 0;
}

/* the screen after a key script; NULL if the program failed */
static char *screen_opts(const char *size, const char *keys, const char *opts, int *rc)
{
	char cmd[2048], *out = NULL;
	snprintf(cmd, sizeof(cmd), "QSCOPE_HEADLESS=%s %s tui -m %s %s --keys '%s'", size, bin,
		 tu_shared("models/debdoc-19m-f16.gguf"), opts, keys);
	int r = tu_run(cmd, tu_tmppath("tui.err"), &out);
	if (rc)
		*rc = r;
	return out;
}

static char *screen(const char *size, const char *keys, int *rc)
{
	return screen_opts(size, keys, "--no-eval --fresh", rc);
}

/* the line of the screen that mentions name (a copy), or NULL */
static char *line_of(const char *scr, const char *name)
{
	const char *p = strstr(scr, name);
	if (!p)
		return NULL;
	const char *b = p, *e = strchr(p, '\n');
	while (b > scr && b[-1] != '\n')
		b--;
	return strndup(b, e ? (size_t)(e - b) : strlen(b));
}

/* the output of `qscope quant -m MODEL ARGS --json` (malloc'd) */
static char *quant_out(const char *args)
{
	char cmd[2048], *out = NULL;
	snprintf(cmd, sizeof(cmd), "%s quant -m %s %s --json", bin,
		 tu_shared("models/debdoc-19m-f16.gguf"), args);
	assert_int_equal(tu_run(cmd, tu_tmppath("q.err"), &out), 0);
	return out;
}

/* the number after "key": in a JSON text */
static double json_num(const char *json, const char *key)
{
	char want[64];
	snprintf(want, sizeof(want), "\"%s\": ", key);
	const char *p = strstr(json, want);
	if (!p)
		fail_msg("no %s in:\n%s", key, json);
	return strtod(p + strlen(want), NULL);
}

static void test_table(void **s)
{
	(void)s;
	int rc;
	char *scr = screen("80x24", "", &rc);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(scr, "58 tensors"));
	char *l = line_of(scr, "blk.0.attn_k.weight");
	assert_non_null(l);
	assert_non_null(strstr(l, "128x384"));
	assert_non_null(strstr(l, "49152"));
	assert_non_null(strstr(l, "(stored)"));
	assert_non_null(strstr(l, "16.000"));
	free(l);
	/* nothing quantized: the footer shows the model as stored */
	char want[128];
	snprintf(want, sizeof(want), "model %.3f MB", (double)model_bytes(m) / 1e6);
	assert_non_null(strstr(scr, "plan: 0 quantized"));
	assert_non_null(strstr(scr, want));
	/* 24 rows: title, header, 20 table rows, footer, status */
	int lines = 0;
	for (const char *p = scr; *p; p++)
		lines += *p == '\n';
	assert_int_equal(lines, 24);
	free(scr);
}

/* GPTQ int3 g128 on every ffn_down: filter, select all shown, method, bits */
static void test_edit_ffn_down(void **s)
{
	(void)s;
	int rc;
	/* m: (stored) -> rtn int4g128 -> gptq; b x5: 5, 6, 8, 2, 3 */
	char *scr = screen("100x30", "/ffn_down<Enter>Ambbbbb", &rc);
	assert_int_equal(rc, 0);
	int n = 0;
	for (const char *p = scr; (p = strstr(p, "ffn_down.weight")); p++) {
		char *l = line_of(p, "ffn_down.weight");
		assert_non_null(strstr(l, "gptq:int3g128"));
		assert_non_null(strstr(l, "3.250")); /* 3 + 16/128 (scale) + 16/128 (zero) */
		free(l);
		n++;
	}
	assert_int_equal(n, m->cfg.n_layers);
	assert_non_null(strstr(scr, "filter: ffn_down"));
	assert_non_null(strstr(scr, "plan: 8 quantized (3.250 bpw)"));
	/* the model's bytes: each 384 x 1024 ffn_down from FP16 to codes (3 bits)
	 * + an FP16 scale and zero per group of 128 */
	size_t q = 384 * 1024 * 3 / 8 + 384 * (1024 / 128) * 2 * 2;
	size_t total = model_bytes(m) - (size_t)m->cfg.n_layers * (384 * 1024 * 2 - q);
	char want[64];
	snprintf(want, sizeof(want), "model %.3f MB", (double)total / 1e6);
	assert_non_null(strstr(scr, want));
	free(scr);
	/* undo one step: bits back to 2; redo: 3 again */
	scr = screen("100x30", "/ffn_down<Enter>Ambbbbbu", &rc);
	assert_non_null(strstr(scr, "gptq:int2g128"));
	assert_null(strstr(scr, "gptq:int3g128"));
	free(scr);
	scr = screen("100x30", "/ffn_down<Enter>Ambbbbbu<C-r>", &rc);
	assert_non_null(strstr(scr, "gptq:int3g128"));
	free(scr);
}

/* V selects the range from the row Space marked to the cursor */
static void test_range(void **s)
{
	(void)s;
	int rc;
	char *scr = screen("100x30", "<Space>jjjVm", &rc);
	assert_non_null(strstr(scr, "plan: 5 quantized"));
	assert_non_null(strstr(scr, "selected rows 1 to 5") || strstr(scr, "method: 5 tensors"));
	free(scr);
	scr = screen("100x30", "jjV", &rc);
	assert_non_null(strstr(scr, "V: select a first row with Space"));
	free(scr);
}

/* the group cycle skips groups that do not divide the row: a 384-column
 * row takes 32, 64, 128 but not 256 (the first g makes a stored tensor
 * int4g128 and moves on from 128) */
static void test_group_cycle(void **s)
{
	(void)s;
	int rc;
	char *scr = screen("100x30", "jg", &rc); /* blk.0.attn_k: 128 -> (256 skipped) per channel */
	char *l = line_of(scr, "blk.0.attn_k.weight");
	assert_non_null(strstr(l, "int4c"));
	free(l);
	free(scr);
	scr = screen("100x30", "jgggg", &rc); /* -> 32 -> 64 -> 128 */
	l = line_of(scr, "blk.0.attn_k.weight");
	assert_non_null(strstr(l, "int4g128"));
	free(l);
	free(scr);
	/* ffn_down's 1024 columns do take 256 */
	scr = screen("100x30", "jjjjjjg", &rc);
	l = line_of(scr, "blk.0.ffn_down.weight");
	assert_non_null(strstr(l, "int4g256"));
	free(l);
	free(scr);
}

static void test_help_sort_small(void **s)
{
	(void)s;
	int rc;
	char *scr = screen("100x30", "?", &rc);
	assert_non_null(strstr(scr, "cycle the bits"));
	assert_non_null(strstr(scr, "undo / redo"));
	free(scr);
	/* any key leaves the help */
	scr = screen("100x30", "?j", &rc);
	assert_non_null(strstr(scr, "blk.0.attn_q.weight"));
	free(scr);
	/* sort by params: the 8192 x 384 tables first, token_embd (model order) before output */
	scr = screen("100x30", "o<Home>", &rc); /* the cursor follows its row: go to the top */
	assert_non_null(strstr(scr, "sort: params"));
	const char *a = strstr(scr, "token_embd.weight"), *b = strstr(scr, "output.weight"),
		   *c = strstr(scr, "ffn_gate.weight");
	assert_true(a && b && c && a < b && b < c);
	free(scr);
	scr = screen("40x8", "", &rc);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(scr, "terminal too small: 40x8"));
	free(scr);
	/* a bad key name is a usage error */
	scr = screen("80x24", "<Nope>", &rc);
	assert_int_equal(rc, 1);
	free(scr);
	/* the specs the quantizer cannot apply are refused, with the reason */
	scr = screen("100x30", "<End>m", &rc); /* output.weight: rtn int4g128 -> gptq: fine */
	assert_non_null(strstr(scr, "method: 1 tensor"));
	free(scr);
	scr = screen("100x30", "<End>mm", &rc); /* -> awq: refused on the output head */
	assert_non_null(strstr(scr, "0 changed, 1 kept"));
	free(scr);
}

/* The key table is the one source: the help screen shows each of its rows,
 * and docs/TUI.md and README.md hold its Markdown form verbatim (regenerate
 * with `qscope tui --keys-markdown`). */
static void test_keys_table(void **s)
{
	(void)s;
	char cmd[1024], *md = NULL;
	snprintf(cmd, sizeof(cmd), "%s tui --keys-markdown", bin);
	assert_int_equal(tu_run(cmd, tu_tmppath("keys.err"), &md), 0);
	int rows = 0;
	int rc;
	char *scr = screen("140x40", "?", &rc);
	assert_int_equal(rc, 0);
	for (char *line = md, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
		*nl = 0;
		char keys[128], what[256];
		if (sscanf(line, "| %127[^|] | %255[^\n]", keys, what) == 2 && strncmp(keys, "---", 3) &&
		    strcmp(keys, "keys ")) {
			keys[strlen(keys) - 1] = 0;            /* the space before '|' */
			what[strlen(what) - 2] = 0;            /* " |" */
			if (!strstr(scr, keys) || !strstr(scr, what))
				fail_msg("help screen lacks '%s': '%s'\n%s", keys, what, scr);
			rows++;
		}
		*nl = '\n';
	}
	assert_true(rows >= 20);
	const char *docs[] = { "docs/TUI.md", "README.md" };
	for (int i = 0; i < 2; i++) {
		size_t len;
		char *doc = tu_read_file(docs[i], &len);
		if (!doc)
			fail_msg("%s: missing", docs[i]);
		if (!strstr(doc, md))
			fail_msg("%s: its key table differs from `qscope tui --keys-markdown`:\n%s", docs[i], md);
		free(doc);
	}
	free(scr);
	free(md);
}

/* The detail pane: the weights' absmax is the largest |w| of the tensor's
 * FP16 data (computed here), and after `c` the input channels are listed
 * largest first, the first one being the input's absmax. */
static void test_detail(void **s)
{
	(void)s;
	const model_tensor *t = model_find(m, "blk.3.ffn_down.weight");
	assert_int_equal(t->type, KN_TYPE_F16);
	double amax = 0;
	for (size_t i = 0; i < (size_t)(t->ne[0] * t->ne[1]); i++)
		amax = fmax(amax, fabs(kn_fp16_to_fp32_ref(((const kn_fp16 *)t->data)[i])));
	char want[64];
	snprintf(want, sizeof(want), "weights  absmax %.4g ", amax);
	int rc;
	setenv("QSCOPE_CACHE", tu_tmppath("cache"), 1);
	char *scr = screen_opts("100x40", "/blk.3.ffn_down<Enter><Enter>", "--no-eval --fresh", &rc);
	assert_int_equal(rc, 0);
	if (!strstr(scr, want))
		fail_msg("no '%s' in:\n%s", want, scr);
	assert_non_null(strstr(scr, "press c to calibrate"));
	free(scr);
	scr = screen_opts("100x40", "c/blk.3.ffn_down<Enter><Enter>", "--no-eval --fresh --stats-samples 4", &rc);
	assert_int_equal(rc, 0);
	const char *in = strstr(scr, "inputs   absmax ");
	assert_non_null(in);
	double iamax = strtod(in + 16, NULL);
	const char *ch = strstr(in, "  ch ");
	assert_non_null(ch);
	int chn;
	double chmax;
	assert_int_equal(sscanf(ch, "  ch %d %lf", &chn, &chmax), 2);
	assert_true(chn >= 0 && chn < 1024);
	assert_true(fabs(chmax - iamax) <= 1e-3 * iamax + 1e-3);
	int bars = 0;
	for (const char *p = ch; (p = strstr(p, "  ch ")); p++)
		bars++;
	assert_true(bars >= 10);
	free(scr);
	unsetenv("QSCOPE_CACHE");
}

/* The policy picker lists the bundled policies; applying one replaces the
 * plan (undo brings the old one back); a failing policy shows its error in
 * place with file and line. */
static void test_policy_picker(void **s)
{
	(void)s;
	int rc;
	char *scr = screen("100x30", "p", &rc);
	assert_non_null(strstr(scr, "lua/policies/keep_ends.lua"));
	assert_non_null(strstr(scr, "lua/policies/uniform.lua"));
	free(scr);
	/* uniform.lua (the last in sorted order): int4g128 on the 56 block linears */
	scr = screen("100x30", "p<End>jjjj<Enter>", &rc);
	assert_non_null(strstr(scr, "policy lua/policies/uniform.lua: 56 tensors"));
	assert_non_null(strstr(scr, "plan: 56 quantized (4.250 bpw)"));
	free(scr);
	scr = screen("100x30", "pjjjj<Enter>u", &rc);
	assert_non_null(strstr(scr, "plan: 0 quantized"));
	free(scr);
	/* any file: o types its path */
	char pol[512], keys[700];
	snprintf(pol, sizeof(pol), "%s", tu_tmppath("v8.lua"));
	const char *src = "return function(t) if t.kind == 'attn_v' then return 'q8_0' end end\n";
	tu_write_file(pol, src, strlen(src));
	snprintf(keys, sizeof(keys), "po%s<Enter>", pol);
	scr = screen("100x30", keys, &rc);
	assert_non_null(strstr(scr, "plan: 8 quantized (8.500 bpw)")); /* q8_0: 8 + 16/32 */
	free(scr);
	/* outlier_aware.lua reads t.stats.input, which is nil before calibration */
	scr = screen("100x30", "pjjj<Enter>", &rc);
	assert_non_null(strstr(scr, "error: outlier_aware.lua:"));
	assert_non_null(strstr(scr, "press Esc, then c"));
	free(scr);
}

/* E: the full evaluation's figures are those of qscope quant on the same
 * plan and chunks; r lists them */
static void test_full_eval(void **s)
{
	(void)s;
	int rc;
	char *scr = screen_opts("100x30", "/ffn_down<Enter>AfEr", "--no-eval --fresh --full-chunks 3", &rc);
	assert_int_equal(rc, 0);
	const char *h = strstr(scr, "  1       3 ");
	assert_non_null(h);
	double bpw, ppl, base, kld;
	assert_int_equal(sscanf(h, "  1 3 %lf %lf %lf %lf", &bpw, &ppl, &base, &kld), 4);
	assert_non_null(strstr(h, "8 x q4_0"));
	free(scr);
	char *out = quant_out("--spec q4_0 --include ffn_down --chunks 3 --kld");
	double qppl = json_num(out, "ppl"), qkld = json_num(out, "kld_mean");
	free(out);
	assert_true(fabs(ppl - qppl) < 6e-4 && fabs(kld - qkld) < 6e-6);
	assert_true(fabs(bpw - 4.5) < 1e-9);
}

/* Chat: the original column is what `qscope generate` samples with the same
 * seed and settings; with nothing quantized both columns agree token for
 * token; readline's history recalls the prompt; Esc on an empty line goes
 * back to the table. */
static void test_chat(void **s)
{
	(void)s;
	int rc;
	char *scr = screen("100x24", "CThe quick brown fox<Enter>", &rc);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(scr, "quantized chose the same 64 tokens as the original"));
	char cmd[2048], *out = NULL;
	snprintf(cmd, sizeof(cmd), "%s generate -m %s -p 'The quick brown fox' -n 64 --temp 0.8 "
		 "--top-k 40 --top-p 0.95 -s 42", bin, tu_shared("models/debdoc-19m-f16.gguf"));
	assert_int_equal(tu_run(cmd, tu_tmppath("gen.err"), &out), 0);
	/* the first line of the continuation, as wide as the left column */
	const char *cont = out + strlen("The quick brown fox");
	char want[48];
	size_t k = 0;
	while (k < 40 && cont[k] && cont[k] != '\n') {
		want[k] = cont[k];
		k++;
	}
	want[k] = 0;
	if (!strstr(scr, want))
		fail_msg("'%s' (qscope generate) not in the chat:\n%s", want, scr);
	free(out);
	free(scr);
	/* a quantized plan: the header names it and the divergence is counted */
	scr = screen("100x24", "/ffn<Enter>AfCThe quick brown fox<Enter>", &rc);
	assert_non_null(strstr(scr, "quantized (24 x q4_0)"));
	assert_non_null(strstr(scr, "quantized differs at "));
	free(scr);
	/* history, and back to the table */
	scr = screen("100x24", "CHello<Enter>x<Esc><Up>", &rc);
	assert_non_null(strstr(scr, "\n> Hello"));
	free(scr);
	scr = screen("100x24", "CHello<Enter><Esc>", &rc);
	assert_non_null(strstr(scr, "58 tensors"));
	free(scr);
	/* a chat template: the header names it, and the original's answer is
	 * `qscope generate --template llama2`'s */
	scr = screen_opts("100x24", "CWhat is dpkg?<Enter>", "--no-eval --fresh --template llama2", &rc);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(scr, "chat: llama2 template (--template)"));
	snprintf(cmd, sizeof(cmd), "%s generate -m %s -p 'What is dpkg?' --template llama2 -n 64 "
		 "--temp 0.8 --top-k 40 --top-p 0.95 -s 42", bin, tu_shared("models/debdoc-19m-f16.gguf"));
	assert_int_equal(tu_run(cmd, tu_tmppath("gen.err"), &out), 0);
	cont = strstr(out, "[/INST]");
	assert_non_null(cont);
	cont += strlen("[/INST]");
	cont += strspn(cont, " \n");
	k = 0;
	while (k < 40 && cont[k] && cont[k] != '\n') {
		want[k] = cont[k];
		k++;
	}
	want[k] = 0;
	assert_true(k > 3);
	if (!strstr(scr, want))
		fail_msg("'%s' (qscope generate --template llama2) not in the chat:\n%s", want, scr);
	free(out);
	free(scr);
	/* Ctrl-C quits from inside the chat */
	scr = screen("100x24", "CHi<C-c>never typed", &rc);
	assert_int_equal(rc, 0);
	assert_null(strstr(scr, "never typed"));
	free(scr);
}

/* The demo, headless: seven steps, and the methods do what the narration
 * says on this model: GPTQ and AWQ at 3 bits beat RTN at 3 bits, the
 * 4.5-bit budget policy beats all three. */
static void test_demo(void **s)
{
	(void)s;
	char cmd[2048], *out = NULL;
	snprintf(cmd, sizeof(cmd), "QSCOPE_HEADLESS=100x30 QSCOPE_CACHE=%s %s demo", tu_tmppath("cache"), bin);
	assert_int_equal(tu_run(cmd, tu_tmppath("demo.err"), &out), 0);
	double ppl[8] = { 0 };
	for (int k = 1; k <= 7; k++) {
		char head[64];
		snprintf(head, sizeof(head), "==== step %d of 7 ====", k);
		const char *p = strstr(out, head);
		if (!p)
			fail_msg("no %s in:\n%s", head, out);
		const char *e = strstr(p, "\neval 8 chunks: FP ");
		const char *next = strstr(p + 1, "==== step ");
		if (e && (!next || e < next))
			sscanf(e, "\neval 8 chunks: FP %*f now %lf", &ppl[k]);
	}
	print_message("demo: rtn int3 %.2f, gptq %.2f, awq %.2f, budget %.2f\n", ppl[2], ppl[4], ppl[5],
		      ppl[6]);
	assert_true(ppl[2] > 0 && ppl[4] > 0 && ppl[5] > 0 && ppl[6] > 0);
	assert_true(ppl[4] < ppl[2] && ppl[5] < ppl[2] && ppl[6] < ppl[4] && ppl[6] < ppl[5]);
	/* the budget held: step 6's footer */
	const char *f = strstr(strstr(out, "==== step 6 of 7 ===="), "\nplan: 56 quantized (");
	assert_non_null(f);
	double bpw = strtod(f + strlen("\nplan: 56 quantized ("), NULL);
	assert_true(bpw > 4.0 && bpw <= 4.5);
	assert_non_null(strstr(out, "quantized ("));
	free(out);
}

/* The plan survives a quit: the next start restores it (the file is
 * written after every change), --fresh starts empty. */
static void test_session(void **s)
{
	(void)s;
	int rc;
	char *scr = screen_opts("100x30", "/ffn_down<Enter>Af", "--no-eval", &rc);
	assert_non_null(strstr(scr, "plan: 8 quantized (4.500 bpw)"));
	free(scr);
	scr = screen_opts("100x30", "", "--no-eval", &rc);
	assert_non_null(strstr(scr, "plan: 8 quantized (4.500 bpw)"));
	assert_non_null(strstr(scr, "last session's plan restored: 8 tensors"));
	free(scr);
	scr = screen_opts("100x30", "", "--no-eval --fresh", &rc);
	assert_non_null(strstr(scr, "plan: 0 quantized"));
	free(scr);
	/* a damaged session file: a warning, an empty plan, no failure */
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "for f in %s/session-*.json; do echo '{\"qscope_recipe\": 1, \"tensors\": 5}' > $f; done",
		 getenv("QSCOPE_STATE"));
	assert_int_equal(tu_run(cmd, NULL, NULL), 0);
	scr = screen_opts("100x30", "", "--no-eval", &rc);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(scr, "plan: 0 quantized"));
	free(scr);
}

/* The w.err column after an evaluation: q4_0 on blk.0.attn_q, against the
 * format's definition computed here (ggml's Q4_0: blocks of 32, d = the
 * value of largest magnitude / -8, codes round(x/d + 8) clamped to 0..15,
 * d stored as FP16). */
/* Q4_0 of tensor t by ggml's definition (see above): the dequantized
 * weights, malloc'd (rows x cols) */
static float *q4_0_ref(const model_tensor *t)
{
	size_t n = (size_t)(t->ne[0] * t->ne[1]);
	float *y = malloc(sizeof(float) * n);
	for (size_t b0 = 0; b0 < n; b0 += 32) {
		float x[32], amax = 0, mx = 0;
		for (int j = 0; j < 32; j++) {
			x[j] = kn_fp16_to_fp32_ref(((const kn_fp16 *)t->data)[b0 + j]);
			if (fabsf(x[j]) > amax) {
				amax = fabsf(x[j]);
				mx = x[j];
			}
		}
		float d = mx / -8, id = d ? 1.0f / d : 0;
		float d16 = kn_fp16_to_fp32_ref(kn_fp32_to_fp16_ref(d));
		for (int j = 0; j < 32; j++) {
			int q = (int)(x[j] * id + 8.5f);
			q = q > 15 ? 15 : q;
			y[b0 + j] = (float)(q - 8) * d16;
		}
	}
	return y;
}

static float w_at(const model_tensor *t, size_t i)
{
	return kn_fp16_to_fp32_ref(((const kn_fp16 *)t->data)[i]);
}

static void test_weight_error(void **s)
{
	(void)s;
	const model_tensor *t = model_find(m, "blk.0.attn_q.weight");
	size_t n = (size_t)(t->ne[0] * t->ne[1]);
	float *y = q4_0_ref(t);
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		double x = w_at(t, i);
		num += (x - y[i]) * (x - y[i]);
		den += x * x;
	}
	free(y);
	char want[32];
	snprintf(want, sizeof(want), "%6.4f", sqrt(num / den));
	int rc;
	char *scr = screen_opts("110x12", "f", "--fresh --chunks 1", &rc);
	char *l = line_of(scr, "blk.0.attn_q.weight");
	assert_non_null(l);
	if (!strstr(l, "q4_0") || !strstr(l, want))
		fail_msg("w.err %s (computed here) not in: %s", want, l);
	free(l);
	free(scr);
}

/* The live evaluation after an edit equals `qscope quant` on the same plan
 * and chunks (eval_compare from scratch, not the workbench's cache). */
static void test_live_eval(void **s)
{
	(void)s;
	int rc;
	char *scr = screen_opts("100x30", "/ffn_down<Enter>Af", "--fresh --chunks 4", &rc);
	assert_int_equal(rc, 0);
	const char *e = strstr(scr, "eval 4 chunks: FP ");
	assert_non_null(e);
	double fp, now, kld;
	assert_int_equal(sscanf(e, "eval 4 chunks: FP %lf now %lf (%*f) KLD %lf", &fp, &now, &kld), 3);
	free(scr);
	char *out = quant_out("--spec q4_0 --include ffn_down --chunks 4 --kld");
	double qfp = json_num(out, "ppl_base"), qnow = json_num(out, "ppl"), qkld = json_num(out, "kld_mean");
	free(out);
	print_message("workbench: FP %.2f now %.2f KLD %.4f; quant: %.4f %.4f %.5f\n", fp, now, kld,
		      qfp, qnow, qkld);
	assert_true(fabs(fp - qfp) < 0.006 && fabs(now - qnow) < 0.006 && fabs(kld - qkld) < 6e-5);
	assert_true(now != fp);
}

/* The mouse, through the key script's <Click:ROW> and wheel names (the
 * same codes the curses loop makes of mouse events): a click moves the
 * cursor, a second click on it selects, the wheel moves three rows, a
 * click off the table does nothing. */
static void test_mouse(void **s)
{
	(void)s;
	int rc;
	/* rows 2.. are the table: row 7 is the sixth tensor, blk.0.ffn_up */
	char *scr = screen("100x30", "<Click:0><Click:7>f", &rc);
	assert_int_equal(rc, 0);
	char *l = line_of(scr, "blk.0.ffn_up.weight");
	assert_non_null(l);
	assert_non_null(strstr(l, "q4_0"));
	free(l);
	assert_non_null(strstr(scr, "plan: 1 quantized"));
	free(scr);
	scr = screen("100x30", "<Click:5><Click:5>", &rc);
	assert_non_null(strstr(scr, "*blk.0.attn_output.weight"));
	assert_non_null(strstr(scr, "selected 1"));
	free(scr);
	scr = screen("100x30", "<WheelDown><WheelDown><WheelUp>f", &rc);
	l = line_of(scr, "blk.0.attn_output.weight"); /* 0 + 3 + 3 - 3 */
	assert_non_null(l);
	assert_non_null(strstr(l, "q4_0"));
	free(l);
	free(scr);
}

/* After calibration (c) the o.err column and the detail pane of a Q4_0
 * tensor: ||(W - Q) X^T|| / ||W X^T|| over the inputs of blk.0's q/k/v on
 * the quick evaluation's 16 calibration windows (seed 0, BOS first),
 * captured from a forward pass here; Q from ggml's Q4_0 definition; the
 * largest |W - Q| and the share of weights rounded to 0 from the same Q. */
static void test_output_error(void **s)
{
	(void)s;
	if (tu_asan())
		skip(); /* 16 x 512 tokens of calibration: minutes under the sanitizer */
	const model_tensor *t = model_find(m, "blk.0.attn_q.weight");
	const int R = (int)t->ne[1], C = (int)t->ne[0];
	size_t len;
	char *text = tu_read_file(tu_shared("data/debdoc-calib.txt"), &len);
	assert_non_null(text);
	calib_opts o;
	calib_opts_default(&o);
	o.n_samples = 16;
	o.seq_len = 512;
	int *toks;
	qs_error err = { 0 };
	assert_int_equal(calib_sample_text(m, text, len, &o, &toks, NULL, &err), 0);
	free(text);
	struct {
		float *x;
		int rows, cols;
	} c = { 0 };
	c.x = tu_capture_site(m, toks, 16, 512, 0, FWD_SITE_QKV, &c.rows, &c.cols);
	free(toks);
	assert_non_null(c.x);
	assert_int_equal(c.rows, 16 * 512);
	float *w = malloc(sizeof(float) * R * C), *q = q4_0_ref(t), *d = malloc(sizeof(float) * R * C);
	double mx = 0;
	size_t nz = 0, to0 = 0;
	for (int i = 0; i < R * C; i++) {
		w[i] = w_at(t, (size_t)i);
		d[i] = w[i] - q[i];
		mx = fmax(mx, fabs((double)d[i]));
		nz += w[i] != 0;
		to0 += w[i] != 0 && q[i] == 0;
	}
	float *y = malloc(sizeof(float) * (size_t)c.rows * R);
	double num = 0, den = 0;
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c.rows, R, C, 1, c.x, C, w, C, 0, y, R);
	for (size_t i = 0; i < (size_t)c.rows * R; i++)
		den += (double)y[i] * y[i];
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c.rows, R, C, 1, c.x, C, d, C, 0, y, R);
	for (size_t i = 0; i < (size_t)c.rows * R; i++)
		num += (double)y[i] * y[i];
	double want = sqrt(num / den);
	free(w);
	free(q);
	free(d);
	free(y);
	free(c.x);
	setenv("QSCOPE_CACHE", tu_tmppath("cache"), 1);
	int rc;
	char *scr = screen_opts("120x40", "f<Enter>c", "--fresh --chunks 1", &rc);
	assert_int_equal(rc, 0);
	char *l = line_of(scr, "blk.0.attn_q.weight");
	assert_non_null(l);
	double werr, oerr;
	const char *p = strstr(l, "4.500");
	assert_non_null(p);
	assert_int_equal(sscanf(p + 5, "%*f %lf %lf", &werr, &oerr), 2);
	print_message("o.err %.4f on screen, %.4f computed here\n", oerr, want);
	assert_true(fabs(oerr - want) <= 1.5e-4);
	assert_true(oerr < werr); /* the inputs' spread hides part of the weight error */
	free(l);
	/* the detail pane: before / after histograms and the numbers behind them */
	char want_max[32], want_zero[32];
	snprintf(want_max, sizeof(want_max), "max |w-Q(w)| %.3g ", mx);
	snprintf(want_zero, sizeof(want_zero), "zeroed %.1f%%", 100.0 * (double)to0 / (double)nz);
	assert_non_null(strstr(scr, " before "));
	assert_non_null(strstr(scr, " after "));
	assert_non_null(strstr(scr, " error "));
	if (!strstr(scr, want_max) || !strstr(scr, want_zero))
		fail_msg("'%s' and '%s' (computed here) not both on the screen:\n%s", want_max, want_zero, scr);
	free(scr);
}

/* After the key script, blk.7.ffn_down shows `row_has`, the status line
 * says the run started at block 7 from the previous plan's states, and
 * the perplexity is what `qscope quant QUANT_ARGS` gets from scratch. */
static void check_incremental(const char *keys, const char *row_has, const char *quant_args)
{
	int rc;
	char *scr = screen_opts("120x40", keys, "--fresh --chunks 2", &rc);
	assert_int_equal(rc, 0);
	char *l = line_of(scr, "blk.7.ffn_down.weight");
	assert_non_null(l);
	if (!strstr(l, row_has))
		fail_msg("'%s' not in: %s", row_has, l);
	free(l);
	const char *e = strstr(scr, "eval 2 chunks: FP ");
	assert_non_null(e);
	double now;
	assert_int_equal(sscanf(e, "eval 2 chunks: FP %*f now %lf", &now), 1);
	if (!strstr(e, "from blk 7 (incr.)"))
		fail_msg("not an incremental run from block 7: %.*s", (int)strcspn(e, "\n"), e);
	free(scr);
	char *out = quant_out(quant_args);
	double q = json_num(out, "ppl");
	free(out);
	print_message("%s: workbench %.2f, quant from scratch %.4f\n", keys, now, q);
	assert_true(fabs(now - q) < 0.006);
}

/* With every block linear quantized, changing the last one re-runs only
 * the last block. */
static void test_incremental_eval(void **s)
{
	(void)s;
	check_incremental("/blk<Enter>Af<Esc><End>x", "(stored)",
			  "--spec q4_0 --include '^blk' --exclude 'blk\\.7\\.ffn_down' --chunks 2");
}

/* A GPTQ plan edited in its last block: blocks 0-6 are copied from the
 * previous quantization (not quantized again), on the same 16 windows. */
static void test_incremental_gptq(void **s)
{
	(void)s;
	char recipe[600], body[2048], args[800];
	snprintf(recipe, sizeof(recipe), "%s", tu_tmppath("ffn-down.json"));
	int n = snprintf(body, sizeof(body), "{\"qscope_recipe\": 1, \"tensors\": [");
	for (int b = 0; b < 8; b++)
		n += snprintf(body + n, sizeof(body) - (size_t)n, "%s{\"name\": \"blk.%d.ffn_down.weight\", \"spec\": \"%s\"}",
			      b ? ", " : "", b, b < 7 ? "gptq:int3g128" : "gptq:int4g128");
	snprintf(body + n, sizeof(body) - (size_t)n, "]}");
	assert_int_equal(tu_write_file(recipe, body, strlen(body)), 0);
	snprintf(args, sizeof(args), "--recipe %s --samples 16 --chunks 2", recipe);
	check_incremental("/ffn_down<Enter>Ambbbbb<Esc><End>b", "gptq:int4g128", args);
}

/* a real terminal: tmux runs the workbench, sends keys, reads the pane;
 * the evaluation runs on its own thread there */
/* shell text that waits (at most `secs`) until the pane shows `pattern`
 * (a grep regex), then prints the pane */
static void tmux_wait(char *buf, size_t cap, const char *sock, const char *pattern, int secs)
{
	snprintf(buf, cap,
		 "for i in $(seq 1 %d); do tmux -S %s capture-pane -p | grep -q -- '%s' && break; "
		 "sleep 0.25; done; tmux -S %s capture-pane -p", secs * 4, sock, pattern, sock);
}

static void test_tmux(void **s)
{
	(void)s;
	if (system("command -v tmux > /dev/null 2>&1") != 0)
		fail_msg("tmux: not installed (scripts/deps.sh installs it)");
	const int slow = tu_asan() ? 10 : 1; /* the sanitizer build is that much slower */
	char cmd[8192], wait[2048], *out = NULL;
	char sock[512];
	snprintf(sock, sizeof(sock), "%s", tu_tmppath("tmux.sock"));
	tmux_wait(wait, sizeof(wait), sock, "58 tensors", 20 * slow);
	snprintf(cmd, sizeof(cmd),
		 "tmux -S %s new-session -d -x 100 -y 30 'cd %s && QSCOPE_STATE=%s %s tui --chunks 2 -m %s' && %s",
		 sock, getenv("PWD") ? getenv("PWD") : ".", tu_tmppath("tmux-state"), bin,
		 tu_shared("models/debdoc-19m-f16.gguf"), wait);
	assert_int_equal(tu_run(cmd, tu_tmppath("tmux.err"), &out), 0);
	free(out);
	tmux_wait(wait, sizeof(wait), sock, "eval 2 chunks: FP ", 30 * slow);
	snprintf(cmd, sizeof(cmd), "tmux -S %s send-keys j j Space m && %s", sock, wait);
	int rc = tu_run(cmd, tu_tmppath("tmux.err"), &out);
	assert_int_equal(rc, 0);
	assert_non_null(out);
	char *l = line_of(out, "blk.0.attn_v.weight");
	assert_non_null(l);
	assert_non_null(strstr(l, "int4g128")); /* Space moved on: the edit hit the selection */
	free(l);
	if (!strstr(out, "eval 2 chunks: FP "))
		fail_msg("no evaluation on the screen:\n%s", out);
	free(out);
	/* a full evaluation of the whole text (minutes): its progress bar, a
	 * resize meanwhile, then Esc cancels it and the plan is untouched */
	tmux_wait(wait, sizeof(wait), sock, "full eval \\[.*[1-9][0-9]*/865 chunks", 60 * slow);
	snprintf(cmd, sizeof(cmd), "tmux -S %s send-keys E && tmux -S %s resize-window -x 90 -y 26 && %s",
		 sock, sock, wait);
	rc = tu_run(cmd, tu_tmppath("tmux.err"), &out);
	assert_int_equal(rc, 0);
	if (!strstr(out, "full eval [") || !strstr(out, "Esc cancels"))
		fail_msg("no progress bar:\n%s", out);
	free(out);
	tmux_wait(wait, sizeof(wait), sock, "full evaluation: cancelled", 30 * slow);
	snprintf(cmd, sizeof(cmd), "tmux -S %s send-keys Escape && %s", sock, wait);
	rc = tu_run(cmd, tu_tmppath("tmux.err"), &out);
	assert_int_equal(rc, 0);
	if (!strstr(out, "full evaluation: cancelled"))
		fail_msg("not cancelled:\n%s", out);
	l = line_of(out, "blk.0.attn_v.weight");
	assert_non_null(l);
	assert_non_null(strstr(l, "int4g128"));
	free(l);
	free(out);
	/* a change, then the chat, and Ctrl-C while both models answer: the
	 * session ends, and the next start has the changed plan */
	tmux_wait(wait, sizeof(wait), sock, "chat: plain completion", 10 * slow);
	snprintf(cmd, sizeof(cmd), "tmux -S %s send-keys Escape b && sleep 0.5 && tmux -S %s send-keys C && %s",
		 sock, sock, wait);
	assert_int_equal(tu_run(cmd, tu_tmppath("tmux.err"), &out), 0);
	free(out);
	snprintf(cmd, sizeof(cmd),
		 "tmux -S %s send-keys -l 'The quick brown fox' && tmux -S %s send-keys Enter && "
		 "sleep 0.3 && tmux -S %s send-keys C-c && "
		 "for i in $(seq 1 %d); do tmux -S %s has-session 2>/dev/null || exit 1; sleep 0.25; done",
		 sock, sock, sock, 40 * slow, sock);
	rc = tu_run(cmd, NULL, NULL);
	if (rc == 0) { /* still there: do not leave it running */
		snprintf(cmd, sizeof(cmd), "tmux -S %s kill-server", sock);
		tu_run(cmd, NULL, NULL);
	}
	assert_int_not_equal(rc, 0);
	snprintf(cmd, sizeof(cmd), "QSCOPE_STATE=%s QSCOPE_HEADLESS=100x30 %s tui --no-eval -m %s",
		 tu_tmppath("tmux-state"), bin, tu_shared("models/debdoc-19m-f16.gguf"));
	assert_int_equal(tu_run(cmd, NULL, &out), 0);
	/* Escape cleared the selection, so b hit the cursor row, attn_output */
	l = line_of(out, "blk.0.attn_output.weight");
	assert_non_null(l);
	if (!strstr(l, "int5g128") || !strstr(out, "plan: 2 quantized"))
		fail_msg("plan not restored after Ctrl-C in the chat:\n%s", out);
	free(l);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_edit_ffn_down),
		cmocka_unit_test(test_group_cycle),
		cmocka_unit_test(test_range),
		cmocka_unit_test(test_help_sort_small),
		cmocka_unit_test(test_keys_table),
		cmocka_unit_test(test_detail),
		cmocka_unit_test(test_policy_picker),
		cmocka_unit_test(test_session),
		cmocka_unit_test(test_chat),
		cmocka_unit_test(test_demo),
		cmocka_unit_test(test_full_eval),
		cmocka_unit_test(test_weight_error),
		cmocka_unit_test(test_mouse),
		cmocka_unit_test(test_output_error),
		cmocka_unit_test(test_incremental_eval),
		cmocka_unit_test(test_incremental_gptq),
		cmocka_unit_test(test_live_eval),
		cmocka_unit_test(test_tmux),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
