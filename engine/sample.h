/* sample.h - next-token sampling: greedy, temperature, top-k, top-p, seeded. */
#ifndef QS_SAMPLE_H
#define QS_SAMPLE_H

#include <stdint.h>

typedef struct sample_opts {
	float temp;    /* <= 0: greedy (argmax, lowest id on ties) */
	int top_k;     /* <= 0: off */
	float top_p;   /* >= 1: off */
	uint64_t seed;
} sample_opts;

typedef struct sample_state {
	uint64_t rng;
	int *idx;      /* scratch (vocab) */
	float *prob;   /* scratch (vocab) */
	int vocab;
} sample_state;

int sample_init(sample_state *s, int vocab, uint64_t seed);
void sample_release(sample_state *s);
int sample_argmax(const float *logits, int n);
/* Pick the next token from logits (vocab); logits are not modified. */
int sample_next(sample_state *s, const sample_opts *o, const float *logits);

#endif
