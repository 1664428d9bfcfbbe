/* test_policy.c - Lua policies (lua/policy.c) on debdoc-19m: the sandbox
 * (instruction budget, memory cap, removed libraries, binary chunks,
 * protected metatables, error messages with file and line), spec checking,
 * plans from tables and strings, args, the tensor tables and the qs library
 * against values computed here from the model file, the knapsack solver
 * against brute force, qs.fit on a synthetic sensitivity table, recipes, the
 * bundled policies and the examples of docs/LUA.md.
 *
 * Cases that could run forever if the budget failed run in a forked child
 * with an alarm, so a regression fails the test instead of hanging it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../engine/calib.h"
#include "../engine/model.h"
#include "../engine/quant.h"
#include "../engine/quantize.h"
#include "../engine/sens.h"
#include "../kernels/fp16.h"
#include "../kernels/types.h"
#include "../lua/policy.h"
#include "testutil.h"

/* ---------------------------------------------------------------- fixtures */

static model *g_m;
static calib_set *g_calib; /* made on first use by get_calib_cb */

/* The quantizable tensors as listed here from the model's tensor table (not
 * with policy.c's or quantize.c's helpers): block linears in file order,
 * then token_embd, then output unless tied. */
typedef struct ref_tensor {
	const model_tensor *t;
	char kind[16];
	int layer;
	int rows, cols;
} ref_tensor;

static ref_tensor g_ref[256];
static int g_nref, g_nblock;
static const char *const KINDS[7] = { "attn_q", "attn_k", "attn_v", "attn_output",
				      "ffn_gate", "ffn_up", "ffn_down" };

/* two tensors made far more sensitive than the rest in the synthetic table */
#define SENSITIVE_A "blk.0.ffn_down.weight"
#define SENSITIVE_B "blk.7.attn_v.weight"

/* the synthetic table of the block linears for the three candidates below */
static const char *const FIT_CANDS[3] = { "int4g128", "int3g128", "q8_0" };
static sens_table g_sens;

static void add_ref(const model_tensor *t, const char *kind, int layer)
{
	ref_tensor *r = &g_ref[g_nref++];
	r->t = t;
	snprintf(r->kind, sizeof(r->kind), "%s", kind);
	r->layer = layer;
	r->rows = (int)t->ne[1];
	r->cols = (int)t->ne[0];
}

static const ref_tensor *ref_find(const char *name)
{
	for (int i = 0; i < g_nref; i++)
		if (!strcmp(g_ref[i].t->name, name))
			return &g_ref[i];
	return NULL;
}

/* Sensitivity of a tensor: 1000 for the two chosen ones, else a value in
 * [0.5, 1.5) from a hash of the name. */
static double sens_scale(const char *name)
{
	if (!strcmp(name, SENSITIVE_A) || !strcmp(name, SENSITIVE_B))
		return 1000.0;
	uint32_t h = 2166136261u;
	for (const char *p = name; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	return 0.5 + (double)(h % 1000) / 1000.0;
}

/* KLD of the synthetic table: halves with every bit per weight */
static double synth_kld(const char *name, double bpw)
{
	return sens_scale(name) * exp2(-bpw);
}

static size_t spec_bytes_str(const char *spec, int rows, int cols)
{
	quant_spec s;
	qs_error e;
	if (quant_spec_parse(spec, &s, &e))
		fail_msg("spec '%s': %s", spec, e.msg);
	return quant_spec_bytes(&s, rows, cols);
}

/* A synthetic sensitivity table: every block linear x the candidates. */
static int build_sens(const char *const *cands, int nc, sens_table *out, qs_error *err)
{
	memset(out, 0, sizeof(*out));
	snprintf(out->model, sizeof(out->model), "%s", g_m->path);
	snprintf(out->eval, sizeof(out->eval), "synthetic (test_policy.c)");
	out->chunks = 8;
	out->ctx = 512;
	out->base_ppl = 20.0;
	if (nc > SENS_MAX_CANDS)
		return qs_err(err, QS_EUSAGE, "too many candidates");
	quant_spec sp[SENS_MAX_CANDS];
	for (int c = 0; c < nc; c++) {
		if (quant_spec_parse(cands[c], &sp[c], err))
			return err->code;
		quant_spec_str(&sp[c], out->cands[c], sizeof(out->cands[c]));
	}
	out->n_cands = nc;
	out->e = calloc((size_t)g_nblock * (size_t)nc, sizeof(sens_entry));
	if (!out->e)
		return qs_err(err, QS_ENOMEM, "out of memory");
	for (int i = 0; i < g_nblock; i++)
		for (int c = 0; c < nc; c++) {
			const ref_tensor *r = &g_ref[i];
			if (quant_spec_check(&sp[c], r->t->name, r->rows, r->cols, NULL))
				continue; /* does not fit: not measured */
			sens_entry *e = &out->e[out->n++];
			snprintf(e->tensor, sizeof(e->tensor), "%s", r->t->name);
			e->cand = c;
			e->params = (size_t)r->rows * (size_t)r->cols;
			e->bytes = quant_spec_bytes(&sp[c], r->rows, r->cols);
			e->kld = synth_kld(r->t->name, 8.0 * (double)e->bytes / (double)e->params);
			e->kld_stderr = e->kld / 10;
			e->dppl = 3 * e->kld;
			e->ppl = out->base_ppl + e->dppl;
			e->same_top_pct = 99.0;
		}
	return 0;
}

static int group_setup(void **state)
{
	(void)state;
	qs_error err = { 0 };
	if (model_open(tu_shared("models/debdoc-19m-f16.gguf"), NULL, &g_m, &err)) {
		fprintf(stderr, "cannot open the model: %s\n", err.msg);
		return -1;
	}
	for (int i = 0; i < g_m->n_tensors; i++) {
		const model_tensor *t = &g_m->tensors[i];
		int l, n = 0;
		if (t->n_dims != 2 || sscanf(t->name, "blk.%d.%n", &l, &n) != 1 || n == 0)
			continue;
		for (int k = 0; k < 7; k++) {
			char want[64];
			snprintf(want, sizeof(want), "%s.weight", KINDS[k]);
			if (!strcmp(t->name + n, want))
				add_ref(t, KINDS[k], l);
		}
	}
	g_nblock = g_nref;
	const model_tensor *emb = model_find(g_m, "token_embd.weight");
	const model_tensor *out = model_find(g_m, "output.weight");
	if (emb)
		add_ref(emb, "token_embd", -1);
	if (out && !g_m->cfg.tied)
		add_ref(out, "output", g_m->cfg.n_layers);
	if (build_sens(FIT_CANDS, 3, &g_sens, &err)) {
		fprintf(stderr, "synthetic sensitivity: %s\n", err.msg);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	sens_table_release(&g_sens);
	calib_set_free(g_calib);
	model_free(g_m);
	return 0;
}

/* ---------------------------------------------------------------- run helpers */

#define MAX_MADE 8

/* What the callbacks of one run see and record. */
typedef struct tctx {
	char *log;          /* every logged line, each followed by '\n' */
	size_t log_len, log_cap;
	int n_log;
	int get_sens_calls;
	char asked[SENS_MAX_CANDS][96]; /* candidates of the last get_sens call */
	int n_asked;
	int sens_fail;      /* get_sens returns an error */
	sens_table made[MAX_MADE];
	int n_made;
	int get_calib_calls;
} tctx;

static void log_cb(void *user, const char *line)
{
	tctx *c = user;
	size_t n = strlen(line);
	if (c->log_len + n + 2 > c->log_cap) {
		size_t cap = (c->log_len + n + 2) * 2;
		char *b = realloc(c->log, cap);
		if (!b)
			return;
		c->log = b;
		c->log_cap = cap;
	}
	memcpy(c->log + c->log_len, line, n);
	c->log_len += n;
	c->log[c->log_len++] = '\n';
	c->log[c->log_len] = 0;
	c->n_log++;
}

/* The first logged line starting with prefix (a pointer into the log, up to
 * its newline), or NULL. */
static const char *log_line(const tctx *c, const char *prefix)
{
	size_t k = strlen(prefix);
	for (const char *p = c->log; p && *p;) {
		if (!strncmp(p, prefix, k))
			return p;
		const char *nl = strchr(p, '\n');
		p = nl ? nl + 1 : NULL;
	}
	return NULL;
}

static int get_sens_cb(void *user, const char *const *cands, int n_cands, const sens_table **out,
		       qs_error *err)
{
	tctx *c = user;
	c->get_sens_calls++;
	c->n_asked = n_cands < SENS_MAX_CANDS ? n_cands : SENS_MAX_CANDS;
	for (int i = 0; i < c->n_asked; i++)
		snprintf(c->asked[i], sizeof(c->asked[i]), "%s", cands[i]);
	if (c->sens_fail)
		return qs_err(err, QS_EIO, "synthetic scan refused");
	if (c->n_made == MAX_MADE)
		return qs_err(err, QS_EUSAGE, "too many scans");
	/* a table for exactly the candidates asked; kept until tctx_release */
	int rc = build_sens(cands, n_cands, &c->made[c->n_made], err);
	if (rc)
		return rc;
	*out = &c->made[c->n_made++];
	return 0;
}

static int get_calib_cb(void *user, const calib_set **out, qs_error *err)
{
	tctx *c = user;
	c->get_calib_calls++;
	if (!g_calib) {
		size_t len = 0;
		char *text = tu_read_file(tu_shared("data/debdoc-calib.txt"), &len);
		if (!text)
			return qs_err(err, QS_EIO, "cannot read debdoc-calib.txt");
		calib_opts o;
		calib_opts_default(&o);
		o.n_samples = 8;
		o.seq_len = 128;
		int rc = calib_collect(g_m, text, len, &o, NULL, NULL, NULL, &g_calib, NULL, err);
		free(text);
		if (rc)
			return rc;
	}
	*out = g_calib;
	return 0;
}

static void tctx_release(tctx *c)
{
	free(c->log);
	for (int i = 0; i < c->n_made; i++)
		sens_table_release(&c->made[i]);
	memset(c, 0, sizeof(*c));
}

/* Options that log into c and nothing else. */
static pol_opts opts_for(tctx *c)
{
	pol_opts o = { 0 };
	o.log = log_cb;
	o.user = c;
	return o;
}

static int run_src(const char *src, const pol_opts *o, pol_result *r, qs_error *e)
{
	memset(e, 0, sizeof(*e));
	return pol_run_string(g_m, "x.lua", src, strlen(src), o, r, e);
}

/* msg contains every string of the NULL-terminated list */
static void check_has(const char *what, const char *msg, va_list ap)
{
	const char *want;
	while ((want = va_arg(ap, const char *)))
		if (!strstr(msg, want))
			fail_msg("%s: message \"%s\" lacks \"%s\"", what, msg, want);
}

/* Run src in this process; it must fail with a message holding each given
 * string (NULL-terminated). Returns nothing; fails the test otherwise. */
static void expect_fail(const char *src, const pol_opts *o, ...)
{
	pol_result r;
	qs_error e;
	tctx c = { 0 };
	pol_opts def = opts_for(&c);
	int rc = run_src(src, o ? o : &def, &r, &e);
	int n = r.plan.n;
	pol_result_release(&r);
	tctx_release(&c);
	if (rc == 0)
		fail_msg("policy succeeded (%d plan entries), expected an error:\n%s", n, src);
	if (n != 0)
		fail_msg("failed run kept %d plan entries:\n%s", n, src);
	if (strchr(e.msg, '\n'))
		fail_msg("message is not one line: %s", e.msg);
	va_list ap;
	va_start(ap, o);
	check_has(src, e.msg, ap);
	va_end(ap);
}

/* The same in a forked child killed after `seconds`: for cases that would
 * run forever if the budget did not stop them. */
typedef struct guarded {
	int rc;
	long instructions;
	size_t mem_peak;
	char msg[512];
} guarded;

static void expect_fail_guarded(const char *src, long budget, size_t cap, int seconds, ...)
{
	int fd[2];
	assert_int_equal(pipe(fd), 0);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fd[0]);
		alarm((unsigned)seconds);
		pol_opts o = { 0 };
		o.instr_budget = budget;
		o.mem_cap = cap;
		pol_result r;
		qs_error e;
		guarded g = { 0 };
		g.rc = run_src(src, &o, &r, &e);
		g.instructions = r.instructions;
		g.mem_peak = r.mem_peak;
		snprintf(g.msg, sizeof(g.msg), "%s", g.rc ? e.msg : "");
		pol_result_release(&r);
		ssize_t w = write(fd[1], &g, sizeof(g));
		_exit(w == (ssize_t)sizeof(g) ? 0 : 3);
	}
	close(fd[1]);
	guarded g;
	size_t got = 0;
	ssize_t k;
	while (got < sizeof(g) && (k = read(fd[0], (char *)&g + got, sizeof(g) - got)) > 0)
		got += (size_t)k;
	close(fd[0]);
	int st = 0;
	waitpid(pid, &st, 0);
	if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
		fail_msg("still running after %d s: the budget did not stop it:\n%s", seconds, src);
	if (WIFSIGNALED(st))
		fail_msg("the run crashed (signal %d):\n%s", WTERMSIG(st), src);
	if (got != sizeof(g))
		fail_msg("child exited %d without a result:\n%s", WEXITSTATUS(st), src);
	if (g.rc == 0)
		fail_msg("policy succeeded, expected an error:\n%s", src);
	if (budget > 0 && strstr(g.msg, "instruction budget") && g.instructions > budget + 10000)
		fail_msg("budget %ld, but %ld instructions ran:\n%s", budget, g.instructions, src);
	va_list ap;
	va_start(ap, seconds);
	check_has(src, g.msg, ap);
	va_end(ap);
}

/* Run src; it must succeed. r is the caller's to release. */
static void expect_ok(const char *src, const pol_opts *o, pol_result *r)
{
	qs_error e;
	if (run_src(src, o, r, &e))
		fail_msg("policy failed: %s\ntrace: %s\n%s", e.msg, r->trace, src);
}

/* A policy that quantizes everything with q8_0: the run after a failure. */
static void expect_normal_run(void)
{
	pol_result r;
	pol_opts o = { 0 };
	expect_ok("return function(t) return 'q8_0' end", &o, &r);
	assert_int_equal(r.plan.n, g_nref);
	pol_result_release(&r);
}

/* ---------------------------------------------------------------- 1. sandbox */

static void test_sandbox_budget(void **state)
{
	(void)state;
	/* the documented default (policy.h, docs/LUA.md: 10^8) */
	assert_true(POL_INSTR_BUDGET_DEFAULT == 100000000L);
	const long B = 1000000;
	expect_fail_guarded("return function(t)\n  while true do end\nend", B, 0, 10, "x.lua",
			    "instruction budget of 1000000 exceeded", NULL);
	expect_fail_guarded("while true do end", B, 0, 10, "x.lua",
			    "instruction budget of 1000000 exceeded", NULL);
	/* catching the error does not help: the loop around pcall is stopped too */
	expect_fail_guarded("local n = 0\n"
			    "while true do\n"
			    "  local ok, err = pcall(function() while true do end end)\n"
			    "  n = n + 1\n"
			    "end",
			    B, 0, 10, "x.lua", "instruction budget of 1000000 exceeded", NULL);
	expect_fail_guarded("for i = 1, 1e9 do\n"
			    "  pcall(function() while true do end end)\n"
			    "end\n"
			    "return function(t) return 'q8_0' end",
			    B, 0, 10, "x.lua", "instruction budget of 1000000 exceeded", NULL);
	/* a chunk made with load runs under the same budget */
	expect_fail_guarded("load('while true do end')()", B, 0, 10, "x.lua",
			    "instruction budget of 1000000 exceeded", NULL);
	/* the string metatable's __index replaced with a loop */
	expect_fail_guarded("getmetatable('').__index = function() while true do end end\n"
			    "local n = ('abc'):len()",
			    B, 0, 10, "x.lua", "instruction budget of 1000000 exceeded", NULL);
	/* a to-be-closed variable whose __close loops */
	expect_fail_guarded("do\n"
			    "  local x <close> = setmetatable({},\n"
			    "    { __close = function() while true do end end })\n"
			    "end",
			    B, 0, 10, "x.lua", "instruction budget of 1000000 exceeded", NULL);
	/* a loop in table.sort's comparator */
	expect_fail_guarded("local t = {3, 2, 1}\n"
			    "table.sort(t, function(a, b) while true do end end)",
			    B, 0, 10, "x.lua", "instruction budget of 1000000 exceeded", NULL);
	/* the default budget (0 in pol_opts) */
	expect_fail_guarded("while true do end", 0, 0, 30, "x.lua",
			    "instruction budget of 100000000 exceeded", NULL);

	/* in this process: a budget error, then an ordinary run */
	pol_result r;
	qs_error e;
	pol_opts o = { 0 };
	o.instr_budget = B;
	int rc = run_src("local i = 0\nwhile true do i = i + 1 end", &o, &r, &e);
	long used = r.instructions;
	pol_result_release(&r);
	assert_int_not_equal(rc, 0);
	assert_non_null(strstr(e.msg, "instruction budget of 1000000 exceeded"));
	assert_true(used > B && used <= B + 10000);
	expect_normal_run();
}

/* The message of a budget error may give a line; if it does, it must be the
 * line of the loop (here 1, inside the helper), not of a caller. */
static void test_sandbox_budget_line(void **state)
{
	(void)state;
	pol_result r;
	qs_error e;
	pol_opts o = { 0 };
	o.instr_budget = 1000000;
	const char *src = "local function spin() while true do end end\n"
			  "return function(t)\n"
			  "  spin()\n"
			  "end";
	int rc = run_src(src, &o, &r, &e);
	pol_result_release(&r);
	assert_int_not_equal(rc, 0);
	assert_non_null(strstr(e.msg, "instruction budget of 1000000 exceeded"));
	if (!strncmp(e.msg, "x.lua:", 6) && e.msg[6] >= '0' && e.msg[6] <= '9' &&
	    strncmp(e.msg, "x.lua:1:", 8))
		fail_msg("the loop is on line 1, the message names another line: %s", e.msg);
}

/* An xpcall message handler that loops, called for the budget error itself. */
static void test_sandbox_budget_xpcall_handler(void **state)
{
	(void)state;
	expect_fail_guarded("xpcall(function() while true do end end,\n"
			    "       function(m) while true do end end)",
			    1000000, 0, 3, "x.lua", "instruction budget", NULL);
}

static void test_sandbox_memory(void **state)
{
	(void)state;
	const size_t cap = (size_t)8 << 20;
	const char *bombs[] = {
		"local s = string.rep('x', 2^30)",
		"local s = 'x'\nwhile true do s = s .. s end",
		"local t = {}\nfor i = 1, 1e8 do t[i] = i end",
		"local t = {}\nfor i = 1, 1e8 do t[#t + 1] = 'item ' .. i end",
		"local t = {}\nfor i = 1, 1e8 do t[i] = {i} end",
		"return function(t)\n  local big = {}\n  for i = 1, 1e8 do big[i] = i * 0.5 end\nend",
		"local x = string.rep('ab', 2^20)\nlocal y = {}\nfor i = 1, 100 do y[i] = x .. i end",
	};
	for (size_t i = 0; i < sizeof(bombs) / sizeof(bombs[0]); i++) {
		pol_result r;
		qs_error e;
		pol_opts o = { 0 };
		o.mem_cap = cap;
		o.instr_budget = 200000000; /* the cap must end these, not the budget */
		int rc = run_src(bombs[i], &o, &r, &e);
		size_t peak = r.mem_peak;
		pol_result_release(&r);
		if (!rc)
			fail_msg("memory bomb succeeded:\n%s", bombs[i]);
		/* a bomb inside the per-tensor function also names the tensor */
		if (strncmp(e.msg, "x.lua: memory cap of 8 MiB exceeded", 35) ||
		    (e.msg[35] && strcmp(e.msg + 35, " (tensor blk.0.attn_q.weight)")))
			fail_msg("memory bomb: message \"%s\":\n%s", e.msg, bombs[i]);
		if (peak > cap)
			fail_msg("memory bomb: peak %zu bytes above the cap %zu:\n%s", peak, cap, bombs[i]);
	}
	/* the default cap, 64 MiB */
	assert_true(POL_MEM_CAP_DEFAULT == (size_t)64 << 20);
	expect_fail("local s = string.rep('x', 2^27)", NULL, "x.lua: memory cap of 64 MiB exceeded",
		    NULL);
	/* inside pcall a refused allocation is an ordinary error and the run goes on */
	pol_result r;
	pol_opts o = { 0 };
	o.mem_cap = cap;
	expect_ok("local ok, err = pcall(string.rep, 'x', 2^30)\n"
		  "assert(not ok and err:find('not enough memory'), tostring(err))\n"
		  "return function(t) return 'q4_0' end",
		  &o, &r);
	assert_int_equal(r.plan.n, g_nref);
	assert_true(r.mem_peak <= cap);
	pol_result_release(&r);
	expect_normal_run();
}

/* After a caught allocation failure, a later unrelated error is reported as
 * itself, not as the memory cap. */
static void test_sandbox_memory_error_then_other_error(void **state)
{
	(void)state;
	pol_opts o = { 0 };
	o.mem_cap = (size_t)8 << 20;
	expect_fail("local ok = pcall(string.rep, 'x', 2^30)\n"
		    "assert(not ok)\n"
		    "error('boom')",
		    &o, "x.lua:3: boom", NULL);
}

static void test_sandbox_recursion(void **state)
{
	(void)state;
	/* Lua's own stack limit; a cap large enough that the stack ends it */
	pol_opts o = { 0 };
	o.mem_cap = (size_t)256 << 20;
	expect_fail("local function f(n) return f(n + 1) + 1 end\nf(1)", &o, "x.lua:1: stack overflow",
		    NULL);
	/* with a small cap the memory ends it first, with the cap's message */
	o.mem_cap = (size_t)8 << 20;
	expect_fail("local function f(n) return f(n + 1) + 1 end\nf(1)", &o,
		    "x.lua: memory cap of 8 MiB exceeded", NULL);
	/* recursion through a metamethod: the C stack limit */
	expect_fail("local t = setmetatable({}, { __index = function(t, k) return t[k] end })\n"
		    "return t.x",
		    NULL, "x.lua:1:", "stack overflow", NULL);
	/* recursion inside the per-tensor function */
	expect_fail("local function f(n) return f(n + 1) + 1 end\n"
		    "return function(t)\n  return f(1)\nend",
		    NULL, "x.lua:1:", "stack overflow", NULL);
	expect_normal_run();
}

static void test_sandbox_libraries(void **state)
{
	(void)state;
	/* files this must not be able to create */
	char f1[1024], f2[1024];
	snprintf(f1, sizeof(f1), "%s", tu_tmppath("os-execute-ran"));
	snprintf(f2, sizeof(f2), "%s", tu_tmppath("io-open-ran"));
	char src[2048];
	snprintf(src, sizeof(src), "-- line 1\nos.execute('touch %s')", f1);
	expect_fail(src, NULL, "x.lua:2: attempt to index a nil value (global 'os')", NULL);
	snprintf(src, sizeof(src), "-- line 1\nlocal f = io.open('%s', 'w')", f2);
	expect_fail(src, NULL, "x.lua:2: attempt to index a nil value (global 'io')", NULL);
	struct stat st;
	assert_int_not_equal(stat(f1, &st), 0);
	assert_int_not_equal(stat(f2, &st), 0);

	expect_fail("-- line 1\nlocal m = require('os')", NULL,
		    "x.lua:2: attempt to call a nil value (global 'require')", NULL);
	expect_fail("-- line 1\ndofile('/etc/passwd')", NULL,
		    "x.lua:2: attempt to call a nil value (global 'dofile')", NULL);
	expect_fail("-- line 1\nlocal f = loadfile('/etc/passwd')", NULL,
		    "x.lua:2: attempt to call a nil value (global 'loadfile')", NULL);
	expect_fail("-- line 1\ncollectgarbage('stop')", NULL,
		    "x.lua:2: attempt to call a nil value (global 'collectgarbage')", NULL);
	expect_fail("-- line 1\nlocal b = string.dump(function() end)", NULL,
		    "x.lua:2: attempt to call a nil value (field 'dump')", NULL);
	expect_fail("-- line 1\nlocal b = ('').dump(print)", NULL, "x.lua:2:",
		    "attempt to call a nil value (field 'dump')", NULL);
	expect_fail("-- line 1\ndebug.sethook()", NULL,
		    "x.lua:2: attempt to index a nil value (global 'debug')", NULL);
	expect_fail("-- line 1\nlocal p = package.loaded", NULL,
		    "x.lua:2: attempt to index a nil value (global 'package')", NULL);
	/* what is there */
	pol_result r;
	tctx c = { 0 };
	pol_opts o = opts_for(&c);
	expect_ok("assert(type(string.format) == 'function' and type(table.concat) == 'function')\n"
		  "assert(type(math.floor) == 'function' and type(utf8.char) == 'function')\n"
		  "assert(type(pcall) == 'function' and type(xpcall) == 'function')\n"
		  "assert(type(model) == 'table' and model.n_layers > 0) -- also at file scope\n"
		  "assert(coroutine == nil and os == nil and io == nil)\n"
		  "return function(t) end",
		  &o, &r);
	assert_int_equal(r.plan.n, 0);
	pol_result_release(&r);
	tctx_release(&c);
	expect_normal_run();
}

static void test_sandbox_load(void **state)
{
	(void)state;
	/* a binary chunk is refused even with the default mode */
	expect_fail("local f = assert(load('\\27Lua\\84\\0\\25\\147\\r\\n\\26\\n'))", NULL, "x.lua",
		    "attempt to load a binary chunk", NULL);
	/* also when it comes from a reader function */
	expect_fail("local parts = { '\\27Lua\\84\\0', '\\25\\147\\r\\n\\26\\n' }\n"
		    "local i = 0\n"
		    "local f, err = load(function() i = i + 1 return parts[i] end)\n"
		    "assert(f == nil)\n"
		    "error(err, 0)",
		    NULL, "x.lua", "attempt to load a binary chunk", NULL);
	expect_fail("-- line 1\nlocal f = load('return 1', 'c', 'b')", NULL,
		    "x.lua:2: load: binary chunks are not allowed in policies", NULL);
	expect_fail("local f = load('return 1', 'c', 'bt')", NULL,
		    "x.lua:1: load: binary chunks are not allowed in policies", NULL);
	/* text works, with or without an environment */
	pol_result r;
	pol_opts o = { 0 };
	expect_ok("local f = assert(load('return 1 + 2'))\n"
		  "assert(f() == 3)\n"
		  "local g = assert(load('return x * 2', 'g', 't', { x = 21 }))\n"
		  "assert(g() == 42)\n"
		  "local h = assert(load('return os, print', 'h', 't', {}))\n"
		  "assert(h() == nil and select(2, h()) == nil)\n"
		  "local parts, i = { 'return ', '\"nf4\"' }, 0\n"
		  "local spec = assert(load(function() i = i + 1 return parts[i] end))()\n"
		  "return function(t) return spec end",
		  &o, &r);
	assert_int_equal(r.plan.n, g_nref);
	char buf[96];
	quant_spec_str(&r.plan.e[0].spec, buf, sizeof(buf));
	assert_string_equal(buf, "nf4");
	pol_result_release(&r);
	/* a chunk given _ENV = nil cannot reach the globals */
	expect_fail("local f = load('return print', '=inner', 't', nil)\nreturn f()", NULL, "inner:1:",
		    "_ENV", NULL);
	expect_normal_run();
}

static void test_sandbox_metatables(void **state)
{
	(void)state;
	expect_fail("setmetatable(qs, {})", NULL, "x.lua", "cannot change a protected metatable", NULL);
	expect_fail("-- line 1\nqs.fit = nil", NULL, "x.lua:2: qs is read-only (field 'fit')", NULL);
	expect_fail("qs.bits = function() return 1 end", NULL, "x.lua:1: qs is read-only (field 'bits')",
		    NULL);
	expect_fail("qs.extra = 1", NULL, "x.lua:1: qs is read-only (field 'extra')", NULL);
	expect_fail("return function(t)\n  setmetatable(t.stats, {})\nend", NULL, "x.lua",
		    "cannot change a protected metatable", NULL);
	expect_fail("-- line 1\nsetmetatable({}, { __gc = function() end })", NULL,
		    "x.lua:2: setmetatable: __gc finalizers are not allowed in policies", NULL);
	expect_fail("setmetatable({}, { __gc = true })", NULL,
		    "x.lua:1: setmetatable: __gc finalizers are not allowed in policies", NULL);
	/* __gc added after setmetatable does not mark the table for finalization:
	 * if it did, this finalizer would run in lua_close, unbudgeted, forever */
	expect_fail_guarded("local keep = {}\n"
			    "for i = 1, 10 do\n"
			    "  local mt = {}\n"
			    "  keep[i] = setmetatable({}, mt)\n"
			    "  mt.__gc = function() while true do end end\n"
			    "end\n"
			    "error('end of script')",
			    1000000, 0, 10, "x.lua:7: end of script", NULL);
	/* what a script can see and what survives its attempts */
	pol_result r;
	pol_opts o = { 0 };
	expect_ok("assert(type(getmetatable(qs)) ~= 'table')\n"
		  "assert(not pcall(function() qs.fit = nil end))\n"
		  "assert(not pcall(setmetatable, qs, {}))\n"
		  "assert(type(qs.fit) == 'function' and type(qs.bits) == 'function')\n"
		  "return function(t)\n"
		  "  assert(type(getmetatable(t.stats)) ~= 'table')\n"
		  "  if t.sens then assert(type(getmetatable(t.sens)) ~= 'table') end\n"
		  "  return 'q8_0'\n"
		  "end",
		  &o, &r);
	assert_int_equal(r.plan.n, g_nref);
	pol_result_release(&r);
	o.sens = &g_sens;
	expect_ok("return function(t)\n"
		  "  if t.sens then assert(type(getmetatable(t.sens)) ~= 'table') end\n"
		  "end",
		  &o, &r);
	pol_result_release(&r);
	expect_normal_run();
}

/* Errors raised through the setmetatable wrapper keep the line of the call,
 * as every other error does. */
static void test_sandbox_setmetatable_line(void **state)
{
	(void)state;
	expect_fail("-- line 1\nsetmetatable(qs, {})", NULL,
		    "x.lua:2: cannot change a protected metatable", NULL);
}

static void test_sandbox_errors(void **state)
{
	(void)state;
	expect_fail("error({})", NULL, "x.lua", "(error object is a table value)", NULL);
	expect_fail("error(setmetatable({}, { __tostring = function() return 'custom object' end }))",
		    NULL, "x.lua", "custom object", NULL);
	expect_fail("return function(t)\n  error({ code = 7 })\nend", NULL, "x.lua",
		    "(error object is a table value)", NULL);
	/* a syntax error on line 3 */
	pol_result r;
	qs_error e;
	pol_opts o = { 0 };
	int rc = run_src("local a = 1\nlocal b = 2\nlocal c = = 3\nreturn function(t) end", &o, &r, &e);
	pol_result_release(&r);
	assert_int_not_equal(rc, 0);
	if (strncmp(e.msg, "x.lua:3:", 8))
		fail_msg("syntax error on line 3: %s", e.msg);
	/* a runtime error inside the per-tensor function: its line, and a trace */
	rc = run_src("return function(t)\n"
		     "  local s = nil\n"
		     "  return s.x\n"
		     "end",
		     &o, &r, &e);
	assert_int_not_equal(rc, 0);
	assert_string_equal(e.msg, "x.lua:3: attempt to index a nil value (local 's') (tensor "
				   "blk.0.attn_q.weight)");
	assert_non_null(strstr(r.trace, "stack traceback"));
	pol_result_release(&r);
	/* an error at a given tensor only */
	expect_fail("return function(t)\n"
		    "  if t.name == 'blk.4.ffn_up.weight' then\n"
		    "    error('no ' .. t.name)\n"
		    "  end\n"
		    "end",
		    NULL, "x.lua:3: no blk.4.ffn_up.weight", NULL);
	expect_fail("return 42", NULL, "x.lua", "must return a function", "number", NULL);
	expect_normal_run();
}

/* ---------------------------------------------------------------- 2. invalid specs */

static void test_spec_errors(void **state)
{
	(void)state;
	const ref_tensor *k = ref_find("blk.2.attn_k.weight");
	assert_non_null(k);
	assert_int_equal(k->cols, 384);
	/* only blk.2.attn_k gets the bad spec: the message must name it */
#define ON_K(spec) "return function(t)\n  if t.name == 'blk.2.attn_k.weight' then return " spec " end\nend"
	expect_fail(ON_K("{ bits = 9 }"), NULL, "blk.2.attn_k.weight", "'bits'", "9", NULL);
	expect_fail(ON_K("{ bits = 1 }"), NULL, "blk.2.attn_k.weight", "'bits'", NULL);
	expect_fail(ON_K("{ bits = 4, group = 100 }"), NULL,
		    "blk.2.attn_k.weight: group 100 does not divide the row length 384", NULL);
	expect_fail(ON_K("'int4g100'"), NULL,
		    "blk.2.attn_k.weight: group 100 does not divide the row length 384", NULL);
	expect_fail(ON_K("{ method = 'magic', bits = 4 }"), NULL, "blk.2.attn_k.weight",
		    "unknown method 'magic'", NULL);
	expect_fail(ON_K("'magic:int4g128'"), NULL, "blk.2.attn_k.weight", "unknown method 'magic'",
		    NULL);
	expect_fail(ON_K("{ bits = 4, grp = 64 }"), NULL, "blk.2.attn_k.weight", "unknown field 'grp'",
		    NULL);
	expect_fail(ON_K("{ 4 }"), NULL, "blk.2.attn_k.weight", "non-string key", NULL);
	expect_fail(ON_K("{ bits = 'four' }"), NULL, "blk.2.attn_k.weight", "'bits'",
		    "must be an integer", NULL);
	expect_fail(ON_K("{ bits = 4.5 }"), NULL, "blk.2.attn_k.weight", "'bits'", "must be an integer",
		    NULL);
	expect_fail(ON_K("{ sym = 1 }"), NULL, "blk.2.attn_k.weight", "'sym'", "true or false", NULL);
	expect_fail(ON_K("{ method = 4 }"), NULL, "blk.2.attn_k.weight", "'method'", "string", NULL);
	expect_fail(ON_K("{ method = 'gptq', damp = '0.1' }"), NULL, "blk.2.attn_k.weight", "'damp'",
		    "number", NULL);
	expect_fail(ON_K("{ act_per = 'row', act_bits = 8 }"), NULL, "blk.2.attn_k.weight", "'act_per'",
		    NULL);
	expect_fail(ON_K("true"), NULL, "blk.2.attn_k.weight", "returned a boolean", NULL);
	expect_fail(ON_K("42"), NULL, "blk.2.attn_k.weight", "returned a number", NULL);
	expect_fail(ON_K("function() end"), NULL, "blk.2.attn_k.weight", "returned a function", NULL);
	expect_fail(ON_K("{ format = 'q4_0', bits = 4 }"), NULL, "blk.2.attn_k.weight",
		    "'format' excludes 'bits'", NULL);
	expect_fail(ON_K("{ format = 'q4_0', group = 32 }"), NULL, "blk.2.attn_k.weight",
		    "'format' excludes", NULL);
	expect_fail(ON_K("{ method = 'gptq', format = 'q4_0' }"), NULL, "blk.2.attn_k.weight",
		    "gptq needs an intB format", NULL);
	expect_fail(ON_K("'int4g128,bogus'"), NULL, "blk.2.attn_k.weight", "bogus", NULL);
#undef ON_K
	/* ffn_down rows are 1024 long: group 384 fits attn_k, not ffn_down */
	expect_fail("return function(t) return { bits = 4, group = 384 } end", NULL,
		    "blk.0.ffn_down.weight: group 384 does not divide the row length 1024", NULL);
	expect_normal_run();
}

/* docs/LUA.md: integer fields take "integers, floats with an integral value
 * and numeric strings (4, 4.0, "4")". */
/* Integer fields take integral numbers (64.0 is 64) but not strings: a
 * string where a number belongs is a mistake in the policy. */
static void test_spec_numeric_strings(void **state)
{
	(void)state;
	pol_result r;
	pol_opts o = { 0 };
	expect_ok("return function(t)\n"
		  "  if t.kind == 'attn_q' then return { bits = 3, group = 64.0 } end\n"
		  "end",
		  &o, &r);
	assert_int_equal(r.plan.n, g_m->cfg.n_layers);
	char buf[96];
	quant_spec_str(&r.plan.e[0].spec, buf, sizeof(buf));
	assert_string_equal(buf, "int3g64");
	pol_result_release(&r);
	expect_fail("return function(t) return { bits = '3' } end", NULL, "x.lua:",
		    "blk.0.attn_q.weight", "field 'bits' must be an integer", NULL);
}

/* ---------------------------------------------------------------- 3. valid plans */

/* The spec the policy below gives each tensor, written out by hand in
 * canonical form ("" = kept). */
static const char *expected_spec(const ref_tensor *t)
{
	const char *k = t->kind;
	if (!strcmp(k, "attn_q"))
		return "gptq:int4g128,act_order";
	if (!strcmp(k, "attn_k"))
		return "q4_0";
	if (!strcmp(k, "attn_v"))
		return t->layer == 0 ? "" : "nf4";
	if (!strcmp(k, "attn_output"))
		return "gptq:int3g128,act_order";
	if (!strcmp(k, "ffn_gate"))
		return "int3g64sym";
	if (!strcmp(k, "ffn_up"))
		return t->layer == 0 ? "int4g128" : "q8_0";
	if (!strcmp(k, "ffn_down"))
		return t->layer % 2 ? "hqq:int4g64" : "";
	if (!strcmp(k, "token_embd"))
		return "int8c";
	return "";
}

static const char *PLAN_POLICY =
	"return function(t, model)\n"
	"  local k = t.kind\n"
	"  if k == 'attn_q' then return { method = 'gptq', bits = 4, group = 128, act_order = true } end\n"
	"  if k == 'attn_k' then return 'q4_0' end\n"
	"  if k == 'attn_v' then if t.layer == 0 then return 'none' end return 'nf4' end\n"
	"  if k == 'attn_output' then return 'gptq:int3g128,act_order' end\n"
	"  if k == 'ffn_gate' then return { bits = 3, group = 64, sym = true } end\n"
	"  if k == 'ffn_up' then\n"
	"    if t.layer == 0 then return 'rtn:int4g128' end\n"
	"    return { format = 'q8_0' }\n"
	"  end\n"
	"  if k == 'ffn_down' then\n"
	"    if t.layer % 2 == 1 then return { method = 'hqq', bits = 4, group = 64 } end\n"
	"    return nil\n"
	"  end\n"
	"  if k == 'token_embd' then return { bits = 8, group = 0 } end\n"
	"  -- output: nothing\n"
	"end\n";

/* The plan must hold exactly the non-empty expected specs, in call order. */
static void check_plan_policy(const quant_plan *p)
{
	int k = 0;
	for (int i = 0; i < g_nref; i++) {
		const char *want = expected_spec(&g_ref[i]);
		if (!*want) {
			if (quant_plan_find(p, g_ref[i].t->name))
				fail_msg("%s should be left out of the plan", g_ref[i].t->name);
			continue;
		}
		if (k >= p->n)
			fail_msg("plan has %d entries, %s missing", p->n, g_ref[i].t->name);
		if (strcmp(p->e[k].name, g_ref[i].t->name))
			fail_msg("plan entry %d is %s, want %s", k, p->e[k].name, g_ref[i].t->name);
		char got[128];
		quant_spec_str(&p->e[k].spec, got, sizeof(got));
		if (strcmp(got, want))
			fail_msg("%s: spec %s, want %s", g_ref[i].t->name, got, want);
		k++;
	}
	assert_int_equal(p->n, k);
}

static void test_plan_tables_strings_nil(void **state)
{
	(void)state;
	pol_result r;
	pol_opts o = { 0 };
	expect_ok(PLAN_POLICY, &o, &r);
	check_plan_policy(&r.plan);
	/* the parsed specs, not only their strings */
	const quant_spec *q = quant_plan_find(&r.plan, "blk.3.attn_q.weight");
	assert_non_null(q);
	assert_int_equal(q->method, QUANT_GPTQ);
	assert_int_equal(q->fmt.fmt, KN_QF_INT);
	assert_int_equal(q->fmt.bits, 4);
	assert_int_equal(q->fmt.group, 128);
	assert_int_equal(q->act_order, 1);
	q = quant_plan_find(&r.plan, "blk.5.ffn_gate.weight");
	assert_non_null(q);
	assert_int_equal(q->method, QUANT_RTN);
	assert_int_equal(q->fmt.bits, 3);
	assert_int_equal(q->fmt.group, 64);
	assert_int_equal(q->fmt.sym, 1);
	q = quant_plan_find(&r.plan, "token_embd.weight");
	assert_non_null(q);
	assert_int_equal(q->fmt.group, KN_GROUP_ROW);
	pol_result_release(&r);

	/* a policy returning nil everywhere gives an empty plan, not an error */
	expect_ok("return function(t) end", &o, &r);
	assert_int_equal(r.plan.n, 0);
	pol_result_release(&r);
	expect_ok("return function(t) return { format = 'none' } end", &o, &r);
	assert_int_equal(r.plan.n, 0);
	pol_result_release(&r);
}

static void test_args(void **state)
{
	(void)state;
	const char *args[] = { "bpw=4.5", "flag=true", "off=false", "name=x", "n=3",
			       "hex=0x10", "empty=", "spec=gptq:int3g128,act_order", "n=7" };
	tctx c = { 0 };
	pol_opts o = opts_for(&c);
	o.args = args;
	o.n_args = (int)(sizeof(args) / sizeof(args[0]));
	pol_result r;
	expect_ok("qs.log('bpw', math.type(args.bpw), string.format('%.17g', args.bpw))\n"
		  "qs.log('flag', type(args.flag), tostring(args.flag))\n"
		  "qs.log('off', type(args.off), tostring(args.off))\n"
		  "qs.log('name', type(args.name), args.name)\n"
		  "qs.log('n', math.type(args.n), args.n)\n"
		  "qs.log('hex', math.type(args.hex), args.hex)\n"
		  "qs.log('empty', type(args.empty), '[' .. args.empty .. ']')\n"
		  "qs.log('spec', type(args.spec), args.spec)\n"
		  "qs.log('missing', type(args.missing))\n"
		  "return function(t) if t.kind ~= 'token_embd' then return args.spec end end",
		  &o, &r);
	const char *want[] = { "bpw\tfloat\t4.5\n", "flag\tboolean\ttrue\n", "off\tboolean\tfalse\n",
			       "name\tstring\tx\n", "n\tinteger\t7\n", "hex\tinteger\t16\n",
			       "empty\tstring\t[]\n", "spec\tstring\tgptq:int3g128,act_order\n",
			       "missing\tnil\n" };
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (!strstr(c.log, want[i]))
			fail_msg("log lacks \"%.*s\":\n%s", (int)strlen(want[i]) - 1, want[i], c.log);
	assert_int_equal(r.plan.n, g_nref - 1); /* all but token_embd (gptq needs activations) */
	char buf[128];
	quant_spec_str(&r.plan.e[0].spec, buf, sizeof(buf));
	assert_string_equal(buf, "gptq:int3g128,act_order");
	pol_result_release(&r);
	tctx_release(&c);

	const char *bad[] = { "bpw=4", "novalue" };
	pol_opts ob = { 0 };
	ob.args = bad;
	ob.n_args = 2;
	expect_fail("return function(t) end", &ob, "x.lua", "'novalue'", "key=value", NULL);
	const char *bad2[] = { "=4" };
	ob.args = bad2;
	ob.n_args = 1;
	expect_fail("return function(t) end", &ob, "x.lua", "'=4'", "key=value", NULL);
}

static void test_tensors(void **state)
{
	(void)state;
	assert_int_equal(g_nblock, 7 * g_m->cfg.n_layers);
	assert_int_equal(g_nblock, 56);
	assert_int_equal(g_nref, g_nblock + 1 + (g_m->cfg.tied ? 0 : 1));
	tctx c = { 0 };
	pol_opts o = opts_for(&c);
	pol_result r;
	/* file scope: qs.tensors(); the function: what it is called with */
	expect_ok("local ts = qs.tensors()\n"
		  "assert(ts ~= qs.tensors(), 'a fresh array each call')\n"
		  "assert(ts[1] == qs.tensors()[1], 'of the same tables')\n"
		  "qs.log('count', #ts)\n"
		  "for i, t in ipairs(ts) do\n"
		  "  assert(t.index == i)\n"
		  "  assert(t.shape[1] == t.rows and t.shape[2] == t.cols)\n"
		  "  qs.log(string.format('T %d %s %s %d %d %d %d %s %d', i, t.name, t.kind, t.layer,\n"
		  "    t.rows, t.cols, t.params, t.dtype, t.bytes))\n"
		  "end\n"
		  "local n = 0\n"
		  "return function(t, model)\n"
		  "  n = n + 1\n"
		  "  assert(qs.tensors()[t.index] == t)\n"
		  "  qs.log(string.format('C %d %s', n, t.name))\n"
		  "  if n == 1 then\n"
		  "    qs.log(string.format('M %s %d %d %d %d %d %d %s %d', model.arch, model.vocab,\n"
		  "      model.dim, model.n_layers, model.n_heads, model.n_kv_heads, model.hidden,\n"
		  "      tostring(model.tied), model.params))\n"
		  "  end\n"
		  "end",
		  &o, &r);
	pol_result_release(&r);
	char want[256];
	snprintf(want, sizeof(want), "count\t%d\n", g_nref);
	if (!strstr(c.log, want))
		fail_msg("log lacks %s:\n%.2000s", want, c.log);
	for (int i = 0; i < g_nref; i++) {
		const ref_tensor *t = &g_ref[i];
		assert_int_equal(t->t->type, KN_TYPE_F16);
		snprintf(want, sizeof(want), "T %d %s %s %d %d %d %lld f16 %lld\n", i + 1, t->t->name,
			 t->kind, t->layer, t->rows, t->cols, (long long)t->rows * t->cols,
			 (long long)t->rows * t->cols * 2);
		if (!strstr(c.log, want))
			fail_msg("tensor %d: log lacks \"%s\"\n%.3000s", i + 1, want, c.log);
		snprintf(want, sizeof(want), "C %d %s\n", i + 1, t->t->name);
		if (!strstr(c.log, want))
			fail_msg("call %d: log lacks \"%s\"", i + 1, want);
	}
	snprintf(want, sizeof(want), "C %d ", g_nref + 1);
	assert_null(strstr(c.log, want));
	const model_config *cf = &g_m->cfg;
	size_t params = 0;
	for (int i = 0; i < g_m->n_tensors; i++)
		params += (size_t)g_m->tensors[i].ne[0] * (size_t)g_m->tensors[i].ne[1];
	snprintf(want, sizeof(want), "M %s %d %d %d %d %d %d %s %zu\n", cf->arch, cf->vocab, cf->dim,
		 cf->n_layers, cf->n_heads, cf->n_kv_heads, cf->hidden, cf->tied ? "true" : "false",
		 params);
	if (!strstr(c.log, want))
		fail_msg("log lacks \"%s\":\n%s", want, log_line(&c, "M "));
	tctx_release(&c);
}

/* Bytes of the formats by their definitions (kernels/qmatrix.h, ggml):
 * independent of quant_spec_bytes. */
static size_t hand_bytes(const char *spec, int rows, int cols)
{
	size_t n = (size_t)rows * (size_t)cols;
	if (!strcmp(spec, "int4g128"))
		return n / 2 + n / 128 * 4;            /* codes + fp16 scale and zero */
	if (!strcmp(spec, "int3g128sym"))
		return (size_t)rows * ((size_t)cols * 3 / 8) + n / 128 * 2;
	if (!strcmp(spec, "q8_0"))
		return n / 32 * 34;                    /* block_q8_0: fp16 d + 32 int8 */
	if (!strcmp(spec, "q4_0"))
		return n / 32 * 18;                    /* block_q4_0: fp16 d + 16 bytes */
	if (!strcmp(spec, "nf4"))
		return n / 2 + n / 64 * 4;             /* fp32 absmax per 64 */
	if (!strcmp(spec, "gptq:int4g128,act_order"))
		return n / 2 + n / 128 * 4 + (size_t)cols * 4; /* + int32 g_idx */
	return 0;
}

static void test_bytes_bits(void **state)
{
	(void)state;
	static const char *const specs[] = { "int4g128", "int3g128sym", "q8_0", "q4_0", "nf4",
					     "gptq:int4g128,act_order", "int8c", "fp8", "int2t",
					     "hqq:int5g64" };
	const int ns = (int)(sizeof(specs) / sizeof(specs[0]));
	tctx c = { 0 };
	pol_opts o = opts_for(&c);
	pol_result r;
	expect_ok("local specs = { 'int4g128', 'int3g128sym', 'q8_0', 'q4_0', 'nf4',\n"
		  "  'gptq:int4g128,act_order', 'int8c', 'fp8', 'int2t', 'hqq:int5g64' }\n"
		  "for _, t in ipairs(qs.tensors()) do\n"
		  "  for j, s in ipairs(specs) do\n"
		  "    local ok, b = pcall(qs.bytes, t, s)\n"
		  "    qs.log(string.format('B %s %d %s', t.name, j, ok and tostring(b) or 'ERR'))\n"
		  "  end\n"
		  "  assert(qs.bytes(t, 'none') == t.bytes)\n"
		  "  assert(qs.bytes(t, { bits = 4, group = 128 }) == qs.bytes(t, 'int4g128'))\n"
		  "end\n"
		  "for j, s in ipairs(specs) do\n"
		  "  qs.log(string.format('b %d %.17g', j, qs.bits(s)))\n"
		  "end\n"
		  "local t1 = qs.tensors()[1]\n"
		  "qs.log(string.format('bt %.17g', qs.bits('gptq:int4g128,act_order', t1)))\n"
		  "assert(qs.bits('none') == nil)\n"
		  "return function(t) end",
		  &o, &r);
	pol_result_release(&r);
	for (int i = 0; i < g_nref; i++)
		for (int j = 0; j < ns; j++) {
			const ref_tensor *t = &g_ref[i];
			size_t want = spec_bytes_str(specs[j], t->rows, t->cols);
			size_t hand = hand_bytes(specs[j], t->rows, t->cols);
			if (hand && hand != want)
				fail_msg("%s %s: quant_spec_bytes %zu, by hand %zu", t->t->name, specs[j],
					 want, hand);
			char line[160];
			quant_spec sp;
			qs_error qe;
			int valid = !quant_spec_parse(specs[j], &sp, &qe) &&
				    !quant_spec_check(&sp, t->t->name, t->rows, t->cols, &qe);
			if (valid)
				snprintf(line, sizeof(line), "B %s %d %zu\n", t->t->name, j + 1, want);
			else /* e.g. gptq on token_embd: qs.bytes refuses it as the quantizer would */
				snprintf(line, sizeof(line), "B %s %d ERR\n", t->t->name, j + 1);
			if (!strstr(c.log, line))
				fail_msg("qs.bytes(%s, %s): want %zu", t->t->name, specs[j], want);
		}
	/* qs.bits for 4096 x 4096, against values from the formats' definitions */
	static const double known[] = { 4.25, 3.0 + 16.0 / 128, 8.5, 4.5, 4.5,
					4.25 + 32.0 / 4096, 8.0 + 32.0 / 4096,
					8.0 + 32.0 / 4096, 2.0 + 32.0 / (4096.0 * 4096), 5.5 };
	for (int j = 0; j < ns; j++) {
		double want = 8.0 * (double)spec_bytes_str(specs[j], 4096, 4096) / (4096.0 * 4096.0);
		if (fabs(want - known[j]) > 1e-12)
			fail_msg("%s: quant_spec_bytes gives %.17g bits, the format %.17g", specs[j], want,
				 known[j]);
		char pre[16];
		snprintf(pre, sizeof(pre), "b %d ", j + 1);
		const char *l = log_line(&c, pre);
		assert_non_null(l);
		double got = strtod(l + strlen(pre), NULL);
		if (fabs(got - want) > 1e-12 * want)
			fail_msg("qs.bits(%s) = %.17g, want %.17g", specs[j], got, want);
	}
	/* with a tensor: its shape (384 columns: the act-order index costs more) */
	const ref_tensor *t1 = &g_ref[0];
	double want = 8.0 * (double)hand_bytes("gptq:int4g128,act_order", t1->rows, t1->cols) /
		      ((double)t1->rows * t1->cols);
	const char *l = log_line(&c, "bt ");
	assert_non_null(l);
	double got = strtod(l + 3, NULL);
	if (fabs(got - want) > 1e-12 * want)
		fail_msg("qs.bits(gptq act_order, %s) = %.17g, want %.17g", t1->t->name, got, want);
	tctx_release(&c);

	expect_fail("-- line 1\nlocal b = qs.bytes({ name = 'nope' }, 'q8_0')", NULL,
		    "x.lua:2: qs.bytes:", "not a tensor of this model", NULL);
	expect_fail("local b = qs.bytes(qs.tensors()[1], 'int4g100')", NULL, "x.lua:1: qs.bytes:",
		    "group 100 does not divide the row length 384", NULL);
	expect_fail("local b = qs.bits('int4g100')", NULL, "x.lua:1: qs.bits:", "group 100", NULL);
	expect_fail("local b = qs.bits('int9g128')", NULL, "x.lua:1: qs.bits:", NULL);
}

/* max |w| and rms of an F16 tensor, converted here */
static void f16_stats(const model_tensor *t, double *absmax, double *rms)
{
	const kn_fp16 *h = t->data;
	size_t n = (size_t)t->ne[0] * (size_t)t->ne[1];
	double a = 0, s = 0;
	for (size_t i = 0; i < n; i++) {
		double v = kn_fp16_to_fp32_ref(h[i]);
		a = fmax(a, fabs(v));
		s += v * v;
	}
	*absmax = a;
	*rms = sqrt(s / (double)n);
}

static void test_stats_and_log(void **state)
{
	(void)state;
	tctx c = { 0 };
	pol_opts o = opts_for(&c);
	pol_result r;
	/* without calibration (no calib, no get_calib) t.stats.input is nil */
	expect_ok("qs.log('hello', 42, true, nil)\n"
		  "print('printed', 1.5)\n"
		  "return function(t)\n"
		  "  assert(t.stats.input == nil)\n"
		  "  assert(t.stats.other == nil)\n"
		  "  if t.name == 'blk.0.attn_q.weight' or t.name == 'blk.7.ffn_down.weight'\n"
		  "     or t.name == 'token_embd.weight' then\n"
		  "    local w = t.stats.weight\n"
		  "    assert(t.stats.weight == w, 'kept after the first read')\n"
		  "    qs.log(string.format('W %s %.17g %.17g %d %d %d', t.name, w.absmax, w.rms,\n"
		  "      w.rows, w.cols, #w.channel_absmax))\n"
		  "  end\n"
		  "end",
		  &o, &r);
	pol_result_release(&r);
	assert_non_null(strstr(c.log, "hello\t42\ttrue\tnil\n"));
	assert_non_null(strstr(c.log, "printed\t1.5\n"));
	const char *names[] = { "blk.0.attn_q.weight", "blk.7.ffn_down.weight", "token_embd.weight" };
	for (int i = 0; i < 3; i++) {
		const ref_tensor *t = ref_find(names[i]);
		assert_non_null(t);
		double absmax, rms;
		f16_stats(t->t, &absmax, &rms);
		char pre[96];
		snprintf(pre, sizeof(pre), "W %s ", names[i]);
		const char *l = log_line(&c, pre);
		assert_non_null(l);
		double got_a, got_r;
		int rows, cols, nch;
		if (sscanf(l + strlen(pre), "%lf %lf %d %d %d", &got_a, &got_r, &rows, &cols, &nch) != 5)
			fail_msg("bad line %s", l);
		if (got_a != absmax)
			fail_msg("%s: t.stats.weight.absmax %.17g, max |w| %.17g", names[i], got_a, absmax);
		if (fabs(got_r - rms) > 1e-6 * rms)
			fail_msg("%s: t.stats.weight.rms %.17g, want %.17g", names[i], got_r, rms);
		assert_int_equal(rows, t->rows);
		assert_int_equal(cols, t->cols);
		assert_int_equal(nch, t->cols);
	}
	tctx_release(&c);

	/* input statistics through get_calib: called once, on the first read */
	o = opts_for(&c);
	o.get_calib = get_calib_cb;
	expect_ok("local ts = qs.tensors()\n"
		  "return function(t)\n"
		  "  local s = t.stats.input\n"
		  "  if t.kind == 'token_embd' then assert(s == nil) return end\n"
		  "  assert(s, 'no input statistics for ' .. t.name)\n"
		  "  assert(s.cols == t.cols, t.name .. ': ' .. s.cols .. ' input channels')\n"
		  "  if t.name == 'blk.2.attn_k.weight' or t.name == 'blk.1.ffn_down.weight'\n"
		  "     or t.name == 'blk.5.attn_output.weight' or t.name == 'blk.3.ffn_up.weight'\n"
		  "     or t.name == 'output.weight' then\n"
		  "    qs.log(string.format('I %s %.17g %d', t.name, s.absmax, s.rows))\n"
		  "  end\n"
		  "end",
		  &o, &r);
	pol_result_release(&r);
	assert_int_equal(c.get_calib_calls, 1);
	assert_non_null(g_calib);
	struct {
		const char *name;
		int layer, site;
	} in[] = { { "blk.2.attn_k.weight", 2, FWD_SITE_QKV },
		   { "blk.1.ffn_down.weight", 1, FWD_SITE_FFN_DOWN },
		   { "blk.5.attn_output.weight", 5, FWD_SITE_ATTN_OUT },
		   { "blk.3.ffn_up.weight", 3, FWD_SITE_FFN_IN },
		   { "output.weight", -1, FWD_SITE_OUTPUT } };
	for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
		const calib_layer_stats *ls = in[i].layer < 0 ? &g_calib->head : &g_calib->layers[in[i].layer];
		const calib_stats *st = NULL;
		for (int k = 0; k < ls->n_sites; k++)
			if (ls->site[k].site == in[i].site)
				st = &ls->site[k];
		assert_non_null(st);
		char pre[96];
		snprintf(pre, sizeof(pre), "I %s ", in[i].name);
		const char *l = log_line(&c, pre);
		assert_non_null(l);
		double a;
		long long rows;
		if (sscanf(l + strlen(pre), "%lf %lld", &a, &rows) != 2)
			fail_msg("bad line %s", l);
		if (a != st->absmax_all)
			fail_msg("%s: t.stats.input.absmax %.17g, calibration %.17g", in[i].name, a,
				 st->absmax_all);
		assert_int_equal(rows, 8 * 128);
	}
	tctx_release(&c);

	/* calib given directly: get_calib is not called */
	o = opts_for(&c);
	o.calib = g_calib;
	o.get_calib = get_calib_cb;
	expect_ok("return function(t) if t.kind ~= 'token_embd' then assert(t.stats.input) end end", &o,
		  &r);
	pol_result_release(&r);
	assert_int_equal(c.get_calib_calls, 0);
	tctx_release(&c);
}

/* ---------------------------------------------------------------- 4a. pol_fit */

static uint64_t rng;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static double urand(void)
{
	return (double)(rnd() >> 11) * (1.0 / 9007199254740992.0);
}

/* Least cost over all n_c^n choices with bytes <= budget (INFINITY if none). */
static double brute(int n, int nc, const double *cost, const size_t *bytes, size_t budget)
{
	int pick[8] = { 0 };
	double best = INFINITY;
	for (;;) {
		size_t b = 0;
		double c = 0;
		for (int i = 0; i < n; i++) {
			b += bytes[i * nc + pick[i]];
			c += cost[i * nc + pick[i]];
		}
		if (b <= budget && c < best)
			best = c;
		int i = 0;
		while (i < n && ++pick[i] == nc)
			pick[i++] = 0;
		if (i == n)
			return best;
	}
}

static void sum_choice(int n, int nc, const double *cost, const size_t *bytes, const int *ch,
		       double *c, size_t *b)
{
	*c = 0;
	*b = 0;
	for (int i = 0; i < n; i++) {
		assert_true(ch[i] >= 0 && ch[i] < nc);
		*c += cost[i * nc + ch[i]];
		*b += bytes[i * nc + ch[i]];
	}
}

static void min_max_mix(int n, int nc, const size_t *bytes, size_t *lo, size_t *hi)
{
	*lo = *hi = 0;
	for (int i = 0; i < n; i++) {
		size_t a = SIZE_MAX, z = 0;
		for (int c = 0; c < nc; c++) {
			a = bytes[i * nc + c] < a ? bytes[i * nc + c] : a;
			z = bytes[i * nc + c] > z ? bytes[i * nc + c] : z;
		}
		*lo += a;
		*hi += z;
	}
}

static void test_fit_brute_force(void **state)
{
	(void)state;
	enum { N = 6, NC = 3 };
	double cost[N * NC];
	size_t bytes[N * NC];
	int ch[N];
	qs_error e;
	rng = 0x9e3779b97f4a7c15ull;
	/* (a) small sizes: the budget is below 2^18, the unit is 1 byte, so the
	 * solver is exact */
	for (int it = 0; it < 400; it++) {
		for (int k = 0; k < N * NC; k++) {
			bytes[k] = 1 + rnd() % 5000;
			cost[k] = urand() * 10;
		}
		size_t lo, hi;
		min_max_mix(N, NC, bytes, &lo, &hi);
		size_t budget = lo + (size_t)(urand() * (double)(hi - lo + 1));
		if (budget > hi)
			budget = hi;
		if (pol_fit(N, NC, cost, bytes, budget, ch, &e))
			fail_msg("seed %d: budget %zu in [%zu, %zu]: %s", it, budget, lo, hi, e.msg);
		double c;
		size_t b;
		sum_choice(N, NC, cost, bytes, ch, &c, &b);
		double want = brute(N, NC, cost, bytes, budget);
		if (b > budget)
			fail_msg("seed %d: %zu bytes over the budget %zu", it, b, budget);
		if (fabs(c - want) > 1e-9)
			fail_msg("seed %d: cost %.12g, brute force %.12g", it, c, want);
	}
	/* (b) large sizes that are multiples of the unit docs/LUA.md gives,
	 * floor(budget / 2^18) + 1: still exact */
	const int n_unit = tu_asan() ? 10 : 50, n_round = tu_asan() ? 20 : 80;
	for (int it = 0; it < n_unit; it++) {
		size_t U = 2 + rnd() % 60;
		size_t budget = (U - 1) * ((size_t)1 << 18) + rnd() % ((size_t)1 << 18);
		size_t per = budget / N / U; /* units per tensor near the budget */
		for (int k = 0; k < N * NC; k++) {
			bytes[k] = U * (size_t)((0.6 + 0.8 * urand()) * (double)per);
			cost[k] = urand() * 10;
		}
		size_t lo, hi;
		min_max_mix(N, NC, bytes, &lo, &hi);
		if (lo > budget || hi < budget) {
			it--; /* the budget must lie between the smallest and largest mix */
			continue;
		}
		if (pol_fit(N, NC, cost, bytes, budget, ch, &e))
			fail_msg("unit seed %d: %s", it, e.msg);
		double c;
		size_t b;
		sum_choice(N, NC, cost, bytes, ch, &c, &b);
		double want = brute(N, NC, cost, bytes, budget);
		if (b > budget)
			fail_msg("unit seed %d: %zu bytes over the budget %zu", it, b, budget);
		if (fabs(c - want) > 1e-9)
			fail_msg("unit seed %d (unit %zu): cost %.12g, brute force %.12g", it, U, c, want);
	}
	/* (c) large sizes with rounding: never over the budget, and at least as
	 * good as the best mix within budget - n * unit ("optimal up to the
	 * rounding") */
	int solved = 0;
	for (int it = 0; it < n_round; it++) {
		for (int k = 0; k < N * NC; k++) {
			bytes[k] = 1000000 + rnd() % 50000000;
			cost[k] = urand() * 10;
		}
		size_t lo, hi;
		min_max_mix(N, NC, bytes, &lo, &hi);
		size_t budget = lo + (size_t)(urand() * (double)(hi - lo));
		size_t unit = budget / ((size_t)1 << 18) + 1;
		int rc = pol_fit(N, NC, cost, bytes, budget, ch, &e);
		double tight = brute(N, NC, cost, bytes, budget > N * unit ? budget - N * unit : 0);
		if (rc) {
			/* allowed only when nothing fits with the rounding's margin */
			if (isfinite(tight))
				fail_msg("rounding seed %d: %s", it, e.msg);
			continue;
		}
		solved++;
		double c;
		size_t b;
		sum_choice(N, NC, cost, bytes, ch, &c, &b);
		if (b > budget)
			fail_msg("rounding seed %d: %zu bytes over the budget %zu", it, b, budget);
		if (c > tight + 1e-9)
			fail_msg("rounding seed %d: cost %.12g, worse than %.12g within budget - n * unit",
				 it, c, tight);
	}
	assert_true(solved > n_round * 3 / 4);
	/* (d) sizes just below a multiple of the unit: a solver that rounded
	 * them down would take every preferred candidate and exceed the budget.
	 * budget 5000000: unit floor(5000000 / 2^18) + 1 = 20, 250000 units. */
	{
		const size_t budget = 5000000, k[N] = { 41666, 41666, 41667, 41667, 41667, 41667 };
		for (int i = 0; i < N; i++) {
			bytes[i * NC + 0] = 20000;
			bytes[i * NC + 1] = 20 * k[i] + 19; /* the six sum to budget + 114 */
			bytes[i * NC + 2] = 20 * k[i] + 19;
			cost[i * NC + 0] = 1;
			cost[i * NC + 1] = 0;
			cost[i * NC + 2] = 0.5;
		}
		if (pol_fit(N, NC, cost, bytes, budget, ch, &e))
			fail_msg("rounding edge: %s", e.msg);
		double c;
		size_t b;
		sum_choice(N, NC, cost, bytes, ch, &c, &b);
		if (b > budget)
			fail_msg("rounding edge: %zu bytes over the budget %zu", b, budget);
		assert_true(fabs(c - brute(N, NC, cost, bytes, budget)) < 1e-12);
	}
	/* a budget below the smallest mix */
	for (int k = 0; k < N * NC; k++) {
		bytes[k] = 100 + (size_t)k;
		cost[k] = 1;
	}
	size_t lo, hi;
	min_max_mix(N, NC, bytes, &lo, &hi);
	assert_int_not_equal(pol_fit(N, NC, cost, bytes, lo - 1, ch, &e), 0);
	char want[128];
	snprintf(want, sizeof(want), "(%zu bytes)", lo - 1);
	assert_non_null(strstr(e.msg, want));
	snprintf(want, sizeof(want), "(%zu bytes)", lo);
	assert_non_null(strstr(e.msg, want));
	assert_non_null(strstr(e.msg, "below the smallest mix"));
	/* exactly the smallest mix fits: every tensor at its smallest */
	assert_int_equal(pol_fit(N, NC, cost, bytes, lo, ch, &e), 0);
	for (int i = 0; i < N; i++)
		assert_int_equal(ch[i], 0);
	/* a cost that is not finite, and nothing to fit */
	cost[4] = NAN;
	assert_int_not_equal(pol_fit(N, NC, cost, bytes, hi, ch, &e), 0);
	assert_non_null(strstr(e.msg, "not finite"));
	assert_int_not_equal(pol_fit(0, NC, cost, bytes, hi, ch, &e), 0);
}

/* A budget exactly equal to the smallest mix is feasible (docs/LUA.md: an
 * error only for "a budget below the smallest possible mix"), also when the
 * sizes are large enough for the unit to round them. */
static void test_fit_budget_at_smallest_mix(void **state)
{
	(void)state;
	const size_t bytes[6] = { 1000003, 2000000, 1500007, 3000000, 2500009, 5000000 };
	const double cost[6] = { 1, 0.5, 1, 0.5, 1, 0.5 };
	const size_t lo = 1000003 + 1500007 + 2500009;
	int ch[3];
	qs_error e = { 0 };
	if (pol_fit(3, 2, cost, bytes, lo, ch, &e))
		fail_msg("budget %zu = the smallest mix: %s", lo, e.msg);
	for (int i = 0; i < 3; i++)
		assert_int_equal(ch[i], 0);
}

/* ---------------------------------------------------------------- 4b. qs.fit */

#define FIT_POLICY                                                                       \
	"local plan, s = qs.fit{ budget_bpw = 4.5, candidates = { 'int4g128', 'int3g128', 'q8_0' } }\n" \
	"qs.log(string.format('S %d %d %d %.17g %.17g %s', s.bytes, s.budget_bytes, s.params,\n"   \
	"  s.bpw, s.cost, s.objective))\n"                                                       \
	"local n = 0\n"                                                                          \
	"for k, v in pairs(plan) do n = n + 1 end\n"                                             \
	"qs.log('N ' .. n)\n"                                                                    \
	"return function(t)\n"                                                                   \
	"  if t.name == 'blk.3.ffn_up.weight' then\n"                                            \
	"    qs.log(string.format('K %.17g %.17g %d', t.sens.int3g128.kld,\n"                   \
	"      t.sens['rtn:int3g128'].kld, t.sens.q8_0.bytes))\n"                                \
	"  end\n"                                                                                \
	"  return plan[t.name]\n"                                                                \
	"end\n"

static int cand_bits_index(const char *spec)
{
	for (int c = 0; c < 3; c++)
		if (!strcmp(spec, FIT_CANDS[c]))
			return c;
	return -1;
}

/* Check a qs.fit plan over the block linears at 4.5 bpw and its summary. */
static void check_fit_plan(const pol_result *r, const tctx *c)
{
	size_t params = 0;
	for (int i = 0; i < g_nblock; i++)
		params += (size_t)g_ref[i].rows * (size_t)g_ref[i].cols;
	const size_t budget = (size_t)floor(4.5 * (double)params / 8.0);
	assert_int_equal(r->plan.n, g_nblock);
	size_t used = 0;
	double cost = 0;
	int choice[256], n_hi = 0, n_lo = 0;
	for (int i = 0; i < g_nblock; i++) {
		const ref_tensor *t = &g_ref[i];
		const quant_spec *s = quant_plan_find(&r->plan, t->t->name);
		if (!s)
			fail_msg("%s missing from the fitted plan", t->t->name);
		char buf[96];
		quant_spec_str(s, buf, sizeof(buf));
		choice[i] = cand_bits_index(buf);
		if (choice[i] < 0)
			fail_msg("%s: %s is not a candidate", t->t->name, buf);
		size_t b = quant_spec_bytes(s, t->rows, t->cols);
		used += b;
		cost += synth_kld(t->t->name, 8.0 * (double)b / ((double)t->rows * t->cols));
		n_hi += choice[i] == 2;
		n_lo += choice[i] == 1;
	}
	assert_null(quant_plan_find(&r->plan, "token_embd.weight"));
	assert_null(quant_plan_find(&r->plan, "output.weight"));
	if (used > budget)
		fail_msg("the plan uses %zu bytes, over the budget %zu", used, budget);
	/* the two very sensitive tensors are worth q8_0 */
	assert_int_equal(choice[ref_find(SENSITIVE_A) - g_ref], 2);
	assert_int_equal(choice[ref_find(SENSITIVE_B) - g_ref], 2);
	assert_true(n_lo > 0); /* paying for them */
	/* no single upgrade to a costlier-but-better candidate still fits (with
	 * the rounding's margin): otherwise the fit was not optimal. Upgrades:
	 * int3g128 -> int4g128 -> q8_0, each strictly lowering the KLD. */
	const size_t unit = budget / ((size_t)1 << 18) + 1;
	static const int next[3] = { 2, 0, -1 }; /* int4 -> q8_0, int3 -> int4 */
	for (int i = 0; i < g_nblock; i++) {
		int up = next[choice[i]];
		if (up < 0)
			continue;
		const ref_tensor *t = &g_ref[i];
		size_t d = spec_bytes_str(FIT_CANDS[up], t->rows, t->cols) -
			   spec_bytes_str(FIT_CANDS[choice[i]], t->rows, t->cols);
		if (used + d + (size_t)(g_nblock + 2) * unit <= budget)
			fail_msg("%s could move up to %s (%zu more bytes, %zu left): not optimal",
				 t->t->name, FIT_CANDS[up], d, budget - used);
	}
	/* the summary */
	const char *l = log_line(c, "S ");
	assert_non_null(l);
	unsigned long long sb, sbudget, sparams;
	double sbpw, scost;
	char obj[16];
	if (sscanf(l, "S %llu %llu %llu %lf %lf %15s", &sb, &sbudget, &sparams, &sbpw, &scost, obj) != 6)
		fail_msg("bad summary line %s", l);
	assert_int_equal(sb, used);
	assert_int_equal(sbudget, budget);
	assert_int_equal(sparams, params);
	assert_true(fabs(sbpw - 8.0 * (double)used / (double)params) < 1e-12);
	assert_true(sbpw <= 4.5);
	assert_true(fabs(scost - cost) <= 1e-9 * cost);
	assert_string_equal(obj, "kld");
	char nline[32];
	snprintf(nline, sizeof(nline), "N %d\n", g_nblock);
	assert_non_null(strstr(c->log, nline));
	/* t.sens as the table says, also under another spelling */
	const ref_tensor *u = ref_find("blk.3.ffn_up.weight");
	double k3 = synth_kld(u->t->name,
			      8.0 * (double)spec_bytes_str("int3g128", u->rows, u->cols) /
				      ((double)u->rows * u->cols));
	l = log_line(c, "K ");
	assert_non_null(l);
	double a, b;
	unsigned long long qb;
	assert_int_equal(sscanf(l, "K %lf %lf %llu", &a, &b, &qb), 3);
	assert_true(a == k3 && b == k3);
	assert_int_equal(qb, (unsigned long long)u->rows * u->cols / 32 * 34);
}

static void test_fit_lua(void **state)
{
	(void)state;
	tctx c = { 0 };
	pol_opts o = opts_for(&c);
	o.sens = &g_sens;
	pol_result r;
	expect_ok(FIT_POLICY, &o, &r);
	check_fit_plan(&r, &c);
	assert_int_equal(c.get_sens_calls, 0);
	pol_result_release(&r);
	tctx_release(&c);

	/* no table: get_sens is asked once, for the candidates in canonical form */
	o = opts_for(&c);
	o.get_sens = get_sens_cb;
	expect_ok(FIT_POLICY, &o, &r);
	check_fit_plan(&r, &c);
	assert_int_equal(c.get_sens_calls, 1);
	assert_int_equal(c.n_asked, 3);
	for (int i = 0; i < 3; i++)
		assert_string_equal(c.asked[i], FIT_CANDS[i]);
	pol_result_release(&r);
	tctx_release(&c);

	/* a second qs.fit with the same candidates does not scan again; one
	 * with a candidate the table lacks does */
	o = opts_for(&c);
	o.sens = &g_sens;
	o.get_sens = get_sens_cb;
	expect_ok("local p1 = qs.fit{ budget_bpw = 4.5, candidates = { 'rtn:int4g128', 'q8_0' } }\n"
		  "assert(p1['blk.0.attn_q.weight'])\n"
		  "local p2 = qs.fit{ budget_bpw = 3.5, candidates = { 'int2g128', 'int4g128' } }\n"
		  "local p3 = qs.fit{ budget_bpw = 3.5, candidates = { 'int2g128', 'int4g128' } }\n"
		  "return function(t)\n"
		  "  if t.sens then assert(t.sens.int2g128 and t.sens.int3g128 == nil) end\n"
		  "  return p2[t.name]\n"
		  "end",
		  &o, &r);
	assert_int_equal(c.get_sens_calls, 1);
	assert_int_equal(c.n_asked, 2);
	assert_string_equal(c.asked[0], "int2g128");
	assert_string_equal(c.asked[1], "int4g128");
	assert_int_equal(r.plan.n, g_nblock);
	size_t used = 0, params = 0;
	for (int i = 0; i < r.plan.n; i++) {
		const ref_tensor *t = ref_find(r.plan.e[i].name);
		used += quant_spec_bytes(&r.plan.e[i].spec, t->rows, t->cols);
		params += (size_t)t->rows * t->cols;
	}
	assert_true(used <= (size_t)floor(3.5 * (double)params / 8.0));
	pol_result_release(&r);
	tctx_release(&c);

	/* budget_bytes, a subset of tensors, the ppl objective */
	o = opts_for(&c);
	o.sens = &g_sens;
	expect_ok("local names = { 'blk.1.ffn_up.weight', 'blk.2.ffn_up.weight' }\n"
		  "local budget = 0\n"
		  "for _, n in ipairs(names) do\n"
		  "  for _, t in ipairs(qs.tensors()) do\n"
		  "    if t.name == n then budget = budget + qs.bytes(t, 'int4g128') end\n"
		  "  end\n"
		  "end\n"
		  "local plan, s = qs.fit{ tensors = names, budget_bytes = budget, objective = 'ppl' }\n"
		  "qs.log(string.format('P %d %d %s', s.bytes, s.budget_bytes, s.objective))\n"
		  "return function(t) return plan[t.name] end",
		  &o, &r);
	assert_int_equal(r.plan.n, 2);
	const ref_tensor *u1 = ref_find("blk.1.ffn_up.weight");
	size_t want_b = 2 * spec_bytes_str("int4g128", u1->rows, u1->cols);
	size_t got_b = 0;
	for (int i = 0; i < 2; i++)
		got_b += quant_spec_bytes(&r.plan.e[i].spec, u1->rows, u1->cols);
	assert_true(got_b <= want_b);
	char pl[96];
	snprintf(pl, sizeof(pl), "P %zu %zu ppl\n", got_b, want_b);
	if (!strstr(c.log, pl))
		fail_msg("log lacks %s: %s", pl, c.log);
	pol_result_release(&r);
	tctx_release(&c);
}

static void test_fit_lua_errors(void **state)
{
	(void)state;
	pol_opts o = { 0 };
	o.sens = &g_sens;
	expect_fail("-- line 1\nlocal p = qs.fit{ budget_bpw = 4.5, candidate = { 'int4g128' } }", &o,
		    "x.lua:2: qs.fit: unknown field 'candidate'", NULL);
	expect_fail("-- line 1\nlocal p = qs.fit{ candidates = { 'int4g128', 'q8_0' } }", &o,
		    "x.lua:2: qs.fit:", "budget_bpw", NULL);
	expect_fail("local p = qs.fit{ budget_bpw = 100, candidates = { 'int4g128' } }", &o,
		    "x.lua:1: qs.fit:", "budget_bpw", NULL);
	expect_fail("local p = qs.fit{ budget_bytes = -5, candidates = { 'int4g128' } }", &o,
		    "x.lua:1: qs.fit:", "budget_bytes", NULL);
	expect_fail("local p = qs.fit{ budget_bpw = 4, objective = 'mse' }", &o, "x.lua:1: qs.fit:",
		    "objective", NULL);
	expect_fail("local p = qs.fit{ budget_bpw = 4, candidates = { 'int4g128', 'bogus' } }", &o,
		    "x.lua:1: qs.fit: candidates[2]", NULL);
	expect_fail("local p = qs.fit{ budget_bpw = 4, candidates = { 'int4g128,outliers=6' } }", &o,
		    "x.lua:1: qs.fit: candidates[1]", NULL);
	expect_fail("local p = qs.fit{ budget_bpw = 4, tensors = { 'blk.0.attn_q.weight', "
		    "'blk.0.attn_q.weight' } }",
		    &o, "x.lua:1: qs.fit:", "listed twice", NULL);
	expect_fail("local p = qs.fit{ budget_bpw = 4, tensors = { 'nope.weight' } }", &o,
		    "x.lua:1: qs.fit: tensors[1]", NULL);
	expect_fail("local p = qs.fit{ budget_bpw = 4, tensors = { 'token_embd.weight' } }", &o,
		    "x.lua:1: qs.fit: no sensitivity for token_embd.weight", NULL);
	/* infeasible: 2 bits per weight is below int3g128's 3.25 */
	size_t params = 0, lo = 0;
	for (int i = 0; i < g_nblock; i++) {
		params += (size_t)g_ref[i].rows * g_ref[i].cols;
		lo += spec_bytes_str("int3g128", g_ref[i].rows, g_ref[i].cols);
	}
	char want[160];
	snprintf(want, sizeof(want),
		 "x.lua:1: qs.fit: the budget (%zu bytes) is below the smallest mix of the "
		 "candidates (%zu bytes)",
		 (size_t)floor(2.0 * (double)params / 8.0), lo);
	expect_fail("local p = qs.fit{ budget_bpw = 2, candidates = { 'int4g128', 'int3g128', 'q8_0' } }",
		    &o, want, NULL);
	/* candidates the table lacks, without get_sens */
	expect_fail("-- line 1\nlocal p = qs.fit{ budget_bpw = 4, candidates = { 'int4g128', 'int2g128' } }",
		    &o, "x.lua:2: qs.fit: no sensitivity", "qscope sensitivity", NULL);
	pol_opts none = { 0 };
	expect_fail("local p = qs.fit{ budget_bpw = 4, candidates = { 'int4g128' } }", &none,
		    "x.lua:1: qs.fit: no sensitivity", NULL);
	expect_fail("local p = qs.fit{ budget_bpw = 4 }", &none, "x.lua:1: qs.fit:",
		    "no candidates given and no sensitivity scan loaded", NULL);
	/* a failing scan */
	tctx c = { 0 };
	pol_opts of = opts_for(&c);
	of.get_sens = get_sens_cb;
	c.sens_fail = 1;
	pol_result r;
	qs_error e;
	int rc = run_src("local p = qs.fit{ budget_bpw = 4, candidates = { 'int4g128' } }", &of, &r, &e);
	pol_result_release(&r);
	assert_int_not_equal(rc, 0);
	assert_string_equal(e.msg, "x.lua:1: qs.fit: sensitivity scan failed: synthetic scan refused");
	assert_int_equal(c.get_sens_calls, 1);
	tctx_release(&c);
}

/* budget_bpw equal to the smallest candidate's bits per weight: the plan of
 * all smallest candidates fits exactly. */
static void test_fit_lua_budget_at_smallest(void **state)
{
	(void)state;
	size_t params = 0, lo = 0;
	for (int i = 0; i < g_nblock; i++) {
		params += (size_t)g_ref[i].rows * g_ref[i].cols;
		lo += spec_bytes_str("int3g128", g_ref[i].rows, g_ref[i].cols);
	}
	/* int3g128 is 3.25 bits per weight on every block linear (384 and 1024
	 * are multiples of 128) */
	assert_int_equal(lo * 8, params * 13 / 4);
	pol_opts o = { 0 };
	o.sens = &g_sens;
	pol_result r;
	expect_ok("local plan = qs.fit{ budget_bpw = 3.25, candidates = { 'int3g128', 'int4g128' } }\n"
		  "return function(t) return plan[t.name] end",
		  &o, &r);
	assert_int_equal(r.plan.n, g_nblock);
	pol_result_release(&r);
}

/* ---------------------------------------------------------------- 5. recipes */

static void write_text(const char *path, const char *text)
{
	if (tu_write_file(path, text, strlen(text)))
		fail_msg("cannot write %s", path);
}

static void expect_recipe_error(const char *path, const char *text, ...)
{
	write_text(path, text);
	quant_plan p;
	qs_error e = { 0 };
	int rc = quant_plan_load(path, g_m, &p, &e);
	if (!rc) {
		quant_plan_release(&p);
		fail_msg("recipe loaded, expected an error:\n%s", text);
	}
	if (!strstr(e.msg, path))
		fail_msg("message does not name the file %s: %s", path, e.msg);
	va_list ap;
	va_start(ap, text);
	check_has(text, e.msg, ap);
	va_end(ap);
}

static void test_recipes(void **state)
{
	(void)state;
	pol_result r;
	pol_opts o = { 0 };
	expect_ok(PLAN_POLICY, &o, &r);
	const char *path = tu_tmppath("mix.json");
	qs_error e = { 0 };
	if (quant_plan_save(path, g_m, &r.plan, "policy x.lua", &e))
		fail_msg("save: %s", e.msg);
	quant_plan back;
	if (quant_plan_load(path, g_m, &back, &e))
		fail_msg("load: %s", e.msg);
	assert_int_equal(back.n, r.plan.n);
	for (int i = 0; i < back.n; i++) {
		const quant_spec *a = &r.plan.e[i].spec, *b = &back.e[i].spec;
		assert_string_equal(back.e[i].name, r.plan.e[i].name);
		char sa[128], sb[128];
		quant_spec_str(a, sa, sizeof(sa));
		quant_spec_str(b, sb, sizeof(sb));
		assert_string_equal(sa, sb);
		assert_int_equal(a->method, b->method);
		assert_int_equal(a->fmt.fmt, b->fmt.fmt);
		assert_int_equal(a->fmt.bits, b->fmt.bits);
		assert_int_equal(a->fmt.group, b->fmt.group);
		assert_int_equal(a->fmt.sym, b->fmt.sym);
		assert_int_equal(a->fmt.ggml_type, b->fmt.ggml_type);
		assert_int_equal(a->act_order, b->act_order);
		assert_true(a->damp == b->damp && a->hqq_p == b->hqq_p && a->hqq_iters == b->hqq_iters);
	}
	check_plan_policy(&back);
	quant_plan_release(&back);
	pol_result_release(&r);

	const char *bad = tu_tmppath("bad.json");
	expect_recipe_error(bad,
			    "{\"qscope_recipe\": 1, \"tensors\": ["
			    "{\"name\": \"blk.0.attn_q.weight\", \"spec\": \"q8_0\"},"
			    "{\"name\": \"blk.99.attn_q.weight\", \"spec\": \"q8_0\"}]}",
			    "tensors[1]", "blk.99.attn_q.weight", NULL);
	expect_recipe_error(bad,
			    "{\"qscope_recipe\": 1, \"tensors\": ["
			    "{\"name\": \"blk.0.attn_norm.weight\", \"spec\": \"q8_0\"}]}",
			    "tensors[0]", "blk.0.attn_norm.weight", NULL);
	expect_recipe_error(bad,
			    "{\"qscope_recipe\": 1, \"tensors\": ["
			    "{\"name\": \"blk.0.attn_q.weight\", \"spec\": \"q8_0\"},"
			    "{\"name\": \"blk.0.attn_k.weight\", \"spec\": \"q8_0\"},"
			    "{\"name\": \"blk.0.attn_v.weight\", \"spec\": \"int9g128\"}]}",
			    "tensors[2]", "blk.0.attn_v.weight", "int9g128", NULL);
	expect_recipe_error(bad,
			    "{\"qscope_recipe\": 1, \"tensors\": ["
			    "{\"name\": \"blk.1.attn_k.weight\", \"spec\": \"int4g100\"}]}",
			    "blk.1.attn_k.weight", "group 100 does not divide the row length 384", NULL);
	expect_recipe_error(bad,
			    "{\"qscope_recipe\": 1, \"tensors\": ["
			    "{\"name\": \"blk.1.attn_k.weight\", \"spec\": \"q8_0\"},"
			    "{\"name\": \"blk.1.attn_k.weight\", \"spec\": \"q4_0\"}]}",
			    "tensors[1]", "blk.1.attn_k.weight", "twice", NULL);
	expect_recipe_error(bad,
			    "{\"qscope_recipe\": 2, \"tensors\": ["
			    "{\"name\": \"blk.0.attn_q.weight\", \"spec\": \"q8_0\"}]}",
			    "qscope_recipe", NULL);
	expect_recipe_error(bad, "{\"tensors\": []}", "qscope_recipe", NULL);
	expect_recipe_error(bad,
			    "{\"qscope_recipe\": 1, \"tensors\": [{\"name\": \"blk.0.attn_q.weight\"}]}",
			    "tensors[0]", "'spec'", NULL);
	expect_recipe_error(bad, "{\"qscope_recipe\": 1, \"tensors\": [", NULL);
}

/* ---------------------------------------------------------------- 6. bundled policies */

/* Every planned tensor is quantizable, listed once, and its spec fits (checked
 * here again with quant_spec_check). Returns bytes and params of the plan. */
static void check_valid_plan(const char *what, const quant_plan *p, size_t *bytes, size_t *params)
{
	*bytes = *params = 0;
	if (p->n == 0)
		fail_msg("%s: empty plan", what);
	for (int i = 0; i < p->n; i++) {
		const ref_tensor *t = ref_find(p->e[i].name);
		if (!t)
			fail_msg("%s: %s is not a quantizable tensor", what, p->e[i].name);
		for (int k = 0; k < i; k++)
			if (!strcmp(p->e[k].name, p->e[i].name))
				fail_msg("%s: %s twice", what, p->e[i].name);
		qs_error e;
		if (quant_spec_check(&p->e[i].spec, t->t->name, t->rows, t->cols, &e))
			fail_msg("%s: %s", what, e.msg);
		if (p->e[i].spec.method == QUANT_NONE)
			fail_msg("%s: %s planned as none", what, p->e[i].name);
		*bytes += quant_spec_bytes(&p->e[i].spec, t->rows, t->cols);
		*params += (size_t)t->rows * (size_t)t->cols;
	}
}

static const char *const BUDGET_ARGS[] = { "candidates=int4g128,int3g128,q8_0", "bpw=4.5" };

static void run_bundled(const char *file)
{
	char path[256];
	snprintf(path, sizeof(path), "lua/policies/%s", file);
	struct stat st;
	if (stat(path, &st) != 0)
		fail_msg("%s: the bundled policy is missing", path);
	int is_budget = !strcmp(file, "budget.lua");
	tctx c = { 0 };
	pol_opts o = opts_for(&c);
	o.sens = &g_sens;
	o.get_sens = get_sens_cb;
	o.get_calib = get_calib_cb;
	if (is_budget) {
		o.args = BUDGET_ARGS;
		o.n_args = 2;
	}
	pol_result r;
	qs_error e = { 0 };
	if (pol_run_file(g_m, path, &o, &r, &e))
		fail_msg("%s: %s\n%s", path, e.msg, r.trace);
	size_t bytes, params;
	check_valid_plan(path, &r.plan, &bytes, &params);
	if (is_budget) {
		size_t budget = (size_t)floor(4.5 * (double)params / 8.0);
		if (bytes > budget)
			fail_msg("%s: %zu bytes over the budget %zu (4.5 bpw over %zu weights)", path,
				 bytes, budget, params);
		assert_int_equal(c.get_sens_calls, 0); /* the table has these candidates */
	}
	print_message("%s: %d tensors, %.3f bpw over them\n", file, r.plan.n,
		      8.0 * (double)bytes / (double)params);
	pol_result_release(&r);
	tctx_release(&c);
}

static void test_policy_uniform(void **s) { (void)s; run_bundled("uniform.lua"); }
static void test_policy_llamacpp(void **s) { (void)s; run_bundled("llamacpp_q4_k_m.lua"); }
static void test_policy_keep_ends(void **s) { (void)s; run_bundled("keep_ends.lua"); }
static void test_policy_outlier_aware(void **s) { (void)s; run_bundled("outlier_aware.lua"); }
static void test_policy_budget(void **s) { (void)s; run_bundled("budget.lua"); }

/* ---------------------------------------------------------------- 7. docs/LUA.md */

static void test_docs_examples(void **state)
{
	(void)state;
	size_t len;
	char *doc = tu_read_file("docs/LUA.md", &len);
	if (!doc)
		fail_msg("docs/LUA.md: missing (the test checks its examples)");
	char failures[4096] = "";
	size_t fl = 0;
	int n_blocks = 0, n_failed = 0, line = 0;
	char *p = doc;
	while (*p) {
		char *eol = strchr(p, '\n');
		size_t ll = eol ? (size_t)(eol - p) : strlen(p);
		line++;
		if (ll >= 6 && !strncmp(p, "```lua", 6) && (ll == 6 || p[6] == ' ' || p[6] == '\r')) {
			int start = line;
			char *body = eol ? eol + 1 : p + ll, *q = body, *end = NULL;
			/* up to the closing fence */
			while (*q) {
				char *e2 = strchr(q, '\n');
				line++;
				if (!strncmp(q, "```", 3)) {
					end = q;
					q = e2 ? e2 + 1 : q + strlen(q);
					break;
				}
				q = e2 ? e2 + 1 : q + strlen(q);
			}
			if (!end)
				fail_msg("docs/LUA.md:%d: ```lua block without a closing fence", start);
			n_blocks++;
			tctx c = { 0 };
			pol_opts o = opts_for(&c);
			o.sens = &g_sens;
			o.get_sens = get_sens_cb;
			o.get_calib = get_calib_cb;
			o.args = BUDGET_ARGS;
			o.n_args = 2;
			pol_result r;
			qs_error e = { 0 };
			if (pol_run_string(g_m, "LUA.md", body, (size_t)(end - body), &o, &r, &e)) {
				n_failed++;
				if (fl < sizeof(failures) - 1)
					fl += (size_t)snprintf(failures + fl, sizeof(failures) - fl,
							      "  block at docs/LUA.md:%d: %s\n", start, e.msg);
			} else if (r.plan.n) {
				size_t b, pa;
				char what[64];
				snprintf(what, sizeof(what), "block at docs/LUA.md:%d", start);
				check_valid_plan(what, &r.plan, &b, &pa);
			}
			pol_result_release(&r);
			tctx_release(&c);
			p = q;
			continue;
		}
		p = eol ? eol + 1 : p + ll;
	}
	free(doc);
	print_message("docs/LUA.md: %d lua blocks\n", n_blocks);
	if (n_failed)
		fail_msg("%d of %d lua blocks of docs/LUA.md fail:\n%s", n_failed, n_blocks, failures);
	assert_true(n_blocks > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		/* forking tests first, before calibration starts OpenMP threads */
		cmocka_unit_test(test_sandbox_budget),
		cmocka_unit_test(test_sandbox_budget_xpcall_handler),
		cmocka_unit_test(test_sandbox_budget_line),
		cmocka_unit_test(test_sandbox_memory),
		cmocka_unit_test(test_sandbox_memory_error_then_other_error),
		cmocka_unit_test(test_sandbox_recursion),
		cmocka_unit_test(test_sandbox_libraries),
		cmocka_unit_test(test_sandbox_load),
		cmocka_unit_test(test_sandbox_metatables),
		cmocka_unit_test(test_sandbox_setmetatable_line),
		cmocka_unit_test(test_sandbox_errors),
		cmocka_unit_test(test_spec_errors),
		cmocka_unit_test(test_spec_numeric_strings),
		cmocka_unit_test(test_plan_tables_strings_nil),
		cmocka_unit_test(test_args),
		cmocka_unit_test(test_tensors),
		cmocka_unit_test(test_bytes_bits),
		cmocka_unit_test(test_stats_and_log),
		cmocka_unit_test(test_fit_brute_force),
		cmocka_unit_test(test_fit_budget_at_smallest_mix),
		cmocka_unit_test(test_fit_lua),
		cmocka_unit_test(test_fit_lua_errors),
		cmocka_unit_test(test_fit_lua_budget_at_smallest),
		cmocka_unit_test(test_recipes),
		cmocka_unit_test(test_policy_uniform),
		cmocka_unit_test(test_policy_llamacpp),
		cmocka_unit_test(test_policy_keep_ends),
		cmocka_unit_test(test_policy_outlier_aware),
		cmocka_unit_test(test_policy_budget),
		cmocka_unit_test(test_docs_examples),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
