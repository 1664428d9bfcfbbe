/* test_kernels_types.c - number formats (kernels/fp16.c) and ggml block
 * formats (kernels/types.c).
 *
 * fp16: all 65536 halves against an independent decoder; float -> half
 * against the CPU's F16C conversion (round to nearest even) and against a
 * double-precision model of rounding, over every exponent and mantissa top
 * with the low bits that decide rounding (ties, just below, just above),
 * plus random floats; the row functions against the scalar reference.
 * bf16: the same for bfloat16.
 * Q8_0/Q4_0/Q4_1: hand-computed blocks (the expected bytes are worked out in
 * comments), ggml's rounding quirks (round half away from zero for q8_0,
 * truncation of x + 8.5 for q4_0, clamping of the far side), error bounds on
 * random data, the traits table. */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../kernels/fp16.h"
#include "../kernels/types.h"
#include "testutil.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static uint64_t rng = 0x853c49e6748fea9bull;

static uint64_t rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [-1, 1). */
static float urand(void)
{
	return (float)((double)(rnd() >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

/* Roughly normal (sum of uniforms), sometimes with outliers like real weights. */
static float wrand(void)
{
	float s = urand() + urand() + urand() + urand();
	if (rnd() % 64 == 0)
		s *= 20.0f;
	return s;
}

/* ------------------------------------------------------------- F16C */

static int have_f16c(void)
{
#if defined(__x86_64__)
	return __builtin_cpu_supports("f16c");
#else
	return 0;
#endif
}

#if defined(__x86_64__)
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f)
{
	return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h)
{
	return _cvtsh_ss(h);
}
#else
static uint16_t hw_f32_to_f16(float f) { (void)f; return 0; }
static float hw_f16_to_f32(uint16_t h) { (void)h; return 0; }
#endif

/* ----------------------------------------------- independent models */

/* The value of half h, decoded from the IEEE 754 definition. */
static double half_value(uint16_t h)
{
	int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
	double v;
	if (e == 0)
		v = ldexp(m, -24);
	else if (e == 31)
		v = m ? NAN : INFINITY;
	else
		v = ldexp(1024 + m, e - 25);
	return s ? -v : v;
}

/* f rounded to the nearest half (ties to even), as a double; +-inf on
 * overflow. Uses the FPU's default rounding (nearest even) in rint. */
static double half_round(float f)
{
	double a = fabs((double)f);
	if (isnan(a) || isinf(a))
		return f;
	int e;
	frexp(a, &e); /* a = m * 2^e, m in [0.5, 1) */
	int ex = e - 1; /* a in [2^ex, 2^(ex+1)) */
	if (ex < -14)
		ex = -14; /* subnormal halves share the quantum 2^-24 */
	double q = ldexp(1.0, ex - 10);
	double r = rint(a / q) * q;
	if (r >= 65520.0 || r > 65504.0)
		r = INFINITY;
	return signbit(f) ? -r : r;
}

/* f rounded to the nearest bfloat16 (ties to even), as a double. */
static double bf16_round(float f)
{
	double a = fabs((double)f);
	if (isnan(a) || isinf(a) || a == 0)
		return f;
	int e;
	frexp(a, &e);
	int ex = e - 1;
	if (ex < -126)
		ex = -126; /* float subnormals: bf16 has 7 fraction bits there too */
	double q = ldexp(1.0, ex - 7);
	double r = rint(a / q) * q;
	if (r >= ldexp(1.0, 128))
		r = INFINITY;
	return signbit(f) ? -r : r;
}

/* ------------------------------------------------------------- fp16 */

static void test_fp16_decode_all(void **state)
{
	(void)state;
	int hw = have_f16c();
	for (uint32_t h = 0; h < 65536; h++) {
		float f = kn_fp16_to_fp32_ref((kn_fp16)h);
		double want = half_value((uint16_t)h);
		if (isnan(want)) {
			assert_true(isnan(f));
			assert_int_equal(!!signbit(f), (h >> 15) != 0);
			/* and it stays a NaN of the same sign coming back */
			kn_fp16 back = kn_fp32_to_fp16_ref(f);
			assert_int_equal(back & 0x7c00, 0x7c00);
			assert_true((back & 0x3ff) != 0);
			assert_int_equal(back & 0x8000, h & 0x8000);
			continue;
		}
		if ((double)f != want || !signbit(f) != !signbit(want))
			fail_msg("half 0x%04x: got %a want %a", h, (double)f, want);
		/* exact round trip */
		assert_int_equal(kn_fp32_to_fp16_ref(f), h);
		if (hw)
			assert_int_equal(f2u(hw_f16_to_f32((uint16_t)h)), f2u(f));
	}
}

/* One float through the reference, F16C and the double model. */
static int check_f2h(float f)
{
	kn_fp16 h = kn_fp32_to_fp16_ref(f);
	if (isnan(f))
		return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) && (h >> 15) == (f2u(f) >> 31);
	double want = half_round(f);
	double got = half_value(h);
	if (got != want || !signbit(got) != !signbit(want)) {
		print_error("float %a (0x%08x): half 0x%04x = %a, want %a\n", (double)f, f2u(f), h,
			    got, want);
		return 0;
	}
	if (have_f16c() && hw_f32_to_f16(f) != h) {
		print_error("float %a (0x%08x): ref 0x%04x, f16c 0x%04x\n", (double)f, f2u(f), h,
			    hw_f32_to_f16(f));
		return 0;
	}
	return 1;
}

static void test_fp16_encode_sweep(void **state)
{
	(void)state;
	/* Rounding to half keeps 10 of the 23 fraction bits (fewer for
	 * subnormal results); the 13 dropped bits decide. Every sign, exponent
	 * and top-10 pattern, with dropped bits at the interesting points. */
	static const uint32_t low[] = {
		0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x0800, 0x17ff,
	};
	long bad = 0;
	for (uint32_t s = 0; s < 2; s++)
		for (uint32_t e = 0; e < 256; e++)
			for (uint32_t top = 0; top < 1024; top++)
				for (size_t k = 0; k < sizeof(low) / sizeof(low[0]); k++) {
					uint32_t u = s << 31 | e << 23 | top << 13 | low[k];
					bad += !check_f2h(u2f(u));
					if (bad > 10)
						fail_msg("too many mismatches");
				}
	/* subnormal halves: ties sit at odd multiples of 2^-25 */
	for (int m = 0; m < 2048; m++) {
		bad += !check_f2h((float)ldexp(m, -25));
		bad += !check_f2h((float)ldexp(m, -26));
		bad += !check_f2h(-(float)ldexp(2 * m + 1, -26));
		bad += !check_f2h(nextafterf((float)ldexp(m, -25), 0));
		bad += !check_f2h(nextafterf((float)ldexp(m, -25), 1));
	}
	assert_int_equal(bad, 0);
}

static void test_fp16_encode_edges(void **state)
{
	(void)state;
	static const struct { float f; uint16_t h; } cases[] = {
		{ 0.0f, 0x0000 }, { -0.0f, 0x8000 }, { 1.0f, 0x3c00 }, { -2.0f, 0xc000 },
		{ 65504.0f, 0x7bff },                 /* largest half */
		{ 65519.99f, 0x7bff },                /* just below the tie: stays finite */
		{ 65520.0f, 0x7c00 },                 /* tie between 65504 and 2^16: even is inf */
		{ 65536.0f, 0x7c00 }, { FLT_MAX, 0x7c00 }, { -FLT_MAX, 0xfc00 },
		{ INFINITY, 0x7c00 }, { -INFINITY, 0xfc00 },
		{ 6.103515625e-05f, 0x0400 },         /* smallest normal 2^-14 */
		{ 6.0975551605224609375e-05f, 0x03ff }, /* largest subnormal */
		{ 5.9604644775390625e-08f, 0x0001 },  /* 2^-24, smallest subnormal */
		{ 2.98023223876953125e-08f, 0x0000 }, /* 2^-25: tie, rounds to even 0 */
		{ 2.98023259404089e-08f, 0x0001 },    /* just above 2^-25 */
		{ 8.94069671630859375e-08f, 0x0002 }, /* 1.5 * 2^-24: tie, rounds to even 2 */
		{ 1.0f + 1.0f / 2048, 0x3c00 },       /* tie below 1 + 2^-10: even is 1 */
		{ 1.0f + 3.0f / 2048, 0x3c02 },       /* tie above 1 + 2^-10: even is 1 + 2^-9 */
		{ 1e-10f, 0x0000 }, { -1e-10f, 0x8000 },
		{ 0.1f, 0x2e66 }, { 3.14159265f, 0x4248 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		kn_fp16 h = kn_fp32_to_fp16_ref(cases[i].f);
		if (h != cases[i].h)
			fail_msg("%a -> 0x%04x, want 0x%04x", (double)cases[i].f, h, cases[i].h);
		assert_true(check_f2h(cases[i].f));
	}
	/* NaNs stay NaN (quiet) with their sign */
	assert_int_equal(kn_fp32_to_fp16_ref(NAN) & 0x7e00, 0x7e00);
	assert_int_equal(kn_fp32_to_fp16_ref(-NAN) & 0x8000, 0x8000);
	assert_true(check_f2h(u2f(0x7f800001u))); /* signalling, payload in low bits only */
	assert_true(check_f2h(u2f(0xffc00000u)));
}

static void test_fp16_encode_random(void **state)
{
	(void)state;
	int n = tu_asan() ? 300000 : 2000000;
	long bad = 0;
	for (int i = 0; i < n && bad < 10; i++) {
		uint32_t u = (uint32_t)rnd();
		bad += !check_f2h(u2f(u));                          /* any float */
		bad += !check_f2h((float)ldexp(urand(), -(int)(rnd() % 30))); /* half range */
		bad += !check_f2h(urand() * 70000.0f);              /* around overflow */
	}
	assert_int_equal(bad, 0);
}

static void test_fp16_rows(void **state)
{
	(void)state;
	/* every half through the row decoder, at odd lengths and offsets */
	kn_fp16 *h = malloc(65536 * sizeof(*h) + 64);
	float *f = malloc(65536 * sizeof(*f) + 64);
	assert_true(h && f);
	for (uint32_t i = 0; i < 65536; i++)
		h[i] = (kn_fp16)i;
	kn_fp16_to_fp32_row(h, f, 65536);
	for (uint32_t i = 0; i < 65536; i++) {
		float r = kn_fp16_to_fp32_ref(h[i]);
		if (isnan(r))
			assert_true(isnan(f[i]) && !signbit(f[i]) == !signbit(r));
		else
			assert_int_equal(f2u(f[i]), f2u(r));
	}
	for (size_t n = 0; n < 40; n++)
		for (size_t off = 0; off < 3; off++) {
			float out[48];
			for (size_t j = 0; j < 48; j++)
				out[j] = -7.0f;
			kn_fp16_to_fp32_row(h + 0x3000 + off, out, n);
			for (size_t j = 0; j < n; j++)
				assert_int_equal(f2u(out[j]), f2u(kn_fp16_to_fp32_ref(h[0x3000 + off + j])));
			for (size_t j = n; j < 48; j++)
				assert_true(out[j] == -7.0f); /* nothing written past n */
		}
	/* float -> half rows: random floats incl. subnormal halves, overflow, ties */
	int total = tu_asan() ? 20000 : 200000;
	for (int i = 0; i < total; i++) {
		uint32_t u;
		switch (i % 4) {
		case 0: u = (uint32_t)rnd(); break;
		case 1: u = f2u((float)ldexp(urand(), -(int)(rnd() % 28))); break;
		case 2: u = f2u(urand() * 70000.0f); break;
		default: u = (uint32_t)(rnd() & 0xffffe000u) | 0x1000u; break; /* ties */
		}
		f[i % 65536] = u2f(u);
	}
	size_t m = total < 65536 ? (size_t)total : 65536;
	kn_fp32_to_fp16_row(f, h, m);
	for (size_t i = 0; i < m; i++) {
		kn_fp16 r = kn_fp32_to_fp16_ref(f[i]);
		if (isnan(f[i])) /* F16C keeps NaN payload bits, the reference does not */
			assert_true((h[i] & 0x7c00) == 0x7c00 && (h[i] & 0x3ff) && (h[i] >> 15) == (r >> 15));
		else if (h[i] != r)
			fail_msg("row: %a -> 0x%04x, ref 0x%04x", (double)f[i], h[i], r);
	}
	for (size_t n = 0; n < 40; n++) {
		kn_fp16 out[48];
		for (size_t j = 0; j < 48; j++)
			out[j] = 0xabcd;
		kn_fp32_to_fp16_row(f + 1, out, n);
		for (size_t j = 0; j < n; j++)
			if (!isnan(f[1 + j]))
				assert_int_equal(out[j], kn_fp32_to_fp16_ref(f[1 + j]));
		for (size_t j = n; j < 48; j++)
			assert_int_equal(out[j], 0xabcd);
	}
	free(h);
	free(f);
}

/* ------------------------------------------------------------- bf16 */

static int check_f2bf(float f)
{
	kn_bf16 b = kn_fp32_to_bf16_ref(f);
	float back = kn_bf16_to_fp32_ref(b);
	if (isnan(f))
		return isnan(back) && (b & 0x40) && (b >> 15) == (f2u(f) >> 31);
	double want = bf16_round(f);
	if ((double)back != want || !signbit(back) != !signbit(want)) {
		print_error("float %a (0x%08x): bf16 0x%04x = %a, want %a\n", (double)f, f2u(f), b,
			    (double)back, want);
		return 0;
	}
	return 1;
}

static void test_bf16(void **state)
{
	(void)state;
	/* every bf16 decodes to its bits << 16 and comes back unchanged */
	for (uint32_t b = 0; b < 65536; b++) {
		float f = kn_bf16_to_fp32_ref((kn_bf16)b);
		assert_int_equal(f2u(f), b << 16);
		kn_bf16 back = kn_fp32_to_bf16_ref(f);
		if (isnan(f))
			assert_int_equal(back, b | 0x40); /* quieted */
		else
			assert_int_equal(back, b);
	}
	/* rounding: every sign, exponent, top-7 pattern with the deciding low bits */
	static const uint32_t low[] = { 0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff };
	long bad = 0;
	for (uint32_t s = 0; s < 2; s++)
		for (uint32_t e = 0; e < 256; e++)
			for (uint32_t top = 0; top < 128; top++)
				for (size_t k = 0; k < sizeof(low) / sizeof(low[0]); k++)
					bad += !check_f2bf(u2f(s << 31 | e << 23 | top << 16 | low[k]));
	for (int i = 0; i < 200000; i++)
		bad += !check_f2bf(u2f((uint32_t)rnd()));
	assert_int_equal(bad, 0);
	/* hand-picked: ties go to even, overflow to inf */
	assert_int_equal(kn_fp32_to_bf16_ref(u2f(0x3f808000u)), 0x3f80); /* tie, even below */
	assert_int_equal(kn_fp32_to_bf16_ref(u2f(0x3f818000u)), 0x3f82); /* tie, even above */
	assert_int_equal(kn_fp32_to_bf16_ref(u2f(0x3f808001u)), 0x3f81);
	assert_int_equal(kn_fp32_to_bf16_ref(FLT_MAX), 0x7f80);
	assert_int_equal(kn_fp32_to_bf16_ref(-INFINITY), 0xff80);
	assert_int_equal(kn_fp32_to_bf16_ref(u2f(0x7f800001u)), 0x7fc0); /* sNaN -> qNaN */
	/* row decoder vs reference, odd lengths */
	kn_bf16 in[45];
	float out[48];
	for (int i = 0; i < 45; i++)
		in[i] = (kn_bf16)rnd();
	for (size_t n = 0; n < 45; n++) {
		for (size_t j = 0; j < 48; j++)
			out[j] = -3.0f;
		kn_bf16_to_fp32_row(in, out, n);
		for (size_t j = 0; j < n; j++)
			assert_int_equal(f2u(out[j]), (uint32_t)in[j] << 16);
		for (size_t j = n; j < 48; j++)
			assert_true(out[j] == -3.0f);
	}
	/* traits round trip */
	const kn_type_traits *tr = kn_traits(KN_TYPE_BF16);
	float x[8] = { 1.0f, -2.5f, 3.0e38f, 1e-40f, 0.1f, -0.0f, 65504.0f, 7.0f }, y[8];
	kn_bf16 q[8];
	tr->from_float(x, q, 8);
	tr->to_float(q, y, 8);
	for (int i = 0; i < 8; i++)
		assert_true((double)y[i] == bf16_round(x[i]));
}

/* ------------------------------------------------------- block formats */

static void test_traits(void **state)
{
	(void)state;
	static const struct { int t; const char *name; size_t bs, ts; } want[] = {
		{ KN_TYPE_F32, "f32", 1, 4 }, { KN_TYPE_F16, "f16", 1, 2 },
		{ KN_TYPE_Q4_0, "q4_0", 32, 18 }, { KN_TYPE_Q4_1, "q4_1", 32, 20 },
		{ KN_TYPE_Q8_0, "q8_0", 32, 34 }, { KN_TYPE_BF16, "bf16", 1, 2 },
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		const kn_type_traits *tr = kn_traits(want[i].t);
		assert_non_null(tr);
		assert_string_equal(tr->name, want[i].name);
		assert_int_equal(tr->block_size, want[i].bs);
		assert_int_equal(tr->type_size, want[i].ts);
		assert_non_null(tr->to_float);
		assert_non_null(tr->from_float);
		assert_int_equal(kn_row_size(want[i].t, 64), 64 / want[i].bs * want[i].ts);
	}
	/* ggml numbers we do not support, and nonsense */
	static const int no[] = { -1, 4, 5, 6, 7, 9, 10, 12, 14, 24, 28, 29, 31, 39, 1000 };
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
		assert_null(kn_traits(no[i]));
		assert_int_equal(kn_row_size(no[i], 64), 0);
	}
	assert_int_equal(kn_row_size(KN_TYPE_Q8_0, 33), 0);
	assert_int_equal(kn_row_size(KN_TYPE_Q4_0, 0), 0);
	assert_int_equal(sizeof(block_q4_0), 18);
	assert_int_equal(sizeof(block_q4_1), 20);
	assert_int_equal(sizeof(block_q8_0), 34);
	assert_int_equal(offsetof(block_q4_1, m), 2);
	assert_int_equal(offsetof(block_q8_0, qs), 2);
}

static void test_q8_0_hand(void **state)
{
	(void)state;
	/* amax 127 makes d = 127/127 = 1 (fp16 0x3c00) and id = 1, so q = roundf(x):
	 * round half AWAY from zero, as ggml's roundf does (not rint's even). */
	float x[32] = {
		127.0f, -127.0f, 63.5f, -63.5f, 0.5f, -0.5f, 1.5f, 2.5f,
		-2.5f, 0.49f, -0.51f, 100.2f, -99.7f, 0.0f, -0.0f, 126.5f,
	};
	/* x[16..31] = 16..31 - 24 = -8..7 */
	for (int j = 16; j < 32; j++)
		x[j] = (float)(j - 24);
	static const int8_t want[32] = {
		127, -127, 64, -64, 1, -1, 2, 3, -3, 0, -1, 100, -100, 0, 0, 127,
		-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7,
	};
	block_q8_0 b;
	kn_quantize_row_q8_0_ref(x, &b, 32);
	assert_int_equal(b.d, 0x3c00);
	assert_memory_equal(b.qs, want, 32);
	float y[32];
	kn_dequantize_row_q8_0(&b, y, 32);
	for (int j = 0; j < 32; j++)
		assert_true(y[j] == (float)want[j]);
	/* a zero block: d = 0, id = 0, all q 0 */
	float z[32] = { 0 };
	kn_quantize_row_q8_0_ref(z, &b, 32);
	assert_int_equal(b.d, 0);
	for (int j = 0; j < 32; j++)
		assert_int_equal(b.qs[j], 0);
	/* negative amax: d is positive, the extreme maps to -127; id is the
	 * float reciprocal of the float d, not 127/amax */
	z[5] = -2.0f;
	z[6] = 1.0f;
	kn_quantize_row_q8_0_ref(z, &b, 32);
	float d = 2.0f / 127, id = 1.0f / d;
	assert_int_equal(b.d, kn_fp32_to_fp16_ref(d));
	/* 2/127 = 1.00787 * 2^-6: exponent field -6 + 15 = 9 (0x2400), fraction
	 * 0.00787 * 1024 = 8.06 -> 8 */
	assert_int_equal(b.d, 0x2408);
	assert_int_equal(b.qs[5], -127);
	assert_int_equal(b.qs[6], (int)roundf(id));
}

static void test_q4_0_hand(void **state)
{
	(void)state;
	/* The signed value of largest magnitude is max = -8 (the first one wins
	 * a tie on magnitude, so the later +8 does not), d = max / -8 = 1
	 * (0x3c00), id = 1, q = min(15, (int8)(x + 8.5)): truncation, so a tie
	 * x = k + 0.5 goes up, and +8 clamps to 15 (dequantizes to 7). */
	float x[32] = { 0 };
	x[0] = -8.0f;  /* 0.5  -> 0 */
	x[1] = 8.0f;   /* 16.5 -> 16 -> clamped 15 */
	x[2] = 0.0f;   /* 8.5  -> 8 */
	x[3] = 0.5f;   /* 9.0  -> 9 */
	x[4] = -0.5f;  /* 8.0  -> 8 */
	x[5] = 7.0f;   /* 15.5 -> 15 */
	x[6] = -7.5f;  /* 1.0  -> 1 */
	x[7] = 2.49f;  /* 10.99 -> 10 */
	x[16] = 3.0f;  /* 11.5 -> 11 */
	x[17] = -3.0f; /* 5.5  -> 5 */
	x[31] = -1.2f; /* 7.3  -> 7 */
	/* qs[j] = q[j] | q[j + 16] << 4; zeros give q 8 */
	static const uint8_t want[16] = {
		0x00 | 0xb0, 0x0f | 0x50, 0x08 | 0x80, 0x09 | 0x80, 0x08 | 0x80, 0x0f | 0x80,
		0x01 | 0x80, 0x0a | 0x80, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x08 | 0x70,
	};
	block_q4_0 b;
	kn_quantize_row_q4_0_ref(x, &b, 32);
	assert_int_equal(b.d, 0x3c00);
	assert_memory_equal(b.qs, want, 16);
	float y[32];
	kn_dequantize_row_q4_0(&b, y, 32);
	static const float wy[32] = { -8, 7, 0, 1, 0, 7, -7, 2, 0, 0, 0, 0, 0, 0, 0, 0,
				      3, -3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1 };
	for (int j = 0; j < 32; j++)
		assert_true(y[j] == wy[j]);
	/* positive max: d = 16 / -8 = -2 (0xc000): the scale is negative and the
	 * largest value maps to q 0 */
	float p[32] = { 0 };
	p[0] = 16.0f;  /* 16 * -0.5 + 8.5 = 0.5 -> 0, dequant (0-8)*-2 = 16 */
	p[1] = -16.0f; /* 8 + 8.5 = 16.5 -> 15, dequant 7 * -2 = -14 */
	p[2] = 3.0f;   /* -1.5 + 8.5 = 7 -> 7, dequant 2 */
	kn_quantize_row_q4_0_ref(p, &b, 32);
	assert_int_equal(b.d, 0xc000);
	assert_int_equal(b.qs[0], 0x80);
	assert_int_equal(b.qs[1], 0x8f);
	assert_int_equal(b.qs[2], 0x87);
	kn_dequantize_row_q4_0(&b, y, 32);
	assert_true(y[0] == 16.0f && y[1] == -14.0f && y[2] == 2.0f && y[3] == 0.0f);
}

static void test_q4_1_hand(void **state)
{
	(void)state;
	/* min -1, max 14: d = 15 / 15 = 1 (0x3c00), m = -1 (0xbc00), id = 1,
	 * q = min(15, (int8)((x - min) * id + 0.5)): ties go up. */
	float x[32];
	for (int j = 0; j < 32; j++)
		x[j] = 3.0f; /* 4.5 -> 4 */
	x[0] = -1.0f;  /* 0.5 -> 0 */
	x[1] = 14.0f;  /* 15.5 -> 15 */
	x[2] = 0.4f;   /* 1.9 -> 1 */
	x[3] = 0.5f;   /* 2.0 -> 2 */
	x[4] = 6.49f;  /* 7.99 -> 7 */
	x[16] = -0.5f; /* 1.0 -> 1 */
	x[17] = 13.6f; /* 15.1 -> 15 */
	static const uint8_t want[16] = {
		0x10, 0xff, 0x41, 0x42, 0x47, 0x44, 0x44, 0x44,
		0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44,
	};
	block_q4_1 b;
	kn_quantize_row_q4_1_ref(x, &b, 32);
	assert_int_equal(b.d, 0x3c00);
	assert_int_equal(b.m, 0xbc00);
	assert_memory_equal(b.qs, want, 16);
	float y[32];
	kn_dequantize_row_q4_1(&b, y, 32);
	assert_true(y[0] == -1.0f && y[1] == 14.0f && y[2] == 0.0f && y[3] == 1.0f);
	assert_true(y[4] == 6.0f && y[5] == 3.0f && y[16] == 0.0f && y[17] == 14.0f);
	/* a constant block: d = 0, id = 0, everything is the min */
	for (int j = 0; j < 32; j++)
		x[j] = -2.75f;
	kn_quantize_row_q4_1_ref(x, &b, 32);
	assert_int_equal(b.d, 0);
	assert_int_equal(b.m, kn_fp32_to_fp16_ref(-2.75f));
	for (int j = 0; j < 16; j++)
		assert_int_equal(b.qs[j], 0);
	kn_dequantize_row_q4_1(&b, y, 32);
	for (int j = 0; j < 32; j++)
		assert_true(y[j] == -2.75f);
}

/* Random blocks: the stored fields follow the definition exactly, and the
 * reconstruction error stays within half a step (plus the fp16 rounding of
 * the scale / min), except where ggml's formats clamp. */
static void test_blocks_random(void **state)
{
	(void)state;
	enum { NB = 64, N = NB * 32 };
	float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
	block_q8_0 *q8 = malloc(NB * sizeof(*q8));
	block_q4_0 *q40 = malloc(NB * sizeof(*q40));
	block_q4_1 *q41 = malloc(NB * sizeof(*q41));
	assert_true(x && y && q8 && q40 && q41);
	int rounds = tu_asan() ? 20 : 200;
	long clamped = 0;
	for (int r = 0; r < rounds; r++) {
		float scale = (float)ldexp(1.0, (int)(rnd() % 24) - 16);
		float shift = r % 3 == 0 ? urand() * scale * 10 : 0;
		for (int i = 0; i < N; i++)
			x[i] = wrand() * scale + shift;
		if (r % 5 == 1) /* some blocks all equal, some with a single nonzero */
			for (int i = 0; i < 32; i++)
				x[i] = scale, x[32 + i] = i == 7 ? -scale : 0;

		/* q8_0 */
		kn_quantize_row_q8_0_ref(x, q8, N);
		kn_dequantize_row_q8_0(q8, y, N);
		for (int b = 0; b < NB; b++) {
			float amax = 0;
			for (int j = 0; j < 32; j++)
				amax = fmaxf(amax, fabsf(x[b * 32 + j]));
			float d = amax / 127, id = d ? 1.0f / d : 0.0f;
			assert_int_equal(q8[b].d, kn_fp32_to_fp16_ref(d));
			float d16 = kn_fp16_to_fp32_ref(q8[b].d);
			for (int j = 0; j < 32; j++) {
				float v = x[b * 32 + j];
				assert_int_equal(q8[b].qs[j], (int)roundf(v * id));
				float tol = d / 2 + 127 * fabsf(d - d16) + amax * 1e-6f;
				assert_true(fabsf(v - y[b * 32 + j]) <= tol);
			}
		}

		/* q4_0 */
		kn_quantize_row_q4_0_ref(x, q40, N);
		kn_dequantize_row_q4_0(q40, y, N);
		for (int b = 0; b < NB; b++) {
			float amax = 0, max = 0;
			for (int j = 0; j < 32; j++)
				if (fabsf(x[b * 32 + j]) > amax)
					amax = fabsf(x[b * 32 + j]), max = x[b * 32 + j];
			float d = max / -8, id = d ? 1.0f / d : 0.0f;
			assert_int_equal(q40[b].d, kn_fp32_to_fp16_ref(d));
			float d16 = fabsf(kn_fp16_to_fp32_ref(q40[b].d)), ad = fabsf(d);
			for (int j = 0; j < 32; j++) {
				float v = x[b * 32 + j];
				int q = (int)(v * id + 8.5f);
				int want = q > 15 ? 15 : q;
				int got = j < 16 ? q40[b].qs[j] & 15 : q40[b].qs[j - 16] >> 4;
				assert_int_equal(got, want);
				assert_true(got >= 0);
				/* values on the far side of the max within (7.5, 8] steps clamp
				 * to 7 steps: error up to one step there */
				float step_err = q > 15 ? ad : ad / 2;
				clamped += q > 15;
				float tol = step_err + 8 * fabsf(ad - d16) + amax * 1e-6f;
				assert_true(fabsf(v - y[b * 32 + j]) <= tol);
			}
		}

		/* q4_1 */
		kn_quantize_row_q4_1_ref(x, q41, N);
		kn_dequantize_row_q4_1(q41, y, N);
		for (int b = 0; b < NB; b++) {
			float mn = FLT_MAX, mx = -FLT_MAX;
			for (int j = 0; j < 32; j++) {
				mn = fminf(mn, x[b * 32 + j]);
				mx = fmaxf(mx, x[b * 32 + j]);
			}
			float d = (mx - mn) / 15, id = d ? 1.0f / d : 0.0f;
			assert_int_equal(q41[b].d, kn_fp32_to_fp16_ref(d));
			assert_int_equal(q41[b].m, kn_fp32_to_fp16_ref(mn));
			float d16 = kn_fp16_to_fp32_ref(q41[b].d), m16 = kn_fp16_to_fp32_ref(q41[b].m);
			for (int j = 0; j < 32; j++) {
				float v = x[b * 32 + j];
				int q = (int)((v - mn) * id + 0.5f);
				int got = j < 16 ? q41[b].qs[j] & 15 : q41[b].qs[j - 16] >> 4;
				assert_int_equal(got, q > 15 ? 15 : q);
				float tol = d / 2 + fabsf(mn - m16) + 15 * fabsf(d - d16) +
					    (fabsf(mn) + fabsf(mx)) * 1e-6f;
				assert_true(fabsf(v - y[b * 32 + j]) <= tol);
			}
		}

		/* the traits table dispatches to the same functions */
		const kn_type_traits *tr = kn_traits(KN_TYPE_Q4_1);
		block_q4_1 *alt = malloc(NB * sizeof(*alt));
		assert_non_null(alt);
		tr->from_float(x, alt, N);
		assert_memory_equal(alt, q41, NB * sizeof(*alt));
		float *y2 = malloc(N * sizeof(float));
		assert_non_null(y2);
		tr->to_float(alt, y2, N);
		assert_memory_equal(y2, y, N * sizeof(float));
		free(y2);
		free(alt);
	}
	assert_true(clamped > 0); /* the clamped case really occurred */
	free(x);
	free(y);
	free(q8);
	free(q40);
	free(q41);
}

/* fp16 and f32 through the traits table. */
static void test_float_traits(void **state)
{
	(void)state;
	float x[37], y[37];
	kn_fp16 h[37];
	for (int i = 0; i < 37; i++)
		x[i] = wrand() * 100;
	const kn_type_traits *tr = kn_traits(KN_TYPE_F16);
	tr->from_float(x, h, 37);
	tr->to_float(h, y, 37);
	for (int i = 0; i < 37; i++) {
		assert_int_equal(h[i], kn_fp32_to_fp16_ref(x[i]));
		assert_true((double)y[i] == half_round(x[i]));
	}
	tr = kn_traits(KN_TYPE_F32);
	float z[37];
	tr->from_float(x, z, 37);
	assert_memory_equal(z, x, sizeof(x));
	tr->to_float(z, y, 37);
	assert_memory_equal(y, x, sizeof(x));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fp16_decode_all),
		cmocka_unit_test(test_fp16_encode_sweep),
		cmocka_unit_test(test_fp16_encode_edges),
		cmocka_unit_test(test_fp16_encode_random),
		cmocka_unit_test(test_fp16_rows),
		cmocka_unit_test(test_bf16),
		cmocka_unit_test(test_traits),
		cmocka_unit_test(test_q8_0_hand),
		cmocka_unit_test(test_q4_0_hand),
		cmocka_unit_test(test_q4_1_hand),
		cmocka_unit_test(test_blocks_random),
		cmocka_unit_test(test_float_traits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
