/* SPDX-License-Identifier: MIT */
/*
 * kernels/: the C references of the dtype casts and of the LoRA merge,
 * checked against values this file computes on its own (formats decoded
 * from sign/exponent/mantissa with ldexp, rounding by searching the
 * format's table of values in double precision), the embedded fatbin, and,
 * when they are there, numpy (f16) and a GPU (the kernels against the C
 * references, bit for bit).
 */
#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/kernels.h"
#include "runtime/vram.h"
#include "tests/testlib.h"

extern char **environ;

/* Check's ck_assert* record a checkpoint (a write to the parent) on every
 * call; these only talk to it when they fail, which keeps the exhaustive
 * loops below fast. */
#define T_CHECK(c, ...) do { if (!(c)) ck_abort_msg(__VA_ARGS__); } while (0)
#define T_ASSERT(c) T_CHECK(c, "Assertion '%s' failed", #c)
#define T_UEQ(a, b)                                                                         \
	do {                                                                                \
		const uintmax_t a_ = (a), b_ = (b);                                         \
		T_CHECK(a_ == b_, "'%s == %s' failed: 0x%jx != 0x%jx", #a, #b, a_, b_);     \
	} while (0)
#define T_IEQ(a, b)                                                                         \
	do {                                                                                \
		const intmax_t a_ = (a), b_ = (b);                                          \
		T_CHECK(a_ == b_, "'%s == %s' failed: %jd != %jd", #a, #b, a_, b_);         \
	} while (0)

/* ======================================================================
 * An independent model of the formats
 * ====================================================================== */

struct tfmt {
	const char *name;
	uint32_t dtype;
	int ebits, mbits, bias;
	int fn;           /* e4m3fn: no Inf, NaN only with all magnitude bits set */
	int sbit;         /* ebits + mbits */
	uint32_t maxfin;  /* magnitude bits of the largest finite value */
	double *grid;     /* grid[i]: value of magnitude bits i, 0..maxfin + 1,
			     the last being the next step beyond the range */
};

enum { T_E4M3, T_E5M2, T_F16, T_BF16, T_NF };
static struct tfmt F[T_NF] = {
	{ "e4m3", VRAM_DTYPE_F8_E4M3, 4, 3, 7, 1, 0, 0, NULL },
	{ "e5m2", VRAM_DTYPE_F8_E5M2, 5, 2, 15, 0, 0, 0, NULL },
	{ "f16", VRAM_DTYPE_F16, 5, 10, 15, 0, 0, 0, NULL },
	{ "bf16", VRAM_DTYPE_BF16, 8, 7, 127, 0, 0, 0, NULL },
};

#define T_NAN 0xFFFFFFFFu /* t_round: "a NaN with the input's sign" */

static uint32_t f2u(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static float u2f(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* Value of magnitude bits a read as a finite number, specials ignored. */
static double t_mag(const struct tfmt *t, uint32_t a)
{
	const uint32_t ef = a >> t->mbits, m = a & ((1u << t->mbits) - 1);
	if (ef == 0)
		return ldexp((double)m, 1 - t->bias - t->mbits);
	return ldexp((double)(m + (1u << t->mbits)), (int)ef - t->bias - t->mbits);
}

static int t_isnan(const struct tfmt *t, uint32_t bits)
{
	const uint32_t a = bits & ((1u << t->sbit) - 1);
	const uint32_t efmax = (1u << t->ebits) - 1;
	if (t->fn)
		return a == (1u << t->sbit) - 1;
	return (a >> t->mbits) == efmax && (a & ((1u << t->mbits) - 1));
}

/* The value of bits in format t. */
static double t_value(const struct tfmt *t, uint32_t bits)
{
	const int neg = (bits >> t->sbit) & 1;
	const uint32_t a = bits & ((1u << t->sbit) - 1);
	double v;
	if (t_isnan(t, bits))
		v = NAN;
	else if (!t->fn && (a >> t->mbits) == (1u << t->ebits) - 1)
		v = INFINITY;
	else
		v = t_mag(t, a);
	return neg ? -v : v;
}

static void t_init(void)
{
	for (int i = 0; i < T_NF; i++) {
		struct tfmt *t = &F[i];
		t->sbit = t->ebits + t->mbits;
		/* e4m3fn: only all-ones is NaN; IEEE-like: the top exponent */
		t->maxfin = t->fn ? (1u << t->sbit) - 2
				  : ((((1u << t->ebits) - 2) << t->mbits) | ((1u << t->mbits) - 1));
		t->grid = malloc((t->maxfin + 2) * sizeof(double));
		for (uint32_t a = 0; a <= t->maxfin + 1; a++)
			t->grid[a] = t_mag(t, a);
	}
}

/* x rounded to nearest, ties to even, into format t; overflow to Inf (NaN
 * for e4m3fn), or to the largest finite value with sat.  Exact: every
 * difference below is exact in double. */
static uint32_t t_round(const struct tfmt *t, double x, int sat)
{
	const uint32_t sign = signbit(x) ? 1u << t->sbit : 0;
	const uint32_t ovf = sat ? t->maxfin : t->fn ? T_NAN : t->maxfin + 1;
	const double a = fabs(x);
	uint32_t m;

	if (isnan(x))
		return T_NAN;
	if (a >= t->grid[t->maxfin + 1]) {
		m = ovf;
	} else {
		uint32_t lo = 0, hi = t->maxfin;
		while (lo < hi) {
			uint32_t mid = (lo + hi + 1) / 2;
			if (t->grid[mid] <= a)
				lo = mid;
			else
				hi = mid - 1;
		}
		const double dl = a - t->grid[lo], dh = t->grid[lo + 1] - a;
		m = (dl < dh || (dl == dh && !(lo & 1))) ? lo : lo + 1;
		if (m > t->maxfin)
			m = ovf;
	}
	return m == T_NAN ? T_NAN : sign | m;
}

/* Largest magnitude bits whose value is <= a (a finite, below the grid's
 * end). */
static uint32_t t_floor(const struct tfmt *t, double a)
{
	uint32_t lo = 0, hi = t->maxfin + 1;
	while (lo < hi) {
		uint32_t mid = (lo + hi + 1) / 2;
		if (t->grid[mid] <= a)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

static size_t dt_width(uint32_t dtype)
{
	return dtype == VRAM_DTYPE_F32 ? 4 : (dtype == VRAM_DTYPE_F16 || dtype == VRAM_DTYPE_BF16) ? 2 : 1;
}

static uint32_t get_elem(const void *p, size_t i, size_t w)
{
	return w == 1 ? ((const uint8_t *)p)[i] : w == 2 ? ((const uint16_t *)p)[i] : ((const uint32_t *)p)[i];
}

static void set_elem(void *p, size_t i, size_t w, uint32_t v)
{
	if (w == 1)
		((uint8_t *)p)[i] = (uint8_t)v;
	else if (w == 2)
		((uint16_t *)p)[i] = (uint16_t)v;
	else
		((uint32_t *)p)[i] = v;
}

/* vk_cast_flags of n elements given as bit patterns in src (uint32 each);
 * the results, widened, into out. */
static void t_cast(const uint32_t *src, uint32_t sdt, uint32_t *out, uint32_t ddt, size_t n, uint32_t flags)
{
	const size_t sw = dt_width(sdt), dw = dt_width(ddt);
	void *s = malloc(n * sw + 1), *d = malloc(n * dw + 1);
	ck_assert_ptr_nonnull(s);
	ck_assert_ptr_nonnull(d);
	for (size_t i = 0; i < n; i++)
		set_elem(s, i, sw, src[i]);
	T_IEQ(vk_cast_flags(s, sdt, d, ddt, n, flags), 0);
	for (size_t i = 0; i < n; i++)
		out[i] = get_elem(d, i, dw);
	free(s);
	free(d);
}

/* got (format t) is what rounding x should give: want from t_round. */
static void t_expect(const struct tfmt *t, uint32_t got, uint32_t want, double x, const char *what, size_t i)
{
	if (want == T_NAN) {
		T_CHECK(t_isnan(t, got) && ((got >> t->sbit) & 1) == (uint32_t)!!signbit(x),
			      "%s[%zu]: %s of %a: got 0x%x, want NaN", what, i, t->name, x, got);
	} else {
		T_CHECK(got == want, "%s[%zu]: %s of %a (%.9g): got 0x%x, want 0x%x",
			      what, i, t->name, x, x, got, want);
	}
}

static uint64_t rng_state = 0x853C49E6748FEA9Bull;
static uint64_t rng(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1Dull;
}

static float rng_float(float lo, float hi)
{
	return lo + (hi - lo) * (float)((rng() >> 40) * 0x1p-24);
}

/* ======================================================================
 * fp8 decode, every bit pattern
 * ====================================================================== */

START_TEST(fp8_decode_all)
{
	for (int fi = T_E4M3; fi <= T_E5M2; fi++) {
		const struct tfmt *t = &F[fi];
		uint32_t src[256], o32[256], o16[256], ob16[256];
		int nnan = 0, ninf = 0;

		for (uint32_t i = 0; i < 256; i++)
			src[i] = i;
		t_cast(src, t->dtype, o32, VRAM_DTYPE_F32, 256, 0);
		t_cast(src, t->dtype, o16, VRAM_DTYPE_F16, 256, 0);
		t_cast(src, t->dtype, ob16, VRAM_DTYPE_BF16, 256, 0);
		for (uint32_t i = 0; i < 256; i++) {
			const double v = t_value(t, i);
			const float f = u2f(o32[i]);
			if (isnan(v)) {
				nnan++;
				T_CHECK(isnan(f) && !!signbit(f) == !!(i & 0x80), "%s 0x%02x -> f32 0x%08x", t->name, i, o32[i]);
			} else {
				ninf += !!isinf(v);
				T_CHECK((double)f == v && !!signbit(f) == !!signbit(v),
					      "%s 0x%02x -> f32 %a, want %a", t->name, i, f, v);
			}
			t_expect(&F[T_F16], o16[i], t_round(&F[T_F16], v, 0), v, "to f16", i);
			t_expect(&F[T_BF16], ob16[i], t_round(&F[T_BF16], v, 0), v, "to bf16", i);
			/* the scalar helpers are the same arithmetic */
			const float h = fi == T_E4M3 ? vk_e4m3_to_f32((uint8_t)i) : vk_e5m2_to_f32((uint8_t)i);
			T_UEQ(f2u(h), o32[i]);
		}
		T_IEQ(nnan, (fi == T_E4M3 ? 2 : 6));
		T_IEQ(ninf, (fi == T_E4M3 ? 0 : 2));
	}

	/* the landmarks, spelled out */
	T_ASSERT(vk_e4m3_to_f32(0x7E) == 448.0f);
	T_ASSERT(vk_e4m3_to_f32(0xFE) == -448.0f);
	T_ASSERT(vk_e4m3_to_f32(0x78) == 256.0f); /* exponent 15 is a binade */
	T_ASSERT(vk_e4m3_to_f32(0x38) == 1.0f);
	T_ASSERT(vk_e4m3_to_f32(0x08) == 0x1p-6f);
	T_ASSERT(vk_e4m3_to_f32(0x07) == 0x1.cp-7f);
	T_ASSERT(vk_e4m3_to_f32(0x01) == 0x1p-9f);
	T_ASSERT(isnan(vk_e4m3_to_f32(0x7F)) && isnan(vk_e4m3_to_f32(0xFF)));
	T_UEQ(f2u(vk_e4m3_to_f32(0xFF)), 0xFFC00000u);
	T_ASSERT(vk_e5m2_to_f32(0x7B) == 57344.0f);
	T_ASSERT(vk_e5m2_to_f32(0x3C) == 1.0f);
	T_ASSERT(vk_e5m2_to_f32(0x01) == 0x1p-16f);
	T_ASSERT(vk_e5m2_to_f32(0x04) == 0x1p-14f);
	T_ASSERT(isinf(vk_e5m2_to_f32(0x7C)) && vk_e5m2_to_f32(0xFC) < 0);
	T_ASSERT(isnan(vk_e5m2_to_f32(0x7D)) && isnan(vk_e5m2_to_f32(0xFF)));
	T_UEQ(f2u(vk_e5m2_to_f32(0x80)), 0x80000000u); /* -0 */
}
END_TEST

START_TEST(fp8_round_trips)
{
	static const uint32_t via[] = { VRAM_DTYPE_F16, VRAM_DTYPE_BF16, VRAM_DTYPE_F32 };
	for (int fi = T_E4M3; fi <= T_E5M2; fi++) {
		const struct tfmt *t = &F[fi];
		uint32_t src[256], mid[256], back[256];
		for (uint32_t i = 0; i < 256; i++)
			src[i] = i;
		for (size_t v = 0; v < 3; v++) {
			t_cast(src, t->dtype, mid, via[v], 256, 0);
			t_cast(mid, via[v], back, t->dtype, 256, 0);
			for (uint32_t i = 0; i < 256; i++) {
				/* NaN comes back as the format's NaN, 0x7F | sign */
				const uint32_t want = t_isnan(t, i) ? (i & 0x80) | 0x7F : i;
				T_CHECK(back[i] == want, "%s 0x%02x via %u: 0x%02x", t->name, i, via[v], back[i]);
			}
		}
	}
}
END_TEST

/* ======================================================================
 * f16 / bf16 <-> f32
 * ====================================================================== */

START_TEST(half_widen_all)
{
	static uint32_t src[65536], o32[65536], back[65536];
	for (int fi = T_F16; fi <= T_BF16; fi++) {
		const struct tfmt *t = &F[fi];
		const uint32_t quiet = 1u << (t->mbits - 1);
		for (uint32_t i = 0; i < 65536; i++)
			src[i] = i;
		t_cast(src, t->dtype, o32, VRAM_DTYPE_F32, 65536, 0);
		t_cast(o32, VRAM_DTYPE_F32, back, t->dtype, 65536, 0);
		for (uint32_t i = 0; i < 65536; i++) {
			const double v = t_value(t, i);
			const float f = u2f(o32[i]);
			if (isnan(v)) {
				/* payload kept when widening; narrowing sets the
				 * quiet bit and keeps the rest */
				T_CHECK(isnan(f) && (o32[i] >> 31) == (i >> 15), "%s 0x%04x", t->name, i);
				T_CHECK(back[i] == (i | quiet), "%s NaN 0x%04x -> 0x%04x", t->name, i, back[i]);
			} else {
				T_CHECK((double)f == v && !!signbit(f) == !!signbit(v), "%s 0x%04x: %a want %a",
					      t->name, i, f, v);
				T_CHECK(back[i] == i, "%s 0x%04x -> f32 -> 0x%04x", t->name, i, back[i]);
			}
			const float h = fi == T_F16 ? vk_f16_to_f32((uint16_t)i) : vk_bf16_to_f32((uint16_t)i);
			T_UEQ(f2u(h), o32[i]);
		}
	}
	T_ASSERT(vk_f16_to_f32(0x7BFF) == 65504.0f);
	T_ASSERT(vk_f16_to_f32(0x0001) == 0x1p-24f);
	T_ASSERT(vk_f16_to_f32(0x0400) == 0x1p-14f);
	T_ASSERT(vk_bf16_to_f32(0x7F7F) == 0x1.fep127f);
	T_ASSERT(vk_bf16_to_f32(0x0001) == 0x1p-133f);
}
END_TEST

/* Every pair of neighbours of f16 and bf16: the values themselves, the
 * midpoints (exact in f32), and one f32 ulp either side of them. */
START_TEST(f32_to_half_ties)
{
	for (int fi = T_F16; fi <= T_BF16; fi++) {
		const struct tfmt *t = &F[fi];
		for (int sat = 0; sat <= 1; sat++) {
			const size_t n = (size_t)(t->maxfin + 1) * 8;
			uint32_t *in = malloc(n * 4), *out = malloc(n * 4);
			double *x = malloc(n * sizeof(double));
			size_t k = 0;
			for (uint32_t b = 0; b <= t->maxfin; b++) {
				const double mid = (t->grid[b] + t->grid[b + 1]) / 2;
				const float mf = (float)mid;
				T_ASSERT((double)mf == mid);
				const float cand[4] = { (float)t->grid[b], mf, nextafterf(mf, 0), nextafterf(mf, INFINITY) };
				for (int c = 0; c < 4; c++) {
					x[k] = cand[c];
					in[k++] = f2u(cand[c]);
					x[k] = -cand[c];
					in[k++] = f2u(-cand[c]);
				}
			}
			T_UEQ(k, n);
			t_cast(in, VRAM_DTYPE_F32, out, t->dtype, n, sat ? VK_CAST_SATFINITE : 0);
			for (size_t i = 0; i < n; i++) {
				const uint32_t want = t_round(t, x[i], sat);
				t_expect(t, out[i], want, x[i], sat ? "ties sat" : "ties", i);
				/* which is the documented rule, not just the model's */
				const uint32_t b = (uint32_t)(i / 8), c = (uint32_t)(i % 8) / 2;
				uint32_t rule = c == 0 ? b : c == 1 ? ((b & 1) ? b + 1 : b) : c == 2 ? b : b + 1;
				if (rule > t->maxfin)
					rule = sat ? t->maxfin : t->maxfin + 1; /* Inf */
				T_UEQ(out[i] & ((1u << t->sbit) - 1), rule);
				if (fi == T_F16 && !sat)
					T_UEQ(vk_f32_to_f16(u2f(in[i])), out[i]);
				if (fi == T_BF16 && !sat)
					T_UEQ(vk_f32_to_bf16(u2f(in[i])), out[i]);
			}
			free(in);
			free(out);
			free(x);
		}
	}
	/* landmarks */
	T_UEQ(vk_f32_to_f16(65504.0f), 0x7BFF);
	T_UEQ(vk_f32_to_f16(65519.99f), 0x7BFF);
	T_UEQ(vk_f32_to_f16(65520.0f), 0x7C00); /* tie to even: Inf */
	T_UEQ(vk_f32_to_f16(-1e10f), 0xFC00);
	T_UEQ(vk_f32_to_f16(0x1p-25f), 0x0000);  /* tie to even 0 */
	T_UEQ(vk_f32_to_f16(0x1.8p-24f), 0x0002); /* tie to even 2 */
	T_UEQ(vk_f32_to_f16(0x1p-26f), 0x0000);
	T_UEQ(vk_f32_to_f16(-0x1p-30f), 0x8000);
	T_UEQ(vk_f32_to_f16(0x1.ffcp-15f), 0x0400); /* subnormal rounds up to normal */
	T_UEQ(vk_f32_to_f16(1.0f + 0x1p-11f), 0x3C00); /* tie, even is 1.0 */
	T_UEQ(vk_f32_to_f16(1.0f + 0x1.8p-10f), 0x3C02); /* tie, even is 1+2^-9 */
	T_UEQ(vk_f32_to_bf16(1.0f + 0x1p-8f), 0x3F80);
	T_UEQ(vk_f32_to_bf16(1.0f + 0x1.8p-7f), 0x3F82);
	T_UEQ(vk_f32_to_bf16(0x1.ffp127f), 0x7F80); /* tie above max: Inf */
	T_UEQ(vk_f32_to_bf16(0x1p-149f), 0x0000);
	T_UEQ(vk_f32_to_bf16(0x1p-133f), 0x0001);
	T_UEQ(vk_f32_to_bf16(0x1p-134f), 0x0000);
	T_UEQ(vk_f32_to_bf16(0x1.0008p-134f), 0x0001);
}
END_TEST

/* ======================================================================
 * Encodes into every narrow format, from f32 (sampled), f16 and bf16
 * (exhaustively)
 * ====================================================================== */

START_TEST(f32_to_narrow_random)
{
	const size_t n = 1u << 19;
	uint32_t *in = malloc(n * 4), *out = malloc(n * 4);
	for (int fi = 0; fi < T_NF; fi++) {
		const struct tfmt *t = &F[fi];
		const int emin = 1 - t->bias - t->mbits - 3;
		const int emax = (1 << t->ebits) - t->bias + 1;
		for (size_t i = 0; i < n; i++) {
			if (i & 1) {
				in[i] = (uint32_t)(rng() >> 32); /* every class of f32 */
			} else {
				/* within (and just beyond) the format's range */
				const int e = emin + (int)(rng() % (uint64_t)(emax - emin + 1));
				const int ef = e + 127 < 1 ? 0 : e + 127 > 254 ? 254 : e + 127;
				in[i] = ((uint32_t)(rng() & 1) << 31) | ((uint32_t)ef << 23) | (uint32_t)(rng() & 0x7FFFFF);
			}
		}
		for (int sat = 0; sat <= 1; sat++) {
			t_cast(in, VRAM_DTYPE_F32, out, t->dtype, n, sat ? VK_CAST_SATFINITE : 0);
			for (size_t i = 0; i < n; i++) {
				const double x = u2f(in[i]);
				t_expect(t, out[i], t_round(t, x, sat), x, "f32 random", i);
			}
		}
		/* the scalar helpers agree with the array path */
		for (size_t i = 0; i < 4096; i++) {
			const float x = u2f(in[i]);
			uint32_t h = 0;
			switch (fi) {
			case T_E4M3: h = vk_f32_to_e4m3(x, 0); break;
			case T_E5M2: h = vk_f32_to_e5m2(x, 0); break;
			case T_F16:  h = vk_f32_to_f16(x); break;
			case T_BF16: h = vk_f32_to_bf16(x); break;
			}
			t_expect(t, h, t_round(t, x, 0), x, "scalar", i);
		}
	}
	free(in);
	free(out);
}
END_TEST

START_TEST(half_to_narrow_all)
{
	static uint32_t src[65536], out[65536];
	for (int si = T_F16; si <= T_BF16; si++) {
		const struct tfmt *s = &F[si];
		for (uint32_t i = 0; i < 65536; i++)
			src[i] = i;
		for (int di = 0; di < T_NF; di++) {
			if (di == si)
				continue;
			const struct tfmt *t = &F[di];
			for (int sat = 0; sat <= 1; sat++) {
				t_cast(src, s->dtype, out, t->dtype, 65536, sat ? VK_CAST_SATFINITE : 0);
				for (uint32_t i = 0; i < 65536; i++) {
					const double x = t_value(s, i);
					t_expect(t, out[i], t_round(t, x, sat), x, s->name, i);
				}
			}
		}
	}
}
END_TEST

/* The midpoints between neighbouring fp8 values, from f32, f16 and bf16
 * (all three hold them exactly), and their neighbours in those formats. */
START_TEST(fp8_halfway)
{
	for (int fi = T_E4M3; fi <= T_E5M2; fi++) {
		const struct tfmt *t = &F[fi];
		for (uint32_t b = 0; b <= t->maxfin; b++) {
			const double mid = (t->grid[b] + t->grid[b + 1]) / 2;
			uint32_t even = (b & 1) ? b + 1 : b;
			if (even > t->maxfin)
				even = t->fn ? 0x7F : t->maxfin + 1; /* NaN (e4m3fn) or Inf */
			/* f32 */
			const float mf = (float)mid;
			T_ASSERT((double)mf == mid);
			const uint32_t f32in[6] = { f2u(mf), f2u(nextafterf(mf, 0)), f2u(nextafterf(mf, INFINITY)),
						    f2u(-mf), f2u((float)t->grid[b]), f2u(-(float)t->grid[b]) };
			uint32_t out[6];
			t_cast(f32in, VRAM_DTYPE_F32, out, t->dtype, 6, 0);
			T_CHECK(out[0] == even, "%s mid %g: 0x%x want 0x%x", t->name, mid, out[0], even);
			T_UEQ(out[1], b);
			T_UEQ(out[2], b + 1 > t->maxfin ? (t->fn ? 0x7Fu : b + 1) : b + 1);
			T_UEQ(out[3], even | 0x80);
			T_UEQ(out[4], b);
			T_UEQ(out[5], b | 0x80);
			/* f16 and bf16: the same midpoint and its neighbours there */
			for (int hi = T_F16; hi <= T_BF16; hi++) {
				const struct tfmt *h = &F[hi];
				const uint32_t hm = t_round(h, mid, 0);
				T_ASSERT(t_value(h, hm) == mid);
				const uint32_t hin[4] = { hm, hm | (1u << h->sbit), hm + 1, hm - 1 };
				uint32_t hout[4];
				t_cast(hin, h->dtype, hout, t->dtype, 4, 0);
				T_CHECK(hout[0] == even, "%s mid %g from %s: 0x%x", t->name, mid, h->name, hout[0]);
				T_UEQ(hout[1], even | 0x80);
				T_UEQ(hout[2], b + 1 > t->maxfin ? (t->fn ? 0x7Fu : b + 1) : b + 1);
				T_UEQ(hout[3], b);
			}
		}
	}
	/* e4m3fn's edge, as PyTorch: 464 is the tie between 448 and 480 */
	T_UEQ(vk_f32_to_e4m3(464.0f, 0), 0x7E);
	T_UEQ(vk_f32_to_e4m3(nextafterf(464.0f, 1e9f), 0), 0x7F);
	T_UEQ(vk_f32_to_e4m3(480.0f, 0), 0x7F);
	T_UEQ(vk_f32_to_e4m3(-1e6f, 0), 0xFF);
	T_UEQ(vk_f32_to_e4m3(-1e6f, 1), 0xFE);
	T_UEQ(vk_f32_to_e4m3(0x1p-10f, 0), 0x00); /* tie to even 0 */
	T_UEQ(vk_f32_to_e4m3(0x1.000002p-10f, 0), 0x01);
	T_UEQ(vk_f32_to_e4m3(-0x1p-12f, 0), 0x80);
	T_UEQ(vk_f32_to_e5m2(57344.0f, 0), 0x7B);
	T_UEQ(vk_f32_to_e5m2(61439.996f, 0), 0x7B);
	T_UEQ(vk_f32_to_e5m2(61440.0f, 0), 0x7C); /* tie to even: Inf */
	T_UEQ(vk_f32_to_e5m2(61440.0f, 1), 0x7B);
	T_UEQ(vk_f32_to_e5m2(0x1p-17f, 0), 0x00);
	T_UEQ(vk_f32_to_e5m2(0x1.8p-16f, 0), 0x02);
}
END_TEST

/* ======================================================================
 * NaN and Inf, from and to every format
 * ====================================================================== */

START_TEST(nan_inf)
{
	/* f32 specials into each narrow format: [input][e4m3, e5m2, f16, bf16] */
	static const struct {
		uint32_t in;
		uint32_t want[4];
		uint32_t sat[4];
	} cases[] = {
		{ 0x7F800000, { 0x7F, 0x7C, 0x7C00, 0x7F80 }, { 0x7E, 0x7B, 0x7BFF, 0x7F7F } }, /* +Inf */
		{ 0xFF800000, { 0xFF, 0xFC, 0xFC00, 0xFF80 }, { 0xFE, 0xFB, 0xFBFF, 0xFF7F } }, /* -Inf */
		{ 0x7FC00000, { 0x7F, 0x7F, 0x7E00, 0x7FC0 }, { 0x7F, 0x7F, 0x7E00, 0x7FC0 } }, /* qNaN */
		{ 0xFFC00000, { 0xFF, 0xFF, 0xFE00, 0xFFC0 }, { 0xFF, 0xFF, 0xFE00, 0xFFC0 } }, /* -qNaN */
		{ 0x7F800001, { 0x7F, 0x7F, 0x7E00, 0x7FC0 }, { 0x7F, 0x7F, 0x7E00, 0x7FC0 } }, /* sNaN: quieted */
		{ 0x7FA00000, { 0x7F, 0x7F, 0x7F00, 0x7FE0 }, { 0x7F, 0x7F, 0x7F00, 0x7FE0 } }, /* payload kept */
		{ 0x7F7FFFFF, { 0x7F, 0x7C, 0x7C00, 0x7F80 }, { 0x7E, 0x7B, 0x7BFF, 0x7F7F } }, /* FLT_MAX */
		{ 0x80000000, { 0x80, 0x80, 0x8000, 0x8000 }, { 0x80, 0x80, 0x8000, 0x8000 } }, /* -0 */
		{ 0x00000001, { 0x00, 0x00, 0x0000, 0x0000 }, { 0x00, 0x00, 0x0000, 0x0000 } }, /* min f32 */
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		for (int fi = 0; fi < T_NF; fi++) {
			uint32_t out;
			t_cast(&cases[c].in, VRAM_DTYPE_F32, &out, F[fi].dtype, 1, 0);
			T_CHECK(out == cases[c].want[fi], "0x%08x -> %s: 0x%x", cases[c].in, F[fi].name, out);
			t_cast(&cases[c].in, VRAM_DTYPE_F32, &out, F[fi].dtype, 1, VK_CAST_SATFINITE);
			T_CHECK(out == cases[c].sat[fi], "0x%08x -> %s sat: 0x%x", cases[c].in, F[fi].name, out);
		}
	}
	/* the NaNs and Infs of each format into every other (and f32) */
	const uint32_t dts[5] = { VRAM_DTYPE_F8_E4M3, VRAM_DTYPE_F8_E5M2, VRAM_DTYPE_F16, VRAM_DTYPE_BF16, VRAM_DTYPE_F32 };
	for (int si = 0; si < T_NF; si++) {
		const struct tfmt *s = &F[si];
		const uint32_t top = (1u << (s->sbit + 1));
		for (uint32_t i = 0; i < top; i++) {
			const double v = t_value(s, i);
			if (!isnan(v) && !isinf(v))
				continue;
			for (int d = 0; d < 5; d++) {
				uint32_t out;
				t_cast(&i, s->dtype, &out, dts[d], 1, 0);
				if (d == 4) {
					const float f = u2f(out);
					T_ASSERT(isnan(v) ? isnan(f) : f == (float)v);
					T_IEQ(!!signbit(f), !!signbit(v));
				} else if (d == si) {
					T_UEQ(out, i);
				} else {
					t_expect(&F[d], out, t_round(&F[d], v, 0), v, s->name, i);
				}
			}
		}
	}
}
END_TEST

/* ======================================================================
 * API: pairs, errors, names, in place
 * ====================================================================== */

START_TEST(cast_api)
{
	static const uint32_t ok[] = { VRAM_DTYPE_F8_E4M3, VRAM_DTYPE_F8_E5M2, VRAM_DTYPE_F16, VRAM_DTYPE_BF16, VRAM_DTYPE_F32 };
	static const uint32_t bad[] = { VRAM_DTYPE_I8, VRAM_DTYPE_U8, VRAM_DTYPE_F8_E4M3FNUZ, VRAM_DTYPE_F8_E5M2FNUZ,
					VRAM_DTYPE_F8_E8M0, VRAM_DTYPE_F64, VRAM_DTYPE_I32, VRAM_DTYPE_F4, VRAM_DTYPE_COUNT, 1000 };
	uint8_t a[16] = { 0 }, b[64] = { 0 };

	for (size_t i = 0; i < 5; i++) {
		for (size_t j = 0; j < 5; j++) {
			T_IEQ(vk_cast_supported(ok[i], ok[j]), 1);
			T_IEQ(vk_cast(a, ok[i], b, ok[j], 4), 0);
			const char *name = vk_cast_kernel_name(ok[i], ok[j]);
			if (i == j) {
				ck_assert_ptr_null(name);
			} else {
				ck_assert_ptr_nonnull(name);
				T_ASSERT(strncmp(name, "vk_cast_", 8) == 0);
				for (size_t k = 0; k < 5; k++)
					for (size_t l = 0; l < 5; l++)
						if ((k != i || l != j) && k != l)
							ck_assert_str_ne(name, vk_cast_kernel_name(ok[k], ok[l]));
			}
		}
		for (size_t j = 0; j < sizeof(bad) / sizeof(bad[0]); j++) {
			T_IEQ(vk_cast_supported(ok[i], bad[j]), 0);
			T_IEQ(vk_cast(a, ok[i], b, bad[j], 4), -EINVAL);
			T_IEQ(vk_cast(a, bad[j], b, ok[i], 4), -EINVAL);
			ck_assert_ptr_null(vk_cast_kernel_name(bad[j], ok[i]));
		}
	}
	ck_assert_str_eq(vk_cast_kernel_name(VRAM_DTYPE_F8_E4M3, VRAM_DTYPE_BF16), "vk_cast_e4m3_bf16");
	ck_assert_str_eq(vk_cast_kernel_name(VRAM_DTYPE_F32, VRAM_DTYPE_F16), "vk_cast_f32_f16");
	T_IEQ(vk_cast_flags(a, VRAM_DTYPE_F16, b, VRAM_DTYPE_BF16, 4, 1u << 5), -EINVAL);
	T_IEQ(vk_cast(NULL, VRAM_DTYPE_F16, b, VRAM_DTYPE_BF16, 4), -EINVAL);
	T_IEQ(vk_cast(a, VRAM_DTYPE_F16, NULL, VRAM_DTYPE_BF16, 4), -EINVAL);
	T_IEQ(vk_cast(NULL, VRAM_DTYPE_F16, NULL, VRAM_DTYPE_BF16, 0), 0);
	T_IEQ(vk_cast(a, VRAM_DTYPE_F16, b, VRAM_DTYPE_F32, UINT64_MAX / 2), -EOVERFLOW);

	/* equal dtypes copy, NaN payloads included */
	uint16_t h[4] = { 0x7D01, 0x3C00, 0xFC00, 0x0001 }, h2[4];
	T_IEQ(vk_cast(h, VRAM_DTYPE_F16, h2, VRAM_DTYPE_F16, 4), 0);
	T_ASSERT(memcmp(h, h2, sizeof(h)) == 0);

	/* in place, same width: f16 -> bf16 over the same buffer */
	uint16_t buf[3] = { 0x3C00, 0xC000, 0x7BFF };
	T_IEQ(vk_cast(buf, VRAM_DTYPE_F16, buf, VRAM_DTYPE_BF16, 3), 0);
	T_UEQ(buf[0], 0x3F80);
	T_UEQ(buf[1], 0xC000);
	T_UEQ(buf[2], 0x4780); /* 65504 = 0x1.ffcp15 -> 0x1p16 */

	/* format codes */
	T_IEQ(vk_dtype_fmt(VRAM_DTYPE_F8_E4M3), VK_FMT_E4M3);
	T_IEQ(vk_dtype_fmt(VRAM_DTYPE_F32), VK_FMT_F32);
	T_IEQ(vk_dtype_fmt(VRAM_DTYPE_U16), -EINVAL);

	/* launch geometry */
	T_UEQ(vk_cast_grid(0), 1);
	T_UEQ(vk_cast_grid(1), 1);
	T_UEQ(vk_cast_grid(VK_CAST_BLOCK + 1), 2);
	T_UEQ(vk_cast_grid(UINT64_MAX / 2), VK_CAST_MAX_GRID);
	uint32_t gx, gy;
	vk_lora_grid(0, 0, &gx, &gy);
	T_ASSERT(gx == 1 && gy == 1);
	vk_lora_grid(33, 64, &gx, &gy);
	T_ASSERT(gx == 2 && gy == 2);
	vk_lora_grid(UINT32_MAX, 1, &gx, &gy);
	T_ASSERT(gx == 1 && gy == 65535);
}
END_TEST

/* ======================================================================
 * Stochastic rounding
 * ====================================================================== */

/* Rounds x (f32) n times into format t through vk_lora_merge (w = 0,
 * rank 1: each element is x, each with its own random number), and checks
 * that every result is one of x's two neighbours and that the mean is x
 * within 6 standard deviations of a mean of n draws. */
static void sr_check(const struct tfmt *t, float x, uint64_t seed, size_t n)
{
	const double a = fabs((double)x);
	const uint32_t lo = t_floor(t, a), hi = lo + 1;
	const double q = t->grid[hi] - t->grid[lo];
	const double p = (a - t->grid[lo]) / q;
	const uint32_t sign = signbit(x) ? 1u << t->sbit : 0;
	const size_t w = dt_width(t->dtype);
	void *wt = calloc(n, w);
	float *down = malloc(n * sizeof(float));
	const float up = 1.0f;

	for (size_t i = 0; i < n; i++)
		down[i] = x;
	/* a zero weight of the right sign: -0 + x is x for every x */
	for (size_t i = 0; i < n; i++)
		set_elem(wt, i, w, sign);
	T_IEQ(vk_lora_merge(wt, t->dtype, &up, down, 1, (uint32_t)n, 1, 1.0f, seed), 0);

	size_t k = 0;
	double sum = 0;
	for (size_t i = 0; i < n; i++) {
		const uint32_t got = get_elem(wt, i, w);
		T_CHECK(got == (sign | lo) || (p > 0 && got == (sign | hi)),
			      "%s SR of %a: 0x%x, neighbours 0x%x 0x%x", t->name, x, got, sign | lo, sign | hi);
		k += got == (sign | hi);
		sum += fabs(t_value(t, got));
	}
	const double mean = sum / (double)n;
	const double sd = q * sqrt(p * (1 - p) / (double)n);
	T_CHECK(fabs(mean - a) <= 6 * sd + q / (double)n,
		      "%s SR of %a: mean %a, |mean - x| = %g > 6 sd = %g (p %g, up %zu of %zu)",
		      t->name, x, mean, fabs(mean - a), 6 * sd, p, k, n);
	if (p == 0)
		T_UEQ(k, 0);
	free(wt);
	free(down);
}

START_TEST(sr_unbiased)
{
	static const double fracs[] = { 0.5, 0.25, 0.75, 0.9, 0.013, 1.0 / 1024, 0.0 };
	for (int fi = 0; fi < T_NF; fi++) {
		const struct tfmt *t = &F[fi];
		const uint32_t mmask = (1u << t->mbits) - 1;
		/* subnormal, top subnormal (crosses into the normals), a binade
		 * crossing, mid-range, just below the largest */
		const uint32_t bs[] = { 1, mmask, (3u << t->mbits) | mmask, t->maxfin / 2 + 3, t->maxfin - 1 };
		for (size_t bi = 0; bi < sizeof(bs) / sizeof(bs[0]); bi++) {
			for (size_t fr = 0; fr < sizeof(fracs) / sizeof(fracs[0]); fr++) {
				const uint32_t b = bs[bi];
				const float x = (float)(t->grid[b] + fracs[fr] * (t->grid[b + 1] - t->grid[b]));
				sr_check(t, x, 42 + fi, 1u << 15);
				sr_check(t, -x, 7 * bi + fr, 1u << 15);
			}
		}
	}
	/* over seeds rather than elements: element 5 of many tensors */
	for (int fi = 0; fi < T_NF; fi++) {
		const struct tfmt *t = &F[fi];
		const uint32_t b = t->maxfin / 3;
		const double a = t->grid[b] + 0.3 * (t->grid[b + 1] - t->grid[b]);
		const float x = (float)a;
		const double p = ((double)x - t->grid[b]) / (t->grid[b + 1] - t->grid[b]);
		const uint32_t fmt = (uint32_t)vk_dtype_fmt(t->dtype);
		const size_t n = 1u << 17;
		size_t k = 0;
		for (uint64_t seed = 0; seed < n; seed++) {
			const uint32_t got = vk_encode_bits(f2u(x), fmt, VK_MODE_SR, vk_sr_rand(seed, 5));
			T_ASSERT(got == b || got == b + 1);
			k += got == b + 1;
		}
		const double sd = sqrt(p * (1 - p) * (double)n);
		T_CHECK(fabs((double)k - p * (double)n) <= 6 * sd + 1, "%s: %zu of %zu up, p %g", t->name, k, n, p);
	}
}
END_TEST

/* The documented threshold, exactly: away from zero iff rnd < frac * 2^64,
 * frac being x's position between its neighbours (floored to 2^-64). */
START_TEST(sr_threshold)
{
	for (int fi = 0; fi < T_NF; fi++) {
		const struct tfmt *t = &F[fi];
		const uint32_t fmt = (uint32_t)vk_dtype_fmt(t->dtype);
		for (int i = 0; i < 40000; i++) {
			/* exponents from f32's subnormals (more than 64 bits below
			 * the quantum of every format) to f16's top binade */
			const int e = -149 + (int)(rng() % 165u);
			const float x = ldexpf(1.0f + (float)((rng() >> 41) * 0x1p-23), e);
			const double a = x;
			if (!(a < t->grid[t->maxfin]) || x == 0)
				continue;
			const uint32_t lo = t_floor(t, a);
			const double p = (a - t->grid[lo]) / (t->grid[lo + 1] - t->grid[lo]); /* exact */
			const uint64_t frac = (uint64_t)floor(ldexp(p, 64));
			const uint32_t f = f2u(x);
			T_CHECK(vk_encode_bits(f, fmt, VK_MODE_SR, frac) == lo, "%s %a rnd = frac", t->name, x);
			T_UEQ(vk_encode_bits(f, fmt, VK_MODE_SR, UINT64_MAX), lo);
			if (frac) {
				T_CHECK(vk_encode_bits(f, fmt, VK_MODE_SR, frac - 1) == lo + 1,
					"%s %a rnd = frac - 1 (frac 0x%jx)", t->name, x, (uintmax_t)frac);
				T_UEQ(vk_encode_bits(f, fmt, VK_MODE_SR, 0), lo + 1);
			} else {
				T_UEQ(vk_encode_bits(f, fmt, VK_MODE_SR, 0), lo);
			}
		}
	}
}
END_TEST

START_TEST(sr_edges)
{
	const float up = 1.0f;
	/* finite overflow saturates; Inf and NaN as the RNE cast */
	struct {
		int fi;
		float x;
		uint32_t want;
	} cases[] = {
		{ T_E4M3, 450.0f, 0x7E }, { T_E4M3, 479.0f, 0x7E }, { T_E4M3, -1e30f, 0xFE },
		{ T_E4M3, INFINITY, 0x7F }, { T_E4M3, NAN, T_NAN },
		{ T_E5M2, 60000.0f, 0x7B }, { T_E5M2, 1e9f, 0x7B }, { T_E5M2, -INFINITY, 0xFC },
		{ T_F16, 65510.0f, 0x7BFF }, { T_F16, 1e30f, 0x7BFF }, { T_F16, INFINITY, 0x7C00 },
		{ T_F16, NAN, T_NAN }, { T_BF16, NAN, T_NAN },
		{ T_BF16, FLT_MAX, 0x7F7F }, { T_BF16, -FLT_MAX, 0xFF7F }, { T_BF16, INFINITY, 0x7F80 },
		{ T_F16, 1.0f, 0x3C00 }, { T_E4M3, 0.0f, 0x00 }, { T_BF16, 0x1p-133f, 0x0001 },
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		const struct tfmt *t = &F[cases[c].fi];
		const size_t n = 256, w = dt_width(t->dtype);
		void *wt = calloc(n, w);
		float down[256];
		for (size_t i = 0; i < n; i++)
			down[i] = cases[c].x;
		T_IEQ(vk_lora_merge(wt, t->dtype, &up, down, 1, (uint32_t)n, 1, 1.0f, c), 0);
		for (size_t i = 0; i < n; i++) {
			const uint32_t got = get_elem(wt, i, w);
			if (cases[c].want == T_NAN)
				T_CHECK(t_isnan(t, got), "%s SR of NaN: 0x%x", t->name, got);
			else
				T_CHECK(got == cases[c].want, "%s SR of %a: 0x%x want 0x%x",
					      t->name, cases[c].x, got, cases[c].want);
		}
		free(wt);
	}

	/* deterministic per seed, different across seeds */
	const size_t n = 4096;
	uint16_t *w1 = calloc(n, 2), *w2 = calloc(n, 2), *w3 = calloc(n, 2);
	float *down = malloc(n * sizeof(float));
	for (size_t i = 0; i < n; i++)
		down[i] = 1.0f + 0x1p-11f; /* an f16 tie: p = 1/2 */
	T_IEQ(vk_lora_merge(w1, VRAM_DTYPE_F16, &up, down, 1, (uint32_t)n, 1, 1.0f, 99), 0);
	T_IEQ(vk_lora_merge(w2, VRAM_DTYPE_F16, &up, down, 1, (uint32_t)n, 1, 1.0f, 99), 0);
	T_IEQ(vk_lora_merge(w3, VRAM_DTYPE_F16, &up, down, 1, (uint32_t)n, 1, 1.0f, 100), 0);
	T_ASSERT(memcmp(w1, w2, n * 2) == 0);
	size_t diff = 0;
	for (size_t i = 0; i < n; i++)
		diff += w1[i] != w3[i];
	/* half of the pairs differ; 6 sd of a binomial(4096, 1/2) is 192 */
	T_CHECK(diff > n / 2 - 192 && diff < n / 2 + 192, "%zu of %zu differ", diff, n);
	free(w1);
	free(w2);
	free(w3);
	free(down);

	/* the generator: a function of (seed, idx) only, all bits used */
	T_UEQ(vk_sr_rand(1, 2), vk_sr_rand(1, 2));
	ck_assert_uint_ne(vk_sr_rand(1, 2), vk_sr_rand(2, 1));
	ck_assert_uint_ne(vk_sr_rand(0, 0), vk_sr_rand(0, 1));
	uint64_t ones = 0;
	for (uint64_t i = 0; i < 1024; i++)
		ones += (uint64_t)__builtin_popcountll(vk_sr_rand(3, i));
	T_ASSERT(ones > 32768 - 6 * 128 && ones < 32768 + 6 * 128); /* 65536 bits: sd 128 */
}
END_TEST

/* ======================================================================
 * LoRA merge against a double-precision computation
 * ====================================================================== */

static void lora_check(int fi, uint32_t rows, uint32_t cols, uint32_t rank, float scale)
{
	const int is32 = fi < 0;
	const struct tfmt *t = is32 ? NULL : &F[fi];
	const uint32_t dtype = is32 ? VRAM_DTYPE_F32 : t->dtype;
	const size_t w = dt_width(dtype), nw = (size_t)rows * cols;
	float *up = malloc((size_t)rows * rank * 4), *down = malloc((size_t)rank * cols * 4);
	void *wt = malloc(nw * w), *w0 = malloc(nw * w);

	for (size_t i = 0; i < (size_t)rows * rank; i++)
		up[i] = rng_float(-1, 1);
	for (size_t i = 0; i < (size_t)rank * cols; i++)
		down[i] = rng_float(-1, 1);
	for (size_t i = 0; i < nw; i++) {
		const float v = rng_float(-2, 2);
		set_elem(wt, i, w, is32 ? f2u(v) : t_round(t, v, 0));
	}
	memcpy(w0, wt, nw * w);
	T_IEQ(vk_lora_merge(wt, dtype, up, down, rows, cols, rank, scale, 1234), 0);

	for (uint32_t r = 0; r < rows; r++) {
		for (uint32_t c = 0; c < cols; c++) {
			const size_t i = (size_t)r * cols + c;
			const double wv = is32 ? (double)u2f(get_elem(w0, i, w)) : t_value(t, get_elem(w0, i, w));
			double exact = 0, mag = 0;
			float acc = 0.0f;
			for (uint32_t k = 0; k < rank; k++) {
				const double pr = (double)up[(size_t)r * rank + k] * down[(size_t)k * cols + c];
				exact += pr;
				mag += fabs(pr);
				acc = fmaf(up[(size_t)r * rank + k], down[(size_t)k * cols + c], acc);
			}
			const double ref = wv + (double)scale * exact;
			/* f32 with fused steps: rank + 1 roundings of at most
			 * 2^-24 of the running magnitude */
			const double bound = (rank + 2) * 0x1p-24 * (fabs(wv) + fabs(scale) * mag);
			const float v = fmaf(scale, acc, (float)wv);
			const uint32_t got = get_elem(wt, i, w);
			if (is32) {
				T_CHECK(got == f2u(v), "f32 [%u,%u]: %a want %a", r, c, u2f(got), v);
				T_ASSERT(fabs((double)u2f(got) - ref) <= bound);
				continue;
			}
			/* stochastic: one of the two neighbours of the f32 value */
			const double av = fabs((double)v);
			const uint32_t lo = t_floor(t, av);
			const uint32_t sign = signbit(v) ? 1u << t->sbit : 0;
			T_CHECK(got == (sign | lo) || (t->grid[lo] != av && got == (sign | (lo + 1))),
				      "%s [%u,%u]: 0x%x for %a (0x%x or next)", t->name, r, c, got, v, sign | lo);
			const double q = t->grid[lo + 1] - t->grid[lo];
			T_ASSERT(fabs(t_value(t, got) - ref) <= q + bound);
		}
	}
	free(up);
	free(down);
	free(wt);
	free(w0);
}

START_TEST(lora_vs_double)
{
	static const uint32_t ranks[] = { 1, 7, 40 };
	for (int fi = -1; fi < T_NF; fi++)
		for (size_t r = 0; r < 3; r++)
			lora_check(fi, 37, 53, ranks[r], r == 1 ? -0.375f : 0.8f);
	lora_check(T_BF16, 1, 1000, 16, 1.0f);
	lora_check(-1, 64, 64, 64, 0.01f);
}
END_TEST

START_TEST(lora_unbiased_sum)
{
	/* Many weights, each merged with a small delta: the sum of the stored
	 * bf16 values matches the sum of the f32 values to within 6 sd of the
	 * rounding noise, which round-to-nearest would not do for deltas
	 * below half an ulp (it would drop them all). */
	const uint32_t rows = 256, cols = 256, rank = 4;
	const size_t n = (size_t)rows * cols;
	uint16_t *wt = malloc(n * 2);
	float *up = malloc(rows * rank * 4), *down = malloc(rank * cols * 4);
	for (size_t i = 0; i < n; i++)
		wt[i] = 0x3F80; /* 1.0 */
	for (size_t i = 0; i < (size_t)rows * rank; i++)
		up[i] = rng_float(0, 1);
	for (size_t i = 0; i < (size_t)rank * cols; i++)
		down[i] = rng_float(0, 1);
	const float scale = 0x1p-10f; /* deltas up to 2^-8 = half a bf16 ulp at 1 */
	T_IEQ(vk_lora_merge(wt, VRAM_DTYPE_BF16, up, down, rows, cols, rank, scale, 5), 0);
	double want = 0, got = 0, var = 0;
	for (uint32_t r = 0; r < rows; r++) {
		for (uint32_t c = 0; c < cols; c++) {
			float acc = 0;
			for (uint32_t k = 0; k < rank; k++)
				acc = fmaf(up[r * rank + k], down[k * cols + c], acc);
			const double v = fmaf(scale, acc, 1.0f);
			const double p = (v - 1.0) / 0x1p-7;
			want += v;
			var += p * (1 - p) * 0x1p-14;
			got += t_value(&F[T_BF16], wt[(size_t)r * cols + c]);
		}
	}
	T_CHECK(fabs(got - want) <= 6 * sqrt(var), "sum %f want %f (sd %g)", got, want, sqrt(var));
	T_ASSERT(want - (double)n > 20 * sqrt(var)); /* what RNE would lose: far above the noise */
	free(wt);
	free(up);
	free(down);
}
END_TEST

START_TEST(lora_api)
{
	float up[4] = { 1, 2, 3, 4 }, down[4] = { 1, 0, 0, 1 }, w[4] = { 0 };
	T_IEQ(vk_lora_merge(w, VRAM_DTYPE_F32, up, down, 2, 2, 2, 1.0f, 0), 0);
	T_ASSERT(w[0] == 1 && w[1] == 2 && w[2] == 3 && w[3] == 4);
	T_IEQ(vk_lora_merge(w, VRAM_DTYPE_F32, up, down, 2, 2, 0, 1.0f, 0), -EINVAL);
	T_IEQ(vk_lora_merge(w, VRAM_DTYPE_F32, up, down, 2, 2, 2, NAN, 0), -EINVAL);
	T_IEQ(vk_lora_merge(w, VRAM_DTYPE_F32, up, down, 2, 2, 2, INFINITY, 0), -EINVAL);
	T_IEQ(vk_lora_merge(w, VRAM_DTYPE_I8, up, down, 2, 2, 2, 1.0f, 0), -EINVAL);
	T_IEQ(vk_lora_merge(w, VRAM_DTYPE_F64, up, down, 2, 2, 2, 1.0f, 0), -EINVAL);
	T_IEQ(vk_lora_merge(NULL, VRAM_DTYPE_F32, up, down, 2, 2, 2, 1.0f, 0), -EINVAL);
	T_IEQ(vk_lora_merge(w, VRAM_DTYPE_F32, NULL, down, 2, 2, 2, 1.0f, 0), -EINVAL);
	T_IEQ(vk_lora_merge(NULL, VRAM_DTYPE_F32, NULL, NULL, 0, 5, 2, 1.0f, 0), 0);
	ck_assert_str_eq(vk_lora_kernel_name(VRAM_DTYPE_BF16), "vk_lora_merge_bf16");
	ck_assert_str_eq(vk_lora_kernel_name(VRAM_DTYPE_F8_E4M3), "vk_lora_merge_e4m3");
	ck_assert_ptr_null(vk_lora_kernel_name(VRAM_DTYPE_F64));
	/* a scale of 0 leaves every weight as it was */
	uint8_t e[3] = { 0x3A, 0xC1, 0x7E };
	T_IEQ(vk_lora_merge(e, VRAM_DTYPE_F8_E4M3, up, down, 1, 3, 1, 0.0f, 0), 0);
	T_ASSERT(e[0] == 0x3A && e[1] == 0xC1 && e[2] == 0x7E);
}
END_TEST

/* ======================================================================
 * The fatbin
 * ====================================================================== */

static void all_kernel_names(const char **names, size_t *n)
{
	static const uint32_t dts[] = { VRAM_DTYPE_F8_E4M3, VRAM_DTYPE_F8_E5M2, VRAM_DTYPE_F16, VRAM_DTYPE_BF16, VRAM_DTYPE_F32 };
	*n = 0;
	for (size_t i = 0; i < 5; i++) {
		for (size_t j = 0; j < 5; j++)
			if (i != j)
				names[(*n)++] = vk_cast_kernel_name(dts[i], dts[j]);
		names[(*n)++] = vk_lora_kernel_name(dts[i]);
	}
}

START_TEST(fatbin)
{
	if (!vk_fatbin_nvcc[0]) {
		T_UEQ(vk_fatbin_size, 0);
		printf("test-kernels: fatbin check skipped: libvram was built without nvcc "
		       "(the C references do the work)\n");
		return;
	}
	printf("test-kernels: fatbin %zu bytes from nvcc %s\n", vk_fatbin_size, vk_fatbin_nvcc);
	ck_assert_uint_gt(vk_fatbin_size, 1024);
	T_UEQ((uintptr_t)vk_fatbin % 64, 0);
	/* the fatbin header: magic 0xBA55ED50, little-endian */
	T_ASSERT(vk_fatbin[0] == 0x50 && vk_fatbin[1] == 0xED && vk_fatbin[2] == 0x55 && vk_fatbin[3] == 0xBA);
	const char *names[32];
	size_t n;
	all_kernel_names(names, &n);
	T_UEQ(n, 25);
	for (size_t i = 0; i < n; i++) {
		/* extern "C": the names as they are, NUL-terminated in the ELF
		 * string tables */
		T_CHECK(memmem(vk_fatbin, vk_fatbin_size, names[i], strlen(names[i]) + 1) != NULL,
			      "%s not in the fatbin", names[i]);
	}
	/* SASS for both architectures and PTX to JIT on newer ones */
	T_ASSERT(memmem(vk_fatbin, vk_fatbin_size, ".target sm_90", 13) != NULL);
	T_ASSERT(memmem(vk_fatbin, vk_fatbin_size, ".entry vk_lora_merge_f16", 24) != NULL);
}
END_TEST

/* ======================================================================
 * numpy: f32 -> f16 on a large random set, f16 -> f32 on all of them
 * ====================================================================== */

START_TEST(numpy_f16)
{
	static const char script[] =
		"import sys\n"
		"try:\n"
		"    import numpy as np\n"
		"except ImportError:\n"
		"    sys.exit(77)\n"
		"with np.errstate(all='ignore'):\n"
		"    np.fromfile(sys.argv[1], dtype=np.float32).astype(np.float16).tofile(sys.argv[2])\n"
		"    np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)"
		".astype(np.float32).tofile(sys.argv[3])\n";
	const char *py = t_python();
	char *dir = t_tmpdir();
	ck_assert_ptr_nonnull(dir);
	char in[4200], o16[4200], o32[4200];
	snprintf(in, sizeof(in), "%s/in.f32", dir);
	snprintf(o16, sizeof(o16), "%s/out.f16", dir);
	snprintf(o32, sizeof(o32), "%s/out.f32", dir);

	const size_t n = 1u << 20;
	uint32_t *x = malloc(n * 4);
	for (size_t i = 0; i < n; i++) {
		if (i % 3 == 0) {
			x[i] = (uint32_t)(rng() >> 32);
		} else {
			/* f16's range, subnormals and overflow included; some
			 * exact ties */
			const uint32_t ef = 127 - 27 + (uint32_t)(rng() % 46);
			uint32_t m = (uint32_t)rng() & 0x7FFFFF;
			if (i % 3 == 2)
				m = (m & ~0x1FFFu) | 0x1000u; /* an f16 tie */
			x[i] = ((uint32_t)(rng() & 1) << 31) | (ef << 23) | m;
		}
	}
	FILE *f = fopen(in, "wb");
	ck_assert_ptr_nonnull(f);
	T_UEQ(fwrite(x, 4, n, f), n);
	fclose(f);

	char *argv[] = { (char *)py, (char *)"-c", (char *)script, in, o16, o32, NULL };
	pid_t pid;
	int st;
	if (posix_spawnp(&pid, py, NULL, NULL, argv, environ) != 0 || waitpid(pid, &st, 0) != pid ||
	    !WIFEXITED(st) || WEXITSTATUS(st) == 77 || WEXITSTATUS(st) == 127) {
		printf("test-kernels: numpy cross-check skipped: no python with numpy (%s)\n", py);
		free(x);
		t_rmtree(dir);
		return;
	}
	T_IEQ(WEXITSTATUS(st), 0);

	uint16_t *h = malloc(n * 2), *mine = malloc(n * 2);
	float *w = malloc(65536 * 4);
	f = fopen(o16, "rb");
	ck_assert_ptr_nonnull(f);
	T_UEQ(fread(h, 2, n, f), n);
	fclose(f);
	f = fopen(o32, "rb");
	ck_assert_ptr_nonnull(f);
	T_UEQ(fread(w, 4, 65536, f), 65536);
	fclose(f);

	T_IEQ(vk_cast(x, VRAM_DTYPE_F32, mine, VRAM_DTYPE_F16, n), 0);
	for (size_t i = 0; i < n; i++) {
		if (isnan(u2f(x[i])))
			T_ASSERT(t_isnan(&F[T_F16], mine[i]) && t_isnan(&F[T_F16], h[i]));
		else
			T_CHECK(mine[i] == h[i], "f16 of %a: 0x%04x, numpy 0x%04x", u2f(x[i]), mine[i], h[i]);
	}
	for (uint32_t i = 0; i < 65536; i++) {
		const float v = vk_f16_to_f32((uint16_t)i);
		if (isnan(w[i]))
			T_ASSERT(isnan(v));
		else
			T_CHECK(f2u(v) == f2u(w[i]), "0x%04x: %a, numpy %a", i, v, w[i]);
	}
	free(x);
	free(h);
	free(mine);
	free(w);
	t_rmtree(dir);
}
END_TEST

/* ======================================================================
 * GPU: the kernels against the C references, bit for bit (skipped without
 * a driver and a device)
 * ====================================================================== */

typedef unsigned long long t_dptr;
struct t_cu {
	void *lib;
	int (*Init)(unsigned);
	int (*DriverGetVersion)(int *);
	int (*DeviceGetCount)(int *);
	int (*DeviceGet)(int *, int);
	int (*DeviceGetAttribute)(int *, int, int);
	int (*DevicePrimaryCtxRetain)(void **, int);
	int (*DevicePrimaryCtxRelease)(int);
	int (*CtxSetCurrent)(void *);
	int (*CtxSynchronize)(void);
	int (*ModuleLoadData)(void **, const void *);
	int (*ModuleUnload)(void *);
	int (*ModuleGetFunction)(void **, void *, const char *);
	int (*MemAlloc)(t_dptr *, size_t);
	int (*MemFree)(t_dptr);
	int (*MemcpyHtoD)(t_dptr, const void *, size_t);
	int (*MemcpyDtoH)(void *, t_dptr, size_t);
	int (*LaunchKernel)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
			    void *, void **, void **);
	int dev;
	void *ctx;
	void *mod;
};

#define CU_OK(call) do { int r_ = (call); T_CHECK(r_ == 0, "%s: CUresult %d", #call, r_); } while (0)

/* Opens the driver, device 0 and the fatbin; NULL, or why the GPU test
 * cannot run here. */
static const char *t_cu_open(struct t_cu *cu)
{
	static char why[160];
	memset(cu, 0, sizeof(*cu));
	if (!vk_fatbin_size)
		return "libvram was built without nvcc";
	cu->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!cu->lib)
		return "no libcuda.so.1 (no NVIDIA driver)";
#define SYM(m, s) do { *(void **)&cu->m = dlsym(cu->lib, s); if (!cu->m) return "libcuda lacks " s; } while (0)
	SYM(Init, "cuInit");
	SYM(DriverGetVersion, "cuDriverGetVersion");
	SYM(DeviceGetCount, "cuDeviceGetCount");
	SYM(DeviceGet, "cuDeviceGet");
	SYM(DeviceGetAttribute, "cuDeviceGetAttribute");
	SYM(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
	SYM(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
	SYM(CtxSetCurrent, "cuCtxSetCurrent");
	SYM(CtxSynchronize, "cuCtxSynchronize");
	SYM(ModuleLoadData, "cuModuleLoadData");
	SYM(ModuleUnload, "cuModuleUnload");
	SYM(ModuleGetFunction, "cuModuleGetFunction");
	SYM(MemAlloc, "cuMemAlloc_v2");
	SYM(MemFree, "cuMemFree_v2");
	SYM(MemcpyHtoD, "cuMemcpyHtoD_v2");
	SYM(MemcpyDtoH, "cuMemcpyDtoH_v2");
	SYM(LaunchKernel, "cuLaunchKernel");
#undef SYM
	int r, count = 0, ver = 0, major = 0, minor = 0;
	if ((r = cu->Init(0)) != 0) {
		snprintf(why, sizeof(why), "cuInit failed (CUresult %d)", r);
		return why;
	}
	if (cu->DeviceGetCount(&count) != 0 || count < 1)
		return "no CUDA device";
	/* the toolkit that built the fatbin ("release 13.0, ...") needs a
	 * driver of at least its version */
	unsigned tk_major = 0, tk_minor = 0;
	const char *rel = strstr(vk_fatbin_nvcc, "release ");
	if (rel)
		sscanf(rel, "release %u.%u", &tk_major, &tk_minor);
	cu->DriverGetVersion(&ver);
	if ((unsigned)ver < tk_major * 1000 + tk_minor * 10) {
		snprintf(why, sizeof(why), "the driver supports CUDA %d.%d, the fatbin was built by CUDA %u.%u",
			 ver / 1000, ver % 1000 / 10, tk_major, tk_minor);
		return why;
	}
	if (cu->DeviceGet(&cu->dev, 0) != 0)
		return "cuDeviceGet failed";
	cu->DeviceGetAttribute(&major, 75, cu->dev); /* COMPUTE_CAPABILITY_MAJOR */
	cu->DeviceGetAttribute(&minor, 76, cu->dev);
	if (major < 8) {
		snprintf(why, sizeof(why), "device 0 is sm_%d%d; the fatbin needs sm_80 or newer", major, minor);
		return why;
	}
	if (cu->DevicePrimaryCtxRetain(&cu->ctx, cu->dev) != 0 || cu->CtxSetCurrent(cu->ctx) != 0)
		return "cannot make a context on device 0";
	printf("test-kernels: GPU sm_%d%d, driver %d\n", major, minor, ver);
	return NULL;
}

static void t_cu_close(struct t_cu *cu)
{
	if (cu->mod)
		cu->ModuleUnload(cu->mod);
	if (cu->ctx)
		cu->DevicePrimaryCtxRelease(cu->dev);
}

START_TEST(gpu_matches_reference)
{
	struct t_cu cu;
	const char *why = t_cu_open(&cu);
	if (why) {
		printf("test-kernels: GPU check skipped: %s\n", why);
		return;
	}
	CU_OK(cu.ModuleLoadData(&cu.mod, vk_fatbin));

	static const uint32_t dts[] = { VRAM_DTYPE_F8_E4M3, VRAM_DTYPE_F8_E5M2, VRAM_DTYPE_F16, VRAM_DTYPE_BF16, VRAM_DTYPE_F32 };
	const uint64_t n = (1u << 20) + 77;
	uint8_t *src = malloc(n * 4), *want = malloc(n * 4), *got = malloc(n * 4);
	for (uint64_t i = 0; i < n; i++)
		((uint32_t *)src)[i] = (uint32_t)(rng() >> 32);
	t_dptr dsrc, ddst;
	CU_OK(cu.MemAlloc(&dsrc, n * 4));
	CU_OK(cu.MemAlloc(&ddst, n * 4));
	CU_OK(cu.MemcpyHtoD(dsrc, src, n * 4));

	for (size_t s = 0; s < 5; s++) {
		for (size_t d = 0; d < 5; d++) {
			if (s == d)
				continue;
			for (uint32_t flags = 0; flags <= VK_CAST_SATFINITE; flags++) {
				const char *name = vk_cast_kernel_name(dts[s], dts[d]);
				void *fn;
				CU_OK(cu.ModuleGetFunction(&fn, cu.mod, name));
				struct vk_cast_params p = { .src = dsrc, .dst = ddst, .n = n, .flags = flags };
				void *args[] = { &p.src, &p.dst, &p.n, &p.flags };
				/* the full grid, and a small one that must loop */
				const unsigned grid = flags ? 3 : vk_cast_grid(n);
				CU_OK(cu.LaunchKernel(fn, grid, 1, 1, VK_CAST_BLOCK, 1, 1, 0, NULL, args, NULL));
				CU_OK(cu.CtxSynchronize());
				const size_t bytes = n * dt_width(dts[d]);
				CU_OK(cu.MemcpyDtoH(got, ddst, bytes));
				T_IEQ(vk_cast_flags(src, dts[s], want, dts[d], n, flags), 0);
				T_CHECK(memcmp(got, want, bytes) == 0, "%s flags %u differs from the C reference",
					      name, flags);
			}
		}
	}
	CU_OK(cu.MemFree(dsrc));
	CU_OK(cu.MemFree(ddst));

	static const uint32_t shapes[][3] = { { 300, 517, 33 }, { 64, 64, 64 }, { 1, 1000, 1 }, { 97, 3, 70 } };
	for (size_t sh = 0; sh < 4; sh++) {
		const uint32_t rows = shapes[sh][0], cols = shapes[sh][1], rank = shapes[sh][2];
		const size_t nw = (size_t)rows * cols;
		float *up = malloc((size_t)rows * rank * 4), *down = malloc((size_t)rank * cols * 4);
		for (size_t i = 0; i < (size_t)rows * rank; i++)
			up[i] = rng_float(-1, 1);
		for (size_t i = 0; i < (size_t)rank * cols; i++)
			down[i] = rng_float(-1, 1);
		t_dptr dw, dup, ddown;
		CU_OK(cu.MemAlloc(&dw, nw * 4));
		CU_OK(cu.MemAlloc(&dup, (size_t)rows * rank * 4));
		CU_OK(cu.MemAlloc(&ddown, (size_t)rank * cols * 4));
		CU_OK(cu.MemcpyHtoD(dup, up, (size_t)rows * rank * 4));
		CU_OK(cu.MemcpyHtoD(ddown, down, (size_t)rank * cols * 4));
		for (size_t d = 0; d < 5; d++) {
			const size_t bytes = nw * dt_width(dts[d]);
			/* random finite weights in the dtype */
			float *w32 = malloc(nw * 4);
			for (size_t i = 0; i < nw; i++)
				w32[i] = rng_float(-2, 2);
			T_IEQ(vk_cast(w32, VRAM_DTYPE_F32, want, dts[d], nw), 0);
			free(w32);
			for (int small = 0; small <= 1; small++) {
				CU_OK(cu.MemcpyHtoD(dw, want, bytes));
				memcpy(got, want, bytes);
				void *fn;
				CU_OK(cu.ModuleGetFunction(&fn, cu.mod, vk_lora_kernel_name(dts[d])));
				struct vk_lora_params p = { .w = dw, .up = dup, .down = ddown, .rows = rows, .cols = cols,
							    .rank = rank, .scale = 0.6f, .seed = 77 + sh };
				void *args[] = { &p.w, &p.up, &p.down, &p.rows, &p.cols, &p.rank, &p.scale, &p.seed };
				uint32_t gx, gy;
				vk_lora_grid(rows, cols, &gx, &gy);
				if (small) {
					gx = gx > 2 ? 2 : gx;
					gy = gy > 2 ? 2 : gy;
				}
				CU_OK(cu.LaunchKernel(fn, gx, gy, 1, VK_LORA_BLOCK_X, VK_LORA_BLOCK_Y, 1, 0, NULL, args, NULL));
				CU_OK(cu.CtxSynchronize());
				T_IEQ(vk_lora_merge(got, dts[d], up, down, rows, cols, rank, 0.6f, 77 + sh), 0);
				CU_OK(cu.MemcpyDtoH(want, dw, bytes));
				T_CHECK(memcmp(got, want, bytes) == 0, "%s %ux%u rank %u (grid %ux%u) differs",
					      vk_lora_kernel_name(dts[d]), rows, cols, rank, gx, gy);
				memcpy(want, got, bytes);
			}
		}
		CU_OK(cu.MemFree(dw));
		CU_OK(cu.MemFree(dup));
		CU_OK(cu.MemFree(ddown));
		free(up);
		free(down);
	}
	free(src);
	free(want);
	free(got);
	t_cu_close(&cu);
}
END_TEST

static Suite *kernels_suite(void)
{
	Suite *s = suite_create("kernels");
	TCase *tc = tcase_create("fp8");
	tcase_add_test(tc, fp8_decode_all);
	tcase_add_test(tc, fp8_round_trips);
	tcase_add_test(tc, fp8_halfway);
	suite_add_tcase(s, tc);

	tc = tcase_create("cast");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, half_widen_all);
	tcase_add_test(tc, f32_to_half_ties);
	tcase_add_test(tc, f32_to_narrow_random);
	tcase_add_test(tc, half_to_narrow_all);
	tcase_add_test(tc, nan_inf);
	tcase_add_test(tc, cast_api);
	suite_add_tcase(s, tc);

	tc = tcase_create("lora");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, sr_unbiased);
	tcase_add_test(tc, sr_threshold);
	tcase_add_test(tc, sr_edges);
	tcase_add_test(tc, lora_vs_double);
	tcase_add_test(tc, lora_unbiased_sum);
	tcase_add_test(tc, lora_api);
	suite_add_tcase(s, tc);

	tc = tcase_create("build");
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, fatbin);
	tcase_add_test(tc, numpy_f16);
	tcase_add_test(tc, gpu_matches_reference);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	t_init();
	SRunner *sr = srunner_create(kernels_suite());
	srunner_run_all(sr, CK_NORMAL);
	const int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
