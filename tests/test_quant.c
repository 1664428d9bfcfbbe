/* test_quant.c - quantization specs, quantized matrices (storage, packing,
 * ggml/NF4/FP8 formats), activation quantization, and whole-model checks:
 * KL divergence sanity, monotonic damage with fewer bits, folding of
 * AWQ/SmoothQuant scales that must not change the function. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/eval.h"
#include "../engine/forward.h"
#include "../engine/model.h"
#include "../engine/quant.h"
#include "../engine/quantize.h"
#include "../kernels/fp16.h"
#include "../kernels/qmatrix.h"
#include "../kernels/types.h"
#include "testutil.h"

static uint64_t rng = 0x1234567ull;
static float frand(float lo, float hi)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	return lo + (hi - lo) * (float)(rng >> 40) / 16777216.0f;
}

/* ------------------------------------------------------------ specs */

static void test_spec_roundtrip(void **s)
{
	(void)s;
	const char *ok[] = { "int4g128", "int3g128sym", "int8c", "int8t", "int2g64", "q4_0", "q4_1",
			     "q8_0", "nf4", "nf4dq", "nf4g32", "fp8", "fp16", "bf16",
			     "gptq:int4g128,act_order", "gptq:int3g128,act_order,static_groups,damp=0.1",
			     "awq:int4g128", "awq:int4g128,alpha=0.5", "smoothquant:int8c,act=8",
			     "smoothquant:int8c,alpha=0.8,act=8,act_tensor", "hqq:int4g64,p=0.5,iters=30",
			     "int8c,outliers=6", "rtn:int4g32,mse", "awq:int3g128,gptq,act_order" };
	qs_error err = { 0 };
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		quant_spec a, b;
		char buf[128];
		if (quant_spec_parse(ok[i], &a, &err))
			fail_msg("'%s': %s", ok[i], err.msg);
		quant_spec_str(&a, buf, sizeof(buf));
		assert_int_equal(quant_spec_parse(buf, &b, &err), 0);
		assert_memory_equal(&a, &b, sizeof(a));
	}
	quant_spec q;
	assert_int_equal(quant_spec_parse("int4g128", &q, &err), 0);
	assert_int_equal(q.method, QUANT_RTN);
	assert_int_equal(q.fmt.bits, 4);
	assert_int_equal(q.fmt.group, 128);
	assert_int_equal(q.fmt.sym, 0);
	struct { const char *s, *msg; } bad[] = {
		{ "int9g128", "bits=9" },
		{ "int1", "bits=1" },
		{ "frob:int4", "unknown method 'frob'" },
		{ "int4g", "bad group" },
		{ "int4g128xyz", "unexpected 'xyz'" },
		{ "q5_k", "unknown format" },
		{ "int4g128,wat", "unknown option 'wat'" },
		{ "int4g128,damp=x", "not a number" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err.msg[0] = 0;
		assert_int_equal(quant_spec_parse(bad[i].s, &q, &err), QS_EUSAGE);
		if (!strstr(err.msg, bad[i].msg) || !strstr(err.msg, bad[i].s))
			fail_msg("'%s': message '%s' lacks '%s'", bad[i].s, err.msg, bad[i].msg);
	}
	/* GPTQ after AWQ's scaling: only for awq, only into intB */
	struct { const char *s, *msg; } badcheck[] = {
		{ "gptq:int4g128,gptq", "is for method awq" },
		{ "awq:q4_0,gptq", "needs an intB format" },
		{ "awq:int4g128,gptq,damp=2", "damp must be in (0, 1)" },
	};
	for (size_t i = 0; i < sizeof(badcheck) / sizeof(badcheck[0]); i++) {
		assert_int_equal(quant_spec_parse(badcheck[i].s, &q, &err), 0);
		assert_int_equal(quant_spec_check(&q, "blk.0.attn_q.weight", 384, 384, &err), QS_EUSAGE);
		if (!strstr(err.msg, badcheck[i].msg) || !strstr(err.msg, "blk.0.attn_q.weight"))
			fail_msg("'%s': message '%s' lacks '%s'", badcheck[i].s, err.msg, badcheck[i].msg);
	}
	/* checks against a tensor name the tensor and the field */
	assert_int_equal(quant_spec_parse("int4g100", &q, &err), 0);
	assert_int_equal(quant_spec_check(&q, "blk.3.ffn_down.weight", 384, 1024, &err), QS_EUSAGE);
	assert_non_null(strstr(err.msg, "blk.3.ffn_down.weight: group 100 does not divide the row length 1024"));
	assert_int_equal(quant_spec_parse("gptq:nf4", &q, &err), 0);
	assert_int_equal(quant_spec_check(&q, "blk.0.attn_q.weight", 384, 384, &err), QS_EUSAGE);
	assert_non_null(strstr(err.msg, "gptq needs an intB format"));
}

/* ------------------------------------------------------------ matrices */

/* Packing: every code of every width survives set/get; neighbours untouched. */
static void test_int_packing(void **s)
{
	(void)s;
	for (int bits = 2; bits <= 8; bits++) {
		kn_qparams p = { .fmt = KN_QF_INT, .bits = bits, .group = 32, .sym = 0 };
		kn_qmatrix q;
		assert_int_equal(kn_qmatrix_alloc(&q, &p, 5, 96), 0);
		unsigned want[5][96];
		for (int r = 0; r < 5; r++)
			for (int c = 0; c < 96; c++) {
				want[r][c] = (unsigned)(frand(0, 1) * (float)(1 << bits)) & ((1u << bits) - 1);
				kn_qcode_set(&q, r, c, want[r][c]);
			}
		for (int r = 0; r < 5; r++)
			for (int c = 0; c < 96; c++)
				assert_int_equal(kn_qcode_get(&q, r, c), want[r][c]);
		assert_int_equal(q.code_stride, (96 * bits + 7) / 8);
		kn_qmatrix_release(&q);
	}
}

/* Exact bytes, computed by hand from the format definitions. */
static void test_storage_bytes(void **s)
{
	(void)s;
	struct { kn_qparams p; int rows, cols; size_t bytes; } cases[] = {
		/* 4 bits: 384*1024/2 codes; 384*8 groups * (2 scale + 2 zero) */
		{ { KN_QF_INT, 4, 128, 0, 0, 0 }, 384, 1024, 196608 + 384 * 8 * 4 },
		/* symmetric: no zeros */
		{ { KN_QF_INT, 4, 32, 1, 0, 0 }, 384, 1024, 196608 + 384 * 32 * 2 },
		/* 3 bits per channel: 1024*3/8 = 384 bytes a row */
		{ { KN_QF_INT, 3, KN_GROUP_ROW, 0, 0, 0 }, 384, 1024, 384 * 384 + 384 * 4 },
		/* per tensor: one scale and zero */
		{ { KN_QF_INT, 8, KN_GROUP_TENSOR, 0, 0, 0 }, 384, 1024, 384 * 1024 + 4 },
		/* q4_0: 18 bytes per 32 */
		{ { KN_QF_GGML, 4, 32, 0, KN_TYPE_Q4_0, 0 }, 384, 1024, 384 * 32 * 18 },
		{ { KN_QF_GGML, 8, 32, 0, KN_TYPE_Q8_0, 0 }, 384, 1024, 384 * 32 * 34 },
		/* nf4: 4-bit codes + fp32 absmax per 64 */
		{ { KN_QF_NF4, 4, 64, 0, 0, 0 }, 384, 1024, 196608 + 384 * 16 * 4 },
		/* nf4 double quant: int8 per block + fp32 per 256 blocks + offset */
		{ { KN_QF_NF4, 4, 64, 0, 0, 1 }, 384, 1024, 196608 + 6144 + 24 * 4 + 4 },
		/* fp8: a byte each + fp32 per row */
		{ { KN_QF_FP8, 8, 0, 0, 0, 0 }, 384, 1024, 384 * 1024 + 384 * 4 },
		{ { KN_QF_F16, 16, 0, 0, 0, 0 }, 384, 1024, 384 * 1024 * 2 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		kn_qmatrix q;
		assert_int_equal(kn_qmatrix_alloc(&q, &cases[i].p, cases[i].rows, cases[i].cols), 0);
		assert_int_equal(kn_qmatrix_bytes(&q), cases[i].bytes);
		assert_int_equal(kn_qparams_bytes(&cases[i].p, cases[i].rows, cases[i].cols), cases[i].bytes);
		/* two outlier columns: 2 int32 indices + rows * 2 fp16 */
		float *w = calloc((size_t)cases[i].rows * cases[i].cols, sizeof(float));
		int32_t oc[2] = { 7, 3 };
		assert_int_equal(kn_qmatrix_set_outliers(&q, oc, 2, w), 0);
		assert_int_equal(kn_qmatrix_bytes(&q), cases[i].bytes + 8 + (size_t)cases[i].rows * 4);
		free(w);
		kn_qmatrix_release(&q);
	}
}

/* RTN INT: each element is the nearest grid point of its group's min-max
 * grid (widened to include 0); dequantization reproduces scale*(q - zero). */
static void test_int_rtn(void **s)
{
	(void)s;
	const int R = 6, C = 256;
	float *w = malloc(sizeof(float) * R * C), *d = malloc(sizeof(float) * R * C);
	for (int i = 0; i < R * C; i++)
		w[i] = frand(-2, 3);
	for (int bits = 2; bits <= 8; bits++)
		for (int sym = 0; sym < 2; sym++) {
			kn_qparams p = { KN_QF_INT, bits, 64, sym, 0, 0 };
			kn_qmatrix q;
			assert_int_equal(kn_qmatrix_alloc(&q, &p, R, C), 0);
			kn_qmatrix_quantize_rtn(&q, w, 0);
			kn_qmatrix_dequant(&q, 0, R, d);
			const int maxq = (1 << bits) - 1;
			for (int r = 0; r < R; r++)
				for (int g = 0; g < C / 64; g++) {
					const float *x = w + r * C + g * 64;
					double mn = 0, mx = 0;
					for (int i = 0; i < 64; i++) {
						mn = fmin(mn, x[i]);
						mx = fmax(mx, x[i]);
					}
					if (sym) {
						mx = fmax(-mn, mx);
						mn = -mx;
					}
					float scale = q.scale[r * (C / 64) + g];
					/* the stored scale is the fp16 rounding of (max - min) / maxq */
					assert_true(scale == kn_fp16_to_fp32_ref(kn_fp32_to_fp16_ref((float)((mx - mn) / maxq))));
					float zero = sym ? (float)((maxq + 1) / 2) : q.zero[r * (C / 64) + g];
					for (int i = 0; i < 64; i++) {
						/* no other grid point is closer */
						float got = d[r * C + g * 64 + i];
						int k = (int)roundf(got / scale + zero);
						assert_true(fabsf(got - scale * ((float)k - zero)) < 1e-5f * fabsf(scale) * maxq);
						for (int j = 0; j <= maxq; j++)
							assert_true(fabsf(x[i] - got) <= fabsf(x[i] - scale * ((float)j - zero)) + 1e-5f);
					}
				}
			kn_qmatrix_release(&q);
		}
	free(w);
	free(d);
}

/* Q4_0 / Q4_1 / Q8_0 through the plan path are byte-identical to the ggml
 * reference quantizers; adversarial blocks checked against hand-derived
 * expectations from ggml's definitions:
 *   q4_0: d = max / -8 where max is the signed value of largest magnitude,
 *         q = min(15, (int8)(x / d + 8.5));
 *   q8_0: d = amax / 127, q = round(x / d). */
static void test_ggml_blocks(void **s)
{
	(void)s;
	float x[32];
	block_q4_0 b4;
	/* all zeros: d = 0 / -8 = -0 (stored as fp16 0x8000), id = 0, every
	 * q = (int8)(8.5) = 8 */
	memset(x, 0, sizeof(x));
	kn_quantize_row_q4_0_ref(x, &b4, 32);
	assert_int_equal(b4.d, 0x8000);
	for (int j = 0; j < 16; j++)
		assert_int_equal(b4.qs[j], 0x88);
	/* one huge outlier: x[5] = 1000, others 1: d = -125, x/d = -0.008 -> 8,
	 * the outlier -> -8 + 8.5 -> 0 */
	for (int j = 0; j < 32; j++)
		x[j] = 1.0f;
	x[5] = 1000.0f;
	kn_quantize_row_q4_0_ref(x, &b4, 32);
	assert_true(kn_fp16_to_fp32_ref(b4.d) == -125.0f);
	for (int j = 0; j < 16; j++)
		assert_int_equal(b4.qs[j], j == 5 ? 0x80 : 0x88);
	/* all negative -1..-32: max = -32, d = 4, x/d in [-8, -0.25]:
	 * q = (int8)(8.5 - k/4) for x = -k */
	for (int j = 0; j < 32; j++)
		x[j] = -(float)(j + 1);
	kn_quantize_row_q4_0_ref(x, &b4, 32);
	assert_true(kn_fp16_to_fp32_ref(b4.d) == 4.0f);
	for (int j = 0; j < 16; j++) {
		int lo = (int)(8.5f - (float)(j + 1) / 4), hi = (int)(8.5f - (float)(j + 17) / 4);
		assert_int_equal(b4.qs[j], lo | (hi << 4));
	}
	/* denormal inputs: d underflows to 0 in fp16 while id stays 1/d of the
	 * float value: values map to 0 (x = max) and dequantize to 0 */
	for (int j = 0; j < 32; j++)
		x[j] = 1e-40f;
	kn_quantize_row_q4_0_ref(x, &b4, 32);
	assert_true(kn_fp16_to_fp32_ref(b4.d) == 0.0f);
	float y[32];
	kn_dequantize_row_q4_0(&b4, y, 32);
	for (int j = 0; j < 32; j++)
		assert_true(y[j] == 0.0f);
	/* q8_0 with an outlier: amax = 127 -> d = 1, q = round(x) */
	block_q8_0 b8;
	for (int j = 0; j < 32; j++)
		x[j] = (float)j * 0.6f - 3.0f;
	x[9] = 127.0f;
	kn_quantize_row_q8_0_ref(x, &b8, 32);
	assert_true(kn_fp16_to_fp32_ref(b8.d) == 1.0f);
	for (int j = 0; j < 32; j++)
		assert_int_equal(b8.qs[j], (int)roundf(x[j]));

	/* the plan path (qmatrix GGML) stores exactly the reference bytes */
	const int R = 4, C = 256;
	float *w = malloc(sizeof(float) * R * C);
	for (int i = 0; i < R * C; i++)
		w[i] = frand(-1, 1) * (i % 37 == 0 ? 40.0f : 1.0f);
	const int types[3] = { KN_TYPE_Q4_0, KN_TYPE_Q4_1, KN_TYPE_Q8_0 };
	for (int t = 0; t < 3; t++) {
		kn_qparams p = { .fmt = KN_QF_GGML, .ggml_type = types[t] };
		kn_qmatrix q;
		assert_int_equal(kn_qmatrix_alloc(&q, &p, R, C), 0);
		kn_qmatrix_quantize_rtn(&q, w, 0);
		size_t rs = kn_row_size(types[t], C);
		unsigned char *ref = malloc(rs);
		for (int r = 0; r < R; r++) {
			kn_traits(types[t])->from_float(w + r * C, ref, C);
			assert_memory_equal(q.codes + r * q.code_stride, ref, rs);
		}
		free(ref);
		kn_qmatrix_release(&q);
	}
	free(w);
}

static void test_nf4_fp8(void **s)
{
	(void)s;
	/* nf4: the table is symmetric-ish, ascending, endpoints exact */
	for (int i = 1; i < 16; i++)
		assert_true(kn_nf4_table[i] > kn_nf4_table[i - 1]);
	assert_true(kn_nf4_table[0] == -1.0f && kn_nf4_table[7] == 0.0f && kn_nf4_table[15] == 1.0f);
	for (int i = 0; i < 16; i++)
		assert_int_equal(kn_nf4_index(kn_nf4_table[i]), i);
	/* quantize a row: each value maps to the nearest codebook entry times absmax */
	const int C = 128;
	float w[128], d[128];
	for (int i = 0; i < C; i++)
		w[i] = frand(-1, 1);
	w[17] = -3.0f; /* absmax of the first block */
	kn_qparams p = { .fmt = KN_QF_NF4, .bits = 4, .group = 64 };
	kn_qmatrix q;
	assert_int_equal(kn_qmatrix_alloc(&q, &p, 1, C), 0);
	kn_qmatrix_quantize_rtn(&q, w, 0);
	kn_qmatrix_dequant(&q, 0, 1, d);
	assert_true(q.scale[0] == 3.0f);
	assert_true(d[17] == -3.0f);
	for (int i = 0; i < C; i++) {
		float a = q.scale[i / 64];
		for (int k = 0; k < 16; k++)
			assert_true(fabsf(w[i] - d[i]) <= fabsf(w[i] - kn_nf4_table[k] * a) + 1e-6f);
	}
	kn_qmatrix_release(&q);
	/* fp8 e4m3: 0x7e = 448 (max), 0x08 = 2^-6 (min normal), 0x01 = 2^-9 */
	assert_true(kn_fp8_e4m3_to_float(0x7e) == 448.0f);
	assert_true(kn_fp8_e4m3_to_float(0x08) == 0.015625f);
	assert_true(kn_fp8_e4m3_to_float(0x01) == 0.001953125f);
	assert_true(isnan(kn_fp8_e4m3_to_float(0x7f)));
	for (int c = 0; c < 256; c++) {
		if ((c & 0x7f) == 0x7f)
			continue;
		float v = kn_fp8_e4m3_to_float((uint8_t)c);
		uint8_t back = kn_float_to_fp8_e4m3(v);
		assert_true(back == c || (v == 0.0f && (back & 0x7f) == 0));
	}
	assert_int_equal(kn_float_to_fp8_e4m3(1e6f), 0x7e);      /* saturates */
	assert_int_equal(kn_float_to_fp8_e4m3(-1e6f), 0xfe);
	/* halfway between 1.0 (0x38) and 1.125 (0x39): ties to even (0x38) */
	assert_int_equal(kn_float_to_fp8_e4m3(1.0625f), 0x38);
	assert_int_equal(kn_float_to_fp8_e4m3(1.1875f), 0x3a); /* 1.125..1.25 tie -> even 0x3a */
}

/* Outlier columns come back exactly (as FP16), whatever the format. */
static void test_outlier_columns(void **s)
{
	(void)s;
	const int R = 8, C = 128;
	float *w = malloc(sizeof(float) * R * C), *d = malloc(sizeof(float) * R * C);
	for (int i = 0; i < R * C; i++)
		w[i] = frand(-1, 1);
	for (int r = 0; r < R; r++)
		w[r * C + 40] = 77.0f + (float)r;
	kn_qparams p = { KN_QF_INT, 3, 64, 0, 0, 0 };
	kn_qmatrix q;
	assert_int_equal(kn_qmatrix_alloc(&q, &p, R, C), 0);
	int32_t oc[1] = { 40 };
	assert_int_equal(kn_qmatrix_set_outliers(&q, oc, 1, w), 0);
	kn_qmatrix_quantize_rtn(&q, w, 0);
	kn_qmatrix_dequant(&q, 0, R, d);
	for (int r = 0; r < R; r++) {
		assert_true(d[r * C + 40] == 77.0f + (float)r);
		float x[128];
		for (int c = 0; c < C; c++)
			x[c] = c == 40 ? 1.0f : 0.0f;
		assert_true(kn_qmatrix_dot(&q, r, x) == 77.0f + (float)r);
	}
	kn_qmatrix_release(&q);
	free(w);
	free(d);
}

static void test_act_quant(void **s)
{
	(void)s;
	const int N = 5, C = 64;
	float x[5 * 64], y[5 * 64];
	unsigned char keep[64] = { 0 };
	for (int i = 0; i < N * C; i++)
		x[i] = frand(-3, 3);
	x[10] = 50.0f;
	keep[10] = 1;
	memcpy(y, x, sizeof(x));
	quant_act(y, N, C, 8, 1, 0, keep);
	for (int r = 0; r < N; r++) {
		float a = 0;
		for (int c = 0; c < C; c++)
			if (!keep[c])
				a = fmaxf(a, fabsf(x[r * C + c]));
		float sc = a / 127;
		for (int c = 0; c < C; c++) {
			if (keep[c])
				assert_true(y[r * C + c] == x[r * C + c]);
			else
				assert_true(fabsf(y[r * C + c] - x[r * C + c]) <= sc * 0.5f + 1e-6f);
		}
	}
	/* static scale: values beyond the range are clipped to +-127 steps */
	memcpy(y, x, sizeof(x));
	quant_act(y, N, C, 8, 0, 0.01f, NULL);
	assert_true(fabsf(y[10] - 1.27f) < 1e-6f);
}

/* ------------------------------------------------------------ whole model */

static model *base;
static int *ids;
static size_t n_ids;

static int setup(void **state)
{
	(void)state;
	qs_error err = { 0 };
	if (model_open(tu_shared("models/debdoc-19m-f16.gguf"), NULL, &base, &err))
		return -1;
	size_t len;
	char *text = tu_read_file(tu_shared("data/wikitext-2-test.txt"), &len);
	if (!text)
		return -1;
	len = len > 200000 ? 200000 : len;
	int rc = tok_encode(base->tok, text, len, 1, &ids, &n_ids, &err);
	free(text);
	return rc;
}

static int teardown(void **state)
{
	(void)state;
	free(ids);
	model_free(base);
	return 0;
}

static model *quantize_with(const char *spec_str, const int *calib, int n_calib, int calib_len)
{
	qs_error err = { 0 };
	quant_spec sp;
	quant_plan plan;
	model *qm = NULL;
	if (quant_spec_parse(spec_str, &sp, &err) ||
	    quant_plan_uniform(base, &sp, NULL, NULL, &plan, &err))
		fail_msg("%s: %s", spec_str, err.msg);
	quant_opts o = { .calib = calib, .n_calib = n_calib, .calib_len = calib_len, .batch = 4 };
	if (quant_model(base, &plan, &o, &qm, NULL, &err))
		fail_msg("%s: %s", spec_str, err.msg);
	quant_plan_release(&plan);
	return qm;
}

static void test_kld_self_zero(void **s)
{
	(void)s;
	model *same = quantize_with("none", NULL, 0, 0);
	eval_ppl_opts o = { .ctx = 512, .n_chunks = 3 };
	eval_cmp_result r;
	qs_error err = { 0 };
	assert_int_equal(eval_compare(base, same, ids, n_ids, &o, &r, &err), 0);
	assert_true(r.kld_mean == 0.0 && r.kld_max == 0.0);
	assert_true(r.same_top_pct == 100.0);
	assert_true(r.base.ppl == r.test.ppl);
	assert_int_equal(r.n, 3 * 256);
	model_free(same);
}

static void test_kld_monotonic(void **s)
{
	(void)s;
	const char *specs[] = { "int8g128", "int4g128", "int3g128", "int2g128" };
	double prev = 0;
	eval_ppl_opts o = { .ctx = 512, .n_chunks = tu_asan() ? 1 : 4 };
	for (int i = 0; i < 4; i++) {
		model *qm = quantize_with(specs[i], NULL, 0, 0);
		eval_cmp_result r;
		qs_error err = { 0 };
		assert_int_equal(eval_compare(base, qm, ids, n_ids, &o, &r, &err), 0);
		print_message("%s: kld %.5f, same top %.1f%%, ppl %.2f (base %.2f)\n", specs[i],
			      r.kld_mean, r.same_top_pct, r.test.ppl, r.base.ppl);
		assert_true(r.kld_mean > prev);
		assert_true(r.kld_median <= r.kld_p90 && r.kld_p90 <= r.kld_p99 && r.kld_p99 <= r.kld_max);
		prev = r.kld_mean;
		model_free(qm);
	}
}

/* Folding scales into norms / previous layers must not change the model's
 * function: SmoothQuant and AWQ into fp16 (no rounding beyond fp16 storage)
 * give the original logits up to fp16 rounding, and the bytes add up. */
static void test_folding_preserves_function(void **s)
{
	(void)s;
	const int NC = 4, LEN = 64;
	int *calib = malloc(sizeof(int) * NC * LEN);
	for (int i = 0; i < NC; i++) {
		memcpy(calib + i * LEN, ids + 1000 + i * 300, sizeof(int) * LEN);
		calib[i * LEN] = 1;
	}
	const char *specs[] = { "fp16", "smoothquant:fp16,alpha=0.5", "awq:fp16,alpha=0.5" };
	float *ref = malloc(sizeof(float) * 64 * 8192), *lg = malloc(sizeof(float) * 64 * 8192);
	qs_error err = { 0 };
	fwd_ctx *f = fwd_new(base, 1, 64, &err);
	assert_int_equal(fwd_prefill(f, ids, 1, 64, 0, ref, &err), 0);
	fwd_free(f);
	for (int i = 0; i < 3; i++) {
		model *qm = quantize_with(specs[i], calib, NC, LEN);
		f = fwd_new(qm, 1, 64, &err);
		assert_int_equal(fwd_prefill(f, ids, 1, 64, 0, lg, &err), 0);
		double num = 0, den = 0;
		for (int j = 0; j < 64 * 8192; j++) {
			num += ((double)lg[j] - ref[j]) * ((double)lg[j] - ref[j]);
			den += (double)ref[j] * ref[j];
		}
		print_message("%s: logits rel L2 vs unquantized %.3g\n", specs[i], sqrt(num / den));
		assert_true(sqrt(num / den) < 2e-3);
		/* the scales really moved: SmoothQuant changed the norms */
		if (i == 1)
			assert_true(qm->layers[0].attn_norm->type == KN_TYPE_F32 &&
				    qm->layers[0].attn_norm->data != base->layers[0].attn_norm->data);
		fwd_free(f);
		model_free(qm);
	}
	free(ref);
	free(lg);
	free(calib);
}

/* Dry-run accounting equals the bytes of the built model. */
static void test_plan_bytes(void **s)
{
	(void)s;
	const char *specs[] = { "int4g128", "q4_0", "nf4dq", "fp8", "int3c" };
	for (int i = 0; i < 5; i++) {
		qs_error err = { 0 };
		quant_spec sp;
		quant_plan plan;
		assert_int_equal(quant_spec_parse(specs[i], &sp, &err), 0);
		assert_int_equal(quant_plan_uniform(base, &sp, "blk\\.[0-3]\\.", "ffn_gate", &plan, &err), 0);
		assert_int_equal(plan.n, 4 * 6);
		size_t predicted = quant_plan_bytes(base, &plan, NULL);
		quant_opts o = { 0 };
		model *qm;
		quant_report rep;
		assert_int_equal(quant_model(base, &plan, &o, &qm, &rep, &err), 0);
		assert_int_equal(rep.bytes, predicted);
		assert_int_equal(model_bytes(qm), predicted);
		assert_int_equal(rep.n_quantized, 24);
		assert_null(qm->layers[0].w_gate->q);
		assert_non_null(qm->layers[0].w_up->q);
		assert_null(qm->layers[5].w_up->q);
		quant_plan_release(&plan);
		model_free(qm);
	}
	/* a plan that needs calibration data refuses to run without it */
	qs_error err = { 0 };
	quant_spec sp;
	quant_plan plan;
	model *qm = NULL;
	assert_int_equal(quant_spec_parse("gptq:int4g128", &sp, &err), 0);
	assert_int_equal(quant_plan_uniform(base, &sp, NULL, NULL, &plan, &err), 0);
	quant_opts o = { 0 };
	assert_int_equal(quant_model(base, &plan, &o, &qm, NULL, &err), QS_EUSAGE);
	assert_non_null(strstr(err.msg, "needs calibration data"));
	quant_plan_release(&plan);
	/* a bad regex is a usage error naming the flag */
	assert_int_equal(quant_plan_uniform(base, &sp, "blk.(", NULL, &plan, &err), QS_EUSAGE);
	assert_non_null(strstr(err.msg, "--include regex 'blk.('"));
}

/* quant_model with reuse: layers below the first changed one copied from
 * the earlier model, the rest quantized again, must equal quantizing the
 * new plan from scratch, tensor for tensor (GPTQ and AWQ in the plan) */
static model *plan_model_opts(const char *const *rules, int n, const quant_opts *o, quant_report *rep)
{
	quant_plan plan = { 0 };
	qs_error err = { 0 };
	for (int l = 0; l < base->cfg.n_layers; l++)
		for (int i = 0; i < n; i++) { /* rules: "KIND SPEC" or "KIND@L SPEC" (from layer L on) */
			char kind[32], spec[64];
			int from = 0;
			if (sscanf(rules[i], "%31[^@ ]@%d %63s", kind, &from, spec) != 3 &&
			    sscanf(rules[i], "%31s %63s", kind, spec) != 2)
				fail_msg("bad rule %s", rules[i]);
			if (l < from)
				continue;
			char name[64];
			quant_spec sp;
			snprintf(name, sizeof(name), "blk.%d.%s.weight", l, kind);
			if (quant_plan_find(&plan, name))
				continue; /* the first rule that matches wins */
			if (quant_spec_parse(spec, &sp, &err) || quant_plan_add(&plan, name, &sp, &err))
				fail_msg("%s: %s", rules[i], err.msg);
		}
	model *qm = NULL;
	if (quant_model(base, &plan, o, &qm, rep, &err))
		fail_msg("%s", err.msg);
	quant_plan_release(&plan);
	return qm;
}

static void assert_same_models(const model *a, const model *b, int want_same)
{
	int diff = 0;
	for (int i = 0; i < a->n_tensors; i++) {
		const model_tensor *x = &a->tensors[i], *y = &b->tensors[i];
		if (!!x->q != !!y->q || x->type != y->type) {
			diff++;
			continue;
		}
		float *fx = model_tensor_f32(x), *fy = model_tensor_f32(y);
		size_t n = (size_t)x->ne[0] * (size_t)x->ne[1];
		diff += memcmp(fx, fy, sizeof(float) * n) != 0;
		diff += !!x->col_scale != !!y->col_scale ||
			(x->col_scale && memcmp(x->col_scale, y->col_scale, sizeof(float) * (size_t)x->ne[0]));
		diff += !!x->row_scale != !!y->row_scale ||
			(x->row_scale && memcmp(x->row_scale, y->row_scale, sizeof(float) * (size_t)x->ne[1]));
		free(fx);
		free(fy);
	}
	if (want_same && diff)
		fail_msg("%d tensors differ", diff);
	if (!want_same && !diff)
		fail_msg("no tensor differs");
}

static void test_reuse(void **s)
{
	(void)s;
	const int NC = 4, LEN = 64;
	int *calib = malloc(sizeof(int) * NC * LEN);
	for (int i = 0; i < NC; i++) {
		memcpy(calib + i * LEN, ids + 2000 + i * 300, sizeof(int) * LEN);
		calib[i * LEN] = 1;
	}
	const char *a[] = { "ffn_gate awq:int4g128", "ffn_up awq:int4g128", "attn_q gptq:int3g128",
			    "attn_k gptq:int3g128", "attn_v gptq:int3g128", "attn_output gptq:int3g128",
			    "ffn_down awq:int3g128,gptq" };
	const char *b[] = { "ffn_down@5 gptq:int4g64", "ffn_gate awq:int4g128", "ffn_up awq:int4g128",
			    "attn_q gptq:int3g128", "attn_k gptq:int3g128", "attn_v gptq:int3g128",
			    "attn_output gptq:int3g128", "ffn_down awq:int3g128,gptq" };
	/* AWQ on ffn_down folds its scales into ffn_up's rows (row_scale) */
	quant_opts o = { .calib = calib, .n_calib = NC, .calib_len = LEN, .batch = 4 };
	quant_report ra, rb, rr;
	model *qa = plan_model_opts(a, 7, &o, &ra);
	model *qb = plan_model_opts(b, 8, &o, &rb);
	quant_opts orr = o;
	orr.reuse = qa;
	orr.reuse_layers = 5;
	model *qr = plan_model_opts(b, 8, &orr, &rr);
	print_message("reuse below layer 5: gptq %.3f of %.3f GFLOP, %d tensors quantized\n",
		      rr.gptq_gflop, rb.gptq_gflop, rr.n_quantized);
	assert_same_models(qb, qr, 1);
	assert_int_equal(rr.n_quantized, rb.n_quantized);
	assert_int_equal(model_bytes(qr), model_bytes(qb));
	assert_true(rr.gptq_gflop < 0.5 * rb.gptq_gflop); /* layers 0-4 were not quantized again */
	/* claiming more layers than really are the same gives a different model */
	orr.reuse_layers = 6;
	model *bad = plan_model_opts(b, 8, &orr, &rr);
	assert_same_models(qb, bad, 0);
	model_free(bad);
	model_free(qr);
	model_free(qb);
	model_free(qa);
	free(calib);
}

/* The per-layer relative output error from X^T X equals a direct
 * computation of ||(W - Q) X^T|| / ||W X^T|| over the captured inputs. */
typedef struct xcap {
	float *x;
	int rows, cols;
} xcap;

/* ||W X^T - Q Xq^T|| / ||W X^T|| over captured rows: X the base model's
 * input of the tensor, Xq the quantized model's own input (equal to X for
 * plain quantizers; X / s where AWQ folded 1/s into the norm), Q the matrix
 * the quantized model really multiplies with (its dequantized codes). */
static double direct_err(const model_tensor *bt, const model_tensor *qt, const xcap *x,
			 const xcap *xq)
{
	int R = (int)bt->ne[1], C = (int)bt->ne[0];
	float *w = malloc(sizeof(float) * R * C), *q = malloc(sizeof(float) * R * C);
	kn_traits(bt->type)->to_float(bt->data, w, (size_t)R * C);
	kn_qmatrix_dequant(qt->q, 0, R, q);
	double num = 0, den = 0;
	for (int t = 0; t < x->rows; t++)
		for (int r = 0; r < R; r++) {
			double y = 0, yq = 0;
			for (int j = 0; j < C; j++) {
				y += (double)w[r * C + j] * x->x[t * C + j];
				yq += (double)q[r * C + j] * xq->x[t * C + j];
			}
			num += (y - yq) * (y - yq);
			den += y * y;
		}
	free(w);
	free(q);
	return sqrt(num / den);
}

static xcap capture_l0_qkv(const model *m, const int *calib, int nc, int len)
{
	xcap c = { 0 };
	c.x = tu_capture_site(m, calib, nc, len, 0, FWD_SITE_QKV, &c.rows, &c.cols);
	assert_non_null(c.x);
	return c;
}

static void test_layer_errors(void **s)
{
	(void)s;
	const int NC = 2, LEN = 32;
	int calib[64];
	for (int i = 0; i < NC; i++) {
		memcpy(calib + i * LEN, ids + 500 + i * 100, sizeof(int) * LEN);
		calib[i * LEN] = 1;
	}
	xcap x = capture_l0_qkv(base, calib, NC, LEN);
	qs_error err = { 0 };
	quant_xtx *xs;
	assert_int_equal(quant_xtx_collect(base, calib, NC, LEN, (size_t)1 << 30, NULL, NULL, &xs, &err), 0);
	/* AWQ rescales W's columns and folds 1/s into the norm: both measures
	 * must undo that (the quantized model's own layer-0 input is X / s).
	 * GPTQ after AWQ's scaling minimises exactly that error for layer 0's
	 * q/k/v (their input is the same in both): it must come out lower. */
	const char *specs[] = { "int3g128", "awq:int3g128", "awq:int3g128,gptq" };
	double sum_err[3] = { 0 };
	for (int k = 0; k < 3; k++) {
		model *qm = quantize_with(specs[k], calib, NC, LEN);
		quant_layer_err *le;
		int n;
		assert_int_equal(quant_layer_errors(base, qm, calib, NC, LEN, &le, &n, &err), 0);
		xcap xq = capture_l0_qkv(qm, calib, NC, LEN);
		for (int t = 0; t < 3; t++) {
			const model_tensor *bt = t == 0 ? base->layers[0].wq : t == 1 ? base->layers[0].wk : base->layers[0].wv;
			const model_tensor *qt = &qm->tensors[bt - base->tensors];
			double direct = direct_err(bt, qt, &x, &xq);
			int idx = (int)(bt - base->tensors);
			double stored = quant_xtx_rel_err(xs, qm, bt->name);
			print_message("%s %s: rel err %.5f, from the store %.5f, direct %.5f\n", specs[k],
				      bt->name, le[idx].rel_err, stored, direct);
			assert_string_equal(le[idx].name, bt->name);
			assert_true(fabs(le[idx].rel_err - direct) < 1e-3 * direct);
			assert_true(fabs(stored - direct) < 1e-3 * direct);
			sum_err[k] += direct;
			if (k >= 1) /* the scales were recorded, and really not 1 */
				assert_true(qt->col_scale && qt->col_scale[0] != 1.0f);
		}
		/* unquantized tensors have no figure */
		assert_true(isnan(le[(int)(base->tok_embd - base->tensors)].rel_err));
		assert_true(isnan(quant_xtx_rel_err(xs, qm, "token_embd.weight")));
		free(xq.x);
		free(le);
		model_free(qm);
	}
	print_message("layer 0 q/k/v output error: rtn %.4f, awq %.4f, awq+gptq %.4f\n", sum_err[0] / 3,
		      sum_err[1] / 3, sum_err[2] / 3);
	assert_true(sum_err[2] < sum_err[1]);
	/* a store over the budget is refused with the sizes */
	quant_xtx *none = NULL;
	assert_int_equal(quant_xtx_collect(base, calib, NC, LEN, 1024, NULL, NULL, &none, &err), QS_EUNSUPP);
	assert_null(none);
	assert_non_null(strstr(err.msg, "MiB"));
	quant_xtx_free(xs);
	free(x.x);
}

int main(void)
{
	const struct CMUnitTest unit[] = {
		cmocka_unit_test(test_spec_roundtrip),
		cmocka_unit_test(test_int_packing),
		cmocka_unit_test(test_storage_bytes),
		cmocka_unit_test(test_int_rtn),
		cmocka_unit_test(test_ggml_blocks),
		cmocka_unit_test(test_nf4_fp8),
		cmocka_unit_test(test_outlier_columns),
		cmocka_unit_test(test_act_quant),
	};
	const struct CMUnitTest whole[] = {
		cmocka_unit_test(test_kld_self_zero),
		cmocka_unit_test(test_kld_monotonic),
		cmocka_unit_test(test_folding_preserves_function),
		cmocka_unit_test(test_plan_bytes),
		cmocka_unit_test(test_reuse),
		cmocka_unit_test(test_layer_errors),
	};
	int rc = cmocka_run_group_tests(unit, NULL, NULL);
	return rc | cmocka_run_group_tests(whole, setup, teardown);
}
