#include "generate.h"

#include <stdlib.h>
#include <time.h>

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int gen_run(fwd_ctx *f, const model *m, int *ids, int n_prompt, int n_predict, int max_len,
	    const sample_opts *so, int (*on_token)(void *user, int prev, int id), void *user,
	    gen_result *r, qs_error *err)
{
	r->n_prompt = n_prompt;
	r->n_gen = 0;
	r->prompt_seconds = r->decode_seconds = 0;
	if (n_prompt < 1 || n_prompt >= max_len)
		return qs_err(err, QS_EUSAGE, "generate: prompt of %d tokens does not fit context %d",
			      n_prompt, max_len);
	int total = n_prompt + n_predict < max_len ? n_prompt + n_predict : max_len;
	float *logits = malloc(sizeof(float) * (size_t)m->cfg.vocab);
	sample_state ss = { 0 };
	int rc = 0;
	if (!logits || sample_init(&ss, m->cfg.vocab, so->seed)) {
		rc = qs_err(err, QS_ENOMEM, "generate: out of memory");
		goto done;
	}
	double t0 = now_s();
	if ((rc = fwd_prefill(f, ids, 1, n_prompt, n_prompt - 1, logits, err)))
		goto done;
	r->prompt_seconds = now_s() - t0;
	t0 = now_s();
	for (int pos = n_prompt; pos < total; pos++) {
		int next = sample_next(&ss, so, logits);
		ids[pos] = next;
		r->n_gen++;
		const int say = on_token ? on_token(user, ids[pos - 1], next) : 0;
		if (say == GEN_STOP)
			break;
		if (say) {
			rc = qs_err(err, QS_ECANCEL, "generate: cancelled");
			break;
		}
		if (next == tok_eos(m->tok) || pos + 1 >= total)
			break;
		if ((rc = fwd_decode(f, next, pos, logits, err)))
			break;
	}
	r->decode_seconds = now_s() - t0;
done:
	sample_release(&ss);
	free(logits);
	return rc;
}
