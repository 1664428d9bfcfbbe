/* generate.h - continue a prompt: prefill, then sample and decode token by
 * token with the KV cache. */
#ifndef QS_GENERATE_H
#define QS_GENERATE_H

#include "error.h"
#include "forward.h"
#include "model.h"
#include "sample.h"

typedef struct gen_result {
	int n_prompt, n_gen;
	double prompt_seconds, decode_seconds;
} gen_result;

/* ids holds n_prompt prompt ids (BOS first) and room for n_prompt + n_predict;
 * generated ids are appended. Stops at EOS (kept), at n_predict, or at the
 * context of f. on_token (may be NULL) sees each new id; returning GEN_STOP
 * ends the generation there (the id is kept; e.g. a chat template's end of
 * turn), any other nonzero value cancels it (QS_ECANCEL). f must have room
 * for one sequence of the full length. */
#define GEN_STOP 2
int gen_run(fwd_ctx *f, const model *m, int *ids, int n_prompt, int n_predict, int max_len,
	    const sample_opts *so, int (*on_token)(void *user, int prev, int id), void *user,
	    gen_result *r, qs_error *err);

#endif
