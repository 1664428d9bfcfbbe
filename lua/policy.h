/* policy.h - Lua policies: a sandboxed Lua 5.4 script that looks at every
 * quantizable tensor (shape, weight and input statistics, measured
 * sensitivity) and returns a quantization plan.
 *
 * A policy file returns a function called once per quantizable tensor:
 *
 *     return function(t, model)
 *       if t.kind == "ffn_down" then return {method="gptq", bits=4, group=128} end
 *       return "q4_0"
 *     end
 *
 * The function returns a spec table, a spec string (anything
 * quant_spec_parse takes: "q4_0", "nf4", "gptq:int3g128,act_order") or nil
 * (keep the tensor as stored). docs/LUA.md documents every field of t and
 * model and the qs library.
 *
 * The sandbox: one fresh lua_State per run with base, table, string, math
 * and utf8 only; no io, os, require, dofile, loadfile, collectgarbage,
 * string.dump; load accepts text chunks only. A counting allocator ends the
 * run with an error past mem_cap bytes, and a count hook past instr_budget
 * VM instructions (xpcall handlers are skipped once it is spent;
 * setmetatable refuses __gc, whose finalizers would run with hooks off).
 * Time spent inside one C library call (a pathological string pattern) is
 * not counted. Every call into Lua is protected; errors come back as one
 * line, "policy.lua:12: attempt to index a nil value (field 'stats')", with
 * the tensor being decided appended when the message does not name it and
 * the traceback kept in pol_result.trace. */
#ifndef QS_POLICY_H
#define QS_POLICY_H

#include <stddef.h>

#include "../engine/calib.h"
#include "../engine/error.h"
#include "../engine/model.h"
#include "../engine/quantize.h"
#include "../engine/sens.h"

#define POL_MEM_CAP_DEFAULT ((size_t)64 << 20)
#define POL_INSTR_BUDGET_DEFAULT 100000000L

/* What the host gives a policy run. Everything but the model is optional. */
typedef struct pol_opts {
	size_t mem_cap;          /* bytes the script may hold (0: 64 MiB) */
	long instr_budget;       /* VM instructions (0: 10^8) */
	const char *const *args; /* "key=value" strings for the global `args` table */
	int n_args;
	const calib_set *calib;  /* input statistics, or NULL */
	/* Called the first time a script reads t.stats.input when calib is
	 * NULL: compute (or load) the statistics. NULL: t.stats.input is nil. */
	int (*get_calib)(void *user, const calib_set **out, qs_error *err);
	const sens_table *sens;  /* measured sensitivity, or NULL */
	/* Called by qs.fit when a candidate it needs has no measurement: run
	 * (or load) a scan of those candidates. The table stays owned by the
	 * host and must live until pol_run returns. NULL: qs.fit fails with a
	 * message saying to run `qscope sensitivity`. */
	int (*get_sens)(void *user, const char *const *cands, int n_cands,
			const sens_table **out, qs_error *err);
	/* qs.log and print; NULL: stderr with a "policy: " prefix */
	void (*log)(void *user, const char *line);
	void *user;
} pol_opts;

typedef struct pol_result {
	quant_plan plan;         /* one entry per tensor the policy quantized */
	char trace[2048];        /* Lua traceback of the last error, or "" */
	long instructions;       /* VM instructions used (to the count hook's step) */
	size_t mem_peak;         /* most bytes the script held */
} pol_result;

/* Run the policy in path (chunk name: its base name) over m's quantizable
 * tensors, in model order: every block linear, then token_embd and output
 * (output skipped when tied). r->plan gets the specs, each checked with
 * quant_spec_check; errors name the file, line, tensor and field. Release
 * r with pol_result_release (also after a failure). */
int pol_run_file(const model *m, const char *path, const pol_opts *o, pol_result *r,
		 qs_error *err);
/* The same for a script in memory; name is the chunk name for messages. */
int pol_run_string(const model *m, const char *name, const char *src, size_t len,
		   const pol_opts *o, pol_result *r, qs_error *err);
void pol_result_release(pol_result *r);

/* qs.fit as a C function (the Lua function calls it): choose one of the
 * n_cands candidate specs for each of the n tensors minimizing the sum of
 * cost[i * n_cands + c] (objective values, e.g. KLD) subject to
 * sum bytes[i * n_cands + c] <= budget. A multiple-choice knapsack solved
 * exactly by dynamic programming over each tensor's bytes above its
 * smallest candidate, against the budget left after the smallest mix, in
 * units of (spare / 2^18 + 1) bytes with sizes rounded up: the budget is
 * never exceeded, a budget equal to the smallest mix is met, and the
 * optimum is exact when sizes are multiples of the unit. choice (n) gets
 * the candidate index of each tensor. Error if even the cheapest choices
 * exceed the budget. */
int pol_fit(int n, int n_cands, const double *cost, const size_t *bytes, size_t budget,
	    int *choice, qs_error *err);

#endif
