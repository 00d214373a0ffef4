/* SPDX-License-Identifier: MIT */
/*
 * dtypes: the safetensors table (facts.md §3) and the conversion rules the
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
_Static_assert(VRAM_DTYPE_COUNT <= 32, "dtype sets are 32-bit masks");

static const struct {
	const char *name;
	uint32_t bits;
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
};

/* The safetensors name of dtype ("F16"), NULL when out of range. */
const char *vram_dtype_name(uint32_t dtype)
{
	return dtype < VRAM_DTYPE_COUNT ? dtypes[dtype].name : NULL;
}

/* Bits per element of dtype, 0 when out of range. */
uint32_t vram_dtype_bits(uint32_t dtype)
{
	return dtype < VRAM_DTYPE_COUNT ? dtypes[dtype].bits : 0;
}

/* Bytes per element (dtype.h): bits / 8, 0 out of range. */
uint32_t dtype_size(uint32_t dtype)
{
	return vram_dtype_bits(dtype) / 8;
}

/* dtype named name[0, len), exactly, or -1. */
int dtype_find(const char *name, size_t len)
{
	for (uint32_t i = 0; i < VRAM_DTYPE_COUNT; i++)
		if (strlen(dtypes[i].name) == len && !memcmp(dtypes[i].name, name, len))
			return (int)i;
	return -1;
}

/* dtype named name[0, len) ignoring ASCII case, or -1. */
int dtype_find_nocase(const char *name, size_t len)
{
	for (uint32_t i = 0; i < VRAM_DTYPE_COUNT; i++)
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
		return rt_error(-EINVAL, "cannot convert from dtype %d: cast_from holds only F8_E4M3, F8_E5M2, "
				"F16, BF16, F32", __builtin_ctz(*ret_from & ~DTYPE_CASTABLE));
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
