/* policy.c - the Lua policy sandbox and the qs library (see policy.h and
 * docs/LUA.md). */
#include "policy.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/qmatrix.h"
#include "../kernels/types.h"
#include "../engine/forward.h"

#define HOOK_STEP 1000 /* instructions between count-hook calls */
#define FIT_MAX_STEPS (1 << 18)

/* One quantizable tensor as the policy sees it. */
typedef struct pol_tensor {
	const model_tensor *t;
	const char *kind;
	int layer;           /* block; -1 token_embd; n_layers output */
	int site;            /* enum fwd_site of its input, -1 for token_embd */
} pol_tensor;

/* Everything a run needs, reachable from the Lua state's extra space. */
typedef struct pol_run {
	const model *m;
	const pol_opts *o;
	const char *name;    /* chunk name */
	pol_tensor *tens;
	int n_tens;
	const calib_set *calib;
	const sens_table *sens;
	/* limits */
	size_t used, cap, peak;
	long instr, budget;
	int mem_hit, instr_hit;
	char trace[2048];
	qs_error *err;
	quant_plan *plan;    /* the result being built */
	const char *cur;     /* tensor whose spec is being chosen, for messages */
} pol_run;

static pol_run *run_of(lua_State *L)
{
	return *(pol_run **)lua_getextraspace(L);
}

/* ------------------------------------------------------------ limits */

/* lua_Alloc with a cap: refusing an allocation makes Lua raise its memory
 * error, which the protected call reports. */
static void *cap_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	pol_run *r = ud;
	size_t old = ptr ? osize : 0;
	if (nsize == 0) {
		free(ptr);
		r->used -= old;
		return NULL;
	}
	if (nsize > old && (nsize - old > r->cap || r->used + (nsize - old) > r->cap)) {
		r->mem_hit = 1;
		return NULL;
	}
	void *p = realloc(ptr, nsize);
	if (!p)
		return NULL;
	r->used = r->used - old + nsize;
	if (r->used > r->peak)
		r->peak = r->used;
	return p;
}

/* Count hook: past the budget, raise an error, and from then on at every
 * instruction, so a script that catches the error with pcall cannot run on. */
static void count_hook(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	pol_run *r = run_of(L);
	r->instr += r->instr_hit ? 1 : HOOK_STEP;
	if (r->instr > r->budget) {
		if (!r->instr_hit) {
			r->instr_hit = 1;
			lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
		}
		/* position of the running Lua function (level 0 inside a hook), not
		 * of its caller as luaL_error would give */
		luaL_where(L, 0);
		lua_pushfstring(L, "instruction budget of %I exceeded", (lua_Integer)r->budget);
		lua_concat(L, 2);
		lua_error(L);
	}
}

/* ------------------------------------------------------------ protected calls */

/* Message handler: the message (any value) with a traceback. */
static int msgh(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	if (!msg) {
		if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
			msg = lua_tostring(L, -1);
		else
			msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	}
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/* Call the function below nargs arguments on the stack; on error fill
 * r->err with the message's first line and r->trace with all of it. */
static int pcall_tb(lua_State *L, int nargs, int nres)
{
	pol_run *r = run_of(L);
	int base = lua_gettop(L) - nargs;
	lua_pushcfunction(L, msgh);
	lua_insert(L, base);
	int st = lua_pcall(L, nargs, nres, base);
	lua_remove(L, base);
	if (st == LUA_OK)
		return 0;
	const char *full = lua_tostring(L, -1);
	if (!full)
		full = "(no message)";
	snprintf(r->trace, sizeof(r->trace), "%s", full);
	size_t n = strcspn(full, "\n");
	if (n > 480)
		n = 480;
	int mem = st == LUA_ERRMEM || (r->mem_hit && (st == LUA_ERRERR ||
						     !strncmp(full, "not enough memory", 17)));
	char where[160] = "";
	if (r->cur && !strstr(full, r->cur))
		snprintf(where, sizeof(where), " (tensor %s)", r->cur);
	if (mem)
		qs_err(r->err, QS_EUSAGE, "%s: memory cap of %zu MiB exceeded%s", r->name, r->cap >> 20,
		       where);
	else if (strncmp(full, r->name, strlen(r->name)) != 0) /* no position: name the file */
		qs_err(r->err, QS_EUSAGE, "%s: %.*s%s", r->name, (int)n, full, where);
	else
		qs_err(r->err, QS_EUSAGE, "%.*s%s", (int)n, full, where);
	lua_pop(L, 1);
	return QS_EUSAGE;
}

/* ------------------------------------------------------------ sandbox */

/* load(chunk [, chunkname [, mode [, env]]]) with text chunks only;
 * upvalue 1 is the original load. */
static int safe_load(lua_State *L)
{
	const char *mode = luaL_optstring(L, 3, "t");
	if (strchr(mode, 'b'))
		return luaL_error(L, "load: binary chunks are not allowed in policies");
	luaL_checkany(L, 1);
	int n = lua_isnone(L, 4) ? 3 : 4; /* an explicit nil env means _ENV = nil */
	lua_settop(L, n);
	lua_pushliteral(L, "t");
	lua_replace(L, 3);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, n, LUA_MULTRET);
	return lua_gettop(L);
}

/* setmetatable(t, mt) without finalizers: __gc runs during lua_close with
 * hooks off, where no instruction budget could stop it. Otherwise what the
 * base library's setmetatable does; written here so that errors carry the
 * caller's line. */
static int safe_setmetatable(lua_State *L)
{
	int t = lua_type(L, 2);
	luaL_checktype(L, 1, LUA_TTABLE);
	luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
	if (t == LUA_TTABLE) {
		lua_pushliteral(L, "__gc");
		if (lua_rawget(L, 2) != LUA_TNIL)
			return luaL_error(L, "setmetatable: __gc finalizers are not allowed in policies");
		lua_pop(L, 1);
	}
	if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
		return luaL_error(L, "cannot change a protected metatable");
	lua_settop(L, 2);
	lua_setmetatable(L, 1);
	return 1;
}

/* xpcall(f, handler, ...): once the instruction budget is spent the
 * handler is skipped (Lua runs it from the count hook, where hooks are off
 * and a loop in it could never be stopped). upvalue 1 is the original
 * xpcall. */
static int guarded_handler(lua_State *L)
{
	if (run_of(L)->instr_hit)
		return 1; /* the message as it is */
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, 1);
	return 1;
}

static int safe_xpcall(lua_State *L)
{
	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_pushvalue(L, 2);
	lua_pushcclosure(L, guarded_handler, 1);
	lua_replace(L, 2);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
	return lua_gettop(L);
}

static void log_line(pol_run *r, const char *s)
{
	if (r->o && r->o->log)
		r->o->log(r->o->user, s);
	else
		fprintf(stderr, "policy: %s\n", s);
}

/* print(...) and qs.log(...): values through tostring, tab-separated */
static int l_log(lua_State *L)
{
	int n = lua_gettop(L);
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	for (int i = 1; i <= n; i++) {
		if (i > 1)
			luaL_addchar(&b, '\t');
		luaL_tolstring(L, i, NULL);
		luaL_addvalue(&b);
	}
	luaL_pushresult(&b);
	log_line(run_of(L), lua_tostring(L, -1));
	return 0;
}

static void open_sandbox(lua_State *L)
{
	static const luaL_Reg libs[] = {
		{ LUA_GNAME, luaopen_base },       { LUA_TABLIBNAME, luaopen_table },
		{ LUA_STRLIBNAME, luaopen_string }, { LUA_MATHLIBNAME, luaopen_math },
		{ LUA_UTF8LIBNAME, luaopen_utf8 },  { NULL, NULL },
	};
	for (const luaL_Reg *l = libs; l->func; l++) {
		luaL_requiref(L, l->name, l->func, 1);
		lua_pop(L, 1);
	}
	static const char *const drop[] = { "dofile", "loadfile", "require", "collectgarbage", NULL };
	for (int i = 0; drop[i]; i++) {
		lua_pushnil(L);
		lua_setglobal(L, drop[i]);
	}
	lua_getglobal(L, "load");
	lua_pushcclosure(L, safe_load, 1);
	lua_setglobal(L, "load");
	lua_pushcfunction(L, safe_setmetatable);
	lua_setglobal(L, "setmetatable");
	lua_getglobal(L, "xpcall");
	lua_pushcclosure(L, safe_xpcall, 1);
	lua_setglobal(L, "xpcall");
	lua_getglobal(L, "string");
	lua_pushnil(L);
	lua_setfield(L, -2, "dump");
	lua_pop(L, 1);
	lua_pushcfunction(L, l_log);
	lua_setglobal(L, "print");
}

/* ------------------------------------------------------------ specs */

/* The spec string a policy's return value means: nil -> "" (keep); a
 * string as it is; a table converted field by field. Errors name the
 * tensor and the field. */
static int spec_from_lua(lua_State *L, int idx, const char *tensor, char *buf, size_t cap)
{
	idx = lua_absindex(L, idx);
	if (lua_isnil(L, idx)) {
		buf[0] = 0;
		return 0;
	}
	if (lua_type(L, idx) == LUA_TSTRING) {
		snprintf(buf, cap, "%s", lua_tostring(L, idx));
		return 0;
	}
	if (!lua_istable(L, idx))
		return luaL_error(L, "%s: the policy returned a %s; expected a spec table, a spec string or nil",
				  tensor, luaL_typename(L, idx));
	static const char *const keys[] = { "method", "format", "bits", "group", "sym", "act_order",
					    "static_groups", "mse", "damp", "block", "alpha", "clip",
					    "gptq", "p", "iters", "outliers", "act_bits", "act_per", NULL };
	/* unknown fields are mistakes: say which */
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		if (lua_type(L, -1) != LUA_TSTRING)
			return luaL_error(L, "%s: spec table has a non-string key (%s)", tensor,
					  luaL_typename(L, -1));
		const char *k = lua_tostring(L, -1);
		int ok = 0;
		for (int i = 0; keys[i]; i++)
			ok |= !strcmp(k, keys[i]);
		if (!ok)
			return luaL_error(L, "%s: unknown field '%s' in the spec table", tensor, k);
	}
	char method[32] = "rtn", fmt[64] = "";
	int bits = 4, group = 128, sym = 0;
	int t;
#define FIELD(name) ((t = lua_getfield(L, idx, name)), lua_pop(L, 1), t != LUA_TNIL)
	if (FIELD("method")) {
		lua_getfield(L, idx, "method");
		if (lua_type(L, -1) != LUA_TSTRING)
			return luaL_error(L, "%s: field 'method' must be a string", tensor);
		snprintf(method, sizeof(method), "%s", lua_tostring(L, -1));
		lua_pop(L, 1);
	}
	if (!strcmp(method, "none")) { /* {method = "none"}: keep the tensor */
		buf[0] = 0;
		return 0;
	}
	if (FIELD("format")) {
		lua_getfield(L, idx, "format");
		if (lua_type(L, -1) != LUA_TSTRING)
			return luaL_error(L, "%s: field 'format' must be a string", tensor);
		snprintf(fmt, sizeof(fmt), "%s", lua_tostring(L, -1));
		lua_pop(L, 1);
		if (FIELD("bits") || FIELD("group") || FIELD("sym"))
			return luaL_error(L, "%s: field 'format' excludes 'bits', 'group' and 'sym'", tensor);
	}
	static const char *const ints[] = { "bits", "group", "block", "iters", "act_bits", NULL };
	for (int i = 0; ints[i]; i++) {
		if (!FIELD(ints[i]))
			continue;
		lua_getfield(L, idx, ints[i]);
		int isint = 0;
		lua_Integer v = lua_type(L, -1) == LUA_TNUMBER ? lua_tointegerx(L, -1, &isint) : 0;
		lua_pop(L, 1);
		if (!isint)
			return luaL_error(L, "%s: field '%s' must be an integer", tensor, ints[i]);
		if (v < -1000000 || v > 1000000)
			return luaL_error(L, "%s: field '%s' = %I out of range", tensor, ints[i], v);
		if (!strcmp(ints[i], "bits"))
			bits = (int)v;
		else if (!strcmp(ints[i], "group"))
			group = (int)v;
	}
	static const char *const bools[] = { "sym", "act_order", "static_groups", "mse", "clip", "gptq", NULL };
	for (int i = 0; bools[i]; i++)
		if (FIELD(bools[i])) {
			lua_getfield(L, idx, bools[i]);
			int ok = lua_isboolean(L, -1);
			if (!strcmp(bools[i], "sym"))
				sym = lua_toboolean(L, -1);
			lua_pop(L, 1);
			if (!ok)
				return luaL_error(L, "%s: field '%s' must be true or false", tensor, bools[i]);
		}
	static const char *const nums[] = { "damp", "alpha", "p", "outliers", NULL };
	for (int i = 0; nums[i]; i++)
		if (FIELD(nums[i])) {
			lua_getfield(L, idx, nums[i]);
			int ok = lua_type(L, -1) == LUA_TNUMBER;
			lua_pop(L, 1);
			if (!ok)
				return luaL_error(L, "%s: field '%s' must be a number", tensor, nums[i]);
		}
	if (!fmt[0]) {
		if (bits < 2 || bits > 8)
			return luaL_error(L, "%s: field 'bits' = %d not in 2..8", tensor, bits);
		if (group == 0)
			snprintf(fmt, sizeof(fmt), "int%dc%s", bits, sym ? "sym" : "");
		else if (group == -1)
			snprintf(fmt, sizeof(fmt), "int%dt%s", bits, sym ? "sym" : "");
		else if (group > 0)
			snprintf(fmt, sizeof(fmt), "int%dg%d%s", bits, group, sym ? "sym" : "");
		else
			return luaL_error(L, "%s: field 'group' = %d (a size, 0 per channel, -1 per tensor)",
					  tensor, group);
	}
	int n = snprintf(buf, cap, "%s:%s", method, fmt);
#define ADD(...)                                                                     \
	if (n > 0 && (size_t)n < cap)                                                    \
		n += snprintf(buf + n, cap - (size_t)n, __VA_ARGS__);
	static const char *const flags[] = { "act_order", "static_groups", "mse", "gptq", NULL };
	for (int i = 0; flags[i]; i++) {
		lua_getfield(L, idx, flags[i]);
		int on = lua_toboolean(L, -1);
		lua_pop(L, 1);
		if (on)
			ADD(",%s", flags[i])
	}
	if (FIELD("clip")) {
		lua_getfield(L, idx, "clip");
		ADD(",clip=%d", lua_toboolean(L, -1))
		lua_pop(L, 1);
	}
	static const char *const numopt[][2] = { { "damp", "damp" }, { "alpha", "alpha" }, { "p", "p" },
						 { "outliers", "outliers" }, { "block", "block" },
						 { "iters", "iters" }, { "act_bits", "act" } };
	for (size_t i = 0; i < sizeof(numopt) / sizeof(numopt[0]); i++)
		if (FIELD(numopt[i][0])) {
			lua_getfield(L, idx, numopt[i][0]);
			ADD(",%s=%.17g", numopt[i][1], (double)lua_tonumber(L, -1))
			lua_pop(L, 1);
		}
	if (FIELD("act_per")) {
		lua_getfield(L, idx, "act_per");
		const char *v = lua_tostring(L, -1);
		int ok = v && (!strcmp(v, "token") || !strcmp(v, "tensor"));
		int tensor_scale = ok && !strcmp(v, "tensor");
		lua_pop(L, 1);
		if (!ok)
			return luaL_error(L, "%s: field 'act_per' must be \"token\" or \"tensor\"", tensor);
		ADD("%s", tensor_scale ? ",act_tensor" : "")
	}
#undef ADD
#undef FIELD
	if (n < 0 || (size_t)n >= cap)
		return luaL_error(L, "%s: spec too long", tensor);
	return 0;
}

/* Parse and check the spec at idx for tensor pt; raises a Lua error naming
 * the tensor and the field. */
static void spec_check_lua(lua_State *L, int idx, const pol_tensor *pt, quant_spec *out, int *keep)
{
	char buf[256];
	qs_error e;
	spec_from_lua(L, idx, pt->t->name, buf, sizeof(buf));
	*keep = buf[0] == 0;
	if (*keep)
		return;
	if (quant_spec_parse(buf, out, &e))
		luaL_error(L, "%s: %s", pt->t->name, e.msg);
	if (quant_spec_check(out, pt->t->name, (int)pt->t->ne[1], (int)pt->t->ne[0], &e))
		luaL_error(L, "%s", e.msg);
	*keep = out->method == QUANT_NONE;
}

/* ------------------------------------------------------------ tensors */

static int site_of(const char *kind)
{
	if (!strncmp(kind, "attn_", 5) && strcmp(kind, "attn_output"))
		return FWD_SITE_QKV;
	if (!strcmp(kind, "attn_output"))
		return FWD_SITE_ATTN_OUT;
	if (!strcmp(kind, "ffn_gate") || !strcmp(kind, "ffn_up"))
		return FWD_SITE_FFN_IN;
	if (!strcmp(kind, "ffn_down"))
		return FWD_SITE_FFN_DOWN;
	if (!strcmp(kind, "output"))
		return FWD_SITE_OUTPUT;
	return -1;
}

static int list_tensors(pol_run *r)
{
	const model *m = r->m;
	r->tens = calloc((size_t)m->n_tensors + 1, sizeof(pol_tensor));
	if (!r->tens)
		return qs_err(r->err, QS_ENOMEM, "policy: out of memory");
	for (int pass = 0; pass < 3; pass++)
		for (int i = 0; i < m->n_tensors; i++) {
			const model_tensor *t = &m->tensors[i];
			const char *kind = quant_tensor_kind(t->name);
			if (!kind || t->n_dims != 2)
				continue;
			int emb = !strcmp(kind, "token_embd"), out = !strcmp(kind, "output");
			if ((pass == 0 && (emb || out)) || (pass == 1 && !emb) || (pass == 2 && !out))
				continue;
			if (out && m->cfg.tied)
				continue;
			pol_tensor *p = &r->tens[r->n_tens++];
			p->t = t;
			p->kind = kind;
			p->layer = emb ? -1 : out ? m->cfg.n_layers : 0;
			if (!emb && !out)
				sscanf(t->name, "blk.%d.", &p->layer);
			p->site = site_of(kind);
		}
	return 0;
}

static const pol_tensor *find_tensor(pol_run *r, const char *name)
{
	for (int i = 0; i < r->n_tens; i++)
		if (!strcmp(r->tens[i].t->name, name))
			return &r->tens[i];
	return NULL;
}

/* The tensor named by the table at idx (its 'name' field); raises an error
 * for anything else, so tampered tables cannot reach C with a bad index. */
static const pol_tensor *check_tensor(lua_State *L, int idx, const char *fn)
{
	luaL_checktype(L, idx, LUA_TTABLE);
	lua_getfield(L, idx, "name");
	const char *name = lua_tostring(L, -1);
	const pol_tensor *pt = name ? find_tensor(run_of(L), name) : NULL;
	if (!pt)
		luaL_error(L, "%s: argument is not a tensor of this model (name %s)", fn,
			   name ? name : "missing");
	lua_pop(L, 1);
	return pt;
}

static void set_num(lua_State *L, const char *k, double v)
{
	lua_pushnumber(L, v);
	lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, long long v)
{
	lua_pushinteger(L, (lua_Integer)v);
	lua_setfield(L, -2, k);
}

static void set_str(lua_State *L, const char *k, const char *v)
{
	lua_pushstring(L, v);
	lua_setfield(L, -2, k);
}

/* Push a statistics table (see docs/LUA.md). */
static void push_stats(lua_State *L, const calib_stats *s)
{
	lua_createtable(L, 0, 20);
	set_num(L, "absmax", s->absmax_all);
	set_num(L, "rms", s->rms_all);
	set_num(L, "mean", s->mean);
	set_num(L, "std", s->std);
	set_num(L, "kurtosis", s->kurtosis);
	set_int(L, "rows", s->rows);
	set_int(L, "cols", s->cols);
	set_num(L, "median_channel_absmax", s->median_absmax);
	set_num(L, "outlier_k", s->outlier_k);
	set_num(L, "outlier_frac", s->outlier_frac);
	set_num(L, "sigma", s->sigma);
	lua_createtable(L, s->n_outlier_ch, 0);
	for (int i = 0; i < s->n_outlier_ch; i++) { /* 1-based, like channel_absmax */
		lua_pushinteger(L, s->outlier_ch[i] + 1);
		lua_rawseti(L, -2, i + 1);
	}
	lua_setfield(L, -2, "outlier_channels");
	set_int(L, "n_outlier_channels", s->n_outlier_ch);
	const float *arr[] = { s->absmax, s->mean_abs, s->rms };
	const char *names[] = { "channel_absmax", "channel_mean_abs", "channel_rms" };
	for (int a = 0; a < 3; a++) {
		lua_createtable(L, s->cols, 0);
		for (int j = 0; arr[a] && j < s->cols; j++) {
			lua_pushnumber(L, arr[a][j]);
			lua_rawseti(L, -2, j + 1);
		}
		lua_setfield(L, -2, names[a]);
	}
	lua_createtable(L, 0, 6); /* hist */
	lua_createtable(L, CALIB_HIST_BINS + 1, 0);
	for (int i = 0; i <= CALIB_HIST_BINS; i++) {
		lua_pushnumber(L, calib_hist_edge(i));
		lua_rawseti(L, -2, i + 1);
	}
	lua_setfield(L, -2, "edges");
	lua_createtable(L, CALIB_HIST_BINS, 0);
	for (int i = 0; i < CALIB_HIST_BINS; i++) {
		lua_pushinteger(L, s->hist.bin[i]);
		lua_rawseti(L, -2, i + 1);
	}
	lua_setfield(L, -2, "counts");
	set_int(L, "zero", s->hist.zero);
	set_int(L, "under", s->hist.under);
	set_int(L, "over", s->hist.over);
	set_int(L, "nonfinite", s->hist.nonfinite);
	lua_setfield(L, -2, "hist");
}

/* __index of t.stats: computes "weight" or "input" on first use and keeps it.
 * upvalue 1: the tensor's name. Stack: (stats table, key). */
static int stats_index(lua_State *L)
{
	pol_run *r = run_of(L);
	const char *key = lua_tostring(L, 2);
	const pol_tensor *pt = find_tensor(r, lua_tostring(L, lua_upvalueindex(1)));
	if (!key || !pt)
		return 0;
	qs_error e = { 0 };
	if (!strcmp(key, "weight")) {
		calib_stats s;
		if (calib_weight_stats(pt->t, 20.0f, 6.0f, &s, &e))
			return luaL_error(L, "t.stats.weight of %s: %s", pt->t->name, e.msg);
		push_stats(L, &s);
		calib_stats_release(&s);
	} else if (!strcmp(key, "input")) {
		if (!r->calib && r->o && r->o->get_calib && pt->site >= 0) {
			const calib_set *cs = NULL;
			if (r->o->get_calib(r->o->user, &cs, &e))
				return luaL_error(L, "t.stats.input: calibration failed: %s", e.msg);
			r->calib = cs;
		}
		const calib_stats *st = NULL;
		if (r->calib && pt->site >= 0) {
			const calib_layer_stats *ls = pt->site == FWD_SITE_OUTPUT
							      ? &r->calib->head
							      : pt->layer < r->calib->n_layers
									? &r->calib->layers[pt->layer]
									: NULL;
			for (int i = 0; ls && i < ls->n_sites; i++)
				if (ls->site[i].site == pt->site)
					st = &ls->site[i];
		}
		if (!st)
			return 0; /* no calibration, or token_embd (its input is ids) */
		push_stats(L, st);
	} else {
		return 0;
	}
	lua_pushvalue(L, 2);
	lua_pushvalue(L, -2);
	lua_rawset(L, 1);
	return 1;
}

/* t.sens for tensor pt from the current table, or nil */
static void push_sens(lua_State *L, pol_run *r, const pol_tensor *pt)
{
	const sens_table *s = r->sens;
	int found = 0;
	if (s)
		for (int i = 0; i < s->n; i++)
			found |= !strcmp(s->e[i].tensor, pt->t->name);
	if (!found) {
		lua_pushnil(L);
		return;
	}
	lua_createtable(L, 0, s->n_cands);
	for (int i = 0; i < s->n; i++) {
		const sens_entry *e = &s->e[i];
		if (strcmp(e->tensor, pt->t->name))
			continue;
		lua_createtable(L, 0, 8);
		set_num(L, "dppl", e->dppl);
		set_num(L, "ppl", e->ppl);
		set_num(L, "kld", e->kld);
		set_num(L, "kld_stderr", e->kld_stderr);
		set_num(L, "same_top_pct", e->same_top_pct);
		set_int(L, "bytes", (long long)e->bytes);
		set_num(L, "bpw", e->params ? 8.0 * (double)e->bytes / (double)e->params : 0);
		lua_setfield(L, -2, s->cands[e->cand]);
	}
	/* t.sens["gptq:int4g128"] also finds canonical spellings */
	luaL_getmetatable(L, "qs.sens");
	lua_setmetatable(L, -2);
}

/* __index of a t.sens table: look the key up in canonical form. */
static int sens_index(lua_State *L)
{
	const char *k = lua_tostring(L, 2);
	quant_spec sp;
	char c[96];
	if (!k || lua_type(L, 2) != LUA_TSTRING || quant_spec_parse(k, &sp, NULL))
		return 0;
	quant_spec_str(&sp, c, sizeof(c));
	if (!strcmp(c, k))
		return 0;
	lua_pushstring(L, c);
	lua_rawget(L, 1);
	return 1;
}

/* Push the table of tensor i (see docs/LUA.md). */
static void push_tensor(lua_State *L, pol_run *r, int i)
{
	const pol_tensor *pt = &r->tens[i];
	const model_tensor *t = pt->t;
	lua_createtable(L, 0, 14);
	set_str(L, "name", t->name);
	set_str(L, "kind", pt->kind);
	set_int(L, "layer", pt->layer);
	set_int(L, "index", i + 1);
	lua_createtable(L, 2, 0);
	lua_pushinteger(L, t->ne[1]);
	lua_rawseti(L, -2, 1);
	lua_pushinteger(L, t->ne[0]);
	lua_rawseti(L, -2, 2);
	lua_setfield(L, -2, "shape");
	set_int(L, "rows", t->ne[1]);
	set_int(L, "cols", t->ne[0]);
	set_int(L, "params", t->ne[0] * t->ne[1]);
	const kn_type_traits *tr = kn_traits(t->type);
	set_str(L, "dtype", tr && tr->name ? tr->name : "?");
	set_int(L, "bytes", (long long)t->nbytes);
	/* stats: computed on first access */
	lua_createtable(L, 0, 2);
	lua_createtable(L, 0, 2);
	lua_pushstring(L, t->name);
	lua_pushcclosure(L, stats_index, 1);
	lua_setfield(L, -2, "__index");
	lua_pushliteral(L, "qs.stats");
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, -2);
	lua_setfield(L, -2, "stats");
	push_sens(L, r, pt);
	lua_setfield(L, -2, "sens");
}

/* registry["qs.tensors"] = array of the tensor tables, made once per run */
static void push_tensors(lua_State *L)
{
	pol_run *r = run_of(L);
	if (lua_getfield(L, LUA_REGISTRYINDEX, "qs.tensors") == LUA_TTABLE)
		return;
	lua_pop(L, 1);
	lua_createtable(L, r->n_tens, 0);
	for (int i = 0; i < r->n_tens; i++) {
		push_tensor(L, r, i);
		lua_rawseti(L, -2, i + 1);
	}
	lua_pushvalue(L, -1);
	lua_setfield(L, LUA_REGISTRYINDEX, "qs.tensors");
}

/* Refresh t.sens of every tensor table after a scan. */
static void refresh_sens(lua_State *L)
{
	pol_run *r = run_of(L);
	push_tensors(L);
	for (int i = 0; i < r->n_tens; i++) {
		lua_rawgeti(L, -1, i + 1);
		push_sens(L, r, &r->tens[i]);
		lua_setfield(L, -2, "sens");
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
}

/* ------------------------------------------------------------ qs library */

static void spec_arg(lua_State *L, int idx, const char *fn, quant_spec *s)
{
	char buf[256];
	qs_error e;
	if (lua_isnoneornil(L, idx))
		luaL_error(L, "%s: a spec is required", fn);
	spec_from_lua(L, idx, fn, buf, sizeof(buf));
	if (!buf[0])
		luaL_error(L, "%s: a spec is required", fn);
	if (quant_spec_parse(buf, s, &e))
		luaL_error(L, "%s: %s", fn, e.msg);
}

/* qs.bits(spec [, t]) -> bits per weight */
static int l_bits(lua_State *L)
{
	quant_spec s;
	spec_arg(L, 1, "qs.bits", &s);
	int rows = 4096, cols = 4096;
	if (!lua_isnoneornil(L, 2)) {
		const pol_tensor *pt = check_tensor(L, 2, "qs.bits");
		rows = (int)pt->t->ne[1];
		cols = (int)pt->t->ne[0];
		qs_error e;
		if (quant_spec_check(&s, pt->t->name, rows, cols, &e))
			return luaL_error(L, "qs.bits: %s", e.msg);
	} else {
		char why[160];
		if (s.method != QUANT_NONE && kn_qparams_check(&s.fmt, rows, cols, why, sizeof(why)))
			return luaL_error(L, "qs.bits: %s", why);
	}
	if (s.method == QUANT_NONE) {
		lua_pushnil(L);
		return 1;
	}
	lua_pushnumber(L, 8.0 * (double)quant_spec_bytes(&s, rows, cols) / ((double)rows * cols));
	return 1;
}

/* qs.bytes(t, spec) -> exact bytes */
static int l_bytes(lua_State *L)
{
	const pol_tensor *pt = check_tensor(L, 1, "qs.bytes");
	quant_spec s;
	spec_arg(L, 2, "qs.bytes", &s);
	qs_error e;
	int rows = (int)pt->t->ne[1], cols = (int)pt->t->ne[0];
	if (quant_spec_check(&s, pt->t->name, rows, cols, &e))
		return luaL_error(L, "qs.bytes: %s", e.msg);
	lua_pushinteger(L, s.method == QUANT_NONE ? (lua_Integer)pt->t->nbytes
						  : (lua_Integer)quant_spec_bytes(&s, rows, cols));
	return 1;
}

static int l_tensors(lua_State *L)
{
	push_tensors(L);
	/* a fresh array each call, of the same tensor tables */
	int n = (int)lua_rawlen(L, -1);
	lua_createtable(L, n, 0);
	for (int i = 1; i <= n; i++) {
		lua_rawgeti(L, -2, i);
		lua_rawseti(L, -2, i);
	}
	return 1;
}

int pol_fit(int n, int n_cands, const double *cost, const size_t *bytes, size_t budget,
	    int *choice, qs_error *err)
{
	if (n < 1 || n_cands < 1)
		return qs_err(err, QS_EUSAGE, "qs.fit: nothing to fit (%d tensors, %d candidates)", n,
			      n_cands);
	size_t minb = 0, maxb = 0;
	for (int i = 0; i < n; i++) {
		size_t lo = SIZE_MAX, hi = 0;
		for (int c = 0; c < n_cands; c++) {
			size_t b = bytes[(size_t)i * n_cands + c];
			lo = b < lo ? b : lo;
			hi = b > hi ? b : hi;
			if (!isfinite(cost[(size_t)i * n_cands + c]))
				return qs_err(err, QS_EUSAGE, "qs.fit: cost of tensor %d candidate %d is not finite",
					      i + 1, c + 1);
		}
		minb += lo;
		maxb += hi;
	}
	if (minb > budget)
		return qs_err(err, QS_EUSAGE,
			      "qs.fit: the budget (%zu bytes) is below the smallest mix of the candidates "
			      "(%zu bytes)",
			      budget, minb);
	if (budget > maxb)
		budget = maxb;
	/* The DP runs over each tensor's bytes above its smallest candidate,
	 * against the budget left after the smallest mix, in units rounded up:
	 * the smallest mix always fits, and a solution within the rounded
	 * capacity is within the real budget. */
	size_t spare = budget - minb;
	size_t unit = spare / FIT_MAX_STEPS + 1;
	size_t cap = spare / unit;
	size_t W = cap + 1;
	double *dp = malloc(sizeof(double) * W), *nd = malloc(sizeof(double) * W);
	unsigned char *pick = malloc((size_t)n * W);
	size_t *lo = malloc(sizeof(size_t) * (size_t)n);
	int rc = 0;
	if (!dp || !nd || !pick || !lo || n_cands > 255) {
		rc = qs_err(err, QS_ENOMEM, "qs.fit: out of memory (%d tensors x %zu steps)", n, W);
		goto out;
	}
	for (int i = 0; i < n; i++) {
		lo[i] = SIZE_MAX;
		for (int c = 0; c < n_cands; c++)
			if (bytes[(size_t)i * n_cands + c] < lo[i])
				lo[i] = bytes[(size_t)i * n_cands + c];
	}
#define UNITS(i, c) ((bytes[(size_t)(i) * n_cands + (c)] - lo[i] + unit - 1) / unit)
	/* dp[w] = least cost of the tensors so far using at most w units */
	for (size_t w = 0; w < W; w++)
		dp[w] = 0;
	for (int i = 0; i < n; i++) {
		unsigned char *pk = pick + (size_t)i * W;
		for (size_t w = 0; w < W; w++) {
			double best = INFINITY;
			int bc = 255;
			for (int c = 0; c < n_cands; c++) {
				size_t u = UNITS(i, c);
				if (u > w || !isfinite(dp[w - u]))
					continue;
				double v = dp[w - u] + cost[(size_t)i * n_cands + c];
				if (v < best) {
					best = v;
					bc = c;
				}
			}
			nd[w] = best;
			pk[w] = (unsigned char)bc;
		}
		double *t = dp;
		dp = nd;
		nd = t;
	}
	size_t w = cap;
	for (int i = n - 1; i >= 0; i--) {
		int c = pick[(size_t)i * W + w];
		choice[i] = c;
		w -= UNITS(i, c);
	}
#undef UNITS
out:
	free(dp);
	free(nd);
	free(pick);
	free(lo);
	return rc;
}

/* qs.fit{budget_bpw = B | budget_bytes = N, candidates = {...}, objective =
 * "kld" | "ppl", tensors = {names...}} -> plan {name = spec}, summary */
static int l_fit(lua_State *L)
{
	pol_run *r = run_of(L);
	luaL_checktype(L, 1, LUA_TTABLE);
	static const char *const keys[] = { "budget_bpw", "budget_bytes", "candidates", "objective",
					    "tensors", NULL };
	lua_pushnil(L);
	while (lua_next(L, 1)) {
		lua_pop(L, 1);
		const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
		int ok = 0;
		for (int i = 0; k && keys[i]; i++)
			ok |= !strcmp(k, keys[i]);
		if (!ok)
			return luaL_error(L, "qs.fit: unknown field '%s' (budget_bpw, budget_bytes, candidates, objective, tensors)",
					  k ? k : luaL_typename(L, -1));
	}
	const char *obj = "kld";
	if (lua_getfield(L, 1, "objective") != LUA_TNIL) {
		obj = lua_tostring(L, -1);
		if (!obj || (strcmp(obj, "kld") && strcmp(obj, "ppl")))
			return luaL_error(L, "qs.fit: field 'objective' must be \"kld\" or \"ppl\"");
	}
	lua_pop(L, 1);
	int use_kld = !strcmp(obj, "kld");
	/* candidates: given, or every candidate of the current scan */
	char cands[SENS_MAX_CANDS][96];
	const char *cptr[SENS_MAX_CANDS];
	int nc = 0;
	if (lua_getfield(L, 1, "candidates") != LUA_TNIL) {
		if (!lua_istable(L, -1))
			return luaL_error(L, "qs.fit: field 'candidates' must be a list of specs");
		int len = (int)lua_rawlen(L, -1);
		if (len < 1 || len > SENS_MAX_CANDS)
			return luaL_error(L, "qs.fit: field 'candidates' needs 1..%d specs", SENS_MAX_CANDS);
		for (int i = 1; i <= len; i++) {
			lua_rawgeti(L, -1, i);
			quant_spec s;
			char what[64];
			snprintf(what, sizeof(what), "qs.fit: candidates[%d]", i);
			spec_arg(L, -1, what, &s);
			if (s.method == QUANT_NONE || s.outlier_thresh > 0 || s.act_bits)
				return luaL_error(L, "%s: 'none', outlier and activation specs have no "
						     "fixed size to fit", what);
			quant_spec_str(&s, cands[nc], sizeof(cands[nc]));
			cptr[nc] = cands[nc];
			nc++;
			lua_pop(L, 1);
		}
	} else if (r->sens) {
		for (int i = 0; i < r->sens->n_cands; i++) {
			snprintf(cands[nc], sizeof(cands[nc]), "%s", r->sens->cands[i]);
			cptr[nc] = cands[nc];
			nc++;
		}
	} else {
		return luaL_error(L, "qs.fit: no candidates given and no sensitivity scan loaded");
	}
	lua_pop(L, 1);
	/* make sure every candidate is measured */
	int missing = !r->sens;
	for (int c = 0; !missing && c < nc; c++)
		missing = sens_cand_index(r->sens, cands[c]) < 0;
	if (missing) {
		qs_error e = { 0 };
		const sens_table *st = NULL;
		if (!r->o || !r->o->get_sens)
			return luaL_error(L, "qs.fit: no sensitivity for these candidates; run `qscope "
					     "sensitivity --candidates ...` and pass its file");
		if (r->o->get_sens(r->o->user, cptr, nc, &st, &e) || !st)
			return luaL_error(L, "qs.fit: sensitivity scan failed: %s", e.msg);
		r->sens = st;
		refresh_sens(L);
	}
	/* tensors: given names, or every tensor the scan measured */
	int *idx = lua_newuserdatauv(L, sizeof(int) * (size_t)r->n_tens, 0);
	int nt = 0;
	if (lua_getfield(L, 1, "tensors") != LUA_TNIL) {
		if (!lua_istable(L, -1))
			return luaL_error(L, "qs.fit: field 'tensors' must be a list of names");
		int len = (int)lua_rawlen(L, -1);
		for (int i = 1; i <= len; i++) {
			lua_rawgeti(L, -1, i);
			const char *nm = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
			if (!nm && lua_istable(L, -1)) {
				lua_getfield(L, -1, "name");
				nm = lua_tostring(L, -1);
				lua_pop(L, 1);
			}
			const pol_tensor *pt = nm ? find_tensor(r, nm) : NULL;
			if (!pt)
				return luaL_error(L, "qs.fit: tensors[%d] is not a tensor of this model", i);
			for (int k = 0; k < nt; k++)
				if (idx[k] == (int)(pt - r->tens))
					return luaL_error(L, "qs.fit: tensor %s listed twice", nm);
			if (nt >= r->n_tens)
				return luaL_error(L, "qs.fit: too many tensors");
			idx[nt++] = (int)(pt - r->tens);
			lua_pop(L, 1);
		}
	} else {
		for (int i = 0; i < r->n_tens; i++)
			for (int k = 0; k < r->sens->n; k++)
				if (!strcmp(r->sens->e[k].tensor, r->tens[i].t->name)) {
					idx[nt++] = i;
					break;
				}
	}
	lua_pop(L, 1);
	if (nt == 0)
		return luaL_error(L, "qs.fit: no tensor to fit");
	double *cost = lua_newuserdatauv(L, sizeof(double) * (size_t)nt * nc, 0);
	size_t *bytes = lua_newuserdatauv(L, sizeof(size_t) * (size_t)nt * nc, 0);
	int *choice = lua_newuserdatauv(L, sizeof(int) * (size_t)nt, 0);
	size_t params = 0;
	for (int i = 0; i < nt; i++) {
		const model_tensor *t = r->tens[idx[i]].t;
		params += (size_t)t->ne[0] * t->ne[1];
		for (int c = 0; c < nc; c++) {
			const sens_entry *e = sens_find(r->sens, t->name, cands[c]);
			if (!e)
				return luaL_error(L, "qs.fit: no sensitivity for %s with %s", t->name, cands[c]);
			quant_spec s;
			qs_error qe;
			quant_spec_parse(cands[c], &s, NULL);
			if (quant_spec_check(&s, t->name, (int)t->ne[1], (int)t->ne[0], &qe))
				return luaL_error(L, "qs.fit: %s", qe.msg);
			cost[(size_t)i * nc + c] = use_kld ? e->kld : e->dppl;
			bytes[(size_t)i * nc + c] = quant_spec_bytes(&s, (int)t->ne[1], (int)t->ne[0]);
		}
	}
	size_t budget;
	int has_bpw = lua_getfield(L, 1, "budget_bpw") != LUA_TNIL;
	lua_pop(L, 1);
	if (lua_getfield(L, 1, "budget_bytes") != LUA_TNIL) {
		if (has_bpw)
			return luaL_error(L, "qs.fit: give 'budget_bpw' or 'budget_bytes', not both");
		int isint;
		lua_Integer b = lua_tointegerx(L, -1, &isint);
		if (!isint || b < 1)
			return luaL_error(L, "qs.fit: field 'budget_bytes' must be a positive integer");
		budget = (size_t)b;
	} else {
		lua_pop(L, 1);
		if (lua_getfield(L, 1, "budget_bpw") != LUA_TNUMBER)
			return luaL_error(L, "qs.fit: give field 'budget_bpw' (bits per weight) or 'budget_bytes'");
		double bpw = lua_tonumber(L, -1);
		if (!(bpw > 0 && bpw <= 64))
			return luaL_error(L, "qs.fit: field 'budget_bpw' = %f not in (0, 64]", bpw);
		budget = (size_t)floor(bpw * (double)params / 8.0);
	}
	lua_pop(L, 1);
	qs_error fe;
	if (pol_fit(nt, nc, cost, bytes, budget, choice, &fe))
		return luaL_error(L, "%s", fe.msg);
	size_t used = 0;
	double total = 0;
	lua_createtable(L, 0, nt); /* the plan */
	for (int i = 0; i < nt; i++) {
		int c = choice[i];
		used += bytes[(size_t)i * nc + c];
		total += cost[(size_t)i * nc + c];
		lua_pushstring(L, cands[c]);
		lua_setfield(L, -2, r->tens[idx[i]].t->name);
	}
	lua_createtable(L, 0, 6); /* the summary */
	set_int(L, "bytes", (long long)used);
	set_int(L, "budget_bytes", (long long)budget);
	set_int(L, "params", (long long)params);
	set_num(L, "bpw", 8.0 * (double)used / (double)params);
	set_num(L, "cost", total);
	set_str(L, "objective", obj);
	return 2;
}

static int l_readonly(lua_State *L)
{
	return luaL_error(L, "qs is read-only (field '%s')", luaL_optstring(L, 2, "?"));
}

static void open_qs(lua_State *L)
{
	static const luaL_Reg fns[] = {
		{ "bits", l_bits }, { "bytes", l_bytes }, { "tensors", l_tensors },
		{ "log", l_log },   { "fit", l_fit },     { NULL, NULL },
	};
	/* qs is an empty proxy whose metatable serves the functions: scripts
	 * cannot replace them or reach the metatable */
	lua_newtable(L);                 /* proxy */
	lua_createtable(L, 0, 3);        /* its metatable */
	luaL_newlib(L, fns);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, l_readonly);
	lua_setfield(L, -2, "__newindex");
	lua_pushliteral(L, "qs");
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, -2);
	lua_setglobal(L, "qs");
	/* metatable of t.sens tables */
	luaL_newmetatable(L, "qs.sens");
	lua_pushcfunction(L, sens_index);
	lua_setfield(L, -2, "__index");
	lua_pushliteral(L, "qs.sens");
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 1);
}

static void push_model(lua_State *L, const model *m)
{
	const model_config *c = &m->cfg;
	lua_createtable(L, 0, 16);
	set_str(L, "path", m->path);
	set_str(L, "format", m->format ? m->format : "?");
	set_str(L, "arch", c->arch);
	set_int(L, "vocab", c->vocab);
	set_int(L, "dim", c->dim);
	set_int(L, "n_layers", c->n_layers);
	set_int(L, "n_heads", c->n_heads);
	set_int(L, "n_kv_heads", c->n_kv_heads);
	set_int(L, "head_dim", c->head_dim);
	set_int(L, "hidden", c->hidden);
	set_int(L, "ctx", c->ctx);
	set_num(L, "rope_theta", c->rope_theta);
	lua_pushboolean(L, c->tied);
	lua_setfield(L, -2, "tied");
	set_int(L, "params", (long long)model_n_params(m));
	set_int(L, "bytes", (long long)model_bytes(m));
}

/* args: "key=value" -> number, boolean or string */
static void push_args(lua_State *L, const pol_opts *o)
{
	lua_newtable(L);
	for (int i = 0; o && i < o->n_args; i++) {
		const char *a = o->args[i], *eq = strchr(a, '=');
		if (!eq || eq == a)
			luaL_error(L, "--set '%s': expected key=value", a);
		lua_pushlstring(L, a, (size_t)(eq - a));
		const char *v = eq + 1;
		if (!strcmp(v, "true") || !strcmp(v, "false"))
			lua_pushboolean(L, v[0] == 't');
		else if (!*v || !lua_stringtonumber(L, v))
			lua_pushstring(L, v);
		lua_rawset(L, -3);
	}
	lua_setglobal(L, "args");
}

/* The sandbox, the qs library and args (run protected). */
static int setup(lua_State *L)
{
	open_sandbox(L);
	open_qs(L);
	push_args(L, run_of(L)->o);
	return 0;
}

/* ------------------------------------------------------------ the run */

/* Runs inside the protected call: (chunk) -> plan as a registry table. */
static int run_policy(lua_State *L)
{
	pol_run *r = run_of(L);
	/* `model` is also a global, for code at file scope (e.g. before qs.fit) */
	push_model(L, r->m);
	lua_setglobal(L, "model");
	/* the chunk is at 1: call it to get the policy function */
	lua_call(L, 0, 1);
	if (lua_type(L, -1) != LUA_TFUNCTION)
		return luaL_error(L, "%s: the file must return a function(t, model), not a %s", r->name,
				  luaL_typename(L, -1));
	int fn = lua_gettop(L);
	push_model(L, r->m);
	int mi = lua_gettop(L);
	push_tensors(L);
	int ti = lua_gettop(L);
	lua_newtable(L); /* result: name -> canonical spec string */
	int res = lua_gettop(L);
	for (int i = 0; i < r->n_tens; i++) {
		r->cur = r->tens[i].t->name;
		lua_pushvalue(L, fn);
		lua_rawgeti(L, ti, i + 1);
		lua_pushvalue(L, mi);
		lua_call(L, 2, 1);
		quant_spec s;
		int keep;
		spec_check_lua(L, -1, &r->tens[i], &s, &keep);
		lua_pop(L, 1);
		if (keep)
			continue;
		char buf[128];
		quant_spec_str(&s, buf, sizeof(buf));
		lua_pushstring(L, buf);
		lua_setfield(L, res, r->tens[i].t->name);
	}
	r->cur = NULL;
	for (int i = 0; i < r->n_tens; i++) {
		if (lua_getfield(L, res, r->tens[i].t->name) == LUA_TSTRING) {
			quant_spec s;
			if (quant_spec_parse(lua_tostring(L, -1), &s, r->err) ||
			    quant_plan_add(r->plan, r->tens[i].t->name, &s, r->err))
				return luaL_error(L, "%s", r->err->msg);
		}
		lua_pop(L, 1);
	}
	return 0;
}

static void base_name(const char *path, char *buf, size_t cap)
{
	const char *s = strrchr(path, '/');
	snprintf(buf, cap, "%s", s ? s + 1 : path);
}

int pol_run_string(const model *m, const char *name, const char *src, size_t len,
		   const pol_opts *o, pol_result *res, qs_error *err)
{
	memset(res, 0, sizeof(*res));
	qs_error dummy;
	pol_run r = { .m = m, .o = o, .name = name, .err = err ? err : &dummy, .plan = &res->plan };
	r.cap = o && o->mem_cap ? o->mem_cap : POL_MEM_CAP_DEFAULT;
	r.budget = o && o->instr_budget > 0 ? o->instr_budget : POL_INSTR_BUDGET_DEFAULT;
	r.calib = o ? o->calib : NULL;
	r.sens = o ? o->sens : NULL;
	int rc = list_tensors(&r);
	if (rc)
		return rc;
	lua_State *L = lua_newstate(cap_alloc, &r);
	if (!L) {
		free(r.tens);
		return qs_err(err, QS_ENOMEM, "%s: cannot create a Lua state", name);
	}
	*(pol_run **)lua_getextraspace(L) = &r;
	lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_STEP);
	/* setting up the sandbox can itself run out of the cap: protect it */
	lua_pushcfunction(L, setup);
	if ((rc = pcall_tb(L, 0, 0))) {
		snprintf(res->trace, sizeof(res->trace), "%s", r.trace);
		goto out;
	}
	char chunk[256];
	snprintf(chunk, sizeof(chunk), "=%s", name);
	int st = luaL_loadbufferx(L, src, len, chunk, "t");
	if (st != LUA_OK) {
		const char *msg = lua_tostring(L, -1);
		if (st == LUA_ERRMEM)
			rc = qs_err(err, QS_EUSAGE, "%s: memory cap of %zu MiB exceeded", name, r.cap >> 20);
		else
			rc = qs_err(err, QS_EUSAGE, "%s", msg ? msg : "cannot load");
		snprintf(res->trace, sizeof(res->trace), "%s", msg ? msg : "");
		goto out;
	}
	/* (chunk) -> run_policy(chunk) */
	lua_pushcfunction(L, run_policy);
	lua_insert(L, -2);
	if ((rc = pcall_tb(L, 1, 0))) {
		snprintf(res->trace, sizeof(res->trace), "%s", r.trace);
		goto out;
	}
out:
	res->instructions = r.instr;
	lua_close(L);
	res->mem_peak = r.peak;
	free(r.tens);
	if (rc)
		quant_plan_release(&res->plan);
	return rc;
}

int pol_run_file(const model *m, const char *path, const pol_opts *o, pol_result *r,
		 qs_error *err)
{
	memset(r, 0, sizeof(*r));
	FILE *f = fopen(path, "rb");
	if (!f)
		return qs_err(err, QS_EIO, "%s: cannot open: %s", path, strerror(errno));
	char *buf = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 65536;
			if (cap > ((size_t)16 << 20)) {
				fclose(f);
				free(buf);
				return qs_err(err, QS_EUSAGE, "%s: larger than 16 MiB", path);
			}
			char *nb = realloc(buf, cap);
			if (!nb) {
				fclose(f);
				free(buf);
				return qs_err(err, QS_ENOMEM, "%s: out of memory", path);
			}
			buf = nb;
		}
		size_t n = fread(buf + len, 1, cap - len, f);
		len += n;
		if (n == 0)
			break;
	}
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		free(buf);
		return qs_err(err, QS_EIO, "%s: read error", path);
	}
	char name[256];
	base_name(path, name, sizeof(name));
	int rc = pol_run_string(m, name, buf, len, o, r, err);
	free(buf);
	return rc;
}

void pol_result_release(pol_result *r)
{
	if (r)
		quant_plan_release(&r->plan);
}
