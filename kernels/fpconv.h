/* SPDX-License-Identifier: MIT */
/*
 * Floating-point format conversions shared by the C references (the .c
 * files here) and the CUDA kernels (the .cu files): one copy of the bit
 * arithmetic, so that the CPU and the GPU give bit-identical results.
 *
 * Everything here is integer arithmetic on the bit patterns (no FPU
 * rounding mode, flush-to-zero or fast-math setting can change it), except
 * vk_lora_store's explicit fmaf, which is correctly rounded on both sides.
 * Written in the subset of C that is also valid CUDA C++; under nvcc every
 * function is __host__ __device__.
 *
 * Formats (sign | exponent | mantissa, bias):
 *   f32    1|8|23 bias 127   IEEE binary32
 *   f16    1|5|10 bias 15    IEEE binary16: max 65504, Inf, NaN
 *   bf16   1|8|7  bias 127   max 3.3895e38, Inf, NaN
 *   e5m2   1|5|2  bias 15    IEEE-like: max 57344, Inf 0x7C, NaN 0x7D-0x7F
 *   e4m3fn 1|4|3  bias 7     "fn": no Inf; max 448 (0x7E); NaN 0x7F and 0xFF
 *                            only; exponent 15 is otherwise a normal binade
 *
 * Conversions to a narrower format round once, from the exact f32 value.
 * Overflow (modes below): VK_MODE_RNE does what PyTorch's .to() does:
 * IEEE-like formats overflow to Inf, e4m3fn overflows to NaN (a value is out
 * of range when it rounds, on the unbounded e4m3 grid, above 448: |x| > 464;
 * 464 is the tie between 448 and 480 and goes to the even 448).
 * NaN stays NaN with its sign: fp8 gets its one NaN (0x7F | sign), f16 and
 * bf16 get a quiet NaN carrying the top payload bits (as x86 F16C does).
 * Widening to f32 is exact and keeps NaN payloads.
 */
#ifndef VRAM_KERNELS_FPCONV_H
#define VRAM_KERNELS_FPCONV_H

#include <math.h>
#include <stdint.h>
#ifndef __CUDA_ARCH__
#include <string.h>
#endif

#ifdef __CUDACC__
#define VK_HD __host__ __device__
#else
#define VK_HD
#endif

/* Rounding modes of vk_f32_encode. */
#define VK_MODE_RNE       0u /* nearest, ties to even; overflow as PyTorch */
#define VK_MODE_SATFINITE 1u /* nearest, ties to even; overflow (finite or
				Inf) to the largest finite value */
#define VK_MODE_SR        2u /* stochastic: away from zero with probability
				(|x| - lo) / (hi - lo); finite overflow
				saturates; Inf and NaN as VK_MODE_RNE */

/* Format codes of the shared helpers (not enum vram_dtype: this header must
 * stand alone for nvcc). */
#define VK_FMT_E4M3 0u
#define VK_FMT_E5M2 1u
#define VK_FMT_F16  2u
#define VK_FMT_BF16 3u
#define VK_FMT_F32  4u

VK_HD static inline uint32_t vk_f32_bits(float f)
{
#ifdef __CUDA_ARCH__
	return __float_as_uint(f);
#else
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
#endif
}

VK_HD static inline float vk_bits_f32(uint32_t u)
{
#ifdef __CUDA_ARCH__
	return __uint_as_float(u);
#else
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
#endif
}

/* ---- format parameters ------------------------------------------------ */

/* Mantissa bits. */
VK_HD static inline int vk_fmt_mbits(uint32_t fmt)
{
	return fmt == VK_FMT_E4M3 ? 3 : fmt == VK_FMT_E5M2 ? 2 :
	       fmt == VK_FMT_F16 ? 10 : fmt == VK_FMT_BF16 ? 7 : 23;
}

VK_HD static inline int vk_fmt_bias(uint32_t fmt)
{
	return fmt == VK_FMT_E4M3 ? 7 : (fmt == VK_FMT_E5M2 || fmt == VK_FMT_F16) ? 15 : 127;
}

/* Bit index of the sign. */
VK_HD static inline int vk_fmt_sbit(uint32_t fmt)
{
	return fmt <= VK_FMT_E5M2 ? 7 : fmt == VK_FMT_F32 ? 31 : 15;
}

/* Magnitude bits of the largest finite value. */
VK_HD static inline uint32_t vk_fmt_maxfin(uint32_t fmt)
{
	return fmt == VK_FMT_E4M3 ? 0x7Eu : fmt == VK_FMT_E5M2 ? 0x7Bu :
	       fmt == VK_FMT_F16 ? 0x7BFFu : fmt == VK_FMT_BF16 ? 0x7F7Fu : 0x7F7FFFFFu;
}

/* Magnitude bits of the quiet NaN the format produces (payload bits are
 * OR-ed in below it). */
VK_HD static inline uint32_t vk_fmt_qnan(uint32_t fmt)
{
	return fmt <= VK_FMT_E5M2 ? 0x7Fu : fmt == VK_FMT_F16 ? 0x7E00u :
	       fmt == VK_FMT_BF16 ? 0x7FC0u : 0x7FC00000u;
}

/* ---- decode: any format -> f32 bits (exact) --------------------------- */

/* The f32 bit pattern of the value whose bits in format fmt are h.  Exact
 * for every finite value; Inf stays Inf; IEEE-like NaNs keep sign and
 * payload; e4m3fn NaN becomes the quiet NaN 0x7FC00000 with its sign. */
VK_HD static inline uint32_t vk_decode_bits(uint32_t h, uint32_t fmt)
{
	if (fmt == VK_FMT_F32)
		return h;
	if (fmt == VK_FMT_BF16)
		return (h & 0xFFFFu) << 16;

	const int mbits = vk_fmt_mbits(fmt), bias = vk_fmt_bias(fmt), sbit = vk_fmt_sbit(fmt);
	const uint32_t sign = ((h >> sbit) & 1u) << 31;
	const uint32_t a = h & ((1u << sbit) - 1u);
	const uint32_t ef = a >> mbits, m = a & ((1u << mbits) - 1u);
	const uint32_t efmax = (1u << (sbit - mbits)) - 1u;

	if (fmt == VK_FMT_E4M3) {
		if (a == 0x7Fu)
			return sign | 0x7FC00000u;
	} else if (ef == efmax) {
		return sign | 0x7F800000u | (m << (23 - mbits));
	}
	if (ef == 0) {
		if (m == 0)
			return sign;
		/* Subnormal: m * 2^(1 - bias - mbits); normalize so that the
		 * leading one lands on the implicit bit. */
		int e = 1 - bias;
		uint32_t mm = m;
		while (!(mm & (1u << mbits))) {
			mm <<= 1;
			e--;
		}
		return sign | ((uint32_t)(e + 127) << 23) | ((mm & ((1u << mbits) - 1u)) << (23 - mbits));
	}
	return sign | ((uint32_t)((int)ef - bias + 127) << 23) | (m << (23 - mbits));
}

/* ---- encode: f32 bits -> narrower format ------------------------------ */

/* The bits in format fmt (not VK_FMT_F32) of the f32 value whose bits are
 * f, rounded by mode (VK_MODE_*).  rnd is a uniform 64-bit random number,
 * used by VK_MODE_SR only: the result goes away from zero when
 * rnd < frac * 2^64, frac being the discarded fraction of a quantum, so the
 * probability is exact to 2^-64. */
VK_HD static inline uint32_t vk_encode_bits(uint32_t f, uint32_t fmt, uint32_t mode, uint64_t rnd)
{
	const int mbits = vk_fmt_mbits(fmt), bias = vk_fmt_bias(fmt), sbit = vk_fmt_sbit(fmt);
	const uint32_t maxfin = vk_fmt_maxfin(fmt), qnan = vk_fmt_qnan(fmt);
	const uint32_t sign = (f >> 31) << sbit;
	const uint32_t a = f & 0x7FFFFFFFu;
	const int has_inf = fmt != VK_FMT_E4M3;

	if (a > 0x7F800000u)
		return sign | qnan | ((a & 0x7FFFFFu) >> (23 - mbits));
	if (a == 0x7F800000u) {
		if (mode == VK_MODE_SATFINITE)
			return sign | maxfin;
		return sign | (has_inf ? maxfin + 1u : qnan);
	}

	/* |x| = sig * 2^e exactly; lg = floor(log2 |x|) for normal inputs. */
	const uint32_t ef = a >> 23;
	const int emin = 1 - bias;
	uint64_t sig;
	int e, E;
	if (ef == 0) {
		sig = a;
		e = -149;
		E = emin; /* f32 subnormals are below every target's emin */
	} else {
		sig = (a & 0x7FFFFFu) | 0x800000u;
		e = (int)ef - 150;
		E = (int)ef - 127;
		if (E < emin)
			E = emin;
	}

	/* The target's quantum at |x| is 2^(E - mbits); q = |x| / quantum,
	 * split into the integer part and the s discarded bits.  s >= 13 for
	 * every target (mbits <= 10). */
	const int s = (E - mbits) - e;
	uint64_t q, rem;
	if (s < 64) {
		q = sig >> s;
		rem = sig & ((1ull << s) - 1ull);
	} else {
		q = 0;
		rem = sig;
	}

	int up;
	if (mode == VK_MODE_SR) {
		uint64_t frac;
		if (s <= 64)
			frac = s == 64 ? rem : rem << (64 - s);
		else
			frac = s - 64 < 64 ? rem >> (s - 64) : 0;
		up = rnd < frac;
	} else if (s < 64) {
		const uint64_t half = 1ull << (s - 1);
		up = rem > half || (rem == half && (q & 1u));
	} else {
		up = 0; /* rem < 2^24, far below half a quantum */
	}
	q += (uint64_t)up;

	/* Normal: field (E + bias) with the implicit bit in q; subnormal
	 * (E == emin, q < 2^mbits): field 0.  A carry out of the mantissa
	 * moves to the next binade by itself. */
	const uint32_t mag = ((uint32_t)(E + bias - 1) << mbits) + (uint32_t)q;
	if (mag > maxfin) {
		if (mode != VK_MODE_RNE)
			return sign | maxfin;
		return sign | (has_inf ? maxfin + 1u : qnan);
	}
	return sign | mag;
}

/* ---- scalar helpers ---------------------------------------------------- */

VK_HD static inline float vk_f16_to_f32(uint16_t h) { return vk_bits_f32(vk_decode_bits(h, VK_FMT_F16)); }
VK_HD static inline float vk_bf16_to_f32(uint16_t h) { return vk_bits_f32(vk_decode_bits(h, VK_FMT_BF16)); }
VK_HD static inline float vk_e4m3_to_f32(uint8_t b) { return vk_bits_f32(vk_decode_bits(b, VK_FMT_E4M3)); }
VK_HD static inline float vk_e5m2_to_f32(uint8_t b) { return vk_bits_f32(vk_decode_bits(b, VK_FMT_E5M2)); }

/* Round to nearest even; overflow to Inf (PyTorch's and IEEE's rule). */
VK_HD static inline uint16_t vk_f32_to_f16(float f)
{
	return (uint16_t)vk_encode_bits(vk_f32_bits(f), VK_FMT_F16, VK_MODE_RNE, 0);
}

VK_HD static inline uint16_t vk_f32_to_bf16(float f)
{
	return (uint16_t)vk_encode_bits(vk_f32_bits(f), VK_FMT_BF16, VK_MODE_RNE, 0);
}

/* Round to nearest even; with satfinite = 0 as PyTorch: |x| > 464 and
 * +-Inf become NaN; with satfinite != 0 they become +-448. */
VK_HD static inline uint8_t vk_f32_to_e4m3(float f, int satfinite)
{
	return (uint8_t)vk_encode_bits(vk_f32_bits(f), VK_FMT_E4M3,
				       satfinite ? VK_MODE_SATFINITE : VK_MODE_RNE, 0);
}

/* Round to nearest even; with satfinite = 0 as PyTorch (and IEEE):
 * |x| >= 61440 becomes Inf; with satfinite != 0, +-57344. */
VK_HD static inline uint8_t vk_f32_to_e5m2(float f, int satfinite)
{
	return (uint8_t)vk_encode_bits(vk_f32_bits(f), VK_FMT_E5M2,
				       satfinite ? VK_MODE_SATFINITE : VK_MODE_RNE, 0);
}

/* ---- stochastic rounding RNG ------------------------------------------- */

/* splitmix64's output function (Stafford's mix13): a bijection of 64 bits. */
VK_HD static inline uint64_t vk_mix64(uint64_t z)
{
	z ^= z >> 30;
	z *= 0xBF58476D1CE4E5B9ull;
	z ^= z >> 27;
	z *= 0x94D049BB133111EBull;
	z ^= z >> 31;
	return z;
}

/* The random number for element idx of a tensor rounded with seed: a
 * counter-based generator (no state), so any thread on any device gets the
 * same number for the same (seed, idx).  It is the idx-th output of a
 * splitmix64 stream that starts at mix64(seed): seeds are hashed first so
 * that nearby seeds give unrelated streams. */
VK_HD static inline uint64_t vk_sr_rand(uint64_t seed, uint64_t idx)
{
	return vk_mix64(vk_mix64(seed) + (idx + 1u) * 0x9E3779B97F4A7C15ull);
}

/* ---- element load/store by format -------------------------------------- */

/* Elements are read and written whole: on the GPU as typed accesses (the
 * launchers refuse misaligned addresses), on the CPU through memcpy, since
 * host buffers (a staging slot holding a tensor at an odd file offset) need
 * not be aligned to the element; the compiler makes a plain move of it. */
#ifdef __CUDA_ARCH__
#define VK_LD(T, p, i) (((const T *)(p))[i])
#define VK_ST(T, p, i, v) (((T *)(p))[i] = (T)(v))
#else
#define VK_LD(T, p, i) vk_ld_##T((const unsigned char *)(p) + (i) * sizeof(T))
#define VK_ST(T, p, i, v) vk_st_##T((unsigned char *)(p) + (i) * sizeof(T), (T)(v))
static inline uint16_t vk_ld_uint16_t(const unsigned char *q) { uint16_t v; __builtin_memcpy(&v, q, 2); return v; }
static inline uint32_t vk_ld_uint32_t(const unsigned char *q) { uint32_t v; __builtin_memcpy(&v, q, 4); return v; }
static inline void vk_st_uint16_t(unsigned char *q, uint16_t v) { __builtin_memcpy(q, &v, 2); }
static inline void vk_st_uint32_t(unsigned char *q, uint32_t v) { __builtin_memcpy(q, &v, 4); }
#endif

/* Element i of a tensor in format fmt, as f32 bits. */
VK_HD static inline uint32_t vk_load_bits(const void *p, uint64_t i, uint32_t fmt)
{
	if (fmt <= VK_FMT_E5M2)
		return vk_decode_bits(((const uint8_t *)p)[i], fmt);
	if (fmt == VK_FMT_F32)
		return VK_LD(uint32_t, p, i);
	return vk_decode_bits(VK_LD(uint16_t, p, i), fmt);
}

/* Stores f32 bits f as element i of a tensor in format fmt, rounded by
 * mode (rnd for VK_MODE_SR). */
VK_HD static inline void vk_store_bits(void *p, uint64_t i, uint32_t fmt, uint32_t f, uint32_t mode, uint64_t rnd)
{
	if (fmt == VK_FMT_F32)
		VK_ST(uint32_t, p, i, f);
	else if (fmt <= VK_FMT_E5M2)
		((uint8_t *)p)[i] = (uint8_t)vk_encode_bits(f, fmt, mode, rnd);
	else
		VK_ST(uint16_t, p, i, vk_encode_bits(f, fmt, mode, rnd));
}

/* One element of a LoRA merge: w <- w + scale * acc computed with one fused
 * multiply-add in f32, then rounded back to fmt stochastically with the
 * (seed, i) random number (stored as is for f32). */
VK_HD static inline void vk_lora_store(void *w, uint64_t i, uint32_t fmt, float acc, float scale, uint64_t seed)
{
	const float w32 = vk_bits_f32(vk_load_bits(w, i, fmt));
	const float v = fmaf(scale, acc, w32);
	vk_store_bits(w, i, fmt, vk_f32_bits(v), VK_MODE_SR,
		      fmt == VK_FMT_F32 ? 0 : vk_sr_rand(seed, i));
}

#endif /* VRAM_KERNELS_FPCONV_H */
