/* cmd_tui.c - qscope tui: the workbench in the terminal (ncurses), or
 * headless for tests and scripts: QSCOPE_HEADLESS=WxH renders to a virtual
 * screen, runs the key script of --keys (or $QSCOPE_KEYS) and prints the
 * final screen as text. */
#define _XOPEN_SOURCE_EXTENDED 1
#include <curses.h>
#include <glob.h>
#include <locale.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../engine/calib.h"
#include "../engine/chat_tmpl.h"
#include "../engine/eval.h"
#include "chat.h"
#include "commands.h"
#include "workbench.h"

static common co;
static const char *t_sens, *t_recipe, *t_keys, *t_policy, *t_eval = "data/wikitext-2-test.txt";
static const char *t_template = "auto";
static int t_tmpl = -1; /* enum chat_tmpl_kind, -1: the model's */
static int t_keys_md;
static int t_full_chunks, t_fresh, t_chunks = 8, t_noeval, t_calib_n = 16, t_stats_n = 128;

static const opt o_tui[] = {
	{ "-m", "--model", OPT_STR, &co.model, "MODEL", "model (default " DEFAULT_MODEL ")" },
	{ "-z", "--tokenizer", OPT_STR, &co.tokenizer, "FILE", "llama2.c tokenizer.bin" },
	{ NULL, "--sens", OPT_STR, &t_sens, "FILE", "sensitivity results to show (qscope sensitivity -o)" },
	{ NULL, "--recipe", OPT_STR, &t_recipe, "FILE", "start from a saved plan" },
	{ NULL, "--policy", OPT_STR, &t_policy, "FILE.lua", "offer this policy first in the p picker (besides lua/policies/*.lua)" },
	{ NULL, "--keys", OPT_STR, &t_keys, "SCRIPT", "headless: keys to run, e.g. 'jj<Space>mb' (<Up> <Down> <PgUp> <PgDn> <Home> <End> <Enter> <Esc> <Space> <BS> <F1> <C-r> <C-c> <WheelUp> <WheelDown> <Click:ROW>)" },
	{ NULL, "--eval", OPT_STR, &t_eval, "TEXT", "quick-evaluation text (default data/wikitext-2-test.txt)" },
	{ NULL, "--chunks", OPT_INT, &t_chunks, "N", "quick-evaluation chunks of 512 (default 8)" },
	{ NULL, "--calib-samples", OPT_INT, &t_calib_n, "N", "calibration windows of 512 for GPTQ/AWQ plans in the quick evaluation (default 16)" },
	{ NULL, "--stats-samples", OPT_INT, &t_stats_n, "N", "calibration windows of 512 for the detail pane's input statistics (default 128, as qscope stats: they share the cache)" },
	{ NULL, "--full-chunks", OPT_INT, &t_full_chunks, "N", "chunks of the full evaluation (E; default 0: the whole text)" },
	{ NULL, "--fresh", OPT_FLAG, &t_fresh, NULL, "do not restore the last session's plan for this model" },
	{ NULL, "--no-eval", OPT_FLAG, &t_noeval, NULL, "no live evaluation" },
	{ NULL, "--keys-markdown", OPT_FLAG, &t_keys_md, NULL, "print the key table as Markdown (as docs/TUI.md has it) and exit" },
	{ NULL, "--template", OPT_STR, &t_template, "T", "chat prompt format: auto (the model's chat template), none (plain completion), llama2, chatml, llama3 (default auto)" },
	{ "-t", "--threads", OPT_INT, &co.threads, "N", "threads (default: all cores)" },
	{ NULL, NULL, 0, NULL, NULL, NULL },
};

const opt *tui_opts_table(void) { return o_tui; }

/* ---- the live evaluation: the quick-eval cache and calibration tokens are
 * made on first use; one evaluation runs at a time, on its own thread in a
 * terminal, inline when headless */

/* one piece of work on its own thread; the UI loop polls job_finished */
typedef struct job {
	pthread_t th;
	int running;
	atomic_int done;
	void (*fn)(void *);
	void *arg;
} job;

static void *job_main(void *a)
{
	job *j = a;
	pthread_mutex_lock(&tui_compute_mu); /* one computation at a time (chat.h) */
	j->fn(j->arg);
	pthread_mutex_unlock(&tui_compute_mu);
	atomic_store(&j->done, 1);
	return NULL;
}

static int job_start(job *j, void (*fn)(void *), void *arg)
{
	j->fn = fn;
	j->arg = arg;
	atomic_store(&j->done, 0);
	if (pthread_create(&j->th, NULL, job_main, j))
		return -1;
	j->running = 1;
	return 0;
}

/* 1 once, when a started job has ended (joined) */
static int job_finished(job *j)
{
	if (!j->running || !atomic_load(&j->done))
		return 0;
	pthread_join(j->th, NULL);
	j->running = 0;
	return 1;
}

static void job_wait(job *j)
{
	if (j->running)
		pthread_join(j->th, NULL);
	j->running = 0;
}

typedef struct evaluator {
	const model *m;
	eval_cache *ec;
	int *calib;
	job j;
	atomic_int cancel;     /* set when the workbench closes */
	quant_plan plan;
	wb_eval res;
	int rc;
	char err[512];
	/* the last plan evaluated (the cache keeps its states) and its result:
	 * the next run starts at the first layer that differs */
	quant_plan last;
	int have_last;
	wb_eval last_res;
	model *last_qm;        /* the model last_res was measured on */
	quant_xtx *xtx;        /* from the calibrator: output errors */
} evaluator;

static int sample_calib(const model *m, int **out, qs_error *err)
{
	return cli_sample_calib(m, t_calib_n, out, err);
}

static int ev_prepare(evaluator *e, qs_error *err)
{
	if (!e->ec) {
		int *ids = NULL;
		size_t n = 0;
		if (cli_tokenize_file(e->m, t_eval, &ids, &n))
			return qs_err(err, QS_EIO, "%s: cannot read the evaluation text", t_eval);
		e->ec = eval_cache_new(e->m, ids, n, t_chunks, 512, err);
		free(ids);
		if (!e->ec)
			return err->code ? err->code : QS_ENOMEM;
		if (eval_cache_keep(e->ec, err)) /* without it every run starts from base */
			err->code = 0;
	}
	if (!e->calib && quant_plan_needs_calib(&e->plan))
		return sample_calib(e->m, &e->calib, err);
	return 0;
}

static int ev_cancel(void *user, long done, long total)
{
	(void)done;
	(void)total;
	return atomic_load(&((evaluator *)user)->cancel);
}

static void ev_run(void *arg)
{
	evaluator *e = arg;
	qs_error err = { 0 };
	wb_eval_release(&e->res);
	e->rc = ev_prepare(e, &err);
	if (!e->rc) {
		wb_eval_in in = { .ec = e->ec, .last = e->have_last ? &e->last : NULL,
				  .last_res = e->have_last ? &e->last_res : NULL,
				  .last_qm = e->have_last ? e->last_qm : NULL, .xtx = e->xtx,
				  .calib = e->calib, .n_calib = t_calib_n, .calib_len = 512,
				  .cancel = ev_cancel, .cancel_user = e };
		model *qm = NULL;
		e->rc = wb_evaluate(e->m, &e->plan, &in, &e->res, &qm, &err);
		model_free(e->last_qm);
		e->last_qm = qm;
	}
	/* remember what the cache now holds (a failed run forgot it) */
	quant_plan_release(&e->last);
	wb_eval_release(&e->last_res);
	e->have_last = 0;
	if (!e->rc && e->plan.n && e->ec && eval_cache_has_last(e->ec)) {
		qs_error ce = { 0 };
		for (int i = 0; i < e->plan.n && !ce.code; i++)
			quant_plan_add(&e->last, e->plan.e[i].name, &e->plan.e[i].spec, &ce);
		e->last_res = e->res;
		e->last_res.t = NULL;
		if (!ce.code && e->res.n_t &&
		    (e->last_res.t = malloc(sizeof(*e->res.t) * (size_t)e->res.n_t)))
			memcpy(e->last_res.t, e->res.t, sizeof(*e->res.t) * (size_t)e->res.n_t);
		e->have_last = !ce.code && (!e->res.n_t || e->last_res.t);
		if (!e->have_last) {
			quant_plan_release(&e->last);
			wb_eval_release(&e->last_res);
		}
	}
	if (!e->have_last) {
		model_free(e->last_qm);
		e->last_qm = NULL;
	}
	snprintf(e->err, sizeof(e->err), "%s", e->rc ? err.msg : "");
}

/* start an evaluation of the current plan (a terminal: on a thread) */
static int ev_start(evaluator *e, wb *w, int threaded)
{
	qs_error err = { 0 };
	quant_plan_release(&e->plan);
	if (wb_take_plan(w, &e->plan, &err))
		return -1;
	wb_set_busy(w, 1);
	if (!threaded) {
		ev_run(e);
		wb_set_eval(w, &e->res, e->rc ? e->err : NULL);
		return 0;
	}
	if (job_start(&e->j, ev_run, e)) {
		wb_set_eval(w, NULL, "cannot start a thread");
		return -1;
	}
	return 0;
}

/* a finished threaded evaluation: show it */
static int ev_poll(evaluator *e, wb *w)
{
	if (!job_finished(&e->j))
		return 0;
	wb_set_eval(w, &e->res, e->rc ? e->err : NULL);
	return 1;
}

/* ---- the full evaluation (E): eval_compare over the whole text (or
 * --full-chunks), progress shared under a mutex, cancelled from the UI */

typedef struct fuller {
	const model *m;
	job j;
	quant_plan plan;
	int *ids, *calib;
	size_t n_ids;
	pthread_mutex_t mu;
	int done, total;
	double ppl;
	atomic_int cancel;
	eval_cmp_result res;
	int rc;
	char err[512];
} fuller;

static int full_on_chunk(void *user, int chunk, int n, double running)
{
	fuller *f = user;
	pthread_mutex_lock(&f->mu);
	f->done = chunk + 1;
	f->total = n;
	f->ppl = running;
	pthread_mutex_unlock(&f->mu);
	return atomic_load(&f->cancel);
}

static int full_cancel(void *user, long done, long total)
{
	(void)done;
	(void)total;
	return atomic_load(&((fuller *)user)->cancel);
}

static void full_run(void *arg)
{
	fuller *f = arg;
	qs_error err = { 0 };
	model *qm = NULL;
	f->rc = 0;
	if (!f->ids && cli_tokenize_file(f->m, t_eval, &f->ids, &f->n_ids))
		f->rc = qs_err(&err, QS_EIO, "%s: cannot read the evaluation text", t_eval);
	if (!f->rc && !f->calib && quant_plan_needs_calib(&f->plan))
		f->rc = sample_calib(f->m, &f->calib, &err);
	quant_opts qo = { .calib = f->calib, .n_calib = t_calib_n, .calib_len = 512,
			  .progress = full_cancel, .user = f };
	if (!f->rc)
		f->rc = quant_model(f->m, &f->plan, &qo, &qm, NULL, &err);
	eval_ppl_opts eo = { .ctx = 512, .n_chunks = t_full_chunks, .on_chunk = full_on_chunk, .user = f };
	if (!f->rc)
		f->rc = eval_compare(f->m, qm, f->ids, f->n_ids, &eo, &f->res, &err);
	model_free(qm);
	snprintf(f->err, sizeof(f->err), "%s", f->rc == QS_ECANCEL ? "cancelled" : f->rc ? err.msg : "");
}

static void full_start(fuller *f, wb *w, int threaded)
{
	qs_error err = { 0 };
	quant_plan_release(&f->plan);
	if (wb_plan(w, &f->plan, &err)) {
		wb_add_result(w, NULL, err.msg);
		return;
	}
	atomic_store(&f->cancel, 0);
	f->done = 0;
	f->total = 0;
	f->ppl = 0;
	wb_set_full_progress(w, 1, 0, 0, 0);
	if (!threaded) {
		full_run(f);
		wb_add_result(w, &f->res, f->rc ? f->err : NULL);
		return;
	}
	if (job_start(&f->j, full_run, f))
		wb_add_result(w, NULL, "cannot start a thread");
}

/* progress into the workbench; the result when it has ended */
static int full_poll(fuller *f, wb *w)
{
	if (!f->j.running)
		return 0;
	if (wb_cancel_full(w))
		atomic_store(&f->cancel, 1);
	if (job_finished(&f->j)) {
		wb_add_result(w, &f->res, f->rc ? f->err : NULL);
		return 1;
	}
	pthread_mutex_lock(&f->mu);
	int d = f->done, t = f->total;
	double p = f->ppl;
	pthread_mutex_unlock(&f->mu);
	wb_set_full_progress(w, 1, d, t, p);
	return 1;
}

static void full_release(fuller *f)
{
	atomic_store(&f->cancel, 1);
	job_wait(&f->j);
	quant_plan_release(&f->plan);
	free(f->ids);
	free(f->calib);
}

/* ---- calibration for the detail pane (the defaults of `qscope stats`, so
 * both share the disk cache) */

typedef struct calibrator {
	const model *m;
	job j;
	atomic_int cancel;     /* set when the workbench closes */
	calib_set *set;
	quant_xtx *xtx;        /* for the evaluator (output errors), or NULL */
	int xtx_tried;         /* collected (or failed) once: not again */
	char xtx_err[600];     /* why there is none */
	int rc;
	char err[512];
} calibrator;

/* at most this much memory for the output-error store (X^T X per input) */
#define TUI_XTX_MAX ((size_t)2 << 30)

static int cal_cancel(void *user, long done, long total)
{
	(void)done;
	(void)total;
	return atomic_load(&((calibrator *)user)->cancel);
}

static void cal_run(void *arg)
{
	calibrator *k = arg;
	qs_error err = { 0 };
	calib_opts o;
	calib_opts_default(&o);
	o.n_samples = t_stats_n;
	k->rc = cli_collect_calib_file(k->m, NULL, &o, cal_cancel, k, &k->set, NULL, &err);
	snprintf(k->err, sizeof(k->err), "%s", k->rc ? err.msg : "");
	/* second moments of every input on the quick evaluation's calibration
	 * windows: the o.err column. Not having them is not an error. */
	int *toks = NULL;
	qs_error xe = { 0 };
	if (!k->rc && !k->xtx_tried && (k->xtx_tried = 1) &&
	    (sample_calib(k->m, &toks, &xe) ||
	     quant_xtx_collect(k->m, toks, t_calib_n, 512, TUI_XTX_MAX, cal_cancel, k, &k->xtx, &xe)))
		snprintf(k->xtx_err, sizeof(k->xtx_err), "o.err: %s", xe.msg);
	free(toks);
}

static void cal_start(calibrator *k, wb *w, int threaded)
{
	wb_set_calib_busy(w, 1, NULL);
	if (!threaded) {
		cal_run(k);
		if (k->rc)
			wb_set_calib_busy(w, 0, k->err);
		else
			wb_set_calib(w, k->set);
		return;
	}
	if (job_start(&k->j, cal_run, k))
		wb_set_calib_busy(w, 0, "cannot start a thread");
}

static int cal_poll(calibrator *k, wb *w)
{
	if (!job_finished(&k->j))
		return 0;
	if (k->rc)
		wb_set_calib_busy(w, 0, k->err);
	else
		wb_set_calib(w, k->set);
	return 1;
}

static void cal_release(calibrator *k)
{
	atomic_store(&k->cancel, 1);
	job_wait(&k->j);
	calib_set_free(k->set);
	quant_xtx_free(k->xtx);
}

static void ev_release(evaluator *e)
{
	atomic_store(&e->cancel, 1);
	job_wait(&e->j);
	eval_cache_free(e->ec);
	free(e->calib);
	quant_plan_release(&e->plan);
	quant_plan_release(&e->last);
	wb_eval_release(&e->res);
	wb_eval_release(&e->last_res);
	model_free(e->last_qm);
	quant_xtx_free(e->xtx);
}

/* ---- the session: the plan is saved (atomically) after every change to
 * $QSCOPE_STATE, else $XDG_STATE_HOME/qscope, else ~/.local/state/qscope,
 * one file per model, and restored on the next start */

static int session_path(const model *m, char *buf, size_t cap)
{
	const char *d = getenv("QSCOPE_STATE"), *x = getenv("XDG_STATE_HOME"), *h = getenv("HOME");
	char dir[900];
	if (d && *d)
		snprintf(dir, sizeof(dir), "%s", d);
	else if (x && *x == '/')
		snprintf(dir, sizeof(dir), "%s/qscope", x);
	else if (h && *h)
		snprintf(dir, sizeof(dir), "%s/.local/state/qscope", h);
	else
		return -1;
	calib_opts o;
	calib_opts_default(&o);
	snprintf(buf, cap, "%s/session-%016llx.json", dir,
		 (unsigned long long)calib_key(m, "", 0, &o));
	return 0;
}

typedef struct session {
	char path[1024];
	int on;
	unsigned saved;    /* plan version last saved */
} session;

static void session_save(session *ss, wb *w, const model *m)
{
	if (!ss->on || wb_plan_version(w) == ss->saved)
		return;
	quant_plan p;
	qs_error err = { 0 };
	if (wb_plan(w, &p, &err))
		return;
	if (calib_make_parents(ss->path, &err) ||
	    quant_plan_save(ss->path, m, &p, "qscope tui session", &err)) {
		ss->on = 0; /* say it once, then stop trying */
		fprintf(stderr, "qscope tui: session not saved: %s\n", err.msg);
	}
	quant_plan_release(&p);
	ss->saved = wb_plan_version(w);
}

/* the next key of a script, advancing *s; -1 at the end or on a bad name */
static int script_key(const char **s, char *bad, size_t cap)
{
	static const struct { const char *name; int key; } names[] = {
		{ "<Up>", WB_KEY_UP },     { "<Down>", WB_KEY_DOWN },   { "<PgUp>", WB_KEY_PGUP },
		{ "<PgDn>", WB_KEY_PGDN }, { "<Home>", WB_KEY_HOME },   { "<End>", WB_KEY_END },
		{ "<Enter>", WB_KEY_ENTER }, { "<Esc>", WB_KEY_ESC },   { "<Space>", ' ' },
		{ "<BS>", WB_KEY_BACKSPACE }, { "<F1>", WB_KEY_F1 },    { "<C-r>", WB_KEY_CTRL_R },
		{ "<lt>", '<' }, { "<C-c>", WB_KEY_CTRL_C }, { "<C-d>", 4 },
		{ "<WheelUp>", WB_KEY_WHEEL_UP }, { "<WheelDown>", WB_KEY_WHEEL_DOWN },
	};
	if (!**s)
		return -1;
	if (**s == '<') {
		int row, used = 0;
		if (sscanf(*s, "<Click:%d>%n", &row, &used) == 1 && used > 0 && row >= 0 && row < 1000) {
			*s += used;
			return WB_KEY_CLICK + row;
		}
		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
			size_t n = strlen(names[i].name);
			if (!strncmp(*s, names[i].name, n)) {
				*s += n;
				return names[i].key;
			}
		}
		snprintf(bad, cap, "%.20s", *s);
		return -2;
	}
	return (unsigned char)*(*s)++;
}

/* open the chat on the workbench's current plan */
static chat *chat_open(wb *w, const model *m, int threaded, int **calib, qs_error *err)
{
	quant_plan p;
	char desc[128];
	if (wb_plan(w, &p, err))
		return NULL;
	wb_plan_desc(w, desc, sizeof(desc));
	if (!*calib && quant_plan_needs_calib(&p) && sample_calib(m, calib, err)) {
		quant_plan_release(&p);
		return NULL;
	}
	chat *c = chat_new(m, &p, desc, t_tmpl, threaded, err);
	quant_plan_release(&p);
	if (c)
		chat_set_calib(c, *calib, t_calib_n);
	return c;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ---- what both loops share: keys to the chat or the table, the work they
 * ask for (on threads in a terminal, inline when headless), drawing */

typedef struct ui {
	wb *w;
	const model *m;
	evaluator *ev;        /* NULL: no live evaluation */
	calibrator *cal;
	fuller *fu;
	session *ss;
	int threaded;
	chat *chat;
	int *calib;           /* calibration windows for the chat's plan */
	double last_key;
	const char *narration; /* the demo's, drawn over the screen */
	int step, n_steps;
} ui;

/* a key for the chat or the table; 1 to quit */
static int ui_key(ui *u, int k)
{
	if (u->chat) {
		if (k == WB_KEY_CTRL_C)
			return 1;
		if (k >= WB_KEY_CLICK || k == WB_KEY_WHEEL_UP || k == WB_KEY_WHEEL_DOWN)
			return 0; /* no mouse in the chat */
		if (chat_key(u->chat, k)) {
			chat_free(u->chat);
			u->chat = NULL;
		}
		return 0;
	}
	int r = wb_key(u->w, k);
	if (wb_want_chat(u->w)) {
		qs_error err = { 0 };
		if (!(u->chat = chat_open(u->w, u->m, u->threaded, &u->calib, &err)))
			wb_status(u->w, err.msg);
	}
	return (r & WB_QUIT) != 0;
}

/* results in, work out; 1 when the screen changed */
static int ui_tick(ui *u)
{
	int redraw = 0;
	if (u->threaded) {
		redraw |= u->ev && ev_poll(u->ev, u->w);
		redraw |= cal_poll(u->cal, u->w);
		redraw |= full_poll(u->fu, u->w);
		redraw |= u->chat && chat_poll(u->chat);
	}
	if (!u->fu->j.running && wb_want_full(u->w)) {
		full_start(u->fu, u->w, u->threaded);
		redraw = 1;
	}
	if (!u->cal->j.running && wb_want_calib(u->w)) {
		cal_start(u->cal, u->w, u->threaded);
		redraw = 1;
	}
	/* the calibrator's X^T X goes to an idle evaluator, which then
	 * evaluates again to fill the o.err column */
	if (u->ev && u->cal->xtx && !u->cal->j.running && !u->ev->j.running) {
		quant_xtx_free(u->ev->xtx);
		u->ev->xtx = u->cal->xtx;
		u->cal->xtx = NULL;
		wb_request_eval(u->w);
	}
	if (!u->cal->j.running && u->cal->xtx_err[0]) {
		wb_status(u->w, u->cal->xtx_err);
		u->cal->xtx_err[0] = 0;
	}
	session_save(u->ss, u->w, u->m);
	/* debounced on a terminal: a burst of keys gives one evaluation */
	if (u->ev && !u->ev->j.running && wb_dirty(u->w) &&
	    (!u->threaded || now_s() - u->last_key > 0.15)) {
		ev_start(u->ev, u->w, u->threaded);
		redraw = 1;
	}
	return redraw;
}

static void ui_draw(ui *u, tui_canvas *c)
{
	if (u->chat)
		chat_draw(u->chat, c);
	else
		wb_draw(u->w, c);
	if (!u->narration)
		return;
	/* the demo's words on the first row (and the last when long) */
	char head[64];
	snprintf(head, sizeof(head), "demo %d/%d: ", u->step + 1, u->n_steps);
	for (int x = 0; x < c->w; x++)
		tui_put(c, 0, x, 1, TUI_REVERSE, " ");
	int n = tui_put(c, 0, 0, 0, TUI_REVERSE, head);
	size_t len = strlen(u->narration), fit = (size_t)(c->w - n > 0 ? c->w - n : 0);
	char buf[512];
	snprintf(buf, sizeof(buf), "%.*s", (int)(len < fit ? len : fit), u->narration);
	tui_put(c, 0, n, 0, TUI_REVERSE, buf);
	if (len > fit) {
		for (int x = 0; x < c->w; x++)
			tui_put(c, c->h - 1, x, 1, TUI_REVERSE, " ");
		tui_put(c, c->h - 1, 0, 0, TUI_REVERSE, u->narration + fit);
	}
}

static void ui_release(ui *u)
{
	chat_free(u->chat); /* stops a running generation */
	u->chat = NULL;
	free(u->calib);
	u->calib = NULL;
}

/* run a key script through the UI; -2 (and *bad) on an unknown key name,
 * 1 if it quit */
static int ui_script(ui *u, const char *keys, char *bad, size_t cap)
{
	const char *s = keys ? keys : "";
	int k;
	while ((k = script_key(&s, bad, cap)) != -1) {
		if (k == -2)
			return -2;
		u->last_key = now_s();
		if (ui_key(u, k))
			return 1;
		ui_tick(u);
	}
	return 0;
}

static int headless_size(const char *size, int *cw, int *ch)
{
	if (sscanf(size, "%dx%d", cw, ch) != 2 || *cw < 1 || *ch < 1 || *cw > 1000 || *ch > 1000) {
		fprintf(stderr, "qscope: QSCOPE_HEADLESS '%s': expected WxH, e.g. 80x24\n", size);
		return EXIT_USAGE;
	}
	return 0;
}

static int run_headless(ui *u, const char *size, const char *keys)
{
	int cw, ch, rc = headless_size(size, &cw, &ch);
	if (rc)
		return rc;
	tui_canvas c;
	if (tui_canvas_init(&c, cw, ch)) {
		fprintf(stderr, "qscope tui: out of memory\n");
		return EXIT_INPUT;
	}
	ui_draw(u, &c); /* the first frame sets the page size, as on a terminal */
	char bad[32];
	if (ui_script(u, keys, bad, sizeof(bad)) == -2) {
		fprintf(stderr, "qscope tui: --keys: unknown key name '%s'\n", bad);
		rc = EXIT_USAGE;
	} else {
		ui_draw(u, &c);
		tui_canvas_dump(&c, stdout);
	}
	tui_canvas_release(&c);
	return rc;
}

/* the demo: narration and the keys that show it, step by step */
typedef struct demo_step {
	const char *say, *keys;
} demo_step;

static const demo_step demo_steps[] = {
	{ "debdoc-19m, unquantized: 16 bits per weight. One row per linear layer; the bar above the "
	  "footer will show perplexity and KL divergence on 8 WikiText-2 chunks.", "" },
	{ "Round to nearest at 3 bits (int3, one FP16 scale and zero per 128 weights) on all 56 block "
	  "linears: a fifth of the bytes, and perplexity jumps.", "/blk<Enter>Abbbbb" },
	{ "Why it hurts: blk.3.ffn_down's input (after calibration, c) has kurtosis above 100 - a few "
	  "channels carry values 3-5x the median; rounding cannot serve both scales.",
	  "<Esc>/blk.3.ffn_down<Enter>c<Enter>" },
	{ "GPTQ at the same 3 bits: each column's rounding error is pushed onto the columns not yet "
	  "quantized, weighted by the inputs' second moments. Part of the damage comes back.",
	  "<Enter>/blk<Enter>Am" },
	{ "AWQ at the same 3 bits: channels with large activations are scaled up before rounding, the "
	  "inverse folded into the RMSNorm in front.", "m" },
	{ "A Lua budget policy: 4.5 bits per weight, spent where the measured sensitivity says "
	  "(lua/policies/budget.lua; p picks policies).", "<Esc>/<Enter>p<Enter>" },
	{ "Chat: the original and the budget-quantized model answer the same prompt with the same "
	  "seed, side by side (Esc returns).", "CThe quick brown fox<Enter>" },
};
#define N_DEMO ((int)(sizeof(demo_steps) / sizeof(demo_steps[0])))

static int curses_attr(int a)
{
	static int color = -1;
	if (color < 0)
		color = has_colors() && !getenv("NO_COLOR");
	switch (a) {
	case TUI_BOLD: return A_BOLD;
	case TUI_REVERSE: return A_REVERSE;
	case TUI_DIM: return A_DIM;
	case TUI_SELECTED: return A_BOLD | A_UNDERLINE;
	default:
		if (a >= TUI_HEAT0 && a < TUI_HEAT0 + 5)
			return color ? COLOR_PAIR(1 + a - TUI_HEAT0) : (a >= TUI_HEAT0 + 3 ? A_BOLD : 0);
		return A_NORMAL;
	}
}

static void blit(const tui_canvas *c)
{
	for (int y = 0; y < c->h; y++)
		for (int x = 0; x < c->w; x++) {
			const tui_cell *cell = &c->cells[(size_t)y * c->w + x];
			wchar_t s[2] = { cell->ch, 0 };
			cchar_t cc;
			setcchar(&cc, s, (attr_t)curses_attr(cell->attr), 0, NULL);
			mvadd_wch(y, x, &cc);
		}
	refresh();
}

static int map_key(int ch)
{
	switch (ch) {
	case KEY_UP: return WB_KEY_UP;
	case KEY_DOWN: return WB_KEY_DOWN;
	case KEY_PPAGE: return WB_KEY_PGUP;
	case KEY_NPAGE: return WB_KEY_PGDN;
	case KEY_HOME: return WB_KEY_HOME;
	case KEY_END: return WB_KEY_END;
	case KEY_ENTER: case '\n': case '\r': return WB_KEY_ENTER;
	case 27: return WB_KEY_ESC;
	case KEY_BACKSPACE: case 127: case 8: return WB_KEY_BACKSPACE;
	case KEY_F(1): return WB_KEY_F1;
	case 18: return WB_KEY_CTRL_R;
	case KEY_RESIZE: return WB_KEY_RESIZE;
	case 12: return WB_KEY_RESIZE; /* Ctrl-L: redraw */
	case 3: return WB_KEY_CTRL_C;
	case KEY_MOUSE: {
		MEVENT ev;
		if (getmouse(&ev) != OK)
			return -1;
		if (ev.bstate & (BUTTON1_PRESSED | BUTTON1_CLICKED))
			return WB_KEY_CLICK + ev.y;
		if (ev.bstate & BUTTON4_PRESSED)
			return WB_KEY_WHEEL_UP;
#ifdef BUTTON5_PRESSED
		if (ev.bstate & BUTTON5_PRESSED)
			return WB_KEY_WHEEL_DOWN;
#endif
		return -1;
	}
	default: return ch;
	}
}


static int run_curses(ui *u, int demo)
{
	if (!isatty(0) || !isatty(1)) {
		fprintf(stderr, "qscope: the workbench needs a terminal (or QSCOPE_HEADLESS=80x24 with --keys)\n");
		return EXIT_USAGE;
	}
	initscr();
	raw(); /* Ctrl-C arrives as a key: quit from anywhere, the terminal restored */
	noecho();
	keypad(stdscr, TRUE);
	set_escdelay(25);
	/* clicks and the wheel (Shift + drag still selects text in most terminals) */
	mmask_t mm = BUTTON1_PRESSED | BUTTON1_CLICKED | BUTTON4_PRESSED;
#ifdef BUTTON5_PRESSED
	mm |= BUTTON5_PRESSED;
#endif
	mousemask(mm, NULL);
	mouseinterval(0);
	curs_set(0);
	if (has_colors() && !getenv("NO_COLOR")) {
		start_color();
		use_default_colors();
		static const short heat[5] = { COLOR_BLUE, COLOR_CYAN, COLOR_GREEN, COLOR_YELLOW, COLOR_RED };
		for (int i = 0; i < 5; i++)
			init_pair((short)(1 + i), heat[i], -1);
	}
	tui_canvas c = { 0 };
	int rc = 0, redraw = 1, autoplay = 0;
	double step_at = now_s();
	char bad[32];
	timeout(50); /* getch returns ERR after 50 ms: the loop polls the workers */
	for (;;) {
		if (!c.cells || c.w != COLS || c.h != LINES) {
			tui_canvas_release(&c);
			if (tui_canvas_init(&c, COLS, LINES)) {
				rc = EXIT_INPUT;
				break;
			}
			clear();
			redraw = 1;
		}
		redraw |= ui_tick(u);
		/* the demo: Tab steps, P plays (a step every 10 s once the work is done) */
		if (demo && autoplay && u->step + 1 < N_DEMO && now_s() - step_at > 10 && !wb_dirty(u->w) &&
		    !u->ev->j.running && !u->cal->j.running) {
			u->narration = demo_steps[++u->step].say;
			if (ui_script(u, demo_steps[u->step].keys, bad, sizeof(bad)) == 1)
				break;
			step_at = now_s();
			redraw = 1;
		}
		if (redraw) {
			ui_draw(u, &c);
			blit(&c);
			redraw = 0;
		}
		int ch = getch();
		if (ch == ERR)
			continue;
		u->last_key = now_s();
		redraw = 1;
		int key = map_key(ch);
		if (key < 0)
			continue; /* a mouse event we do not use */
		if (demo && !u->chat && (key == '\t' || key == 'P')) {
			if (key == 'P') {
				autoplay = !autoplay;
			} else if (u->step + 1 < N_DEMO) {
				u->narration = demo_steps[++u->step].say;
				if (ui_script(u, demo_steps[u->step].keys, bad, sizeof(bad)) == 1)
					break;
			}
			step_at = now_s();
			continue;
		}
		if (ui_key(u, key))
			break;
	}
	tui_canvas_release(&c);
	endwin();
	return rc;
}

/* the demo, headless: every step's screen, one after the other */
static int run_demo_headless(ui *u, const char *size)
{
	int cw, ch, rc = headless_size(size, &cw, &ch);
	if (rc)
		return rc;
	tui_canvas c;
	if (tui_canvas_init(&c, cw, ch))
		return EXIT_INPUT;
	char bad[32];
	ui_draw(u, &c);
	for (u->step = 0; u->step < N_DEMO; u->step++) {
		u->narration = demo_steps[u->step].say;
		if (ui_script(u, demo_steps[u->step].keys, bad, sizeof(bad)) == -2) {
			fprintf(stderr, "qscope demo: step %d: unknown key name '%s'\n", u->step + 1, bad);
			rc = EXIT_USAGE;
			break;
		}
		ui_draw(u, &c);
		printf("==== step %d of %d ====\n", u->step + 1, N_DEMO);
		tui_canvas_dump(&c, stdout);
	}
	tui_canvas_release(&c);
	return rc;
}

static int workbench_main(const char *name, int argc, char **argv, int demo)
{
	int rc = cli_parse_opts(name, argc, argv, o_tui);
	if (rc)
		return rc;
	if (t_keys_md) {
		wb_keys_markdown(stdout);
		return 0;
	}
	qs_error terr = { 0 };
	if (chat_tmpl_parse(t_template, &t_tmpl, &terr)) {
		fprintf(stderr, "qscope %s: --template: %s\n", name, terr.msg);
		return EXIT_USAGE;
	}
	setlocale(LC_ALL, "");
	model *m = NULL;
	if ((rc = cli_open_model(&co, &m)))
		return rc;
	qs_error err = { 0 };
	sens_table sens;
	int have_sens = 0;
	wb *w = NULL;
	/* the demo shows the bundled model's GPTQ sensitivity scan (made by
	 * qscope sensitivity, see the file's made_by) for its budget step */
	const char *sens_path = t_sens ? t_sens : demo && !co.model ? "models/debdoc-19m-sens-gptq.json" : NULL;
	if (sens_path) {
		if (sens_load(sens_path, m, &sens, &err)) {
			fprintf(stderr, "qscope %s: %s\n", name, err.msg);
			rc = EXIT_INPUT;
			goto out;
		}
		have_sens = 1;
	}
	if (!(w = wb_new(m, have_sens ? &sens : NULL, &err))) {
		fprintf(stderr, "qscope %s: %s\n", name, err.msg);
		rc = EXIT_INPUT;
		goto out;
	}
	if (demo)
		wb_add_policy(w, "lua/policies/budget.lua"); /* first in the picker */
	if (t_policy)
		wb_add_policy(w, t_policy);
	{ /* the bundled policies, sorted */
		glob_t g;
		if (glob("lua/policies/*.lua", 0, NULL, &g) == 0)
			for (size_t i = 0; i < g.gl_pathc; i++)
				wb_add_policy(w, g.gl_pathv[i]);
		globfree(&g);
	}
	session ss = { 0 };
	ss.on = !demo && session_path(m, ss.path, sizeof(ss.path)) == 0; /* a demo leaves no trace */
	if (!t_recipe && !t_fresh && ss.on && access(ss.path, R_OK) == 0) {
		quant_plan p;
		int r2 = quant_plan_load(ss.path, m, &p, &err);
		int n = 0;
		if (!r2) {
			n = p.n;
			r2 = wb_set_plan(w, &p, &err);
			quant_plan_release(&p);
		}
		if (r2) { /* a damaged session is not fatal: start empty */
			fprintf(stderr, "qscope tui: session not restored: %s\n", err.msg);
		} else {
			char msg[200];
			snprintf(msg, sizeof(msg), "last session's plan restored: %d tensors (--fresh starts empty)", n);
			wb_status(w, msg);
		}
	}
	if (t_recipe) {
		quant_plan p;
		int r2 = quant_plan_load(t_recipe, m, &p, &err);
		if (!r2) {
			r2 = wb_set_plan(w, &p, &err);
			quant_plan_release(&p);
		}
		if (r2) {
			fprintf(stderr, "qscope %s: %s\n", name, err.msg);
			rc = EXIT_INPUT;
			goto out;
		}
	}
	evaluator ev = { .m = m };
	calibrator cal = { .m = m };
	fuller fu = { .m = m };
	pthread_mutex_init(&fu.mu, NULL);
	const char *hl = getenv("QSCOPE_HEADLESS");
	ui u = { .w = w, .m = m, .ev = t_noeval ? NULL : &ev, .cal = &cal, .fu = &fu, .ss = &ss,
		 .threaded = !(hl && *hl), .n_steps = N_DEMO };
	if (demo)
		u.narration = demo_steps[0].say;
	if (hl && *hl)
		rc = demo ? run_demo_headless(&u, hl)
			  : run_headless(&u, hl, t_keys ? t_keys : getenv("QSCOPE_KEYS"));
	else
		rc = run_curses(&u, demo);
	ui_release(&u);
	full_release(&fu);
	pthread_mutex_destroy(&fu.mu);
	ev_release(&ev);
	cal_release(&cal);
out:
	wb_free(w);
	if (have_sens)
		sens_table_release(&sens);
	model_free(m);
	return rc;
}

int cmd_tui(int argc, char **argv)
{
	return workbench_main("tui", argc, argv, 0);
}

int cmd_demo(int argc, char **argv)
{
	return workbench_main("demo", argc, argv, 1);
}
