/* SPDX-License-Identifier: MIT */
/*
 * kernels: dtype casts and LoRA merges, as CUDA kernels (the .cu files here,
 * embedded in libvram as vk_fatbin) and as plain C references (the .c files)
 * that compute bit-identical results on the CPU.  Internal to libvram (the
 * vk_ symbols are not exported from libvram.so); see kernels/README.md.
 *
 * dtypes are enum vram_dtype values (runtime/vram.h), of which the kernels
 * handle the five named VK_DTYPE_* below: F8_E4M3 (e4m3fn), F8_E5M2, F16,
 * BF16, F32.  This header stands apart from the runtime's (it includes
 * none); runtime/dtype.c asserts that the values agree.  Rounding, NaN/Inf
 * and overflow rules: kernels/fpconv.h.
 */
#ifndef VRAM_KERNELS_H
#define VRAM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/abi.h"
#include "kernels/fpconv.h"

#ifdef __cplusplus
extern "C" {
#define VK_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define VK_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

/* The enum vram_dtype values of the dtypes the kernels handle. */
#define VK_DTYPE_F8_E5M2 6u
#define VK_DTYPE_F8_E4M3 7u
#define VK_DTYPE_F16     13u
#define VK_DTYPE_BF16    14u
#define VK_DTYPE_F32     17u

/* ======================================================================
 * C references
 * ====================================================================== */

/* The fpconv.h format (VK_FMT_*) of dtype, or -EINVAL when the kernels do
 * not handle it. */
int vk_dtype_fmt(uint32_t dtype);

/* 1 when vk_cast can convert src_dtype to dst_dtype, else 0. */
int vk_cast_supported(uint32_t src_dtype, uint32_t dst_dtype);

/* Converts n elements of src (src_dtype) into dst (dst_dtype): exact when
 * widening, otherwise one rounding to nearest, ties to even, from the exact
 * value; overflow and NaN as PyTorch's .to() (fpconv.h).  src and dst must
 * not overlap, except src == dst when both dtypes have the same width
 * (in-place).  Equal dtypes copy the bytes.  Returns 0; -EINVAL for an
 * unsupported pair or NULL buffers with n > 0; -EOVERFLOW when n elements
 * do not fit in the address space. */
int vk_cast(const void *src, uint32_t src_dtype, void *dst, uint32_t dst_dtype, uint64_t n);

/* vk_cast with flags (VK_CAST_*, abi.h); unknown flag bits are -EINVAL.  Flags
 * do nothing when the dtypes are equal or the conversion widens. */
int vk_cast_flags(const void *src, uint32_t src_dtype, void *dst, uint32_t dst_dtype,
		  uint64_t n, uint32_t flags);

/* w (rows x cols, row-major, w_dtype) += scale * (up @ down), where up is
 * rows x rank and down is rank x cols, both row-major f32.  Each element is
 * computed in f32 as
 *     acc = 0; for k in 0..rank-1: acc = fmaf(up[r][k], down[k][c], acc);
 *     v = fmaf(scale, acc, w[r][c]);
 * and stored as is for f32, or rounded stochastically to w_dtype (f16,
 * bf16, e4m3fn, e5m2) with the random number vk_sr_rand(seed,
 * r * cols + c): unbiased, deterministic for a seed, identical on the GPU.
 * Finite values beyond the dtype's range saturate to its largest finite
 * value; Inf and NaN propagate.  Returns 0; -EINVAL for an unsupported
 * w_dtype, rank == 0, a non-finite scale or NULL buffers with work to do;
 * -EOVERFLOW when w does not fit in the address space; -ENOMEM.  up and
 * down must not overlap w. */
int vk_lora_merge(void *w, uint32_t w_dtype, const float *up, const float *down,
		  uint32_t rows, uint32_t cols, uint32_t rank, float scale, uint64_t seed);

/* ======================================================================
 * GPU side: the fatbin and its kernels
 * ====================================================================== */

/* The kernels for sm_80 and sm_90 as SASS plus compute_90 PTX, for
 * cuModuleLoadData.  vk_fatbin_size is 0 when libvram was built without
 * nvcc (vk_fatbin is then one zero byte); vk_fatbin_nvcc says which nvcc
 * built it ("" without one).  vk_fatbin is 64-byte aligned. */
extern const unsigned char vk_fatbin[];
extern const size_t vk_fatbin_size;
extern const char vk_fatbin_nvcc[];

/* Cast kernels, one per pair of different supported dtypes, all
 *   extern "C" __global__ void vk_cast_<S>_<D>(const void *src, void *dst,
 *                                               uint64_t n, uint32_t flags)
 * with <S>, <D> in e4m3, e5m2, f16, bf16, f32 (e.g. vk_cast_e4m3_bf16);
 * same semantics as vk_cast_flags.  Grid-stride loop: any grid works; use
 * blockDim (VK_CAST_BLOCK, 1, 1) and gridDim (vk_cast_grid(n), 1, 1).
 * Equal dtypes have no kernel: use cuMemcpyDtoD. */

/* The kernel's name, or NULL when src_dtype == dst_dtype or the pair is
 * not supported. */
const char *vk_cast_kernel_name(uint32_t src_dtype, uint32_t dst_dtype);

/* Blocks to launch for n elements (at least 1). */
uint32_t vk_cast_grid(uint64_t n);

/* The kernel parameters of vk_cast_<S>_<D>, in order and at these
 * offsets (for cuLaunchKernel's kernelParams, one pointer per field but
 * pad; or as the parameter buffer, 28 bytes). */
struct vk_cast_params {
	uint64_t src;   /* CUdeviceptr */
	uint64_t dst;   /* CUdeviceptr */
	uint64_t n;
	uint32_t flags; /* VK_CAST_* */
	uint32_t pad;   /* not a kernel parameter */
};
VK_STATIC_ASSERT(offsetof(struct vk_cast_params, n) == 16, "vk_cast_params.n");
VK_STATIC_ASSERT(offsetof(struct vk_cast_params, flags) == 24, "vk_cast_params.flags");

/* LoRA merge kernels, one per weight dtype,
 *   extern "C" __global__ void vk_lora_merge_<W>(void *w, const float *up,
 *           const float *down, uint32_t rows, uint32_t cols, uint32_t rank,
 *           float scale, uint64_t seed)
 * with <W> in e4m3, e5m2, f16, bf16, f32; same arithmetic as
 * vk_lora_merge, bit for bit.  The block must be exactly
 * (VK_LORA_BLOCK_X, VK_LORA_BLOCK_Y, 1) (the kernel does nothing
 * otherwise); each block does VK_LORA_TILE x VK_LORA_TILE tiles of w in a
 * grid-stride loop; take the grid from vk_lora_grid.  Uses 8.25 KiB of
 * static shared memory. */

const char *vk_lora_kernel_name(uint32_t w_dtype);

/* The grid for a rows x cols weight: *ret_x tiles along cols, *ret_y
 * along rows (capped at 65535; the kernel loops over the rest); both at
 * least 1. */
void vk_lora_grid(uint32_t rows, uint32_t cols, uint32_t *ret_x, uint32_t *ret_y);

/* The kernel parameters of vk_lora_merge_<W>, in order, no padding. */
struct vk_lora_params {
	uint64_t w;     /* CUdeviceptr */
	uint64_t up;    /* CUdeviceptr, f32 rows x rank */
	uint64_t down;  /* CUdeviceptr, f32 rank x cols */
	uint32_t rows;
	uint32_t cols;
	uint32_t rank;
	float    scale;
	uint64_t seed;
};
VK_STATIC_ASSERT(offsetof(struct vk_lora_params, rows) == 24, "vk_lora_params.rows");
VK_STATIC_ASSERT(offsetof(struct vk_lora_params, scale) == 36, "vk_lora_params.scale");
VK_STATIC_ASSERT(offsetof(struct vk_lora_params, seed) == 40, "vk_lora_params.seed");
VK_STATIC_ASSERT(sizeof(struct vk_lora_params) == 48, "vk_lora_params size");

#ifdef __cplusplus
}
#endif
#endif /* VRAM_KERNELS_H */
