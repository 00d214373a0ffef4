/* SPDX-License-Identifier: MIT */
/*
 * dtypes: the table of every dtype (safetensors', facts.md §3, and GGUF's
 * block-quantised ones, docs/formats.md) and the conversion rules the
 * loader, the planner and the pager share (runtime/dtype.h).
 */
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "kernels/kernels.h"
#include "runtime/dtype.h"
#include "runtime/internal.h"

/* kernels/ stands alone and names the dtypes it handles itself. */
_Static_assert(VK_DTYPE_F8_E4M3 == VRAM_DTYPE_F8_E4M3, "kernels.h VK_DTYPE_F8_E4M3");
_Static_assert(VK_DTYPE_F8_E5M2 == VRAM_DTYPE_F8_E5M2, "kernels.h VK_DTYPE_F8_E5M2");
_Static_assert(VK_DTYPE_F16 == VRAM_DTYPE_F16, "kernels.h VK_DTYPE_F16");
_Static_assert(VK_DTYPE_BF16 == VRAM_DTYPE_BF16, "kernels.h VK_DTYPE_BF16");
_Static_assert(VK_DTYPE_F32 == VRAM_DTYPE_F32, "kernels.h VK_DTYPE_F32");
_Static_assert(VRAM_DTYPE_F32 < 32 && VRAM_DTYPE_BF16 < 32, "the castable dtypes fit 32-bit masks");

/* Every dtype: its name, bits per element (0 for the block-quantised
 * ones), and its smallest whole-byte unit, `block` elements in `bytes`
 * (filled in for the plain dtypes by dtype_block). */
static const struct {
	const char *name;
	uint32_t bits;
	uint32_t block, bytes;
} dtypes[VRAM_DTYPE_COUNT] = {
	[VRAM_DTYPE_BOOL] = { "BOOL", 8 },
	[VRAM_DTYPE_F4] = { "F4", 4 },
	[VRAM_DTYPE_F6_E2M3] = { "F6_E2M3", 6 },
	[VRAM_DTYPE_F6_E3M2] = { "F6_E3M2", 6 },
	[VRAM_DTYPE_U8] = { "U8", 8 },
	[VRAM_DTYPE_I8] = { "I8", 8 },
	[VRAM_DTYPE_F8_E5M2] = { "F8_E5M2", 8 },
	[VRAM_DTYPE_F8_E4M3] = { "F8_E4M3", 8 },
	[VRAM_DTYPE_F8_E8M0] = { "F8_E8M0", 8 },
	[VRAM_DTYPE_F8_E4M3FNUZ] = { "F8_E4M3FNUZ", 8 },
	[VRAM_DTYPE_F8_E5M2FNUZ] = { "F8_E5M2FNUZ", 8 },
	[VRAM_DTYPE_I16] = { "I16", 16 },
	[VRAM_DTYPE_U16] = { "U16", 16 },
	[VRAM_DTYPE_F16] = { "F16", 16 },
	[VRAM_DTYPE_BF16] = { "BF16", 16 },
	[VRAM_DTYPE_I32] = { "I32", 32 },
	[VRAM_DTYPE_U32] = { "U32", 32 },
	[VRAM_DTYPE_F32] = { "F32", 32 },
	[VRAM_DTYPE_C64] = { "C64", 64 },
	[VRAM_DTYPE_F64] = { "F64", 64 },
	[VRAM_DTYPE_I64] = { "I64", 64 },
	[VRAM_DTYPE_U64] = { "U64", 64 },
	/* GGUF's block-quantised types (ggml's GGML_QUANT_SIZES). */
	[VRAM_DTYPE_Q4_0] = { "Q4_0", 0, 32, 18 },
	[VRAM_DTYPE_Q4_1] = { "Q4_1", 0, 32, 20 },
	[VRAM_DTYPE_Q5_0] = { "Q5_0", 0, 32, 22 },
	[VRAM_DTYPE_Q5_1] = { "Q5_1", 0, 32, 24 },
	[VRAM_DTYPE_Q8_0] = { "Q8_0", 0, 32, 34 },
	[VRAM_DTYPE_Q8_1] = { "Q8_1", 0, 32, 40 },
	[VRAM_DTYPE_Q2_K] = { "Q2_K", 0, 256, 84 },
	[VRAM_DTYPE_Q3_K] = { "Q3_K", 0, 256, 110 },
	[VRAM_DTYPE_Q4_K] = { "Q4_K", 0, 256, 144 },
	[VRAM_DTYPE_Q5_K] = { "Q5_K", 0, 256, 176 },
	[VRAM_DTYPE_Q6_K] = { "Q6_K", 0, 256, 210 },
	[VRAM_DTYPE_Q8_K] = { "Q8_K", 0, 256, 292 },
	[VRAM_DTYPE_IQ2_XXS] = { "IQ2_XXS", 0, 256, 66 },
	[VRAM_DTYPE_IQ2_XS] = { "IQ2_XS", 0, 256, 74 },
	[VRAM_DTYPE_IQ3_XXS] = { "IQ3_XXS", 0, 256, 98 },
	[VRAM_DTYPE_IQ1_S] = { "IQ1_S", 0, 256, 50 },
	[VRAM_DTYPE_IQ4_NL] = { "IQ4_NL", 0, 32, 18 },
	[VRAM_DTYPE_IQ3_S] = { "IQ3_S", 0, 256, 110 },
	[VRAM_DTYPE_IQ2_S] = { "IQ2_S", 0, 256, 82 },
	[VRAM_DTYPE_IQ4_XS] = { "IQ4_XS", 0, 256, 136 },
	[VRAM_DTYPE_IQ1_M] = { "IQ1_M", 0, 256, 56 },
	[VRAM_DTYPE_TQ1_0] = { "TQ1_0", 0, 256, 54 },
	[VRAM_DTYPE_TQ2_0] = { "TQ2_0", 0, 256, 66 },
	[VRAM_DTYPE_MXFP4] = { "MXFP4", 0, 32, 17 },
	[VRAM_DTYPE_NVFP4] = { "NVFP4", 0, 64, 36 },
	[VRAM_DTYPE_Q1_0] = { "Q1_0", 0, 128, 18 },
};

/* The name of dtype ("F16", "Q4_K"), NULL when out of range. */
const char *vram_dtype_name(uint32_t dtype)
{
	return dtype < VRAM_DTYPE_COUNT ? dtypes[dtype].name : NULL;
}

/* Bits per element of dtype, 0 for block-quantised ones and out of range. */
uint32_t vram_dtype_bits(uint32_t dtype)
{
	return dtype < VRAM_DTYPE_COUNT ? dtypes[dtype].bits : 0;
}

/* The smallest whole-byte unit of dtype (vram.h): the table's block for
 * the quantised dtypes, the fewest elements whose bits make whole bytes
 * for the others. */
int vram_dtype_block(uint32_t dtype, uint32_t *ret_elems, uint32_t *ret_bytes)
{
	uint32_t bits, n = 1;

	if (dtype >= VRAM_DTYPE_COUNT)
		return rt_error(-EINVAL, "vram_dtype_block: dtype %u out of range", dtype);
	if (dtypes[dtype].block) {
		*ret_elems = dtypes[dtype].block;
		*ret_bytes = dtypes[dtype].bytes;
		return 0;
	}
	bits = dtypes[dtype].bits;
	while (n * bits % 8)
		n++;
	*ret_elems = n;
	*ret_bytes = n * bits / 8;
	return 0;
}

/* Whether dtype is one of GGUF's block-quantised types (dtype.h). */
bool dtype_quantised(uint32_t dtype)
{
	return dtype >= DTYPE_ST_COUNT && dtype < VRAM_DTYPE_COUNT;
}

/* Bytes per element (dtype.h): bits / 8, 0 out of range. */
uint32_t dtype_size(uint32_t dtype)
{
	return vram_dtype_bits(dtype) / 8;
}

/* safetensors dtype named name[0, len), exactly, or -1. */
int dtype_find(const char *name, size_t len)
{
	for (uint32_t i = 0; i < DTYPE_ST_COUNT; i++)
		if (strlen(dtypes[i].name) == len && !memcmp(dtypes[i].name, name, len))
			return (int)i;
	return -1;
}

/* safetensors dtype named name[0, len) ignoring ASCII case, or -1. */
int dtype_find_nocase(const char *name, size_t len)
{
	for (uint32_t i = 0; i < DTYPE_ST_COUNT; i++)
		if (strlen(dtypes[i].name) == len && !strncasecmp(dtypes[i].name, name, len))
			return (int)i;
	return -1;
}

/* Checks a load's conversion options (dtype.h): 0 or -EINVAL. */
int dtype_cast_check(uint32_t cast_to, uint32_t cast_from, uint32_t *ret_from)
{
	*ret_from = cast_from ? cast_from : VRAM_LOAD_CAST_DEFAULT_FROM;
	if (cast_to && (cast_to >= 32 || !(DTYPE_CASTABLE & (1u << cast_to))))
		return rt_error(-EINVAL, "cannot convert to %s: cast_to is one of F8_E4M3, F8_E5M2, F16, BF16, F32",
				vram_dtype_name(cast_to) ?: "an unknown dtype");
	if (cast_to && (*ret_from & ~DTYPE_CASTABLE))
		return rt_error(-EINVAL, "cannot convert from %s: cast_from holds only F8_E4M3, F8_E5M2, "
				"F16, BF16, F32", vram_dtype_name((uint32_t)__builtin_ctz(*ret_from & ~DTYPE_CASTABLE)));
	return 0;
}

/* Whether dtype converts under (cast_to, from) (dtype.h). */
bool dtype_casts(uint32_t dtype, uint32_t cast_to, uint32_t from)
{
	return cast_to && dtype != cast_to && dtype < 32 && (from & (1u << dtype));
}

/* A tensor's size as loaded under (cast_to, from) (dtype.h). */
uint64_t dtype_cast_nbytes(uint32_t dtype, uint64_t nbytes, uint32_t cast_to, uint32_t from)
{
	if (!dtype_casts(dtype, cast_to, from))
		return nbytes;
	return nbytes / dtype_size(dtype) * dtype_size(cast_to);
}
