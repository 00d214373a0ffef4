/* SPDX-License-Identifier: MIT */
/*
 * What the host and the kernels agree on: flag bits and the block shapes
 * the kernels are written for.  Included by kernels.h (host) and by the .cu
 * files; like fpconv.h it stands alone (no runtime headers), so that only
 * the kernels' own headers can make nvcc run again.
 */
#ifndef VRAM_KERNELS_ABI_H
#define VRAM_KERNELS_ABI_H

/* vk_cast_flags() and vk_cast_<S>_<D> flags. */
#define VK_CAST_SATFINITE  (1u << 0) /* overflow (finite or +-Inf) to the
					largest finite value instead of Inf
					(NaN for e4m3fn) */
#define VK_CAST_FLAGS_MASK VK_CAST_SATFINITE

/* vk_cast_<S>_<D>: blockDim (VK_CAST_BLOCK, 1, 1); grid-stride loop. */
#define VK_CAST_BLOCK    256u
#define VK_CAST_MAX_GRID 65536u

/* vk_lora_merge_<W>: blockDim exactly (VK_LORA_BLOCK_X, VK_LORA_BLOCK_Y, 1);
 * a block owns VK_LORA_TILE x VK_LORA_TILE weights at a time and walks k in
 * steps of VK_LORA_KTILE through shared memory. */
#define VK_LORA_BLOCK_X 32u
#define VK_LORA_BLOCK_Y 8u
#define VK_LORA_TILE    32u
#define VK_LORA_KTILE   32u

#endif /* VRAM_KERNELS_ABI_H */
