#include "fp16.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float kn_fp16_to_fp32_ref(kn_fp16 h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t man = h & 0x3ff;
	if (exp == 0) {
		/* zero or subnormal: man * 2^-24 */
		float v = (float)man * 5.9604644775390625e-8f;
		return u2f(f2u(v) | sign);
	}
	if (exp == 31) /* inf or nan */
		return u2f(sign | 0x7f800000u | (man << 13));
	return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

kn_fp16 kn_fp32_to_fp16_ref(float f)
{
	uint32_t u = f2u(f);
	uint32_t sign = (u >> 16) & 0x8000;
	uint32_t absu = u & 0x7fffffffu;
	if (absu >= 0x7f800000u) /* inf or nan */
		return (kn_fp16)(sign | 0x7c00 | (absu > 0x7f800000u ? 0x200 : 0));
	if (absu >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
		return (kn_fp16)(sign | 0x7c00);
	if (absu < 0x38800000u) {
		/* result is subnormal or zero: round absf / 2^-24 to nearest even */
		float a = u2f(absu);
		float q = a * 16777216.0f; /* exact: scaling by a power of two */
		uint32_t m = (uint32_t)q;
		float rem = q - (float)m;
		if (rem > 0.5f || (rem == 0.5f && (m & 1)))
			m++;
		return (kn_fp16)(sign | m);
	}
	/* normal: drop 13 mantissa bits with round-to-nearest-even */
	uint32_t r = absu + 0xfffu + ((absu >> 13) & 1);
	r -= 0x38000000u; /* rebias exponent 127 -> 15 */
	return (kn_fp16)(sign | (r >> 13));
}

float kn_bf16_to_fp32_ref(kn_bf16 h) { return u2f((uint32_t)h << 16); }

kn_bf16 kn_fp32_to_bf16_ref(float f)
{
	uint32_t u = f2u(f);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (kn_bf16)((u >> 16) | 0x40); /* quiet nan */
	u += 0x7fffu + ((u >> 16) & 1);
	return (kn_bf16)(u >> 16);
}

#if defined(__x86_64__)
__attribute__((target("avx2,f16c")))
static void fp16_to_fp32_f16c(const kn_fp16 *src, float *dst, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m128i h = _mm_loadu_si128((const __m128i *)(src + i));
		_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
	}
	for (; i < n; i++)
		dst[i] = kn_fp16_to_fp32_ref(src[i]);
}

__attribute__((target("avx2,f16c")))
static void fp32_to_fp16_f16c(const float *src, kn_fp16 *dst, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256 f = _mm256_loadu_ps(src + i);
		_mm_storeu_si128((__m128i *)(dst + i),
				 _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
	}
	for (; i < n; i++)
		dst[i] = kn_fp32_to_fp16_ref(src[i]);
}

__attribute__((target("avx2")))
static void bf16_to_fp32_avx2(const kn_bf16 *src, float *dst, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m128i h = _mm_loadu_si128((const __m128i *)(src + i));
		__m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
		_mm256_storeu_ps(dst + i, _mm256_castsi256_ps(w));
	}
	for (; i < n; i++)
		dst[i] = kn_bf16_to_fp32_ref(src[i]);
}

static int have_f16c(void)
{
	static int v = -1;
	if (v < 0)
		v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
	return v;
}
#endif

void kn_fp16_to_fp32_row(const kn_fp16 *src, float *dst, size_t n)
{
#if defined(__x86_64__)
	if (have_f16c()) {
		fp16_to_fp32_f16c(src, dst, n);
		return;
	}
#endif
	for (size_t i = 0; i < n; i++)
		dst[i] = kn_fp16_to_fp32_ref(src[i]);
}

void kn_fp32_to_fp16_row(const float *src, kn_fp16 *dst, size_t n)
{
#if defined(__x86_64__)
	if (have_f16c()) {
		fp32_to_fp16_f16c(src, dst, n);
		return;
	}
#endif
	for (size_t i = 0; i < n; i++)
		dst[i] = kn_fp32_to_fp16_ref(src[i]);
}

void kn_bf16_to_fp32_row(const kn_bf16 *src, float *dst, size_t n)
{
#if defined(__x86_64__)
	if (have_f16c()) {
		bf16_to_fp32_avx2(src, dst, n);
		return;
	}
#endif
	for (size_t i = 0; i < n; i++)
		dst[i] = kn_bf16_to_fp32_ref(src[i]);
}
