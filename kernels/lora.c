/* SPDX-License-Identifier: MIT */
/* LoRA merge: the C reference of kernels/lora.cu, and the names and launch
 * geometry of its kernels. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels/kernels.h"

int vk_lora_merge(void *w, uint32_t w_dtype, const float *up, const float *down,
		  uint32_t rows, uint32_t cols, uint32_t rank, float scale, uint64_t seed)
{
	const int fmt = vk_dtype_fmt(w_dtype);

	if (fmt < 0 || rank == 0 || !isfinite(scale))
		return -EINVAL;
	if (rows == 0 || cols == 0)
		return 0;
	if (!w || !up || !down)
		return -EINVAL;
	if ((uint64_t)rows * cols > SIZE_MAX / sizeof(float))
		return -EOVERFLOW;

	/* Row by row, with the row's accumulators in a buffer so that down is
	 * read along its rows; each accumulator still sums its k terms in
	 * ascending k with one fmaf each, which is what every GPU thread does
	 * and what makes the results bit-identical. */
	float *acc = malloc((size_t)cols * sizeof(*acc));
	if (!acc)
		return -ENOMEM;
	for (uint32_t r = 0; r < rows; r++) {
		const float *u = up + (size_t)r * rank;
		for (uint32_t c = 0; c < cols; c++)
			acc[c] = 0.0f;
		for (uint32_t k = 0; k < rank; k++) {
			const float *d = down + (size_t)k * cols;
			const float uk = u[k];
			for (uint32_t c = 0; c < cols; c++)
				acc[c] = fmaf(uk, d[c], acc[c]);
		}
		const uint64_t base = (uint64_t)r * cols;
		for (uint32_t c = 0; c < cols; c++)
			vk_lora_store(w, base + c, (uint32_t)fmt, acc[c], scale, seed);
	}
	free(acc);
	return 0;
}

const char *vk_lora_kernel_name(uint32_t w_dtype)
{
	/* VK_FMT_* order, as spelled by lora.cu's VK_LORA_KERNEL lines. */
	static const char *const names[5] = {
		"vk_lora_merge_e4m3", "vk_lora_merge_e5m2", "vk_lora_merge_f16",
		"vk_lora_merge_bf16", "vk_lora_merge_f32",
	};
	const int fmt = vk_dtype_fmt(w_dtype);

	return fmt < 0 ? NULL : names[fmt];
}

void vk_lora_grid(uint32_t rows, uint32_t cols, uint32_t *ret_x, uint32_t *ret_y)
{
	uint32_t x = cols / VK_LORA_TILE + (cols % VK_LORA_TILE != 0);
	uint32_t y = rows / VK_LORA_TILE + (rows % VK_LORA_TILE != 0);

	*ret_x = x ? x : 1;
	*ret_y = y == 0 ? 1 : y > 65535 ? 65535 : y;
}
