/* chat.c - see chat.h. */
#include "chat.h"

#include <pthread.h>
#include <readline/history.h>
#include <readline/readline.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/chat_tmpl.h"
#include "../engine/forward.h"
#include "../engine/generate.h"
#include "../engine/sample.h"
#include "workbench.h"

#define CHAT_PREDICT 64
#define CHAT_MAX_PROMPT 384

struct chat {
	const model *base;
	model *qm;                 /* built on the first prompt */
	quant_plan plan;
	char desc[128];
	const int *calib;
	int n_calib, threaded;
	int tmpl;                  /* enum chat_tmpl_kind */
	int tmpl_given;            /* chosen by the user, not read from the model */
	int stops[4], n_stops;     /* ids that end the answer (besides EOS) */
	/* the exchange */
	char prompt[1024];
	int n_prompt;
	int prompt_ids[CHAT_MAX_PROMPT];
	pthread_mutex_t mu;
	int out[2][CHAT_PREDICT];  /* generated ids: original, quantized */
	int n_out[2];
	double tps[2];
	int generating;            /* 0 idle, 1 running */
	char err[256];
	pthread_t th;
	atomic_int done, cancel, fresh;
	/* the prompt line (readline's, copied at each redisplay) */
	char line[1024];
	int point;
	int leave;
	FILE *devnull;
};

pthread_mutex_t tui_compute_mu = PTHREAD_MUTEX_INITIALIZER;

/* readline is one global state: one chat at a time */
static chat *g_chat;
static unsigned char g_q[32];
static int g_qn, g_qi;

static int rl_getc_cb(FILE *f)
{
	(void)f;
	return g_qi < g_qn ? g_q[g_qi++] : EOF;
}

/* readline asks whether more typeahead is there (by default a select() on
 * its input stream): only what we queued */
static int rl_avail_cb(void)
{
	return g_qi < g_qn;
}

static void rl_redisplay_cb(void)
{
	if (!g_chat)
		return;
	snprintf(g_chat->line, sizeof(g_chat->line), "%s", rl_line_buffer ? rl_line_buffer : "");
	g_chat->point = rl_point;
}

static void rl_noop_prep(int meta)
{
	(void)meta;
}

static void rl_noop_deprep(void)
{
}

static void start_generation(chat *c, const char *text);

static void rl_line_cb(char *line)
{
	if (!g_chat)
		return;
	if (!line) { /* Ctrl-D */
		g_chat->leave = 1;
		return;
	}
	if (*line) {
		add_history(line);
		start_generation(g_chat, line);
	}
	free(line);
}

/* ------------------------------------------------------------ generation */

typedef struct tokcb {
	chat *c;
	int k;
} tokcb;

static int on_token(void *user, int prev, int id)
{
	(void)prev;
	tokcb *t = user;
	chat *c = t->c;
	for (int i = 0; i < c->n_stops; i++)
		if (id == c->stops[i]) /* the template's end of turn: not shown */
			return GEN_STOP;
	pthread_mutex_lock(&c->mu);
	if (c->n_out[t->k] < CHAT_PREDICT)
		c->out[t->k][c->n_out[t->k]++] = id;
	pthread_mutex_unlock(&c->mu);
	atomic_store(&c->fresh, 1);
	return atomic_load(&c->cancel) ? 1 : 0;
}

static int quant_cancel(void *user, long done, long total)
{
	(void)done;
	(void)total;
	return atomic_load(&((chat *)user)->cancel);
}

/* both models in turn, the same seed: the answers differ only where the
 * quantized model's distribution does */
static void *gen_main(void *arg)
{
	chat *c = arg;
	qs_error err = { 0 };
	int rc = 0;
	pthread_mutex_lock(&tui_compute_mu);
	if (!c->qm) {
		quant_opts qo = { .calib = c->calib, .n_calib = c->n_calib, .calib_len = 512,
				  .progress = quant_cancel, .user = c }; /* Ctrl-C stops it too */
		if (c->plan.n)
			rc = quant_model(c->base, &c->plan, &qo, &c->qm, NULL, &err);
		else if (!(c->qm = model_derive(c->base, &err)))
			rc = err.code ? err.code : QS_ENOMEM;
	}
	for (int k = 0; k < 2 && !rc; k++) {
		const model *m = k ? c->qm : c->base;
		int len = c->n_prompt + CHAT_PREDICT;
		fwd_ctx *f = fwd_new(m, 1, len, &err);
		int *ids = malloc(sizeof(int) * (size_t)len);
		if (!f || !ids) {
			rc = f ? qs_err(&err, QS_ENOMEM, "chat: out of memory") : err.code;
		} else {
			memcpy(ids, c->prompt_ids, sizeof(int) * (size_t)c->n_prompt);
			sample_opts so = { .temp = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 42 };
			tokcb t = { c, k };
			gen_result r;
			rc = gen_run(f, m, ids, c->n_prompt, CHAT_PREDICT, len, &so, on_token, &t, &r, &err);
			if (!rc) {
				pthread_mutex_lock(&c->mu);
				c->tps[k] = r.decode_seconds > 0 ? (double)r.n_gen / r.decode_seconds : 0;
				pthread_mutex_unlock(&c->mu);
			}
		}
		free(ids);
		fwd_free(f);
	}
	pthread_mutex_unlock(&tui_compute_mu);
	pthread_mutex_lock(&c->mu);
	snprintf(c->err, sizeof(c->err), "%.250s", rc == QS_ECANCEL ? "stopped" : rc ? err.msg : "");
	pthread_mutex_unlock(&c->mu);
	atomic_store(&c->done, 1);
	atomic_store(&c->fresh, 1);
	return NULL;
}

static void start_generation(chat *c, const char *text)
{
	if (c->generating)
		return;
	int *ids = NULL;
	size_t n = 0;
	qs_error err = { 0 };
	int rc = chat_tmpl_prompt(c->tmpl, c->base->tok, text, &ids, &n, &err);
	if (!rc && c->tmpl != CHAT_TMPL_NONE && n > CHAT_MAX_PROMPT) { /* cutting would break the format */
		free(ids);
		rc = qs_err(&err, QS_EUSAGE, "the prompt is %zu tokens in the %s template, over %d", n,
			    chat_tmpl_name(c->tmpl), CHAT_MAX_PROMPT);
	}
	if (rc) {
		snprintf(c->err, sizeof(c->err), "%.250s", err.msg);
		return;
	}
	if (n > CHAT_MAX_PROMPT) { /* keep the end of a long prompt, after BOS */
		memmove(ids + 1, ids + n - (CHAT_MAX_PROMPT - 1), sizeof(int) * (CHAT_MAX_PROMPT - 1));
		n = CHAT_MAX_PROMPT;
	}
	memcpy(c->prompt_ids, ids, sizeof(int) * n);
	free(ids);
	c->n_prompt = (int)n;
	snprintf(c->prompt, sizeof(c->prompt), "%s", text);
	c->n_out[0] = c->n_out[1] = 0;
	c->tps[0] = c->tps[1] = 0;
	c->err[0] = 0;
	atomic_store(&c->done, 0);
	atomic_store(&c->cancel, 0);
	c->generating = 1;
	if (!c->threaded) {
		gen_main(c);
		c->generating = 0;
		return;
	}
	if (pthread_create(&c->th, NULL, gen_main, c)) {
		snprintf(c->err, sizeof(c->err), "cannot start a thread");
		c->generating = 0;
	}
}

/* ------------------------------------------------------------ lifecycle */

chat *chat_new(const model *base, const quant_plan *plan, const char *plan_desc, int tmpl,
	       int threaded, qs_error *err)
{
	if (g_chat) {
		qs_err(err, QS_EUSAGE, "chat: one chat at a time");
		return NULL;
	}
	chat *c = calloc(1, sizeof(*c));
	if (!c) {
		qs_err(err, QS_ENOMEM, "chat: out of memory");
		return NULL;
	}
	c->base = base;
	c->threaded = threaded;
	c->tmpl_given = tmpl >= 0;
	c->tmpl = tmpl >= 0 && tmpl < CHAT_TMPL_N ? tmpl : chat_tmpl_detect(base->chat_template);
	int st[4];
	int ns = chat_tmpl_stops(c->tmpl, base->tok, st, 4);
	for (int i = 0; i < ns; i++)
		if (st[i] != tok_eos(base->tok)) /* EOS ends generation by itself (and is kept) */
			c->stops[c->n_stops++] = st[i];
	snprintf(c->desc, sizeof(c->desc), "%s", plan_desc);
	pthread_mutex_init(&c->mu, NULL);
	for (int i = 0; i < plan->n; i++)
		if (quant_plan_add(&c->plan, plan->e[i].name, &plan->e[i].spec, err)) {
			chat_free(c);
			return NULL;
		}
	g_chat = c;
	/* readline in callback mode, writing nothing itself */
	c->devnull = fopen("/dev/null", "w");
	rl_outstream = c->devnull;
	rl_getc_function = rl_getc_cb;
	rl_input_available_hook = rl_avail_cb;
	rl_redisplay_function = rl_redisplay_cb;
	rl_prep_term_function = rl_noop_prep;
	rl_deprep_term_function = rl_noop_deprep;
	rl_catch_signals = 0;
	rl_catch_sigwinch = 0;
	rl_change_environment = 0;
	rl_inhibit_completion = 1;
	rl_callback_handler_install("", rl_line_cb);
	return c;
}

void chat_set_calib(chat *c, const int *calib, int n_calib)
{
	c->calib = calib;
	c->n_calib = n_calib;
}

void chat_stop(chat *c)
{
	if (!c || !c->generating)
		return;
	atomic_store(&c->cancel, 1);
	if (c->threaded)
		pthread_join(c->th, NULL);
	c->generating = 0;
}

void chat_free(chat *c)
{
	if (!c)
		return;
	chat_stop(c);
	if (g_chat == c) {
		rl_callback_handler_remove();
		g_chat = NULL;
	}
	if (c->devnull)
		fclose(c->devnull);
	model_free(c->qm);
	quant_plan_release(&c->plan);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

int chat_poll(chat *c)
{
	if (c->generating && c->threaded && atomic_load(&c->done)) {
		pthread_join(c->th, NULL);
		c->generating = 0;
		return 1;
	}
	return atomic_exchange(&c->fresh, 0);
}

/* feed bytes to readline, one rl_callback_read_char each */
static void feed(const char *bytes, int n)
{
	for (int i = 0; i < n; i++) {
		g_qn = 1;
		g_qi = 0;
		g_q[0] = (unsigned char)bytes[i];
		rl_callback_read_char();
	}
}

int chat_key(chat *c, int key)
{
	switch (key) {
	case WB_KEY_ESC:
		if (c->generating) { /* Esc stops the answers */
			chat_stop(c);
			return 0;
		}
		if (!c->line[0])
			return 1;
		rl_replace_line("", 0); /* Esc on a line clears it */
		rl_point = 0;
		rl_redisplay_cb();
		return 0;
	case WB_KEY_ENTER: feed("\r", 1); break;
	case WB_KEY_UP: feed("\033[A", 3); break;
	case WB_KEY_DOWN: feed("\033[B", 3); break;
	case WB_KEY_HOME: feed("\001", 1); break;
	case WB_KEY_END: feed("\005", 1); break;
	case WB_KEY_BACKSPACE: feed("\177", 1); break;
	case WB_KEY_CTRL_R: feed("\022", 1); break;
	case WB_KEY_RESIZE: return 0;
	default:
		if (key > 0 && key < 256) {
			char ch = (char)key;
			feed(&ch, 1);
		}
		break;
	}
	return c->leave;
}

/* ------------------------------------------------------------ drawing */

/* text of ids as one column, wrapped; tokens that differ from `other` in
 * TUI_HEAT0 + 4. Returns the rows used. */
static int draw_column(chat *c, tui_canvas *cv, int y0, int y1, int x0, int w, const int *ids,
		       int n, const int *other, int n_other)
{
	int y = y0, x = x0;
	int prev = c->prompt_ids[c->n_prompt - 1];
	for (int i = 0; i < n && y <= y1; i++) {
		char piece[128];
		size_t len = tok_decode(c->base->tok, prev, ids[i], piece, sizeof(piece) - 1);
		piece[len] = 0;
		prev = ids[i];
		int diff = other && (i >= n_other || other[i] != ids[i]);
		for (char *p = piece; *p && y <= y1; p++) {
			if (*p == '\n' || x >= x0 + w) {
				y++;
				x = x0;
				if (*p == '\n')
					continue;
			}
			char s[2] = { *p, 0 };
			if ((unsigned char)*p >= 0x80) { /* a UTF-8 sequence: put it whole */
				int k = 1;
				while (p[k] && ((unsigned char)p[k] & 0xc0) == 0x80)
					k++;
				char u[8] = { 0 };
				memcpy(u, p, (size_t)(k < 7 ? k : 7));
				tui_put(cv, y, x++, 1, diff ? TUI_HEAT0 + 4 : TUI_NORMAL, u);
				p += k - 1;
				continue;
			}
			tui_put(cv, y, x++, 1, diff ? TUI_HEAT0 + 4 : TUI_NORMAL, s);
		}
	}
	return y - y0 + 1;
}

void chat_draw(chat *c, tui_canvas *cv)
{
	tui_canvas_clear(cv);
	if (c->tmpl == CHAT_TMPL_NONE)
		tui_put(cv, 0, 0, 0, TUI_BOLD,
			c->tmpl_given || !c->base->chat_template
				? "chat: plain completion (no chat template), the same seed for both (temp 0.8, top-k 40, top-p 0.95)"
				: "chat: plain completion (the model's chat template is not llama2, chatml or llama3), the same seed for both");
	else
		tui_putf(cv, 0, 0, 0, TUI_BOLD,
			 "chat: %s template (%s), the same seed for both (temp 0.8, top-k 40, top-p 0.95)",
			 chat_tmpl_name(c->tmpl), c->tmpl_given ? "--template" : "the model's");
	int half = (cv->w - 1) / 2;
	pthread_mutex_lock(&c->mu);
	int n0 = c->n_out[0], n1 = c->n_out[1];
	int a[CHAT_PREDICT], b[CHAT_PREDICT];
	memcpy(a, c->out[0], sizeof(int) * (size_t)n0);
	memcpy(b, c->out[1], sizeof(int) * (size_t)n1);
	double tps0 = c->tps[0], tps1 = c->tps[1];
	char msg[256];
	snprintf(msg, sizeof(msg), "%s", c->err);
	pthread_mutex_unlock(&c->mu);
	tui_putf(cv, 1, 0, half, TUI_BOLD, "original  %.0f tok/s", tps0);
	tui_putf(cv, 1, half + 1, half, TUI_BOLD, "quantized (%s)  %.0f tok/s", c->desc, tps1);
	for (int y = 1; y < cv->h - 3; y++)
		tui_put(cv, y, half, 1, TUI_DIM, "\u2502");
	if (c->n_prompt) {
		tui_putf(cv, 2, 0, half, TUI_DIM, "> %s", c->prompt);
		tui_putf(cv, 2, half + 1, half, TUI_DIM, "> %s", c->prompt);
		draw_column(c, cv, 3, cv->h - 4, 0, half, a, n0, NULL, 0);
		draw_column(c, cv, 3, cv->h - 4, half + 1, cv->w - half - 1, b, n1, a, n0);
	}
	/* the comparison, in words (the marks are colours on a terminal) */
	int nd = 0, first = -1, m = n0 < n1 ? n0 : n1;
	for (int i = 0; i < m; i++)
		if (a[i] != b[i]) {
			nd++;
			if (first < 0)
				first = i;
		}
	if (msg[0])
		tui_putf(cv, cv->h - 3, 0, 0, TUI_BOLD, "chat: %s", msg);
	else if (c->generating)
		tui_putf(cv, cv->h - 3, 0, 0, TUI_DIM, "generating... %d + %d tokens (Esc stops)", n0, n1);
	else if (n1 && first >= 0)
		tui_putf(cv, cv->h - 3, 0, 0, TUI_NORMAL,
			 "quantized differs at %d of %d tokens, first at token %d", nd, m, first + 1);
	else if (n1)
		tui_putf(cv, cv->h - 3, 0, 0, TUI_NORMAL,
			 "quantized chose the same %d tokens as the original", m);
	tui_put(cv, cv->h - 2, 0, 0, TUI_DIM,
		"Enter: send  Up/Down: history  Ctrl-R: search  Esc: stop / clear / back to the table");
	tui_putf(cv, cv->h - 1, 0, 0, TUI_NORMAL, "> %s", c->line);
	int cx = 2 + c->point;
	if (cx < cv->w)
		cv->cells[(size_t)(cv->h - 1) * cv->w + cx].attr = TUI_REVERSE;
}
