/* SPDX-License-Identifier: MIT */
/* dtype casts: the C reference of kernels/cast.cu, and the names and launch
 * geometry of its kernels. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "kernels/kernels.h"

int vk_dtype_fmt(uint32_t dtype)
{
	switch (dtype) {
	case VK_DTYPE_F8_E4M3: return VK_FMT_E4M3;
	case VK_DTYPE_F8_E5M2: return VK_FMT_E5M2;
	case VK_DTYPE_F16:     return VK_FMT_F16;
	case VK_DTYPE_BF16:    return VK_FMT_BF16;
	case VK_DTYPE_F32:     return VK_FMT_F32;
	default:                 return -EINVAL;
	}
}

static size_t fmt_size(uint32_t fmt)
{
	return fmt <= VK_FMT_E5M2 ? 1 : fmt == VK_FMT_F32 ? 4 : 2;
}

int vk_cast_supported(uint32_t src_dtype, uint32_t dst_dtype)
{
	return vk_dtype_fmt(src_dtype) >= 0 && vk_dtype_fmt(dst_dtype) >= 0;
}

int vk_cast_flags(const void *src, uint32_t src_dtype, void *dst, uint32_t dst_dtype,
		  uint64_t n, uint32_t flags)
{
	const int sf = vk_dtype_fmt(src_dtype), df = vk_dtype_fmt(dst_dtype);

	if (sf < 0 || df < 0 || (flags & ~VK_CAST_FLAGS_MASK))
		return -EINVAL;
	if (n == 0)
		return 0;
	if (!src || !dst)
		return -EINVAL;
	const size_t ws = fmt_size((uint32_t)sf) > fmt_size((uint32_t)df) ?
			  fmt_size((uint32_t)sf) : fmt_size((uint32_t)df);
	if (n > SIZE_MAX / ws)
		return -EOVERFLOW;

	if (sf == df) {
		if (src != dst)
			memmove(dst, src, (size_t)n * ws);
		return 0;
	}
	/* The same per-element code as the kernels; the compiler specializes
	 * the loop for the common pairs through the inlined switch. */
	const uint32_t mode = (flags & VK_CAST_SATFINITE) ? VK_MODE_SATFINITE : VK_MODE_RNE;
	for (uint64_t i = 0; i < n; i++)
		vk_store_bits(dst, i, (uint32_t)df, vk_load_bits(src, i, (uint32_t)sf), mode, 0);
	return 0;
}

int vk_cast(const void *src, uint32_t src_dtype, void *dst, uint32_t dst_dtype, uint64_t n)
{
	return vk_cast_flags(src, src_dtype, dst, dst_dtype, n, 0);
}

const char *vk_cast_kernel_name(uint32_t src_dtype, uint32_t dst_dtype)
{
	/* [src][dst] in VK_FMT_* order, as spelled by cast.cu's VK_CAST_KERNEL
	 * lines. */
	static const char *const names[5][5] = {
	{ NULL, "vk_cast_e4m3_e5m2", "vk_cast_e4m3_f16", "vk_cast_e4m3_bf16", "vk_cast_e4m3_f32" },
	{ "vk_cast_e5m2_e4m3", NULL, "vk_cast_e5m2_f16", "vk_cast_e5m2_bf16", "vk_cast_e5m2_f32" },
	{ "vk_cast_f16_e4m3", "vk_cast_f16_e5m2", NULL, "vk_cast_f16_bf16", "vk_cast_f16_f32" },
	{ "vk_cast_bf16_e4m3", "vk_cast_bf16_e5m2", "vk_cast_bf16_f16", NULL, "vk_cast_bf16_f32" },
	{ "vk_cast_f32_e4m3", "vk_cast_f32_e5m2", "vk_cast_f32_f16", "vk_cast_f32_bf16", NULL },
	};
	const int sf = vk_dtype_fmt(src_dtype), df = vk_dtype_fmt(dst_dtype);

	if (sf < 0 || df < 0)
		return NULL;
	return names[sf][df];
}

uint32_t vk_cast_grid(uint64_t n)
{
	uint64_t blocks = (n + VK_CAST_BLOCK - 1) / VK_CAST_BLOCK;

	if (blocks == 0)
		return 1;
	return blocks > VK_CAST_MAX_GRID ? VK_CAST_MAX_GRID : (uint32_t)blocks;
}
