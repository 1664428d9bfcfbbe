/* quant.c - quantization specs: defaults, parsing, printing, validation; and
 * simulated activation quantization. */
#include "quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/types.h"

static const char *method_names[QUANT_METHOD_COUNT] = {
	"none", "rtn", "gptq", "awq", "smoothquant", "hqq",
};

const char *quant_method_name(int m)
{
	return m >= 0 && m < QUANT_METHOD_COUNT ? method_names[m] : "?";
}

quant_spec quant_spec_default(int method, kn_qparams f)
{
	quant_spec s;
	memset(&s, 0, sizeof(s));
	s.method = method;
	s.fmt = f;
	s.damp = 0.01f;
	s.block = 128;
	s.alpha = method == QUANT_SMOOTHQUANT ? 0.5f : -1.0f;
	s.awq_clip = 1;
	s.hqq_p = 0.7f;
	s.hqq_iters = 20;
	s.act_per_token = 1;
	return s;
}

static int parse_int(const char *s, int *v)
{
	char *end;
	long x = strtol(s, &end, 10);
	if (end == s || x < -1000000 || x > 1000000)
		return -1;
	*v = (int)x;
	return (int)(end - s);
}

/* format part: returns 0 or -1 with why */
static int parse_format(const char *f, kn_qparams *p, char *why, size_t cap)
{
	memset(p, 0, sizeof(*p));
	static const struct { const char *name; int fmt, ggml, bits, group, dq; } named[] = {
		{ "q4_0", KN_QF_GGML, KN_TYPE_Q4_0, 4, 32, 0 },
		{ "q4_1", KN_QF_GGML, KN_TYPE_Q4_1, 4, 32, 0 },
		{ "q8_0", KN_QF_GGML, KN_TYPE_Q8_0, 8, 32, 0 },
		{ "nf4dq", KN_QF_NF4, 0, 4, 64, 1 },
		{ "nf4", KN_QF_NF4, 0, 4, 64, 0 },
		{ "fp8", KN_QF_FP8, 0, 8, 0, 0 },
		{ "fp16", KN_QF_F16, 0, 16, 0, 0 },
		{ "bf16", KN_QF_BF16, 0, 16, 0, 0 },
		{ "none", KN_QF_NONE, 0, 0, 0, 0 },
	};
	for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
		size_t n = strlen(named[i].name);
		if (strncmp(f, named[i].name, n) == 0) {
			const char *rest = f + n;
			p->fmt = named[i].fmt;
			p->ggml_type = named[i].ggml;
			p->bits = named[i].bits;
			p->group = named[i].group;
			p->dq = named[i].dq;
			if (p->fmt == KN_QF_NF4 && *rest == 'g') {
				int k = parse_int(rest + 1, &p->group);
				if (k <= 0 || p->group < 1) {
					snprintf(why, cap, "bad nf4 group in '%.60s'", f);
					return -1;
				}
				rest += 1 + k;
			}
			if (*rest) {
				snprintf(why, cap, "unexpected '%.60s' after format '%.60s'", rest, named[i].name);
				return -1;
			}
			return 0;
		}
	}
	if (strncmp(f, "int", 3) != 0) {
		snprintf(why, cap, "unknown format '%.60s' (intB[gN|c|t][sym|asym], q4_0, q4_1, q8_0, nf4, nf4dq, fp8, fp16, bf16, none)", f);
		return -1;
	}
	p->fmt = KN_QF_INT;
	const char *r = f + 3;
	int k = parse_int(r, &p->bits);
	if (k <= 0) {
		snprintf(why, cap, "missing bit count in '%.60s'", f);
		return -1;
	}
	r += k;
	p->group = KN_GROUP_ROW;
	if (*r == 'g') {
		k = parse_int(r + 1, &p->group);
		if (k <= 0 || p->group < 1) {
			snprintf(why, cap, "bad group in '%.60s'", f);
			return -1;
		}
		r += 1 + k;
	} else if (*r == 'c') {
		r++;
	} else if (*r == 't') {
		p->group = KN_GROUP_TENSOR;
		r++;
	}
	if (strcmp(r, "sym") == 0)
		p->sym = 1;
	else if (strcmp(r, "asym") == 0 || *r == 0)
		p->sym = 0;
	else {
		snprintf(why, cap, "unexpected '%.60s' in '%.60s'", r, f);
		return -1;
	}
	if (p->bits < 2 || p->bits > 8) {
		snprintf(why, cap, "bits=%d in '%.60s' not in 2..8", p->bits, f);
		return -1;
	}
	return 0;
}

int quant_spec_parse(const char *str, quant_spec *out, qs_error *err)
{
	char buf[256], why[200];
	if (strlen(str) >= sizeof(buf))
		return qs_err(err, QS_EUSAGE, "spec '%.40s...': too long", str);
	snprintf(buf, sizeof(buf), "%s", str);
	int method = QUANT_RTN;
	char *f = buf, *colon = strchr(buf, ':');
	if (colon) {
		*colon = 0;
		method = -1;
		for (int m = 1; m < QUANT_METHOD_COUNT; m++)
			if (strcmp(buf, method_names[m]) == 0)
				method = m;
		if (strcmp(buf, "sq") == 0)
			method = QUANT_SMOOTHQUANT;
		if (method < 0)
			return qs_err(err, QS_EUSAGE,
				      "spec '%s': unknown method '%s' (rtn, gptq, awq, smoothquant, hqq)",
				      str, buf);
		f = colon + 1;
	}
	char *opts = strchr(f, ',');
	if (opts)
		*opts++ = 0;
	kn_qparams p;
	if (parse_format(f, &p, why, sizeof(why)))
		return qs_err(err, QS_EUSAGE, "spec '%s': %s", str, why);
	if (p.fmt == KN_QF_NONE)
		method = QUANT_NONE;
	quant_spec s = quant_spec_default(method, p);
	while (opts && *opts) {
		char *next = strchr(opts, ',');
		if (next)
			*next++ = 0;
		char *eq = strchr(opts, '=');
		const char *val = eq ? eq + 1 : NULL;
		if (eq)
			*eq = 0;
		char *end = NULL;
		double v = val ? strtod(val, &end) : 1.0;
		if (val && (end == val || *end || !isfinite(v)))
			return qs_err(err, QS_EUSAGE, "spec '%s': option %s: '%s' is not a number", str,
				      opts, val);
		if (strcmp(opts, "act_order") == 0)
			s.act_order = v != 0;
		else if (strcmp(opts, "static_groups") == 0)
			s.static_groups = v != 0;
		else if (strcmp(opts, "mse") == 0)
			s.mse = v != 0;
		else if (strcmp(opts, "damp") == 0)
			s.damp = (float)v;
		else if (strcmp(opts, "block") == 0)
			s.block = (int)v;
		else if (strcmp(opts, "alpha") == 0)
			s.alpha = (float)v;
		else if (strcmp(opts, "clip") == 0)
			s.awq_clip = v != 0;
		else if (strcmp(opts, "gptq") == 0)
			s.awq_gptq = v != 0;
		else if (strcmp(opts, "p") == 0)
			s.hqq_p = (float)v;
		else if (strcmp(opts, "iters") == 0)
			s.hqq_iters = (int)v;
		else if (strcmp(opts, "outliers") == 0)
			s.outlier_thresh = val ? (float)v : 6.0f;
		else if (strcmp(opts, "act") == 0)
			s.act_bits = val ? (int)v : 8;
		else if (strcmp(opts, "act_tensor") == 0)
			s.act_per_token = !(v != 0);
		else
			return qs_err(err, QS_EUSAGE,
				      "spec '%s': unknown option '%s' (act_order, static_groups, mse, damp=, block=, alpha=, clip=, gptq, p=, iters=, outliers[=T], act[=B], act_tensor)",
				      str, opts);
		opts = next;
	}
	*out = s;
	return 0;
}

void quant_spec_str(const quant_spec *s, char *buf, size_t cap)
{
	char f[64];
	const kn_qparams *p = &s->fmt;
	switch (p->fmt) {
	case KN_QF_INT:
		if (p->group == KN_GROUP_ROW)
			snprintf(f, sizeof(f), "int%dc%s", p->bits, p->sym ? "sym" : "");
		else if (p->group == KN_GROUP_TENSOR)
			snprintf(f, sizeof(f), "int%dt%s", p->bits, p->sym ? "sym" : "");
		else
			snprintf(f, sizeof(f), "int%dg%d%s", p->bits, p->group, p->sym ? "sym" : "");
		break;
	case KN_QF_GGML:
		snprintf(f, sizeof(f), "%s", kn_traits(p->ggml_type)->name);
		break;
	case KN_QF_NF4:
		snprintf(f, sizeof(f), "nf4%s", p->dq ? "dq" : "");
		if (p->group != 64)
			snprintf(f + strlen(f), sizeof(f) - strlen(f), "g%d", p->group);
		break;
	case KN_QF_FP8: snprintf(f, sizeof(f), "fp8"); break;
	case KN_QF_F16: snprintf(f, sizeof(f), "fp16"); break;
	case KN_QF_BF16: snprintf(f, sizeof(f), "bf16"); break;
	default: snprintf(f, sizeof(f), "none"); break;
	}
	quant_spec d = quant_spec_default(s->method, s->fmt);
	int n = 0;
	if (s->method == QUANT_RTN || s->method == QUANT_NONE)
		n = snprintf(buf, cap, "%s", f);
	else
		n = snprintf(buf, cap, "%s:%s", quant_method_name(s->method), f);
#define OPT(cond, ...)                                                              \
	if ((cond) && n >= 0 && (size_t)n < cap)                                         \
		n += snprintf(buf + n, cap - (size_t)n, __VA_ARGS__);
	OPT(s->act_order, ",act_order")
	OPT(s->static_groups, ",static_groups")
	OPT(s->mse, ",mse")
	OPT(s->damp != d.damp, ",damp=%g", (double)s->damp)
	OPT(s->block != d.block, ",block=%d", s->block)
	OPT(s->alpha != d.alpha, ",alpha=%g", (double)s->alpha)
	OPT(s->awq_clip != d.awq_clip, ",clip=%d", s->awq_clip)
	OPT(s->awq_gptq, ",gptq")
	OPT(s->hqq_p != d.hqq_p, ",p=%g", (double)s->hqq_p)
	OPT(s->hqq_iters != d.hqq_iters, ",iters=%d", s->hqq_iters)
	OPT(s->outlier_thresh > 0, ",outliers=%g", (double)s->outlier_thresh)
	OPT(s->act_bits, ",act=%d", s->act_bits)
	OPT(s->act_bits && !s->act_per_token, ",act_tensor")
#undef OPT
}

int quant_spec_check(const quant_spec *s, const char *tensor, int rows, int cols, qs_error *err)
{
	char why[160];
	if (s->method < 0 || s->method >= QUANT_METHOD_COUNT)
		return qs_err(err, QS_EUSAGE, "%s: unknown method %d", tensor, s->method);
	if (s->method == QUANT_NONE)
		return 0;
	if (kn_qparams_check(&s->fmt, rows, cols, why, sizeof(why)))
		return qs_err(err, QS_EUSAGE, "%s: %s", tensor, why);
	int is_int = s->fmt.fmt == KN_QF_INT;
	if ((s->method == QUANT_GPTQ || s->method == QUANT_HQQ) && !is_int)
		return qs_err(err, QS_EUSAGE, "%s: method %s needs an intB format, not this one", tensor,
			      quant_method_name(s->method));
	if (s->awq_gptq && s->method != QUANT_AWQ)
		return qs_err(err, QS_EUSAGE, "%s: option gptq (GPTQ after AWQ's scaling) is for method awq", tensor);
	if (s->awq_gptq && !is_int)
		return qs_err(err, QS_EUSAGE, "%s: awq with gptq needs an intB format, not this one", tensor);
	if ((s->method == QUANT_GPTQ || s->awq_gptq) && (s->damp <= 0 || s->damp >= 1 || s->block < 1))
		return qs_err(err, QS_EUSAGE, "%s: gptq damp must be in (0, 1) and block >= 1", tensor);
	if (s->method == QUANT_SMOOTHQUANT && !(s->alpha >= 0 && s->alpha <= 1))
		return qs_err(err, QS_EUSAGE, "%s: smoothquant alpha %g not in [0, 1]", tensor,
			      (double)s->alpha);
	if (s->method == QUANT_AWQ && s->alpha > 1)
		return qs_err(err, QS_EUSAGE, "%s: awq alpha %g above 1", tensor, (double)s->alpha);
	if (s->method == QUANT_HQQ && (!(s->hqq_p > 0 && s->hqq_p <= 2) || s->hqq_iters < 1))
		return qs_err(err, QS_EUSAGE, "%s: hqq p must be in (0, 2] and iters >= 1", tensor);
	if (s->act_bits && (s->act_bits < 2 || s->act_bits > 16))
		return qs_err(err, QS_EUSAGE, "%s: act bits %d not in 2..16", tensor, s->act_bits);
	if (s->outlier_thresh < 0)
		return qs_err(err, QS_EUSAGE, "%s: outlier threshold must be positive", tensor);
	/* the embedding table's input is token ids and the output head's input
	 * has no norm of its own to fold scales into (quantize.c, do_edge) */
	int emb = !strncmp(tensor, "token_embd", 10);
	int head = !strcmp(tensor, "output.weight") || !strcmp(tensor, "output");
	if ((emb || head) && (s->method == QUANT_AWQ || s->method == QUANT_SMOOTHQUANT))
		return qs_err(err, QS_EUSAGE, "%s: method %s needs a norm before the tensor to fold its "
			      "scales into; use %s", tensor, quant_method_name(s->method),
			      emb ? "rtn or hqq" : "rtn, gptq or hqq");
	if (emb && (s->method == QUANT_GPTQ || s->outlier_thresh > 0))
		return qs_err(err, QS_EUSAGE, "%s: %s needs input activations and the input of the "
			      "embedding table is token ids; use rtn or hqq", tensor,
			      s->method == QUANT_GPTQ ? "gptq" : "outliers");
	if ((emb || head) && s->act_bits)
		return qs_err(err, QS_EUSAGE, "%s: activation quantization is only simulated at the "
			      "inputs of the block linears", tensor);
	return 0;
}

void quant_act(float *x, long n, int cols, int bits, int per_token, float static_scale,
	       const unsigned char *keep)
{
	const float qmax = (float)((1 << (bits - 1)) - 1);
#pragma omp parallel for schedule(static) if (n * cols > 65536)
	for (long r = 0; r < n; r++) {
		float *row = x + r * cols, s = static_scale;
		if (per_token) {
			float a = 0;
			for (int j = 0; j < cols; j++)
				if (!keep || !keep[j])
					a = fmaxf(a, fabsf(row[j]));
			s = a > 0 ? a / qmax : 1.0f;
		}
		if (!(s > 0))
			s = 1.0f;
		const float inv = 1.0f / s;
		for (int j = 0; j < cols; j++) {
			if (keep && keep[j])
				continue;
			float v = roundf(row[j] * inv);
			v = v > qmax ? qmax : v < -qmax ? -qmax : v;
			row[j] = v * s;
		}
	}
}

size_t quant_spec_bytes(const quant_spec *s, int rows, int cols)
{
	if (s->method == QUANT_NONE)
		return 0;
	size_t b = kn_qparams_bytes(&s->fmt, rows, cols);
	if ((s->method == QUANT_GPTQ || s->awq_gptq) && s->act_order && !s->static_groups && s->fmt.fmt == KN_QF_INT &&
	    s->fmt.group > 0)
		b += sizeof(int32_t) * (size_t)cols; /* g_idx */
	return b;
}
