/* SPDX-License-Identifier: MIT */
/*
 * dtype cast kernels: vk_cast_<S>_<D>(src, dst, n, flags), one per pair of
 * different formats, with the arithmetic of fpconv.h (the C reference is
 * vk_cast_flags in cast.c; names and launch geometry in kernels.h).
 */
#include "kernels/abi.h"
#include "kernels/fpconv.h"

template <uint32_t S, uint32_t D>
__device__ __forceinline__ void vk_cast_body(const void *src, void *dst, uint64_t n, uint32_t flags)
{
	const uint32_t mode = (flags & VK_CAST_SATFINITE) ? VK_MODE_SATFINITE : VK_MODE_RNE;
	const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;

	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		vk_store_bits(dst, i, D, vk_load_bits(src, i, S), mode, 0);
}

#define VK_CAST_KERNEL(sn, S, dn, D)                                                        \
	extern "C" __global__ void __launch_bounds__(VK_CAST_BLOCK)                          \
	vk_cast_##sn##_##dn(const void *src, void *dst, uint64_t n, uint32_t flags)          \
	{                                                                                    \
		vk_cast_body<S, D>(src, dst, n, flags);                                      \
	}

VK_CAST_KERNEL(e4m3, VK_FMT_E4M3, e5m2, VK_FMT_E5M2)
VK_CAST_KERNEL(e4m3, VK_FMT_E4M3, f16,  VK_FMT_F16)
VK_CAST_KERNEL(e4m3, VK_FMT_E4M3, bf16, VK_FMT_BF16)
VK_CAST_KERNEL(e4m3, VK_FMT_E4M3, f32,  VK_FMT_F32)

VK_CAST_KERNEL(e5m2, VK_FMT_E5M2, e4m3, VK_FMT_E4M3)
VK_CAST_KERNEL(e5m2, VK_FMT_E5M2, f16,  VK_FMT_F16)
VK_CAST_KERNEL(e5m2, VK_FMT_E5M2, bf16, VK_FMT_BF16)
VK_CAST_KERNEL(e5m2, VK_FMT_E5M2, f32,  VK_FMT_F32)

VK_CAST_KERNEL(f16,  VK_FMT_F16,  e4m3, VK_FMT_E4M3)
VK_CAST_KERNEL(f16,  VK_FMT_F16,  e5m2, VK_FMT_E5M2)
VK_CAST_KERNEL(f16,  VK_FMT_F16,  bf16, VK_FMT_BF16)
VK_CAST_KERNEL(f16,  VK_FMT_F16,  f32,  VK_FMT_F32)

VK_CAST_KERNEL(bf16, VK_FMT_BF16, e4m3, VK_FMT_E4M3)
VK_CAST_KERNEL(bf16, VK_FMT_BF16, e5m2, VK_FMT_E5M2)
VK_CAST_KERNEL(bf16, VK_FMT_BF16, f16,  VK_FMT_F16)
VK_CAST_KERNEL(bf16, VK_FMT_BF16, f32,  VK_FMT_F32)

VK_CAST_KERNEL(f32,  VK_FMT_F32,  e4m3, VK_FMT_E4M3)
VK_CAST_KERNEL(f32,  VK_FMT_F32,  e5m2, VK_FMT_E5M2)
VK_CAST_KERNEL(f32,  VK_FMT_F32,  f16,  VK_FMT_F16)
VK_CAST_KERNEL(f32,  VK_FMT_F32,  bf16, VK_FMT_BF16)
