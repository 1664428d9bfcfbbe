#include "types.h"

#include <float.h>
#include <math.h>
#include <string.h>

void kn_quantize_row_q4_0_ref(const float *x, block_q4_0 *y, size_t n)
{
	for (size_t b = 0; b < n / QK4_0; b++, x += QK4_0) {
		float amax = 0.0f, max = 0.0f; /* max keeps its sign */
		for (int j = 0; j < QK4_0; j++) {
			if (fabsf(x[j]) > amax) {
				amax = fabsf(x[j]);
				max = x[j];
			}
		}
		const float d = max / -8;
		const float id = d ? 1.0f / d : 0.0f;
		y[b].d = kn_fp32_to_fp16_ref(d);
		for (int j = 0; j < QK4_0 / 2; j++) {
			const float x0 = x[j] * id, x1 = x[QK4_0 / 2 + j] * id;
			int q0 = (int8_t)(x0 + 8.5f), q1 = (int8_t)(x1 + 8.5f);
			if (q0 > 15) q0 = 15;
			if (q1 > 15) q1 = 15;
			y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
		}
	}
}

void kn_quantize_row_q4_1_ref(const float *x, block_q4_1 *y, size_t n)
{
	for (size_t b = 0; b < n / QK4_1; b++, x += QK4_1) {
		float min = FLT_MAX, max = -FLT_MAX; /* as ggml: differs from +-INFINITY on inf blocks */
		for (int j = 0; j < QK4_1; j++) {
			if (x[j] < min) min = x[j];
			if (x[j] > max) max = x[j];
		}
		const float d = (max - min) / 15;
		const float id = d ? 1.0f / d : 0.0f;
		y[b].d = kn_fp32_to_fp16_ref(d);
		y[b].m = kn_fp32_to_fp16_ref(min);
		for (int j = 0; j < QK4_1 / 2; j++) {
			const float x0 = (x[j] - min) * id, x1 = (x[QK4_1 / 2 + j] - min) * id;
			int q0 = (int8_t)(x0 + 0.5f), q1 = (int8_t)(x1 + 0.5f);
			if (q0 > 15) q0 = 15;
			if (q1 > 15) q1 = 15;
			y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
		}
	}
}

void kn_quantize_row_q8_0_ref(const float *x, block_q8_0 *y, size_t n)
{
	for (size_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
		float amax = 0.0f;
		for (int j = 0; j < QK8_0; j++) {
			const float a = fabsf(x[j]);
			amax = amax > a ? amax : a; /* ggml's MAX(): same NaN behaviour too */
		}
		const float d = amax / 127;
		const float id = d ? 1.0f / d : 0.0f;
		y[b].d = kn_fp32_to_fp16_ref(d);
		for (int j = 0; j < QK8_0; j++)
			y[b].qs[j] = (int8_t)roundf(x[j] * id);
	}
}

void kn_dequantize_row_q4_0(const block_q4_0 *x, float *y, size_t n)
{
	for (size_t b = 0; b < n / QK4_0; b++, y += QK4_0) {
		const float d = kn_fp16_to_fp32_ref(x[b].d);
		for (int j = 0; j < QK4_0 / 2; j++) {
			y[j] = (float)((x[b].qs[j] & 0x0f) - 8) * d;
			y[j + QK4_0 / 2] = (float)((x[b].qs[j] >> 4) - 8) * d;
		}
	}
}

void kn_dequantize_row_q4_1(const block_q4_1 *x, float *y, size_t n)
{
	for (size_t b = 0; b < n / QK4_1; b++, y += QK4_1) {
		const float d = kn_fp16_to_fp32_ref(x[b].d);
		const float m = kn_fp16_to_fp32_ref(x[b].m);
		for (int j = 0; j < QK4_1 / 2; j++) {
			y[j] = (float)(x[b].qs[j] & 0x0f) * d + m;
			y[j + QK4_1 / 2] = (float)(x[b].qs[j] >> 4) * d + m;
		}
	}
}

void kn_dequantize_row_q8_0(const block_q8_0 *x, float *y, size_t n)
{
	for (size_t b = 0; b < n / QK8_0; b++, y += QK8_0) {
		const float d = kn_fp16_to_fp32_ref(x[b].d);
		for (int j = 0; j < QK8_0; j++)
			y[j] = (float)x[b].qs[j] * d;
	}
}

static void f32_to_float(const void *s, float *d, size_t n) { memcpy(d, s, n * sizeof(float)); }
static void f32_from_float(const float *s, void *d, size_t n) { memcpy(d, s, n * sizeof(float)); }
static void f16_to_float(const void *s, float *d, size_t n) { kn_fp16_to_fp32_row(s, d, n); }
static void f16_from_float(const float *s, void *d, size_t n) { kn_fp32_to_fp16_row(s, d, n); }
static void bf16_to_float(const void *s, float *d, size_t n) { kn_bf16_to_fp32_row(s, d, n); }
static void bf16_from_float(const float *s, void *d, size_t n)
{
	kn_bf16 *o = d;
	for (size_t i = 0; i < n; i++)
		o[i] = kn_fp32_to_bf16_ref(s[i]);
}
static void q4_0_to_float(const void *s, float *d, size_t n) { kn_dequantize_row_q4_0(s, d, n); }
static void q4_0_from_float(const float *s, void *d, size_t n) { kn_quantize_row_q4_0_ref(s, d, n); }
static void q4_1_to_float(const void *s, float *d, size_t n) { kn_dequantize_row_q4_1(s, d, n); }
static void q4_1_from_float(const float *s, void *d, size_t n) { kn_quantize_row_q4_1_ref(s, d, n); }
static void q8_0_to_float(const void *s, float *d, size_t n) { kn_dequantize_row_q8_0(s, d, n); }
static void q8_0_from_float(const float *s, void *d, size_t n) { kn_quantize_row_q8_0_ref(s, d, n); }

static const kn_type_traits traits[KN_TYPE_COUNT] = {
	[KN_TYPE_F32] = { "f32", 1, 4, f32_to_float, f32_from_float },
	[KN_TYPE_F16] = { "f16", 1, 2, f16_to_float, f16_from_float },
	[KN_TYPE_Q4_0] = { "q4_0", QK4_0, sizeof(block_q4_0), q4_0_to_float, q4_0_from_float },
	[KN_TYPE_Q4_1] = { "q4_1", QK4_1, sizeof(block_q4_1), q4_1_to_float, q4_1_from_float },
	[KN_TYPE_Q8_0] = { "q8_0", QK8_0, sizeof(block_q8_0), q8_0_to_float, q8_0_from_float },
	[KN_TYPE_BF16] = { "bf16", 1, 2, bf16_to_float, bf16_from_float },
};

const kn_type_traits *kn_traits(int t)
{
	if (t < 0 || t >= KN_TYPE_COUNT || !traits[t].name)
		return NULL;
	return &traits[t];
}

size_t kn_row_size(int t, size_t n)
{
	const kn_type_traits *tr = kn_traits(t);
	if (!tr || n % tr->block_size)
		return 0;
	return n / tr->block_size * tr->type_size;
}
