#include "ops.h"

#include <math.h>
#include <string.h>

#include "types.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

static int cpu_avx2(void)
{
#if HAVE_X86
	static int v = -1;
	if (v < 0)
		v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
		    __builtin_cpu_supports("f16c");
	return v;
#else
	return 0;
#endif
}

static int cpu_avx512(void)
{
#if HAVE_X86
	static int v = -1;
	if (v < 0)
		v = __builtin_cpu_supports("avx512f");
	return v;
#else
	return 0;
#endif
}

/* ------------------------------------------------------------------ exp */

void kn_exp_ref(float *y, const float *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		y[i] = expf(x[i]);
}

#if HAVE_X86
/* exp(x) = 2^k * p(r), k = round(x / ln2), r = x - k ln2 (two-part ln2),
 * p a degree-6 polynomial: Cephes expf coefficients. */
__attribute__((target("avx512f")))
static inline __m512 exp512(__m512 x)
{
	const __m512 lo = _mm512_set1_ps(-103.97f), hi = _mm512_set1_ps(88.7228f);
	x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
	__m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
	r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
	__m512 p = _mm512_set1_ps(1.9875691500e-4f);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
	__m512 r2 = _mm512_mul_ps(r, r);
	p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	return _mm512_scalef_ps(p, k);
}

__attribute__((target("avx512f")))
static void exp_avx512(float *y, const float *x, size_t n)
{
	size_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(y + i, exp512(_mm512_loadu_ps(x + i)));
	if (i < n) {
		__mmask16 m = (__mmask16)((1u << (n - i)) - 1);
		_mm512_mask_storeu_ps(y + i, m, exp512(_mm512_maskz_loadu_ps(m, x + i)));
	}
}

__attribute__((target("avx512f")))
static float softmax_avx512(float *x, int n)
{
	__m512 vmax = _mm512_set1_ps(-INFINITY);
	int i = 0;
	for (; i + 16 <= n; i += 16)
		vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
	float mx = _mm512_reduce_max_ps(vmax);
	for (; i < n; i++)
		mx = x[i] > mx ? x[i] : mx;
	__m512 vm = _mm512_set1_ps(mx), vs = _mm512_setzero_ps();
	for (i = 0; i + 16 <= n; i += 16) {
		__m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
		_mm512_storeu_ps(x + i, e);
		vs = _mm512_add_ps(vs, e);
	}
	if (i < n) {
		__mmask16 m = (__mmask16)((1u << (n - i)) - 1);
		__m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm));
		e = _mm512_maskz_mov_ps(m, e);
		_mm512_mask_storeu_ps(x + i, m, e);
		vs = _mm512_add_ps(vs, e);
	}
	float s = _mm512_reduce_add_ps(vs);
	__m512 inv = _mm512_set1_ps(1.0f / s);
	for (i = 0; i + 16 <= n; i += 16)
		_mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
	for (; i < n; i++)
		x[i] /= s;
	return s;
}

__attribute__((target("avx512f")))
static void swiglu_avx512(float *y, const float *g, const float *u, size_t n)
{
	size_t i = 0;
	const __m512 one = _mm512_set1_ps(1.0f);
	for (; i + 16 <= n; i += 16) {
		__m512 x = _mm512_loadu_ps(g + i);
		__m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
		__m512 s = _mm512_div_ps(x, _mm512_add_ps(one, e));
		_mm512_storeu_ps(y + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
	}
	for (; i < n; i++)
		y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

__attribute__((target("avx512f")))
static double sumexp_avx512(const float *x, int n, float mx)
{
	__m512 vm = _mm512_set1_ps(mx), vs = _mm512_setzero_ps();
	int i = 0;
	for (; i + 16 <= n; i += 16)
		vs = _mm512_add_ps(vs, exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm)));
	double s = _mm512_reduce_add_ps(vs);
	for (; i < n; i++)
		s += expf(x[i] - mx);
	return s;
}
#endif

void kn_exp(float *y, const float *x, size_t n)
{
#if HAVE_X86
	if (cpu_avx512()) {
		exp_avx512(y, x, n);
		return;
	}
#endif
	kn_exp_ref(y, x, n);
}

void kn_softmax(float *x, int n)
{
#if HAVE_X86
	if (cpu_avx512()) {
		softmax_avx512(x, n);
		return;
	}
#endif
	float mx = -INFINITY;
	for (int i = 0; i < n; i++)
		mx = x[i] > mx ? x[i] : mx;
	double s = 0;
	for (int i = 0; i < n; i++) {
		x[i] = expf(x[i] - mx);
		s += x[i];
	}
	float inv = (float)(1.0 / s);
	for (int i = 0; i < n; i++)
		x[i] *= inv;
}

void kn_swiglu_ref(float *y, const float *g, const float *u, size_t n)
{
	for (size_t i = 0; i < n; i++)
		y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void kn_swiglu(float *y, const float *g, const float *u, size_t n)
{
#if HAVE_X86
	if (cpu_avx512()) {
		swiglu_avx512(y, g, u, n);
		return;
	}
#endif
	kn_swiglu_ref(y, g, u, n);
}

double kn_logsumexp(const float *x, int n)
{
	float mx = -INFINITY;
	for (int i = 0; i < n; i++)
		mx = x[i] > mx ? x[i] : mx;
	double s = 0;
#if HAVE_X86
	if (cpu_avx512())
		s = sumexp_avx512(x, n, mx);
	else
#endif
		for (int i = 0; i < n; i++)
			s += expf(x[i] - mx);
	return mx + log(s);
}

/* ------------------------------------------------------------ rmsnorm, rope */

void kn_rmsnorm(float *y, const float *x, const float *w, int n, float eps)
{
	float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
	for (int i = 0; i < n; i++)
		ss += x[i] * x[i];
	float inv = 1.0f / sqrtf(ss / (float)n + eps);
#pragma omp simd
	for (int i = 0; i < n; i++)
		y[i] = x[i] * inv * w[i];
}

void kn_rope(float *x, const float *cs, int hd, int style)
{
	int half = hd / 2;
	if (style == 0) {
#pragma omp simd
		for (int i = 0; i < half; i++) {
			float c = cs[2 * i], s = cs[2 * i + 1];
			float a = x[2 * i], b = x[2 * i + 1];
			x[2 * i] = a * c - b * s;
			x[2 * i + 1] = a * s + b * c;
		}
	} else {
#pragma omp simd
		for (int i = 0; i < half; i++) {
			float c = cs[2 * i], s = cs[2 * i + 1];
			float a = x[i], b = x[i + half];
			x[i] = a * c - b * s;
			x[i + half] = a * s + b * c;
		}
	}
}

/* ------------------------------------------------------------------ dots */

float kn_dot_f32(const float *a, const float *b, int n)
{
	float s = 0.0f;
	for (int i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

#if HAVE_X86
__attribute__((target("avx2,fma")))
static inline float hsum256(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma")))
static float dot_f32_avx2(const float *a, const float *b, int n)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	int i = 0;
	for (; i + 16 <= n; i += 16) {
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
	}
	float s = hsum256(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
		s += a[i] * b[i];
	return s;
}

__attribute__((target("avx2,fma,f16c")))
static float dot_f16_avx2(const kn_fp16 *a, const float *b, int n)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	int i = 0;
	for (; i + 16 <= n; i += 16) {
		__m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i)));
		__m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8)));
		s0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(b + i + 8), s1);
	}
	float s = hsum256(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
		s += kn_fp16_to_fp32_ref(a[i]) * b[i];
	return s;
}

__attribute__((target("avx2,fma")))
static float dot_bf16_avx2(const kn_bf16 *a, const float *b, int n)
{
	__m256 s0 = _mm256_setzero_ps();
	int i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256i w = _mm256_slli_epi32(
			_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(a + i))), 16);
		s0 = _mm256_fmadd_ps(_mm256_castsi256_ps(w), _mm256_loadu_ps(b + i), s0);
	}
	float s = hsum256(s0);
	for (; i < n; i++)
		s += kn_bf16_to_fp32_ref(a[i]) * b[i];
	return s;
}
#endif


static float dot_fast(const float *a, const float *b, int n)
{
#if HAVE_X86
	if (cpu_avx2())
		return dot_f32_avx2(a, b, n);
#endif
	return kn_dot_f32(a, b, n);
}

static float dot_row(int type, const void *row, const float *x, int n)
{
	switch (type) {
	case KN_TYPE_F32:
		return dot_fast(row, x, n);
	case KN_TYPE_F16:
#if HAVE_X86
		if (cpu_avx2())
			return dot_f16_avx2(row, x, n);
#endif
		break;
	case KN_TYPE_BF16:
#if HAVE_X86
		if (cpu_avx2())
			return dot_bf16_avx2(row, x, n);
#endif
		break;
	default:
		break;
	}
	/* generic: dequantize a block at a time */
	const kn_type_traits *tr = kn_traits(type);
	const unsigned char *p = row;
	float buf[256], s = 0.0f;
	int bs = (int)tr->block_size, step = bs >= 256 ? bs : 256 / bs * bs;
	for (int i = 0; i < n; i += step) {
		int k = n - i < step ? n - i : step;
		tr->to_float(p + (size_t)i / (size_t)bs * tr->type_size, buf, (size_t)k);
		s += dot_fast(buf, x + i, k);
	}
	return s;
}

void kn_matvec(int type, const void *W, const float *x, float *y, int n, int r0, int r1)
{
	size_t rs = kn_row_size(type, (size_t)n);
	const unsigned char *w = W;
	for (int r = r0; r < r1; r++)
		y[r] = dot_row(type, w + (size_t)r * rs, x, n);
}
