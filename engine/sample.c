#include "sample.h"

#include <math.h>
#include <stdlib.h>

int sample_init(sample_state *s, int vocab, uint64_t seed)
{
	s->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
	s->vocab = vocab;
	s->idx = malloc(sizeof(int) * (size_t)vocab);
	s->prob = malloc(sizeof(float) * (size_t)vocab);
	if (!s->idx || !s->prob) {
		sample_release(s);
		return -1;
	}
	return 0;
}

void sample_release(sample_state *s)
{
	free(s->idx);
	free(s->prob);
	s->idx = NULL;
	s->prob = NULL;
}

int sample_argmax(const float *logits, int n)
{
	int best = 0;
	for (int i = 1; i < n; i++)
		if (logits[i] > logits[best])
			best = i;
	return best;
}

/* xorshift64*: uniform float in [0, 1) */
static float uniform(uint64_t *st)
{
	uint64_t x = *st;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*st = x;
	return (float)((x * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

static int by_prob(const void *a, const void *b, void *prob)
{
	const float *p = prob;
	float pa = p[*(const int *)a], pb = p[*(const int *)b];
	if (pa != pb)
		return pa < pb ? 1 : -1;
	return *(const int *)a - *(const int *)b;
}

int sample_next(sample_state *s, const sample_opts *o, const float *logits)
{
	const int V = s->vocab;
	if (o->temp <= 0)
		return sample_argmax(logits, V);
	float mx = logits[sample_argmax(logits, V)];
	double sum = 0;
	for (int i = 0; i < V; i++) {
		s->prob[i] = expf((logits[i] - mx) / o->temp);
		sum += s->prob[i];
		s->idx[i] = i;
	}
	for (int i = 0; i < V; i++)
		s->prob[i] = (float)(s->prob[i] / sum);
	int n = V;
	if ((o->top_k > 0 && o->top_k < V) || o->top_p < 1.0f) {
		qsort_r(s->idx, (size_t)V, sizeof(int), by_prob, s->prob);
		if (o->top_k > 0 && o->top_k < n)
			n = o->top_k;
		if (o->top_p < 1.0f) {
			double cum = 0;
			for (int i = 0; i < n; i++) {
				cum += s->prob[s->idx[i]];
				if (cum >= o->top_p) {
					n = i + 1;
					break;
				}
			}
		}
	}
	double mass = 0;
	for (int i = 0; i < n; i++)
		mass += s->prob[s->idx[i]];
	double r = uniform(&s->rng) * mass, cum = 0;
	for (int i = 0; i < n; i++) {
		cum += s->prob[s->idx[i]];
		if (r < cum)
			return s->idx[i];
	}
	return s->idx[n - 1];
}
