/* SPDX-License-Identifier: MIT */
/*
 * LoRA merge kernels: vk_lora_merge_<W>(w, up, down, rows, cols, rank,
 * scale, seed), w += scale * (up @ down) in f32, rounded stochastically
 * back to W.  The C reference is vk_lora_merge in lora.c; both sum each
 * element's rank products in ascending k with one fmaf each and finish
 * with fpconv.h's vk_lora_store, so the results are bit-identical.
 *
 * A block of 32 x 8 threads owns a 32 x 32 tile of w: thread (tx, ty) does
 * column tx of rows ty, ty + 8, ty + 16, ty + 24.  up and down go through
 * shared memory 32 k at a time (the +1 column avoids bank conflicts).
 */
#include "kernels/abi.h"
#include "kernels/fpconv.h"

#define VK_LORA_RPT (VK_LORA_TILE / VK_LORA_BLOCK_Y) /* rows per thread */

template <uint32_t F>
__device__ __forceinline__ void vk_lora_body(void *w, const float *up, const float *down,
					     uint32_t rows, uint32_t cols, uint32_t rank,
					     float scale, uint64_t seed)
{
	__shared__ float su[VK_LORA_TILE][VK_LORA_KTILE + 1];  /* [row][k] */
	__shared__ float sd[VK_LORA_KTILE][VK_LORA_TILE + 1];  /* [k][col] */
	const uint32_t tx = threadIdx.x, ty = threadIdx.y;

	if (blockDim.x != VK_LORA_BLOCK_X || blockDim.y != VK_LORA_BLOCK_Y || blockDim.z != 1)
		return;
	const uint32_t ntx = (cols + VK_LORA_TILE - 1) / VK_LORA_TILE;
	const uint32_t nty = (rows + VK_LORA_TILE - 1) / VK_LORA_TILE;

	/* Loop bounds depend on the block only, so every thread reaches the
	 * same __syncthreads. */
	for (uint32_t by = blockIdx.y; by < nty; by += gridDim.y) {
		for (uint32_t bx = blockIdx.x; bx < ntx; bx += gridDim.x) {
			const uint32_t row0 = by * VK_LORA_TILE, col0 = bx * VK_LORA_TILE;
			const uint32_t c = col0 + tx;
			float acc[VK_LORA_RPT];
#pragma unroll
			for (uint32_t i = 0; i < VK_LORA_RPT; i++)
				acc[i] = 0.0f;

			for (uint32_t k0 = 0; k0 < rank; k0 += VK_LORA_KTILE) {
				for (uint32_t j = ty; j < VK_LORA_TILE; j += VK_LORA_BLOCK_Y) {
					const uint32_t r = row0 + j, k = k0 + tx;
					su[j][tx] = (r < rows && k < rank) ? up[(uint64_t)r * rank + k] : 0.0f;
				}
				for (uint32_t j = ty; j < VK_LORA_KTILE; j += VK_LORA_BLOCK_Y) {
					const uint32_t k = k0 + j;
					sd[j][tx] = (k < rank && c < cols) ? down[(uint64_t)k * cols + c] : 0.0f;
				}
				__syncthreads();
				/* Only the real k: an fmaf with a padding zero
				 * would turn an acc of -0 into +0. */
				const uint32_t kn = rank - k0 < VK_LORA_KTILE ? rank - k0 : VK_LORA_KTILE;
				for (uint32_t kk = 0; kk < kn; kk++) {
					const float d = sd[kk][tx];
#pragma unroll
					for (uint32_t i = 0; i < VK_LORA_RPT; i++)
						acc[i] = fmaf(su[ty + i * VK_LORA_BLOCK_Y][kk], d, acc[i]);
				}
				__syncthreads();
			}

			if (c < cols) {
#pragma unroll
				for (uint32_t i = 0; i < VK_LORA_RPT; i++) {
					const uint32_t r = row0 + ty + i * VK_LORA_BLOCK_Y;
					if (r < rows)
						vk_lora_store(w, (uint64_t)r * cols + c, F, acc[i], scale, seed);
				}
			}
		}
	}
}

#define VK_LORA_KERNEL(wn, F)                                                                \
	extern "C" __global__ void __launch_bounds__(VK_LORA_BLOCK_X * VK_LORA_BLOCK_Y)      \
	vk_lora_merge_##wn(void *w, const float *up, const float *down, uint32_t rows,       \
			   uint32_t cols, uint32_t rank, float scale, uint64_t seed)         \
	{                                                                                    \
		vk_lora_body<F>(w, up, down, rows, cols, rank, scale, seed);                 \
	}

VK_LORA_KERNEL(e4m3, VK_FMT_E4M3)
VK_LORA_KERNEL(e5m2, VK_FMT_E5M2)
VK_LORA_KERNEL(f16,  VK_FMT_F16)
VK_LORA_KERNEL(bf16, VK_FMT_BF16)
VK_LORA_KERNEL(f32,  VK_FMT_F32)
