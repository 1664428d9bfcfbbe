/* chat.h - the workbench's chat screen: one prompt, answered by the
 * original and the quantized model with the same sampling seed, side by
 * side, streaming; tokens where the quantized model chose differently are
 * marked; tokens/s for each. The prompt line is GNU readline in callback
 * mode (history, editing), fed key by key by the UI loop, never a blocking
 * readline(). Generation runs on a worker thread (inline when headless). */
#ifndef QS_TUI_CHAT_H
#define QS_TUI_CHAT_H

#include "../engine/model.h"
#include "../engine/quantize.h"
#include "canvas.h"

#include <pthread.h>

/* One heavy computation at a time in the workbench (evaluations,
 * calibration, the chat's generation): OpenBLAS and OpenMP are shared by
 * all threads. Worker threads hold it while they compute; the UI thread
 * never takes it, so it keeps answering keys. */
extern pthread_mutex_t tui_compute_mu;

typedef struct chat chat;

/* base is the original model; the quantized one is built from plan (which
 * is copied) when the first prompt is sent. tmpl: an enum chat_tmpl_kind,
 * or -1 to use the model's own template (plain completion without one). */
chat *chat_new(const model *base, const quant_plan *plan, const char *plan_desc, int tmpl,
	       int threaded, qs_error *err);
/* Calibration tokens (n_calib x 512, borrowed) for plans that need them. */
void chat_set_calib(chat *c, const int *calib, int n_calib);
void chat_free(chat *c);
/* A key (workbench key codes); returns 1 when the user leaves the chat
 * (Esc on an empty line, or Ctrl-D). */
int chat_key(chat *c, int key);
/* Called by the UI loop: 1 if new tokens arrived (redraw). */
int chat_poll(chat *c);
void chat_draw(chat *c, tui_canvas *cv);
/* Cancel and wait for a running generation (quit during a chat). */
void chat_stop(chat *c);

#endif
