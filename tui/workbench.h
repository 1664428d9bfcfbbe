/* workbench.h - the workbench's state and its layer-table screen: one row
 * per quantizable tensor with its shape, the spec the plan gives it, bits
 * per weight, weight kurtosis and measured sensitivity; keys edit the plan
 * (method, bits, group, symmetric, format) on the selection, with undo, and
 * a footer totals the plan's exact bytes. No curses here: it draws on a
 * tui_canvas (cmd_tui.c copies that to the terminal or dumps it as text),
 * so the tests drive exactly what a user sees. */
#ifndef QS_TUI_WORKBENCH_H
#define QS_TUI_WORKBENCH_H

#include <stdio.h>

#include "../engine/calib.h"
#include "../engine/eval.h"
#include "../engine/model.h"
#include "../engine/quant.h"
#include "../engine/quantize.h"
#include "../engine/sens.h"
#include "canvas.h"

/* keys beyond ASCII */
enum {
	WB_KEY_UP = 0x100, WB_KEY_DOWN, WB_KEY_PGUP, WB_KEY_PGDN, WB_KEY_HOME, WB_KEY_END,
	WB_KEY_ENTER, WB_KEY_ESC, WB_KEY_BACKSPACE, WB_KEY_F1, WB_KEY_CTRL_R, WB_KEY_RESIZE,
	WB_KEY_CTRL_C, WB_KEY_WHEEL_UP, WB_KEY_WHEEL_DOWN,
	/* a left click on screen row y is WB_KEY_CLICK + y */
	WB_KEY_CLICK = 0x10000,
};

/* what a key did */
enum { WB_REDRAW = 1, WB_QUIT = 2 };

typedef struct wb wb;

/* A workbench on m (borrowed; it must outlive the workbench). sens may be
 * NULL. Weight statistics are computed here (tens of milliseconds for a
 * small model). */
wb *wb_new(const model *m, const sens_table *sens, qs_error *err);
void wb_free(wb *w);
/* Replace the plan (e.g. from a recipe); tensors not in p are kept. */
int wb_set_plan(wb *w, const quant_plan *p, qs_error *err);
/* The current plan (caller releases with quant_plan_release). */
int wb_plan(const wb *w, quant_plan *out, qs_error *err);
int wb_key(wb *w, int key);
/* A message for the status line. */
void wb_status(wb *w, const char *msg);
void wb_draw(wb *w, tui_canvas *c);

/* ---- live evaluation: after a change the plan is quantized and evaluated
 * on a quick set (eval_cache), off the UI thread; the workbench only shows
 * the result. */

/* what one quantized tensor came out as */
typedef struct wb_tensor_eval {
	char name[64];
	char spec[96];
	double werr;      /* ||W - Q(W)|| / ||W|| (AWQ / SmoothQuant scales undone) */
	double oerr;      /* ||(W - Q) X^T|| / ||W X^T|| on the calibration inputs;
			   * NaN until the workbench has calibrated */
	double max_abs;   /* max |W - Q(W)| */
	double zero_frac; /* share of nonzero weights that became 0 */
	calib_hist qh;    /* |Q(W)|: the weights after quantization */
	calib_hist eh;    /* |W - Q(W)|: the error */
	double e_std;     /* std of W - Q(W) */
} wb_tensor_eval;

typedef struct wb_eval {
	double base_ppl, ppl, kld, same_top, seconds;
	size_t bytes, params; /* of the evaluated plan's quantized tensors */
	int chunks, n_quantized;
	int from_layer;       /* where the run started (-1: embeddings) */
	int incremental;      /* started from the previous plan's states */
	int n_t;
	wb_tensor_eval *t;    /* (n_t) in plan order; owned */
} wb_eval;

void wb_eval_release(wb_eval *e);

/* What wb_evaluate works with (all but ec may be NULL / 0). */
typedef struct wb_eval_in {
	eval_cache *ec;          /* the quick set (eval_cache_keep: incremental runs) */
	const quant_plan *last;  /* the plan the cache's last kept run evaluated */
	const wb_eval *last_res; /* and its per-tensor results (reused if unchanged) */
	const model *last_qm;    /* and the model it built: layers before the first
				  * change are copied, not quantized again */
	const quant_xtx *xtx;    /* second moments of the inputs: output errors */
	const int *calib;        /* (n_calib, calib_len) for GPTQ, AWQ, ... plans */
	int n_calib, calib_len;
	qs_progress_fn cancel;   /* asked between layers; nonzero stops */
	void *cancel_user;
} wb_eval_in;

/* Quantize m with p and evaluate it against m: from the first layer that
 * differs from in->last when the cache kept that plan's run, else from the
 * first quantized layer. out is released by the caller (wb_eval_release).
 * qm_out (may be NULL) gets the quantized model (caller frees; NULL for an
 * empty plan), for in->last_qm next time. */
int wb_evaluate(const model *m, const quant_plan *p, const wb_eval_in *in, wb_eval *out,
		model **qm_out, qs_error *err);
/* The first layer where two plans differ: -1 for token_embd, n_layers for
 * the output head alone, n_layers + 1 when they are the same. */
int wb_plan_diff(const model *m, const quant_plan *a, const quant_plan *b);
/* A counter that grows with every change of the plan (for saving). */
unsigned wb_plan_version(const wb *w);
/* Has the plan changed since the last wb_take_plan? */
int wb_dirty(const wb *w);
/* A copy of the plan to evaluate; clears the dirty flag. */
int wb_take_plan(wb *w, quant_plan *out, qs_error *err);
/* Show an evaluation (copied; err_msg non-NULL: it failed), or that one is
 * running. */
void wb_set_eval(wb *w, const wb_eval *e, const char *err_msg);
/* Evaluate again without a change (e.g. output errors became available). */
void wb_request_eval(wb *w);
void wb_set_busy(wb *w, int busy);

/* Calibration statistics for the detail pane (borrowed; NULL: none yet).
 * The `c` key asks for them: wb_want_calib then says so once. */
void wb_set_calib(wb *w, const calib_set *cs);
int wb_want_calib(wb *w);
void wb_set_calib_busy(wb *w, int busy, const char *err_msg);

/* ---- full evaluation on demand (E), with a progress bar; Esc cancels */
int wb_want_full(wb *w);          /* E was pressed (once) */
int wb_cancel_full(const wb *w);  /* Esc was pressed while it runs */
void wb_set_full_progress(wb *w, int running, int done, int total, double running_ppl);
/* a finished full evaluation (err_msg: it failed or was cancelled) goes to
 * the results history (r) with the plan's description */
void wb_add_result(wb *w, const eval_cmp_result *r, const char *err_msg);

/* C was pressed (once): open the chat on the current plan. */
int wb_want_chat(wb *w);
/* The plan in a few words: "8 x gptq:int3g128 + 2 x q8_0". */
void wb_plan_desc(const wb *w, char *buf, size_t cap);

/* Lua policies offered by the `p` picker (paths copied). */
int wb_add_policy(wb *w, const char *path);

/* The key table as the help screen shows it: one row per action, keys that
 * share a description merged ("j, Down / k, Up"). Built from the bindings
 * that wb_key dispatches from. Borrowed, static. */
typedef struct wb_keydef {
	const char *keys;  /* as shown: "j, Down / k, Up" */
	const char *help;
} wb_keydef;
const wb_keydef *wb_keys(int *n);
/* The same table in Markdown (docs/TUI.md and README.md hold it verbatim);
 * returns the number of rows. */
int wb_keys_markdown(FILE *f);

#endif
